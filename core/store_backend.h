/* store_backend.h -- the designed private interface between the store's
 * backend-neutral engine and a backend (issue 15). Nothing implements it
 * yet: today store.c and store_*.c are the SQLite store whole, and
 * store_pg*.c has the connection and the schema. The next step moves the
 * SQLite code behind these operations (store_sqlite*.c) with no change of
 * behaviour, then store_pg*.c implements them; store.h stays what the rest
 * of waybill sees.
 *
 * What stays in the engine (store.c, backend-neutral): the group commit
 * (one group per loop turn, store_on_commit / store_on_written callbacks,
 * "nothing is reported durable before its group committed"), the delivery
 * and event watermarks, the backlog counter, the full-disk / writable
 * state, metrics. What a backend does: turn each operation into its
 * statements, run a group as one transaction, answer reads.
 *
 * The one shape that fits both backends: every operation is asynchronous.
 * An operation is queued with a callback; the backend answers it from the
 * loop, never from inside the call (SQLite answers on the next loop turn,
 * having run the statement at once on its loop connection; PostgreSQL when
 * the result arrives on its pipeline). This is the real change for the
 * callers: today's reads return rows synchronously (store.h); with a
 * database across the network they cannot without blocking the loop, so
 * admin.c, admin_web.c, deliver_sched.c, housekeep.c and batch.c move to
 * callbacks (their HTTP answers already are asynchronous: evhttp and the
 * webhook server reply when they like). First step taken: store.h's
 * store_read_* calls (store_reply.c on SQLite) answer the admin API's
 * pages, event detail, find, batch windows, counts, endpoints (state,
 * queue, blocked keys: store_read_endpoints, one read for GET
 * /api/endpoints and /metrics) and /healthz's ping that way: every admin
 * read; the loop's own reads (claims, batch, recovery, health) are next.
 *
 * Kinds of operation, and how PostgreSQL runs them:
 * - GROUP writes: queued between group_begin and group_end; PostgreSQL
 *   pipelines the whole group -- BEGIN, every write's statements, COMMIT,
 *   one Sync -- on the write connection: one round trip per group (per loop
 *   turn), not per row. A write's callback reports its own rows (the
 *   event's seq, a dedupe hit, the count of a batch window); group_end's
 *   callback is the COMMIT's outcome, the only thing that makes anything
 *   durable. A failed statement aborts the group (PostgreSQL: every later
 *   statement comes back PIPELINE_ABORTED; the engine rolls the group back
 *   and each waiting request gets its 503).
 * - CLAIMS: their own short transaction, so a lease is taken at once
 *   whatever the group does: on PostgreSQL one statement (UPDATE
 *   delivery_queue ... WHERE delivery_seq IN (SELECT ... FOR UPDATE SKIP
 *   LOCKED LIMIT n) RETURNING ..., joined to deliveries for the payload),
 *   committed by its own Sync, on the read connection.
 * - READS: one statement (or a few) on the read connection, each its own
 *   implicit transaction; they see committed state only (the admin API's
 *   promise on several instances: every instance answers the same).
 * PostgreSQL uses two connections per instance (writes; claims and reads),
 * so a long read never waits behind a group and the order inside each
 * pipeline is the order of queuing; a third, direct, for LISTEN (not
 * through PgBouncer) when the shared state comes.
 *
 * Mapping from store.h (G: group write, C: claim, R: read):
 *   store_event_put         G event_put (event + plan in one op: PG sends
 *                             INSERT events ... ON CONFLICT (source,
 *                             source_id) DO NOTHING RETURNING seq, then the
 *                             deliveries as one INSERT ... SELECT FROM
 *                             unnest($arrays) and the queue rows, then the
 *                             batch items and their windows' counts: three
 *                             statements per event whatever its fan-out)
 *   store_event_routed      G event_routed (the plan of a replayed or
 *                             recovered event)
 *   store_nonce_put         G nonce_put (INSERT ... ON CONFLICT: a replayed
 *                             nonce is seen across instances)
 *   store_attempt_put       G attempt_put (attempts appended; the queue row
 *                             updated or, at the end, moved to
 *                             delivery_outcomes)
 *   store_delivery_lease    G lease_renew (owner checked: a lease another
 *                             instance took since is not renewed: counted as
 *                             a duplicate risk in /metrics)
 *   store_delivery_retry, store_delivery_skip, store_endpoint_attempt,
 *   store_endpoint_set_disabled, store_sub_put, store_sub_change,
 *   store_batch_close, store_prune
 *                           G one op each, same arguments (batch_close: the
 *                             window row locked FOR UPDATE and closed_at set
 *                             once: one batch across instances)
 *   store_endpoint_claim_due, store_endpoint_claim
 *                           C claim (endpoint, now, lease_ms, max, after_seq
 *                             for an ordered endpoint, owner = instance id;
 *                             ordered: only the instance holding
 *                             endpoint_state.head_owner claims its head)
 *   store_events_unrouted, store_events_page, store_events_find,
 *   store_event_get, store_event_detail, store_deliveries_page,
 *   store_delivery_counts, store_endpoint_states, store_endpoint_blocked,
 *   store_endpoint_queue, store_endpoint_head, store_endpoint_next_due,
 *   store_endpoints_pending, store_subs_load, store_batch_due,
 *   store_batch_next_close, store_backlog
 *                           R one op each, same arguments, rows handed to
 *                             the callback (owned by the callee until it
 *                             returns, as the row structs of store.h)
 *   store_ping              R ping (SELECT 1; /healthz)
 *   store_open / store_free, store_flush, store_idle, store_writable,
 *   store_on_commit / store_on_written, store_delivery_seqs
 *                           engine (the backend's open/close/group ops
 *                             below)
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_BACKEND_H
#define CORE_STORE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct event_base;
struct store_be; /* a backend's state: its connections, statements */

