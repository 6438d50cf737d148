/* store.h -- durable storage of events, deliveries and attempts.
 * The interface is backend-neutral: one engine (store_bx*.c) runs every
 * call over a backend (store_backend.h): SQLite (WAL), the embedded
 * default, or PostgreSQL (several instances on one database), chosen by
 * the store URL.
 *
 * The operations. Each is described once below, under its name (event_put,
 * endpoint_claim_due, batch_due, ...): what it writes or reads and what it
 * answers. store.h offers it as an asynchronous call (store_event_put_done,
 * store_read_claim_due, store_read_batch_due, ...: answered from the loop,
 * never inside the call), each backend implements it as an operation of
 * store_backend.h, and on SQLite it is the engine's synchronous call of the
 * same name (store_sqlite_event_put, store_sqlite_int.h). The loop's few
 * synchronous writes (store_attempt_put, store_delivery_lease,
 * store_batch_close) and the reads of the start (store_subs_load,
 * store_endpoint_states) are calls here too.
 *
 * Group commit: every write made while the loop runs goes into one open
 * transaction (the "group"). The group is committed from a lowest-priority
 * event that runs after every ready request of a loop turn was handled;
 * with sync=full (the default) a helper thread then fsyncs the WAL while the
 * loop goes on (and the next group fills; it commits when that sync is
 * done), and the callbacks registered with store_on_commit run once the
 * group is on disk. Invariant: nothing is reported durable (no 200 to a
 * carrier, no reply to an admin action) before the commit callback said
 * ok, and ok means the group survives a crash of the process or of the
 * machine (sync=normal: of the process only). New deliveries become
 * claimable only then too (the committed delivery seq advances with the
 * sync), so nothing is sent that a power cut could take back. Attempt
 * outcomes may be acted on as soon as their group is committed
 * (store_on_written).
 *
 * One trip per event: an event and what routing it decided (its status,
 * deliveries and batch items: a struct store_plan) go in with one call,
 * store_event_put_done, so they commit together or not at all.
 *
 * Reads return plain rows (structs whose strings the row owns, freed by
 * the matching _free); rendering them, e.g. the admin API's JSON, is the
 * caller's. The store's files are listed in store_int.h, the SQLite
 * engine's in store_sqlite_int.h.
 *
 * What a read sees (SQLite; PostgreSQL: store_backend.h). The loop's own reads (dedupe, claims,
 * routing, the backlog) see the open group: they decide what goes into it. The admin API's reads --
 * pages of events and deliveries, the event detail, find, delivery counts, open batch windows
 * (events_page, deliveries_page, event_detail, events_find, delivery_counts, batch_windows) -- see
 * committed groups only: they run on a second, read-only connection to the same file, and in WAL
 * mode a reader sees the transactions whose COMMIT was done when its read
 * began, never the open group. Chosen over answering reads only between
 * groups: with sync=full a group is almost always open (the next one fills
 * while the last one syncs), so reads would wait a group; the second
 * connection costs ingest nothing (its statements are its own; only admin
 * requests use it). "Committed" is COMMIT done, not synced: with sync=full
 * an admin read may show a group whose fdatasync is still running (a few
 * ms). It survives a crash of the process; only a power cut in those ms
 * could take back a row an admin saw. Waiting for the sync would mean
 * holding a snapshot from one sync to the next (sqlite3_snapshot_*), which
 * also holds back the checkpoints that keep the WAL short; carriers' 200s
 * and deliveries, which are what must never be taken back, already wait
 * for the sync. Read on the loop's connection: endpoint state
 * (store_endpoint_states) and subscriptions, which health and the config
 * read for their own writes, and an endpoint's queue (endpoint_queue)
 * and blocked keys (endpoint_blocked), which the admin API shows
 * beside the scheduler's own state (in flight, in memory: the loop's view):
 * from two views, due + in memory would not add up while a claim or an
 * outcome waits in the open group, nor the blocked count and the keys
 * listed with it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_H
#define CORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct event_base;
struct store;

/* Opens the store named by url: "sqlite:PATH[?sync=normal|full]" (PATH
 * relative to base_dir). Creates the schema when new. For SQLite, which one
 * process owns, leases left by a crashed run are released at open.
 * "postgres://" and "postgresql://" URLs: the schema step of store_pg.h,
 * then the engine over the PostgreSQL backend (store_backend.h), its
 * connections up before this returns (the loop runs inside the call
 * until they are; several instances share the database: leases held by
 * another, or a dead, instance are left to expire).
 * Returns a new store, or NULL with a reason in err. */
struct store *store_open(struct event_base *base, const char *url, const char *base_dir, char *err,
                         size_t errlen);

/* Commits the open group (running its callbacks) and closes; NULL is a no-op. */
void store_free(struct store *s);

/* ---- group commit ---- */

/* ok is 1 when the group committed, 0 when it failed and was rolled back. */
typedef void (*store_commit_fn)(void *arg, int ok);

/* Runs fn(arg, ok) once every write made so far is committed or rolled
 * back. Never calls fn from inside this call. Returns 0, or -1 when out of
 * memory (fn will not be called). */
