/* store_sqlite_endpoints.c -- the store seen per endpoint: claims of due
 * deliveries (earliest due first, or FIFO for an ordered endpoint), the
 * head and next due time of an endpoint's queue, the endpoints with work,
 * queue sizes, and each endpoint's state (SPEC section 7: health,
 * disabling, held deliveries).
 * Invariants: every query here walks a per-endpoint index (deliveries_ep_*),
 * never the table, so one endpoint's backlog costs another nothing; claims
 * see only committed rows (seq <= committed_dlv_seq) and lease what they
 * return in the open group.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

const struct store_stmt_def store_endpoints_stmts[] = {
    {ST_EP_CLAIM_DUE, "SELECT seq, id, event_id, endpoint, event_type, content_type, headers,"
                      " payload, attempts, schedule_pos, next_at, created_at FROM deliveries"
                      " INDEXED BY deliveries_ep_due WHERE endpoint = ?4 AND status = 'pending'"
                      " AND next_at <= ?1 AND seq <= ?3 ORDER BY next_at LIMIT ?2"},
    {ST_EP_NEXT_DUE, "SELECT next_at FROM deliveries INDEXED BY deliveries_ep_due"
                     " WHERE endpoint = ?1 AND status = 'pending' AND seq <= ?2"
                     " ORDER BY next_at LIMIT 1"},
    {ST_EP_HEAD, "SELECT seq, next_at FROM deliveries INDEXED BY deliveries_ep_pending"
                 " WHERE endpoint = ?1 AND status = 'pending' ORDER BY seq LIMIT 1"},
    {ST_EP_CLAIM_ORDERED, "SELECT seq, id, event_id, endpoint, event_type, content_type, headers,"
                          " payload, attempts, schedule_pos, next_at, created_at FROM deliveries"
                          " INDEXED BY deliveries_ep_pending"
                          " WHERE endpoint = ?1 AND status = 'pending' AND seq > ?2 AND seq <= ?3"
                          " AND (next_at <= ?4 OR lease_until > 0) ORDER BY seq LIMIT ?5"},
    /* One index seek per endpoint (a skip scan), whatever the backlog. */
    {ST_EP_PENDING, "WITH RECURSIVE e(name) AS ("
                    " SELECT (SELECT min(endpoint) FROM deliveries INDEXED BY deliveries_ep_pending"
                    "  WHERE status = 'pending')"
                    " UNION ALL"
                    " SELECT (SELECT min(endpoint) FROM deliveries INDEXED BY deliveries_ep_pending"
                    "  WHERE status = 'pending' AND endpoint > e.name) FROM e"
                    " WHERE e.name IS NOT NULL)"
                    " SELECT name FROM e WHERE name IS NOT NULL"},
    /* due is counted up to ?3 rows, so a scrape of a huge backlog stays
     * short; the oldest is the index's first entry; ?4 = 0 skips the
     * pending and held counts (a constant term: no row is visited) */
    {ST_EP_QUEUE, "SELECT (SELECT count(*) FROM deliveries INDEXED BY deliveries_ep_due"
                  "  WHERE ?4 AND endpoint = ?1 AND status = 'pending'),"
                  " (SELECT count(*) FROM deliveries INDEXED BY deliveries_ep_held"
                  "  WHERE ?4 AND endpoint = ?1 AND status = 'held'),"
                  " (SELECT count(*) FROM (SELECT 1 FROM deliveries INDEXED BY deliveries_ep_due"
                  "  WHERE endpoint = ?1 AND status = 'pending' AND next_at <= ?2 LIMIT ?3)),"
                  " (SELECT next_at FROM deliveries INDEXED BY deliveries_ep_due"
                  "  WHERE endpoint = ?1 AND status = 'pending' AND next_at <= ?2"
                  " ORDER BY next_at LIMIT 1)"},
    /* The endpoint-state writes below are bound alike (ep_exec): ?1 name,
     * ?2 and ?3 times, ?4 text; terms such as ?2 = ?2 only declare the
     * parameters a statement does not use. */
    {ST_EP_OK, "INSERT INTO endpoint_state(name, ok, first_failure_at) VALUES (?1, 1, 0)"
               " ON CONFLICT(name) DO UPDATE SET ok = ok + 1, first_failure_at = 0"
               " WHERE ?2 = ?2 AND ?3 = ?3 AND ?4 IS ?4"},
    {ST_EP_FAILED,
     "INSERT INTO endpoint_state(name, failed, first_failure_at, last_error, last_error_at)"
     " VALUES (?1, 1, ?2, ?4, ?3)"
     " ON CONFLICT(name) DO UPDATE SET failed = failed + 1, last_error = ?4,"
     " last_error_at = ?3,"
     " first_failure_at = CASE WHEN first_failure_at = 0 THEN ?2 ELSE first_failure_at END"},
    {ST_EP_FIRST_FAILURE, "SELECT first_failure_at FROM endpoint_state WHERE name = ?1"},
    {ST_EP_DISABLE,
     "INSERT INTO endpoint_state(name, disabled, disabled_at, reason) VALUES (?1, 1, ?2, ?4)"
     " ON CONFLICT(name) DO UPDATE SET disabled = 1, disabled_at = ?2, reason = ?4"
     " WHERE ?3 = ?3"},
    {ST_EP_ENABLE, "INSERT INTO endpoint_state(name) VALUES (?1)"
                   " ON CONFLICT(name) DO UPDATE SET disabled = 0, disabled_at = 0, reason = NULL,"
                   " first_failure_at = 0 WHERE ?2 = ?2 AND ?3 = ?3 AND ?4 IS ?4"},
    /* Leased rows move too: their transfer's outcome is written as held
     * (deliver.c), and enabling clears the lease. */
    {ST_EP_HOLD, "UPDATE deliveries SET status = 'held' WHERE endpoint = ?1 AND status = 'pending'"
                 " AND ?2 = ?2 AND ?3 = ?3 AND ?4 IS ?4"},
    /* Rows parked behind their key's head stay parked (?3 STORE_PARKED_AT). */
    {ST_EP_RELEASE, "UPDATE deliveries SET status = 'pending', lease_until = 0,"
                    " next_at = CASE WHEN next_at >= ?3 THEN next_at ELSE ?2 END"
                    " WHERE endpoint = ?1 AND status = 'held' AND ?4 IS ?4"},
    /* ?2 = 1: the count and the oldest only; 0: every blocked key (up to
     * ?3) with the rows behind it and its last attempt. */
    {ST_EP_BLOCKED, "SELECT d.okey, d.id,"
                    " (SELECT count(*) FROM deliveries p INDEXED BY deliveries_ep_key"
                    "  WHERE p.endpoint = d.endpoint AND p.okey = d.okey AND p.okey IS NOT NULL"
                    "  AND p.status IN ('pending', 'held', 'failed')) - 1,"
                    " (SELECT max(at) FROM attempts WHERE delivery_id = d.id)"
                    " FROM deliveries d INDEXED BY deliveries_ep_blocked"
                    " WHERE d.endpoint = ?1 AND d.okey IS NOT NULL AND d.status = 'failed'"
                    " ORDER BY d.seq LIMIT ?2"},
    {ST_EP_STATES,
     "SELECT e.name, e.disabled, e.disabled_at, e.reason, e.last_error, e.last_error_at,"
     " e.first_failure_at, e.ok, e.failed,"
     " (SELECT count(*) FROM deliveries d WHERE d.endpoint = e.name AND d.status = 'pending'),"
     " (SELECT count(*) FROM deliveries d WHERE d.endpoint = e.name AND d.status = 'held')"
     " FROM endpoint_state e ORDER BY e.name"},
    {ST_COUNT_, NULL},
};

