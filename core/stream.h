/* stream.h -- the live feed behind GET /api/stream (waybill tail, waybill
 * listen): what happens, as it happens, handed to whoever watches. The
 * pipeline publishes an event once it is stored and an attempt once its
 * outcome is recorded; the admin API's SSE connections watch. Nothing is
 * kept: a watcher sees what is published while it watches.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STREAM_H
#define CORE_STREAM_H

#include <stdint.h>

#include <jansson.h>

struct stream;

/* One published message: kind ("event", "attempt"), its sequence number
 * (1, 2, ... per gateway run), the message and its compact JSON text (both
 * borrowed for the call). */
typedef void (*stream_fn)(void *arg, const char *kind, uint64_t seq, const json_t *msg,
                          const char *text);

/* Returns new, NULL when out of memory. */
struct stream *stream_new(void);

/* Frees s; NULL is a no-op. Watchers are dropped without a call. */
void stream_free(struct stream *s);

/* fn(arg, ...) is called for every message published from now on, until
 * stream_unwatch(s, arg). Returns 0, or -1 when out of memory. */
int stream_watch(struct stream *s, stream_fn fn, void *arg);

/* Stops the calls to arg's watcher; safe from inside one of them. */
void stream_unwatch(struct stream *s, void *arg);

/* 1 when anyone watches (publishers build nothing otherwise); 0 for NULL. */
int stream_watched(const struct stream *s);

/* Hands msg (stolen; NULL is ignored) to every watcher. s NULL: dropped. */
void stream_publish(struct stream *s, const char *kind, json_t *msg);

#endif
