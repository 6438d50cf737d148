/* batch.h -- batch windows (SPEC section 6): sends made with batch() are
 * collected per endpoint into clock-aligned windows [k*W, (k+1)*W) of Unix
 * time (UTC) and each window, when it closes, becomes one delivery
 * {"type":"batch","window_start","window_end","count","events":[...]}.
 * Open windows live in the store (items written with their event), so a
 * crash neither loses a batched event nor sends one in two batches; one
 * libevent timer waits for the earliest window end.
 * Invariant: the timer is armed whenever the store holds an open window.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_BATCH_H
#define CORE_BATCH_H

#include <stddef.h>
#include <stdint.h>

struct batch;
struct deliver;
struct event_base;
struct rules;
struct store;
struct store_batch_item;

/* What batching works with; all borrowed, and must outlive it. */
struct batch_deps {
    struct event_base *base;
    struct store *store;
    struct deliver *deliver;
    struct rules *const *rules; /* the current generation (swapped whole on reload) */
};
struct config_endpoint;

/* A new batcher working with deps (copied). NULL when out
 * of memory. */
struct batch *batch_new(const struct batch_deps *deps);
void batch_free(struct batch *b);

/* The time (Unix ms) a new item is batched at: now, or when the wall clock
 * has stepped back since windows were closed, the latest close (so a window
 * already sent is never reopened). b may be NULL (now). */
int64_t batch_now(const struct batch *b);

/* The start (Unix ms) of the window of length window_ms holding now. */
int64_t batch_window_start(int64_t now, int64_t window_ms);

/* After routing wrote item it (with its event, struct store_plan) into ep's
 * window in the open group: closes the window at once into a delivery when
 * it->count reached ep->max_batch, else makes sure the timer fires at the
 * window's end. ep may be NULL (no longer configured: the timer only).
 * Returns 0, or -1 with a reason (the group has failed). */
int batch_item_added(struct batch *b, const struct config_endpoint *ep,
                     const struct store_batch_item *it, char *err, size_t errlen);

/* Closes every window already past its end (e.g. after a restart) soon,
 * from the loop, and arms the timer for the rest. */
void batch_start(struct batch *b);

#endif
