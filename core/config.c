/* config.c -- the configuration as C data: built from what lua/waybill.lua
 * collected while waybill.lua ran, checked field by field (errors carry the
 * file:line of the offending assignment, source or endpoint), then only read.
 * Invariant: a config that left config_from_lua with 0 passed every check;
 * a partial one is still consistent enough for config_free.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "jwks.h"
#include "util.h"

#define CONFIG_MIN_RULE_MEMORY ((size_t)1 << 20)

/* ---- lookups ---- */

const struct config_source *config_source_by_path(const struct config *cfg, const char *path) {
    for (size_t i = 0; cfg && path && i < cfg->nsources; i++)
        if (cfg->sources[i].path && strcmp(cfg->sources[i].path, path) == 0)
            return &cfg->sources[i];
    return NULL;
}

const struct config_source *config_source_by_name(const struct config *cfg, const char *name) {
    for (size_t i = 0; cfg && name && i < cfg->nsources; i++)
        if (cfg->sources[i].name && strcmp(cfg->sources[i].name, name) == 0)
            return &cfg->sources[i];
    return NULL;
}

int config_set_subscriptions(struct config *cfg, const struct config_subscription *v, size_t n) {
    struct config_subscription *copy = NULL;

    if (n && !(copy = malloc(n * sizeof *copy)))
        return -1;
    if (n)
        memcpy(copy, v, n * sizeof *copy);
    free(cfg->subs);
    cfg->subs = copy;
    cfg->nsubs = n;
    return 0;
}

void config_subscribers(const struct config *cfg, const char *type,
                        void (*emit)(void *ctx, const char *name), void *ctx) {
    for (size_t i = 0; cfg && type && i < cfg->nsubs; i++)
        if (util_glob_match(cfg->subs[i].pattern, type))
            emit(ctx, cfg->subs[i].ep->name);
}

const struct config_endpoint *config_endpoint_by_name(const struct config *cfg, const char *name) {
    for (size_t i = 0; cfg && name && i < cfg->nendpoints; i++)
        if (cfg->endpoints[i].name && strcmp(cfg->endpoints[i].name, name) == 0)
            return &cfg->endpoints[i];
    for (size_t i = 0; cfg && name && i < cfg->nsubs; i++)
        if (strcmp(cfg->subs[i].ep->name, name) == 0)
            return cfg->subs[i].ep;
    return NULL;
}

int64_t config_endpoint_window(const struct config *cfg, const struct config_endpoint *ep) {
    if (ep && ep->window_ms > 0)
        return ep->window_ms;
    return cfg && cfg->sandbox ? 5 * 60 * 1000 : 30 * 60 * 1000;
}

int config_private_allowed(const struct config *cfg, int family, const void *addr) {
    const unsigned char *a = addr;
    for (size_t i = 0; cfg && i < cfg->nallow_private; i++) {
        const struct config_cidr *c = &cfg->allow_private[i];
        int bits = c->prefix_len, full = bits / 8, rest = bits % 8;
        if (c->family != family)
            continue;
        if (memcmp(c->addr, a, (size_t)full) != 0)
            continue;
        if (rest && ((c->addr[full] ^ a[full]) & (0xff << (8 - rest)) & 0xff))
            continue;
        return 1;
    }
    return 0;
}

/* ---- freeing ---- */

static void secrets_free(struct verify_secret *s, size_t n) {
    for (size_t i = 0; s && i < n; i++) {
        if (s[i].key) {
            memset(s[i].key, 0, s[i].len);
            free(s[i].key);
        }
    }
    free(s);
}

static void source_clear(struct config_source *s) {
    free(s->name);
    free(s->path);
    free(s->verify_name);
    secrets_free(s->secrets, s->nsecrets);
    free(s->adapter);
    free(s->jwks);
    memset(s, 0, sizeof *s);
}

static void endpoint_clear(struct config_endpoint *e) {
    free(e->name);
    free(e->url);
    secrets_free(e->secrets, e->nsecrets);
    for (size_t i = 0; e->headers && i < e->nheaders; i++) {
        free(e->headers[i].name);
        free(e->headers[i].value);
    }
    free(e->headers);
    free(e->retry_ms);
    memset(e, 0, sizeof *e);
}

void config_free(struct config *cfg) {
    if (!cfg)
        return;
    free(cfg->file);
    free(cfg->dir);
    free(cfg->listen);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->admin_listen);
    if (cfg->admin_token) {
        memset(cfg->admin_token, 0, strlen(cfg->admin_token));
        free(cfg->admin_token);
    }
    free(cfg->store);
    free(cfg->allow_private);
    for (size_t i = 0; cfg->sources && i < cfg->nsources; i++)
        source_clear(&cfg->sources[i]);
    free(cfg->sources);
    for (size_t i = 0; cfg->endpoints && i < cfg->nendpoints; i++)
        endpoint_clear(&cfg->endpoints[i]);
    free(cfg->endpoints);
    free(cfg->subs);
    free(cfg->rules_dir);
    free(cfg);
}

/* ---- errors and suggestions ---- */

struct cctx {
    lua_State *L;
    struct config *cfg;
    const char *lua_dir;
    char *err;
    size_t errlen;
    const char *where; /* "file:line" of what is being checked */
    char what[160];    /* "source atoship: ", "endpoint erp: ", "max_body: " */
};

static int fail(struct cctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct cctx *c, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s%s", c->where ? c->where : "?", c->what, msg);
    return -1;
}

static int oom(struct cctx *c) {
    return fail(c, "out of memory");
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];
    if (la >= 63 || lb >= 63)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]), del = prev[j] + 1,
                   ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof cur[0]);
    }
    return prev[lb];
}

/* " (did you mean 'x'?)" for the closest of names, or "". */
static const char *suggest(const char *word, const char *const *names, char *buf, size_t len) {
    const char *best = NULL;
    size_t bestd = 3;
    buf[0] = '\0';
    for (size_t i = 0; names[i]; i++) {
        size_t d = edit_distance(word, names[i]);
        if (d < bestd) {
            bestd = d;
            best = names[i];
        }
    }
    if (best && bestd <= (strlen(word) > 3 ? 2u : 1u))
        snprintf(buf, len, " (did you mean '%s'?)", best);
    return buf;
}

static int name_index(const char *word, const char *const *names) {
    for (int i = 0; names[i]; i++)
        if (strcmp(word, names[i]) == 0)
            return i;
    return -1;
}

/* ---- value readers (the value is at stack index vi) ---- */

static const char *type_name(lua_State *L, int vi) {
    return luaL_typename(L, vi);
}

