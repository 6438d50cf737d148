/* deliver.h -- outbound delivery: transport use and scheduling. Each
 * claimed delivery is signed and sent through the shared HTTP client
 * (httpc.h), retried per schedule, every attempt stored; endpoint state
 * (disabled, the 410 rule) is health.h's. deliver.c holds the transfers
 * and outcomes, deliver_sched.c the scheduler (deliver_int.h is private).
 * A delivery has one owner at a time: store (pending row) -> this module
 * once claimed (in flight, via its transfer's callback argument) -> store
 * again when its attempt is recorded. Nothing is dropped: a delivery whose
 * outcome could not be stored is claimed again when its lease ends.
 *
 * The scheduler: isolation per endpoint, by construction. Every endpoint
 * has a queue of its own and a bounded share of what is claimed into
 * memory (its window: its `concurrency` slots plus as many waiting, at most
 * 64; a rate-limited one at most 10 s of its rate; an ordered one its head
 * and 3 read ahead). Claims are made per endpoint through the store's
 * (endpoint, next_at) index, never as one global scan, so no endpoint's
 * backlog, failures, slowness, hang, rate limit or ordering takes a slot,
 * a claim or memory from another. An endpoint is looked at (claim into its
 * window, start what slots and tokens allow, arm its timer) on a kick (new
 * rows committed, an endpoint enabled, a reload), when one of its
 * transfers ends, and when its own timer fires: at its next due row, its
 * next token, or its ordered head's retry. Each waiting row starts within
 * one slot's round trip (one timeout at worst) or 10 s of tokens, inside its
 * lease (longest timeout + 60 s, renewed at start if half used); an ordered
 * endpoint whose head waits for a retry gives its read-ahead back, so a
 * blocked endpoint holds no lease at all.
 * Invariant: while a delivery is due and its endpoint has a free slot (and
 * window room, and a token), a claim or a start happens within one tick.
 * Every path that declines to claim or start either leaves a transfer in
 * flight (its end looks again) or arms the endpoint's timer. A watchdog
 * checks it each second: a breach is logged and repaired, and aborts in
 * builds with WAYBILL_CHECKS (make asan); an endpoint due with a free slot
 * for 10 s is "stuck", which /healthz reports.
 * Reads in flight (issue 15: the store answers from the loop, never inside
 * the call; store.h's store_read_*). A look at an endpoint is one read: an
 * unordered endpoint's claim (its rows, and its next due time read right
 * after the claim, so claiming and then sleeping until the next row costs
 * one round trip), or an ordered endpoint's head together with a claim
 * from it when none is held. An endpoint has at most one such read in
 * flight: a kick, its timer or a completion that comes meanwhile only
 * marks it (ep->again), and the answer looks once more after it has been
 * acted on. The answer re-checks what may have changed since the call:
 * rows of an endpoint disabled, switched off or removed from the config by
 * a reload, or of an engine that is stopping (or freed), are given back
 * (store_delivery_lease, lease 0) in the open group; rows the endpoint
 * holds already (deliver_ep_holds) are not taken twice; an ordered
 * endpoint whose head moved gives its read-ahead back. Shutdown therefore
 * drains: app.c flushes the store until it is idle, which hands over every
 * answer still waiting, and each one releases what it claimed before the
 * last group commits. The watchdog reads too: each tick makes one read (the
 * next due row and the committed head of every endpoint that has a free
 * slot, and the endpoints with pending rows, for discovery) and judges
 * when it is answered, against what the scheduler holds then; a claim of
 * the endpoint in flight counts as a look on its way (like a timer due
 * before the next tick or an active kick), and a tick whose last read is still unanswered,
 * or whose answer came late, judges no one. A lost wake-up is still seen:
 * an endpoint due with a free slot at two answered ticks, with no claim or
 * start between them and no look on its way, aborts a checked build.
 * Several instances on one database (PostgreSQL) keep this shape: the
 * per-endpoint claim becomes UPDATE .. WHERE seq IN (SELECT .. WHERE
 * endpoint = $1 AND status = 'pending' AND next_at <= now() ORDER BY next_at
 * LIMIT $window FOR UPDATE SKIP LOCKED) RETURNING .., so instances share an
 * endpoint's rows without waiting on each other and a dead instance's
 * leases lapse back to due; an endpoint's concurrency is split by a
 * per-endpoint lease count, and an ordered endpoint (or, with per-key
 * ordering, an (endpoint, key) head) is owned by one instance at a time
 * through a lease on its head row, which is what the head lookup reads.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_DELIVER_H
#define CORE_DELIVER_H

#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "store.h"

struct event_base;
struct deliver;
struct health;
struct httpc;

/* Creates the delivery engine on base, reading and writing s, sending
 * through hc and keeping endpoint state in h (all borrowed, must outlive
 * it; it registers h's change hook until deliver_free). Nothing is sent
 * until deliver_set_config. Returns new or NULL with a reason in err. */
struct deliver *deliver_new(struct event_base *base, struct store *s, struct httpc *hc,
                            struct health *h, char *err, size_t errlen);

