/* store_sqlite_int.h -- the SQLite code's private interface, shared by
 * core/store_sqlite*.c and included by nothing else but its unit test
 * (the store's engine reaches it through store_sqlite_be.c's operations,
 * store_backend.h): its state, the one table of prepared statements, the
 * small SQLite helpers, the calls its files make to each other, and the
 * calls the backend's operations run.
 *
 * The files, by job: store_sqlite.c (open and close, the group commit
 * engine, the callbacks, the watermarks, the statement table);
 * store_sqlite_sync.c (the fsync and checkpoint threads, the loop-side WAL
 * maintenance); store_sqlite_schema.c (every DDL statement, the schema
 * version, migrations); then one file per data area:
 * store_sqlite_events.c (events, nonces, unrouted events),
 * store_sqlite_deliveries.c (deliveries, attempts, counts, leases,
 * retries), store_sqlite_endpoints.c (endpoint state, heads, per-endpoint
 * queues and claims), store_sqlite_batch.c (batch windows),
 * store_sqlite_retain.c (retention, giving space back),
 * store_sqlite_admin.c (the admin API's pages and event detail,
 * subscriptions); store_sqlite_be.c (all of it as a backend of
 * store_backend.h: the one way in from the store's engine, store_bx*.c). What a
 * plan makes whatever the backend (delivery ids, events.matched) is
 * store_plan.c's.
 *
 * Invariants (checked under WAYBILL_CHECKS, see store_check_invariants):
 * every write runs inside the open group; every statement of the table is
 * reset before the call that stepped it returns, so none is busy when a
 * group commits or a callback runs; at most one group is in flight (being
 * synced), and no group commits while one is; a commit callback runs only
 * after its group's COMMIT or ROLLBACK; the delivery and event watermarks
 * never go backwards.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_SQLITE_INT_H
#define CORE_STORE_SQLITE_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "util.h"

struct event;
struct event_base;
struct store_sync;
struct store_ckpt;

#define STORE_BUSY_MS 100 /* the loop must not wait long for a lock */
/* The longest a scheduled commit waits for the loop to be idle before it
 * runs anyway (store_group_schedule). */
#define STORE_COMMIT_WAIT_MS 100

/* ---- the statement table ----
 * Every statement the store runs on the loop connection is prepared once,
 * at open (SQLITE_PREPARE_PERSISTENT), from the definitions each file keeps
 * beside the code that runs them (store_*_stmts below). DDL runs once at
 * open through sqlite3_exec (store_sqlite_schema.c) and keeps no statement. The
 * literal status = '...' terms must match the partial indexes' WHERE
 * clauses for the planner to use them. */
