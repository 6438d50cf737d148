/* slowsync.c -- an LD_PRELOAD shim for tests: while the file named by
 * $WB_SLOW_SYNC_FLAG exists, fdatasync() of a *-wal file sleeps for the
 * milliseconds that file holds before syncing, so a test can keep one
 * group in flight (committed, being synced) and see what the next, still
 * open group looks like from outside. Built by the test that uses it:
 *   cc -shared -fPIC -o slowsync.so slowsync.c -ldl
 * SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int (*real_fdatasync)(int);

/* The milliseconds to wait before syncing fd, 0 when not slowed. */
static long slow_ms(int fd) {
    const char *flag = getenv("WB_SLOW_SYNC_FLAG");
    char link[64], path[512];
    ssize_t n;
    long ms = 0;
    FILE *f;

    if (!flag || !(f = fopen(flag, "r")))
        return 0;
    if (fscanf(f, "%ld", &ms) != 1)
        ms = 0;
    fclose(f);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 4)
        return 0;
    path[n] = '\0';
    return strcmp(path + n - 4, "-wal") == 0 ? ms : 0;
}

int fdatasync(int fd) {
    long ms = slow_ms(fd);
    if (!real_fdatasync)
        real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return real_fdatasync(fd);
}
