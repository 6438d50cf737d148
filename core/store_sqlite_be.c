/* store_sqlite_be.c -- the SQLite engine as a backend of store_backend.h
 * (issue 15): each operation runs its statements at once on the loop
 * connection, through the engine's own calls (store_sqlite*.c), and
 * answers from the loop, never from inside the call.
 *
 * - GROUP writes run in the engine's open group (its BEGIN IMMEDIATE, taken
 *   by the first write) and wait there for its end: each one's answer is a
 *   store_sqlite_on_commit callback, so it comes once the group's COMMIT is
 *   durable (the sync thread's fdatasync with sync=full), with the write's
 *   own status and rows, or with -1 for every write of a group that rolled
 *   back. group_end's answer is registered after them, so it comes last;
 *   its status is -1 when any write of the group heard -1.
 * - The group's COMMIT is the engine's: its commit event, the lowest
 *   priority, runs after the engine over the backend ended the group
 *   (store_bx.c schedules its own end at the group's first write, before
 *   the write reaches here, and events of one priority run in the order
 *   they were made active).
 * - CLAIMS lease their rows in the open group and answer on the next loop
 *   turn, as the SQLite engine's claims do: one process owns the file and
 *   its open releases every lease a dead run left (store_sqlite.c), so a
 *   lease needs no durability before its rows are sent. cap and rate are
 *   for several instances: one process keeps them in the scheduler.
 * - READS run at once and answer on the next loop turn, in order.
 * - prune runs in the open group (as the SQLite engine's retention does)
 *   and answers once it committed; reclaim likewise.
 * One owner per answer: an answer owns its rows until its callback
 * returned, then frees them (sqb_free).
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/time.h>

#include <event2/event.h>

#include "log.h"
#include "store.h"
#include "store_backend.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

/* An open or ended group: its writes' outcome, and group_end's callback. */
struct sqb_grp {
    int failed;
    size_t nwrites;
    store_be_done_fn cb;
    void *arg;
};

struct store_be {
    struct store_sq *sq;
    struct event *answer_ev;
    int64_t delay_ms; /* WAYBILL_STORE_REPLY_DELAY_MS (checked builds): 0, the next turn */
    struct sqb_ans *head, *tail; /* answers for the next loop turn, in order */
    struct sqb_grp *grp;         /* the open group, NULL when none */
};

/* What an answer's rows are, for sqb_free. */
enum sqb_kind {
    K_NONE,
    K_PUT,
    K_INT,
    K_EVENTS,
    K_DETAIL,
    K_ITEMS,
    K_WINDOWS,
    K_NAMES,
    K_STATES,
    K_SUBS,
    K_CLAIM,
    K_BLOCKED,
    K_PAIR,
    K_COUNTS,
    K_QUEUE,
    K_PRUNE
};

/* One answer to come. */
struct sqb_ans {
    struct sqb_ans *next;
    struct store_be *b;
    struct sqb_grp *grp; /* a group write's group */
    int64_t due_at;      /* with the delay knob: when it is handed over (monotonic ms) */
    store_be_done_fn cb;
    void *arg;
    enum sqb_kind kind;
    int status;
    void *rows; /* owned (kinds with arrays) or pointing into this answer */
    size_t n, cap;
    char err[256];
    struct store_be_put put;
    int64_t v[2];
    struct store_counts counts;
    struct store_endpoint_queue queue;
    struct store_prune prune;
};

static struct sqb_ans *sqb_new(struct store_be *b, store_be_done_fn cb, void *arg,
                               enum sqb_kind kind) {
    struct sqb_ans *a = calloc(1, sizeof *a);
    if (a) {
        a->b = b;
        a->cb = cb;
        a->arg = arg;
        a->kind = kind;
    }
    return a;
}

static void names_free(char **v, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void subs_free(struct store_sub *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free((char *)v[i].id);
        free((char *)v[i].event);
        free((char *)v[i].pattern);
        free((char *)v[i].url);
        free((char *)v[i].secret);
    }
    free(v);
}