enum store_stmt {
    /* store_sqlite.c */
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_PING,
    ST_OPEN_RELEASE,
    ST_OPEN_DLV_SEQ,
    ST_OPEN_EVT_SEQ,
    ST_META_PUT,
    ST_READ_BEGIN,
    /* store_sqlite_events.c */
    ST_EVT_INSERT,
    ST_EVT_DUP,
    ST_EVT_STATUS,
    ST_EVT_STATUS_FIRST,
    ST_EVT_MATCHED,
    ST_EVT_GET,
    ST_EVT_UNROUTED,
    ST_DLV_INSERT,
    ST_KEY_BUSY,
    ST_NONCE_PRUNE,
    ST_NONCE_INSERT,
    ST_NONCE_DIGEST,
    /* store_sqlite_deliveries.c */
    ST_DLV_LEASE,
    ST_DLV_RELEASE,
    ST_DLV_OUTCOME,
    ST_KEY_PROMOTE,
    ST_DLV_KEY_GET,
    ST_DLV_SKIP,
    ST_DLV_RETRY,
    ST_DLV_EXISTS,
    ST_ATT_INSERT,
    ST_COUNTS,
    ST_COUNTS_ADD,
    /* store_sqlite_endpoints.c */
    ST_EP_CLAIM_DUE,
    ST_EP_NEXT_DUE,
    ST_EP_HEAD,
    ST_EP_CLAIM_ORDERED,
    ST_EP_PENDING,
    ST_EP_QUEUE,
    ST_EP_BLOCKED,
    ST_EP_OK,
    ST_EP_FAILED,
    ST_EP_FIRST_FAILURE,
    ST_EP_DISABLE,
    ST_EP_ENABLE,
    ST_EP_HOLD,
    ST_EP_RELEASE,
    ST_EP_STATES,
    /* store_sqlite_batch.c */
    ST_BATCH_ADD,
    ST_BATCH_COUNT,
    ST_BATCH_NEXT_CLOSE,
    ST_BATCH_DUE,
    ST_BATCH_ITEMS,
    ST_BATCH_DELIVERY,
    ST_BATCH_MARK,
    ST_BATCH_WAITING,
    /* store_sqlite_retain.c */
    ST_PRUNE_SCAN,
    ST_PRUNE_ATTEMPTS,
    ST_PRUNE_DELIVERIES,
    ST_PRUNE_BATCH_ATTEMPTS,
    ST_PRUNE_BATCH_DELIVERIES,
    ST_PRUNE_BATCH_ITEMS,
    ST_PRUNE_EVENT,
    ST_FREELIST,
    /* store_sqlite_admin.c */
    ST_PAGE_EVENTS,
    ST_EVT_SEQ_RANGE,
    ST_EVT_AT_SEQ,
    ST_PAGE_DELIVERIES,
    ST_DETAIL_DELIVERIES,
    ST_DETAIL_ATTEMPTS,
    ST_SUB_INSERT,
    ST_SUB_SET_URL,
    ST_SUB_SET_SECRET,
    ST_SUB_DELETE,
    ST_SUB_LOAD,
    ST_COUNT_
};

/* One statement of the table; each list ends with {ST_COUNT_, NULL}. */
struct store_stmt_def {
    enum store_stmt id;
    const char *sql;
};

extern const struct store_stmt_def store_engine_stmts[];
extern const struct store_stmt_def store_events_stmts[];
extern const struct store_stmt_def store_deliveries_stmts[];
extern const struct store_stmt_def store_endpoints_stmts[];
extern const struct store_stmt_def store_batch_stmts[];
extern const struct store_stmt_def store_retain_stmts[];
extern const struct store_stmt_def store_admin_stmts[];

/* ---- the store ---- */

/* next_at of a delivery waiting behind the head of its order key (never
 * due); its key's head, once delivered or skipped, promotes it to due. */
#define STORE_PARKED_AT ((int64_t)1 << 62)
#define STORE_PARKED_AT_SQL "4611686018427387904" /* the same, in SQL text */

/* Group state: in_txn says a BEGIN is open; failed says a write of this
 * group failed (in_txn may be 0 when BEGIN itself failed or SQLite rolled
 * back on its own); scheduled says commit_ev is active or pending. cbs holds
 * ncbs callbacks for the current group (cap slots). */
