/* config_build.c -- builds a config from the declarations lua/waybill.lua
 * collected while waybill.lua ran (config_from_lua): the top-level
 * settings, each source and endpoint with every option checked, and the
 * rules folder. Errors carry the file:line of the offending assignment,
 * source or endpoint (the readers and messages are config.c's, through
 * config_int.h).
 * Invariant: *out is the config being built from the start, kept
 * consistent at every step, so config_free(*out) is always safe, even
 * after a Lua memory error raised from inside.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "config.h"
#include "config_int.h"
#include "jwks.h"
#include "log.h"
#include "util.h"

#define CONFIG_MIN_RULE_MEMORY ((size_t)1 << 20)

/* ---- top-level settings ---- */

static const char *const setting_names[] = {
    "environment",   "listen",         "tls",       "admin",       "store",       "max_body",
    "allow_private", "shutdown_grace", "retention", "max_backlog", "rule_budget", "rule_memory",
    "pidfile",       "log_format",     "lease",     NULL};

static int setting_tls(struct config_ctx *c, int vi) {
    static const char *const keys[] = {"cert", "key", NULL};
    lua_State *L = c->L;
    free(c->cfg->tls_cert);
    free(c->cfg->tls_key);
    c->cfg->tls_cert = c->cfg->tls_key = NULL;
    if (lua_isnil(L, vi) || (lua_type(L, vi) == LUA_TBOOLEAN && !lua_toboolean(L, vi)))
        return 0;
    if (lua_type(L, vi) != LUA_TTABLE)
        return config_fail(c, "expected { cert = \"cert.pem\", key = \"key.pem\" }, not a %s",
                           config_type_name(L, vi));
    if (config_check_keys(c, vi, keys, "option") < 0)
        return -1;
    if (config_opt_get(L, vi, "cert") == LUA_TNIL)
        return config_fail(c, "cert is required");
    if (config_resolve_path(c, lua_gettop(L), "cert", &c->cfg->tls_cert) < 0)
        return -1;
    lua_pop(L, 1);
    if (config_opt_get(L, vi, "key") == LUA_TNIL)
        return config_fail(c, "key is required");
    if (config_resolve_path(c, lua_gettop(L), "key", &c->cfg->tls_key) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

static int setting_admin(struct config_ctx *c, int vi) {
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
        return config_fail(
            c, "expected { listen = \"127.0.0.1:8081\", token = env(\"...\") }, not a %s",
            config_type_name(L, vi));
    if (config_check_keys(c, vi, keys, "option") < 0)
        return -1;
    if (config_opt_get(L, vi, "listen") == LUA_TNIL) {
        cfg->admin_listen = strdup("127.0.0.1:8081");
        if (!cfg->admin_listen)
            return config_oom(c);
    } else {
        if (config_dup_string(c, lua_gettop(L), "listen", &cfg->admin_listen) < 0)
            return -1;
        if (!config_listen_ok(cfg->admin_listen))
            return config_fail(c, "listen: bad address '%s' (want host:port)", cfg->admin_listen);
        /* ":port" is every address for webhooks; the admin API never listens
         * everywhere by accident: it names its address */
        if (cfg->admin_listen[0] == ':')
            return config_fail(c,
                               "listen: '%s' names no host; the admin API listens on one "
                               "address (e.g. \"127.0.0.1%s\")",
                               cfg->admin_listen, cfg->admin_listen);
    }
    lua_pop(L, 1);
    if (config_opt_get(L, vi, "token") == LUA_TNIL)
        return config_fail(c,
                           "token is required (admin = { token = env(\"WAYBILL_ADMIN_TOKEN\") })");
    if (config_dup_string(c, lua_gettop(L), "token", &cfg->admin_token) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

static int setting_allow_private(struct config_ctx *c, int vi) {
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
        return config_fail(c, "expected a list of CIDRs, e.g. { \"10.0.0.0/8\" }, not a %s",
                           config_type_name(L, vi));
    }
    if (n == 0)
        return 0;
    cfg->allow_private = calloc(n, sizeof *cfg->allow_private);
    if (!cfg->allow_private)
        return config_oom(c);
    for (size_t i = 0; i < n; i++) {
        if (lua_type(L, vi) == LUA_TTABLE)
            lua_rawgeti(L, vi, (lua_Integer)i + 1);
        else
            lua_pushvalue(L, vi);
        if (lua_type(L, -1) != LUA_TSTRING)
            return config_fail(c, "entry #%zu must be a CIDR string, not a %s", i + 1,
                               config_type_name(L, -1));
        if (config_parse_cidr(lua_tostring(L, -1), &cfg->allow_private[i]) < 0)
            return config_fail(c, "bad CIDR '%s' (want e.g. \"10.0.0.0/8\" or \"fd00::/8\")",
                               lua_tostring(L, -1));
        cfg->nallow_private = i + 1;
        lua_pop(L, 1);
    }
    return 0;
}

static int setting(struct config_ctx *c, const char *key, int vi) {
    struct config *cfg = c->cfg;
    lua_State *L = c->L;
    int64_t v;
    const char *s;

    /* Value readers name the setting themselves ("max_body: bad size");
     * the table-valued ones prefix their own option names ("tls: key"). */
    c->what[0] = '\0';
    switch (config_name_index(key, setting_names)) {
    case 0: /* environment */
        snprintf(c->what, sizeof c->what, "environment: ");
        if (lua_type(L, vi) != LUA_TSTRING ||
            (strcmp(lua_tostring(L, vi), "production") && strcmp(lua_tostring(L, vi), "sandbox")))
            return config_fail(c, "must be \"production\" or \"sandbox\"");
        cfg->sandbox = strcmp(lua_tostring(L, vi), "sandbox") == 0;
        return 0;
    case 1: /* listen */
        if (config_dup_string(c, vi, "listen", &cfg->listen) < 0)
            return -1;
        free(cfg->listen_where);
        if (!(cfg->listen_where = strdup(c->where ? c->where : "?")))
            return config_oom(c);
        if (!config_listen_ok(cfg->listen))
            return config_fail(
                c, "listen: bad address '%s' (want host:port, e.g. \"0.0.0.0:8080\")", cfg->listen);
        return 0;
    case 2:
        snprintf(c->what, sizeof c->what, "tls: ");
        return setting_tls(c, vi);
    case 3:
        snprintf(c->what, sizeof c->what, "admin: ");
        free(cfg->admin_where);
        if (!(cfg->admin_where = strdup(c->where ? c->where : "?")))
            return config_oom(c);
        return setting_admin(c, vi);
    case 4: /* store */
        if (config_get_string(c, vi, "store", &s) < 0)
            return -1;
        /* a PostgreSQL URL is kept: migrate uses it, and check and serve
         * say what that store can do in this build (store_pg.h) */
        if (strncmp(s, "postgres://", 11) == 0 || strncmp(s, "postgresql://", 13) == 0)
            return config_dup_string(c, vi, "store", &cfg->store);
        if (strncmp(s, "sqlite:", 7) != 0) {
            char shown[256];
            util_url_redact(s, shown, sizeof shown);
            return config_fail(c, "store: unsupported store '%s' (use \"sqlite:FILE\")", shown);
        }
        if (strcmp(s, "sqlite:") == 0)
            return config_fail(c, "store: sqlite: needs a file name, e.g. \"sqlite:waybill.db\"");
        return config_dup_string(c, vi, "store", &cfg->store);
    case 5: /* max_body */
        if (config_get_size(c, vi, "max_body", &cfg->max_body) < 0)
            return -1;
        if (cfg->max_body == 0)
            return config_fail(c, "max_body must be more than 0 bytes");
        return 0;
    case 6:
        snprintf(c->what, sizeof c->what, "allow_private: ");
        return setting_allow_private(c, vi);
    case 7:
        return config_get_duration(c, vi, "shutdown_grace", &cfg->shutdown_grace_ms);
    case 8:
        return config_get_duration(c, vi, "retention", &cfg->retention_ms);
    case 9:
        return config_get_integer(c, vi, "max_backlog", 1, INT64_MAX / 2, &cfg->max_backlog);
    case 10:
        if (config_get_integer(c, vi, "rule_budget", 1, INT64_MAX / 4, &v) < 0)
            return -1;
        cfg->rule_budget = v;
        return 0;
    case 11:
        if (config_get_size(c, vi, "rule_memory", &cfg->rule_memory) < 0)
            return -1;
        if (cfg->rule_memory < CONFIG_MIN_RULE_MEMORY)
            return config_fail(c, "rule_memory must be at least 1MiB");
        return 0;
    case 12:
        return config_resolve_path(c, vi, "pidfile", &cfg->pidfile);
    case 13: /* log_format */
        if (config_get_string(c, vi, "log_format", &s) < 0)
            return -1;
        if ((cfg->log_format = log_format_parse(s)) < 0)
            return config_fail(c, "log_format: '%s' is not one of \"text\", \"logfmt\", \"json\"",
                               s);
        return 0;
    case 14: /* lease: how long a claimed delivery is this instance's */
        if (config_get_duration(c, vi, "lease", &cfg->lease_ms) < 0)
            return -1;
        if (cfg->lease_ms < 1000 || cfg->lease_ms > 3600 * 1000)
            return config_fail(c, "lease must be between 1s and 1h");
        return 0;
    default: {
        char hint[80];
        return config_fail(c, "unknown setting '%s'%s", key,
                           config_suggest(key, setting_names, hint, sizeof hint));
    }
    }
}

/* ---- sources ---- */

static const char *const source_opts[] = {"verify",  "secret",  "path", "tolerance", "insecure",
                                          "carrier", "adapter", "jwks", NULL};

/* The carriers with an adapter in lua/sources/ (SPEC section 4). */
static const char *const carriers[] = {"aftership",  "atoship", "easypost", "generic",
                                       "shipengine", "shippo",  "shiptify", NULL};

static int source_verify_table(struct config_ctx *c, struct config_source *src, int vi) {
    static const char *const keys[] = {"scheme", "header", "encoding", "prefix", NULL};
    lua_State *L = c->L;
    const char *scheme = "hmac-sha256", *s;

    if (config_check_keys(c, vi, keys, "verify option") < 0)
        return -1;
    if (config_opt_get(L, vi, "scheme") != LUA_TNIL) {
        if (config_get_string(c, lua_gettop(L), "verify.scheme", &scheme) < 0)
            return -1;
    }
    if (strcmp(scheme, "hmac-sha256") == 0) {
        memset(&src->verify, 0, sizeof src->verify);
        src->verify.kind = VERIFY_HMAC;
        src->verify.encoding = VERIFY_HEX;
    } else if (verify_preset(scheme, &src->verify) < 0) {
        return config_fail(c, "unknown verify scheme '%s'", scheme);
    }
    free(src->verify_name);
    src->verify_name = strdup(scheme);
    lua_pop(L, 1);
    if (!src->verify_name)
        return config_oom(c);

    if (config_opt_get(L, vi, "header") != LUA_TNIL) {
        if (config_get_string(c, lua_gettop(L), "verify.header", &s) < 0)
            return -1;
        if (!util_header_name_ok(s) || strlen(s) >= sizeof src->verify.header)
            return config_fail(c, "verify.header: bad header name '%s'", s);
        if (src->verify.kind != VERIFY_HMAC && src->verify.kind != VERIFY_STRIPE)
            return config_fail(c, "verify scheme '%s' takes no header", scheme);
        snprintf(src->verify.header, sizeof src->verify.header, "%s", s);
    } else if (src->verify.kind == VERIFY_HMAC && !src->verify.header[0]) {
        return config_fail(c, "verify.header is required (e.g. header = \"X-Signature\")");
    }
    lua_pop(L, 1);
    if (config_opt_get(L, vi, "encoding") != LUA_TNIL) {
        if (config_get_string(c, lua_gettop(L), "verify.encoding", &s) < 0)
            return -1;
        if (strcmp(s, "hex") == 0)
            src->verify.encoding = VERIFY_HEX;
        else if (strcmp(s, "base64") == 0)
            src->verify.encoding = VERIFY_BASE64;
        else
            return config_fail(c, "verify.encoding must be \"hex\" or \"base64\"");
    }
    lua_pop(L, 1);
    if (config_opt_get(L, vi, "prefix") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            return config_fail(c, "verify.prefix must be a string");
        s = lua_tostring(L, -1);
        if (strlen(s) >= sizeof src->verify.prefix)
            return config_fail(c, "verify.prefix is too long");
        snprintf(src->verify.prefix, sizeof src->verify.prefix, "%s", s);
    }
    lua_pop(L, 1);
    return 0;
}

/* A shipped adapter name ("atoship") or a file relative to the config. */
static int source_adapter(struct config_ctx *c, struct config_source *src, int vi) {
    const char *s;
    size_t len;
    if (lua_type(c->L, vi) == LUA_TFUNCTION)
        return 0; /* rules.c keeps the function */
    if (config_get_string(c, vi, "adapter", &s) < 0)
        return config_fail(c, "adapter must be a file name or a function");
    len = strlen(s);
    if (strchr(s, '/') || (len > 4 && strcmp(s + len - 4, ".lua") == 0)) {
        src->adapter = config_path_join(c->cfg->dir, s);
    } else {
        if (!config_name_ok(s))
            return config_fail(c, "adapter: bad adapter name '%s'", s);
        src->adapter = malloc(strlen(c->lua_dir) + len + 16);
        if (src->adapter)
            sprintf(src->adapter, "%s/sources/%s.lua", c->lua_dir, s);
    }
    return src->adapter ? 0 : config_oom(c);
}

/* verify = a preset name, the table form, or (absent) the source's name
 * as a preset. Sets src->verify and src->verify_name. */
static int source_verify(struct config_ctx *c, struct config_source *src, const char *name,
                         int opts) {
    static const char *const presets[] = {"generic",    "atoship", "aftership", "easypost",
                                          "stripe",     "shippo",  "standard",  "shiptify",
                                          "shipengine", "none",    NULL};
    lua_State *L = c->L;
    char hint[80];
    const char *s;

    switch (config_opt_get(L, opts, "verify")) {
    case LUA_TNIL:
        if (strcmp(name, "none") == 0 || verify_preset(name, &src->verify) < 0)
            return config_fail(c, "verify is required (a preset such as \"atoship\", or { scheme = "
                                  "\"hmac-sha256\", header = ..., encoding = ... })");
        src->verify_name = strdup(name);
        break;
    case LUA_TSTRING:
        s = lua_tostring(L, -1);
        if (strcmp(s, "hmac-sha256") == 0)
            return config_fail(c,
                               "verify \"hmac-sha256\" takes the table form: { scheme = "
                               "\"hmac-sha256\", header = \"X-Signature\", encoding = \"hex\" }");
        if (verify_preset(s, &src->verify) < 0)
            return config_fail(c, "unknown verify preset '%s'%s", s,
                               config_suggest(s, presets, hint, sizeof hint));
        src->verify_name = strdup(s);
        break;
    case LUA_TTABLE:
        if (source_verify_table(c, src, lua_gettop(L)) < 0)
            return -1;
        break;
    default:
        return config_fail(c, "verify must be a preset name or a table, not a %s",
                           config_type_name(L, -1));
    }
    lua_pop(L, 1);
    if (!src->verify_name)
        return config_oom(c);
    return 0;
}

/* carrier = one of carriers[]; absent, the verify preset when it is one
 * (source "aftership" { ... }), else none (the generic adapter). The
 * adapter follows the carrier, never the signature scheme alone. */
static int source_carrier(struct config_ctx *c, struct config_source *src, int opts) {
    lua_State *L = c->L;
    char hint[80];
    const char *s = NULL;

    if (config_opt_get(L, opts, "carrier") != LUA_TNIL) {
        if (config_get_string(c, lua_gettop(L), "carrier", &s) < 0)
            return -1;
        if (config_name_index(s, carriers) < 0) {
            if (!*config_suggest(s, carriers, hint, sizeof hint))
                snprintf(hint, sizeof hint,
                         " (aftership, atoship, easypost, generic, shipengine, shippo, shiptify)");
            return config_fail(c, "unknown carrier '%s'%s", s, hint);
        }
    } else if (config_name_index(src->verify_name, carriers) >= 0) {
        s = src->verify_name;
    }
    if (s && !(src->carrier = strdup(s)))
        return config_oom(c);
    lua_pop(L, 1);
    return 0;
}

/* path = "/..." (no query, fragment or spaces); default "/hooks/<name>". */
static int source_path(struct config_ctx *c, struct config_source *src, const char *name,
                       int opts) {
    lua_State *L = c->L;

    if (config_opt_get(L, opts, "path") != LUA_TNIL) {
        if (config_dup_string(c, lua_gettop(L), "path", &src->path) < 0)
            return -1;
        if (src->path[0] != '/' || strpbrk(src->path, "?# \t\r\n"))
            return config_fail(c, "path must start with '/' and hold no '?', '#' or spaces");
    } else {
        src->path = malloc(strlen(name) + 8);
        if (!src->path)
            return config_oom(c);
        sprintf(src->path, "/hooks/%s", name);
    }
    lua_pop(L, 1);
    return 0;
}

/* jwks = a URL, or a file relative to the config. */
static int source_jwks(struct config_ctx *c, struct config_source *src, int opts) {
    lua_State *L = c->L;
    const char *s;

    if (config_opt_get(L, opts, "jwks") != LUA_TNIL) {
        if (config_get_string(c, lua_gettop(L), "jwks", &s) < 0)
            return -1;
        if (strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0)
            src->jwks = strdup(s);
        else
            src->jwks = config_path_join(c->cfg->dir, s);
        if (!src->jwks)
            return config_oom(c);
    }
    lua_pop(L, 1);
    return 0;
}

/* What the verify scheme needs besides itself: insecure = true for
 * "none", a loadable JWKS for shipengine, else a secret. */
static int source_check_scheme(struct config_ctx *c, const struct config_source *src,
                               int has_secret) {
    switch (src->verify.kind) {
    case VERIFY_NONE:
        if (!src->insecure)
            return config_fail(c, "verify \"none\" needs insecure = true");
        break;
    case VERIFY_SHIPENGINE:
        if (!src->jwks)
            return config_fail(c, "verify \"shipengine\" needs jwks (a JWKS file or URL)");
        if (src->jwks[0] == '/') {
            /* A file is checked now, so check and reload report a bad one. */
            char why[300];
            struct jwks_set *set = jwks_set_load(src->jwks, why, sizeof why);
            if (!set)
                return config_fail(c, "jwks: %s", why);
            jwks_set_free(set);
        }
        break;
    default:
        if (!has_secret)
            return config_fail(c, "verify \"%s\" needs a secret", src->verify_name);
    }
    return 0;
}

/* One source "NAME" { opts }: every option checked, in a fixed order (so
 * the first bad one is the one reported). */
static int source_build(struct config_ctx *c, struct config_source *src, const char *name,
                        int opts) {
    lua_State *L = c->L;
    int has_secret;

    snprintf(c->what, sizeof c->what, "source %s: ", name);
    if (!config_name_ok(name))
        return config_fail(c, "the name must be 1-64 letters, digits, '_' or '-'");
    if (!(src->name = strdup(name)))
        return config_oom(c);
    if (config_check_keys(c, opts, source_opts, "option") < 0)
        return -1;
    if (source_verify(c, src, name, opts) < 0)
        return -1;

    if (config_opt_get(L, opts, "tolerance") != LUA_TNIL &&
        config_get_duration(c, lua_gettop(L), "tolerance", &src->verify.tolerance_ms) < 0)
        return -1;
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "insecure") != LUA_TNIL &&
        config_get_bool(c, lua_gettop(L), "insecure", &src->insecure) < 0)
        return -1;
    lua_pop(L, 1);

    has_secret = config_opt_get(L, opts, "secret") != LUA_TNIL;
    if (has_secret && config_get_secrets(c, lua_gettop(L), src->verify.kind == VERIFY_STANDARD,
                                         &src->secrets, &src->nsecrets) < 0)
        return -1;
    lua_pop(L, 1);

    if (source_path(c, src, name, opts) < 0 || source_carrier(c, src, opts) < 0)
        return -1;
    if (config_opt_get(L, opts, "adapter") != LUA_TNIL && source_adapter(c, src, lua_gettop(L)) < 0)
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

static int endpoint_retry(struct config_ctx *c, struct config_endpoint *ep, int vi) {
    lua_State *L = c->L;
    size_t n;
    if (lua_type(L, vi) == LUA_TSTRING) {
        int rc = retry_preset(lua_tostring(L, vi), &ep->retry_ms, &ep->nretry);
        if (rc < 0)
            return config_oom(c);
        if (rc > 0)
            return config_fail(
                c,
                "unknown retry preset '%s' (atoship, shipengine, shiptify, or a list "
                "of delays such as { \"0s\", \"1m\", \"10m\" })",
                lua_tostring(L, vi));
        return 0;
    }
    if (lua_type(L, vi) != LUA_TTABLE)
        return config_fail(c, "retry must be a preset name or a list of delays, not a %s",
                           config_type_name(L, vi));
    n = lua_rawlen(L, vi);
    if (n == 0 || n > 100)
        return config_fail(c, "retry: the list needs 1 to 100 delays");
    free(ep->retry_ms);
    ep->nretry = 0;
    if (!(ep->retry_ms = calloc(n, sizeof *ep->retry_ms)))
        return config_oom(c);
    for (size_t i = 0; i < n; i++) {
        char label[32];
        lua_rawgeti(L, vi, (lua_Integer)i + 1);
        snprintf(label, sizeof label, "retry #%zu", i + 1);
        if (config_get_duration(c, lua_gettop(L), label, &ep->retry_ms[i]) < 0)
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

static int endpoint_headers(struct config_ctx *c, struct config_endpoint *ep, int vi) {
    lua_State *L = c->L;
    size_t n = 0;
    if (lua_type(L, vi) != LUA_TTABLE)
        return config_fail(c, "headers must be a table of name = value, not a %s",
                           config_type_name(L, vi));
    lua_pushnil(L);
    while (lua_next(L, vi)) {
        lua_pop(L, 1);
        n++;
    }
    if (n == 0)
        return 0;
    if (!(ep->headers = calloc(n, sizeof *ep->headers)))
        return config_oom(c);
    lua_pushnil(L);
    while (lua_next(L, vi)) {
        struct config_header *h = &ep->headers[ep->nheaders];
        const char *k;
        size_t vlen;
        if (lua_type(L, -2) != LUA_TSTRING || !util_header_name_ok(lua_tostring(L, -2))) {
            lua_pop(L, 2);
            return config_fail(c, "headers: bad header name");
        }
        k = lua_tostring(L, -2);
        if (lua_type(L, -1) != LUA_TSTRING) {
            int rc = config_fail(c, "headers: %s must be a string", k);
            lua_pop(L, 2);
            return rc;
        }
        lua_tolstring(L, -1, &vlen);
        if (!util_header_value_ok(lua_tostring(L, -1), vlen)) {
            int rc = config_fail(c, "headers: %s holds a line break or NUL", k);
            lua_pop(L, 2);
            return rc;
        }
        h->name = strdup(k);
        h->value = strdup(lua_tostring(L, -1));
        ep->nheaders++;
        lua_pop(L, 1);
        if (!h->name || !h->value) {
            lua_pop(L, 1);
            return config_oom(c);
        }
    }
    qsort(ep->headers, ep->nheaders, sizeof *ep->headers, header_cmp);
    return 0;
}

/* The defaults of every endpoint option (the atoship retry preset among
 * them). Returns 0, or -1 when out of memory. */
int config_endpoint_defaults(struct config_endpoint *ep) {
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
static int endpoint_url(struct config_ctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;

    if (config_opt_get(L, opts, "url") == LUA_TNIL)
        return config_fail(c, "url is required");
    if (config_dup_string(c, lua_gettop(L), "url", &ep->url) < 0)
        return -1;
    if (!util_http_url_ok(ep->url))
        return config_fail(c, "url must be an http:// or https:// URL, not '%s'", ep->url);
    lua_pop(L, 1);
    return 0;
}

/* sign = a preset (default "standard") and the secret(s) it signs with,
 * whsec_ keys for "standard"; only "none" goes without. */
static int endpoint_signing(struct config_ctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;
    const char *sign_name = "standard";
    int has_secret, top;

    if (config_opt_get(L, opts, "sign") != LUA_TNIL) {
        if (config_get_string(c, lua_gettop(L), "sign", &sign_name) < 0)
            return -1;
        if (verify_sign_scheme_parse(sign_name, &ep->sign) < 0)
            return config_fail(
                c, "unknown sign preset '%s' (standard, hex, atoship, aftership, none)", sign_name);
    }
    top = lua_gettop(L); /* keep sign_name's string alive until the secret check */

    has_secret = config_opt_get(L, opts, "secret") != LUA_TNIL;
    if (has_secret && config_get_secrets(c, lua_gettop(L), ep->sign == SIGN_STANDARD, &ep->secrets,
                                         &ep->nsecrets) < 0)
        return -1;
    lua_pop(L, 1);
    if (ep->sign != SIGN_NONE && !has_secret)
        return config_fail(c, "sign \"%s\" needs a secret", sign_name);
    lua_settop(L, top - 1);
    return 0;
}

/* How each request goes out: headers, timeout, retry, jitter,
 * concurrency, rate. */
static int endpoint_sending(struct config_ctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;
    int64_t v;

    if (config_opt_get(L, opts, "headers") != LUA_TNIL &&
        endpoint_headers(c, ep, lua_gettop(L)) < 0)
        return -1;
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "timeout") != LUA_TNIL) {
        if (config_get_duration(c, lua_gettop(L), "timeout", &ep->timeout_ms) < 0)
            return -1;
        if (ep->timeout_ms <= 0)
            return config_fail(c, "timeout must be more than 0");
    }
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "retry") != LUA_TNIL && endpoint_retry(c, ep, lua_gettop(L)) < 0)
        return -1;
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "jitter") != LUA_TNIL &&
        config_get_bool(c, lua_gettop(L), "jitter", &ep->jitter) < 0)
        return -1;
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "concurrency") != LUA_TNIL) {
        if (config_get_integer(c, lua_gettop(L), "concurrency", 1, 100000, &v) < 0)
            return -1;
        ep->concurrency = (int)v;
    }
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "rate") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0) ||
            !isfinite(lua_tonumber(L, -1)))
            return config_fail(c, "rate must be a number of deliveries per second above 0");
        ep->rate = (double)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return 0;
}

