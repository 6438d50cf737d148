/* store_bx_read.c -- the store's asynchronous reads over a backend
 * (store_bx.c has the engine): store_read_* and store_get_* as one or a
 * few backend reads, answered when the last of them came. The backend
 * owns a read's rows for its callback only, so a read made of several
 * issues its parts in an order that puts the part with the rows last
 * (they run in order on the read connection), or copies what it keeps (a
 * claim's rows, kept until the next due time read after it answered).
 * A read that cannot reach the backend answers status -1 from the loop.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store.h"
#include "store_backend.h"
#include "store_int.h"
#include "util.h"

enum bx_rkind {
    R_EVENTS,
    R_DELIVERIES,
    R_DETAIL,
    R_FIND,
    R_WINDOWS,
    R_COUNTS,
    R_PING,
    R_ENDPOINTS,
    R_CLAIM_DUE,
    R_CLAIM_ORDERED,
    R_DUE,
    R_BATCH_DUE,
    R_UNROUTED,
    R_EVENT,
    R_STATES,
    R_SUBS,
};

/* A part of a read: which of its fields the answer fills. */
struct bx_part {
    struct bx_rd *rd;
    int what; /* P_* */
    size_t i; /* names[i] */
};

enum { P_MAIN, P_NEXT_DUE, P_HEAD, P_PENDING, P_QUEUE, P_BLOCKED, P_CLOSE, P_DUE_NEXT, P_DUE_HEAD };

struct bx_rd {
    struct store *s;
    enum bx_rkind kind;
    store_read_fn fn;
    store_done_fn dfn;
    void *arg;
    int left;    /* parts not answered yet (+1 while issuing) */
    int in_call; /* inside the store call: an answer now waits for the loop */
    int status;  /* -1 once a part failed */
    char err[256];
    size_t limit; /* pages: rows that make a full page */
    int64_t now, lease_ms;
    size_t max;
    size_t cap;  /* a due claim's: the endpoint's rows leased at most, all instances' */
    double rate; /* a due claim's: the endpoint's `rate` (0: none), all instances' */
    char *name;
    struct store_result res; /* what the answer says; rows point below or at borrowed ones */
    struct store_delivery *claimed;
    size_t nclaimed;
    struct store_endpoint_due *dues;
    size_t ndues;
    struct store_endpoint_view *queues;
    size_t nqueues;
    struct store_blocked_key *blocked;
    size_t nblocked;
    int64_t blocked_total; /* endpoint_blocked's count, in its rows' view */
    char *blocked_of;      /* the endpoint whose blocked keys were read */
    char **ids;
    size_t nids;
    const struct store_sub *subs; /* R_SUBS: borrowed for the answer */
    size_t nsubs;
    struct bx_part *parts;
    size_t nparts, capparts;
    void (*issue)(struct bx_rd *rd); /* a claim's parts, sent once this instance's groups ended */
};

static void rd_free(struct bx_rd *rd) {
    store_deliveries_free(rd->claimed, rd->nclaimed);
    for (size_t i = 0; rd->dues && i < rd->ndues; i++)
        free(rd->dues[i].name);
    free(rd->dues);
    for (size_t i = 0; rd->queues && i < rd->nqueues; i++)
        free(rd->queues[i].name);
    free(rd->queues);
    store_blocked_keys_free(rd->blocked, rd->nblocked);
    free(rd->blocked_of);
    for (size_t i = 0; rd->ids && i < rd->nids; i++)
        free(rd->ids[i]);
    free(rd->ids);
    free(rd->parts);
    free(rd->name);
    free(rd);
}

