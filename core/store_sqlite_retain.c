/* store_sqlite_retain.c -- retention (SPEC section 9) and giving space back: a
 * pass walks events by seq (the rowid, so a pass costs O(max) whatever the
 * table's size), deletes the old ones that are done with their deliveries,
 * and steps over the ones that must stay; freed pages go back to the
 * filesystem in small incremental-vacuum steps when the store allows it.
 * Invariants: an event is deleted only with all of its rows (its
 * deliveries and their attempts, its batch items) in one group; a batch
 * delivery goes with the last of its items, never before; a kept event never
 * stops the walk; the seq high-water marks are recorded before anything is
 * deleted, so seqs stay monotonic for the life of the store.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

/* The events of a chunk: ?1 is a JSON array of their ids (json_each
 * gives them as a table, so one statement deletes a chunk's rows). */
#define CHUNK_IDS "(SELECT value FROM json_each(?1))"

/* The batch deliveries a chunk's items are the last ones of: every other
 * item of the delivery belongs to an event outside the chunk (found by the
 * batch_items_delivery index). */
#define LAST_BATCHES                                                                               \
    "SELECT b.delivery_id FROM batch_items b WHERE b.event_id IN " CHUNK_IDS                       \
    " AND b.delivery_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batch_items o"                   \
    " WHERE o.delivery_id = b.delivery_id AND o.event_id NOT IN " CHUNK_IDS ")"

const struct store_stmt_def store_retain_stmts[] = {
    /* Column 4: a delivery of the event still going out or failed (kept);
     * column 5: an item in an open window, or in a batch not delivered. */
    {ST_PRUNE_SCAN, "SELECT seq, id, received_at, status,"
                    " EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
                    "  AND d.status IN ('pending', 'held', 'failed')),"
                    " EXISTS (SELECT 1 FROM batch_items b WHERE b.event_id = e.id"
                    "  AND (b.delivery_id IS NULL OR EXISTS (SELECT 1 FROM deliveries d"
                    "  WHERE d.id = b.delivery_id AND d.status <> 'delivered')))"
                    " FROM events e WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"},
    {ST_PRUNE_ATTEMPTS, "DELETE FROM attempts WHERE delivery_id IN"
                        " (SELECT id FROM deliveries WHERE event_id IN " CHUNK_IDS ")"},
    {ST_PRUNE_DELIVERIES, "DELETE FROM deliveries WHERE event_id IN " CHUNK_IDS},
    {ST_PRUNE_BATCH_ATTEMPTS, "DELETE FROM attempts WHERE delivery_id IN (" LAST_BATCHES ")"},
    {ST_PRUNE_BATCH_DELIVERIES, "DELETE FROM deliveries WHERE id IN (" LAST_BATCHES ")"},
    {ST_PRUNE_BATCH_ITEMS, "DELETE FROM batch_items WHERE event_id IN " CHUNK_IDS},
    {ST_PRUNE_EVENT, "DELETE FROM events WHERE id IN " CHUNK_IDS},
    {ST_FREELIST, "SELECT f.freelist_count, v.auto_vacuum, c.page_count"
                  " FROM pragma_freelist_count AS f, pragma_auto_vacuum AS v,"
                  " pragma_page_count AS c"},
    {ST_COUNT_, NULL},
};

/* An event the scan found deletable. */
struct prune_id {
    int64_t seq;
    char id[UTIL_ID_MAX];
};

/* 1 when a scanned row must stay: not routed yet, a rule error (kept for
 * a replay), or a delivery or batch item not done. */
static int prune_keeps(sqlite3_stmt *sel) {
    const char *status = (const char *)sqlite3_column_text(sel, 3);
    if (!status || (strcmp(status, "routed") && strcmp(status, "unrouted")))
        return 1;
    return sqlite3_column_int(sel, 4) || sqlite3_column_int(sel, 5);
}

/* Reads up to p->max events after p->cursor into ids (*nids of them, the
 * deletable ones), counting the kept ones and advancing p->cursor past
 * everything it looked at; sets p->done at upto, the end, or the first
 * event not old yet. Returns 0 or -1. */