/* 1 when path is a dotted path of names ("data.tracking_number"). */
static int order_path_ok(const char *path) {
    int start = 1;

    for (const char *p = path; *p; p++) {
        if (*p == '.') {
            if (start)
                return 0;
            start = 1;
        } else if (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (!start && *p >= '0' && *p <= '9')) {
            start = 0;
        } else {
            return 0;
        }
    }
    return !start;
}

/* ordered = true | false | "dotted.path" | function(ev) (on the stack top):
 * the whole endpoint in order, or one order per key (SPEC section 7). */
static int endpoint_ordered(struct config_ctx *c, struct config_endpoint *ep) {
    lua_State *L = c->L;

    static const char what[] = "ordered must be true, a dotted path such as "
                               "\"data.tracking_number\", or a function(ev)";

    switch (lua_type(L, -1)) {
    case LUA_TSTRING:
        if (!order_path_ok(lua_tostring(L, -1)))
            return config_fail(c, "%s", what);
        if (!(ep->order_key = strdup(lua_tostring(L, -1))))
            return config_fail(c, "out of memory");
        return 0;
    case LUA_TFUNCTION:
        lua_pushvalue(L, -1);
        ep->order_fn = luaL_ref(L, LUA_REGISTRYINDEX);
        return ep->order_fn > 0 ? 0 : config_fail(c, "out of memory");
    case LUA_TBOOLEAN:
        return config_get_bool(c, lua_gettop(L), "ordered", &ep->ordered);
    default:
        return config_fail(c, "%s", what);
    }
}