static void rd_deliver(struct bx_rd *rd) {
    struct store_bx *x = rd->s->bx;
    struct store_result *r = &rd->res;

    x->nreads--;
    r->err = rd->status < 0 ? (rd->err[0] ? rd->err : "store: the read failed") : "";
    if (r->status >= 0 && rd->status < 0)
        r->status = -1;
    if (rd->kind == R_CLAIM_DUE || rd->kind == R_CLAIM_ORDERED) {
        if (rd->claimed) {
            r->claimed = rd->claimed;
            r->n = rd->nclaimed;
        }
    } else if (rd->kind == R_DUE) {
        r->dues = rd->dues;
        r->ndues = rd->ndues;
        r->ids = rd->ids;
        r->n = rd->nids;
    } else if (rd->kind == R_ENDPOINTS) {
        /* the blocked endpoint's count and oldest from its list's own
         * statement: a key failing between the two reads shows in both or
         * in neither */
        for (size_t i = 0; rd->blocked_of && rd->blocked_total >= 0 && i < rd->nqueues; i++)
            if (rd->queues[i].ok && rd->queues[i].name &&
                !strcmp(rd->queues[i].name, rd->blocked_of)) {
                rd->queues[i].q.blocked = rd->blocked_total;
                rd->queues[i].q.oldest_blocked = rd->nblocked ? rd->blocked[0].since : INT64_MAX;
            }
        r->queues = rd->queues;
        r->nqueues = rd->nqueues;
        r->blocked = rd->blocked;
        r->nblocked = rd->nblocked;
    }
    if (rd->fn) {
        rd->fn(rd->arg, r);
    } else {
        struct store_done d = {0};
        d.ok = r->status >= 0;
        d.status = d.ok ? r->status : 0;
        d.err = r->err;
        d.id = "";
        d.rows = r->events;
        d.n = r->events ? r->n : 0;
        d.states = r->states;
        d.nstates = r->nstates;
        d.subs = rd->subs;
        d.nsubs = rd->subs ? rd->nsubs : 0;
        rd->dfn(rd->arg, &d);
    }
    rd_free(rd);
}

static void rd_late(void *p) {
    rd_deliver(p);
}

/* One part answered (or the issuing ended): the answer goes when none is
 * left, from the loop. */
static void rd_put(struct bx_rd *rd) {
    if (--rd->left > 0)
        return;
    if (rd->in_call) {
        if (store_bx_late(rd->s, rd_late, rd) == 0)
            return;
        log_msg(LOG_WARN, "store: answering a read inside its call (out of memory)");
    }
    rd_deliver(rd);
}

static struct bx_rd *rd_new(struct store *s, enum bx_rkind kind, store_read_fn fn,
                            store_done_fn dfn, void *arg, size_t nparts) {
    struct bx_rd *rd = calloc(1, sizeof *rd);

    if (!rd)
        return NULL;
    if (nparts && !(rd->parts = calloc(nparts, sizeof *rd->parts))) {
        free(rd);
        return NULL;
    }
    rd->capparts = nparts;
    rd->s = s;
    rd->kind = kind;
    rd->fn = fn;
    rd->dfn = dfn;
    rd->arg = arg;
    rd->left = 1;
    rd->in_call = 1;
    rd->res.next_due = INT64_MAX;
    rd->res.head = rd->res.head_at = INT64_MAX;
    s->bx->nreads++;
    return rd;
}

static void rd_fail(struct bx_rd *rd, const char *err) {
    if (rd->status >= 0 && !rd->err[0])
        snprintf(rd->err, sizeof rd->err, "%s", err && *err ? err : "store: the read failed");
    rd->status = -1;
}

/* The issuing is over: 0 (the answer comes from the loop). */
static int rd_issued(struct bx_rd *rd) {
    rd->in_call = 0;
    if (rd->left == 1) { /* nothing went out: the backend is down */
        rd->in_call = 1;
        rd->status = -1;
        snprintf(rd->err, sizeof rd->err, "store: the database is not connected (%.150s)",
                 rd->s->bx->shown);
    }
    rd_put(rd);
    return 0;
}

static void part_answer(void *arg, int status, const void *rows, size_t n, const char *err);

/* Issues one part through call's result: the call is made by the caller
 * with (part_answer, part). */
static struct bx_part *part_new(struct bx_rd *rd, int what, size_t i) {
    struct bx_part *p;
    if (rd->nparts == rd->capparts)
        return NULL;
    p = &rd->parts[rd->nparts++];
    p->rd = rd;
    p->what = what;
    p->i = i;
    rd->left++;
    return p;
}

static void part_sent(struct bx_part *p, int rc) {
    if (rc < 0) {
        p->rd->left--;
        rd_fail(p->rd, NULL);
    }
}

#define PART(rd, what, i, call_with)                                                               \
    do {                                                                                           \
        struct bx_part *p_ = part_new((rd), (what), (i));                                          \
        if (p_)                                                                                    \
            part_sent(p_, (call_with));                                                            \
    } while (0)
#define CB part_answer, p_

/* ---- copies of rows kept past their callback ---- */

