/* store_sqlite_deliveries.c -- deliveries in the store once they exist: leases,
 * attempts and outcomes, manual retries, and the counts by status.
 * Invariants: a lease moves next_at to the lease's end and records it in
 * lease_until (released at open after a crash); an outcome clears the
 * lease; delivery_counts plus the open group's insert counts (s->counts)
 * equal count(*) by status at every moment (triggers keep updates and
 * deletes, the store counts inserts and writes them before COMMIT).
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

const struct store_stmt_def store_deliveries_stmts[] = {
    {ST_DLV_LEASE, "UPDATE deliveries SET next_at = ?2, lease_until = ?2 WHERE seq = ?1"},
    {ST_DLV_RELEASE, "UPDATE deliveries SET next_at = ?2, lease_until = 0"
                     " WHERE seq = ?1 AND status = 'pending' AND lease_until > 0"},
    {ST_DLV_OUTCOME, "UPDATE deliveries SET status = ?2, next_at = ?3, schedule_pos = ?4,"
                     " attempts = max(attempts, ?5), lease_until = 0 WHERE id = ?1"
                     " RETURNING endpoint, okey"},
    /* The next row of a key, parked behind the head that just left, due. */
    {ST_KEY_PROMOTE, "UPDATE deliveries SET next_at = ?3 WHERE seq ="
                     " (SELECT seq FROM deliveries INDEXED BY deliveries_ep_key"
                     "  WHERE endpoint = ?1 AND okey = ?2 AND okey IS NOT NULL"
                     "  AND status IN ('pending', 'held', 'failed') ORDER BY seq LIMIT 1)"
                     " AND next_at >= ?4"},
    {ST_DLV_KEY_GET, "SELECT endpoint, okey, status FROM deliveries WHERE id = ?1"},
    {ST_DLV_SKIP, "UPDATE deliveries SET okey = NULL WHERE id = ?1 AND status = 'failed'"
                  " AND okey IS NOT NULL"},
    {ST_DLV_RETRY, "UPDATE deliveries SET status = 'pending', schedule_pos = 0, next_at = ?2,"
                   " lease_until = 0 WHERE id = ?1 AND status = 'failed'"},
    {ST_DLV_EXISTS, "SELECT 1 FROM deliveries WHERE id = ?1"},
    {ST_ATT_INSERT, "INSERT OR REPLACE INTO attempts(delivery_id, n, at, status_code,"
                    " latency_ms, error, response) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
    {ST_COUNTS, "SELECT status, n FROM delivery_counts"},
    {ST_COUNTS_ADD, "INSERT INTO delivery_counts(status, n) VALUES (?1, ?2)"
                    " ON CONFLICT(status) DO UPDATE SET n = n + ?2"},
    {ST_COUNT_, NULL},
};

/* ---- rows ---- */

void store_deliveries_free(struct store_delivery *d, size_t n) {
    size_t i;
    if (!d)
        return;
    for (i = 0; i < n; i++) {
        free(d[i].endpoint);
        free(d[i].event_type);
        free(d[i].content_type);
        free(d[i].headers_json);
        free(d[i].payload);
    }
    free(d);
}

void store_delivery_row_read(sqlite3_stmt *st, struct store_delivery *r, int *oom) {
    r->seq = sqlite3_column_int64(st, 0);
    copy_id(r->id, sizeof r->id, sqlite3_column_text(st, 1));
    copy_id(r->event_id, sizeof r->event_id, sqlite3_column_text(st, 2));
    r->endpoint = col_text(st, 3, oom);
    r->event_type = col_text(st, 4, oom);
    r->content_type = col_text(st, 5, oom);
    r->headers_json = col_text(st, 6, oom);
    r->payload = col_blob(st, 7, &r->payload_len, oom);
    r->attempts = sqlite3_column_int(st, 8);
    r->schedule_pos = sqlite3_column_int(st, 9);
    r->next_at = sqlite3_column_int64(st, 10);
    r->created_at = sqlite3_column_int64(st, 11);
}

/* ---- leases ---- */

int store_deliveries_lease(struct store_sq *s, const struct store_delivery *d, size_t n,
                           int64_t until, char *err, size_t errlen) {
    sqlite3_stmt *lease = store_stmt(s, ST_DLV_LEASE);
    size_t i;

    if (n && store_group_begin(s, err, errlen) < 0)
        return -1;
    for (i = 0; i < n; i++) {
        /* Only committed rows are ever claimed (the watermark). */
        STORE_CHECK(d[i].seq <= s->committed_dlv_seq);
        if (sqlite3_bind_int64(lease, 1, d[i].seq) || sqlite3_bind_int64(lease, 2, until) ||
            sqlite3_step(lease) != SQLITE_DONE) {
            store_group_fail(s, "claim", err, errlen);
            stmt_done(lease);
            return -1;
        }
        stmt_done(lease);
    }
    return 0;
}

