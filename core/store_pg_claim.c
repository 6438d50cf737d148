/* store_pg_claim.c -- the PostgreSQL backend's claims (C of
 * store_backend.h): one short transaction on the read connection, BEGIN,
 * the claim, Sync, COMMIT, Sync, so a lease is taken at once whatever the
 * group does, and the rows reach the caller only once their leases are
 * committed.
 *
 * Across instances: the candidate rows are locked FOR UPDATE SKIP LOCKED
 * (two instances claiming the same endpoint at once take disjoint rows;
 * READ COMMITTED re-checks a row another instance leased and committed
 * since the statement's snapshot, and leaves it), the lease is the owner
 * (this instance's id) and an expiry, and a row whose lease expired is
 * claimable by anyone: an instance killed with its leases loses them at
 * their expiry, or sooner once it is seen dead (store_pg_reap.c sets their
 * lease_until to 0, the owner kept, so a claim counts the takeover). An
 * ordered endpoint has one owner of its head at a time
 * (endpoint_state.head_owner, head_until): the claim first takes or renews
 * it (an upsert whose WHERE lets another owner's head go only once
 * expired; the row lock makes two instances' attempts queue), and claims
 * rows only while it holds it, in seq order, without SKIP LOCKED (a
 * skipped row would break the order).
 *
 * An endpoint's `rate` across instances (schema version 2): its token
 * bucket is endpoint_state's tokens and tokens_at, read and written only
 * under the capped claim's lock on that row, so the instances' claims of
 * the endpoint take turns on one bucket. Each claim refills it by the
 * time elapsed since the last refill (the database's clock, one clock
 * for every instance whatever their hosts' say; never backwards) times
 * the rate, up to the burst (store_rate_burst: a tenth of a second's
 * worth, at least one), and takes one token per row it claims, at most
 * its whole tokens. The rows claimed by all instances in any interval are
 * then at most rate x interval + burst; the scheduler claims only rows it
 * starts at once (deliver_sched.c), so what receivers see follows the
 * claims within a claim's round trip. The bucket starts empty (tokens_at
 * 0), as the scheduler's own does.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "store_backend.h"
#include "store_pg_be.h"
#include "metrics.h"
#include "store_pg_int.h"
#include "util.h"

#define CLAIM_SET                                                                                  \
    "UPDATE delivery_queue q SET lease_owner = $4, lease_until = $2::bigint + $5::bigint FROM ("
#define CLAIM_RETURNING                                                                            \
    ") c, deliveries d WHERE q.delivery_seq = c.delivery_seq AND d.seq = q.delivery_seq"           \
    " RETURNING d.seq, d.id, d.event_id, d.endpoint, d.event_type, d.content_type, d.headers,"     \
    " d.payload, q.attempts, q.schedule_pos, q.next_at, d.created_at, c.prev_owner,"               \
    " c.prev_until <= $2::bigint, q.okey IS NOT NULL"

/* The due rows of endpoint $1 at $2 from next_at F on (the floor, below),
 * earliest first: pending, not leased (or the lease expired), a row with
 * an order key only when no earlier one of its key is live or failed. */
#define CLAIM_DUE_ROWS(F)                                                                          \
    "SELECT c.delivery_seq, c.lease_owner AS prev_owner, c.lease_until AS prev_until"              \
    " FROM delivery_queue c WHERE c.endpoint = $1 AND c.status = 'pending'"                        \
    " AND c.next_at >= " F "::bigint AND c.next_at <= $2::bigint AND c.lease_until <= $2::bigint"  \
    " AND (c.okey IS NULL OR (NOT EXISTS (SELECT 1 FROM delivery_queue e"                          \
    "  WHERE e.endpoint = c.endpoint AND e.okey = c.okey AND e.delivery_seq < c.delivery_seq)"     \
    "  AND NOT EXISTS (SELECT 1 FROM delivery_outcomes o WHERE o.endpoint = c.endpoint"            \
    "  AND o.okey = c.okey AND o.status = 'failed')))"                                             \
    " ORDER BY c.next_at, c.delivery_seq"

static const char CLAIM_DUE_SQL[] =
    CLAIM_SET CLAIM_DUE_ROWS("$6") " LIMIT $3::bigint FOR UPDATE SKIP LOCKED" CLAIM_RETURNING;

