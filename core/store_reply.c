/* store_reply.c -- the asynchronous reads of store.h on SQLite: each read
 * runs at once on the read connection (committed state) and its answer
 * waits in a queue, handed to its callback on the next loop turn, in the
 * order the reads were made. A backend across the network answers when
 * its rows arrive; callers written for this shape work with both.
 * Invariants: a queued answer owns its rows until its callback returned;
 * every answer queued is handed over exactly once (store_reply_drain runs
 * them all at store_flush and before the store is closed).
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/time.h>

#include <event2/event.h>

#include "store.h"
#include "store_int.h"

enum reply_kind {
    REPLY_EVENTS,
    REPLY_DELIVERIES,
    REPLY_DETAIL,
    REPLY_FIND,
    REPLY_WINDOWS,
    REPLY_COUNTS,
    REPLY_PING,
    REPLY_ENDPOINTS,
};

/* One answer waiting for its turn; owns its rows. */
struct store_reply {
    struct store_reply *next;
    enum reply_kind kind;
    store_read_fn fn;
    void *arg;
    int status;
    size_t n;
    int64_t next_cursor;
    struct store_event_row *events;
    struct store_delivery_item *deliveries;
    struct store_event_detail *detail;
    char **ids;
    struct store_batch_window *windows;
    struct store_counts counts;
    struct store_endpoint_state *states;
    size_t nstates;
    struct store_endpoint_view *queues;
    size_t nqueues;
    struct store_blocked_key *blocked;
    size_t nblocked;
    char err[256];
};

static void reply_free(struct store_reply *r) {
    store_event_rows_free(r->events, r->events ? r->n : 0);
    store_delivery_items_free(r->deliveries, r->deliveries ? r->n : 0);
    store_event_detail_free(r->detail);
    if (r->ids) {
        for (size_t i = 0; i < r->n; i++)
            free(r->ids[i]);
        free(r->ids);
    }
    store_batch_windows_free(r->windows, r->windows ? r->n : 0);
    store_endpoint_states_free(r->states, r->nstates);
    for (size_t i = 0; r->queues && i < r->nqueues; i++)
        free(r->queues[i].name);
    free(r->queues);
    store_blocked_keys_free(r->blocked, r->nblocked);
    free(r);
}

/* Hands r to its callback (the result viewing r's rows), then frees it. */
static void reply_deliver(struct store_reply *r) {
    struct store_result res = {0};
    res.status = r->status;
    res.err = r->err;
    res.n = r->n;
    res.next = r->next_cursor;
    res.events = r->events;
    res.deliveries = r->deliveries;
    res.detail = r->detail;
    res.ids = r->ids;
    res.windows = r->windows;
    res.counts = r->kind == REPLY_COUNTS && r->status >= 0 ? &r->counts : NULL;
    res.states = r->states;
    res.nstates = r->nstates;
    res.queues = r->queues;
    res.nqueues = r->nqueues;
    res.blocked = r->blocked;
    res.nblocked = r->nblocked;
    r->fn(r->arg, &res);
    reply_free(r);
}

void store_reply_drain(struct store *s) {
    struct store_reply *r;
    /* A callback may read again: its answer joins the queue and is handed
     * over in this loop as well. */
    while ((r = s->replies)) {
        s->replies = r->next;
        if (!s->replies)
            s->replies_tail = NULL;
        reply_deliver(r);
    }
}

static void reply_cb(evutil_socket_t fd, short what, void *arg) {
    static const struct timeval next_turn = {0, 0};
    struct store *s = arg;
    size_t n = 0;
    (void)fd;
    (void)what;
    for (const struct store_reply *r = s->replies; r; r = r->next)
        n++;
    /* This turn's answers only: a read made again from a callback is
     * answered after the loop has polled, so a chain of reads cannot hold
     * it (a timer of 0 runs on the next turn; an active event would run in
     * this one). */
    while (n-- > 0 && s->replies) {
        struct store_reply *r = s->replies;
        s->replies = r->next;
        if (!s->replies)
            s->replies_tail = NULL;
        reply_deliver(r);
    }
    if (s->replies)
        event_add(s->reply_ev, &next_turn);
}