int store_on_commit(struct store *s, store_commit_fn fn, void *arg);

/* Like store_on_commit, but fn runs as soon as the group is committed or
 * rolled back, before the WAL sync: its writes survive a crash of the
 * process, not yet a power cut; changed rows (an outcome, a retry) are
 * visible to claims, new deliveries not yet (they wait for the sync). For
 * work that only needs the rows in the store, never for telling a client
 * its data is safe. Same errors as store_on_commit. */
int store_on_written(struct store *s, store_commit_fn fn, void *arg);

/* Commits the open group now and runs its callbacks. Returns 0 or -1. */
int store_flush(struct store *s);

/* 1 when no group is open and no commit callback is waiting. Shutdown
 * flushes until the store is idle while every module that registers
 * callbacks is still alive. */
int store_idle(const struct store *s);

/* running 1: the event loop is about to run (app_run, before dispatch);
 * 0: it returned. The store runs the loop itself only outside it: for the
 * reads of the start and the drain of store_flush after the loop ended. */
void store_loop_running(struct store *s, int running);

/* 1 when other processes write the store too (PostgreSQL: several
 * instances on one database): rows appear that this process did not
 * insert and no kick announces; the scheduler's watchdog finds them. 0 for
 * SQLite (one process per store). */
int store_shared(const struct store *s);

/* ping: 1 when the store answers a trivial query, else 0 (for /healthz). */

/* 0 when the disk is full (no group is begun until a checkpoint truncates
 * the WAL, tried once a second) or the last group that wrote failed (a
 * lock, an I/O error) less than 5 s ago, else 1 (for /healthz: reads may
 * work while nothing can be written). */
int store_writable(const struct store *s);

/* ---- events ---- */

/* An event to insert; all borrowed. id is waybill's own (util_id_new "evt_"). */
struct store_event {
    const char *id;
    const char *source;
    const char *source_id; /* dedupe key within source; never NULL */
    const char *type;
    const char *created_at; /* may be NULL */
    int64_t received_at;    /* Unix ms */
    const char *raw;
    size_t raw_len;
    const char *headers_json;
    const char *data_json;
    const char *shipment_json; /* the adapter's shipment (SPEC 4), may be NULL */
};

/* A delivery the routing of an event created; all borrowed. */
struct store_delivery_new {
    const char *endpoint;
    const char *event_type;
    const char *payload;
    size_t payload_len;
    const char *content_type;
    const char *headers_json; /* may be NULL */
    const char *status;       /* "pending", or "held" for a disabled endpoint */
    int64_t next_at;          /* Unix ms of the first attempt */
    const char *okey;         /* order key (endpoint ordered by key), or NULL: FIFO per
                                 (endpoint, okey), one in flight at a time */
    size_t match;             /* the plan's matches[match] sent it (when < nmatches) */
};

/* A payload routing put into a batch window (SPEC section 6): endpoint's
 * window [window_start, window_start + window_ms); strings borrowed. */
struct store_batch_item {
    const char *endpoint;
    int64_t window_start, window_ms;
    const char *payload; /* JSON text */
    size_t len;
    int64_t count; /* set by the store: the window's open items after the add */
    size_t match;  /* the plan's matches[match] sent it (when < nmatches) */
};

/* A rule handler that matched the event; strings borrowed. */
struct store_match {
    const char *where;   /* "file:line" of its on() */
    const char *pattern; /* its pattern */
    int failed;          /* it failed: it sent nothing */
};

/* What routing an event decided, written with it in one call. */
struct store_plan {
    const char *status; /* "routed", "unrouted" or "rule_error" */
    const char *error;  /* NULL, or why (rule_error) */
    const struct store_delivery_new *deliveries;
    size_t ndeliveries;
    struct store_batch_item *items; /* their count fields are filled in */
    size_t nitems;
    /* The handlers that matched, recorded with the event (events.matched:
     * JSON [{"rule","on","sent":[{"endpoint","delivery"|"batch"}],
     * "failed"?}]) when by_rules is set ([] when none matched); without
     * by_rules (not routed by rules) the event records none (NULL). */
    int by_rules;
    const struct store_match *matches;
    size_t nmatches;
    /* event_routed only: a first routing (a recovery, not a replay):
     * written only while the event is still "received". Several instances
     * may recover one event at once; the first to commit routes it, the
     * others write nothing (STORE_ROUTED_ALREADY) instead of routing it
     * again as a replay. */
    int first_only;
};

#define STORE_DUP 1
#define STORE_ROUTED_ALREADY 2

/* event_put: Inserts ev with its plan into the open group: the event, its status and
 * error, its deliveries and batch items, all or nothing. plan NULL stores
 * the event "received", not routed yet (event_routed later). Returns
 * 0; STORE_DUP (nothing written) with the first copy's id copied into
 * dup_id when (source, source_id) is already stored, even if only in the
 * open group; -1 with a reason in err on a store error (the group fails).
 * The deliveries' ids derive from the event id, the endpoint and the place
 * in the plan (util_id_derive); the plan's matched handlers are recorded
 * with the event, naming those ids. */