static void sqb_free(struct sqb_ans *a) {
    switch (a->kind) {
    case K_PUT:
        free((int64_t *)a->put.counts);
        break;
    case K_EVENTS:
        store_event_rows_free(a->rows, a->n);
        break;
    case K_DETAIL:
        store_event_detail_free(a->rows);
        break;
    case K_ITEMS:
        store_delivery_items_free(a->rows, a->n);
        break;
    case K_WINDOWS:
        store_batch_windows_free(a->rows, a->n);
        break;
    case K_NAMES:
        names_free(a->rows, a->n);
        break;
    case K_STATES:
        store_endpoint_states_free(a->rows, a->n);
        break;
    case K_SUBS:
        subs_free(a->rows, a->n);
        break;
    case K_CLAIM:
        store_deliveries_free(a->rows, a->n);
        break;
    case K_BLOCKED:
        store_blocked_keys_free(a->rows, a->n);
        break;
    default:
        break;
    }
    free(a);
}

/* Hands a over: its status and rows when status >= 0, else -1 and why. */
static void sqb_run(struct sqb_ans *a) {
    if (a->status < 0)
        a->cb(a->arg, -1, NULL, 0, a->err[0] ? a->err : "store: sqlite: failed");
    else
        a->cb(a->arg, a->status, a->rows, a->n, NULL);
    sqb_free(a);
}

/* ---- answers on the next loop turn (claims, reads) ---- */

/* Arms the answers' event for the first one waiting: the next turn, or,
 * with the delay knob, when it is due. */
static void sqb_arm(struct store_be *b) {
    struct timeval tv = {0, 0};
    int64_t wait;
    if (!b->head)
        return;
    wait = b->head->due_at - util_mono_ms();
    if (wait > 0) {
        tv.tv_sec = (time_t)(wait / 1000);
        tv.tv_usec = (suseconds_t)(wait % 1000) * 1000;
    }
    event_add(b->answer_ev, &tv);
}

static void answer_cb(evutil_socket_t fd, short what, void *arg) {
    struct store_be *b = arg;
    struct sqb_ans *a, *last = b->tail;
    int64_t now = b->delay_ms > 0 ? util_mono_ms() : INT64_MAX;

    UNUSED(fd);
    UNUSED(what);
    /* this turn's only: later ones wait for the next; with the delay knob,
     * those due by now (in call order: their due times do not decrease) */
    while ((a = b->head) && a->due_at <= now) {
        b->head = a->next;
        if (!b->head)
            b->tail = NULL;
        sqb_run(a);
        if (a == last)
            break;
    }
    /* what waits (asked from an answer's callback) goes on the next turn,
     * after the loop polled: a timer of 0, not an active event, which
     * would run in this one, so a chain of reads cannot hold the loop */
    if (b->head)
        sqb_arm(b);
}

/* Queues a for the next loop turn (or, with the delay knob, for its due
 * time). Always 0 (the queue cannot fail). */
static int sqb_later(struct sqb_ans *a) {
    struct store_be *b = a->b;
    if (b->tail)
        b->tail->next = a;
    else
        b->head = a;
    b->tail = a;
    if (b->delay_ms > 0) {
        a->due_at = util_mono_ms() + b->delay_ms;
        if (!event_pending(b->answer_ev, EV_TIMEOUT, NULL))
            sqb_arm(b);
        return 0;
    }
    /* not when armed for the next turn already (the answers queued from
     * an answer's callback): this one waits with them, else a chain of
     * claims and reads answered in one turn could keep the loop from
     * polling */
    if (!event_pending(b->answer_ev, EV_TIMEOUT, NULL))
        event_active(b->answer_ev, EV_TIMEOUT, 0);
    return 0;
}

/* Runs every answer still queued (close). */
static void answers_drain(struct store_be *b) {
    struct sqb_ans *a;
    while ((a = b->head)) {
        b->head = a->next;
        if (!b->head)
            b->tail = NULL;
        sqb_run(a);
    }
}

/* ---- answers at the end of the group (writes) ---- */

