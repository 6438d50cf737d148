/* store_sqlite_events.c -- events in the store: inserting (deduped by source and
 * source id), recording the outcome of routing with the deliveries it made,
 * reading them back (one event, the unrouted ones after a crash), nonces
 * (Shiptify tokens). Retention is store_sqlite_retain.c's.
 * Invariants: an event's first routing derives its delivery ids from the
 * event, later routings (replays) make new ones; a delivery with an order
 * key is inserted due only when its key has no row left undelivered, else
 * parked (next_at STORE_PARKED_AT) behind them; recovery lists only events
 * whose group is durable (seq <= committed_evt_seq).
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

const struct store_stmt_def store_events_stmts[] = {
    {ST_EVT_INSERT, "INSERT INTO events(id, source, source_id, type, status, error, created_at,"
                    " received_at, headers, data, raw, shipment, seq, matched)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"},
    {ST_EVT_DUP, "SELECT id FROM events WHERE source = ?1 AND source_id = ?2"},
    {ST_EVT_STATUS, "UPDATE events SET status = ?2, error = ?3 WHERE id = ?1"},
    {ST_EVT_STATUS_FIRST, "UPDATE events SET status = ?2, error = ?3"
                          " WHERE id = ?1 AND status = 'received'"},
    {ST_EVT_MATCHED, "UPDATE events SET matched = ?2 WHERE id = ?1"},
    /* The columns in the order store_event_row_read reads. */
    {ST_EVT_GET, "SELECT seq, id, source, source_id, type, created_at, status, error, headers,"
                 " data, raw, received_at, shipment, matched FROM events WHERE id = ?1"},
    {ST_EVT_UNROUTED, "SELECT seq, id, source, source_id, type, created_at, status, error,"
                      " headers, data, raw, received_at, shipment FROM events"
                      " INDEXED BY events_received"
                      " WHERE status = 'received' AND seq > ?1 ORDER BY seq LIMIT ?2"},
    {ST_DLV_INSERT, "INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,"
                    " content_type, headers, attempts, schedule_pos, next_at, lease_until,"
                    " created_at, okey, seq)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, ?9, 0, ?10, ?11, ?12)"},
    /* A key with a row not yet delivered (its head, waiting or failed, or
     * rows behind it): a new row of that key waits behind them. */
    {ST_KEY_BUSY, "SELECT 1 FROM deliveries INDEXED BY deliveries_ep_key"
                  " WHERE endpoint = ?1 AND okey = ?2 AND okey IS NOT NULL"
                  " AND status IN ('pending', 'held', 'failed') LIMIT 1"},
    {ST_NONCE_PRUNE, "DELETE FROM nonces WHERE source = ?1 AND seen_at < ?2"},
    {ST_NONCE_INSERT, "INSERT INTO nonces (source, nonce, digest, seen_at)"
                      " VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"},
    {ST_NONCE_DIGEST, "SELECT digest FROM nonces WHERE source = ?1 AND nonce = ?2"},
    {ST_COUNT_, NULL},
};

/* ---- nonces ---- */

int store_sqlite_nonce_put(struct store_sq *s, const char *source, const char *nonce,
                           const char *digest, int64_t now_ms, int64_t keep_ms, char *err,
                           size_t errlen) {
    sqlite3_stmt *prune = store_stmt(s, ST_NONCE_PRUNE), *ins = store_stmt(s, ST_NONCE_INSERT),
                 *get = store_stmt(s, ST_NONCE_DIGEST);
    int ret = -1;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    /* A nonce older than keep_ms can only come back with a timestamp the
     * tolerance refuses: forget those, at most once a minute. */
    if (now_ms - s->nonces_pruned_at >= 60000) {
        s->nonces_pruned_at = now_ms;
        if (bind_text(prune, 1, source) || sqlite3_bind_int64(prune, 2, now_ms - keep_ms) ||
            sqlite3_step(prune) != SQLITE_DONE) {
            store_group_fail(s, "nonce prune", err, errlen);
            goto done;
        }
    }
    if (bind_text(ins, 1, source) || bind_text(ins, 2, nonce) || bind_text(ins, 3, digest) ||
        sqlite3_bind_int64(ins, 4, now_ms) || sqlite3_step(ins) != SQLITE_DONE) {
        store_group_fail(s, "nonce insert", err, errlen);
        goto done;
    }
    if (sqlite3_changes(s->db) == 1) {
        ret = 0;
        goto done;
    }
    if (bind_text(get, 1, source) || bind_text(get, 2, nonce) || sqlite3_step(get) != SQLITE_ROW) {
        store_group_fail(s, "nonce lookup", err, errlen);
        goto done;
    }
    ret = strcmp((const char *)sqlite3_column_text(get, 0), digest) == 0 ? STORE_DUP : STORE_REPLAY;
done:
    stmt_done(prune);
    stmt_done(ins);
    stmt_done(get);
    return ret;
}

