/* store_pg_conn.c -- one PostgreSQL connection on the libevent loop, through
 * libpq's asynchronous API: PQconnectStartParams/PQconnectPoll to connect,
 * then nonblocking pipeline mode (libpq 14+: many queries, one Sync, one
 * round trip), PQsocket watched by an event, results handed to each query's
 * callback in order.
 *
 * Why on the loop and not a database thread fed by a queue: every other
 * wait of waybill (carriers' requests, deliveries through curl multi, the
 * admin API) is already an event on this loop, and the store's group commit
 * is a loop-turn notion (store.h); libpq's nonblocking pipeline lets one
 * connection carry a whole group's statements in one round trip without a
 * second thread, a queue, locks or a wakeup pipe, and a lost connection is
 * one more event here rather than a state shared across threads. The loop
 * never waits for the database, with one exception libpq documents: a host
 * *name* is resolved by getaddrinfo inside PQconnectPoll (blocking); give
 * hostaddr= (or an IP address as the host) where that matters.
 *
 * Reconnect: after a failed attempt or a lost connection the next attempt
 * starts after 100 ms, then 200, 400, 800 ms, 1.6, 3.2 s, then every 5 s,
 * each with up to a quarter more at random (instances restarted together do
 * not knock in step); a successful connection resets the schedule. An
 * attempt tries the URL's hosts in order, as libpq does, each bounded by
 * the connect time (libpq's connect_timeout is not applied to
 * PQconnectPoll: a timer here is; the URL's connect_timeout=N sets it, at
 * least 2 s as in libpq). The timer is per host, as libpq documents for
 * its connect_timeout: when it fires the attempt goes on with the hosts
 * after the silent one (libpq is started again on the rest of the list),
 * so a primary whose machine is gone, its packets dropped, does not keep
 * waybill from the standby promoted beside it; the attempt fails once the
 * last host has failed. (Per host entry of the URL; a host name with
 * several addresses shares one timer.) A lost
 * connection fails every query in flight (callback with res NULL): nobody
 * is told ok for a statement whose answer did not come.
 *
 * Prepared statements: a query with parameters is prepared once per
 * session (PQsendPrepare, in the same pipeline as its first use) and then
 * only bound and executed: planning the event's insert cost as much as
 * running it (pg_stat_statements: ~0.5 ms each per event). Only on a
 * direct connection: a pooler in transaction mode (PgBouncer before 1.21)
 * hands each transaction any server session, where a statement prepared in
 * another is missing. A connection learns which it has from its first
 * query: the backend's pid as PostgreSQL reports it (pg_backend_pid())
 * equals the one libpq got at connect only when no pooler stands between
 * (PgBouncer makes up its own); until that answer, and behind a pooler,
 * statements are planned each time. As a second guard a statement's name
 * is a hash of its text (the same name is the same SQL in any session),
 * and a session that answers SQLSTATE 26000 or 42P05 (a prepared statement
 * missing, or there already) turns preparing off for good: that group
 * fails (its requests get 503; carriers retry). Logged once each.
 *
 * Behind a pooler, one segment at a time: PgBouncer (transaction pooling)
 * forwards a client's messages as they arrive and hands the server
 * connection back to its pool at the ReadyForQuery that ends a
 * transaction with no Sync of the client pending; a next transaction
 * pipelined behind it and read in two parts (a large group) would be cut
 * there: its first part left in a server session now another client's (a
 * transaction open under someone else), the rest on another, its answers
 * never whole and its requests waiting forever. So until the first query
 * shows a direct connection, and for good behind a pooler, nothing is sent
 * while a Sync is unanswered: queries and syncs wait here (copied), in
 * order, and go out one segment (up to its Sync) each time the last one
 * is answered. On a direct connection segments are pipelined as before.
 *
 * Invariant: in state UP the connection is in pipeline mode and the read
 * event is armed; the in-flight list holds, in order, one entry per query
 * queued (a Prepare is one) and one per sync, and nothing else.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <openssl/rand.h>

#include "log.h"
#include "store_pg_int.h"
#include "util.h"

enum conn_state { PG_DOWN, PG_CONNECTING, PG_UP };

/* One query or sync waiting for its results. */
struct inflight {
    struct inflight *next;
    store_pg_result_fn fn; /* NULL for a sync */
    void *arg;
    PGresult *res; /* the query's first result, kept until its NULL */
};

