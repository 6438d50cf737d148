/* test_store_sqlite_ops.c -- the SQLite backend's operations
 * (store_backend.h, core/store_sqlite_be.c) on a file in a temporary
 * directory, driven as tests/unit/test_store_pg_ops.c drives PostgreSQL's
 * (the recorders and put() are store_ops.h, shared): every answer comes
 * from the loop, never inside the call; a group's writes answer before its
 * end, once its COMMIT is on disk; a group another writer's lock refuses
 * answers -1 to every write and to its end, and the next group commits;
 * dedupe, routing, claims and leases, attempts, batch windows, nonces,
 * endpoint state, subscriptions, retention and the reads.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

#include "harness.h"
#include "store_backend.h"
#include "store_ops.h"
#include "util.h"

static char dir[64], path[128], url[160];
static char recv_id[UTIL_ID_MAX];

/* The checks' own connection to the file (what is on disk, committed). */
static sqlite3 *side;

static long long side_int(const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_prepare_v2(side, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* ---- the order answers come in ---- */

static int order_next;

struct seen {
    struct answer a;
    int order;
    long long on_disk; /* side_int(count_sql) when the answer came */
    const char *count_sql;
};

static void on_done_seen(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct seen *s = arg;
    on_done(&s->a, status, rows, n, err);
    s->order = ++order_next;
    if (s->count_sql)
        s->on_disk = side_int(s->count_sql);
}

/* One group: begin, put, end, then the loop until its end answered. */
static int one_group_put(const char *id, const char *sid, size_t nd, size_t ni, struct answer *a) {
    struct answer g = {0};
    if (ops->group_begin(be) < 0 || put(id, "atoship", sid, nd, ni, a) < 0 ||
        ops->group_end(be, on_done, &g) < 0)
        return -9;
    if (!wait_flag(&g.calls, 10000))
        return -8;
    return g.status;
}

/* ---- checks ---- */

/* Nothing is answered inside a call, reads included. */
static void check_answers_from_the_loop(void) {
    struct answer p = {0}, c = {0};
    CHECK_INT_EQ(ops->ping(be, on_done, &p), 0);
    CHECK_INT_EQ(ops->delivery_counts(be, on_counts, &c), 0);
    CHECK_INT_EQ(p.calls, 0);
    CHECK_INT_EQ(c.calls, 0);
    CHECK(wait_flag(&c.calls, 5000));
    CHECK_INT_EQ(p.calls, 1);
    CHECK_INT_EQ(p.status, 0);
    CHECK_INT_EQ(c.status, 0);
    CHECK_INT_EQ(c.n, 1);
    CHECK_STR_EQ(ops->name, "sqlite");
    CHECK_INT_EQ(ops->ready(be), 1);
    CHECK(ops->instance(be) && *ops->instance(be));
}

/* A group of n events with fanout deliveries and a batch item each: every
 * write answers once, before the group's end, with its seq, id and window
 * count, and its rows are on disk (another connection sees them) when it
 * does. */
static void check_group(size_t n, size_t fanout) {
    struct seen a[8], g;
    char id[64], sid[64];
    long long before = side_int("SELECT count(*) FROM events");
    long long dlv_before = side_int("SELECT count(*) FROM deliveries");
    int ok = 1;

    memset(a, 0, sizeof a);
    memset(&g, 0, sizeof g);
    order_next = 0;
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->group_begin(be), -1); /* one open group at a time */
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof id, "evt_g%zu_%zu", fanout, i);
        snprintf(sid, sizeof sid, "g%zu-%zu", fanout, i);
        ok &= put(id, "atoship", sid, fanout, 1, &a[i].a) == 0;
    }
    CHECK(ok);
    CHECK_INT_EQ(a[0].a.calls, 0);
    g.count_sql = "SELECT count(*) FROM events";
    CHECK_INT_EQ(ops->group_end(be, on_done_seen, &g), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g.a), -1); /* none open */
    CHECK_INT_EQ(g.a.calls, 0);
    CHECK(wait_flag(&g.a.calls, 10000));
    CHECK_INT_EQ(g.a.status, 0);
    CHECK_INT_EQ(g.on_disk, before + (long long)n);
    for (size_t i = 0; i < n; i++) {
        CHECK_INT_EQ(a[i].a.calls, 1);
        CHECK_INT_EQ(a[i].a.status, 0);
        CHECK(a[i].a.put.seq > (i ? a[i - 1].a.put.seq : 0));
        CHECK(strncmp(a[i].a.put.id, "evt_g", 5) == 0);
        CHECK_INT_EQ(a[i].a.counts[0], a[0].a.counts[0] + (long long)i); /* the window's items */
    }
    CHECK_INT_EQ(side_int("SELECT count(*) FROM deliveries") - dlv_before, (long long)(n * fanout));
}