/* Batching, what counts as delivered, ordering and when to stop: window,
 * max_batch, success, ordered, disable_after, enabled. */
static int endpoint_policy(struct config_ctx *c, struct config_endpoint *ep, int opts) {
    lua_State *L = c->L;
    int64_t v;

    if (config_opt_get(L, opts, "window") != LUA_TNIL) {
        if (config_get_duration(c, lua_gettop(L), "window", &ep->window_ms) < 0)
            return -1;
        if (ep->window_ms <= 0)
            return config_fail(c, "window must be more than 0");
    }
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "max_batch") != LUA_TNIL) {
        if (config_get_integer(c, lua_gettop(L), "max_batch", 1, 1000000, &v) < 0)
            return -1;
        ep->max_batch = (int)v;
    }
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "success") != LUA_TNIL) {
        if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "2xx") == 0)
            ep->success = CONFIG_SUCCESS_2XX;
        else if ((lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "200") == 0) ||
                 (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 200))
            ep->success = CONFIG_SUCCESS_200;
        else
            return config_fail(c, "success must be \"2xx\" or \"200\"");
    }
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "ordered") != LUA_TNIL && endpoint_ordered(c, ep) < 0)
        return -1;
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "disable_after") != LUA_TNIL) {
        if (config_get_duration(c, lua_gettop(L), "disable_after", &ep->disable_after_ms) < 0)
            return -1;
        if (ep->disable_after_ms <= 0)
            return config_fail(c, "disable_after must be more than 0");
    }
    lua_pop(L, 1);
    if (config_opt_get(L, opts, "enabled") != LUA_TNIL &&
        config_get_bool(c, lua_gettop(L), "enabled", &ep->enabled) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

/* One endpoint "NAME" { opts }: defaults, then every option checked in a
 * fixed order (so the first bad one is the one reported). */
static int endpoint_build(struct config_ctx *c, struct config_endpoint *ep, const char *name,
                          int opts) {
    snprintf(c->what, sizeof c->what, "endpoint %s: ", name);
    if (!config_name_ok(name))
        return config_fail(c, "the name must be 1-64 letters, digits, '_' or '-'");
    if (!(ep->name = strdup(name)))
        return config_oom(c);
    if (config_endpoint_defaults(ep) < 0)
        return config_oom(c);
    if (config_check_keys(c, opts, endpoint_opts, "option") < 0)
        return -1;
    if (endpoint_url(c, ep, opts) < 0 || endpoint_signing(c, ep, opts) < 0 ||
        endpoint_sending(c, ep, opts) < 0 || endpoint_policy(c, ep, opts) < 0)
        return -1;
    return 0;
}

/* ---- the whole config ---- */

/* Reads decl.{name, opts, where} of the list entry at the top. Leaves
 * name, opts, where pushed (3 values). */
static int decl_fields(struct config_ctx *c, const char **name, int *opts) {
    lua_State *L = c->L;
    int e = lua_gettop(L);
    config_opt_get(L, e, "where");
    c->where = lua_tostring(L, -1);
    config_opt_get(L, e, "name");
    *name = lua_tostring(L, -1);
    config_opt_get(L, e, "opts");
    *opts = lua_gettop(L);
    if (!*name)
        return config_fail(c, "a declaration without a name");
    if (!lua_istable(L, *opts))
        return config_fail(c, "%s: options must be a table", *name);
    return 0;
}

/* The "where" of entry j (0-based) of the declaration list; pushes it. */
static const char *first_where(lua_State *L, int list, size_t j) {
    const char *w;
    lua_rawgeti(L, list, (lua_Integer)j + 1);
    config_opt_get(L, lua_gettop(L), "where");
    w = lua_tostring(L, -1);
    return w ? w : "?";
}

/* settings, in the order they were assigned (a later one wins). */
static int build_settings(struct config_ctx *c, int idx) {
    lua_State *L = c->L;
    size_t n;
    int list;

    config_opt_get(L, idx, "settings");
    list = lua_gettop(L);
    n = lua_istable(L, list) ? lua_rawlen(L, list) : 0;
    for (size_t i = 1; i <= n; i++) {
        int e;
        lua_rawgeti(L, list, (lua_Integer)i);
        e = lua_gettop(L);
        config_opt_get(L, e, "where");
        c->where = lua_tostring(L, -1);
        config_opt_get(L, e, "key");
        c->what[0] = '\0';
        if (lua_type(L, -1) != LUA_TSTRING)
            return config_fail(c, "unknown setting (a %s key)", config_type_name(L, -1));
        config_opt_get(L, e, "value");
        if (setting(c, lua_tostring(L, -2), lua_gettop(L)) < 0)
            return -1;
        lua_settop(L, list);
    }
    lua_settop(L, list - 1);
    return 0;
}

/* source "NAME" { ... } declarations: no name or path used twice. */
static int build_sources(struct config_ctx *c, int idx) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;
    size_t n;
    int list;

    config_opt_get(L, idx, "sources");
    list = lua_gettop(L);
    n = lua_istable(L, list) ? lua_rawlen(L, list) : 0;
    if (n) {
        if (!(cfg->sources = calloc(n, sizeof *cfg->sources)))
            return config_oom(c);
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
                return config_fail(c, "source %s is declared twice (first at %s)", name,
                                   first_where(L, list, j));
            if (strcmp(cfg->sources[j].path, src->path) == 0)
                return config_fail(c, "source %s: path %s is already used by source %s", name,
                                   src->path, cfg->sources[j].name);
        }
        lua_settop(L, list);
    }
    lua_settop(L, list - 1);
    return 0;
}

