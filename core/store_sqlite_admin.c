/* store_sqlite_admin.c -- what the admin API (SPEC section 8) reads and keeps in
 * the store: pages of events and deliveries, the event detail (an event
 * with its deliveries, their attempts, and the batch windows it waits in),
 * and subscriptions. Everything is returned as plain rows; the JSON is
 * admin.c's.
 * Invariants: every read here runs on the read connection (store_rstmt), so
 * it shows committed groups only, never the open one; pages run newest
 * first by seq and hand back the seq of their last row as the next cursor
 * only when a further row exists; a subscription's pattern is unique (the
 * key that answers 409). Subscriptions are read and written on the loop's
 * connection (an admin write, then the config it feeds).
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

const struct store_stmt_def store_admin_stmts[] = {
    /* The event columns in the order store_event_row_read reads (no
     * headers, data or raw in a list). */
    /* seq in [?6, ?4): a range of the table's rowid, not a scan; the
     * received_at bounds make a window exact where the clock stepped back */
    {ST_PAGE_EVENTS, "SELECT seq, id, source, source_id, type, created_at, status, error, NULL,"
                     " NULL, NULL, received_at FROM events WHERE seq < ?4 AND seq >= ?6"
                     " AND received_at >= ?7 AND received_at < ?8 AND (?1 IS NULL OR type GLOB ?1)"
                     " AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR status = ?3)"
                     " ORDER BY seq DESC LIMIT ?5"},
    {ST_EVT_SEQ_RANGE, "SELECT min(seq), max(seq) FROM events"},
    {ST_EVT_AT_SEQ, "SELECT received_at FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1"},
    {ST_PAGE_DELIVERIES,
     "SELECT d.seq, d.id, d.event_id, d.endpoint, d.event_type, d.status, d.attempts,"
     " CASE WHEN d.status = 'pending' AND d.next_at < " STORE_PARKED_AT_SQL
     " THEN d.next_at END, d.created_at,"
     " (SELECT a.status_code FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.n DESC"
     "  LIMIT 1),"
     " (SELECT a.error FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.n DESC LIMIT 1),"
     " d.okey FROM deliveries d WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR"
     " d.endpoint = ?2) AND (?3 = 0 OR d.seq < ?3) ORDER BY d.seq DESC LIMIT ?4"},
    {ST_DETAIL_DELIVERIES,
     "SELECT id, endpoint, status, batch, payload, content_type, event_type FROM deliveries"
     " WHERE event_id = ?1 OR id IN (SELECT delivery_id FROM batch_items"
     " WHERE event_id = ?1) ORDER BY seq"},
    {ST_DETAIL_ATTEMPTS, "SELECT n, at, status_code, latency_ms, error, response FROM attempts"
                         " WHERE delivery_id = ?1 ORDER BY n"},
    {ST_SUB_INSERT, "INSERT INTO subscriptions(id, event, pattern, url, secret, created_at)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
    {ST_SUB_SET_URL, "UPDATE subscriptions SET url = ?2 WHERE id = ?1"},
    {ST_SUB_SET_SECRET, "UPDATE subscriptions SET secret = ?2 WHERE id = ?1"},
    {ST_SUB_DELETE, "DELETE FROM subscriptions WHERE id = ?1"},
    {ST_SUB_LOAD, "SELECT id, event, pattern, url, secret, created_at"
                  " FROM subscriptions ORDER BY seq"},
    {ST_COUNT_, NULL},
};

/* ---- pages ---- */

/* Fills r from a row of ST_PAGE_DELIVERIES. */
static void delivery_item_read(sqlite3_stmt *st, struct store_delivery_item *r, int *oom) {
    memset(r, 0, sizeof *r);
    r->seq = sqlite3_column_int64(st, 0);
    r->id = col_text(st, 1, oom);
    r->event_id = col_text(st, 2, oom);
    r->endpoint = col_text(st, 3, oom);
    r->event_type = col_text(st, 4, oom);
    r->status = col_text(st, 5, oom);
    r->attempts = sqlite3_column_int64(st, 6);
    r->has_next_at = sqlite3_column_type(st, 7) != SQLITE_NULL;
    r->next_at = sqlite3_column_int64(st, 7);
    r->created_at = sqlite3_column_int64(st, 8);
    r->has_last = sqlite3_column_type(st, 9) != SQLITE_NULL;
    r->last_status_code = sqlite3_column_int64(st, 9);
    r->last_error = col_text(st, 10, oom);
    r->key = col_text(st, 11, oom);
}

