/* store_pg_write.c -- the PostgreSQL backend's group writes (G of
 * store_backend.h): an event with its plan, an attempt, a lease renewal, a
 * batch window's close. Each is a fixed number of statements whatever its
 * size (arrays unnested, data-modifying WITH clauses), queued on the open
 * group's transaction (store_pg_be.c); its callback runs when the group's
 * COMMIT answered.
 *
 * What holds across instances, and by what:
 * - dedupe: INSERT ... ON CONFLICT (source, source_id) DO NOTHING: a second
 *   copy inserted at the same moment by another instance waits for the
 *   first one's transaction on the unique index, then inserts nothing (its
 *   group goes on); the second statement reads the stored copy's id (READ
 *   COMMITTED: a new snapshot, which sees the first copy once committed).
 *   The plan's rows are inserted from the event's RETURNING, so a dedupe
 *   hit writes nothing else.
 * - an attempt once: attempts' PRIMARY KEY (delivery_id, n) with ON
 *   CONFLICT DO NOTHING, and the queue row moves only when the attempt row
 *   was inserted: a second instance whose lease expired mid-attempt gets
 *   STORE_DUP and changes nothing.
 * - a batch window closed once: the window's row is locked (an upsert) for
 *   the closing group, and its open items are locked FOR UPDATE: a second
 *   closer waits, then finds every item taken (READ COMMITTED re-checks
 *   delivery_id IS NULL on the newest row version) and sends nothing.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "store_backend.h"
#include "store_int.h"
#include "store_pg_be.h"
#include "store_pg_int.h"
#include "util.h"

/* ---- event_put ---- */

/* The event with its deliveries ($1..$23) and, when it has any, its batch
 * items ($24..$27), in one of two statements (with the batch parts or
 * without): the write connection's backend is the bound of ingest (80% of
 * a core at c64 in the bench), and each part of a statement costs its
 * executor set-up at every call (the batch parts, an unnest, a DISTINCT
 * and two inserts, cost every event that has no batch item about 14% of the
 * database's CPU). */
#define EVENT_PUT_HEAD                                                                             \
    "WITH ev AS ("                                                                                 \
    " INSERT INTO events (id, source, source_id, type, status, error, created_at, received_at,"    \
    "  headers, data, raw, shipment, matched)"                                                     \
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint, $9, $10, decode($11, 'hex'), $12, $13)"      \
    " ON CONFLICT (source, source_id) DO NOTHING RETURNING seq, id),"                              \
    " u AS (SELECT * FROM unnest($14::text[], $15::text[], $16::text[], $17::text[],"              \
    "  $18::text[], $19::text[], $20::text[], $21::bigint[], $22::text[])"                         \
    "  AS u(id, endpoint, event_type, payload, content_type, headers, status, next_at, okey)),"    \
    " d AS (INSERT INTO deliveries (id, event_id, endpoint, event_type, payload, content_type,"    \
    "  headers, created_at, okey)"                                                                 \
    "  SELECT u.id, ev.id, u.endpoint, u.event_type, decode(u.payload, 'hex'), u.content_type,"    \
    "  u.headers, $23::bigint, u.okey FROM ev, u RETURNING seq, id),"                              \
    " q AS (INSERT INTO delivery_queue (delivery_seq, endpoint, okey, status, next_at)"            \
    "  SELECT d.seq, u.endpoint, u.okey, u.status, u.next_at FROM d JOIN u ON u.id = d.id)"

static const char EVENT_PUT_SQL[] = EVENT_PUT_HEAD " SELECT seq, id FROM ev";

static const char EVENT_PUT_BATCH_SQL[] = EVENT_PUT_HEAD
    ","
    " b AS (SELECT * FROM unnest($24::text[], $25::bigint[], $26::bigint[], $27::text[])"
    "  WITH ORDINALITY AS b(endpoint, window_start, window_ms, payload, i)),"
    " bw AS (INSERT INTO batch_windows (endpoint, window_ms, window_start, closes_at)"
    "  SELECT DISTINCT b.endpoint, b.window_ms, b.window_start, b.window_start + b.window_ms"
    "  FROM ev, b ON CONFLICT DO NOTHING),"
    " bi AS (INSERT INTO batch_items (endpoint, window_ms, window_start, event_id, payload)"
    "  SELECT b.endpoint, b.window_ms, b.window_start, ev.id, decode(b.payload, 'hex')"
    "  FROM ev, b ORDER BY b.i)"
    " SELECT seq, id FROM ev";