static void write_cb(void *arg, int ok) {
    struct sqb_ans *a = arg;
    if (!ok && a->status >= 0) {
        a->status = -1;
        snprintf(a->err, sizeof a->err, "store: sqlite: the group was rolled back");
    }
    if (a->status < 0 && a->grp)
        a->grp->failed = 1;
    sqb_run(a);
}

/* Holds a until the group's COMMIT is durable (committed before cb runs).
 * Returns 0, or -1 when out of memory (a freed; a write already made fails
 * the group, so nothing of it commits unheard). */
static int sqb_at_commit(struct sqb_ans *a, int wrote) {
    struct store_be *b = a->b;
    a->grp = b->grp;
    if (store_sqlite_on_commit(b->sq, write_cb, a) == 0) {
        if (a->grp)
            a->grp->nwrites++;
        /* A write that failed hears ok 0 whatever the group does: it must
         * not pin a group whose BEGIN failed (another process held the
         * lock), so a retry in the same loop turn starts afresh
         * (store_group_begin). */
        if (a->status < 0 && b->sq->begin_failed)
            b->sq->fail_ncbs = b->sq->ncbs;
        return 0;
    }
    if (wrote)
        store_group_fail(b->sq, "out of memory", NULL, 0);
    sqb_free(a);
    return -1;
}

/* ---- lifecycle ---- */

static int be_open(struct store_be **out, struct event_base *base, const char *url,
                   const char *base_dir, char *err, size_t errlen) {
    struct store_be *b = calloc(1, sizeof *b);

    *out = NULL;
    if (!b || !(b->answer_ev = event_new(base, -1, 0, answer_cb, b))) {
        free(b);
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (!(b->sq = store_sqlite_open(base, url, base_dir, err, errlen))) {
        event_free(b->answer_ev);
        free(b);
        return -1;
    }
#ifdef WAYBILL_CHECKS
    {
        const char *delay = getenv("WAYBILL_STORE_REPLY_DELAY_MS");
        b->delay_ms = delay && *delay && atoll(delay) > 0 ? atoll(delay) : 0;
        if (b->delay_ms > 0)
            log_msg(LOG_INFO,
                    "store: every claim's and read's answer is handed over %lld ms after its "
                    "call (WAYBILL_STORE_REPLY_DELAY_MS)",
                    (long long)b->delay_ms);
    }
#endif
    *out = b;
    return 0;
}

/* The engine flushes first; what is still held is answered as it ends
 * (store_sqlite_free commits and syncs the open group), then the queue. */
static void be_close(struct store_be *b) {
    if (!b)
        return;
    store_sqlite_free(b->sq);
    answers_drain(b);
    event_free(b->answer_ev);
    free(b->grp);
    free(b);
}

/* Not while the disk is full (the engine writes again once space is
 * freed: store_sqlite.c). */
static int be_ready(const struct store_be *b) {
    return !b->sq->full;
}

static const char *be_instance(const struct store_be *b) {
    UNUSED(b);
    return "sqlite"; /* one process owns the file: leases have one owner */
}

static int be_group_begin(struct store_be *b) {
    if (b->grp || !(b->grp = calloc(1, sizeof *b->grp)))
        return -1;
    return 0;
}

static void group_cb(void *arg, int ok) {
    struct sqb_grp *g = arg;
    /* the writes heard their group's outcome first: theirs is the group's */
    int failed = g->nwrites ? g->failed : !ok;
    g->cb(g->arg, failed ? -1 : 0, NULL, 0,
          failed ? "store: sqlite: the group was rolled back" : NULL);
    free(g);
}

static int be_group_end(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_grp *g = b->grp;
    if (!g)
        return -1;
    g->cb = cb;
    g->arg = arg;
    b->grp = NULL;
    if (store_sqlite_on_commit(b->sq, group_cb, g) < 0) {
        free(g);
        return -1;
    }
    return 0;
}

/* ---- group writes (G) ---- */

/* The plan's batch items, copied: the engine writes each window's count
 * into its item, and a backend's plan is const. NULL when it has none. */
static struct store_batch_item *items_copy(const struct store_plan *plan, int *oom) {
    struct store_batch_item *it;
    *oom = 0;
    if (!plan || !plan->nitems)
        return NULL;
    if (!(it = malloc(plan->nitems * sizeof *it))) {
        *oom = 1;
        return NULL;
    }
    memcpy(it, plan->items, plan->nitems * sizeof *it);
    return it;
}

/* Fills a's store_be_put from a put or routing that wrote: seq, id, the
 * windows' counts (taken from items). */
static void put_rows(struct sqb_ans *a, const char *id, const struct store_batch_item *items,
                     size_t nitems, int64_t seq) {
    a->put.seq = seq;
    snprintf(a->put.id, sizeof a->put.id, "%s", id);
    if (items && nitems) {
        int64_t *c = malloc(nitems * sizeof *c);
        if (c) {
            for (size_t i = 0; i < nitems; i++)
                c[i] = items[i].count;
            a->put.counts = c;
            a->put.ncounts = nitems;
        }
    }
    a->rows = &a->put;
    a->n = 1;
}

static int be_event_put(struct store_be *b, const struct store_event *ev,
                        const struct store_plan *plan, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_PUT);
    struct store_plan p;
    struct store_batch_item *items;
    char dup[UTIL_ID_MAX] = "";
    int oom;

    if (!a)
        return -1;
    items = items_copy(plan, &oom);
    if (oom) {
        free(a);
        return -1;
    }
    if (plan) {
        p = *plan;
        p.items = items;
    }
    a->status =
        store_sqlite_event_put(b->sq, ev, plan ? &p : NULL, dup, sizeof dup, a->err, sizeof a->err);
    if (a->status == 0)
        put_rows(a, ev->id, items, plan ? plan->nitems : 0, b->sq->group_evt_seq);
    else if (a->status == STORE_DUP)
        put_rows(a, dup, NULL, 0, 0);
    free(items);
    return sqb_at_commit(a, a->status >= 0);
}