void store_delivery_items_free(struct store_delivery_item *rows, size_t n) {
    size_t i;
    if (!rows)
        return;
    for (i = 0; i < n; i++) {
        free(rows[i].id);
        free(rows[i].event_id);
        free(rows[i].endpoint);
        free(rows[i].event_type);
        free(rows[i].status);
        free(rows[i].last_error);
        free(rows[i].key);
    }
    free(rows);
}

/* Steps a page query bound for limit + 1 rows (column 0 is seq), reading up
 * to limit rows of size sz with read into *rows; an extra row means there
 * is a next page, whose cursor is the seq of the last row read. The caller
 * frees *rows (*n of them) on success and on failure. Returns 0 or -1. */
static int page_run(struct store_sq *s, sqlite3_stmt *st, size_t limit, size_t sz,
                    void (*read)(sqlite3_stmt *, void *, int *), void **rows, size_t *n,
                    int64_t *next, char *err, size_t errlen) {
    size_t cap = 0;
    int64_t last = 0;
    int rc, oom = 0;
    void *grown;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == limit) {
            *next = last;
            break;
        }
        if (!(grown = store_rows_grow(*rows, &cap, *n, sz, limit < 16 ? limit : 16))) {
            store_err(err, errlen, "store: out of memory");
            return -1;
        }
        *rows = grown;
        read(st, (char *)*rows + *n * sz, &oom);
        (*n)++;
        if (oom) {
            store_err(err, errlen, "store: out of memory");
            return -1;
        }
        last = sqlite3_column_int64(st, 0);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_err(err, errlen, "store: list: %s", sqlite3_errmsg(s->rdb));
        return -1;
    }
    return 0;
}

static void page_event_read(sqlite3_stmt *st, void *row, int *oom) {
    memset(row, 0, sizeof(struct store_event_row));
    store_event_row_read(st, row, oom);
}

static void page_delivery_read(sqlite3_stmt *st, void *row, int *oom) {
    delivery_item_read(st, row, oom);
}

/* The type filter as SQLite's GLOB pattern that means what util_glob_match
 * means ('*' any run, everything else itself): GLOB's own '?' and '['
 * are made literal ("[?]", "[[]"). New string, NULL when out of memory. */
