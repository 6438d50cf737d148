/* store_pg_be.c -- the PostgreSQL backend's life and its transactions
 * (store_pg_be.h says how an operation runs): open (the schema step of
 * store_pg.c, then two connections and this instance's id), close, the
 * group (group_begin / group_end: one explicit transaction on the write
 * connection per group, one round trip), the one-op transactions of claims
 * and reads on the read connection, the parameter helpers, and the ops
 * table store_pg_backend.
 *
 * A claim whose answer was lost: when the read connection goes (a primary
 * killed, a failover) between a claim's COMMIT reaching the server and its
 * answer reaching us, the rows may be leased to this instance, which never
 * got them: nobody would send them before the lease ends (30 s by
 * default). Each claim therefore gets a lease end of its own (a
 * millisecond more than the last one when two would share it; not after
 * the clock was set back by more than LEASE_NUDGE_MAX_MS), and a claim
 * that fails while the read connection is down is remembered (endpoint,
 * lease end); once the connection is back, its leases are given back (rows
 * of this endpoint leased to this instance until exactly then: that claim's
 * and no other's; none when it did not commit), and the scheduler's next
 * look finds them due. Kept until given back (a failed release is tried at
 * the next connection), dropped once the lease has ended anyway; at most
 * LOST_MAX remembered.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"
#include "store_backend.h"
#include "store_pg.h"
#include "store_pg_be.h"
#include "store_pg_int.h"
#include "util.h"

/* Connect time per host for the backend's connections. */
#define BE_CONNECT_MS 10000
/* Claims whose answer was lost, remembered at most. */
#define LOST_MAX 256
/* A claim's lease is lengthened by at most this to be its own. */
#define LEASE_NUDGE_MAX_MS 1000

/* A claim that failed with the read connection down (the module's comment). */
struct pg_lost {
    struct pg_lost *next;
    char *endpoint;
    int64_t until; /* the lease end it asked for */
    int sent;      /* its release is in flight */
};

/* A claim under way: its caller's callback, and what its lease is. */
struct pg_claim_wait {
    struct store_be *be;
    store_be_done_fn cb;
    void *arg;
    char *endpoint;
    int64_t until;
};

static void tx_list(struct pg_tx *tx);
static void tx_unlist(struct pg_tx *tx);

/* ---- finishing a transaction ---- */

static void tx_free(struct pg_tx *tx) {
    struct pg_op *op = tx->ops;
    while (op) {
        struct pg_op *next = op->next;
        if (op->free_rows)
            op->free_rows(op);
        else
            free(op->rows);
        free(op->text);
        free(op);
        op = next;
    }
    if (tx->defer)
        event_free(tx->defer);
    free(tx);
}

/* Every op's callback (its status when the transaction committed or the
 * read ran, else -1), then the transaction's own; then tx is freed. */
static void tx_finish(struct pg_tx *tx) {
    struct store_be *be = tx->be;
    int ok = !tx->failed;

    if (be->group == tx)
        be->group = NULL;
    tx_unlist(tx);
    for (struct pg_op *op = tx->ops; op; op = op->next) {
        if (op->dropped || !op->cb)
            continue;
        if (ok)
            op->cb(op->arg, op->status, op->rows, op->n, NULL);
        else
            op->cb(op->arg, -1, NULL, 0, tx->err[0] ? tx->err : "store: postgresql: failed");
    }
    if (tx->cb)
        tx->cb(tx->arg, ok ? 0 : -1, NULL, 0, ok ? NULL : tx->err);
    tx_free(tx);
}

static void on_defer(evutil_socket_t fd, short what, void *arg) {
    UNUSED(fd);
    UNUSED(what);
    tx_finish(arg);
}

/* Finishes tx now from the loop, or on the next loop turn when inside a
 * call of the interface (callbacks never run inside the call). */
static void tx_finish_soon(struct pg_tx *tx) {
    static const struct timeval zero = {0, 0};
    if (tx->finishing)
        return;
    tx->finishing = 1;
    if (!tx->be->in_call) {
        tx_finish(tx);
        return;
    }
    if (!tx->defer)
        tx->defer = evtimer_new(tx->be->base, on_defer, tx);
    if (!tx->defer || evtimer_add(tx->defer, &zero) < 0) {
        /* out of memory: the answer comes now rather than never */
        log_msg(LOG_WARN, "store: postgresql: answering inside the call (out of memory)");
        tx_finish(tx);
    }
}

