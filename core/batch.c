/* batch.c -- batch windows: items go to the store's batch_items in the
 * event's own write; a timer closes each window at its end (or
 * batch_item_added at max_batch) into one delivery created in the same group that marks the
 * items as sent. Which windows are due and when the next one ends are one
 * asynchronous read (store_read_batch_due), answered from the loop; one
 * such look is in flight at a time (a timer or batch_start that comes
 * meanwhile looks again once it is answered), so two looks never overlap
 * and close a window twice. After a look closed windows, another reads
 * when the next one ends (the first answer still counts the closed ones).
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "batch.h"
#include "config.h"
#include "deliver.h"
#include "log.h"
#include "rules.h"
#include "store.h"
#include "util.h"

/* A look in flight; batch_free detaches it (b = NULL). */
struct batch_look {
    struct batch *b;
    int64_t now;     /* Unix ms the windows are due at */
    int after_close; /* made because the last look closed windows */
};

struct batch {
    struct batch_deps deps;
    struct event *timer;
    int64_t armed_at;        /* Unix ms the timer fires at, INT64_MAX when idle */
    int close_pending;       /* a commit callback watches the group closing windows */
    int64_t closed_to;       /* Unix ms: every window ending by then was closed (issue 18) */
    struct batch_look *look; /* the look in flight, or NULL */
    int again;               /* a look was asked for while it was in flight */
};

int64_t batch_now(const struct batch *b) {
    int64_t now = util_now_ms();
    /* After the wall clock stepped back, a new item goes into the window
     * holding closed_to (still open: it ends after it), not into one that
     * was already sent: each window closes once. */
    return b && b->closed_to > now ? b->closed_to : now;
}

int64_t batch_window_start(int64_t now, int64_t window_ms) {
    int64_t k = now / window_ms;
    if (now < 0 && now % window_ms)
        k--;
    return k * window_ms;
}

static void on_closed_committed(void *arg, int ok) {
    struct batch *b = arg;

    b->close_pending = 0;
    if (!ok) {
        /* The items are still open in the store: try again shortly. */
        log_msg(LOG_WARN, "batch: closing windows was not committed; trying again");
        batch_start(b);
    }
}

/* Arms the timer for at (Unix ms) unless it already fires earlier. */
static void arm(struct batch *b, int64_t at) {
    int64_t now = util_now_ms(), delay;
    struct timeval tv;

    if (at >= b->armed_at)
        return;
    delay = at > now ? at - now : 0;
    tv.tv_sec = (time_t)(delay / 1000);
    tv.tv_usec = (suseconds_t)((delay % 1000) * 1000);
    b->armed_at = at;
    evtimer_add(b->timer, &tv);
}

/* Closes one window into a delivery in the open group. */
static int close_window(struct batch *b, const struct store_batch_window *w, const char *why) {
    const struct config *cfg = rules_config(*b->deps.rules);
    const struct config_endpoint *ep = config_endpoint_by_name(cfg, w->endpoint);
    const char *status = "pending";
    int64_t next_at = util_now_ms();
    size_t count = 0;
    char err[256];

    if (!ep) {
        /* Removed by a reload while its window was open: keep the batch
         * visible (held) rather than dropping acknowledged events. */
        log_msg(LOG_WARN, "batch: endpoint '%s' is no longer configured; its batch is held",
                w->endpoint);
        status = "held";
    } else {
        if (!ep->enabled)
            status = "held";
        if (ep->nretry)
            next_at += ep->retry_ms[0];
    }
    if (store_batch_close(b->deps.store, w, status, next_at, &count, err, sizeof err) < 0) {
        log_msg(LOG_ERROR, "batch: closing %s window %lld failed: %s", w->endpoint,
                (long long)w->window_start, err);
        return -1;
    }
    if (count) {
        log_msg(LOG_DEBUG, "batch: window of %s closed (%s): %zu events", w->endpoint, why, count);
        /* claimed once the group is durable */
        deliver_watch_endpoint(b->deps.deliver, w->endpoint);
        if (!b->close_pending && store_on_commit(b->deps.store, on_closed_committed, b) == 0)
            b->close_pending = 1;
    }
    return 0;
}

static void look(struct batch *b, int after_close);

/* A look's answer: closes the windows due at its time, then arms the timer
 * for the next end (looking again first when it closed any). */
static void on_due(void *arg, const struct store_result *r) {
    struct batch_look *lk = arg;
    struct batch *b = lk->b;
    int64_t now = lk->now, next = r->next_due;
    int after_close = lk->after_close;
    size_t closed = 0;

    free(lk);
    if (!b)
        return; /* batch_free ran: the windows are closed by the next run */
    b->look = NULL;
    if (r->status < 0) {
        log_msg(LOG_ERROR, "batch: %s", r->err);
        arm(b, util_now_ms() + 1000);
    } else {
        for (; closed < r->n; closed++)
            if (close_window(b, &r->windows[closed], "window end") < 0)
                break;
        if (now > b->closed_to)
            b->closed_to = now;
        if (closed < r->n || next < 0 || (closed && after_close))
            arm(b, util_now_ms() + 1000); /* a failed close, or windows found open again */
        else if (!closed && next != INT64_MAX)
            arm(b, next > now ? next : now + 1000); /* a window left open: a failed close */
    }
    if (b->again || (r->status >= 0 && closed && closed == r->n && !after_close)) {
        b->again = 0;
        look(b, closed > 0); /* the next end, as the closes left it */
    }
}

/* Reads the due windows and the next end, unless a look is in flight
 * (then it looks again once answered). */
static void look(struct batch *b, int after_close) {
    struct batch_look *lk;

    if (b->look) {
        b->again = 1;
        return;
    }
    if (!(lk = malloc(sizeof *lk))) {
        arm(b, util_now_ms() + 1000);
        return;
    }
    lk->b = b;
    lk->now = util_now_ms();
    lk->after_close = after_close;
    if (store_read_batch_due(b->deps.store, lk->now, on_due, lk) < 0) {
        free(lk);
        log_msg(LOG_ERROR, "batch: out of memory reading due windows; trying again");
        arm(b, util_now_ms() + 1000);
        return;
    }
    b->look = lk;
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    struct batch *b = arg;

    UNUSED(fd);
    UNUSED(what);
    b->armed_at = INT64_MAX;
    look(b, 0);
}

struct batch *batch_new(const struct batch_deps *deps) {
    struct batch *b = calloc(1, sizeof *b);

    if (!b)
        return NULL;
    b->deps = *deps;
    b->armed_at = INT64_MAX;
    b->timer = evtimer_new(deps->base, on_timer, b);
    if (!b->timer) {
        free(b);
        return NULL;
    }
    return b;
}

void batch_free(struct batch *b) {
    if (!b)
        return;
    if (b->look)
        b->look->b = NULL; /* its answer finds no batcher */
    event_free(b->timer);
    free(b);
}

void batch_start(struct batch *b) {
    look(b, 0);
}

int batch_item_added(struct batch *b, const struct config_endpoint *ep,
                     const struct store_batch_item *it, char *err, size_t errlen) {
    struct store_batch_window w = {.endpoint = (char *)it->endpoint,
                                   .window_start = it->window_start,
                                   .window_ms = it->window_ms};

    if (ep && ep->max_batch > 0 && it->count >= ep->max_batch) {
        if (close_window(b, &w, "max_batch") < 0) {
            snprintf(err, errlen, "closing a full batch of '%s' failed", it->endpoint);
            return -1;
        }
        return 0;
    }
    arm(b, it->window_start + it->window_ms);
    return 0;
}