static char *glob_for_sql(const char *pattern) {
    char *out = malloc(3 * strlen(pattern) + 1), *o = out;

    if (!out)
        return NULL;
    for (const char *p = pattern; *p; p++) {
        if (*p == '?' || *p == '[') {
            *o++ = '[';
            *o++ = *p;
            *o++ = ']';
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

/* received_at of the first event with seq >= at into *ms. Returns 1, 0
 * when there is none, -1 on a store error. */
static int received_from(struct store_sq *s, int64_t at, int64_t *ms) {
    sqlite3_stmt *st = store_rstmt(s, ST_EVT_AT_SEQ);
    int rc = sqlite3_bind_int64(st, 1, at) == SQLITE_OK ? sqlite3_step(st) : SQLITE_ERROR;

    if (rc == SQLITE_ROW)
        *ms = sqlite3_column_int64(st, 0);
    stmt_done(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* The lowest seq x such that the events with seq >= x were received at or
 * after t: a binary search over seq (received_at grows with seq, as
 * retention also relies on), one rowid seek a step, so a window costs
 * O(log n) on any store. Returns 0 with *x, or -1 (err set). */
static int seq_at(struct store_sq *s, int64_t t, int64_t *x, char *err, size_t errlen) {
    sqlite3_stmt *st = store_rstmt(s, ST_EVT_SEQ_RANGE);
    int64_t lo, hi, mid, ms = 0;
    int rc = sqlite3_step(st);

    lo = sqlite3_column_int64(st, 0);
    hi = sqlite3_column_int64(st, 1) + 1; /* none at hi: past the newest */
    stmt_done(st);
    if (rc != SQLITE_ROW) {
        store_err(err, errlen, "store: events: %s", sqlite3_errmsg(s->rdb));
        return -1;
    }
    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        rc = received_from(s, mid, &ms);
        if (rc < 0) {
            store_err(err, errlen, "store: events: %s", sqlite3_errmsg(s->rdb));
            return -1;
        }
        if (rc && ms < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    *x = lo;
    return 0;
}

int store_sqlite_events_page(struct store_sq *s, const struct store_page *q,
                             struct store_event_row **rows, size_t *n, int64_t *next, char *err,
                             size_t errlen) {
    sqlite3_stmt *st = NULL;
    char *type = q->type ? glob_for_sql(q->type) : NULL;
    int64_t below = q->after > 0 ? q->after : INT64_MAX, from = 0, upto = INT64_MAX;
    void *v = NULL;
    int ret = -1;

    *rows = NULL;
    *n = 0;
    *next = 0;
    if (q->type && !type) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if ((q->has_since && seq_at(s, q->since, &from, err, errlen) < 0) ||
        (q->has_until && seq_at(s, q->until, &upto, err, errlen) < 0))
        goto done;
    if (q->has_until && upto < below)
        below = upto;
    st = store_rstmt(s, ST_PAGE_EVENTS);
    if (bind_text(st, 1, type) || bind_text(st, 2, q->source) || bind_text(st, 3, q->status) ||
        sqlite3_bind_int64(st, 4, below) || sqlite3_bind_int64(st, 5, (int64_t)q->limit + 1) ||
        sqlite3_bind_int64(st, 6, from) ||
        sqlite3_bind_int64(st, 7, q->has_since ? q->since : INT64_MIN) ||
        sqlite3_bind_int64(st, 8, q->has_until ? q->until : INT64_MAX))
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->rdb));
    else
        ret = page_run(s, st, q->limit, sizeof **rows, page_event_read, &v, n, next, err, errlen);
    stmt_done(st);
done:
    free(type);
    if (ret < 0) {
        store_event_rows_free(v, *n);
        *n = 0;
        *next = 0;
        return -1;
    }
    *rows = v;
    return 0;
}

int store_sqlite_events_find(struct store_sq *s, const char *text, size_t max, char ***ids,
                             size_t *n, char *err, size_t errlen) {
    static const char sql[] = "SELECT id FROM events WHERE id = ?1 OR source_id = ?1"
                              " OR instr(data, ?1) > 0 OR instr(shipment, ?1) > 0"
                              " ORDER BY (id = ?1 OR source_id = ?1) DESC, seq DESC LIMIT ?2";
    sqlite3_stmt *st = NULL;
    char **v = calloc(max ? max : 1, sizeof *v);
    int rc = SQLITE_ERROR, oom = !v;

    *ids = NULL;
    *n = 0;
    if (!oom && (sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL) != SQLITE_OK ||
                 sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
                 sqlite3_bind_int64(st, 2, (int64_t)max) != SQLITE_OK))
        goto fail;
    while (!oom && (rc = sqlite3_step(st)) == SQLITE_ROW && *n < max)
        v[(*n)++] = col_text(st, 0, &oom);
    if (oom || (rc != SQLITE_ROW && rc != SQLITE_DONE))
        goto fail;
    sqlite3_finalize(st);
    *ids = v;
    return 0;
fail:
    store_err(err, errlen, "store: find: %s", oom ? "out of memory" : sqlite3_errmsg(s->rdb));
    sqlite3_finalize(st);
    for (size_t i = 0; v && i < *n; i++)
        free(v[i]);
    free(v);
    *n = 0;
    return -1;
}

int store_sqlite_deliveries_page(struct store_sq *s, const struct store_page *q,
                                 struct store_delivery_item **rows, size_t *n, int64_t *next,
                                 char *err, size_t errlen) {
    sqlite3_stmt *st = store_rstmt(s, ST_PAGE_DELIVERIES);
    void *v = NULL;
    int ret = -1;

    *rows = NULL;
    *n = 0;
    *next = 0;
    if (bind_text(st, 1, q->status) || bind_text(st, 2, q->endpoint) ||
        sqlite3_bind_int64(st, 3, q->after) || sqlite3_bind_int64(st, 4, (int64_t)q->limit + 1))
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->rdb));
    else
        ret =
            page_run(s, st, q->limit, sizeof **rows, page_delivery_read, &v, n, next, err, errlen);
    stmt_done(st);
    if (ret < 0) {
        store_delivery_items_free(v, *n);
        *n = 0;
        *next = 0;
        return -1;
    }
    *rows = v;
    return 0;
}

/* ---- the event detail ---- */

static void event_deliveries_free(struct store_event_delivery *d, size_t n) {
    size_t i, k;
    if (!d)
        return;
    for (i = 0; i < n; i++) {
        for (k = 0; k < d[i].nattempts; k++) {
            free(d[i].attempts[k].error);
            free(d[i].attempts[k].response);
        }
        free(d[i].attempts);
        free(d[i].id);
        free(d[i].endpoint);
        free(d[i].status);
        free(d[i].content_type);
        free(d[i].event_type);
        free(d[i].payload);
    }
    free(d);
}

void store_event_detail_free(struct store_event_detail *d) {
    if (!d)
        return;
    store_event_rows_free(d->ev, d->ev ? 1 : 0);
    event_deliveries_free(d->deliveries, d->ndeliveries);
    store_batch_waits_free(d->waiting, d->nwaiting);
    free(d);
}

/* Reads the attempts of delivery d (by n) into d->attempts. Returns 0 or -1. */
static int detail_attempts(struct store_sq *s, struct store_event_delivery *d, char *err,
                           size_t errlen) {
    sqlite3_stmt *st = store_rstmt(s, ST_DETAIL_ATTEMPTS);
    struct store_attempt_row *a;
    void *grown;
    size_t cap = 0;
    int rc = SQLITE_ERROR, oom = 0, ret = -1;

    if (bind_text(st, 1, d->id))
        goto sqlerr;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!(grown = store_rows_grow(d->attempts, &cap, d->nattempts, sizeof *a, 4)))
            goto oom;
        d->attempts = grown;
        a = &d->attempts[d->nattempts++];
        memset(a, 0, sizeof *a);
        a->n = sqlite3_column_int64(st, 0);
        a->at = sqlite3_column_int64(st, 1);
        a->status_code = sqlite3_column_int64(st, 2);
        a->latency_ms = sqlite3_column_int64(st, 3);
        a->error = col_text(st, 4, &oom);
        a->response = col_blob(st, 5, &a->response_len, &oom);
        if (oom)
            goto oom;
    }
    if (rc != SQLITE_DONE)
        goto sqlerr;
    ret = 0;
    goto done;
