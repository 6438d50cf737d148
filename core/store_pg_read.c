/* store_pg_read.c -- the PostgreSQL backend's reads (R of
 * store_backend.h): each one statement and a Sync on the read connection,
 * its own implicit transaction, so it sees committed state only (every
 * instance answers the same). The rows handed to the callback belong to
 * the op and are freed after it.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "store_backend.h"
#include "store_pg_be.h"
#include "store_pg_int.h"
#include "util.h"

/* Runs sql (n params) as a read op answered by parse. */
static int read_run(struct store_be *be, const char *sql, int n, const char *const *p,
                    pg_parse_fn parse, void (*free_rows)(struct pg_op *), store_be_done_fn cb,
                    void *arg) {
    struct pg_op *op;
    int ret = -1;

    be->in_call++;
    if (!(op = pg_single(be, be->rd, 0, cb, arg, parse)))
        goto done;
    op->free_rows = free_rows;
    if (pg_op_query(op, sql, n, p) < 0)
        op->dropped = 1;
    ret = op->dropped ? -1 : 0;
    pg_tx_end(op->tx, NULL, NULL);
done:
    be->in_call--;
    return ret;
}

/* ---- ping ---- */

static int parse_ping(struct pg_op *op, int k, const PGresult *res) {
    UNUSED(k);
    op->status = PQntuples(res) == 1 ? 0 : -1;
    return 0;
}

int store_pg_ping(struct store_be *be, store_be_done_fn cb, void *arg) {
    return read_run(be, "SELECT 1", 0, NULL, parse_ping, NULL, cb, arg);
}

/* ---- delivery counts ---- */

static int parse_counts(struct pg_op *op, int k, const PGresult *res) {
    struct store_counts *c;
    UNUSED(k);
    if (!(c = calloc(1, sizeof *c)))
        return -1;
    c->pending = pg_col_int(res, 0, 0);
    c->held = pg_col_int(res, 0, 1);
    c->failed = pg_col_int(res, 0, 2);
    c->delivered = pg_col_int(res, 0, 3);
    op->rows = c;
    op->n = 1;
    return 0;
}

int store_pg_delivery_counts(struct store_be *be, store_be_done_fn cb, void *arg) {
    return read_run(be,
                    "SELECT count(*) FILTER (WHERE status = 'pending'),"
                    " count(*) FILTER (WHERE status = 'held'),"
                    " (SELECT count(*) FROM delivery_outcomes WHERE status = 'failed'),"
                    " (SELECT count(*) FROM delivery_outcomes WHERE status = 'delivered')"
                    " FROM delivery_queue",
                    0, NULL, parse_counts, NULL, cb, arg);
}

/* ---- batch windows due ---- */

static void windows_free(struct pg_op *op) {
    store_batch_windows_free(op->rows, op->n);
    op->rows = NULL;
}

static int parse_windows(struct pg_op *op, int k, const PGresult *res) {
    struct store_batch_window *w;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (rows == 0)
        return 0;
    if (!(w = calloc((size_t)rows, sizeof *w)))
        return -1;
    op->rows = w;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        w[r].endpoint = pg_col(res, r, 0, &oom);
        w[r].window_start = pg_col_int(res, r, 1);
        w[r].window_ms = pg_col_int(res, r, 2);
        w[r].items = pg_col_int(res, r, 3);
    }
    return oom ? -1 : 0;
}

int store_pg_batch_due(struct store_be *be, int64_t now, store_be_done_fn cb, void *arg) {
    char n[24];
    snprintf(n, sizeof n, "%lld", (long long)now);
    return read_run(be,
                    "SELECT endpoint, window_start, window_ms, count(*) FROM batch_items"
                    " WHERE delivery_id IS NULL AND window_start + window_ms <= $1::bigint"
                    " GROUP BY endpoint, window_ms, window_start ORDER BY min(seq)",
                    1, (const char *const[]){n}, parse_windows, windows_free, cb, arg);
}

/* ---- a page of events ---- */

static void events_free(struct pg_op *op) {
    store_event_rows_free(op->rows, op->n);
    op->rows = NULL;
}

