/* config.h -- the gateway's configuration as C data.
 * A config is built by evaluating waybill.lua in the rules sandbox (rules.c
 * owns the VM; config.c owns this struct, config_build.c the checks on each
 * field), so it lives inside one rules generation and is replaced whole on
 * reload.
 * Invariant: a config handed out by rules_config() passed every check here;
 * callers never re-validate it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_CONFIG_H
#define CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#include "verify.h"

struct config_header {
    char *name;
    char *value;
};

/* A CIDR from allow_private; family AF_INET or AF_INET6. */
struct config_cidr {
    int family;
    unsigned char addr[16];
    int prefix_len;
};

struct config_source {
    char *name;        /* source "NAME" */
    char *path;        /* default "/hooks/<name>" */
    char *verify_name; /* preset name or "hmac-sha256" */
    struct verify_spec verify;
    struct verify_secret *secrets; /* nsecrets entries, raw key bytes */
    size_t nsecrets;
    int insecure;
    char *carrier; /* carrier = "NAME", else the verify preset when it
                      names a carrier, else NULL (generic) */
    char *adapter; /* absolute path of the Lua adapter file
                      (config-relative or lua/sources/NAME.lua); NULL =
                      lua/sources/<carrier>.lua, generic.lua without one */
    char *jwks;    /* shipengine: file path or URL */
};

enum config_success { CONFIG_SUCCESS_2XX, CONFIG_SUCCESS_200 };

/* 1 when ep orders per key (ordered = "path" or a function): one delivery
 * in flight per key, parallel across keys. */
#define CONFIG_ORDERED_BY_KEY(ep) ((ep)->order_key != NULL || (ep)->order_fn != 0)

struct config_endpoint {
    char *name;
    char *url;
    enum verify_sign_scheme sign;  /* default SIGN_STANDARD */
    struct verify_secret *secrets; /* raw key bytes (whsec_ decoded for standard) */
    size_t nsecrets;
    struct config_header *headers; /* extra headers, nheaders entries */
    size_t nheaders;
    int64_t timeout_ms; /* default 5000 */
    int64_t *retry_ms;  /* delays before each attempt; [0] is the first */
    size_t nretry;      /* default the atoship preset: 0,1m,5m,30m,2h,6h */
    int jitter;         /* default 1: +-10% */
    int concurrency;    /* default 16 */
    double rate;        /* deliveries/s, 0 = unlimited */
    int64_t window_ms;  /* batch window; 0 = environment default */
    int max_batch;      /* default 1000 */
    enum config_success success;
    int ordered;              /* 1: ordered = true, FIFO for the whole endpoint */
    char *order_key;          /* ordered = "a.b": FIFO per the event's value at that path */
    int order_fn;             /* ordered = function(ev): its Lua registry ref in the rules
                                 VM the config was read in, 0 when none */
    int64_t disable_after_ms; /* default 5d */
    int enabled;              /* default 1 */
};

/* An endpoint that lives outside the config file (see
 * config_set_subscriptions); both pointers borrowed. */
struct config_subscription {
    const struct config_endpoint *ep; /* ep->name is the subscription's id */
    const char *pattern;              /* the type or glob it stands for */
};

struct config {
    char *file;               /* absolute path of waybill.lua */
    char *dir;                /* its folder: base of relative paths */
    int sandbox;              /* environment == "sandbox" */
    char *listen;             /* "host:port"; default "0.0.0.0:8080" */
    char *listen_where;       /* "file:line" of listen =; NULL when defaulted */
    char *admin_where;        /* "file:line" of admin =; NULL when absent */
    char *tls_cert, *tls_key; /* both or neither */
    char *admin_listen; /* NULL = off; "admin = {token=...}" alone listens on 127.0.0.1:8081 */
    char *admin_token;  /* required when admin_listen is set */
    char *store;        /* default "sqlite:waybill.db" */
    char *pidfile;      /* absolute; NULL = none (serve --pidfile overrides) */
    int log_format;     /* enum log_format; default text */
    size_t max_body;    /* default 1 MiB */
    struct config_cidr *allow_private;
    size_t nallow_private;
    struct config_source *sources;
    size_t nsources;
    struct config_endpoint *endpoints;
    size_t nendpoints;
    struct config_subscription *subs; /* owned array, entries borrowed (config_set_subscriptions) */
    size_t nsubs;
    char *rules_dir;           /* absolute; NULL = no rules */
    int64_t shutdown_grace_ms; /* default 10 s */
    int64_t lease_ms;          /* a claim's lease, renewed while an attempt runs; default 30 s */
    int64_t retention_ms;      /* default 30 d */
    int64_t max_backlog;       /* default 10,000,000 */
    int64_t rule_budget;       /* instructions per handler call, default 1e6 */
    size_t rule_memory;        /* bytes, default 64 MiB */
};

/* Lookups; return NULL when absent. Borrowed from cfg. */
const struct config_source *config_source_by_path(const struct config *cfg, const char *path);
const struct config_source *config_source_by_name(const struct config *cfg, const char *name);
const struct config_endpoint *config_endpoint_by_name(const struct config *cfg, const char *name);

/* Sets ep's defaults (SPEC section 3), the one place they are written: sign
 * standard, timeout 5s, jitter, concurrency 16, max_batch 1000, success
 * 2xx, disable_after 5d, enabled, and the atoship retry preset (ep->retry_ms
 * new, owned by ep). Endpoints of the file start from them, and so do
 * subscriptions. Returns 0, or -1 when out of memory. */
int config_endpoint_defaults(struct config_endpoint *ep);

/* Replaces cfg's subscriptions by v[0..n): endpoints that live outside the
 * config file (made through the admin API, subs.c), merged into the
 * endpoint table by their owner (the app) when the config is loaded and
 * whenever they change, so that config_endpoint_by_name finds them as it
 * finds the file's (rules, routing and delivery alike). The array is
 * copied; what its entries point to is borrowed until the next call or
 * config_free. Returns 0, or -1 when out of memory (the old ones stay). */
int config_set_subscriptions(struct config *cfg, const struct config_subscription *v, size_t n);

/* Calls emit(ctx, name) for each of cfg's subscriptions whose pattern
 * matches type (util_glob_match), in the order they were set. */
void config_subscribers(const struct config *cfg, const char *type,
                        void (*emit)(void *ctx, const char *name), void *ctx);

/* The batch window an endpoint uses: its own, else 30m (production) / 5m (sandbox). */
int64_t config_endpoint_window(const struct config *cfg, const struct config_endpoint *ep);

/* Whether addr (AF_INET/AF_INET6 in network order) is inside allow_private. */
int config_private_allowed(const struct config *cfg, int family, const void *addr);

/* Frees cfg and everything it owns; NULL is a no-op. */
void config_free(struct config *cfg);

/* For rules.c: builds a config from the declarations lua/waybill.lua
 * collected while the config file ran (the table at index idx of L:
 * {settings = {{key, value, where}...}, sources = {{name, opts, where}...},
 * endpoints = {...}, rules = {dir, where}}), checking every field.
 * config_path is the path as given (made absolute into cfg->file); lua_dir
 * resolves adapter names. *out is set to the new config before anything
 * else and kept consistent, so config_free(*out) is always safe, even after
 * a Lua memory error raised from inside (call it under pcall).
 * Returns 0, or -1 with "file:line: message" in err. [-0, +0, m] */
struct lua_State;
int config_from_lua(struct lua_State *L, int idx, const char *config_path, const char *lua_dir,
                    struct config **out, char *err, size_t errlen);

#endif