/* A query (sql set) or a sync (sql NULL) held back until the segments
 * before it are answered (the module's comment); owns its copies. */
struct held {
    struct held *next;
    char *sql;
    int n;
    char **params; /* n copies, NULL for an SQL NULL */
    store_pg_result_fn fn;
    void *arg;
};

/* A statement prepared (or being prepared) on this session. */
enum prep_state { PREP_SENT, PREP_READY, PREP_FAILED };
struct prepared {
    struct prepared *next;
    struct store_pg_conn *c;
    char *sql;
    char name[24]; /* "wb_" + 16 hex digits of its text's FNV-1a hash */
    enum prep_state state;
};

struct store_pg_conn {
    struct event_base *base;
    char *url;
    PQconninfoOption *opts; /* the URL as libpq reads it: each attempt's parameters */
    int skip;               /* this attempt starts at the URL's host number skip */
    char silent[1024];      /* this attempt's hosts that timed out, for its error */
    int connect_ms;
    store_pg_state_fn state_fn;
    void *state_arg;
    PGconn *pg;
    enum conn_state state;
    struct event *io;    /* connecting: one-shot read or write; up: persistent read */
    struct event *wr;    /* up: armed while PQflush has more to send */
    struct event *timer; /* down: the next attempt; connecting: the attempt's deadline */
    int backoff_ms;
    struct inflight *head, *tail;
    uint64_t nqueries, nsyncs;     /* sent since made (store_pg_conn_counts) */
    struct prepared *preps;        /* this session's; freed when a new one starts */
    int no_prepare;                /* not now: not known direct yet, or a pooler */
    int pooled;                    /* a pooler was seen (never prepare again) */
    int probing;                   /* the first query's answer has not come */
    int syncs_out;                 /* Syncs sent and not answered */
    struct held *held, *held_tail; /* waiting for syncs_out to be 0 (serial) */
};

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000

static void conn_attempt(struct store_pg_conn *c);
static void conn_lost(struct store_pg_conn *c, const char *why);

/* ---- messages without the password ---- */