/* The stored copy's id: the event's own, or the first copy's. */
static const char EVENT_ID_SQL[] = "SELECT id FROM events WHERE source = $1 AND source_id = $2";

/* Each batch item's window: its open items, this event's included. */
static const char BATCH_COUNT_SQL[] =
    "SELECT (SELECT count(*) FROM batch_items x WHERE x.delivery_id IS NULL"
    "  AND x.endpoint = b.endpoint AND x.bkey = '' AND x.window_ms = b.window_ms"
    "  AND x.window_start = b.window_start)"
    " FROM unnest($1::text[], $2::bigint[], $3::bigint[])"
    " WITH ORDINALITY AS b(endpoint, window_start, window_ms, i) ORDER BY b.i";

#define PUT_ARRAYS 13 /* $14..$22 deliveries, $24..$27 batch items */

static int parse_put(struct pg_op *op, int k, const PGresult *res) {
    struct store_be_put *put = op->rows;
    if (k == 0) {
        if (PQntuples(res) == 1) {
            put->seq = pg_col_int(res, 0, 0);
            op->status = 0;
        } else {
            put->seq = 0;
            put->ncounts = 0;
            op->status = STORE_DUP;
        }
    } else if (k == 1) {
        if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
            pg_tx_fail(op->tx, "the event was not stored");
            return 0;
        }
        snprintf(put->id, sizeof put->id, "%s", PQgetvalue(res, 0, 0));
    } else if (k == 2 && op->status == 0) {
        for (int r = 0; r < PQntuples(res) && (size_t)r < put->ncounts; r++)
            ((int64_t *)put->counts)[r] = pg_col_int(res, r, 0);
    }
    return 0;
}

/* The plan's arrays, as text array literals: a[0..8] the deliveries' ids,
 * endpoints, event types, payloads (hex), content types, headers,
 * statuses, next_at, order keys; a[9..12] the batch items' endpoints,
 * window starts, window lengths, payloads (hex). Returns 0 or -1. */
static int plan_arrays(const struct store_plan *plan, char (*ids)[UTIL_ID_MAX],
                       struct util_buf *a) {
    const struct store_delivery_new *d = plan ? plan->deliveries : NULL;
    size_t nd = plan ? plan->ndeliveries : 0, ni = plan ? plan->nitems : 0;
    int bad = 0;

    for (int k = 0; k < PUT_ARRAYS; k++)
        bad |= util_buf_append(&a[k], "{", 1) < 0;
    for (size_t i = 0; i < nd && !bad; i++) {
        bad |= pg_arr_text(&a[0], i, ids[i]) < 0 || pg_arr_text(&a[1], i, d[i].endpoint) < 0 ||
               pg_arr_text(&a[2], i, d[i].event_type) < 0 ||
               pg_arr_hex(&a[3], i, d[i].payload ? d[i].payload : "", d[i].payload_len) < 0 ||
               pg_arr_text(&a[4], i, d[i].content_type) < 0 ||
               pg_arr_text(&a[5], i, d[i].headers_json) < 0 ||
               pg_arr_text(&a[6], i, d[i].status ? d[i].status : "pending") < 0 ||
               pg_arr_int(&a[7], i, d[i].next_at) < 0 || pg_arr_text(&a[8], i, d[i].okey) < 0;
    }
    for (size_t i = 0; i < ni && !bad; i++) {
        const struct store_batch_item *it = &plan->items[i];
        bad |= pg_arr_text(&a[9], i, it->endpoint) < 0 ||
               pg_arr_int(&a[10], i, it->window_start) < 0 ||
               pg_arr_int(&a[11], i, it->window_ms) < 0 ||
               pg_arr_hex(&a[12], i, it->payload ? it->payload : "", it->len) < 0;
    }
    for (int k = 0; k < PUT_ARRAYS; k++)
        bad |= util_buf_append(&a[k], "}", 1) < 0;
    return bad ? -1 : 0;
}

