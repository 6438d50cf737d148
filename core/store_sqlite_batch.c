/* store_sqlite_batch.c -- batch windows in the store (SPEC section 6): the items
 * routing adds to an open window, the windows that are due, and closing a
 * window into one delivery.
 * Invariants: items are written in the routing group, so a crash never
 * loses a batched event; a window is closed into one delivery in one group,
 * and an item belongs to at most one batch delivery (closing marks exactly
 * the items it sent); the batch delivery's id is derived from the window
 * and its last item, so a close a power cut took back is sent again under
 * the same id.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

const struct store_stmt_def store_batch_stmts[] = {
    {ST_BATCH_ADD, "INSERT INTO batch_items(endpoint, window_start, window_ms, event_id,"
                   " payload) VALUES (?1, ?2, ?3, ?4, ?5)"},
    {ST_BATCH_COUNT, "SELECT COUNT(*) FROM batch_items WHERE delivery_id IS NULL AND"
                     " endpoint = ?1 AND window_ms = ?2 AND window_start = ?3"},
    {ST_BATCH_NEXT_CLOSE, "SELECT MIN(window_start + window_ms) FROM batch_items"
                          " WHERE delivery_id IS NULL"},
    {ST_BATCH_DUE, "SELECT endpoint, window_start, window_ms, COUNT(*) FROM batch_items"
                   " WHERE delivery_id IS NULL AND window_start + window_ms <= ?1"
                   " GROUP BY endpoint, window_ms, window_start"},
    {ST_BATCH_ITEMS, "SELECT seq, payload FROM batch_items WHERE delivery_id IS NULL AND"
                     " endpoint = ?1 AND window_ms = ?2 AND window_start = ?3 ORDER BY seq"},
    {ST_BATCH_DELIVERY, "INSERT INTO deliveries(id, event_id, endpoint, event_type, status,"
                        " payload, content_type, headers, attempts, schedule_pos, next_at,"
                        " lease_until, created_at, batch, seq)"
                        " VALUES (?1, ?2, ?3, 'batch', ?4, ?5, 'application/json', NULL, 0, 0,"
                        " ?6, 0, ?7, 1, ?8)"},
    {ST_BATCH_MARK, "UPDATE batch_items SET delivery_id = ?1, payload = NULL"
                    " WHERE delivery_id IS NULL AND endpoint = ?2 AND window_ms = ?3"
                    " AND window_start = ?4 AND seq <= ?5"},
    {ST_BATCH_WAITING, "SELECT endpoint, MIN(window_start + window_ms) FROM batch_items"
                       " WHERE event_id = ?1 AND delivery_id IS NULL GROUP BY endpoint,"
                       " window_start, window_ms ORDER BY MIN(seq)"},
    {ST_COUNT_, NULL},
};

int store_batch_item_put(struct store_sq *s, const char *event_id, struct store_batch_item *it,
                         char *err, size_t errlen) {
    sqlite3_stmt *ins = store_stmt(s, ST_BATCH_ADD), *cnt = store_stmt(s, ST_BATCH_COUNT);
    int ret = -1;

    if (bind_text(ins, 1, it->endpoint) || sqlite3_bind_int64(ins, 2, it->window_start) ||
        sqlite3_bind_int64(ins, 3, it->window_ms) || bind_text(ins, 4, event_id) ||
        bind_blob(ins, 5, it->payload ? it->payload : "", it->len) ||
        sqlite3_step(ins) != SQLITE_DONE) {
        store_group_fail(s, "batch item", err, errlen);
        goto done;
    }
    if (bind_text(cnt, 1, it->endpoint) || sqlite3_bind_int64(cnt, 2, it->window_ms) ||
        sqlite3_bind_int64(cnt, 3, it->window_start) || sqlite3_step(cnt) != SQLITE_ROW) {
        store_group_fail(s, "batch count", err, errlen);
        goto done;
    }
    it->count = sqlite3_column_int64(cnt, 0);
    ret = 0;
done:
    stmt_done(ins);
    stmt_done(cnt);
    return ret;
}

int64_t store_sqlite_batch_next_close(struct store_sq *s) {
    sqlite3_stmt *st = store_stmt(s, ST_BATCH_NEXT_CLOSE);
    int64_t at = INT64_MAX;

    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        at = sqlite3_column_int64(st, 0);
    stmt_done(st);
    return at;
}

void store_batch_windows_free(struct store_batch_window *w, size_t n) {
    if (!w)
        return;
    for (size_t i = 0; i < n; i++)
        free(w[i].endpoint);
    free(w);
}

/* Lists with st (ST_BATCH_DUE) the open windows that ended at or before
 * now, as batch_due. */