/* Decodes %XX escapes of s[0..n) into out (cut to outlen). */
static void pct_decode(const char *s, size_t n, char *out, size_t outlen) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outlen; i++) {
        unsigned char v;
        if (s[i] == '%' && i + 2 < n && util_hex_decode(s + i + 1, 2, &v, 1) == 1) {
            out[o++] = (char)v;
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
}

/* Replaces every occurrence of secret (when not empty) in buf by "***". */
static void scrub_one(char *buf, size_t buflen, const char *secret, size_t n) {
    char *p;
    if (n == 0)
        return;
    while ((p = memmem(buf, strlen(buf), secret, n)) != NULL) {
        size_t rest = strlen(p + n);
        if ((size_t)(p - buf) + 3 + rest >= buflen) {
            *p = '\0';
            return;
        }
        memmove(p + 3, p + n, rest + 1);
        memcpy(p, "***", 3);
    }
}

/* The raw password of url's userinfo and of a password= query parameter:
 * each as (start, length) into url, length 0 when absent. */
static void url_secrets(const char *url, const char **u, size_t *ulen, const char **q,
                        size_t *qlen) {
    const char *auth = strstr(url, "://"), *end, *at = NULL, *colon, *p;
    *ulen = *qlen = 0;
    *u = *q = NULL;
    if (!auth)
        return;
    auth += 3;
    end = auth + strcspn(auth, "/?#");
    for (p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon) {
        *u = colon + 1;
        *ulen = (size_t)(at - colon - 1);
    }
    for (p = strchr(url, '?'); p && *p; p += strcspn(p, "&")) {
        p++;
        if (strncasecmp(p, "password=", 9) == 0) {
            *q = p + 9;
            *qlen = strcspn(*q, "&#");
        }
    }
}

const char *store_pg_scrub(const char *url, const char *msg, char *out, size_t outlen) {
    const char *u, *q, *env = getenv("PGPASSWORD");
    size_t ulen, qlen, o = 0, cap;
    char dec[512], *buf;

    if (!outlen)
        return out;
    msg = msg ? msg : "";
    /* scrubbed whole, then cut: cutting first could leave a password's
     * prefix that no longer matches it (a newline becomes 2 bytes, a 1-byte
     * secret 3: 6x is room) */
    cap = strlen(msg) * 6 + 4;
    if (!(buf = malloc(cap))) {
        snprintf(out, outlen, "(message withheld: out of memory)");
        return out;
    }
    for (const char *m = msg; *m; m++) {
        if (*m == '\n') {
            while (m[1] == '\t' || m[1] == ' ')
                m++;
            if (m[1]) {
                memcpy(buf + o, "; ", 2);
                o += 2;
            }
        } else if (*m != '\r') {
            buf[o++] = *m;
        }
    }
    buf[o] = '\0';
    url_secrets(url ? url : "", &u, &ulen, &q, &qlen);
    scrub_one(buf, cap, u, ulen);
    scrub_one(buf, cap, q, qlen);
    if (ulen) {
        pct_decode(u, ulen, dec, sizeof dec);
        scrub_one(buf, cap, dec, strlen(dec));
    }
    if (qlen) {
        pct_decode(q, qlen, dec, sizeof dec);
        scrub_one(buf, cap, dec, strlen(dec));
    }
    if (env)
        scrub_one(buf, cap, env, strlen(env));
    snprintf(out, outlen, "%s", buf);
    free(buf);
    return out;
}

/* ---- results ---- */

int store_pg_res_ok(const PGresult *res) {
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

const char *store_pg_res_error(const PGresult *res) {
    const char *m;
    if (!res)
        return "no result";
    if (PQresultStatus(res) == PGRES_PIPELINE_ABORTED)
        return "not run: an earlier statement of its group failed";
    m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return m && *m ? m : PQresStatus(PQresultStatus(res));
}

/* ---- prepared statements ---- */

static void preps_free(struct store_pg_conn *c) {
    while (c->preps) {
        struct prepared *p = c->preps;
        c->preps = p->next;
        free(p->sql);
        free(p);
    }
}

static struct prepared *prep_get(struct store_pg_conn *c, const char *sql) {
    struct prepared *p;
    uint64_t h = 0xcbf29ce484222325ULL;

    for (p = c->preps; p; p = p->next)
        if (!strcmp(p->sql, sql))
            return p;
    if (!(p = calloc(1, sizeof *p)) || !(p->sql = strdup(sql))) {
        free(p);
        return NULL;
    }
    for (const unsigned char *u = (const unsigned char *)sql; *u; u++)
        h = (h ^ *u) * 0x100000001b3ULL;
    snprintf(p->name, sizeof p->name, "wb_%016llx", (unsigned long long)h);
    p->c = c;
    p->state = PREP_FAILED; /* not sent yet */
    p->next = c->preps;
    c->preps = p;
    return p;
}

/* 1 when res says the session lost or already had a prepared statement:
 * a pooler between us and PostgreSQL (the module's comment). */
static int prep_pooled(const PGresult *res) {
    const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return code && (!strcmp(code, "26000") || !strcmp(code, "42P05"));
}

static void prep_off(struct store_pg_conn *c) {
    c->no_prepare = 1;
    if (c->pooled)
        return;
    c->pooled = 1;
    log_msg(LOG_WARN, "store: postgresql: the session does not keep prepared statements (a pooler "
                      "in transaction mode?): each statement is planned from now on");
}

/* The connection's first query: pg_backend_pid() against libpq's pid (the
 * module's comment). res NULL: the connection went first (the next one
 * asks again). */
static void prep_probe_done(void *arg, const PGresult *res, const char *err) {
    struct store_pg_conn *c = arg;
    UNUSED(err);
    if (!res || !c->pg)
        return;
    c->probing = 0; /* what was held goes out when its sync is answered */
    if (c->pooled)
        return;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
        atoi(PQgetvalue(res, 0, 0)) == PQbackendPID(c->pg)) {
        c->no_prepare = 0;
        return;
    }
    c->pooled = 1;
    log_msg(LOG_DEBUG, "store: postgresql: connected through a pooler (its backend pid is not "
                       "PostgreSQL's): statements are planned each time, not prepared");
}

static void prep_done(void *arg, const PGresult *res, const char *err) {
    struct prepared *p = arg;
    UNUSED(err);
    if (res && store_pg_res_ok(res)) {
        p->state = PREP_READY;
        return;
    }
    p->state = PREP_FAILED; /* prepared again at its next use */
    if (prep_pooled(res))
        prep_off(p->c);
}

/* ---- the in-flight list ---- */

static int inflight_push(struct store_pg_conn *c, store_pg_result_fn fn, void *arg) {
    struct inflight *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fn = fn;
    f->arg = arg;
    if (c->tail)
        c->tail->next = f;
    else
        c->head = f;
    c->tail = f;
    return 0;
}

static struct inflight *inflight_pop(struct store_pg_conn *c) {
    struct inflight *f = c->head;
    if (f) {
        c->head = f->next;
        if (!c->head)
            c->tail = NULL;
    }
    return f;
}

/* Hands every entry in flight its failure (why), in order. The list is
 * detached first: a callback may queue again (on a new connection). */
static void inflight_fail(struct store_pg_conn *c, const char *why) {
    struct inflight *f = c->head;
    c->head = c->tail = NULL;
    while (f) {
        struct inflight *next = f->next;
        if (f->fn)
            f->fn(f->arg, NULL, why);
        PQclear(f->res);
        free(f);
        f = next;
    }
}

/* ---- held back (behind a pooler, one segment at a time) ---- */

static void held_free(struct held *h) {
    for (int i = 0; h->params && i < h->n; i++)
        free(h->params[i]);
    free(h->params);
    free(h->sql);
    free(h);
}

/* Appends a copy of a query (sql) or a sync (sql NULL); -1 out of memory. */
static int held_push(struct store_pg_conn *c, const char *sql, int n, const char *const *params,
                     store_pg_result_fn fn, void *arg) {
    struct held *h = calloc(1, sizeof *h);

    if (!h)
        return -1;
    h->fn = fn;
    h->arg = arg;
    h->n = n;
    if (sql &&
        (!(h->sql = strdup(sql)) || (n > 0 && !(h->params = calloc((size_t)n, sizeof(char *))))))
        goto fail;
    for (int i = 0; sql && i < n; i++)
        if (params && params[i] && !(h->params[i] = strdup(params[i])))
            goto fail;
    if (c->held_tail)
        c->held_tail->next = h;
    else
        c->held = h;
    c->held_tail = h;
    return 0;
fail:
    held_free(h);
    return -1;
}

/* Hands every held query its failure (why), in order. */
static void held_fail(struct store_pg_conn *c, const char *why) {
    struct held *h = c->held;
    c->held = c->held_tail = NULL;
    while (h) {
        struct held *next = h->next;
        if (h->fn)
            h->fn(h->arg, NULL, why);
        held_free(h);
        h = next;
    }
}

/* 1 when this connection sends one segment at a time (not known direct). */
static int conn_serial(const struct store_pg_conn *c) {
    return c->pooled || c->probing;
}

static int conn_send_query(struct store_pg_conn *c, const char *sql, int n,
                           const char *const *params, store_pg_result_fn fn, void *arg);
static int conn_send_sync(struct store_pg_conn *c);

/* No Sync unanswered: sends what was held, one segment (all of it on a
 * connection now known direct). A query that cannot be sent hears so (its
 * callback, once); a sync that cannot be sent drops the connection
 * (everything fails). */
static void held_release(struct store_pg_conn *c) {
    while (c->held && c->state == PG_UP && !(conn_serial(c) && c->syncs_out > 0)) {
        struct held *h = c->held;
        c->held = h->next;
        if (!c->held)
            c->held_tail = NULL;
        if (!h->sql) {
            held_free(h);
            if (conn_send_sync(c) < 0)
                return; /* the connection is gone, and with it the rest */
            continue;
        }
        /* its caller was told 0: its callback runs once, whatever happens */
        if (conn_send_query(c, h->sql, h->n, (const char *const *)h->params, h->fn, h->arg) < 0)
            h->fn(h->arg, NULL, "the query could not be sent");
        held_free(h);
    }
}

/* ---- the socket ---- */

/* Re-arms c->io for fd and what (EV_READ or EV_WRITE, + EV_PERSIST). */
static int conn_watch(struct store_pg_conn *c, short what, event_callback_fn cb) {
    if (c->io)
        event_free(c->io);
    c->io = event_new(c->base, PQsocket(c->pg), what, cb, c);
    return c->io && event_add(c->io, NULL) == 0 ? 0 : -1;
}

/* Sends what libpq holds; arms the write event while some is left. */
static int conn_flush(struct store_pg_conn *c) {
    int r = PQflush(c->pg);
    if (r < 0)
        return -1;
    if (r > 0)
        return event_add(c->wr, NULL);
    return event_del(c->wr);
}

/* Takes every complete result libpq has, handing each query its own. */
static void conn_dispatch(struct store_pg_conn *c) {
    while (c->head && c->state == PG_UP && !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        struct inflight *f = c->head;
        if (!f->fn) { /* a sync: its one result, no NULL after it */
            if (r && PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
                free(inflight_pop(c));
                if (c->syncs_out > 0)
                    c->syncs_out--;
                held_release(c);
            } else if (r) { /* a result with no query to take it: ignore */
                log_msg(LOG_WARN, "store: postgresql: stray result (%s)",
                        PQresStatus(PQresultStatus(r)));
            }
            PQclear(r);
            continue;
        }
        if (r) { /* the query's result; a second one (never sent) is dropped */
            if (!f->res)
                f->res = r;
            else
                PQclear(r);
            continue;
        }
        inflight_pop(c); /* NULL: the query's results are complete */
        if (f->res && prep_pooled(f->res))
            prep_off(c);
        f->fn(f->arg, f->res, f->res && store_pg_res_ok(f->res) ? NULL : "query failed");
        PQclear(f->res);
        free(f);
    }
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
    struct store_pg_conn *c = arg;
    PGnotify *n;
    UNUSED(fd);
    UNUSED(what);
    if (!PQconsumeInput(c->pg)) {
        conn_lost(c, PQerrorMessage(c->pg));
        return;
    }
    while ((n = PQnotifies(c->pg)) != NULL)
        PQfreemem(n); /* LISTEN comes with the shared state, later */
    conn_dispatch(c);
    if (c->state == PG_UP && PQstatus(c->pg) == CONNECTION_BAD)
        conn_lost(c, PQerrorMessage(c->pg));
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
    struct store_pg_conn *c = arg;
    UNUSED(fd);
    UNUSED(what);
    if (conn_flush(c) < 0)
        conn_lost(c, PQerrorMessage(c->pg));
}

/* ---- connecting ---- */

static void conn_schedule(struct store_pg_conn *c) {
    unsigned char r[2] = {0, 0};
    int ms = c->backoff_ms;
    (void)RAND_bytes(r, sizeof r);
    ms += (int)((int64_t)ms * ((r[0] << 8) | r[1]) / 65536 / 4);
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Ends the current connection (if any) and schedules the next attempt; the
 * queries in flight fail and the owner hears why (scrubbed). */
static void conn_lost(struct store_pg_conn *c, const char *why) {
    char shown[1024], full[2048];
    int was_up = c->state == PG_UP;

    why = why && *why ? why : "connection lost";
    if (c->silent[0] && !was_up) { /* the hosts before this one timed out */
        snprintf(full, sizeof full, "%s\n%s", c->silent, why);
        why = full;
    }
    c->silent[0] = '\0';
    c->skip = 0; /* the next attempt starts again at the first host */
    store_pg_scrub(c->url, why, shown, sizeof shown);
    if (c->io) {
        event_free(c->io);
        c->io = NULL;
    }
    if (c->wr)
        event_del(c->wr);
    evtimer_del(c->timer);
    PQfinish(c->pg);
    c->pg = NULL;
    c->state = PG_DOWN;
    c->syncs_out = 0;
    inflight_fail(c, shown);
    held_fail(c, shown); /* after: queued later */
    conn_schedule(c);
    if (was_up)
        log_msg(LOG_WARN, "store: postgresql: connection lost: %s", shown);
    c->state_fn(c->state_arg, 0, shown);
}

static void conn_up(struct store_pg_conn *c) {
    if (c->io) {
        event_free(c->io);
        c->io = NULL;
    }
    evtimer_del(c->timer);
    if (c->wr) /* the socket may be a new one: a fresh write event */
        event_free(c->wr);
    c->wr = event_new(c->base, PQsocket(c->pg), EV_WRITE, on_writable, c);
    if (!c->wr || conn_watch(c, EV_READ | EV_PERSIST, on_readable) < 0) {
        conn_lost(c, "out of memory");
        return;
    }
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        conn_lost(c, "cannot enter nonblocking pipeline mode");
        return;
    }
    preps_free(c); /* a new session has none */
    c->no_prepare = 1;
    c->syncs_out = 0;
    c->probing = !c->pooled;
    if (!c->pooled &&
        (!PQsendQueryParams(c->pg, "SELECT pg_backend_pid()", 0, NULL, NULL, NULL, NULL, 0) ||
         inflight_push(c, prep_probe_done, c) < 0 || PQpipelineSync(c->pg) != 1 ||
         inflight_push(c, NULL, NULL) < 0 || conn_flush(c) < 0)) {
        conn_lost(c, "cannot send the first query");
        return;
    }
    c->syncs_out = c->pooled ? 0 : 1;
    c->state = PG_UP;
    c->backoff_ms = BACKOFF_FIRST_MS;
    c->silent[0] = '\0';
    c->skip = 0;
    c->state_fn(c->state_arg, 1, NULL);
}

/* One step of PQconnectPoll; arms the socket for the next, or ends. */
static void conn_poll(evutil_socket_t fd, short what, void *arg) {
    struct store_pg_conn *c = arg;
    UNUSED(fd);
    UNUSED(what);
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_OK:
        conn_up(c);
        return;
    case PGRES_POLLING_READING:
        if (conn_watch(c, EV_READ, conn_poll) < 0)
            conn_lost(c, "out of memory");
        return;
    case PGRES_POLLING_WRITING:
        if (conn_watch(c, EV_WRITE, conn_poll) < 0)
            conn_lost(c, "out of memory");
        return;
    default:
        conn_lost(c, PQerrorMessage(c->pg));
        return;
    }
}