static int parse_events(struct pg_op *op, int k, const PGresult *res) {
    struct store_event_row *e;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (rows == 0)
        return 0;
    if (!(e = calloc((size_t)rows, sizeof *e)))
        return -1;
    op->rows = e;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        e[r].seq = pg_col_int(res, r, 0);
        e[r].id = pg_col(res, r, 1, &oom);
        e[r].source = pg_col(res, r, 2, &oom);
        e[r].source_id = pg_col(res, r, 3, &oom);
        e[r].type = pg_col(res, r, 4, &oom);
        e[r].created_at = pg_col(res, r, 5, &oom);
        e[r].status = pg_col(res, r, 6, &oom);
        e[r].error = pg_col(res, r, 7, &oom);
        e[r].received_at = pg_col_int(res, r, 8);
    }
    return oom ? -1 : 0;
}

int store_pg_events_page(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                         void *arg) {
    char lim[24], after[24], since[24], until[24];
    snprintf(lim, sizeof lim, "%zu", q->limit);
    snprintf(after, sizeof after, "%lld", (long long)q->after);
    snprintf(since, sizeof since, "%lld", (long long)q->since);
    snprintf(until, sizeof until, "%lld", (long long)q->until);
    /* a type glob: LIKE with % and _ escaped and * as % */
    return read_run(
        be,
        "SELECT seq, id, source, source_id, type, created_at, status, error, received_at"
        " FROM events WHERE ($1::text IS NULL OR type LIKE replace(replace(replace(replace($1,"
        " '\\', '\\\\'), '%', '\\%'), '_', '\\_'), '*', '%'))"
        " AND ($2::text IS NULL OR source = $2) AND ($3::text IS NULL OR status = $3)"
        " AND ($5::bigint = 0 OR seq < $5::bigint)"
        " AND ($6::text IS NULL OR received_at >= $6::bigint)"
        " AND ($7::text IS NULL OR received_at < $7::bigint)"
        " ORDER BY seq DESC LIMIT $4::bigint",
        7,
        (const char *const[]){q->type, q->source, q->status, lim, after,
                              q->has_since ? since : NULL, q->has_until ? until : NULL},
        parse_events, events_free, cb, arg);
}

/* ---- a page of deliveries ---- */

static void items_free(struct pg_op *op) {
    store_delivery_items_free(op->rows, op->n);
    op->rows = NULL;
}

static int parse_items(struct pg_op *op, int k, const PGresult *res) {
    struct store_delivery_item *d;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (rows == 0)
        return 0;
    if (!(d = calloc((size_t)rows, sizeof *d)))
        return -1;
    op->rows = d;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        d[r].seq = pg_col_int(res, r, 0);
        d[r].id = pg_col(res, r, 1, &oom);
        d[r].event_id = pg_col(res, r, 2, &oom);
        d[r].endpoint = pg_col(res, r, 3, &oom);
        d[r].event_type = pg_col(res, r, 4, &oom);
        d[r].status = pg_col(res, r, 5, &oom);
        d[r].attempts = pg_col_int(res, r, 6);
        d[r].has_next_at = !PQgetisnull(res, r, 7);
        d[r].next_at = pg_col_int(res, r, 7);
        d[r].created_at = pg_col_int(res, r, 8);
        d[r].has_last = !PQgetisnull(res, r, 9);
        d[r].last_status_code = pg_col_int(res, r, 9);
        d[r].last_error = pg_col(res, r, 10, &oom);
        d[r].key = pg_col(res, r, 11, &oom);
    }
    return oom ? -1 : 0;
}