/* Uses cfg's endpoints from now on (set h's config first: endpoint state
 * compares the old and the new). cfg is borrowed and must stay valid
 * until the next call or deliver_free; in-flight transfers look their
 * endpoint up by name when they complete, so a reload that removes an
 * endpoint leaves them safe. */
void deliver_set_config(struct deliver *d, const struct config *cfg);

/* New deliveries may be due: look soon (from the loop, not inside this
 * call) at the endpoints deliver_watch_endpoint marked whose rows are
 * committed. Call after the group holding them committed. */
void deliver_kick(struct deliver *d);

/* Looks at every endpoint soon, and again once the open group is
 * committed (a reload, an admin action whose rows the caller cannot name). */
void deliver_kick_all(struct deliver *d);

/* Deliveries for endpoint name (of the config, or a subscription's, which
 * the config lookup also finds) were just written in the open group: it
 * gets a queue if it has none, and the first deliver_kick after those rows
 * are committed looks at it. A kick looks only at endpoints so marked, so
 * call this after the rows are written. Endpoints with pending rows and no
 * queue are otherwise found by the watchdog within a second. */
void deliver_watch_endpoint(struct deliver *d, const char *name);

/* Number of transfers in flight. */
int deliver_inflight(const struct deliver *d);

/* What the scheduler holds for one endpoint (the admin API and metrics). */
struct deliver_endpoint_stats {
    int in_memory;         /* claimed: waiting for a slot or token, or in flight */
    int in_flight;         /* transfers in flight */
    int stuck;             /* due with a free slot for 10 s (a bug; /healthz says so) */
    uint64_t lost_wakeups; /* times the watchdog found it idle while due */
};

/* Fills st for endpoint name (zeros when the scheduler has no queue for
 * it). Returns 1 when it has one, else 0. */
int deliver_endpoint_stats(const struct deliver *d, const char *name,
                           struct deliver_endpoint_stats *st);

/* Number of stuck endpoints; their names, comma-separated, into names
 * (len bytes, truncated). */
size_t deliver_stuck(const struct deliver *d, char *names, size_t len);

/* Stops claiming new work; transfers in flight go on. When none is left,
 * or after grace_ms, the rest are aborted (their leases end, so they are
 * claimed again after a restart) and done(arg) runs from the loop. */
void deliver_shutdown(struct deliver *d, int64_t grace_ms, void (*done)(void *arg), void *arg);

/* Aborts every transfer (nothing written: leases lapse) and frees; NULL is
 * a no-op. */
void deliver_free(struct deliver *d);

/* Operational events (waybill.delivery.failed; the endpoint ones are
 * health.h's) go to fn(arg, type, data) from the loop; fn takes the
 * reference to data. NULL fn: dropped. */
typedef void (*deliver_notify_fn)(void *arg, const char *type, json_t *data);
void deliver_set_notify(struct deliver *d, deliver_notify_fn fn, void *arg);

/* Publishes each attempt's outcome to s (borrowed; must outlive d) as an
 * "attempt": {delivery, event, endpoint, type, attempt, at, status_code,
 * error, ms, outcome, next_at}. */
struct stream;
void deliver_set_stream(struct deliver *d, struct stream *s);

/* ---- pure helpers (exposed for the unit tests) ---- */

/* What an HTTP answer means for a delivery (SPEC section 7). */
enum deliver_outcome {
    DELIVER_DELIVERED,   /* a success status */
    DELIVER_RETRY,       /* any other status, or no response: retry per schedule */
    DELIVER_RETRY_AFTER, /* 429 / 503: retry per schedule, honouring Retry-After */
    DELIVER_FAILED,      /* 406: failed now, no retry */
    DELIVER_GONE         /* 410: failed now; the endpoint is to be disabled */
};

/* Classifies status_code (0 = no HTTP response) under an endpoint's success
 * mode: any 2xx, or exactly 200 with CONFIG_SUCCESS_200. 3xx is a failure
 * (redirects are not followed). Can't fail. */
enum deliver_outcome deliver_outcome_classify(int status_code, enum config_success success);

#define DELIVER_RETRY_AFTER_MAX_MS (24 * 3600 * 1000LL)

/* Parses a Retry-After value, delta seconds ("120") or an HTTP date
 * ("Wed, 21 Oct 2015 07:28:00 GMT"), into a delay in ms from now_ms
 * (Unix ms): 0 for a date in the past, capped at DELIVER_RETRY_AFTER_MAX_MS.
 * Returns -1 when value is NULL, empty or not one of the two forms. */
int64_t deliver_retry_after_parse(const char *value, int64_t now_ms);

/* The step after an attempt made at schedule position pos of retry_ms
 * (nretry delays, [0] before the first attempt). Returns pos + 1 and sets
 * *delay_ms to retry_ms[pos + 1], with +-10% uniform jitter when jitter is
 * non-zero (rnd is a uniform 32-bit random number; rnd = 2^31 gives the
 * exact delay); returns -1 (*delay_ms untouched) when the schedule is
 * exhausted. */
int deliver_schedule_next(const int64_t *retry_ms, size_t nretry, int pos, int jitter, uint32_t rnd,
                          int64_t *delay_ms);

#endif
