/* store.c -- the SQLite (WAL) backend of store.h, with group commit.
 * Invariants: every write runs inside the open group (one BEGIN IMMEDIATE ..
 * COMMIT per loop turn); once a write in the group failed, every later write
 * of the group fails at once and the group is rolled back; every prepared
 * statement is reset (and its bindings cleared) before its caller returns.
 *
 * Durability off the loop (sync=full, the default): the loop's connection
 * runs with synchronous=NORMAL, so COMMIT only write()s the group's frames
 * to the WAL; a sync thread then fdatasync()s the WAL file and tells the
 * loop through an eventfd, and only then do the group's callbacks run (the
 * 200s, routing, claims). While one group is being synced the next one
 * keeps filling; it commits when the sync returns, so a group holds
 * everything that arrived during one fsync. Checkpoints run on a thread of
 * their own with a second connection, which syncs the WAL before copying
 * and the database before the WAL may be reused; the loop connection never
 * checkpoints except to let a WAL that load kept from restarting start over
 * (see wal_maintain).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <sqlite3.h>

#include "log.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

/* 2: deliveries are counted by the store, not by an AFTER INSERT trigger
 * (a version-1 binary would not count them: it refuses a version-2 store).
 * 3: due deliveries are found per endpoint (deliveries_ep_due) instead of
 * in one global next_at index (a version-2 binary would claim by a scan). */
#define STORE_SCHEMA_VERSION 3
#define STORE_BUSY_MS 100 /* the loop must not wait long for a lock */
/* WAL frames (4 KiB pages) after which the checkpoint thread copies the WAL
 * into the database; and after which the loop itself checkpoints the tail,
 * so that its next transaction can restart the WAL from the beginning
 * (SQLite restarts a WAL only from a writer whose snapshot began with the
 * WAL fully copied, which a loop that is never idle would not reach). */
#define STORE_CKPT_FRAMES 1000
#define STORE_RESTART_FRAMES 16000

/* ---- schema ---- */

/* deliveries.next_at is the time a pending row becomes claimable: a claim
 * leases a row by moving next_at to the end of the lease (and recording it
 * in lease_until, so the leases of a crashed run can be found and released).
 * delivery_counts is kept by triggers on update and delete, so counts are
 * O(1) and transactional; inserts are counted by the store itself, summed
 * per group and written once before its COMMIT (counts_flush): a trigger
 * per inserted row cost a statement journal and an upsert each. */
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
    " batch INTEGER NOT NULL DEFAULT 0);"
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

/* Added to stores of any version at open (IF NOT EXISTS): the state of
 * each endpoint that was ever disabled or attempted (SPEC section 7), and
 * the per-endpoint indexes that find an ordered endpoint's head and move an
 * endpoint's deliveries between pending and held without a scan. */
static const char store_schema_endpoints_sql[] =
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
static const char store_nonce_sql[] =
    "CREATE TABLE IF NOT EXISTS nonces ("
    " source TEXT NOT NULL,"
    " nonce TEXT NOT NULL,"
    " digest TEXT NOT NULL,"
    " seen_at INTEGER NOT NULL,"
    " PRIMARY KEY (source, nonce)) WITHOUT ROWID";

/* ---- prepared statements (prepared once at open) ---- */

enum store_stmt {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_PING,
    ST_EVT_INSERT,
    ST_EVT_DUP,
    ST_EVT_STATUS,
    ST_EVT_STATUS_FIRST,
    ST_EVT_GET,
    ST_EVT_UNROUTED,
    ST_DLV_INSERT,
    ST_DLV_CLAIM,
    ST_DLV_LEASE,
    ST_DLV_NEXT_DUE,
    ST_DLV_RELEASE,
    ST_DLV_HEAD,
    ST_DLV_OUTCOME,
    ST_DLV_BY_EVENT,
    ST_ATT_INSERT,
    ST_ATT_BY_DLV,
    ST_COUNTS,
    ST_COUNTS_ADD,
    ST_COUNT_
};

/* Keep in the order of enum store_stmt. The literal status = '...' terms
 * must match the partial indexes' WHERE clauses for the planner to use them. */
static const char *const store_stmt_sql[ST_COUNT_] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_PING] = "SELECT 1",
    [ST_EVT_INSERT] = "INSERT INTO events(id, source, source_id, type, status, error, created_at,"
                      " received_at, headers, data, raw)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [ST_EVT_DUP] = "SELECT id FROM events WHERE source = ?1 AND source_id = ?2",
    [ST_EVT_STATUS] = "UPDATE events SET status = ?2, error = ?3 WHERE id = ?1",
    [ST_EVT_STATUS_FIRST] = "UPDATE events SET status = ?2, error = ?3"
                            " WHERE id = ?1 AND status = 'received'",
    [ST_EVT_GET] = "SELECT id, source, source_id, type, status, received_at, created_at, data,"
                   " error FROM events WHERE id = ?1",
    [ST_EVT_UNROUTED] = "SELECT seq, id, source, source_id, type, created_at, status, error,"
                        " headers, data, raw, received_at FROM events INDEXED BY events_received"
                        " WHERE status = 'received' AND seq > ?1 ORDER BY seq LIMIT ?2",
    [ST_DLV_INSERT] = "INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,"
                      " content_type, headers, attempts, schedule_pos, next_at, lease_until,"
                      " created_at)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, ?9, 0, ?10)",
    [ST_DLV_CLAIM] = "SELECT seq, id, event_id, endpoint, event_type, content_type, headers,"
                     " payload, attempts, schedule_pos, next_at, created_at FROM deliveries"
                     " INDEXED BY deliveries_ep_due WHERE endpoint = ?4 AND status = 'pending'"
                     " AND next_at <= ?1 AND seq <= ?3 ORDER BY next_at LIMIT ?2",
    [ST_DLV_LEASE] = "UPDATE deliveries SET next_at = ?2, lease_until = ?2 WHERE seq = ?1",
    [ST_DLV_NEXT_DUE] = "SELECT next_at FROM deliveries INDEXED BY deliveries_ep_due"
                        " WHERE endpoint = ?1 AND status = 'pending' AND seq <= ?2"
                        " ORDER BY next_at LIMIT 1",
    [ST_DLV_RELEASE] = "UPDATE deliveries SET next_at = ?2, lease_until = 0"
                       " WHERE seq = ?1 AND status = 'pending' AND lease_until > 0",
    [ST_DLV_HEAD] = "SELECT seq, next_at FROM deliveries INDEXED BY deliveries_ep_pending"
                    " WHERE endpoint = ?1 AND status = 'pending' ORDER BY seq LIMIT 1",
    [ST_DLV_OUTCOME] = "UPDATE deliveries SET status = ?2, next_at = ?3, schedule_pos = ?4,"
                       " attempts = max(attempts, ?5), lease_until = 0 WHERE id = ?1",
    [ST_DLV_BY_EVENT] = "SELECT id, endpoint, status, batch FROM deliveries"
                        " WHERE event_id = ?1 OR id IN (SELECT delivery_id FROM batch_items"
                        " WHERE event_id = ?1) ORDER BY seq",
    [ST_ATT_INSERT] = "INSERT OR REPLACE INTO attempts(delivery_id, n, at, status_code,"
                      " latency_ms, error, response) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_ATT_BY_DLV] = "SELECT n, at, status_code, latency_ms, error, response FROM attempts"
                      " WHERE delivery_id = ?1 ORDER BY n",
    [ST_COUNTS] = "SELECT status, n FROM delivery_counts",
    [ST_COUNTS_ADD] = "INSERT INTO delivery_counts(status, n) VALUES (?1, ?2)"
                      " ON CONFLICT(status) DO UPDATE SET n = n + ?2",
};

/* A callback waiting for the end of the group. */
struct store_cb {
    store_commit_fn fn;
    void *arg;
};

/* Group state: in_txn says a BEGIN is open; failed says a write of this
 * group failed (in_txn may be 0 when BEGIN itself failed or SQLite rolled
 * back on its own); scheduled says commit_ev is active or pending. cbs holds
 * ncbs callbacks for the current group (cap slots). */
struct store {
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT_];
    struct event *commit_ev;
    int in_txn, failed, begin_failed, scheduled, committing;
    /* Invariant: every delivery row with seq <= committed_dlv_seq is
     * committed (advanced at COMMIT, before the WAL sync). Claims see only
     * those, so no delivery is sent from a row a process crash could still
     * roll back; a power cut before the sync can, and then the event, which
     * was synced before it was routed, is routed and delivered again.
     * group_dlv_seq is the highest seq the open group inserted. */
    int64_t committed_dlv_seq, group_dlv_seq;
    /* For events, advanced when the group is durable: recovery reads only
     * events with seq <= committed_evt_seq, so an event whose group is
     * open or being synced (routed by its own commit callback) is never
     * routed by recovery as well. */
    int64_t committed_evt_seq, group_evt_seq;
    char fail_msg[256];
    struct store_cb *cbs;
    size_t ncbs, cap;
    /* Deliveries the open group inserted, by status, not yet in
     * delivery_counts (written by counts_flush before COMMIT). */
    struct {
        char status[16];
        int64_t n;
    } counts[8];
    int ncounts;
    /* store_on_written callbacks of the open group: run at its COMMIT. */
    struct store_cb *wcbs;
    size_t nwcbs, wcap;
    /* Durability off the loop; sync is NULL with sync=normal, where a group
     * is done at COMMIT. sync_busy: one committed group is being synced; its
     * callbacks and seqs wait in inflight_* (at most one group is in flight:
     * the next commit waits for it, deferred says it is due). */
    struct store_sync *sync;
    struct event *sync_ev;
    int sync_busy, deferred;
    struct store_cb *inflight;
    size_t ninflight, inflight_cap;
    int64_t inflight_evt_seq, inflight_t0;
    /* Checkpoints: the thread, its connection, and the WAL's size in frames
     * after the last commit (from the WAL hook). */
    struct store_ckpt *ckpt;
    int wal_frames, ckpt_asked_at;
    sqlite3_stmt *ep_st[3]; /* endpoint-state statements run per attempt, prepared lazily */
    int64_t nonces_pruned_at; /* Unix ms of the last prune of old nonces */
};

/* ---- small helpers ---- */

static void store_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void store_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Resets st and clears its bindings: bound text is borrowed (SQLITE_STATIC)
 * and must not outlive the call. */
