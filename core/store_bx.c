/* store_bx.c -- the store's one engine, over a backend of
 * store_backend.h (SQLite or PostgreSQL): what store.h promises, kept with
 * asynchronous operations. store.c, the front, hands each store.h call
 * here.
 *
 * The group: the first write of a loop turn begins the backend's group;
 * the commit event (lowest priority, as SQLite's) ends it. Its callbacks
 * (store_on_commit and store_on_written alike: on PostgreSQL a COMMIT
 * that answered is durable; SQLite answers once its group's fsync is
 * done) wait in a record that runs them when group_end's callback said how
 * the group ended; the writes' own answers (store_*_done) come just
 * before, with the rows the backend parsed. Records finish in
 * the order they were ended (the write connection answers in order), and
 * one with no group (callbacks registered with nothing written) runs once
 * every group ended before it did: "every write made so far". Nothing is
 * reported durable before COMMIT answered; a group the backend did not see
 * commit (a statement failed, the connection was lost) answers ok 0 to
 * all of its writes (503s).
 *
 * Watermarks: a delivery is claimable once its group's COMMIT answered
 * (every instance's claim sees committed rows only), so store_delivery_seqs
 * counts groups here, not rows: last is the number of groups begun,
 * committed the number ended. The scheduler marks an endpoint at a write
 * and looks at it when the group's end passes the mark: the kick comes from
 * group_end's answer.
 *
 * The backlog (store_backlog, read on every request) is a read of the
 * backlog op at most once a second, plus the deliveries this instance
 * inserted since the read was sent: other instances' inserts show within a
 * second.
 *
 * Reads that callers make synchronously: at the start (store_subs_load,
 * health's first store_endpoint_states) the loop runs here until the
 * answer came, before anything is served (bx_wait). Inside the running
 * loop (health's read after a rolled-back group) that cannot be: the call
 * fails, and health reads asynchronously instead.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"
#include "metrics.h"
#include "store.h"
#include "store_backend.h"
#include "store_int.h"
#include "store_pg.h"
#include "util.h"

/* At the start, how long the connections may take to come up. */
#define BX_READY_MS 15000
/* store_flush outside the loop: how long it waits for the groups in flight. */
#define BX_FLUSH_MS 10000
/* The longest the group's end waits for the loop to be idle (bx_schedule). */
#define BX_COMMIT_WAIT_MS 100
/* The backlog is read again at most this often. */
#define BX_BACKLOG_MS 1000

/* ---- the late answers: calls that failed before reaching the backend ---- */

static void late_cb(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    struct store_bx *x = s->bx;
    struct bx_late *l;
    size_t n = 0;

    UNUSED(fd);
    UNUSED(what);
    for (l = x->late; l; l = l->next)
        n++;
    while (n-- > 0 && (l = x->late)) { /* this turn's only */
        x->late = l->next;
        if (!x->late)
            x->late_tail = NULL;
        l->run(l->p);
        free(l);
    }
    if (x->late)
        event_active(x->late_ev, EV_TIMEOUT, 0);
}

int store_bx_late(struct store *s, void (*run)(void *p), void *p) {
    struct store_bx *x = s->bx;
    struct bx_late *l = calloc(1, sizeof *l);

    if (!l)
        return -1;
    l->run = run;
    l->p = p;
    if (x->late_tail)
        x->late_tail->next = l;
    else
        x->late = l;
    x->late_tail = l;
    event_active(x->late_ev, EV_TIMEOUT, 0);
    return 0;
}

/* ---- the group ---- */

struct bx_grp {
    struct bx_grp *next;
    struct store *s;
    struct store_cb *cbs;
    size_t ncbs, cap;
    int64_t no; /* the group's number (0: no group, callbacks only) */
    int done, ok;
    int failed; /* a write of this loop turn could not be queued: its callbacks hear ok 0 */
    int64_t t0;
};

/* The group ends at the commit event, the lowest priority: after every
 * ready request of the turn. A loop that is never idle (deliveries draining
 * a backlog at full speed) would starve it, and the 200s waiting for it:
 * commit_late_ev, a timer at the default priority, ends the group after
 * BX_COMMIT_WAIT_MS instead. */
static void bx_schedule(struct store *s) {
    static const struct timeval zero = {0, 0};
    static const struct timeval most = {BX_COMMIT_WAIT_MS / 1000,
                                        (BX_COMMIT_WAIT_MS % 1000) * 1000};
    struct store_bx *x = s->bx;

    if (x->scheduled)
        return;
    x->scheduled = 1;
    if (x->committing)
        event_add(x->commit_ev, &zero);
    else
        event_active(x->commit_ev, EV_TIMEOUT, 0);
    evtimer_add(x->commit_late_ev, &most);
}

static struct bx_grp *bx_cur(struct store *s) {
    struct store_bx *x = s->bx;