struct store_sq {
    sqlite3 *db;
    int owner_fd; /* the database file, flock()ed while this process owns it */
    /* Failed groups: the last outcome (for store_writable), the log's
     * throttle, and the full disk's recovery (store_sqlite.c). */
    int last_outcome_ok, full;
    int64_t last_outcome_at, fail_logged_at, fail_unlogged;
    struct event *full_ev; /* while full: the once-a-second WAL truncation */
    sqlite3_stmt *st[ST_COUNT_];
    /* The admin API's reads: a second connection to the same file with the
     * same statements (store_rstmt), query_only. In WAL mode it sees what
     * was committed when its read began, never the open group. */
    sqlite3 *rdb;
    sqlite3_stmt *rst[ST_COUNT_];
    struct event *commit_ev;
    struct event *commit_late_ev; /* commits when commit_ev waits too long */
    int in_txn, failed, begin_failed, scheduled, committing;
    size_t fail_ncbs; /* callbacks waiting when BEGIN failed (begin_failed) */
    /* Invariant: every delivery row with seq <= committed_dlv_seq is
     * durable (advanced when its group's sync is done, or at COMMIT with
     * sync=normal). Claims see only those, so no delivery is sent from a
     * row a crash, of the process or of the machine, could take back.
     * group_dlv_seq is the highest seq the open group inserted. */
    int64_t committed_dlv_seq, group_dlv_seq;
    /* For events, advanced when the group is durable too: recovery reads
     * only events with seq <= committed_evt_seq, so an event whose group is
     * open or being synced is never routed by recovery as well. */
    int64_t committed_evt_seq, group_evt_seq;
    /* The highest seq given so far, for the life of the store (store_meta
     * keeps it across deletes): every insert takes the next one itself. */
    int64_t dlv_seq_hw, evt_seq_hw;
    /* The backlog as of the last commit (store_backlog): pending + held
     * from delivery_counts, read again only after a commit (stale). */
    int64_t backlog;
    int backlog_stale;
    char fail_msg[256];
    struct store_cb *cbs;
    size_t ncbs, cap;
    /* Deliveries the open group inserted, by status, not yet in
     * delivery_counts (written by store_counts_flush before COMMIT). */
    struct {
        char status[16];
        int64_t n;
    } counts[8];
    int ncounts;
    /* Durability off the loop; sync is NULL with sync=normal, where a group
     * is done at COMMIT. sync_busy: one committed group is being synced; its
     * callbacks and seqs wait in inflight_* (at most one group is in flight:
     * the next commit waits for it, deferred says it is due). */
    struct store_sync *sync;
    int sync_busy, deferred;
    struct store_cb *inflight;
    size_t ninflight, inflight_cap;
    int64_t inflight_evt_seq, inflight_dlv_seq, inflight_t0;
    /* Checkpoints: the thread, its connection, and the WAL's size in frames
     * after the last commit (from the WAL hook). */
    struct store_ckpt *ckpt;
    int wal_frames, ckpt_asked_at;
    int64_t nonces_pruned_at; /* Unix ms of the last prune of old nonces */
    /* A plan's delivery ids and its matched handlers' JSON, made before
     * the event's row (store_sqlite_events.c); reused from event to event. */
    char (*plan_ids)[UTIL_ID_MAX];
    size_t cap_ids;
    struct util_buf matched;
};

/* ---- small helpers (every file) ---- */

/* The statement id of the table, idle (checked): a statement is never used
 * by two calls at once (a callback re-entering the store mid-step). */
static inline sqlite3_stmt *store_stmt(struct store_sq *s, enum store_stmt id) {
    STORE_CHECK(!sqlite3_stmt_busy(s->st[id]));
    return s->st[id];
}

/* The statement id prepared on the read connection (committed state only),
 * idle (checked). For the admin API's reads (store_sqlite_admin.c). */
static inline sqlite3_stmt *store_rstmt(struct store_sq *s, enum store_stmt id) {
    STORE_CHECK(!sqlite3_stmt_busy(s->rst[id]));
    return s->rst[id];
}

/* Opens a read transaction on the read connection, so that the reads of
 * one answer (an event with its deliveries and attempts) see one committed
 * state; store_read_end ends it. Returns 0, or -1 with a reason. */
int store_read_begin(struct store_sq *s, char *err, size_t errlen);
void store_read_end(struct store_sq *s);

/* Resets st and clears its bindings: bound text is borrowed (SQLITE_STATIC)
 * and must not outlive the call. */