int store_sqlite_delivery_lease(struct store_sq *s, int64_t seq, int64_t next_at, int lease,
                                char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, lease ? ST_DLV_LEASE : ST_DLV_RELEASE);

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (sqlite3_bind_int64(st, 1, seq) || sqlite3_bind_int64(st, 2, next_at) ||
        sqlite3_step(st) != SQLITE_DONE) {
        store_group_fail(s, lease ? "lease" : "release", err, errlen);
        stmt_done(st);
        return -1;
    }
    stmt_done(st);
    return 0;
}

/* ---- attempts and outcomes ---- */

/* Makes the next row of endpoint's key okey due at now, if it is parked.
 * Returns 0 or -1 (the group failed). */
static int key_promote(struct store_sq *s, const char *endpoint, const char *okey, int64_t now,
                       char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_KEY_PROMOTE);
    int ret = 0;

    if (bind_text(st, 1, endpoint) || bind_text(st, 2, okey) || sqlite3_bind_int64(st, 3, now) ||
        sqlite3_bind_int64(st, 4, STORE_PARKED_AT) || sqlite3_step(st) != SQLITE_DONE) {
        store_group_fail(s, "order key", err, errlen);
        ret = -1;
    }
    stmt_done(st);
    return ret;
}

int store_sqlite_attempt_put(struct store_sq *s, const char *delivery_id,
                             const struct store_attempt *a, const char *status, int64_t next_at,
                             int schedule_pos, char *err, size_t errlen) {
    sqlite3_stmt *up = store_stmt(s, ST_DLV_OUTCOME), *ins = store_stmt(s, ST_ATT_INSERT);
    char *endpoint = NULL, *okey = NULL;
    int ret = -1, rc, oom = 0;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    /* The delivery first: an unknown id writes nothing and keeps the group. */
    if (bind_text(up, 1, delivery_id) || bind_text(up, 2, status) ||
        sqlite3_bind_int64(up, 3, next_at) || sqlite3_bind_int(up, 4, schedule_pos) ||
        sqlite3_bind_int(up, 5, a->n)) {
        store_group_fail(s, "delivery outcome", err, errlen);
        goto done;
    }
    rc = sqlite3_step(up);
    if (rc == SQLITE_DONE) {
        store_err(err, errlen, "store: unknown delivery %s", delivery_id);
        goto done;
    }
    if (rc == SQLITE_ROW && sqlite3_column_type(up, 1) != SQLITE_NULL) {
        endpoint = col_text(up, 0, &oom);
        okey = col_text(up, 1, &oom);
    }
    if (rc != SQLITE_ROW || oom || sqlite3_step(up) != SQLITE_DONE) {
        store_group_fail(s, "delivery outcome", err, errlen);
        goto done;
    }
    /* Delivered: the next row of its key goes. Failed: the key stays
     * blocked behind it until it is retried or skipped. */
    if (okey && !strcmp(status, "delivered") &&
        key_promote(s, endpoint, okey, util_now_ms(), err, errlen) < 0)
        goto done;
    if (bind_text(ins, 1, delivery_id) || sqlite3_bind_int(ins, 2, a->n) ||
        sqlite3_bind_int64(ins, 3, a->at) || sqlite3_bind_int(ins, 4, a->status_code) ||
        sqlite3_bind_int64(ins, 5, a->latency_ms) || bind_text(ins, 6, a->error) ||
        bind_blob(ins, 7, a->response, a->response_len) || sqlite3_step(ins) != SQLITE_DONE) {
        store_group_fail(s, "attempt insert", err, errlen);
        goto done;
    }
    ret = 0;
done:
    stmt_done(up);
    stmt_done(ins);
    free(endpoint);
    free(okey);
    return ret;
}

int store_sqlite_delivery_skip(struct store_sq *s, const char *id, int64_t now, char *err,
                               size_t errlen) {
    sqlite3_stmt *get = store_stmt(s, ST_DLV_KEY_GET), *up = store_stmt(s, ST_DLV_SKIP);
    char *endpoint = NULL, *okey = NULL;
    int ret = -1, rc, oom = 0;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (bind_text(get, 1, id)) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    rc = sqlite3_step(get);
    if (rc == SQLITE_DONE) {
        ret = 0;
        goto done;
    }
    if (rc != SQLITE_ROW) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    if (sqlite3_column_type(get, 1) == SQLITE_NULL ||
        strcmp((const char *)sqlite3_column_text(get, 2), "failed") != 0) {
        ret = 2; /* not the failed head of a key */
        goto done;
    }
    endpoint = col_text(get, 0, &oom);
    okey = col_text(get, 1, &oom);
    if (oom) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    /* Out of its key (it stays failed, a dead letter), then the key goes on. */
    if (bind_text(up, 1, id) || sqlite3_step(up) != SQLITE_DONE) {
        store_group_fail(s, "delivery skip", err, errlen);
        goto done;
    }
    if (key_promote(s, endpoint, okey, now, err, errlen) < 0)
        goto done;
    ret = 1;
done:
    stmt_done(get);
    stmt_done(up);
    free(endpoint);
    free(okey);
    return ret;
}

