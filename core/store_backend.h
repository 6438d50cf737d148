/* store_backend.h -- the private interface between the store's one engine
 * (store_bx.c: the group, its callbacks, the watermarks, the backlog, the
 * reads of the start; store_bx_write.c: writes, store_*_done;
 * store_bx_read.c: store_read_*, store_get_*, claims) and its backends,
 * chosen by the store URL at store_open:
 * - PostgreSQL (store_pg_be.c, store_pg_write.c, store_pg_claim.c,
 *   store_pg_read.c: the ops in store_pg_backend below, tested against a
 *   real PostgreSQL by tests/integration/test_pg_ops.py);
 * - SQLite (store_sqlite_be.c: the ops in store_sqlite_backend, the SQLite
 *   engine's calls run at once on the loop connection and answered from
 *   the loop, tested by tests/unit/test_store_sqlite_ops.c; the engine's
 *   calls themselves by tests/unit/test_store.c).
 * store.h stays what the rest of waybill sees; store.c hands each of its
 * calls to the engine.
 *
 * What the engine does where the SQLite store once read synchronously:
 * - store_subs_load, health's first store_endpoint_states: at the start,
 *   before anything is served, the loop runs inside the call until the
 *   answer came (store_loop_running says when the loop runs; inside it
 *   these calls fail). Health's re-read after a rolled-back group then
 *   reads asynchronously (health_reload): memory stands until the answer.
 * - route.c's batch count after an add: 0 at the call; the counts come in
 *   event_put's (event_routed's) row and are written into the caller's
 *   plan before its answer, where route_plan_counted closes a window found
 *   full (max_batch): one group after the add that filled it.
 * - store_delivery_seqs: groups, not rows: last = groups begun, committed =
 *   groups ended; the scheduler's kick for new rows runs from group_end's
 *   answer, when every row of the group is claimable by any instance.
 * - store_backlog: the backlog op read at most once a second plus this
 *   instance's inserts since.
 * - Claims wait for this instance's open and in-flight groups (one group
 *   later; not where claims_see_open_group, SQLite): SQLite's loop reads see the open group, the
 * read connection does not, and a claim must see the outcome just written (an ordered head was sent
 * twice without it). An ordered claim that skipped its head (the head's retry committed between the
 * two reads) gives its rows back.
 * - Rows other instances insert, and leases of a dead instance once
 *   expired: found by the scheduler's watchdog read every second
 *   (store_shared: the endpoints with pending rows, each one's next due
 *   time), so within about a second; after a SIGKILL, once the dead
 *   instance's session lock has been seen gone for 2 s (store_pg_reap.c),
 *   or behind a pooler when the lease ends (the `lease` setting, default
 *   30 s, renewed while an attempt runs).
 * - Retention (prune): a pass is a short transaction of its own on the
 *   read connection, not a write of the group (SQLite's runs in the
 *   group): its deletes never lengthen a group's round trip, and it can
 *   neither fail a group nor deadlock with one (store_pg_retain.c). Each
 *   instance walks on its own cursors; the passes of several instances
 *   step over each other's locked rows. Reclaim answers "nothing done":
 *   PostgreSQL's autovacuum reclaims.
 * - Faults: a write when the backend is down, or whose group did not
 *   commit, answers ok 0 (a 503 to the carrier; /healthz 503 through
 *   store_writable and the ping); claims and reads fail and the scheduler
 *   polls; the connections reconnect on their own backoff
 *   (store_pg_conn.c) and serving carries on.
 *
 * What stays in the engine (store_bx*.c, backend-neutral): the group commit
 * (one group per loop turn, store_on_commit / store_on_written callbacks,
 * "nothing is reported durable before its group committed"), the
 * full-disk / writable state, metrics. What a backend does: turn each
 * operation into its statements, run a group as one transaction, answer
 * reads.
 *
 * The one shape that fits both backends: every operation is asynchronous.
 * An operation is queued with a callback; the backend answers it from the
 * loop, never from inside the call (SQLite answers on the next loop turn,
 * having run the statement at once on its loop connection; PostgreSQL when
 * the result arrives on its pipeline). This is the real change for the
 * callers: the store's reads returned rows synchronously and its writes
 * returned values read from the open group; with a database across the
 * network they cannot without blocking the loop. Done on SQLite, behind
 * store.h: every admin read (store_read_*, store_sqlite_reply.c); the loop's own
 * reads, claims with their next due time, an ordered endpoint's head with
 * its claim, the watchdog's due times, the batch closer's windows
 * (store_read_claim_* etc., store_sqlite_reply.c); and every write whose value
 * a caller acts on, with the loop's reads of ingest, admin actions,
 * health, retention and recovery (store_*_done, store_get_*,
 * store_sqlite_done.c: the value held until the group ends). What still reads
 * the open group at once on SQLite: the count of a batch window's items
 * after an event's add (route.c closes a full window), and
 * store_subs_load and health's first states read at start, before the
 * loop runs (their PostgreSQL answers: above).
 *
 * Kinds of operation, and how PostgreSQL runs them (store_pg_be.h has the
 * transaction machinery):
 * - GROUP writes: queued between group_begin and group_end; PostgreSQL
 *   pipelines the whole group -- BEGIN, every write's statements, Sync,
 *   COMMIT, Sync -- on the write connection, sent in one write: one round
 *   trip per group (per loop turn), not per row (the test counts two Syncs
 *   and 2 + 3 x events statements per group, whatever the fan-out). The
 *   design said "BEGIN ... COMMIT, one Sync"; that was wrong: after a failed
 *   statement the server skips to the next Sync, COMMIT included, and the
 *   session stays in an aborted transaction that fails the next group too.
 *   A COMMIT after its own Sync always runs and ends the transaction; its
 *   command tag says whether it committed. A write's callback runs when
 *   the group's outcome is known (not as its own rows arrive, as first
 *   designed): with its status and rows (the event's seq, a dedupe hit,
 *   its batch windows' counts) when the group committed, with -1 when it
 *   did not -- a failed statement, a connection lost before the COMMIT's
 *   answer -- then group_end's callback. So a write never reports an ok
 *   its group did not keep, and the engine maps -1 to each request's 503.
 * - CLAIMS: their own short transaction on the read connection, so a lease
 *   is taken at once whatever the group does: BEGIN, one UPDATE
 *   delivery_queue ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
 *   RETURNING (joined to deliveries for the payload), Sync, COMMIT, Sync;
 *   the rows reach the caller only after the COMMIT (a claim answered
 *   before would hand out rows whose lease could still be lost). A
 *   retention pass (prune) runs the same way (store_pg_retain.c).
 * - READS: one statement (or a few) and a Sync on the read connection, its
 *   own implicit transaction; they see committed state only (the admin
 *   API's promise on several instances: every instance answers the same).
 * PostgreSQL uses two connections per instance (writes; claims and reads),
 * so a long read never waits behind a group and the order inside each
 * pipeline is the order of queuing. No third connection for LISTEN: the
 * state other instances change (endpoint states, subscriptions) is polled
 * once a second on the read connection (health_poll, subs_poll;
 * health.c says why).
 *
 * What the engine/SQLite split needs to know from the PostgreSQL side:
 * - The watermarks (committed delivery seq, event seq, store_delivery_seqs)
 *   are SQLite's: on PostgreSQL a claim sees committed rows by
 *   construction, and other instances insert too, so a local high-water
 *   mark means nothing there. The backlog counter likewise becomes a read
 *   (or a per-instance estimate refreshed by one).
 * - Plan-derived values belong in the engine: the delivery ids
 *   (util_id_derive of event id, endpoint, place) and the events.matched
 *   JSON: store_plan.c builds both (store_plan_ids, store_plan_matched),
 *   and both SQLite's events (store_sqlite_events.c) and the PostgreSQL
 *   backend's event statements (store_pg_write.c) use it.
 * - The plan is const for a backend: a batch item's window count comes
 *   back in event_put's row (struct store_be_put), not written into the
 *   plan as event_put does.
 * - Claims: one op (after_seq < 0: due; >= 0: ordered). The "a leased row
 *   not held in memory was dropped by this process" rule of SQLite's
 *   ordered claim becomes "leased by this instance" (the lease owner).
 * - Batch: due windows are found from open items, not from a window table
 *   (an item added while a close ran forms the next batch of the window,
 *   as on SQLite); the batch delivery's id is random on PostgreSQL (a
 *   COMMIT that answered is durable: no close is taken back by a power cut).
 * - lease_renew until 0 is store_delivery_lease(lease 0): a release.
 * - event_routed serves a replay (new ids) and the recovery of an event a
 *   crash left "received" (derived ids). With several instances, two may
 *   recover the same event at once: the plan's first_only (store.h) makes
 *   the second write nothing (the event's row is locked and its status
 *   re-checked), answered STORE_ROUTED_ALREADY.
 * - Deadlocks: two groups inserting two events with the same two carrier
 *   ids in opposite orders wait for each other on the unique key;
 *   PostgreSQL aborts one (its group -1: its requests get 503, the
 *   carriers retry). Rare enough not to order a group's events.
 *
 * Mapping from store.h (G: group write, C: claim, R: read):
 *   event_put         G event_put (event + plan in one op: PG sends
 *                             one statement, INSERT events ... ON CONFLICT
 *                             (source, source_id) DO NOTHING RETURNING,
 *                             whose WITH clauses insert the deliveries, their
 *                             queue rows, the batch windows and items from
 *                             unnest($arrays) off the event's RETURNING (a
 *                             dedupe hit inserts nothing); then the stored
 *                             copy's id; then the windows' counts (when the
 *                             plan has batch items): three statements per
 *                             event whatever its fan-out)
 *   event_routed      G event_routed (the plan of a replayed or
 *                             recovered event)
 *   nonce_put         G nonce_put (INSERT ... ON CONFLICT: a replayed
 *                             nonce is seen across instances)
 *   store_attempt_put       G attempt_put (attempts appended; the queue row
 *                             updated or, at the end, moved to
 *                             delivery_outcomes)
 *   store_delivery_lease    G lease_renew (owner checked: a lease another
 *                             instance took since is not renewed: counted as
 *                             a duplicate risk in /metrics)
 *   delivery_retry, delivery_skip, endpoint_attempt,
 *   endpoint_set_disabled, sub_put, sub_change,
 *   store_batch_close        G one op each, same arguments (batch_close: the
 *                             window row locked by an upsert setting
 *                             closed_at, its open items FOR UPDATE: a
 *                             racing close finds them taken; done)
 *   endpoint_claim_due, endpoint_claim
 *                           C claim (endpoint, now, lease_ms, max, after_seq
 *                             for an ordered endpoint, owner = instance id;
 *                             ordered: only the instance holding
 *                             endpoint_state.head_owner claims its head)
 *   prune             C prune (a retention pass: its own transaction,
 *                             its rows locked SKIP LOCKED, as a claim's)
 *   events_unrouted, events_page, events_find,
 *   event_get, event_detail, deliveries_page,
 *   delivery_counts, store_endpoint_states, endpoint_blocked,
 *   endpoint_queue, endpoint_head, endpoint_next_due,
 *   endpoints_pending, store_subs_load, batch_due,
 *   batch_next_close, store_backlog
 *                           R one op each, same arguments, rows handed to
 *                             the callback (owned by the callee until it
 *                             returns, as the row structs of store.h)
 *   ping              R ping (SELECT 1; /healthz)
 *   store_open / store_free, store_flush, store_idle, store_writable,
 *   store_on_commit / store_on_written, store_delivery_seqs
 *                           engine (the backend's open/close/group ops
 *                             below)
 *
 * Built on PostgreSQL today: open, close, ready, instance, group_begin,
 * group_end, event_put, nonce_put, attempt_put, lease_renew, batch_close,
 * endpoint_attempt, endpoint_set_disabled, delivery_retry, delivery_skip,
 * sub_put, sub_change, claim, ping, events_page, event_detail,
 * deliveries_page, delivery_counts, batch_due, event_routed,
 * endpoint_next_due, batch_next_close, endpoints_pending, endpoint_states,
 * subs_load, events_unrouted, sub_set_secret, event_get, events_find,
 * endpoint_head, backlog, endpoint_queue, endpoint_blocked, prune
 * (retention: store_pg_retain.c). Not built, and not needed: reclaim
 * (PostgreSQL's autovacuum gives dead rows' room back). The batch
 * windows' admin read is batch_due at the end of time (every open window).
 * Built on SQLite: every op, reclaim included. Where SQLite departs, one
 * process owning its file: claims answer on the next loop turn with their
 * leases written in the open group, not committed (a restart releases
 * every lease), and ignore cap and rate (the scheduler keeps them); the
 * instance is "sqlite"; a lease is never lost (lease_renew 0), an attempt
 * never recorded twice (attempt_put 0); prune and reclaim run in the
 * group, as the SQLite engine's retention does.
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
 * the answer came: never an ok that was not. A group write's callback runs
 * once its group's outcome is known, just before group_end's: with the
 * write's own status and rows when the group committed, with -1 (and the
 * group's reason) for every write of a group that did not. */