oom:
    store_err(err, errlen, "store: out of memory");
    goto done;
sqlerr:
    store_err(err, errlen, "store: event detail: %s", sqlite3_errmsg(s->rdb));
done:
    stmt_done(st);
    return ret;
}

/* Fills r from a row of ST_DETAIL_DELIVERIES. */
static void detail_delivery_read(sqlite3_stmt *st, struct store_event_delivery *r, int *oom) {
    memset(r, 0, sizeof *r);
    r->id = col_text(st, 0, oom);
    r->endpoint = col_text(st, 1, oom);
    r->status = col_text(st, 2, oom);
    r->batch = sqlite3_column_int(st, 3);
    r->payload = col_blob(st, 4, &r->payload_len, oom);
    r->content_type = col_text(st, 5, oom);
    r->event_type = col_text(st, 6, oom);
}

/* Reads the deliveries of event_id (its own and the batches holding it)
 * into d, then each one's attempts: the deliveries statement is done before
 * the attempts one runs. Returns 0 or -1 (err set). */
static int detail_deliveries(struct store_sq *s, const char *event_id, struct store_event_detail *d,
                             char *err, size_t errlen) {
    sqlite3_stmt *st = store_rstmt(s, ST_DETAIL_DELIVERIES);
    void *grown;
    size_t cap = 0, i;
    int rc = SQLITE_ERROR, oom = 0;

    if (bind_text(st, 1, event_id))
        goto sqlerr;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        grown = store_rows_grow(d->deliveries, &cap, d->ndeliveries, sizeof *d->deliveries, 4);
        if (!grown) {
            oom = 1;
            break;
        }
        d->deliveries = grown;
        detail_delivery_read(st, &d->deliveries[d->ndeliveries++], &oom);
        if (oom)
            break;
    }
    if (oom) {
        store_err(err, errlen, "store: out of memory");
        stmt_done(st);
        return -1;
    }
    if (rc != SQLITE_DONE)
        goto sqlerr;
    stmt_done(st);
    for (i = 0; i < d->ndeliveries; i++)
        if (detail_attempts(s, &d->deliveries[i], err, errlen) < 0)
            return -1;
    return 0;