/* ---- inserting and routing ---- */

/* 1 when endpoint's key has a row not yet delivered (in the open group
 * too), 0 when not, -1 on a store error. */
static int key_busy(struct store_sq *s, const char *endpoint, const char *okey) {
    sqlite3_stmt *st = store_stmt(s, ST_KEY_BUSY);
    int rc = -1;

    if (bind_text(st, 1, endpoint) == SQLITE_OK && bind_text(st, 2, okey) == SQLITE_OK)
        rc = sqlite3_step(st);
    stmt_done(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* The ids of plan's deliveries into s->plan_ids (store_plan_ids): derived
 * from the event (derive) or new. A derived id: if the routing is made
 * again (a group lost before it was durable, routed again by recovery),
 * the same deliveries keep the same ids, which receivers can dedupe.
 * Returns 0, or -1 when out of memory. */
static int plan_ids(struct store_sq *s, const char *event_id, const struct store_plan *plan,
                    int derive) {
    if (plan->ndeliveries > s->cap_ids) {
        void *grown = realloc(s->plan_ids, plan->ndeliveries * sizeof *s->plan_ids);
        if (!grown)
            return -1;
        s->plan_ids = grown;
        s->cap_ids = plan->ndeliveries;
    }
    store_plan_ids(event_id, plan, derive, s->plan_ids);
    return 0;
}

/* The matched handlers of plan as JSON in s->matched (store_plan_matched),
 * with the delivery ids of s->plan_ids. *out is NULL when plan was not
 * routed by rules. Returns 0, or -1 when out of memory. */
static int plan_matched(struct store_sq *s, const struct store_plan *plan, const char **out,
                        char *err, size_t errlen) {
    *out = NULL;
    if (!plan || !plan->by_rules)
        return 0;
    util_buf_reset(&s->matched);
    if (store_plan_matched(plan, s->plan_ids, &s->matched) < 0) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    *out = s->matched.p;
    return 0;
}

/* Inserts plan's deliveries (ids from s->plan_ids, plan_ids) and batch
 * items for event_id in the open group. Returns 0, or -1 (the group
 * failed: earlier rows of the plan are in it). */
static int plan_write(struct store_sq *s, const char *event_id, struct store_plan *plan, char *err,
                      size_t errlen) {
    sqlite3_stmt *ins = store_stmt(s, ST_DLV_INSERT);
    const struct store_delivery_new *d = plan->deliveries;
    int64_t now = util_now_ms();

    for (size_t i = 0; i < plan->ndeliveries; i++) {
        const char *status = d[i].status ? d[i].status : "pending";
        int64_t next_at = d[i].next_at;
        int busy = d[i].okey ? key_busy(s, d[i].endpoint, d[i].okey) : 0;

        if (busy < 0) {
            store_group_fail(s, "order key", err, errlen);
            return -1;
        }
        if (busy)
            next_at = STORE_PARKED_AT;
        if (bind_text(ins, 1, s->plan_ids[i]) || bind_text(ins, 2, event_id) ||
            bind_text(ins, 3, d[i].endpoint) || bind_text(ins, 4, d[i].event_type) ||
            bind_text(ins, 5, status) ||
            bind_blob(ins, 6, d[i].payload ? d[i].payload : "", d[i].payload_len) ||
            bind_text(ins, 7, d[i].content_type) || bind_text(ins, 8, d[i].headers_json) ||
            sqlite3_bind_int64(ins, 9, next_at) || sqlite3_bind_int64(ins, 10, now) ||
            bind_text(ins, 11, d[i].okey) || sqlite3_bind_int64(ins, 12, ++s->dlv_seq_hw) ||
            sqlite3_step(ins) != SQLITE_DONE) {
            store_group_fail(s, "delivery insert", err, errlen);
            stmt_done(ins);
            return -1;
        }
        s->group_dlv_seq = s->dlv_seq_hw;
        stmt_done(ins);
        if (store_counts_add(s, status, 1) < 0) {
            store_group_fail(s, "delivery counts", err, errlen);
            return -1;
        }
    }
    for (size_t i = 0; i < plan->nitems; i++)
        if (store_batch_item_put(s, event_id, &plan->items[i], err, errlen) < 0)
            return -1;
    return 0;
}

int store_sqlite_event_put(struct store_sq *s, const struct store_event *ev,
                           struct store_plan *plan, char *dup_id, size_t dup_len, char *err,
                           size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_EVT_INSERT), *dup = store_stmt(s, ST_EVT_DUP);
    const char *matched = NULL;
    int rc, ret = -1;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    if (plan &&
        (plan_ids(s, ev->id, plan, 1) < 0 || plan_matched(s, plan, &matched, err, errlen) < 0)) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    if (bind_text(st, 1, ev->id) || bind_text(st, 2, ev->source) ||
        bind_text(st, 3, ev->source_id) || bind_text(st, 4, ev->type) ||
        bind_text(st, 5, plan ? plan->status : "received") ||
        bind_text(st, 6, plan ? plan->error : NULL) || bind_text(st, 7, ev->created_at) ||
        sqlite3_bind_int64(st, 8, ev->received_at) || bind_text(st, 9, ev->headers_json) ||
        bind_text(st, 10, ev->data_json) || bind_blob(st, 11, ev->raw, ev->raw_len) ||
        bind_text(st, 12, ev->shipment_json) || sqlite3_bind_int64(st, 13, ++s->evt_seq_hw) ||
        bind_text(st, 14, matched)) {
        store_group_fail(s, "event insert", err, errlen);
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        s->group_evt_seq = s->evt_seq_hw;
        ret = plan ? plan_write(s, ev->id, plan, err, errlen) : 0;
        goto done;
    }
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        /* A failed constraint undoes only this statement; look for the
         * first copy (in the database or in the open group). */
        sqlite3_reset(st);
        if (bind_text(dup, 1, ev->source) || bind_text(dup, 2, ev->source_id)) {
            store_group_fail(s, "event lookup", err, errlen);
            goto done;
        }
        rc = sqlite3_step(dup);
        if (rc == SQLITE_ROW) {
            if (dup_id && dup_len)
                copy_id(dup_id, dup_len, sqlite3_column_text(dup, 0));
            ret = STORE_DUP;
            goto done;
        }
        if (rc == SQLITE_DONE) { /* the unique key hit was the id itself */
            store_err(err, errlen, "store: event id %s already exists", ev->id);
            goto done;
        }
    }
    store_group_fail(s, "event insert", err, errlen);
done:
    stmt_done(st);
    stmt_done(dup);
    return ret;
}