/* ---- the URL's hosts ---- */

static const char *conn_opt(const struct store_pg_conn *c, const char *key) {
    for (const PQconninfoOption *o = c->opts; o->keyword; o++)
        if (strcmp(o->keyword, key) == 0)
            return o->val && *o->val ? o->val : NULL;
    return NULL;
}

/* The list's element i (comma-separated, libpq's multi-host form) as
 * (start, length); the whole list when it has one element (a single port
 * serves every host); length 0 when there is no such element. */
static size_t list_item(const char *list, int i, const char **start) {
    const char *p = list ? list : "";
    if (!strchr(p, ',')) {
        *start = p;
        return strlen(p);
    }
    for (; i > 0 && p; i--)
        p = (p = strchr(p, ',')) ? p + 1 : NULL;
    *start = p ? p : "";
    return p ? strcspn(p, ",") : 0;
}

/* The list from element i on (a suffix of it), or the whole of a
 * one-element list. */
static const char *list_from(const char *list, int i) {
    const char *p = list;
    if (!list || !strchr(list, ','))
        return list;
    for (; i > 0 && p; i--)
        p = (p = strchr(p, ',')) ? p + 1 : NULL;
    return p;
}

static int item_is(const char *list, int i, const char *what) {
    const char *s;
    size_t n = list_item(list, i, &s);
    return what && strlen(what) == n && strncmp(s, what, n) == 0;
}