int store_pg_deliveries_page(struct store_be *be, const struct store_page *q, store_be_done_fn cb,
                             void *arg) {
    char lim[24], after[24];
    snprintf(lim, sizeof lim, "%zu", q->limit);
    snprintf(after, sizeof after, "%lld", (long long)q->after);
    /* a delivery's state: its queue row while live, its outcome once ended;
     * a row waiting behind its order key's head (an earlier live row of its
     * key, or a failed one: the claim's condition, store_pg_claim.c) is due
     * at no time of its own: no next_at, as SQLite shows a parked row */
    return read_run(
        be,
        "SELECT d.seq, d.id, d.event_id, d.endpoint, d.event_type, coalesce(q.status, o.status),"
        " coalesce(q.attempts, o.attempts, 0),"
        " CASE WHEN q.status = 'pending' AND (q.okey IS NULL OR (NOT EXISTS (SELECT 1"
        "  FROM delivery_queue e WHERE e.endpoint = q.endpoint AND e.okey = q.okey"
        "  AND e.delivery_seq < q.delivery_seq) AND NOT EXISTS (SELECT 1 FROM delivery_outcomes f"
        "  WHERE f.endpoint = q.endpoint AND f.okey = q.okey AND f.status = 'failed')))"
        " THEN greatest(q.next_at, q.lease_until) END,"
        " d.created_at, la.status_code, la.error, d.okey"
        " FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_seq = d.seq"
        " LEFT JOIN delivery_outcomes o ON o.delivery_seq = d.seq"
        " LEFT JOIN LATERAL (SELECT a.status_code, a.error FROM attempts a"
        "  WHERE a.delivery_id = d.id ORDER BY a.n DESC LIMIT 1) la ON true"
        " WHERE ($1::text IS NULL OR coalesce(q.status, o.status) = $1)"
        " AND ($2::text IS NULL OR d.endpoint = $2) AND ($3::bigint = 0 OR d.seq < $3::bigint)"
        " ORDER BY d.seq DESC LIMIT $4::bigint",
        4, (const char *const[]){q->status, q->endpoint, after, lim}, parse_items, items_free, cb,
        arg);
}

/* ---- an event's detail ---- */

/* The deliveries of event $1: its own and the batches holding it. */
#define DETAIL_DLVS                                                                                \
    "SELECT d.seq FROM deliveries d WHERE d.event_id = $1 UNION SELECT d.seq FROM deliveries d"    \
    " WHERE d.id IN (SELECT delivery_id FROM batch_items WHERE event_id = $1"                      \
    " AND delivery_id IS NOT NULL)"

static const char *const detail_sql[] = {
    "SELECT seq, id, source, source_id, type, created_at, status, error, headers, data, raw,"
    " received_at, shipment, matched FROM events WHERE id = $1",
    "SELECT d.id, d.endpoint, coalesce(q.status, o.status), d.content_type, d.event_type, d.batch,"
    " d.payload FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_seq = d.seq"
    " LEFT JOIN delivery_outcomes o ON o.delivery_seq = d.seq"
    " WHERE d.seq IN (" DETAIL_DLVS ") ORDER BY d.seq",
    "SELECT a.delivery_id, a.n, a.at, a.status_code, a.latency_ms, a.error, a.response"
    " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
    " WHERE d.seq IN (" DETAIL_DLVS ") ORDER BY a.delivery_id, a.n",
    "SELECT endpoint, min(window_start + window_ms) FROM batch_items"
    " WHERE event_id = $1 AND delivery_id IS NULL"
    " GROUP BY endpoint, window_start, window_ms ORDER BY min(seq)",
};

static void detail_free(struct pg_op *op) {
    store_event_detail_free(op->rows);
    op->rows = NULL;
}

/* A bytea column as a NUL-terminated copy (len in *n); NULL for SQL NULL. */
static char *col_bytes(const PGresult *res, int r, int c, size_t *n, int *oom) {
    unsigned char *raw;
    char *out = NULL;
    size_t len = 0;
    *n = 0;
    if (PQgetisnull(res, r, c))
        return NULL;
    raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, r, c), &len);
    if (raw && (out = malloc(len + 1))) {
        memcpy(out, raw, len);
        out[len] = '\0';
        *n = len;
    } else {
        *oom = 1;
    }
    PQfreemem(raw);
    return out;
}

static int detail_event(struct pg_op *op, const PGresult *res) {
    struct store_event_detail *d;
    struct store_event_row *e;
    int oom = 0;

    if (PQntuples(res) != 1)
        return 0; /* unknown: status 0, no detail */
    if (!(d = calloc(1, sizeof *d)))
        return -1;
    op->rows = d;
    op->n = 1;
    op->status = 1;
    if (!(e = d->ev = calloc(1, sizeof *e)))
        return -1;
    e->seq = pg_col_int(res, 0, 0);
    e->id = pg_col(res, 0, 1, &oom);
    e->source = pg_col(res, 0, 2, &oom);
    e->source_id = pg_col(res, 0, 3, &oom);
    e->type = pg_col(res, 0, 4, &oom);
    e->created_at = pg_col(res, 0, 5, &oom);
    e->status = pg_col(res, 0, 6, &oom);
    e->error = pg_col(res, 0, 7, &oom);
    e->headers_json = pg_col(res, 0, 8, &oom);
    e->data_json = pg_col(res, 0, 9, &oom);
    e->raw = col_bytes(res, 0, 10, &e->raw_len, &oom);
    e->received_at = pg_col_int(res, 0, 11);
    e->shipment_json = pg_col(res, 0, 12, &oom);
    e->matched_json = pg_col(res, 0, 13, &oom);
    return oom ? -1 : 0;
}