/* event_routed: Records plan as the outcome of routing stored event event_id again, in
 * the open group: its status and error, and inserts its deliveries and
 * batch items. Delivery ids: on the event's first routing (status still
 * "received", e.g. an event a crash left unrouted) derived as
 * event_put does, so a routing lost with its group is made again
 * under the same ids; on later routings (replays) new. The plan's matched
 * handlers (by_rules) replace the event's recorded ones. Returns 0, or -1
 * (an unknown id writes nothing and keeps the group). */

/* ---- nonces (Shiptify tokens) ---- */

#define STORE_REPLAY 2

/* nonce_put: Records nonce of source with digest (the hex SHA-256 of the request body)
 * in the open group, so it is durable with the event it came with and
 * survives a restart. Nonces of source older than keep_ms (longer than the
 * timestamp tolerance lets a request be replayed) are forgotten, at most
 * once a minute. Returns 0 when the nonce is new; STORE_DUP when it was
 * seen with the same digest (a carrier's retry); STORE_REPLAY when it was
 * seen with another digest (nothing written); -1 with a reason in err on a
 * store error. */

/* A stored event; every pointer is owned by the row. */
struct store_event_row {
    int64_t seq;
    char *id, *source, *source_id, *type, *created_at, *status, *error;
    char *headers_json, *data_json;
    char *shipment_json; /* NULL when the event has none (or in a page of events) */
    char *matched_json;  /* the handlers that matched (struct store_plan), or NULL when
                            not recorded (event_get only) */
    char *raw;
    size_t raw_len;
    int64_t received_at;
};

/* events_unrouted: Reads up to max events with status "received" and seq > after_seq, oldest
 * first (events committed but not yet routed, e.g. after a crash). Events
 * the open group inserted are left out: their ingest routes them once the
 * group commits. *rows is
 * new (free with store_event_rows_free). Returns 0 or -1. */

void store_event_rows_free(struct store_event_row *rows, size_t n);

/* ---- deliveries ---- */

/* A claimed delivery; every pointer is owned by the row. */
struct store_delivery {
    int64_t seq;
    char id[UTIL_ID_MAX];
    char event_id[UTIL_ID_MAX];
    char *endpoint, *event_type, *content_type, *headers_json;
    char *payload;
    size_t payload_len;
    int attempts;     /* attempts made so far; the next one is attempts + 1 */
    int schedule_pos; /* index in the retry schedule of the next attempt */
    int64_t next_at;
    int64_t created_at;
};

/* endpoint_claim_due: Claims up to max of endpoint name's pending deliveries due at or before
 * now, earliest due first, leasing each for lease_ms (a claimed delivery is
 * not claimed again until its outcome is stored, its lease is released or
 * it ends). Only committed rows are claimed. Found by the (endpoint,
 * next_at) index, never by a scan: a backlog of one endpoint costs another
 * nothing. *out is new (free with store_deliveries_free). Returns 0 or -1. */

void store_deliveries_free(struct store_delivery *d, size_t n);

/* endpoint_next_due: Unix ms at which name's earliest committed pending delivery is claimable
 * (a leased one: when its lease ends), INT64_MAX when none, -1 on a store
 * error. An index lookup. */

/* In the open group: lease != 0 renews the lease of the delivery at seq
 * until next_at; lease == 0 releases it (no attempt is recorded), making it
 * claimable again at next_at, if it is still pending and leased. For rows
 * the scheduler gives back (an ordered endpoint blocked behind its head, an
 * endpoint that left the config). Returns 0 or -1. */
int store_delivery_lease(struct store *s, int64_t seq, int64_t next_at, int lease, char *err,
                         size_t errlen);

/* endpoints_pending: Calls fn(arg, name) for every endpoint with pending deliveries, by name
 * (one index seek each). Returns 0 or -1. */

/* endpoint_queue: One endpoint's queue in the store: pending and held deliveries (counted
 * only when counts is non-zero: O(rows)), how many pending ones are due at
 * now and not leased (counted up to due_cap), and the earliest next_at
 * among those (INT64_MAX when none), and its blocked keys (an index of
 * failed heads: few rows). For the admin API and metrics. Returns 0, or
 * -1 (q zeroed, oldest_due and oldest_blocked INT64_MAX). */
struct store_endpoint_queue {
    int64_t pending, held, due, oldest_due;
    int64_t blocked;        /* keys blocked behind a failed head (ordered by key) */
    int64_t oldest_blocked; /* Unix ms the oldest of them failed, INT64_MAX when none */
};

/* The delivery seq watermarks: *committed, every row up to it durable
 * (claims see only those); *last, the highest seq inserted, the open group
 * and the group being synced included. */
void store_delivery_seqs(const struct store *s, int64_t *committed, int64_t *last);

/* One attempt at a delivery; all borrowed. */
struct store_attempt {
    int n;           /* 1-based, keeps counting across manual retries */
    int64_t at;      /* Unix ms the request started */
    int status_code; /* 0 when there was no HTTP response */
    int64_t latency_ms;
    const char *error;    /* NULL on success */
    const char *response; /* first bytes of the response body (<= 1 KiB) */
    size_t response_len;
};