/* Queues the event's statements on op. Returns 0 or -1. */
static int put_queue(struct pg_op *op, const struct store_event *ev, const struct store_plan *plan,
                     const char *matched, struct util_buf *a) {
    char received[24], now[24];
    char *raw = pg_hex(ev->raw ? ev->raw : "", ev->raw_len);
    const char *p[27];
    int rc = -1;

    if (!raw)
        return -1;
    snprintf(received, sizeof received, "%lld", (long long)ev->received_at);
    snprintf(now, sizeof now, "%lld", (long long)util_now_ms());
    p[0] = ev->id, p[1] = ev->source, p[2] = ev->source_id, p[3] = ev->type;
    p[4] = plan ? plan->status : "received", p[5] = plan ? plan->error : NULL;
    p[6] = ev->created_at, p[7] = received, p[8] = ev->headers_json, p[9] = ev->data_json;
    p[10] = raw, p[11] = ev->shipment_json, p[12] = matched;
    for (int k = 0; k < 9; k++)
        p[13 + k] = a[k].p;
    p[22] = now;
    for (int k = 0; k < 4; k++)
        p[23 + k] = a[9 + k].p;
    if ((plan && plan->nitems ? pg_op_query(op, EVENT_PUT_BATCH_SQL, 27, p)
                              : pg_op_query(op, EVENT_PUT_SQL, 23, p)) < 0 ||
        pg_op_query(op, EVENT_ID_SQL, 2, (const char *const[]){ev->source, ev->source_id}) < 0)
        goto done;
    if (plan && plan->nitems &&
        pg_op_query(op, BATCH_COUNT_SQL, 3, (const char *const[]){a[9].p, a[10].p, a[11].p}) < 0)
        goto done;
    rc = 0;
done:
    free(raw);
    return rc;
}

