/* store_pg.c -- the PostgreSQL store's schema (version STORE_PG_SCHEMA_VERSION,
 * the whole store, written now so the data areas can move in behind
 * store_backend.h) and the schema step of `waybill migrate`, `check` and
 * `serve`: one transaction under pg_advisory_xact_lock, pipelined (two round
 * trips: the version, then the DDL with COMMIT).
 *
 * The tables, and what they are shaped for (many instances, one database):
 * - events: one row per accepted event, UNIQUE (source, source_id) is the
 *   dedupe key that holds across instances (INSERT ... ON CONFLICT).
 * - deliveries: what a delivery is (payload, endpoint, order key), written
 *   once and never updated; delivery_queue: one narrow row per live
 *   delivery (pending or held) with its schedule and its lease (owner,
 *   expiry), claimed with FOR UPDATE SKIP LOCKED, deleted when it ends;
 *   delivery_outcomes: the end of a delivery (delivered, failed, skipped),
 *   appended; attempts: appended, one row per attempt, its primary key
 *   (delivery, n) is what keeps an attempt recorded once.
 *   Why: a held xmin horizon (a long REPEATABLE READ transaction, a
 *   pg_dump, an idle replication slot) keeps every dead row version until it
 *   ends. Updating wide delivery rows in place per attempt and per lease
 *   renewal bloats the table and its indexes that claims scan; here the
 *   rows that change are the queue's narrow ones (fillfactor 70, and the
 *   lease columns carry no index, so a lease renewal is a HOT update that
 *   adds no index entry), the payloads never change, and history is
 *   inserts. Rotating the queue table (TRUNCATE, which no snapshot holds
 *   back) is the next step if the bench row of issue 15 asks for it.
 * - batch_items and batch_windows: a window per (endpoint, key, start),
 *   closed once (its row's closed_at, set under the row's lock).
 * - endpoint_state: disable/enable and counters, plus the ordered head's
 *   owner and expiry (one instance owns an ordered endpoint's head), and
 *   (version 2) the endpoint's `rate` bucket shared by all instances.
 * - subscriptions, nonces: as in the SQLite store.
 * - store_meta: the seq high-water marks; instances: who holds leases.
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "store_pg.h"
#include "store_pg_int.h"
#include "util.h"

/* ---- the schema, version 1 (each later version adds its step below) ---- */