/* Stores the attempt and the delivery's new state in the open group and
 * releases its lease: status "pending" (next attempt at next_at, at
 * schedule_pos), "delivered", "failed" or "held". Returns 0 or -1. */
int store_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                      const char *status, int64_t next_at, int schedule_pos, char *err,
                      size_t errlen);

/* delivery_counts: Delivery counts by status, for /api/status and metrics. Returns 0 or -1. */
struct store_counts {
    int64_t pending, held, failed, delivered;
};

/* Deliveries pending or held (the backlog max_backlog bounds): the
 * backend's count, read at most once a second, plus the deliveries this
 * process inserted since (on a shared store other instances' inserts show
 * within a second). A counter for every request to read. */
int64_t store_backlog(struct store *s);

/* ---- admin API (SPEC section 8): lists, actions, subscriptions ---- */

/* A page query; NULL filters match everything. after is the cursor of the
 * previous page (0 = the first page); rows come newest first. */
struct store_page {
    const char *type;     /* events: a type or glob ('*' matches anything) */
    const char *source;   /* events */
    const char *status;   /* events or deliveries */
    const char *endpoint; /* deliveries */
    size_t limit;         /* > 0 */
    int64_t after;
    /* events: received in [since, until) (Unix ms) when has_since /
     * has_until; found by seq, which grows with received_at */
    int has_since, has_until;
    int64_t since, until;
};

/* events_page, deliveries_page: One page of events or deliveries, newest first: *rows (new) holds
 * up to q->limit rows; *next is the cursor of the next page (the seq of the last row given), 0 when
 * this is the last. Committed rows only (the read connection, see the top of this file). Returns 0
 * or -1 (err set). Events come as event rows without headers, data or raw
 * (free with store_event_rows_free). */

/* events_find: The ids of up to max events whose id or carrier id is text (first), or
 * whose data or shipment JSON contains it (a tracking number, an order id;
 * newest first): a scan of the events table, for the admin's "find". *ids is
 * new (free each and the array). Returns 0 or -1 (err set). */

/* A row of a deliveries page; pointers owned by the row (NULL for none). */
struct store_delivery_item {
    int64_t seq;
    char *id, *event_id, *endpoint, *event_type, *status;
    int64_t attempts;
    int has_next_at;          /* pending: next_at is when the next attempt is due */
    int64_t next_at;          /* Unix ms */
    int64_t created_at;       /* Unix ms */
    int has_last;             /* an attempt was made: the latest one's outcome follows */
    int64_t last_status_code; /* 0 when there was no HTTP response */
    char *last_error;         /* NULL on success */
    char *key;                /* its order key (ordered by key), or NULL */
};

void store_delivery_items_free(struct store_delivery_item *rows, size_t n);

/* event_get: Reads event id into *row (new; free with store_event_rows_free(*row, 1)).
 * Returns 1 found, 0 unknown (*row NULL), -1 on a store error (err set). */

/* ---- the event detail (what the admin API shows of one event) ---- */

/* An attempt at a delivery as stored; pointers owned. */
struct store_attempt_row {
    int64_t n, at, status_code, latency_ms; /* at: Unix ms */
    char *error;                            /* NULL on success */
    char *response;                         /* NULL when none was stored; NUL-terminated */
    size_t response_len;
};

/* A delivery of the event (its own, or a batch holding it); pointers owned. */
struct store_event_delivery {
    char *id, *endpoint, *status, *content_type, *event_type;
    int batch;     /* 1: a batch delivery */
    char *payload; /* NULL when none was stored; NUL-terminated */
    size_t payload_len;
    struct store_attempt_row *attempts; /* by n */
    size_t nattempts;
};

/* An open batch window holding an item of the event: no delivery yet. */
struct store_batch_wait {
    char *endpoint;     /* owned */
    int64_t window_end; /* Unix ms */
};

struct store_event_detail {
    struct store_event_row *ev;              /* with headers, data and raw */
    struct store_event_delivery *deliveries; /* oldest first */
    size_t ndeliveries;
    struct store_batch_wait *waiting; /* by each window's first item */
    size_t nwaiting;
};

/* event_detail: Reads event id with its deliveries (each with its attempts) and the open
 * batch windows it waits in into *out (new; free with
 * store_event_detail_free), in one read of the committed state (the read
 * connection). Returns 1 found, 0
 * unknown (*out NULL), -1 on a store error (err set). */
void store_event_detail_free(struct store_event_detail *d);

/* delivery_retry: Puts a "failed" delivery back to "pending" at next_at, at the start of its
 * schedule; its attempt count is kept (X-Waybill-Attempt keeps counting).
 * In the open group. Returns 1 done, 0 unknown id, 2 not failed, -1 error. */

/* delivery_skip: Releases the key that failed delivery id blocks (an endpoint ordered by
 * key, SPEC section 7): the delivery stays failed, out of its key, and the
 * next delivery of the key is due at now. In the open group. Returns 1
 * done, 0 unknown id, 2 not a failed delivery holding a key, -1 error. */

/* A key blocked behind its failed head; pointers owned. */
struct store_blocked_key {
    char *key;
    char *head_id; /* the failed delivery (retry or skip it to go on) */
    int64_t depth; /* deliveries waiting behind it */
    int64_t since; /* Unix ms of the head's last attempt */
};