/* status 0 routed (rows: seq 0, the event's id, the counts), 2 unknown id,
 * 3 routed already (the plan's first_only: nothing written). */
static int be_event_routed(struct store_be *b, const char *event_id, const struct store_plan *plan,
                           store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_PUT);
    struct store_plan p = *plan;
    struct store_batch_item *items;
    int oom, rc;

    if (!a)
        return -1;
    items = items_copy(plan, &oom);
    if (oom) {
        free(a);
        return -1;
    }
    p.items = items;
    rc = store_sqlite_event_routed(b->sq, event_id, &p, a->err, sizeof a->err);
    if (rc == 0) {
        a->status = 0;
        put_rows(a, event_id, items, plan->nitems, 0);
    } else if (rc == STORE_ROUTED_ALREADY) {
        a->status = 3;
    } else if (b->sq->in_txn && !b->sq->failed) {
        a->status = 2; /* an unknown id: nothing written, the group goes on */
    } else {
        a->status = -1;
    }
    free(items);
    return sqb_at_commit(a, rc == 0);
}

static int be_nonce_put(struct store_be *b, const char *source, const char *nonce,
                        const char *digest, int64_t now_ms, int64_t keep_ms, store_be_done_fn cb,
                        void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    a->status = store_sqlite_nonce_put(b->sq, source, nonce, digest, now_ms, keep_ms, a->err,
                                       sizeof a->err);
    return sqb_at_commit(a, a->status == 0);
}

/* One process: an attempt is recorded by the only owner (never STORE_DUP). */
static int be_attempt_put(struct store_be *b, const char *delivery_id,
                          const struct store_attempt *at, const char *status, int64_t next_at,
                          int schedule_pos, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    a->status = store_sqlite_attempt_put(b->sq, delivery_id, at, status, next_at, schedule_pos,
                                         a->err, sizeof a->err);
    return sqb_at_commit(a, a->status == 0);
}

/* One process holds every lease: a renewal is never lost. A release makes
 * the row claimable again at release_at (its due time as claimed: the
 * lease had moved next_at to the lease's end). */