static int get_string(struct cctx *c, int vi, const char *label, const char **out) {
    if (lua_type(c->L, vi) != LUA_TSTRING)
        return fail(c, "%s must be a string, not a %s", label, type_name(c->L, vi));
    *out = lua_tostring(c->L, vi);
    if (!**out)
        return fail(c, "%s must not be empty", label);
    return 0;
}

static int dup_string(struct cctx *c, int vi, const char *label, char **out) {
    const char *s;
    if (get_string(c, vi, label, &s) < 0)
        return -1;
    free(*out);
    *out = strdup(s);
    return *out ? 0 : oom(c);
}

static int get_bool(struct cctx *c, int vi, const char *label, int *out) {
    if (lua_type(c->L, vi) != LUA_TBOOLEAN)
        return fail(c, "%s must be true or false, not a %s", label, type_name(c->L, vi));
    *out = lua_toboolean(c->L, vi);
    return 0;
}

static int get_integer(struct cctx *c, int vi, const char *label, int64_t min, int64_t max,
                       int64_t *out) {
    lua_Number d;
    if (lua_type(c->L, vi) != LUA_TNUMBER)
        return fail(c, "%s must be a number, not a %s", label, type_name(c->L, vi));
    if (lua_isinteger(c->L, vi)) {
        lua_Integer v = lua_tointeger(c->L, vi);
        if (v < min || v > max)
            return fail(c, "%s must be between %lld and %lld", label, (long long)min,
                        (long long)max);
        *out = v;
        return 0;
    }
    d = lua_tonumber(c->L, vi);
    if (!isfinite(d) || d != floor(d))
        return fail(c, "%s must be a whole number", label);
    if (d < (lua_Number)min || d > (lua_Number)max)
        return fail(c, "%s must be between %lld and %lld", label, (long long)min, (long long)max);
    *out = (int64_t)d;
    return 0;
}

static int get_duration(struct cctx *c, int vi, const char *label, int64_t *ms) {
    if (lua_type(c->L, vi) == LUA_TNUMBER) {
        lua_Number d = lua_tonumber(c->L, vi);
        if (!isfinite(d) || d < 0 || d > 9.2e15)
            return fail(c, "%s: bad duration %g (seconds)", label, (double)d);
        *ms = (int64_t)llround(d * 1000);
        return 0;
    }
    if (lua_type(c->L, vi) == LUA_TSTRING) {
        const char *s = lua_tostring(c->L, vi);
        if (util_duration_parse(s, ms) == 0)
            return 0;
        return fail(c,
                    "%s: bad duration '%s' (use e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\")",
                    label, s);
    }
    return fail(c, "%s must be a duration (e.g. \"30s\") or a number of seconds, not a %s", label,
                type_name(c->L, vi));
}

static int get_size(struct cctx *c, int vi, const char *label, size_t *bytes) {
    if (lua_type(c->L, vi) == LUA_TNUMBER) {
        lua_Number d = lua_tonumber(c->L, vi);
        if (!isfinite(d) || d < 0 || d > 1e18)
            return fail(c, "%s: bad size %g", label, (double)d);
        *bytes = (size_t)d;
        return 0;
    }
    if (lua_type(c->L, vi) == LUA_TSTRING) {
        const char *s = lua_tostring(c->L, vi);
        if (util_size_parse(s, bytes) == 0)
            return 0;
        return fail(c, "%s: bad size '%s' (use e.g. \"1MiB\", \"512KiB\", \"64MiB\")", label, s);
    }
    return fail(c, "%s must be a size (e.g. \"1MiB\") or a number of bytes, not a %s", label,
                type_name(c->L, vi));
}

/* Pushes t[name] (raw). Returns its type. */
static int opt_get(lua_State *L, int t, const char *name) {
    lua_pushstring(L, name);
    return lua_rawget(L, t);
}

/* Every key of table t must be one of names. */
static int check_keys(struct cctx *c, int t, const char *const *names, const char *kind) {
    lua_State *L = c->L;
    char hint[80];
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            int kt = lua_type(L, -1);
            lua_pop(L, 1);
            return fail(c, "%s keys must be names, not a %s", kind, lua_typename(L, kt));
        }
        if (name_index(lua_tostring(L, -1), names) < 0) {
            const char *k = lua_tostring(L, -1);
            int rc = fail(c, "unknown %s '%s'%s", kind, k, suggest(k, names, hint, sizeof hint));
            lua_pop(L, 1);
            return rc;
        }
    }
    return 0;
}

/* path joined to base unless absolute; new string. */
static char *path_join(const char *base, const char *path) {
    size_t bl, pl;
    char *out;
    if (path[0] == '/' || !base)
        return strdup(path);
    bl = strlen(base);
    pl = strlen(path);
    while (pl > 2 && path[0] == '.' && path[1] == '/') {
        path += 2;
        pl -= 2;
    }
    out = malloc(bl + pl + 2);
    if (out)
        snprintf(out, bl + pl + 2, "%s%s%s", base, bl && base[bl - 1] == '/' ? "" : "/", path);
    return out;
}

static int resolve_path(struct cctx *c, int vi, const char *label, char **out) {
    const char *s;
    if (get_string(c, vi, label, &s) < 0)
        return -1;
    free(*out);
    *out = path_join(c->cfg->dir, s);
    return *out ? 0 : oom(c);
}