sqlerr:
    store_err(err, errlen, "store: event detail: %s", sqlite3_errmsg(s->rdb));
    stmt_done(st);
    return -1;
}

int store_sqlite_event_detail(struct store_sq *s, const char *id, struct store_event_detail **out,
                              char *err, size_t errlen) {
    struct store_event_detail *d = calloc(1, sizeof *d);
    int rc;

    *out = NULL;
    if (!d) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (store_read_begin(s, err, errlen) < 0) {
        store_event_detail_free(d);
        return -1;
    }
    rc = store_event_read(store_rstmt(s, ST_EVT_GET), id, &d->ev, err, errlen);
    if (rc > 0 && (detail_deliveries(s, id, d, err, errlen) < 0 ||
                   store_batch_waiting(s, id, &d->waiting, &d->nwaiting, err, errlen) < 0))
        rc = -1;
    store_read_end(s);
    if (rc <= 0) {
        store_event_detail_free(d);
        return rc;
    }
    *out = d;
    return 1;
}

/* ---- subscriptions ---- */

int store_sqlite_sub_put(struct store_sq *s, const struct store_sub *sub, char *err,
                         size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_SUB_INSERT);
    int ret = -1, rc;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (bind_text(st, 1, sub->id) || bind_text(st, 2, sub->event) ||
        bind_text(st, 3, sub->pattern) || bind_text(st, 4, sub->url) ||
        bind_text(st, 5, sub->secret) || sqlite3_bind_int64(st, 6, sub->created_at)) {
        store_group_fail(s, "subscription insert", err, errlen);
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        ret = 0;
    else if (rc == SQLITE_CONSTRAINT_UNIQUE)
        ret = STORE_DUP; /* undoes only this statement */
    else
        store_group_fail(s, "subscription insert", err, errlen);
done:
    stmt_done(st);
    return ret;
}

/* Runs st (id ?1, value ?2 unless NULL) in the open group: 1 one row
 * changed, 0 none, -1 error. */
static int sub_update(struct store_sq *s, sqlite3_stmt *st, const char *id, const char *value,
                      char *err, size_t errlen) {
    int ret = -1;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (bind_text(st, 1, id) || (value && bind_text(st, 2, value)) ||
        sqlite3_step(st) != SQLITE_DONE) {
        store_group_fail(s, "subscription change", err, errlen);
        goto done;
    }
    ret = sqlite3_changes(s->db) == 1;
done:
    stmt_done(st);
    return ret;
}

int store_sqlite_sub_change(struct store_sq *s, const char *id, const char *url, char *err,
                            size_t errlen) {
    return sub_update(s, store_stmt(s, url ? ST_SUB_SET_URL : ST_SUB_DELETE), id, url, err, errlen);
}

int store_sqlite_sub_set_secret(struct store_sq *s, const char *id, const char *secret, char *err,
                                size_t errlen) {
    return sub_update(s, store_stmt(s, ST_SUB_SET_SECRET), id, secret, err, errlen);
}

int store_sqlite_subs_load(struct store_sq *s, void (*fn)(void *arg, const struct store_sub *sub),
                           void *arg, char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_SUB_LOAD);
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_sub sub = {.id = (const char *)sqlite3_column_text(st, 0),
                                .event = (const char *)sqlite3_column_text(st, 1),
                                .pattern = (const char *)sqlite3_column_text(st, 2),
                                .url = (const char *)sqlite3_column_text(st, 3),
                                .secret = (const char *)sqlite3_column_text(st, 4),
                                .created_at = sqlite3_column_int64(st, 5)};
        fn(arg, &sub);
    }
    if (rc != SQLITE_DONE)
        store_err(err, errlen, "store: subscriptions: %s", sqlite3_errmsg(s->db));
    stmt_done(st);
    return rc == SQLITE_DONE ? 0 : -1;
}