/* ---- claims ---- */

int store_sqlite_endpoint_claim_due(struct store_sq *s, const char *name, int64_t now,
                                    int64_t lease_ms, size_t max, struct store_delivery **out,
                                    size_t *n, char *err, size_t errlen) {
    sqlite3_stmt *sel = store_stmt(s, ST_EP_CLAIM_DUE);
    struct store_delivery *rows = NULL, *r;
    void *grown;
    size_t cnt = 0, cap = 0;
    int rc, oom = 0;

    *out = NULL;
    *n = 0;
    if (max == 0)
        return 0;
    if (s->failed) { /* the lease could not be written: fail fast */
        store_err(err, errlen, "store: commit group failed: %s", s->fail_msg);
        return -1;
    }
    /* Read the due rows first, then lease them: a statement must not walk an
     * index that is being updated under it. */
    if (sqlite3_bind_int64(sel, 1, now) ||
        sqlite3_bind_int64(sel, 2, max > INT64_MAX ? INT64_MAX : (int64_t)max) ||
        sqlite3_bind_int64(sel, 3, s->committed_dlv_seq) || bind_text(sel, 4, name)) {
        store_err(err, errlen, "store: claim: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        if (!(grown = store_rows_grow(rows, &cap, cnt, sizeof *rows, max < 16 ? max : 16)))
            goto oom;
        rows = grown;
        r = &rows[cnt++];
        memset(r, 0, sizeof *r);
        store_delivery_row_read(sel, r, &oom);
        if (oom)
            goto oom;
    }
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: claim: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    stmt_done(sel);
    if (cnt == 0)
        return 0;
    if (store_deliveries_lease(s, rows, cnt, now + lease_ms, err, errlen) < 0)
        goto fail;
    *out = rows;
    *n = cnt;
    return 0;
oom:
    store_err(err, errlen, "store: out of memory");
fail:
    stmt_done(sel);
    store_deliveries_free(rows, cnt);
    return -1;
}

int store_sqlite_endpoint_claim(struct store_sq *s, const char *name, int64_t after_seq,
                                int64_t now, int64_t lease_ms, size_t max,
                                struct store_delivery **out, size_t *n, char *err, size_t errlen) {
    sqlite3_stmt *sel = store_stmt(s, ST_EP_CLAIM_ORDERED);
    struct store_delivery *rows = NULL;
    size_t cnt = 0;
    int oom = 0, ret = -1;

    *out = NULL;
    *n = 0;
    if (max == 0)
        return 0;
    if (!(rows = calloc(max, sizeof *rows))) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (bind_text(sel, 1, name) || sqlite3_bind_int64(sel, 2, after_seq) ||
        sqlite3_bind_int64(sel, 3, s->committed_dlv_seq) || sqlite3_bind_int64(sel, 4, now) ||
        sqlite3_bind_int64(sel, 5, (int64_t)max)) {
        store_err(err, errlen, "store: claim: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    while (cnt < max && sqlite3_step(sel) == SQLITE_ROW) {
        store_delivery_row_read(sel, &rows[cnt++], &oom);
        if (oom) {
            store_err(err, errlen, "store: out of memory");
            goto done;
        }
    }
    stmt_done(sel);
    if (store_deliveries_lease(s, rows, cnt, now + lease_ms, err, errlen) < 0)
        goto done;
    *out = rows;
    *n = cnt;
    rows = NULL;
    ret = 0;
done:
    stmt_done(sel);
    store_deliveries_free(rows, cnt);
    return ret;
}

/* ---- an endpoint's queue ---- */

int64_t store_sqlite_endpoint_next_due(struct store_sq *s, const char *name) {
    sqlite3_stmt *st = store_stmt(s, ST_EP_NEXT_DUE);
    int64_t t = -1;
    int rc;

    if (bind_text(st, 1, name) == SQLITE_OK &&
        sqlite3_bind_int64(st, 2, s->committed_dlv_seq) == SQLITE_OK) {
        rc = sqlite3_step(st);
        t = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? INT64_MAX : -1;
    }
    stmt_done(st);
    /* only rows parked behind their keys' heads: none is ever due by itself */
    return t >= STORE_PARKED_AT ? INT64_MAX : t;
}

int64_t store_sqlite_endpoint_head(struct store_sq *s, const char *name, int64_t *next_at) {
    sqlite3_stmt *st = store_stmt(s, ST_EP_HEAD);
    int64_t seq = INT64_MAX;
    int rc;

    if (next_at)
        *next_at = INT64_MAX;
    if (bind_text(st, 1, name) != SQLITE_OK) {
        seq = -1;
    } else if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        seq = sqlite3_column_int64(st, 0);
        if (next_at)
            *next_at = sqlite3_column_int64(st, 1);
    } else if (rc != SQLITE_DONE) {
        seq = -1;
    }
    stmt_done(st);
    return seq;
}

/* The names are read whole before fn runs, so fn may use the store (claim,
 * lease) with no statement of this call half-stepped. */
int store_sqlite_endpoints_pending(struct store_sq *s, void (*fn)(void *arg, const char *name),
                                   void *arg) {
    sqlite3_stmt *st = store_stmt(s, ST_EP_PENDING);
    char **names = NULL;
    void *grown;
    size_t n = 0, cap = 0, i;
    int rc, oom = 0;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!(grown = store_rows_grow(names, &cap, n, sizeof *names, 16))) {
            oom = 1;
            break;
        }
        names = grown;
        if (!(names[n] = col_text(st, 0, &oom)) || oom) {
            oom = 1;
            break;
        }
        n++;
    }
    stmt_done(st);
    for (i = 0; i < n; i++) {
        fn(arg, names[i]);
        free(names[i]);
    }
    free(names);
    return rc == SQLITE_DONE && !oom ? 0 : -1;
}