/* A capped claim (the endpoint's concurrency across instances): its
 * endpoint_state row made if missing and locked first, so claims of one
 * endpoint take turns; then, in a statement of its own (a snapshot taken
 * after the lock: it sees the leases the previous holder committed), the
 * due claim limited to cap minus the other instances' live leases of the
 * endpoint ($6 cap: the endpoint's concurrency less the rows this instance
 * holds, which its scheduler counts; OTHER_LEASES counts at most the cap
 * of the others', from delivery_queue_leased: its "lease_until > 0" is
 * written out, as a prepared statement's generic plan cannot prove it
 * from "> $2", and with the LIMIT the planner walks the index even on
 * stale statistics).
 * Why not count this instance's leases there too: under a held xmin
 * horizon every row leased in the last `lease` (30 s) leaves an entry in
 * that index which VACUUM may not remove; the count walked them all, every
 * claim (2.5 ms and 30,000 entries at 1,000 deliveries/s: most of the
 * held-horizon row's loss, issue 15). Counted here only when another
 * instance is registered (instances; the uncorrelated subquery runs only
 * when the CASE needs it): one instance walks none of them; several still
 * walk the index's entries of every instance's last `lease` of claims,
 * as before. That holds only if every instance that holds
 * leases is registered when the others count: so a claim registers its
 * instance first (INST_ROW_SQL, before the endpoint's lock; a no-op once
 * the row is there), and commits that with its leases. */
#define OTHER_LEASES                                                                               \
    "(CASE WHEN EXISTS (SELECT 1 FROM instances i WHERE i.id <> $4) THEN"                          \
    " (SELECT count(*) FROM (SELECT 1 FROM delivery_queue l WHERE l.endpoint = $1"                 \
    " AND l.lease_until > 0 AND l.lease_until > $2::bigint AND l.lease_owner <> $4"                \
    " LIMIT $6::bigint) l) ELSE 0 END)"

static const char INST_ROW_SQL[] =
    "INSERT INTO instances (id, started_at, seen_at, version) VALUES ($1, $2::bigint, $2::bigint,"
    " $3) ON CONFLICT (id) DO NOTHING";
static const char CAP_ROW_SQL[] =
    "INSERT INTO endpoint_state (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
static const char CAP_LOCK_SQL[] = "SELECT 1 FROM endpoint_state WHERE name = $1 FOR UPDATE";
static const char CLAIM_CAPPED_SQL[] =
    CLAIM_SET CLAIM_DUE_ROWS("$7") " LIMIT least($3::bigint, greatest(0, $6::bigint - " OTHER_LEASES
                                   "))"
                                   " FOR UPDATE SKIP LOCKED" CLAIM_RETURNING;

/* The shared bucket ($2 rate per second, $3 burst), refilled under the
 * lock just taken (a statement of its own: its clock is read once the lock
 * is held). The clock read once (the FROM) and never moved backwards. */
static const char RATE_FILL_SQL[] =
    "UPDATE endpoint_state s SET tokens = CASE WHEN s.tokens_at = 0 THEN 0"
    " ELSE least($3::float8, s.tokens + greatest(0, c.t - s.tokens_at) * $2::float8 / 1000) END,"
    " tokens_at = greatest(s.tokens_at, c.t)"
    " FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS t) c"
    " WHERE s.name = $1";

/* The capped claim limited to the bucket's whole tokens, which it takes
 * one per row; one row per claimed row and the tokens left, or, when none
 * was claimed, one row of NULLs and the tokens (column 15). */
static const char CLAIM_RATED_SQL[] = "WITH claimed AS (" CLAIM_SET CLAIM_DUE_ROWS(
    "$7") " LIMIT least($3::bigint, greatest(0, $6::bigint - " OTHER_LEASES "),"
          "  greatest(0, coalesce((SELECT floor(tokens)::bigint FROM endpoint_state WHERE name = "
          "$1), "
          "0)))"
          " FOR UPDATE SKIP LOCKED" CLAIM_RETURNING "),"
          " bucket AS (UPDATE endpoint_state SET tokens = tokens - (SELECT count(*) FROM claimed)"
          "  WHERE name = $1 RETURNING tokens)"
          " SELECT claimed.*, bucket.tokens FROM bucket LEFT JOIN claimed ON true";

