/* store_bx_write.c -- the store's writes over a backend (store_bx.c has
 * the engine): each store.h write joins the open group as one backend
 * operation, and its value (store_*_done) is handed over from the
 * operation's answer, which comes when the group's outcome is known: the
 * rows the backend parsed when it committed, ok 0 for every write of a
 * group that did not. A write that cannot reach the backend (it is down,
 * its group already failed) is answered ok 0 from the loop, never inside
 * the call. The synchronous writes the loop still makes (an attempt, a
 * lease, a batch close) queue the same operations; their failures are
 * logged and the group's outcome is what their callers wait for.
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

enum bx_wkind { W_PUT, W_NONCE, W_ROUTED, W_PLAIN, W_VALUE, W_PRUNE, W_RECLAIM };

/* One write's answer to come. */
struct bx_w {
    struct store *s;
    store_done_fn fn;
    void *arg;
    enum bx_wkind kind;
    int64_t added;           /* deliveries it inserts (the backlog) */
    struct store_plan *plan; /* event_put, event_routed: the caller's, alive until fn ran */
    char err[256];
    struct store_prune prune;
};

static struct bx_w *w_new(struct store *s, store_done_fn fn, void *arg, enum bx_wkind kind) {
    struct bx_w *w = calloc(1, sizeof *w);
    if (w) {
        w->s = s;
        w->fn = fn;
        w->arg = arg;
        w->kind = kind;
    }
    return w;
}

/* The backend's answer to a write. */
static void w_answer(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct bx_w *w = arg;
    struct store_done d = {0};
    const struct store_be_put *put = w->kind == W_PUT && n == 1 ? rows : NULL;

    d.ok = status >= 0;
    d.err = d.ok ? "" : err && *err ? err : "store: the write failed";
    d.status = d.ok ? status : 0;
    d.id = "";
    if (d.ok && put)
        d.id = put->id;
    if (d.ok && w->kind == W_ROUTED) /* 0 routed, 2 unknown id, 3 routed already */
        d.status = status == 0 ? 1 : status == 3 ? STORE_ROUTED_ALREADY : 0;
    if (d.ok && w->kind == W_VALUE && rows && n == 1)
        d.value = *(const int64_t *)rows;
    if (d.ok && w->kind == W_PRUNE && rows && n == 1)
        w->prune = *(const struct store_prune *)rows;
    if (w->kind == W_PRUNE)
        d.prune = &w->prune;
    if (d.ok && w->kind == W_PUT && status == 0)
        w->s->bx->backlog_added += w->added;
    /* the windows' counts after the adds (route_plan_counted acts on them) */
    if (d.ok && status == 0 && w->plan && rows && n == 1 &&
        (w->kind == W_PUT || w->kind == W_ROUTED)) {
        const struct store_be_put *p = rows;
        for (size_t i = 0; i < w->plan->nitems && i < p->ncounts; i++)
            w->plan->items[i].count = p->counts[i];
    }
    w->fn(w->arg, &d);
    free(w);
}

static void w_late(void *p) {
    struct bx_w *w = p;
    w_answer(w, -1, NULL, 0, w->err);
}

/* Answers w ok 0 from the loop. Returns 0, or -1 (out of memory: w freed,
 * fn will not run). */
static int w_fail(struct bx_w *w) {
    store_bx_write_failed(w->s);
    if (!w->err[0])
        snprintf(w->err, sizeof w->err, "store: the write could not be queued");
    if (store_bx_late(w->s, w_late, w) < 0) {
        free(w);
        return -1;
    }
    return 0;
}

/* Queues w's operation in the open group (begun when none is): rc is the
 * backend call's result, made by the caller after store_bx_group. */
#define W_RUN(w, call)                                                                             \
    do {                                                                                           \
        if (!(w))                                                                                  \
            return -1;                                                                             \
        if (store_bx_group((w)->s, (w)->err, sizeof(w)->err) < 0 || (call) < 0)                    \
            return w_fail(w);                                                                      \
        return 0;                                                                                  \
    } while (0)

