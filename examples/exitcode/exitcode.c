// exitcode: exits with the code given as its first argument (default 0), so the CLI's
// exit-code propagation can be seen. Build: examples/build.sh
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    printf("exiting with %d\n", code);
    return code;
}