static const char *const schema_v1[] = {
    "CREATE TABLE events ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id text NOT NULL UNIQUE,"
    " source text NOT NULL,"
    " source_id text NOT NULL,"
    " type text,"
    " status text NOT NULL,"
    " error text,"
    " created_at text,"
    " received_at bigint NOT NULL,"
    " headers text,"
    " data text,"
    " raw bytea,"
    " shipment text,"
    " matched text,"
    " UNIQUE (source, source_id))",
    "CREATE INDEX events_received ON events (seq) WHERE status = 'received'",
    "CREATE INDEX events_received_at ON events (received_at)",
    "CREATE TABLE deliveries ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id text NOT NULL UNIQUE,"
    " event_id text NOT NULL,"
    " endpoint text NOT NULL,"
    " event_type text,"
    " payload bytea,"
    " content_type text,"
    " headers text,"
    " created_at bigint NOT NULL,"
    " batch boolean NOT NULL DEFAULT false,"
    " okey text)",
    "CREATE INDEX deliveries_event ON deliveries (event_id)",
    "CREATE TABLE delivery_queue ("
    " delivery_seq bigint PRIMARY KEY REFERENCES deliveries (seq) ON DELETE CASCADE,"
    " endpoint text NOT NULL,"
    " okey text,"
    " status text NOT NULL CHECK (status IN ('pending', 'held')),"
    " next_at bigint NOT NULL,"
    " schedule_pos integer NOT NULL DEFAULT 0,"
    " attempts integer NOT NULL DEFAULT 0,"
    " lease_owner text,"
    " lease_until bigint NOT NULL DEFAULT 0"
    ") WITH (fillfactor = 70)",
    "CREATE INDEX delivery_queue_due ON delivery_queue (endpoint, next_at)"
    " WHERE status = 'pending'",
    "CREATE INDEX delivery_queue_key ON delivery_queue (endpoint, okey, delivery_seq)"
    " WHERE okey IS NOT NULL",
    "CREATE INDEX delivery_queue_held ON delivery_queue (endpoint, delivery_seq)"
    " WHERE status = 'held'",
    /* the live leases of an endpoint, counted by a capped claim */
    "CREATE INDEX delivery_queue_leased ON delivery_queue (endpoint, lease_until)"
    " WHERE lease_until > 0",
    "CREATE TABLE delivery_outcomes ("
    " delivery_seq bigint PRIMARY KEY REFERENCES deliveries (seq) ON DELETE CASCADE,"
    " status text NOT NULL CHECK (status IN ('delivered', 'failed', 'skipped')),"
    " attempts integer NOT NULL,"
    " at bigint NOT NULL,"
    " endpoint text NOT NULL,"
    " okey text)",
    "CREATE INDEX delivery_outcomes_failed_key ON delivery_outcomes (endpoint, delivery_seq)"
    " WHERE status = 'failed' AND okey IS NOT NULL",
    "CREATE TABLE attempts ("
    " delivery_id text NOT NULL,"
    " n integer NOT NULL,"
    " at bigint NOT NULL,"
    " status_code integer NOT NULL,"
    " latency_ms integer NOT NULL,"
    " error text,"
    " response bytea,"
    " instance text,"
    " PRIMARY KEY (delivery_id, n))",
    "CREATE TABLE batch_windows ("
    " endpoint text NOT NULL,"
    " bkey text NOT NULL DEFAULT '',"
    " window_ms bigint NOT NULL,"
    " window_start bigint NOT NULL,"
    " closes_at bigint NOT NULL,"
    " closed_at bigint,"
    " delivery_id text,"
    " status text,"
    " PRIMARY KEY (endpoint, bkey, window_ms, window_start))",
    "CREATE INDEX batch_windows_due ON batch_windows (closes_at) WHERE closed_at IS NULL",
    "CREATE TABLE batch_items ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " endpoint text NOT NULL,"
    " bkey text NOT NULL DEFAULT '',"
    " window_ms bigint NOT NULL,"
    " window_start bigint NOT NULL,"
    " event_id text NOT NULL,"
    " payload bytea,"
    " delivery_id text)",
    "CREATE INDEX batch_items_open ON batch_items (endpoint, bkey, window_ms, window_start, seq)"
    " WHERE delivery_id IS NULL",
    "CREATE INDEX batch_items_event ON batch_items (event_id)",
    "CREATE TABLE endpoint_state ("
    " name text PRIMARY KEY,"
    " disabled boolean NOT NULL DEFAULT false,"
    " disabled_at bigint NOT NULL DEFAULT 0,"
    " reason text,"
    " last_error text,"
    " last_error_at bigint NOT NULL DEFAULT 0,"
    " first_failure_at bigint NOT NULL DEFAULT 0,"
    " ok bigint NOT NULL DEFAULT 0,"
    " failed bigint NOT NULL DEFAULT 0,"
    " head_owner text,"
    " head_until bigint NOT NULL DEFAULT 0)",
    "CREATE TABLE subscriptions ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id text NOT NULL UNIQUE,"
    " event text NOT NULL,"
    " pattern text NOT NULL UNIQUE,"
    " url text NOT NULL,"
    " secret text NOT NULL,"
    " created_at bigint NOT NULL)",
    "CREATE TABLE nonces ("
    " source text NOT NULL,"
    " nonce text NOT NULL,"
    " digest text NOT NULL,"
    " seen_at bigint NOT NULL,"
    " PRIMARY KEY (source, nonce))",
    "CREATE TABLE store_meta (key text PRIMARY KEY, value bigint NOT NULL)",
    "INSERT INTO store_meta (key, value) VALUES ('event_seq_max', 0), ('delivery_seq_max', 0)",
    "CREATE TABLE instances ("
    " id text PRIMARY KEY,"
    " started_at bigint NOT NULL,"
    " seen_at bigint NOT NULL,"
    " version text NOT NULL)",
};

/* ---- version 2: an endpoint's `rate` across instances; retention ---- */

