/* store.h -- durable storage of events, deliveries and attempts.
 * The interface is backend-neutral: SQLite (WAL) is the embedded default and
 * a PostgreSQL backend can sit behind the same calls (claims with a lease,
 * unique keys for dedupe).
 *
 * Group commit: every write made while the loop runs goes into one open
 * transaction (the "group"). The group is committed once per loop turn, from
 * a lowest-priority event that runs after every ready request of that turn
 * was handled; then the callbacks registered with store_on_commit run.
 * Invariant: nothing is reported durable (no 200 to a carrier, no delivery
 * started from a new row) before the commit callback said ok.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_H
#define CORE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "util.h"

struct event_base;
struct store;

/* Opens the store named by url: "sqlite:PATH[?sync=normal|full]" (PATH
 * relative to base_dir). Creates the schema when new. For SQLite, which one
 * process owns, leases left by a crashed run are released at open.
 * Returns a new store, or NULL with a reason in err. */
struct store *store_open(struct event_base *base, const char *url, const char *base_dir,
                         char *err, size_t errlen);

/* Commits the open group (running its callbacks) and closes; NULL is a no-op. */
void store_free(struct store *s);

/* ---- group commit ---- */

/* ok is 1 when the group committed, 0 when it failed and was rolled back. */
typedef void (*store_commit_fn)(void *arg, int ok);

/* Runs fn(arg, ok) once every write made so far is committed or rolled
 * back. Never calls fn from inside this call. Returns 0, or -1 when out of
 * memory (fn will not be called). */
int store_on_commit(struct store *s, store_commit_fn fn, void *arg);

/* Commits the open group now and runs its callbacks. Returns 0 or -1. */
int store_flush(struct store *s);

/* 1 when the store answers a trivial query, else 0 (for /healthz). */
int store_ping(struct store *s);

/* ---- events ---- */

/* An event to insert; all borrowed. id is waybill's own (util_id_new "evt_"). */
struct store_event {
    const char *id;
    const char *source;
    const char *source_id;     /* dedupe key within source; never NULL */
    const char *type;
    const char *created_at;    /* may be NULL */
    int64_t received_at;       /* Unix ms */
    const char *raw;
    size_t raw_len;
    const char *headers_json;
    const char *data_json;
    const char *status;        /* "received", or "rule_error" when the adapter failed */
    const char *error;         /* may be NULL */
};

#define STORE_DUP 1

/* Inserts ev into the open group. Returns 0; STORE_DUP (nothing written)
 * with the first copy's id copied into dup_id when (source, source_id) is
 * already stored, even if only in the open group; -1 with a reason in err
 * on a store error. */
int store_event_put(struct store *s, const struct store_event *ev, char *dup_id, size_t dup_len,
                    char *err, size_t errlen);

/* A delivery the routing of an event created; all borrowed. */
struct store_delivery_new {
    const char *endpoint;
    const char *event_type;
    const char *payload;
    size_t payload_len;
    const char *content_type;
    const char *headers_json;  /* may be NULL */
    const char *status;        /* "pending", or "held" for a disabled endpoint */
    int64_t next_at;           /* Unix ms of the first attempt */
};

/* Records the outcome of routing event_id in the open group: inserts the n
 * deliveries (ids made here) and sets the event's status ("routed",
 * "unrouted", "rule_error") and error (NULL to clear). Returns 0 or -1. */
int store_event_routed(struct store *s, const char *event_id, const char *status,
                       const char *error, const struct store_delivery_new *d, size_t n,
                       char *err, size_t errlen);

/* A stored event; every pointer is owned by the row. */
struct store_event_row {
    int64_t seq;
    char *id, *source, *source_id, *type, *created_at, *status, *error;
    char *headers_json, *data_json;
    char *raw;
    size_t raw_len;
    int64_t received_at;
};

/* Reads up to max events with status "received" and seq > after_seq, oldest
 * first (events committed but not yet routed, e.g. after a crash). Events
 * the open group inserted are left out: their ingest routes them once the
 * group commits. *rows is
 * new (free with store_event_rows_free). Returns 0 or -1. */
int store_events_unrouted(struct store *s, int64_t after_seq, size_t max,
                          struct store_event_row **rows, size_t *n, char *err, size_t errlen);

void store_event_rows_free(struct store_event_row *rows, size_t n);