static int prune_scan(struct store_sq *s, struct store_prune *p, struct prune_id *ids, int *nids,
                      char *err, size_t errlen) {
    sqlite3_stmt *sel = store_stmt(s, ST_PRUNE_SCAN);
    int rc, looked = 0, ret = -1;

    if (sqlite3_bind_int64(sel, 1, p->cursor) || sqlite3_bind_int64(sel, 2, p->upto) ||
        sqlite3_bind_int(sel, 3, p->max)) {
        store_err(err, errlen, "store: prune: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        looked++;
        if (sqlite3_column_int64(sel, 2) >= p->before_ms) {
            p->done = 1; /* newer from here on (received_at follows seq) */
            break;
        }
        p->cursor = sqlite3_column_int64(sel, 0);
        if (prune_keeps(sel)) {
            p->kept++;
            continue;
        }
        ids[*nids].seq = p->cursor;
        copy_id(ids[*nids].id, sizeof ids[0].id, sqlite3_column_text(sel, 1));
        (*nids)++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_err(err, errlen, "store: prune: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    if (looked < p->max || p->cursor >= p->upto)
        p->done = 1; /* the end of the table or of the range */
    ret = 0;
done:
    stmt_done(sel);
    return ret;
}

/* Records the seq high-water marks in store_meta (in the open group),
 * before rows that may hold the highest seqs are deleted. Returns 0 or -1. */
static int seq_hw_keep(struct store_sq *s, char *err, size_t errlen) {
    static const char *const keys[2] = {"dlv_seq", "evt_seq"};
    int64_t vals[2] = {s->dlv_seq_hw, s->evt_seq_hw};

    for (int i = 0; i < 2; i++) {
        sqlite3_stmt *st = store_stmt(s, ST_META_PUT);
        int bad = bind_text(st, 1, keys[i]) || sqlite3_bind_int64(st, 2, vals[i]) ||
                  sqlite3_step(st) != SQLITE_DONE;
        stmt_done(st);
        if (bad) {
            store_group_fail(s, "seq high-water", err, errlen);
            return -1;
        }
    }
    return 0;
}

/* Deletes the n events of ids with their rows, in the open group: their
 * deliveries' attempts, their deliveries, the batches they hold the last
 * items of (their attempts, then them), their items, themselves. Returns
 * 0 or -1 (the group failed). */
static int prune_chunk(struct store_sq *s, const struct prune_id *ids, int n, char *err,
                       size_t errlen) {
    static const enum store_stmt del[] = {ST_PRUNE_ATTEMPTS,       ST_PRUNE_DELIVERIES,
                                          ST_PRUNE_BATCH_ATTEMPTS, ST_PRUNE_BATCH_DELIVERIES,
                                          ST_PRUNE_BATCH_ITEMS,    ST_PRUNE_EVENT};
    struct util_buf json = {0};
    int bad = util_buf_appends(&json, "[") < 0, ret = -1;

    /* ids are waybill's own ("evt_" and base32): no quoting needed, but
     * checked, since the statement takes them as JSON */
    for (int i = 0; i < n && !bad; i++) {
        for (const char *c = ids[i].id; *c && !bad; c++)
            bad = *c == '"' || *c == '\\' || (unsigned char)*c < 0x20;
        bad = bad || util_buf_printf(&json, "%s\"%s\"", i ? "," : "", ids[i].id) < 0;
    }
    if (bad || util_buf_appends(&json, "]") < 0) {
        store_err(err, errlen, "store: prune: an id that is not plain text, or out of memory");
        goto done;
    }
    for (size_t k = 0; k < sizeof del / sizeof del[0]; k++) {
        sqlite3_stmt *st = store_stmt(s, del[k]);
        bad = sqlite3_bind_text(st, 1, json.p, (int)json.len, SQLITE_STATIC) ||
              sqlite3_step(st) != SQLITE_DONE;
        stmt_done(st);
        if (bad) {
            store_group_fail(s, "prune", err, errlen);
            goto done;
        }
    }
    ret = 0;
done:
    util_buf_free(&json);
    return ret;
}

#define PRUNE_CHUNK 16 /* events deleted per statement */

static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int store_sqlite_prune(struct store_sq *s, struct store_prune *p, char *err, size_t errlen) {
    int64_t t0 = mono_us();
    struct prune_id *ids;
    int nids = 0, i, ret = -1;

    p->pruned = p->kept = p->done = 0;
    if (p->max <= 0 || p->cursor >= p->upto) {
        p->done = 1;
        return 0;
    }
    if (!(ids = calloc((size_t)p->max, sizeof *ids))) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    /* The scan is done (its statement reset) before the first delete. */
    if (prune_scan(s, p, ids, &nids, err, errlen) < 0)
        goto done;
    if (nids && (store_group_begin(s, err, errlen) < 0 || seq_hw_keep(s, err, errlen) < 0))
        goto done;
    for (i = 0; i < nids; i += PRUNE_CHUNK) {
        if (p->budget_us > 0 && i > 0 && mono_us() - t0 >= p->budget_us) {
            p->cursor = ids[i].seq - 1; /* the rest next time */
            p->done = 0;
            break;
        }
        if (prune_chunk(s, &ids[i], nids - i < PRUNE_CHUNK ? nids - i : PRUNE_CHUNK, err, errlen) <
            0)
            goto done;
    }
    p->pruned = i < nids ? i : nids;
    ret = 0;
done:
    free(ids);
    return ret;
}

/* ---- giving space back ---- */

int store_sqlite_reclaim(struct store_sq *s, int64_t keep_pages, int step_pages, int *freed,
                         char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_FREELIST);
    int64_t free_pages = 0, mode = 0, pages = 0, after;
    char sql[64];
    int rc;

    *freed = 0;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        free_pages = sqlite3_column_int64(st, 0);
        mode = sqlite3_column_int64(st, 1);
        pages = sqlite3_column_int64(st, 2);
    }
    stmt_done(st);
    if (rc != SQLITE_ROW) {
        store_err(err, errlen, "store: freelist: %s", sqlite3_errmsg(s->db));
        return -1;
    }
    /* 2 is INCREMENTAL; NONE (0) cannot shrink, FULL (1) shrinks by itself.
     * A quarter of the file may stay free: a store at its steady size
     * reuses that room instead of shrinking and growing again. */
    if (mode != 2 || free_pages <= keep_pages || free_pages * 4 <= pages || step_pages <= 0)
        return 0;
    if (free_pages - keep_pages < step_pages)
        step_pages = (int)(free_pages - keep_pages);
    if (store_group_begin(s, err, errlen) < 0)
        return -1;
    snprintf(sql, sizeof sql, "PRAGMA incremental_vacuum(%d)", step_pages);
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_group_fail(s, "incremental vacuum", err, errlen);
        return -1;
    }
    st = store_stmt(s, ST_FREELIST);
    after = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : free_pages;
    stmt_done(st);
    *freed = (int)(free_pages - after);
    return 0;
}
