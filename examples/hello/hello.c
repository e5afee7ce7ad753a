// hello: greets its arguments and shows its environment, to see what a Shoal job's guest
// receives. Build: examples/build.sh
#include <stdio.h>
#include <stdlib.h>

extern char **environ;

int main(int argc, char **argv) {
    printf("Hello from %s!\n", argv[0]);
    for (int i = 1; i < argc; i++) {
        printf("arg[%d]=%s\n", i, argv[i]);
    }
    const char *greeting = getenv("HELLO");
    printf("HELLO=%s\n", greeting ? greeting : "(unset)");
    for (char **env = environ; *env; env++) {
        fprintf(stderr, "env %s\n", *env);
    }
    return 0;
}
