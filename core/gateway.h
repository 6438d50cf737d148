/* gateway.h -- the one context the event loop owns: the current rules
 * generation, the store, the delivery engine and the listeners. main.c
 * creates it; server.c (inbound and admin HTTP) and route.c read it.
 * Invariant: only the loop thread touches it; rules is swapped whole on
 * reload and never NULL while serving.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_GATEWAY_H
#define CORE_GATEWAY_H

#include <stdint.h>
#include <jansson.h>

#define WAYBILL_VERSION "0.1.0"

struct event_base;
struct rules;
struct store;
struct deliver;
struct health;
struct housekeep;
struct httpc;
struct server;
struct route;
struct subs;

struct batch;

struct gateway {
    struct event_base *base;
    const char *config_path;   /* as given on the command line */
    char *lua_dir;             /* shipped Lua library folder */
    struct rules *rules;       /* current generation, owned */
    struct store *store;       /* owned */
    struct httpc *httpc;       /* owned: the HTTP client (deliveries, probes, JWKS) */
    struct health *health;     /* owned: endpoint state */
    struct deliver *deliver;   /* owned */
    struct housekeep *housekeep; /* owned: retention and recovery sweeps */
    struct route *route;       /* owned: routes committed events */
    struct batch *batch;       /* owned: batch windows */
    struct server *server;     /* owned */
    struct subs *subs;         /* owned: admin API subscriptions */
    int64_t started_at;        /* Unix ms */
    int reloads, reload_failures;
    char reload_error[512];    /* last reload error, "" when the last succeeded */
    int stopping;
};

/* Builds a new rules generation from the config file and swaps it in
 * (main.c). On failure the old one stays, the error is kept in
 * reload_error and copied to err; returns 0 or -1. */
int gateway_reload(struct gateway *gw, char *err, size_t errlen);

/* Stores and routes one of waybill's own events (SPEC section 7: source
 * "waybill", type e.g. "waybill.delivery.failed") in the open group. arg is
 * the gateway (the shape of deliver_notify_fn and health_notify_fn); takes
 * the reference to data. Failures are logged. */
void gateway_emit(void *arg, const char *type, json_t *data);

#endif