static int be_lease_renew(struct store_be *b, int64_t seq, int64_t until, int64_t release_at,
                          store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    a->status = store_sqlite_delivery_lease(b->sq, seq, until > 0 ? until : release_at, until > 0,
                                            a->err, sizeof a->err);
    return sqb_at_commit(a, a->status == 0);
}

/* Fills a's one int64_t row from rc (0) and v. */
static void int_row(struct sqb_ans *a, int rc, int64_t v) {
    a->status = rc < 0 ? -1 : rc;
    a->v[0] = v;
    if (rc >= 0) {
        a->rows = a->v;
        a->n = 1;
    }
}

static int be_batch_close(struct store_be *b, const struct store_batch_window *w,
                          const char *status, int64_t next_at, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    size_t count = 0;
    int rc;
    if (!a)
        return -1;
    rc = store_sqlite_batch_close(b->sq, w, status, next_at, &count, a->err, sizeof a->err);
    int_row(a, rc, (int64_t)count);
    return sqb_at_commit(a, rc == 0);
}

static int be_endpoint_attempt(struct store_be *b, const char *name, int ok, const char *error,
                               int64_t now, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    int64_t first = 0;
    int rc;
    if (!a)
        return -1;
    rc = store_sqlite_endpoint_attempt(b->sq, name, ok, error, now, &first, a->err, sizeof a->err);
    int_row(a, rc, first);
    return sqb_at_commit(a, rc == 0);
}

static int be_endpoint_set_disabled(struct store_be *b, const char *name, int disabled,
                                    const char *reason, int64_t now, store_be_done_fn cb,
                                    void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    int64_t moved = 0;
    int rc;
    if (!a)
        return -1;
    rc = store_sqlite_endpoint_set_disabled(b->sq, name, disabled, reason, now, &moved, a->err,
                                            sizeof a->err);
    int_row(a, rc, moved);
    return sqb_at_commit(a, rc == 0);
}

/* The writes answered by their status alone (retry, skip, the subs'). */
static int status_write(struct sqb_ans *a, int rc) {
    a->status = rc;
    return sqb_at_commit(a, rc >= 0);
}

static int be_delivery_retry(struct store_be *b, const char *id, int64_t next_at,
                             store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    return status_write(a, store_sqlite_delivery_retry(b->sq, id, next_at, a->err, sizeof a->err));
}

static int be_delivery_skip(struct store_be *b, const char *id, int64_t now, store_be_done_fn cb,
                            void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    return status_write(a, store_sqlite_delivery_skip(b->sq, id, now, a->err, sizeof a->err));
}

static int be_sub_put(struct store_be *b, const struct store_sub *sub, store_be_done_fn cb,
                      void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    return status_write(a, store_sqlite_sub_put(b->sq, sub, a->err, sizeof a->err));
}

static int be_sub_change(struct store_be *b, const char *id, const char *url, store_be_done_fn cb,
                         void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    return status_write(a, store_sqlite_sub_change(b->sq, id, url, a->err, sizeof a->err));
}

static int be_sub_set_secret(struct store_be *b, const char *id, const char *secret,
                             store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    return status_write(a, store_sqlite_sub_set_secret(b->sq, id, secret, a->err, sizeof a->err));
}

/* Retention in the open group, as the SQLite engine runs it; answered once
 * committed. rows: the pass. */
static int be_prune(struct store_be *b, const struct store_prune *p, store_be_done_fn cb,
                    void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_PRUNE);
    if (!a)
        return -1;
    a->prune = *p;
    a->status = store_sqlite_prune(b->sq, &a->prune, a->err, sizeof a->err);
    if (a->status == 0) {
        a->rows = &a->prune;
        a->n = 1;
    }
    return sqb_at_commit(a, a->status == 0);
}

