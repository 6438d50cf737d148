/* store_sqlite.c -- the SQLite (WAL) engine behind store.h (store.c hands
 * it the calls on an SQLite store): open and close, the group commit
 * engine, the commit callbacks, the watermarks, and the one
 * table of prepared statements (store_sqlite_int.h lists the other files).
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
 * their own with a second connection (store_sqlite_sync.c).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

#include "log.h"
#include "metrics.h"
#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

/* Statements of the engine and of open. */
const struct store_stmt_def store_engine_stmts[] = {
    {ST_BEGIN, "BEGIN IMMEDIATE"},
    {ST_COMMIT, "COMMIT"},
    {ST_ROLLBACK, "ROLLBACK"},
    {ST_PING, "SELECT 1"},
    /* One process owns an SQLite store: leases still held at open were left
     * by a run that died; those deliveries are due now. */
    {ST_OPEN_RELEASE, "UPDATE deliveries SET lease_until = 0, next_at = ?1 WHERE lease_until > 0"},
    {ST_OPEN_DLV_SEQ, "SELECT max(IFNULL((SELECT MAX(seq) FROM deliveries), 0),"
                      " IFNULL((SELECT value FROM store_meta WHERE key = 'dlv_seq'), 0))"},
    {ST_OPEN_EVT_SEQ, "SELECT max(IFNULL((SELECT MAX(seq) FROM events), 0),"
                      " IFNULL((SELECT value FROM store_meta WHERE key = 'evt_seq'), 0))"},
    {ST_META_PUT, "INSERT INTO store_meta(key, value) VALUES (?1, ?2)"
                  " ON CONFLICT(key) DO UPDATE SET value = max(value, ?2)"},
    /* The read connection's transactions (ended with ST_COMMIT). */
    {ST_READ_BEGIN, "BEGIN"},
    {ST_COUNT_, NULL},
};

/* ---- invariant checks (WAYBILL_CHECKS) ---- */

#ifdef WAYBILL_CHECKS
/* 1 when no statement of the loop connection is half-stepped. */
static int store_stmts_idle(struct store_sq *s) {
    sqlite3_stmt *p = NULL;
    while ((p = sqlite3_next_stmt(s->db, p)) != NULL)
        if (sqlite3_stmt_busy(p))
            return 0;
    return 1;
}

/* The group state between two calls. For use inside STORE_CHECK only. */
static int store_check_invariants(struct store_sq *s) {
    return (!s->sync_busy || s->sync) && (s->sync_busy || s->ninflight == 0) &&
           (!s->ncounts || s->in_txn || s->failed) && (!s->begin_failed || s->failed) &&
           s->committed_dlv_seq >= 0 && s->committed_evt_seq >= 0;
}
#endif

/* ---- group commit ---- */

/* Queues the commit event. From inside the commit itself (a callback that
 * wrote), it waits for the next loop turn (zero timeout), so the follow-up
 * writes join that turn's group instead of committing alone at once. The
 * commit event has the lowest priority, so it runs once a turn has nothing
 * else ready; a loop that always has (deliveries draining a backlog at full
 * speed: a transfer's answer or a claim's in every turn) would starve it,
 * and every 200 with it, for as long as that lasts. commit_late_ev, a timer
 * at the default priority, commits then: no group waits more than
 * STORE_COMMIT_WAIT_MS for its turn. */
void store_group_schedule(struct store_sq *s) {
    static const struct timeval zero = {0, 0};
    static const struct timeval most = {STORE_COMMIT_WAIT_MS / 1000,
                                        (STORE_COMMIT_WAIT_MS % 1000) * 1000};
    if (s->scheduled)
        return;
    s->scheduled = 1;
    if (s->committing)
        event_add(s->commit_ev, &zero);
    else
        event_active(s->commit_ev, EV_TIMEOUT, 0);
    evtimer_add(s->commit_late_ev, &most);
}