/* Sets event_id's status and error. *first is 1 when this is its first
 * routing (it was "received"). Returns 0, or -1 (err set; an unknown id
 * writes nothing and keeps the group). */
static int event_set_status(struct store_sq *s, const char *event_id, const char *status,
                            const char *error, int first_only, int *first, char *err,
                            size_t errlen) {
    sqlite3_stmt *fst = store_stmt(s, ST_EVT_STATUS_FIRST), *up = store_stmt(s, ST_EVT_STATUS);
    int ret = -1;

    if (bind_text(fst, 1, event_id) || bind_text(fst, 2, status) || bind_text(fst, 3, error) ||
        sqlite3_step(fst) != SQLITE_DONE) {
        store_group_fail(s, "event status", err, errlen);
        goto done;
    }
    *first = sqlite3_changes(s->db) == 1;
    if (!*first && first_only) { /* routed already: nothing written */
        ret = 0;
        goto done;
    }
    if (!*first) {
        if (bind_text(up, 1, event_id) || bind_text(up, 2, status) || bind_text(up, 3, error) ||
            sqlite3_step(up) != SQLITE_DONE) {
            store_group_fail(s, "event status", err, errlen);
            goto done;
        }
        if (sqlite3_changes(s->db) != 1) {
            store_err(err, errlen, "store: unknown event %s", event_id);
            goto done;
        }
    }
    ret = 0;
done:
    stmt_done(fst);
    stmt_done(up);
    return ret;
}

int store_sqlite_event_routed(struct store_sq *s, const char *event_id, struct store_plan *plan,
                              char *err, size_t errlen) {
    const char *matched = NULL;
    int is_first = 0;

    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    /* The event first: an unknown id writes nothing and keeps the group.
     * Its first routing derives the delivery ids (see plan_write); later
     * routings (replays) are new sends. */
    if (event_set_status(s, event_id, plan->status, plan->error, plan->first_only, &is_first, err,
                         errlen) < 0)
        return -1;
    if (plan->first_only && !is_first)
        return STORE_ROUTED_ALREADY;
    if (plan_ids(s, event_id, plan, is_first) < 0 ||
        plan_matched(s, plan, &matched, err, errlen) < 0) {
        store_group_fail(s, "out of memory", err, errlen);
        return -1;
    }
    /* This routing's handlers replace the last one's (its deliveries stay
     * with the event, each still naming its delivery id). */
    if (matched) {
        sqlite3_stmt *up = store_stmt(s, ST_EVT_MATCHED);
        int rc = bind_text(up, 1, event_id) || bind_text(up, 2, matched) ? SQLITE_ERROR
                                                                         : sqlite3_step(up);
        stmt_done(up);
        if (rc != SQLITE_DONE) {
            store_group_fail(s, "event matched", err, errlen);
            return -1;
        }
    }
    return plan_write(s, event_id, plan, err, errlen);
}