/* The endpoint's token bucket, shared by every instance's claims (see
 * store_pg_claim.c): tokens held, and the database clock's Unix ms of the
 * last refill (0: never used; the bucket starts empty). And the batch
 * items of a batch delivery found by its id (store_pg_retain.c: without
 * it each pass touching batched events scanned the whole table). */
static const char *const schema_v2[] = {
    "ALTER TABLE endpoint_state ADD COLUMN tokens double precision NOT NULL DEFAULT 0,"
    " ADD COLUMN tokens_at bigint NOT NULL DEFAULT 0",
    "CREATE INDEX batch_items_delivery ON batch_items (delivery_id)"
    " WHERE delivery_id IS NOT NULL",
};

/* ---- version 3: a killed instance found by its session lock ---- */

/* lock_key: the second key of the session advisory lock the instance holds
 * on its write connection while it lives (STORE_PG_INSTANCE_LOCK, lock_key);
 * session_lock: it took one (not behind a pooler). store_pg_reap.c gives a
 * dead one's leases back. And the due index in the claims' own order
 * (next_at, then delivery_seq): with next_at alone every claim read all
 * of its endpoint's due rows and sorted them to take the first few (9 ms
 * at a backlog of 5,000, growing with it). */
static const char *const schema_v3[] = {
    "ALTER TABLE instances ADD COLUMN lock_key integer NOT NULL DEFAULT 0,"
    " ADD COLUMN session_lock boolean NOT NULL DEFAULT false",
    "DROP INDEX delivery_queue_due",
    "CREATE INDEX delivery_queue_due ON delivery_queue (endpoint, next_at, delivery_seq)"
    " WHERE status = 'pending'",
};

/* Each version's statements, in order: versions[v - 1] brings v - 1 to v. */
static const struct {
    const char *const *sql;
    size_t n;
} versions[STORE_PG_SCHEMA_VERSION] = {
    {schema_v1, sizeof schema_v1 / sizeof schema_v1[0]},
    {schema_v2, sizeof schema_v2 / sizeof schema_v2[0]},
    {schema_v3, sizeof schema_v3 / sizeof schema_v3[0]},
};

/* ---- the schema step: a small state machine on a private loop ---- */

struct job {
    enum store_pg_mode mode;
    const char *url;
    char shown[512]; /* url without its password */
    struct event_base *base;
    struct store_pg_conn *conn;
    int done, rc;
    int was_up;         /* the connection came up once */
    int attempts;       /* connection attempts that failed */
    int64_t wait_until; /* util_mono_ms() until which a failed attempt is retried */
    int failed;         /* a statement of the current round trip failed */
    char why[512];      /* its reason (scrubbed) */
    long long version;  /* the version found; -1: no version table */
    long long ntables;  /* tables made by this run */
    char *msg;
    size_t msglen;
};

