/* config.c -- the configuration as C data: the struct's lookups and
 * freeing, and reading one checked value out of Lua with its error message
 * ("file:line: what: message", "did you mean" included) for config_build.c,
 * which builds a config from what lua/waybill.lua collected (config_int.h).
 * Invariant: a config that left config_from_lua with 0 passed every check;
 * a partial one is still consistent enough for config_free.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "config_int.h"
#include "util.h"

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

    if (n && n <= cfg->nsubs) { /* fewer (a removal): in place, so it cannot fail */
        memmove(cfg->subs, v, n * sizeof *v);
        cfg->nsubs = n;
        return 0;
    }
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
    free(s->carrier);
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
    free(e->order_key);
    memset(e, 0, sizeof *e);
}

void config_free(struct config *cfg) {
    if (!cfg)
        return;
    free(cfg->file);
    free(cfg->dir);
    free(cfg->listen);
    free(cfg->listen_where);
    free(cfg->admin_where);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    free(cfg->admin_listen);
    if (cfg->admin_token) {
        memset(cfg->admin_token, 0, strlen(cfg->admin_token));
        free(cfg->admin_token);
    }
    free(cfg->store);
    free(cfg->pidfile);
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

int config_fail(struct config_ctx *c, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s%s", c->where ? c->where : "?", c->what, msg);
    return -1;
}

int config_oom(struct config_ctx *c) {
    return config_fail(c, "out of memory");
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
const char *config_suggest(const char *word, const char *const *names, char *buf, size_t len) {
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

int config_name_index(const char *word, const char *const *names) {
    for (int i = 0; names[i]; i++)
        if (strcmp(word, names[i]) == 0)
            return i;
    return -1;
}

/* ---- value readers (the value is at stack index vi) ---- */

const char *config_type_name(lua_State *L, int vi) {
    return luaL_typename(L, vi);
}

int config_get_string(struct config_ctx *c, int vi, const char *label, const char **out) {
    if (lua_type(c->L, vi) != LUA_TSTRING)
        return config_fail(c, "%s must be a string, not a %s", label, config_type_name(c->L, vi));
    *out = lua_tostring(c->L, vi);
    if (!**out)
        return config_fail(c, "%s must not be empty", label);
    return 0;
}

int config_dup_string(struct config_ctx *c, int vi, const char *label, char **out) {
    const char *s;
    if (config_get_string(c, vi, label, &s) < 0)
        return -1;
    free(*out);
    *out = strdup(s);
    return *out ? 0 : config_oom(c);
}

int config_get_bool(struct config_ctx *c, int vi, const char *label, int *out) {
    if (lua_type(c->L, vi) != LUA_TBOOLEAN)
        return config_fail(c, "%s must be true or false, not a %s", label,
                           config_type_name(c->L, vi));
    *out = lua_toboolean(c->L, vi);
    return 0;
}

int config_get_integer(struct config_ctx *c, int vi, const char *label, int64_t min, int64_t max,
                       int64_t *out) {
    lua_Number d;
    if (lua_type(c->L, vi) != LUA_TNUMBER)
        return config_fail(c, "%s must be a number, not a %s", label, config_type_name(c->L, vi));
    if (lua_isinteger(c->L, vi)) {
        lua_Integer v = lua_tointeger(c->L, vi);
        if (v < min || v > max)
            return config_fail(c, "%s must be between %lld and %lld", label, (long long)min,
                               (long long)max);
        *out = v;
        return 0;
    }
    d = lua_tonumber(c->L, vi);
    if (!isfinite(d) || d != floor(d))
        return config_fail(c, "%s must be a whole number", label);
    if (d < (lua_Number)min || d > (lua_Number)max)
        return config_fail(c, "%s must be between %lld and %lld", label, (long long)min,
                           (long long)max);
    *out = (int64_t)d;
    return 0;
}

int config_get_duration(struct config_ctx *c, int vi, const char *label, int64_t *ms) {
    if (lua_type(c->L, vi) == LUA_TNUMBER) {
        lua_Number d = lua_tonumber(c->L, vi);
        if (!isfinite(d) || d < 0 || d > 9.2e15)
            return config_fail(c, "%s: bad duration %g (seconds)", label, (double)d);
        *ms = (int64_t)llround(d * 1000);
        return 0;
    }
    if (lua_type(c->L, vi) == LUA_TSTRING) {
        const char *s = lua_tostring(c->L, vi);
        if (util_duration_parse(s, ms) == 0)
            return 0;
        return config_fail(
            c, "%s: bad duration '%s' (use e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\")", label,
            s);
    }
    return config_fail(c, "%s must be a duration (e.g. \"30s\") or a number of seconds, not a %s",
                       label, config_type_name(c->L, vi));
}

int config_get_size(struct config_ctx *c, int vi, const char *label, size_t *bytes) {
    if (lua_type(c->L, vi) == LUA_TNUMBER) {
        lua_Number d = lua_tonumber(c->L, vi);
        if (!isfinite(d) || d < 0 || d > 1e18)
            return config_fail(c, "%s: bad size %g", label, (double)d);
        *bytes = (size_t)d;
        return 0;
    }
    if (lua_type(c->L, vi) == LUA_TSTRING) {
        const char *s = lua_tostring(c->L, vi);
        if (util_size_parse(s, bytes) == 0)
            return 0;
        return config_fail(c, "%s: bad size '%s' (use e.g. \"1MiB\", \"512KiB\", \"64MiB\")", label,
                           s);
    }
    return config_fail(c, "%s must be a size (e.g. \"1MiB\") or a number of bytes, not a %s", label,
                       config_type_name(c->L, vi));
}

/* Pushes t[name] (raw). Returns its type. */
int config_opt_get(lua_State *L, int t, const char *name) {
    lua_pushstring(L, name);
    return lua_rawget(L, t);
}

/* Every key of table t must be one of names. */
int config_check_keys(struct config_ctx *c, int t, const char *const *names, const char *kind) {
    lua_State *L = c->L;
    char hint[80];
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            int kt = lua_type(L, -1);
            lua_pop(L, 1);
            return config_fail(c, "%s keys must be names, not a %s", kind, lua_typename(L, kt));
        }
        if (config_name_index(lua_tostring(L, -1), names) < 0) {
            const char *k = lua_tostring(L, -1);
            int rc = config_fail(c, "unknown %s '%s'%s", kind, k,
                                 config_suggest(k, names, hint, sizeof hint));
            lua_pop(L, 1);
            return rc;
        }
    }
    return 0;
}

/* path joined to base unless absolute; new string. */
char *config_path_join(const char *base, const char *path) {
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

int config_resolve_path(struct config_ctx *c, int vi, const char *label, char **out) {
    const char *s;
    if (config_get_string(c, vi, label, &s) < 0)
        return -1;
    free(*out);
    *out = config_path_join(c->cfg->dir, s);
    return *out ? 0 : config_oom(c);
}

/* A header name: an HTTP token. A value: no CR, LF or NUL. */
int config_name_ok(const char *s) {
    if (!*s || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!(((unsigned char)*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z') || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* secret = "..." or { "...", "..." }: raw bytes, or whsec_-decoded. */
int config_get_secrets(struct config_ctx *c, int vi, int whsec, struct verify_secret **out,
                       size_t *n) {
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
        return config_fail(c, "secret must be a string or a list of strings, not a %s",
                           config_type_name(L, vi));
    if (count == 0)
        return config_fail(c, "secret list is empty");
    s = calloc(count, sizeof *s);
    if (!s)
        return config_oom(c);
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
            return config_fail(c, "secret #%zu must be a string, not a %s", i + 1,
                               lua_typename(L, t));
        }
        text = lua_tolstring(L, -1, &len);
        if (len == 0) {
            lua_pop(L, 1);
            return config_fail(c, "secret%s is empty", count > 1 ? " in the list" : "");
        }
        if (whsec) {
            s[i].key = verify_whsec_decode(text, &s[i].len);
            if (!s[i].key) {
                lua_pop(L, 1);
                return config_fail(c, "secret%s is not a whsec_<base64> key",
                                   count > 1 ? " in the list" : "");
            }
        } else {
            s[i].key = malloc(len);
            if (!s[i].key) {
                lua_pop(L, 1);
                return config_oom(c);
            }
            memcpy(s[i].key, text, len);
            s[i].len = len;
        }
        lua_pop(L, 1);
    }
    return 0;
}

int config_parse_cidr(const char *text, struct config_cidr *out) {
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
int config_listen_ok(const char *s) {
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