/* endpoint_blocked: Up to max of name's blocked keys, oldest head first. *out new (free with
 * store_blocked_keys_free). Returns 0 or -1 (err set). */
void store_blocked_keys_free(struct store_blocked_key *k, size_t n);

/* A subscription (ShipEngine's webhook shape); all borrowed. pattern is the
 * waybill type or glob the event name stands for (aliases resolved). */
struct store_sub {
    const char *id, *event, *pattern, *url, *secret;
    int64_t created_at; /* Unix ms */
};

/* sub_put: Inserts sub in the open group. Returns 0, STORE_DUP (nothing written)
 * when its pattern already has one, -1 on error. */

/* sub_change: Sets subscription id's url, or deletes it when url is NULL, in the open
 * group. Returns 1 done, 0 unknown id, -1 error. */

/* sub_set_secret: Sets subscription id's signing secret (a rotation) in the open group.
 * Returns 1 done, 0 unknown id, -1 error. */

/* Calls fn for every stored subscription, oldest first (sub borrowed for
 * the call). Returns 0 or -1. */
int store_subs_load(struct store *s, void (*fn)(void *arg, const struct store_sub *sub), void *arg,
                    char *err, size_t errlen);

/* ---- endpoint state (SPEC section 7: health, disabling, held) ---- */

/* One endpoint's stored state; pointers owned by the row. */
struct store_endpoint_state {
    char *name;
    int disabled;        /* by a 410, disable_after or the admin API */
    int64_t disabled_at; /* Unix ms, 0 when enabled */
    char *reason;        /* why it was disabled, or NULL */
    char *last_error;    /* the last failed attempt's error, or NULL */
    int64_t last_error_at;
    int64_t first_failure_at; /* start of the current run of failures, 0 after a success */
    int64_t ok, failed;       /* attempts succeeded / failed, ever */
    int64_t pending, held;    /* deliveries in those states now */
};

/* endpoint_attempt: Counts one attempt at name in the open group: ok, or failed with error.
 * *first_failure_at receives the start of the current run of failed
 * attempts (0 after a success). Returns 0 or -1. */

/* endpoint_set_disabled: Disables (with reason) or enables name in the open group, moving its
 * deliveries pending -> held, or held -> pending due now (leases cleared).
 * *moved (may be NULL) receives how many moved. Returns 0 or -1. */

/* Every endpoint with stored state, by name. *out new (free with
 * store_endpoint_states_free). Returns 0 or -1. */
int store_endpoint_states(struct store *s, struct store_endpoint_state **out, size_t *n, char *err,
                          size_t errlen);
void store_endpoint_states_free(struct store_endpoint_state *e, size_t n);

/* endpoint_head: seq of name's oldest pending delivery (the head of an ordered endpoint,
 * leased or not), INT64_MAX when none, -1 on a store error; *next_at (may
 * be NULL) receives its next_at (INT64_MAX when none). Reads the open
 * group. An index lookup. */

/* endpoint_claim: Claims, for an ordered endpoint, up to max of name's pending deliveries
 * with seq > after_seq in seq order (FIFO), each due or leased (a leased
 * row not held in memory was dropped by this process: SQLite has one
 * owner), leasing them for lease_ms. By index. Returns 0 or -1. */

/* ---- asynchronous reads (the admin API's, and the loop's own) ----
 * The shape a database across the network needs (issue 15): the store
 * answers from the loop, never inside the call. SQLite runs the read at
 * once (the operation described above, on the engine's connections) and
 * hands the rows to fn on the next loop turn; a PostgreSQL
 * store hands them over when they arrive. fn runs exactly once when the
 * call returned 0 -- at the latest in store_flush / store_free, so a
 * shutdown that drains the store while every module lives answers them
 * all. What fn is given belongs to the store and lives for the call.
 * Each call returns 0, or -1 when out of memory (fn will not run). */
struct store_result {
    int status;                           /* what the synchronous read returns: -1 a store error,
                                             else >= 0 (event_detail: 1 found, 0 unknown) */
    const char *err;                      /* the reason when status is -1, else "" */
    size_t n;                             /* rows in the array below that the read fills */
    int64_t next;                         /* pages: the next cursor (0: the last page) */
    const struct store_event_row *events; /* store_read_events_page */
    const struct store_delivery_item *deliveries; /* store_read_deliveries_page */
    const struct store_event_detail *detail;      /* store_read_event_detail (NULL: unknown) */
    char *const *ids;                             /* store_read_events_find */
    const struct store_batch_window *windows;     /* store_read_batch_windows */
    const struct store_counts *counts;            /* store_read_delivery_counts */
    /* store_read_endpoints: every stored endpoint state (nstates), the
     * queue of each endpoint asked for (nqueues, by name), and the blocked
     * keys of the one asked for (nblocked) */
    const struct store_endpoint_state *states;
    size_t nstates;
    const struct store_endpoint_view *queues;
    size_t nqueues;
    const struct store_blocked_key *blocked;
    size_t nblocked;
    /* the loop's own reads (below) */
    const struct store_delivery *claimed;  /* store_read_claim_*: the rows claimed (n) */
    int64_t next_due;                      /* claim_due: the endpoint's next due time read
                                              right after the claim; batch_due: the
                                              earliest open window's end (INT64_MAX: none,
                                              -1: a store error) */
    int64_t head, head_at;                 /* claim_ordered: endpoint_head's answer */
    int64_t rate_wait;                     /* claim_due with a rate on a shared store: ms until
                                              the endpoint's shared bucket holds a token again
                                              (0: it holds one, or there is no shared bucket) */
    const struct store_endpoint_due *dues; /* store_read_endpoints_due (ndues) */
    size_t ndues;
};
typedef void (*store_read_fn)(void *arg, const struct store_result *r);

