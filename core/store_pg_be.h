/* store_pg_be.h -- the PostgreSQL backend of store_backend.h, shared by
 * its files and included by nothing else: the backend's state (two
 * store_pg_conn connections: the group on one, claims and reads on the
 * other), its transactions, and the parameter helpers. store_pg.c and
 * store_pg_conn.c stay below it (the schema step and the connection know
 * nothing of the store's rows).
 *
 * How an operation runs: it is a struct pg_op of a struct pg_tx. Its
 * statements are queued on the transaction's connection at once (nothing is
 * sent before the transaction ends), each result goes to the op's parse
 * (k-th statement, in order), and the op's callback runs once, when the
 * transaction's outcome is known: an explicit transaction (a group, a
 * claim) is BEGIN, the statements, Sync, COMMIT, Sync -- all sent in one
 * write, one round trip. Why COMMIT after its own Sync: a failed statement
 * makes the server skip everything up to the next Sync, and a skipped
 * COMMIT would leave the session in an aborted transaction that fails the
 * next group too; after the Sync the COMMIT always runs, ending the
 * transaction either way, and its command tag says which ("COMMIT", or
 * "ROLLBACK" for an aborted one). The callbacks then get the op's own
 * status (committed) or -1 (anything else, a connection lost before the
 * COMMIT's answer included: never an ok that was not). A read is its
 * statements and one Sync (its own implicit transaction); its callback
 * runs at its last result.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_PG_BE_H
#define CORE_STORE_PG_BE_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "store_backend.h"
#include "store_pg_int.h"
#include "util.h"

/* ---- the backend (store_pg_be.c: open, transactions; store_pg_write.c:
 * the group's writes; store_pg_claim.c: claims; store_pg_read.c: reads;
 * store_pg_retain.c: retention) ---- */

struct event;
struct pg_dead;
struct pg_floor;
struct pg_lost;
struct pg_op;
struct pg_tx;

/* Reads the k-th (from 0) result of op's statements into op; returns 0, or
 * -1 when out of memory (the transaction fails). */
typedef int (*pg_parse_fn)(struct pg_op *op, int k, const PGresult *res);

/* One operation: its statements' results go to parse; its callback runs
 * once, when its transaction's outcome is known (pg_tx_finish). */
struct pg_op {
    struct pg_op *next;
    struct pg_tx *tx;
    store_be_done_fn cb;
    void *arg;
    pg_parse_fn parse;
    void (*free_rows)(struct pg_op *op); /* frees rows (NULL: free(rows)) */
    int nstmt;                           /* statements queued */
    int got;                             /* results seen */
    int dropped;                         /* not all its statements were queued: cb never runs */
    int status;                          /* the op's status once its statements ran */
    void *rows;                          /* what cb is given (owned by the op) */
    size_t n;
    struct store_be_put *put; /* event_put's row, in rows */
    char *text;               /* a read's owned scratch */
    int64_t aux;              /* the op's own (a claim: the statement with its rows) */
    struct pg_floor *floor;   /* a due claim's endpoint's floor (store_pg_claim.c) */
    double rate;              /* a rated claim's rate */
};

/* A transaction on one connection: BEGIN, the ops' statements, Sync,
 * COMMIT, Sync (explicit), or the statements and a Sync (a read). */
struct pg_tx {
    struct store_be *be;
    struct store_pg_conn *conn;
    struct pg_op *ops, *tail;
    int explicit_tx; /* BEGIN ... COMMIT */
    int ended;       /* pg_tx_end was called */
    int failed;      /* a statement failed, or the connection was lost */
    int finishing;   /* its answers are under way */
    char err[512];
    store_be_done_fn cb; /* group_end's */
    void *arg;
    struct event *defer;         /* answers on the next loop turn */
    struct pg_tx *lnext, *lprev; /* the backend's live transactions */
};