/* rows: one int64_t, the pages given back (reclaim). */
static int be_reclaim(struct store_be *b, int64_t keep_pages, int step_pages, store_be_done_fn cb,
                      void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    int freed = 0, rc;
    if (!a)
        return -1;
    rc = store_sqlite_reclaim(b->sq, keep_pages, step_pages, &freed, a->err, sizeof a->err);
    int_row(a, rc, freed);
    return sqb_at_commit(a, rc == 0);
}

/* ---- claims (C) ---- */

/* after_seq < 0: the due rows (endpoint_claim_due); >= 0: an ordered
 * endpoint's rows after after_seq (endpoint_claim: the one process
 * holds its head). Leased in the open group; answered next turn. */
static int be_claim(struct store_be *b, const char *endpoint, int64_t after_seq, int64_t now,
                    int64_t lease_ms, size_t max, size_t cap, double rate, store_be_done_fn cb,
                    void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_CLAIM);
    struct store_delivery *rows = NULL;
    size_t n = 0;

    UNUSED(cap); /* one process: the scheduler keeps the cap and the rate */
    UNUSED(rate);
    if (!a)
        return -1;
    a->status = after_seq < 0
                    ? store_sqlite_endpoint_claim_due(b->sq, endpoint, now, lease_ms, max, &rows,
                                                      &n, a->err, sizeof a->err)
                    : store_sqlite_endpoint_claim(b->sq, endpoint, after_seq, now, lease_ms, max,
                                                  &rows, &n, a->err, sizeof a->err);
    a->rows = rows;
    a->n = n;
    return sqb_later(a);
}

/* ---- reads (R) ---- */

static int be_ping(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NONE);
    if (!a)
        return -1;
    a->status = store_sqlite_ping(b->sq) ? 0 : -1;
    return sqb_later(a);
}

static int be_events_page(struct store_be *b, const struct store_page *q, store_be_done_fn cb,
                          void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_EVENTS);
    struct store_event_row *rows = NULL;
    int64_t next = 0;
    if (!a)
        return -1;
    a->status = store_sqlite_events_page(b->sq, q, &rows, &a->n, &next, a->err, sizeof a->err);
    a->rows = rows;
    return sqb_later(a);
}

static int be_event_detail(struct store_be *b, const char *id, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_DETAIL);
    struct store_event_detail *d = NULL;
    if (!a)
        return -1;
    a->status = store_sqlite_event_detail(b->sq, id, &d, a->err, sizeof a->err);
    a->rows = d;
    a->n = d ? 1 : 0;
    return sqb_later(a);
}

static int be_deliveries_page(struct store_be *b, const struct store_page *q, store_be_done_fn cb,
                              void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_ITEMS);
    struct store_delivery_item *rows = NULL;
    int64_t next = 0;
    if (!a)
        return -1;
    a->status = store_sqlite_deliveries_page(b->sq, q, &rows, &a->n, &next, a->err, sizeof a->err);
    a->rows = rows;
    return sqb_later(a);
}

static int be_delivery_counts(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_COUNTS);
    if (!a)
        return -1;
    a->status = store_sqlite_delivery_counts(b->sq, &a->counts) < 0 ? -1 : 0;
    a->rows = &a->counts;
    a->n = 1;
    return sqb_later(a);
}

static int be_batch_due(struct store_be *b, int64_t now, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_WINDOWS);
    struct store_batch_window *w = NULL;
    if (!a)
        return -1;
    a->status = store_sqlite_batch_due(b->sq, now, &w, &a->n, a->err, sizeof a->err);
    a->rows = w;
    return sqb_later(a);
}

/* rows: one int64_t from v (INT64_MAX: none), -1 a store error. */
static int int_read(struct sqb_ans *a, int64_t v) {
    if (v < 0)
        snprintf(a->err, sizeof a->err, "store: sqlite: the read failed");
    int_row(a, v < 0 ? -1 : 0, v);
    return sqb_later(a);
}

static int be_endpoint_next_due(struct store_be *b, const char *endpoint, store_be_done_fn cb,
                                void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    if (!a)
        return -1;
    return int_read(a, store_sqlite_endpoint_next_due(b->sq, endpoint));
}

