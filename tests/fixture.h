/* fixture.h -- files for the unit tests that load a real config and rules:
 * the shipped Lua library's folder, and writing a test's files. Static
 * inline, so a test that uses one of them compiles without the others.
 * SPDX-License-Identifier: MIT */
#ifndef TESTS_FIXTURE_H
#define TESTS_FIXTURE_H

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The lua/ folder: $WAYBILL_LUA_DIR, ./lua, or ../../lua beside the test
 * binary (build/tests/test_x), resolved into out (PATH_MAX). Returns 0, or
 * -1 when none is found. */
static inline int fixture_lua_dir(char *out) {
    char exe[PATH_MAX], cand[PATH_MAX + 16];
    const char *env = getenv("WAYBILL_LUA_DIR");
    ssize_t n;
    struct stat st;

    if (env && realpath(env, out))
        return 0;
    if (stat("lua/waybill.lua", &st) == 0 && realpath("lua", out))
        return 0;
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    *(strrchr(exe, '/') ? strrchr(exe, '/') : exe) = '\0';
    snprintf(cand, sizeof cand, "%s/../../lua", exe);
    return realpath(cand, out) ? 0 : -1;
}

/* Writes text to the file at path. Returns 0 or -1. */
static inline int fixture_write_path(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* Writes text to dir/name. Returns 0 or -1. */
static inline int fixture_write(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return fixture_write_path(path, text);
}

#endif
