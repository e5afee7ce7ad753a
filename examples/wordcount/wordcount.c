// wordcount: counts the lines, words and bytes of every file under /inputs (recursively)
// and writes /outputs/summary.txt plus one /outputs/counts/<relative path>.count per file,
// recreating the input's directory structure. Build: examples/build.sh
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static long total_words, total_lines, total_bytes, total_files;
static FILE *summary;

static int ensure_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mkdir %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int count_file(const char *path, const char *relative) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "open %s: %s\n", path, strerror(errno));
        return -1;
    }
    long words = 0, lines = 0, bytes = 0;
    int c, in_word = 0;
    while ((c = fgetc(f)) != EOF) {
        bytes++;
        if (c == '\n') lines++;
        if (isspace(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    fclose(f);
    char out[4096];
    snprintf(out, sizeof out, "/outputs/counts/%s.count", relative);
    FILE *o = fopen(out, "w");
    if (!o) {
        fprintf(stderr, "create %s: %s\n", out, strerror(errno));
        return -1;
    }
    fprintf(o, "%ld %ld %ld\n", lines, words, bytes);
    fclose(o);
    fprintf(summary, "%s: %ld lines, %ld words, %ld bytes\n", relative, lines, words, bytes);
    total_words += words;
    total_lines += lines;
    total_bytes += bytes;
    total_files++;
    return 0;
}

static int walk(const char *dir, const char *relative) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "opendir %s: %s\n", dir, strerror(errno));
        return -1;
    }
    struct dirent *entry;
    int status = 0;
    while ((entry = readdir(d)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        char path[4096], rel[4096];
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        if (relative[0]) {
            snprintf(rel, sizeof rel, "%s/%s", relative, entry->d_name);
        } else {
            snprintf(rel, sizeof rel, "%s", entry->d_name);
        }
        struct stat st;
        if (stat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            char out[4096];
            snprintf(out, sizeof out, "/outputs/counts/%s", rel);
            if (ensure_dir(out) != 0 || walk(path, rel) != 0) status = -1;
        } else if (count_file(path, rel) != 0) {
            status = -1;
        }
    }
    closedir(d);
    return status;
}

int main(void) {
    if (ensure_dir("/outputs/counts") != 0) return 2;
    summary = fopen("/outputs/summary.txt", "w");
    if (!summary) {
        fprintf(stderr, "create /outputs/summary.txt: %s\n", strerror(errno));
        return 2;
    }
    int status = walk("/inputs", "");
    fprintf(summary, "total: %ld files, %ld lines, %ld words, %ld bytes\n", total_files,
            total_lines, total_words, total_bytes);
    fclose(summary);
    printf("counted %ld words in %ld files\n", total_words, total_files);
    return status == 0 ? 0 : 1;
}