static int detail_deliveries(struct store_event_detail *d, const PGresult *res) {
    int rows = PQntuples(res), oom = 0;
    if (!rows)
        return 0;
    if (!(d->deliveries = calloc((size_t)rows, sizeof *d->deliveries)))
        return -1;
    for (int r = 0; r < rows; r++) {
        struct store_event_delivery *x = &d->deliveries[r];
        d->ndeliveries = (size_t)r + 1;
        x->id = pg_col(res, r, 0, &oom);
        x->endpoint = pg_col(res, r, 1, &oom);
        x->status = pg_col(res, r, 2, &oom);
        x->content_type = pg_col(res, r, 3, &oom);
        x->event_type = pg_col(res, r, 4, &oom);
        x->batch = strcmp(PQgetvalue(res, r, 5), "t") == 0;
        x->payload = col_bytes(res, r, 6, &x->payload_len, &oom);
    }
    return oom ? -1 : 0;
}

static int detail_attempts(struct store_event_detail *d, const PGresult *res) {
    int rows = PQntuples(res), oom = 0;
    for (size_t i = 0; i < d->ndeliveries; i++) {
        struct store_event_delivery *x = &d->deliveries[i];
        size_t k = 0;
        for (int r = 0; r < rows; r++)
            k += x->id && strcmp(PQgetvalue(res, r, 0), x->id) == 0;
        if (!k)
            continue;
        if (!(x->attempts = calloc(k, sizeof *x->attempts)))
            return -1;
        for (int r = 0; r < rows; r++) {
            struct store_attempt_row *a;
            if (strcmp(PQgetvalue(res, r, 0), x->id) != 0)
                continue;
            a = &x->attempts[x->nattempts++];
            a->n = pg_col_int(res, r, 1);
            a->at = pg_col_int(res, r, 2);
            a->status_code = pg_col_int(res, r, 3);
            a->latency_ms = pg_col_int(res, r, 4);
            a->error = pg_col(res, r, 5, &oom);
            a->response = col_bytes(res, r, 6, &a->response_len, &oom);
        }
    }
    return oom ? -1 : 0;
}

static int detail_waiting(struct store_event_detail *d, const PGresult *res) {
    int rows = PQntuples(res), oom = 0;
    if (!rows)
        return 0;
    if (!(d->waiting = calloc((size_t)rows, sizeof *d->waiting)))
        return -1;
    for (int r = 0; r < rows; r++) {
        d->nwaiting = (size_t)r + 1;
        d->waiting[r].endpoint = pg_col(res, r, 0, &oom);
        d->waiting[r].window_end = pg_col_int(res, r, 1);
    }
    return oom ? -1 : 0;
}

static int parse_detail(struct pg_op *op, int k, const PGresult *res) {
    if (k == 0)
        return detail_event(op, res);
    if (!op->rows) /* unknown event: the rest is empty */
        return 0;
    if (k == 1)
        return detail_deliveries(op->rows, res);
    if (k == 2)
        return detail_attempts(op->rows, res);
    return detail_waiting(op->rows, res);
}

int store_pg_event_detail(struct store_be *be, const char *id, store_be_done_fn cb, void *arg) {
    struct pg_op *op;
    int ret = -1;

    be->in_call++;
    if (!(op = pg_single(be, be->rd, 0, cb, arg, parse_detail)))
        goto done;
    op->free_rows = detail_free;
    for (size_t i = 0; i < sizeof detail_sql / sizeof detail_sql[0] && !op->dropped; i++)
        if (pg_op_query(op, detail_sql[i], 1, (const char *const[]){id}) < 0)
            op->dropped = 1;
    ret = op->dropped ? -1 : 0;
    pg_tx_end(op->tx, NULL, NULL);
done:
    be->in_call--;
    return ret;
}