struct store_be {
    struct event_base *base;
    char *url;
    char shown[512];               /* url without its password */
    char instance[UTIL_ID_MAX];    /* the lease owner */
    struct store_pg_conn *wr, *rd; /* the group; claims and reads */
    struct pg_tx *group;           /* the open group, NULL when none */
    struct pg_tx *txs;             /* every live transaction (close answers them) */
    int in_call;                   /* > 0 inside an interface call: answers wait for the loop */
    struct util_buf buf;           /* scratch for array parameters */
    int64_t nonces_pruned_at;      /* nonce_put's last prune (Unix ms) */
    struct pg_lost *lost;          /* claims whose answer was lost (store_pg_be.c) */
    size_t nlost;
    int64_t last_until; /* the last claim's lease end: each claim's is its own */
    int closing;        /* be_close runs: a claim failing now was not lost */
    /* store_pg_reap.c: dead instances' leases given back */
    struct event *reap_timer; /* every second */
    struct pg_dead *dead;     /* instances seen without their session lock */
    int reap_busy;            /* a look or a release in flight */
    int64_t lost_ms;          /* when a connection of this instance was last lost (monotonic) */
    int lock_key;             /* instances.lock_key: the session lock's second key */
    /* store_pg_claim.c: each endpoint's claim floor; the floor the next
     * next_due read of floor_next's endpoint starts from */
    struct pg_floor *floors;
    struct pg_floor *floor_next;
};

/* A new transaction on conn (explicit: BEGIN queued). NULL when down. */
struct pg_tx *pg_tx_new(struct store_be *be, struct store_pg_conn *conn, int explicit_tx);
/* A new op of tx (cb, arg, parse); NULL when out of memory. */
struct pg_op *pg_op_new(struct pg_tx *tx, store_be_done_fn cb, void *arg, pg_parse_fn parse);
/* Queues one statement of op (n text parameters). 0, or -1 (tx failed). */
int pg_op_query(struct pg_op *op, const char *sql, int n, const char *const *params);
/* Removes op (its statements could not all be queued; its cb never runs)
 * and fails tx, whose other ops will get -1. */
void pg_op_drop(struct pg_op *op, const char *why);
/* Ends tx: Sync (explicit: then COMMIT and a second Sync), or, when that
 * cannot be sent, its failure from the loop. */
void pg_tx_end(struct pg_tx *tx, store_be_done_fn cb, void *arg);
/* Marks tx failed with why (the first reason is kept). */
void pg_tx_fail(struct pg_tx *tx, const char *why);
/* A one-op transaction in one call: a read (explicit 0) or a claim. The op
 * is handed back for its statements; pg_tx_end follows them. */
struct pg_op *pg_single(struct store_be *be, struct store_pg_conn *conn, int explicit_tx,
                        store_be_done_fn cb, void *arg, pg_parse_fn parse);

/* Array literals for parameters ('{"a",NULL}'): appends item i of n (NULL
 * is SQL NULL) to b; pg_arr_open / pg_arr_close around them. */
int pg_arr_text(struct util_buf *b, size_t i, const char *s);
int pg_arr_hex(struct util_buf *b, size_t i, const void *p, size_t len);
int pg_arr_int(struct util_buf *b, size_t i, int64_t v);
/* A bytea's bytes as plain hex (for decode($n, 'hex')), NUL-terminated,
 * malloc'd; NULL when p is NULL or out of memory. */
char *pg_hex(const void *p, size_t len);
/* A column's text copied (NULL for SQL NULL); *oom set when out of memory. */
char *pg_col(const PGresult *res, int row, int col, int *oom);
int64_t pg_col_int(const PGresult *res, int row, int col);

/* The number of queries and Syncs sent on be's write and read connections. */
void store_pg_be_counts(const struct store_be *be, uint64_t *wr_queries, uint64_t *wr_syncs,
                        uint64_t *rd_queries, uint64_t *rd_syncs);

/* The op tables of the files (store_pg_write.c, store_pg_state.c,
 * store_pg_claim.c, store_pg_read.c), gathered in store_pg_be.c's store_pg_backend. */
int store_pg_event_put(struct store_be *be, const struct store_event *ev,
                       const struct store_plan *plan, store_be_done_fn cb, void *arg);
int store_pg_event_routed(struct store_be *be, const char *event_id, const struct store_plan *plan,
                          store_be_done_fn cb, void *arg);
int store_pg_nonce_put(struct store_be *be, const char *source, const char *nonce,
                       const char *digest, int64_t now_ms, int64_t keep_ms, store_be_done_fn cb,
                       void *arg);
int store_pg_attempt_put(struct store_be *be, const char *delivery_id,
                         const struct store_attempt *a, const char *status, int64_t next_at,
                         int schedule_pos, store_be_done_fn cb, void *arg);