/* How an operation ends: status 0 ok (rows/n, when the op returns rows, are
 * owned by the backend for the call), STORE_DUP for a dedupe hit, -1 with
 * err (never a password) on failure, including a connection lost before
 * the answer came: never an ok that was not. */
typedef void (*store_be_done_fn)(void *arg, int status, const void *rows, size_t n,
                                 const char *err);

/* What the engine asks of a backend. Each queuing function returns 0 (cb
 * will run exactly once, from the loop), or -1 (cb will not run; the
 * backend is down or out of memory). */
struct store_backend_ops {
    const char *name; /* "sqlite", "postgresql" */

    /* ---- lifecycle ---- */
    /* Opens url: schema created or brought up to date (PostgreSQL: under
     * pg_advisory_xact_lock), refused when newer than the binary; SQLite
     * also takes its one-process flock. */
    int (*open)(struct store_be **out, struct event_base *base, const char *url,
                const char *base_dir, char *err, size_t errlen);
    void (*close)(struct store_be *be);
    /* 1 when the backend can take a group now (PostgreSQL: connected). */
    int (*ready)(const struct store_be *be);

    /* ---- the group (G) ---- */
    int (*group_begin)(struct store_be *be);
    /* COMMIT (and, SQLite with sync=full, the fsync); cb's status is the
     * group's: 0 committed and durable, -1 rolled back. */
    int (*group_end)(struct store_be *be, store_be_done_fn cb, void *arg);
    int (*event_put)(struct store_be *be, const struct store_event *ev,
                     const struct store_plan *plan, store_be_done_fn cb, void *arg);
    int (*event_routed)(struct store_be *be, const char *event_id, const struct store_plan *plan,
                        store_be_done_fn cb, void *arg);
    int (*nonce_put)(struct store_be *be, const char *source, const char *nonce, const char *digest,
                     int64_t now_ms, int64_t keep_ms, store_be_done_fn cb, void *arg);
    int (*attempt_put)(struct store_be *be, const char *delivery_id, const struct store_attempt *a,
                       const char *status, int64_t next_at, int schedule_pos, store_be_done_fn cb,
                       void *arg);
    int (*lease_renew)(struct store_be *be, int64_t seq, int64_t until, store_be_done_fn cb,
                       void *arg);
    /* ... and one per remaining G call of the mapping above, same
     * arguments as in store.h plus (cb, arg). */

    /* ---- claims (C) ---- */
    int (*claim)(struct store_be *be, const char *endpoint, int64_t after_seq, int64_t now,
                 int64_t lease_ms, size_t max, store_be_done_fn cb, void *arg);

    /* ---- reads (R) ---- */
    int (*ping)(struct store_be *be, store_be_done_fn cb, void *arg);
    int (*events_page)(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                       void *arg);
    /* ... and one per remaining R call of the mapping above. */
};

#endif
