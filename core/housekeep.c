/* housekeep.c -- the retention and recovery sweeps, each an event at the
 * loop's lowest priority that does one batch per turn and comes back while
 * there is more, so a long backlog never stalls ingest.
 * Invariants: the retention front only moves forward (every old event up
 * to it was deleted or stepped over); a pass looks at a bounded number of
 * events; a recovery sweep starts over from seq 0 on each housekeep_recover.
 * Each step is a store call whose result comes from the loop once its group
 * ended (store.h, asynchronous write results): the next step acts on it;
 * one retention pass and one recovery read in flight at a time.
 * SPDX-License-Identifier: MIT */

#include <stdlib.h>

#include <event2/event.h>

#include "housekeep.h"
#include "log.h"
#include "util.h"

#define HOUSEKEEP_PRUNE_MS 1000     /* retention sweep period while nothing is old */
#define HOUSEKEEP_PRUNE_LOOK 128    /* events each walk looks at per pass */
#define HOUSEKEEP_PRUNE_US 2000     /* and the time its deletes may take */
#define HOUSEKEEP_BACK_MIN_MS 1000  /* the kept events are walked again at most */
#define HOUSEKEEP_BACK_MAX_MS 60000 /* every retention period, within these */
#define HOUSEKEEP_RECLAIM_KEEP 1024 /* free pages left for new rows (4 MiB of 4 KiB) */
#define HOUSEKEEP_RECLAIM_STEP 64   /* pages given back per pass */
#define HOUSEKEEP_RECOVER_BATCH 256 /* events routed again per step */

/* Retention walks events by seq twice: the front walk goes through every
 * event once as it gets old, deleting what is done and stepping over what
 * must stay (a dead letter, a delivery still retrying, an open batch
 * window); the back walk goes over the events the front left behind, from
 * seq 0 up to where the front was when it began, once per retention period
 * (1 s to 1 min), deleting those done since (and any whose delete a failed
 * group took back). Behind the front only kept events are left, so the back
 * walk costs what they number. */
struct housekeep {
    struct event_base *base;
    struct store *store;
    const struct config *cfg; /* borrowed; NULL until housekeep_set_config */
    housekeep_route_fn route;
    void *route_arg;
    struct event *prune_ev;
    int64_t front;           /* events.seq the front walk has looked at */
    int64_t back, back_upto; /* the back walk's cursor and end; back_upto 0: not walking */
    int64_t back_at;         /* util_mono_ms when the last back walk began */
    struct event *recover_ev;
    int64_t recover_after; /* seq cursor of the recovery sweep in progress */
    int stopping;
    /* Store calls in flight (their answers come from the loop): one
     * retention step and one recovery read at a time. */
    int prune_busy;    /* a pass's prune or reclaim is waiting for its group */
    int recover_busy;  /* a read of unrouted events is waiting */
    int recover_again; /* housekeep_recover ran meanwhile: start over from 0 */
    int freed;         /* housekeep_free ran while a call was in flight */
};

static void housekeep_free_now(struct housekeep *hk);

/* An answer came back: returns 0 when housekeep_free ran meanwhile (hk is
 * freed here once nothing is in flight), else 1. */
static int housekeep_answered(struct housekeep *hk) {
    if (!hk->freed)
        return 1;
    if (!hk->prune_busy && !hk->recover_busy)
        housekeep_free_now(hk);
    return 0;
}

/* ---- retention ---- */

static void housekeep_prune_arm(struct housekeep *hk, int now) {
    struct timeval tv = {HOUSEKEEP_PRUNE_MS / 1000, (HOUSEKEEP_PRUNE_MS % 1000) * 1000};

    if (now)
        tv.tv_sec = tv.tv_usec = 0;
    evtimer_add(hk->prune_ev, &tv);
}

/* Starts a back walk when the front has caught up and the last one began
 * a retention period ago (1 s to 1 min). */
static void housekeep_back_start(struct housekeep *hk, int64_t mono) {
    int64_t period = hk->cfg->retention_ms;

    if (period < HOUSEKEEP_BACK_MIN_MS)
        period = HOUSEKEEP_BACK_MIN_MS;
    if (period > HOUSEKEEP_BACK_MAX_MS)
        period = HOUSEKEEP_BACK_MAX_MS;
    if (hk->back_upto || hk->front == 0 || mono - hk->back_at < period)
        return;
    hk->back = 0;
    hk->back_upto = hk->front;
    hk->back_at = mono;
}

