/* store_sqlite_schema.c -- every table, index and trigger of the store, the schema
 * version and the migrations between versions, in one place.
 * Invariants: a new database is created whole in one transaction, stamped
 * with STORE_SCHEMA_VERSION; a store of an older known version is migrated
 * at open, one of a newer version is refused (it may count or claim in ways
 * this binary does not know); tables added after version 1 are created with
 * IF NOT EXISTS at every open, so older stores gain them unchanged.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <sqlite3.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

/* 2: deliveries are counted by the store, not by an AFTER INSERT trigger
 * (a version-1 binary would not count them: it refuses a version-2 store).
 * 3: due deliveries are found per endpoint (deliveries_ep_due) instead of
 * in one global next_at index (a version-2 binary would claim by a scan).
 * 4: events.shipment, the adapter's shipment fields (SPEC 4) as JSON (a
 * version-3 binary would route stored events without them).
 * 5: deliveries.okey, the order key of an endpoint ordered by key, with
 * rows parked behind their key's head (a version-4 binary would send them
 * all at once).
 * 6: events.matched, the rule handlers that matched and what each sent, as
 * routed (a version-5 binary would route and replay without recording it:
 * an event's page would show an older routing's handlers). */
#define STORE_SCHEMA_VERSION 6

/* ---- version 1: events, deliveries, attempts, delivery counts ---- */

/* deliveries.next_at is the time a pending row becomes claimable: a claim
 * leases a row by moving next_at to the end of the lease (and recording it
 * in lease_until, so the leases of a crashed run can be found and released).
 * delivery_counts is kept by triggers on update and delete, so counts are
 * O(1) and transactional; inserts are counted by the store itself, summed
 * per group and written once before its COMMIT (store_counts_flush): a
 * trigger per inserted row cost a statement journal and an upsert each. */
static const char store_schema_sql[] =
    "CREATE TABLE events ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " source TEXT NOT NULL,"
    " source_id TEXT NOT NULL,"
    " type TEXT,"
    " status TEXT NOT NULL,"
    " error TEXT,"
    " created_at TEXT,"
    " received_at INTEGER NOT NULL,"
    " headers TEXT,"
    " data TEXT,"
    " raw BLOB,"
    " shipment TEXT,"
    " matched TEXT,"
    " UNIQUE (source, source_id));"
    "CREATE INDEX events_received ON events(seq) WHERE status = 'received';"
    "CREATE TABLE deliveries ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " event_id TEXT NOT NULL,"
    " endpoint TEXT NOT NULL,"
    " event_type TEXT,"
    " status TEXT NOT NULL,"
    " payload BLOB,"
    " content_type TEXT,"
    " headers TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " schedule_pos INTEGER NOT NULL DEFAULT 0,"
    " next_at INTEGER NOT NULL,"
    " lease_until INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " batch INTEGER NOT NULL DEFAULT 0,"
    " okey TEXT);"
    "CREATE INDEX deliveries_leased ON deliveries(lease_until) WHERE lease_until > 0;"
    "CREATE INDEX deliveries_event ON deliveries(event_id);"
    "CREATE TABLE attempts ("
    " delivery_id TEXT NOT NULL,"
    " n INTEGER NOT NULL,"
    " at INTEGER NOT NULL,"
    " status_code INTEGER NOT NULL,"
    " latency_ms INTEGER NOT NULL,"
    " error TEXT,"
    " response BLOB,"
    " PRIMARY KEY (delivery_id, n));"
    "CREATE TABLE delivery_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TRIGGER deliveries_count_upd AFTER UPDATE OF status ON deliveries"
    " WHEN old.status IS NOT new.status BEGIN"
    " UPDATE delivery_counts SET n = n - 1 WHERE status = old.status;"
    " INSERT INTO delivery_counts(status, n) VALUES (new.status, 1)"
    "  ON CONFLICT(status) DO UPDATE SET n = n + 1;"
    " END;"
    "CREATE TRIGGER deliveries_count_del AFTER DELETE ON deliveries BEGIN"
    " UPDATE delivery_counts SET n = n - 1 WHERE status = old.status;"
    " END;";

/* ---- added later, at every open (IF NOT EXISTS) ---- */

/* Subscriptions (ShipEngine's webhook shape). One per pattern: the unique
 * key is what answers 409. */
static const char store_subs_sql[] = "CREATE TABLE IF NOT EXISTS subscriptions ("
                                     " seq INTEGER PRIMARY KEY,"
                                     " id TEXT NOT NULL UNIQUE,"
                                     " event TEXT NOT NULL,"
                                     " pattern TEXT NOT NULL UNIQUE,"
                                     " url TEXT NOT NULL,"
                                     " secret TEXT NOT NULL,"
                                     " created_at INTEGER NOT NULL)";