void pg_tx_fail(struct pg_tx *tx, const char *why) {
    if (tx->failed)
        return;
    tx->failed = 1;
    /* (cut to the buffer: a server message can be long) */
    snprintf(tx->err, sizeof tx->err, "store: postgresql: %.480s", why && *why ? why : "failed");
}

/* A statement's result: into its op, or the transaction's failure. */
static void on_stmt(void *arg, const PGresult *res, const char *err) {
    struct pg_op *op = arg;
    struct pg_tx *tx = op->tx;
    char why[512];

    op->got++;
    if (!res || !store_pg_res_ok(res)) {
        store_pg_scrub(tx->be->url, res ? store_pg_res_error(res) : err, why, sizeof why);
        pg_tx_fail(tx, why);
    } else if (!tx->failed && op->parse && op->parse(op, op->got - 1, res) < 0) {
        pg_tx_fail(tx, "out of memory");
    }
    if (!tx->explicit_tx && tx->ended && op == tx->tail && op->got == op->nstmt)
        tx_finish_soon(tx);
}

static void on_begin(void *arg, const PGresult *res, const char *err) {
    struct pg_tx *tx = arg;
    char why[512];
    if (!res || !store_pg_res_ok(res)) {
        store_pg_scrub(tx->be->url, res ? store_pg_res_error(res) : err, why, sizeof why);
        pg_tx_fail(tx, why);
    }
}

/* COMMIT's answer: "COMMIT" is the only ok (an aborted transaction answers
 * "ROLLBACK"; no answer is a failure). */
static void on_commit(void *arg, const PGresult *res, const char *err) {
    struct pg_tx *tx = arg;
    char why[512];
    if (!res || !store_pg_res_ok(res)) {
        store_pg_scrub(tx->be->url, res ? store_pg_res_error(res) : err, why, sizeof why);
        pg_tx_fail(tx, why);
    } else if (strcmp(PQcmdStatus((PGresult *)res), "COMMIT") != 0) {
        pg_tx_fail(tx, "the transaction was rolled back");
    }
    tx_finish_soon(tx);
}

/* ---- transactions ---- */

struct pg_tx *pg_tx_new(struct store_be *be, struct store_pg_conn *conn, int explicit_tx) {
    struct pg_tx *tx;

    if (!store_pg_conn_up(conn) || !(tx = calloc(1, sizeof *tx)))
        return NULL;
    tx->be = be;
    tx->conn = conn;
    tx->explicit_tx = explicit_tx;
    if (explicit_tx && store_pg_conn_query(conn, "BEGIN", 0, NULL, on_begin, tx) < 0) {
        free(tx);
        return NULL;
    }
    tx_list(tx);
    return tx;
}

struct pg_op *pg_op_new(struct pg_tx *tx, store_be_done_fn cb, void *arg, pg_parse_fn parse) {
    struct pg_op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->tx = tx;
    op->cb = cb;
    op->arg = arg;
    op->parse = parse;
    if (tx->tail)
        tx->tail->next = op;
    else
        tx->ops = op;
    tx->tail = op;
    return op;
}

int pg_op_query(struct pg_op *op, const char *sql, int n, const char *const *params) {
    if (op->tx->failed || store_pg_conn_query(op->tx->conn, sql, n, params, on_stmt, op) < 0) {
        pg_tx_fail(op->tx, "the connection is down");
        return -1;
    }
    op->nstmt++;
    return 0;
}

void pg_op_drop(struct pg_op *op, const char *why) {
    op->dropped = 1;
    pg_tx_fail(op->tx, why);
}