static const char HEAD_SQL[] =
    "INSERT INTO endpoint_state (name, head_owner, head_until) VALUES ($1, $2, $3::bigint)"
    " ON CONFLICT (name) DO UPDATE SET head_owner = excluded.head_owner,"
    " head_until = excluded.head_until WHERE endpoint_state.head_owner IS NULL"
    " OR endpoint_state.head_owner = excluded.head_owner OR endpoint_state.head_until <= $4::bigint"
    " RETURNING head_owner";

static const char CLAIM_ORDERED_SQL[] = CLAIM_SET
    "SELECT c.delivery_seq, c.lease_owner AS prev_owner, c.lease_until AS prev_until"
    " FROM delivery_queue c WHERE c.endpoint = "
    "$1 AND c.status = 'pending'"
    " AND c.delivery_seq > $6::bigint"
    " AND ((c.next_at <= $2::bigint AND c.lease_until <= $2::bigint) OR c.lease_owner = $4)"
    " AND EXISTS (SELECT 1 FROM endpoint_state s WHERE s.name = $1 AND s.head_owner = $4)"
    " ORDER BY c.delivery_seq LIMIT $3::bigint FOR UPDATE" CLAIM_RETURNING;

/* ---- the claim floor ----
 * Why: a claim reads its endpoint's due rows in delivery_queue_due's order
 * (next_at, delivery_seq) from the lowest next_at. The rows delivered are
 * deleted (to delivery_outcomes) and every claim's lease update leaves an
 * index entry behind too; VACUUM removes those entries, but not while a
 * long transaction (a report, a pg_dump, an idle replication slot) holds
 * the xmin horizon back: then each claim walks every entry left since, a
 * minute of deliveries, before its first live row (the torture
 * bench). So a claim starts at a floor, the next_at of the first row the
 * last claim of this endpoint got: what lies below it was claimed,
 * delivered or leased then. A row can come back below it (a lease given
 * back or ended, a held endpoint enabled, a key whose head was delivered,
 * a row from an instance whose clock is behind): so a claim reads from the
 * bottom when the last one got nothing, when the endpoint has order keys
 * (their rows are unblocked below the floor one by one), and at least
 * once a second (FLOOR_FULL_MS), which bounds how late such a row goes. */

#define FLOOR_FULL_MS 1000

struct pg_floor {
    struct pg_floor *next;
    int64_t at;      /* next_at of the first row of the last claim that got rows, 0: none */
    int64_t full_ms; /* when a claim last read from the bottom (monotonic) */
    int64_t used;    /* the floor the last claim read from (INT64_MIN: the bottom) */
    int empty;       /* the last claim got no row */
    int keyed;       /* a row with an order key was claimed: no floor */
    char endpoint[];
};

static struct pg_floor *floor_get(struct store_be *be, const char *endpoint) {
    struct pg_floor *f;
    size_t len = strlen(endpoint);
    for (f = be->floors; f; f = f->next)
        if (strcmp(f->endpoint, endpoint) == 0)
            return f;
    if (!(f = calloc(1, sizeof *f + len + 1)))
        return NULL; /* no floor: claims read from the bottom */
    memcpy(f->endpoint, endpoint, len + 1);
    f->next = be->floors;
    be->floors = f;
    return f;
}

/* The floor this claim of f's endpoint reads from (INT64_MIN: the bottom). */
static int64_t floor_use(struct pg_floor *f) {
    int64_t mono = util_mono_ms();
    if (!f)
        return INT64_MIN;
    if (!f->at || f->empty || f->keyed || mono - f->full_ms >= FLOOR_FULL_MS) {
        f->full_ms = mono;
        f->used = INT64_MIN;
    } else {
        f->used = f->at;
    }
    return f->used;
}

/* What a due claim got moves its floor: to its first row's next_at. */
static void floor_claimed(struct pg_floor *f, const PGresult *res, int rows,
                          const struct store_delivery *d, size_t n) {
    if (!f)
        return;
    f->empty = n == 0;
    if (n)
        f->at = d[0].next_at; /* d sorted by due */
    for (int r = 0; r < rows; r++)
        if (!PQgetisnull(res, r, 14) && PQgetvalue(res, r, 14)[0] == 't')
            f->keyed = 1;
}

