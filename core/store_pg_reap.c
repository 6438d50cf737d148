/* store_pg_reap.c -- the PostgreSQL backend finds instances that died and
 * gives their leases back at once, not when the leases end.
 *
 * Why: a lease (the `lease` setting, 30 s by default) is how long an
 * instance may hold a delivery it claimed. An instance killed with SIGKILL
 * (or its host gone) leaves its leases behind; without this the other
 * instances, and the same service restarted at once, wait for them to end
 * before those deliveries go out.
 *
 * How an instance is known dead: while it lives, each instance holds a
 * session advisory lock on its write connection (pg_try_advisory_lock(
 * STORE_PG_INSTANCE_LOCK, instances.lock_key), taken by its registration
 * in store_pg_be.c each time that connection comes up). PostgreSQL drops a
 * session's locks when the session ends: when the process dies, its
 * kernel closes the socket and the backend exits. Every second each
 * instance looks (pg_locks, on the read connection) for registered
 * instances whose lock nobody holds. One seen so for REAP_GRACE_MS in a row
 * is dead: in one short transaction its leased queue rows get lease_until
 * 0 (claimable now; a claim counts them as takeovers in /metrics, as an
 * expired lease: its delivery may be sent twice), its ordered heads are
 * freed, and its instances row goes once nothing of it is left. Rows
 * another transaction holds are stepped over (SKIP LOCKED, so the pass
 * waits for nothing and deadlocks with nothing) and taken at a later pass.
 *
 * What could make a live instance look dead, and why it does not:
 * - a write connection that dropped and is reconnecting: its lock comes
 *   back with its registration, well within the grace (the connection's
 *   backoff starts at 0.1 s);
 * - a PostgreSQL restart or failover drops every session at once and each
 *   instance reconnects on its own backoff (at most 5 s, plus a quarter):
 *   no release while the server started less than REAP_SETTLE_MS ago, nor
 *   within REAP_SETTLE_MS of this instance losing a connection of its own
 *   (a promoted standby's start time is old);
 * - behind a pooler (PgBouncer) a session lock would stay with a pooled
 *   server session: the registration takes none there (the backend pid
 *   libpq was told is not the session's), session_lock stays false, and
 *   such an instance's leases end at their expiry only.
 * An instance cut off from the database for longer than that while its
 * process runs on does have its leases given back: as with an expired
 * lease, its attempts in flight may be sent twice (counted), and its
 * outcomes are still recorded when it is back.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"
#include "store_backend.h"
#include "store_pg_be.h"
#include "store_pg_int.h"
#include "util.h"

#define REAP_PERIOD_MS 1000
#define REAP_GRACE_MS 2000
#define REAP_SETTLE_MS 8000
#define REAP_MAX 64 /* dead instances handled in one pass */

/* An instance seen without its lock, since first_ms (monotonic). */
struct pg_dead {
    struct pg_dead *next;
    int64_t first_ms;
    int seen; /* in the last look */
    char id[UTIL_ID_MAX];
};

/* $1 this instance, $2 REAP_SETTLE_MS. The registered instances with a
 * session lock that no session of this database holds; none while the
 * server is newly started. */
static const char FIND_SQL[] =
    "SELECT i.id FROM instances i WHERE i.session_lock AND i.id <> $1"
    " AND pg_postmaster_start_time() < now() - $2::bigint * interval '1 millisecond'"
    " AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory'"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid = " STORE_PG_INSTANCE_LOCK "::bigint::oid"
    " AND l.objid = i.lock_key::bigint::oid AND l.objsubid = 2 AND l.granted)"
    " ORDER BY i.id LIMIT 64"; /* REAP_MAX */

/* $1 the dead instances (a text array). */
static const char FREE_ROWS_SQL[] =
    "WITH r AS (UPDATE delivery_queue q SET lease_until = 0 FROM (SELECT delivery_seq"
    " FROM delivery_queue WHERE lease_owner = ANY($1::text[]) AND lease_until > 0"
    " FOR UPDATE SKIP LOCKED) s WHERE q.delivery_seq = s.delivery_seq RETURNING 1)"
    " SELECT count(*) FROM r";
