/* test_store_pg_ops.c -- the PostgreSQL backend's operations
 * (store_backend.h, core/store_pg_*.c) against a real PostgreSQL. It needs
 * a database: the URL is argv[1] or $WB_PG_URL; without one it fails
 * loudly (never a pass). tests/integration/test_pg_ops.py runs it on a
 * fresh database per test (pg.py) and checks the rows it leaves; the unit
 * run (make test-unit) leaves it out (Makefile: UNIT_RUN). The answers'
 * recorders and put() are store_ops.h, shared with the SQLite backend's
 * test_store_sqlite_ops.c.
 *
 *   test_store_pg_ops URL checks          one process: the group, event_put,
 *                                         attempts, leases, batch, reads
 *   test_store_pg_ops URL put SRC SID     one event in one group
 *   test_store_pg_ops URL claim EP LEASE_MS MAX
 *                                         claims until nothing is left
 *   test_store_pg_ops URL hold EP LEASE_MS MAX
 *                                         claims once, then sleeps (to be killed)
 *   test_store_pg_ops URL once EP LEASE_MS MAX [AFTER]
 *                                         one claim (AFTER >= 0: ordered)
 *   test_store_pg_ops URL close EP WSTART WMS
 *                                         closes a batch window in one group
 *   test_store_pg_ops URL attempt DLV N STATUS
 *                                         records attempt N in one group
 *
 * Every mode but checks prints "ready" once connected, then waits for a
 * line on stdin (the caller's starting gun, so two processes race), and
 * prints what it got: "put STATUS ID", "claimed SEQ" lines then "done N",
 * "held SEQ" lines then "holding", "closed N", "attempt STATUS".
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "harness.h"
#include "store_backend.h"
#include "store_ops.h"
#include "store_pg_be.h"
#include "util.h"

/* Two events' ids in waybill's format (the time part of a derived
 * delivery id comes from it: a test deriving it again gets the same). */
static char recv_id[UTIL_ID_MAX], keys_id[UTIL_ID_MAX];

/* A blocking connection for the checks' own looks at the database. */
static PGconn *side;

static long long side_int(const char *sql) {
    PGresult *r = PQexec(side, sql);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else
        fprintf(stderr, "side query failed: %s: %s\n", sql, PQerrorMessage(side));
    PQclear(r);
    return v;
}

static void side_exec(const char *sql) {
    PGresult *r = PQexec(side, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fprintf(stderr, "side exec failed: %s: %s\n", sql, PQerrorMessage(side));
    PQclear(r);
}

static void counts(uint64_t *q, uint64_t *s) {
    uint64_t rq, rs;
    store_pg_be_counts(be, q, s, &rq, &rs);
}

/* ---- checks: one process ---- */

/* A group of n events, each with fanout deliveries and one batch item: one
 * BEGIN, three statements per event, COMMIT, two Syncs -- whatever n and
 * fanout. */
static void check_group_round_trip(size_t n, size_t fanout, const char *tag) {
    struct answer a[20], g = {0};
    uint64_t q0, s0, q1, s1;
    char id[64], sid[64];
    int ok = 1;

    counts(&q0, &s0);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof id, "evt_%s_%zu", tag, i);
        snprintf(sid, sizeof sid, "%s-%zu", tag, i);
        ok &= put(id, "atoship", sid, fanout, 1, &a[i]) == 0;
    }
    CHECK(ok);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    counts(&q1, &s1);
    CHECK_INT_EQ(g.status, 0);
    for (size_t i = 0; i < n; i++) {
        CHECK_INT_EQ(a[i].calls, 1);
        CHECK_INT_EQ(a[i].status, 0);
        CHECK(a[i].put.seq > 0);
        CHECK(strncmp(a[i].put.id, "evt_", 4) == 0);
        CHECK(a[i].counts[0] >= 1);
    }
    CHECK_INT_EQ(s1 - s0, 2);
    CHECK_INT_EQ(q1 - q0, 2 + 3 * n);
    printf("group %s events=%zu fanout=%zu syncs=%llu queries=%llu\n", tag, n, fanout,
           (unsigned long long)(s1 - s0), (unsigned long long)(q1 - q0));
}

/* A failed statement: every write of the group gets -1, group_end too,
 * nothing of it is stored, and the next group works (the session is not
 * left in an aborted transaction). */
static void check_failed_group(void) {
    struct answer a1, a2, a3, g = {0}, a4, g2 = {0};

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_fail_1", "atoship", "fail-1", 2, 0, &a1), 0);
    /* the same waybill id as a stored event: not the dedupe key, an error */
    CHECK_INT_EQ(put("evt_a_0", "atoship", "fail-2", 2, 0, &a2), 0);
    CHECK_INT_EQ(put("evt_fail_3", "atoship", "fail-3", 2, 0, &a3), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(g.status, -1);
    CHECK_INT_EQ(a1.calls, 1);
    CHECK_INT_EQ(a1.status, -1);
    CHECK_INT_EQ(a2.status, -1);
    CHECK_INT_EQ(a3.status, -1);
    CHECK(strstr(a2.err, "duplicate key") != NULL);
    printf("failed group: %s\n", g.err);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM events WHERE source_id LIKE 'fail-%'"), 0);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_after_fail", "atoship", "after-fail", 1, 0, &a4), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g2), 0);
    CHECK(wait_flag(&g2.calls, 10000));
    CHECK_INT_EQ(g2.status, 0);
    CHECK_INT_EQ(a4.status, 0);
}