/* ---- reading events ---- */

void store_event_rows_free(struct store_event_row *rows, size_t n) {
    size_t i;
    if (!rows)
        return;
    for (i = 0; i < n; i++) {
        struct store_event_row *r = &rows[i];
        free(r->id);
        free(r->source);
        free(r->source_id);
        free(r->type);
        free(r->created_at);
        free(r->status);
        free(r->error);
        free(r->headers_json);
        free(r->data_json);
        free(r->shipment_json);
        free(r->matched_json);
        free(r->raw);
    }
    free(rows);
}

void store_event_row_read(sqlite3_stmt *st, struct store_event_row *r, int *oom) {
    r->seq = sqlite3_column_int64(st, 0);
    r->id = col_text(st, 1, oom);
    r->source = col_text(st, 2, oom);
    r->source_id = col_text(st, 3, oom);
    r->type = col_text(st, 4, oom);
    r->created_at = col_text(st, 5, oom);
    r->status = col_text(st, 6, oom);
    r->error = col_text(st, 7, oom);
    r->headers_json = col_text(st, 8, oom);
    r->data_json = col_text(st, 9, oom);
    r->raw = col_blob(st, 10, &r->raw_len, oom);
    r->received_at = sqlite3_column_int64(st, 11);
    r->shipment_json = sqlite3_column_count(st) > 12 ? col_text(st, 12, oom) : NULL;
    r->matched_json = sqlite3_column_count(st) > 13 ? col_text(st, 13, oom) : NULL;
}

int store_sqlite_events_unrouted(struct store_sq *s, int64_t after_seq, size_t max,
                                 struct store_event_row **rows, size_t *n, char *err,
                                 size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_EVT_UNROUTED);
    struct store_event_row *out = NULL, *r;
    void *grown;
    size_t cnt = 0, cap = 0;
    int rc, oom = 0;

    *rows = NULL;
    *n = 0;
    if (max == 0)
        return 0;
    if (sqlite3_bind_int64(st, 1, after_seq) ||
        sqlite3_bind_int64(st, 2, max > INT64_MAX ? INT64_MAX : (int64_t)max)) {
        store_err(err, errlen, "store: unrouted: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_int64(st, 0) > s->committed_evt_seq) {
            rc = SQLITE_DONE; /* the rest are in the open group: not ours to route */
            break;
        }
        if (!(grown = store_rows_grow(out, &cap, cnt, sizeof *out, 16)))
            goto oom;
        out = grown;
        r = &out[cnt++];
        memset(r, 0, sizeof *r);
        store_event_row_read(st, r, &oom);
        if (oom)
            goto oom;
    }
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: unrouted: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    stmt_done(st);
    *rows = out;
    *n = cnt;
    return 0;
oom:
    store_err(err, errlen, "store: out of memory");
fail:
    stmt_done(st);
    store_event_rows_free(out, cnt);
    return -1;
}

int store_sqlite_event_get(struct store_sq *s, const char *id, struct store_event_row **out,
                           char *err, size_t errlen) {
    return store_event_read(store_stmt(s, ST_EVT_GET), id, out, err, errlen);
}

int store_event_read(sqlite3_stmt *st, const char *id, struct store_event_row **out, char *err,
                     size_t errlen) {
    struct store_event_row *row = calloc(1, sizeof *row);
    int rc, oom = 0, ret = -1;

    *out = NULL;
    if (!row) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    if (bind_text(st, 1, id)) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(sqlite3_db_handle(st)));
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = 0;
        goto done;
    }
    if (rc != SQLITE_ROW) {
        store_err(err, errlen, "store: event: %s", sqlite3_errmsg(sqlite3_db_handle(st)));
        goto done;
    }
    store_event_row_read(st, row, &oom);
    if (oom) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    *out = row;
    row = NULL;
    ret = 1;
done:
    store_event_rows_free(row, row ? 1 : 0);
    stmt_done(st);
    return ret;
}