/* The number (in the URL) of the host libpq is trying now, from c->skip
 * on; -1 when it cannot be told. */
static int conn_current_host(const struct store_pg_conn *c) {
    const char *host = conn_opt(c, "host"), *addr = conn_opt(c, "hostaddr");
    const char *port = conn_opt(c, "port"), *now = PQhost(c->pg), *now_port = PQport(c->pg);
    const char *list = host ? host : addr;
    if (!list)
        return -1;
    for (int i = c->skip; list_from(list, i); i++) {
        const char *s;
        int named = host && list_item(host, i, &s) > 0;
        if ((named ? item_is(host, i, now) : item_is(addr, i, now)) &&
            (!port || !now_port || !*now_port || item_is(port, i, now_port)))
            return i;
        if (!strchr(list, ','))
            break;
    }
    return -1;
}

/* What libpq said of this attempt's hosts so far, the one being tried
 * ending it: "connection to server at "H", port P failed: no connection
 * within N ms". */
static void conn_timeout_msg(struct store_pg_conn *c, char *out, size_t outlen) {
    const char *sofar = PQerrorMessage(c->pg), *tail = "failed: ";
    size_t n = strlen(sofar), t = strlen(tail);

    if (n >= t && strcmp(sofar + n - t, tail) == 0) /* libpq named the host already */
        snprintf(out, outlen, "%sno connection within %d ms", sofar, c->connect_ms);
    else
        snprintf(out, outlen,
                 "%s%sconnection to server at \"%s\", port %s failed: "
                 "no connection within %d ms",
                 sofar, n && sofar[n - 1] != '\n' ? "\n" : "", PQhost(c->pg) ? PQhost(c->pg) : "",
                 PQport(c->pg) ? PQport(c->pg) : "", c->connect_ms);
}