/* The connection lost between the group's writes and its end: -1 for all,
 * never an ok; the backend reconnects and the next group commits. */
static void check_lost_group(void) {
    struct answer a1, a2, g = {0}, a3, g2 = {0};

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_lost_1", "atoship", "lost-1", 2, 0, &a1), 0);
    side_exec("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
              " WHERE application_name = 'waybill' AND pid <> pg_backend_pid()");
    CHECK_INT_EQ(put("evt_lost_2", "atoship", "lost-2", 2, 0, &a2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(g.status, -1);
    CHECK_INT_EQ(a1.calls, 1);
    CHECK_INT_EQ(a1.status, -1);
    CHECK_INT_EQ(a2.calls, 1);
    CHECK_INT_EQ(a2.status, -1);
    printf("lost group: %s\n", g.err);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM events WHERE source_id LIKE 'lost-%'"), 0);
    CHECK(wait_ready(10000));
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_lost_3", "atoship", "lost-3", 1, 0, &a3), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g2), 0);
    CHECK(wait_flag(&g2.calls, 10000));
    CHECK_INT_EQ(g2.status, 0);
    CHECK_INT_EQ(a3.status, 0);
}

/* Dedupe in one group and across groups: STORE_DUP with the first copy's
 * id; nothing else written for the copy. */
static void check_dedupe(void) {
    struct answer a1, a2, a3, g = {0}, g2 = {0};

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_dup_1", "atoship", "dup", 2, 1, &a1), 0);
    CHECK_INT_EQ(put("evt_dup_2", "atoship", "dup", 2, 1, &a2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(g.status, 0);
    CHECK_INT_EQ(a1.status, 0);
    CHECK_INT_EQ(a2.status, STORE_DUP);
    CHECK_STR_EQ(a2.put.id, "evt_dup_1");
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_dup_3", "atoship", "dup", 2, 1, &a3), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g2), 0);
    CHECK(wait_flag(&g2.calls, 10000));
    CHECK_INT_EQ(a3.status, STORE_DUP);
    CHECK_STR_EQ(a3.put.id, "evt_dup_1");
    CHECK_INT_EQ(side_int("SELECT count(*) FROM deliveries WHERE event_id LIKE 'evt_dup_%'"), 2);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM batch_items WHERE event_id LIKE 'evt_dup_%'"), 1);
}

/* An event stored "received" (no plan), then routed: first under the
 * derived ids, again (a replay) under new ones; an unknown id: 2. */
static int one_routed(const char *id, size_t nd) {
    struct store_delivery_new d[2] = {
        {.endpoint = "ep0", .payload = "{}", .payload_len = 2, .status = "pending"},
        {.endpoint = "ep1", .payload = "{}", .payload_len = 2, .status = "pending"}};
    struct store_batch_item it = {.endpoint = "batched",
                                  .window_start = 120000,
                                  .window_ms = 60000,
                                  .payload = "{}",
                                  .len = 2};
    struct store_match m = {.where = "rules.lua:2", .pattern = "*"};
    struct store_plan plan = {.status = "routed",
                              .deliveries = d,
                              .ndeliveries = nd,
                              .items = &it,
                              .nitems = 1,
                              .by_rules = 1,
                              .matches = &m,
                              .nmatches = 1};
    struct answer a = {0}, g = {0};
    if (ops->group_begin(be) < 0 || ops->event_routed(be, id, &plan, on_put, &a) < 0)
        return -9;
    ops->group_end(be, on_done, &g);
    wait_flag(&g.calls, 10000);
    return a.calls == 1 && g.status == 0 ? a.status : -7;
}

static void check_routed(void) {
    struct store_event ev = {.id = recv_id,
                             .source = "atoship",
                             .source_id = "recv",
                             .received_at = 1,
                             .raw = "",
                             .raw_len = 0};
    struct answer a = {0}, g = {0};
    char did[UTIL_ID_MAX], sql[256];

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->event_put(be, &ev, NULL, on_put, &a), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(a.status, 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM events WHERE source_id = 'recv'"
                          " AND status = 'received' AND matched IS NULL"),
                 1);
    CHECK_INT_EQ(one_routed(recv_id, 2), 0);
    util_id_derive("dlv_", recv_id, "ep1", 1, did, sizeof did);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM deliveries d JOIN delivery_queue q ON q.delivery_seq = d.seq"
             " WHERE d.id = '%s' AND d.event_id = '%s'",
             did, recv_id);
    CHECK_INT_EQ(side_int(sql), 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM events WHERE source_id = 'recv' AND status = 'routed'"
             " AND matched LIKE '%%%s%%'",
             did);
    CHECK_INT_EQ(side_int(sql), 1);
    CHECK_INT_EQ(one_routed(recv_id, 2), 0); /* a replay: new ids */
    CHECK_INT_EQ(
        side_int("SELECT count(DISTINCT id) FROM deliveries WHERE event_id = (SELECT id FROM"
                 " events WHERE source_id = 'recv')"),
        4);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM events WHERE source_id = 'recv' AND matched LIKE '%%%s%%'", did);
    CHECK_INT_EQ(side_int(sql), 0); /* the replay's handlers replaced the first's */
    CHECK_INT_EQ(side_int("SELECT count(*) FROM batch_items WHERE event_id = (SELECT id FROM"
                          " events WHERE source_id = 'recv')"),
                 2);
    CHECK_INT_EQ(one_routed("evt_nope", 1), 2);
}

enum state_op {
    EP_FAIL,
    EP_OK,
    EP_DISABLE,
    EP_ENABLE,
    RETRY,
    SKIP,
    SUB_PUT,
    SUB_URL,
    SUB_SECRET,
    SUB_DEL
};
static int one_attempt(const char *dlv, int n, const char *status, int64_t next_at);
static int one_state(enum state_op what, const char *arg1, int64_t *value);

static void on_blocked(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_blocked_key *b = rows;
    on_done(arg, status, rows, n, err);
    if (n)
        snprintf(a->err, sizeof a->err, "%s %s %lld", b[0].key, b[0].head_id,
                 (long long)b[0].depth);
}

static void on_queue(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_endpoint_queue *q = rows;
    on_done(arg, status, rows, n, err);
    if (q)
        snprintf(a->err, sizeof a->err, "%lld %lld %lld %lld", (long long)q->pending,
                 (long long)q->held, (long long)q->due, (long long)q->blocked);
}

static void on_pair(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    on_done(arg, status, rows, n, err);
    if (rows && n == 2)
        a->value = ((const int64_t *)rows)[0];
}

static void on_row(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_event_row *e = rows;
    on_done(arg, status, rows, n, err);
    if (e)
        snprintf(a->err, sizeof a->err, "%s %s", e->id, e->status);
}

/* A key blocked behind its failed head: the reads that show it. */
static void check_key_reads(const char *head, const char *second) {
    struct answer a[7];
    char want[160], sql[160];

    memset(a, 0, sizeof a);
    CHECK_INT_EQ(ops->endpoint_blocked(be, "epk", 10, on_blocked, &a[0]), 0);
    CHECK_INT_EQ(ops->endpoint_queue(be, "epk", util_now_ms(), 100, 1, on_queue, &a[1]), 0);
    CHECK_INT_EQ(ops->endpoint_head(be, "epk", on_pair, &a[2]), 0);
    CHECK_INT_EQ(ops->event_get(be, keys_id, on_row, &a[3]), 0);
    CHECK_INT_EQ(ops->event_get(be, "evt_nope", on_row, &a[4]), 0);
    CHECK_INT_EQ(ops->events_find(be, "keys", 5, on_names, &a[5]), 0);
    CHECK_INT_EQ(ops->backlog(be, on_rows, &a[6]), 0);
    CHECK(wait_flag(&a[6].calls, 10000));
    snprintf(want, sizeof want, "k1 %s 1", head);
    CHECK_STR_EQ(a[0].err, want);
    CHECK_STR_EQ(a[1].err, "2 0 1 1"); /* k1's second due (not leased), k2's leased */
    snprintf(sql, sizeof sql, "SELECT seq FROM deliveries WHERE id = '%s'", second);
    CHECK_INT_EQ(a[2].value, side_int(sql));
    CHECK_INT_EQ(a[3].status, 1);
    snprintf(want, sizeof want, "%s routed", keys_id);
    CHECK_STR_EQ(a[3].err, want);
    CHECK_INT_EQ(a[4].status, 0);
    CHECK_INT_EQ(a[4].calls, 1);
    CHECK_STR_EQ(a[5].err, keys_id);
    CHECK_INT_EQ(a[6].value, side_int("SELECT count(*) FROM delivery_queue"));
}

/* An endpoint ordered by key: one in flight per key, a failed head blocks
 * its key until skipped, other keys go on. */
static void check_keys(void) {
    struct store_delivery_new d[3] = {
        {.endpoint = "epk", .payload = "1", .payload_len = 1, .status = "pending", .okey = "k1"},
        {.endpoint = "epk", .payload = "2", .payload_len = 1, .status = "pending", .okey = "k1"},
        {.endpoint = "epk", .payload = "3", .payload_len = 1, .status = "pending", .okey = "k2"}};
    struct store_plan plan = {.status = "routed", .deliveries = d, .ndeliveries = 3};
    struct store_event ev = {.id = keys_id,
                             .source = "atoship",
                             .source_id = "keys",
                             .received_at = 1,
                             .raw = "",
                             .raw_len = 0};
    struct answer a = {0}, g = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    int64_t now = util_now_ms();
    char head[UTIL_ID_MAX], second[UTIL_ID_MAX];

    util_id_derive("dlv_", keys_id, "epk", 0, head, sizeof head);
    util_id_derive("dlv_", keys_id, "epk", 1, second, sizeof second);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->event_put(be, &ev, &plan, on_put, &a), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(a.status, 0);
    /* k1's head and k2's: not k1's second */
    CHECK_INT_EQ(ops->claim(be, "epk", -1, now, 30000, 10, 0, 0, on_claim, &c1), 0);
    CHECK(wait_flag(&c1.calls, 10000));
    CHECK_INT_EQ(c1.n, 2);
    CHECK_INT_EQ(one_attempt(head, 1, "failed", 0), 0);
    /* the failed head blocks k1 */
    CHECK_INT_EQ(ops->claim(be, "epk", -1, now, 30000, 10, 0, 0, on_claim, &c2), 0);
    CHECK(wait_flag(&c2.calls, 10000));
    CHECK_INT_EQ(c2.n, 0);
    check_key_reads(head, second);
    CHECK_INT_EQ(one_state(SKIP, head, NULL), 1);
    CHECK_INT_EQ(one_state(SKIP, head, NULL), 2); /* not holding a key any more */
    CHECK_INT_EQ(ops->claim(be, "epk", -1, now, 30000, 10, 0, 0, on_claim, &c3), 0);
    CHECK(wait_flag(&c3.calls, 10000));
    CHECK_INT_EQ(c3.n, 1);
    {
        char sql[160];
        snprintf(sql, sizeof sql, "SELECT seq FROM deliveries WHERE id = '%s'", second);
        CHECK_INT_EQ(c3.seqs[0], side_int(sql));
    }
}

static void check_loop_reads(void) {
    struct store_sub sub = {.id = "sub_3",
                            .event = "TRACK",
                            .pattern = "x.*",
                            .url = "http://127.0.0.1:9/3",
                            .secret = "s",
                            .created_at = 1};
    struct store_event ev = {.id = "evt_recv2",
                             .source = "atoship",
                             .source_id = "recv2",
                             .received_at = 1,
                             .raw = "RAW",
                             .raw_len = 3};
    struct answer a[8], g = {0}, s = {0}, e = {0};

    memset(a, 0, sizeof a);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->sub_put(be, &sub, on_done, &s), 0);
    CHECK_INT_EQ(ops->event_put(be, &ev, NULL, on_put, &e), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(g.status, 0);
    CHECK_INT_EQ(ops->endpoint_next_due(be, "ep0", on_rows, &a[0]), 0);
    CHECK_INT_EQ(ops->endpoint_next_due(be, "ep_none", on_rows, &a[1]), 0);
    CHECK_INT_EQ(ops->batch_next_close(be, on_rows, &a[2]), 0);
    CHECK_INT_EQ(ops->endpoints_pending(be, on_names, &a[3]), 0);
    CHECK_INT_EQ(ops->endpoint_states(be, on_states, &a[4]), 0);
    CHECK_INT_EQ(ops->subs_load(be, on_subs, &a[5]), 0);
    CHECK_INT_EQ(ops->events_unrouted(be, 0, 10, on_unrouted, &a[6]), 0);
    CHECK(wait_flag(&a[6].calls, 10000));
    for (int i = 0; i < 7; i++) {
        CHECK_INT_EQ(a[i].calls, 1);
        CHECK_INT_EQ(a[i].status, 0);
    }
    CHECK_INT_EQ(a[0].value, 0);
    CHECK_INT_EQ(a[1].value, INT64_MAX);
    CHECK_INT_EQ(a[2].value, 180000); /* evt_recv's items: the window [120000, 180000) */
    CHECK_STR_EQ(a[3].err, "batched,ep0,ep1,ep2,ep3");
    CHECK_INT_EQ(a[4].value, 12);
    CHECK_INT_EQ(a[5].n, 1);
    CHECK_STR_EQ(a[5].err, "sub_3 http://127.0.0.1:9/3");
    CHECK_INT_EQ(a[6].n, 1);
    CHECK_STR_EQ(a[6].err, "evt_recv2 received RAW");
}

/* One group with one write op; returns its answer's status. */
static int one_attempt(const char *dlv, int n, const char *status, int64_t next_at) {
    struct answer a = {0}, g = {0};
    struct store_attempt at = {.n = n,
                               .at = util_now_ms(),
                               .status_code = 200,
                               .latency_ms = 5,
                               .response = "ok",
                               .response_len = 2};
    if (ops->group_begin(be) < 0)
        return -9;
    if (ops->attempt_put(be, dlv, &at, status, next_at, 1, on_done, &a) < 0)
        return -8;
    ops->group_end(be, on_done, &g);
    wait_flag(&g.calls, 10000);
    return a.calls == 1 ? a.status : -7;
}

static int one_lease(int64_t seq, int64_t until) {
    struct answer a = {0}, g = {0};
    if (ops->group_begin(be) < 0 || ops->lease_renew(be, seq, until, 0, on_done, &a) < 0)
        return -9;
    ops->group_end(be, on_done, &g);
    wait_flag(&g.calls, 10000);
    return a.calls == 1 ? a.status : -7;
}

/* An attempt is recorded once; claims, leases and their owner. */
static void check_attempts_and_leases(void) {
    struct answer c = {0}, c2 = {0};
    char sql[256];
    int64_t now = util_now_ms(), seq;
    PGresult *r;
    char dlv[64];

    /* ep0 has the deliveries of the checks above: claim one */
    CHECK_INT_EQ(ops->claim(be, "ep1", -1, now, 30000, 1, 0, 0, on_claim, &c), 0);
    CHECK(wait_flag(&c.calls, 10000));
    CHECK_INT_EQ(c.status, 0);
    CHECK_INT_EQ(c.n, 1);
    seq = c.seqs[0];
    snprintf(sql, sizeof sql, "SELECT id FROM deliveries WHERE seq = %lld", (long long)seq);
    r = PQexec(side, sql);
    snprintf(dlv, sizeof dlv, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM delivery_queue WHERE delivery_seq = %lld AND lease_owner = '%s'",
             (long long)seq, ops->instance(be));
    CHECK_INT_EQ(side_int(sql), 1);
    /* renewed while this instance holds it */
    CHECK_INT_EQ(one_lease(seq, now + 60000), 0);
    /* attempt 1: pending again; the same attempt again: recorded once */
    CHECK_INT_EQ(one_attempt(dlv, 1, "pending", now + 1000), 0);
    CHECK_INT_EQ(one_attempt(dlv, 1, "delivered", now), STORE_DUP);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM attempts WHERE delivery_id = '%s'", dlv);
    CHECK_INT_EQ(side_int(sql), 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM delivery_queue WHERE delivery_seq = %lld AND attempts = 1"
             " AND lease_owner IS NULL AND next_at = %lld",
             (long long)seq, (long long)(now + 1000));
    CHECK_INT_EQ(side_int(sql), 1);
    /* not due yet: not claimed */
    CHECK_INT_EQ(ops->claim(be, "ep1", -1, now, 30000, 100, 0, 0, on_claim, &c2), 0);
    CHECK(wait_flag(&c2.calls, 10000));
    for (size_t i = 0; i < c2.n; i++)
        CHECK(c2.seqs[i] != seq);
    /* attempt 2 delivered: out of the queue, into the outcomes */
    CHECK_INT_EQ(one_attempt(dlv, 2, "delivered", now), 0);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM delivery_outcomes WHERE delivery_seq = %lld"
             " AND status = 'delivered' AND attempts = 2",
             (long long)seq);
    CHECK_INT_EQ(side_int(sql), 1);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM delivery_queue WHERE delivery_seq = %lld",
             (long long)seq);
    CHECK_INT_EQ(side_int(sql), 0);
    /* a lease another instance holds is not renewed */
    side_exec("UPDATE delivery_queue SET lease_owner = 'ins_other', lease_until = 1"
              " WHERE endpoint = 'ep1'");
    snprintf(sql, sizeof sql,
             "SELECT min(delivery_seq) FROM delivery_queue WHERE endpoint = 'ep1'");
    CHECK_INT_EQ(one_lease(side_int(sql), now + 60000), STORE_LEASE_LOST);
}