    if (!x->cur && (x->cur = calloc(1, sizeof *x->cur)))
        x->cur->s = s;
    return x->cur;
}

/* Runs the records at the head of the flight that are done, in order. */
static void bx_fly_run(struct store *s) {
    struct store_bx *x = s->bx;
    struct bx_grp *g;

    while ((g = x->fly) && g->done) {
        x->fly = g->next;
        if (!x->fly)
            x->fly_tail = NULL;
        if (g->no > x->groups_done)
            x->groups_done = g->no;
        x->committing++;
        for (size_t i = 0; i < g->ncbs; i++)
            g->cbs[i].fn(g->cbs[i].arg, g->ok);
        x->committing--;
        free(g->cbs);
        free(g);
    }
}

static void bx_outcome(struct store_bx *x, int ok, const char *why) {
    int64_t now = util_mono_ms();

    if (!ok) {
        if (!x->fail_logged_at || now - x->fail_logged_at >= 1000) {
            log_msg(LOG_WARN, "store: commit group failed, rolled back: %s",
                    why && *why ? why : "failed");
            x->fail_logged_at = now;
        }
    }
    x->last_outcome_ok = ok;
    x->last_outcome_at = now;
}

static void bx_group_done(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct bx_grp *g = arg;
    struct store *s = g->s;

    UNUSED(rows);
    UNUSED(n);
    g->done = 1;
    g->ok = status == 0 && !g->failed;
    bx_outcome(s->bx, g->ok, err);
    if (g->ok)
        metrics_store_commit(util_mono_ms() - g->t0);
    bx_fly_run(s);
}

/* Ends the open record: its group to the backend, or, with none, done
 * once the groups before it are. */
static void bx_end(struct store *s) {
    struct store_bx *x = s->bx;
    struct bx_grp *g = x->cur;

    if (!g)
        return;
    x->cur = NULL;
    if (x->fly_tail)
        x->fly_tail->next = g;
    else
        x->fly = g;
    x->fly_tail = g;
    if (x->tx_open) {
        x->tx_open = 0;
        g->t0 = util_mono_ms();
        if (s->ops->group_end(s->be, bx_group_done, g) == 0)
            return;
        g->ok = 0; /* cannot happen: the group was open */
    } else {
        /* no group: ok unless a write of it failed (the database down):
         * as on SQLite, whoever waits for this turn's commit (an admin
         * action's 200) hears that it did not happen */
        g->ok = !g->failed;
    }
    g->done = 1;
    bx_fly_run(s);
}

static void commit_cb(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    struct store_bx *x = s->bx;

    UNUSED(fd);
    UNUSED(what);
    evtimer_del(x->commit_late_ev);
    x->scheduled = 0;
    x->committing++;
    bx_end(s);
    x->committing--;
}

/* The commit event did not get its turn in time (bx_schedule). */
static void commit_late_cb(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    if (!s->bx->scheduled)
        return;
    event_del(s->bx->commit_ev);
    commit_cb(fd, what, s);
}

int store_bx_group(struct store *s, char *err, size_t errlen) {
    struct store_bx *x = s->bx;

    if (x->tx_open)
        return 0;
    if (!bx_cur(s)) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (s->ops->group_begin(s->be) < 0) {
        x->cur->failed = 1;
        store_err(err, errlen, "store: %s: the database is not connected (%.150s)", s->ops->name,
                  x->shown);
        bx_outcome(x, 0, NULL);
        bx_schedule(s);
        return -1;
    }
    x->tx_open = 1;
    x->cur->no = ++x->groups_begun;
    bx_schedule(s);
    return 0;
}

void store_bx_write_failed(struct store *s) {
    struct bx_grp *g = bx_cur(s);
    if (g)
        g->failed = 1;
    bx_schedule(s);
}

int store_bx_on_group(struct store *s, store_commit_fn fn, void *arg) {
    struct bx_grp *g = bx_cur(s);

    if (!g)
        return -1;
    if (g->ncbs == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        struct store_cb *p = realloc(g->cbs, cap * sizeof *p);
        if (!p)
            return -1;
        g->cbs = p;
        g->cap = cap;
    }
    g->cbs[g->ncbs].fn = fn;
    g->cbs[g->ncbs].arg = arg;
    g->ncbs++;
    bx_schedule(s);
    return 0;
}

void store_bx_seqs(const struct store *s, int64_t *committed, int64_t *last) {
    *committed = s->bx->groups_done;
    *last = s->bx->groups_begun;
}

int store_bx_writable(const struct store *s) {
    const struct store_bx *x = s->bx;
    return s->ops->ready(s->be) &&
           (x->last_outcome_ok || util_mono_ms() - x->last_outcome_at > 5000);
}

/* ---- running the loop before it runs (the start, a drain) ---- */

