/* store_pg_state.c -- the PostgreSQL backend's group writes of shared
 * state (G of store_backend.h): an endpoint's health counters, disabling
 * and enabling it (its queue rows held or released), a dead letter put
 * back (retry) or stepped over in its key (skip), subscriptions. One
 * statement each, queued on the open group (store_pg_be.c); every
 * instance sees the result once the group commits.
 *
 * endpoint_attempt updates the endpoint's one endpoint_state row: its lock
 * is held to the group's COMMIT, so instances delivering to one endpoint
 * take turns on it, group by group (counters per instance, summed by the
 * reads, would remove that if the bench shows it).
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "store_backend.h"
#include "store_pg_be.h"
#include "store_pg_int.h"
#include "util.h"

/* The value of the op's one statement's first row, first column, into
 * *(int64_t *)op->rows; and op->status from it through op->aux's rule. */
enum { AS_VALUE, AS_FOUND_STATE, AS_DUP };

static int parse_value(struct pg_op *op, int k, const PGresult *res) {
    int64_t v = PQntuples(res) ? pg_col_int(res, 0, 0) : 0;
    if (k != 0)
        return 0;
    if (op->rows)
        *(int64_t *)op->rows = v;
    if (op->aux == AS_FOUND_STATE) /* (found, changed): 0 unknown, 1 done, 2 not in that state */
        op->status = v == 0 ? 0 : pg_col_int(res, 0, 1) ? 1 : 2;
    else if (op->aux == AS_DUP)
        op->status = PQntuples(res) ? 0 : STORE_DUP;
    return 0;
}

/* Queues sql (n params) as one group write answered by parse_value. */
static int state_write(struct store_be *be, const char *sql, int n, const char *const *p, int rule,
                       int with_value, store_be_done_fn cb, void *arg) {
    struct pg_op *op;
    int ret = -1;

    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    if (!(op = pg_op_new(be->group, cb, arg, parse_value)))
        goto done;
    op->aux = rule;
    if (with_value) {
        if (!(op->rows = calloc(1, sizeof(int64_t)))) {
            pg_op_drop(op, "out of memory");
            goto done;
        }
        op->n = 1;
    }
    if (pg_op_query(op, sql, n, p) < 0) {
        pg_op_drop(op, "the write could not be queued");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    return ret;
}

int store_pg_endpoint_attempt(struct store_be *be, const char *name, int ok, const char *error,
                              int64_t now, store_be_done_fn cb, void *arg) {
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)now);
    return state_write(
        be,
        "INSERT INTO endpoint_state AS e (name, ok, failed, last_error, last_error_at,"
        " first_failure_at) VALUES ($1, CASE WHEN $2::boolean THEN 1 ELSE 0 END,"
        " CASE WHEN $2::boolean THEN 0 ELSE 1 END, CASE WHEN $2::boolean THEN NULL ELSE $3 END,"
        " CASE WHEN $2::boolean THEN 0 ELSE $4::bigint END,"
        " CASE WHEN $2::boolean THEN 0 ELSE $4::bigint END)"
        " ON CONFLICT (name) DO UPDATE SET ok = e.ok + excluded.ok,"
        " failed = e.failed + excluded.failed,"
        " last_error = CASE WHEN $2::boolean THEN e.last_error ELSE $3 END,"
        " last_error_at = CASE WHEN $2::boolean THEN e.last_error_at ELSE $4::bigint END,"
        " first_failure_at = CASE WHEN $2::boolean THEN 0 WHEN e.first_failure_at = 0"
        " THEN $4::bigint ELSE e.first_failure_at END"
        " RETURNING first_failure_at",
        4, (const char *const[]){name, ok ? "true" : "false", error, t}, AS_VALUE, 1, cb, arg);
}