static void check_batch_and_reads(void) {
    char ep[] = "batched";
    struct store_batch_window w = {.endpoint = ep, .window_start = 60000, .window_ms = 60000};
    struct answer a = {0}, g = {0}, a2 = {0}, g2 = {0}, due = {0}, p = {0}, dc = {0}, pg = {0};
    struct store_page q = {.limit = 5};
    long long open_items = side_int("SELECT count(*) FROM batch_items WHERE delivery_id IS NULL");

    CHECK(open_items > 0);
    CHECK_INT_EQ(ops->batch_due(be, util_now_ms(), on_done, &due), 0);
    CHECK(wait_flag(&due.calls, 10000));
    CHECK_INT_EQ(due.status, 0);
    CHECK_INT_EQ(due.n, 1);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->batch_close(be, &w, "pending", 0, on_count, &a), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(a.status, 0);
    CHECK_INT_EQ(a.value, open_items);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->batch_close(be, &w, "pending", 0, on_count, &a2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g2), 0);
    CHECK(wait_flag(&g2.calls, 10000));
    CHECK_INT_EQ(a2.value, 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM deliveries WHERE batch"), 1);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM deliveries d JOIN delivery_queue q"
                          " ON q.delivery_seq = d.seq WHERE d.batch"
                          " AND convert_from(d.payload, 'UTF8')::json->>'count' = "
                          "(SELECT count(*)::text FROM batch_items)"),
                 1);
    CHECK_INT_EQ(ops->ping(be, on_done, &pg), 0);
    CHECK(wait_flag(&pg.calls, 10000));
    CHECK_INT_EQ(pg.status, 0);
    CHECK_INT_EQ(ops->events_page(be, &q, on_done, &p), 0);
    CHECK(wait_flag(&p.calls, 10000));
    CHECK_INT_EQ(p.status, 0);
    CHECK_INT_EQ(p.n, 5);
    CHECK_INT_EQ(ops->delivery_counts(be, on_counts, &dc), 0);
    CHECK(wait_flag(&dc.calls, 10000));
    CHECK_INT_EQ(dc.status, 0);
    CHECK_INT_EQ(dc.dc.pending + dc.dc.held, side_int("SELECT count(*) FROM delivery_queue"));
    CHECK_INT_EQ(dc.dc.delivered, 1);
    /* an event's detail: its deliveries, the batch holding it, attempts */
    {
        struct answer e1 = {0}, e2 = {0};
        CHECK_INT_EQ(ops->event_detail(be, "evt_a_0", on_detail, &e1), 0);
        CHECK_INT_EQ(ops->event_detail(be, "evt_nope", on_detail, &e2), 0);
        CHECK(wait_flag(&e2.calls, 10000));
        CHECK_INT_EQ(e1.status, 1);
        CHECK_INT_EQ(e1.n, 5);
        CHECK_INT_EQ(e1.seqs[0], 1);
        CHECK_STR_EQ(e1.err, "evt_a_0 routed {\"x\":1}");
        CHECK_INT_EQ(e1.value, side_int("SELECT count(*) FROM attempts a JOIN deliveries d"
                                        " ON d.id = a.delivery_id WHERE d.event_id = 'evt_a_0'"));
        CHECK_INT_EQ(e2.calls, 1);
        CHECK_INT_EQ(e2.status, 0);
    }
    /* pages of deliveries: newest first, a delivered one with its last attempt */
    {
        struct answer d1 = {0}, d2 = {0};
        struct store_page dq = {.endpoint = "ep1", .limit = 3};
        struct store_page dd = {.status = "delivered", .limit = 10};
        CHECK_INT_EQ(ops->deliveries_page(be, &dq, on_items, &d1), 0);
        CHECK_INT_EQ(ops->deliveries_page(be, &dd, on_items, &d2), 0);
        CHECK(wait_flag(&d2.calls, 10000));
        CHECK_INT_EQ(d1.calls, 1);
        CHECK_INT_EQ(d1.n, 3);
        CHECK(d1.seqs[0] > d1.seqs[1] && d1.seqs[1] > d1.seqs[2]);
        CHECK_INT_EQ(d2.n, 1);
        CHECK_STR_EQ(d2.err, "delivered/2/200/1");
    }
}