/* The writes answer in the order they were made, each once its rows are
 * on disk, and the group's end after them. */
static void check_order(void) {
    struct seen w1, w2, g;
    struct answer p = {0};
    memset(&w1, 0, sizeof w1);
    memset(&w2, 0, sizeof w2);
    memset(&g, 0, sizeof g);
    order_next = 0;
    w1.count_sql = w2.count_sql = "SELECT count(*) FROM nonces WHERE nonce LIKE 'n-ord%'";
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(
        ops->nonce_put(be, "shiptify", "n-ord1", "d1", util_now_ms(), 60000, on_done_seen, &w1), 0);
    CHECK_INT_EQ(put("evt_ord_1", "atoship", "ord-1", 1, 0, &p), 0);
    CHECK_INT_EQ(
        ops->nonce_put(be, "shiptify", "n-ord2", "d1", util_now_ms(), 60000, on_done_seen, &w2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done_seen, &g), 0);
    CHECK(wait_flag(&g.a.calls, 10000));
    CHECK_INT_EQ(w1.order, 1);
    CHECK_INT_EQ(w2.order, 2);
    CHECK_INT_EQ(g.order, 3);
    CHECK_INT_EQ(w1.on_disk, 2);
    CHECK_INT_EQ(p.calls, 1);
    CHECK_INT_EQ(p.status, 0);
}

/* Another writer holds the lock: every write of the group and its end
 * answer -1, nothing is stored; once it lets go, the next group commits. */
