/* store_pg_retain.c -- the PostgreSQL backend's retention pass (SPEC
 * section 9; store.h's struct store_prune says what a pass deletes, keeps
 * and walks, and store_retain.c does the same on SQLite): one short
 * transaction of its own on the read connection, as a claim (BEGIN, two
 * statements, Sync, COMMIT, Sync: one round trip), not an op of the group:
 * so a pass never adds its deletes to the round trip the group's 200s wait
 * for, a pass that fails fails no ingest, and, since a pass never waits for
 * a lock (below), no group can deadlock with it (in the group, a pass's
 * event locks plus a later op waiting on a replaying group that waits on
 * them would be a cycle).
 *
 * Why two statements, and what holds when several instances prune, route
 * and deliver on one database at once:
 * - The first looks at up to max events after the cursor (seq is an
 *   identity: a range walk of the primary key, whatever the table's size),
 *   stops at the first one not old yet, and locks the old ones FOR UPDATE
 *   SKIP LOCKED, with the batch deliveries their items belong to: a row
 *   another transaction holds (another instance's pass, a replay routing
 *   the event) is stepped over, never waited for. What it locked goes to
 *   the second statement in two transaction-local settings (set_config(...,
 *   true): gone at COMMIT, so PgBouncer's transaction pooling is fine).
 * - The second, in READ COMMITTED, takes its snapshot after those locks
 *   were granted: it sees every change committed to the locked rows (a
 *   replay that routed the event again with new deliveries just before),
 *   so the keep conditions it checks are the current ones; one statement
 *   would check them against a snapshot taken before its locks. It deletes
 *   the events it may, each with its deliveries (their queue rows and
 *   outcomes go by ON DELETE CASCADE) and attempts, its batch items, and a
 *   batch delivery (with its attempts) once its last item goes. The rows
 *   it deletes are its locked ones and rows of finished deliveries, which
 *   no other transaction writes or locks: it waits for nothing either.
 * - A batch whose delivery row another pass holds locked keeps the events
 *   of its items this time (the back walk comes back for them): two passes
 *   each deleting some of a batch's items would each see the other's still
 *   there, and the batch delivery, its last item gone, would never go.
 * - Kept rows only ever become deletable behind a pass's back (an outcome
 *   recorded, a dead letter skipped), never the other way but through the
 *   event's own row (a replay locks it; one that waited for a pass finds
 *   the event gone: an unknown id, as after a pass on SQLite): nothing
 *   that must stay is deleted.
 * Not as on SQLite: the seq high-water marks are not recorded (an identity
 * never hands a seq out twice, deleted or not); budget_us is not used (the
 * pass is one bounded round trip, at most max events); a closed batch
 * window's row (PostgreSQL's batch_windows, the lock a close takes) goes
 * with its batch delivery when no item of the window is open, unless a
 * close holds it. Reclaim is PostgreSQL's autovacuum (store_bx_reclaim).
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "store_backend.h"
#include "store_pg_be.h"
#include "store_pg_int.h"
#include "util.h"

/* $1 cursor, $2 upto, $3 max, $4 before_ms. One row: the events looked at,
 * the old ones among them, the last old one's seq, whether a new one cut
 * the walk; the settings set (1). */
static const char PRUNE_LOCK_SQL[] =
    "WITH w AS (SELECT seq, received_at FROM events WHERE seq > $1::bigint AND seq <= $2::bigint"
    "  ORDER BY seq LIMIT $3::bigint),"
    " c AS (SELECT min(seq) AS cut FROM w WHERE received_at >= $4::bigint),"
    " o AS (SELECT w.seq FROM w, c WHERE c.cut IS NULL OR w.seq < c.cut),"
    " l AS (SELECT e.seq, e.id FROM events e WHERE e.seq IN (SELECT seq FROM o)"
    "  ORDER BY e.seq FOR UPDATE SKIP LOCKED),"
    " bl AS (SELECT d.id FROM deliveries d WHERE d.batch AND d.id IN (SELECT b.delivery_id"
    "  FROM batch_items b JOIN l ON b.event_id = l.id) ORDER BY d.seq FOR UPDATE SKIP LOCKED),"
    " g AS (SELECT set_config('waybill.prune_events',"
    "  coalesce((SELECT array_agg(seq)::text FROM l), '{}'), true),"
    "  set_config('waybill.prune_batches', coalesce((SELECT array_agg(id)::text FROM bl), '{}'),"
    "  true))"
    " SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM o), (SELECT max(seq) FROM o),"
    " (SELECT cut FROM c) IS NOT NULL, (SELECT count(*) FROM g)";

/* The locked events (l) and batches (bl) of PRUNE_LOCK_SQL; x: those that
 * may go (routed or unrouted; no delivery pending or held -- a queue row
 * -- or failed; no item in an open window, or in a batch not delivered or
 * locked by another pass); xd: their deliveries; xo: the batches with
 * items of other events (an index lookup per batch: batch_items_delivery,
 * schema version 2); xb:
 * the batches whose last items they hold; wl: those batches' windows, closed and with no
 * open item (a window's row is only the lock its closes take: one that
 * came second names a batch it did not make), unless a close holds one.
 * One row: the events deleted. */