/* A nonce: new, the same again (a carrier's retry), another body (a
 * replay), each in its own group. */
static int one_nonce(const char *nonce, const char *digest) {
    struct answer a = {0}, g = {0};
    if (ops->group_begin(be) < 0 ||
        ops->nonce_put(be, "shiptify", nonce, digest, util_now_ms(), 600000, on_done, &a) < 0)
        return -9;
    ops->group_end(be, on_done, &g);
    wait_flag(&g.calls, 10000);
    return a.calls == 1 ? a.status : -7;
}

static void check_nonces(void) {
    CHECK_INT_EQ(one_nonce("n1", "d1"), 0);
    CHECK_INT_EQ(one_nonce("n1", "d1"), STORE_DUP);
    CHECK_INT_EQ(one_nonce("n1", "d2"), STORE_REPLAY);
    CHECK_INT_EQ(one_nonce("n2", "d1"), 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM nonces"), 2);
}

/* One group write of the state ops; its status, *value its int64 row. */

static int one_state(enum state_op what, const char *arg1, int64_t *value) {
    struct answer a = {0}, g = {0};
    struct store_sub sub = {.id = arg1,
                            .event = "TRACK",
                            .pattern = "shipment.*",
                            .url = "http://127.0.0.1:9/h",
                            .secret = "s",
                            .created_at = 1};
    int64_t now = util_now_ms();
    int rc = -9;

    if (ops->group_begin(be) < 0)
        return -9;
    switch (what) {
    case EP_FAIL:
    case EP_OK:
        rc = ops->endpoint_attempt(be, arg1, what == EP_OK, "HTTP 500", now, on_count, &a);
        break;
    case EP_DISABLE:
    case EP_ENABLE:
        rc = ops->endpoint_set_disabled(be, arg1, what == EP_DISABLE, "by the admin API", now,
                                        on_count, &a);
        break;
    case RETRY:
        rc = ops->delivery_retry(be, arg1, now, on_done, &a);
        break;
    case SKIP:
        rc = ops->delivery_skip(be, arg1, now, on_done, &a);
        break;
    case SUB_PUT:
        rc = ops->sub_put(be, &sub, on_done, &a);
        break;
    case SUB_SECRET:
        rc = ops->sub_set_secret(be, arg1, "rotated", on_done, &a);
        break;
    case SUB_URL:
    case SUB_DEL:
        rc = ops->sub_change(be, arg1, what == SUB_URL ? "http://127.0.0.1:9/new" : NULL, on_done,
                             &a);
        break;
    }
    ops->group_end(be, on_done, &g);
    wait_flag(&g.calls, 10000);
    if (rc < 0 || a.calls != 1)
        return -7;
    if (value)
        *value = a.value;
    return a.status;
}

/* Several attempts of one group on two endpoints: one upsert each at the
 * group's end (not one per attempt: each made a version of the row every
 * claim reads), counts summed, the last failure's error, the run of
 * failures the group ends with, and every attempt's callback told it. */
static void check_attempts_gathered(void) {
    struct answer a[6], g = {0};
    uint64_t q0, s0, q1, s1;
    int64_t t = util_now_ms();
    static const struct {
        const char *ep;
        int ok;
        const char *err;
        int64_t at;
    } att[6] = {{"hp1", 0, "HTTP 500", 1000}, {"hp2", 1, NULL, 1001},
                {"hp1", 1, NULL, 1002},       {"hp1", 0, "HTTP 502", 1003},
                {"hp1", 0, "HTTP 503", 1004}, {"hp2", 0, "timeout", 1005}};

    memset(a, 0, sizeof a);
    counts(&q0, &s0);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    for (int i = 0; i < 6; i++)
        CHECK_INT_EQ(ops->endpoint_attempt(be, att[i].ep, att[i].ok, att[i].err, t + att[i].at,
                                           on_count, &a[i]),
                     0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    counts(&q1, &s1);
    CHECK_INT_EQ(g.status, 0);
    CHECK_INT_EQ(q1 - q0, 2 + 2); /* BEGIN, COMMIT, one upsert per endpoint */
    for (int i = 0; i < 6; i++) {
        CHECK_INT_EQ(a[i].calls, 1);
        CHECK_INT_EQ(a[i].status, 0);
        /* hp1 ends with failures since 1003, hp2 with one at 1005 */
        CHECK_INT_EQ(a[i].value, t + (strcmp(att[i].ep, "hp1") == 0 ? 1003 : 1005));
    }
    CHECK_INT_EQ(side_int("SELECT ok * 10 + failed FROM endpoint_state WHERE name = 'hp1'"), 13);
    CHECK_INT_EQ(side_int("SELECT ok * 10 + failed FROM endpoint_state WHERE name = 'hp2'"), 11);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM endpoint_state WHERE name = 'hp1'"
                          " AND last_error = 'HTTP 503'"),
                 1);
    /* a next group of successes ends the run; one of failures only keeps
     * the stored start */
    int64_t v = -1;
    CHECK_INT_EQ(one_state(EP_FAIL, "hp1", &v), 0);
    CHECK_INT_EQ(v, t + 1003);
    CHECK_INT_EQ(one_state(EP_OK, "hp1", &v), 0);
    CHECK_INT_EQ(v, 0);
}