void store_group_fail(struct store_sq *s, const char *what, char *err, size_t errlen) {
    if ((sqlite3_extended_errcode(s->db) & 0xff) == SQLITE_FULL)
        s->full = 1;
    if (!s->failed) {
        snprintf(s->fail_msg, sizeof s->fail_msg, "%s: %s", what, sqlite3_errmsg(s->db));
        s->failed = 1;
    }
    /* SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR, ...). */
    if (s->in_txn && sqlite3_get_autocommit(s->db))
        s->in_txn = 0;
    store_err(err, errlen, "store: %s: %s", what, sqlite3_errmsg(s->db));
    store_group_schedule(s);
}

int store_group_begin(struct store_sq *s, char *err, size_t errlen) {
    sqlite3_stmt *st = s->st[ST_BEGIN];
    int rc;
    /* A group whose BEGIN failed wrote nothing; when nobody registered for
     * its outcome since (a caller whose write failed here and waits to
     * hear ok=0), a later write may start afresh instead of failing until
     * the rollback event runs (requests can keep the loop busy). Callbacks
     * registered before the failed BEGIN made no write either: they wait
     * for the new group as they would have for an empty one. Not after
     * SQLite rolled back a group by itself: that group's writes are lost
     * and its outcome must be ok=0. */
    if (s->failed && s->begin_failed && s->ncbs == s->fail_ncbs) {
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
    if (s->full) {
        store_err(err, errlen, "store: the disk is full (writing again once space is freed)");
        return -1;
    }
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        store_group_fail(s, "begin", err, errlen);
        s->begin_failed = 1;
        s->fail_ncbs = s->ncbs;
        return -1;
    }
    s->in_txn = 1;
    store_group_schedule(s);
    return 0;
}

/* A failed group is logged at once, then at most once a second with how
 * many more failed meanwhile: a full disk fails every group of every loop
 * turn, and the log must not become the next thing to fill it. */
static void group_failed_log(struct store_sq *s) {
    int64_t now = util_mono_ms();

    if (s->fail_logged_at && now - s->fail_logged_at < 1000) {
        s->fail_unlogged++;
        return;
    }
    if (s->fail_unlogged)
        log_msg(LOG_WARN, "store: commit group failed, rolled back: %s (and %lld more since)",
                s->fail_msg, (long long)s->fail_unlogged);
    else
        log_msg(LOG_WARN, "store: commit group failed, rolled back: %s", s->fail_msg);
    s->fail_logged_at = now;
    s->fail_unlogged = 0;
}

/* A full disk: every commit would append frames to the WAL until the
 * write fails, eating whatever space is freed. So while full, no group is
 * begun (writes fail at once: 503 to carriers), and once a second the
 * whole WAL is checkpointed into the database and truncated; when that
 * works, space came back and writing resumes by itself. */
static void store_full_cb(evutil_socket_t fd, short what, void *arg) {
    struct store_sq *s = arg;
    static const struct timeval second = {1, 0};
    int nlog = 0, ncopied = 0, rc;

    UNUSED(fd);
    UNUSED(what);
    if (!s->full)
        return;
    if (s->in_txn) { /* a group still open: its end comes first */
        evtimer_add(s->full_ev, &second);
        return;
    }
    rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog, &ncopied);
    if (rc == SQLITE_OK) {
        s->full = 0;
        log_msg(LOG_INFO, "store: the disk had filled up; the WAL is checkpointed and truncated, "
                          "writing again");
        return;
    }
    evtimer_add(s->full_ev, &second);
}

static void store_full_recover(struct store_sq *s) {
    static const struct timeval second = {1, 0};

    if (s->full && s->full_ev && !evtimer_pending(s->full_ev, NULL))
        evtimer_add(s->full_ev, &second);
}

/* Ends the group: COMMIT, or ROLLBACK when a write failed or COMMIT did.
 * Returns 1 when committed, else 0. Leaves no group open; the group's seqs
 * (group_*_seq) are left for the caller, which clears them. */