/* A retention pass is a chain of store calls, one in flight at a time,
 * each acting on the one before's result (known only once its group
 * ended): the front walk's step, then the back walk's while one is on,
 * then, once both are idle, a step giving free pages back. Each step's
 * callback starts the next or ends the pass (housekeep_prune_end). */
static void housekeep_prune_back(struct housekeep *hk);
static void housekeep_reclaim(struct housekeep *hk);

/* The pass is over: more says there is more to do at once (next turn,
 * after ingest), else the sweep waits its period. */
static void housekeep_prune_end(struct housekeep *hk, int more, const char *err) {
    hk->prune_busy = 0;
    if (!housekeep_answered(hk))
        return;
    if (err && err[0])
        log_msg(LOG_WARN, "retention: %s", err);
    if (!hk->stopping)
        housekeep_prune_arm(hk, more);
}

static void housekeep_log_pruned(const struct store_prune *p) {
    if (p->pruned)
        log_msg(LOG_DEBUG, "retention: pruned %d events, kept %d", p->pruned, p->kept);
}

static void on_front_pruned(void *arg, const struct store_done *d) {
    struct housekeep *hk = arg;

    if (hk->freed || hk->stopping || !d->ok) {
        housekeep_prune_end(hk, 0, d->err);
        return;
    }
    hk->front = d->prune->cursor;
    housekeep_log_pruned(d->prune);
    if (!d->prune->done) {
        housekeep_prune_end(hk, 1, NULL);
        return;
    }
    housekeep_back_start(hk, util_mono_ms());
    if (hk->back_upto)
        housekeep_prune_back(hk);
    else
        housekeep_reclaim(hk);
}

static void on_back_pruned(void *arg, const struct store_done *d) {
    struct housekeep *hk = arg;

    if (hk->freed || hk->stopping || !d->ok) {
        housekeep_prune_end(hk, 0, d->err);
        return;
    }
    hk->back = d->prune->cursor;
    housekeep_log_pruned(d->prune);
    if (d->prune->done)
        hk->back_upto = 0;
    housekeep_prune_end(hk, 1, NULL); /* the back walk is on, or just ended: again at once */
}

static void on_reclaimed(void *arg, const struct store_done *d) {
    struct housekeep *hk = arg;

    housekeep_prune_end(hk, d->ok && d->value > 0, d->ok ? NULL : d->err);
}

static void housekeep_prune_back(struct housekeep *hk) {
    struct store_prune back = {.before_ms = util_now_ms() - hk->cfg->retention_ms,
                               .upto = hk->back_upto,
                               .cursor = hk->back,
                               .max = HOUSEKEEP_PRUNE_LOOK,
                               .budget_us = HOUSEKEEP_PRUNE_US};

    if (store_prune_done(hk->store, &back, on_back_pruned, hk) < 0)
        housekeep_prune_end(hk, 0, "out of memory");
}

static void housekeep_reclaim(struct housekeep *hk) {
    if (store_reclaim_done(hk->store, HOUSEKEEP_RECLAIM_KEEP, HOUSEKEEP_RECLAIM_STEP, on_reclaimed,
                           hk) < 0)
        housekeep_prune_end(hk, 0, "out of memory");
}

static void housekeep_prune_cb(evutil_socket_t fd, short kind, void *arg) {
    struct housekeep *hk = arg;
    struct store_prune front;

    UNUSED(fd);
    UNUSED(kind);
    if (hk->stopping || !hk->cfg || hk->prune_busy)
        return;
    front = (struct store_prune){.before_ms = util_now_ms() - hk->cfg->retention_ms,
                                 .upto = INT64_MAX,
                                 .cursor = hk->front,
                                 .max = HOUSEKEEP_PRUNE_LOOK,
                                 .budget_us = HOUSEKEEP_PRUNE_US};
    hk->prune_busy = 1;
    if (store_prune_done(hk->store, &front, on_front_pruned, hk) < 0)
        housekeep_prune_end(hk, 0, "out of memory");
}

/* ---- recovery ---- */

static void housekeep_recover_read(struct housekeep *hk);