/* ---- the loop's reads: one value, names, states, subscriptions ---- */

static void value_free(struct pg_op *op) {
    free(op->rows);
    op->rows = NULL;
}

/* One int64 (INT64_MAX for SQL NULL) into rows. */
static int parse_value(struct pg_op *op, int k, const PGresult *res) {
    int64_t *v;
    UNUSED(k);
    if (!(v = malloc(sizeof *v)))
        return -1;
    *v = PQntuples(res) && !PQgetisnull(res, 0, 0) ? pg_col_int(res, 0, 0) : INT64_MAX;
    op->rows = v;
    op->n = 1;
    return 0;
}

int store_pg_endpoint_next_due(struct store_be *be, const char *name, store_be_done_fn cb,
                               void *arg) {
    /* A leased row is claimable when its lease ends. Two index reads, not
     * one min over every pending row (O(backlog), per claim): the first
     * row never leased (lease_until 0) in due order, and the few rows
     * with a lease, live or ended, from delivery_queue_leased (status
     * tested in a FILTER, not the WHERE: a WHERE status = 'pending' would
     * let the planner, its statistics stale, walk delivery_queue_due's
     * every row instead). */
    /* Read right after a claim that read from a floor (store_pg_claim.c):
     * the first row never leased from that floor, and no look at the
     * leased rows: every claimed row leaves an entry in
     * delivery_queue_leased, which VACUUM cannot remove while the xmin
     * horizon is held, and reading them all after every claim is what
     * made claims slow then. A leased row comes back by its instance's
     * own outcome, a release (lease_until 0: below the floor, read from
     * the bottom within FLOOR_FULL_MS), or its expiry, which the
     * watchdog's reads (every second, this whole statement) see. */
    char floor[24];
    int64_t f = store_pg_floor_next_due(be, name);
    snprintf(floor, sizeof floor, "%lld", (long long)f);
    if (f != INT64_MIN)
        return read_run(be,
                        "SELECT next_at FROM delivery_queue WHERE endpoint = $1"
                        " AND status = 'pending' AND lease_until = 0 AND next_at >= $2::bigint"
                        " ORDER BY next_at, delivery_seq LIMIT 1",
                        2, (const char *const[]){name, floor}, parse_value, value_free, cb, arg);
    return read_run(be,
                    "SELECT least((SELECT next_at FROM delivery_queue WHERE endpoint = $1"
                    "  AND status = 'pending' AND lease_until = 0"
                    "  ORDER BY next_at, delivery_seq LIMIT 1),"
                    " (SELECT min(greatest(next_at, lease_until)) FILTER (WHERE status = 'pending')"
                    "  FROM delivery_queue WHERE endpoint = $1 AND lease_until > 0))",
                    1, (const char *const[]){name}, parse_value, value_free, cb, arg);
}

int store_pg_batch_next_close(struct store_be *be, store_be_done_fn cb, void *arg) {
    return read_run(be,
                    "SELECT min(window_start + window_ms) FROM batch_items"
                    " WHERE delivery_id IS NULL",
                    0, NULL, parse_value, value_free, cb, arg);
}

static void names_free(struct pg_op *op) {
    char **v = op->rows;
    for (size_t i = 0; v && i < op->n; i++)
        free(v[i]);
    free(v);
    op->rows = NULL;
}

static int parse_names(struct pg_op *op, int k, const PGresult *res) {
    int rows = PQntuples(res), oom = 0;
    char **v;
    UNUSED(k);
    if (!rows)
        return 0;
    if (!(v = calloc((size_t)rows, sizeof *v)))
        return -1;
    op->rows = v;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        v[r] = pg_col(res, r, 0, &oom);
    }
    return oom ? -1 : 0;
}

int store_pg_endpoints_pending(struct store_be *be, store_be_done_fn cb, void *arg) {
    /* one index seek per endpoint (a skip scan), whatever the backlog */
    return read_run(be,
                    "WITH RECURSIVE e(name) AS ("
                    " SELECT min(endpoint) FROM delivery_queue WHERE status = 'pending'"
                    " UNION ALL SELECT (SELECT min(endpoint) FROM delivery_queue"
                    "  WHERE status = 'pending' AND endpoint > e.name) FROM e"
                    "  WHERE e.name IS NOT NULL)"
                    " SELECT name FROM e WHERE name IS NOT NULL",
                    0, NULL, parse_names, names_free, cb, arg);
}

