/* housekeep.h -- background jobs on the loop, each a step per loop turn at
 * the lowest priority (after every ready request): the retention sweep
 * (delivered events older than `retention` are deleted, a batch per step)
 * and the recovery sweep (events committed but never routed, after a crash
 * or a failed group, are handed to the router again, a batch per step).
 * Only the loop thread touches a struct housekeep.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_HOUSEKEEP_H
#define CORE_HOUSEKEEP_H

#include <stddef.h>

#include "config.h"
#include "store.h"

struct event_base;
struct housekeep;

/* Routes one stored event again (borrowed, valid during the call only),
 * writing its outcome into the open group. */
typedef void (*housekeep_route_fn)(void *arg, const struct store_event_row *row);

/* The jobs on base over s (borrowed, must outlive it); recovered events go
 * to route(arg, row). Nothing runs until housekeep_set_config or
 * housekeep_recover. Returns new, or NULL with a reason in err. */
struct housekeep *housekeep_new(struct event_base *base, struct store *s, housekeep_route_fn route,
                                void *arg, char *err, size_t errlen);

/* Uses cfg's retention from now on (borrowed until the next call or
 * housekeep_free); the first call starts the retention sweep (a step a
 * second, or every turn while a step finds a full batch). */
void housekeep_set_config(struct housekeep *hk, const struct config *cfg);

/* Routes every stored event still "received", in batches, from the loop
 * (soon, not inside this call). Safe to call again: the store's view
 * includes the open group, so nothing is routed twice. */
void housekeep_recover(struct housekeep *hk);

/* Stops the retention sweep (at shutdown). */
void housekeep_stop(struct housekeep *hk);

/* Frees; NULL is a no-op. */
void housekeep_free(struct housekeep *hk);

#endif