int store_bx_event_put(struct store *s, const struct store_event *ev, struct store_plan *plan,
                       store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PUT);
    /* the windows' counts come with the answer on a backend: none at once
     * (0: route_plan_queued arms the window; route_plan_counted closes a
     * full one when the answer came) */
    for (size_t i = 0; plan && i < plan->nitems; i++)
        plan->items[i].count = 0;
    if (w && plan) {
        w->added = (int64_t)plan->ndeliveries;
        w->plan = plan;
    }
    W_RUN(w, s->ops->event_put(s->be, ev, plan, w_answer, w));
}

int store_bx_nonce_put(struct store *s, const char *source, const char *nonce, const char *digest,
                       int64_t now_ms, int64_t keep_ms, store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_NONCE);
    W_RUN(w, s->ops->nonce_put(s->be, source, nonce, digest, now_ms, keep_ms, w_answer, w));
}

int store_bx_event_routed(struct store *s, const char *event_id, struct store_plan *plan,
                          store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_ROUTED);
    for (size_t i = 0; plan && i < plan->nitems; i++)
        plan->items[i].count = 0;
    if (w && plan) {
        w->added = (int64_t)plan->ndeliveries;
        w->plan = plan;
    }
    W_RUN(w, s->ops->event_routed(s->be, event_id, plan, w_answer, w));
}

int store_bx_delivery_retry(struct store *s, const char *id, int64_t next_at, store_done_fn fn,
                            void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PLAIN);
    W_RUN(w, s->ops->delivery_retry(s->be, id, next_at, w_answer, w));
}

int store_bx_delivery_skip(struct store *s, const char *id, int64_t now, store_done_fn fn,
                           void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PLAIN);
    W_RUN(w, s->ops->delivery_skip(s->be, id, now, w_answer, w));
}

int store_bx_sub_put(struct store *s, const struct store_sub *sub, store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PLAIN);
    W_RUN(w, s->ops->sub_put(s->be, sub, w_answer, w));
}

int store_bx_sub_change(struct store *s, const char *id, const char *url, store_done_fn fn,
                        void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PLAIN);
    W_RUN(w, s->ops->sub_change(s->be, id, url, w_answer, w));
}

int store_bx_sub_set_secret(struct store *s, const char *id, const char *secret, store_done_fn fn,
                            void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PLAIN);
    W_RUN(w, s->ops->sub_set_secret(s->be, id, secret, w_answer, w));
}

int store_bx_endpoint_attempt(struct store *s, const char *name, int ok, const char *error,
                              int64_t now, store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_VALUE);
    W_RUN(w, s->ops->endpoint_attempt(s->be, name, ok, error, now, w_answer, w));
}

int store_bx_endpoint_set_disabled(struct store *s, const char *name, int disabled,
                                   const char *reason, int64_t now, store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_VALUE);
    W_RUN(w, s->ops->endpoint_set_disabled(s->be, name, disabled, reason, now, w_answer, w));
}

/* A pass with nothing to look at (max 0, or the cursor at upto) ends at
 * once, as on SQLite, without a statement. */
static void w_ok_late(void *p) {
    struct bx_w *w = p;
    w_answer(w, 0, NULL, 0, NULL);
}

/* Retention (store_pg_retain.c on PostgreSQL): a transaction of its own,
 * not a write of the group (store_backend.h); its answer (rows: the pass,
 * out fields set) is copied into w->prune. A backend that is down answers
 * ok 0 from the loop: housekeeping tries again in its next round. */
int store_bx_prune(struct store *s, const struct store_prune *p, store_done_fn fn, void *arg) {
    struct bx_w *w = w_new(s, fn, arg, W_PRUNE);
    if (!w)
        return -1;
    w->prune = *p;
    w->prune.pruned = w->prune.kept = w->prune.done = 0;
    if (p->max <= 0 || p->cursor >= p->upto) {
        w->prune.done = 1;
        if (store_bx_late(s, w_ok_late, w) < 0) {
            free(w);
            return -1;
        }
        return 0;
    }
    if (s->ops->prune(s->be, p, w_answer, w) < 0) {
        snprintf(w->err, sizeof w->err, "store: the pass could not be queued");
        if (store_bx_late(s, w_late, w) < 0) {
            free(w);
            return -1;
        }
    }
    return 0;
}