static char *dup_n(const char *p, size_t n, int *oom) {
    char *d;
    if (!p)
        return NULL;
    if (!(d = malloc(n + 1))) {
        *oom = 1;
        return NULL;
    }
    memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

static char *dup_s(const char *p, int *oom) {
    return p ? dup_n(p, strlen(p), oom) : NULL;
}

static int claimed_copy(struct bx_rd *rd, const struct store_delivery *v, size_t n) {
    int oom = 0;
    if (!n)
        return 0;
    if (!(rd->claimed = calloc(n, sizeof *rd->claimed)))
        return -1;
    rd->nclaimed = n;
    for (size_t i = 0; i < n; i++) {
        struct store_delivery *c = &rd->claimed[i];
        *c = v[i];
        c->endpoint = dup_s(v[i].endpoint, &oom);
        c->event_type = dup_s(v[i].event_type, &oom);
        c->content_type = dup_s(v[i].content_type, &oom);
        c->headers_json = dup_s(v[i].headers_json, &oom);
        c->payload = dup_n(v[i].payload, v[i].payload_len, &oom);
    }
    return oom ? -1 : 0;
}

static int blocked_copy(struct bx_rd *rd, const struct store_blocked_key *v, size_t n) {
    int oom = 0;
    if (!n)
        return 0;
    if (!(rd->blocked = calloc(n, sizeof *rd->blocked)))
        return -1;
    rd->nblocked = n;
    for (size_t i = 0; i < n; i++) {
        rd->blocked[i] = v[i];
        rd->blocked[i].key = dup_s(v[i].key, &oom);
        rd->blocked[i].head_id = dup_s(v[i].head_id, &oom);
    }
    return oom ? -1 : 0;
}

static int names_copy(struct bx_rd *rd, char *const *v, size_t n) {
    int oom = 0;
    if (!n)
        return 0;
    if (!(rd->ids = calloc(n, sizeof *rd->ids)))
        return -1;
    rd->nids = n;
    for (size_t i = 0; i < n; i++)
        rd->ids[i] = dup_s(v[i], &oom);
    return oom ? -1 : 0;
}

/* ---- the answers ---- */

static int64_t one_value(const void *rows, size_t n) {
    return rows && n == 1 ? *(const int64_t *)rows : INT64_MAX;
}

/* The main part of a one-part read: the rows borrowed for the answer,
 * which goes now (the last part). */
static void main_answer(struct bx_rd *rd, int status, const void *rows, size_t n) {
    struct store_result *r = &rd->res;

    r->status = status;
    r->n = n;
    switch (rd->kind) {
    case R_EVENTS:
    case R_UNROUTED:
        r->events = rows;
        if (rd->kind == R_EVENTS && n && n == rd->limit)
            r->next = r->events[n - 1].seq;
        break;
    case R_EVENT:
        r->events = rows;
        r->n = rows ? 1 : 0;
        r->status = rows ? 1 : 0;
        break;
    case R_DELIVERIES:
        r->deliveries = rows;
        if (n && n == rd->limit)
            r->next = r->deliveries[n - 1].seq;
        break;
    case R_DETAIL:
        r->detail = status == 1 ? rows : NULL;
        r->status = status == 1 && rows ? 1 : 0;
        r->n = 0;
        break;
    case R_FIND:
        r->ids = (char *const *)rows;
        break;
    case R_WINDOWS:
    case R_BATCH_DUE:
        r->windows = rows;
        break;
    case R_COUNTS:
        r->counts = rows;
        r->n = 0;
        break;
    case R_PING:
        r->n = 0;
        break;
    case R_SUBS:
        rd->subs = rows;
        rd->nsubs = n;
        r->n = 0;
        break;
    case R_STATES:
    case R_ENDPOINTS:
        r->states = rows;
        r->nstates = n;
        r->n = 0;
        break;
    default:
        break;
    }
}

static void ordered_claim(struct bx_rd *rd);

/* An ordered claim must start at the head it was made for. The head is
 * read on the read connection, which does not see the open group: when
 * the group that set the head's retry commits between the head's read and
 * the claim, the claim skips the head (not due any more) and would hand
 * out the rows behind it. Then they go back, and the answer has none (the
 * scheduler looks again). Returns 1 when the rows may be handed over. */
static int ordered_from_head(struct bx_rd *rd, const struct store_delivery *rows, size_t n) {
    char err[256];

    if (rows[0].seq == rd->res.head)
        return 1;
    for (size_t i = 0; i < n; i++)
        if (store_bx_delivery_lease(rd->s, rows[i].seq, 0, 0, err, sizeof err) < 0)
            log_msg(LOG_WARN,
                    "delivery %s: giving back a claim past its head: %s (it is claimed"
                    " again when the lease ends)",
                    rows[i].id, err);
    return 0;
}

static void part_answer(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct bx_part *p = arg;
    struct bx_rd *rd = p->rd;
    struct store_result *r = &rd->res;

    if (status < 0) {
        rd_fail(rd, err);
        rows = NULL;
        n = 0;
    }
    switch (p->what) {
    case P_MAIN:
        if (rd->kind == R_CLAIM_ORDERED && status >= 0 && n && !ordered_from_head(rd, rows, n)) {
            break;
        } else if (rd->kind == R_CLAIM_DUE || rd->kind == R_CLAIM_ORDERED) {
            if (status >= 0 && claimed_copy(rd, rows, n) < 0)
                rd_fail(rd, "store: out of memory");
            if (rd->kind == R_CLAIM_DUE && status > 0) /* the shared bucket's wait */
                r->rate_wait = status;
        } else if (status >= 0) {
            main_answer(rd, status, rows, n);
        }
        break;
    case P_NEXT_DUE:
        r->next_due = status < 0 ? -1 : one_value(rows, n);
        break;
    case P_HEAD:
        if (status >= 0 && rows && n >= 1) {
            const int64_t *v = rows;
            r->head = v[0];
            r->head_at = v[1];
            ordered_claim(rd);
        }
        break;
    case P_PENDING:
        if (status >= 0 && names_copy(rd, rows, n) < 0)
            rd_fail(rd, "store: out of memory");
        break;
    case P_QUEUE:
        if (status >= 0 && rows && n == 1) {
            rd->queues[p->i].q = *(const struct store_endpoint_queue *)rows;
            rd->queues[p->i].ok = 1;
        }
        if (status < 0 && rd->status < 0 && rd->kind == R_ENDPOINTS)
            rd->status = 0, rd->err[0] = '\0'; /* a queue's failure is its view's only */
        break;
    case P_BLOCKED:
        rd->blocked_total = status; /* -1: failed (the queue's own count stays) */
        if (status >= 0 && blocked_copy(rd, rows, n) < 0)
            rd_fail(rd, "store: out of memory");
        break;
    case P_CLOSE:
        r->next_due = status < 0 ? -1 : one_value(rows, n);
        break;
    case P_DUE_NEXT:
        rd->dues[p->i].next_due = status < 0 ? -1 : one_value(rows, n);
        if (status < 0)
            rd->status = 0, rd->err[0] = '\0';
        break;
    case P_DUE_HEAD:
        rd->dues[p->i].head_due = status < 0       ? -1
                                  : rows && n >= 1 ? ((const int64_t *)rows)[1]
                                                   : INT64_MAX;
        if (status < 0)
            rd->status = 0, rd->err[0] = '\0';
        break;
    default:
        break;
    }
    rd_put(rd);
}

/* ---- the reads ---- */

#define ISSUE1(s, kind, fn, arg, call)                                                             \
    do {                                                                                           \
        struct bx_rd *rd = rd_new((s), (kind), (fn), NULL, (arg), 1);                              \
        if (!rd)                                                                                   \
            return -1;                                                                             \
        PART(rd, P_MAIN, 0, call);                                                                 \
        return rd_issued(rd);                                                                      \
    } while (0)

int store_bx_read_events_page(struct store *s, const struct store_page *q, store_read_fn fn,
                              void *arg) {
    struct bx_rd *rd = rd_new(s, R_EVENTS, fn, NULL, arg, 1);
    if (!rd)
        return -1;
    rd->limit = q->limit;
    PART(rd, P_MAIN, 0, s->ops->events_page(s->be, q, CB));
    return rd_issued(rd);
}

int store_bx_read_deliveries_page(struct store *s, const struct store_page *q, store_read_fn fn,
                                  void *arg) {
    struct bx_rd *rd = rd_new(s, R_DELIVERIES, fn, NULL, arg, 1);
    if (!rd)
        return -1;
    rd->limit = q->limit;
    PART(rd, P_MAIN, 0, s->ops->deliveries_page(s->be, q, CB));
    return rd_issued(rd);
}

int store_bx_read_event_detail(struct store *s, const char *id, store_read_fn fn, void *arg) {
    ISSUE1(s, R_DETAIL, fn, arg, s->ops->event_detail(s->be, id, CB));
}

int store_bx_read_events_find(struct store *s, const char *text, size_t max, store_read_fn fn,
                              void *arg) {
    ISSUE1(s, R_FIND, fn, arg, s->ops->events_find(s->be, text, max, CB));
}

int store_bx_read_batch_windows(struct store *s, store_read_fn fn, void *arg) {
    /* every open window: those that end by the end of time */
    ISSUE1(s, R_WINDOWS, fn, arg, s->ops->batch_due(s->be, INT64_MAX, CB));
}

int store_bx_read_delivery_counts(struct store *s, store_read_fn fn, void *arg) {
    ISSUE1(s, R_COUNTS, fn, arg, s->ops->delivery_counts(s->be, CB));
}

int store_bx_read_ping(struct store *s, store_read_fn fn, void *arg) {
    ISSUE1(s, R_PING, fn, arg, s->ops->ping(s->be, CB));
}

int store_bx_read_endpoints(struct store *s, const char *const *names, size_t n, int64_t now,
                            int64_t due_cap, int counts, const char *blocked_of, size_t blocked_max,
                            store_read_fn fn, void *arg) {
    struct bx_rd *rd = rd_new(s, R_ENDPOINTS, fn, NULL, arg, n + 2);
    if (!rd)
        return -1;
    if (n && !(rd->queues = calloc(n, sizeof *rd->queues))) {
        rd->in_call = 0;
        s->bx->nreads--;
        rd_free(rd);
        return -1;
    }
    for (size_t i = 0; i < n; i++, rd->nqueues++) {
        int oom = 0;
        rd->queues[i].name = dup_s(names[i], &oom);
        rd->queues[i].q.oldest_due = rd->queues[i].q.oldest_blocked = INT64_MAX;
        PART(rd, P_QUEUE, i, s->ops->endpoint_queue(s->be, names[i], now, due_cap, counts, CB));
    }
    if (blocked_of) {
        int oom = 0;
        rd->blocked_total = -1;
        rd->blocked_of = dup_s(blocked_of, &oom);
        PART(rd, P_BLOCKED, 0, s->ops->endpoint_blocked(s->be, blocked_of, blocked_max, CB));
    }
    /* last: its rows are borrowed for the answer */
    PART(rd, P_MAIN, 0, s->ops->endpoint_states(s->be, CB));
    return rd_issued(rd);
}

/* A claim sees this instance's own writes: SQLite's claims read the loop's
 * connection, the open group included; a backend's read connection sees
 * committed groups only. So a claim made while a group of this instance
 * is open or in flight goes out once those ended (one group later): an
 * outcome just written (a delivered row, a retry's next_at) is then in
 * the rows it reads, and a row is never claimed again behind its own
 * outcome (seen: an ordered endpoint's head sent twice). */
static void claim_due_issue(struct bx_rd *rd) {
    struct store *s = rd->s;
    PART(rd, P_MAIN, 0,
         s->ops->claim(s->be, rd->name, -1, rd->now, rd->lease_ms, rd->max, rd->cap, rd->rate, CB));
    /* the next due time as the claim left it: read after it (in order) */
    PART(rd, P_NEXT_DUE, 0, s->ops->endpoint_next_due(s->be, rd->name, CB));
    rd_issued(rd);
}

static void claim_ordered_issue(struct bx_rd *rd) {
    struct store *s = rd->s;
    PART(rd, P_HEAD, 0, s->ops->endpoint_head(s->be, rd->name, CB));
    rd_issued(rd);
}

static void claim_after_groups(void *arg, int ok) {
    struct bx_rd *rd = arg;
    UNUSED(ok);
    rd->in_call = 1; /* (answers still go through the loop) */
    rd->issue(rd);
}

static int claim_start(struct store *s, enum bx_rkind kind, const char *name, int64_t now,
                       int64_t lease_ms, size_t max, size_t cap, double rate, store_read_fn fn,
                       void *arg, void (*issue)(struct bx_rd *rd)) {
    struct store_bx *x = s->bx;
    struct bx_rd *rd = rd_new(s, kind, fn, NULL, arg, 2);
    if (!rd)
        return -1;
    rd->now = now;
    rd->lease_ms = lease_ms;
    rd->max = max;
    rd->cap = cap;
    rd->rate = rate;
    rd->issue = issue;
    if (kind == R_CLAIM_ORDERED)
        rd->res.next_due = -1;
    if (!(rd->name = strdup(name))) {
        rd_fail(rd, "store: out of memory");
        return rd_issued(rd);
    }
    if (!s->ops->claims_see_open_group && (x->tx_open || x->fly) &&
        store_bx_on_group(s, claim_after_groups, rd) == 0)
        return 0;
    issue(rd);
    return 0;
}

int store_bx_read_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                            size_t max, size_t cap, double rate, store_read_fn fn, void *arg) {
    return claim_start(s, R_CLAIM_DUE, name, now, lease_ms, max, cap, rate, fn, arg,
                       claim_due_issue);
}