static inline void stmt_done(sqlite3_stmt *st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static inline int bind_text(sqlite3_stmt *st, int i, const char *s) {
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

static inline int bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n) {
    if (!p)
        return sqlite3_bind_null(st, i);
    return sqlite3_bind_blob64(st, i, n ? p : "", (sqlite3_uint64)n, SQLITE_STATIC);
}

/* New copy of a text column, or NULL for SQL NULL (*oom set on failure). */
static inline char *col_text(sqlite3_stmt *st, int i, int *oom) {
    const unsigned char *t = sqlite3_column_text(st, i);
    char *s;
    if (!t)
        return NULL;
    s = strdup((const char *)t);
    if (!s)
        *oom = 1;
    return s;
}

/* New NUL-terminated copy of a blob column, length in *len; NULL for SQL NULL. */
static inline char *col_blob(sqlite3_stmt *st, int i, size_t *len, int *oom) {
    const void *p = sqlite3_column_blob(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    char *b;
    *len = 0;
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return NULL;
    b = malloc(n + 1);
    if (!b) {
        *oom = 1;
        return NULL;
    }
    if (n)
        memcpy(b, p, n);
    b[n] = '\0';
    *len = n;
    return b;
}

static inline void copy_id(char *dst, size_t cap, const unsigned char *src) {
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* ---- the group (store_sqlite.c) ---- */

/* Makes sure a group is open for a write. Returns 0, or -1 with a reason
 * when BEGIN fails (e.g. another process holds the write lock) or an
 * earlier write of this group failed. */
int store_group_begin(struct store_sq *s, char *err, size_t errlen);

/* Marks the group failed after a write error (message from SQLite), so it is
 * rolled back and every callback of it gets ok=0; the reason goes to err. */
void store_group_fail(struct store_sq *s, const char *what, char *err, size_t errlen);

/* Queues the commit event (see store_sqlite.c). */
void store_group_schedule(struct store_sq *s);

/* The group in flight is durable (the sync thread said so): advances the
 * event watermark, runs its callbacks, and commits the group that filled
 * meanwhile. Called by store_sqlite_sync.c on the loop. */
void store_group_durable(struct store_sq *s);

/* ---- the threads (store_sqlite_sync.c) ---- */

/* Starts the sync thread on the WAL of s->db, whose end the loop hears of
 * through an event on base. Returns 0, or -1 with a reason. */
int store_sync_start(struct store_sq *s, struct event_base *base, char *err, size_t errlen);

/* Finishes what is in flight, then stops and joins the sync thread; a
 * store without one is a no-op. */
void store_sync_stop(struct store_sq *s);

/* Asks the sync thread for one more fdatasync of the WAL (the engine has
 * moved the committed group's callbacks in flight and set sync_busy). */
void store_sync_ask(struct store_sq *s);

/* Blocks until the group in flight is durable, then finishes it. */
void store_sync_wait(struct store_sq *s);

/* fdatasyncs the WAL on the calling thread (store_flush); with no sync
 * thread (sync=normal) a no-op. Stops the process when the sync fails. */
void store_sync_now(struct store_sq *s);

/* Opens the checkpoint connection on path and starts its thread. */
int store_ckpt_start(struct store_sq *s, const char *path, char *err, size_t errlen);
void store_ckpt_stop(struct store_sq *s);

/* After a COMMIT that wrote: keeps the WAL short (store_sqlite_sync.c). */
void store_wal_maintain(struct store_sq *s);

/* ---- the schema (store_sqlite_schema.c) ---- */

/* Creates the schema of a new database, migrates an older one, and adds the
 * tables and indexes later versions brought; path names the database in
 * errors. Returns 0, or -1 with a reason. */
int store_schema_apply(sqlite3 *db, const char *path, char *err, size_t errlen);

/* ---- rows and counts shared between data areas ---- */

/* Reads the event id with st (ST_EVT_GET of either connection) into *out,
 * as event_get. */
int store_event_read(sqlite3_stmt *st, const char *id, struct store_event_row **out, char *err,
                     size_t errlen);

/* Fills r from a row whose columns are (seq, id, source, source_id, type,
 * created_at, status, error, headers, data, raw, received_at): the order
 * every event read selects. Sets *oom when a copy failed. */
void store_event_row_read(sqlite3_stmt *st, struct store_event_row *r, int *oom);

/* Fills r from a row whose columns are (seq, id, event_id, endpoint,
 * event_type, content_type, headers, payload, attempts, schedule_pos,
 * next_at, created_at): the order both claims select. */
void store_delivery_row_read(sqlite3_stmt *st, struct store_delivery *r, int *oom);

/* Leases the n rows of d until until, in the open group. Returns 0 or -1. */
int store_deliveries_lease(struct store_sq *s, const struct store_delivery *d, size_t n,
                           int64_t until, char *err, size_t errlen);

/* Counts n more deliveries with this status in the open group (written to
 * delivery_counts by store_counts_flush before COMMIT). Returns 0 or -1. */
int store_counts_add(struct store_sq *s, const char *status, int64_t n);
int store_counts_flush(struct store_sq *s);

/* Adds one batch item of event_id to its window in the open group and sets
 * it->count (store_sqlite_batch.c; store_sqlite_events.c writes a plan's items with it).
 * Returns 0, or -1 (the group failed). */
int store_batch_item_put(struct store_sq *s, const char *event_id, struct store_batch_item *it,
                         char *err, size_t errlen);

/* The open batch windows holding an item of event_id, by each window's
 * first item (store_sqlite_batch.c, for the event detail; on the read
 * connection). *out is new (free with
 * store_batch_waits_free). Returns 0 or -1 (err set). */
int store_batch_waiting(struct store_sq *s, const char *event_id, struct store_batch_wait **out,
                        size_t *n, char *err, size_t errlen);
void store_batch_waits_free(struct store_batch_wait *w, size_t n);

/* ---- the engine's calls (store_sqlite*.c) ----
 * What the backend's operations run (store_sqlite_be.c), synchronously on
 * the loop connection; the arguments and results of the store.h calls of
 * the same names, which they once were. Tested by tests/unit/test_store.c. */
struct store_sq *store_sqlite_open(struct event_base *base, const char *url, const char *base_dir,
                                   char *err, size_t errlen);
void store_sqlite_free(struct store_sq *s);
int store_sqlite_on_commit(struct store_sq *s, store_commit_fn fn, void *arg);
int store_sqlite_flush(struct store_sq *s);
int store_sqlite_idle(const struct store_sq *s);
int store_sqlite_ping(struct store_sq *s);
int store_sqlite_writable(const struct store_sq *s);
int store_sqlite_event_put(struct store_sq *s, const struct store_event *ev,
                           struct store_plan *plan, char *dup_id, size_t dup_len, char *err,
                           size_t errlen);
int store_sqlite_event_routed(struct store_sq *s, const char *event_id, struct store_plan *plan,
                              char *err, size_t errlen);
int store_sqlite_nonce_put(struct store_sq *s, const char *source, const char *nonce,
                           const char *digest, int64_t now_ms, int64_t keep_ms, char *err,
                           size_t errlen);
int store_sqlite_events_unrouted(struct store_sq *s, int64_t after_seq, size_t max,
                                 struct store_event_row **rows, size_t *n, char *err,
                                 size_t errlen);
int store_sqlite_endpoint_claim_due(struct store_sq *s, const char *name, int64_t now,
                                    int64_t lease_ms, size_t max, struct store_delivery **out,
                                    size_t *n, char *err, size_t errlen);
int64_t store_sqlite_endpoint_next_due(struct store_sq *s, const char *name);
int store_sqlite_delivery_lease(struct store_sq *s, int64_t seq, int64_t next_at, int lease,
                                char *err, size_t errlen);
int store_sqlite_endpoints_pending(struct store_sq *s, void (*fn)(void *arg, const char *name),
                                   void *arg);
int store_sqlite_endpoint_queue(struct store_sq *s, const char *name, int64_t now, int64_t due_cap,
                                int counts, struct store_endpoint_queue *q);
void store_sqlite_delivery_seqs(const struct store_sq *s, int64_t *committed, int64_t *last);
int store_sqlite_attempt_put(struct store_sq *s, const char *delivery_id,
                             const struct store_attempt *a, const char *status, int64_t next_at,
                             int schedule_pos, char *err, size_t errlen);
int store_sqlite_delivery_counts(struct store_sq *s, struct store_counts *c);
int64_t store_sqlite_backlog(struct store_sq *s);
int store_sqlite_events_page(struct store_sq *s, const struct store_page *q,
                             struct store_event_row **rows, size_t *n, int64_t *next, char *err,
                             size_t errlen);
int store_sqlite_events_find(struct store_sq *s, const char *text, size_t max, char ***ids,
                             size_t *n, char *err, size_t errlen);
int store_sqlite_deliveries_page(struct store_sq *s, const struct store_page *q,
                                 struct store_delivery_item **rows, size_t *n, int64_t *next,
                                 char *err, size_t errlen);
int store_sqlite_event_get(struct store_sq *s, const char *id, struct store_event_row **row,
                           char *err, size_t errlen);
int store_sqlite_event_detail(struct store_sq *s, const char *id, struct store_event_detail **out,
                              char *err, size_t errlen);
int store_sqlite_delivery_retry(struct store_sq *s, const char *id, int64_t next_at, char *err,
                                size_t errlen);
int store_sqlite_delivery_skip(struct store_sq *s, const char *id, int64_t now, char *err,
                               size_t errlen);
int store_sqlite_endpoint_blocked(struct store_sq *s, const char *name, size_t max,
                                  struct store_blocked_key **out, size_t *n, char *err,
                                  size_t errlen);
int store_sqlite_sub_put(struct store_sq *s, const struct store_sub *sub, char *err, size_t errlen);
int store_sqlite_sub_change(struct store_sq *s, const char *id, const char *url, char *err,
                            size_t errlen);
int store_sqlite_sub_set_secret(struct store_sq *s, const char *id, const char *secret, char *err,
                                size_t errlen);
int store_sqlite_subs_load(struct store_sq *s, void (*fn)(void *arg, const struct store_sub *sub),
                           void *arg, char *err, size_t errlen);
int store_sqlite_endpoint_attempt(struct store_sq *s, const char *name, int ok, const char *error,
                                  int64_t now, int64_t *first_failure_at, char *err, size_t errlen);
int store_sqlite_endpoint_set_disabled(struct store_sq *s, const char *name, int disabled,
                                       const char *reason, int64_t now, int64_t *moved, char *err,
                                       size_t errlen);
int store_sqlite_endpoint_states(struct store_sq *s, struct store_endpoint_state **out, size_t *n,
                                 char *err, size_t errlen);
int64_t store_sqlite_endpoint_head(struct store_sq *s, const char *name, int64_t *next_at);
int store_sqlite_endpoint_claim(struct store_sq *s, const char *name, int64_t after_seq,
                                int64_t now, int64_t lease_ms, size_t max,
                                struct store_delivery **out, size_t *n, char *err, size_t errlen);
int store_sqlite_prune(struct store_sq *s, struct store_prune *p, char *err, size_t errlen);
int store_sqlite_reclaim(struct store_sq *s, int64_t keep_pages, int step_pages, int *freed,
                         char *err, size_t errlen);
int64_t store_sqlite_batch_next_close(struct store_sq *s);
int store_sqlite_batch_due(struct store_sq *s, int64_t now, struct store_batch_window **out,
                           size_t *n, char *err, size_t errlen);
int store_sqlite_batch_close(struct store_sq *s, const struct store_batch_window *w,
                             const char *status, int64_t next_at, size_t *count, char *err,
                             size_t errlen);

#endif