/* Batch windows: batch_items holds every batched payload. An item is open
 * while delivery_id is NULL; closing a window inserts its one delivery and
 * points the items at it (dropping their payload copies) in the same group,
 * so an item is in exactly one batch delivery and the membership stays
 * visible in the event detail. */
static const char store_batch_sql[] =
    "CREATE TABLE IF NOT EXISTS batch_items ("
    " seq INTEGER PRIMARY KEY,"
    " endpoint TEXT NOT NULL,"
    " window_start INTEGER NOT NULL,"
    " window_ms INTEGER NOT NULL,"
    " event_id TEXT NOT NULL,"
    " payload BLOB,"
    " delivery_id TEXT);"
    "CREATE INDEX IF NOT EXISTS batch_items_open ON batch_items(endpoint, window_ms,"
    " window_start, seq) WHERE delivery_id IS NULL;"
    "CREATE INDEX IF NOT EXISTS batch_items_event ON batch_items(event_id);"
    /* Retention deletes a batch delivery with its last item (store_sqlite_retain.c).
     * An index only: a binary without it keeps it up to date unknowingly. */
    "CREATE INDEX IF NOT EXISTS batch_items_delivery ON batch_items(delivery_id)"
    " WHERE delivery_id IS NOT NULL;";

/* The state of each endpoint that was ever disabled or attempted (SPEC
 * section 7), and the per-endpoint indexes that find an ordered endpoint's
 * head and move an endpoint's deliveries between pending and held without
 * a scan. */
static const char store_endpoints_sql[] =
    "CREATE TABLE IF NOT EXISTS endpoint_state ("
    " name TEXT PRIMARY KEY,"
    " disabled INTEGER NOT NULL DEFAULT 0,"
    " disabled_at INTEGER NOT NULL DEFAULT 0,"
    " reason TEXT,"
    " last_error TEXT,"
    " last_error_at INTEGER NOT NULL DEFAULT 0,"
    " first_failure_at INTEGER NOT NULL DEFAULT 0,"
    " ok INTEGER NOT NULL DEFAULT 0,"
    " failed INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    /* Ordered by key (v4): a key's rows in order, and the failed heads
     * that block their keys. */
    "CREATE INDEX IF NOT EXISTS deliveries_ep_key ON deliveries(endpoint, okey, seq)"
    " WHERE okey IS NOT NULL AND status IN ('pending', 'held', 'failed');"
    "CREATE INDEX IF NOT EXISTS deliveries_ep_blocked ON deliveries(endpoint, seq)"
    " WHERE okey IS NOT NULL AND status = 'failed';"
    "CREATE INDEX IF NOT EXISTS deliveries_ep_pending ON deliveries(endpoint, seq)"
    " WHERE status = 'pending';"
    "CREATE INDEX IF NOT EXISTS deliveries_ep_held ON deliveries(endpoint, seq)"
    " WHERE status = 'held';"
    /* The scheduler claims per endpoint, earliest due first (deliver.c). */
    "CREATE INDEX IF NOT EXISTS deliveries_ep_due ON deliveries(endpoint, next_at)"
    " WHERE status = 'pending';"
    /* Stores made before inserts were counted per group had a trigger. */
    "DROP TRIGGER IF EXISTS deliveries_count_ins;"
    /* A row per status from the start: the update and delete triggers
     * lower the old status's row, which must exist even when the rows of
     * that status were inserted in the open group (counted at COMMIT). */
    "INSERT OR IGNORE INTO delivery_counts(status, n) VALUES"
    " ('pending', 0), ('held', 0), ('failed', 0), ('delivered', 0);";

/* Nonces (Shiptify tokens) with the digest of the body they came with. */
/* The highest seq ever given to an event and to a delivery (recorded when
 * retention deletes rows, which could take the newest ones): seqs stay
 * monotonic for the life of the store, so a pruned table never hands out a
 * seq the delivery watermarks or an admin page cursor already passed. */
static const char store_meta_sql[] = "CREATE TABLE IF NOT EXISTS store_meta ("
                                     " key TEXT PRIMARY KEY,"
                                     " value INTEGER NOT NULL) WITHOUT ROWID";

static const char store_nonce_sql[] = "CREATE TABLE IF NOT EXISTS nonces ("
                                      " source TEXT NOT NULL,"
                                      " nonce TEXT NOT NULL,"
                                      " digest TEXT NOT NULL,"
                                      " seen_at INTEGER NOT NULL,"
                                      " PRIMARY KEY (source, nonce)) WITHOUT ROWID";

/* ---- the version ---- */

/* sqlite3_exec callback: the first column of the first row as an integer. */
static int exec_first_int(void *arg, int ncols, char **vals, char **names) {
    UNUSED(names);
    if (ncols > 0 && vals[0])
        *(int64_t *)arg = strtoll(vals[0], NULL, 10);
    return 0;
}

