/* batch.h -- batch windows (SPEC section 6): sends made with batch() are
 * collected per endpoint into clock-aligned windows [k*W, (k+1)*W) of Unix
 * time (UTC) and each window, when it closes, becomes one delivery
 * {"type":"batch","window_start","window_end","count","events":[...]}.
 * Open windows live in the store (written in the routing group), so a
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

/* The start (Unix ms) of the window of length window_ms holding now. */
int64_t batch_window_start(int64_t now, int64_t window_ms);

/* Adds one batched payload (JSON text, borrowed) of event_id to ep's
 * window of length window_ms holding now, in the store's open group. A
 * window that reaches ep->max_batch is closed at once into a delivery.
 * Returns 0, or -1 with a reason (the group has failed). */
int batch_add(struct batch *b, const struct config_endpoint *ep, int64_t window_ms,
              const char *event_id, const char *payload, size_t len, int64_t now, char *err,
              size_t errlen);

/* Closes every window already past its end (e.g. after a restart) soon,
 * from the loop, and arms the timer for the rest. */
void batch_start(struct batch *b);

#endif