/* The attempt's connect time ran out on one host (why says so): go on
 * with the hosts after it (1), or there are none (0). */
static int conn_next_host(struct store_pg_conn *c, const char *why) {
    const char *host = conn_opt(c, "host"), *addr = conn_opt(c, "hostaddr");
    int i = conn_current_host(c);
    size_t o = strlen(c->silent);

    if (i < 0 || !list_from(host ? host : addr, i + 1) || !strchr(host ? host : addr, ','))
        return 0;
    snprintf(c->silent + o, sizeof c->silent - o, "%s%s", o ? "\n" : "", why);
    if (c->io) {
        event_free(c->io);
        c->io = NULL;
    }
    PQfinish(c->pg);
    c->pg = NULL;
    c->skip = i + 1;
    conn_attempt(c);
    return 1;
}

/* The timer: in state DOWN the next attempt is due; in CONNECTING the
 * host being tried took longer than connect_ms. */
static void on_timer(evutil_socket_t fd, short what, void *arg) {
    struct store_pg_conn *c = arg;
    char why[1024];
    UNUSED(fd);
    UNUSED(what);
    if (c->state == PG_DOWN) {
        conn_attempt(c);
        return;
    }
    conn_timeout_msg(c, why, sizeof why);
    if (!conn_next_host(c, why))
        conn_lost(c, why);
}