static int user_version(sqlite3 *db, int64_t *version) {
    *version = 0;
    return sqlite3_exec(db, "PRAGMA user_version", exec_first_int, version, NULL);
}

/* The reason a schema step failed, read before ROLLBACK can replace it;
 * in_txn says a transaction is open to roll back. Returns -1. */
static int schema_fail(sqlite3 *db, int in_txn, char *err, size_t errlen) {
    store_err(err, errlen, "store: creating schema: %s", sqlite3_errmsg(db));
    if (in_txn)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* Adds column to table (with its type) unless the table has it already. */
static int add_column(sqlite3 *db, const char *table, const char *column, const char *type) {
    char sql[160];
    int64_t n = 0;
    int rc;

    snprintf(sql, sizeof sql, "SELECT count(*) FROM pragma_table_info('%s') WHERE name = '%s'",
             table, column);
    rc = sqlite3_exec(db, sql, exec_first_int, &n, NULL);
    if (rc != SQLITE_OK || n)
        return rc;
    snprintf(sql, sizeof sql, "ALTER TABLE %s ADD COLUMN %s %s", table, column, type);
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* Migrates a store of version 1 to 5: 1 -> 2 drops the insert-counting
 * trigger (the store counts); 2 -> 3 drops the global due index, which
 * deliveries_ep_due (created with the endpoint indexes, after this)
 * replaces; 3 -> 4 adds events.shipment (NULL for the events before it);
 * 4 -> 5 adds deliveries.okey (NULL: not ordered by key); 5 -> 6 adds
 * events.matched (NULL: not recorded for the events before it). Returns 0 or -1
 * (err set). */
static int schema_migrate(sqlite3 *db, int64_t version, const char *set_version, char *err,
                          size_t errlen) {
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return schema_fail(db, 0, err, errlen);
    if (sqlite3_exec(db, "DROP TRIGGER IF EXISTS deliveries_count_ins", NULL, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(db, "DROP INDEX IF EXISTS deliveries_due", NULL, NULL, NULL) != SQLITE_OK ||
        (version < 4 && add_column(db, "events", "shipment", "TEXT") != SQLITE_OK) ||
        (version < 5 && add_column(db, "deliveries", "okey", "TEXT") != SQLITE_OK) ||
        (version < 6 && add_column(db, "events", "matched", "TEXT") != SQLITE_OK) ||
        sqlite3_exec(db, set_version, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return schema_fail(db, 1, err, errlen);
    return 0;
}

/* Creates the version-1 tables of a new database and stamps the version.
 * Returns 0 or -1 (err set). */
static int schema_create(sqlite3 *db, const char *set_version, char *err, size_t errlen) {
    int64_t version = 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return schema_fail(db, 0, err, errlen);
    /* Another process may have created it between our check and BEGIN. */
    if (user_version(db, &version) != SQLITE_OK ||
        (version == 0 && (sqlite3_exec(db, store_schema_sql, NULL, NULL, NULL) != SQLITE_OK ||
                          sqlite3_exec(db, set_version, NULL, NULL, NULL) != SQLITE_OK)) ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return schema_fail(db, 1, err, errlen);
    return 0;
}

/* Creates the schema of a new database, or checks an existing one's
 * version and migrates it. Returns 0 or -1 (err set). */
static int schema_versioned(sqlite3 *db, char *err, size_t errlen) {
    int64_t version = 0;
    char sql[64];
    if (user_version(db, &version) != SQLITE_OK)
        return schema_fail(db, 0, err, errlen);
    if (version == STORE_SCHEMA_VERSION)
        return 0;
    if (version < 0 || version > STORE_SCHEMA_VERSION) {
        store_err(err, errlen, "store: schema version %lld, this waybill knows %d",
                  (long long)version, STORE_SCHEMA_VERSION);
        return -1;
    }
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
    return version ? schema_migrate(db, version, sql, err, errlen)
                   : schema_create(db, sql, err, errlen);
}

int store_schema_apply(sqlite3 *db, const char *path, char *err, size_t errlen) {
    if (schema_versioned(db, err, errlen) < 0)
        return -1;
    if (sqlite3_exec(db, store_subs_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating subscriptions: %s", sqlite3_errmsg(db));
        return -1;
    }
    if (sqlite3_exec(db, store_batch_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating batch tables: %s", sqlite3_errmsg(db));
        return -1;
    }
    if (sqlite3_exec(db, store_endpoints_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: %s: endpoint state: %s", path, sqlite3_errmsg(db));
        return -1;
    }
    if (sqlite3_exec(db, store_meta_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating store_meta: %s", sqlite3_errmsg(db));
        return -1;
    }
    if (sqlite3_exec(db, store_nonce_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating nonces: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}