int64_t store_pg_floor_next_due(struct store_be *be, const char *endpoint) {
    struct pg_floor *f = be->floor_next;
    be->floor_next = NULL;
    return f && strcmp(f->endpoint, endpoint) == 0 ? f->used : INT64_MIN;
}

void store_pg_floors_free(struct store_be *be) {
    while (be->floors) {
        struct pg_floor *f = be->floors;
        be->floors = f->next;
        free(f);
    }
    be->floor_next = NULL;
}

static void claimed_free(struct pg_op *op) {
    store_deliveries_free(op->rows, op->n);
    op->rows = NULL;
    op->n = 0;
}

static int by_due(const void *a, const void *b) {
    const struct store_delivery *x = a, *y = b;
    if (x->next_at != y->next_at)
        return x->next_at < y->next_at ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int by_seq(const void *a, const void *b) {
    const struct store_delivery *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The ms until a bucket holding tokens has a whole one again at rate. */
static int rate_wait_ms(double tokens, double rate) {
    double ms;
    if (tokens >= 1.0 || rate <= 0)
        return 0;
    ms = (1.0 - (tokens < 0 ? 0 : tokens)) * 1000.0 / rate + 1;
    return ms > 3600000.0 ? 3600000 : (int)ms;
}

/* One claimed row; returns 0, or -1 when out of memory. */
static int claimed_row(const PGresult *res, int r, struct store_delivery *d) {
    size_t len = 0;
    unsigned char *raw;
    int oom = 0;

    d->seq = pg_col_int(res, r, 0);
    snprintf(d->id, sizeof d->id, "%s", PQgetvalue(res, r, 1));
    snprintf(d->event_id, sizeof d->event_id, "%s", PQgetvalue(res, r, 2));
    d->endpoint = pg_col(res, r, 3, &oom);
    d->event_type = pg_col(res, r, 4, &oom);
    d->content_type = pg_col(res, r, 5, &oom);
    d->headers_json = pg_col(res, r, 6, &oom);
    d->attempts = (int)pg_col_int(res, r, 8);
    d->schedule_pos = (int)pg_col_int(res, r, 9);
    d->next_at = pg_col_int(res, r, 10);
    d->created_at = pg_col_int(res, r, 11);
    if (!PQgetisnull(res, r, 7)) {
        raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, r, 7), &len);
        if (!raw || !(d->payload = malloc(len + 1))) {
            oom = 1;
        } else {
            memcpy(d->payload, raw, len);
            d->payload[len] = '\0';
            d->payload_len = len;
        }
        PQfreemem(raw);
    }
    return oom ? -1 : 0;
}

/* A row whose lease expired (its instance died, or its outcome did not
 * commit within the lease): this claim takes it over, and its delivery may
 * be sent twice. Counted in /metrics (issue 15: duplicates only from
 * expired leases, and counted); this instance's own expired lease too. An
 * outcome and a release clear the owner; a live lease of this instance (an
 * ordered endpoint's read-ahead, taken again) is not a takeover. */
static void count_takeovers(const PGresult *res, int rows) {
    for (int r = 0; r < rows; r++)
        if (!PQgetisnull(res, r, 0) && !PQgetisnull(res, r, 12) && PQgetvalue(res, r, 13)[0] == 't')
            metrics_lease_takeover(PQgetvalue(res, r, 3));
}

/* A claim's rows (statement op->aux; 0: due, 1: ordered's, 3: capped, 4:
 * a rated claim's (op->rate > 0), whose rows carry the bucket's tokens
 * left, one row of NULLs when none was claimed: op->status becomes the
 * bucket's wait). */