/* Free pages given back to the filesystem, in the group (SQLite; the
 * answer's value: the pages freed). A backend with no reclaim op
 * (PostgreSQL: autovacuum reuses dead rows' room, and VACUUM's truncation
 * gives it back) answers "nothing done" from the loop. */
int store_bx_reclaim(struct store *s, int64_t keep_pages, int step_pages, store_done_fn fn,
                     void *arg) {
    struct bx_w *w = w_new(s, fn, arg, s->ops->reclaim ? W_VALUE : W_RECLAIM);
    if (w && s->ops->reclaim)
        W_RUN(w, s->ops->reclaim(s->be, keep_pages, step_pages, w_answer, w));
    if (!w)
        return -1;
    if (store_bx_late(s, w_ok_late, w) < 0) {
        free(w);
        return -1;
    }
    return 0;
}

/* ---- the loop's synchronous writes ---- */

struct bx_log {
    struct store *s;
    char what[64 + UTIL_ID_MAX];
    int release; /* a lease given back */
};

static void log_answer(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct bx_log *l = arg;
    UNUSED(rows);
    UNUSED(n);
    if (status == STORE_LEASE_LOST && l->release)
        ; /* released already (its outcome, an earlier release): as on SQLite, nothing to do */
    else if (status == STORE_LEASE_LOST)
        log_msg(LOG_WARN, "%s: the lease was taken by another instance (it expired)", l->what);
    else if (status < 0)
        log_msg(LOG_DEBUG, "%s: %s", l->what, err ? err : "failed");
    free(l);
}

/* Queues a synchronous-form write: 0, or -1 with a reason in err. */
static int sync_write(struct bx_log *l, int rc_call, char *err, size_t errlen) {
    if (rc_call < 0) {
        store_bx_write_failed(l->s);
        free(l);
        store_err(err, errlen, "store: the write could not be queued");
        return -1;
    }
    return 0;
}

static struct bx_log *log_new(struct store *s, const char *what, const char *id, char *err,
                              size_t errlen) {
    struct bx_log *l;
    if (store_bx_group(s, err, errlen) < 0)
        return NULL;
    if (!(l = malloc(sizeof *l))) {
        store_err(err, errlen, "store: out of memory");
        return NULL;
    }
    l->s = s;
    snprintf(l->what, sizeof l->what, "%s %s", what, id);
    return l;
}

int store_bx_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                         const char *status, int64_t next_at, int schedule_pos, char *err,
                         size_t errlen) {
    struct bx_log *l = log_new(s, "storing an attempt of delivery", delivery_id, err, errlen);
    if (!l)
        return -1;
    return sync_write(
        l, s->ops->attempt_put(s->be, delivery_id, a, status, next_at, schedule_pos, log_answer, l),
        err, errlen);
}

int store_bx_delivery_lease(struct store *s, int64_t seq, int64_t next_at, int lease, char *err,
                            size_t errlen) {
    char id[32];
    struct bx_log *l;
    snprintf(id, sizeof id, "%lld", (long long)seq);
    if (!(l = log_new(s, lease ? "renewing the lease of delivery seq" : "releasing delivery seq",
                      id, err, errlen)))
        return -1;
    l->release = !lease;
    return sync_write(l,
                      s->ops->lease_renew(s->be, seq, lease ? next_at : 0, next_at, log_answer, l),
                      err, errlen);
}

int store_bx_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                         int64_t next_at, size_t *count, char *err, size_t errlen) {
    struct bx_log *l = log_new(s, "closing a batch window of", w->endpoint, err, errlen);
    *count = 0;
    if (!l)
        return -1;
    if (sync_write(l, s->ops->batch_close(s->be, w, status, next_at, log_answer, l), err, errlen) <
        0)
        return -1;
    /* how many it takes is known at COMMIT (another instance may have
     * closed it first: 0); the caller watches the endpoint either way */
    *count = w->items > 0 ? (size_t)w->items : 1;
    s->bx->backlog_added++;
    return 0;
}
