/* store_sqlite_reply.c -- the asynchronous reads of store.h on SQLite: each read
 * runs at once on the read connection (committed state) and its answer
 * waits in a queue, handed to its callback on the next loop turn, in the
 * order the reads were made. A backend across the network answers when
 * its rows arrive; callers written for this shape work with both.
 * Invariants: a queued answer owns its rows until its callback returned;
 * every answer queued is handed over exactly once (store_reply_drain runs
 * them all at store_flush and before the store is closed).
 * The loop's own reads (claims, the watchdog's due times, batch windows)
 * answer the same way; a claim's rows are leased when the call returns.
 * Under WAYBILL_CHECKS, WAYBILL_STORE_REPLY_DELAY_MS=N hands each answer
 * over N ms after its call (a timer), as a slow network would.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/time.h>

#include <event2/event.h>

#include "log.h"
#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

enum reply_kind {
    REPLY_EVENTS,
    REPLY_DELIVERIES,
    REPLY_DETAIL,
    REPLY_FIND,
    REPLY_WINDOWS,
    REPLY_COUNTS,
    REPLY_PING,
    REPLY_ENDPOINTS,
    REPLY_CLAIM,
    REPLY_DUE,
    REPLY_BATCH_DUE,
};

/* WAYBILL_STORE_REPLY_DELAY_MS (WAYBILL_CHECKS builds): each answer waits
 * this long (ms) after its call; 0 = the next loop turn. */
static int64_t reply_delay_ms;

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
    struct store_delivery *claimed;
    int64_t next_due, head, head_at;
    struct store_endpoint_due *dues;
    size_t ndues;
    int64_t due_at; /* monotonic ms it may be handed over (the delay knob) */
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
    store_deliveries_free(r->claimed, r->claimed ? r->n : 0);
    for (size_t i = 0; r->dues && i < r->ndues; i++)
        free(r->dues[i].name);
    free(r->dues);
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
    res.claimed = r->claimed;
    res.next_due = r->next_due;
    res.head = r->head;
    res.head_at = r->head_at;
    res.dues = r->dues;
    res.ndues = r->ndues;
    r->fn(r->arg, &res);
    reply_free(r);
}