/* An endpoint's queue as store_read_endpoints answers it (ok 0: its read
 * failed, q zeroed as endpoint_queue leaves it). */
struct store_endpoint_view {
    char *name; /* owned by the answer */
    int ok;
    struct store_endpoint_queue q;
};

/* q's strings are read during the call only. */
int store_read_events_page(struct store *s, const struct store_page *q, store_read_fn fn,
                           void *arg);
int store_read_deliveries_page(struct store *s, const struct store_page *q, store_read_fn fn,
                               void *arg);
int store_read_event_detail(struct store *s, const char *id, store_read_fn fn, void *arg);
int store_read_events_find(struct store *s, const char *text, size_t max, store_read_fn fn,
                           void *arg);
int store_read_batch_windows(struct store *s, store_read_fn fn, void *arg);
int store_read_delivery_counts(struct store *s, store_read_fn fn, void *arg);
/* GET /api/endpoints and /metrics: every stored endpoint state; the queue
 * of each of names[0..n) (endpoint_queue with now, due_cap, counts:
 * read on the loop's connection, as that call is, the view the scheduler's
 * own state is shown beside); and, when blocked_of is not NULL, up to
 * blocked_max of its blocked keys. A failed queue read leaves its view's ok
 * 0; a failed state or blocked-keys read fails the answer (status -1). */
int store_read_endpoints(struct store *s, const char *const *names, size_t n, int64_t now,
                         int64_t due_cap, int counts, const char *blocked_of, size_t blocked_max,
                         store_read_fn fn, void *arg);
/* status 0 when the store answers a trivial query, -1 when not (/healthz). */
int store_read_ping(struct store *s, store_read_fn fn, void *arg);

/* The loop's own reads (the scheduler's and the batch closer's), same
 * shape, same promise: answered from the loop, never inside the call; on
 * SQLite computed at once with the semantics of the operations described
 * above (claims see committed rows only and lease what they return in the
 * open group; the head and the batch windows read the open group) and
 * handed over on the next loop turn. A claim's rows are leased from the
 * call on: whoever gets the answer owns them (releases what it cannot take
 * with store_delivery_lease, lease 0).
 *
 * WAYBILL_STORE_REPLY_DELAY_MS=N (builds with WAYBILL_CHECKS only, i.e.
 * make asan / make tsan; read at store_open): every asynchronous answer is
 * handed over N ms after its call (a timer instead of the next turn), as a
 * store across a slow network would; store_flush runs the loop until every
 * answer was handed over. Logged at open when set. */

/* endpoint_claim_due (status, claimed, n), then endpoint_next_due
 * of name as the claim left it (next_due; -1 when the claim failed).
 * cap > 0 on a shared store (PostgreSQL, several instances): the
 * endpoint's `concurrency` less the leases this instance holds (rows
 * claimed and not ended, and those whose outcome is not committed yet);
 * the claim takes at most cap minus the other instances' live
 * leases of the endpoint, so the rows leased by all instances stay within
 * its concurrency (claims of one endpoint take turns on its endpoint_state
 * row). SQLite has one process, whose slots are the cap: it ignores cap.
 * rate > 0 with cap > 0 (the endpoint's `rate` across instances): the
 * claim also takes one token per row from the endpoint's bucket in the
 * database, shared by every instance (refilled at rate per second by the
 * database's clock, up to store_rate_burst(rate), starting empty), and
 * claims no more rows than it holds whole tokens; rate_wait says when the
 * next one is there. SQLite ignores rate (the scheduler's own bucket is
 * the whole endpoint's there). */
int store_read_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                         size_t max, size_t cap, double rate, store_read_fn fn, void *arg);
/* An endpoint's `rate` bucket holds up to a tenth of a second's worth of
 * tokens, at least one (SPEC 7): the scheduler's own bucket and the shared
 * one alike. */
static inline double store_rate_burst(double rate) {
    return rate / 10.0 < 1.0 ? 1.0 : rate / 10.0;
}
/* An ordered endpoint's look: endpoint_head (head, head_at; status -1
 * when it fails), then, when max > 0 and the head is due at now,
 * endpoint_claim of up to max rows from the head on (after_seq =
 * head - 1; claimed, n): one call for what took two. */
int store_read_claim_ordered(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                             size_t max, store_read_fn fn, void *arg);
/* What the scheduler's watchdog reads per endpoint: when its earliest
 * committed pending row is due (endpoint_next_due) and when its head
 * is (endpoint_head's next_at when that head is committed, INT64_MAX
 * when there is none or it is not committed yet); -1 on a store error. */
