/* SPDX-License-Identifier: MIT */
/*
 * replay.c - run a fuzz target over committed corpus files without libFuzzer.
 *
 * Linked with each target in every build (any compiler), so `meson test --suite fuzz`
 * replays the corpora as regression tests. Arguments are files or directories (one
 * level, every regular file). Exits non-zero when nothing was replayed, so a missing or
 * empty corpus cannot pass silently; a failing input aborts inside the target, and the
 * last "replay: <file>" line on stderr names it when ZKM_REPLAY_VERBOSE is set.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int verbose;

static int run_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size > (64 << 20)) {
        fprintf(stderr, "replay: %s: cannot stat or too large\n", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size, got = 0;
    /* exactly size bytes, like libFuzzer gives them */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return -1;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (verbose)
        fprintf(stderr, "replay: %s\n", path);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    long n = 0, errors = 0;
    verbose = getenv("ZKM_REPLAY_VERBOSE") != NULL;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            errors++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            errors += run_file(argv[i]) < 0;
            n++;
            continue;
        }
        struct dirent **list;
        int count = scandir(argv[i], &list, NULL, alphasort);
        if (count < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            errors++;
            continue;
        }
        for (int k = 0; k < count; k++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], list[k]->d_name);
            if (list[k]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                errors += run_file(path) < 0;
                n++;
            }
            free(list[k]);
        }
        free(list);
    }
    printf("replayed %ld inputs, %ld unreadable\n", n, errors);
    return n > 0 && errors == 0 ? 0 : 1;
}