/* One batch of unrouted events, read from the loop: each goes through the
 * router; a full batch asks for the next one (one read in flight). */
static void on_unrouted(void *arg, const struct store_done *d) {
    struct housekeep *hk = arg;

    hk->recover_busy = 0;
    if (!housekeep_answered(hk))
        return;
    if (!d->ok) {
        log_msg(LOG_ERROR, "recovery: reading unrouted events failed: %s", d->err);
    } else {
        for (size_t i = 0; i < d->n; i++) {
            hk->route(hk->route_arg, &d->rows[i]);
            hk->recover_after = d->rows[i].seq;
        }
        if (d->n)
            log_msg(LOG_INFO, "recovery: routed %zu events committed before a restart", d->n);
    }
    if (hk->recover_again) { /* asked again meanwhile: from the start */
        hk->recover_again = 0;
        hk->recover_after = 0;
        event_active(hk->recover_ev, EV_TIMEOUT, 0);
    } else if (d->ok && d->n == HOUSEKEEP_RECOVER_BATCH) {
        /* One batch per loop turn, so a long backlog never stalls ingest. */
        event_active(hk->recover_ev, EV_TIMEOUT, 0);
    }
}

static void housekeep_recover_read(struct housekeep *hk) {
    if (store_get_events_unrouted(hk->store, hk->recover_after, HOUSEKEEP_RECOVER_BATCH,
                                  on_unrouted, hk) < 0) {
        log_msg(LOG_ERROR, "recovery: reading unrouted events failed: out of memory");
        return;
    }
    hk->recover_busy = 1;
}

static void housekeep_recover_cb(evutil_socket_t fd, short what, void *arg) {
    struct housekeep *hk = arg;

    UNUSED(fd);
    UNUSED(what);
    if (hk->recover_busy) {
        hk->recover_again = 1;
        return;
    }
    housekeep_recover_read(hk);
}

void housekeep_recover(struct housekeep *hk) {
    if (hk->recover_busy) { /* the read in flight finishes, then a sweep from 0 */
        hk->recover_again = 1;
        return;
    }
    hk->recover_after = 0;
    event_active(hk->recover_ev, EV_TIMEOUT, 0);
}

/* ---- lifecycle ---- */

struct housekeep *housekeep_new(struct event_base *base, struct store *s, housekeep_route_fn route,
                                void *arg, char *err, size_t errlen) {
    struct housekeep *hk = calloc(1, sizeof *hk);
    int low;

    if (!hk) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    hk->base = base;
    hk->store = s;
    hk->route = route;
    hk->route_arg = arg;
    hk->prune_ev = evtimer_new(base, housekeep_prune_cb, hk);
    hk->recover_ev = event_new(base, -1, 0, housekeep_recover_cb, hk);
    if (!hk->prune_ev || !hk->recover_ev) {
        snprintf(err, errlen, "could not create the housekeeping events");
        housekeep_free(hk);
        return NULL;
    }
    /* Background work: after every ready request of a turn. */
    low = event_base_get_npriorities(base) - 1;
    if (low > 0) {
        event_priority_set(hk->prune_ev, low);
        event_priority_set(hk->recover_ev, low);
    }
    return hk;
}

void housekeep_set_config(struct housekeep *hk, const struct config *cfg) {
    hk->cfg = cfg;
    if (cfg && !hk->stopping && !evtimer_pending(hk->prune_ev, NULL))
        housekeep_prune_arm(hk, 0);
}

void housekeep_stop(struct housekeep *hk) {
    hk->stopping = 1;
    evtimer_del(hk->prune_ev);
}

void housekeep_free(struct housekeep *hk) {
    if (!hk)
        return;
    if (hk->prune_busy || hk->recover_busy) { /* the last answer frees it */
        hk->freed = 1;
        hk->stopping = 1;
        if (hk->prune_ev)
            evtimer_del(hk->prune_ev);
        if (hk->recover_ev)
            event_del(hk->recover_ev);
        return;
    }
    housekeep_free_now(hk);
}

static void housekeep_free_now(struct housekeep *hk) {
    if (hk->prune_ev)
        event_free(hk->prune_ev);
    if (hk->recover_ev)
        event_free(hk->recover_ev);
    free(hk);
}