static int parse_claim(struct pg_op *op, int k, const PGresult *res) {
    struct store_delivery *d;
    int rows = PQntuples(res), rated = op->rate > 0;

    if (k != op->aux)
        return 0;
    if (rows <= 0 || (rated && PQgetisnull(res, 0, 0))) {
        if (rated && rows > 0)
            op->status = rate_wait_ms(strtod(PQgetvalue(res, 0, 15), NULL), op->rate);
        floor_claimed(op->floor, res, 0, NULL, 0); /* none claimed */
        return 0;
    }
    if (rated)
        op->status = rate_wait_ms(strtod(PQgetvalue(res, 0, 15), NULL), op->rate);
    count_takeovers(res, rows);
    if (!(d = calloc((size_t)rows, sizeof *d)))
        return -1;
    op->rows = d;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        if (claimed_row(res, r, &d[r]) < 0)
            return -1;
    }
    qsort(d, op->n, sizeof *d, k == 1 ? by_seq : by_due); /* 1: ordered's; 0, 3, 4: due */
    if (k != 1)
        floor_claimed(op->floor, res, rows, d, op->n);
    return 0;
}

int store_pg_claim(struct store_be *be, const char *endpoint, int64_t after_seq, int64_t now,
                   int64_t lease_ms, size_t max, size_t cap, double rate, store_be_done_fn cb,
                   void *arg) {
    char n[24], lease[24], lim[24], after[24], until[24], capped[24], r[32], burst[32], fl[24];
    const char *p[6] = {endpoint, n, lim, be->instance, lease, after};
    const char *pd[6] = {endpoint, n, lim, be->instance, lease, fl};
    const char *pc[7] = {endpoint, n, lim, be->instance, lease, capped, fl};
    struct pg_floor *f = after_seq < 0 ? floor_get(be, endpoint) : NULL;
    const char *pr[3] = {endpoint, r, burst};
    const char *pi[3] = {be->instance, n, WAYBILL_VERSION};
    struct pg_op *op;
    int ret = -1;

    be->in_call++;
    snprintf(n, sizeof n, "%lld", (long long)now);
    snprintf(lease, sizeof lease, "%lld", (long long)lease_ms);
    snprintf(lim, sizeof lim, "%zu", max);
    snprintf(after, sizeof after, "%lld", (long long)after_seq);
    snprintf(until, sizeof until, "%lld", (long long)(now + lease_ms));
    snprintf(capped, sizeof capped, "%zu", cap);
    snprintf(r, sizeof r, "%.17g", rate);
    snprintf(burst, sizeof burst, "%.17g", store_rate_burst(rate));
    if (!(op = pg_single(be, be->rd, 1, cb, arg, parse_claim)))
        goto done;
    op->free_rows = claimed_free;
    if (after_seq < 0) {
        snprintf(fl, sizeof fl, "%lld", (long long)floor_use(f));
        op->floor = f;
        be->floor_next = f;
    }
    if (after_seq < 0 && cap > 0 && rate > 0) {
        op->aux = 4; /* the fifth statement has the rows and the bucket */
        op->rate = rate;
        if (pg_op_query(op, INST_ROW_SQL, 3, pi) < 0 || pg_op_query(op, CAP_ROW_SQL, 1, p) < 0 ||
            pg_op_query(op, CAP_LOCK_SQL, 1, p) < 0 || pg_op_query(op, RATE_FILL_SQL, 3, pr) < 0 ||
            pg_op_query(op, CLAIM_RATED_SQL, 7, pc) < 0)
            op->dropped = 1;
    } else if (after_seq < 0 && cap > 0) {
        op->aux = 3; /* the fourth statement has the rows */
        if (pg_op_query(op, INST_ROW_SQL, 3, pi) < 0 || pg_op_query(op, CAP_ROW_SQL, 1, p) < 0 ||
            pg_op_query(op, CAP_LOCK_SQL, 1, p) < 0 || pg_op_query(op, CLAIM_CAPPED_SQL, 7, pc) < 0)
            op->dropped = 1;
    } else if (after_seq < 0) {
        op->aux = 0;
        if (pg_op_query(op, CLAIM_DUE_SQL, 6, pd) < 0)
            op->dropped = 1;
    } else {
        op->aux = 1;
        if (pg_op_query(op, HEAD_SQL, 4, (const char *const[]){endpoint, be->instance, until, n}) <
                0 ||
            pg_op_query(op, CLAIM_ORDERED_SQL, 6, p) < 0)
            op->dropped = 1;
    }
    ret = op->dropped ? -1 : 0;
    pg_tx_end(op->tx, NULL, NULL);
done:
    be->in_call--;
    return ret;
}