/* endpoint "NAME" { ... } declarations: no name used twice. */
static int build_endpoints(struct config_ctx *c, int idx) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;
    size_t n;
    int list;

    config_opt_get(L, idx, "endpoints");
    list = lua_gettop(L);
    n = lua_istable(L, list) ? lua_rawlen(L, list) : 0;
    if (n) {
        if (!(cfg->endpoints = calloc(n, sizeof *cfg->endpoints)))
            return config_oom(c);
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
                return config_fail(c, "endpoint %s is declared twice (first at %s)", name,
                                   first_where(L, list, j));
        }
        lua_settop(L, list);
    }
    lua_settop(L, list - 1);
    return 0;
}

/* rules "dir/": the folder, absolute and without trailing slashes. */
static int build_rules_dir(struct config_ctx *c, int idx) {
    lua_State *L = c->L;
    struct config *cfg = c->cfg;

    if (config_opt_get(L, idx, "rules") == LUA_TTABLE) {
        int t = lua_gettop(L);
        config_opt_get(L, t, "where");
        c->where = lua_tostring(L, -1);
        snprintf(c->what, sizeof c->what, "rules: ");
        config_opt_get(L, t, "dir");
        if (lua_type(L, -1) != LUA_TSTRING || !*lua_tostring(L, -1))
            return config_fail(c, "expected a folder name, e.g. rules \"rules/\"");
        cfg->rules_dir = config_path_join(cfg->dir, lua_tostring(L, -1));
        if (!cfg->rules_dir)
            return config_oom(c);
        for (size_t l = strlen(cfg->rules_dir); l > 1 && cfg->rules_dir[l - 1] == '/'; l--)
            cfg->rules_dir[l - 1] = '\0';
        lua_settop(L, t);
    }
    lua_pop(L, 1);
    return 0;
}

/* The whole config from the declarations table at idx, in the order the
 * checks report in: settings, sources, endpoints, the rules folder. */
static int build(struct config_ctx *c, int idx) {
    if (build_settings(c, idx) < 0 || build_sources(c, idx) < 0 || build_endpoints(c, idx) < 0 ||
        build_rules_dir(c, idx) < 0)
        return -1;
    return 0;
}

int config_from_lua(struct lua_State *L, int idx, const char *config_path, const char *lua_dir,
                    struct config **out, char *err, size_t errlen) {
    struct config *cfg = calloc(1, sizeof *cfg);
    struct config_ctx c;
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
    cfg->lease_ms = 30 * 1000;
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