static int be_batch_next_close(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    if (!a)
        return -1;
    return int_read(a, store_sqlite_batch_next_close(b->sq));
}

static int be_backlog(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_INT);
    if (!a)
        return -1;
    return int_read(a, store_sqlite_backlog(b->sq));
}

/* Appends a copy of name to the answer's names (a->rows). */
static void name_add(void *arg, const char *name) {
    struct sqb_ans *a = arg;
    char **v = store_rows_grow(a->rows, &a->cap, a->n, sizeof *v, 8);
    if (!v || !(name = strdup(name))) {
        if (v)
            a->rows = v;
        a->status = -1;
        return;
    }
    a->rows = v;
    v[a->n++] = (char *)name;
}

static int be_endpoints_pending(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NAMES);
    if (!a)
        return -1;
    if (store_sqlite_endpoints_pending(b->sq, name_add, a) < 0)
        a->status = -1;
    if (a->status < 0)
        snprintf(a->err, sizeof a->err, "store: sqlite: the read failed");
    return sqb_later(a);
}

static int be_endpoint_states(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_STATES);
    struct store_endpoint_state *e = NULL;
    if (!a)
        return -1;
    a->status = store_sqlite_endpoint_states(b->sq, &e, &a->n, a->err, sizeof a->err);
    a->rows = e;
    return sqb_later(a);
}

static char *dup_or_null(const char *p, int *oom) {
    char *c = p ? strdup(p) : NULL;
    if (p && !c)
        *oom = 1;
    return c;
}

/* Appends a copy of sub to the answer's subscriptions (a->rows). */
static void sub_add(void *arg, const struct store_sub *sub) {
    struct sqb_ans *a = arg;
    struct store_sub *v = store_rows_grow(a->rows, &a->cap, a->n, sizeof *v, 8);
    int oom = 0;
    if (!v) {
        a->status = -1;
        return;
    }
    a->rows = v;
    v[a->n] = *sub;
    v[a->n].id = dup_or_null(sub->id, &oom);
    v[a->n].event = dup_or_null(sub->event, &oom);
    v[a->n].pattern = dup_or_null(sub->pattern, &oom);
    v[a->n].url = dup_or_null(sub->url, &oom);
    v[a->n].secret = dup_or_null(sub->secret, &oom);
    a->n++;
    if (oom)
        a->status = -1;
}

static int be_subs_load(struct store_be *b, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_SUBS);
    if (!a)
        return -1;
    if (store_sqlite_subs_load(b->sq, sub_add, a, a->err, sizeof a->err) < 0)
        a->status = -1;
    return sqb_later(a);
}

static int be_events_unrouted(struct store_be *b, int64_t after_seq, size_t max,
                              store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_EVENTS);
    struct store_event_row *rows = NULL;
    if (!a)
        return -1;
    a->status =
        store_sqlite_events_unrouted(b->sq, after_seq, max, &rows, &a->n, a->err, sizeof a->err);
    a->rows = rows;
    return sqb_later(a);
}

/* status 1 found (rows: the event), 0 unknown (rows NULL). */
static int be_event_get(struct store_be *b, const char *id, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_EVENTS);
    struct store_event_row *row = NULL;
    if (!a)
        return -1;
    a->status = store_sqlite_event_get(b->sq, id, &row, a->err, sizeof a->err);
    a->rows = row;
    a->n = row ? 1 : 0;
    return sqb_later(a);
}

static int be_events_find(struct store_be *b, const char *text, size_t max, store_be_done_fn cb,
                          void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_NAMES);
    char **ids = NULL;
    if (!a)
        return -1;
    a->status = store_sqlite_events_find(b->sq, text, max, &ids, &a->n, a->err, sizeof a->err);
    a->rows = ids;
    return sqb_later(a);
}