static void check_refused_group(void) {
    struct answer a1, a2, g = {0}, a3;
    char *msg = NULL;

    CHECK_INT_EQ(sqlite3_exec(side, "BEGIN IMMEDIATE", NULL, NULL, &msg), SQLITE_OK);
    sqlite3_free(msg);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_busy_1", "atoship", "busy-1", 2, 0, &a1), 0);
    CHECK_INT_EQ(put("evt_busy_2", "atoship", "busy-2", 2, 0, &a2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(g.status, -1);
    CHECK_INT_EQ(a1.calls, 1);
    CHECK_INT_EQ(a1.status, -1);
    CHECK_INT_EQ(a2.status, -1);
    CHECK(a1.err[0] != '\0');
    CHECK_INT_EQ(sqlite3_exec(side, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM events WHERE source_id LIKE 'busy-%'"), 0);
    CHECK_INT_EQ(one_group_put("evt_busy_3", "busy-3", 1, 0, &a3), 0);
    CHECK_INT_EQ(a3.status, 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM events WHERE source_id LIKE 'busy-%'"), 1);
}

/* Dedupe in one group and across groups: STORE_DUP, the first copy's id,
 * seq 0, nothing written for the copy. */
static void check_dedupe(void) {
    struct answer a1, a2, a3, g = {0};

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(put("evt_dup_1", "atoship", "dup", 2, 1, &a1), 0);
    CHECK_INT_EQ(put("evt_dup_2", "atoship", "dup", 2, 1, &a2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(g.status, 0);
    CHECK_INT_EQ(a1.status, 0);
    CHECK_INT_EQ(a2.status, STORE_DUP);
    CHECK_STR_EQ(a2.put.id, "evt_dup_1");
    CHECK_INT_EQ(a2.put.seq, 0);
    CHECK_INT_EQ(one_group_put("evt_dup_3", "dup", 2, 1, &a3), 0);
    CHECK_INT_EQ(a3.status, STORE_DUP);
    CHECK_STR_EQ(a3.put.id, "evt_dup_1");
    CHECK_INT_EQ(side_int("SELECT count(*) FROM deliveries WHERE event_id LIKE 'evt_dup_%'"), 2);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM batch_items WHERE event_id LIKE 'evt_dup_%'"), 1);
}

/* An event stored "received", then routed: its first routing under the
 * derived ids (first_only: a second one writes nothing, 3), a replay under
 * new ones, an unknown id 2; the unrouted read sees it before. */
static int one_routed(const char *id, int first_only) {
    struct store_delivery_new d = {
        .endpoint = "ep0", .payload = "{}", .payload_len = 2, .status = "pending"};
    struct store_match m = {.where = "rules.lua:2", .pattern = "*"};
    struct store_plan plan = {.status = "routed",
                              .deliveries = &d,
                              .ndeliveries = 1,
                              .by_rules = 1,
                              .matches = &m,
                              .nmatches = 1,
                              .first_only = first_only};
    struct answer a = {0}, g = {0};
    if (ops->group_begin(be) < 0 || ops->event_routed(be, id, &plan, on_put, &a) < 0 ||
        ops->group_end(be, on_done, &g) < 0)
        return -9;
    wait_flag(&g.calls, 10000);
    return a.calls == 1 && g.status == 0 ? a.status : -7;
}

static void check_routed(void) {
    struct store_event ev = {.id = recv_id,
                             .source = "atoship",
                             .source_id = "recv",
                             .received_at = 1,
                             .raw = "{\"r\":1}",
                             .raw_len = 7};
    struct answer a = {0}, g = {0}, u = {0};
    char derived[UTIL_ID_MAX], sql[256];

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->event_put(be, &ev, NULL, on_put, &a), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(a.status, 0);
    CHECK_INT_EQ(ops->events_unrouted(be, 0, 100, on_unrouted, &u), 0);
    CHECK(wait_flag(&u.calls, 5000));
    CHECK_INT_EQ(u.status, 0);
    CHECK(strstr(u.err, recv_id) != NULL && strstr(u.err, "received") != NULL);
    CHECK_INT_EQ(one_routed(recv_id, 1), 0);
    util_id_derive("dlv_", recv_id, "ep0", 0, derived, sizeof derived);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM deliveries WHERE id = '%s'", derived);
    CHECK_INT_EQ(side_int(sql), 1);
    CHECK_INT_EQ(one_routed(recv_id, 1), 3);
    CHECK_INT_EQ(one_routed(recv_id, 0), 0); /* a replay: new ids */
    snprintf(sql, sizeof sql, "SELECT count(*) FROM deliveries WHERE event_id = '%s'", recv_id);
    CHECK_INT_EQ(side_int(sql), 2);
    CHECK_INT_EQ(one_routed("evt_nobody", 0), 2);
}

/* Claims: the due rows, leased (a second claim gets none of them), given
 * back by lease_renew(0) due at its release_at, claimable again; an attempt
 * moves one out. */
static void check_claims(void) {
    struct answer p = {0}, c1 = {0}, c2 = {0}, r = {0}, c3 = {0}, at = {0}, g = {0}, nd = {0},
                  hd = {0}, q = {0};
    struct store_attempt att = {.n = 1, .at = util_now_ms(), .status_code = 200, .latency_ms = 5};
    int64_t now = util_now_ms();
    char id[UTIL_ID_MAX], eid[UTIL_ID_MAX];

    util_id_new("evt_", eid, sizeof eid); /* a derived id takes its time from it */
    CHECK_INT_EQ(one_group_put(eid, "claim-1", 3, 0, &p), 0);
    CHECK_INT_EQ(ops->claim(be, "ep2", -1, now, 30000, 10, 0, 0, on_claim, &c1), 0);
    CHECK_INT_EQ(c1.calls, 0);
    CHECK(wait_flag(&c1.calls, 5000));
    CHECK_INT_EQ(c1.status, 0);
    CHECK(c1.n >= 1);
    CHECK_INT_EQ(ops->claim(be, "ep2", -1, now, 30000, 10, 0, 0, on_claim, &c2), 0);
    CHECK(wait_flag(&c2.calls, 5000));
    CHECK_INT_EQ(c2.n, 0);
    CHECK_INT_EQ(ops->endpoint_next_due(be, "ep2", on_count, &nd), 0);
    CHECK(wait_flag(&nd.calls, 5000));
    CHECK(nd.value >= now + 29000); /* the lease's end */
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->lease_renew(be, c1.seqs[0], 0, now - 5, on_done, &r), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(r.status, 0);
    /* due again at release_at, the time it was due as claimed */
    memset(&nd, 0, sizeof nd);
    CHECK_INT_EQ(ops->endpoint_next_due(be, "ep2", on_count, &nd), 0);
    CHECK(wait_flag(&nd.calls, 5000));
    CHECK_INT_EQ(nd.value, now - 5);
    CHECK_INT_EQ(ops->claim(be, "ep2", -1, util_now_ms(), 30000, 10, 0, 0, on_claim, &c3), 0);
    CHECK(wait_flag(&c3.calls, 5000));
    CHECK_INT_EQ(c3.n, 1); /* the one given back */
    CHECK_INT_EQ(c3.seqs[0], c1.seqs[0]);
    /* the ordered head, and the queue's count */
    CHECK_INT_EQ(ops->endpoint_head(be, "ep2", on_rows, &hd), 0);
    CHECK(wait_flag(&hd.calls, 5000));
    CHECK_INT_EQ(hd.n, 2);
    CHECK(hd.value > 0 && hd.value != INT64_MAX);
    util_id_derive("dlv_", eid, "ep2", 2, id, sizeof id);
    memset(&g, 0, sizeof g);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->attempt_put(be, id, &att, "delivered", 0, 0, on_done, &at), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(at.status, 0);
    if (at.status)
        fprintf(stderr, "attempt: %s\n", at.err);
    CHECK_INT_EQ(ops->endpoint_queue(be, "ep2", util_now_ms(), 100, 1, on_rows, &q), 0);
    CHECK(wait_flag(&q.calls, 5000));
    CHECK_INT_EQ(q.status, 0);
    CHECK_INT_EQ(q.value, (long long)c1.n - 1); /* pending: one delivered */
}

/* A batch window: its count in event_put's row, found due at its end,
 * closed once (its items in one delivery), then nothing more to close. */
static void check_batch(void) {
    struct answer a = {0}, nc = {0}, d = {0}, c = {0}, c2 = {0}, g = {0};
    char name[] = "batched";
    struct store_batch_window w = {.endpoint = name, .window_start = 60000, .window_ms = 60000};

    CHECK_INT_EQ(one_group_put("evt_batch_1", "batch-1", 0, 1, &a), 0);
    CHECK(a.counts[0] >= 1);
    CHECK_INT_EQ(ops->batch_next_close(be, on_count, &nc), 0);
    CHECK(wait_flag(&nc.calls, 5000));
    CHECK_INT_EQ(nc.value, 120000);
    CHECK_INT_EQ(ops->batch_due(be, 120000, on_rows, &d), 0);
    CHECK(wait_flag(&d.calls, 5000));
    CHECK_INT_EQ(d.n, 1);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->batch_close(be, &w, "pending", 120000, on_count, &c), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(c.status, 0);
    CHECK_INT_EQ(c.value, a.counts[0]);
    memset(&g, 0, sizeof g);
    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->batch_close(be, &w, "pending", 120000, on_count, &c2), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(c2.value, 0);
    CHECK_INT_EQ(side_int("SELECT count(*) FROM deliveries WHERE batch = 1"), 1);
}

/* One write in its own group, answered with on_count; returns its status. */
#define ONE_WRITE(call, ans)                                                                       \
    do {                                                                                           \
        struct answer g_ = {0};                                                                    \
        memset(&(ans), 0, sizeof(ans));                                                            \
        CHECK_INT_EQ(ops->group_begin(be), 0);                                                     \
        CHECK_INT_EQ((call), 0);                                                                   \
        CHECK_INT_EQ(ops->group_end(be, on_done, &g_), 0);                                         \
        CHECK(wait_flag(&g_.calls, 10000));                                                        \
    } while (0)

/* Nonces, endpoint state, retry and skip, subscriptions. */
static void check_small_writes(void) {
    struct answer a, s = {0}, l = {0};
    struct store_sub sub = {.id = "sub_1",
                            .event = "shipment.*",
                            .pattern = "shipment.*",
                            .url = "http://127.0.0.1:9/a",
                            .secret = "whsec_x",
                            .created_at = 1};
    int64_t now = util_now_ms();

    ONE_WRITE(ops->nonce_put(be, "shiptify", "n1", "d1", now, 60000, on_done, &a), a);
    CHECK_INT_EQ(a.status, 0);
    ONE_WRITE(ops->nonce_put(be, "shiptify", "n1", "d1", now, 60000, on_done, &a), a);
    CHECK_INT_EQ(a.status, STORE_DUP);
    ONE_WRITE(ops->nonce_put(be, "shiptify", "n1", "d2", now, 60000, on_done, &a), a);
    CHECK_INT_EQ(a.status, STORE_REPLAY);
    ONE_WRITE(ops->endpoint_attempt(be, "ep1", 0, "boom", now, on_count, &a), a);
    CHECK_INT_EQ(a.status, 0);
    CHECK_INT_EQ(a.value, now);
    ONE_WRITE(ops->endpoint_set_disabled(be, "ep1", 1, "410", now, on_count, &a), a);
    CHECK_INT_EQ(a.status, 0);
    CHECK(a.value >= 1); /* ep1's pending rows held */
    ONE_WRITE(ops->endpoint_set_disabled(be, "ep1", 0, NULL, now, on_count, &a), a);
    CHECK(a.value >= 1);
    ONE_WRITE(ops->delivery_retry(be, "dlv_nobody", now, on_done, &a), a);
    CHECK_INT_EQ(a.status, 0);
    ONE_WRITE(ops->delivery_skip(be, "dlv_nobody", now, on_done, &a), a);
    CHECK_INT_EQ(a.status, 0);
    ONE_WRITE(ops->sub_put(be, &sub, on_done, &a), a);
    CHECK_INT_EQ(a.status, 0);
    ONE_WRITE(ops->sub_change(be, "sub_1", "http://127.0.0.1:9/b", on_done, &a), a);
    CHECK_INT_EQ(a.status, 1);
    ONE_WRITE(ops->sub_set_secret(be, "sub_1", "whsec_y", on_done, &a), a);
    CHECK_INT_EQ(a.status, 1);
    ONE_WRITE(ops->sub_change(be, "sub_nobody", NULL, on_done, &a), a);
    CHECK_INT_EQ(a.status, 0);
    CHECK_INT_EQ(ops->endpoint_states(be, on_states, &s), 0);
    CHECK(wait_flag(&s.calls, 5000));
    CHECK_INT_EQ(s.status, 0);
    CHECK(s.n >= 1);
    CHECK_INT_EQ(ops->subs_load(be, on_subs, &l), 0);
    CHECK(wait_flag(&l.calls, 5000));
    CHECK_INT_EQ(l.n, 1);
    CHECK_STR_EQ(l.err, "sub_1 http://127.0.0.1:9/b");
}

/* The admin reads and the loop's reads. */
static void check_reads(void) {
    struct store_page q = {.limit = 3};
    struct answer ep = {0}, dt = {0}, un = {0}, dp = {0}, ev = {0}, ev0 = {0}, fd = {0}, pn = {0},
                  bl = {0}, bk = {0}, cn = {0};

    CHECK_INT_EQ(ops->events_page(be, &q, on_rows, &ep), 0);
    CHECK_INT_EQ(ops->event_detail(be, "evt_dup_1", on_detail, &dt), 0);
    CHECK_INT_EQ(ops->event_detail(be, "evt_nobody", on_detail, &un), 0);
    CHECK_INT_EQ(ops->deliveries_page(be, &q, on_items, &dp), 0);
    CHECK_INT_EQ(ops->event_get(be, "evt_dup_1", on_unrouted, &ev), 0);
    CHECK_INT_EQ(ops->event_get(be, "evt_nobody", on_unrouted, &ev0), 0);
    CHECK_INT_EQ(ops->events_find(be, "dup", 10, on_names, &fd), 0);
    CHECK_INT_EQ(ops->endpoints_pending(be, on_names, &pn), 0);
    CHECK_INT_EQ(ops->backlog(be, on_count, &bl), 0);
    CHECK_INT_EQ(ops->endpoint_blocked(be, "ep0", 10, on_done, &bk), 0);
    CHECK_INT_EQ(ops->delivery_counts(be, on_counts, &cn), 0);
    CHECK(wait_flag(&cn.calls, 5000));
    CHECK_INT_EQ(ep.calls + dt.calls + un.calls + dp.calls + ev.calls + ev0.calls + fd.calls +
                     pn.calls + bl.calls + bk.calls,
                 10);
    CHECK_INT_EQ(ep.n, 3);
    CHECK_INT_EQ(dt.status, 1);
    CHECK(strncmp(dt.err, "evt_dup_1 routed", 16) == 0);
    CHECK_INT_EQ(un.status, 0);
    CHECK_INT_EQ(dp.n, 3);
    CHECK_INT_EQ(ev.status, 1);
    CHECK_INT_EQ(ev.n, 1);
    CHECK_INT_EQ(ev0.status, 0);
    CHECK_INT_EQ(ev0.n, 0);
    CHECK_STR_EQ(fd.err, "evt_dup_1");
    CHECK(strstr(pn.err, "ep0") != NULL);
    CHECK_INT_EQ(bl.value, cn.dc.pending + cn.dc.held);
    CHECK(bl.value > 0);
    CHECK_INT_EQ(bk.status, 0);
}

/* Retention: a pass over everything old deletes what is done, keeps the
 * rest; reclaim answers the pages it gave back. */
static void check_prune(void) {
    struct store_prune p = {.before_ms = INT64_MAX, .upto = INT64_MAX, .max = 1000};
    struct answer a = {0}, g = {0}, r;
    long long events = side_int("SELECT count(*) FROM events");

    CHECK_INT_EQ(ops->group_begin(be), 0);
    CHECK_INT_EQ(ops->prune(be, &p, on_done, &a), 0);
    CHECK_INT_EQ(ops->group_end(be, on_done, &g), 0);
    CHECK(wait_flag(&g.calls, 10000));
    CHECK_INT_EQ(a.status, 0);
    CHECK_INT_EQ(a.n, 1);
    CHECK(side_int("SELECT count(*) FROM events") <= events);
    ONE_WRITE(ops->reclaim(be, 0, 16, on_count, &r), r);
    CHECK_INT_EQ(r.status, 0);
    CHECK(r.value >= 0);
}

int main(void) {
    char err[256];

    snprintf(dir, sizeof dir, "/tmp/wb-sqlite-ops-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    snprintf(path, sizeof path, "%s/ops.db", dir);
    snprintf(url, sizeof url, "sqlite:%s", path);
    util_id_new("evt_", recv_id, sizeof recv_id);
    base = event_base_new();
    ops = &store_sqlite_backend;
    CHECK_INT_EQ(ops->open(&be, base, url, NULL, err, sizeof err), 0);
    if (!be) {
        fprintf(stderr, "open: %s\n", err);
        return harness_report() | 1;
    }
    CHECK_INT_EQ(sqlite3_open(path, &side), SQLITE_OK);
    sqlite3_busy_timeout(side, 2000);
    check_answers_from_the_loop();
    check_group(1, 1);
    check_group(6, 4);
    check_order();
    check_refused_group();
    check_dedupe();
    check_routed();
    check_claims();
    check_batch();
    check_small_writes();
    check_reads();
    check_prune();
    ops->close(be);
    sqlite3_close(side);
    event_base_free(base);
    unlink(path);
    rmdir(dir);
    return harness_report();
}
