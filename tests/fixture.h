/* fixture.h -- files for the unit tests that load a real config and rules:
 * the shipped Lua library's folder, writing a test's files, and counting a
 * SQLite store's committed rows from outside. Static
 * inline, so a test that uses one of them compiles without the others.
 * SPDX-License-Identifier: MIT */
#ifndef TESTS_FIXTURE_H
#define TESTS_FIXTURE_H

#include <limits.h>
#include <sqlite3.h>
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

/* count(*) of sql (one ? bound to arg, if any) on a fresh read-only
 * connection to the SQLite file at path: what is committed, as another
 * process sees it. -1 when it cannot be read. */
static inline long long fixture_count(const char *path, const char *sql, const char *arg) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long n = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (arg)
            sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

#endif