/* rows: int64_t[2], the head's seq and next_at (INT64_MAX both: none). */
static int be_endpoint_head(struct store_be *b, const char *endpoint, store_be_done_fn cb,
                            void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_PAIR);
    int64_t committed, last;
    if (!a)
        return -1;
    a->v[0] = store_sqlite_endpoint_head(b->sq, endpoint, &a->v[1]);
    /* A head the open group inserted is no head yet: every instance's
     * reads see committed rows (every pending row after it is uncommitted
     * too: seqs commit in order). */
    store_sqlite_delivery_seqs(b->sq, &committed, &last);
    if (a->v[0] != INT64_MAX && a->v[0] > committed)
        a->v[0] = a->v[1] = INT64_MAX;
    if (a->v[0] < 0) {
        a->status = -1;
        snprintf(a->err, sizeof a->err, "store: sqlite: the read failed");
    } else {
        a->rows = a->v;
        a->n = 2;
    }
    return sqb_later(a);
}

static int be_endpoint_queue(struct store_be *b, const char *endpoint, int64_t now, int64_t due_cap,
                             int counts, store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_QUEUE);
    if (!a)
        return -1;
    if (store_sqlite_endpoint_queue(b->sq, endpoint, now, due_cap, counts, &a->queue) < 0) {
        a->status = -1;
        snprintf(a->err, sizeof a->err, "store: sqlite: the read failed");
    } else {
        a->rows = &a->queue;
        a->n = 1;
    }
    return sqb_later(a);
}

/* status: the endpoint's blocked keys in all (its queue's count, the same
 * view: one connection, nothing between the two reads). */
static int be_endpoint_blocked(struct store_be *b, const char *endpoint, size_t max,
                               store_be_done_fn cb, void *arg) {
    struct sqb_ans *a = sqb_new(b, cb, arg, K_BLOCKED);
    struct store_blocked_key *k = NULL;
    struct store_endpoint_queue q;
    if (!a)
        return -1;
    if (store_sqlite_endpoint_queue(b->sq, endpoint, util_now_ms(), 0, 1, &q) < 0 ||
        store_sqlite_endpoint_blocked(b->sq, endpoint, max, &k, &a->n, a->err, sizeof a->err) < 0) {
        a->status = -1;
        if (!a->err[0])
            snprintf(a->err, sizeof a->err, "store: sqlite: the read failed");
    } else {
        a->status = q.blocked > INT32_MAX ? INT32_MAX : (int)q.blocked;
    }
    a->rows = k;
    return sqb_later(a);
}

const struct store_backend_ops store_sqlite_backend = {
    .name = "sqlite",
    .shared = 0,
    .claims_see_open_group = 1,
    .open = be_open,
    .close = be_close,
    .ready = be_ready,
    .instance = be_instance,
    .group_begin = be_group_begin,
    .group_end = be_group_end,
    .event_put = be_event_put,
    .event_routed = be_event_routed,
    .nonce_put = be_nonce_put,
    .attempt_put = be_attempt_put,
    .lease_renew = be_lease_renew,
    .batch_close = be_batch_close,
    .endpoint_attempt = be_endpoint_attempt,
    .endpoint_set_disabled = be_endpoint_set_disabled,
    .delivery_retry = be_delivery_retry,
    .delivery_skip = be_delivery_skip,
    .sub_put = be_sub_put,
    .sub_change = be_sub_change,
    .sub_set_secret = be_sub_set_secret,
    .prune = be_prune,
    .claim = be_claim,
    .ping = be_ping,
    .events_page = be_events_page,
    .event_detail = be_event_detail,
    .deliveries_page = be_deliveries_page,
    .delivery_counts = be_delivery_counts,
    .batch_due = be_batch_due,
    .endpoint_next_due = be_endpoint_next_due,
    .batch_next_close = be_batch_next_close,
    .endpoints_pending = be_endpoints_pending,
    .endpoint_states = be_endpoint_states,
    .subs_load = be_subs_load,
    .events_unrouted = be_events_unrouted,
    .event_get = be_event_get,
    .events_find = be_events_find,
    .endpoint_head = be_endpoint_head,
    .backlog = be_backlog,
    .endpoint_queue = be_endpoint_queue,
    .endpoint_blocked = be_endpoint_blocked,
    .reclaim = be_reclaim,
};