/* The head answered: claim from it when it is due and rows are wanted. */
static void ordered_claim(struct bx_rd *rd) {
    struct store_result *r = &rd->res;
    struct store *s = rd->s;

    if (r->head == INT64_MAX || rd->max == 0 || r->head_at > rd->now || rd->status < 0)
        return;
    PART(rd, P_MAIN, 0,
         s->ops->claim(s->be, rd->name, r->head - 1, rd->now, rd->lease_ms, rd->max, 0, 0, CB));
}

int store_bx_read_claim_ordered(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                                size_t max, store_read_fn fn, void *arg) {
    return claim_start(s, R_CLAIM_ORDERED, name, now, lease_ms, max, 0, 0, fn, arg,
                       claim_ordered_issue);
}

int store_bx_read_endpoints_due(struct store *s, const char *const *names,
                                const unsigned char *ordered, size_t n, int pending,
                                store_read_fn fn, void *arg) {
    struct bx_rd *rd = rd_new(s, R_DUE, fn, NULL, arg, 2 * n + 1);
    if (!rd)
        return -1;
    if (n && !(rd->dues = calloc(n, sizeof *rd->dues))) {
        rd->in_call = 0;
        s->bx->nreads--;
        rd_free(rd);
        return -1;
    }
    for (size_t i = 0; i < n; i++, rd->ndues++) {
        int oom = 0;
        rd->dues[i].name = dup_s(names[i], &oom);
        rd->dues[i].next_due = rd->dues[i].head_due = -1;
        if (ordered && ordered[i])
            rd->dues[i].next_due = INT64_MAX;
        else
            PART(rd, P_DUE_NEXT, i, s->ops->endpoint_next_due(s->be, names[i], CB));
        if (ordered && !ordered[i])
            rd->dues[i].head_due = INT64_MAX;
        else
            PART(rd, P_DUE_HEAD, i, s->ops->endpoint_head(s->be, names[i], CB));
    }
    if (pending)
        PART(rd, P_PENDING, 0, s->ops->endpoints_pending(s->be, CB));
    return rd_issued(rd);
}