int store_sqlite_delivery_retry(struct store_sq *s, const char *id, int64_t next_at, char *err,
                                size_t errlen) {
    sqlite3_stmt *up = store_stmt(s, ST_DLV_RETRY), *get = store_stmt(s, ST_DLV_EXISTS);
    int ret = -1, rc;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (bind_text(up, 1, id) || sqlite3_bind_int64(up, 2, next_at) ||
        sqlite3_step(up) != SQLITE_DONE) {
        store_group_fail(s, "delivery retry", err, errlen);
        goto done;
    }
    if (sqlite3_changes(s->db) == 1) {
        ret = 1;
        goto done;
    }
    if (bind_text(get, 1, id)) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    rc = sqlite3_step(get);
    if (rc == SQLITE_ROW)
        ret = 2;
    else if (rc == SQLITE_DONE)
        ret = 0;
    else
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
done:
    stmt_done(up);
    stmt_done(get);
    return ret;
}

/* ---- counts by status ---- */

/* Adds n to the count of status in delivery_counts at once. */
static int counts_write(struct store_sq *s, const char *status, int64_t n) {
    sqlite3_stmt *st = store_stmt(s, ST_COUNTS_ADD);
    int rc;
    if (bind_text(st, 1, status) || sqlite3_bind_int64(st, 2, n))
        rc = SQLITE_ERROR;
    else
        rc = sqlite3_step(st);
    stmt_done(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* When the status is too long for the table or the table is full, the row
 * is counted in delivery_counts at once. */
int store_counts_add(struct store_sq *s, const char *status, int64_t n) {
    int i;
    STORE_CHECK(s->in_txn);
    for (i = 0; i < s->ncounts; i++) {
        if (strcmp(s->counts[i].status, status) == 0) {
            s->counts[i].n += n;
            return 0;
        }
    }
    if (s->ncounts < (int)(sizeof s->counts / sizeof s->counts[0]) &&
        strlen(status) < sizeof s->counts[0].status) {
        snprintf(s->counts[s->ncounts].status, sizeof s->counts[0].status, "%s", status);
        s->counts[s->ncounts++].n = n;
        return 0;
    }
    return counts_write(s, status, n);
}

int store_counts_flush(struct store_sq *s) {
    int i, rc = 0;
    for (i = 0; i < s->ncounts && rc == 0; i++)
        if (s->counts[i].n != 0)
            rc = counts_write(s, s->counts[i].status, s->counts[i].n);
    s->ncounts = 0;
    return rc;
}

/* Adds v to the field of c that status names (other statuses are not kept). */
static void counts_put(struct store_counts *c, const char *status, int64_t v, int add) {
    int64_t *f = strcmp(status, "pending") == 0     ? &c->pending
                 : strcmp(status, "held") == 0      ? &c->held
                 : strcmp(status, "failed") == 0    ? &c->failed
                 : strcmp(status, "delivered") == 0 ? &c->delivered
                                                    : NULL;
    if (f)
        *f = add ? *f + v : v;
}

int store_sqlite_delivery_counts(struct store_sq *s, struct store_counts *c) {
    /* The admin API's: committed groups only, on the read connection. */
    sqlite3_stmt *st = store_rstmt(s, ST_COUNTS);
    const char *status;
    int rc;
    memset(c, 0, sizeof *c);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        status = (const char *)sqlite3_column_text(st, 0);
        if (status)
            counts_put(c, status, sqlite3_column_int64(st, 1), 0);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int64_t store_sqlite_backlog(struct store_sq *s) {
    struct store_counts c;
    int64_t open = 0;

    if (s->backlog_stale) {
        /* Once per group at most: delivery_counts holds four rows. */
        sqlite3_stmt *st = store_stmt(s, ST_COUNTS);
        const char *status;
        int rc;
        memset(&c, 0, sizeof c);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            if ((status = (const char *)sqlite3_column_text(st, 0)))
                counts_put(&c, status, sqlite3_column_int64(st, 1), 0);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return -1;
        s->backlog = c.pending + c.held;
        s->backlog_stale = 0;
    }
    for (int i = 0; i < s->ncounts; i++)
        if (strcmp(s->counts[i].status, "pending") == 0 || strcmp(s->counts[i].status, "held") == 0)
            open += s->counts[i].n;
    return s->backlog + open;
}