/* Endpoint health, disabling, a dead letter retried, subscriptions. */
static void check_state(void) {
    int64_t v = -1, first = 0,
            held = side_int("SELECT count(*) FROM delivery_queue"
                            " WHERE endpoint = 'ep2' AND status = 'pending'");
    char sql[256], dlv[64];
    PGresult *r;

    CHECK_INT_EQ(one_state(EP_FAIL, "ep2", &first), 0);
    CHECK(first > 0);
    CHECK_INT_EQ(one_state(EP_FAIL, "ep2", &v), 0);
    CHECK_INT_EQ(v, first); /* the run of failures started at the first */
    CHECK_INT_EQ(one_state(EP_OK, "ep2", &v), 0);
    CHECK_INT_EQ(v, 0);
    CHECK_INT_EQ(side_int("SELECT ok * 10 + failed FROM endpoint_state WHERE name = 'ep2'"), 12);
    CHECK(held > 0);
    CHECK_INT_EQ(one_state(EP_DISABLE, "ep2", &v), 0);
    CHECK_INT_EQ(v, held);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM delivery_queue WHERE endpoint = 'ep2'"
                          " AND status = 'held'"),
                 held);
    CHECK_INT_EQ(one_state(EP_ENABLE, "ep2", &v), 0);
    CHECK_INT_EQ(v, held);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM endpoint_state WHERE name = 'ep2' AND disabled"),
                 0);
    /* a dead letter: retried once; not failed any more; unknown */
    r = PQexec(side, "SELECT d.id FROM deliveries d JOIN delivery_queue q ON q.delivery_seq = d.seq"
                     " WHERE d.endpoint = 'ep3' ORDER BY d.seq LIMIT 1");
    snprintf(dlv, sizeof dlv, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    CHECK_INT_EQ(one_attempt(dlv, 1, "failed", 0), 0);
    CHECK_INT_EQ(one_state(SKIP, dlv, NULL), 2); /* no key to step over */
    CHECK_INT_EQ(one_state(RETRY, dlv, NULL), 1);
    CHECK_INT_EQ(one_state(RETRY, dlv, NULL), 2);
    CHECK_INT_EQ(one_state(RETRY, "dlv_nope", NULL), 0);
    snprintf(sql, sizeof sql,
             "SELECT attempts FROM delivery_queue q JOIN deliveries d ON d.seq = q.delivery_seq"
             " WHERE d.id = '%s' AND q.status = 'pending' AND q.schedule_pos = 0",
             dlv);
    CHECK_INT_EQ(side_int(sql), 1);
    /* subscriptions: one per pattern; changed; deleted */
    CHECK_INT_EQ(one_state(SUB_PUT, "sub_1", NULL), 0);
    CHECK_INT_EQ(one_state(SUB_PUT, "sub_2", NULL), STORE_DUP);
    CHECK_INT_EQ(one_state(SUB_URL, "sub_1", NULL), 1);
    CHECK_INT_EQ(one_state(SUB_URL, "sub_2", NULL), 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM subscriptions WHERE url LIKE '%/new'"), 1);
    CHECK_INT_EQ(one_state(SUB_SECRET, "sub_1", NULL), 1);
    CHECK_INT_EQ(one_state(SUB_SECRET, "sub_2", NULL), 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM subscriptions WHERE secret = 'rotated'"), 1);
    CHECK_INT_EQ(one_state(SUB_DEL, "sub_1", NULL), 1);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM subscriptions"), 0);
}

static int run_checks(const char *url) {
    side = PQconnectdb(url);
    if (PQstatus(side) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect: %s\n", PQerrorMessage(side));
        CHECK(0);
        PQfinish(side);
        return harness_report();
    }
    side_exec("SET application_name = 'checks'");
    util_id_new("evt_", recv_id, sizeof recv_id);
    util_id_new("evt_", keys_id, sizeof keys_id);
    /* "ready" comes before the connection's first query has answered; the
     * instance's registration waits behind it. Counting round trips starts
     * once that one has gone (its row is there), or a group counts it. */
    int64_t end = util_mono_ms() + 10000;
    while (side_int("SELECT count(*) FROM instances") < 1 && util_mono_ms() < end) {
        struct timeval tick = {0, 20000};
        event_base_loopexit(base, &tick);
        event_base_dispatch(base);
    }
    CHECK_INT_EQ(side_int("SELECT count(*) FROM instances"), 1);
    check_group_round_trip(20, 4, "a");
    check_group_round_trip(1, 1, "b");
    check_failed_group();
    check_lost_group();
    check_dedupe();
    check_attempts_and_leases();
    check_batch_and_reads();
    check_nonces();
    check_state();
    check_attempts_gathered();
    check_routed();
    check_loop_reads();
    check_keys();
    PQfinish(side);
    return harness_report();
}

/* ---- modes for several processes ---- */

static void gun(void) {
    char line[64];
    printf("ready %s\n", ops->instance(be));
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        exit(3);
}

static int mode_put(char **argv) {
    struct answer a, g = {0};
    char id[UTIL_ID_MAX];
    util_id_new("evt_", id, sizeof id);
    gun();
    if (ops->group_begin(be) < 0 || put(id, argv[0], argv[1], 2, 0, &a) < 0 ||
        ops->group_end(be, on_done, &g) < 0)
        return 2;
    wait_flag(&g.calls, 30000);
    printf("put %d %s group %d %s\n", a.status, a.status >= 0 ? a.put.id : a.err, g.status, g.err);
    return g.status == 0 ? 0 : 1;
}

/* CLAIM_CAP in the environment: a capped claim (the endpoint's concurrency
 * across instances); CLAIM_RATE with it: a rated one (its shared bucket). */
static int claim_once(const char *ep, int64_t lease, size_t max, int64_t after, struct answer *a) {
    const char *cap = getenv("CLAIM_CAP"), *rate = getenv("CLAIM_RATE");
    memset(a, 0, sizeof *a);
    if (ops->claim(be, ep, after, util_now_ms(), lease, max, cap ? (size_t)atoi(cap) : 0,
                   rate ? atof(rate) : 0, on_claim, a) < 0)
        return -1;
    wait_flag(&a->calls, 30000);
    return a->calls == 1 ? a->status : -1;
}

static int mode_claim(char **argv, int hold, int once) {
    struct answer a;
    size_t total = 0, max = (size_t)atoi(argv[2]);
    int64_t lease = atoll(argv[1]), after = argv[3] ? atoll(argv[3]) : -1;
    gun();
    for (;;) {
        if (claim_once(argv[0], lease, max, after, &a) < 0) {
            printf("error %s\n", a.err);
            return 1;
        }
        for (size_t i = 0; i < a.n; i++)
            printf("%s %lld\n", hold ? "held" : "claimed", (long long)a.seqs[i]);
        total += a.n;
        if (hold || once || a.n == 0)
            break;
    }
    fflush(stdout);
    if (hold) {
        printf("holding\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    printf("done %zu\n", total);
    return 0;
}

/* for EP LEASE MAX MS: claims again and again for MS ms (a rated claim:
 * CLAIM_CAP and CLAIM_RATE), printing each row claimed and, after a claim
 * of none, the wait its answer gave ("wait MS"), slept before the next. */
static int mode_for(char **argv) {
    struct answer a;
    size_t total = 0, max = (size_t)atoi(argv[2]);
    int64_t lease = atoll(argv[1]), end;
    gun();
    end = util_mono_ms() + atoll(argv[3]);
    while (util_mono_ms() < end) {
        int st = claim_once(argv[0], lease, max, -1, &a);
        if (st < 0) {
            printf("error %s\n", a.err);
            return 1;
        }
        for (size_t i = 0; i < a.n; i++)
            printf("claimed %lld\n", (long long)a.seqs[i]);
        total += a.n;
        if (!a.n) {
            printf("wait %d\n", st);
            usleep((useconds_t)(st > 0 ? st : 1) * 1000);
        }
    }
    printf("done %zu\n", total);
    return 0;
}

static int mode_close(char **argv) {
    struct store_batch_window w = {
        .endpoint = argv[0], .window_start = atoll(argv[1]), .window_ms = atoll(argv[2])};
    struct answer a = {0}, g = {0};
    gun();
    if (ops->group_begin(be) < 0 || ops->batch_close(be, &w, "pending", 0, on_count, &a) < 0 ||
        ops->group_end(be, on_done, &g) < 0)
        return 2;
    wait_flag(&g.calls, 30000);
    printf("closed %lld group %d %s\n", (long long)a.value, g.status, g.err);
    return g.status == 0 ? 0 : 1;
}

static int mode_attempt(char **argv) {
    int st;
    gun();
    st = one_attempt(argv[0], atoi(argv[1]), argv[2], 0);
    printf("attempt %d\n", st);
    return st >= 0 ? 0 : 1;
}

static int usage(const char *why) {
    fprintf(stderr,
            "test_store_pg_ops: %s\n"
            "usage: test_store_pg_ops URL checks|put|claim|hold|once|for|close|attempt ...\n"
            "(the URL is argv[1] or $WB_PG_URL: tests/integration/test_pg_ops.py runs this\n"
            "against a real PostgreSQL; it never passes without one)\n",
            why);
    CHECK(0);
    return harness_report() ? 2 : 2;
}

int main(int argc, char **argv) {
    const char *url = argc > 1 && strstr(argv[1], "://") ? argv[1] : getenv("WB_PG_URL");
    int skip = argc > 1 && strstr(argv[1], "://") ? 2 : 1, rc = 2;
    const char *mode = argc > skip ? argv[skip] : "checks";
    char err[1024];

    if (!url || !*url)
        return usage("no PostgreSQL URL given");
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    base = event_base_new();
    ops = &store_pg_backend;
    if (ops->open(&be, base, url, ".", err, sizeof err) < 0) {
        fprintf(stderr, "open: %s\n", err);
        CHECK(0);
        harness_report();
        event_base_free(base);
        return 2;
    }
    if (!wait_ready(20000)) {
        fprintf(stderr, "not connected in 20 s\n");
        CHECK(0);
        rc = harness_report();
    } else if (strcmp(mode, "checks") == 0) {
        rc = run_checks(url);
    } else if (strcmp(mode, "put") == 0 && argc >= skip + 3) {
        rc = mode_put(argv + skip + 1);
    } else if ((strcmp(mode, "claim") == 0 || strcmp(mode, "hold") == 0 ||
                strcmp(mode, "once") == 0) &&
               argc >= skip + 4) {
        rc = mode_claim(argv + skip + 1, mode[0] == 'h', mode[0] == 'o');
    } else if (strcmp(mode, "for") == 0 && argc >= skip + 5) {
        rc = mode_for(argv + skip + 1);
    } else if (strcmp(mode, "close") == 0 && argc >= skip + 4) {
        rc = mode_close(argv + skip + 1);
    } else if (strcmp(mode, "attempt") == 0 && argc >= skip + 4) {
        rc = mode_attempt(argv + skip + 1);
    } else {
        rc = usage("unknown mode or missing arguments");
    }
    ops->close(be);
    event_base_free(base);
    return rc;
}
