/* deliver.h -- outbound delivery: libcurl multi driven by the libevent loop
 * (curl_multi_socket_action, as in curl's hiperfifo example), signing,
 * retries per schedule, every attempt stored.
 * A delivery has one owner at a time: store (pending row) -> this module
 * once claimed (in flight, via CURLOPT_PRIVATE) -> store again when its
 * attempt is recorded. Nothing is dropped: a delivery whose outcome could
 * not be stored is claimed again when its lease ends.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_DELIVER_H
#define CORE_DELIVER_H

#include <stdint.h>

#include "config.h"
#include "store.h"

struct event_base;
struct deliver;

/* Creates the delivery engine on base, reading and writing s (borrowed,
 * must outlive it). Nothing is sent until deliver_set_config. Returns new
 * or NULL with a reason in err. */
struct deliver *deliver_new(struct event_base *base, struct store *s, char *err, size_t errlen);

/* Uses cfg's endpoints, allow_private and user agent from now on. cfg is
 * borrowed and must stay valid until the next call or deliver_free; in-flight
 * transfers look their endpoint up by name when they complete, so a reload
 * that removes an endpoint leaves them safe. */
void deliver_set_config(struct deliver *d, const struct config *cfg);

/* New deliveries may be due: claim and start what is due, soon (from the
 * loop, not inside this call). Call after the group holding them committed. */
void deliver_kick(struct deliver *d);

/* Number of transfers in flight. */
int deliver_inflight(const struct deliver *d);

/* Stops claiming new work; transfers in flight go on. When none is left,
 * or after grace_ms, the rest are aborted (their leases end, so they are
 * claimed again after a restart) and done(arg) runs from the loop. */
void deliver_shutdown(struct deliver *d, int64_t grace_ms, void (*done)(void *arg), void *arg);

/* Aborts every transfer and frees; NULL is a no-op. */
void deliver_free(struct deliver *d);

#endif