static void wait_tick(evutil_socket_t fd, short what, void *arg) {
    UNUSED(fd);
    UNUSED(what);
    UNUSED(arg);
}

/* Runs the loop until cond(s) or ms passed. -1 inside the running loop
 * (it cannot be entered again) or on timeout. */
static int bx_wait(struct store *s, int (*cond)(struct store *s), int64_t ms) {
    struct store_bx *x = s->bx;
    int64_t end = util_mono_ms() + ms;
    struct event *tick;
    static const struct timeval step = {0, 100000};

    if (cond(s))
        return 0;
    if (x->running || x->waiting)
        return -1;
    if (!(tick = evtimer_new(x->base, wait_tick, NULL)))
        return -1;
    x->waiting = 1;
    while (!cond(s) && util_mono_ms() < end) {
        evtimer_add(tick, &step);
        event_base_loop(x->base, EVLOOP_ONCE);
    }
    x->waiting = 0;
    event_free(tick);
    return cond(s) ? 0 : -1;
}

static int cond_ready(struct store *s) {
    return s->ops->ready(s->be);
}

static int cond_idle(struct store *s) {
    const struct store_bx *x = s->bx;
    return !x->cur && !x->fly && !x->late && x->nreads == 0;
}

int store_bx_shared(const struct store *s) {
    return s->ops && s->ops->shared;
}

int store_bx_idle(const struct store *s) {
    return cond_idle((struct store *)s) || s->bx->gave_up;
}

int store_bx_flush(struct store *s) {
    struct store_bx *x = s->bx;

    if (x->scheduled) {
        event_del(x->commit_ev);
        evtimer_del(x->commit_late_ev);
        x->scheduled = 0;
    }
    bx_end(s);
    if (x->running || x->waiting)
        return 0; /* inside the loop: the answers come from it */
    if (bx_wait(s, cond_idle, BX_FLUSH_MS) < 0 && !cond_idle(s)) {
        log_msg(LOG_ERROR, "store: %s still unanswered after %d s", x->fly ? "a group" : "a read",
                BX_FLUSH_MS / 1000);
        x->gave_up = 1;
        return -1;
    }
    return 0;
}

/* ---- the backlog ---- */

static void backlog_read(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct store *s = arg;
    struct store_bx *x = s->bx;

    UNUSED(err);
    x->nreads--;
    x->backlog_reading = 0;
    if (status >= 0 && rows && n == 1) {
        x->backlog = *(const int64_t *)rows;
        x->backlog_added -= x->backlog_added_at_read;
        x->backlog_known = 1;
    }
}

int64_t store_bx_backlog(struct store *s) {
    struct store_bx *x = s->bx;
    int64_t now = util_mono_ms();

    if (!x->backlog_reading && now - x->backlog_read_at >= BX_BACKLOG_MS) {
        x->backlog_read_at = now;
        x->backlog_added_at_read = x->backlog_added;
        if (s->ops->backlog(s->be, backlog_read, s) == 0) {
            x->backlog_reading = 1;
            x->nreads++;
        }
    }
    return x->backlog + x->backlog_added;
}

/* ---- open and close ---- */

void store_bx_free(struct store *s) {
    struct store_bx *x = s->bx;
    struct bx_grp *g;

    if (!x)
        return;
    if (s->be)
        s->ops->close(s->be); /* what is in flight is answered, -1 */
    s->be = NULL;
    while ((g = x->fly)) { /* (close answered them; none is left but out of memory) */
        x->fly = g->next;
        free(g->cbs);
        free(g);
    }
    if (x->cur) {
        free(x->cur->cbs);
        free(x->cur);
    }
    while (x->late) {
        struct bx_late *l = x->late;
        x->late = l->next;
        l->run(l->p);
        free(l);
    }
    if (x->commit_ev)
        event_free(x->commit_ev);
    if (x->commit_late_ev)
        event_free(x->commit_late_ev);
    if (x->late_ev)
        event_free(x->late_ev);
    free(x);
    s->bx = NULL;
}

int store_bx_open(struct store *s, struct event_base *base, const char *url, const char *base_dir,
                  char *err, size_t errlen) {
    struct store_bx *x;
    int prio;

    if (!(x = s->bx = calloc(1, sizeof *x))) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    x->base = base;
    x->last_outcome_ok = 1;
    util_url_redact(url, x->shown, sizeof x->shown);
    s->ops = store_pg_is_url(url) ? &store_pg_backend : &store_sqlite_backend;
    if (s->ops->open(&s->be, base, url, base_dir, err, errlen) < 0)
        return -1;
    x->commit_ev = event_new(base, -1, 0, commit_cb, s);
    x->commit_late_ev = evtimer_new(base, commit_late_cb, s);
    x->late_ev = event_new(base, -1, 0, late_cb, s);
    if (!x->commit_ev || !x->commit_late_ev || !x->late_ev) {
        store_err(err, errlen, "store: cannot create commit event");
        return -1;
    }
    prio = event_base_get_npriorities(base) - 1;
    if (prio > 0)
        event_priority_set(x->commit_ev, prio);
    /* the connections come up from the loop: run it until they did */
    if (bx_wait(s, cond_ready, BX_READY_MS) < 0) {
        store_err(err, errlen,
                  "store: '%.300s': the database did not accept the connections within %d s",
                  x->shown, BX_READY_MS / 1000);
        return -1;
    }
    if (s->ops == &store_pg_backend)
        log_msg(LOG_INFO, "store: postgresql '%s', instance %s", x->shown, s->ops->instance(s->be));
    return 0;
}