static const char PRUNE_SQL[] =
    "WITH l AS (SELECT e.seq, e.id, e.status FROM events e"
    "  WHERE e.seq = ANY (current_setting('waybill.prune_events')::bigint[])),"
    " bl AS (SELECT unnest(current_setting('waybill.prune_batches')::text[]) AS id),"
    " x AS (SELECT l.seq, l.id FROM l WHERE l.status IN ('routed', 'unrouted')"
    "  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = l.id"
    "   AND (EXISTS (SELECT 1 FROM delivery_queue q WHERE q.delivery_seq = d.seq)"
    "   OR EXISTS (SELECT 1 FROM delivery_outcomes o WHERE o.delivery_seq = d.seq"
    "   AND o.status = 'failed')))"
    "  AND NOT EXISTS (SELECT 1 FROM batch_items b WHERE b.event_id = l.id"
    "   AND (b.delivery_id IS NULL OR EXISTS (SELECT 1 FROM deliveries bd"
    "   WHERE bd.id = b.delivery_id AND (bd.id NOT IN (SELECT id FROM bl)"
    "   OR EXISTS (SELECT 1 FROM delivery_queue q WHERE q.delivery_seq = bd.seq)"
    "   OR EXISTS (SELECT 1 FROM delivery_outcomes o WHERE o.delivery_seq = bd.seq"
    "   AND o.status <> 'delivered')))))),"
    " xd AS (SELECT d.seq, d.id FROM deliveries d JOIN x ON d.event_id = x.id),"
    " xo AS (SELECT DISTINCT o.delivery_id FROM batch_items o WHERE o.delivery_id IN"
    "  (SELECT id FROM bl) AND o.event_id NOT IN (SELECT id FROM x)),"
    " xb AS (SELECT bl.id FROM bl WHERE EXISTS (SELECT 1 FROM batch_items b JOIN x"
    "  ON b.event_id = x.id WHERE b.delivery_id = bl.id)"
    "  AND bl.id NOT IN (SELECT delivery_id FROM xo)),"
    " wl AS (SELECT v.endpoint, v.bkey, v.window_ms, v.window_start FROM batch_windows v"
    "  WHERE (v.endpoint, v.bkey, v.window_ms, v.window_start) IN (SELECT b.endpoint, b.bkey,"
    "  b.window_ms, b.window_start FROM batch_items b JOIN xb ON b.delivery_id = xb.id)"
    "  AND v.closed_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batch_items n"
    "  WHERE n.delivery_id IS NULL AND n.endpoint = v.endpoint AND n.bkey = v.bkey"
    "  AND n.window_ms = v.window_ms AND n.window_start = v.window_start)"
    "  FOR UPDATE OF v SKIP LOCKED),"
    " da AS (DELETE FROM attempts a USING xd WHERE a.delivery_id = xd.id),"
    " dd AS (DELETE FROM deliveries d USING xd WHERE d.seq = xd.seq),"
    " dba AS (DELETE FROM attempts a USING xb WHERE a.delivery_id = xb.id),"
    " dbd AS (DELETE FROM deliveries d USING xb WHERE d.id = xb.id),"
    " dw AS (DELETE FROM batch_windows v USING wl WHERE v.endpoint = wl.endpoint"
    "  AND v.bkey = wl.bkey AND v.window_ms = wl.window_ms AND v.window_start = wl.window_start),"
    " di AS (DELETE FROM batch_items b USING x WHERE b.event_id = x.id),"
    " de AS (DELETE FROM events e USING x WHERE e.seq = x.seq RETURNING 1)"
    " SELECT count(*) FROM de";

/* op->rows: the pass (struct store_prune, in and out); op->aux: the old
 * events looked at (kept = those not deleted: kept, or locked elsewhere). */
static int parse_prune(struct pg_op *op, int k, const PGresult *res) {
    struct store_prune *p = op->rows;

    if (PQntuples(res) != 1) {
        pg_tx_fail(op->tx, "retention: no answer");
        return 0;
    }
    if (k == 0) {
        int64_t looked = pg_col_int(res, 0, 0);
        op->aux = pg_col_int(res, 0, 1);
        if (op->aux > 0)
            p->cursor = pg_col_int(res, 0, 2);
        /* a new event, the end of the table or of the range */
        p->done =
            strcmp(PQgetvalue(res, 0, 3), "t") == 0 || looked < p->max || p->cursor >= p->upto;
    } else if (k == 1) {
        p->pruned = (int)pg_col_int(res, 0, 0);
        p->kept = (int)(op->aux - p->pruned);
    }
    op->status = 0;
    return 0;
}

int store_pg_prune(struct store_be *be, const struct store_prune *p, store_be_done_fn cb,
                   void *arg) {
    char cursor[24], upto[24], max[16], before[24];
    struct store_prune *rows;
    struct pg_op *op;
    int ret = -1;

    be->in_call++;
    if (!(rows = malloc(sizeof *rows)))
        goto done;
    *rows = *p;
    rows->pruned = rows->kept = rows->done = 0;
    if (!(op = pg_single(be, be->rd, 1, cb, arg, parse_prune))) {
        free(rows);
        goto done;
    }
    op->rows = rows; /* freed with the op */
    op->n = 1;
    snprintf(cursor, sizeof cursor, "%lld", (long long)p->cursor);
    snprintf(upto, sizeof upto, "%lld", (long long)p->upto);
    snprintf(max, sizeof max, "%d", p->max);
    snprintf(before, sizeof before, "%lld", (long long)p->before_ms);
    if (pg_op_query(op, PRUNE_LOCK_SQL, 4, (const char *const[]){cursor, upto, max, before}) < 0 ||
        pg_op_query(op, PRUNE_SQL, 0, NULL) < 0)
        op->dropped = 1;
    ret = op->dropped ? -1 : 0;
    pg_tx_end(op->tx, NULL, NULL);
done:
    be->in_call--;
    return ret;
}