static void stmt_done(sqlite3_stmt *st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int bind_text(sqlite3_stmt *st, int i, const char *s) {
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

static int bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n) {
    if (!p)
        return sqlite3_bind_null(st, i);
    return sqlite3_bind_blob64(st, i, n ? p : "", (sqlite3_uint64)n, SQLITE_STATIC);
}

/* New copy of a text column, or NULL for SQL NULL (*oom set on failure). */
static char *col_text(sqlite3_stmt *st, int i, int *oom) {
    const unsigned char *t = sqlite3_column_text(st, i);
    char *s;
    if (!t)
        return NULL;
    s = strdup((const char *)t);
    if (!s)
        *oom = 1;
    return s;
}

/* New NUL-terminated copy of a blob column, length in *len; NULL for SQL NULL. */
static char *col_blob(sqlite3_stmt *st, int i, size_t *len, int *oom) {
    const void *p = sqlite3_column_blob(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    char *b;
    *len = 0;
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return NULL;
    b = malloc(n + 1);
    if (!b) {
        *oom = 1;
        return NULL;
    }
    if (n)
        memcpy(b, p, n);
    b[n] = '\0';
    *len = n;
    return b;
}

static void copy_id(char *dst, size_t cap, const unsigned char *src) {
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

/* ---- group commit ---- */

/* Queues the commit event. From inside the commit itself (a callback that
 * wrote), it waits for the next loop turn (zero timeout), so the follow-up
 * writes join that turn's group instead of committing alone at once. */
static void group_schedule(struct store *s) {
    static const struct timeval zero = {0, 0};
    if (s->scheduled)
        return;
    s->scheduled = 1;
    if (s->committing)
        event_add(s->commit_ev, &zero);
    else
        event_active(s->commit_ev, EV_TIMEOUT, 0);
}

/* Marks the group failed after a write error (message from SQLite), so it is
 * rolled back and every callback of it gets ok=0. */
static void group_fail(struct store *s, const char *what, char *err, size_t errlen) {
    if (!s->failed) {
        snprintf(s->fail_msg, sizeof s->fail_msg, "%s: %s", what, sqlite3_errmsg(s->db));
        s->failed = 1;
    }
    /* SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR, ...). */
    if (s->in_txn && sqlite3_get_autocommit(s->db))
        s->in_txn = 0;
    store_err(err, errlen, "store: %s: %s", what, sqlite3_errmsg(s->db));
    group_schedule(s);
}

/* Makes sure a group is open for a write. Returns 0, or -1 with a reason
 * when BEGIN fails (e.g. another process holds the write lock) or an
 * earlier write of this group failed. */
static int group_begin(struct store *s, char *err, size_t errlen) {
    sqlite3_stmt *st = s->st[ST_BEGIN];
    int rc;
    /* A group whose BEGIN failed wrote nothing; when nobody waits for its
     * outcome either (no callback of either kind), a later write may start
     * afresh instead of failing until the rollback event runs (requests
     * can keep the loop busy). Not after SQLite rolled back a group by
     * itself: that group's writes are lost and its outcome must be ok=0. */
    if (s->failed && s->begin_failed && s->ncbs == 0 && s->nwcbs == 0) {
        s->failed = 0;
        s->begin_failed = 0;
        s->fail_msg[0] = '\0';
    }
    if (s->failed) {
        store_err(err, errlen, "store: commit group failed: %s", s->fail_msg);
        return -1;
    }
    if (s->in_txn)
        return 0;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        group_fail(s, "begin", err, errlen);
        s->begin_failed = 1;
        return -1;
    }
    s->in_txn = 1;
    group_schedule(s);
    return 0;
}

/* Counts n more deliveries with this status in the open group. Returns 0, or
 * -1 when the status is too long for the table or the table is full: the
 * row is then counted in delivery_counts at once. */
static int counts_add(struct store *s, const char *status, int64_t n) {
    sqlite3_stmt *st = s->st[ST_COUNTS_ADD];
    int i, rc;
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
    if (bind_text(st, 1, status) || sqlite3_bind_int64(st, 2, n))
        rc = SQLITE_ERROR;
    else
        rc = sqlite3_step(st);
    stmt_done(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* Writes the open group's insert counts into delivery_counts. */
static int counts_flush(struct store *s) {
    sqlite3_stmt *st = s->st[ST_COUNTS_ADD];
    int i, rc = SQLITE_DONE;
    for (i = 0; i < s->ncounts && rc == SQLITE_DONE; i++) {
        if (s->counts[i].n == 0)
            continue;
        if (bind_text(st, 1, s->counts[i].status) ||
            sqlite3_bind_int64(st, 2, s->counts[i].n))
            rc = SQLITE_ERROR;
        else
            rc = sqlite3_step(st);
        stmt_done(st);
    }
    s->ncounts = 0;
    return rc == SQLITE_DONE ? 0 : -1;
}

/* Ends the group: COMMIT, or ROLLBACK when a write failed or COMMIT did.
 * Returns 1 when committed, else 0. Leaves no group open; the group's seqs
 * (group_*_seq) are left for the caller, which clears them. */
static int group_end(struct store *s) {
    int ok = !s->failed, rc;
    if (s->in_txn) {
        if (ok && counts_flush(s) < 0) {
            ok = 0;
            snprintf(s->fail_msg, sizeof s->fail_msg, "delivery counts: %s", sqlite3_errmsg(s->db));
        }
        if (ok) {
            rc = sqlite3_step(s->st[ST_COMMIT]);
            sqlite3_reset(s->st[ST_COMMIT]);
            if (rc != SQLITE_DONE) {
                ok = 0;
                snprintf(s->fail_msg, sizeof s->fail_msg, "commit: %s", sqlite3_errmsg(s->db));
            }
        }
        if (!ok && !sqlite3_get_autocommit(s->db)) {
            rc = sqlite3_step(s->st[ST_ROLLBACK]);
            sqlite3_reset(s->st[ST_ROLLBACK]);
            if (rc != SQLITE_DONE)
                log_msg(LOG_ERROR, "store: rollback: %s", sqlite3_errmsg(s->db));
        }
    }
    if (!ok)
        log_msg(LOG_WARN, "store: commit group failed, rolled back: %s", s->fail_msg);
    s->ncounts = 0;
    s->in_txn = 0;
    s->failed = 0;
    s->begin_failed = 0;
    s->fail_msg[0] = '\0';
    return ok;
}

/* Rows up to these seqs are committed (deliveries) or durable (events). */
static void watermarks_advance(struct store *s, int64_t dlv_seq, int64_t evt_seq) {
    if (dlv_seq > s->committed_dlv_seq)
        s->committed_dlv_seq = dlv_seq;
    if (evt_seq > s->committed_evt_seq)
        s->committed_evt_seq = evt_seq;
}

/* Runs the open group's store_on_written callbacks (at its COMMIT or
 * ROLLBACK), as group_callbacks does for the others. */
static void group_written_callbacks(struct store *s, int ok);

/* Runs n callbacks of list in registration order. The caller swapped the
 * list out first: callbacks may write and register callbacks for the next
 * group. nested says we run inside the commit event itself, where a write
 * must schedule the next commit for the next loop turn, not this one. */
static void callbacks_run(struct store *s, struct store_cb *list, size_t n, int ok, int nested) {
    size_t i;
    if (nested)
        s->committing++;
    for (i = 0; i < n; i++)
        list[i].fn(list[i].arg, ok);
    if (nested)
        s->committing--;
}

/* The open group's store_on_commit callbacks, taken out of the store so
 * that callbacks registered from now on belong to the next group. */
struct cb_list {
    struct store_cb *cbs;
    size_t n, cap;
};

static struct cb_list cbs_detach(struct store_cb **cbs, size_t *n, size_t *cap) {
    struct cb_list l = {*cbs, *n, *cap};
    *cbs = NULL;
    *n = *cap = 0;
    return l;
}

/* Runs a detached list in registration order; gives its array back to the
 * slot it came from (cbs, cap) when nothing new was registered there
 * meanwhile. */
static void cbs_run(struct store *s, struct cb_list l, struct store_cb **cbs, size_t *cap, int ok) {
    callbacks_run(s, l.cbs, l.n, ok, 1);
    if (!*cbs) {
        *cbs = l.cbs;
        *cap = l.cap;
    } else {
        free(l.cbs);
    }
}

/* Appends fn(arg) to a callback list. Returns 0, or -1 when out of memory. */
static int cbs_append(struct store_cb **cbs, size_t *n, size_t *cap, store_commit_fn fn,
                      void *arg) {
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 32;
        struct store_cb *p = realloc(*cbs, ncap * sizeof *p);
        if (!p)
            return -1;
        *cbs = p;
        *cap = ncap;
    }
    (*cbs)[*n].fn = fn;
    (*cbs)[*n].arg = arg;
    (*n)++;
    return 0;
}

static struct cb_list group_detach(struct store *s) {
    return cbs_detach(&s->cbs, &s->ncbs, &s->cap);
}

static void group_callbacks(struct store *s, struct cb_list l, int ok) {
    cbs_run(s, l, &s->cbs, &s->cap, ok);
}

static void group_written_callbacks(struct store *s, int ok) {
    cbs_run(s, cbs_detach(&s->wcbs, &s->nwcbs, &s->wcap), &s->wcbs, &s->wcap, ok);
}

/* ---- the sync thread: fdatasync of the WAL off the loop ---- */

/* Shared between the loop and the sync thread; every field but the
 * constants (wal_fd, efd, thread) is guarded by mu. asked/done count the
 * syncs requested and finished; err is the errno of a failed fdatasync. */
struct store_sync {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, finished;
    int wal_fd; /* read-only fd of PATH-wal: fdatasync works per file, not per fd */
    int efd;    /* eventfd: the thread adds 1 when a sync finished */
    uint64_t asked, done;
    int err, stop;
};

static void *sync_main(void *arg) {
    struct store_sync *y = arg;
    uint64_t target, one = 1;
    int e;
    pthread_mutex_lock(&y->mu);
    for (;;) {
        while (!y->stop && y->asked == y->done)
            pthread_cond_wait(&y->wake, &y->mu);
        if (y->asked == y->done)
            break; /* stopping with nothing asked */
        target = y->asked;
        pthread_mutex_unlock(&y->mu);
        e = fdatasync(y->wal_fd) == 0 ? 0 : errno;
        pthread_mutex_lock(&y->mu);
        y->done = target;
        if (e && !y->err)
            y->err = e;
        pthread_cond_broadcast(&y->finished);
        /* Under mu, so the loop cannot close efd meanwhile (it joins first). */
        if (write(y->efd, &one, sizeof one) < 0 && errno != EAGAIN)
            y->err = y->err ? y->err : errno;
    }
    pthread_mutex_unlock(&y->mu);
    return NULL;
}

/* Hands the committed group (its callbacks, still in the store, and the
 * highest event seq it inserted) to the sync thread. */
static void sync_ask(struct store *s, int64_t evt_seq, int64_t t0) {
    struct store_cb *tmp = s->inflight;
    size_t cap = s->inflight_cap;
    /* Swap arrays: the open group's list becomes the in-flight one. */
    s->inflight = s->cbs;
    s->inflight_cap = s->cap;
    s->ninflight = s->ncbs;
    s->cbs = tmp;
    s->cap = cap;
    s->ncbs = 0;
    s->inflight_evt_seq = evt_seq;
    s->inflight_t0 = t0;
    s->sync_busy = 1;
    event_add(s->sync_ev, NULL);
    pthread_mutex_lock(&s->sync->mu);
    s->sync->asked++;
    pthread_cond_signal(&s->sync->wake);
    pthread_mutex_unlock(&s->sync->mu);
}

/* A failed fdatasync leaves the kernel's page cache in an unknown state
 * (the pages may be marked clean but never written): the only safe answer
 * is to stop and let the next start recover from what is on disk, as
 * PostgreSQL does. */
static void sync_failed(int err) {
    log_msg(LOG_ERROR, "store: fdatasync of the WAL failed: %s; stopping so that the next"
                       " start recovers from the disk", strerror(err));
    _exit(EXIT_FAILURE);
}

/* The in-flight group is durable: advance the watermarks, run its
 * callbacks, and commit the group that filled meanwhile. */
static void sync_finish(struct store *s) {
    struct store_cb *list;
    size_t n;
    int err;
    pthread_mutex_lock(&s->sync->mu);
    err = s->sync->err;
    pthread_mutex_unlock(&s->sync->mu);
    if (err)
        sync_failed(err);
    s->sync_busy = 0;
    event_del(s->sync_ev);
    watermarks_advance(s, 0, s->inflight_evt_seq);
    metrics_store_commit(util_mono_ms() - s->inflight_t0);
    list = s->inflight;
    n = s->ninflight;
    s->ninflight = 0;
    /* Callbacks never reach inflight (they register in the open group), so
     * the array is stable while they run. Not nested: their writes join
     * the group committed below, in this same loop turn. */
    callbacks_run(s, list, n, 1, 0);
    if (s->deferred) {
        s->deferred = 0;
        s->scheduled = 0;
    }
    if (s->in_txn || s->failed || s->ncbs || s->nwcbs)
        group_schedule(s);
}

/* The eventfd said a sync finished (or an old count is left over from a
 * sync store_flush already finished; then nothing is in flight). */
static void store_sync_cb(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    uint64_t count, done;
    UNUSED(what);
    if (read(fd, &count, sizeof count) < 0 && errno != EAGAIN)
        log_msg(LOG_WARN, "store: reading the sync eventfd: %s", strerror(errno));
    if (!s->sync_busy)
        return;
    pthread_mutex_lock(&s->sync->mu);
    done = s->sync->done;
    pthread_mutex_unlock(&s->sync->mu);
    if (done == s->sync->asked) /* asked is written by the loop only */
        sync_finish(s);
}

/* Blocks until the in-flight group is durable, then finishes it. */
static void sync_wait(struct store *s) {
    if (!s->sync_busy)
        return;
    pthread_mutex_lock(&s->sync->mu);
    while (s->sync->done != s->sync->asked)
        pthread_cond_wait(&s->sync->finished, &s->sync->mu);
    pthread_mutex_unlock(&s->sync->mu);
    sync_finish(s);
}

/* ---- the checkpoint thread ---- */

/* Shared between the loop and the checkpoint thread; asked, running and
 * stop are guarded by mu; db belongs to the thread until it is joined. */
struct store_ckpt {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    sqlite3 *db; /* second connection, synchronous=FULL: syncs WAL, then DB */
    int asked, running, stop;
};

static void *ckpt_main(void *arg) {
    struct store_ckpt *k = arg;
    int rc, nlog, ncopied;
    pthread_mutex_lock(&k->mu);
    for (;;) {
        while (!k->stop && !k->asked)
            pthread_cond_wait(&k->wake, &k->mu);
        if (k->stop)
            break;
        k->asked = 0;
        k->running = 1;
        pthread_mutex_unlock(&k->mu);
        /* PASSIVE: copies what no reader still needs, never waits for a lock. */
        rc = sqlite3_wal_checkpoint_v2(k->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &ncopied);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            log_msg(LOG_WARN, "store: checkpoint: %s", sqlite3_errmsg(k->db));
        pthread_mutex_lock(&k->mu);
        k->running = 0;
        pthread_cond_broadcast(&k->idle);
    }
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

static int store_wal_hook(void *arg, sqlite3 *db, const char *name, int nframes) {
    struct store *s = arg;
    UNUSED(db);
    UNUSED(name);
    s->wal_frames = nframes;
    return SQLITE_OK;
}

/* After a COMMIT: asks the thread for a checkpoint when the WAL grew by
 * STORE_CKPT_FRAMES since the last one asked; past STORE_RESTART_FRAMES,
 * with the thread idle (so only the tail since its last pass is left),
 * checkpoints on the loop so that the next write restarts the WAL. That
 * costs the loop two syncs once per STORE_RESTART_FRAMES frames (64 MiB).
 * Past twice that, the disk cannot copy as fast as the load writes: the
 * loop waits for the thread (back-pressure) rather than let the WAL grow
 * without bound. */
static void wal_maintain(struct store *s) {
    struct store_ckpt *k = s->ckpt;
    int busy, nlog, ncopied;
    if (!k)
        return;
    if (s->wal_frames < s->ckpt_asked_at)
        s->ckpt_asked_at = 0; /* the WAL restarted */
    if (s->wal_frames - s->ckpt_asked_at < STORE_CKPT_FRAMES)
        return;
    pthread_mutex_lock(&k->mu);
    if (s->wal_frames >= 2 * STORE_RESTART_FRAMES) {
        k->asked = 0;
        while (k->running)
            pthread_cond_wait(&k->idle, &k->mu);
    }
    busy = k->running || k->asked;
    if (!busy && s->wal_frames < STORE_RESTART_FRAMES) {
        k->asked = 1;
        pthread_cond_signal(&k->wake);
    }
    pthread_mutex_unlock(&k->mu);
    if (busy)
        return;
    s->ckpt_asked_at = s->wal_frames;
    if (s->wal_frames >= STORE_RESTART_FRAMES &&
        sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &ncopied) !=
            SQLITE_OK)
        log_msg(LOG_WARN, "store: checkpoint: %s", sqlite3_errmsg(s->db));
}

/* ---- committing a group ---- */

/* Ends the open group. Its callbacks run now when there is nothing to wait
 * for (a rollback, a group that wrote nothing, or sync=normal) or when
 * sync_now asks to fdatasync here (store_flush), else once the sync thread
 * has made the WAL durable. Only called with no group in flight, so every
 * earlier group is durable already. Returns 1 when the group committed
 * (or was empty), 0 when it was rolled back. */
static int group_commit(struct store *s, int sync_now) {
    int wrote = s->in_txn && !s->failed, ok;
    int64_t t0 = util_mono_ms(), evt_seq = s->group_evt_seq;
    struct cb_list durable;
    ok = group_end(s);
    if (ok)
        watermarks_advance(s, s->group_dlv_seq, 0);
    s->group_dlv_seq = s->group_evt_seq = 0;
    /* Everything about this group is settled before any callback runs: a
     * written callback may write and register callbacks, which belong to
     * the next group; and the tail checkpoint needs no transaction open. */
    if (ok && wrote) {
        wal_maintain(s);
        if (s->sync && !sync_now) {
            sync_ask(s, evt_seq, t0);
            group_written_callbacks(s, ok);
            return ok;
        }
        if (s->sync && fdatasync(s->sync->wal_fd) != 0)
            sync_failed(errno);
    }
    if (ok)
        watermarks_advance(s, 0, evt_seq);
    if (wrote)
        metrics_store_commit(util_mono_ms() - t0);
    durable = group_detach(s);
    group_written_callbacks(s, ok);
    group_callbacks(s, durable, ok);
    return ok;
}

static void store_commit_cb(evutil_socket_t fd, short what, void *arg) {
    struct store *s = arg;
    UNUSED(fd);
    UNUSED(what);
    if (s->sync_busy) {
        /* Stays "scheduled": sync_finish reschedules it. */
        s->deferred = 1;
        return;
    }
    s->scheduled = 0;
    group_commit(s, 0);
}

int store_on_commit(struct store *s, store_commit_fn fn, void *arg) {
    if (cbs_append(&s->cbs, &s->ncbs, &s->cap, fn, arg) < 0)
        return -1;
    group_schedule(s);
    return 0;
}

int store_on_written(struct store *s, store_commit_fn fn, void *arg) {
    if (cbs_append(&s->wcbs, &s->nwcbs, &s->wcap, fn, arg) < 0)
        return -1;
    group_schedule(s);
    return 0;
}

int store_idle(const struct store *s) {
    return !s->in_txn && s->ncbs == 0 && s->nwcbs == 0 && !s->sync_busy;
}

int store_flush(struct store *s) {
    if (s->scheduled) {
        event_del(s->commit_ev);
        s->scheduled = 0;
    }
    s->deferred = 0;
    sync_wait(s); /* may open a group from its callbacks: committed below */
    if (s->scheduled) {
        event_del(s->commit_ev);
        s->scheduled = 0;
    }
    return group_commit(s, 1) ? 0 : -1;
}

int store_ping(struct store *s) {
    sqlite3_stmt *st = s->st[ST_PING];
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_ROW;
}

/* ---- starting and stopping the threads ---- */

/* Starts a helper thread with every signal blocked: SIGTERM, SIGHUP and
 * the rest are the loop's, and a syscall of a helper is never cut short. */
static int thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &old) != 0)
        return -1;
    rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Starts the sync thread on the WAL SQLite writes (which exists: store_open
 * has read and written in WAL mode by now; named by SQLite, which resolves
 * a symlinked database to the real file and keeps the WAL beside it). Also
 * syncs its directory once, so the WAL's own directory entry is durable
 * before any commit counts on it. */
static int sync_start(struct store *s, struct event_base *base, char *err, size_t errlen) {
    struct store_sync *y;
    const char *db_file = sqlite3_db_filename(s->db, "main");
    char *wal = NULL, *dir = NULL, *slash;
    int dfd, ret = -1;
    y = calloc(1, sizeof *y);
    if (!y || !db_file || !sqlite3_filename_wal(db_file) ||
        !(wal = strdup(sqlite3_filename_wal(db_file))) || !(dir = strdup(wal))) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    y->wal_fd = y->efd = -1;
    y->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
    if (y->wal_fd < 0) {
        store_err(err, errlen, "store: open %s: %s", wal, strerror(errno));
        goto done;
    }
    slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        store_err(err, errlen, "store: syncing the directory of %s: %s", wal, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        goto done;
    }
    close(dfd);
    y->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (y->efd < 0) {
        store_err(err, errlen, "store: eventfd: %s", strerror(errno));
        goto done;
    }
    s->sync_ev = event_new(base, y->efd, EV_READ | EV_PERSIST, store_sync_cb, s);
    if (!s->sync_ev) {
        store_err(err, errlen, "store: cannot create the sync event");
        goto done;
    }
    pthread_mutex_init(&y->mu, NULL);
    pthread_cond_init(&y->wake, NULL);
    pthread_cond_init(&y->finished, NULL);
    if (thread_start(&y->thread, sync_main, y) != 0) {
        store_err(err, errlen, "store: cannot start the sync thread");
        pthread_mutex_destroy(&y->mu);
        pthread_cond_destroy(&y->wake);
        pthread_cond_destroy(&y->finished);
        event_free(s->sync_ev);
        s->sync_ev = NULL;
        goto done;
    }
    s->sync = y;
    y = NULL;
    ret = 0;
done:
    if (y) {
        if (y->wal_fd >= 0)
            close(y->wal_fd);
        if (y->efd >= 0)
            close(y->efd);
        free(y);
    }
    free(wal);
    free(dir);
    return ret;
}

/* Finishes what is in flight, then stops and joins the sync thread. */
static void sync_stop(struct store *s) {
    struct store_sync *y = s->sync;
    if (!y)
        return;
    sync_wait(s);
    pthread_mutex_lock(&y->mu);
    y->stop = 1;
    pthread_cond_signal(&y->wake);
    pthread_mutex_unlock(&y->mu);
    pthread_join(y->thread, NULL);
    pthread_mutex_destroy(&y->mu);
    pthread_cond_destroy(&y->wake);
    pthread_cond_destroy(&y->finished);
    event_free(s->sync_ev);
    s->sync_ev = NULL;
    close(y->wal_fd);
    close(y->efd);
    free(y);
    s->sync = NULL;
}

/* Opens the checkpoint connection and starts its thread; from here on the
 * loop connection never checkpoints by itself (the WAL hook replaces
 * SQLite's auto-checkpoint). */
static int ckpt_start(struct store *s, const char *path, char *err, size_t errlen) {
    struct store_ckpt *k = calloc(1, sizeof *k);
    if (!k) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (sqlite3_open_v2(path, &k->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(k->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: opening the checkpoint connection: %s",
                  k->db ? sqlite3_errmsg(k->db) : "out of memory");
        sqlite3_close(k->db);
        free(k);
        return -1;
    }
    sqlite3_busy_timeout(k->db, STORE_BUSY_MS);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->wake, NULL);
    pthread_cond_init(&k->idle, NULL);
    if (thread_start(&k->thread, ckpt_main, k) != 0) {
        store_err(err, errlen, "store: cannot start the checkpoint thread");
        pthread_mutex_destroy(&k->mu);
        pthread_cond_destroy(&k->wake);
        pthread_cond_destroy(&k->idle);
        sqlite3_close(k->db);
        free(k);
        return -1;
    }
    s->ckpt = k;
    sqlite3_wal_hook(s->db, store_wal_hook, s);
    return 0;
}

static void ckpt_stop(struct store *s) {
    struct store_ckpt *k = s->ckpt;
    if (!k)
        return;
    sqlite3_wal_hook(s->db, NULL, NULL);
    pthread_mutex_lock(&k->mu);
    k->stop = 1;
    pthread_cond_signal(&k->wake);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->wake);
    pthread_cond_destroy(&k->idle);
    if (sqlite3_close(k->db) != SQLITE_OK)
        log_msg(LOG_ERROR, "store: closing the checkpoint connection: %s", sqlite3_errmsg(k->db));
    free(k);
    s->ckpt = NULL;
}

