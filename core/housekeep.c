/* housekeep.c -- the retention and recovery sweeps, each an event at the
 * loop's lowest priority that does one batch per turn and comes back while
 * there is more, so a long backlog never stalls ingest.
 * Invariants: the retention cursor only moves forward (it is the seq the
 * sweep has looked at); a recovery sweep starts over from seq 0 on each
 * housekeep_recover.
 * SPDX-License-Identifier: MIT */

#include <stdlib.h>

#include <event2/event.h>

#include "housekeep.h"
#include "log.h"
#include "util.h"

#define HOUSEKEEP_PRUNE_MS 1000     /* retention sweep period */
#define HOUSEKEEP_PRUNE_BATCH 200   /* events deleted per step */
#define HOUSEKEEP_RECOVER_BATCH 256 /* events routed again per step */

struct housekeep {
    struct event_base *base;
    struct store *store;
    const struct config *cfg; /* borrowed; NULL until housekeep_set_config */
    housekeep_route_fn route;
    void *route_arg;
    struct event *prune_ev;
    int64_t prune_cursor; /* events.seq the retention sweep has looked at */
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

static void housekeep_prune_cb(evutil_socket_t fd, short kind, void *arg) {
    struct housekeep *hk = arg;
    int pruned = 0;
    char err[256];

    UNUSED(fd);
    UNUSED(kind);
    if (hk->stopping || !hk->cfg)
        return;
    if (store_prune(hk->store, util_now_ms() - hk->cfg->retention_ms, &hk->prune_cursor,
                    HOUSEKEEP_PRUNE_BATCH, &pruned, err, sizeof err) < 0)
        log_msg(LOG_WARN, "retention: %s", err);
    else if (pruned)
        log_msg(LOG_DEBUG, "retention: pruned %d delivered events", pruned);
    /* more: next turn, after ingest */
    housekeep_prune_arm(hk, pruned == HOUSEKEEP_PRUNE_BATCH);
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