void pg_tx_end(struct pg_tx *tx, store_be_done_fn cb, void *arg) {
    tx->cb = cb;
    tx->arg = arg;
    tx->ended = 1;
    if (!tx->explicit_tx) {
        if (store_pg_conn_sync(tx->conn) < 0 || (tx->tail && tx->tail->got == tx->tail->nstmt) ||
            !tx->tail) {
            pg_tx_fail(tx, "the connection is down");
            tx_finish_soon(tx);
        }
        return;
    }
    /* BEGIN, the statements, Sync, COMMIT, Sync (see store_pg_be.h); a
     * transaction that failed before its end (a write that could not be
     * queued whole) is rolled back, not committed in part */
    if (store_pg_conn_sync(tx->conn) < 0 ||
        store_pg_conn_query(tx->conn, tx->failed ? "ROLLBACK" : "COMMIT", 0, NULL, on_commit, tx) <
            0) {
        pg_tx_fail(tx, "the connection is down");
        tx_finish_soon(tx);
        return;
    }
    (void)store_pg_conn_sync(tx->conn); /* a failure has failed the COMMIT already */
}

struct pg_op *pg_single(struct store_be *be, struct store_pg_conn *conn, int explicit_tx,
                        store_be_done_fn cb, void *arg, pg_parse_fn parse) {
    struct pg_tx *tx = pg_tx_new(be, conn, explicit_tx);
    struct pg_op *op;
    if (!tx)
        return NULL;
    if (!(op = pg_op_new(tx, cb, arg, parse))) {
        /* BEGIN may be queued: end it, with no op to answer */
        pg_tx_fail(tx, "out of memory");
        pg_tx_end(tx, NULL, NULL);
        return NULL;
    }
    return op;
}

/* ---- the list of live transactions (close answers them all) ---- */

static void tx_list(struct pg_tx *tx) {
    tx->lnext = tx->be->txs;
    if (tx->be->txs)
        tx->be->txs->lprev = tx;
    tx->be->txs = tx;
}

static void tx_unlist(struct pg_tx *tx) {
    if (tx->lprev)
        tx->lprev->lnext = tx->lnext;
    else if (tx->be->txs == tx)
        tx->be->txs = tx->lnext;
    if (tx->lnext)
        tx->lnext->lprev = tx->lprev;
    tx->lnext = tx->lprev = NULL;
}

/* ---- parameters and columns ---- */

int pg_arr_text(struct util_buf *b, size_t i, const char *s) {
    if (i && util_buf_append(b, ",", 1) < 0)
        return -1;
    if (!s)
        return util_buf_appends(b, "NULL");
    if (util_buf_append(b, "\"", 1) < 0)
        return -1;
    for (; *s; s++) {
        if ((*s == '"' || *s == '\\') && util_buf_append(b, "\\", 1) < 0)
            return -1;
        if (util_buf_append(b, s, 1) < 0)
            return -1;
    }
    return util_buf_append(b, "\"", 1);
}

int pg_arr_hex(struct util_buf *b, size_t i, const void *p, size_t len) {
    static const char digits[] = "0123456789abcdef";
    const unsigned char *u = p;
    if (i && util_buf_append(b, ",", 1) < 0)
        return -1;
    if (!p)
        return util_buf_appends(b, "NULL");
    if (util_buf_append(b, "\"", 1) < 0) /* "" for an empty one */
        return -1;
    for (size_t k = 0; k < len; k++) {
        char two[2] = {digits[u[k] >> 4], digits[u[k] & 15]};
        if (util_buf_append(b, two, 2) < 0)
            return -1;
    }
    return util_buf_append(b, "\"", 1);
}

int pg_arr_int(struct util_buf *b, size_t i, int64_t v) {
    return util_buf_printf(b, "%s%lld", i ? "," : "", (long long)v);
}

char *pg_hex(const void *p, size_t len) {
    char *out;
    if (!p)
        return NULL;
    if (!(out = malloc(len * 2 + 1)))
        return NULL;
    util_hex_encode(p, len, out);
    return out;
}

char *pg_col(const PGresult *res, int row, int col, int *oom) {
    char *s;
    if (PQgetisnull(res, row, col))
        return NULL;
    if (!(s = strdup(PQgetvalue(res, row, col))))
        *oom = 1;
    return s;
}