static int batch_windows(sqlite3_stmt *st, int64_t now, struct store_batch_window **out, size_t *n,
                         char *err, size_t errlen) {
    struct store_batch_window *w = NULL;
    void *grown;
    size_t cap = 0, k = 0;
    int rc = SQLITE_ERROR, oom = 0;

    *out = NULL;
    *n = 0;
    if (sqlite3_bind_int64(st, 1, now) != SQLITE_OK) {
        store_err(err, errlen, "store: batch windows: %s", sqlite3_errmsg(sqlite3_db_handle(st)));
        stmt_done(st);
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!(grown = store_rows_grow(w, &cap, k, sizeof *w, 8))) {
            oom = 1;
            break;
        }
        w = grown;
        w[k].endpoint = col_text(st, 0, &oom);
        w[k].window_start = sqlite3_column_int64(st, 1);
        w[k].window_ms = sqlite3_column_int64(st, 2);
        w[k].items = sqlite3_column_int64(st, 3);
        k++;
        if (oom)
            break;
    }
    if (oom || (rc != SQLITE_ROW && rc != SQLITE_DONE)) {
        store_err(err, errlen, "store: batch windows: %s",
                  oom ? "out of memory" : sqlite3_errmsg(sqlite3_db_handle(st)));
        stmt_done(st);
        store_batch_windows_free(w, k);
        return -1;
    }
    stmt_done(st);
    *out = w;
    *n = k;
    return 0;
}

int store_sqlite_batch_due(struct store_sq *s, int64_t now, struct store_batch_window **out,
                           size_t *n, char *err, size_t errlen) {
    return batch_windows(store_stmt(s, ST_BATCH_DUE), now, out, n, err, errlen);
}

/* ---- closing a window ---- */

/* Appends an RFC 3339 time as a JSON string. */
static int buf_time(struct util_buf *b, int64_t ms) {
    char t[64];
    util_time_rfc3339(ms, t, sizeof t);
    return util_buf_printf(b, "\"%s\"", t);
}

/* Reads w's open items into the batch body
 * {"type":"batch","window_start","window_end","count","events"}: *k items,
 * the last with seq *last_seq. Returns 0, -1 when out of memory, -2 on a
 * store error (the caller fails the group). */
static int batch_body(struct store_sq *s, const struct store_batch_window *w, struct util_buf *body,
                      size_t *k, int64_t *last_seq) {
    sqlite3_stmt *sel = store_stmt(s, ST_BATCH_ITEMS);
    struct util_buf events = {0};
    int rc = SQLITE_ERROR, bad = 0, ret = -2;

    if (bind_text(sel, 1, w->endpoint) || sqlite3_bind_int64(sel, 2, w->window_ms) ||
        sqlite3_bind_int64(sel, 3, w->window_start))
        goto done;
    if (util_buf_appends(body, "{\"type\":\"batch\",\"window_start\":") < 0 ||
        buf_time(body, w->window_start) < 0 || util_buf_appends(body, ",\"window_end\":") < 0 ||
        buf_time(body, w->window_start + w->window_ms) < 0) {
        ret = -1;
        goto done;
    }
    /* count goes before events in the body, so the items are gathered first. */
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(sel, 1);
        size_t n = (size_t)sqlite3_column_bytes(sel, 1);
        bad |= (*k && util_buf_appends(&events, ",") < 0);
        bad |= util_buf_append(&events, p ? p : "null", p ? n : 4) < 0;
        *last_seq = sqlite3_column_int64(sel, 0);
        (*k)++;
    }
    if (rc != SQLITE_DONE)
        goto done;
    bad = bad || util_buf_printf(body, ",\"count\":%zu,\"events\":[", *k) < 0 ||
          util_buf_append(body, events.p ? events.p : "", events.len) < 0 ||
          util_buf_appends(body, "]}") < 0;
    ret = bad ? -1 : 0;
done:
    util_buf_free(&events);
    stmt_done(sel);
    return ret;
}

/* Inserts the batch delivery id (body as its payload) and marks the items
 * up to last_seq as sent in it. Returns 0 or -1 (group failed). */