void store_reply_drain(struct store_sq *s) {
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

/* Arms the answers' event for the first one waiting: the next turn, or,
 * with the delay knob, when it is due. */
static void reply_arm(struct store_sq *s) {
    struct timeval tv = {0, 0};
    if (!s->replies)
        return;
    if (reply_delay_ms > 0) {
        int64_t wait = s->replies->due_at - util_mono_ms();
        if (wait > 0) {
            tv.tv_sec = (time_t)(wait / 1000);
            tv.tv_usec = (suseconds_t)(wait % 1000) * 1000;
        }
    }
    event_add(s->reply_ev, &tv);
}

static void reply_cb(evutil_socket_t fd, short what, void *arg) {
    struct store_sq *s = arg;
    int64_t now = reply_delay_ms > 0 ? util_mono_ms() : 0;
    size_t n = 0;
    (void)fd;
    (void)what;
    for (const struct store_reply *r = s->replies; r; r = r->next)
        n++;
    /* This turn's answers only: a read made again from a callback is
     * answered after the loop has polled, so a chain of reads cannot hold
     * it (a timer of 0 runs on the next turn; an active event would run in
     * this one). With the delay knob, the answers due by now (in call
     * order: their due times do not decrease). */
    while (n-- > 0 && s->replies && s->replies->due_at <= now) {
        struct store_reply *r = s->replies;
        s->replies = r->next;
        if (!s->replies)
            s->replies_tail = NULL;
        reply_deliver(r);
    }
    reply_arm(s);
}

int store_reply_start(struct store_sq *s, struct event_base *base) {
#ifdef WAYBILL_CHECKS
    const char *delay = getenv("WAYBILL_STORE_REPLY_DELAY_MS");
    reply_delay_ms = 0;
    if (delay && *delay) {
        reply_delay_ms = atoll(delay);
        if (reply_delay_ms < 0)
            reply_delay_ms = 0;
        if (reply_delay_ms > 0)
            log_msg(LOG_INFO,
                    "store: every asynchronous answer is handed over %lld ms after its call "
                    "(WAYBILL_STORE_REPLY_DELAY_MS)",
                    (long long)reply_delay_ms);
    }
#endif
    s->reply_ev = event_new(base, -1, 0, reply_cb, s);
    return s->reply_ev ? 0 : -1;
}

void store_reply_stop(struct store_sq *s) {
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
static int reply_queue(struct store_sq *s, struct store_reply *r) {
    if (s->replies_tail)
        s->replies_tail->next = r;
    else
        s->replies = r;
    s->replies_tail = r;
    if (reply_delay_ms > 0) {
        r->due_at = util_mono_ms() + reply_delay_ms;
        if (!event_pending(s->reply_ev, EV_TIMEOUT, NULL))
            reply_arm(s);
    } else if (!event_pending(s->reply_ev, EV_TIMEOUT, NULL)) {
        event_active(s->reply_ev, EV_TIMEOUT, 0);
    }
    return 0;
}

int store_reply_pending(const struct store_sq *s) {
    return s->replies != NULL;
}

int store_sqlite_read_events_page(struct store_sq *s, const struct store_page *q, store_read_fn fn,
                                  void *arg) {
    struct store_reply *r = reply_new(REPLY_EVENTS, fn, arg);
    if (!r)
        return -1;
    r->status =
        store_sqlite_events_page(s, q, &r->events, &r->n, &r->next_cursor, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_sqlite_read_deliveries_page(struct store_sq *s, const struct store_page *q,
                                      store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_DELIVERIES, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_deliveries_page(s, q, &r->deliveries, &r->n, &r->next_cursor, r->err,
                                             sizeof r->err);
    return reply_queue(s, r);
}

int store_sqlite_read_event_detail(struct store_sq *s, const char *id, store_read_fn fn,
                                   void *arg) {
    struct store_reply *r = reply_new(REPLY_DETAIL, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_event_detail(s, id, &r->detail, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_sqlite_read_events_find(struct store_sq *s, const char *text, size_t max,
                                  store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_FIND, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_events_find(s, text, max, &r->ids, &r->n, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_sqlite_read_batch_windows(struct store_sq *s, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_WINDOWS, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_batch_windows(s, &r->windows, &r->n, r->err, sizeof r->err);
    return reply_queue(s, r);
}

int store_sqlite_read_delivery_counts(struct store_sq *s, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_COUNTS, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_delivery_counts(s, &r->counts);
    if (r->status < 0)
        snprintf(r->err, sizeof r->err, "store unavailable");
    return reply_queue(s, r);
}

int store_sqlite_read_ping(struct store_sq *s, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_PING, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_ping(s) ? 0 : -1;
    if (r->status < 0)
        snprintf(r->err, sizeof r->err, "store does not answer");
    return reply_queue(s, r);
}

int store_sqlite_read_endpoints(struct store_sq *s, const char *const *names, size_t n, int64_t now,
                                int64_t due_cap, int counts, const char *blocked_of,
                                size_t blocked_max, store_read_fn fn, void *arg) {
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
        v->ok = store_sqlite_endpoint_queue(s, names[i], now, due_cap, counts, &v->q) == 0;
    }
    r->status = store_sqlite_endpoint_states(s, &r->states, &r->nstates, r->err, sizeof r->err);
    if (r->status == 0 && blocked_of)
        r->status = store_sqlite_endpoint_blocked(s, blocked_of, blocked_max, &r->blocked,
                                                  &r->nblocked, r->err, sizeof r->err);
    return reply_queue(s, r);
}

/* ---- the loop's own reads ---- */

int store_sqlite_read_claim_due(struct store_sq *s, const char *name, int64_t now, int64_t lease_ms,
                                size_t max, size_t cap, double rate, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_CLAIM, fn, arg);
    UNUSED(cap); /* one process: the scheduler keeps the cap and the rate */
    UNUSED(rate);
    if (!r)
        return -1;
    r->head = r->head_at = INT64_MAX;
    r->status = store_sqlite_endpoint_claim_due(s, name, now, lease_ms, max, &r->claimed, &r->n,
                                                r->err, sizeof r->err);
    r->next_due = r->status < 0 ? -1 : store_sqlite_endpoint_next_due(s, name);
    return reply_queue(s, r);
}

int store_sqlite_read_claim_ordered(struct store_sq *s, const char *name, int64_t now,
                                    int64_t lease_ms, size_t max, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_CLAIM, fn, arg);
    if (!r)
        return -1;
    r->next_due = -1;
    r->head = store_sqlite_endpoint_head(s, name, &r->head_at);
    if (r->head < 0) {
        r->status = -1;
        snprintf(r->err, sizeof r->err, "store: reading the head of %s failed", name);
    } else if (r->head != INT64_MAX && max > 0 && r->head_at <= now) {
        r->status = store_sqlite_endpoint_claim(s, name, r->head - 1, now, lease_ms, max,
                                                &r->claimed, &r->n, r->err, sizeof r->err);
    }
    return reply_queue(s, r);
}

/* store_endpoints_pending's names into r->ids (r->n); sets *oom when one
 * could not be kept. */
struct reply_names {
    struct store_reply *r;
    size_t cap;
    int oom;
};

static void reply_name_add(void *arg, const char *name) {
    struct reply_names *rn = arg;
    struct store_reply *r = rn->r;
    void *grown;

    if (rn->oom)
        return;
    if (r->n == rn->cap) {
        size_t cap = rn->cap ? rn->cap * 2 : 8;
        if (!(grown = realloc(r->ids, cap * sizeof *r->ids))) {
            rn->oom = 1;
            return;
        }
        r->ids = grown;
        rn->cap = cap;
    }
    if (!(r->ids[r->n] = strdup(name))) {
        rn->oom = 1;
        return;
    }
    r->n++;
}

int store_sqlite_read_endpoints_due(struct store_sq *s, const char *const *names, size_t n,
                                    int pending, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_DUE, fn, arg);
    int64_t committed, last;
    if (!r)
        return -1;
    if (n && !(r->dues = calloc(n, sizeof *r->dues))) {
        free(r);
        return -1;
    }
    store_sqlite_delivery_seqs(s, &committed, &last);
    for (size_t i = 0; i < n; i++, r->ndues++) {
        struct store_endpoint_due *e = &r->dues[i];
        int64_t head, at;
        if (!(e->name = strdup(names[i]))) {
            reply_free(r);
            return -1;
        }
        e->next_due = store_sqlite_endpoint_next_due(s, names[i]);
        head = store_sqlite_endpoint_head(s, names[i], &at);
        e->head_due = head < 0 ? -1 : head <= committed ? at : INT64_MAX;
    }
    if (pending) {
        struct reply_names rn = {r, 0, 0};
        r->status = store_sqlite_endpoints_pending(s, reply_name_add, &rn) < 0 || rn.oom ? -1 : 0;
        if (r->status < 0)
            snprintf(r->err, sizeof r->err,
                     "store: listing endpoints with pending deliveries "
                     "failed");
    }
    return reply_queue(s, r);
}

int store_sqlite_read_batch_due(struct store_sq *s, int64_t now, store_read_fn fn, void *arg) {
    struct store_reply *r = reply_new(REPLY_BATCH_DUE, fn, arg);
    if (!r)
        return -1;
    r->status = store_sqlite_batch_due(s, now, &r->windows, &r->n, r->err, sizeof r->err);
    r->next_due = store_sqlite_batch_next_close(s);
    return reply_queue(s, r);
}