static const char FREE_HEADS_SQL[] =
    "WITH h AS (UPDATE endpoint_state e SET head_until = 0 FROM (SELECT name FROM endpoint_state"
    " WHERE head_owner = ANY($1::text[]) AND head_until > 0 FOR UPDATE SKIP LOCKED) s"
    " WHERE e.name = s.name RETURNING 1) SELECT count(*) FROM h";
static const char FORGET_SQL[] =
    "DELETE FROM instances i WHERE i.id = ANY($1::text[])"
    " AND NOT EXISTS (SELECT 1 FROM delivery_queue q WHERE q.lease_owner = i.id"
    " AND q.lease_until > 0)"
    " AND NOT EXISTS (SELECT 1 FROM endpoint_state e WHERE e.head_owner = i.id"
    " AND e.head_until > 0) RETURNING i.id";

/* What one look or release found (owned by the pass; freed by its answer). */
struct pg_reap_pass {
    struct store_be *be;
    size_t n;
    char ids[REAP_MAX][UTIL_ID_MAX];
    long long rows, heads;
};

static struct pg_dead *dead_find(struct store_be *be, const char *id) {
    for (struct pg_dead *d = be->dead; d; d = d->next)
        if (strcmp(d->id, id) == 0)
            return d;
    return NULL;
}

static void dead_forget(struct store_be *be, const char *id) {
    for (struct pg_dead **p = &be->dead; *p; p = &(*p)->next)
        if (strcmp((*p)->id, id) == 0) {
            struct pg_dead *d = *p;
            *p = d->next;
            free(d);
            return;
        }
}

static int parse_ids(struct pg_op *op, int k, const PGresult *res) {
    struct pg_reap_pass *p = op->arg;
    int rows = PQntuples(res);
    if (k != 0)
        return 0;
    for (int r = 0; r < rows && p->n < REAP_MAX; r++)
        snprintf(p->ids[p->n++], UTIL_ID_MAX, "%s", PQgetvalue(res, r, 0));
    return 0;
}

static int parse_release(struct pg_op *op, int k, const PGresult *res) {
    struct pg_reap_pass *p = op->arg;
    if (k == 0 && PQntuples(res) == 1)
        p->rows = atoll(PQgetvalue(res, 0, 0));
    else if (k == 1 && PQntuples(res) == 1)
        p->heads = atoll(PQgetvalue(res, 0, 0));
    else if (k == 2) { /* from here: the instances forgotten */
        p->n = 0;
        for (int r = 0; r < PQntuples(res) && p->n < REAP_MAX; r++)
            snprintf(p->ids[p->n++], UTIL_ID_MAX, "%s", PQgetvalue(res, r, 0));
    }
    return 0;
}

static void released(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct pg_reap_pass *p = arg;
    struct store_be *be = p->be;
    char why[256];

    UNUSED(rows);
    UNUSED(n);
    if (!be->closing) {
        be->reap_busy = 0;
        if (status < 0)
            log_msg(LOG_DEBUG, "store: postgresql: giving back a dead instance's leases: %s",
                    store_pg_scrub(be->url, err, why, sizeof why));
        else if (p->rows || p->heads)
            log_msg(LOG_INFO,
                    "store: postgresql: an instance's database session ended (killed?): gave "
                    "back the leases of %lld deliveries and %lld ordered heads (claimable now, "
                    "not when the leases end)",
                    p->rows, p->heads);
        for (size_t i = 0; status >= 0 && i < p->n; i++)
            dead_forget(be, p->ids[i]);
    }
    free(p);
}

