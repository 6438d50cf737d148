/* deliver_int.h -- private to the delivery module (deliver.c: transfers,
 * outcomes and the engine's life; deliver_sched.c: the per-endpoint
 * scheduler and its watchdog). No other file includes it.
 * Ownership: a claimed delivery is owned by exactly one struct deliver_xfer
 * (waiting in its endpoint's FIFO, or in flight in the HTTP client) from
 * its claim until its outcome is written, or its lease is released or
 * lapses; ep->nwaiting and ep->inflight count them per endpoint,
 * d->inflight all in flight.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_DELIVER_INT_H
#define CORE_DELIVER_INT_H

#include <stdint.h>

#include <event2/event.h>

#include "config.h"
#include "deliver.h"
#include "health.h"
#include "httpc.h"
#include "store.h"

/* Bytes of a response body stored with an attempt. */
#define DELIVER_RESPONSE_MAX 1024
/* Look again this soon after a claim that found due rows it could not take. */
#define DELIVER_POLL_MS 1000
/* A shared store: rows due, and the endpoint's concurrency taken by other
 * instances' leases: look again this soon (their ends kick no one here). */
#define DELIVER_SHARED_POLL_MS 50
/* A shared store: a row is sent only with at least this much of its lease
 * left (a renewal is a write that commits a group later). */
#define DELIVER_LEASE_SAFE_MS 1000
/* Waiting rows an endpoint keeps beyond its slots, at most. */
#define DELIVER_AHEAD_MAX 64
/* A rate-limited endpoint claims at most this many seconds' worth. */
#define DELIVER_RATE_AHEAD_S 10
/* Rows an ordered endpoint reads ahead of its head. */
#define DELIVER_ORDERED_AHEAD 3
/* The watchdog's tick. */
#define DELIVER_CHECK_MS 1000
/* Due with a free slot this long: /healthz reports it. */
#define DELIVER_STUCK_MS 10000
/* Concurrency above this is capped (one process's sockets). */
#define DELIVER_SLOTS_MAX 1024
/* A claim's lease until the config says (the `lease` setting). */
#define DELIVER_LEASE_DEFAULT_MS 30000
/* Retry delay of a delivery whose endpoint left the config while in flight. */
#define DELIVER_ORPHAN_DEFER_MS 60000

#ifdef WAYBILL_CHECKS
#include <stdlib.h>
#include "log.h"
#define DELIVER_CHECK(cond)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            log_write(LOG_ERROR, "deliver: invariant broken: %s (%s:%d)", #cond, __FILE__,         \
                      __LINE__);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#else
#define DELIVER_CHECK(cond) ((void)0)
#endif

/* One endpoint's queue (keyed by name; the config is looked up by name
 * each time). Made for every endpoint of the config, kept while it holds
 * work after leaving it. Owns its waiting xfers and its timer. */
struct deliver_ep {
    struct deliver *d;
    char *name;
    struct event *timer;              /* this endpoint's next look (due row, token, retry) */
    int64_t timer_at;                 /* monotonic ms timer is due, 0 when not pending */
    int inflight;                     /* transfers of this endpoint in flight */
    struct deliver_xfer *head, *tail; /* claimed, waiting for a slot or a token (FIFO) */
    int nwaiting;                     /* length of the FIFO */
    int ending;             /* a shared store: outcomes recorded, not yet committed (their leases
                               are still live in the store, and count against `concurrency`) */
    int ending_watched;     /* ... of which the commit watch (d->commit) covers these */
    int64_t claimed_mono;   /* monotonic ms of its last claim (or ordered look) */
    int warned;             /* "not in the config" logged for this config */
    double tokens;          /* rate limit bucket (SPEC 7 `rate`) */
    int64_t tokens_at;      /* monotonic ms of the last refill, 0 = unused */
    int64_t token_wait;     /* monotonic ms the next token is there, 0 = now */
    int64_t shared_wait;    /* a shared store: monotonic ms the endpoint's bucket in
                               the store (all instances') has a token again, 0 = now */
    uint64_t progress;      /* claims tried + transfers started, ever */
    uint64_t progress_seen; /* progress when due_free_since was set */
    int64_t due_free_since; /* monotonic ms since due with a free slot, 0 = not */
    int64_t started_at;     /* monotonic ms of its last transfer started, 0 = none */
    int stuck;              /* due with a free slot, nothing started, for DELIVER_STUCK_MS */
    uint64_t lost_wakeups;  /* watchdog found it idle while due (a bug) */
    struct deliver_xfer *xfers; /* every xfer it holds, waiting or in flight */
    int dirty;                  /* rows were written for it: the next kick looks */
    int64_t dirty_seq;          /* ... the last of them, in the seq of store_delivery_seqs */
    int64_t dirty_from;         /* ... once deliveries up to this seq are committed (the
                                   first mark not looked at yet) */
    struct deliver_read *read;  /* its claim (or ordered look) in flight, or NULL */
    int again;                  /* a look came while it was in flight: look once answered */
    struct deliver_ep *next;
};