/* The event as the admin API shows it (SPEC section 8): {id, source,
 * source_id, type, status, received_at, created_at, data, error,
 * deliveries:[{id, endpoint, status, batch, attempts:[{n, at, status_code,
 * latency_ms, error, response}]}]}; an event waiting in an open batch
 * window also lists {id: null, endpoint, status: "batching", batch: true,
 * window_end, attempts: []} there. Returns a new json_t; NULL with err
 * empty when id is unknown, NULL with a reason on a store error. */
json_t *store_event_json(struct store *s, const char *id, char *err, size_t errlen);

/* ---- deliveries ---- */

/* A claimed delivery; every pointer is owned by the row. */
struct store_delivery {
    int64_t seq;
    char id[UTIL_ID_MAX];
    char event_id[UTIL_ID_MAX];
    char *endpoint, *event_type, *content_type, *headers_json;
    char *payload;
    size_t payload_len;
    int attempts;        /* attempts made so far; the next one is attempts + 1 */
    int schedule_pos;    /* index in the retry schedule of the next attempt */
    int64_t next_at;
    int64_t created_at;
};

/* Claims up to max pending deliveries due at or before now, earliest first,
 * leasing each for lease_ms (a claimed delivery is not claimed again until
 * its outcome is stored or the lease ends). Found by index, never by a scan.
 * *out is new (free with store_deliveries_free). Returns 0 or -1. */
int store_deliveries_claim(struct store *s, int64_t now, int64_t lease_ms, size_t max,
                           struct store_delivery **out, size_t *n, char *err, size_t errlen);

void store_deliveries_free(struct store_delivery *d, size_t n);

/* Unix ms of the earliest claimable pending delivery, INT64_MAX when none. */
int64_t store_deliveries_next_due(struct store *s);

/* One attempt at a delivery; all borrowed. */
struct store_attempt {
    int n;                 /* 1-based, keeps counting across manual retries */
    int64_t at;            /* Unix ms the request started */
    int status_code;       /* 0 when there was no HTTP response */
    int64_t latency_ms;
    const char *error;     /* NULL on success */
    const char *response;  /* first bytes of the response body (<= 1 KiB) */
    size_t response_len;
};

/* Stores the attempt and the delivery's new state in the open group and
 * releases its lease: status "pending" (next attempt at next_at, at
 * schedule_pos), "delivered", "failed" or "held". Returns 0 or -1. */
int store_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                      const char *status, int64_t next_at, int schedule_pos, char *err,
                      size_t errlen);

/* Delivery counts by status, for /api/status and metrics. Returns 0 or -1. */
struct store_counts {
    int64_t pending, held, failed, delivered;
};
int store_delivery_counts(struct store *s, struct store_counts *c);

/* ---- batch windows (SPEC section 6) ----
 * An open window is the set of batched payloads stored for (endpoint,
 * window_start, window_ms); window_start is a multiple of window_ms (Unix
 * ms, UTC). Items are written in the routing group, so a crash never loses
 * a batched event; a window is closed into one delivery in one group. */

/* Adds one payload (JSON text, borrowed) of event_id to the window, in the
 * open group; *count is the number of open items in that window after the
 * add. Returns 0 or -1. */
int store_batch_add(struct store *s, const char *endpoint, int64_t window_start, int64_t window_ms,
                    const char *event_id, const char *payload, size_t len, int64_t *count,
                    char *err, size_t errlen);

/* Unix ms at which the earliest open window ends, INT64_MAX when none. */
int64_t store_batch_next_close(struct store *s);

struct store_batch_window {
    char *endpoint; /* owned */
    int64_t window_start, window_ms;
};

/* Lists the open windows that ended at or before now. *out is new (free
 * with store_batch_windows_free). Returns 0 or -1. */
int store_batch_due(struct store *s, int64_t now, struct store_batch_window **out, size_t *n,
                    char *err, size_t errlen);
void store_batch_windows_free(struct store_batch_window *w, size_t n);

/* Closes the window's open items into one delivery (event_type "batch",
 * batch = 1, status "pending" or "held", first attempt at next_at) whose
 * payload is {"type":"batch","window_start","window_end","count","events"},
 * in the open group. *count is the number of items sent (0: the window had
 * none, nothing is written). Returns 0 or -1. */
int store_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                      int64_t next_at, size_t *count, char *err, size_t errlen);

#endif