static int batch_write(struct store_sq *s, const struct store_batch_window *w, const char *id,
                       const struct util_buf *body, const char *status, int64_t next_at,
                       int64_t last_seq, char *err, size_t errlen) {
    sqlite3_stmt *ins = store_stmt(s, ST_BATCH_DELIVERY), *upd = store_stmt(s, ST_BATCH_MARK);
    int ret = -1;

    if (bind_text(ins, 1, id) || bind_text(ins, 2, id) || bind_text(ins, 3, w->endpoint) ||
        bind_text(ins, 4, status) || bind_blob(ins, 5, body->p, body->len) ||
        sqlite3_bind_int64(ins, 6, next_at) || sqlite3_bind_int64(ins, 7, util_now_ms()) ||
        sqlite3_bind_int64(ins, 8, ++s->dlv_seq_hw) || sqlite3_step(ins) != SQLITE_DONE) {
        store_group_fail(s, "batch delivery", err, errlen);
        goto done;
    }
    s->group_dlv_seq = s->dlv_seq_hw;
    if (store_counts_add(s, status, 1) < 0) {
        store_group_fail(s, "delivery counts", err, errlen);
        goto done;
    }
    if (bind_text(upd, 1, id) || bind_text(upd, 2, w->endpoint) ||
        sqlite3_bind_int64(upd, 3, w->window_ms) || sqlite3_bind_int64(upd, 4, w->window_start) ||
        sqlite3_bind_int64(upd, 5, last_seq) || sqlite3_step(upd) != SQLITE_DONE) {
        store_group_fail(s, "batch close", err, errlen);
        goto done;
    }
    ret = 0;
done:
    stmt_done(ins);
    stmt_done(upd);
    return ret;
}

int store_sqlite_batch_close(struct store_sq *s, const struct store_batch_window *w,
                             const char *status, int64_t next_at, size_t *count, char *err,
                             size_t errlen) {
    struct util_buf body = {0};
    char id[UTIL_ID_MAX], key[256];
    int64_t last_seq = 0;
    size_t k = 0;
    int rc, ret = -1;

    *count = 0;
    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    rc = batch_body(s, w, &body, &k, &last_seq);
    if (rc == -2) {
        store_group_fail(s, "batch read", err, errlen);
        goto done;
    }
    if (rc == -1) {
        store_err(err, errlen, "store: out of memory");
        store_group_fail(s, "batch close", NULL, 0);
        goto done;
    }
    if (k == 0) { /* nothing open in this window: an empty window sends nothing */
        ret = 0;
        goto done;
    }
    /* Derived from the window and its last item: a close a power cut took
     * back (the batch went out at COMMIT) is sent again under the same id. */
    snprintf(key, sizeof key, "batch\n%s\n%lld\n%lld\n%lld", w->endpoint, (long long)w->window_ms,
             (long long)w->window_start, (long long)last_seq);
    util_id_derive_at("dlv_", w->window_start, key, 0, id, sizeof id);
    if (batch_write(s, w, id, &body, status ? status : "pending", next_at, last_seq, err, errlen) <
        0)
        goto done;
    *count = k;
    ret = 0;
done:
    util_buf_free(&body);
    return ret;
}

/* ---- windows an event waits in (for its detail) ---- */

void store_batch_waits_free(struct store_batch_wait *w, size_t n) {
    if (!w)
        return;
    for (size_t i = 0; i < n; i++)
        free(w[i].endpoint);
    free(w);
}

int store_batch_waiting(struct store_sq *s, const char *event_id, struct store_batch_wait **out,
                        size_t *n, char *err, size_t errlen) {
    sqlite3_stmt *st = store_rstmt(s, ST_BATCH_WAITING);
    struct store_batch_wait *w = NULL;
    void *grown;
    size_t cap = 0, k = 0;
    int rc = SQLITE_ERROR, oom = 0, ret = -1;

    *out = NULL;
    *n = 0;
    if (bind_text(st, 1, event_id))
        goto sqlerr;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!(grown = store_rows_grow(w, &cap, k, sizeof *w, 4))) {
            oom = 1;
            break;
        }
        w = grown;
        w[k].endpoint = col_text(st, 0, &oom);
        w[k].window_end = sqlite3_column_int64(st, 1);
        k++;
        if (oom)
            break;
    }
    if (oom) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    if (rc != SQLITE_DONE)
        goto sqlerr;
    *out = w;
    *n = k;
    w = NULL;
    ret = 0;
    goto done;
sqlerr:
    store_err(err, errlen, "store: event detail: %s", sqlite3_errmsg(s->rdb));
done:
    stmt_done(st);
    store_batch_waits_free(w, k);
    return ret;
}