/* ---- open and close ---- */

/* Parses "sqlite:PATH[?sync=normal|full]" into a new path (joined to
 * base_dir when relative) and *sync_full. Returns NULL with a reason. */
static char *store_url_parse(const char *url, const char *base_dir, int *sync_full, char *err,
                             size_t errlen) {
    static const char scheme[] = "sqlite:";
    const char *p, *q;
    size_t plen;
    char *path = NULL;
    if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0 || !url[sizeof scheme - 1]) {
        store_err(err, errlen, "store: unsupported url '%s' (use sqlite:PATH)", url ? url : "");
        return NULL;
    }
    p = url + sizeof scheme - 1;
    q = strchr(p, '?');
    plen = q ? (size_t)(q - p) : strlen(p);
    if (plen == 0) {
        store_err(err, errlen, "store: unsupported url '%s' (use sqlite:PATH)", url);
        return NULL;
    }
    *sync_full = 1;
    if (q) {
        if (strcmp(q + 1, "sync=normal") == 0) {
            *sync_full = 0;
        } else if (strcmp(q + 1, "sync=full") != 0) {
            store_err(err, errlen, "store: unsupported option '%s' in url (use sync=normal|full)",
                      q + 1);
            return NULL;
        }
    }
    if (p[0] == '/' || !base_dir || !base_dir[0]) {
        path = malloc(plen + 1);
        if (path)
            snprintf(path, plen + 1, "%.*s", (int)plen, p);
    } else {
        size_t blen = strlen(base_dir), n = blen + 1 + plen + 1;
        path = malloc(n);
        if (path)
            snprintf(path, n, "%s%s%.*s", base_dir, base_dir[blen - 1] == '/' ? "" : "/", (int)plen,
                     p);
    }
    if (!path)
        store_err(err, errlen, "store: out of memory");
    return path;
}