/* endpoint_queue with the statements of one connection: st and bl,
 * ST_EP_QUEUE and ST_EP_BLOCKED of the loop's or of the read connection. */
static int endpoint_queue(sqlite3_stmt *st, sqlite3_stmt *bl, const char *name, int64_t now,
                          int64_t due_cap, int counts, struct store_endpoint_queue *q) {
    int ret = -1;

    memset(q, 0, sizeof *q);
    q->oldest_due = q->oldest_blocked = INT64_MAX;
    if (bind_text(st, 1, name) == SQLITE_OK && sqlite3_bind_int64(st, 2, now) == SQLITE_OK &&
        sqlite3_bind_int64(st, 3, due_cap) == SQLITE_OK &&
        sqlite3_bind_int(st, 4, counts != 0) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        q->pending = sqlite3_column_int64(st, 0);
        q->held = sqlite3_column_int64(st, 1);
        q->due = sqlite3_column_int64(st, 2);
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            q->oldest_due = sqlite3_column_int64(st, 3);
        ret = 0;
    }
    stmt_done(st);
    /* Blocked keys: one failed head each, found by their own index. */
    st = bl;
    if (ret == 0 && bind_text(st, 1, name) == SQLITE_OK &&
        sqlite3_bind_int64(st, 2, INT64_MAX) == SQLITE_OK) {
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            int64_t at = sqlite3_column_int64(st, 3);
            q->blocked++;
            if (sqlite3_column_type(st, 3) != SQLITE_NULL && at < q->oldest_blocked)
                q->oldest_blocked = at;
        }
        if (rc != SQLITE_DONE)
            ret = -1;
    }
    stmt_done(st);
    return ret;
}