typedef void (*store_be_done_fn)(void *arg, int status, const void *rows, size_t n,
                                 const char *err);

/* lease_renew's status when the lease is no longer this instance's (it
 * expired and another instance claimed the row): nothing was written. */
#define STORE_LEASE_LOST 3

/* event_put's row (n 1): the event's seq (0 on a dedupe hit), the id of the
 * stored copy (the event's own, or the first copy's on STORE_DUP), and the
 * open items of each batch item's window after the add (counts[i] for the
 * plan's items[i]; ncounts 0 on a dedupe hit). */
struct store_be_put {
    int64_t seq;
    char id[UTIL_ID_MAX];
    const int64_t *counts;
    size_t ncounts;
};

/* What the engine asks of a backend. Each queuing function returns 0 (cb
 * will run exactly once, from the loop), or -1 (cb will not run; the
 * backend is down, the open group already failed, or out of memory). */
struct store_backend_ops {
    const char *name; /* "sqlite", "postgresql" */
    /* 1 when several processes may run on one store (store_shared). */
    int shared;
    /* 1 when a claim sees the outcomes this process wrote in its open
     * group (SQLite: the loop connection's own transaction), so a claim
     * need not wait for the groups open or in flight (store_bx_read.c). */
    int claims_see_open_group;

    /* ---- lifecycle ---- */
    /* Opens url: schema created or brought up to date (PostgreSQL: under
     * pg_advisory_xact_lock), refused when newer than the binary; SQLite
     * also takes its one-process flock. Connections come up from the loop
     * (ready says when). */
    int (*open)(struct store_be **out, struct event_base *base, const char *url,
                const char *base_dir, char *err, size_t errlen);
    void (*close)(struct store_be *be); /* what is in flight gets -1 */
    /* 1 when the backend can take a group now (PostgreSQL: connected). */
    int (*ready)(const struct store_be *be);
    /* This process's id as a lease owner (PostgreSQL: an "ins_" id made at
     * open, also a row of the instances table). */
    const char *(*instance)(const struct store_be *be);

