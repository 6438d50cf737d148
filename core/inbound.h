/* inbound.h -- the webhook listener (SPEC section 4): a carrier's request
 * is checked, stored in the open group, answered after that group's
 * durable commit (200 with the event id; 503 if it failed), then routed.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_INBOUND_H
#define CORE_INBOUND_H

#include <stddef.h>

struct event_base;
struct httpc;
struct inbound;
struct ingest;
struct rules;
struct store;

/* What the listener works with; all borrowed, and must outlive it. */
struct inbound_deps {
    struct event_base *base;
    struct store *store;
    struct httpc *httpc;        /* JWKS fetches (ShipEngine key sets by URL) */
    struct ingest *ingest;      /* stores an accepted event, routes it once durable */
    struct rules *const *rules; /* the current generation (swapped whole on reload) */
    int listen_fd;              /* the config's listen, bound (http_bind); owned from here */
};

/* Serves the webhook listener of the current config (listen_fd, tls).
 * Returns new, or NULL with a reason in err. */
struct inbound *inbound_new(const struct inbound_deps *deps, char *err, size_t errlen);

/* 1 when it serves TLS. */
int inbound_tls(const struct inbound *ib);

/* Applies what a reload may change without a restart: max_body, JWKS
 * files read again. */
void inbound_reconfigure(struct inbound *ib);

/* Closes the listener: no new connections; requests on open connections
 * get 503 "shutting down". Requests already read still get their reply
 * after their commit. NULL is a no-op. */
void inbound_stop(struct inbound *ib);

/* NULL is a no-op. Requests parked for a JWKS fetch get 503. */
void inbound_free(struct inbound *ib);

#endif