int store_bx_read_batch_due(struct store *s, int64_t now, store_read_fn fn, void *arg) {
    struct bx_rd *rd = rd_new(s, R_BATCH_DUE, fn, NULL, arg, 2);
    if (!rd)
        return -1;
    PART(rd, P_CLOSE, 0, s->ops->batch_next_close(s->be, CB));
    /* last: its windows are borrowed for the answer */
    PART(rd, P_MAIN, 0, s->ops->batch_due(s->be, now, CB));
    return rd_issued(rd);
}

/* ---- the loop's reads answered as store_done ---- */

int store_bx_get_events_unrouted(struct store *s, int64_t after_seq, size_t max, store_done_fn fn,
                                 void *arg) {
    struct bx_rd *rd = rd_new(s, R_UNROUTED, NULL, fn, arg, 1);
    if (!rd)
        return -1;
    PART(rd, P_MAIN, 0, s->ops->events_unrouted(s->be, after_seq, max, CB));
    return rd_issued(rd);
}

int store_bx_get_event(struct store *s, const char *id, store_done_fn fn, void *arg) {
    struct bx_rd *rd = rd_new(s, R_EVENT, NULL, fn, arg, 1);
    if (!rd)
        return -1;
    PART(rd, P_MAIN, 0, s->ops->event_get(s->be, id, CB));
    return rd_issued(rd);
}

int store_bx_get_endpoint_states(struct store *s, store_done_fn fn, void *arg) {
    struct bx_rd *rd = rd_new(s, R_STATES, NULL, fn, arg, 1);
    if (!rd)
        return -1;
    PART(rd, P_MAIN, 0, s->ops->endpoint_states(s->be, CB));
    return rd_issued(rd);
}

int store_bx_get_subs(struct store *s, store_done_fn fn, void *arg) {
    struct bx_rd *rd = rd_new(s, R_SUBS, NULL, fn, arg, 1);
    if (!rd)
        return -1;
    PART(rd, P_MAIN, 0, s->ops->subs_load(s->be, CB));
    return rd_issued(rd);
}
