/* store_wait.h -- what the tests of the modules on a real store (batch,
 * deliver, health, ingest, route, subs) share: store.h's asynchronous calls
 * run to their answer. Each wait_* issues one call, runs the loop until its
 * callback came (bounded: STORE_WAIT_MS; an answer that never comes is a
 * failed check) and hands back a copy of what the callback was handed: a
 * write's status as store.h documents it (struct store_done), a read's
 * rows as new arrays the test frees with store.h's _free functions. The
 * store has no synchronous form of these calls: the tests wait as a
 * module would, from the loop. start_* issues the call only, for a test
 * whose meaning needs the loop not to run yet (two reads of one moment, a
 * write whose answer must come after a local change); store_wait_run (or
 * store_wait_write, take_*) then waits for it.
 *
 * What the answers promise (store.h): a write's (_done) comes once its
 * group ended -- committed, and synced for the durable ones -- so a test
 * that waits for a write has that group committed; a read of the loop's
 * own (queue, claims, the head, batch windows, store_get_*) is read as of
 * its call, the open group included; the admin reads (event detail) see
 * committed groups only.
 * SPDX-License-Identifier: MIT */
#ifndef TESTS_UNIT_STORE_WAIT_H
#define TESTS_UNIT_STORE_WAIT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "harness.h"
#include "store.h"
#include "util.h"

/* How long an answer may take: a turn may wait for the sync thread, and a
 * checked build may delay every answer (WAYBILL_STORE_REPLY_DELAY_MS). */
#define STORE_WAIT_MS 10000

/* One call's answer, copied (the callback's arguments live for the call
 * only). The copied rows are the test's once taken (set to NULL). */
struct store_wait {
    int came;             /* the callback ran */
    int oom;              /* a copy failed */
    int ok;               /* store_done: ok */
    int status;           /* store_done's or store_result's status */
    char err[256];        /* the answer's err */
    char id[UTIL_ID_MAX]; /* store_done: the event's id */
    int64_t value;        /* store_done: value */
    int64_t next_due;     /* store_result: next_due */
    /* rows */
    struct store_event_row *events; /* store_done's rows */
    size_t nevents;
    struct store_delivery *claimed;
    size_t nclaimed;
    struct store_batch_window *windows;
    size_t nwindows;
    struct store_event_detail *detail;
    int queue_ok; /* store_result: the first queue's ok */
    struct store_endpoint_queue queue;
    int64_t due_next, due_head; /* store_result: the first due's */
};

static inline void store_wait_init(struct store_wait *w) {
    memset(w, 0, sizeof *w);
    w->status = -1;
    w->next_due = w->due_next = w->due_head = -1;
    w->queue.oldest_due = w->queue.oldest_blocked = INT64_MAX;
}

/* Frees what was not taken. */
static inline void store_wait_clear(struct store_wait *w) {
    store_event_rows_free(w->events, w->nevents);
    store_deliveries_free(w->claimed, w->nclaimed);
    store_batch_windows_free(w->windows, w->nwindows);
    store_event_detail_free(w->detail);
    store_wait_init(w);
}

/* ---- copies ---- */

static inline char *store_wait_strdup(struct store_wait *w, const char *s) {
    char *c;
    if (!s)
        return NULL;
    if (!(c = strdup(s)))
        w->oom = 1;
    return c;
}

/* len bytes of p, NUL-terminated as the store gives them; NULL stays NULL. */
static inline char *store_wait_memdup(struct store_wait *w, const char *p, size_t len) {
    char *c;
    if (!p)
        return NULL;
    if (!(c = malloc(len + 1))) {
        w->oom = 1;
        return NULL;
    }
    memcpy(c, p, len);
    c[len] = '\0';
    return c;
}

static inline void store_wait_copy_event(struct store_wait *w, struct store_event_row *to,
                                         const struct store_event_row *from) {
    *to = *from;
    to->id = store_wait_strdup(w, from->id);
    to->source = store_wait_strdup(w, from->source);
    to->source_id = store_wait_strdup(w, from->source_id);
    to->type = store_wait_strdup(w, from->type);
    to->created_at = store_wait_strdup(w, from->created_at);
    to->status = store_wait_strdup(w, from->status);
    to->error = store_wait_strdup(w, from->error);
    to->headers_json = store_wait_strdup(w, from->headers_json);
    to->data_json = store_wait_strdup(w, from->data_json);
    to->shipment_json = store_wait_strdup(w, from->shipment_json);
    to->matched_json = store_wait_strdup(w, from->matched_json);
    to->raw = store_wait_memdup(w, from->raw, from->raw_len);
}