/* The server's notices (e.g. "relation ... already exists, skipping"):
 * debug lines, never libpq's default print to stderr. */
static void on_notice(void *arg, const char *text) {
    struct store_pg_conn *c = arg;
    char shown[512];
    log_msg(LOG_DEBUG, "store: postgresql: %s", store_pg_scrub(c->url, text, shown, sizeof shown));
}

/* Starts an attempt on the URL's parameters as libpq parsed them, its
 * host lists (host, hostaddr, port) from host number c->skip on. */
static void conn_attempt(struct store_pg_conn *c) {
    struct timeval tv = {c->connect_ms / 1000, (c->connect_ms % 1000) * 1000};
    const char **keys, **vals;
    size_t n = 0, k = 0;

    for (PQconninfoOption *o = c->opts; o->keyword; o++)
        n++;
    keys = calloc(n + 2, sizeof *keys);
    vals = calloc(n + 2, sizeof *vals);
    if (keys && vals) {
        for (PQconninfoOption *o = c->opts; o->keyword; o++) {
            int list = !strcmp(o->keyword, "host") || !strcmp(o->keyword, "hostaddr") ||
                       !strcmp(o->keyword, "port");
            if (!o->val)
                continue;
            keys[k] = o->keyword;
            vals[k++] = list ? list_from(o->val, c->skip) : o->val;
        }
        keys[k] = "fallback_application_name";
        vals[k++] = "waybill";
        c->pg = PQconnectStartParams(keys, vals, 0);
    }
    free(keys);
    free(vals);
    if (!c->pg) {
        conn_lost(c, "out of memory");
        return;
    }
    /* (nonblocking once up, not here: PQsetnonblocking clears the error
     * message, and with it libpq's "connection to server at ..." of the
     * first host, which an attempt's error must name) */
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pg));
        return;
    }
    PQsetNoticeProcessor(c->pg, on_notice, c);
    c->state = PG_CONNECTING;
    evtimer_add(c->timer, &tv);
    /* libpq asks for the first poll as if the socket were writable */
    if (conn_watch(c, EV_WRITE, conn_poll) < 0)
        conn_lost(c, "out of memory");
}

/* ---- the interface ---- */

struct store_pg_conn *store_pg_conn_new(struct event_base *base, const char *url, int connect_ms,
                                        store_pg_state_fn fn, void *arg, char *err, size_t errlen) {
    struct store_pg_conn *c = NULL;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);

    if (!opts) { /* a URL libpq cannot read: its reason may quote the password */
        store_pg_scrub(url, perr ? perr : "out of memory", err, errlen);
        goto fail;
    }
    if (!(c = calloc(1, sizeof *c)) || !(c->url = strdup(url)) ||
        !(c->timer = evtimer_new(base, on_timer, c))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    c->base = base;
    c->connect_ms = connect_ms > 0 ? connect_ms : 10000;
    for (PQconninfoOption *o = opts; o->keyword; o++) /* the URL's own, as libpq reads it */
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && atoi(o->val) > 0)
            c->connect_ms = (atoi(o->val) < 2 ? 2 : atoi(o->val)) * 1000;
    c->state_fn = fn;
    c->state_arg = arg;
    c->backoff_ms = BACKOFF_FIRST_MS;
    c->state = PG_DOWN;
    c->opts = opts;
    PQfreemem(perr);
    struct timeval now = {0, 0};
    evtimer_add(c->timer, &now); /* the first attempt, from the loop */
    return c;
