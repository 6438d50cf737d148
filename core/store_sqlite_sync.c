/* store_sqlite_sync.c -- the store's two helper threads: the sync thread, which
 * fdatasync()s the WAL off the loop (sync=full), and the checkpoint thread,
 * which copies the WAL into the database on a second connection; plus the
 * loop-side WAL maintenance after each commit (see store_wal_maintain).
 * Invariants: every field the loop and a thread share is guarded by that
 * thread's mutex, but the constants set before the thread starts; at most
 * one sync is asked and not finished (one group in flight); the loop
 * connection never checkpoints except to let a WAL that load kept from
 * restarting start over.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

#include "log.h"
#include "metrics.h"
#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"
#include "util.h"

/* WAL frames (4 KiB pages) after which the checkpoint thread copies the WAL
 * into the database; and after which the loop itself checkpoints the tail,
 * so that its next transaction can restart the WAL from the beginning
 * (SQLite restarts a WAL only from a writer whose snapshot began with the
 * WAL fully copied, which a loop that is never idle would not reach). */
#define STORE_CKPT_FRAMES 1000
#define STORE_RESTART_FRAMES 16000

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

/* ---- the sync thread: fdatasync of the WAL off the loop ---- */

/* Shared between the loop and the sync thread; every field but the
 * constants (wal_fd, efd, thread, ev) is guarded by mu. asked/done count
 * the syncs requested and finished (asked is written by the loop only);
 * err is the errno of a failed fdatasync. */