int store_sqlite_endpoint_queue(struct store_sq *s, const char *name, int64_t now, int64_t due_cap,
                                int counts, struct store_endpoint_queue *q) {
    return endpoint_queue(store_stmt(s, ST_EP_QUEUE), store_stmt(s, ST_EP_BLOCKED), name, now,
                          due_cap, counts, q);
}

void store_blocked_keys_free(struct store_blocked_key *k, size_t n) {
    if (!k)
        return;
    for (size_t i = 0; i < n; i++) {
        free(k[i].key);
        free(k[i].head_id);
    }
    free(k);
}

int store_sqlite_endpoint_blocked(struct store_sq *s, const char *name, size_t max,
                                  struct store_blocked_key **out, size_t *n, char *err,
                                  size_t errlen) {
    /* The loop's connection, as endpoint_queue's count of the same
     * keys: one answer of store_read_endpoints shows both, and from two
     * views (the open group, the committed state) the count could hold a
     * key the list did not. */
    sqlite3_stmt *st = store_stmt(s, ST_EP_BLOCKED);
    struct store_blocked_key *k = NULL, *r;
    void *grown;
    size_t cnt = 0, cap = 0;
    int rc = SQLITE_ERROR, oom = 0;

    *out = NULL;
    *n = 0;
    if (bind_text(st, 1, name) == SQLITE_OK &&
        sqlite3_bind_int64(st, 2, max > INT64_MAX ? INT64_MAX : (int64_t)max) == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (!(grown = store_rows_grow(k, &cap, cnt, sizeof *k, 8))) {
                oom = 1;
                break;
            }
            k = grown;
            r = &k[cnt++];
            memset(r, 0, sizeof *r);
            r->key = col_text(st, 0, &oom);
            r->head_id = col_text(st, 1, &oom);
            r->depth = sqlite3_column_int64(st, 2);
            r->since = sqlite3_column_int64(st, 3);
            if (oom)
                break;
        }
    }
    if (oom || rc != SQLITE_DONE) {
        store_err(err, errlen, "store: blocked keys: %s",
                  oom ? "out of memory" : sqlite3_errmsg(s->db));
        stmt_done(st);
        store_blocked_keys_free(k, cnt);
        return -1;
    }
    stmt_done(st);
    *out = k;
    *n = cnt;
    return 0;
}