int store_pg_event_put(struct store_be *be, const struct store_event *ev,
                       const struct store_plan *plan, store_be_done_fn cb, void *arg) {
    struct util_buf a[PUT_ARRAYS], matched = {0};
    char(*ids)[UTIL_ID_MAX] = NULL;
    size_t nd = plan ? plan->ndeliveries : 0, ni = plan ? plan->nitems : 0;
    struct store_be_put *put = NULL;
    struct pg_op *op = NULL;
    int ret = -1;

    memset(a, 0, sizeof a);
    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    if ((nd && !(ids = calloc(nd, sizeof *ids))) ||
        !(put = calloc(1, sizeof *put + ni * sizeof(int64_t))))
        goto done;
    put->counts = (const int64_t *)(put + 1);
    put->ncounts = ni;
    if (nd)
        store_plan_ids(ev->id, plan, 1, ids);
    if ((plan && plan->by_rules && store_plan_matched(plan, ids, &matched) < 0) ||
        plan_arrays(plan, ids, a) < 0)
        goto done;
    if (!(op = pg_op_new(be->group, cb, arg, parse_put)))
        goto done;
    op->rows = put;
    op->n = 1;
    put = NULL;
    if (put_queue(op, ev, plan, matched.p, a) < 0) {
        pg_op_drop(op, "the event could not be queued");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    for (int k = 0; k < PUT_ARRAYS; k++)
        util_buf_free(&a[k]);
    util_buf_free(&matched);
    free(ids);
    free(put);
    return ret;
}

/* ---- event_routed ---- */

/* The event's row locked and read (e; the update reads e, so e is read
 * and the row locked before the update changes the status), then its
 * status, its handlers (when by rules) and the plan's rows: on its first
 * routing (still "received") under the derived ids ($7, $5 the handlers
 * naming them), later (a replay) under new ones ($8, $6). $9.. as
 * EVENT_PUT_SQL's $15..$27 less its $23. $22: first_only (store.h): only
 * while still "received" -- FOR UPDATE waits for another instance's
 * routing of it and, READ COMMITTED, re-checks the status once that
 * committed: then e is empty and one row (-1) says it was routed already. */
static const char EVENT_ROUTED_SQL[] =
    "WITH e AS (SELECT seq, id, status = 'received' AS first FROM events WHERE id = $1"
    "  AND (NOT $22::boolean OR status = 'received') FOR UPDATE),"
    " up AS (UPDATE events v SET status = $2, error = $3, matched = CASE WHEN $4::boolean"
    "  THEN (CASE WHEN e.first THEN $5::text ELSE $6::text END) ELSE v.matched END"
    "  FROM e WHERE v.id = e.id),"
    " u AS (SELECT * FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
    "  $12::text[], $13::text[], $14::text[], $15::bigint[], $16::text[])"
    "  AS u(did, fid, endpoint, event_type, payload, content_type, headers, status, next_at,"
    "  okey)),"
    " d AS (INSERT INTO deliveries (id, event_id, endpoint, event_type, payload, content_type,"
    "  headers, created_at, okey)"
    "  SELECT CASE WHEN e.first THEN u.did ELSE u.fid END, e.id, u.endpoint, u.event_type,"
    "  decode(u.payload, 'hex'), u.content_type, u.headers, $17::bigint, u.okey FROM e, u"
    "  RETURNING seq, id),"
    " q AS (INSERT INTO delivery_queue (delivery_seq, endpoint, okey, status, next_at)"
    "  SELECT d.seq, u.endpoint, u.okey, u.status, u.next_at FROM d JOIN u"
    "  ON d.id = u.did OR d.id = u.fid),"
    " b AS (SELECT * FROM unnest($18::text[], $19::bigint[], $20::bigint[], $21::text[])"
    "  WITH ORDINALITY AS b(endpoint, window_start, window_ms, payload, i)),"
    " bw AS (INSERT INTO batch_windows (endpoint, window_ms, window_start, closes_at)"
    "  SELECT DISTINCT b.endpoint, b.window_ms, b.window_start, b.window_start + b.window_ms"
    "  FROM e, b ON CONFLICT DO NOTHING),"
    " bi AS (INSERT INTO batch_items (endpoint, window_ms, window_start, event_id, payload)"
    "  SELECT b.endpoint, b.window_ms, b.window_start, e.id, decode(b.payload, 'hex')"
    "  FROM e, b ORDER BY b.i)"
    " SELECT seq, id FROM e UNION ALL SELECT -1, NULL WHERE NOT EXISTS (SELECT 1 FROM e)"
    "  AND EXISTS (SELECT 1 FROM events WHERE id = $1)";

/* event_routed's answer: the event found (0; its seq and id), routed
 * already (3, first_only) or not found (2): the last two write nothing,
 * the group goes on; then its windows' counts. */
static int parse_routed(struct pg_op *op, int k, const PGresult *res) {
    struct store_be_put *put = op->rows;
    if (k == 0) {
        if (PQntuples(res) == 1 && pg_col_int(res, 0, 0) < 0) {
            put->ncounts = 0;
            op->status = 3;
        } else if (PQntuples(res) == 1) {
            put->seq = pg_col_int(res, 0, 0);
            snprintf(put->id, sizeof put->id, "%s", PQgetvalue(res, 0, 1));
            op->status = 0;
        } else {
            put->ncounts = 0;
            op->status = 2;
        }
    } else if (k == 1 && op->status == 0) {
        for (int r = 0; r < PQntuples(res) && (size_t)r < put->ncounts; r++)
            ((int64_t *)put->counts)[r] = pg_col_int(res, r, 0);
    }
    return 0;
}

/* The two id sets of a routing (derived: its first; new: a replay), with
 * the handlers' JSON naming each, and the plan's arrays. */
struct routed_args {
    char (*did)[UTIL_ID_MAX], (*fid)[UTIL_ID_MAX];
    struct util_buf a[PUT_ARRAYS], fids, m1, m2;
};

static void routed_free(struct routed_args *r) {
    for (int k = 0; k < PUT_ARRAYS; k++)
        util_buf_free(&r->a[k]);
    util_buf_free(&r->fids);
    util_buf_free(&r->m1);
    util_buf_free(&r->m2);
    free(r->did);
    free(r->fid);
}

static int routed_build(struct routed_args *r, const char *event_id,
                        const struct store_plan *plan) {
    size_t nd = plan->ndeliveries;
    int bad = 0;

    if (nd && (!(r->did = calloc(nd, sizeof *r->did)) || !(r->fid = calloc(nd, sizeof *r->fid))))
        return -1;
    store_plan_ids(event_id, plan, 1, r->did); /* a recovery's: the ids it had */
    store_plan_ids(event_id, plan, 0, r->fid); /* a replay's: new ones */
    bad |= util_buf_append(&r->fids, "{", 1) < 0;
    for (size_t i = 0; i < nd && !bad; i++)
        bad |= pg_arr_text(&r->fids, i, r->fid[i]) < 0;
    bad |= util_buf_append(&r->fids, "}", 1) < 0;
    if (plan->by_rules)
        bad |= store_plan_matched(plan, r->did, &r->m1) < 0 ||
               store_plan_matched(plan, r->fid, &r->m2) < 0;
    return bad || plan_arrays(plan, r->did, r->a) < 0 ? -1 : 0;
}

int store_pg_event_routed(struct store_be *be, const char *event_id, const struct store_plan *plan,
                          store_be_done_fn cb, void *arg) {
    struct routed_args r;
    struct store_be_put *put = NULL;
    struct pg_op *op = NULL;
    const char *p[22];
    char now[24];
    int ret = -1;

    memset(&r, 0, sizeof r);
    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    snprintf(now, sizeof now, "%lld", (long long)util_now_ms());
    if (routed_build(&r, event_id, plan) < 0 ||
        !(put = calloc(1, sizeof *put + plan->nitems * sizeof(int64_t))))
        goto done;
    put->counts = (const int64_t *)(put + 1);
    put->ncounts = plan->nitems;
    if (!(op = pg_op_new(be->group, cb, arg, parse_routed)))
        goto done;
    op->rows = put;
    op->n = 1;
    put = NULL;
    p[0] = event_id, p[1] = plan->status, p[2] = plan->error;
    p[3] = plan->by_rules ? "true" : "false", p[4] = r.m1.p, p[5] = r.m2.p;
    p[6] = r.a[0].p, p[7] = r.fids.p;
    for (int k = 1; k < 9; k++)
        p[7 + k] = r.a[k].p; /* $9..$16 */
    p[16] = now;
    for (int k = 0; k < 4; k++)
        p[17 + k] = r.a[9 + k].p; /* $18..$21 */
    p[21] = plan->first_only ? "true" : "false";
    if (pg_op_query(op, EVENT_ROUTED_SQL, 22, p) < 0 ||
        (plan->nitems && pg_op_query(op, BATCH_COUNT_SQL, 3,
                                     (const char *const[]){r.a[9].p, r.a[10].p, r.a[11].p}) < 0)) {
        pg_op_drop(op, "the routing could not be queued");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    routed_free(&r);
    free(put);
    return ret;
}

/* ---- attempt_put ---- */

static const char ATTEMPT_PUT_SQL[] =
    "WITH d AS (SELECT seq FROM deliveries WHERE id = $1),"
    " a AS (INSERT INTO attempts (delivery_id, n, at, status_code, latency_ms, error, response,"
    "  instance) VALUES ($1, $2::int, $3::bigint, $4::int, $5::int, $6, decode($7, 'hex'), $8)"
    "  ON CONFLICT (delivery_id, n) DO NOTHING RETURNING n),"
    " q AS (UPDATE delivery_queue SET status = $9::text, next_at = $10::bigint,"
    "  schedule_pos = $11::int, attempts = greatest(attempts, $2::int), lease_owner = NULL,"
    "  lease_until = 0 WHERE delivery_seq = (SELECT seq FROM d)"
    "  AND $9::text IN ('pending', 'held') AND EXISTS (SELECT 1 FROM a)),"
    " x AS (DELETE FROM delivery_queue WHERE delivery_seq = (SELECT seq FROM d)"
    "  AND $9::text IN ('delivered', 'failed') AND EXISTS (SELECT 1 FROM a)"
    "  RETURNING delivery_seq, endpoint, okey),"
    " o AS (INSERT INTO delivery_outcomes (delivery_seq, status, attempts, at, endpoint, okey)"
    "  SELECT delivery_seq, $9::text, $2::int, $3::bigint, endpoint, okey FROM x)"
    " SELECT count(*) FROM a";

static int parse_attempt(struct pg_op *op, int k, const PGresult *res) {
    if (k == 0)
        op->status = pg_col_int(res, 0, 0) == 1 ? 0 : STORE_DUP;
    return 0;
}

int store_pg_attempt_put(struct store_be *be, const char *delivery_id,
                         const struct store_attempt *a, const char *status, int64_t next_at,
                         int schedule_pos, store_be_done_fn cb, void *arg) {
    char n[16], at[24], code[16], lat[24], next[24], pos[16];
    char *resp = NULL;
    struct pg_op *op;
    int ret = -1;

    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    snprintf(n, sizeof n, "%d", a->n);
    snprintf(at, sizeof at, "%lld", (long long)a->at);
    snprintf(code, sizeof code, "%d", a->status_code);
    snprintf(lat, sizeof lat, "%lld", (long long)a->latency_ms);
    snprintf(next, sizeof next, "%lld", (long long)next_at);
    snprintf(pos, sizeof pos, "%d", schedule_pos);
    if (a->response && !(resp = pg_hex(a->response, a->response_len)))
        goto done;
    if (!(op = pg_op_new(be->group, cb, arg, parse_attempt)))
        goto done;
    if (pg_op_query(op, ATTEMPT_PUT_SQL, 11,
                    (const char *const[]){delivery_id, n, at, code, lat, a->error, resp,
                                          be->instance, status, next, pos}) < 0) {
        pg_op_drop(op, "the attempt could not be queued");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    free(resp);
    return ret;
}

/* ---- lease_renew ---- */

static int parse_lease(struct pg_op *op, int k, const PGresult *res) {
    if (k == 0)
        op->status = PQntuples(res) == 1 ? 0 : STORE_LEASE_LOST;
    return 0;
}

int store_pg_lease_renew(struct store_be *be, int64_t seq, int64_t until, int64_t release_at,
                         store_be_done_fn cb, void *arg) {
    char s[24], u[24];
    struct pg_op *op;
    int ret = -1;

    UNUSED(release_at); /* next_at never moved: the lease is lease_until */
    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    snprintf(s, sizeof s, "%lld", (long long)seq);
    snprintf(u, sizeof u, "%lld", (long long)until);
    if (!(op = pg_op_new(be->group, cb, arg, parse_lease)))
        goto done;
    if (pg_op_query(op,
                    until > 0 ? "UPDATE delivery_queue SET lease_until = $2::bigint"
                                " WHERE delivery_seq = $1::bigint AND lease_owner = $3 RETURNING 1"
                              : "UPDATE delivery_queue SET lease_owner = NULL, lease_until = 0"
                                " WHERE delivery_seq = $1::bigint AND lease_owner = $3"
                                " AND $2::bigint = 0 RETURNING 1",
                    3, (const char *const[]){s, u, be->instance}) < 0) {
        pg_op_drop(op, "the lease could not be queued");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    return ret;
}

/* ---- batch_close ---- */

static const char BATCH_CLOSE_SQL[] =
    "WITH w AS (INSERT INTO batch_windows (endpoint, window_ms, window_start, closes_at,"
    "  closed_at, delivery_id)"
    "  VALUES ($1, $3::bigint, $2::bigint, $2::bigint + $3::bigint, $4::bigint, $5)"
    "  ON CONFLICT (endpoint, bkey, window_ms, window_start) DO UPDATE"
    "  SET closed_at = excluded.closed_at, delivery_id = excluded.delivery_id RETURNING 1),"
    " it AS (SELECT b.seq, b.payload FROM batch_items b WHERE EXISTS (SELECT 1 FROM w)"
    "  AND b.delivery_id IS NULL AND b.endpoint = $1 AND b.bkey = ''"
    "  AND b.window_ms = $3::bigint AND b.window_start = $2::bigint ORDER BY b.seq FOR UPDATE),"
    " mk AS (UPDATE batch_items x SET delivery_id = $5, payload = NULL FROM it"
    "  WHERE x.seq = it.seq),"
    " body AS (SELECT count(*) AS n, string_agg(coalesce(convert_from(it.payload, 'UTF8'),"
    "  'null'), ',' ORDER BY it.seq) AS events FROM it),"
    " d AS (INSERT INTO deliveries (id, event_id, endpoint, event_type, payload, content_type,"
    "  created_at, batch)"
    "  SELECT $5, $5, $1, 'batch', convert_to('{\"type\":\"batch\",\"window_start\":\"' || $8"
    "  || '\",\"window_end\":\"' || $9 || '\",\"count\":' || body.n || ',\"events\":['"
    "  || body.events || ']}', 'UTF8'), 'application/json', $4::bigint, true"
    "  FROM body WHERE body.n > 0 RETURNING seq),"
    " q AS (INSERT INTO delivery_queue (delivery_seq, endpoint, status, next_at)"
    "  SELECT seq, $1, $6, $7::bigint FROM d)"
    " SELECT n FROM body";

static int parse_close(struct pg_op *op, int k, const PGresult *res) {
    if (k == 0)
        *(int64_t *)op->rows = PQntuples(res) == 1 ? pg_col_int(res, 0, 0) : 0;
    return 0;
}

int store_pg_batch_close(struct store_be *be, const struct store_batch_window *w,
                         const char *status, int64_t next_at, store_be_done_fn cb, void *arg) {
    char ws[24], wm[24], now[24], next[24], id[UTIL_ID_MAX], t0[64], t1[64];
    struct pg_op *op;
    int64_t *count;
    int ret = -1;

    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    snprintf(ws, sizeof ws, "%lld", (long long)w->window_start);
    snprintf(wm, sizeof wm, "%lld", (long long)w->window_ms);
    snprintf(now, sizeof now, "%lld", (long long)util_now_ms());
    snprintf(next, sizeof next, "%lld", (long long)next_at);
    util_time_rfc3339(w->window_start, t0, sizeof t0);
    util_time_rfc3339(w->window_start + w->window_ms, t1, sizeof t1);
    /* A new id each close: PostgreSQL's COMMIT is durable when it answers,
     * so a close is never taken back after the batch went out. */
    util_id_new("dlv_", id, sizeof id);
    if (!(count = calloc(1, sizeof *count)))
        goto done;
    if (!(op = pg_op_new(be->group, cb, arg, parse_close))) {
        free(count);
        goto done;
    }
    op->rows = count;
    op->n = 1;
    if (pg_op_query(op, BATCH_CLOSE_SQL, 9,
                    (const char *const[]){w->endpoint, ws, wm, now, id, status ? status : "pending",
                                          next, t0, t1}) < 0) {
        pg_op_drop(op, "the batch close could not be queued");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    return ret;
}

/* ---- nonce_put ---- */

/* op->aux: the insert's statement number (a prune may come first); the
 * statement after it reads the stored digest (a new snapshot: another
 * instance's copy, committed while the insert waited for it, is seen). */
static int parse_nonce(struct pg_op *op, int k, const PGresult *res) {
    if (k == op->aux) {
        op->status = PQntuples(res) == 1 ? 0 : -2;
    } else if (k == op->aux + 1 && op->status == -2) {
        if (PQntuples(res) != 1) {
            pg_tx_fail(op->tx, "the nonce was not stored");
            return 0;
        }
        op->status = strcmp(PQgetvalue(res, 0, 0), op->text) == 0 ? STORE_DUP : STORE_REPLAY;
    }
    return 0;
}

int store_pg_nonce_put(struct store_be *be, const char *source, const char *nonce,
                       const char *digest, int64_t now_ms, int64_t keep_ms, store_be_done_fn cb,
                       void *arg) {
    char now[24], old[24];
    struct pg_op *op;
    int ret = -1, prune;

    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    snprintf(old, sizeof old, "%lld", (long long)(now_ms - keep_ms));
    /* A nonce older than keep_ms can only come back with a timestamp the
     * tolerance refuses: forget those, at most once a minute (per
     * instance). */
    prune = now_ms - be->nonces_pruned_at >= 60000;
    if (!(op = pg_op_new(be->group, cb, arg, parse_nonce)))
        goto done;
    if (!(op->text = strdup(digest))) {
        pg_op_drop(op, "out of memory");
        goto done;
    }
    op->aux = prune;
    if ((prune && pg_op_query(op, "DELETE FROM nonces WHERE source = $1 AND seen_at < $2::bigint",
                              2, (const char *const[]){source, old}) < 0) ||
        pg_op_query(op,
                    "INSERT INTO nonces (source, nonce, digest, seen_at)"
                    " VALUES ($1, $2, $3, $4::bigint) ON CONFLICT (source, nonce) DO NOTHING"
                    " RETURNING 1",
                    4, (const char *const[]){source, nonce, digest, now}) < 0 ||
        pg_op_query(op, "SELECT digest FROM nonces WHERE source = $1 AND nonce = $2", 2,
                    (const char *const[]){source, nonce}) < 0) {
        pg_op_drop(op, "the nonce could not be queued");
        goto done;
    }
    if (prune)
        be->nonces_pruned_at = now_ms;
    ret = 0;
done:
    be->in_call--;
    return ret;
}
