/* config_int.h -- what config.c (the struct: lookups, freeing, and reading
 * one checked value out of Lua with its error message, "did you mean"
 * included) and config_build.c (building a config from the declarations
 * waybill.lua made) share. Private: included by config*.c only; everyone
 * else uses config.h.
 * Every reader takes the value at stack index vi, leaves the stack as it
 * was, and returns 0, or -1 with "where: what message" in the context's
 * err (config_fail); none raises but for a Lua memory error.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_CONFIG_INT_H
#define CORE_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "config.h"

/* The build under way: its messages go to err, each prefixed by where
 * (the "file:line" being checked) and what (the declaration or setting). */
struct config_ctx {
    lua_State *L;
    struct config *cfg;
    const char *lua_dir;
    char *err;
    size_t errlen;
    const char *where; /* "file:line" of what is being checked */
    char what[160];    /* "source atoship: ", "endpoint erp: ", "max_body: " */
};

/* ---- errors and suggestions ---- */

/* Writes "where: what" + the message into c->err; returns -1. */
int config_fail(struct config_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* config_fail(c, "out of memory"). */
int config_oom(struct config_ctx *c);

/* " (did you mean 'x'?)" for the closest of names (NULL-terminated) to
 * word, or "", written into buf (len bytes); returns buf. */
const char *config_suggest(const char *word, const char *const *names, char *buf, size_t len);

/* The index of word in names (NULL-terminated), or -1. */
int config_name_index(const char *word, const char *const *names);

/* ---- value readers ---- */

/* The Lua type name of the value at vi, for messages. */
const char *config_type_name(lua_State *L, int vi);

/* A non-empty string (borrowed from the Lua value). */
int config_get_string(struct config_ctx *c, int vi, const char *label, const char **out);

/* config_get_string, copied into *out (new; the old one freed). */
int config_dup_string(struct config_ctx *c, int vi, const char *label, char **out);

int config_get_bool(struct config_ctx *c, int vi, const char *label, int *out);

/* A whole number in min..max. */
int config_get_integer(struct config_ctx *c, int vi, const char *label, int64_t min, int64_t max,
                       int64_t *out);

/* "500ms", "30s", "5m", "2h", "1d", or a number of seconds, in ms. */
int config_get_duration(struct config_ctx *c, int vi, const char *label, int64_t *ms);

/* "1MiB", "512KiB", ..., or a number of bytes. */
int config_get_size(struct config_ctx *c, int vi, const char *label, size_t *bytes);

/* Pushes t[name] (raw). Returns its type. [-0, +1, -] */
int config_opt_get(lua_State *L, int t, const char *name);

/* Every key of table t must be one of names (NULL-terminated); kind names
 * them in the message ("unknown option 'x' (did you mean 'y'?)"). */
int config_check_keys(struct config_ctx *c, int t, const char *const *names, const char *kind);

/* path joined to base unless absolute (or base is NULL); new string, NULL
 * when out of memory. */
char *config_path_join(const char *base, const char *path);

/* A path string, made absolute against the config's folder, into *out
 * (new; the old one freed). */
int config_resolve_path(struct config_ctx *c, int vi, const char *label, char **out);

/* A source's or endpoint's name: 1-64 letters, digits, '_' or '-'. */
int config_name_ok(const char *s);

/* secret = "..." or { "...", "..." }: raw bytes, or whsec_-decoded when
 * whsec. Replaces *out and *n (new; the old ones wiped and freed). */
int config_get_secrets(struct config_ctx *c, int vi, int whsec, struct verify_secret **out,
                       size_t *n);

/* A CIDR ("10.0.0.0/8", "fd00::/8") or a bare address into out (host bits
 * cleared). Returns 0 or -1. */
int config_parse_cidr(const char *text, struct config_cidr *out);

/* "host:port" or "[v6]:port" with a port in 1..65535. */
int config_listen_ok(const char *s);

#endif