/* ---- endpoint state ---- */

/* Runs statement id in the open group bound with ?1 name, ?2 a, ?3 b,
 * ?4 text. Returns the number of rows changed, or -1 with a reason. */
static int64_t ep_exec(struct store_sq *s, enum store_stmt id, const char *what, const char *name,
                       int64_t a, int64_t b, const char *text, char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, id);
    int64_t changed = -1;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (bind_text(st, 1, name) || sqlite3_bind_int64(st, 2, a) || sqlite3_bind_int64(st, 3, b) ||
        bind_text(st, 4, text) || sqlite3_step(st) != SQLITE_DONE) {
        store_group_fail(s, what, err, errlen);
        goto done;
    }
    changed = sqlite3_changes(s->db);
done:
    stmt_done(st);
    return changed;
}

int store_sqlite_endpoint_attempt(struct store_sq *s, const char *name, int ok, const char *error,
                                  int64_t now, int64_t *first_failure_at, char *err,
                                  size_t errlen) {
    sqlite3_stmt *st;
    int rc = -1;

    *first_failure_at = 0;
    if (ep_exec(s, ok ? ST_EP_OK : ST_EP_FAILED, "endpoint state", name, now, now,
                ok ? NULL : (error ? error : "failed"), err, errlen) < 0)
        return -1;
    if (ok)
        return 0;
    st = store_stmt(s, ST_EP_FIRST_FAILURE);
    if (bind_text(st, 1, name) || sqlite3_step(st) != SQLITE_ROW) {
        store_err(err, errlen, "store: endpoint state: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    *first_failure_at = sqlite3_column_int64(st, 0);
    rc = 0;
done:
    stmt_done(st);
    return rc;
}

int store_sqlite_endpoint_set_disabled(struct store_sq *s, const char *name, int disabled,
                                       const char *reason, int64_t now, int64_t *moved, char *err,
                                       size_t errlen) {
    int64_t n;

    if (ep_exec(s, disabled ? ST_EP_DISABLE : ST_EP_ENABLE, "endpoint state", name, now, now,
                reason, err, errlen) < 0)
        return -1;
    n = ep_exec(s, disabled ? ST_EP_HOLD : ST_EP_RELEASE, "endpoint deliveries", name, now,
                STORE_PARKED_AT, NULL, err, errlen);
    if (n < 0)
        return -1;
    if (moved)
        *moved = n;
    return 0;
}

void store_endpoint_states_free(struct store_endpoint_state *e, size_t n) {
    size_t i;
    if (!e)
        return;
    for (i = 0; i < n; i++) {
        free(e[i].name);
        free(e[i].reason);
        free(e[i].last_error);
    }
    free(e);
}

/* Fills r from a row of ST_EP_STATES. */
static void ep_state_read(sqlite3_stmt *st, struct store_endpoint_state *r, int *oom) {
    memset(r, 0, sizeof *r);
    r->name = col_text(st, 0, oom);
    r->disabled = sqlite3_column_int(st, 1);
    r->disabled_at = sqlite3_column_int64(st, 2);
    r->reason = col_text(st, 3, oom);
    r->last_error = col_text(st, 4, oom);
    r->last_error_at = sqlite3_column_int64(st, 5);
    r->first_failure_at = sqlite3_column_int64(st, 6);
    r->ok = sqlite3_column_int64(st, 7);
    r->failed = sqlite3_column_int64(st, 8);
    r->pending = sqlite3_column_int64(st, 9);
    r->held = sqlite3_column_int64(st, 10);
}

int store_sqlite_endpoint_states(struct store_sq *s, struct store_endpoint_state **out, size_t *n,
                                 char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_EP_STATES);
    struct store_endpoint_state *v = NULL;
    void *grown;
    size_t cnt = 0, cap = 0;
    int rc, oom = 0, ret = -1;

    *out = NULL;
    *n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!(grown = store_rows_grow(v, &cap, cnt, sizeof *v, 8))) {
            oom = 1;
            break;
        }
        v = grown;
        ep_state_read(st, &v[cnt++], &oom);
        if (oom || !v[cnt - 1].name) {
            oom = 1;
            break;
        }
    }
    if (oom) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: endpoint states: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    *out = v;
    *n = cnt;
    v = NULL;
    ret = 0;
done:
    stmt_done(st);
    store_endpoint_states_free(v, cnt);
    return ret;
}
