/* housekeep.c -- the retention and recovery sweeps, each an event at the
 * loop's lowest priority that does one batch per turn and comes back while
 * there is more, so a long backlog never stalls ingest.
 * Invariants: the retention front only moves forward (every old event up
 * to it was deleted or stepped over); a pass looks at a bounded number of
 * events; a recovery sweep starts over from seq 0 on each housekeep_recover.
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
};

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

/* One pass: a step of the front walk, of the back walk while one is on,
 * and, once both are idle, a step giving free pages back. Returns 1 when
 * there is more to do at once, 0 when the sweep can wait. */
static int housekeep_prune_pass(struct housekeep *hk, char *err, size_t errlen) {
    int64_t before = util_now_ms() - hk->cfg->retention_ms;
    struct store_prune front = {.before_ms = before,
                                .upto = INT64_MAX,
                                .cursor = hk->front,
                                .max = HOUSEKEEP_PRUNE_LOOK,
                                .budget_us = HOUSEKEEP_PRUNE_US};
    struct store_prune back = {
        .before_ms = before, .max = HOUSEKEEP_PRUNE_LOOK, .budget_us = HOUSEKEEP_PRUNE_US};
    int freed = 0;

    if (store_prune(hk->store, &front, err, errlen) < 0)
        return 0;
    hk->front = front.cursor;
    if (front.done)
        housekeep_back_start(hk, util_mono_ms());
    if (hk->back_upto && front.done) {
        back.upto = hk->back_upto;
        back.cursor = hk->back;
        if (store_prune(hk->store, &back, err, errlen) < 0)
            return 0;
        hk->back = back.cursor;
        if (back.done)
            hk->back_upto = 0;
    }
    if (front.pruned + back.pruned)
        log_msg(LOG_DEBUG, "retention: pruned %d events, kept %d", front.pruned + back.pruned,
                front.kept + back.kept);
    if (!front.done || hk->back_upto)
        return 1;
    if (store_reclaim(hk->store, HOUSEKEEP_RECLAIM_KEEP, HOUSEKEEP_RECLAIM_STEP, &freed, err,
                      errlen) < 0)
        return 0;
    return freed > 0;
}

static void housekeep_prune_cb(evutil_socket_t fd, short kind, void *arg) {
    struct housekeep *hk = arg;
    char err[256];
    int more;

    UNUSED(fd);
    UNUSED(kind);
    if (hk->stopping || !hk->cfg)
        return;
    err[0] = '\0';
    more = housekeep_prune_pass(hk, err, sizeof err);
    if (err[0])
        log_msg(LOG_WARN, "retention: %s", err);
    /* more: next turn, after ingest */
    housekeep_prune_arm(hk, more);
}

/* ---- recovery ---- */

static void housekeep_recover_cb(evutil_socket_t fd, short what, void *arg) {
    struct housekeep *hk = arg;
    struct store_event_row *rows = NULL;
    size_t n = 0;
    char err[256];

    UNUSED(fd);
    UNUSED(what);
    if (store_events_unrouted(hk->store, hk->recover_after, HOUSEKEEP_RECOVER_BATCH, &rows, &n, err,
                              sizeof err) < 0) {
        log_msg(LOG_ERROR, "recovery: reading unrouted events failed: %s", err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        hk->route(hk->route_arg, &rows[i]);
        hk->recover_after = rows[i].seq;
    }
    if (n)
        log_msg(LOG_INFO, "recovery: routed %zu events committed before a restart", n);
    store_event_rows_free(rows, n);
    /* One batch per loop turn, so a long backlog never stalls ingest. */
    if (n == HOUSEKEEP_RECOVER_BATCH)
        event_active(hk->recover_ev, EV_TIMEOUT, 0);
}

void housekeep_recover(struct housekeep *hk) {
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
    if (hk->prune_ev)
        event_free(hk->prune_ev);
    if (hk->recover_ev)
        event_free(hk->recover_ev);
    free(hk);
}