static inline struct store_event_row *
store_wait_copy_events(struct store_wait *w, const struct store_event_row *rows, size_t n) {
    struct store_event_row *c;
    if (!rows || !n)
        return NULL;
    if (!(c = calloc(n, sizeof *c))) {
        w->oom = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        store_wait_copy_event(w, &c[i], &rows[i]);
    return c;
}

static inline struct store_delivery *
store_wait_copy_claimed(struct store_wait *w, const struct store_delivery *d, size_t n) {
    struct store_delivery *c;
    if (!d || !n)
        return NULL;
    if (!(c = calloc(n, sizeof *c))) {
        w->oom = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        c[i] = d[i];
        c[i].endpoint = store_wait_strdup(w, d[i].endpoint);
        c[i].event_type = store_wait_strdup(w, d[i].event_type);
        c[i].content_type = store_wait_strdup(w, d[i].content_type);
        c[i].headers_json = store_wait_strdup(w, d[i].headers_json);
        c[i].payload = store_wait_memdup(w, d[i].payload, d[i].payload_len);
    }
    return c;
}

static inline struct store_batch_window *
store_wait_copy_windows(struct store_wait *w, const struct store_batch_window *ws, size_t n) {
    struct store_batch_window *c;
    if (!ws || !n)
        return NULL;
    if (!(c = calloc(n, sizeof *c))) {
        w->oom = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        c[i] = ws[i];
        c[i].endpoint = store_wait_strdup(w, ws[i].endpoint);
    }
    return c;
}

static inline struct store_event_detail *
store_wait_copy_detail(struct store_wait *w, const struct store_event_detail *d) {
    struct store_event_detail *c;
    if (!d)
        return NULL;
    if (!(c = calloc(1, sizeof *c))) {
        w->oom = 1;
        return NULL;
    }
    c->ev = store_wait_copy_events(w, d->ev, d->ev ? 1 : 0);
    if (d->ndeliveries && (c->deliveries = calloc(d->ndeliveries, sizeof *c->deliveries)))
        c->ndeliveries = d->ndeliveries;
    else if (d->ndeliveries)
        w->oom = 1;
    for (size_t i = 0; i < c->ndeliveries; i++) {
        const struct store_event_delivery *from = &d->deliveries[i];
        struct store_event_delivery *to = &c->deliveries[i];
        *to = *from;
        to->id = store_wait_strdup(w, from->id);
        to->endpoint = store_wait_strdup(w, from->endpoint);
        to->status = store_wait_strdup(w, from->status);
        to->content_type = store_wait_strdup(w, from->content_type);
        to->event_type = store_wait_strdup(w, from->event_type);
        to->payload = store_wait_memdup(w, from->payload, from->payload_len);
        to->attempts = NULL;
        to->nattempts = 0;
        if (from->nattempts && (to->attempts = calloc(from->nattempts, sizeof *to->attempts)))
            to->nattempts = from->nattempts;
        else if (from->nattempts)
            w->oom = 1;
        for (size_t k = 0; k < to->nattempts; k++) {
            to->attempts[k] = from->attempts[k];
            to->attempts[k].error = store_wait_strdup(w, from->attempts[k].error);
            to->attempts[k].response =
                store_wait_memdup(w, from->attempts[k].response, from->attempts[k].response_len);
        }
    }
    if (d->nwaiting && (c->waiting = calloc(d->nwaiting, sizeof *c->waiting)))
        c->nwaiting = d->nwaiting;
    else if (d->nwaiting)
        w->oom = 1;
    for (size_t i = 0; i < c->nwaiting; i++) {
        c->waiting[i] = d->waiting[i];
        c->waiting[i].endpoint = store_wait_strdup(w, d->waiting[i].endpoint);
    }
    return c;
}

/* ---- the callbacks ---- */

/* A write's answer (store_*_done) or a store_get_* read's. */
static inline void store_wait_on_done(void *arg, const struct store_done *d) {
    struct store_wait *w = arg;
    w->came++;
    w->ok = d->ok;
    w->status = d->ok ? d->status : -1;
    snprintf(w->err, sizeof w->err, "%s", d->err ? d->err : "");
    snprintf(w->id, sizeof w->id, "%s", d->id ? d->id : "");
    w->value = d->value;
    if (d->rows && d->n) {
        w->events = store_wait_copy_events(w, d->rows, d->n);
        w->nevents = w->events ? d->n : 0;
    }
}

/* A store_read_* answer: whichever of its parts the read fills. */
static inline void store_wait_on_read(void *arg, const struct store_result *r) {
    struct store_wait *w = arg;
    w->came++;
    w->ok = r->status >= 0;
    w->status = r->status;
    snprintf(w->err, sizeof w->err, "%s", r->err ? r->err : "");
    w->next_due = r->next_due;
    if (r->claimed && r->n) {
        w->claimed = store_wait_copy_claimed(w, r->claimed, r->n);
        w->nclaimed = w->claimed ? r->n : 0;
    }
    if (r->windows && r->n) {
        w->windows = store_wait_copy_windows(w, r->windows, r->n);
        w->nwindows = w->windows ? r->n : 0;
    }
    if (r->detail)
        w->detail = store_wait_copy_detail(w, r->detail);
    if (r->queues && r->nqueues) {
        w->queue_ok = r->queues[0].ok;
        w->queue = r->queues[0].q;
    }
    if (r->dues && r->ndues) {
        w->due_next = r->dues[0].next_due;
        w->due_head = r->dues[0].head_due;
    }
}

/* ---- running the loop ---- */

static inline void store_wait_timed_out(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Runs base until w's answer came (issued = the call's return: -1, out of
 * memory, never answers) or STORE_WAIT_MS passed. Returns 1 when it came;
 * else 0, a failed check. Not from inside the loop (libevent runs one loop
 * per base at a time): a callback issues with start_* and looks later. */
static inline int store_wait_run(struct event_base *base, struct store_wait *w, int issued) {
    struct timeval tv = {STORE_WAIT_MS / 1000, (STORE_WAIT_MS % 1000) * 1000};
    int timed_out = 0;
    struct event *timer = issued == 0 ? evtimer_new(base, store_wait_timed_out, &timed_out) : NULL;

    if (timer && evtimer_add(timer, &tv) == 0)
        while (!w->came && !timed_out && event_base_loop(base, EVLOOP_ONCE) >= 0)
            ;
    if (timer)
        event_free(timer);
    if (!w->came || w->oom) {
        fprintf(stderr, "store_wait: %s\n",
                issued     ? "the call failed"
                : !w->came ? "no answer came"
                           : "out of memory");
        /* counted only when it fails: the callers' own checks count the answers */
        CHECK(w->came && !w->oom);
    }
    return w->came && !w->oom;
}

/* ---- writes: the answer's status (struct store_done), -1 when not ok ---- */

/* A write issued into w (store_wait_init'ed; issued: the call's return)
 * run to its answer: its status, -1 when it was not ok (failed, or its
 * group did). */
static inline int store_wait_write(struct event_base *base, struct store_wait *w, int issued) {
    if (!store_wait_run(base, w, issued))
        return -1;
    if (!w->ok)
        fprintf(stderr, "store_wait: the write failed: %s\n", w->err);
    return w->status;
}

/* Issues store_event_put_done into w; its answer: store_wait_write. */
static inline int start_event_put(struct store *s, const struct store_event *ev,
                                  struct store_plan *plan, struct store_wait *w) {
    return store_event_put_done(s, ev, plan, store_wait_on_done, w);
}

/* The event (with plan, or "received" when NULL) put: 0, STORE_DUP, -1. */
static inline int wait_event_put(struct event_base *base, struct store *s,
                                 const struct store_event *ev, struct store_plan *plan) {
    struct store_wait w;
    store_wait_init(&w);
    return store_wait_write(base, &w, start_event_put(s, ev, plan, &w));
}

/* Event event_id's routing (plan) stored: 1 routed, 0 an unknown id,
 * STORE_ROUTED_ALREADY, -1. */
static inline int wait_event_routed(struct event_base *base, struct store *s, const char *event_id,
                                    struct store_plan *plan) {
    struct store_wait w;
    store_wait_init(&w);
    return store_wait_write(base, &w,
                            store_event_routed_done(s, event_id, plan, store_wait_on_done, &w));
}

/* name disabled (with reason) or enabled: 0 or -1; *moved (may be NULL):
 * the deliveries moved between pending and held. */
static inline int wait_endpoint_set_disabled(struct event_base *base, struct store *s,
                                             const char *name, int disabled, const char *reason,
                                             int64_t now, int64_t *moved) {
    struct store_wait w;
    store_wait_init(&w);
    if (store_wait_write(base, &w,
                         store_endpoint_set_disabled_done(s, name, disabled, reason, now,
                                                          store_wait_on_done, &w)) < 0)
        return -1;
    if (moved)
        *moved = w.value;
    return w.status;
}

/* sub stored: 0, STORE_DUP (its pattern has one), -1. */
static inline int wait_sub_put(struct event_base *base, struct store *s,
                               const struct store_sub *sub) {
    struct store_wait w;
    store_wait_init(&w);
    return store_wait_write(base, &w, store_sub_put_done(s, sub, store_wait_on_done, &w));
}

/* Issues store_sub_change_done into w (store_wait_init'ed); its answer:
 * store_wait_write. */
static inline int start_sub_change(struct store *s, const char *id, const char *url,
                                   struct store_wait *w) {
    return store_sub_change_done(s, id, url, store_wait_on_done, w);
}

/* Subscription id's url set (NULL: deleted): 1, 0 an unknown id, -1. */
static inline int wait_sub_change(struct event_base *base, struct store *s, const char *id,
                                  const char *url) {
    struct store_wait w;
    store_wait_init(&w);
    return store_wait_write(base, &w, start_sub_change(s, id, url, &w));
}

/* Subscription id's secret set: 1, 0 an unknown id, -1. */
static inline int wait_sub_set_secret(struct event_base *base, struct store *s, const char *id,
                                      const char *secret) {
    struct store_wait w;
    store_wait_init(&w);
    return store_wait_write(base, &w,
                            store_sub_set_secret_done(s, id, secret, store_wait_on_done, &w));
}

/* ---- the loop's reads ---- */

/* Issues store_read_endpoints for name's queue into w; its answer:
 * store_wait_run, then take_endpoint_queue. */
static inline int start_endpoint_queue(struct store *s, const char *name, int64_t now,
                                       int64_t due_cap, int counts, struct store_wait *w) {
    const char *names[1] = {name};
    return store_read_endpoints(s, names, 1, now, due_cap, counts, NULL, 0, store_wait_on_read, w);
}

/* w's answer: name's queue into q, 0; or -1 (no answer, the read failed:
 * q zeroed, its oldest INT64_MAX). */
static inline int take_endpoint_queue(struct store_wait *w, struct store_endpoint_queue *q) {
    if (w->came && !w->oom && w->status >= 0 && w->queue_ok) {
        *q = w->queue;
        return 0;
    }
    memset(q, 0, sizeof *q);
    q->oldest_due = q->oldest_blocked = INT64_MAX;
    return -1;
}

/* name's queue (pending, held, due up to due_cap at now: store_read_endpoints),
 * the open group included: 0 or -1, as take_endpoint_queue. */
static inline int wait_endpoint_queue(struct event_base *base, struct store *s, const char *name,
                                      int64_t now, int64_t due_cap, int counts,
                                      struct store_endpoint_queue *q) {
    struct store_wait w;
    store_wait_init(&w);
    store_wait_run(base, &w, start_endpoint_queue(s, name, now, due_cap, counts, &w));
    return take_endpoint_queue(&w, q);
}

/* Claims up to max of name's committed rows due at now (store_read_claim_due,
 * no shared cap or rate): *out new (store_deliveries_free). 0 or -1. */
static inline int wait_claim_due(struct event_base *base, struct store *s, const char *name,
                                 int64_t now, int64_t lease_ms, size_t max,
                                 struct store_delivery **out, size_t *n) {
    struct store_wait w;
    store_wait_init(&w);
    *out = NULL;
    *n = 0;
    if (!store_wait_run(
            base, &w,
            store_read_claim_due(s, name, now, lease_ms, max, 0, 0, store_wait_on_read, &w)) ||
        w.status < 0) {
        store_wait_clear(&w);
        return -1;
    }
    *out = w.claimed;
    *n = w.nclaimed;
    return 0;
}

/* Issues store_read_endpoints_due for name into w; its answer:
 * store_wait_run, then w->due_next. */
static inline int start_next_due(struct store *s, const char *name, struct store_wait *w) {
    const char *names[1] = {name};
    return store_read_endpoints_due(s, names, NULL, 1, 0, store_wait_on_read, w);
}

/* When name's earliest committed pending row is claimable (the next_due of
 * store_read_endpoints_due): INT64_MAX when none, -1 on a store error. */
static inline int64_t wait_next_due(struct event_base *base, struct store *s, const char *name) {
    struct store_wait w;
    store_wait_init(&w);
    if (!store_wait_run(base, &w, start_next_due(s, name, &w)))
        return -1;
    return w.due_next;
}

/* The earliest open window's end (the next_due of store_read_batch_due),
 * INT64_MAX when none, -1 on a store error. */
static inline int64_t wait_batch_next_close(struct event_base *base, struct store *s) {
    struct store_wait w;
    int64_t next;
    store_wait_init(&w);
    /* at time 0 no window is due: the answer is the next close alone */
    if (!store_wait_run(base, &w, store_read_batch_due(s, 0, store_wait_on_read, &w)))
        return -1;
    next = w.status < 0 ? -1 : w.next_due;
    store_wait_clear(&w);
    return next;
}

/* The open windows that ended at or before now (store_read_batch_due):
 * *out new (store_batch_windows_free). 0 or -1. */
static inline int wait_batch_due(struct event_base *base, struct store *s, int64_t now,
                                 struct store_batch_window **out, size_t *n) {
    struct store_wait w;
    store_wait_init(&w);
    *out = NULL;
    *n = 0;
    if (!store_wait_run(base, &w, store_read_batch_due(s, now, store_wait_on_read, &w)) ||
        w.status < 0) {
        store_wait_clear(&w);
        return -1;
    }
    *out = w.windows;
    *n = w.nwindows;
    return 0;
}

/* Event id (store_get_event): 1 found (*row new,
 * store_event_rows_free(*row, 1)), 0 unknown (*row NULL), -1 an error. */
static inline int wait_event_get(struct event_base *base, struct store *s, const char *id,
                                 struct store_event_row **row) {
    struct store_wait w;
    store_wait_init(&w);
    *row = NULL;
    if (!store_wait_run(base, &w, store_get_event(s, id, store_wait_on_done, &w)) || !w.ok) {
        store_wait_clear(&w);
        return -1;
    }
    if (w.status == 1 && w.nevents == 1)
        *row = w.events;
    else
        store_event_rows_free(w.events, w.nevents);
    return *row ? 1 : w.status == 1 ? -1 : 0;
}

/* Issues store_get_events_unrouted into w; its answer: store_wait_run,
 * then take_events_unrouted. */
static inline int start_events_unrouted(struct store *s, int64_t after_seq, size_t max,
                                        struct store_wait *w) {
    return store_get_events_unrouted(s, after_seq, max, store_wait_on_done, w);
}

/* w's answer: the committed "received" events, *rows new
 * (store_event_rows_free). 0 or -1. */
static inline int take_events_unrouted(struct store_wait *w, struct store_event_row **rows,
                                       size_t *n) {
    *rows = NULL;
    *n = 0;
    if (!w->came || w->oom || !w->ok) {
        store_wait_clear(w);
        return -1;
    }
    *rows = w->events;
    *n = w->nevents;
    w->events = NULL;
    w->nevents = 0;
    return 0;
}

static inline int wait_events_unrouted(struct event_base *base, struct store *s, int64_t after_seq,
                                       size_t max, struct store_event_row **rows, size_t *n) {
    struct store_wait w;
    store_wait_init(&w);
    store_wait_run(base, &w, start_events_unrouted(s, after_seq, max, &w));
    return take_events_unrouted(&w, rows, n);
}

/* ---- the admin API's reads (committed groups only) ---- */

/* Issues store_read_event_detail into w; its answer: take_event_detail
 * once w->came (store_wait_run, or a look from the loop). */
static inline int start_event_detail(struct store *s, const char *id, struct store_wait *w) {
    return store_read_event_detail(s, id, store_wait_on_read, w);
}

/* w's answer: event id's detail, 1 found (*out new, store_event_detail_free), 0
 * unknown (*out NULL), -1 an error or no answer. */
static inline int take_event_detail(struct store_wait *w, struct store_event_detail **out) {
    int rc = -1;
    if (w->came && !w->oom && w->status == 1 && w->detail)
        rc = 1;
    else if (w->came && !w->oom && w->status == 0)
        rc = 0;
    *out = rc == 1 ? w->detail : NULL;
    if (rc == 1)
        w->detail = NULL;
    store_wait_clear(w);
    return rc;
}

static inline int wait_event_detail(struct event_base *base, struct store *s, const char *id,
                                    struct store_event_detail **out) {
    struct store_wait w;
    store_wait_init(&w);
    store_wait_run(base, &w, start_event_detail(s, id, &w));
    return take_event_detail(&w, out);
}

#endif