/* One asynchronous store read of the scheduler in flight (store.h's
 * store_read_*): an endpoint's claim or ordered look, or the watchdog's
 * and discovery's due read. Linked in d->reads until answered; deliver_free
 * detaches it (d = NULL, ep = NULL): its answer then only gives back the
 * rows it claimed, through store. The answer's callback frees it. */
enum deliver_read_kind { DELIVER_READ_CLAIM, DELIVER_READ_ORDERED, DELIVER_READ_CHECK };
struct deliver_read {
    struct deliver *d;
    struct store *store;
    struct deliver_ep *ep; /* claims: the endpoint (ep->read is this) */
    enum deliver_read_kind kind;
    int64_t now;       /* Unix ms of the call (claims: their due time) */
    int64_t mono;      /* monotonic ms of the call */
    size_t want;       /* claims: rows asked for */
    int late;          /* the watchdog: its tick came late (judge no one) */
    int discover_only; /* the watchdog's read without its check (a reload's discovery) */
    /* Claims: seqs of ep's rows that left memory (sent and written, or
     * given back) while this read was in flight. The claim may return
     * them (an enable cleared the lease of a row in flight): by the answer
     * their outcome is written, so they are given back, never sent again.
     * gone_lost: one could not be recorded (out of memory): every row the
     * answer does not already hold is given back. */
    int64_t *gone;
    size_t ngone, gone_cap;
    int gone_lost;
    struct deliver_read *prev, *next;
};

/* One claimed delivery and, once started, its transfer. Owns row (a deep
 * copy of the claimed store row) until the outcome is written; the
 * transfer borrows row.payload as its body. */
struct deliver_xfer {
    struct deliver *d;
    struct deliver_ep *ep;                  /* borrowed; outlives the xfer */
    struct deliver_xfer *qnext;             /* ep FIFO link while waiting */
    struct deliver_xfer *prev, *next;       /* d->xfers: every held xfer */
    struct deliver_xfer *ep_prev, *ep_next; /* ep->xfers */
    struct store_delivery row;              /* owned */
    int64_t lease_until;   /* Unix ms its lease ends (claim, or renewal at start) */
    int started;           /* counted in flight (d->inflight, ep->inflight) */
    struct httpc_xfer *hx; /* the transfer while in the client, else NULL */
    int64_t at;            /* Unix ms the attempt started */
    int64_t t0;            /* monotonic ms, for the latency */
};

/* Registered with store_on_written or store_on_commit; detached (d = NULL)
 * by deliver_free so a later callback does nothing. The callback frees it. */
struct deliver_commit {
    struct deliver *d;
};

struct deliver {
    struct event_base *base;
    struct store *store;
    struct httpc *httpc;      /* borrowed: transfers */
    struct health *health;    /* borrowed: endpoint state */
    const struct config *cfg; /* borrowed; NULL until deliver_set_config */
    struct event *kick_ev;    /* coalesced look at every endpoint */
    struct event *check_ev;   /* the watchdog (DELIVER_CHECK_MS) */
    int64_t check_at;         /* monotonic ms of its last tick */
    int64_t check_wall;       /* Unix ms of its last tick */
    int kick_all;             /* the next kick looks at every endpoint */
    int all_at_commit;        /* ... and so does the kick at the next COMMIT */
    struct event *grace_ev;   /* shutdown grace */
    struct event *done_ev;    /* runs the shutdown callback from the loop */
    struct deliver_xfer *xfers;
    struct deliver_ep *eps;
    struct deliver_read *reads;      /* every read in flight */
    struct deliver_read *check_read; /* the watchdog's, in flight, or NULL */
    int inflight;
    int64_t lease_ms;
    int shared; /* store_shared: other instances insert and claim too */
    uint64_t rng;
    struct deliver_commit *commit;  /* outstanding store_on_written, or NULL */
    struct deliver_commit *durable; /* outstanding store_on_commit, or NULL */
    int durable_again;              /* rows marked since: watch the next group too */
    int stopping;
    void (*done)(void *arg);
    void *done_arg;
    deliver_notify_fn notify;
    void *notify_arg;
    struct stream *stream; /* the live feed: each attempt's outcome; NULL = none */
};