static int group_end(struct store_sq *s) {
    int ok = !s->failed, wrote = s->in_txn, rc;
    if (s->in_txn) {
        if (ok && store_counts_flush(s) < 0) {
            ok = 0;
            snprintf(s->fail_msg, sizeof s->fail_msg, "delivery counts: %s", sqlite3_errmsg(s->db));
        }
        if (ok) {
            rc = sqlite3_step(s->st[ST_COMMIT]);
            sqlite3_reset(s->st[ST_COMMIT]);
            if (rc != SQLITE_DONE) {
                ok = 0;
                snprintf(s->fail_msg, sizeof s->fail_msg, "commit: %s", sqlite3_errmsg(s->db));
                if ((sqlite3_extended_errcode(s->db) & 0xff) == SQLITE_FULL)
                    s->full = 1;
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
        group_failed_log(s);
    else if (wrote)
        s->full = 0; /* written again */
    if (ok && s->in_txn)
        s->backlog_stale = 1;
    if (wrote || !ok) { /* a group that tried to write */
        s->last_outcome_ok = ok;
        s->last_outcome_at = util_mono_ms();
    }
    s->ncounts = 0;
    s->in_txn = 0;
    s->failed = 0;
    s->begin_failed = 0;
    s->fail_msg[0] = '\0';
    return ok;
}

/* Rows up to these seqs are committed (deliveries) or durable (events).
 * Neither watermark ever goes backwards. */
static void watermarks_advance(struct store_sq *s, int64_t dlv_seq, int64_t evt_seq) {
#ifdef WAYBILL_CHECKS
    int64_t dlv_was = s->committed_dlv_seq, evt_was = s->committed_evt_seq;
#endif
    if (dlv_seq > s->committed_dlv_seq)
        s->committed_dlv_seq = dlv_seq;
    if (evt_seq > s->committed_evt_seq)
        s->committed_evt_seq = evt_seq;
    STORE_CHECK(s->committed_dlv_seq >= dlv_was && s->committed_evt_seq >= evt_was);
}

void store_sqlite_delivery_seqs(const struct store_sq *s, int64_t *committed, int64_t *last) {
    *committed = s->committed_dlv_seq;
    /* The open group's rows, else the group being synced's, else none. */
    *last = s->group_dlv_seq > s->committed_dlv_seq ? s->group_dlv_seq : s->committed_dlv_seq;
    if (s->sync_busy && s->inflight_dlv_seq > *last)
        *last = s->inflight_dlv_seq;
}

/* ---- callback lists ---- */

/* Runs n callbacks of list in registration order. The caller swapped the
 * list out first: callbacks may write and register callbacks for the next
 * group. nested says we run inside the commit event itself, where a write
 * must schedule the next commit for the next loop turn, not this one. */
static void callbacks_run(struct store_sq *s, struct store_cb *list, size_t n, int ok, int nested) {
    size_t i;
    if (nested)
        s->committing++;
    for (i = 0; i < n; i++)
        list[i].fn(list[i].arg, ok);
    if (nested)
        s->committing--;
}

/* The open group's callbacks of one kind, taken out of the store so that
 * callbacks registered from now on belong to the next group. */
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
static void cbs_run(struct store_sq *s, struct cb_list l, struct store_cb **cbs, size_t *cap,
                    int ok) {
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

/* Moves the committed group's store_on_commit callbacks in flight (swapping
 * arrays with the empty in-flight list) and hands the group to the sync
 * thread, with the highest event seq it inserted. */
static void group_in_flight(struct store_sq *s, int64_t dlv_seq, int64_t evt_seq, int64_t t0) {
    struct store_cb *tmp = s->inflight;
    size_t cap = s->inflight_cap;
    STORE_CHECK(!s->sync_busy && s->ninflight == 0);
    s->inflight = s->cbs;
    s->inflight_cap = s->cap;
    s->ninflight = s->ncbs;
    s->cbs = tmp;
    s->cap = cap;
    s->ncbs = 0;
    s->inflight_evt_seq = evt_seq;
    s->inflight_dlv_seq = dlv_seq;
    s->inflight_t0 = t0;
    s->sync_busy = 1;
    store_sync_ask(s);
}

void store_group_durable(struct store_sq *s) {
    struct store_cb *list;
    size_t n;
    STORE_CHECK(s->sync_busy);
    s->sync_busy = 0;
    watermarks_advance(s, s->inflight_dlv_seq, s->inflight_evt_seq);
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
    if (s->in_txn || s->failed || s->ncbs)
        store_group_schedule(s);
}

/* ---- committing a group ---- */

/* Ends the open group. Its callbacks run now when there is nothing to wait
 * for (a rollback, a group that wrote nothing, or sync=normal) or when
 * sync_now asks to fdatasync here (store_flush), else once the sync thread
 * has made the WAL durable. Only called with no group in flight, so every
 * earlier group is durable already. Returns 1 when the group committed
 * (or was empty), 0 when it was rolled back. */
static int group_commit(struct store_sq *s, int sync_now) {
    int wrote = s->in_txn && !s->failed, ok;
    int64_t t0 = util_mono_ms(), evt_seq = s->group_evt_seq, dlv_seq = s->group_dlv_seq;
    struct cb_list durable;
    /* Never while a sync is in flight: the WAL it syncs must not grow
     * under it with a group whose callbacks would run at its end. */
    STORE_CHECK(!s->sync_busy);
    STORE_CHECK(store_stmts_idle(s) && store_check_invariants(s));
    ok = group_end(s);
    s->group_dlv_seq = s->group_evt_seq = 0;
    if (!ok)
        store_full_recover(s);
    /* Everything about this group is settled before any callback runs: a
     * callback may write and register callbacks, which belong to the next
     * group; and the tail checkpoint needs no transaction open. */
    if (ok && wrote) {
        store_wal_maintain(s);
        if (s->sync && !sync_now) {
            group_in_flight(s, dlv_seq, evt_seq, t0);
            return ok;
        }
        store_sync_now(s);
    }
    if (ok)
        watermarks_advance(s, dlv_seq, evt_seq);
    if (wrote)
        metrics_store_commit(util_mono_ms() - t0);
    /* Only once the COMMIT (or ROLLBACK) is done: no transaction is open. */
    STORE_CHECK(!s->in_txn && sqlite3_get_autocommit(s->db));
    durable = cbs_detach(&s->cbs, &s->ncbs, &s->cap);
    cbs_run(s, durable, &s->cbs, &s->cap, ok);
    return ok;
}

static void store_commit_cb(evutil_socket_t fd, short what, void *arg) {
    struct store_sq *s = arg;
    UNUSED(fd);
    UNUSED(what);
    evtimer_del(s->commit_late_ev);
    if (s->sync_busy) {
        /* Stays "scheduled": store_group_durable reschedules it. */
        s->deferred = 1;
        return;
    }
    s->scheduled = 0;
    group_commit(s, 0);
}

/* The commit event did not get its turn in time (store_group_schedule). */
static void store_commit_late_cb(evutil_socket_t fd, short what, void *arg) {
    struct store_sq *s = arg;
    if (!s->scheduled)
        return;
    event_del(s->commit_ev);
    store_commit_cb(fd, what, s);
}

int store_sqlite_on_commit(struct store_sq *s, store_commit_fn fn, void *arg) {
    if (cbs_append(&s->cbs, &s->ncbs, &s->cap, fn, arg) < 0)
        return -1;
    store_group_schedule(s);
    return 0;
}

int store_sqlite_idle(const struct store_sq *s) {
    return !s->in_txn && s->ncbs == 0 && !s->sync_busy;
}

int store_sqlite_flush(struct store_sq *s) {
    if (s->scheduled) {
        event_del(s->commit_ev);
        s->scheduled = 0;
    }
    s->deferred = 0;
    store_sync_wait(s); /* may open a group from its callbacks: committed below */
    if (s->scheduled) {
        event_del(s->commit_ev);
        s->scheduled = 0;
    }
    evtimer_del(s->commit_late_ev);
    return group_commit(s, 1) ? 0 : -1;
}

int store_sqlite_writable(const struct store_sq *s) {
    /* full, or the last group that wrote failed within the last 5 s */
    return !s->full && (s->last_outcome_ok || util_mono_ms() - s->last_outcome_at > 5000);
}

int store_sqlite_ping(struct store_sq *s) {
    sqlite3_stmt *st = store_stmt(s, ST_PING);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_ROW;
}

/* ---- open and close ---- */

/* Parses "sqlite:PATH[?sync=normal|full]" into a new path (joined to
 * base_dir when relative) and *sync_full. Returns NULL with a reason. */
static char *store_url_parse(const char *url, const char *base_dir, int *sync_full, char *err,
                             size_t errlen) {
    static const char scheme[] = "sqlite:";
    const char *p, *q;
    size_t plen;
    char *path = NULL, shown[512];
    if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0 || !url[sizeof scheme - 1]) {
        /* a postgres:// url may hold a password: never echoed */
        store_err(err, errlen, "store: unsupported url '%s' (use sqlite:PATH)",
                  util_url_redact(url ? url : "", shown, sizeof shown));
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

/* sqlite3_exec callback: copies the first column of the first row into arg
 * (a char[16]). */
static int exec_first_text(void *arg, int ncols, char **vals, char **names) {
    char *out = arg;
    UNUSED(names);
    if (ncols > 0 && !out[0])
        snprintf(out, 16, "%s", vals[0] ? vals[0] : "");
    return 0;
}

/* Opens path and sets the connection up: WAL (journal_mode answers the mode
 * in force: anything but wal is an error), synchronous=NORMAL (in WAL mode
 * COMMIT does not sync; with sync=full the sync thread does, off the loop),
 * a 16 MiB cache. Returns 0, or -1 with a reason (s->db may be set). */
static int store_db_open(struct store_sq *s, const char *path, char *err, size_t errlen) {
    char mode[16] = "", pages[16] = "";
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: open %s: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : "out of memory");
        return -1;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    /* Before the first table exists, so a new store can give pages back to
     * the filesystem (reclaim). Only on a new (empty) file: on an
     * existing store it would change nothing (it would take a VACUUM) but
     * still write page 1, and a store that turns out damaged must be left
     * as it was. */
    if (sqlite3_exec(s->db, "PRAGMA page_count", exec_first_text, pages, NULL) != SQLITE_OK ||
        !pages[0] ||
        (strcmp(pages, "0") == 0 &&
         sqlite3_exec(s->db, "PRAGMA auto_vacuum = INCREMENTAL", NULL, NULL, NULL) != SQLITE_OK)) {
        store_err(err, errlen, "store: %s: auto_vacuum: %s", path, sqlite3_errmsg(s->db));
        return -1;
    }
    if (sqlite3_exec(s->db, "PRAGMA journal_mode = WAL", exec_first_text, mode, NULL) !=
            SQLITE_OK ||
        !mode[0]) {
        store_err(err, errlen, "store: %s: journal_mode: %s", path, sqlite3_errmsg(s->db));
        return -1;
    }
    if (sqlite3_stricmp(mode, "wal") != 0) {
        store_err(err, errlen, "store: %s: cannot use WAL mode (journal_mode is %s)", path, mode);
        return -1;
    }
    /* temp_store = MEMORY: a group's statement journals and the temporary
     * b-trees of sorts and IN lists stay in memory; in a file (SQLite's
     * default, under /var/tmp) each spill was a write on the loop, seen
     * taking 3-7 ms in the soak while the sync thread's fdatasync ran. */
    if (sqlite3_exec(s->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA cache_size = -16384", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA temp_store = MEMORY", NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: %s: %s", path, sqlite3_errmsg(s->db));
        return -1;
    }
    return 0;
}

static int store_stmts_prepare(sqlite3 *db, sqlite3_stmt **st, char *err, size_t errlen);

/* Opens the read connection on path: the admin API's reads run there, so
 * they see committed groups only (WAL: a reader sees the transactions
 * committed when its read began). query_only: it never writes. Returns 0,
 * or -1 with a reason. */
static int store_rdb_open(struct store_sq *s, const char *path, char *err, size_t errlen) {
    if (sqlite3_open_v2(path, &s->rdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        store_err(err, errlen, "store: open %s for reads: %s", path,
                  s->rdb ? sqlite3_errmsg(s->rdb) : "out of memory");
        return -1;
    }
    sqlite3_extended_result_codes(s->rdb, 1);
    sqlite3_busy_timeout(s->rdb, STORE_BUSY_MS);
    if (sqlite3_exec(s->rdb, "PRAGMA query_only = 1", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->rdb, "PRAGMA cache_size = -4096", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->rdb, "PRAGMA temp_store = MEMORY", NULL, NULL, NULL) != SQLITE_OK) {
        store_err(err, errlen, "store: %s: %s", path, sqlite3_errmsg(s->rdb));
        return -1;
    }
    return store_stmts_prepare(s->rdb, s->rst, err, errlen);
}

int store_read_begin(struct store_sq *s, char *err, size_t errlen) {
    sqlite3_stmt *st = store_rstmt(s, ST_READ_BEGIN);
    int rc = sqlite3_step(st);
    stmt_done(st);
    if (rc != SQLITE_DONE) {
        store_err(err, errlen, "store: read: %s", sqlite3_errmsg(s->rdb));
        return -1;
    }
    return 0;
}

void store_read_end(struct store_sq *s) {
    sqlite3_stmt *st = store_rstmt(s, ST_COMMIT);
    sqlite3_step(st); /* a read transaction: nothing to fail */
    stmt_done(st);
}

/* One process per SQLite store: an exclusive flock(2) on the database file,
 * held for the store's life (SQLite's own locks are fcntl(2) locks, which
 * flock does not touch, so tools reading the file are not affected). A
 * second process would release the first one's leases at open and send
 * its deliveries again. Returns 0, or -1 with a reason in err. */
static int store_own(struct store_sq *s, const char *path, char *err, size_t errlen) {
    s->owner_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->owner_fd < 0) {
        store_err(err, errlen, "store: open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(s->owner_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            store_err(err, errlen,
                      "store: %s is in use by another waybill process (one process per SQLite "
                      "store)",
                      path);
        else
            store_err(err, errlen, "store: lock %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Prepares every statement of the table on db into st (after the schema
 * exists). */
static int store_stmts_prepare(sqlite3 *db, sqlite3_stmt **st, char *err, size_t errlen) {
    static const struct store_stmt_def *const lists[] = {
        store_engine_stmts, store_events_stmts, store_deliveries_stmts, store_endpoints_stmts,
        store_batch_stmts,  store_retain_stmts, store_admin_stmts,
    };
    const struct store_stmt_def *d;
    size_t k;
    int i;
    for (k = 0; k < sizeof lists / sizeof lists[0]; k++) {
        for (d = lists[k]; d->sql; d++) {
            if (st[d->id] || sqlite3_prepare_v3(db, d->sql, -1, SQLITE_PREPARE_PERSISTENT,
                                                &st[d->id], NULL) != SQLITE_OK) {
                store_err(err, errlen, "store: preparing statement %d: %s", (int)d->id,
                          st[d->id] ? "defined twice" : sqlite3_errmsg(db));
                return -1;
            }
        }
    }
    for (i = 0; i < ST_COUNT_; i++) {
        if (!st[i]) {
            store_err(err, errlen, "store: statement %d has no SQL", i);
            return -1;
        }
    }
    return 0;
}

/* Runs one of the open-time statements that answer one integer into *out. */
static int open_int(struct store_sq *s, enum store_stmt id, int64_t *out) {
    sqlite3_stmt *st = store_stmt(s, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    stmt_done(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* Reads the watermarks (every row there is at open is committed), then
 * releases the leases a run that died left: reads first, so that a damaged
 * page they meet stops the start before anything is written to the file.
 * Returns 0, or -1 with a reason naming path. */
static int store_open_recover(struct store_sq *s, const char *path, char *err, size_t errlen) {
    sqlite3_stmt *st = store_stmt(s, ST_OPEN_RELEASE);
    int rc;
    if (open_int(s, ST_OPEN_DLV_SEQ, &s->committed_dlv_seq) < 0 ||
        open_int(s, ST_OPEN_EVT_SEQ, &s->committed_evt_seq) < 0) {
        store_err(err, errlen, "store: %s: %s", path, sqlite3_errmsg(s->db));
        return -1;
    }
    s->dlv_seq_hw = s->committed_dlv_seq;
    s->evt_seq_hw = s->committed_evt_seq;
    if (sqlite3_bind_int64(st, 1, util_now_ms()) != SQLITE_OK ||
        (rc = sqlite3_step(st)) != SQLITE_DONE) {
        store_err(err, errlen, "store: %s: releasing leases: %s", path, sqlite3_errmsg(s->db));
        stmt_done(st);
        return -1;
    }
    stmt_done(st);
    if (sqlite3_changes(s->db) > 0)
        log_msg(LOG_INFO, "store: released %d deliveries leased by an earlier run",
                sqlite3_changes(s->db));
    return 0;
}

/* Closes what store_open opened, in reverse; s may be partly set up. */
static void store_close(struct store_sq *s) {
    int i;
    /* The threads go first: the loop connection must be the last one, so
     * that its close checkpoints (syncing WAL and database) and removes the
     * WAL; a close with the checkpoint connection still open would not. */
    store_sync_stop(s);
    store_ckpt_stop(s);
    if (s->commit_ev)
        event_free(s->commit_ev);
    if (s->commit_late_ev)
        event_free(s->commit_late_ev);
    if (s->full_ev)
        event_free(s->full_ev);
    for (i = 0; i < ST_COUNT_; i++) {
        sqlite3_finalize(s->st[i]);
        sqlite3_finalize(s->rst[i]);
    }
    if (s->rdb && sqlite3_close(s->rdb) != SQLITE_OK)
        log_msg(LOG_ERROR, "store: close of the read connection: %s", sqlite3_errmsg(s->rdb));
    if (sqlite3_close(s->db) != SQLITE_OK)
        log_msg(LOG_ERROR, "store: close: %s", sqlite3_errmsg(s->db));
    free(s->cbs);
    free(s->inflight);
    free(s->plan_ids);
    util_buf_free(&s->matched);
    if (s->owner_fd >= 0)
        close(s->owner_fd); /* releases the store for the next process */
    free(s);
}

struct store_sq *store_sqlite_open(struct event_base *base, const char *url, const char *base_dir,
                                   char *err, size_t errlen) {
    struct store_sq *s = NULL;
    char *path = NULL;
    int sync_full = 1, prio;

    path = store_url_parse(url, base_dir, &sync_full, err, errlen);
    if (!path)
        goto fail;
    s = calloc(1, sizeof *s);
    if (!s) {
        store_err(err, errlen, "store: out of memory");
        goto fail;
    }
    s->backlog_stale = 1; /* read at the first store_backlog */
    s->last_outcome_ok = 1;
    s->owner_fd = -1;
    if (store_own(s, path, err, errlen) < 0 || store_db_open(s, path, err, errlen) < 0 ||
        store_schema_apply(s->db, path, err, errlen) < 0 ||
        store_stmts_prepare(s->db, s->st, err, errlen) < 0 ||
        store_rdb_open(s, path, err, errlen) < 0 || store_open_recover(s, path, err, errlen) < 0)
        goto fail;
    s->commit_ev = event_new(base, -1, 0, store_commit_cb, s);
    s->commit_late_ev = evtimer_new(base, store_commit_late_cb, s);
    s->full_ev = evtimer_new(base, store_full_cb, s);
    if (!s->commit_ev || !s->commit_late_ev || !s->full_ev) {
        store_err(err, errlen, "store: cannot create commit event");
        goto fail;
    }
    /* Lowest priority: the commit runs after every ready request of a turn. */
    prio = event_base_get_npriorities(base) - 1;
    if (prio > 0)
        event_priority_set(s->commit_ev, prio);
    if (store_ckpt_start(s, path, err, errlen) < 0)
        goto fail;
    if (sync_full && store_sync_start(s, base, err, errlen) < 0)
        goto fail;
    free(path);
    return s;

fail:
    /* Every refusal names the file, whichever step found the fault. */
    if (path && errlen && !strstr(err, path)) {
        char why[512];
        const char *rest = strncmp(err, "store: ", 7) == 0 ? err + 7 : err;
        snprintf(why, sizeof why, "%s", rest);
        store_err(err, errlen, "store: %s: %s", path, why);
    }
    free(path);
    if (s)
        store_close(s);
    return NULL;
}

void store_sqlite_free(struct store_sq *s) {
    int rounds = 0;
    if (!s)
        return;
    /* Callbacks may write and register more callbacks: drain them all, or
     * sqlite3_close would roll their group back unseen. */
    do {
        store_sqlite_flush(s);
    } while ((s->in_txn || s->failed || s->ncbs) && ++rounds < 100);
    if (s->in_txn || s->ncbs)
        log_msg(LOG_ERROR, "store: closing with writes still coming from commit callbacks");
    store_close(s);
}