/* A header name: an HTTP token. A value: no CR, LF or NUL. */
static int header_name_ok(const char *s) {
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!(((unsigned char)*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z') || strchr("!#$%&'*+-.^_`|~", *s)))
            return 0;
    return 1;
}

static int header_value_ok(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

static int name_ok(const char *s) {
    if (!*s || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!(((unsigned char)*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z') || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* secret = "..." or { "...", "..." }: raw bytes, or whsec_-decoded. */
static int get_secrets(struct cctx *c, int vi, int whsec, struct verify_secret **out, size_t *n) {
    lua_State *L = c->L;
    size_t count, i;
    struct verify_secret *s;

    secrets_free(*out, *n);
    *out = NULL;
    *n = 0;
    if (lua_type(L, vi) == LUA_TSTRING)
        count = 1;
    else if (lua_type(L, vi) == LUA_TTABLE)
        count = lua_rawlen(L, vi);
    else
        return fail(c, "secret must be a string or a list of strings, not a %s", type_name(L, vi));
    if (count == 0)
        return fail(c, "secret list is empty");
    s = calloc(count, sizeof *s);
    if (!s)
        return oom(c);
    *out = s;
    *n = count;
    for (i = 0; i < count; i++) {
        size_t len;
        const char *text;
        if (lua_type(L, vi) == LUA_TTABLE)
            lua_rawgeti(L, vi, (lua_Integer)i + 1);
        else
            lua_pushvalue(L, vi);
        if (lua_type(L, -1) != LUA_TSTRING) {
            int t = lua_type(L, -1);
            lua_pop(L, 1);
            return fail(c, "secret #%zu must be a string, not a %s", i + 1, lua_typename(L, t));
        }
        text = lua_tolstring(L, -1, &len);
        if (len == 0) {
            lua_pop(L, 1);
            return fail(c, "secret%s is empty", count > 1 ? " in the list" : "");
        }
        if (whsec) {
            s[i].key = verify_whsec_decode(text, &s[i].len);
            if (!s[i].key) {
                lua_pop(L, 1);
                return fail(c, "secret%s is not a whsec_<base64> key",
                            count > 1 ? " in the list" : "");
            }
        } else {
            s[i].key = malloc(len);
            if (!s[i].key) {
                lua_pop(L, 1);
                return oom(c);
            }
            memcpy(s[i].key, text, len);
            s[i].len = len;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int parse_cidr(const char *text, struct config_cidr *out) {
    char buf[64];
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    int maxbits;
    long bits;

    if (alen == 0 || alen >= sizeof buf)
        return -1;
    memcpy(buf, text, alen);
    buf[alen] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        maxbits = 128;
    } else {
        return -1;
    }
    if (slash) {
        char *end;
        if (!slash[1] || slash[1] == '-' || slash[1] == '+')
            return -1;
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (*end || errno || bits < 0 || bits > maxbits)
            return -1;
    } else {
        bits = maxbits;
    }
    out->prefix_len = (int)bits;
    for (int b = (int)bits; b < maxbits; b++) /* clear host bits */
        out->addr[b / 8] &= (unsigned char)~(0x80 >> (b % 8));
    return 0;
}

/* "host:port" or "[v6]:port" with a port in 1..65535. */
static int listen_ok(const char *s) {
    const char *colon = strrchr(s, ':');
    char *end;
    long port;
    if (!colon || !colon[1])
        return 0;
    if (s[0] == '[' && colon[-1] != ']')
        return 0;
    port = strtol(colon + 1, &end, 10);
    return *end == '\0' && port >= 1 && port <= 65535 && colon[1] != '-' && colon[1] != '+';
}

/* ---- top-level settings ---- */

static const char *const setting_names[] = {
    "environment", "listen",      "tls",           "admin",
    "store",       "max_body",    "allow_private", "shutdown_grace",
    "retention",   "max_backlog", "rule_budget",   "rule_memory",
    NULL};

static int setting_tls(struct cctx *c, int vi) {
    static const char *const keys[] = {"cert", "key", NULL};
    lua_State *L = c->L;
    free(c->cfg->tls_cert);
    free(c->cfg->tls_key);
    c->cfg->tls_cert = c->cfg->tls_key = NULL;
    if (lua_isnil(L, vi) || (lua_type(L, vi) == LUA_TBOOLEAN && !lua_toboolean(L, vi)))
        return 0;
    if (lua_type(L, vi) != LUA_TTABLE)
        return fail(c, "expected { cert = \"cert.pem\", key = \"key.pem\" }, not a %s",
                    type_name(L, vi));
    if (check_keys(c, vi, keys, "option") < 0)
        return -1;
    if (opt_get(L, vi, "cert") == LUA_TNIL)
        return fail(c, "cert is required");
    if (resolve_path(c, lua_gettop(L), "cert", &c->cfg->tls_cert) < 0)
        return -1;
    lua_pop(L, 1);
    if (opt_get(L, vi, "key") == LUA_TNIL)
        return fail(c, "key is required");
    if (resolve_path(c, lua_gettop(L), "key", &c->cfg->tls_key) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

static int setting_admin(struct cctx *c, int vi) {
    static const char *const keys[] = {"listen", "token", NULL};
    lua_State *L = c->L;
    struct config *cfg = c->cfg;

    free(cfg->admin_listen);
    cfg->admin_listen = NULL;
    if (cfg->admin_token) {
        memset(cfg->admin_token, 0, strlen(cfg->admin_token));
        free(cfg->admin_token);
        cfg->admin_token = NULL;
    }
    if (lua_isnil(L, vi) || (lua_type(L, vi) == LUA_TBOOLEAN && !lua_toboolean(L, vi)))
        return 0; /* admin API off */
    if (lua_type(L, vi) != LUA_TTABLE)
        return fail(c, "expected { listen = \"127.0.0.1:8081\", token = env(\"...\") }, not a %s",
                    type_name(L, vi));
    if (check_keys(c, vi, keys, "option") < 0)
        return -1;
    if (opt_get(L, vi, "listen") == LUA_TNIL) {
        cfg->admin_listen = strdup("127.0.0.1:8081");
        if (!cfg->admin_listen)
            return oom(c);
    } else {
        if (dup_string(c, lua_gettop(L), "listen", &cfg->admin_listen) < 0)
            return -1;
        if (!listen_ok(cfg->admin_listen))
            return fail(c, "listen: bad address '%s' (want host:port)", cfg->admin_listen);
    }
    lua_pop(L, 1);
    if (opt_get(L, vi, "token") == LUA_TNIL)
        return fail(c, "token is required (admin = { token = env(\"WAYBILL_ADMIN_TOKEN\") })");
    if (dup_string(c, lua_gettop(L), "token", &cfg->admin_token) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

static int setting_allow_private(struct cctx *c, int vi) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;
    size_t n;

    free(cfg->allow_private);
    cfg->allow_private = NULL;
    cfg->nallow_private = 0;
    if (lua_type(L, vi) == LUA_TSTRING) {
        n = 1;
    } else if (lua_type(L, vi) == LUA_TTABLE) {
        n = lua_rawlen(L, vi);
    } else {
        return fail(c, "expected a list of CIDRs, e.g. { \"10.0.0.0/8\" }, not a %s",
                    type_name(L, vi));
    }
    if (n == 0)
        return 0;
    cfg->allow_private = calloc(n, sizeof *cfg->allow_private);
    if (!cfg->allow_private)
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        if (lua_type(L, vi) == LUA_TTABLE)
            lua_rawgeti(L, vi, (lua_Integer)i + 1);
        else
            lua_pushvalue(L, vi);
        if (lua_type(L, -1) != LUA_TSTRING)
            return fail(c, "entry #%zu must be a CIDR string, not a %s", i + 1, type_name(L, -1));
        if (parse_cidr(lua_tostring(L, -1), &cfg->allow_private[i]) < 0)
            return fail(c, "bad CIDR '%s' (want e.g. \"10.0.0.0/8\" or \"fd00::/8\")",
                        lua_tostring(L, -1));
        cfg->nallow_private = i + 1;
        lua_pop(L, 1);
    }
    return 0;
}

static int setting(struct cctx *c, const char *key, int vi) {
    struct config *cfg = c->cfg;
    lua_State *L = c->L;
    int64_t v;
    const char *s;

    /* Value readers name the setting themselves ("max_body: bad size");
     * the table-valued ones prefix their own option names ("tls: key"). */
    c->what[0] = '\0';
    switch (name_index(key, setting_names)) {
    case 0: /* environment */
        snprintf(c->what, sizeof c->what, "environment: ");
        if (lua_type(L, vi) != LUA_TSTRING ||
            (strcmp(lua_tostring(L, vi), "production") && strcmp(lua_tostring(L, vi), "sandbox")))
            return fail(c, "must be \"production\" or \"sandbox\"");
        cfg->sandbox = strcmp(lua_tostring(L, vi), "sandbox") == 0;
        return 0;
    case 1: /* listen */
        if (dup_string(c, vi, "listen", &cfg->listen) < 0)
            return -1;
        if (!listen_ok(cfg->listen))
            return fail(c, "listen: bad address '%s' (want host:port, e.g. \"0.0.0.0:8080\")",
                        cfg->listen);
        return 0;
    case 2:
        snprintf(c->what, sizeof c->what, "tls: ");
        return setting_tls(c, vi);
    case 3:
        snprintf(c->what, sizeof c->what, "admin: ");
        return setting_admin(c, vi);
    case 4: /* store */
        if (get_string(c, vi, "store", &s) < 0)
            return -1;
        if (strncmp(s, "sqlite:", 7) != 0 && strncmp(s, "postgres://", 11) != 0 &&
            strncmp(s, "postgresql://", 13) != 0)
            return fail(c,
                        "store: unsupported store '%s' (use \"sqlite:FILE\" or "
                        "\"postgres://...\")",
                        s);
        if (strcmp(s, "sqlite:") == 0)
            return fail(c, "store: sqlite: needs a file name, e.g. \"sqlite:waybill.db\"");
        return dup_string(c, vi, "store", &cfg->store);
    case 5: /* max_body */
        if (get_size(c, vi, "max_body", &cfg->max_body) < 0)
            return -1;
        if (cfg->max_body == 0)
            return fail(c, "max_body must be more than 0 bytes");
        return 0;
    case 6:
        snprintf(c->what, sizeof c->what, "allow_private: ");
        return setting_allow_private(c, vi);
    case 7:
        return get_duration(c, vi, "shutdown_grace", &cfg->shutdown_grace_ms);
    case 8:
        return get_duration(c, vi, "retention", &cfg->retention_ms);
    case 9:
        return get_integer(c, vi, "max_backlog", 1, INT64_MAX / 2, &cfg->max_backlog);
    case 10:
        if (get_integer(c, vi, "rule_budget", 1, INT64_MAX / 4, &v) < 0)
            return -1;
        cfg->rule_budget = v;
        return 0;
    case 11:
        if (get_size(c, vi, "rule_memory", &cfg->rule_memory) < 0)
            return -1;
        if (cfg->rule_memory < CONFIG_MIN_RULE_MEMORY)
            return fail(c, "rule_memory must be at least 1MiB");
        return 0;
    default: {
        char hint[80];
        return fail(c, "unknown setting '%s'%s", key,
                    suggest(key, setting_names, hint, sizeof hint));
    }
    }
}

/* ---- sources ---- */

static const char *const source_opts[] = {"verify",   "secret",  "path", "tolerance",
                                          "insecure", "adapter", "jwks", NULL};

static int source_verify_table(struct cctx *c, struct config_source *src, int vi) {
    static const char *const keys[] = {"scheme", "header", "encoding", "prefix", NULL};
    lua_State *L = c->L;
    const char *scheme = "hmac-sha256", *s;

    if (check_keys(c, vi, keys, "verify option") < 0)
        return -1;
    if (opt_get(L, vi, "scheme") != LUA_TNIL) {
        if (get_string(c, lua_gettop(L), "verify.scheme", &scheme) < 0)
            return -1;
    }
    if (strcmp(scheme, "hmac-sha256") == 0) {
        memset(&src->verify, 0, sizeof src->verify);
        src->verify.kind = VERIFY_HMAC;
        src->verify.encoding = VERIFY_HEX;
    } else if (verify_preset(scheme, &src->verify) < 0) {
        return fail(c, "unknown verify scheme '%s'", scheme);
    }
    free(src->verify_name);
    src->verify_name = strdup(scheme);
    lua_pop(L, 1);
    if (!src->verify_name)
        return oom(c);

    if (opt_get(L, vi, "header") != LUA_TNIL) {
        if (get_string(c, lua_gettop(L), "verify.header", &s) < 0)
            return -1;
        if (!header_name_ok(s) || strlen(s) >= sizeof src->verify.header)
            return fail(c, "verify.header: bad header name '%s'", s);
        if (src->verify.kind != VERIFY_HMAC && src->verify.kind != VERIFY_STRIPE)
            return fail(c, "verify scheme '%s' takes no header", scheme);
        snprintf(src->verify.header, sizeof src->verify.header, "%s", s);
    } else if (src->verify.kind == VERIFY_HMAC && !src->verify.header[0]) {
        return fail(c, "verify.header is required (e.g. header = \"X-Signature\")");
    }
    lua_pop(L, 1);
    if (opt_get(L, vi, "encoding") != LUA_TNIL) {
        if (get_string(c, lua_gettop(L), "verify.encoding", &s) < 0)
            return -1;
        if (strcmp(s, "hex") == 0)
            src->verify.encoding = VERIFY_HEX;
        else if (strcmp(s, "base64") == 0)
            src->verify.encoding = VERIFY_BASE64;
        else
            return fail(c, "verify.encoding must be \"hex\" or \"base64\"");
    }
    lua_pop(L, 1);
    if (opt_get(L, vi, "prefix") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            return fail(c, "verify.prefix must be a string");
        s = lua_tostring(L, -1);
        if (strlen(s) >= sizeof src->verify.prefix)
            return fail(c, "verify.prefix is too long");
        snprintf(src->verify.prefix, sizeof src->verify.prefix, "%s", s);
    }
    lua_pop(L, 1);
    return 0;
}

/* A shipped adapter name ("atoship") or a file relative to the config. */
static int source_adapter(struct cctx *c, struct config_source *src, int vi) {
    const char *s;
    size_t len;
    if (lua_type(c->L, vi) == LUA_TFUNCTION)
        return 0; /* rules.c keeps the function */
    if (get_string(c, vi, "adapter", &s) < 0)
        return fail(c, "adapter must be a file name or a function");
    len = strlen(s);
    if (strchr(s, '/') || (len > 4 && strcmp(s + len - 4, ".lua") == 0)) {
        src->adapter = path_join(c->cfg->dir, s);
    } else {
        if (!name_ok(s))
            return fail(c, "adapter: bad adapter name '%s'", s);
        src->adapter = malloc(strlen(c->lua_dir) + len + 16);
        if (src->adapter)
            sprintf(src->adapter, "%s/sources/%s.lua", c->lua_dir, s);
    }
    return src->adapter ? 0 : oom(c);
}

/* verify = a preset name, the table form, or (absent) the source's name
 * as a preset. Sets src->verify and src->verify_name. */
static int source_verify(struct cctx *c, struct config_source *src, const char *name, int opts) {
    static const char *const presets[] = {"generic", "atoship",  "aftership", "easypost",
                                          "stripe",  "standard", "shiptify",  "shipengine",
                                          "none",    NULL};
    lua_State *L = c->L;
    char hint[80];
    const char *s;

    switch (opt_get(L, opts, "verify")) {
    case LUA_TNIL:
        if (strcmp(name, "none") == 0 || verify_preset(name, &src->verify) < 0)
            return fail(c, "verify is required (a preset such as \"atoship\", or { scheme = "
                           "\"hmac-sha256\", header = ..., encoding = ... })");
        src->verify_name = strdup(name);
        break;
    case LUA_TSTRING:
        s = lua_tostring(L, -1);
        if (strcmp(s, "hmac-sha256") == 0)
            return fail(c, "verify \"hmac-sha256\" takes the table form: { scheme = "
                           "\"hmac-sha256\", header = \"X-Signature\", encoding = \"hex\" }");
        if (verify_preset(s, &src->verify) < 0)
            return fail(c, "unknown verify preset '%s'%s", s,
                        suggest(s, presets, hint, sizeof hint));
        src->verify_name = strdup(s);
        break;
    case LUA_TTABLE:
        if (source_verify_table(c, src, lua_gettop(L)) < 0)
            return -1;
        break;
    default:
        return fail(c, "verify must be a preset name or a table, not a %s", type_name(L, -1));
    }
    lua_pop(L, 1);
    if (!src->verify_name)
        return oom(c);
    return 0;
}

/* path = "/..." (no query, fragment or spaces); default "/hooks/<name>". */
static int source_path(struct cctx *c, struct config_source *src, const char *name, int opts) {
    lua_State *L = c->L;

    if (opt_get(L, opts, "path") != LUA_TNIL) {
        if (dup_string(c, lua_gettop(L), "path", &src->path) < 0)
            return -1;
        if (src->path[0] != '/' || strpbrk(src->path, "?# \t\r\n"))
            return fail(c, "path must start with '/' and hold no '?', '#' or spaces");
    } else {
        src->path = malloc(strlen(name) + 8);
        if (!src->path)
            return oom(c);
        sprintf(src->path, "/hooks/%s", name);
    }
    lua_pop(L, 1);
    return 0;
}

/* jwks = a URL, or a file relative to the config. */
static int source_jwks(struct cctx *c, struct config_source *src, int opts) {
    lua_State *L = c->L;
    const char *s;

    if (opt_get(L, opts, "jwks") != LUA_TNIL) {
        if (get_string(c, lua_gettop(L), "jwks", &s) < 0)
            return -1;
        if (strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0)
            src->jwks = strdup(s);
        else
            src->jwks = path_join(c->cfg->dir, s);
        if (!src->jwks)
            return oom(c);
    }
    lua_pop(L, 1);
    return 0;
}

/* What the verify scheme needs besides itself: insecure = true for
 * "none", a loadable JWKS for shipengine, else a secret. */
static int source_check_scheme(struct cctx *c, const struct config_source *src, int has_secret) {
    switch (src->verify.kind) {
    case VERIFY_NONE:
        if (!src->insecure)
            return fail(c, "verify \"none\" needs insecure = true");
        break;
    case VERIFY_SHIPENGINE:
        if (!src->jwks)
            return fail(c, "verify \"shipengine\" needs jwks (a JWKS file or URL)");
        if (src->jwks[0] == '/') {
            /* A file is checked now, so check and reload report a bad one. */
            char why[300];
            struct jwks_set *set = jwks_set_load(src->jwks, why, sizeof why);
            if (!set)
                return fail(c, "jwks: %s", why);
            jwks_set_free(set);
        }
        break;
    default:
        if (!has_secret)
            return fail(c, "verify \"%s\" needs a secret", src->verify_name);
    }
    return 0;
}

/* One source "NAME" { opts }: every option checked, in a fixed order (so
 * the first bad one is the one reported). */
static int source_build(struct cctx *c, struct config_source *src, const char *name, int opts) {
    lua_State *L = c->L;
    int has_secret;

    snprintf(c->what, sizeof c->what, "source %s: ", name);
    if (!name_ok(name))
        return fail(c, "the name must be 1-64 letters, digits, '_' or '-'");
    if (!(src->name = strdup(name)))
        return oom(c);
    if (check_keys(c, opts, source_opts, "option") < 0)
        return -1;
    if (source_verify(c, src, name, opts) < 0)
        return -1;

    if (opt_get(L, opts, "tolerance") != LUA_TNIL &&
        get_duration(c, lua_gettop(L), "tolerance", &src->verify.tolerance_ms) < 0)
        return -1;
    lua_pop(L, 1);
    if (opt_get(L, opts, "insecure") != LUA_TNIL &&
        get_bool(c, lua_gettop(L), "insecure", &src->insecure) < 0)
        return -1;
    lua_pop(L, 1);

    has_secret = opt_get(L, opts, "secret") != LUA_TNIL;
    if (has_secret && get_secrets(c, lua_gettop(L), src->verify.kind == VERIFY_STANDARD,
                                  &src->secrets, &src->nsecrets) < 0)
        return -1;
    lua_pop(L, 1);

    if (source_path(c, src, name, opts) < 0)
        return -1;
    if (opt_get(L, opts, "adapter") != LUA_TNIL && source_adapter(c, src, lua_gettop(L)) < 0)
        return -1;
    lua_pop(L, 1);
    if (source_jwks(c, src, opts) < 0)
        return -1;
    return source_check_scheme(c, src, has_secret);
}

/* ---- endpoints ---- */

static const char *const endpoint_opts[] = {
    "url",  "secret", "sign",      "headers", "timeout", "retry",         "jitter",  "concurrency",
    "rate", "window", "max_batch", "success", "ordered", "disable_after", "enabled", NULL};

static int retry_preset(const char *name, int64_t **out, size_t *n) {
    static const int64_t atoship[] = {0, 60000, 300000, 1800000, 7200000, 21600000};
    static const int64_t shipengine[] = {0, 7200000, 7200000};
    static const int64_t shiptify[] = {0, 1800000, 3600000, 14400000, 86400000};
    const int64_t *p;
    size_t count;

    if (strcmp(name, "atoship") == 0) {
        p = atoship;
        count = sizeof atoship / sizeof atoship[0];
    } else if (strcmp(name, "shipengine") == 0) {
        p = shipengine;
        count = sizeof shipengine / sizeof shipengine[0];
    } else if (strcmp(name, "shiptify") == 0) {
        p = shiptify;
        count = sizeof shiptify / sizeof shiptify[0];
    } else {
        return 1;
    }
    free(*out);
    *out = malloc(count * sizeof **out);
    if (!*out)
        return -1;
    memcpy(*out, p, count * sizeof **out);
    *n = count;
    return 0;
}

static int endpoint_retry(struct cctx *c, struct config_endpoint *ep, int vi) {
    lua_State *L = c->L;
    size_t n;
    if (lua_type(L, vi) == LUA_TSTRING) {
        int rc = retry_preset(lua_tostring(L, vi), &ep->retry_ms, &ep->nretry);
        if (rc < 0)
            return oom(c);
        if (rc > 0)
            return fail(c,
                        "unknown retry preset '%s' (atoship, shipengine, shiptify, or a list "
                        "of delays such as { \"0s\", \"1m\", \"10m\" })",
                        lua_tostring(L, vi));
        return 0;
    }
    if (lua_type(L, vi) != LUA_TTABLE)
        return fail(c, "retry must be a preset name or a list of delays, not a %s",
                    type_name(L, vi));
    n = lua_rawlen(L, vi);
    if (n == 0 || n > 100)
        return fail(c, "retry: the list needs 1 to 100 delays");
    free(ep->retry_ms);
    ep->nretry = 0;
    if (!(ep->retry_ms = calloc(n, sizeof *ep->retry_ms)))
        return oom(c);
    for (size_t i = 0; i < n; i++) {
        char label[32];
        lua_rawgeti(L, vi, (lua_Integer)i + 1);
        snprintf(label, sizeof label, "retry #%zu", i + 1);
        if (get_duration(c, lua_gettop(L), label, &ep->retry_ms[i]) < 0)
            return -1;
        ep->nretry = i + 1;
        lua_pop(L, 1);
    }
    return 0;
}

static int header_cmp(const void *a, const void *b) {
    return strcasecmp(((const struct config_header *)a)->name,
                      ((const struct config_header *)b)->name);
}

static int endpoint_headers(struct cctx *c, struct config_endpoint *ep, int vi) {
    lua_State *L = c->L;
    size_t n = 0;
    if (lua_type(L, vi) != LUA_TTABLE)
        return fail(c, "headers must be a table of name = value, not a %s", type_name(L, vi));
    lua_pushnil(L);
    while (lua_next(L, vi)) {
        lua_pop(L, 1);
        n++;
    }
    if (n == 0)
        return 0;
    if (!(ep->headers = calloc(n, sizeof *ep->headers)))
        return oom(c);
    lua_pushnil(L);
    while (lua_next(L, vi)) {
        struct config_header *h = &ep->headers[ep->nheaders];
        const char *k;
        size_t vlen;
        if (lua_type(L, -2) != LUA_TSTRING || !header_name_ok(lua_tostring(L, -2))) {
            lua_pop(L, 2);
            return fail(c, "headers: bad header name");
        }
        k = lua_tostring(L, -2);
        if (lua_type(L, -1) != LUA_TSTRING) {
            int rc = fail(c, "headers: %s must be a string", k);
            lua_pop(L, 2);
            return rc;
        }
        lua_tolstring(L, -1, &vlen);
        if (!header_value_ok(lua_tostring(L, -1), vlen)) {
            int rc = fail(c, "headers: %s holds a line break or NUL", k);
            lua_pop(L, 2);
            return rc;
        }
        h->name = strdup(k);
        h->value = strdup(lua_tostring(L, -1));
        ep->nheaders++;
        lua_pop(L, 1);
        if (!h->name || !h->value) {
            lua_pop(L, 1);
            return oom(c);
        }
    }
    qsort(ep->headers, ep->nheaders, sizeof *ep->headers, header_cmp);
    return 0;
}

/* The defaults of every endpoint option (the atoship retry preset among
 * them). Returns 0, or -1 when out of memory. */
static int endpoint_defaults(struct config_endpoint *ep) {
    ep->sign = SIGN_STANDARD;
    ep->timeout_ms = 5000;
    ep->jitter = 1;
    ep->concurrency = 16;
    ep->max_batch = 1000;
    ep->success = CONFIG_SUCCESS_2XX;
    ep->disable_after_ms = 5LL * 86400 * 1000;
    ep->enabled = 1;
    return retry_preset("atoship", &ep->retry_ms, &ep->nretry) < 0 ? -1 : 0;
}

/* url = an http:// or https:// URL with a host and no whitespace. */
static int endpoint_url(struct cctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;

    if (opt_get(L, opts, "url") == LUA_TNIL)
        return fail(c, "url is required");
    if (dup_string(c, lua_gettop(L), "url", &ep->url) < 0)
        return -1;
    if (!((strncasecmp(ep->url, "http://", 7) == 0 && ep->url[7] && ep->url[7] != '/') ||
          (strncasecmp(ep->url, "https://", 8) == 0 && ep->url[8] && ep->url[8] != '/')) ||
        strpbrk(ep->url, " \t\r\n"))
        return fail(c, "url must be an http:// or https:// URL, not '%s'", ep->url);
    lua_pop(L, 1);
    return 0;
}

/* sign = a preset (default "standard") and the secret(s) it signs with,
 * whsec_ keys for "standard"; only "none" goes without. */
static int endpoint_signing(struct cctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;
    const char *sign_name = "standard";
    int has_secret, top;

    if (opt_get(L, opts, "sign") != LUA_TNIL) {
        if (get_string(c, lua_gettop(L), "sign", &sign_name) < 0)
            return -1;
        if (verify_sign_scheme_parse(sign_name, &ep->sign) < 0)
            return fail(c, "unknown sign preset '%s' (standard, hex, atoship, aftership, none)",
                        sign_name);
    }
    top = lua_gettop(L); /* keep sign_name's string alive until the secret check */

    has_secret = opt_get(L, opts, "secret") != LUA_TNIL;
    if (has_secret &&
        get_secrets(c, lua_gettop(L), ep->sign == SIGN_STANDARD, &ep->secrets, &ep->nsecrets) < 0)
        return -1;
    lua_pop(L, 1);
    if (ep->sign != SIGN_NONE && !has_secret)
        return fail(c, "sign \"%s\" needs a secret", sign_name);
    lua_settop(L, top - 1);
    return 0;
}

/* How each request goes out: headers, timeout, retry, jitter,
 * concurrency, rate. */
static int endpoint_sending(struct cctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;
    int64_t v;

    if (opt_get(L, opts, "headers") != LUA_TNIL && endpoint_headers(c, ep, lua_gettop(L)) < 0)
        return -1;
    lua_pop(L, 1);
    if (opt_get(L, opts, "timeout") != LUA_TNIL) {
        if (get_duration(c, lua_gettop(L), "timeout", &ep->timeout_ms) < 0)
            return -1;
        if (ep->timeout_ms <= 0)
            return fail(c, "timeout must be more than 0");
    }
    lua_pop(L, 1);
    if (opt_get(L, opts, "retry") != LUA_TNIL && endpoint_retry(c, ep, lua_gettop(L)) < 0)
        return -1;
    lua_pop(L, 1);
    if (opt_get(L, opts, "jitter") != LUA_TNIL &&
        get_bool(c, lua_gettop(L), "jitter", &ep->jitter) < 0)
        return -1;
    lua_pop(L, 1);
    if (opt_get(L, opts, "concurrency") != LUA_TNIL) {
        if (get_integer(c, lua_gettop(L), "concurrency", 1, 100000, &v) < 0)
            return -1;
        ep->concurrency = (int)v;
    }
    lua_pop(L, 1);
    if (opt_get(L, opts, "rate") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0) ||
            !isfinite(lua_tonumber(L, -1)))
            return fail(c, "rate must be a number of deliveries per second above 0");
        ep->rate = (double)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Batching, what counts as delivered, ordering and when to stop: window,
 * max_batch, success, ordered, disable_after, enabled. */
static int endpoint_policy(struct cctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;
    int64_t v;

    if (opt_get(L, opts, "window") != LUA_TNIL) {
        if (get_duration(c, lua_gettop(L), "window", &ep->window_ms) < 0)
            return -1;
        if (ep->window_ms <= 0)
            return fail(c, "window must be more than 0");
    }
    lua_pop(L, 1);
    if (opt_get(L, opts, "max_batch") != LUA_TNIL) {
        if (get_integer(c, lua_gettop(L), "max_batch", 1, 1000000, &v) < 0)
            return -1;
        ep->max_batch = (int)v;
    }
    lua_pop(L, 1);
    if (opt_get(L, opts, "success") != LUA_TNIL) {
        if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "2xx") == 0)
            ep->success = CONFIG_SUCCESS_2XX;
        else if ((lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "200") == 0) ||
                 (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 200))
            ep->success = CONFIG_SUCCESS_200;
        else
            return fail(c, "success must be \"2xx\" or \"200\"");
    }
    lua_pop(L, 1);
    if (opt_get(L, opts, "ordered") != LUA_TNIL &&
        get_bool(c, lua_gettop(L), "ordered", &ep->ordered) < 0)
        return -1;
    lua_pop(L, 1);
    if (opt_get(L, opts, "disable_after") != LUA_TNIL) {
        if (get_duration(c, lua_gettop(L), "disable_after", &ep->disable_after_ms) < 0)
            return -1;
        if (ep->disable_after_ms <= 0)
            return fail(c, "disable_after must be more than 0");
    }
    lua_pop(L, 1);
    if (opt_get(L, opts, "enabled") != LUA_TNIL &&
        get_bool(c, lua_gettop(L), "enabled", &ep->enabled) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

/* One endpoint "NAME" { opts }: defaults, then every option checked in a
 * fixed order (so the first bad one is the one reported). */
static int endpoint_build(struct cctx *c, struct config_endpoint *ep, const char *name, int opts) {
    snprintf(c->what, sizeof c->what, "endpoint %s: ", name);
    if (!name_ok(name))
        return fail(c, "the name must be 1-64 letters, digits, '_' or '-'");
    if (!(ep->name = strdup(name)))
        return oom(c);
    if (endpoint_defaults(ep) < 0)
        return oom(c);
    if (check_keys(c, opts, endpoint_opts, "option") < 0)
        return -1;
    if (endpoint_url(c, ep, opts) < 0 || endpoint_signing(c, ep, opts) < 0 ||
        endpoint_sending(c, ep, opts) < 0 || endpoint_policy(c, ep, opts) < 0)
        return -1;
    return 0;
}

/* ---- the whole config ---- */

/* Reads decl.{name, opts, where} of the list entry at the top. Leaves
 * name, opts, where pushed (3 values). */
static int decl_fields(struct cctx *c, const char **name, int *opts) {
    lua_State *L = c->L;
    int e = lua_gettop(L);
    opt_get(L, e, "where");
    c->where = lua_tostring(L, -1);
    opt_get(L, e, "name");
    *name = lua_tostring(L, -1);
    opt_get(L, e, "opts");
    *opts = lua_gettop(L);
    if (!*name)
        return fail(c, "a declaration without a name");
    if (!lua_istable(L, *opts))
        return fail(c, "%s: options must be a table", *name);
    return 0;
}

/* The "where" of entry j (0-based) of the declaration list; pushes it. */
static const char *first_where(lua_State *L, int list, size_t j) {
    const char *w;
    lua_rawgeti(L, list, (lua_Integer)j + 1);
    opt_get(L, lua_gettop(L), "where");
    w = lua_tostring(L, -1);
    return w ? w : "?";
}

/* settings, in the order they were assigned (a later one wins). */
static int build_settings(struct cctx *c, int idx) {
    lua_State *L = c->L;
    size_t n;
    int list;

    opt_get(L, idx, "settings");
    list = lua_gettop(L);
    n = lua_istable(L, list) ? lua_rawlen(L, list) : 0;
    for (size_t i = 1; i <= n; i++) {
        int e;
        lua_rawgeti(L, list, (lua_Integer)i);
        e = lua_gettop(L);
        opt_get(L, e, "where");
        c->where = lua_tostring(L, -1);
        opt_get(L, e, "key");
        c->what[0] = '\0';
        if (lua_type(L, -1) != LUA_TSTRING)
            return fail(c, "unknown setting (a %s key)", type_name(L, -1));
        opt_get(L, e, "value");
        if (setting(c, lua_tostring(L, -2), lua_gettop(L)) < 0)
            return -1;
        lua_settop(L, list);
    }
    lua_settop(L, list - 1);
    return 0;
}

/* source "NAME" { ... } declarations: no name or path used twice. */
static int build_sources(struct cctx *c, int idx) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;
    size_t n;
    int list;

    opt_get(L, idx, "sources");
    list = lua_gettop(L);
    n = lua_istable(L, list) ? lua_rawlen(L, list) : 0;
    if (n) {
        if (!(cfg->sources = calloc(n, sizeof *cfg->sources)))
            return oom(c);
        cfg->nsources = n;
    }
    for (size_t i = 0; i < n; i++) {
        struct config_source *src = &cfg->sources[i];
        const char *name;
        int opts;
        lua_rawgeti(L, list, (lua_Integer)i + 1);
        c->what[0] = '\0';
        if (decl_fields(c, &name, &opts) < 0 || source_build(c, src, name, opts) < 0)
            return -1;
        for (size_t j = 0; j < i; j++) {
            c->what[0] = '\0';
            if (strcmp(cfg->sources[j].name, src->name) == 0)
                return fail(c, "source %s is declared twice (first at %s)", name,
                            first_where(L, list, j));
            if (strcmp(cfg->sources[j].path, src->path) == 0)
                return fail(c, "source %s: path %s is already used by source %s", name, src->path,
                            cfg->sources[j].name);
        }
        lua_settop(L, list);
    }
    lua_settop(L, list - 1);
    return 0;
}

/* endpoint "NAME" { ... } declarations: no name used twice. */
static int build_endpoints(struct cctx *c, int idx) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;
    size_t n;
    int list;

    opt_get(L, idx, "endpoints");
    list = lua_gettop(L);
    n = lua_istable(L, list) ? lua_rawlen(L, list) : 0;
    if (n) {
        if (!(cfg->endpoints = calloc(n, sizeof *cfg->endpoints)))
            return oom(c);
        cfg->nendpoints = n;
    }
    for (size_t i = 0; i < n; i++) {
        struct config_endpoint *ep = &cfg->endpoints[i];
        const char *name;
        int opts;
        lua_rawgeti(L, list, (lua_Integer)i + 1);
        c->what[0] = '\0';
        if (decl_fields(c, &name, &opts) < 0 || endpoint_build(c, ep, name, opts) < 0)
            return -1;
        for (size_t j = 0; j < i; j++) {
            c->what[0] = '\0';
            if (strcmp(cfg->endpoints[j].name, ep->name) == 0)
                return fail(c, "endpoint %s is declared twice (first at %s)", name,
                            first_where(L, list, j));
        }
        lua_settop(L, list);
    }
    lua_settop(L, list - 1);
    return 0;
}

/* rules "dir/": the folder, absolute and without trailing slashes. */
static int build_rules_dir(struct cctx *c, int idx) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;

    if (opt_get(L, idx, "rules") == LUA_TTABLE) {
        int t = lua_gettop(L);
        opt_get(L, t, "where");
        c->where = lua_tostring(L, -1);
        snprintf(c->what, sizeof c->what, "rules: ");
        opt_get(L, t, "dir");
        if (lua_type(L, -1) != LUA_TSTRING || !*lua_tostring(L, -1))
            return fail(c, "expected a folder name, e.g. rules \"rules/\"");
        cfg->rules_dir = path_join(cfg->dir, lua_tostring(L, -1));
        if (!cfg->rules_dir)
            return oom(c);
        for (size_t l = strlen(cfg->rules_dir); l > 1 && cfg->rules_dir[l - 1] == '/'; l--)
            cfg->rules_dir[l - 1] = '\0';
        lua_settop(L, t);
    }
    lua_pop(L, 1);
    return 0;
}

/* The whole config from the declarations table at idx, in the order the
 * checks report in: settings, sources, endpoints, the rules folder. */
static int build(struct cctx *c, int idx) {
    if (build_settings(c, idx) < 0 || build_sources(c, idx) < 0 || build_endpoints(c, idx) < 0 ||
        build_rules_dir(c, idx) < 0)
        return -1;
    return 0;
}

int config_from_lua(struct lua_State *L, int idx, const char *config_path, const char *lua_dir,
                    struct config **out, char *err, size_t errlen) {
    struct config *cfg = calloc(1, sizeof *cfg);
    struct cctx c;
    char *slash;
    int top = lua_gettop(L), rc;

    *out = cfg;
    if (!cfg) {
        snprintf(err, errlen, "%s: out of memory", config_path);
        return -1;
    }
    cfg->listen = strdup("0.0.0.0:8080");
    cfg->store = strdup("sqlite:waybill.db");
    cfg->max_body = (size_t)1 << 20;
    cfg->shutdown_grace_ms = 10 * 1000;
    cfg->retention_ms = 30LL * 86400 * 1000;
    cfg->max_backlog = 10000000;
    cfg->rule_budget = 1000000;
    cfg->rule_memory = (size_t)64 << 20;
    cfg->file = realpath(config_path, NULL);
    if (!cfg->listen || !cfg->store || !cfg->file) {
        snprintf(err, errlen, "%s: %s", config_path, cfg->file ? "out of memory" : strerror(errno));
        goto fail;
    }
    if (!(cfg->dir = strdup(cfg->file))) {
        snprintf(err, errlen, "%s: out of memory", config_path);
        goto fail;
    }
    slash = strrchr(cfg->dir, '/');
    if (slash == cfg->dir)
        slash[1] = '\0'; /* "/waybill.lua" -> "/" */
    else if (slash)
        *slash = '\0';

    memset(&c, 0, sizeof c);
    c.L = L;
    c.cfg = cfg;
    c.lua_dir = lua_dir;
    c.err = err;
    c.errlen = errlen;
    c.where = config_path;
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 20, "config");
    rc = build(&c, idx);
    lua_settop(L, top);
    if (rc == 0)
        return 0;
fail:
    config_free(cfg);
    *out = NULL;
    return -1;
}