static void job_end(struct job *j, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_end(struct job *j, int rc, const char *fmt, ...) {
    va_list ap;
    if (j->done)
        return;
    va_start(ap, fmt);
    vsnprintf(j->msg, j->msglen, fmt, ap);
    va_end(ap);
    j->done = 1;
    j->rc = rc;
    event_base_loopbreak(j->base);
}

/* Any statement's result: remembers the first failure of the trip. */
static void on_step(void *arg, const PGresult *res, const char *err) {
    struct job *j = arg;
    if (j->failed)
        return;
    if (!res || !store_pg_res_ok(res)) {
        j->failed = 1;
        store_pg_scrub(j->url, res ? store_pg_res_error(res) : err, j->why, sizeof j->why);
    }
}

static int job_send(struct job *j, const char *sql, store_pg_result_fn fn) {
    return store_pg_conn_query(j->conn, sql, 0, NULL, fn, j);
}

/* What check says once the version is read: the state, exit 0 (serve
 * creates the schema when there is none). */
static void job_checked(struct job *j, const char *state) {
    job_end(j, 0, "store: '%s': %s", j->shown, state);
}

static void job_newer(struct job *j) {
    job_end(j, -1,
            "store: '%s': the database's schema is version %lld, newer than this waybill's "
            "(%d): run the waybill that wrote it, or a newer one",
            j->shown, j->version, STORE_PG_SCHEMA_VERSION);
}

/* COMMIT of the DDL came back. */
static void on_committed(void *arg, const PGresult *res, const char *err) {
    struct job *j = arg;
    char state[128];
    on_step(arg, res, err);
    if (j->failed) {
        job_end(j, -1, "store: '%s': creating the schema failed: %s", j->shown, j->why);
        return;
    }
    if (j->version <= 0)
        snprintf(state, sizeof state, "created schema version %d (%lld statements)",
                 STORE_PG_SCHEMA_VERSION, j->ntables);
    else
        snprintf(state, sizeof state, "upgraded the schema from version %lld to %d", j->version,
                 STORE_PG_SCHEMA_VERSION);
    job_end(j, 1, "store: '%s': %s", j->shown, state); /* migrate and serve alike */
}

/* The DDL from j->version up, the version row and COMMIT: one trip. */
static void job_upgrade(struct job *j) {
    char ins[160];
    long long from = j->version < 0 ? 0 : j->version;
    j->ntables = 0;
    for (long long v = from; v < STORE_PG_SCHEMA_VERSION; v++)
        for (size_t i = 0; i < versions[v].n; i++) {
            if (job_send(j, versions[v].sql[i], on_step) < 0)
                goto lost;
            j->ntables++;
        }
    snprintf(ins, sizeof ins,
             "INSERT INTO waybill_schema (version, written_by) VALUES (%d, 'waybill %s')",
             STORE_PG_SCHEMA_VERSION, WAYBILL_VERSION);
    if (job_send(j, ins, on_step) < 0 || job_send(j, "COMMIT", on_committed) < 0 ||
        store_pg_conn_sync(j->conn) < 0)
        goto lost;
    return;
lost:
    job_end(j, -1, "store: '%s': the connection was lost", j->shown);
}

/* The version read inside the locked transaction (migrate, serve). */
static void on_version_locked(void *arg, const PGresult *res, const char *err) {
    struct job *j = arg;
    on_step(arg, res, err);
    if (j->failed) {
        job_end(j, -1, "store: '%s': reading the schema version failed: %s", j->shown, j->why);
        return;
    }
    j->version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (j->version > STORE_PG_SCHEMA_VERSION) {
        job_newer(j);
        return;
    }
    if (j->version == STORE_PG_SCHEMA_VERSION) {
        char state[96];
        snprintf(state, sizeof state, "schema version %lld is in place", j->version);
        if (job_send(j, "COMMIT", on_step) < 0 || store_pg_conn_sync(j->conn) < 0)
            job_end(j, -1, "store: '%s': the connection was lost", j->shown);
        else
            job_end(j, 0, "store: '%s': %s, nothing to do", j->shown, state);
        return;
    }
    job_upgrade(j);
}

/* check: the version, if there is a version table (nothing is changed). */
static void on_version_read(void *arg, const PGresult *res, const char *err) {
    struct job *j = arg;
    char state[96];
    on_step(arg, res, err);
    if (j->failed) {
        job_end(j, -1, "store: '%s': reading the schema version failed: %s", j->shown, j->why);
        return;
    }
    j->version = PQgetisnull(res, 0, 0) ? -1 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (j->version > STORE_PG_SCHEMA_VERSION) {
        job_newer(j);
        return;
    }
    if (j->version < 0)
        snprintf(state, sizeof state, "the database has none yet: migrate or serve creates it");
    else if (j->version < STORE_PG_SCHEMA_VERSION)
        snprintf(state, sizeof state, "version %lld is in place; migrate brings it to %d",
                 j->version, STORE_PG_SCHEMA_VERSION);
    else
        snprintf(state, sizeof state, "schema version %lld is in place", j->version);
    job_checked(j, state);
}

static void on_table_found(void *arg, const PGresult *res, const char *err) {
    struct job *j = arg;
    on_step(arg, res, err);
    if (j->failed) {
        job_end(j, -1, "store: '%s': reading the schema version failed: %s", j->shown, j->why);
        return;
    }
    if (PQgetisnull(res, 0, 0)) {
        j->version = -1;
        on_version_read(arg, res, err);
        return;
    }
    if (job_send(j, "SELECT max(version) FROM waybill_schema", on_version_read) < 0 ||
        store_pg_conn_sync(j->conn) < 0)
        job_end(j, -1, "store: '%s': the connection was lost", j->shown);
}

static void on_conn(void *arg, int up, const char *err) {
    struct job *j = arg;
    int bad = 0;
    if (!up && j->was_up) { /* what was in flight failed: never an ok */
        job_end(j, -1, "store: '%s': the connection was lost: %s", j->shown, err);
        return;
    }
    if (!up) { /* the connection tries again after its backoff */
        if (++j->attempts > 0 && util_mono_ms() < j->wait_until)
            return;
        if (j->attempts > 1)
            job_end(j, -1, "store: cannot connect to '%s' (%d attempts): %s", j->shown, j->attempts,
                    err);
        else
            job_end(j, -1, "store: cannot connect to '%s': %s", j->shown, err);
        return;
    }
    j->was_up = 1;
    if (j->mode == STORE_PG_CHECK) {
        bad = job_send(j, "SELECT to_regclass('waybill_schema')::text", on_table_found) < 0;
    } else {
        /* One trip: the transaction, its lock (held to COMMIT: two
         * processes at once queue here, and the second finds the schema
         * made), the version table and the version. */
        bad = job_send(j, "BEGIN", on_step) < 0 ||
              job_send(j, "SELECT pg_advisory_xact_lock(" STORE_PG_SCHEMA_LOCK ")", on_step) < 0 ||
              job_send(j,
                       "CREATE TABLE IF NOT EXISTS waybill_schema ("
                       " version integer PRIMARY KEY,"
                       " applied_at timestamptz NOT NULL DEFAULT now(),"
                       " written_by text NOT NULL)",
                       on_step) < 0 ||
              job_send(j, "SELECT coalesce(max(version), 0) FROM waybill_schema",
                       on_version_locked) < 0;
    }
    if (bad || store_pg_conn_sync(j->conn) < 0)
        job_end(j, -1, "store: '%s': the connection was lost", j->shown);
}

/* The whole step must end in this time (a lock held elsewhere included). */
#define JOB_LIMIT_MS 60000

static void on_job_timeout(evutil_socket_t fd, short what, void *arg) {
    struct job *j = arg;
    UNUSED(fd);
    UNUSED(what);
    job_end(j, -1, "store: '%s': no answer in time", j->shown);
}

int store_pg_is_url(const char *url) {
    return url && (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0);
}

int store_pg_schema(const char *url, enum store_pg_mode mode, int connect_ms, int wait_ms,
                    char *msg, size_t msglen) {
    struct job j = {.mode = mode, .url = url, .msg = msg, .msglen = msglen, .rc = -1};
    struct timeval tv = {JOB_LIMIT_MS / 1000 + (wait_ms > 0 ? wait_ms / 1000 : 0), 0};
    struct event *limit = NULL;
    char err[512];

    snprintf(msg, msglen, "store: out of memory");
    util_url_redact(url, j.shown, sizeof j.shown);
    if (!store_pg_is_url(url)) {
        snprintf(msg, msglen, "store: '%s' is not a postgres:// or postgresql:// URL", j.shown);
        return -1;
    }
    if (!(j.base = event_base_new()) || !(limit = evtimer_new(j.base, on_job_timeout, &j)))
        goto done;
    if (!(j.conn = store_pg_conn_new(j.base, url, connect_ms, on_conn, &j, err, sizeof err))) {
        snprintf(msg, msglen, "store: '%s': %s", j.shown, err);
        goto done;
    }
    j.wait_until = util_mono_ms() + (wait_ms > 0 ? wait_ms : 0);
    evtimer_add(limit, &tv);
    while (!j.done && event_base_dispatch(j.base) == 0)
        ;
    if (!j.done)
        snprintf(msg, msglen, "store: '%s': the event loop failed", j.shown);
done:
    j.done = 1; /* callbacks run by the close below change nothing */
    store_pg_conn_free(j.conn);
    if (limit)
        event_free(limit);
    if (j.base)
        event_base_free(j.base);
    return j.rc;
}