/* The config of endpoint name (the file's, or a subscription's), or NULL. */
static inline const struct config_endpoint *deliver_endpoint(const struct deliver *d,
                                                             const char *name) {
    return d->cfg && name ? config_endpoint_by_name(d->cfg, name) : NULL;
}

/* 1 when ep is disabled (endpoint state, health.c). */
static inline int deliver_ep_off(const struct deliver *d, const struct deliver_ep *ep) {
    return health_endpoint_disabled(d->health, ep->name);
}

/* ---- deliver.c: transfers and outcomes ---- */

/* A new xfer owning a deep copy of row, linked into d->xfers and ep, or
 * NULL when out of memory. */
struct deliver_xfer *deliver_xfer_new(struct deliver *d, const struct store_delivery *row,
                                      struct deliver_ep *ep);

/* Frees x (not in an ep FIFO any more), cancelling its transfer first.
 * Writes nothing: a dropped delivery's lease lapses. */
void deliver_xfer_free(struct deliver *d, struct deliver_xfer *x);

/* Sends x (just taken from its FIFO) to cep: builds the request and hands
 * it to the HTTP client; a delivery that cannot be started is recorded as
 * a failed attempt (and freed). */
void deliver_xfer_send(struct deliver *d, struct deliver_xfer *x,
                       const struct config_endpoint *cep);

/* Looks at the group being written once it is committed: on a rollback,
 * looks at every endpoint; with all_at_commit set (deliver_kick_all), looks
 * at every endpoint. */
void deliver_commit_watch(struct deliver *d);
/* The outcomes written so far are what the commit watch just registered
 * covers (watched 1), or, when it could not be (watched 0), are forgotten
 * (ending 0: counted no more). */
void deliver_eps_ending_watch(struct deliver *d, int watched);
/* The watch's outcomes are committed (or rolled back: their leases end at
 * their expiry then): the endpoints they were for look again. Returns 1
 * when outcomes written since are still to be watched. */
int deliver_eps_ending_done(struct deliver *d);

/* Kicks once the open group is durable, when the rows it inserted become
 * claimable (deliver_ep_mark: the marked endpoints are looked at then). */
void deliver_durable_watch(struct deliver *d);

/* ---- deliver_sched.c: the scheduler ---- */

struct deliver_ep *deliver_ep_find(const struct deliver *d, const char *name);

/* ep for name, made (with its timer) when it has none; NULL when out of
 * memory. */
struct deliver_ep *deliver_ep_get(struct deliver *d, const char *name);

void deliver_ep_free(struct deliver_ep *ep);

/* Drops every waiting delivery of ep, writing nothing (their leases lapse,
 * and an SQLite store releases them at the next open). */
void deliver_ep_drop(struct deliver *d, struct deliver_ep *ep);

/* Gives every waiting delivery of ep back to the store, claimable again at
 * the time it was due (lease released in the open group), and frees them. */
void deliver_ep_release(struct deliver *d, struct deliver_ep *ep);

/* Marks ep: rows were written for it in the open group. */
void deliver_ep_mark(struct deliver *d, struct deliver_ep *ep);

/* Looks at one endpoint: everything the scheduler does for it happens
 * here, from a kick, its timer, or a completion. */
void deliver_ep_service(struct deliver *d, struct deliver_ep *ep);

/* Looks soon (from the loop) at marked endpoints, or at all of them. */
void deliver_kick_now(struct deliver *d, int all);

/* Gives endpoints with pending rows and no queue (a subscription's) one,
 * once the store has answered which they are. */
void deliver_discover(struct deliver *d);

/* Records that ep's row seq left memory while r, ep's claim, is in flight
 * (deliver_xfer_free calls it; r may be NULL: no claim in flight). */
void deliver_read_gone(struct deliver_read *r, int64_t seq);

/* Detaches every read in flight (deliver_free): their answers give back
 * what they claimed and touch nothing else. */
void deliver_reads_detach(struct deliver *d);

/* The kick and watchdog events' callbacks (deliver_new makes the events). */
void deliver_kick_cb(evutil_socket_t fd, short what, void *arg);
void deliver_check_cb(evutil_socket_t fd, short kind, void *arg);

#endif