fail:
    PQconninfoFree(opts);
    PQfreemem(perr);
    if (c) {
        if (c->timer)
            event_free(c->timer);
        free(c->url);
        free(c);
    }
    return NULL;
}

void store_pg_conn_free(struct store_pg_conn *c) {
    if (!c)
        return;
    if (c->io)
        event_free(c->io);
    if (c->wr)
        event_free(c->wr);
    event_free(c->timer);
    PQfinish(c->pg);
    c->pg = NULL;
    c->state = PG_DOWN;
    inflight_fail(c, "closed");
    held_fail(c, "closed");
    preps_free(c); /* after: a Prepare in flight was told it failed */
    PQconninfoFree(c->opts);
    free(c->url);
    free(c);
}

int store_pg_conn_up(const struct store_pg_conn *c) {
    return c && c->state == PG_UP;
}

static int conn_send_query(struct store_pg_conn *c, const char *sql, int n,
                           const char *const *params, store_pg_result_fn fn, void *arg) {
    struct prepared *p = NULL;

    if (n > 0 && !c->no_prepare && (p = prep_get(c, sql)) && p->state == PREP_FAILED) {
        if (!PQsendPrepare(c->pg, p->name, sql, n, NULL))
            return -1;
        if (inflight_push(c, prep_done, p) < 0) {
            conn_lost(c, "out of memory");
            return -1;
        }
        p->state = PREP_SENT;
    }
    if (p ? !PQsendQueryPrepared(c->pg, p->name, n, params, NULL, NULL, 0)
          : !PQsendQueryParams(c->pg, sql, n, NULL, params, NULL, NULL, 0))
        return -1;
    c->nqueries++;
    if (inflight_push(c, fn, arg) < 0) {
        /* libpq has the query: its results would reach no one. Drop the
         * connection: everything in flight fails, nothing is acked. */
        conn_lost(c, "out of memory");
        return -1;
    }
    return 0;
}

static int conn_send_sync(struct store_pg_conn *c) {
    if (PQpipelineSync(c->pg) != 1 || inflight_push(c, NULL, NULL) < 0 || conn_flush(c) < 0) {
        conn_lost(c, PQerrorMessage(c->pg));
        return -1;
    }
    c->nsyncs++;
    c->syncs_out++;
    return 0;
}

/* 1 when the next query or sync waits (the module's comment). */
static int conn_holds(const struct store_pg_conn *c) {
    return c->held || (conn_serial(c) && c->syncs_out > 0);
}

int store_pg_conn_query(struct store_pg_conn *c, const char *sql, int n, const char *const *params,
                        store_pg_result_fn fn, void *arg) {
    if (!store_pg_conn_up(c) || !fn)
        return -1;
    if (conn_holds(c))
        return held_push(c, sql, n, params, fn, arg);
    return conn_send_query(c, sql, n, params, fn, arg);
}

int store_pg_conn_sync(struct store_pg_conn *c) {
    if (!store_pg_conn_up(c))
        return -1;
    if (conn_holds(c)) {
        if (held_push(c, NULL, 0, NULL, NULL, NULL) < 0) {
            conn_lost(c, "out of memory");
            return -1;
        }
        return 0;
    }
    return conn_send_sync(c);
}

void store_pg_conn_counts(const struct store_pg_conn *c, uint64_t *queries, uint64_t *syncs) {
    *queries = c ? c->nqueries : 0;
    *syncs = c ? c->nsyncs : 0;
}

int store_pg_conn_pid(const struct store_pg_conn *c) {
    return store_pg_conn_up(c) ? PQbackendPID(c->pg) : 0;
}

const char *store_pg_conn_param(const struct store_pg_conn *c, const char *name) {
    return store_pg_conn_up(c) ? PQparameterStatus(c->pg, name) : NULL;
}