struct store_sync {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, finished;
    int wal_fd;       /* read-only fd of PATH-wal: fdatasync works per file, not per fd */
    int efd;          /* eventfd: the thread adds 1 when a sync finished */
    struct event *ev; /* the loop's read event on efd */
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

void store_sync_ask(struct store_sq *s) {
    struct store_sync *y = s->sync;
    event_add(y->ev, NULL);
    pthread_mutex_lock(&y->mu);
    STORE_CHECK(y->asked == y->done); /* one group in flight at most */
    y->asked++;
    pthread_cond_signal(&y->wake);
    pthread_mutex_unlock(&y->mu);
}

/* A failed fdatasync leaves the kernel's page cache in an unknown state
 * (the pages may be marked clean but never written): the only safe answer
 * is to stop and let the next start recover from what is on disk, as
 * PostgreSQL does. */
static void sync_failed(int err) __attribute__((noreturn));
static void sync_failed(int err) {
    log_msg(LOG_ERROR,
            "store: fdatasync of the WAL failed: %s; stopping so that the next"
            " start recovers from the disk",
            strerror(err));
    _exit(EXIT_FAILURE);
}

void store_sync_now(struct store_sq *s) {
    if (s->sync && fdatasync(s->sync->wal_fd) != 0)
        sync_failed(errno);
}

/* The sync in flight finished: stop on its error, else the group is durable. */
static void sync_finish(struct store_sq *s) {
    int err;
    pthread_mutex_lock(&s->sync->mu);
    err = s->sync->err;
    pthread_mutex_unlock(&s->sync->mu);
    if (err)
        sync_failed(err);
    event_del(s->sync->ev);
    store_group_durable(s);
}

/* The eventfd said a sync finished (or an old count is left over from a
 * sync store_flush already finished; then nothing is in flight). */
static void store_sync_cb(evutil_socket_t fd, short what, void *arg) {
    struct store_sq *s = arg;
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

void store_sync_wait(struct store_sq *s) {
    if (!s->sync_busy)
        return;
    pthread_mutex_lock(&s->sync->mu);
    while (s->sync->done != s->sync->asked)
        pthread_cond_wait(&s->sync->finished, &s->sync->mu);
    pthread_mutex_unlock(&s->sync->mu);
    sync_finish(s);
}

/* Opens the WAL SQLite writes for s->db (which exists: store_open has read
 * and written in WAL mode by now; named by SQLite, which resolves a
 * symlinked database to the real file and keeps the WAL beside it) into
 * y->wal_fd, and syncs its directory once, so the WAL's own directory entry
 * is durable before any commit counts on it. Returns 0 or -1. */
static int sync_open_wal(struct store_sq *s, struct store_sync *y, char *err, size_t errlen) {
    const char *db_file = sqlite3_db_filename(s->db, "main");
    char *wal = NULL, *dir = NULL, *slash;
    int dfd, ret = -1;
    if (!db_file || !sqlite3_filename_wal(db_file) ||
        !(wal = strdup(sqlite3_filename_wal(db_file))) || !(dir = strdup(wal))) {
        store_err(err, errlen, "store: out of memory");
        goto done;
    }
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
    ret = 0;
done:
    free(wal);
    free(dir);
    return ret;
}

int store_sync_start(struct store_sq *s, struct event_base *base, char *err, size_t errlen) {
    struct store_sync *y = calloc(1, sizeof *y);
    if (!y) {
        store_err(err, errlen, "store: out of memory");
        return -1;
    }
    y->wal_fd = y->efd = -1;
    if (sync_open_wal(s, y, err, errlen) < 0)
        goto fail;
    y->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (y->efd < 0) {
        store_err(err, errlen, "store: eventfd: %s", strerror(errno));
        goto fail;
    }
    y->ev = event_new(base, y->efd, EV_READ | EV_PERSIST, store_sync_cb, s);
    if (!y->ev) {
        store_err(err, errlen, "store: cannot create the sync event");
        goto fail;
    }
    pthread_mutex_init(&y->mu, NULL);
    pthread_cond_init(&y->wake, NULL);
    pthread_cond_init(&y->finished, NULL);
    if (thread_start(&y->thread, sync_main, y) != 0) {
        store_err(err, errlen, "store: cannot start the sync thread");
        pthread_mutex_destroy(&y->mu);
        pthread_cond_destroy(&y->wake);
        pthread_cond_destroy(&y->finished);
        goto fail;
    }
    s->sync = y;
    return 0;
fail:
    if (y->ev)
        event_free(y->ev);
    if (y->wal_fd >= 0)
        close(y->wal_fd);
    if (y->efd >= 0)
        close(y->efd);
    free(y);
    return -1;
}

void store_sync_stop(struct store_sq *s) {
    struct store_sync *y = s->sync;
    if (!y)
        return;
    store_sync_wait(s);
    pthread_mutex_lock(&y->mu);
    y->stop = 1;
    pthread_cond_signal(&y->wake);
    pthread_mutex_unlock(&y->mu);
    pthread_join(y->thread, NULL);
    pthread_mutex_destroy(&y->mu);
    pthread_cond_destroy(&y->wake);
    pthread_cond_destroy(&y->finished);
    event_free(y->ev);
    close(y->wal_fd);
    close(y->efd);
    free(y);
    s->sync = NULL;
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

/* Runs on the loop, after each commit of the loop connection. */
static int store_wal_hook(void *arg, sqlite3 *db, const char *name, int nframes) {
    struct store_sq *s = arg;
    UNUSED(db);
    UNUSED(name);
    /* Fewer frames than after the last commit: the log restarted. */
    metrics_store_wal_frames(nframes >= s->wal_frames ? nframes - s->wal_frames : nframes);
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
void store_wal_maintain(struct store_sq *s) {
    struct store_ckpt *k = s->ckpt;
    int busy, nlog, ncopied;
    if (!k)
        return;
    STORE_CHECK(!s->in_txn); /* the tail checkpoint needs no transaction open */
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

/* Opens the checkpoint connection and starts its thread; from here on the
 * loop connection never checkpoints by itself (the WAL hook replaces
 * SQLite's auto-checkpoint). */
int store_ckpt_start(struct store_sq *s, const char *path, char *err, size_t errlen) {
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

void store_ckpt_stop(struct store_sq *s) {
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