int store_pg_endpoint_set_disabled(struct store_be *be, const char *name, int disabled,
                                   const char *reason, int64_t now, store_be_done_fn cb,
                                   void *arg) {
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)now);
    if (disabled)
        return state_write(
            be,
            "WITH s AS (INSERT INTO endpoint_state AS e (name, disabled, disabled_at,"
            " reason) VALUES ($1, true, $2::bigint, $3) ON CONFLICT (name) DO UPDATE"
            " SET disabled = true, disabled_at = $2::bigint, reason = $3),"
            " m AS (UPDATE delivery_queue SET status = 'held' WHERE endpoint = $1"
            " AND status = 'pending' RETURNING 1)"
            " SELECT count(*) FROM m",
            3, (const char *const[]){name, t, reason}, AS_VALUE, 1, cb, arg);
    return state_write(be,
                       "WITH s AS (INSERT INTO endpoint_state AS e (name) VALUES ($1)"
                       " ON CONFLICT (name) DO UPDATE SET disabled = false, disabled_at = 0,"
                       " reason = NULL, first_failure_at = 0),"
                       " m AS (UPDATE delivery_queue SET status = 'pending', lease_owner = NULL,"
                       " lease_until = 0, next_at = least(next_at, $2::bigint)"
                       " WHERE endpoint = $1 AND status = 'held' RETURNING 1)"
                       " SELECT count(*) FROM m",
                       2, (const char *const[]){name, t}, AS_VALUE, 1, cb, arg);
}

int store_pg_delivery_retry(struct store_be *be, const char *id, int64_t next_at,
                            store_be_done_fn cb, void *arg) {
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)next_at);
    /* the dead letter back into the queue, its attempts counted on */
    return state_write(
        be,
        "WITH d AS (SELECT seq FROM deliveries WHERE id = $1),"
        " o AS (DELETE FROM delivery_outcomes WHERE delivery_seq = (SELECT seq FROM d)"
        " AND status = 'failed' RETURNING delivery_seq, endpoint, okey, attempts),"
        " q AS (INSERT INTO delivery_queue (delivery_seq, endpoint, okey, status,"
        " next_at, schedule_pos, attempts) SELECT delivery_seq, endpoint, okey,"
        " 'pending', $2::bigint, 0, attempts FROM o)"
        " SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM o)",
        2, (const char *const[]){id, t}, AS_FOUND_STATE, 0, cb, arg);
}

int store_pg_delivery_skip(struct store_be *be, const char *id, int64_t now, store_be_done_fn cb,
                           void *arg) {
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)now);
    /* the failed head leaves its key (its okey cleared); the key's next
     * delivery is due now */
    return state_write(
        be,
        "WITH d AS (SELECT seq FROM deliveries WHERE id = $1),"
        " x AS (UPDATE delivery_outcomes o SET okey = NULL FROM delivery_outcomes old"
        "  WHERE old.delivery_seq = o.delivery_seq AND o.delivery_seq = (SELECT seq FROM d)"
        "  AND o.status = 'failed' AND o.okey IS NOT NULL RETURNING o.endpoint, old.okey),"
        " n AS (UPDATE delivery_queue SET next_at = least(next_at, $2::bigint)"
        "  WHERE delivery_seq = (SELECT min(q.delivery_seq) FROM delivery_queue q, x"
        "  WHERE q.endpoint = x.endpoint AND q.okey = x.okey))"
        " SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM x)",
        2, (const char *const[]){id, t}, AS_FOUND_STATE, 0, cb, arg);
}

int store_pg_sub_put(struct store_be *be, const struct store_sub *sub, store_be_done_fn cb,
                     void *arg) {
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)sub->created_at);
    return state_write(
        be,
        "INSERT INTO subscriptions (id, event, pattern, url, secret, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6::bigint)"
        " ON CONFLICT (pattern) DO NOTHING RETURNING 1",
        6, (const char *const[]){sub->id, sub->event, sub->pattern, sub->url, sub->secret, t},
        AS_DUP, 0, cb, arg);
}

int store_pg_sub_change(struct store_be *be, const char *id, const char *url, store_be_done_fn cb,
                        void *arg) {
    /* status 1 done, 0 unknown id */
    return state_write(
        be,
        url ? "WITH c AS (UPDATE subscriptions SET url = $2 WHERE id = $1"
              " RETURNING 1) SELECT count(*), count(*) FROM c"
            : "WITH c AS (DELETE FROM subscriptions WHERE id = $1 AND $2::text IS NULL"
              " RETURNING 1) SELECT count(*), count(*) FROM c",
        2, (const char *const[]){id, url}, AS_FOUND_STATE, 0, cb, arg);
}

int store_pg_sub_set_secret(struct store_be *be, const char *id, const char *secret,
                            store_be_done_fn cb, void *arg) {
    /* status 1 done, 0 unknown id */
    return state_write(be,
                       "WITH c AS (UPDATE subscriptions SET secret = $2 WHERE id = $1 RETURNING 1)"
                       " SELECT count(*), count(*) FROM c",
                       2, (const char *const[]){id, secret}, AS_FOUND_STATE, 0, cb, arg);
}