int store_reply_start(struct store *s, struct event_base *base) {
    s->reply_ev = event_new(base, -1, 0, reply_cb, s);
    return s->reply_ev ? 0 : -1;
}

void store_reply_stop(struct store *s) {
    store_reply_drain(s);
    if (s->reply_ev)
        event_free(s->reply_ev);
    s->reply_ev = NULL;
}

/* A new answer of kind for fn(arg), or NULL when out of memory. */
static struct store_reply *reply_new(enum reply_kind kind, store_read_fn fn, void *arg) {
    struct store_reply *r = calloc(1, sizeof *r);
    if (r) {
        r->kind = kind;
        r->fn = fn;
        r->arg = arg;
    }
    return r;
}

/* Queues r for the next loop turn; returns 0. */
static int reply_queue(struct store *s, struct store_reply *r) {
    if (s->replies_tail)
        s->replies_tail->next = r;
    else
        s->replies = r;
    s->replies_tail = r;
    if (!event_pending(s->reply_ev, EV_TIMEOUT, NULL))
        event_active(s->reply_ev, EV_TIMEOUT, 0);
    return 0;
}

int store_reply_pending(const struct store *s) {
    return s->replies != NULL;
}

int store_read_events_page(struct store *s, const struct store_page *q, store_read_fn fn,
                           void *arg) {
    struct store_reply *r = reply_new(REPLY_EVENTS, fn, arg);
    if (!r)
        return -1;
    r->status = store_events_page(s, q, &r->events, &r->n, &r->next_cursor, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_read_deliveries_page(struct store *s, const struct store_page *q, store_read_fn fn,
                               void *arg) {
    struct store_reply *r = reply_new(REPLY_DELIVERIES, fn, arg);
    if (!r)
        return -1;
    r->status =
        store_deliveries_page(s, q, &r->deliveries, &r->n, &r->next_cursor, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_read_event_detail(struct store *s, const char *id, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_DETAIL, fn, arg);
    if (!r)
        return -1;
    r->status = store_event_detail(s, id, &r->detail, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_read_events_find(struct store *s, const char *text, size_t max, store_read_fn fn,
                           void *arg) {
    struct store_reply *r = reply_new(REPLY_FIND, fn, arg);
    if (!r)
        return -1;
    r->status = store_events_find(s, text, max, &r->ids, &r->n, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_read_batch_windows(struct store *s, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_WINDOWS, fn, arg);
    if (!r)
        return -1;
    r->status = store_batch_windows(s, &r->windows, &r->n, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_read_delivery_counts(struct store *s, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_COUNTS, fn, arg);
    if (!r)
        return -1;
    r->status = store_delivery_counts(s, &r->counts);
    if (r->status < 0)
        snprintf(r->err, sizeof r->err, "store unavailable");
    return reply_queue(s, r);
}

int store_read_ping(struct store *s, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_PING, fn, arg);
    if (!r)
        return -1;
    r->status = store_ping(s) ? 0 : -1;
    if (r->status < 0)
        snprintf(r->err, sizeof r->err, "store does not answer");
    return reply_queue(s, r);
}

int store_read_endpoints(struct store *s, const char *const *names, size_t n, int64_t now,
                         int64_t due_cap, int counts, const char *blocked_of, size_t blocked_max,
                         store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_ENDPOINTS, fn, arg);
    if (!r)
        return -1;
    if (n && !(r->queues = calloc(n, sizeof *r->queues))) {
        free(r);
        return -1;
    }
    for (size_t i = 0; i < n; i++, r->nqueues++) {
        struct store_endpoint_view *v = &r->queues[i];
        if (!(v->name = strdup(names[i]))) {
            reply_free(r);
            return -1;
        }
        v->ok = store_endpoint_queue(s, names[i], now, due_cap, counts, &v->q) == 0;
    }
    r->status = store_endpoint_states(s, &r->states, &r->nstates, r->err, sizeof r->err);
    if (r->status == 0 && blocked_of)
        r->status = store_endpoint_blocked(s, blocked_of, blocked_max, &r->blocked, &r->nblocked,
                                           r->err, sizeof r->err);
    return reply_queue(s, r);
}