/* Gives back what the instances of p (seen dead long enough) held. */
static void release(struct store_be *be, struct pg_reap_pass *p) {
    struct pg_op *op;
    int ok;

    util_buf_reset(&be->buf);
    ok = util_buf_append(&be->buf, "{", 1) == 0;
    for (size_t i = 0; ok && i < p->n; i++)
        ok = pg_arr_text(&be->buf, i, p->ids[i]) == 0;
    ok = ok && util_buf_append(&be->buf, "}", 1) == 0;
    be->in_call++;
    if (!ok || !(op = pg_single(be, be->rd, 1, released, p, parse_release))) {
        be->in_call--;
        free(p);
        return;
    }
    be->reap_busy = 1;
    const char *param[1] = {be->buf.p};
    ok = pg_op_query(op, FREE_ROWS_SQL, 1, param) == 0 &&
         pg_op_query(op, FREE_HEADS_SQL, 1, param) == 0 &&
         pg_op_query(op, FORGET_SQL, 1, param) == 0;
    if (!ok)
        pg_op_drop(op, "out of memory"); /* released never runs */
    pg_tx_end(op->tx, NULL, NULL);
    be->in_call--;
    if (!ok) {
        be->reap_busy = 0;
        free(p);
    }
}

static void looked(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct pg_reap_pass *p = arg;
    struct store_be *be = p->be;
    int64_t now = util_mono_ms();
    size_t due = 0;

    UNUSED(rows);
    UNUSED(n);
    UNUSED(err);
    if (be->closing) {
        free(p);
        return;
    }
    be->reap_busy = 0;
    if (status < 0) { /* the next look tries again */
        free(p);
        return;
    }
    for (struct pg_dead *d = be->dead; d; d = d->next)
        d->seen = 0;
    for (size_t i = 0; i < p->n; i++) {
        struct pg_dead *d = dead_find(be, p->ids[i]);
        if (!d && (d = calloc(1, sizeof *d))) {
            d->first_ms = now;
            snprintf(d->id, sizeof d->id, "%s", p->ids[i]);
            d->next = be->dead;
            be->dead = d;
        }
        if (d)
            d->seen = 1;
    }
    for (struct pg_dead **pp = &be->dead; *pp;) { /* its lock came back: alive */
        struct pg_dead *d = *pp;
        if (d->seen) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        free(d);
    }
    if (be->lost_ms && now - be->lost_ms < REAP_SETTLE_MS) {
        free(p);
        return;
    }
    for (struct pg_dead *d = be->dead; d; d = d->next)
        if (now - d->first_ms >= REAP_GRACE_MS && due < REAP_MAX)
            snprintf(p->ids[due++], UTIL_ID_MAX, "%s", d->id);
    p->n = due;
    if (!due) {
        free(p);
        return;
    }
    release(be, p);
}

static void reap_tick(evutil_socket_t fd, short what, void *arg) {
    struct store_be *be = arg;
    struct pg_reap_pass *p;
    struct pg_op *op;
    char settle[24];
    const char *param[2] = {be->instance, settle};
    int ok;

    UNUSED(fd);
    UNUSED(what);
    if (be->reap_busy || !store_pg_conn_up(be->rd) || !(p = calloc(1, sizeof *p)))
        return;
    p->be = be;
    snprintf(settle, sizeof settle, "%d", REAP_SETTLE_MS);
    be->in_call++;
    if (!(op = pg_single(be, be->rd, 0, looked, p, parse_ids))) {
        be->in_call--;
        free(p);
        return;
    }
    be->reap_busy = 1;
    ok = pg_op_query(op, FIND_SQL, 2, param) == 0;
    if (!ok)
        pg_op_drop(op, "out of memory"); /* looked never runs */
    pg_tx_end(op->tx, NULL, NULL);
    be->in_call--;
    if (!ok) {
        be->reap_busy = 0;
        free(p);
    }
}

int store_pg_reap_start(struct store_be *be) {
    struct timeval period = {REAP_PERIOD_MS / 1000, (REAP_PERIOD_MS % 1000) * 1000};
    if (!(be->reap_timer = event_new(be->base, -1, EV_PERSIST, reap_tick, be)) ||
        event_add(be->reap_timer, &period) < 0)
        return -1;
    return 0;
}

void store_pg_reap_stop(struct store_be *be) {
    if (be->reap_timer)
        event_free(be->reap_timer);
    be->reap_timer = NULL;
    while (be->dead) {
        struct pg_dead *d = be->dead;
        be->dead = d->next;
        free(d);
    }
}