    /* ---- the group (G) ---- */
    /* -1 when a group is open already or the backend is down. */
    int (*group_begin)(struct store_be *be);
    /* COMMIT (and, SQLite with sync=full, the fsync); cb's status is the
     * group's: 0 committed and durable, -1 rolled back or not known to
     * have committed (a connection lost before the answer). Every write
     * queued in the group has its callback run first. Returns 0 whenever
     * a group was open (a backend that is down answers -1 from the loop),
     * -1 when none was. */
    int (*group_end)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: struct store_be_put; plan NULL stores the event "received".
     * The plan's delivery ids are derived as store.h says (util_id_derive
     * of the event id, the endpoint and the place in the plan). */
    int (*event_put)(struct store_be *be, const struct store_event *ev,
                     const struct store_plan *plan, store_be_done_fn cb, void *arg);
    /* rows: struct store_be_put (the event's seq and id, its windows'
     * counts); status 0, or 2 for an unknown id (nothing written, the group
     * goes on). The event's row is locked: two instances routing it at once
     * take turns, and the second sees it routed (a replay: new ids). */
    int (*event_routed)(struct store_be *be, const char *event_id, const struct store_plan *plan,
                        store_be_done_fn cb, void *arg);
    /* status 0 new, STORE_DUP seen with the same digest, STORE_REPLAY seen
     * with another (nothing written), as nonce_put. */
    int (*nonce_put)(struct store_be *be, const char *source, const char *nonce, const char *digest,
                     int64_t now_ms, int64_t keep_ms, store_be_done_fn cb, void *arg);
    /* Records attempt a->n of the delivery once (status 0; STORE_DUP when
     * that attempt was recorded already, by another instance whose lease
     * expired under it: nothing written) and moves the queue row: pending
     * or held at next_at, or, delivered and failed, out to the outcomes. */
    int (*attempt_put)(struct store_be *be, const char *delivery_id, const struct store_attempt *a,
                       const char *status, int64_t next_at, int schedule_pos, store_be_done_fn cb,
                       void *arg);
    /* until > 0: renews the lease of the delivery at seq to until if this
     * instance still holds it (status 0, else STORE_LEASE_LOST); until 0:
     * releases it, claimable again at release_at, the row's due time as
     * claimed (SQLite's lease moved next_at and writes it back; PostgreSQL's
     * lease is a column of its own and next_at never moved). */
    int (*lease_renew)(struct store_be *be, int64_t seq, int64_t until, int64_t release_at,
                       store_be_done_fn cb, void *arg);
    /* Closes w's open items into one batch delivery (status, next_at);
     * rows: one int64_t, the items sent (0: none were open, or another
     * instance closed them first: nothing written). */
    int (*batch_close)(struct store_be *be, const struct store_batch_window *w, const char *status,
                       int64_t next_at, store_be_done_fn cb, void *arg);
    /* rows: one int64_t, the start of the endpoint's current run of
     * failures (0 after a success), as endpoint_attempt. */
    int (*endpoint_attempt)(struct store_be *be, const char *name, int ok, const char *error,
                            int64_t now, store_be_done_fn cb, void *arg);
    /* rows: one int64_t, the deliveries moved (pending -> held, or held
     * -> pending due by now, leases cleared). */
    int (*endpoint_set_disabled)(struct store_be *be, const char *name, int disabled,
                                 const char *reason, int64_t now, store_be_done_fn cb, void *arg);
    /* status 1 done, 0 unknown id, 2 not failed (skip: not a failed
     * delivery holding a key), as delivery_retry / _skip. */
    int (*delivery_retry)(struct store_be *be, const char *id, int64_t next_at, store_be_done_fn cb,
                          void *arg);
    int (*delivery_skip)(struct store_be *be, const char *id, int64_t now, store_be_done_fn cb,
                         void *arg);
    /* sub_put: 0, or STORE_DUP when its pattern has one; sub_change (url
     * NULL: delete): 1 done, 0 unknown id. */
    int (*sub_put)(struct store_be *be, const struct store_sub *sub, store_be_done_fn cb,
                   void *arg);
    int (*sub_change)(struct store_be *be, const char *id, const char *url, store_be_done_fn cb,
                      void *arg);
    /* 1 done, 0 unknown id. */
    int (*sub_set_secret)(struct store_be *be, const char *id, const char *secret,
                          store_be_done_fn cb, void *arg);
    /* One retention pass of p (store.h, struct store_prune: the events
     * with seq in (cursor, upto], up to max, received before before_ms):
     * the old ones that are done deleted with their rows, the others
     * stepped over. Not a group write: a short transaction of its own
     * (PostgreSQL: on the read connection, as a claim), committed before
     * cb runs. rows: one struct store_prune, p with its out fields set and
     * its cursor advanced (as prune). Several instances' passes at
     * once are safe and never wait for one another: each locks what it
     * deletes (SKIP LOCKED: a row another holds is stepped over) and
     * checks what must stay after its locks were granted
     * (store_pg_retain.c). budget_us is not used: a pass is one bounded
     * round trip. */
    int (*prune)(struct store_be *be, const struct store_prune *p, store_be_done_fn cb, void *arg);

    /* ---- claims (C) ---- */
    /* after_seq < 0: up to max of endpoint's due pending deliveries,
     * earliest first, not leased or their lease expired (any owner's), a
     * delivery with an order key only when no earlier one of its key is
     * live or failed. after_seq >= 0 (an ordered endpoint): first takes
     * or renews the endpoint's head (endpoint_state.head_owner, until now +
     * lease_ms; another instance's only once expired), then, if this
     * instance holds it, up to max deliveries with seq > after_seq in seq
     * order, due or leased by this instance. Each claimed row is leased to
     * this instance until now + lease_ms, committed before cb sees it.
     * cap > 0 (after_seq < 0 only): the claim first locks the endpoint's
     * endpoint_state row (claims of one endpoint take turns, across
     * instances), then takes at most cap minus the endpoint's rows whose
     * lease is live and another instance's (cap is what this instance may
     * still lease: its scheduler counts its own rows): the endpoint's
     * concurrency holds across instances. rate > 0 (with cap > 0): under that lock, the
     * endpoint's shared token bucket is refilled (rate per second by the
     * database's clock, up to store_rate_burst(rate)) and the claim takes
     * at most its whole tokens, one per row; its status is then the ms
     * until the bucket holds a token again (0: it holds one). rows:
     * struct store_delivery[n]. */
    int (*claim)(struct store_be *be, const char *endpoint, int64_t after_seq, int64_t now,
                 int64_t lease_ms, size_t max, size_t cap, double rate, store_be_done_fn cb,
                 void *arg);

    /* ---- reads (R) ---- */
    int (*ping)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: struct store_event_row[n] without headers, data or raw,
     * newest first; the next cursor is the last row's seq when n equals
     * q->limit. */
    int (*events_page)(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                       void *arg);
    /* status 1 found (rows: one struct store_event_detail), 0 unknown
     * (rows NULL), as event_detail; its statements are separate
     * snapshots of the committed state (a read-only REPEATABLE READ
     * transaction would make them one, at the cost of a BEGIN). */
    int (*event_detail)(struct store_be *be, const char *id, store_be_done_fn cb, void *arg);
    /* rows: struct store_delivery_item[n], newest first (q's status,
     * endpoint, after, limit); a pending one's next_at is when it can next
     * be claimed (its lease's end when leased). */
    int (*deliveries_page)(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                           void *arg);
    /* rows: one struct store_counts. */
    int (*delivery_counts)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: struct store_batch_window[n], the windows with open items that
     * ended at or before now. */
    int (*batch_due)(struct store_be *be, int64_t now, store_be_done_fn cb, void *arg);
    /* rows: one int64_t, Unix ms (INT64_MAX: none): when endpoint's
     * earliest pending delivery is claimable (a leased one: when its lease
     * ends); when the earliest open batch window ends. */
    int (*endpoint_next_due)(struct store_be *be, const char *endpoint, store_be_done_fn cb,
                             void *arg);
    int (*batch_next_close)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: char *[n], the endpoints with pending deliveries, by name. */
    int (*endpoints_pending)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: struct store_endpoint_state[n], by name. */
    int (*endpoint_states)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: struct store_sub[n], oldest first. */
    int (*subs_load)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: struct store_event_row[n], whole, status "received" and seq >
     * after_seq, oldest first (committed ones only: on PostgreSQL there is
     * no open group to leave out). */
    int (*events_unrouted)(struct store_be *be, int64_t after_seq, size_t max, store_be_done_fn cb,
                           void *arg);
    /* event_get: status 1 found (rows: one struct store_event_row, whole,
     * with its handlers), 0 unknown (rows NULL). */
    int (*event_get)(struct store_be *be, const char *id, store_be_done_fn cb, void *arg);
    /* rows: char *[n], the ids found (events_find's order). */
    int (*events_find)(struct store_be *be, const char *text, size_t max, store_be_done_fn cb,
                       void *arg);
    /* rows: int64_t[2], the seq and next_at of endpoint's oldest pending
     * delivery, leased or not (INT64_MAX, INT64_MAX: none). */
    int (*endpoint_head)(struct store_be *be, const char *endpoint, store_be_done_fn cb, void *arg);
    /* rows: one int64_t, the deliveries pending or held: a read (every
     * instance's inserts count), not a local counter. */
    int (*backlog)(struct store_be *be, store_be_done_fn cb, void *arg);
    /* rows: one struct store_endpoint_queue, as endpoint_queue. */
    int (*endpoint_queue)(struct store_be *be, const char *endpoint, int64_t now, int64_t due_cap,
                          int counts, store_be_done_fn cb, void *arg);
    /* rows: struct store_blocked_key[n], oldest head first; status: the
     * endpoint's blocked keys in all (n at most max of them), counted in
     * the same view as the rows, so an endpoint's `blocked` and its list
     * agree (store_read_endpoints takes its count from here). */
    int (*endpoint_blocked)(struct store_be *be, const char *endpoint, size_t max,
                            store_be_done_fn cb, void *arg);

    /* ---- SQLite only (NULL elsewhere: nothing to do) ---- */
    /* Gives free pages back to the filesystem, as reclaim (in the
     * group; answered once it committed); rows: one int64_t, the pages
     * freed. PostgreSQL's autovacuum does this on its own. */
    int (*reclaim)(struct store_be *be, int64_t keep_pages, int step_pages, store_be_done_fn cb,
                   void *arg);
};

/* The PostgreSQL backend (store_pg_be.c). */
extern const struct store_backend_ops store_pg_backend;

/* The SQLite backend (store_sqlite_be.c): the SQLite engine's calls behind
 * these operations, on the loop connection. */
extern const struct store_backend_ops store_sqlite_backend;

#endif