int store_pg_lease_renew(struct store_be *be, int64_t seq, int64_t until, int64_t release_at,
                         store_be_done_fn cb, void *arg);
int store_pg_batch_close(struct store_be *be, const struct store_batch_window *w,
                         const char *status, int64_t next_at, store_be_done_fn cb, void *arg);
int store_pg_endpoint_attempt(struct store_be *be, const char *name, int ok, const char *error,
                              int64_t now, store_be_done_fn cb, void *arg);
int store_pg_endpoint_set_disabled(struct store_be *be, const char *name, int disabled,
                                   const char *reason, int64_t now, store_be_done_fn cb, void *arg);
int store_pg_delivery_retry(struct store_be *be, const char *id, int64_t next_at,
                            store_be_done_fn cb, void *arg);
int store_pg_delivery_skip(struct store_be *be, const char *id, int64_t now, store_be_done_fn cb,
                           void *arg);
int store_pg_sub_put(struct store_be *be, const struct store_sub *sub, store_be_done_fn cb,
                     void *arg);
int store_pg_sub_change(struct store_be *be, const char *id, const char *url, store_be_done_fn cb,
                        void *arg);
int store_pg_sub_set_secret(struct store_be *be, const char *id, const char *secret,
                            store_be_done_fn cb, void *arg);
int store_pg_claim(struct store_be *be, const char *endpoint, int64_t after_seq, int64_t now,
                   int64_t lease_ms, size_t max, size_t cap, double rate, store_be_done_fn cb,
                   void *arg);
int store_pg_batch_due(struct store_be *be, int64_t now, store_be_done_fn cb, void *arg);
int store_pg_ping(struct store_be *be, store_be_done_fn cb, void *arg);
int store_pg_events_page(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                         void *arg);
int store_pg_event_detail(struct store_be *be, const char *id, store_be_done_fn cb, void *arg);
int store_pg_deliveries_page(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                             void *arg);
int store_pg_endpoint_next_due(struct store_be *be, const char *name, store_be_done_fn cb,
                               void *arg);
int store_pg_batch_next_close(struct store_be *be, store_be_done_fn cb, void *arg);
int store_pg_endpoints_pending(struct store_be *be, store_be_done_fn cb, void *arg);
int store_pg_endpoint_states(struct store_be *be, store_be_done_fn cb, void *arg);
int store_pg_subs_load(struct store_be *be, store_be_done_fn cb, void *arg);
int store_pg_events_unrouted(struct store_be *be, int64_t after_seq, size_t max,
                             store_be_done_fn cb, void *arg);
int store_pg_event_get(struct store_be *be, const char *id, store_be_done_fn cb, void *arg);
int store_pg_events_find(struct store_be *be, const char *text, size_t max, store_be_done_fn cb,
                         void *arg);
int store_pg_endpoint_head(struct store_be *be, const char *name, store_be_done_fn cb, void *arg);
int store_pg_backlog(struct store_be *be, store_be_done_fn cb, void *arg);
int store_pg_endpoint_queue(struct store_be *be, const char *name, int64_t now, int64_t due_cap,
                            int counts, store_be_done_fn cb, void *arg);
int store_pg_endpoint_blocked(struct store_be *be, const char *name, size_t max,
                              store_be_done_fn cb, void *arg);
int store_pg_delivery_counts(struct store_be *be, store_be_done_fn cb, void *arg);
/* store_pg_state.c: the group's gathered endpoint attempts, one upsert
 * per endpoint, queued on tx before its end. */
void store_pg_health_flush(struct store_be *be, struct pg_tx *tx);
/* store_pg_claim.c: the floor the next_due read of endpoint right after
 * its claim starts from (INT64_MIN: none), and the floors freed. */
int64_t store_pg_floor_next_due(struct store_be *be, const char *endpoint);
void store_pg_floors_free(struct store_be *be);
/* store_pg_reap.c: starts the look for dead instances (every second), or
 * stops it and forgets what it saw. */
int store_pg_reap_start(struct store_be *be);
void store_pg_reap_stop(struct store_be *be);
/* store_pg_retain.c */
int store_pg_prune(struct store_be *be, const struct store_prune *p, store_be_done_fn cb,
                   void *arg);

#endif