static void states_free(struct pg_op *op) {
    store_endpoint_states_free(op->rows, op->n);
    op->rows = NULL;
}

static int parse_states(struct pg_op *op, int k, const PGresult *res) {
    struct store_endpoint_state *e;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (!rows)
        return 0;
    if (!(e = calloc((size_t)rows, sizeof *e)))
        return -1;
    op->rows = e;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        e[r].name = pg_col(res, r, 0, &oom);
        e[r].disabled = strcmp(PQgetvalue(res, r, 1), "t") == 0;
        e[r].disabled_at = pg_col_int(res, r, 2);
        e[r].reason = pg_col(res, r, 3, &oom);
        e[r].last_error = pg_col(res, r, 4, &oom);
        e[r].last_error_at = pg_col_int(res, r, 5);
        e[r].first_failure_at = pg_col_int(res, r, 6);
        e[r].ok = pg_col_int(res, r, 7);
        e[r].failed = pg_col_int(res, r, 8);
        e[r].pending = pg_col_int(res, r, 9);
        e[r].held = pg_col_int(res, r, 10);
    }
    return oom ? -1 : 0;
}

int store_pg_endpoint_states(struct store_be *be, store_be_done_fn cb, void *arg) {
    return read_run(be,
                    "SELECT e.name, e.disabled, e.disabled_at, e.reason, e.last_error,"
                    " e.last_error_at, e.first_failure_at, e.ok, e.failed,"
                    " (SELECT count(*) FROM delivery_queue q WHERE q.endpoint = e.name"
                    "  AND q.status = 'pending'),"
                    " (SELECT count(*) FROM delivery_queue q WHERE q.endpoint = e.name"
                    "  AND q.status = 'held')"
                    " FROM endpoint_state e ORDER BY e.name",
                    0, NULL, parse_states, states_free, cb, arg);
}

/* Subscriptions as struct store_sub (their strings owned by the op). */
static void subs_free(struct pg_op *op) {
    struct store_sub *v = op->rows;
    for (size_t i = 0; v && i < op->n; i++) {
        free((char *)v[i].id);
        free((char *)v[i].event);
        free((char *)v[i].pattern);
        free((char *)v[i].url);
        free((char *)v[i].secret);
    }
    free(v);
    op->rows = NULL;
}

static int parse_subs(struct pg_op *op, int k, const PGresult *res) {
    struct store_sub *v;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (!rows)
        return 0;
    if (!(v = calloc((size_t)rows, sizeof *v)))
        return -1;
    op->rows = v;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        v[r].id = pg_col(res, r, 0, &oom);
        v[r].event = pg_col(res, r, 1, &oom);
        v[r].pattern = pg_col(res, r, 2, &oom);
        v[r].url = pg_col(res, r, 3, &oom);
        v[r].secret = pg_col(res, r, 4, &oom);
        v[r].created_at = pg_col_int(res, r, 5);
    }
    return oom ? -1 : 0;
}

int store_pg_subs_load(struct store_be *be, store_be_done_fn cb, void *arg) {
    return read_run(be,
                    "SELECT id, event, pattern, url, secret, created_at FROM subscriptions"
                    " ORDER BY seq",
                    0, NULL, parse_subs, subs_free, cb, arg);
}

/* Events committed but not routed yet ("received"), oldest first, whole
 * (headers, data, raw): the recovery after a crash. */
static int parse_unrouted(struct pg_op *op, int k, const PGresult *res) {
    struct store_event_row *e;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (!rows)
        return 0;
    if (!(e = calloc((size_t)rows, sizeof *e)))
        return -1;
    op->rows = e;
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        e[r].seq = pg_col_int(res, r, 0);
        e[r].id = pg_col(res, r, 1, &oom);
        e[r].source = pg_col(res, r, 2, &oom);
        e[r].source_id = pg_col(res, r, 3, &oom);
        e[r].type = pg_col(res, r, 4, &oom);
        e[r].created_at = pg_col(res, r, 5, &oom);
        e[r].status = pg_col(res, r, 6, &oom);
        e[r].error = pg_col(res, r, 7, &oom);
        e[r].headers_json = pg_col(res, r, 8, &oom);
        e[r].data_json = pg_col(res, r, 9, &oom);
        e[r].raw = col_bytes(res, r, 10, &e[r].raw_len, &oom);
        e[r].received_at = pg_col_int(res, r, 11);
        e[r].shipment_json = pg_col(res, r, 12, &oom);
    }
    return oom ? -1 : 0;
}

