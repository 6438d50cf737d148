/* store_pg_state.c -- the PostgreSQL backend's group writes of shared
 * state (G of store_backend.h): an endpoint's health counters, disabling
 * and enabling it (its queue rows held or released), a dead letter put
 * back (retry) or stepped over in its key (skip), subscriptions. One
 * statement each, queued on the open group (store_pg_be.c); every
 * instance sees the result once the group commits.
 *
 * endpoint_attempt updates the endpoint's one endpoint_state row, once per
 * group (below), at the group's end: its lock is held from there to the
 * group's COMMIT, so instances delivering to one endpoint take turns on
 * it, group by group.
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

/* ---- endpoint_attempt: one upsert per endpoint per group ----
 * Every attempt's outcome counts on its endpoint's one endpoint_state row.
 * An update per attempt made a new version of that row each time: with
 * the xmin horizon held (a long REPEATABLE READ), versions nobody may
 * remove piled up on the row every claim of the endpoint also reads and
 * locks, and each write and claim walked them all (the health upsert went
 * from 0.06 to 0.31 ms, the claims' lock from 0.2 to 0.8 ms, over a
 * minute). So the group gathers an endpoint's attempts and writes them as
 * one upsert at its end: the counts summed, the last failure's error and
 * time, and the start of the run of failures the group ends with (0 when
 * it ends with a success; kept from the row when the group had no success
 * and the row was already failing) -- what the attempts' upserts one by
 * one would have left. Every attempt's callback gets that final start. */

struct pg_health {
    int64_t value; /* first: what each attempt's callback is given (its rows) */
    int64_t n_ok, n_fail, last_err_at, trail_first;
    int had_ok;
    char *last_err;
    struct pg_op **followers; /* this endpoint's later attempts in the group */
    size_t nfollowers;
};

static const char HEALTH_SQL[] =
    "INSERT INTO endpoint_state AS e (name, ok, failed, last_error, last_error_at,"
    " first_failure_at) VALUES ($1, $2::bigint, $3::bigint, $4, $5::bigint, $7::bigint)"
    " ON CONFLICT (name) DO UPDATE SET ok = e.ok + excluded.ok,"
    " failed = e.failed + excluded.failed,"
    " last_error = CASE WHEN $3::bigint > 0 THEN $4 ELSE e.last_error END,"
    " last_error_at = CASE WHEN $3::bigint > 0 THEN $5::bigint ELSE e.last_error_at END,"
    " first_failure_at = CASE WHEN $6::boolean OR e.first_failure_at = 0 THEN $7::bigint"
    " ELSE e.first_failure_at END"
    " RETURNING first_failure_at";

static void health_free(struct pg_op *op) {
    struct pg_health *hl = op->rows;
    if (hl) {
        free(hl->last_err);
        free(hl->followers);
        free(hl);
    }
    op->rows = NULL;
}

static int parse_health(struct pg_op *op, int k, const PGresult *res) {
    struct pg_health *hl = op->rows;
    if (k != 0)
        return 0;
    hl->value = PQntuples(res) ? pg_col_int(res, 0, 0) : 0;
    for (size_t i = 0; i < hl->nfollowers; i++)
        *(int64_t *)hl->followers[i]->rows = hl->value;
    return 0;
}

static struct pg_op *health_leader(struct pg_tx *tx, const char *name) {
    for (struct pg_op *op = tx->ops; op; op = op->next)
        if (op->parse == parse_health && !op->dropped && strcmp(op->text, name) == 0)
            return op;
    return NULL;
}

/* The attempt counted into its endpoint's gathering (hl). */
static int health_add(struct pg_health *hl, int ok, const char *error, int64_t now) {
    if (ok) {
        hl->n_ok++;
        hl->had_ok = 1;
        hl->trail_first = 0;
        return 0;
    }
    char *e = error ? strdup(error) : NULL;
    if (error && !e)
        return -1;
    free(hl->last_err);
    hl->last_err = e;
    hl->last_err_at = now;
    hl->n_fail++;
    if (!hl->trail_first)
        hl->trail_first = now;
    return 0;
}

int store_pg_endpoint_attempt(struct store_be *be, const char *name, int ok, const char *error,
                              int64_t now, store_be_done_fn cb, void *arg) {
    struct pg_op *leader, *op;
    struct pg_health *hl;
    int ret = -1;

    if (!be->group || be->group->failed)
        return -1;
    be->in_call++;
    leader = health_leader(be->group, name);
    if (!(op = pg_op_new(be->group, cb, arg, leader ? NULL : parse_health)))
        goto done;
    if (!leader) {
        op->free_rows = health_free;
        if (!(op->text = strdup(name)) || !(op->rows = calloc(1, sizeof *hl))) {
            pg_op_drop(op, "out of memory");
            goto done;
        }
        leader = op;
    } else {
        struct pg_op **f;
        hl = leader->rows;
        if (!(op->rows = calloc(1, sizeof(int64_t))) ||
            !(f = realloc(hl->followers, (hl->nfollowers + 1) * sizeof *f))) {
            pg_op_drop(op, "out of memory");
            goto done;
        }
        hl->followers = f;
        hl->followers[hl->nfollowers++] = op;
    }
    op->n = 1;
    if (health_add(leader->rows, ok, error, now) < 0) {
        pg_op_drop(op, "out of memory");
        goto done;
    }
    ret = 0;
done:
    be->in_call--;
    return ret;
}

void store_pg_health_flush(struct store_be *be, struct pg_tx *tx) {
    char n_ok[24], n_fail[24], at[24], first[24];
    const char *p[7] = {NULL, n_ok, n_fail, NULL, at, NULL, first};

    be->in_call++;
    for (struct pg_op *op = tx->ops; op && !tx->failed; op = op->next) {
        struct pg_health *hl = op->rows;
        if (op->parse != parse_health || op->dropped || op->nstmt)
            continue;
        snprintf(n_ok, sizeof n_ok, "%lld", (long long)hl->n_ok);
        snprintf(n_fail, sizeof n_fail, "%lld", (long long)hl->n_fail);
        snprintf(at, sizeof at, "%lld", (long long)hl->last_err_at);
        snprintf(first, sizeof first, "%lld", (long long)hl->trail_first);
        p[0] = op->text;
        p[3] = hl->last_err;
        p[5] = hl->had_ok ? "true" : "false";
        if (pg_op_query(op, HEALTH_SQL, 7, p) < 0)
            break; /* the group failed: every op gets -1 */
    }
    be->in_call--;
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