/* Runs a statement that returns at most one integer; *out gets it (or 0). */
static int exec_int(sqlite3 *db, const char *sql, int64_t *out) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        rc = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Creates the schema of a new database, or checks an existing one's version. */
static int store_schema(sqlite3 *db, char *err, size_t errlen) {
    int64_t version = 0;
    char sql[64];
    if (exec_int(db, "PRAGMA user_version", &version) != SQLITE_OK)
        goto fail;
    if (version == STORE_SCHEMA_VERSION)
        return 0;
    if (version == 1 || version == 2) {
        /* 1 -> 2: drop the insert-counting trigger (the store counts).
         * 2 -> 3: the global due index goes; deliveries_ep_due (created
         * with the endpoint indexes, right after this) replaces it. */
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            goto fail;
        if (sqlite3_exec(db, "DROP TRIGGER IF EXISTS deliveries_count_ins", NULL, NULL, NULL) !=
                SQLITE_OK ||
            sqlite3_exec(db, "DROP INDEX IF EXISTS deliveries_due", NULL, NULL, NULL) !=
                SQLITE_OK ||
            sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            goto fail_txn;
        return 0;
    }
    if (version != 0) {
        store_err(err, errlen, "store: schema version %lld, this waybill knows %d",
                  (long long)version, STORE_SCHEMA_VERSION);
        return -1;
    }
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", STORE_SCHEMA_VERSION);
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    /* Another process may have created it between our check and BEGIN. */
    if (exec_int(db, "PRAGMA user_version", &version) != SQLITE_OK)
        goto fail_txn;
    if (version == 0 && (sqlite3_exec(db, store_schema_sql, NULL, NULL, NULL) != SQLITE_OK ||
                         sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK))
        goto fail_txn;
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail_txn;
    return 0;
fail_txn:
    store_err(err, errlen, "store: creating schema: %s", sqlite3_errmsg(db));
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
fail:
    store_err(err, errlen, "store: creating schema: %s", sqlite3_errmsg(db));
    return -1;
}

static int store_admin_schema(sqlite3 *db, char *err, size_t errlen);
static int store_batch_schema(sqlite3 *db, char *err, size_t errlen);

struct store *store_open(struct event_base *base, const char *url, const char *base_dir, char *err,
                         size_t errlen) {
    struct store *s = NULL;
    char *path = NULL;
    sqlite3_stmt *st = NULL;
    int sync_full = 1, i, prio;

    path = store_url_parse(url, base_dir, &sync_full, err, errlen);
    if (!path)
        goto fail;
    s = calloc(1, sizeof *s);
    if (!s) {
        store_err(err, errlen, "store: out of memory");
        goto fail;
    }
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: open %s: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);

    /* journal_mode answers the mode in force: anything but wal is an error. */
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        store_err(err, errlen, "store: %s: journal_mode: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
        store_err(err, errlen, "store: %s: cannot use WAL mode (journal_mode is %s)", path,
                  sqlite3_column_text(st, 0));
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* NORMAL: in WAL mode COMMIT does not sync; with sync=full the sync
     * thread does, off the loop (see the top of this file). */
    if (sqlite3_exec(s->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA cache_size = -16384", NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: %s: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (store_schema(s->db, err, errlen) < 0 || store_admin_schema(s->db, err, errlen) < 0 ||
        store_batch_schema(s->db, err, errlen) < 0)
        goto fail;
    if (sqlite3_exec(s->db, store_schema_endpoints_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: %s: endpoint state: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    /* Nonces joined the schema later: created when missing, so stores made
     * before them open unchanged. */
    if (sqlite3_exec(s->db, store_nonce_sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating nonces: %s", sqlite3_errmsg(s->db));
        goto fail;
    }

    for (i = 0; i < ST_COUNT_; i++) {
        if (sqlite3_prepare_v3(s->db, store_stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            store_err(err, errlen, "store: preparing statement %d: %s", i, sqlite3_errmsg(s->db));
            goto fail;
        }
    }

    /* One process owns an SQLite store: leases still held were left by a
     * run that died; those deliveries are due now. */
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE deliveries SET lease_until = 0, next_at = ?1"
                           " WHERE lease_until > 0",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_int64(st, 1, util_now_ms()) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
        store_err(err, errlen, "store: releasing leases: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    if (sqlite3_changes(s->db) > 0)
        log_msg(LOG_INFO, "store: released %d deliveries leased by an earlier run",
                sqlite3_changes(s->db));
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT IFNULL(MAX(seq), 0) FROM deliveries", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    s->committed_dlv_seq = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT IFNULL(MAX(seq), 0) FROM events", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    s->committed_evt_seq = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;

    s->commit_ev = event_new(base, -1, 0, store_commit_cb, s);
    if (!s->commit_ev) {
        store_err(err, errlen, "store: cannot create commit event");
        goto fail;
    }
    /* Lowest priority: the commit runs after every ready request of a turn. */
    prio = event_base_get_npriorities(base) - 1;
    if (prio > 0)
        event_priority_set(s->commit_ev, prio);
    if (ckpt_start(s, path, err, errlen) < 0)
        goto fail;
    if (sync_full && sync_start(s, base, err, errlen) < 0)
        goto fail;
    free(path);
    return s;

fail:
    sqlite3_finalize(st);
    free(path);
    if (s) {
        sync_stop(s);
        ckpt_stop(s);
        if (s->commit_ev)
            event_free(s->commit_ev);
        for (i = 0; i < ST_COUNT_; i++)
            sqlite3_finalize(s->st[i]);
        sqlite3_close(s->db);
        free(s);
    }
    return NULL;
}

void store_free(struct store *s) {
    int i, rounds = 0;
    if (!s)
        return;
    /* Callbacks may write and register more callbacks: drain them all, or
     * sqlite3_close would roll their group back unseen. */
    do {
        store_flush(s);
    } while ((s->in_txn || s->failed || s->ncbs || s->nwcbs) && ++rounds < 100);
    if (s->in_txn || s->ncbs || s->nwcbs)
        log_msg(LOG_ERROR, "store: closing with writes still coming from commit callbacks");
    /* The threads go first: the loop connection must be the last one, so
     * that its close checkpoints (syncing WAL and database) and removes the
     * WAL; a close with the checkpoint connection still open would not. */
    sync_stop(s);
    ckpt_stop(s);
    event_free(s->commit_ev);
    for (i = 0; i < ST_COUNT_; i++)
        sqlite3_finalize(s->st[i]);
    for (i = 0; i < 3; i++)
        sqlite3_finalize(s->ep_st[i]);
    if (sqlite3_close(s->db) != SQLITE_OK)
        log_msg(LOG_ERROR, "store: close: %s", sqlite3_errmsg(s->db));
    free(s->cbs);
    free(s->wcbs);
    free(s->inflight);
    free(s);
}

/* ---- nonces ---- */

int store_nonce_put(struct store *s, const char *source, const char *nonce, const char *digest,
                    int64_t now_ms, int64_t keep_ms, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int rc, ret = -1;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    /* A nonce older than keep_ms can only come back with a timestamp the
     * tolerance refuses: forget those, at most once a minute. */
    if (now_ms - s->nonces_pruned_at >= 60000) {
        s->nonces_pruned_at = now_ms;
        if (sqlite3_prepare_v2(s->db, "DELETE FROM nonces WHERE source = ?1 AND seen_at < ?2", -1,
                               &st, NULL) != SQLITE_OK ||
            bind_text(st, 1, source) || sqlite3_bind_int64(st, 2, now_ms - keep_ms) ||
            sqlite3_step(st) != SQLITE_DONE) {
            group_fail(s, "nonce prune", err, errlen);
            goto done;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO nonces (source, nonce, digest, seen_at)"
                           " VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK ||
        bind_text(st, 1, source) || bind_text(st, 2, nonce) || bind_text(st, 3, digest) ||
        sqlite3_bind_int64(st, 4, now_ms) || sqlite3_step(st) != SQLITE_DONE) {
        group_fail(s, "nonce insert", err, errlen);
        goto done;
    }
    if (sqlite3_changes(s->db) == 1) {
        ret = 0;
        goto done;
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(s->db, "SELECT digest FROM nonces WHERE source = ?1 AND nonce = ?2",
                           -1, &st, NULL) != SQLITE_OK ||
        bind_text(st, 1, source) || bind_text(st, 2, nonce) ||
        (rc = sqlite3_step(st)) != SQLITE_ROW) {
        group_fail(s, "nonce lookup", err, errlen);
        goto done;
    }
    ret = strcmp((const char *)sqlite3_column_text(st, 0), digest) == 0 ? STORE_DUP
                                                                        : STORE_REPLAY;
done:
    sqlite3_finalize(st);
    return ret;
}

/* ---- events ---- */

int store_event_put(struct store *s, const struct store_event *ev, char *dup_id, size_t dup_len,
                    char *err, size_t errlen) {
    sqlite3_stmt *st = s->st[ST_EVT_INSERT], *dup = s->st[ST_EVT_DUP];
    int rc, ret = -1;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    if (bind_text(st, 1, ev->id) || bind_text(st, 2, ev->source) ||
        bind_text(st, 3, ev->source_id) || bind_text(st, 4, ev->type) ||
        bind_text(st, 5, ev->status ? ev->status : "received") || bind_text(st, 6, ev->error) ||
        bind_text(st, 7, ev->created_at) || sqlite3_bind_int64(st, 8, ev->received_at) ||
        bind_text(st, 9, ev->headers_json) || bind_text(st, 10, ev->data_json) ||
        bind_blob(st, 11, ev->raw, ev->raw_len)) {
        group_fail(s, "event insert", err, errlen);
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        s->group_evt_seq = sqlite3_last_insert_rowid(s->db);
        ret = 0;
        goto done;
    }
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        /* A failed constraint undoes only this statement; look for the
         * first copy (in the database or in the open group). */
        sqlite3_reset(st);
        if (bind_text(dup, 1, ev->source) || bind_text(dup, 2, ev->source_id)) {
            group_fail(s, "event lookup", err, errlen);
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
    group_fail(s, "event insert", err, errlen);
done:
    stmt_done(st);
    stmt_done(dup);
    return ret;
}

int store_event_routed(struct store *s, const char *event_id, const char *status, const char *error,
                       const struct store_delivery_new *d, size_t n, char *err, size_t errlen) {
    sqlite3_stmt *first = s->st[ST_EVT_STATUS_FIRST], *up = s->st[ST_EVT_STATUS],
                 *ins = s->st[ST_DLV_INSERT];
    char id[UTIL_ID_MAX];
    int64_t now = util_now_ms();
    size_t i;
    int ret = -1, is_first;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    /* The event first: an unknown id writes nothing and keeps the group.
     * Its first routing (status still "received") derives the delivery ids
     * from the event: if a power cut takes the routing back after the
     * deliveries went out, routing again sends them under the same ids,
     * which receivers can dedupe. Later routings (replays) are new sends. */
    if (bind_text(first, 1, event_id) || bind_text(first, 2, status) ||
        bind_text(first, 3, error) || sqlite3_step(first) != SQLITE_DONE) {
        group_fail(s, "event status", err, errlen);
        goto done;
    }
    is_first = sqlite3_changes(s->db) == 1;
    if (!is_first) {
        if (bind_text(up, 1, event_id) || bind_text(up, 2, status) || bind_text(up, 3, error) ||
            sqlite3_step(up) != SQLITE_DONE) {
            group_fail(s, "event status", err, errlen);
            goto done;
        }
        if (sqlite3_changes(s->db) != 1) {
            store_err(err, errlen, "store: unknown event %s", event_id);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        if (is_first)
            util_id_derive("dlv_", event_id, d[i].endpoint, (unsigned)i, id, sizeof id);
        else
            util_id_new("dlv_", id, sizeof id);
        if (bind_text(ins, 1, id) || bind_text(ins, 2, event_id) ||
            bind_text(ins, 3, d[i].endpoint) || bind_text(ins, 4, d[i].event_type) ||
            bind_text(ins, 5, d[i].status ? d[i].status : "pending") ||
            bind_blob(ins, 6, d[i].payload ? d[i].payload : "", d[i].payload_len) ||
            bind_text(ins, 7, d[i].content_type) || bind_text(ins, 8, d[i].headers_json) ||
            sqlite3_bind_int64(ins, 9, d[i].next_at) || sqlite3_bind_int64(ins, 10, now)) {
            group_fail(s, "delivery insert", err, errlen);
            goto done;
        }
        if (sqlite3_step(ins) != SQLITE_DONE) {
            /* Earlier rows of this call are in the group: fail it all. */
            group_fail(s, "delivery insert", err, errlen);
            goto done;
        }
        s->group_dlv_seq = sqlite3_last_insert_rowid(s->db);
        stmt_done(ins);
        if (counts_add(s, d[i].status ? d[i].status : "pending", 1) < 0) {
            group_fail(s, "delivery counts", err, errlen);
            goto done;
        }
    }
    ret = 0;
done:
    stmt_done(first);
    stmt_done(up);
    stmt_done(ins);
    return ret;
}

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
        free(r->raw);
    }
    free(rows);
}

/* Fills r from a row whose columns are (seq, id, source, source_id, type,
 * created_at, status, error, headers, data, raw, received_at): the order
 * both event reads select. Sets *oom when a copy failed. */
static void event_row_read(sqlite3_stmt *st, struct store_event_row *r, int *oom) {
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
}

int store_events_unrouted(struct store *s, int64_t after_seq, size_t max,
                          struct store_event_row **rows, size_t *n, char *err, size_t errlen) {
    sqlite3_stmt *st = s->st[ST_EVT_UNROUTED];
    struct store_event_row *out = NULL, *r;
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
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct store_event_row *p = realloc(out, ncap * sizeof *p);
            if (!p)
                goto oom;
            out = p;
            cap = ncap;
        }
        r = &out[cnt++];
        memset(r, 0, sizeof *r);
        event_row_read(st, r, &oom);
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

/* ---- JSON for the admin API ---- */

/* Decodes one UTF-8 sequence at p (n bytes left): its length when valid
 * (no overlongs, surrogates or values past U+10FFFF), else 0. */
static size_t utf8_seq_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t len, i;
    unsigned long cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

/* A JSON string of n bytes at p, each invalid UTF-8 byte replaced by U+FFFD
 * (a response body may be Latin-1 or cut mid-character); null for NULL.
 * Returns new, or NULL when out of memory. */
static json_t *json_text(const void *p, size_t n) {
    const unsigned char *b = p;
    struct util_buf buf = {NULL, 0, 0};
    json_t *j;
    size_t i = 0, k;
    if (!p)
        return json_null();
    j = json_stringn(p, n);
    if (j)
        return j;
    while (i < n) {
        k = utf8_seq_len(b + i, n - i);
        if (k ? util_buf_append(&buf, b + i, k) : util_buf_append(&buf, "\xEF\xBF\xBD", 3)) {
            util_buf_free(&buf);
            return NULL;
        }
        i += k ? k : 1;
    }
    j = json_stringn(buf.p ? buf.p : "", buf.len);
    util_buf_free(&buf);
    return j;
}

static json_t *json_col_text(sqlite3_stmt *st, int i) {
    const void *p = sqlite3_column_text(st, i);
    return p ? json_text(p, (size_t)sqlite3_column_bytes(st, i)) : json_null();
}

static json_t *json_col_time(sqlite3_stmt *st, int i) {
    char t[32];
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    util_time_rfc3339(sqlite3_column_int64(st, i), t, sizeof t);
    return json_string(t);
}

/* The stored data text parsed back into JSON (kept as a string if it is not). */
static json_t *json_col_data(sqlite3_stmt *st, int i) {
    const char *p = (const char *)sqlite3_column_text(st, i);
    json_t *j;
    if (!p)
        return json_null();
    j = json_loadb(p, (size_t)sqlite3_column_bytes(st, i), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    return j ? j : json_col_text(st, i);
}

/* The attempts of one delivery as a new array, or NULL (err set). */
static json_t *store_attempts_json(struct store *s, const char *delivery_id, char *err,
                                   size_t errlen) {
    sqlite3_stmt *st = s->st[ST_ATT_BY_DLV];
    json_t *arr = json_array(), *a;
    int rc, bad = 0;
    if (!arr || bind_text(st, 1, delivery_id))
        goto oom;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        a = json_object();
        if (!a)
            goto oom;
        bad |= json_object_set_new(a, "n", json_integer(sqlite3_column_int64(st, 0)));
        bad |= json_object_set_new(a, "at", json_col_time(st, 1));
        bad |= json_object_set_new(a, "status_code", json_integer(sqlite3_column_int64(st, 2)));
        bad |= json_object_set_new(a, "latency_ms", json_integer(sqlite3_column_int64(st, 3)));
        bad |= json_object_set_new(a, "error", json_col_text(st, 4));
        bad |= json_object_set_new(
            a, "response",
            sqlite3_column_type(st, 5) == SQLITE_NULL
                ? json_null()
                : json_text(sqlite3_column_blob(st, 5) ? sqlite3_column_blob(st, 5) : "",
                            (size_t)sqlite3_column_bytes(st, 5)));
        bad |= json_array_append_new(arr, a);
        if (bad)
            goto oom;
    }
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: event json: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    stmt_done(st);
    return arr;
oom:
    store_err(err, errlen, "store: out of memory");
fail:
    stmt_done(st);
    json_decref(arr);
    return NULL;
}

/* Reads the deliveries of event_id into a new array, or NULL (err set).
 * Their ids are read first so the attempts statement runs on its own. */
static json_t *store_deliveries_json(struct store *s, const char *event_id, char *err,
                                     size_t errlen) {
    sqlite3_stmt *st = s->st[ST_DLV_BY_EVENT];
    json_t *arr = json_array(), *d, *att;
    size_t i;
    int rc, bad = 0;
    if (!arr || bind_text(st, 1, event_id))
        goto oom;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        d = json_object();
        if (!d)
            goto oom;
        bad |= json_object_set_new(d, "id", json_col_text(st, 0));
        bad |= json_object_set_new(d, "endpoint", json_col_text(st, 1));
        bad |= json_object_set_new(d, "status", json_col_text(st, 2));
        bad |= json_object_set_new(d, "batch", json_boolean(sqlite3_column_int(st, 3)));
        bad |= json_array_append_new(arr, d);
        if (bad)
            goto oom;
    }
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: event json: %s", sqlite3_errmsg(s->db));
        goto fail;
    }
    stmt_done(st);
    json_array_foreach(arr, i, d) {
        att = store_attempts_json(s, json_string_value(json_object_get(d, "id")), err, errlen);
        if (!att || json_object_set_new(d, "attempts", att))
            goto fail;
    }
    return arr;
oom:
    store_err(err, errlen, "store: out of memory");
fail:
    stmt_done(st);
    json_decref(arr);
    return NULL;
}

static int store_batch_open_json(struct store *s, const char *event_id, json_t *arr, char *err,
                                 size_t errlen);

json_t *store_event_json(struct store *s, const char *id, char *err, size_t errlen) {
    sqlite3_stmt *st = s->st[ST_EVT_GET];
    json_t *ev = NULL, *dl;
    int rc, bad = 0;

    if (err && errlen)
        err[0] = '\0';
    if (bind_text(st, 1, id))
        goto sqlerr;
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) { /* unknown id: NULL with err empty */
        stmt_done(st);
        return NULL;
    }
    if (rc != SQLITE_ROW)
        goto sqlerr;
    ev = json_object();
    if (!ev)
        goto oom;
    bad |= json_object_set_new(ev, "id", json_col_text(st, 0));
    bad |= json_object_set_new(ev, "source", json_col_text(st, 1));
    bad |= json_object_set_new(ev, "source_id", json_col_text(st, 2));
    bad |= json_object_set_new(ev, "type", json_col_text(st, 3));
    bad |= json_object_set_new(ev, "status", json_col_text(st, 4));
    bad |= json_object_set_new(ev, "received_at", json_col_time(st, 5));
    bad |= json_object_set_new(ev, "created_at", json_col_text(st, 6));
    bad |= json_object_set_new(ev, "data", json_col_data(st, 7));
    bad |= json_object_set_new(ev, "error", json_col_text(st, 8));
    if (bad)
        goto oom;
    stmt_done(st);
    dl = store_deliveries_json(s, id, err, errlen);
    if (dl && store_batch_open_json(s, id, dl, err, errlen) < 0) {
        json_decref(dl);
        dl = NULL;
    }
    if (!dl || json_object_set_new(ev, "deliveries", dl)) {
        if (err && errlen && !err[0])
            store_err(err, errlen, "store: out of memory");
        json_decref(ev);
        return NULL;
    }
    return ev;
sqlerr:
    store_err(err, errlen, "store: event json: %s", sqlite3_errmsg(s->db));
    goto fail;
oom:
    store_err(err, errlen, "store: out of memory");
fail:
    stmt_done(st);
    json_decref(ev);
    return NULL;
}

/* ---- deliveries ---- */

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

/* Fills r from a row whose columns are (seq, id, event_id, endpoint,
 * event_type, content_type, headers, payload, attempts, schedule_pos,
 * next_at, created_at): the order both claims select. Sets *oom when a
 * copy failed. */
static void delivery_row_read(sqlite3_stmt *st, struct store_delivery *r, int *oom) {
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

int store_endpoint_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                             size_t max, struct store_delivery **out, size_t *n, char *err,
                             size_t errlen) {
    sqlite3_stmt *sel = s->st[ST_DLV_CLAIM], *lease = s->st[ST_DLV_LEASE];
    struct store_delivery *rows = NULL, *r;
    size_t cnt = 0, cap = 0, i;
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
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : (max < 16 ? max : 16);
            struct store_delivery *p = realloc(rows, ncap * sizeof *p);
            if (!p)
                goto oom;
            rows = p;
            cap = ncap;
        }
        r = &rows[cnt++];
        memset(r, 0, sizeof *r);
        delivery_row_read(sel, r, &oom);
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
    if (group_begin(s, err, errlen) < 0)
        goto fail;
    for (i = 0; i < cnt; i++) {
        if (sqlite3_bind_int64(lease, 1, rows[i].seq) ||
            sqlite3_bind_int64(lease, 2, now + lease_ms) || sqlite3_step(lease) != SQLITE_DONE) {
            group_fail(s, "claim", err, errlen);
            goto fail;
        }
        stmt_done(lease);
    }
    *out = rows;
    *n = cnt;
    return 0;
oom:
    store_err(err, errlen, "store: out of memory");
fail:
    stmt_done(sel);
    stmt_done(lease);
    store_deliveries_free(rows, cnt);
    return -1;
}

int64_t store_endpoint_next_due(struct store *s, const char *name) {
    sqlite3_stmt *st = s->st[ST_DLV_NEXT_DUE];
    int64_t t = -1;
    int rc;

    if (bind_text(st, 1, name) == SQLITE_OK &&
        sqlite3_bind_int64(st, 2, s->committed_dlv_seq) == SQLITE_OK) {
        rc = sqlite3_step(st);
        t = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? INT64_MAX : -1;
    }
    stmt_done(st);
    return t;
}

void store_delivery_seqs(const struct store *s, int64_t *committed, int64_t *last) {
    *committed = s->committed_dlv_seq;
    *last = s->group_dlv_seq > s->committed_dlv_seq ? s->group_dlv_seq : s->committed_dlv_seq;
}

int store_delivery_lease(struct store *s, int64_t seq, int64_t next_at, int lease, char *err,
                         size_t errlen) {
    sqlite3_stmt *st = s->st[lease ? ST_DLV_LEASE : ST_DLV_RELEASE];

    if (group_begin(s, err, errlen) < 0)
        return -1;
    if (sqlite3_bind_int64(st, 1, seq) || sqlite3_bind_int64(st, 2, next_at) ||
        sqlite3_step(st) != SQLITE_DONE) {
        group_fail(s, lease ? "lease" : "release", err, errlen);
        stmt_done(st);
        return -1;
    }
    stmt_done(st);
    return 0;
}

int store_endpoints_pending(struct store *s, void (*fn)(void *arg, const char *name), void *arg) {
    /* One index seek per endpoint (a skip scan), whatever the backlog. */
    static const char sql[] =
        "WITH RECURSIVE e(name) AS ("
        " SELECT (SELECT min(endpoint) FROM deliveries INDEXED BY deliveries_ep_pending"
        "  WHERE status = 'pending')"
        " UNION ALL"
        " SELECT (SELECT min(endpoint) FROM deliveries INDEXED BY deliveries_ep_pending"
        "  WHERE status = 'pending' AND endpoint > e.name) FROM e WHERE e.name IS NOT NULL)"
        " SELECT name FROM e WHERE name IS NOT NULL";
    sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        fn(arg, (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int store_endpoint_queue(struct store *s, const char *name, int64_t now, int64_t due_cap,
                         int counts, struct store_endpoint_queue *q) {
    /* due is counted up to ?3 rows, so a scrape of a huge backlog stays
     * short; the oldest is the index's first entry; ?4 = 0 skips the
     * pending and held counts (a constant term: no row is visited) */
    static const char sql[] =
        "SELECT (SELECT count(*) FROM deliveries INDEXED BY deliveries_ep_due"
        "  WHERE ?4 AND endpoint = ?1 AND status = 'pending'),"
        " (SELECT count(*) FROM deliveries INDEXED BY deliveries_ep_held"
        "  WHERE ?4 AND endpoint = ?1 AND status = 'held'),"
        " (SELECT count(*) FROM (SELECT 1 FROM deliveries INDEXED BY deliveries_ep_due"
        "  WHERE endpoint = ?1 AND status = 'pending' AND next_at <= ?2 LIMIT ?3)),"
        " (SELECT next_at FROM deliveries INDEXED BY deliveries_ep_due"
        "  WHERE endpoint = ?1 AND status = 'pending' AND next_at <= ?2 ORDER BY next_at LIMIT 1)";
    sqlite3_stmt *st = NULL;
    int ret = -1;

    memset(q, 0, sizeof *q);
    q->oldest_due = INT64_MAX;
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) == SQLITE_OK &&
        bind_text(st, 1, name) == SQLITE_OK && sqlite3_bind_int64(st, 2, now) == SQLITE_OK &&
        sqlite3_bind_int64(st, 3, due_cap) == SQLITE_OK &&
        sqlite3_bind_int(st, 4, counts != 0) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        q->pending = sqlite3_column_int64(st, 0);
        q->held = sqlite3_column_int64(st, 1);
        q->due = sqlite3_column_int64(st, 2);
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            q->oldest_due = sqlite3_column_int64(st, 3);
        ret = 0;
    }
    sqlite3_finalize(st);
    return ret;
}

int store_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                      const char *status, int64_t next_at, int schedule_pos, char *err,
                      size_t errlen) {
    sqlite3_stmt *up = s->st[ST_DLV_OUTCOME], *ins = s->st[ST_ATT_INSERT];
    int ret = -1;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    /* The delivery first: an unknown id writes nothing and keeps the group. */
    if (bind_text(up, 1, delivery_id) || bind_text(up, 2, status) ||
        sqlite3_bind_int64(up, 3, next_at) || sqlite3_bind_int(up, 4, schedule_pos) ||
        sqlite3_bind_int(up, 5, a->n) || sqlite3_step(up) != SQLITE_DONE) {
        group_fail(s, "delivery outcome", err, errlen);
        goto done;
    }
    if (sqlite3_changes(s->db) != 1) {
        store_err(err, errlen, "store: unknown delivery %s", delivery_id);
        goto done;
    }
    if (bind_text(ins, 1, delivery_id) || sqlite3_bind_int(ins, 2, a->n) ||
        sqlite3_bind_int64(ins, 3, a->at) || sqlite3_bind_int(ins, 4, a->status_code) ||
        sqlite3_bind_int64(ins, 5, a->latency_ms) || bind_text(ins, 6, a->error) ||
        bind_blob(ins, 7, a->response, a->response_len) || sqlite3_step(ins) != SQLITE_DONE) {
        group_fail(s, "attempt insert", err, errlen);
        goto done;
    }
    ret = 0;
done:
    stmt_done(up);
    stmt_done(ins);
    return ret;
}

int store_delivery_counts(struct store *s, struct store_counts *c) {
    sqlite3_stmt *st = s->st[ST_COUNTS];
    const char *status;
    int64_t v;
    int rc;
    memset(c, 0, sizeof *c);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        status = (const char *)sqlite3_column_text(st, 0);
        v = sqlite3_column_int64(st, 1);
        if (!status)
            continue;
        if (strcmp(status, "pending") == 0)
            c->pending = v;
        else if (strcmp(status, "held") == 0)
            c->held = v;
        else if (strcmp(status, "failed") == 0)
            c->failed = v;
        else if (strcmp(status, "delivered") == 0)
            c->delivered = v;
    }
    sqlite3_reset(st);
    /* The open group's inserts, not yet in the table. */
    for (int i = 0; i < s->ncounts; i++) {
        status = s->counts[i].status;
        v = s->counts[i].n;
        if (strcmp(status, "pending") == 0)
            c->pending += v;
        else if (strcmp(status, "held") == 0)
            c->held += v;
        else if (strcmp(status, "failed") == 0)
            c->failed += v;
        else if (strcmp(status, "delivered") == 0)
            c->delivered += v;
    }
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- admin API: lists, actions, subscriptions ---- */

/* Subscriptions came after schema version 1: created when missing, so an
 * older store gains the table without a migration step. One per pattern:
 * the unique key is what answers 409. */
static int store_admin_schema(sqlite3 *db, char *err, size_t errlen) {
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS subscriptions ("
                     " seq INTEGER PRIMARY KEY,"
                     " id TEXT NOT NULL UNIQUE,"
                     " event TEXT NOT NULL,"
                     " pattern TEXT NOT NULL UNIQUE,"
                     " url TEXT NOT NULL,"
                     " secret TEXT NOT NULL,"
                     " created_at INTEGER NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating subscriptions: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

/* Prepares sql (admin routes are rare: no cached statement). */
static sqlite3_stmt *store_adhoc(struct store *s, const char *sql, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return NULL;
    }
    return st;
}

/* Runs a page query whose column 0 is seq and the rest map to names; limit
 * + 1 rows were asked for, so an extra row means there is a next page. */
static int store_page_run(struct store *s, sqlite3_stmt *st, const char *const *names,
                          const char *times, size_t limit, json_t **data, int64_t *next,
                          char *err, size_t errlen) {
    json_t *arr = json_array(), *o;
    int64_t last = 0;
    size_t cnt = 0;
    int rc, bad = 0;

    *data = NULL;
    *next = 0;
    if (!arr)
        goto oom;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == limit) {
            *next = last;
            break;
        }
        o = json_object();
        if (!o)
            goto oom;
        for (int i = 0; names[i]; i++) {
            json_t *v;
            if (times[i] == 't')
                v = json_col_time(st, i + 1);
            else if (times[i] == 'i')
                v = sqlite3_column_type(st, i + 1) == SQLITE_NULL
                        ? json_null()
                        : json_integer(sqlite3_column_int64(st, i + 1));
            else
                v = json_col_text(st, i + 1);
            bad |= json_object_set_new(o, names[i], v);
        }
        bad |= json_array_append_new(arr, o);
        if (bad)
            goto oom;
        last = sqlite3_column_int64(st, 0);
        cnt++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        store_err(err, errlen, "store: list: %s", sqlite3_errmsg(s->db));
        json_decref(arr);
        return -1;
    }
    *data = arr;
    return 0;
oom:
    store_err(err, errlen, "store: out of memory");
    json_decref(arr);
    return -1;
}

int store_events_page(struct store *s, const struct store_page *q, json_t **data, int64_t *next,
                      char *err, size_t errlen) {
    static const char *const names[] = {"id",          "source",     "source_id", "type", "status",
                                        "received_at", "created_at", "error",     NULL};
    sqlite3_stmt *st = store_adhoc(
        s,
        "SELECT seq, id, source, source_id, type, status, received_at, created_at, error"
        " FROM events WHERE (?1 IS NULL OR type GLOB ?1) AND (?2 IS NULL OR source = ?2)"
        " AND (?3 IS NULL OR status = ?3) AND (?4 = 0 OR seq < ?4) ORDER BY seq DESC LIMIT ?5",
        err, errlen);
    int ret = -1;

    if (!st)
        return -1;
    if (bind_text(st, 1, q->type) || bind_text(st, 2, q->source) || bind_text(st, 3, q->status) ||
        sqlite3_bind_int64(st, 4, q->after) || sqlite3_bind_int64(st, 5, (int64_t)q->limit + 1))
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
    else
        ret = store_page_run(s, st, names, "sssssts", q->limit, data, next, err, errlen);
    sqlite3_finalize(st);
    return ret;
}

int store_deliveries_page(struct store *s, const struct store_page *q, json_t **data,
                          int64_t *next, char *err, size_t errlen) {
    static const char *const names[] = {
        "id",      "event_id",   "endpoint",   "event_type",       "status", "attempts",
        "next_at", "created_at", "last_status_code", "last_error",  NULL};
    sqlite3_stmt *st = store_adhoc(
        s,
        "SELECT d.seq, d.id, d.event_id, d.endpoint, d.event_type, d.status, d.attempts,"
        " CASE WHEN d.status = 'pending' THEN d.next_at END, d.created_at,"
        " (SELECT a.status_code FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.n DESC"
        "  LIMIT 1),"
        " (SELECT a.error FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.n DESC LIMIT 1)"
        " FROM deliveries d WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR"
        " d.endpoint = ?2) AND (?3 = 0 OR d.seq < ?3) ORDER BY d.seq DESC LIMIT ?4",
        err, errlen);
    int ret = -1;

    if (!st)
        return -1;
    if (bind_text(st, 1, q->status) || bind_text(st, 2, q->endpoint) ||
        sqlite3_bind_int64(st, 3, q->after) || sqlite3_bind_int64(st, 4, (int64_t)q->limit + 1))
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
    else
        ret = store_page_run(s, st, names, "sssssittis", q->limit, data, next, err, errlen);
    sqlite3_finalize(st);
    return ret;
}

int store_event_get(struct store *s, const char *id, struct store_event_row **out, char *err,
                    size_t errlen) {
    struct store_event_row *row = calloc(1, sizeof *row);
    sqlite3_stmt *st = store_adhoc(s,
                                   "SELECT seq, id, source, source_id, type, created_at, status,"
                                   " error, headers, data, raw, received_at FROM events"
                                   " WHERE id = ?1",
                                   err, errlen);
    int rc, oom = 0, ret = -1;

    *out = NULL;
    if (!row || !st) {
        if (!row)
            store_err(err, errlen, "store: out of memory");
        goto done;
    }
    if (bind_text(st, 1, id)) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        ret = 0;
        goto done;
    }
    if (rc != SQLITE_ROW) {
        store_err(err, errlen, "store: event: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    event_row_read(st, row, &oom);
    if (oom) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
    *out = row;
    row = NULL;
    ret = 1;
done:
    store_event_rows_free(row, row ? 1 : 0);
    sqlite3_finalize(st);
    return ret;
}

/* A blob column as JSON when it parses, else as text. */
static json_t *json_col_payload(sqlite3_stmt *st, int i) {
    const void *p = sqlite3_column_blob(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    json_t *j;
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    j = json_loadb(p ? p : "", n, JSON_DECODE_ANY, NULL);
    return j ? j : json_text(p ? p : "", n);
}

int store_event_json_extra(struct store *s, json_t *ev, char *err, size_t errlen) {
    sqlite3_stmt *st = store_adhoc(s, "SELECT raw, headers FROM events WHERE id = ?1", err, errlen);
    sqlite3_stmt *dl = NULL;
    json_t *d, *dels = json_object_get(ev, "deliveries");
    size_t i;
    int bad = 0, ret = -1;

    if (!st)
        return -1;
    if (bind_text(st, 1, json_string_value(json_object_get(ev, "id"))) ||
        sqlite3_step(st) != SQLITE_ROW) {
        store_err(err, errlen, "store: event: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    bad |= json_object_set_new(ev, "raw",
                               sqlite3_column_type(st, 0) == SQLITE_NULL
                                   ? json_null()
                                   : json_text(sqlite3_column_blob(st, 0)
                                                   ? sqlite3_column_blob(st, 0)
                                                   : "",
                                               (size_t)sqlite3_column_bytes(st, 0)));
    bad |= json_object_set_new(ev, "headers", json_col_data(st, 1));
    dl = store_adhoc(s, "SELECT payload, content_type, event_type FROM deliveries WHERE id = ?1",
                     err, errlen);
    if (!dl)
        goto done;
    json_array_foreach(dels, i, d) {
        /* An event waiting in an open batch window lists the window with a
         * null id: there is no delivery row yet. */
        if (!json_is_string(json_object_get(d, "id")))
            continue;
        if (bind_text(dl, 1, json_string_value(json_object_get(d, "id"))) ||
            sqlite3_step(dl) != SQLITE_ROW) {
            store_err(err, errlen, "store: delivery: %s", sqlite3_errmsg(s->db));
            goto done;
        }
        bad |= json_object_set_new(d, "payload", json_col_payload(dl, 0));
        bad |= json_object_set_new(d, "content_type", json_col_text(dl, 1));
        bad |= json_object_set_new(d, "event_type", json_col_text(dl, 2));
        stmt_done(dl);
    }
    if (bad)
        store_err(err, errlen, "store: out of memory");
    else
        ret = 0;
done:
    sqlite3_finalize(st);
    sqlite3_finalize(dl);
    return ret;
}

int store_delivery_retry(struct store *s, const char *id, int64_t next_at, char *err,
                         size_t errlen) {
    sqlite3_stmt *st = NULL;
    int ret = -1, rc;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    st = store_adhoc(s,
                     "UPDATE deliveries SET status = 'pending', schedule_pos = 0, next_at = ?2,"
                     " lease_until = 0 WHERE id = ?1 AND status = 'failed'",
                     err, errlen);
    if (!st)
        return -1;
    if (bind_text(st, 1, id) || sqlite3_bind_int64(st, 2, next_at) ||
        sqlite3_step(st) != SQLITE_DONE) {
        group_fail(s, "delivery retry", err, errlen);
        goto done;
    }
    if (sqlite3_changes(s->db) == 1) {
        ret = 1;
        goto done;
    }
    sqlite3_finalize(st);
    st = store_adhoc(s, "SELECT 1 FROM deliveries WHERE id = ?1", err, errlen);
    if (!st)
        return -1;
    if (bind_text(st, 1, id)) {
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        ret = 2;
    else if (rc == SQLITE_DONE)
        ret = 0;
    else
        store_err(err, errlen, "store: %s", sqlite3_errmsg(s->db));
done:
    sqlite3_finalize(st);
    return ret;
}

int store_sub_put(struct store *s, const struct store_sub *sub, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int ret = -1, rc;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    st = store_adhoc(s,
                     "INSERT INTO subscriptions(id, event, pattern, url, secret, created_at)"
                     " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                     err, errlen);
    if (!st)
        return -1;
    if (bind_text(st, 1, sub->id) || bind_text(st, 2, sub->event) ||
        bind_text(st, 3, sub->pattern) || bind_text(st, 4, sub->url) ||
        bind_text(st, 5, sub->secret) || sqlite3_bind_int64(st, 6, sub->created_at)) {
        group_fail(s, "subscription insert", err, errlen);
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        ret = 0;
    else if (rc == SQLITE_CONSTRAINT_UNIQUE)
        ret = STORE_DUP; /* undoes only this statement */
    else
        group_fail(s, "subscription insert", err, errlen);
done:
    sqlite3_finalize(st);
    return ret;
}

int store_sub_change(struct store *s, const char *id, const char *url, char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int ret = -1;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    st = store_adhoc(s,
                     url ? "UPDATE subscriptions SET url = ?2 WHERE id = ?1"
                         : "DELETE FROM subscriptions WHERE id = ?1",
                     err, errlen);
    if (!st)
        return -1;
    if (bind_text(st, 1, id) || (url && bind_text(st, 2, url)) ||
        sqlite3_step(st) != SQLITE_DONE) {
        group_fail(s, "subscription change", err, errlen);
        goto done;
    }
    ret = sqlite3_changes(s->db) == 1;
done:
    sqlite3_finalize(st);
    return ret;
}

int store_subs_load(struct store *s, void (*fn)(void *arg, const struct store_sub *sub),
                    void *arg, char *err, size_t errlen) {
    sqlite3_stmt *st = store_adhoc(s,
                                   "SELECT id, event, pattern, url, secret, created_at"
                                   " FROM subscriptions ORDER BY seq",
                                   err, errlen);
    int rc;

    if (!st)
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_sub sub = {
            (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1),
            (const char *)sqlite3_column_text(st, 2), (const char *)sqlite3_column_text(st, 3),
            (const char *)sqlite3_column_text(st, 4), sqlite3_column_int64(st, 5)};
        fn(arg, &sub);
    }
    if (rc != SQLITE_DONE)
        store_err(err, errlen, "store: subscriptions: %s", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- endpoint state ---- */

static int64_t store_exec_stmt(struct store *s, const char *what, sqlite3_stmt *st,
                               const char *name, int64_t a, int64_t b, const char *text,
                               char *err, size_t errlen);

/* Runs sql (bound by the caller through bind) inside the open group.
 * Returns the number of rows changed, or -1 with a reason. */
static int64_t store_exec_write(struct store *s, const char *what, const char *sql,
                                const char *name, int64_t a, int64_t b, const char *text,
                                char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    int64_t changed = -1;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        st = NULL;
    changed = store_exec_stmt(s, what, st, name, a, b, text, err, errlen);
    sqlite3_finalize(st);
    return changed;
}

/* Runs st (prepared, or NULL when preparing failed) bound with ?1 name,
 * ?2 a, ?3 b, ?4 text; resets it. Returns rows changed or -1. */
static int64_t store_exec_stmt(struct store *s, const char *what, sqlite3_stmt *st,
                               const char *name, int64_t a, int64_t b, const char *text,
                               char *err, size_t errlen) {
    int64_t changed = -1;

    if (!st || bind_text(st, 1, name) ||
        sqlite3_bind_int64(st, 2, a) || sqlite3_bind_int64(st, 3, b) || bind_text(st, 4, text) ||
        sqlite3_step(st) != SQLITE_DONE) {
        group_fail(s, what, err, errlen);
        goto done;
    }
    changed = sqlite3_changes(s->db);
done:
    if (st)
        stmt_done(st);
    return changed;
}

int store_endpoint_attempt(struct store *s, const char *name, int ok, const char *error,
                           int64_t now, int64_t *first_failure_at, char *err, size_t errlen) {
    static const char ok_sql[] =
        "INSERT INTO endpoint_state(name, ok, first_failure_at) VALUES (?1, 1, 0)"
        " ON CONFLICT(name) DO UPDATE SET ok = ok + 1, first_failure_at = 0"
        " WHERE ?2 = ?2 AND ?3 = ?3 AND ?4 IS ?4";
    static const char fail_sql[] =
        "INSERT INTO endpoint_state(name, failed, first_failure_at, last_error, last_error_at)"
        " VALUES (?1, 1, ?2, ?4, ?3)"
        " ON CONFLICT(name) DO UPDATE SET failed = failed + 1, last_error = ?4,"
        " last_error_at = ?3,"
        " first_failure_at = CASE WHEN first_failure_at = 0 THEN ?2 ELSE first_failure_at END";
    static const char get_sql[] = "SELECT first_failure_at FROM endpoint_state WHERE name = ?1";
    const char *sqls[3] = {ok_sql, fail_sql, get_sql};
    sqlite3_stmt *st;
    int rc = -1, i;

    *first_failure_at = 0;
    for (i = 0; i < 3; i++)
        if (!s->ep_st[i] && sqlite3_prepare_v3(s->db, sqls[i], -1, SQLITE_PREPARE_PERSISTENT,
                                               &s->ep_st[i], NULL) != SQLITE_OK) {
            store_err(err, errlen, "store: endpoint state: %s", sqlite3_errmsg(s->db));
            return -1;
        }
    if (group_begin(s, err, errlen) < 0)
        return -1;
    if (store_exec_stmt(s, "endpoint state", s->ep_st[ok ? 0 : 1], name, now, now,
                        ok ? NULL : (error ? error : "failed"), err, errlen) < 0)
        return -1;
    if (ok)
        return 0;
    st = s->ep_st[2];
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

int store_endpoint_set_disabled(struct store *s, const char *name, int disabled,
                                const char *reason, int64_t now, int64_t *moved, char *err,
                                size_t errlen) {
    static const char disable_sql[] =
        "INSERT INTO endpoint_state(name, disabled, disabled_at, reason) VALUES (?1, 1, ?2, ?4)"
        " ON CONFLICT(name) DO UPDATE SET disabled = 1, disabled_at = ?2, reason = ?4"
        " WHERE ?3 = ?3";
    static const char enable_sql[] =
        "INSERT INTO endpoint_state(name) VALUES (?1)"
        " ON CONFLICT(name) DO UPDATE SET disabled = 0, disabled_at = 0, reason = NULL,"
        " first_failure_at = 0 WHERE ?2 = ?2 AND ?3 = ?3 AND ?4 IS ?4";
    /* Leased rows move too: their transfer's outcome is written as held
     * (deliver.c), and enabling clears the lease. */
    static const char hold_sql[] =
        "UPDATE deliveries SET status = 'held' WHERE endpoint = ?1 AND status = 'pending'"
        " AND ?2 = ?2 AND ?3 = ?3 AND ?4 IS ?4";
    static const char release_sql[] =
        "UPDATE deliveries SET status = 'pending', next_at = ?2, lease_until = 0"
        " WHERE endpoint = ?1 AND status = 'held' AND ?3 = ?3 AND ?4 IS ?4";
    int64_t n;

    if (store_exec_write(s, "endpoint state", disabled ? disable_sql : enable_sql, name, now, now,
                         reason, err, errlen) < 0)
        return -1;
    n = store_exec_write(s, "endpoint deliveries", disabled ? hold_sql : release_sql, name, now,
                         now, NULL, err, errlen);
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

int store_endpoint_states(struct store *s, struct store_endpoint_state **out, size_t *n,
                          char *err, size_t errlen) {
    static const char sql[] =
        "SELECT e.name, e.disabled, e.disabled_at, e.reason, e.last_error, e.last_error_at,"
        " e.first_failure_at, e.ok, e.failed,"
        " (SELECT count(*) FROM deliveries d WHERE d.endpoint = e.name AND d.status = 'pending'),"
        " (SELECT count(*) FROM deliveries d WHERE d.endpoint = e.name AND d.status = 'held')"
        " FROM endpoint_state e ORDER BY e.name";
    sqlite3_stmt *st = NULL;
    struct store_endpoint_state *v = NULL, *r;
    size_t cnt = 0, cap = 0;
    int rc, oom = 0, ret = -1;

    *out = NULL;
    *n = 0;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: endpoint states: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct store_endpoint_state *p = realloc(v, ncap * sizeof *p);
            if (!p) {
                oom = 1;
                break;
            }
            v = p;
            cap = ncap;
        }
        r = &v[cnt++];
        memset(r, 0, sizeof *r);
        r->name = col_text(st, 0, &oom);
        r->disabled = sqlite3_column_int(st, 1);
        r->disabled_at = sqlite3_column_int64(st, 2);
        r->reason = col_text(st, 3, &oom);
        r->last_error = col_text(st, 4, &oom);
        r->last_error_at = sqlite3_column_int64(st, 5);
        r->first_failure_at = sqlite3_column_int64(st, 6);
        r->ok = sqlite3_column_int64(st, 7);
        r->failed = sqlite3_column_int64(st, 8);
        r->pending = sqlite3_column_int64(st, 9);
        r->held = sqlite3_column_int64(st, 10);
        if (oom || !r->name)
            break;
    }
    if (oom || (cnt && !v[cnt - 1].name)) {
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
    sqlite3_finalize(st);
    store_endpoint_states_free(v, cnt);
    return ret;
}

int64_t store_endpoint_head(struct store *s, const char *name, int64_t *next_at) {
    sqlite3_stmt *st = s->st[ST_DLV_HEAD];
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

int store_prune(struct store *s, int64_t before_ms, int64_t *cursor, int max, int *pruned,
                char *err, size_t errlen) {
    /* Walks events by seq from the cursor (received_at grows with seq), so
     * a batch costs O(max) whatever the table size. */
    static const char sel_sql[] =
        "SELECT seq, id, received_at, status,"
        " EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id"
        "  AND d.status IN ('pending', 'held')),"
        " EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id"
        "  AND d.status = 'failed')"
        " FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";
    sqlite3_stmt *sel = NULL, *del[3] = {NULL, NULL, NULL};
    static const char *const del_sql[3] = {
        "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1)",
        "DELETE FROM deliveries WHERE event_id = ?1",
        "DELETE FROM events WHERE id = ?1",
    };
    char (*ids)[UTIL_ID_MAX] = NULL;
    int nids = 0, rc, ret = -1, i, k;
    int64_t last = *cursor;

    *pruned = 0;
    if (!(ids = calloc((size_t)(max > 0 ? max : 1), sizeof *ids))) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (sqlite3_prepare_v2(s->db, sel_sql, -1, &sel, NULL) != SQLITE_OK ||
        sqlite3_bind_int64(sel, 1, *cursor) || sqlite3_bind_int(sel, 2, max)) {
        store_err(err, errlen, "store: prune: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(sel, 3);
        if (sqlite3_column_int64(sel, 2) >= before_ms)
            break; /* newer from here on */
        if (status && !strcmp(status, "received"))
            break; /* not routed yet: stop, look again later */
        if (sqlite3_column_int(sel, 4))
            break; /* still going out: wait for it */
        last = sqlite3_column_int64(sel, 0);
        /* Dead letters (failed deliveries) stay, retryable. */
        if (sqlite3_column_int(sel, 5) || !status ||
            (strcmp(status, "routed") && strcmp(status, "unrouted")))
            continue;
        copy_id(ids[nids++], sizeof ids[0], sqlite3_column_text(sel, 1));
    }
    sqlite3_finalize(sel);
    sel = NULL;
    if (nids && group_begin(s, err, errlen) < 0)
        goto done;
    for (k = 0; k < 3 && nids; k++)
        if (sqlite3_prepare_v2(s->db, del_sql[k], -1, &del[k], NULL) != SQLITE_OK) {
            store_err(err, errlen, "store: prune: %s", sqlite3_errmsg(s->db));
            goto done;
        }
    for (i = 0; i < nids; i++) {
        for (k = 0; k < 3; k++) {
            if (bind_text(del[k], 1, ids[i]) || sqlite3_step(del[k]) != SQLITE_DONE) {
                group_fail(s, "prune", err, errlen);
                goto done;
            }
            stmt_done(del[k]);
        }
    }
    *cursor = last;
    *pruned = nids;
    ret = 0;
done:
    sqlite3_finalize(sel);
    for (k = 0; k < 3; k++)
        sqlite3_finalize(del[k]);
    free(ids);
    return ret;
}

int store_endpoint_claim(struct store *s, const char *name, int64_t after_seq, int64_t now,
                         int64_t lease_ms, size_t max, struct store_delivery **out, size_t *n,
                         char *err, size_t errlen) {
    static const char sql[] =
        "SELECT seq, id, event_id, endpoint, event_type, content_type, headers,"
        " payload, attempts, schedule_pos, next_at, created_at FROM deliveries"
        " INDEXED BY deliveries_ep_pending"
        " WHERE endpoint = ?1 AND status = 'pending' AND seq > ?2 AND seq <= ?3"
        " AND (next_at <= ?4 OR lease_until > 0) ORDER BY seq LIMIT ?5";
    sqlite3_stmt *sel = NULL, *lease = s->st[ST_DLV_LEASE];
    struct store_delivery *rows = NULL, *r;
    size_t cnt = 0, i;
    int rc, oom = 0, ret = -1;

    *out = NULL;
    *n = 0;
    if (max == 0)
        return 0;
    if (!(rows = calloc(max, sizeof *rows))) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    if (sqlite3_prepare_v2(s->db, sql, -1, &sel, NULL) != SQLITE_OK || bind_text(sel, 1, name) ||
        sqlite3_bind_int64(sel, 2, after_seq) || sqlite3_bind_int64(sel, 3, s->committed_dlv_seq) ||
        sqlite3_bind_int64(sel, 4, now) || sqlite3_bind_int64(sel, 5, (int64_t)max)) {
        store_err(err, errlen, "store: claim: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    while (cnt < max && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
        r = &rows[cnt++];
        delivery_row_read(sel, r, &oom);
        if (oom) {
            store_err(err, errlen, "store: out of memory");
            goto done;
        }
    }
    sqlite3_finalize(sel);
    sel = NULL;
    if (cnt && group_begin(s, err, errlen) < 0)
        goto done;
    for (i = 0; i < cnt; i++) {
        if (sqlite3_bind_int64(lease, 1, rows[i].seq) ||
            sqlite3_bind_int64(lease, 2, now + lease_ms) || sqlite3_step(lease) != SQLITE_DONE) {
            group_fail(s, "claim", err, errlen);
            stmt_done(lease);
            goto done;
        }
        stmt_done(lease);
    }
    *out = rows;
    *n = cnt;
    rows = NULL;
    ret = 0;
done:
    sqlite3_finalize(sel);
    store_deliveries_free(rows, cnt);
    return ret;
}

/* ---- batch windows ----
 * batch_items holds every batched payload. An item is open while
 * delivery_id is NULL; closing a window inserts its one delivery and points
 * the items at it (dropping their payload copies) in the same statement
 * group, so an item is in exactly one batch delivery and the membership
 * stays visible in store_event_json. Created with IF NOT EXISTS so stores
 * made before batch windows existed gain the table at open. */
static int store_batch_schema(sqlite3 *db, char *err, size_t errlen) {
    static const char sql[] =
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
        "CREATE INDEX IF NOT EXISTS batch_items_event ON batch_items(event_id);";
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: creating batch tables: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

int store_batch_add(struct store *s, const char *endpoint, int64_t window_start, int64_t window_ms,
                    const char *event_id, const char *payload, size_t len, int64_t *count,
                    char *err, size_t errlen) {
    sqlite3_stmt *ins = NULL, *cnt = NULL;
    int ret = -1;

    if (group_begin(s, err, errlen) < 0)
        return -1;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO batch_items(endpoint, window_start, window_ms, event_id,"
                           " payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                           -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db,
                           "SELECT COUNT(*) FROM batch_items WHERE delivery_id IS NULL AND"
                           " endpoint = ?1 AND window_ms = ?2 AND window_start = ?3",
                           -1, &cnt, NULL) != SQLITE_OK) {
        group_fail(s, "batch item", err, errlen);
        goto done;
    }
    if (bind_text(ins, 1, endpoint) || sqlite3_bind_int64(ins, 2, window_start) ||
        sqlite3_bind_int64(ins, 3, window_ms) || bind_text(ins, 4, event_id) ||
        bind_blob(ins, 5, payload ? payload : "", len) || sqlite3_step(ins) != SQLITE_DONE) {
        group_fail(s, "batch item", err, errlen);
        goto done;
    }
    if (bind_text(cnt, 1, endpoint) || sqlite3_bind_int64(cnt, 2, window_ms) ||
        sqlite3_bind_int64(cnt, 3, window_start) || sqlite3_step(cnt) != SQLITE_ROW) {
        group_fail(s, "batch count", err, errlen);
        goto done;
    }
    *count = sqlite3_column_int64(cnt, 0);
    ret = 0;
done:
    sqlite3_finalize(ins);
    sqlite3_finalize(cnt);
    return ret;
}

int64_t store_batch_next_close(struct store *s) {
    sqlite3_stmt *st = NULL;
    int64_t at = INT64_MAX;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT MIN(window_start + window_ms) FROM batch_items"
                           " WHERE delivery_id IS NULL",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        at = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return at;
}

void store_batch_windows_free(struct store_batch_window *w, size_t n) {
    if (!w)
        return;
    for (size_t i = 0; i < n; i++)
        free(w[i].endpoint);
    free(w);
}

int store_batch_due(struct store *s, int64_t now, struct store_batch_window **out, size_t *n,
                    char *err, size_t errlen) {
    sqlite3_stmt *st = NULL;
    struct store_batch_window *w = NULL, *grown;
    size_t cap = 0, k = 0;
    int rc, oom = 0;

    *out = NULL;
    *n = 0;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT endpoint, window_start, window_ms FROM batch_items"
                           " WHERE delivery_id IS NULL AND window_start + window_ms <= ?1"
                           " GROUP BY endpoint, window_ms, window_start",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_int64(st, 1, now) != SQLITE_OK) {
        store_err(err, errlen, "store: batch windows: %s", sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (k == cap) {
            cap = cap ? cap * 2 : 8;
            grown = realloc(w, cap * sizeof *w);
            if (!grown) {
                oom = 1;
                break;
            }
            w = grown;
        }
        w[k].endpoint = col_text(st, 0, &oom);
        w[k].window_start = sqlite3_column_int64(st, 1);
        w[k].window_ms = sqlite3_column_int64(st, 2);
        k++;
        if (oom)
            break;
    }
    if (oom || (rc != SQLITE_ROW && rc != SQLITE_DONE)) {
        store_err(err, errlen, "store: batch windows: %s",
                  oom ? "out of memory" : sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        store_batch_windows_free(w, k);
        return -1;
    }
    sqlite3_finalize(st);
    *out = w;
    *n = k;
    return 0;
}

/* Appends an RFC 3339 time as a JSON string. */
static int buf_time(struct util_buf *b, int64_t ms) {
    char t[64];
    util_time_rfc3339(ms, t, sizeof t);
    return util_buf_printf(b, "\"%s\"", t);
}

int store_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                      int64_t next_at, size_t *count, char *err, size_t errlen) {
    sqlite3_stmt *sel = NULL, *ins = NULL, *upd = NULL;
    struct util_buf body = {0};
    char id[UTIL_ID_MAX];
    int64_t last_seq = 0, now = util_now_ms();
    size_t k = 0;
    int rc, ret = -1;

    *count = 0;
    if (group_begin(s, err, errlen) < 0)
        return -1;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT seq, payload FROM batch_items WHERE delivery_id IS NULL AND"
                           " endpoint = ?1 AND window_ms = ?2 AND window_start = ?3 ORDER BY seq",
                           -1, &sel, NULL) != SQLITE_OK ||
        bind_text(sel, 1, w->endpoint) || sqlite3_bind_int64(sel, 2, w->window_ms) ||
        sqlite3_bind_int64(sel, 3, w->window_start)) {
        group_fail(s, "batch read", err, errlen);
        goto done;
    }
    if (util_buf_appends(&body, "{\"type\":\"batch\",\"window_start\":") < 0 ||
        buf_time(&body, w->window_start) < 0 ||
        util_buf_appends(&body, ",\"window_end\":") < 0 ||
        buf_time(&body, w->window_start + w->window_ms) < 0)
        goto oom;
    /* count goes before events in the body, so the items are gathered first. */
    {
        struct util_buf events = {0};
        int bad = 0;
        while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
            const void *p = sqlite3_column_blob(sel, 1);
            size_t n = (size_t)sqlite3_column_bytes(sel, 1);
            bad |= (k && util_buf_appends(&events, ",") < 0);
            bad |= util_buf_append(&events, p ? p : "null", p ? n : 4) < 0;
            last_seq = sqlite3_column_int64(sel, 0);
            k++;
        }
        if (!bad && rc == SQLITE_DONE)
            bad = util_buf_printf(&body, ",\"count\":%zu,\"events\":[", k) < 0 ||
                  util_buf_append(&body, events.p ? events.p : "", events.len) < 0 ||
                  util_buf_appends(&body, "]}") < 0;
        util_buf_free(&events);
        if (rc != SQLITE_DONE) {
            group_fail(s, "batch read", err, errlen);
            goto done;
        }
        if (bad)
            goto oom;
    }
    if (k == 0) { /* nothing open in this window: an empty window sends nothing */
        ret = 0;
        goto done;
    }
    /* Derived from the window and its last item: a close a power cut took
     * back (the batch went out at COMMIT) is sent again under the same id. */
    {
        char key[256];
        snprintf(key, sizeof key, "batch\n%s\n%lld\n%lld\n%lld", w->endpoint,
                 (long long)w->window_ms, (long long)w->window_start, (long long)last_seq);
        util_id_derive_at("dlv_", w->window_start, key, 0, id, sizeof id);
    }
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO deliveries(id, event_id, endpoint, event_type, status,"
                           " payload, content_type, headers, attempts, schedule_pos, next_at,"
                           " lease_until, created_at, batch)"
                           " VALUES (?1, ?2, ?3, 'batch', ?4, ?5, 'application/json', NULL, 0, 0,"
                           " ?6, 0, ?7, 1)",
                           -1, &ins, NULL) != SQLITE_OK ||
        bind_text(ins, 1, id) || bind_text(ins, 2, id) || bind_text(ins, 3, w->endpoint) ||
        bind_text(ins, 4, status ? status : "pending") || bind_blob(ins, 5, body.p, body.len) ||
        sqlite3_bind_int64(ins, 6, next_at) || sqlite3_bind_int64(ins, 7, now) ||
        sqlite3_step(ins) != SQLITE_DONE) {
        group_fail(s, "batch delivery", err, errlen);
        goto done;
    }
    s->group_dlv_seq = sqlite3_last_insert_rowid(s->db);
    if (counts_add(s, status ? status : "pending", 1) < 0) {
        group_fail(s, "delivery counts", err, errlen);
        goto done;
    }
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE batch_items SET delivery_id = ?1, payload = NULL"
                           " WHERE delivery_id IS NULL AND endpoint = ?2 AND window_ms = ?3"
                           " AND window_start = ?4 AND seq <= ?5",
                           -1, &upd, NULL) != SQLITE_OK ||
        bind_text(upd, 1, id) || bind_text(upd, 2, w->endpoint) ||
        sqlite3_bind_int64(upd, 3, w->window_ms) || sqlite3_bind_int64(upd, 4, w->window_start) ||
        sqlite3_bind_int64(upd, 5, last_seq) || sqlite3_step(upd) != SQLITE_DONE) {
        group_fail(s, "batch close", err, errlen);
        goto done;
    }
    *count = k;
    ret = 0;
    goto done;
oom:
    store_err(err, errlen, "store: out of memory");
    group_fail(s, "batch close", NULL, 0);
done:
    sqlite3_finalize(sel);
    sqlite3_finalize(ins);
    sqlite3_finalize(upd);
    util_buf_free(&body);
    return ret;
}

/* Appends to arr one entry per open batch window holding an item of
 * event_id: {"id":null, "endpoint", "status":"batching", "batch":true,
 * "window_end", "attempts":[]}, so the event shows where it waits.
 * Returns 0 or -1 (err set). */
static int store_batch_open_json(struct store *s, const char *event_id, json_t *arr, char *err,
                                 size_t errlen) {
    sqlite3_stmt *st = NULL;
    char t[64];
    int rc, ret = -1;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT endpoint, MIN(window_start + window_ms) FROM batch_items"
                           " WHERE event_id = ?1 AND delivery_id IS NULL GROUP BY endpoint,"
                           " window_start, window_ms ORDER BY MIN(seq)",
                           -1, &st, NULL) != SQLITE_OK ||
        bind_text(st, 1, event_id)) {
        store_err(err, errlen, "store: event json: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        util_time_rfc3339(sqlite3_column_int64(st, 1), t, sizeof t);
        if (json_array_append_new(
                arr, json_pack("{s:n, s:s, s:s, s:b, s:s, s:[]}", "id", "endpoint",
                               (const char *)sqlite3_column_text(st, 0), "status", "batching",
                               "batch", 1, "window_end", t, "attempts")) < 0) {
            store_err(err, errlen, "store: out of memory");
            goto done;
        }
    }
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: event json: %s", sqlite3_errmsg(s->db));
        goto done;
    }
    ret = 0;
done:
    sqlite3_finalize(st);
    return ret;
}