int64_t pg_col_int(const PGresult *res, int row, int col) {
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

void store_pg_be_counts(const struct store_be *be, uint64_t *wr_queries, uint64_t *wr_syncs,
                        uint64_t *rd_queries, uint64_t *rd_syncs) {
    store_pg_conn_counts(be->wr, wr_queries, wr_syncs);
    store_pg_conn_counts(be->rd, rd_queries, rd_syncs);
}

/* ---- claims whose answer was lost (the module's comment) ---- */

static void lost_free(struct pg_lost *l) {
    free(l->endpoint);
    free(l);
}

static void lost_remove(struct store_be *be, struct pg_lost *l) {
    for (struct pg_lost **pp = &be->lost; *pp; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            be->nlost--;
            lost_free(l);
            return;
        }
}

static void lost_add(struct store_be *be, const char *endpoint, int64_t until) {
    struct pg_lost *l;

    if (be->nlost >= LOST_MAX) /* its lease ends on its own */
        return;
    if (!(l = calloc(1, sizeof *l)) || !(l->endpoint = strdup(endpoint))) {
        free(l);
        return;
    }
    l->until = until;
    l->next = be->lost;
    be->lost = l;
    be->nlost++;
}

static int parse_released(struct pg_op *op, int k, const PGresult *res) {
    if (k == 0)
        op->status = atoi(PQcmdTuples((PGresult *)res));
    return 0;
}

struct pg_release {
    struct store_be *be;
    struct pg_lost *l;
};

static void release_answer(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct pg_release *r = arg;
    struct store_be *be = r->be;
    struct pg_lost *l = r->l;
    char why[256];

    UNUSED(rows);
    UNUSED(n);
    free(r);
    if (be->closing)
        return;       /* be_close frees the list */
    if (status < 0) { /* tried again at the next connection */
        l->sent = 0;
        log_msg(LOG_DEBUG, "store: postgresql: giving back a lost claim of endpoint %s: %s",
                l->endpoint, store_pg_scrub(be->url, err, why, sizeof why));
        return;
    }
    if (status > 0)
        log_msg(LOG_INFO,
                "endpoint %s: gave back the leases of %d deliveries whose claim committed as "
                "the connection was lost (claimable again now, not when the lease ends)",
                l->endpoint, status);
    lost_remove(be, l);
}

/* A lost claim's rows ($1 endpoint, $2 this instance, $3 its lease end),
 * while that lease lasts ($4 now). */
static const char RELEASE_SQL[] =
    "UPDATE delivery_queue SET lease_owner = NULL, lease_until = 0 WHERE endpoint = $1"
    " AND lease_owner = $2 AND lease_until = $3::bigint AND lease_until > $4::bigint";

/* The read connection is up: gives back what each lost claim leased. */
static void lost_release(struct store_be *be) {
    char until[24], now[24];
    struct pg_lost *l, *next;
    int64_t t = util_now_ms();
    int ok;

    snprintf(now, sizeof now, "%lld", (long long)t);
    for (l = be->lost; l; l = next) {
        struct pg_release *r;
        struct pg_op *op;
        next = l->next;
        if (l->sent)
            continue;
        if (l->until <= t) { /* ended: claimable anyway */
            lost_remove(be, l);
            continue;
        }
        if (!(r = malloc(sizeof *r)))
            return;
        r->be = be;
        r->l = l;
        snprintf(until, sizeof until, "%lld", (long long)l->until);
        be->in_call++;
        ok = (op = pg_single(be, be->rd, 0, release_answer, r, parse_released)) &&
             pg_op_query(op, RELEASE_SQL, 4,
                         (const char *const[]){l->endpoint, be->instance, until, now}) == 0;
        if (op && !ok)
            op->dropped = 1; /* release_answer never runs */
        if (op)
            pg_tx_end(op->tx, NULL, NULL);
        be->in_call--;
        if (!ok) {
            free(r);
            return; /* the connection went: the next one tries */
        }
        l->sent = 1;
    }
}

static void claim_answer(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct pg_claim_wait *w = arg;

    if (status < 0 && !w->be->closing && !store_pg_conn_up(w->be->rd))
        lost_add(w->be, w->endpoint, w->until);
    w->cb(w->arg, status, rows, n, err);
    free(w->endpoint);
    free(w);
}

/* store_pg_claim, with a lease end of its own and its loss remembered. */
static int be_claim(struct store_be *be, const char *endpoint, int64_t after_seq, int64_t now,
                    int64_t lease_ms, size_t max, size_t cap, double rate, store_be_done_fn cb,
                    void *arg) {
    struct pg_claim_wait *w = calloc(1, sizeof *w);

    if (!w || !(w->endpoint = strdup(endpoint))) {
        free(w);
        return -1;
    }
    /* (a clock set back leaves last_until ahead: no lease lengthened by it) */
    if (now + lease_ms <= be->last_until && be->last_until - (now + lease_ms) < LEASE_NUDGE_MAX_MS)
        lease_ms = be->last_until + 1 - now;
    w->be = be;
    w->cb = cb;
    w->arg = arg;
    w->until = now + lease_ms;
    if (store_pg_claim(be, endpoint, after_seq, now, lease_ms, max, cap, rate, claim_answer, w) <
        0) {
        /* (its callback never runs when it says -1) */
        free(w->endpoint);
        free(w);
        return -1;
    }
    be->last_until = now + lease_ms; /* (after a clock set back: from there on) */
    return 0;
}

/* ---- life ---- */

static void on_registered(void *arg, const PGresult *res, const char *err) {
    struct store_be *be = arg;
    char why[512];
    if (!res || !store_pg_res_ok(res))
        log_msg(LOG_WARN, "store: postgresql: registering instance %s: %s", be->instance,
                store_pg_scrub(be->url, res ? store_pg_res_error(res) : err, why, sizeof why));
}

/* The write connection came up or went down. Down: an open group has
 * failed already (its statements got no answer); it stays failed. Up: this
 * instance's row in instances. */
static void on_wr_state(void *arg, int up, const char *err) {
    struct store_be *be = arg;
    char now[32], key[16], pid[16];
    const char *params[5] = {be->instance, now, WAYBILL_VERSION, key, pid};

    if (!up) {
        be->lost_ms = util_mono_ms();
        if (be->group)
            pg_tx_fail(be->group, err);
        return;
    }
    snprintf(now, sizeof now, "%lld", (long long)util_now_ms());
    snprintf(key, sizeof key, "%d", be->lock_key);
    snprintf(pid, sizeof pid, "%d", store_pg_conn_pid(be->wr));
    /* The session lock that says this instance lives (store_pg_reap.c),
     * taken only where the session is PostgreSQL's own: behind a pooler
     * the pid libpq was told is the pooler's, and a lock would stay with
     * a pooled server session. */
    if (store_pg_conn_query(be->wr,
                            "INSERT INTO instances (id, started_at, seen_at, version, lock_key,"
                            " session_lock) VALUES ($1, $2, $2, $3, $4::int,"
                            " CASE WHEN pg_backend_pid() = $5::int THEN "
                            "pg_try_advisory_lock(" STORE_PG_INSTANCE_LOCK
                            ", $4::int) ELSE false END)"
                            " ON CONFLICT (id) DO UPDATE SET seen_at = $2,"
                            " session_lock = EXCLUDED.session_lock",
                            5, params, on_registered, be) == 0)
        (void)store_pg_conn_sync(be->wr);
}

static void on_rd_state(void *arg, int up, const char *err) {
    struct store_be *be = arg;
    UNUSED(err);
    if (up)
        lost_release(be);
    else
        be->lost_ms = util_mono_ms();
}

static void be_close(struct store_be *be) {
    if (!be)
        return;
    be->in_call++;
    be->closing = 1;
    if (be->group) /* never ended: its writes fail */
        pg_tx_fail(be->group, "the store was closed");
    /* in-flight statements fail (callbacks with no result): every
     * transaction fails; those waiting for the loop are answered now */
    store_pg_reap_stop(be);
    store_pg_conn_free(be->wr);
    store_pg_conn_free(be->rd);
    be->wr = be->rd = NULL;
    store_pg_floors_free(be); /* after: a claim failing now looks at none */
    be->in_call = 0;
    while (be->txs) {
        struct pg_tx *tx = be->txs;
        pg_tx_fail(tx, "the store was closed");
        tx_finish(tx);
    }
    while (be->lost) {
        struct pg_lost *l = be->lost;
        be->lost = l->next;
        lost_free(l);
    }
    util_buf_free(&be->buf);
    free(be->url);
    free(be);
}

/* The session lock's second key, from the instance's id (FNV-1a, 31 bits):
 * two live instances sharing one is harmless: the second takes no lock
 * (session_lock false), so its leases end at their expiry only. */
static int lock_key_of(const char *id) {
    uint32_t h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return (int)(h & 0x7fffffff);
}

static int be_open(struct store_be **out, struct event_base *base, const char *url,
                   const char *base_dir, char *err, size_t errlen) {
    struct store_be *be = NULL;
    char msg[1024];
    int rc;

    UNUSED(base_dir);
    *out = NULL;
    if ((rc = store_pg_schema(url, STORE_PG_MIGRATE, BE_CONNECT_MS, 0, msg, sizeof msg)) < 0) {
        snprintf(err, errlen, "%s", msg);
        return -1;
    }
    if (rc > 0) /* this instance created or upgraded the schema: the operator is told */
        log_msg(LOG_INFO, "%s", msg);
    if (!(be = calloc(1, sizeof *be)) || !(be->url = strdup(url))) {
        snprintf(err, errlen, "store: out of memory");
        goto fail;
    }
    be->base = base;
    util_url_redact(url, be->shown, sizeof be->shown);
    util_id_new("ins_", be->instance, sizeof be->instance);
    be->lock_key = lock_key_of(be->instance);
    if (!(be->wr = store_pg_conn_new(base, url, BE_CONNECT_MS, on_wr_state, be, msg, sizeof msg)) ||
        !(be->rd = store_pg_conn_new(base, url, BE_CONNECT_MS, on_rd_state, be, msg, sizeof msg))) {
        snprintf(err, errlen, "store: '%s': %s", be->shown, msg);
        goto fail;
    }
    if (store_pg_reap_start(be) < 0) {
        snprintf(err, errlen, "store: out of memory");
        goto fail;
    }
    *out = be;
    return 0;
fail:
    be_close(be);
    return -1;
}

static int be_ready(const struct store_be *be) {
    return store_pg_conn_up(be->wr) && store_pg_conn_up(be->rd);
}

static const char *be_instance(const struct store_be *be) {
    return be->instance;
}

/* ---- the group ---- */

static int be_group_begin(struct store_be *be) {
    if (be->group)
        return -1;
    be->in_call++;
    be->group = pg_tx_new(be, be->wr, 1);
    be->in_call--;
    return be->group ? 0 : -1;
}

static int be_group_end(struct store_be *be, store_be_done_fn cb, void *arg) {
    struct pg_tx *tx = be->group;
    if (!tx)
        return -1;
    be->group = NULL;
    store_pg_health_flush(be, tx);
    be->in_call++;
    pg_tx_end(tx, cb, arg);
    be->in_call--;
    return 0;
}

const struct store_backend_ops store_pg_backend = {
    .name = "postgresql",
    .shared = 1,
    .open = be_open,
    .close = be_close,
    .ready = be_ready,
    .instance = be_instance,
    .group_begin = be_group_begin,
    .group_end = be_group_end,
    .event_put = store_pg_event_put,
    .event_routed = store_pg_event_routed,
    .nonce_put = store_pg_nonce_put,
    .attempt_put = store_pg_attempt_put,
    .lease_renew = store_pg_lease_renew,
    .batch_close = store_pg_batch_close,
    .endpoint_attempt = store_pg_endpoint_attempt,
    .endpoint_set_disabled = store_pg_endpoint_set_disabled,
    .delivery_retry = store_pg_delivery_retry,
    .delivery_skip = store_pg_delivery_skip,
    .sub_put = store_pg_sub_put,
    .sub_change = store_pg_sub_change,
    .sub_set_secret = store_pg_sub_set_secret,
    .claim = be_claim,
    .ping = store_pg_ping,
    .events_page = store_pg_events_page,
    .event_detail = store_pg_event_detail,
    .deliveries_page = store_pg_deliveries_page,
    .delivery_counts = store_pg_delivery_counts,
    .batch_due = store_pg_batch_due,
    .batch_next_close = store_pg_batch_next_close,
    .endpoint_next_due = store_pg_endpoint_next_due,
    .endpoints_pending = store_pg_endpoints_pending,
    .endpoint_states = store_pg_endpoint_states,
    .subs_load = store_pg_subs_load,
    .events_unrouted = store_pg_events_unrouted,
    .event_get = store_pg_event_get,
    .events_find = store_pg_events_find,
    .endpoint_head = store_pg_endpoint_head,
    .backlog = store_pg_backlog,
    .endpoint_queue = store_pg_endpoint_queue,
    .endpoint_blocked = store_pg_endpoint_blocked,
    .prune = store_pg_prune,
};
