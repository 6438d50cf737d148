/* metrics.h -- counters and histograms for GET /metrics (Prometheus text
 * exposition format 0.0.4). Process-wide state, touched by the loop thread
 * only; every recording call is O(series) and never fails loudly (a series
 * that cannot be allocated is simply not counted).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_METRICS_H
#define CORE_METRICS_H

#include <stdint.h>

#include "util.h"

/* An inbound request stored as a new event from source. */
void metrics_event_received(const char *source);

/* An inbound request answered with an error (413 "too_large", a Shiptify
 * "replay", "signature", ...); source is NULL when no source matched. */
void metrics_event_rejected(const char *source, const char *reason);

/* An inbound request answered 200 as a duplicate of a stored event: not a
 * rejection, not a new event. */
void metrics_event_duplicate(const char *source);

/* One delivery attempt to endpoint (of an event of type; may be NULL)
 * stored with the delivery's new status ("delivered", "failed", "pending" =
 * a retry is scheduled, "held"); latency_ms < 0 when no request was made. */
void metrics_attempt(const char *endpoint, const char *type, const char *status,
                     int64_t latency_ms);

/* A routing that ended in rule_error. */
/* A delivery to an endpoint ordered by key whose event had no key. */
void metrics_key_missing(const char *endpoint);

void metrics_rule_error(void);

/* One group commit that took ms. */
void metrics_store_commit(int64_t ms);

/* Frames (pages) a commit appended to the store's write-ahead log. */
void metrics_store_wal_frames(int64_t frames);

/* A claim took over a delivery of endpoint whose lease another instance
 * let expire (a shared store): it may be sent twice. */
void metrics_lease_takeover(const char *endpoint);

/* Appends v to b as a label value: backslash, quote and newline escaped.
 * Returns 0 or -1 (OOM). */
int metrics_escape(struct util_buf *b, const char *v);

/* Appends every metric to b in the text format. Returns 0 or -1 (OOM). */
int metrics_render(struct util_buf *b);

/* Every counter summed over its labels, for the dashboard's series: events
 * received, deliveries delivered and failed, retries scheduled, attempts
 * made, and the attempt latency histogram (buckets[i] counts attempts of at
 * most bounds_ms[i]; bounds_ms is static). */
#define METRICS_LATENCY_NB 11
struct metrics_totals {
    double received, delivered, failed, retries;
    uint64_t attempts, buckets[METRICS_LATENCY_NB];
    const int64_t *bounds_ms;
};
void metrics_totals(struct metrics_totals *t);

/* Forgets everything (for tests). */
void metrics_reset(void);

#endif