struct store_endpoint_due {
    char *name; /* owned by the answer */
    int64_t next_due, head_due;
};
/* dues (ndues, in the order of names) for names[0..n); with pending
 * non-zero also every endpoint with pending rows (endpoints_pending)
 * as ids (n). status -1 when the pending list failed (a due read that
 * fails sets its fields to -1 only). ordered (NULL: both read for every
 * name): ordered[i] non-zero reads only names[i]'s head_due, zero only its
 * next_due; the other is INT64_MAX. Why: the scheduler uses one of them
 * per endpoint, and each read walks the endpoint's queue rows that VACUUM
 * has not removed yet (a minute of deliveries under a held xmin horizon,
 * every second). */
int store_read_endpoints_due(struct store *s, const char *const *names,
                             const unsigned char *ordered, size_t n, int pending, store_read_fn fn,
                             void *arg);
/* batch_due at now (windows, n), and batch_next_close read
 * with it (next_due: still the due windows' own end while they are open). */
int store_read_batch_due(struct store *s, int64_t now, store_read_fn fn, void *arg);

/* ---- retention (SPEC section 9) ----
 * A pass looks at up to max events with seq in (cursor, upto], oldest
 * first (seq is the rowid: a range walk of the table, whatever its size),
 * and deletes, in the open group, those received before before_ms whose
 * every delivery is delivered: the event, its deliveries with their
 * attempts, its batch items, and a batch delivery (with its attempts) once
 * its last item is gone. Kept, and stepped over: events not routed yet
 * ("received") or whose rules failed ("rule_error", for a replay), events
 * with a delivery pending, held or failed (a dead letter stays retryable),
 * events waiting in an open batch window or whose batch delivery is not
 * delivered. A kept event never stalls the walk; the caller walks the kept
 * ones again later (a second cursor from 0 up to where the first one is). */
struct store_prune {
    int64_t before_ms; /* in: events received before this are old */
    int64_t upto;      /* in: the walk's last seq (INT64_MAX: no bound) */
    int64_t cursor;    /* in/out: the seq looked at last */
    int max;           /* in: events looked at, at most */
    int budget_us;     /* in: deletes stop once the pass took this long (0: none) */
    int pruned, kept;  /* out: deleted, stepped over */
    int done;          /* out: 1 when the walk reached upto, the newest event,
                          or one received at or after before_ms */
};

/* prune: Runs one pass of p (its out fields set, cursor advanced: a pass the
 * budget cut short leaves the cursor before the first event it did not
 * delete). Returns 0, or -1 with a reason (the group failed when a delete
 * did). */

/* reclaim: Returns free pages to the filesystem in a small step: when the store was
 * made with auto_vacuum = INCREMENTAL (new stores are) and more than
 * keep_pages pages and more than a quarter of the file are free, runs
 * PRAGMA incremental_vacuum for up to step_pages of the rest in the open
 * group (the file shrinks at the next checkpoint). A store made before (auto_vacuum NONE) reuses
 * its free pages for new rows and never shrinks. *freed receives the pages released. Returns 0 or
 * -1. */

/* ---- batch windows (SPEC section 6) ----
 * An open window is the set of batched payloads stored for (endpoint,
 * window_start, window_ms); window_start is a multiple of window_ms (Unix
 * ms, UTC). Items are written with their event (struct store_plan), so a
 * crash never loses a batched event; a window is closed into one delivery
 * in one group. */

/* batch_next_close: Unix ms at which the earliest open window ends, INT64_MAX when none. */

struct store_batch_window {
    char *endpoint; /* owned */
    int64_t window_start, window_ms;
    int64_t items; /* batch_due: the window's open items */
};

/* batch_due: Lists the open windows that ended at or before now. *out is new (free
 * with store_batch_windows_free). Returns 0 or -1. */
void store_batch_windows_free(struct store_batch_window *w, size_t n);

/* batch_windows: Every open window with its items as committed (the admin API's read: the
 * open group's items are left out). Same as batch_due otherwise. */

/* Closes the window's open items into one delivery (event_type "batch",
 * batch = 1, status "pending" or "held", first attempt at next_at) whose
 * payload is {"type":"batch","window_start","window_end","count","events"},
 * in the open group. *count is the number of items sent (0: the window had
 * none, nothing is written). Returns 0 or -1. */
int store_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                      int64_t next_at, size_t *count, char *err, size_t errlen);