/* ---- the synchronous reads of the start ---- */

struct bx_sync {
    int done, status;
    char err[256];
    void (*sub_fn)(void *arg, const struct store_sub *sub);
    void *sub_arg;
    struct store_endpoint_state *states;
    size_t nstates;
};

static int cond_sync(struct store *s) {
    return s->bx->sync && s->bx->sync->done;
}

static void sync_subs(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct bx_sync *y = arg;
    const struct store_sub *v = rows;

    y->done = 1;
    y->status = status < 0 ? -1 : 0;
    if (status < 0)
        snprintf(y->err, sizeof y->err, "%s", err ? err : "store: the read failed");
    for (size_t i = 0; status >= 0 && v && i < n; i++)
        y->sub_fn(y->sub_arg, &v[i]);
}

static char *dup_or_null(const char *p, int *oom) {
    char *d;
    if (!p)
        return NULL;
    if (!(d = strdup(p)))
        *oom = 1;
    return d;
}

/* Deep copies of rows the backend owns for its callback only. */
int store_bx_states_copy(const struct store_endpoint_state *v, size_t n,
                         struct store_endpoint_state **out) {
    struct store_endpoint_state *c = NULL;
    int oom = 0;

    *out = NULL;
    if (!n)
        return 0;
    if (!(c = calloc(n, sizeof *c)))
        return -1;
    for (size_t i = 0; i < n; i++) {
        c[i] = v[i];
        c[i].name = dup_or_null(v[i].name, &oom);
        c[i].reason = dup_or_null(v[i].reason, &oom);
        c[i].last_error = dup_or_null(v[i].last_error, &oom);
    }
    if (oom) {
        store_endpoint_states_free(c, n);
        return -1;
    }
    *out = c;
    return 0;
}

static void sync_states(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct bx_sync *y = arg;

    y->done = 1;
    y->status = status < 0 ? -1 : 0;
    if (status < 0)
        snprintf(y->err, sizeof y->err, "%s", err ? err : "store: the read failed");
    else if (store_bx_states_copy(rows, n, &y->states) < 0)
        snprintf(y->err, sizeof y->err, "store: out of memory"), y->status = -1;
    else
        y->nstates = n;
}

/* Runs one read to its answer with the loop (the start only). */
static int bx_sync_run(struct store *s, struct bx_sync *y,
                       int (*issue)(struct store_be *be, store_be_done_fn cb, void *arg),
                       store_be_done_fn cb, char *err, size_t errlen) {
    struct store_bx *x = s->bx;

    if (x->running || x->waiting) {
        store_err(err, errlen, "store: no synchronous read inside the loop");
        return -1;
    }
    if (bx_wait(s, cond_ready, BX_READY_MS) < 0 || issue(s->be, cb, y) < 0) {
        store_err(err, errlen, "store: %s: the database is not connected (%.150s)", s->ops->name,
                  x->shown);
        return -1;
    }
    x->sync = y;
    (void)bx_wait(s, cond_sync, BX_READY_MS);
    x->sync = NULL;
    if (!y->done) { /* (its answer would come to a dead frame: close the store) */
        log_msg(LOG_ERROR, "store: %s: a read at the start did not answer; stopping", s->ops->name);
        abort();
    }
    if (y->status < 0) {
        store_err(err, errlen, "%s", y->err);
        return -1;
    }
    return 0;
}

int store_bx_subs_load(struct store *s, void (*fn)(void *arg, const struct store_sub *sub),
                       void *arg, char *err, size_t errlen) {
    struct bx_sync y = {.sub_fn = fn, .sub_arg = arg};
    return bx_sync_run(s, &y, s->ops->subs_load, sync_subs, err, errlen);
}

int store_bx_endpoint_states(struct store *s, struct store_endpoint_state **out, size_t *n,
                             char *err, size_t errlen) {
    struct bx_sync y = {0};
    *out = NULL;
    *n = 0;
    if (bx_sync_run(s, &y, s->ops->endpoint_states, sync_states, err, errlen) < 0)
        return -1;
    *out = y.states;
    *n = y.nstates;
    return 0;
}