static void unrouted_free(struct pg_op *op) {
    store_event_rows_free(op->rows, op->n);
    op->rows = NULL;
}

int store_pg_events_unrouted(struct store_be *be, int64_t after_seq, size_t max,
                             store_be_done_fn cb, void *arg) {
    char after[24], lim[24];
    snprintf(after, sizeof after, "%lld", (long long)after_seq);
    snprintf(lim, sizeof lim, "%zu", max);
    return read_run(be,
                    "SELECT seq, id, source, source_id, type, created_at, status, error, headers,"
                    " data, raw, received_at, shipment FROM events WHERE status = 'received'"
                    " AND seq > $1::bigint ORDER BY seq LIMIT $2::bigint",
                    2, (const char *const[]){after, lim}, parse_unrouted, unrouted_free, cb, arg);
}

/* ---- one event; find; an endpoint's head, queue and blocked keys ---- */

static int parse_event_get(struct pg_op *op, int k, const PGresult *res) {
    struct store_event_detail *d;
    UNUSED(k);
    if (detail_event(op, res) < 0) /* (the detail's event row reader) */
        return -1;
    if (!(d = op->rows)) /* unknown */
        return 0;
    op->rows = d->ev; /* the row alone */
    d->ev = NULL;
    free(d);
    return 0;
}

static void event_get_free(struct pg_op *op) {
    store_event_rows_free(op->rows, op->rows ? 1 : 0);
    op->rows = NULL;
}

int store_pg_event_get(struct store_be *be, const char *id, store_be_done_fn cb, void *arg) {
    return read_run(be, detail_sql[0], 1, (const char *const[]){id}, parse_event_get,
                    event_get_free, cb, arg);
}

int store_pg_events_find(struct store_be *be, const char *text, size_t max, store_be_done_fn cb,
                         void *arg) {
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", max);
    /* its id or carrier id first, then the events whose data or shipment
     * holds the text, newest first (a scan, as on SQLite) */
    return read_run(be,
                    "SELECT id FROM (SELECT id, 0 AS k, seq FROM events"
                    " WHERE id = $1 OR source_id = $1 UNION ALL SELECT id, 1, seq FROM events"
                    " WHERE (strpos(data, $1) > 0 OR strpos(shipment, $1) > 0)"
                    " AND id <> $1 AND source_id <> $1) f ORDER BY k, seq DESC LIMIT $2::bigint",
                    2, (const char *const[]){text, lim}, parse_names, names_free, cb, arg);
}

/* Two int64s: the head's seq and next_at (INT64_MAX, INT64_MAX: none). */
static int parse_head(struct pg_op *op, int k, const PGresult *res) {
    int64_t *v;
    UNUSED(k);
    if (!(v = malloc(2 * sizeof *v)))
        return -1;
    v[0] = v[1] = INT64_MAX;
    if (PQntuples(res) == 1) {
        v[0] = pg_col_int(res, 0, 0);
        v[1] = pg_col_int(res, 0, 1);
    }
    op->rows = v;
    op->n = 2;
    return 0;
}

int store_pg_endpoint_head(struct store_be *be, const char *name, store_be_done_fn cb, void *arg) {
    return read_run(be,
                    "SELECT delivery_seq, next_at FROM delivery_queue WHERE endpoint = $1"
                    " AND status = 'pending' ORDER BY delivery_seq LIMIT 1",
                    1, (const char *const[]){name}, parse_head, value_free, cb, arg);
}

int store_pg_backlog(struct store_be *be, store_be_done_fn cb, void *arg) {
    return read_run(be, "SELECT count(*) FROM delivery_queue", 0, NULL, parse_value, value_free, cb,
                    arg);
}