/* ---- asynchronous write results (issue 15) ----
 * A write's value (a dedupe hit, an unknown id, a count) is known only
 * when its group's outcome is (on a database across the network, when the
 * pipelined group's round trip comes back): these calls hand it to a
 * callback.
 * Contract, for every call below:
 * - fn(arg, d) runs exactly once when the call returned 0, from the loop,
 *   never inside the call; at the latest in store_flush / store_free (a
 *   shutdown that drains the store while every module lives answers all).
 *   The call returns -1 only when out of memory: fn will not run and
 *   nothing of the call stays in the group (a write made before the
 *   failure fails the group).
 * - Writes (_done): fn runs when the write's group ended. d->ok is 1 when
 *   the write was made and its group committed: "durable" calls (store_on_
 *   commit: event_put, retry, skip, the subscription calls, set_disabled)
 *   once the group is on disk, the others ("written", store_on_written:
 *   nonce_put, event_routed, endpoint_attempt, prune, reclaim) at its
 *   COMMIT. d->ok 0: the write failed or its group was rolled back; d->err
 *   says why; the values are then not to be acted on. So a caller acts on
 *   a value only once it is known on every backend.
 * - Reads (store_get_*): fn runs at the end of the loop turn (or once the
 *   open group ended), never inside the call; d->ok is 1 when the read
 *   worked, whatever the group does. The rows are read when the call is
 *   made, as the synchronous read would (SQLite: on the loop's connection,
 *   the open group included); a PostgreSQL store answers when they arrive.
 * - Everything d points to (err, id, prune, rows, states) belongs to the
 *   store and lives for the call of fn only. The arguments of a call are
 *   read during the call only (strings copied where kept), but for the
 *   plan of event_put and event_routed (see store_event_put_done).
 * The synchronous reads stay for the start, before the loop runs
 * (store_subs_load, the first read of endpoint states: no request is
 * served yet, so a blocking read costs nobody). */
struct store_done {
    int ok;          /* see above */
    int status;      /* when ok: what the synchronous call returns, >= 0 (event_put 0 or
                        STORE_DUP, nonce_put 0, STORE_DUP or STORE_REPLAY, retry / skip
                        1, 0 or 2, sub_put 0 or STORE_DUP, sub_change / sub_set_secret 1 or
                        0, event_routed 1 routed, 0 unknown id or STORE_ROUTED_ALREADY,
                        event_get 1 or 0) */
    const char *err; /* when !ok: why; else "" */
    const char *id;  /* event_put: the event's id, or the first copy's for STORE_DUP */
    int64_t value;   /* endpoint_attempt: first_failure_at; set_disabled: deliveries moved;
                        reclaim: pages freed */
    const struct store_prune *prune;           /* prune: the pass, its out fields and cursor */
    const struct store_event_row *rows;        /* store_get_events_unrouted, store_get_event */
    size_t n;                                  /* rows */
    const struct store_endpoint_state *states; /* store_get_endpoint_states */
    size_t nstates;
    const struct store_sub *subs; /* store_get_subs, oldest first */
    size_t nsubs;
};
typedef void (*store_done_fn)(void *arg, const struct store_done *d);

/* Durable. plan stays the caller's and must live until fn ran: its batch
 * items' counts (each window's items after the add, 0 until then) are
 * written into it just before fn runs, when the write committed
 * (route_plan_counted acts on them). The same for store_event_routed_done. */
int store_event_put_done(struct store *s, const struct store_event *ev, struct store_plan *plan,
                         store_done_fn fn, void *arg);
/* Written: the nonce is committed when fn runs, so an event stored after
 * its answer commits after it (see ingest.c / inbound.c). */
int store_nonce_put_done(struct store *s, const char *source, const char *nonce, const char *digest,
                         int64_t now_ms, int64_t keep_ms, store_done_fn fn, void *arg);
int store_event_routed_done(struct store *s, const char *event_id, struct store_plan *plan,
                            store_done_fn fn, void *arg);
int store_delivery_retry_done(struct store *s, const char *id, int64_t next_at, store_done_fn fn,
                              void *arg);
int store_delivery_skip_done(struct store *s, const char *id, int64_t now, store_done_fn fn,
                             void *arg);
int store_sub_put_done(struct store *s, const struct store_sub *sub, store_done_fn fn, void *arg);
int store_sub_change_done(struct store *s, const char *id, const char *url, store_done_fn fn,
                          void *arg);
int store_sub_set_secret_done(struct store *s, const char *id, const char *secret, store_done_fn fn,
                              void *arg);
int store_endpoint_attempt_done(struct store *s, const char *name, int ok, const char *error,
                                int64_t now, store_done_fn fn, void *arg);
int store_endpoint_set_disabled_done(struct store *s, const char *name, int disabled,
                                     const char *reason, int64_t now, store_done_fn fn, void *arg);
/* p is read during the call; the pass (out fields, cursor) comes in d->prune. */
int store_prune_done(struct store *s, const struct store_prune *p, store_done_fn fn, void *arg);
int store_reclaim_done(struct store *s, int64_t keep_pages, int step_pages, store_done_fn fn,
                       void *arg);

/* The loop's reads: d->rows / d->states as the synchronous calls give them. */
int store_get_events_unrouted(struct store *s, int64_t after_seq, size_t max, store_done_fn fn,
                              void *arg);
int store_get_event(struct store *s, const char *id, store_done_fn fn, void *arg);
int store_get_endpoint_states(struct store *s, store_done_fn fn, void *arg);
/* Every stored subscription (d->subs), as store_subs_load gives them: the
 * polls of a shared store (subs_poll; the app polls only a shared store). */
int store_get_subs(struct store *s, store_done_fn fn, void *arg);

#endif