static int parse_queue(struct pg_op *op, int k, const PGresult *res) {
    struct store_endpoint_queue *q;
    UNUSED(k);
    if (!(q = calloc(1, sizeof *q)))
        return -1;
    op->rows = q;
    op->n = 1;
    q->pending = pg_col_int(res, 0, 0);
    q->held = pg_col_int(res, 0, 1);
    q->due = pg_col_int(res, 0, 2);
    q->oldest_due = PQgetisnull(res, 0, 3) ? INT64_MAX : pg_col_int(res, 0, 3);
    q->blocked = pg_col_int(res, 0, 4);
    q->oldest_blocked = PQgetisnull(res, 0, 5) ? INT64_MAX : pg_col_int(res, 0, 5);
    return 0;
}

int store_pg_endpoint_queue(struct store_be *be, const char *name, int64_t now, int64_t due_cap,
                            int counts, store_be_done_fn cb, void *arg) {
    char n[24], cap[24];
    snprintf(n, sizeof n, "%lld", (long long)now);
    snprintf(cap, sizeof cap, "%lld", (long long)due_cap);
    /* pending and held counted only when asked (O(rows)); due ones up to
     * the cap; the blocked keys from the failed heads' index */
    return read_run(
        be,
        "SELECT CASE WHEN $4::boolean THEN (SELECT count(*) FROM delivery_queue"
        "  WHERE endpoint = $1 AND status = 'pending') ELSE 0 END,"
        " CASE WHEN $4::boolean THEN (SELECT count(*) FROM delivery_queue"
        "  WHERE endpoint = $1 AND status = 'held') ELSE 0 END,"
        " (SELECT count(*) FROM (SELECT 1 FROM delivery_queue WHERE endpoint = $1"
        "  AND status = 'pending' AND next_at <= $2::bigint AND lease_until <= $2::bigint"
        "  LIMIT $3::bigint) c),"
        " (SELECT min(next_at) FROM delivery_queue WHERE endpoint = $1 AND status = 'pending'"
        "  AND next_at <= $2::bigint AND lease_until <= $2::bigint),"
        " (SELECT count(*) FROM delivery_outcomes WHERE endpoint = $1 AND status = 'failed'"
        "  AND okey IS NOT NULL),"
        " (SELECT min(at) FROM delivery_outcomes WHERE endpoint = $1 AND status = 'failed'"
        "  AND okey IS NOT NULL)",
        4, (const char *const[]){name, n, cap, counts ? "true" : "false"}, parse_queue, NULL, cb,
        arg);
}

static void blocked_free(struct pg_op *op) {
    struct store_blocked_key *b = op->rows;
    for (size_t i = 0; b && i < op->n; i++) {
        free(b[i].key);
        free(b[i].head_id);
    }
    free(b);
    op->rows = NULL;
}

static int parse_blocked(struct pg_op *op, int k, const PGresult *res) {
    struct store_blocked_key *b;
    int rows = PQntuples(res), oom = 0;
    UNUSED(k);
    if (rows <= 0)
        return 0; /* status 0: none blocked */
    if (!(b = calloc((size_t)rows, sizeof *b)))
        return -1;
    op->rows = b;
    op->status = (int)pg_col_int(res, 0, 4); /* all of them, in this statement's view */
    for (int r = 0; r < rows; r++) {
        op->n = (size_t)r + 1;
        b[r].key = pg_col(res, r, 0, &oom);
        b[r].head_id = pg_col(res, r, 1, &oom);
        b[r].depth = pg_col_int(res, r, 2);
        b[r].since = pg_col_int(res, r, 3);
    }
    return oom ? -1 : 0;
}

int store_pg_endpoint_blocked(struct store_be *be, const char *name, size_t max,
                              store_be_done_fn cb, void *arg) {
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", max);
    return read_run(be,
                    "SELECT o.okey, d.id, (SELECT count(*) FROM delivery_queue q"
                    "  WHERE q.endpoint = o.endpoint AND q.okey = o.okey), o.at, count(*) OVER ()"
                    " FROM delivery_outcomes o JOIN deliveries d ON d.seq = o.delivery_seq"
                    " WHERE o.endpoint = $1 AND o.status = 'failed' AND o.okey IS NOT NULL"
                    " ORDER BY o.at, o.delivery_seq LIMIT $2::bigint",
                    2, (const char *const[]){name, lim}, parse_blocked, blocked_free, cb, arg);
}
