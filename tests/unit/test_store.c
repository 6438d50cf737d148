/* test_store.c -- unit tests of the SQLite store. The SQLite engine
 * (core/store_sqlite*.c) through its own interface (store_sqlite_int.h),
 * the calls the SQLite backend (store_sqlite_be.c) makes: group commit,
 * dedupe, claims and leases, crash release, lock contention, the event
 * detail, query plans, migrations, retention. Through store.h, on stores
 * made by store_open: its URL errors and refusals, and the asynchronous
 * reads (store_read_*) with the writes they read (store_*_done).
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <sqlite3.h>

#include "fixture.h"
#include "harness.h"
#include "store.h"
#include "store_sqlite_int.h"
#include "util.h"

static struct event_base *base;
static char dir[64], dbpath[256];

/* ---- helpers ---- */

struct commit_rec {
    int called, ok, order;
};
static int commit_seq;

static void on_commit(void *arg, int ok) {
    struct commit_rec *r = arg;
    r->called++;
    r->ok = ok;
    r->order = ++commit_seq;
}

/* Runs the loop until r was called back (at most 100 turns; a turn waits
 * for the sync thread when a group is being made durable). */
static void run_until(struct commit_rec *r) {
    int i;
    for (i = 0; i < 100 && !r->called; i++)
        event_base_loop(base, EVLOOP_ONCE);
}

/* Registers r and runs the loop until the commit callback; returns ok. */
static int commit(struct store_sq *s) {
    struct commit_rec r = {0, 0, 0};
    if (store_sqlite_on_commit(s, on_commit, &r) < 0)
        return -1;
    run_until(&r);
    return r.called == 1 ? r.ok : -1;
}

static struct store_event mk_event(const char *id, const char *source_id) {
    struct store_event ev = {
        .id = id,
        .source = "atoship",
        .source_id = source_id,
        .type = "tracking.delivered",
        .created_at = "2026-11-23T16:03:38Z",
        .received_at = 1795017818123,
        .raw = "{\"a\":1}",
        .raw_len = 7,
        .headers_json = "{\"content-type\":\"application/json\"}",
        .data_json = "{\"tracking\":\"1Z999\",\"n\":3}",
    };
    return ev;
}

/* Routes stored event id again with status, error and n deliveries d: the
 * store_sqlite_event_routed call most tests make. */
static int routed(struct store_sq *s, const char *id, const char *status, const char *error,
                  const struct store_delivery_new *d, size_t n, char *err, size_t errlen) {
    struct store_plan plan = {.status = status, .error = error, .deliveries = d, .ndeliveries = n};
    return store_sqlite_event_routed(s, id, &plan, err, errlen);
}

/* Adds one batch item of event_id (stored) to endpoint's window, as a
 * routing of that event that batched one payload; *count as the store set. */
static int batch_item(struct store_sq *s, const char *endpoint, int64_t window_start,
                      int64_t window_ms, const char *event_id, const char *payload, size_t len,
                      int64_t *count, char *err, size_t errlen) {
    struct store_batch_item it = {.endpoint = endpoint,
                                  .window_start = window_start,
                                  .window_ms = window_ms,
                                  .payload = payload,
                                  .len = len};
    struct store_plan plan = {.status = "routed", .items = &it, .nitems = 1};
    int rc = store_sqlite_event_routed(s, event_id, &plan, err, errlen);
    *count = it.count;
    return rc;
}

/* count(*) of sql (one ? bound to arg, if any) on a fresh connection. */
static long long fresh_count(const char *sql, const char *arg) {
    return fixture_count(dbpath, sql, arg);
}

/* 1 when plan has a bare "SCAN table" step (a table scan, not an index walk). */
static int plan_has_table_scan(const char *plan) {
    const char *p = plan, *end;
    while ((p = strstr(p, "SCAN ")) != NULL) {
        end = strchr(p, ';');
        if (!end || !memmem(p, (size_t)(end - p), " USING ", 7))
            return 1;
        p = end;
    }
    return 0;
}

/* The EXPLAIN QUERY PLAN text of sql, details joined by "; ". */
static void query_plan(sqlite3 *db, const char *sql, char *out, size_t cap) {
    char q[1024];
    sqlite3_stmt *st = NULL;
    size_t len = 0;
    out[0] = '\0';
    snprintf(q, sizeof q, "EXPLAIN QUERY PLAN %s", sql);
    if (sqlite3_prepare_v2(db, q, -1, &st, NULL) != SQLITE_OK) {
        snprintf(out, cap, "prepare failed: %s", sqlite3_errmsg(db));
        return;
    }
    while (sqlite3_step(st) == SQLITE_ROW && len < cap)
        len += (size_t)snprintf(out + len, cap - len, "%s; ", sqlite3_column_text(st, 3));
    sqlite3_finalize(st);
}

/* Opens the SQLite engine itself on url (base_dir dir), as the SQLite
 * backend (core/store_sqlite_be.c) does: the calls below are what it runs
 * for each operation. */
static struct store_sq *open_engine(const char *url) {
    char err[256] = "";
    struct store_sq *s = store_sqlite_open(base, url, dir, err, sizeof err);
    if (!s)
        fprintf(stderr, "store_sqlite_open: %s\n", err);
    return s;
}

/* ---- tests ---- */

static void test_open_errors(void) {
    char err[256];
    struct store *s;
    s = store_open(base, "mysql://x", dir, err, sizeof err);
    CHECK(s == NULL);
    CHECK_STR_EQ(err, "store: unsupported url 'mysql://x' (use sqlite:PATH)");
    /* a PostgreSQL URL goes to store_pg (tests/integration/test_pg.py); an
     * unreachable one says so, without its password */
    s = store_open(base, "postgres://wb:s3cret@127.0.0.1:1/x", dir, err, sizeof err);
    CHECK(s == NULL);
    CHECK(strstr(err, "cannot connect to 'postgres://wb:***@127.0.0.1:1/x'") != NULL);
    CHECK(strstr(err, "s3cret") == NULL);
    s = store_open(base, "sqlite:", dir, err, sizeof err);
    CHECK(s == NULL);
    CHECK(strstr(err, "unsupported url") != NULL);
    s = store_open(base, "sqlite:x.db?sync=sometimes", dir, err, sizeof err);
    CHECK(s == NULL);
    CHECK(strstr(err, "sync=normal|full") != NULL);
}

static void test_put_commit_dup(struct store_sq *s) {
    char err[256] = "", dup[UTIL_ID_MAX] = "";
    struct store_event ev = mk_event("evt_A", "carrier-1");
    struct commit_rec r = {0, 0, 0};

    CHECK(store_sqlite_ping(s) == 1);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, dup, sizeof dup, err, sizeof err), 0);
    /* Duplicate while the first copy is only in the open group. */
    ev.id = "evt_B";
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, dup, sizeof dup, err, sizeof err), STORE_DUP);
    CHECK_STR_EQ(dup, "evt_A");
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &r), 0);
    CHECK_INT_EQ(r.called, 0); /* never from inside the call */
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events", NULL), 0); /* not committed */
    run_until(&r);
    CHECK_INT_EQ(r.called, 1);
    CHECK_INT_EQ(r.ok, 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_A"), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_B"), 0);

    /* Duplicate of a committed row. */
    dup[0] = '\0';
    ev.id = "evt_C";
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, dup, sizeof dup, err, sizeof err), STORE_DUP);
    CHECK_STR_EQ(dup, "evt_A");
    /* Same source_id from another source is not a duplicate. */
    ev.source = "aftership";
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, dup, sizeof dup, err, sizeof err), 0);
    /* The same waybill id again is an error, not a duplicate; the group survives. */
    ev.source_id = "carrier-2";
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, dup, sizeof dup, err, sizeof err), -1);
    CHECK(strstr(err, "evt_C") != NULL);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events", NULL), 2);
}

static void test_on_commit_order_and_empty(struct store_sq *s) {
    struct commit_rec a = {0, 0, 0}, b = {0, 0, 0}, c = {0, 0, 0};
    /* No open group: still called back, asynchronously, with ok=1. */
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &a), 0);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &b), 0);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &c), 0);
    CHECK_INT_EQ(a.called, 0);
    run_until(&c);
    CHECK(a.called == 1 && b.called == 1 && c.called == 1);
    CHECK(a.ok && b.ok && c.ok);
    CHECK(a.order < b.order && b.order < c.order);
}

/* A priority-1 event made active together with the group runs first. */
struct prio_rec {
    int user_order;
};
static void on_user_event(evutil_socket_t fd, short what, void *arg) {
    struct prio_rec *p = arg;
    UNUSED(fd);
    UNUSED(what);
    p->user_order = ++commit_seq;
}

static void test_priority(struct store_sq *s) {
    struct prio_rec p = {0};
    struct commit_rec r = {0, 0, 0};
    struct event *ev = event_new(base, -1, 0, on_user_event, &p);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &r), 0);
    event_active(ev, EV_TIMEOUT, 0); /* activated after the commit event */
    run_until(&r);
    CHECK(p.user_order > 0 && p.user_order < r.order);
    event_free(ev);
}

/* A callback that writes and registers the next callback (re-entrancy). */
struct chain {
    struct store_sq *s;
    struct commit_rec second;
    int first_ok, put_rc;
};
static void on_commit_chain(void *arg, int ok) {
    struct chain *c = arg;
    struct store_event ev = mk_event("evt_CHAIN", "chain-1");
    char err[256];
    c->first_ok = ok;
    c->put_rc = store_sqlite_event_put(c->s, &ev, NULL, NULL, 0, err, sizeof err);
    store_sqlite_on_commit(c->s, on_commit, &c->second);
}

static void test_reentrant(struct store_sq *s) {
    struct chain c = {s, {0, 0, 0}, -1, -1};
    int i;
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit_chain, &c), 0);
    for (i = 0; i < 100 && !c.second.called; i++)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(c.first_ok, 1);
    CHECK_INT_EQ(c.put_rc, 0);
    CHECK_INT_EQ(c.second.called, 1);
    CHECK_INT_EQ(c.second.ok, 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_CHAIN"), 1);
}

static void test_route_claim_attempt(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_R", "route-1");
    int64_t now = util_now_ms();
    struct store_delivery_new dn[2] = {
        {.endpoint = "erp",
         .event_type = "tracking.delivered",
         .payload = "{\"x\":1}",
         .payload_len = 7,
         .content_type = "application/json",
         .headers_json = "{\"X-A\":\"1\"}",
         .status = "pending",
         .next_at = now - 5},
        {.endpoint = "chat",
         .event_type = "tracking.delivered",
         .payload = "hi",
         .payload_len = 2,
         .content_type = "text/plain",
         .headers_json = NULL,
         .status = "held",
         .next_at = now - 10},
    };
    struct store_delivery *d = NULL;
    struct store_event_row *rows = NULL;
    struct store_counts cnt;
    struct store_attempt a = {.n = 1,
                              .at = now,
                              .status_code = 503,
                              .latency_ms = 42,
                              .error = "HTTP 503",
                              .response = "busy caf\xe9",
                              .response_len = 9};
    size_t n = 0, i;
    char dlv_id[UTIL_ID_MAX], when[32];
    struct store_event_detail *det = NULL;
    const struct store_event_row *e;
    const struct store_event_delivery *dl;
    const struct store_attempt_row *att;
    json_t *j;

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);

    /* Committed but not routed: found by store_sqlite_events_unrouted. */
    CHECK_INT_EQ(store_sqlite_events_unrouted(s, 0, 100, &rows, &n, err, sizeof err), 0);
    for (i = 0; i < n && strcmp(rows[i].id, "evt_R") != 0; i++)
        ;
    CHECK(i < n);
    if (i < n) {
        CHECK_STR_EQ(rows[i].source_id, "route-1");
        CHECK_INT_EQ(rows[i].raw_len, 7);
        CHECK(memcmp(rows[i].raw, "{\"a\":1}", 8) == 0); /* NUL-terminated too */
        CHECK_INT_EQ(rows[i].received_at, 1795017818123);
        CHECK(rows[i].error == NULL);
    }
    store_event_rows_free(rows, n);

    CHECK_INT_EQ(routed(s, "evt_R", "routed", NULL, dn, 2, err, sizeof err), 0);
    CHECK_INT_EQ(routed(s, "evt_NOPE", "routed", NULL, dn, 0, err, sizeof err), -1);
    CHECK(strstr(err, "unknown event") != NULL);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_events_unrouted(s, 0, 100, &rows, &n, err, sizeof err), 0);
    for (i = 0; i < n; i++)
        CHECK(strcmp(rows[i].id, "evt_R") != 0);
    store_event_rows_free(rows, n);

    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &cnt), 0);
    CHECK_INT_EQ(cnt.pending, 1);
    CHECK_INT_EQ(cnt.held, 1);
    CHECK_INT_EQ(store_sqlite_endpoint_next_due(s, "erp"), now - 5);

    /* Claim: the pending one only, leased. */
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "erp", now, 30000, 10, &d, &n, err, sizeof err),
                 0);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        CHECK(strncmp(d[0].id, "dlv_", 4) == 0);
        CHECK_STR_EQ(d[0].event_id, "evt_R");
        CHECK_STR_EQ(d[0].endpoint, "erp");
        CHECK_STR_EQ(d[0].content_type, "application/json");
        CHECK_STR_EQ(d[0].headers_json, "{\"X-A\":\"1\"}");
        CHECK_INT_EQ(d[0].payload_len, 7);
        CHECK_STR_EQ(d[0].payload, "{\"x\":1}");
        CHECK_INT_EQ(d[0].attempts, 0);
        CHECK_INT_EQ(d[0].schedule_pos, 0);
        CHECK_INT_EQ(d[0].next_at, now - 5);
        snprintf(dlv_id, sizeof dlv_id, "%s", d[0].id);
    } else {
        dlv_id[0] = '\0';
    }
    store_deliveries_free(d, n);
    /* Leased: not claimable again, even much later within the lease. */
    CHECK_INT_EQ(
        store_sqlite_endpoint_claim_due(s, "erp", now + 1000, 30000, 10, &d, &n, err, sizeof err),
        0);
    CHECK_INT_EQ(n, 0);
    store_deliveries_free(d, n);
    CHECK_INT_EQ(store_sqlite_endpoint_next_due(s, "erp"), now + 30000);
    CHECK_INT_EQ(commit(s), 1);

    /* Outcome: retry in a minute. */
    CHECK_INT_EQ(
        store_sqlite_attempt_put(s, dlv_id, &a, "pending", now + 60000, 1, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_attempt_put(s, "dlv_NOPE", &a, "pending", now, 1, err, sizeof err),
                 -1);
    CHECK(strstr(err, "unknown delivery") != NULL);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(
        store_sqlite_endpoint_claim_due(s, "erp", now + 40000, 30000, 10, &d, &n, err, sizeof err),
        0);
    CHECK_INT_EQ(n, 0);
    store_deliveries_free(d, n);
    CHECK_INT_EQ(store_sqlite_endpoint_next_due(s, "erp"), now + 60000);
    CHECK_INT_EQ(fresh_count("SELECT lease_until FROM deliveries WHERE id = ?", dlv_id), 0);

    /* Due again: claimed with attempts and schedule_pos; then delivered. */
    CHECK_INT_EQ(
        store_sqlite_endpoint_claim_due(s, "erp", now + 60000, 30000, 10, &d, &n, err, sizeof err),
        0);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        CHECK_INT_EQ(d[0].attempts, 1);
        CHECK_INT_EQ(d[0].schedule_pos, 1);
    }
    store_deliveries_free(d, n);
    a.n = 2;
    a.at = now + 60000;
    a.status_code = 200;
    a.latency_ms = 7;
    a.error = NULL;
    a.response = "ok";
    a.response_len = 2;
    CHECK_INT_EQ(store_sqlite_attempt_put(s, dlv_id, &a, "delivered", 0, 2, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_endpoint_next_due(s, "erp"), INT64_MAX);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &cnt), 0);
    CHECK_INT_EQ(cnt.pending, 0);
    CHECK_INT_EQ(cnt.delivered, 1);
    CHECK_INT_EQ(cnt.held, 1);
    CHECK_INT_EQ(cnt.failed, 0);

    /* The event detail (rows the admin API renders as JSON). */
    CHECK_INT_EQ(store_sqlite_event_detail(s, "evt_UNKNOWN", &det, err, sizeof err), 0);
    CHECK(det == NULL);
    CHECK_INT_EQ(store_sqlite_event_detail(s, "evt_R", &det, err, sizeof err), 1);
    CHECK(det != NULL);
    if (!det)
        return;
    e = det->ev;
    CHECK_STR_EQ(e->id, "evt_R");
    CHECK_STR_EQ(e->source, "atoship");
    CHECK_STR_EQ(e->source_id, "route-1");
    CHECK_STR_EQ(e->type, "tracking.delivered");
    CHECK_STR_EQ(e->status, "routed");
    util_time_rfc3339(e->received_at, when, sizeof when);
    CHECK_STR_EQ(when, "2026-11-18T16:03:38.123Z");
    CHECK_STR_EQ(e->created_at, "2026-11-23T16:03:38Z");
    CHECK(e->error == NULL);
    j = e->data_json ? json_loads(e->data_json, JSON_DECODE_ANY, NULL) : NULL;
    CHECK(json_is_object(j));
    CHECK_STR_EQ(json_string_value(json_object_get(j, "tracking")), "1Z999");
    json_decref(j);
    CHECK(det->ndeliveries == 2 && det->nwaiting == 0);
    if (det->ndeliveries != 2) {
        store_event_detail_free(det);
        return;
    }
    dl = det->deliveries;
    CHECK_STR_EQ(dl[0].id, dlv_id);
    CHECK_STR_EQ(dl[0].endpoint, "erp");
    CHECK_STR_EQ(dl[0].status, "delivered");
    CHECK_INT_EQ(dl[0].batch, 0);
    CHECK_STR_EQ(dl[1].endpoint, "chat");
    CHECK_STR_EQ(dl[1].status, "held");
    CHECK_INT_EQ(dl[1].nattempts, 0);
    att = dl[0].attempts;
    CHECK(att != NULL && dl[0].nattempts == 2);
    if (dl[0].nattempts != 2) {
        store_event_detail_free(det);
        return;
    }
    CHECK_INT_EQ(att[0].n, 1);
    CHECK_INT_EQ(att[0].status_code, 503);
    CHECK_INT_EQ(att[0].latency_ms, 42);
    CHECK_STR_EQ(att[0].error, "HTTP 503");
    /* The response as received (a Latin-1 byte included): admin.c makes it
     * valid UTF-8 when it renders the detail (test_admin_json.py). */
    CHECK_INT_EQ(att[0].response_len, 9);
    CHECK(att[0].response && memcmp(att[0].response, "busy caf\xe9", 10) == 0);
    CHECK_INT_EQ(att[0].at, now);
    CHECK_INT_EQ(att[1].n, 2);
    CHECK_INT_EQ(att[1].status_code, 200);
    CHECK(att[1].error == NULL);
    CHECK_STR_EQ(att[1].response, "ok");
    /* what the detail adds: the payload and its type, per delivery */
    CHECK_STR_EQ(dl[0].payload, "{\"x\":1}");
    CHECK_STR_EQ(dl[0].content_type, "application/json");
    CHECK_STR_EQ(dl[1].payload, "hi");
    CHECK_INT_EQ(dl[1].payload_len, 2);
    CHECK(e->raw && memcmp(e->raw, "{\"a\":1}", 8) == 0);
    CHECK_STR_EQ(e->headers_json, "{\"content-type\":\"application/json\"}");
    store_event_detail_free(det);
}

/* A write error inside a group fails the whole group: earlier writes of it
 * are rolled back and every callback gets ok=0. */
static void test_group_failure(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_F1", "fail-1");
    struct store_delivery_new bad = {
        .endpoint = NULL, .payload = "x", .payload_len = 1, .status = "pending", .next_at = 0};
    struct commit_rec r = {0, 0, 0};

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &r), 0);
    CHECK_INT_EQ(routed(s, "evt_F1", "routed", NULL, &bad, 1, err, sizeof err), -1);
    ev = mk_event("evt_F2", "fail-2");
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err),
                 -1); /* fails fast */
    CHECK(strstr(err, "commit group failed") != NULL);
    run_until(&r);
    CHECK_INT_EQ(r.called, 1);
    CHECK_INT_EQ(r.ok, 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_F1"), 0);
    /* The next group is fine. */
    ev = mk_event("evt_F3", "fail-3");
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_F3"), 1);
}

/* Another process holds the write lock: the write fails within the busy
 * timeout, the group reports ok=0, nothing is stored; then it recovers. */
static void test_locked(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_L", "lock-1");
    struct commit_rec r = {0, 0, 0};
    sqlite3 *other = NULL;
    int64_t t0;

    CHECK_INT_EQ(sqlite3_open(dbpath, &other), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    t0 = util_mono_ms();
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), -1);
    CHECK(util_mono_ms() - t0 < 1000);
    CHECK(strstr(err, "locked") != NULL || strstr(err, "busy") != NULL);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &r), 0);
    run_until(&r);
    CHECK_INT_EQ(r.called, 1);
    CHECK_INT_EQ(r.ok, 0);
    CHECK_INT_EQ(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_L"), 0);

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_L"), 1);
}

/* Leases of a run that died are released when the store opens again. */
static struct store_sq *test_crash_release(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_K", "crash-1");
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "t",
                                    .payload = "p",
                                    .payload_len = 1,
                                    .content_type = "text/plain",
                                    .status = "pending",
                                    .next_at = 1000};
    struct store_delivery *d = NULL;
    size_t n = 0;
    int64_t before;

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(routed(s, "evt_K", "routed", NULL, &dn, 1, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_flush(s), 0);
    CHECK_INT_EQ(
        store_sqlite_endpoint_claim_due(s, "erp", 2000, 3600000, 10, &d, &n, err, sizeof err), 0);
    CHECK_INT_EQ(n, 1);
    store_deliveries_free(d, n);
    CHECK_INT_EQ(
        store_sqlite_endpoint_claim_due(s, "erp", 2000, 3600000, 10, &d, &n, err, sizeof err), 0);
    CHECK_INT_EQ(n, 0);
    store_deliveries_free(d, n);
    /* "Crash": the lease is committed and no outcome is ever stored. */
    store_sqlite_free(s);

    before = util_now_ms();
    s = open_engine("sqlite:store.db");
    CHECK(s != NULL);
    if (!s)
        return NULL;
    CHECK(store_sqlite_endpoint_next_due(s, "erp") >= before);
    CHECK(store_sqlite_endpoint_next_due(s, "erp") <= util_now_ms());
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "erp", util_now_ms(), 30000, 10, &d, &n, err,
                                                 sizeof err),
                 0);
    CHECK_INT_EQ(n, 1);
    if (n == 1)
        CHECK_STR_EQ(d[0].event_id, "evt_K");
    store_deliveries_free(d, n);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE lease_until > 0", NULL), 0);
    CHECK_INT_EQ(store_sqlite_flush(s), 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE lease_until > 0", NULL), 1);
    return s;
}

/* Hot queries are index lookups, never table scans (next_due may walk its
 * index: LIMIT 1 stops at the first entry). The SQL mirrors core/store_*.c. */
static void test_query_plans(void) {
    static const char *const sqls[] = {
        /* the scheduler's claims per endpoint (deliver.c) */
        ("SELECT seq, id, event_id, endpoint, event_type, content_type, headers, payload, attempts,"
         " schedule_pos, next_at, created_at FROM deliveries INDEXED BY deliveries_ep_due"
         " WHERE endpoint = ?4 AND status = 'pending' AND next_at <= ?1 AND seq <= ?3"
         " ORDER BY next_at LIMIT ?2"),
        ("SELECT next_at FROM deliveries INDEXED BY deliveries_ep_due"
         " WHERE endpoint = ?1 AND status = 'pending' AND seq <= ?2 ORDER BY next_at LIMIT 1"),
        ("SELECT count(*), min(next_at) FROM deliveries INDEXED BY deliveries_ep_due"
         " WHERE endpoint = ?1 AND status = 'pending' AND next_at <= ?2"),
        "UPDATE deliveries SET next_at = ?2, lease_until = ?2 WHERE seq = ?1",
        ("UPDATE deliveries SET next_at = ?2, lease_until = 0"
         " WHERE seq = ?1 AND status = 'pending' AND lease_until > 0"),
        "UPDATE deliveries SET lease_until = 0, next_at = ?1 WHERE lease_until > 0",
        ("SELECT seq, id FROM events INDEXED BY events_received"
         " WHERE status = 'received' AND seq > ?1 ORDER BY seq LIMIT ?2"),
        "SELECT id FROM events WHERE source = ?1 AND source_id = ?2",
        "SELECT id, endpoint, status, batch FROM deliveries WHERE event_id = ?1 ORDER BY seq",
        "SELECT n FROM attempts WHERE delivery_id = ?1 ORDER BY n",
        /* endpoint state (deliver.c): ordered head and window, hold/release */
        ("SELECT seq, next_at FROM deliveries INDEXED BY deliveries_ep_pending"
         " WHERE endpoint = ?1 AND status = 'pending' ORDER BY seq LIMIT 1"),
        ("SELECT seq, id FROM deliveries INDEXED BY deliveries_ep_pending"
         " WHERE endpoint = ?1 AND status = 'pending' AND seq > ?2 AND seq <= ?3"
         " AND (next_at <= ?4 OR lease_until > 0) ORDER BY seq LIMIT ?5"),
        "UPDATE deliveries SET status = 'held' WHERE endpoint = ?1 AND status = 'pending'",
        ("UPDATE deliveries SET status = 'pending', next_at = ?2, lease_until = 0"
         " WHERE endpoint = ?1 AND status = 'held'"),
        "SELECT first_failure_at FROM endpoint_state WHERE name = ?1",
        /* ordered by key (issue 20): the busy probe at insert, the next row
         * of a key made due, the blocked heads, the rows behind one */
        ("SELECT 1 FROM deliveries INDEXED BY deliveries_ep_key"
         " WHERE endpoint = ?1 AND okey = ?2 AND okey IS NOT NULL"
         " AND status IN ('pending', 'held', 'failed') LIMIT 1"),
        ("UPDATE deliveries SET next_at = ?3 WHERE seq ="
         " (SELECT seq FROM deliveries INDEXED BY deliveries_ep_key"
         "  WHERE endpoint = ?1 AND okey = ?2 AND okey IS NOT NULL"
         "  AND status IN ('pending', 'held', 'failed') ORDER BY seq LIMIT 1) AND next_at >= ?4"),
        ("SELECT d.okey, d.id FROM deliveries d INDEXED BY deliveries_ep_blocked"
         " WHERE d.endpoint = ?1 AND d.okey IS NOT NULL AND d.status = 'failed'"
         " ORDER BY d.seq LIMIT ?2"),
        ("SELECT count(*) FROM deliveries p INDEXED BY deliveries_ep_key"
         " WHERE p.endpoint = ?1 AND p.okey = ?2 AND p.okey IS NOT NULL"
         " AND p.status IN ('pending', 'held', 'failed')"),
        /* retention (store_sqlite_retain.c): the walk, and a batch with its last item */
        ("SELECT seq, id, received_at, status,"
         " EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id"
         "  AND d.status IN ('pending', 'held', 'failed')),"
         " EXISTS (SELECT 1 FROM batch_items b WHERE b.event_id = e.id"
         "  AND (b.delivery_id IS NULL OR EXISTS (SELECT 1 FROM deliveries d"
         "  WHERE d.id = b.delivery_id AND d.status <> 'delivered')))"
         " FROM events e WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"),
    };
    /* retention's deletes, a chunk of events at a time: the chunk's ids
     * come from json_each (a virtual table scan of the chunk, nothing
     * else) */
    static const char *const chunk_sqls[] = {
        ("DELETE FROM deliveries WHERE id IN (SELECT b.delivery_id FROM batch_items b"
         " WHERE b.event_id IN (SELECT value FROM json_each(?1)) AND b.delivery_id IS NOT NULL"
         " AND NOT EXISTS (SELECT 1 FROM batch_items o WHERE o.delivery_id = b.delivery_id"
         " AND o.event_id NOT IN (SELECT value FROM json_each(?1))))"),
        ("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id IN"
         " (SELECT value FROM json_each(?1)))"),
        "DELETE FROM deliveries WHERE event_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM batch_items WHERE event_id IN (SELECT value FROM json_each(?1))",
        "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?1))",
    };
    sqlite3 *db = NULL;
    char plan[1024];
    size_t i;
    CHECK_INT_EQ(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    for (i = 0; i < sizeof sqls / sizeof sqls[0]; i++) {
        query_plan(db, sqls[i], plan, sizeof plan);
        CHECK(strstr(plan, "USING INDEX") != NULL || strstr(plan, "USING COVERING INDEX") != NULL ||
              strstr(plan, "USING PRIMARY KEY") != NULL ||
              strstr(plan, "USING INTEGER PRIMARY KEY") != NULL);
        CHECK(!plan_has_table_scan(plan));
        CHECK(strstr(plan, "TEMP B-TREE") == NULL);
        if (getenv("TEST_STORE_VERBOSE"))
            fprintf(stderr, "plan %zu: %s\n", i, plan);
    }
    for (i = 0; i < sizeof chunk_sqls / sizeof chunk_sqls[0]; i++) {
        char *p;
        query_plan(db, chunk_sqls[i], plan, sizeof plan);
        /* take the json_each scans out; what is left must be index searches */
        while ((p = strstr(plan, "SCAN json_each VIRTUAL TABLE")) != NULL)
            memcpy(p, "SKIP", 4);
        CHECK(strstr(plan, "USING INDEX") != NULL || strstr(plan, "USING COVERING INDEX") != NULL ||
              strstr(plan, "USING PRIMARY KEY") != NULL);
        CHECK(!plan_has_table_scan(plan));
        if (getenv("TEST_STORE_VERBOSE"))
            fprintf(stderr, "chunk plan %zu: %s\n", i, plan);
    }
    sqlite3_close(db);
}

/* A delivery is claimable only once the group that inserted it committed:
 * nothing is sent from a row a crash could still roll back. */
static void test_claim_waits_for_commit(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_commit_wait", "commit-1");
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "tracking.delivered",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .content_type = "application/json",
                                    .status = "pending",
                                    .next_at = util_now_ms() - 1};
    struct store_delivery *d = NULL;
    size_t n = 9;

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(routed(s, "evt_commit_wait", "routed", NULL, &dn, 1, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "erp", util_now_ms(), 60000, 10, &d, &n, err,
                                                 sizeof err),
                 0);
    CHECK_INT_EQ(n, 0); /* still in the open group */
    store_deliveries_free(d, n);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "erp", util_now_ms(), 60000, 10, &d, &n, err,
                                                 sizeof err),
                 0);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        struct store_attempt a = {.n = 1, .at = util_now_ms(), .status_code = 200};
        CHECK_STR_EQ(d[0].event_id, "evt_commit_wait");
        /* delivered: leaves no lease for the crash test that follows */
        CHECK_INT_EQ(store_sqlite_attempt_put(s, d[0].id, &a, "delivered", 0, 0, err, sizeof err),
                     0);
    }
    store_deliveries_free(d, n);
    CHECK_INT_EQ(commit(s), 1);
}

/* Endpoint state: counting attempts, disabling holds pending deliveries
 * (and only that endpoint's), enabling releases them due now, the ordered
 * head and window, and retention keeping dead letters. */
static void test_endpoint_state(struct store_sq *s) {
    char err[256] = "", id[32], sid[32];
    int64_t now = util_now_ms(), first = -1, moved = -1;
    struct store_endpoint_state *st = NULL;
    struct store_delivery *d = NULL;
    struct store_prune pr;
    size_t n = 0, i;

    for (i = 0; i < 4; i++) {
        struct store_delivery_new dn = {.endpoint = i < 3 ? "ord" : "other",
                                        .event_type = "t",
                                        .payload = "{}",
                                        .payload_len = 2,
                                        .status = "pending",
                                        .next_at = now + (i == 0 ? 60000 : 0)};
        struct store_event ev;
        snprintf(id, sizeof id, "evt_EP%zu", i);
        snprintf(sid, sizeof sid, "ep-%zu", i);
        ev = mk_event(id, sid);
        CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
        CHECK_INT_EQ(routed(s, id, "routed", NULL, &dn, 1, err, sizeof err), 0);
    }
    CHECK_INT_EQ(commit(s), 1);

    /* the head is the oldest pending row even when it is not due */
    CHECK(store_sqlite_endpoint_head(s, "ord", NULL) != INT64_MAX);
    CHECK_INT_EQ(store_sqlite_endpoint_head(s, "nobody", NULL), INT64_MAX);
    CHECK_INT_EQ(store_sqlite_endpoint_claim(s, "ord", 0, now, 1000, 10, &d, &n, err, sizeof err),
                 0);
    CHECK_INT_EQ(n, 2); /* the first one waits for its retry: not claimed */
    CHECK(n == 2 && d[0].seq < d[1].seq && d[0].seq > store_sqlite_endpoint_head(s, "ord", NULL));
    store_deliveries_free(d, n);
    /* leased rows not held in memory are claimed again, in order */
    CHECK_INT_EQ(store_sqlite_endpoint_claim(s, "ord", 0, now, 1000, 1, &d, &n, err, sizeof err),
                 0);
    CHECK_INT_EQ(n, 1);
    store_deliveries_free(d, n);

    CHECK_INT_EQ(
        store_sqlite_endpoint_attempt(s, "ord", 0, "HTTP 500", now - 5000, &first, err, sizeof err),
        0);
    CHECK_INT_EQ(first, now - 5000);
    CHECK_INT_EQ(
        store_sqlite_endpoint_attempt(s, "ord", 0, "HTTP 502", now, &first, err, sizeof err), 0);
    CHECK_INT_EQ(first, now - 5000); /* the run of failures started at the first */
    CHECK_INT_EQ(store_sqlite_endpoint_set_disabled(s, "ord", 1, "answered 410 Gone", now, &moved,
                                                    err, sizeof err),
                 0);
    CHECK_INT_EQ(moved, 3);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM deliveries WHERE endpoint = ? AND status = 'held'",
                    "ord"),
        3);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE endpoint = ?"
                             " AND status = 'pending'",
                             "other"),
                 1);
    CHECK_INT_EQ(store_sqlite_endpoint_head(s, "ord", NULL), INT64_MAX);
    CHECK_INT_EQ(store_sqlite_endpoint_states(s, &st, &n, err, sizeof err), 0);
    for (i = 0; i < n && strcmp(st[i].name, "ord"); i++)
        ;
    CHECK(i < n);
    if (i < n) {
        CHECK_INT_EQ(st[i].disabled, 1);
        CHECK_STR_EQ(st[i].reason, "answered 410 Gone");
        CHECK_STR_EQ(st[i].last_error, "HTTP 502");
        CHECK_INT_EQ(st[i].failed, 2);
        CHECK_INT_EQ(st[i].held, 3);
    }
    store_endpoint_states_free(st, n);

    CHECK_INT_EQ(
        store_sqlite_endpoint_set_disabled(s, "ord", 0, NULL, now, &moved, err, sizeof err), 0);
    CHECK_INT_EQ(moved, 3);
    CHECK_INT_EQ(store_sqlite_endpoint_attempt(s, "ord", 1, NULL, now, &first, err, sizeof err), 0);
    CHECK_INT_EQ(first, 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM deliveries WHERE endpoint = ? AND status = 'pending'"
                    " AND lease_until = 0",
                    "ord"),
        3);

    /* retention: nothing is delivered yet, so nothing goes */
    pr = (struct store_prune){
        .before_ms = now + 1,
        .upto = INT64_MAX,
        .max = 100,
        .cursor = fresh_count("SELECT seq - 1 FROM events WHERE id = ?", "evt_EP0")};
    CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
    CHECK_INT_EQ(pr.pruned, 0);
    CHECK_INT_EQ(pr.kept, 4);
    CHECK(pr.done);
}

/* Nonces: new, the same again (a retry), another body (a replay); durable
 * once committed, per source. */
static void test_nonces(struct store_sq *s) {
    char err[256];
    const int64_t day = 86400000, t0 = 1700000000000LL;
    CHECK_INT_EQ(store_sqlite_nonce_put(s, "shiptify", "tok1", "d1", t0, day, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_nonce_put(s, "shiptify", "tok1", "d1", t0 + 1, day, err, sizeof err),
                 STORE_DUP);
    CHECK_INT_EQ(store_sqlite_nonce_put(s, "shiptify", "tok1", "d2", t0 + 2, day, err, sizeof err),
                 STORE_REPLAY);
    CHECK_INT_EQ(store_sqlite_nonce_put(s, "other", "tok1", "d2", t0 + 3, day, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM nonces WHERE nonce = ?", "tok1"), 2);
    CHECK_INT_EQ(store_sqlite_nonce_put(s, "shiptify", "tok1", "d3", t0 + 4, day, err, sizeof err),
                 STORE_REPLAY);
    CHECK_INT_EQ(commit(s), 1);
    /* two days on, the first source's old nonces are pruned (not the other's) */
    CHECK_INT_EQ(
        store_sqlite_nonce_put(s, "shiptify", "tok2", "d1", t0 + 2 * day, day, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM nonces WHERE nonce = ?", "tok1"), 1);
}

/* Batch windows: items are counted per window, closing makes one delivery
 * holding them in order and marks them sent, an empty window writes
 * nothing, and the event shows the batch delivery. */
static void test_batch_windows(struct store_sq *s) {
    struct store_event ev = mk_event("evt_BATCH1", "src-batch-1");
    struct store_batch_window *w = NULL;
    struct store_delivery *d = NULL;
    size_t n = 0, count = 99, nd = 0;
    int64_t c = 0, W = 60000, start = 1795017780000; /* a multiple of W */
    char err[256];
    struct store_event_detail *det = NULL;

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(routed(s, "evt_BATCH1", "routed", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(batch_item(s, "wms", start, W, "evt_BATCH1", "{\"n\":1}", 7, &c, err, sizeof err),
                 0);
    CHECK_INT_EQ(c, 1);
    CHECK_INT_EQ(batch_item(s, "wms", start, W, "evt_BATCH1", "{\"n\":2}", 7, &c, err, sizeof err),
                 0);
    CHECK_INT_EQ(c, 2);
    /* another window of the same endpoint, and another endpoint */
    CHECK_INT_EQ(batch_item(s, "wms", start + W, W, "evt_BATCH1", "3", 1, &c, err, sizeof err), 0);
    CHECK_INT_EQ(c, 1);
    CHECK_INT_EQ(batch_item(s, "bi", start, W, "evt_BATCH1", "4", 1, &c, err, sizeof err), 0);
    CHECK_INT_EQ(c, 1);
    CHECK_INT_EQ(commit(s), 1);
    CHECK(store_sqlite_batch_next_close(s) == start + W);

    CHECK_INT_EQ(store_sqlite_batch_due(s, start + W - 1, &w, &n, err, sizeof err), 0);
    CHECK_INT_EQ((int)n, 0);
    store_batch_windows_free(w, n);
    CHECK_INT_EQ(store_sqlite_batch_due(s, start + W, &w, &n, err, sizeof err), 0);
    CHECK_INT_EQ((int)n, 2); /* wms and bi at start; wms at start+W is still open */
    for (size_t i = 0; i < n; i++)
        if (strcmp(w[i].endpoint, "wms") == 0) {
            CHECK(w[i].window_start == start && w[i].window_ms == W);
            CHECK_INT_EQ(store_sqlite_batch_close(s, &w[i], "pending", 0, &count, err, sizeof err),
                         0);
            CHECK_INT_EQ((int)count, 2);
            /* closing again finds nothing: never sent in two batches */
            CHECK_INT_EQ(store_sqlite_batch_close(s, &w[i], "pending", 0, &count, err, sizeof err),
                         0);
            CHECK_INT_EQ((int)count, 0);
        }
    store_batch_windows_free(w, n);
    CHECK_INT_EQ(commit(s), 1);
    CHECK(store_sqlite_batch_next_close(s) == start + W); /* bi's window is still open */

    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "wms", util_now_ms(), 30000, 100, &d, &nd, err,
                                                 sizeof err),
                 0);
    {
        struct store_delivery *b = NULL;
        for (size_t i = 0; i < nd; i++)
            if (d[i].event_type && strcmp(d[i].event_type, "batch") == 0) {
                CHECK(b == NULL);
                b = &d[i];
            }
        CHECK(b != NULL);
        if (b) {
            /* its id is derived from the window and its last item, so a close
             * a power cut took back is sent again under the same id */
            char key[256], want[UTIL_ID_MAX];
            long long last = fresh_count("SELECT max(seq) FROM batch_items WHERE endpoint = ?"
                                         " AND delivery_id IS NOT NULL",
                                         "wms");
            snprintf(key, sizeof key, "batch\nwms\n%lld\n%lld\n%lld", (long long)W,
                     (long long)start, last);
            util_id_derive_at("dlv_", start, key, 0, want, sizeof want);
            CHECK_STR_EQ(b->id, want);
            CHECK_STR_EQ(b->endpoint, "wms");
            CHECK_STR_EQ(b->payload,
                         "{\"type\":\"batch\",\"window_start\":\"2026-11-18T16:03:00Z\","
                         "\"window_end\":\"2026-11-18T16:04:00Z\",\"count\":2,"
                         "\"events\":[{\"n\":1},{\"n\":2}]}");
        }
    }
    store_deliveries_free(d, nd);
    CHECK_INT_EQ(store_sqlite_event_detail(s, "evt_BATCH1", &det, err, sizeof err), 1);
    CHECK(det != NULL);
    if (det) {
        /* the sent batch, then the two windows still open (wms next, bi) */
        CHECK_INT_EQ((int)(det->ndeliveries + det->nwaiting), 3);
        CHECK_INT_EQ((int)det->ndeliveries, 1);
        if (det->ndeliveries == 1) {
            CHECK_INT_EQ(det->deliveries[0].batch, 1);
            CHECK_STR_EQ(det->deliveries[0].endpoint, "wms");
            CHECK(det->deliveries[0].id != NULL);
        }
        CHECK(det->nwaiting >= 1 && det->waiting[0].endpoint != NULL);
        if (det->nwaiting >= 1) {
            /* a window still open: no delivery (id) yet; it ends at its close */
            CHECK_STR_EQ(det->waiting[0].endpoint, "wms");
            CHECK(det->waiting[0].window_end == start + 2 * W);
        }
        store_event_detail_free(det);
    }
    CHECK_INT_EQ((int)fresh_count("SELECT count(*) FROM batch_items WHERE delivery_id IS NULL"
                                  " AND endpoint = ?",
                                  "wms"),
                 1);
}

/* Recovery never sees the open group's own events (their ingest routes
 * them after the commit), so an event is not routed twice. */
static void test_unrouted_skips_open_group(struct store_sq *s) {
    struct store_event ev = mk_event("evt_OPENGRP", "src-open-group");
    struct store_event_row *rows = NULL;
    size_t n = 0, found = 0;
    char err[256];

    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_events_unrouted(s, 0, 1000, &rows, &n, err, sizeof err), 0);
    for (size_t i = 0; i < n; i++)
        found += strcmp(rows[i].id, "evt_OPENGRP") == 0;
    CHECK_INT_EQ((int)found, 0);
    store_event_rows_free(rows, n);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_events_unrouted(s, 0, 1000, &rows, &n, err, sizeof err), 0);
    found = 0;
    for (size_t i = 0; i < n; i++)
        found += strcmp(rows[i].id, "evt_OPENGRP") == 0;
    CHECK_INT_EQ((int)found, 1);
    store_event_rows_free(rows, n);
    CHECK_INT_EQ(routed(s, "evt_OPENGRP", "unrouted", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
}

/* A committed group is not durable until its sync is done: its delivery is
 * claimable, and its event visible to recovery, only then. The probe runs
 * right after the commit event, in the same pass over the lowest priority
 * (activated after it), so before the loop can hear the sync thread. */
struct durable_probe {
    struct store_sq *s;
    struct commit_rec *durable;
    int ran, committed, syncing, durable_called;
    size_t claimable, unrouted_seen;
};

static void durable_probe_read(struct durable_probe *p) {
    struct store_delivery *d = NULL;
    struct store_event_row *rows = NULL;
    size_t n = 0, i;
    char err[256];
    if (store_sqlite_endpoint_claim_due(p->s, "erp", util_now_ms(), 60000, 10, &d, &n, err,
                                        sizeof err) == 0) {
        for (i = 0; i < n; i++) {
            struct store_attempt a = {.n = 1, .at = util_now_ms(), .status_code = 200};
            p->claimable += strcmp(d[i].event_id, "evt_WRITTEN") == 0;
            store_sqlite_attempt_put(p->s, d[i].id, &a, "delivered", 0, 0, err, sizeof err);
        }
        store_deliveries_free(d, n);
    }
    n = 0;
    if (store_sqlite_events_unrouted(p->s, 0, 1000, &rows, &n, err, sizeof err) == 0) {
        for (i = 0; i < n; i++)
            p->unrouted_seen += strcmp(rows[i].id, "evt_WRITTEN2") == 0;
        store_event_rows_free(rows, n);
    }
}

static void on_durable_probe(evutil_socket_t fd, short what, void *arg) {
    struct durable_probe *p = arg;
    UNUSED(fd);
    UNUSED(what);
    p->ran++;
    p->committed = fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_WRITTEN2") == 1;
    p->syncing = p->s->sync_busy;
    p->durable_called = p->durable->called;
    durable_probe_read(p);
}

static void test_committed_before_durable(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_WRITTEN", "src-written");
    struct store_event ev2 = mk_event("evt_WRITTEN2", "src-written-2");
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "tracking.delivered",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .content_type = "application/json",
                                    .status = "pending",
                                    .next_at = util_now_ms() - 1};
    struct commit_rec durable = {0, 0, 0};
    struct durable_probe p = {s, &durable, 0, 0, 0, 0, 0, 0};
    struct event *probe = event_new(base, -1, 0, on_durable_probe, &p);

    CHECK(probe != NULL);
    if (!probe)
        return;
    event_priority_set(probe, event_base_get_npriorities(base) - 1);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(routed(s, "evt_WRITTEN", "routed", NULL, &dn, 1, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev2, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &durable), 0);
    event_active(probe, EV_TIMEOUT, 0); /* after the commit event */
    run_until(&durable);
    CHECK_INT_EQ(durable.called, 1);
    CHECK_INT_EQ(durable.ok, 1);
    CHECK_INT_EQ(p.ran, 1);
    /* Committed but not durable: a power cut could still take the row
     * back, so it is not claimable yet, and recovery waits too. */
    CHECK_INT_EQ(p.committed, 1);
    CHECK_INT_EQ(p.syncing, 1);
    CHECK_INT_EQ(p.durable_called, 0);
    CHECK_INT_EQ((int)p.claimable, 0);
    CHECK_INT_EQ((int)p.unrouted_seen, 0);
    durable_probe_read(&p); /* durable now: claimable, and listed */
    CHECK_INT_EQ((int)p.claimable, 1);
    CHECK_INT_EQ((int)p.unrouted_seen, 1);
    CHECK_INT_EQ(routed(s, "evt_WRITTEN2", "unrouted", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    event_free(probe);
}

/* One trip per event: store_sqlite_event_put with a plan writes the event, its
 * status, its deliveries (ids derived from the event) and its batch items
 * in one call; a duplicate writes none of it; a rule_error plan keeps the
 * event with its error. */
static void test_event_with_plan(struct store_sq *s) {
    char err[256] = "", dup[UTIL_ID_MAX] = "", want[UTIL_ID_MAX], eid[UTIL_ID_MAX];
    struct store_event ev;
    struct store_delivery_new dn[2] = {{.endpoint = "erp",
                                        .event_type = "tracking.delivered",
                                        .payload = "{\"a\":1}",
                                        .payload_len = 7,
                                        .content_type = "application/json",
                                        .status = "pending",
                                        .next_at = util_now_ms()},
                                       {.endpoint = "crm",
                                        .event_type = "tracking.delivered",
                                        .payload = "{}",
                                        .payload_len = 2,
                                        .content_type = "application/json",
                                        .status = "held",
                                        .next_at = util_now_ms()}};
    struct store_batch_item it = {.endpoint = "wms-plan",
                                  .window_start = 1795017780000,
                                  .window_ms = 60000,
                                  .payload = "{\"n\":1}",
                                  .len = 7};
    struct store_plan plan = {
        .status = "routed", .deliveries = dn, .ndeliveries = 2, .items = &it, .nitems = 1};
    struct store_plan failed = {.status = "rule_error", .error = "rules/10-erp.lua:3: boom"};
    struct store_event_row *row = NULL;
    long long before = fresh_count("SELECT count(*) FROM deliveries", NULL);

    util_id_new("evt_", eid, sizeof eid); /* a real id: derived ids take its time */
    ev = mk_event(eid, "src-plan-1");

    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, dup, sizeof dup, err, sizeof err), 0);
    CHECK_INT_EQ(it.count, 1);
    /* the same carrier event again: nothing of its plan is written */
    ev.id = "evt_PLAN1_AGAIN";
    it.count = 0;
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, dup, sizeof dup, err, sizeof err),
                 STORE_DUP);
    CHECK_STR_EQ(dup, eid);
    CHECK_INT_EQ(it.count, 0);
    ev = mk_event("evt_PLAN2", "src-plan-2");
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &failed, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries", NULL), before + 2);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE event_id = ?", eid), 2);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM batch_items WHERE event_id = ?", eid), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ? AND status = 'routed'", eid),
                 1);
    util_id_derive("dlv_", eid, "crm", 1, want, sizeof want);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM deliveries WHERE id = ? AND status = 'held'", want), 1);
    CHECK_INT_EQ(store_sqlite_event_get(s, "evt_PLAN2", &row, err, sizeof err), 1);
    CHECK_STR_EQ(row->status, "rule_error");
    CHECK_STR_EQ(row->error, "rules/10-erp.lua:3: boom");
    store_event_rows_free(row, 1);
}

/* Claims due rows of endpoint name at now; returns how many, their ids
 * (up to 8) in ids. */
static size_t claim_ids(struct store_sq *s, const char *name, int64_t now,
                        char ids[][UTIL_ID_MAX]) {
    struct store_delivery *d = NULL;
    size_t n = 0;
    char err[256];

    if (store_sqlite_endpoint_claim_due(s, name, now, 60000, 8, &d, &n, err, sizeof err) < 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        snprintf(ids[i], UTIL_ID_MAX, "%s", d[i].id);
    store_deliveries_free(d, n);
    return n;
}

/* Ordered by key: a key's first row is due, the rest wait (parked) behind
 * it; only a delivered head lets the next one go; a failed head blocks its
 * key (shown as blocked), new rows of that key wait too, other keys go
 * on; skip releases the key; disable and enable keep the order. */
static void test_order_keys(struct store_sq *s) {
    char err[256] = "", ids[8][UTIL_ID_MAX], eid[4][UTIL_ID_MAX], a1[UTIL_ID_MAX];
    struct store_event ev;
    int64_t now = util_now_ms();
    struct store_delivery_new dn = {.endpoint = "keyed",
                                    .event_type = "tracking.in_transit",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .content_type = "application/json",
                                    .status = "pending",
                                    .next_at = now - 1};
    struct store_plan plan = {.status = "routed", .deliveries = &dn, .ndeliveries = 1};
    struct store_attempt ok = {.n = 1, .at = now, .status_code = 200};
    struct store_attempt bad = {.n = 1, .at = now, .status_code = 500, .error = "HTTP 500"};
    struct store_endpoint_queue q;
    struct store_blocked_key *bk = NULL;
    size_t n, nk = 0;
    const char *keys[4] = {"TN-A", "TN-A", "TN-B", "TN-A"};

    for (int i = 0; i < 4; i++) {
        char sid[32];
        util_id_new("evt_", eid[i], sizeof eid[i]);
        snprintf(sid, sizeof sid, "src-key-%d", i);
        ev = mk_event(eid[i], sid);
        dn.okey = keys[i];
        CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    }
    CHECK_INT_EQ(commit(s), 1);
    /* the heads of TN-A and TN-B are due; the other two TN-A rows wait */
    n = claim_ids(s, "keyed", now, ids);
    CHECK_INT_EQ((int)n, 2);
    /* the next due is a lease's end, never a parked row */
    CHECK(store_sqlite_endpoint_next_due(s, "keyed") <= util_now_ms() + 60000);
    util_id_derive("dlv_", eid[0], "keyed", 0, a1, sizeof a1);
    CHECK(n == 2 && (!strcmp(ids[0], a1) || !strcmp(ids[1], a1)));
    /* the TN-A head fails for good: TN-A is blocked, TN-B goes on */
    CHECK_INT_EQ(store_sqlite_attempt_put(s, a1, &bad, "failed", 0, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_attempt_put(s, !strcmp(ids[0], a1) ? ids[1] : ids[0], &ok,
                                          "delivered", 0, 0, err, sizeof err),
                 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ((int)claim_ids(s, "keyed", util_now_ms(), ids), 0);
    CHECK_INT_EQ(store_sqlite_endpoint_queue(s, "keyed", util_now_ms(), 100, 1, &q), 0);
    CHECK_INT_EQ(q.pending, 2);
    CHECK_INT_EQ(q.blocked, 1);
    CHECK(q.oldest_blocked == now);
    CHECK_INT_EQ(store_sqlite_endpoint_blocked(s, "keyed", 10, &bk, &nk, err, sizeof err), 0);
    CHECK_INT_EQ((int)nk, 1);
    if (nk == 1) {
        CHECK_STR_EQ(bk[0].key, "TN-A");
        CHECK_STR_EQ(bk[0].head_id, a1);
        CHECK_INT_EQ(bk[0].depth, 2);
    }
    store_blocked_keys_free(bk, nk);
    /* disabled and enabled: the parked rows stay behind their head */
    CHECK_INT_EQ(
        store_sqlite_endpoint_set_disabled(s, "keyed", 1, "test", now, NULL, err, sizeof err), 0);
    CHECK_INT_EQ(
        store_sqlite_endpoint_set_disabled(s, "keyed", 0, NULL, now, NULL, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ((int)claim_ids(s, "keyed", util_now_ms(), ids), 0);
    /* only the failed head of a key can be skipped */
    CHECK_INT_EQ(store_sqlite_delivery_skip(s, "dlv_nope", now, err, sizeof err), 0);
    CHECK_INT_EQ(
        store_sqlite_delivery_skip(s, !strcmp(ids[0], a1) ? ids[1] : ids[0], now, err, sizeof err),
        2);
    /* skipped: it stays failed, and the next TN-A row (event 1) is due */
    CHECK_INT_EQ(store_sqlite_delivery_skip(s, a1, util_now_ms(), err, sizeof err), 1);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE id = ? AND status = 'failed'"
                             " AND okey IS NULL",
                             a1),
                 1);
    n = claim_ids(s, "keyed", util_now_ms(), ids);
    CHECK_INT_EQ((int)n, 1);
    util_id_derive("dlv_", eid[1], "keyed", 0, a1, sizeof a1);
    CHECK(n == 1 && !strcmp(ids[0], a1));
    /* delivered: the last TN-A row (event 3) goes */
    CHECK_INT_EQ(store_sqlite_attempt_put(s, a1, &ok, "delivered", 0, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    n = claim_ids(s, "keyed", util_now_ms(), ids);
    util_id_derive("dlv_", eid[3], "keyed", 0, a1, sizeof a1);
    CHECK(n == 1 && !strcmp(ids[0], a1));
    CHECK_INT_EQ(store_sqlite_attempt_put(s, a1, &ok, "delivered", 0, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_endpoint_queue(s, "keyed", util_now_ms(), 100, 1, &q), 0);
    CHECK(q.pending == 0 && q.blocked == 0);
}

/* Seqs stay monotonic for the life of the store: retention deleting every
 * row (the newest included) does not make the next insert reuse a seq, in
 * this run or after reopening. */
static void test_seqs_monotonic_after_prune(void) {
    char saved[256], err[256] = "", eid[UTIL_ID_MAX];
    struct store_sq *s;
    struct store_event ev;
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "t",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .content_type = "application/json",
                                    .status = "pending",
                                    .next_at = 0};
    struct store_plan plan = {.status = "routed", .deliveries = &dn, .ndeliveries = 1};
    struct store_attempt ok = {.n = 1, .at = 1, .status_code = 200};
    struct store_delivery *d = NULL;
    long long max_evt, max_dlv;
    struct store_prune pr;
    size_t n = 0;

    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/seqs.db", dir);
    s = open_engine("sqlite:seqs.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    for (int i = 0; i < 3; i++) {
        char sid[16];
        util_id_new("evt_", eid, sizeof eid);
        snprintf(sid, sizeof sid, "seq-%d", i);
        ev = mk_event(eid, sid);
        ev.received_at = 1000 + i;
        CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    }
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "erp", util_now_ms(), 60000, 10, &d, &n, err,
                                                 sizeof err),
                 0);
    for (size_t i = 0; i < n; i++)
        CHECK_INT_EQ(store_sqlite_attempt_put(s, d[i].id, &ok, "delivered", 0, 0, err, sizeof err),
                     0);
    store_deliveries_free(d, n);
    CHECK_INT_EQ(commit(s), 1);
    max_evt = fresh_count("SELECT MAX(seq) FROM events", NULL);
    max_dlv = fresh_count("SELECT MAX(seq) FROM deliveries", NULL);
    pr = (struct store_prune){.before_ms = 1000000, .upto = INT64_MAX, .max = 100};
    CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
    CHECK_INT_EQ(pr.pruned, 3);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events", NULL), 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries", NULL), 0);
    util_id_new("evt_", eid, sizeof eid);
    ev = mk_event(eid, "seq-after");
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK(fresh_count("SELECT MAX(seq) FROM events", NULL) > max_evt);
    CHECK(fresh_count("SELECT MAX(seq) FROM deliveries", NULL) > max_dlv);
    max_evt = fresh_count("SELECT MAX(seq) FROM events", NULL);
    max_dlv = fresh_count("SELECT MAX(seq) FROM deliveries", NULL);
    /* again, across a reopen: prune the lot, reopen, insert */
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "erp", util_now_ms(), 60000, 10, &d, &n, err,
                                                 sizeof err),
                 0);
    for (size_t i = 0; i < n; i++)
        CHECK_INT_EQ(store_sqlite_attempt_put(s, d[i].id, &ok, "delivered", 0, 0, err, sizeof err),
                     0);
    store_deliveries_free(d, n);
    CHECK_INT_EQ(commit(s), 1);
    pr = (struct store_prune){.before_ms = INT64_MAX / 2, .upto = INT64_MAX, .max = 100};
    CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    store_sqlite_free(s);
    s = open_engine("sqlite:seqs.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    util_id_new("evt_", eid, sizeof eid);
    ev = mk_event(eid, "seq-reopened");
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK(fresh_count("SELECT MAX(seq) FROM events", NULL) > max_evt);
    CHECK(fresh_count("SELECT MAX(seq) FROM deliveries", NULL) > max_dlv);
    store_sqlite_free(s);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* The id of endpoint's (one) delivery, read on a fresh connection; a static
 * buffer. */
static const char *fresh_text_id(const char *endpoint) {
    static char id[UTIL_ID_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    id[0] = '\0';
    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT id FROM deliveries WHERE endpoint = ?", -1, &st, NULL) ==
            SQLITE_OK) {
        sqlite3_bind_text(st, 1, endpoint, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            snprintf(id, sizeof id, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return id;
}

/* 1 when a page of the newest events (or deliveries) holds id. */
static int page_has(struct store_sq *s, int deliveries, const char *id) {
    struct store_page q = {.limit = 50};
    struct store_event_row *ev = NULL;
    struct store_delivery_item *dl = NULL;
    size_t n = 0;
    int64_t next = 0;
    int found = 0;
    char err[256];

    if (deliveries) {
        CHECK_INT_EQ(store_sqlite_deliveries_page(s, &q, &dl, &n, &next, err, sizeof err), 0);
        for (size_t i = 0; i < n; i++)
            found |= strcmp(dl[i].event_id, id) == 0;
        store_delivery_items_free(dl, n);
    } else {
        CHECK_INT_EQ(store_sqlite_events_page(s, &q, &ev, &n, &next, err, sizeof err), 0);
        for (size_t i = 0; i < n; i++)
            found |= strcmp(ev[i].id, id) == 0;
        store_event_rows_free(ev, n);
    }
    return found;
}

/* The admin API's reads show committed groups only: an event (and its
 * delivery, its counts) in the open group is not in a page, a detail, find
 * or the counts until its group commits. Its open window is looked for
 * after the commit only: the windows read (batch_due at the end of time)
 * runs on the loop's connection, which sees the open group too. */
static void test_admin_reads_committed_only(struct store_sq *s) {
    struct store_event ev = mk_event("evt_UNCOMMITTED", "src-uncommitted");
    struct store_delivery_new dn = {.endpoint = "rd",
                                    .event_type = "t",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .status = "held",
                                    .next_at = util_now_ms() + 3600000};
    struct store_batch_item it = {.endpoint = "rdw",
                                  .window_start = 1795017780000,
                                  .window_ms = 60000,
                                  .payload = "1",
                                  .len = 1};
    struct store_plan plan = {
        .status = "routed", .deliveries = &dn, .ndeliveries = 1, .items = &it, .nitems = 1};
    struct store_event_detail *det = NULL;
    struct store_batch_window *w = NULL;
    struct store_counts before, c;
    struct store_endpoint_queue q;
    char err[256], **ids = NULL;
    size_t n = 0, nw = 0;

    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &before), 0);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    /* the loop's own reads see the open group; the admin's do not */
    CHECK_INT_EQ(store_sqlite_endpoint_queue(s, "rd", util_now_ms(), 10, 1, &q), 0);
    CHECK_INT_EQ(q.held, 1);
    CHECK(!page_has(s, 0, "evt_UNCOMMITTED"));
    CHECK(!page_has(s, 1, "evt_UNCOMMITTED"));
    CHECK_INT_EQ(store_sqlite_event_detail(s, "evt_UNCOMMITTED", &det, err, sizeof err), 0);
    CHECK(det == NULL);
    CHECK_INT_EQ(store_sqlite_events_find(s, "src-uncommitted", 5, &ids, &n, err, sizeof err), 0);
    CHECK_INT_EQ((int)n, 0);
    free(ids);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, before.held);

    CHECK_INT_EQ(commit(s), 1);
    CHECK(page_has(s, 0, "evt_UNCOMMITTED"));
    CHECK(page_has(s, 1, "evt_UNCOMMITTED"));
    CHECK_INT_EQ(store_sqlite_event_detail(s, "evt_UNCOMMITTED", &det, err, sizeof err), 1);
    CHECK(det != NULL && det->ndeliveries == 1 && det->nwaiting == 1);
    store_event_detail_free(det);
    CHECK_INT_EQ(store_sqlite_events_find(s, "src-uncommitted", 5, &ids, &n, err, sizeof err), 0);
    CHECK_INT_EQ((int)n, 1);
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, before.held + 1);
    CHECK_INT_EQ(store_sqlite_batch_due(s, INT64_MAX, &w, &nw, err, sizeof err), 0);
    n = 0;
    for (size_t i = 0; i < nw; i++)
        n += strcmp(w[i].endpoint, "rdw") == 0;
    CHECK_INT_EQ((int)n, 1);
    store_batch_windows_free(w, nw);
}

/* ---- the asynchronous calls, through store.h ----
 * The reads below (store_read_*) are store.h's, on a store made by
 * store_open, whichever engine it runs for an SQLite URL; the rows they
 * read are written through store.h too (store_*_done), never through the
 * SQLite engine's own calls. */

static struct store *open_front(const char *url) {
    char err[256] = "";
    struct store *s = store_open(base, url, dir, err, sizeof err);
    if (!s)
        fprintf(stderr, "store_open: %s\n", err);
    return s;
}

/* store_on_commit on s, then the loop until it answered; returns ok (-1
 * when it never came). */
static int front_commit(struct store *s) {
    struct commit_rec r = {0, 0, 0};
    if (store_on_commit(s, on_commit, &r) < 0)
        return -1;
    run_until(&r);
    return r.called == 1 ? r.ok : -1;
}

/* What a write's answer (store_*_done) said. */
struct done_rec {
    int called, ok, status;
};
static void on_done(void *arg, const struct store_done *d) {
    struct done_rec *r = arg;
    r->called++;
    r->ok = d->ok;
    r->status = d->status;
}

/* Runs the loop until r was answered (at most 100 turns). */
static void run_until_done(struct done_rec *r) {
    for (int i = 0; i < 100 && !r->called; i++)
        event_base_loop(base, EVLOOP_ONCE);
}

/* What an asynchronous read's callback saw. */
struct read_rec {
    int called, order, status;
    size_t n;
    int found; /* detail: the event was there */
    int64_t held;
    struct store *s; /* when set, the callback reads again (a chain) */
    struct read_rec *chained;
};
static void on_read(void *arg, const struct store_result *r) {
    struct read_rec *rec = arg;
    rec->called++;
    rec->order = ++commit_seq;
    rec->status = r->status;
    rec->n = r->n;
    rec->found = r->detail != NULL;
    rec->held = r->counts ? r->counts->held : -1;
    if (rec->s)
        CHECK_INT_EQ(store_read_delivery_counts(rec->s, on_read, rec->chained), 0);
}

/* The asynchronous reads (the admin API's): never answered inside the
 * call, each exactly once, in the order made, with the committed state as
 * of the call; a read made from a callback waits for the next turn; and
 * shutdown's flush answers what is still queued. */
static void test_async_reads(struct store *s) {
    struct store_event ev = mk_event("evt_ASYNC", "src-async");
    struct store_page q = {.limit = 10};
    struct read_rec page = {0}, detail = {0}, gone = {0}, find = {0}, counts = {0}, ping = {0},
                    windows = {0}, chained = {0}, first = {0};
    struct done_rec put = {0};
    int i;

    CHECK_INT_EQ(store_event_put_done(s, &ev, NULL, on_done, &put), 0);
    CHECK_INT_EQ(front_commit(s), 1);
    run_until_done(&put);
    CHECK(put.called == 1 && put.ok == 1); /* stored and committed */
    CHECK_INT_EQ(put.status, 0);           /* not a duplicate */
    CHECK_INT_EQ(store_read_events_page(s, &q, on_read, &page), 0);
    CHECK_INT_EQ(store_read_event_detail(s, "evt_ASYNC", on_read, &detail), 0);
    CHECK_INT_EQ(store_read_event_detail(s, "evt_NOPE", on_read, &gone), 0);
    CHECK_INT_EQ(store_read_events_find(s, "src-async", 5, on_read, &find), 0);
    CHECK_INT_EQ(store_read_batch_windows(s, on_read, &windows), 0);
    CHECK_INT_EQ(store_read_delivery_counts(s, on_read, &counts), 0);
    CHECK_INT_EQ(store_read_ping(s, on_read, &ping), 0);
    CHECK(!page.called && !detail.called && !ping.called); /* never inside the call */
    CHECK(!store_idle(s));                                 /* answers wait: not idle */
    event_base_loop(base, EVLOOP_ONCE);
    CHECK(page.called == 1 && detail.called == 1 && gone.called == 1 && find.called == 1 &&
          windows.called == 1 && counts.called == 1 && ping.called == 1);
    CHECK(page.order < detail.order && detail.order < gone.order && gone.order < find.order &&
          find.order < windows.order && windows.order < counts.order && counts.order < ping.order);
    CHECK(page.status == 0 && page.n >= 1);
    CHECK(detail.status == 1 && detail.found);
    CHECK(gone.status == 0 && !gone.found);
    CHECK(find.status == 0 && find.n == 1);
    CHECK(counts.status == 0 && counts.held >= 0);
    CHECK_INT_EQ(ping.status, 0);

    /* A read made from a callback is answered on a later turn, not in this one. */
    first.s = s;
    first.chained = &chained;
    CHECK_INT_EQ(store_read_ping(s, on_read, &first), 0);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(first.called, 1);
    CHECK_INT_EQ(chained.called, 0);
    for (i = 0; i < 10 && !chained.called; i++)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(chained.called, 1);

    /* What is still queued at shutdown is answered by the flush. */
    memset(&first, 0, sizeof first);
    CHECK_INT_EQ(store_read_ping(s, on_read, &first), 0);
    CHECK_INT_EQ(store_flush(s), 0);
    CHECK_INT_EQ(first.called, 1);
    CHECK(store_idle(s));
}

/* What a claim's (or a due read's) answer held: copied in the callback,
 * since the rows belong to the store for the call only. */
struct claim_rec {
    int called, order, status;
    size_t n;
    int64_t seq[8], next_at[8];
    char endpoint[8][32];
    int64_t next_due, head, head_at;
    size_t ndues, npending;
    int64_t due_next[5], due_head[5];
    int pending_has[5]; /* names asked for (dues) found among the pending */
};
static void on_claim(void *arg, const struct store_result *r) {
    struct claim_rec *c = arg;
    c->called++;
    c->order = ++commit_seq;
    c->status = r->status;
    c->n = r->n;
    c->next_due = r->next_due;
    c->head = r->head;
    c->head_at = r->head_at;
    for (size_t i = 0; r->claimed && i < r->n && i < 8; i++) {
        c->seq[i] = r->claimed[i].seq;
        c->next_at[i] = r->claimed[i].next_at;
        snprintf(c->endpoint[i], sizeof c->endpoint[i], "%s", r->claimed[i].endpoint);
    }
    c->ndues = r->ndues;
    for (size_t i = 0; i < r->ndues && i < 5; i++) {
        c->due_next[i] = r->dues[i].next_due;
        c->due_head[i] = r->dues[i].head_due;
        for (size_t k = 0; r->ids && k < r->n; k++)
            if (!strcmp(r->ids[k], r->dues[i].name))
                c->pending_has[i] = 1;
    }
    c->npending = r->ids ? r->n : 0;
}

/* One put_deliveries: its deliveries and plan, which the store may read
 * until the routing is answered (the engine over a backend fills in the
 * plan's window counts from the answer), and the answers of the event's
 * store_event_put_done and of its routing's store_event_routed_done. */
struct put_rec {
    struct store_delivery_new dn[8];
    struct store_plan plan;
    struct done_rec put, routed;
};

/* Stores one event evt with a delivery to endpoint for each of next_at[0..n)
 * through store.h, in the open group: the two writes are made now, their
 * answers come into r once the group ended (put_answered checks them). */
static void put_deliveries(struct store *s, const char *evt, const char *endpoint,
                           const int64_t *next_at, size_t n, struct put_rec *r) {
    struct store_event ev = mk_event(evt, evt);

    memset(r, 0, sizeof *r);
    for (size_t i = 0; i < n && i < 8; i++)
        r->dn[i] = (struct store_delivery_new){.endpoint = endpoint,
                                               .event_type = "t",
                                               .payload = "{}",
                                               .payload_len = 2,
                                               .status = "pending",
                                               .next_at = next_at[i]};
    r->plan = (struct store_plan){.status = "routed", .deliveries = r->dn, .ndeliveries = n};
    CHECK_INT_EQ(store_event_put_done(s, &ev, NULL, on_done, &r->put), 0);
    CHECK_INT_EQ(store_event_routed_done(s, evt, &r->plan, on_done, &r->routed), 0);
}

/* put_deliveries' writes were answered (the loop run until they were):
 * the event stored (not a duplicate), then routed. */
static void put_answered(struct put_rec *r) {
    run_until_done(&r->put);
    run_until_done(&r->routed);
    CHECK(r->put.called == 1 && r->put.ok == 1);
    CHECK_INT_EQ(r->put.status, 0);
    CHECK(r->routed.called == 1 && r->routed.ok == 1);
    CHECK_INT_EQ(r->routed.status, 1); /* routed (store_event_routed's 0) */
}

/* The loop's own reads (claims, an ordered look, the watchdog's due
 * times, batch windows): never answered inside the call; a claim leases
 * its rows at the call, so a second claim made before the first is
 * answered never returns them; committed rows only; the next due time read
 * with the claim; the head and a claim from it in one look. */
static void test_async_claims(struct store *s) {
    int64_t now = util_now_ms();
    int64_t plain[4] = {now - 30, now - 20, now - 10, now + 600000};
    int64_t ord[3] = {now - 3, now - 2, now - 1};
    int64_t later[1] = {now + 900000};
    int64_t fresh[1] = {now - 100};
    const char *names[5] = {"aclaim", "aord", "alater", "aunc", "aunc2"};
    struct claim_rec c1 = {0}, c2 = {0}, o1 = {0}, o2 = {0}, o3 = {0}, due = {0}, bd = {0};
    struct put_rec put[6]; /* AC1, AO1, AL1; AU1, AC2; AU2 */
    /* one open batch window, whose end the batch read below gives */
    int64_t W = 60000, start = 1795017780000; /* a multiple of W, long past */
    struct store_batch_item it = {
        .endpoint = "abatch", .window_start = start, .window_ms = W, .payload = "1", .len = 1};
    struct store_plan batched = {.status = "routed", .items = &it, .nitems = 1};
    struct store_event bev = mk_event("evt_ABATCH", "evt_ABATCH");
    struct done_rec bput = {0};

    put_deliveries(s, "evt_AC1", "aclaim", plain, 4, &put[0]);
    put_deliveries(s, "evt_AO1", "aord", ord, 3, &put[1]);
    put_deliveries(s, "evt_AL1", "alater", later, 1, &put[2]);
    CHECK_INT_EQ(store_event_put_done(s, &bev, &batched, on_done, &bput), 0);
    CHECK_INT_EQ(front_commit(s), 1);
    for (int i = 0; i < 3; i++)
        put_answered(&put[i]);
    run_until_done(&bput);
    CHECK(bput.called == 1 && bput.ok == 1);
    CHECK_INT_EQ(bput.status, 0);
    CHECK_INT_EQ(it.count, 1);                               /* the window's first item */
    put_deliveries(s, "evt_AU1", "aunc", fresh, 1, &put[3]); /* stays in the open group */
    put_deliveries(s, "evt_AC2", "aclaim", fresh, 1, &put[4]);

    /* two claims before either is answered */
    CHECK_INT_EQ(store_read_claim_due(s, "aclaim", now, 30000, 2, 0, 0, on_claim, &c1), 0);
    CHECK_INT_EQ(store_read_claim_due(s, "aclaim", now, 30000, 8, 0, 0, on_claim, &c2), 0);
    CHECK(!c1.called && !c2.called); /* never inside the call */
    CHECK(!store_idle(s));
    event_base_loop(base, EVLOOP_ONCE);
    CHECK(c1.called == 1 && c2.called == 1 && c1.order < c2.order);
    CHECK_INT_EQ(c1.status, 0);
    CHECK_INT_EQ((int)c1.n, 2); /* earliest due first */
    CHECK(c1.n == 2 && c1.next_at[0] == now - 30 && c1.next_at[1] == now - 20);
    CHECK_STR_EQ(c1.endpoint[0], "aclaim");
    CHECK_INT_EQ(c1.next_due, now - 10); /* the third, read right after the claim */
    CHECK_INT_EQ(c2.status, 0);
    CHECK_INT_EQ((int)c2.n, 1); /* not the leased two, the future one, nor the uncommitted */
    CHECK(c2.n == 1 && c2.next_at[0] == now - 10 && c2.seq[0] != c1.seq[0] &&
          c2.seq[0] != c1.seq[1]);
    CHECK_INT_EQ(c2.next_due, now + 30000); /* the leases end before the future row is due */

    /* an ordered look: the head and a claim from it, in one read */
    CHECK_INT_EQ(store_read_claim_ordered(s, "aord", now, 30000, 4, on_claim, &o1), 0);
    /* a head not due yet: nothing claimed */
    CHECK_INT_EQ(store_read_claim_ordered(s, "alater", now, 30000, 4, on_claim, &o3), 0);
    CHECK(!o1.called && !o3.called);
    for (int i = 0; i < 100 && !o1.called; i++)
        event_base_loop(base, EVLOOP_ONCE);
    /* a look with nothing asked, once o1 was answered: the head only, now
     * leased by o1 (each read is answered as of when it ran: one asked
     * before o1's claim ran would see the head unleased) */
    CHECK_INT_EQ(store_read_claim_ordered(s, "aord", now, 30000, 0, on_claim, &o2), 0);
    CHECK(!o2.called);
    for (int i = 0; i < 100 && !o2.called; i++)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK(o1.called == 1 && o2.called == 1 && o3.called == 1);
    CHECK_INT_EQ(o1.status, 0);
    CHECK_INT_EQ((int)o1.n, 3);
    CHECK(o1.n == 3 && o1.seq[0] == o1.head && o1.seq[0] < o1.seq[1] && o1.seq[1] < o1.seq[2]);
    CHECK_INT_EQ(o1.head_at, now - 3);
    CHECK_INT_EQ(o2.status, 0);
    CHECK_INT_EQ((int)o2.n, 0);
    CHECK_INT_EQ(o2.head, o1.head);
    CHECK_INT_EQ(o2.head_at, now + 30000); /* leased: due when the lease ends */
    CHECK_INT_EQ(o3.status, 0);
    CHECK_INT_EQ((int)o3.n, 0);
    CHECK_INT_EQ(o3.head_at, now + 900000);

    /* the watchdog's read: due times, committed heads, pending endpoints.
     * The loop turns above may have made the first open group durable
     * (its sync thread's answer is one of their events: under TSan on a
     * loaded machine it was, and its fresh rows showed as due): commit it
     * for certain, then leave one row of a new endpoint in the open group. */
    CHECK_INT_EQ(front_commit(s), 1);
    put_answered(&put[3]);
    put_answered(&put[4]);
    put_deliveries(s, "evt_AU2", "aunc2", fresh, 1, &put[5]);
    CHECK_INT_EQ(store_read_endpoints_due(s, names, NULL, 5, 1, on_claim, &due), 0);
    CHECK(!due.called);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(due.called, 1);
    CHECK_INT_EQ(due.status, 0);
    CHECK_INT_EQ((int)due.ndues, 5);
    CHECK_INT_EQ(due.due_next[0], now - 100); /* evt_AC2's row, committed now */
    CHECK_INT_EQ(due.due_head[1], now + 30000);
    CHECK_INT_EQ(due.due_next[2], now + 900000);
    CHECK_INT_EQ(due.due_head[2], now + 900000);
    CHECK_INT_EQ(due.due_next[3], now - 100); /* evt_AU1's, committed */
    CHECK_INT_EQ(due.due_head[3], now - 100);
    CHECK_INT_EQ(due.due_next[4], INT64_MAX); /* only an uncommitted row */
    CHECK_INT_EQ(due.due_head[4], INT64_MAX);
    CHECK(due.pending_has[0] && due.pending_has[1] && due.pending_has[2] && due.pending_has[3]);
    CHECK(due.pending_has[4]); /* pending in the open group: listed (discovery) */

    /* the watchdog asks each endpoint for the due time it uses: an ordered
     * one's head only, another's next due only; the other is INT64_MAX */
    {
        static const unsigned char ordered[5] = {0, 1, 1, 0, 0};
        struct claim_rec one = {0};
        CHECK_INT_EQ(store_read_endpoints_due(s, names, ordered, 5, 0, on_claim, &one), 0);
        for (int i = 0; i < 100 && !one.called; i++)
            event_base_loop(base, EVLOOP_ONCE);
        CHECK_INT_EQ(one.called, 1);
        CHECK_INT_EQ(one.status, 0);
        CHECK_INT_EQ((int)one.ndues, 5);
        for (int i = 0; i < 5; i++) {
            CHECK_INT_EQ(one.due_next[i], ordered[i] ? INT64_MAX : due.due_next[i]);
            CHECK_INT_EQ(one.due_head[i], ordered[i] ? due.due_head[i] : INT64_MAX);
        }
        CHECK_INT_EQ((int)one.npending, 0); /* pending not asked for */
    }

    /* batch windows: the due ones and the next end, read together */
    CHECK_INT_EQ(store_read_batch_due(s, 0, on_claim, &bd), 0);
    CHECK(!bd.called);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(bd.called, 1);
    CHECK_INT_EQ(bd.status, 0);
    CHECK_INT_EQ((int)bd.n, 0);
    /* store_batch_next_close: the end of the one open window */
    CHECK_INT_EQ(bd.next_due, start + W);

    /* committed, the fresh row is claimed by the next claim */
    CHECK_INT_EQ(front_commit(s), 1);
    put_answered(&put[5]);
    memset(&c1, 0, sizeof c1);
    CHECK_INT_EQ(store_read_claim_due(s, "aclaim", util_now_ms(), 30000, 8, 0, 0, on_claim, &c1),
                 0);
    CHECK_INT_EQ(store_flush(s), 0); /* a flush answers it */
    CHECK_INT_EQ(c1.called, 1);
    CHECK(c1.n == 1 && c1.next_at[0] == now - 100);
    CHECK(store_idle(s));
}

#ifdef WAYBILL_CHECKS
/* WAYBILL_STORE_REPLY_DELAY_MS (checked builds): an answer waits that
 * long after its call, not one turn; a flush still answers at once. */
static void test_reply_delay(void) {
    struct read_rec ping = {0}, flushed = {0};
    struct store *s;
    int64_t t0;
    int i;

    setenv("WAYBILL_STORE_REPLY_DELAY_MS", "60", 1);
    s = open_front("sqlite:delay.db");
    unsetenv("WAYBILL_STORE_REPLY_DELAY_MS");
    CHECK(s != NULL);
    if (!s)
        return;
    t0 = util_mono_ms();
    CHECK_INT_EQ(store_read_ping(s, on_read, &ping), 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK_INT_EQ(ping.called, 0); /* the next turn came, the answer not yet */
    for (i = 0; i < 100 && !ping.called; i++)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(ping.called, 1);
    CHECK(util_mono_ms() - t0 >= 60);
    CHECK_INT_EQ(store_read_ping(s, on_read, &flushed), 0);
    CHECK_INT_EQ(store_flush(s), 0);
    CHECK_INT_EQ(flushed.called, 1);
    store_free(s);
}
#endif

/* Claims endpoint's due deliveries and stores outcome for each; returns how
 * many. */
static int settle(struct store_sq *s, const char *endpoint, const char *outcome) {
    struct store_attempt a = {.n = 1, .at = 1, .status_code = 200};
    struct store_delivery *d = NULL;
    size_t n = 0;
    char err[256];

    if (strcmp(outcome, "delivered"))
        a.status_code = 406;
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, endpoint, util_now_ms(), 60000, 10, &d, &n, err,
                                                 sizeof err),
                 0);
    for (size_t i = 0; i < n; i++)
        CHECK_INT_EQ(store_sqlite_attempt_put(s, d[i].id, &a, outcome, 0, 0, err, sizeof err), 0);
    store_deliveries_free(d, n);
    return (int)n;
}

/* Retention steps over what must stay without stopping there (a delivery
 * still retrying, a dead letter, an open batch window), deletes the rest
 * with their rows, and a batch delivery only with the last of its items;
 * walked again, what was kept goes once it is done. */
static void test_prune_keeps_and_batches(void) {
    char saved[256], err[256] = "";
    struct store_sq *s;
    int64_t W = 60000, start = 1795017780000, tomorrow = util_now_ms() + 86400000;
    struct store_delivery_new erp = {.endpoint = "erp",
                                     .event_type = "t",
                                     .payload = "{}",
                                     .payload_len = 2,
                                     .status = "pending"};
    struct store_delivery_new slow = erp, bad = erp;
    struct store_batch_item it = {
        .endpoint = "wb", .window_start = start, .window_ms = W, .payload = "1", .len = 1};
    struct store_batch_item open_it = it;
    struct store_plan plans[5] = {
        {.status = "routed", .deliveries = &erp, .ndeliveries = 1},  /* A: delivered */
        {.status = "routed", .deliveries = &slow, .ndeliveries = 1}, /* K: retrying */
        {.status = "routed",
         .deliveries = &bad,
         .ndeliveries = 1, /* D: dead letter, */
         .items = &it,
         .nitems = 1},                                        /* in the batch */
        {.status = "routed", .items = &it, .nitems = 1},      /* P: in the batch */
        {.status = "routed", .items = &open_it, .nitems = 1}, /* O: window open */
    };
    static const char *const ids[5] = {"evt_PRA", "evt_PRK", "evt_PRD", "evt_PRP", "evt_PRO"};
    struct store_batch_window *w = NULL;
    struct store_prune pr;
    size_t n = 0, count = 0;

    slow.endpoint = "slow";
    slow.next_at = tomorrow;
    bad.endpoint = "bad";
    open_it.window_start = start + 5 * W;
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/prune.db", dir);
    s = open_engine("sqlite:prune.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    for (int i = 0; i < 5; i++) {
        struct store_event ev = mk_event(ids[i], ids[i]);
        CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plans[i], NULL, 0, err, sizeof err), 0);
    }
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_batch_due(s, start + W, &w, &n, err, sizeof err), 0);
    CHECK_INT_EQ((int)n, 1);
    if (n == 1)
        CHECK_INT_EQ(store_sqlite_batch_close(s, &w[0], "pending", 0, &count, err, sizeof err), 0);
    store_batch_windows_free(w, n);
    CHECK_INT_EQ((int)count, 2);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(settle(s, "erp", "delivered"), 1);
    CHECK_INT_EQ(settle(s, "bad", "failed"), 1);
    CHECK_INT_EQ(settle(s, "wb", "delivered"), 1);
    CHECK_INT_EQ(commit(s), 1);

    pr = (struct store_prune){.before_ms = INT64_MAX / 2, .upto = INT64_MAX, .max = 100};
    CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(pr.pruned, 2); /* A and P */
    CHECK_INT_EQ(pr.kept, 3);   /* K, D and O, stepped over */
    CHECK(pr.done);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM events WHERE id IN ('evt_PRA', 'evt_PRP')", NULL), 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events", NULL), 3);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE endpoint = 'erp'", NULL), 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM attempts WHERE delivery_id NOT IN"
                             " (SELECT id FROM deliveries)",
                             NULL),
                 0);
    /* the batch stays while D's item in it does; P's item went */
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE batch = 1", NULL), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM batch_items", NULL), 2);

    /* the dead letter is retried and delivered; walked again, D goes, and
     * its batch with it (attempts too); K and O stay */
    CHECK_INT_EQ(
        store_sqlite_delivery_retry(s, fresh_text_id("bad"), util_now_ms() - 1, err, sizeof err),
        1);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(settle(s, "bad", "delivered"), 1);
    CHECK_INT_EQ(commit(s), 1);
    pr = (struct store_prune){.before_ms = INT64_MAX / 2, .upto = pr.cursor, .max = 100};
    CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(pr.pruned, 1);
    CHECK_INT_EQ(pr.kept, 2);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE batch = 1", NULL), 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM batch_items", NULL), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM attempts", NULL), 0);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM events WHERE id IN ('evt_PRK', 'evt_PRO')", NULL), 2);
    /* a pass cut short by its time budget stops before an event it did not
     * delete (not done), and the next pass goes on from there */
    for (int i = 0; i < 40; i++) {
        char id[32];
        struct store_event ev;
        struct store_plan none = {.status = "unrouted"};
        snprintf(id, sizeof id, "evt_PRB%02d", i);
        ev = mk_event(id, id);
        CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &none, NULL, 0, err, sizeof err), 0);
    }
    CHECK_INT_EQ(commit(s), 1);
    pr = (struct store_prune){
        .before_ms = INT64_MAX / 2, .upto = INT64_MAX, .max = 100, .budget_us = 1};
    CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK(pr.pruned >= 1 && pr.pruned < 40 && !pr.done);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id LIKE 'evt_PRB%'", NULL),
                 40 - pr.pruned);
    {
        int first = pr.pruned;
        pr = (struct store_prune){
            .before_ms = INT64_MAX / 2, .upto = INT64_MAX, .max = 100, .cursor = pr.cursor};
        CHECK_INT_EQ(store_sqlite_prune(s, &pr, err, sizeof err), 0);
        CHECK_INT_EQ(commit(s), 1);
        CHECK_INT_EQ(first + pr.pruned, 40);
        CHECK(pr.done);
    }
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id LIKE 'evt_PRB%'", NULL), 0);
    /* a new store gives pages back: auto_vacuum is INCREMENTAL (2) */
    CHECK_INT_EQ(fresh_count("PRAGMA auto_vacuum", NULL), 2);
    store_sqlite_free(s);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* A version-4 store (no order keys) is migrated to 5 at open: the column
 * and its indexes are added, and keyed rows work. */
static void test_migrate_v4_order_keys(void) {
    char saved[256], err[256] = "";
    sqlite3 *db = NULL;
    struct store_sq *s;

    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/v4keys.db", dir);
    s = open_engine("sqlite:v4keys.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    store_sqlite_free(s);
    CHECK_INT_EQ(sqlite3_open(dbpath, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db,
                              "DROP INDEX deliveries_ep_key; DROP INDEX deliveries_ep_blocked;"
                              "ALTER TABLE deliveries DROP COLUMN okey; PRAGMA user_version = 4",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM pragma_table_info('deliveries')"
                             " WHERE name = ?",
                             "okey"),
                 0);
    s = open_engine("sqlite:v4keys.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    CHECK_INT_EQ(fresh_count("PRAGMA user_version", NULL), 6);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM pragma_table_info('deliveries')"
                             " WHERE name = ?",
                             "okey"),
                 1);
    test_order_keys(s);
    store_sqlite_free(s);
done:
    UNUSED(err);
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* 5 -> 6: a version-5 store (no events.matched) gains the column; its
 * events read back with none recorded (NULL), a new event records the
 * handlers that matched, each naming what it sent (delivery ids derived as
 * the deliveries' own), a replay records its own, and a store stamped
 * newer than this binary knows is refused, as a version-5 binary refuses
 * this one. */
static void test_migrate_v5_matched(void) {
    char saved[256], err[256] = "", eid[UTIL_ID_MAX], did[UTIL_ID_MAX], want[512];
    sqlite3 *db = NULL;
    struct store_sq *s;
    struct store *refused;
    struct store_event old = mk_event("evt_V5OLD", "src-v5old"), ev = mk_event(eid, "v6");
    struct store_event_row *row = NULL;
    struct store_match m[2] = {{.where = "rules/10-a.lua:3", .pattern = "tracking.*"},
                               {.where = "rules/20-b.lua:7", .pattern = "*", .failed = 1}};
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "tracking.delivered",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .status = "held",
                                    .next_at = util_now_ms() + 3600000};
    struct store_batch_item it = {.endpoint = "wms",
                                  .window_start = 1795017810000,
                                  .window_ms = 10000,
                                  .payload = "{}",
                                  .len = 2};
    struct store_plan plan = {.status = "routed",
                              .deliveries = &dn,
                              .ndeliveries = 1,
                              .items = &it,
                              .nitems = 1,
                              .by_rules = 1,
                              .matches = m,
                              .nmatches = 2};
    struct store_plan none = {.status = "unrouted", .by_rules = 1};

    util_id_new("evt_", eid, sizeof eid); /* an id's time part: derived ids keep it */
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/v5matched.db", dir);
    s = open_engine("sqlite:v5matched.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    CHECK_INT_EQ(store_sqlite_event_put(s, &old, &none, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    store_sqlite_free(s);
    CHECK_INT_EQ(sqlite3_open(dbpath, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db, "ALTER TABLE events DROP COLUMN matched; PRAGMA user_version = 5",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    s = open_engine("sqlite:v5matched.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    CHECK_INT_EQ(fresh_count("PRAGMA user_version", NULL), 6);
    CHECK_INT_EQ(store_sqlite_event_get(s, "evt_V5OLD", &row, err, sizeof err), 1);
    CHECK(row && row->matched_json == NULL); /* routed before v6: not recorded */
    store_event_rows_free(row, row ? 1 : 0);
    row = NULL;
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    util_id_derive("dlv_", eid, "erp", 0, did, sizeof did);
    snprintf(want, sizeof want,
             "[{\"rule\":\"rules/10-a.lua:3\",\"on\":\"tracking.*\",\"sent\":["
             "{\"endpoint\":\"erp\",\"delivery\":\"%s\"},"
             "{\"endpoint\":\"wms\",\"window_start\":1795017810000}]},"
             "{\"rule\":\"rules/20-b.lua:7\",\"on\":\"*\",\"sent\":[],\"failed\":true}]",
             did);
    CHECK_INT_EQ(store_sqlite_event_get(s, eid, &row, err, sizeof err), 1);
    CHECK_STR_EQ(row ? row->matched_json : NULL, want);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE id = ?", did), 1);
    store_event_rows_free(row, row ? 1 : 0);
    row = NULL;
    /* a replay that matched nothing records [] (its plan's, not the first) */
    CHECK_INT_EQ(store_sqlite_event_routed(s, eid, &none, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_event_get(s, eid, &row, err, sizeof err), 1);
    CHECK_STR_EQ(row ? row->matched_json : NULL, "[]");
    store_event_rows_free(row, row ? 1 : 0);
    store_sqlite_free(s);
    /* a newer store is refused, not opened */
    CHECK_INT_EQ(sqlite3_open(dbpath, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db, "PRAGMA user_version = 7", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    /* through store.h: the message is the one its caller shows */
    refused = store_open(base, "sqlite:v5matched.db", dir, err, sizeof err);
    CHECK(refused == NULL);
    CHECK(strstr(err, "schema version 7, this waybill knows 6") != NULL);
    store_free(refused);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* The backlog max_backlog bounds is a counter: pending + held as of the
 * last commit plus the open group's inserts, and it follows deliveries
 * that leave the backlog once their group commits. */
static void test_backlog_counter(struct store_sq *s) {
    char err[256] = "";
    struct store_counts c;
    struct store_event ev = mk_event("evt_BACKLOG", "src-backlog");
    struct store_delivery_new dn = {.endpoint = "backlog-ep",
                                    .event_type = "tracking.delivered",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .content_type = "application/json",
                                    .status = "pending",
                                    .next_at = util_now_ms() - 1};
    struct store_plan plan = {.status = "routed", .deliveries = &dn, .ndeliveries = 1};
    struct store_delivery *d = NULL;
    size_t n = 0;
    int64_t base_backlog;

    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    base_backlog = store_sqlite_backlog(s);
    CHECK_INT_EQ(base_backlog, c.pending + c.held);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, &plan, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_backlog(s), base_backlog + 1); /* the open group's insert */
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_backlog(s), base_backlog + 1);
    CHECK_INT_EQ(store_sqlite_endpoint_claim_due(s, "backlog-ep", util_now_ms(), 60000, 10, &d, &n,
                                                 err, sizeof err),
                 0);
    CHECK_INT_EQ((int)n, 1);
    if (n == 1) {
        struct store_attempt a = {.n = 1, .at = util_now_ms(), .status_code = 200};
        CHECK_INT_EQ(store_sqlite_attempt_put(s, d[0].id, &a, "delivered", 0, 0, err, sizeof err),
                     0);
    }
    store_deliveries_free(d, n);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_backlog(s), base_backlog);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(store_sqlite_backlog(s), c.pending + c.held);
}

/* Inserted deliveries are counted per group: visible to counts in the open
 * group, written to delivery_counts with its COMMIT, gone with a rollback;
 * the table agrees with count(*) from a fresh connection. */
static long long counts_row(const char *status) {
    return fresh_count("SELECT IFNULL((SELECT n FROM delivery_counts WHERE status = ?), 0)",
                       status);
}

static void test_counts_per_group(struct store_sq *s) {
    char err[256] = "";
    struct store_event ev = mk_event("evt_COUNTS", "src-counts");
    struct store_delivery_new dn[3] = {
        {.endpoint = "erp",
         .event_type = "t",
         .payload = "{}",
         .payload_len = 2,
         .status = "held",
         .next_at = util_now_ms() + 3600000},
        {.endpoint = "erp",
         .event_type = "t",
         .payload = "{}",
         .payload_len = 2,
         .status = "held",
         .next_at = util_now_ms() + 3600000},
        {.endpoint = NULL,
         .event_type = "t",
         .payload = "{}",
         .payload_len = 2,
         .status = "held",
         .next_at = util_now_ms() + 3600000},
    };
    struct store_counts before, c;
    long long held_rows = fresh_count("SELECT count(*) FROM deliveries WHERE status = ?", "held");

    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &before), 0);
    CHECK_INT_EQ(counts_row("held"), held_rows);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(routed(s, "evt_COUNTS", "routed", NULL, dn, 2, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, before.held);           /* the admin's counts: committed only */
    CHECK_INT_EQ(counts_row("held"), held_rows); /* not committed yet */
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, before.held + 2);
    CHECK_INT_EQ(counts_row("held"), held_rows + 2);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE status = ?", "held"),
                 held_rows + 2);
    /* A group that fails after inserting counts nothing. */
    CHECK_INT_EQ(routed(s, "evt_COUNTS", "routed", NULL, dn, 3, err, sizeof err), -1);
    CHECK_INT_EQ(commit(s), 0);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, before.held + 2);
    CHECK_INT_EQ(counts_row("held"), held_rows + 2);
}

/* A version-1 store (inserts counted by a trigger, one global due index)
 * is migrated at open: the trigger goes, inserts are not counted twice, the
 * due index is per endpoint, and the version is 4, which older binaries
 * refuse rather than miscount or claim by a scan. */
static void test_counts_trigger_dropped(void) {
    char saved[256], err[256] = "";
    sqlite3 *db = NULL;
    struct store_sq *s;
    struct store_event ev = mk_event("evt_OLDTRIG", "src-oldtrig");
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "t",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .status = "pending",
                                    .next_at = util_now_ms() + 3600000};
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/oldtrig.db", dir);
    s = open_engine("sqlite:oldtrig.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    store_sqlite_free(s);
    CHECK_INT_EQ(sqlite3_open(dbpath, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db,
                              "CREATE TRIGGER deliveries_count_ins AFTER INSERT ON deliveries BEGIN"
                              " INSERT INTO delivery_counts(status, n) VALUES (new.status, 1)"
                              "  ON CONFLICT(status) DO UPDATE SET n = n + 1; END;"
                              /* and the global due index versions 1 and 2 had */
                              "DROP INDEX deliveries_ep_due;"
                              "CREATE INDEX deliveries_due ON deliveries(next_at)"
                              " WHERE status = 'pending';"
                              "PRAGMA user_version = 1",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    s = open_engine("sqlite:oldtrig.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(routed(s, "evt_OLDTRIG", "routed", NULL, &dn, 1, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(counts_row("pending"), 1);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM sqlite_master WHERE name = ?", "deliveries_count_ins"),
        0);
    CHECK_INT_EQ(fresh_count("PRAGMA user_version", NULL), 6); /* migrated */
    /* 2 -> 3: due rows are found per endpoint */
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM sqlite_master WHERE name = ?", "deliveries_due"),
                 0);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM sqlite_master WHERE name = ?", "deliveries_ep_due"), 1);
    store_sqlite_free(s);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* 3 -> 4: a store without events.shipment gains it; its events keep
 * routing (shipment NULL), a new event's shipment reads back, and the
 * unrouted list (recovery) carries it. */
static void test_shipment_column_added(void) {
    char saved[256], err[256] = "";
    sqlite3 *db = NULL;
    struct store_sq *s;
    struct store_event ev = mk_event("evt_V4NEW", "src-v4new");
    struct store_event_row *row = NULL, *rows = NULL;
    size_t n = 0;

    ev.shipment_json = "{\"status\":\"delivered\",\"tracking_number\":\"1Z999\"}";
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/v3.db", dir);
    s = open_engine("sqlite:v3.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    store_sqlite_free(s);
    CHECK_INT_EQ(sqlite3_open(dbpath, &db), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(db,
                              "ALTER TABLE events DROP COLUMN shipment;"
                              "INSERT INTO events(id, source, source_id, type, status, created_at,"
                              " received_at, headers, data, raw) VALUES ('evt_V3OLD', 'atoship',"
                              " 'src-v3old', 'tracking.delivered', 'received', NULL, 1, '{}', '{}',"
                              " '{}');"
                              "PRAGMA user_version = 3",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM pragma_table_info('events') WHERE name = ?", "shipment"),
        0);
    s = open_engine("sqlite:v3.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    CHECK_INT_EQ(fresh_count("PRAGMA user_version", NULL), 6);
    CHECK_INT_EQ(
        fresh_count("SELECT count(*) FROM pragma_table_info('events') WHERE name = ?", "shipment"),
        1);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_event_get(s, "evt_V3OLD", &row, err, sizeof err), 1);
    CHECK(row && row->shipment_json == NULL);
    store_event_rows_free(row, row ? 1 : 0);
    row = NULL;
    CHECK_INT_EQ(store_sqlite_event_get(s, "evt_V4NEW", &row, err, sizeof err), 1);
    CHECK_STR_EQ(row ? row->shipment_json : NULL, ev.shipment_json);
    store_event_rows_free(row, row ? 1 : 0);
    CHECK_INT_EQ(store_sqlite_events_unrouted(s, 0, 10, &rows, &n, err, sizeof err), 0);
    CHECK_INT_EQ(n, 2);
    CHECK(n == 2 && rows[0].shipment_json == NULL);
    CHECK_STR_EQ(n == 2 ? rows[1].shipment_json : NULL, ev.shipment_json);
    store_event_rows_free(rows, n);
    store_sqlite_free(s);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* A write whose BEGIN failed (another process held the lock) registered a
 * callback for its outcome afterwards; a later write of the same turn must
 * not start the group afresh and tell that callback ok=1. */
static void test_failed_begin_keeps_outcome(struct store_sq *s) {
    char err[256];
    struct store_event a = mk_event("evt_BEGIN_A", "begin-a");
    struct store_event b = mk_event("evt_BEGIN_B", "begin-b");
    struct commit_rec r = {0, 0, 0};
    sqlite3 *other = NULL;
    CHECK_INT_EQ(store_sqlite_event_put(s, &a, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_event_put(s, &b, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(sqlite3_open(dbpath, &other), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT_EQ(routed(s, a.id, "unrouted", NULL, NULL, 0, err, sizeof err), -1);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &r), 0);
    sqlite3_exec(other, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(other);
    /* the lock is gone: this write fails with the group, it does not reset it */
    CHECK_INT_EQ(routed(s, b.id, "unrouted", NULL, NULL, 0, err, sizeof err), -1);
    run_until(&r);
    CHECK_INT_EQ(r.called, 1);
    CHECK_INT_EQ(r.ok, 0);
    /* the next group works and records both */
    CHECK_INT_EQ(routed(s, a.id, "unrouted", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(routed(s, b.id, "unrouted", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id LIKE 'evt_BEGIN_%' AND"
                             " status = ?",
                             "unrouted"),
                 2);
}

/* A callback registered before any write (the delivery engine's watch, at
 * start) does not pin a group whose BEGIN failed: a carrier's retry once
 * the lock is gone, even in the same loop turn, starts a new group, and the
 * early callback gets that group's outcome. */
static void test_failed_begin_with_an_earlier_callback_starts_afresh(struct store_sq *s) {
    char err[256];
    struct store_event a = mk_event("evt_BEGIN_EARLY", "begin-early");
    struct commit_rec r = {0, 0, 0};
    sqlite3 *other = NULL;

    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit, &r), 0); /* no write yet */
    CHECK_INT_EQ(sqlite3_open(dbpath, &other), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT_EQ(store_sqlite_event_put(s, &a, NULL, NULL, 0, err, sizeof err), -1);
    CHECK(strstr(err, "locked") != NULL);
    sqlite3_exec(other, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(other);
    /* the retry, before the loop ran the failed group's end */
    CHECK_INT_EQ(store_sqlite_event_put(s, &a, NULL, NULL, 0, err, sizeof err), 0);
    run_until(&r);
    CHECK_INT_EQ(r.called, 1);
    CHECK_INT_EQ(r.ok, 1);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_BEGIN_EARLY"), 1);
}

/* A commit callback (run once its group is durable) that writes and
 * registers another: that one belongs to the next group, so it runs once its
 * own write is committed and synced, and recovery does not list the event
 * before. */
struct commit_chain {
    struct store_sq *s;
    struct commit_rec durable;
    long long visible;
    int listed;
};

static void on_chain_durable(void *arg, int ok) {
    struct commit_chain *w = arg;
    struct store_event_row *rows = NULL;
    size_t n = 0, i;
    char err[256];
    on_commit(&w->durable, ok);
    w->visible = fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_WCHAIN_NEW");
    if (store_sqlite_events_unrouted(w->s, 0, 1000, &rows, &n, err, sizeof err) == 0) {
        for (i = 0; i < n; i++)
            w->listed += strcmp(rows[i].id, "evt_WCHAIN_NEW") == 0;
        store_event_rows_free(rows, n);
    }
}

static void on_chain_first(void *arg, int ok) {
    struct commit_chain *w = arg;
    struct store_event ev = mk_event("evt_WCHAIN_NEW", "wchain-new");
    char err[256];
    UNUSED(ok);
    CHECK_INT_EQ(store_sqlite_event_put(w->s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_on_commit(w->s, on_chain_durable, w), 0);
}

static void test_commit_callback_writes(struct store_sq *s) {
    struct commit_chain w = {s, {0, 0, 0}, -1, -1};
    struct store_event ev = mk_event("evt_WCHAIN_OLD", "wchain-old");
    char err[256];
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(store_sqlite_on_commit(s, on_chain_first, &w), 0);
    w.listed = 0;
    run_until(&w.durable);
    CHECK_INT_EQ(w.durable.called, 1);
    CHECK_INT_EQ(w.durable.ok, 1);
    CHECK_INT_EQ((int)w.visible, 1); /* committed when told so */
    CHECK_INT_EQ(w.listed, 1);       /* durable: recovery may see it now */
    CHECK_INT_EQ(routed(s, "evt_WCHAIN_NEW", "unrouted", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(routed(s, "evt_WCHAIN_OLD", "unrouted", NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
}

/* How many of this process's fds are open on path. */
static int fds_open_on(const char *path) {
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    char link[300], target[300];
    ssize_t len;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strcmp(target, path) == 0;
    }
    closedir(d);
    return n;
}

/* A database reached through a symlink: SQLite keeps the WAL beside the
 * real file, and that is the file the sync thread must sync; a stale -wal
 * beside the link must not be taken for it. */
static void test_symlinked_store(void) {
    char saved[256], real_dir[128], target[160], link[160], stale[200], url[200];
    struct store_sq *s;
    FILE *f;
    struct store_event ev = mk_event("evt_SYMLINK", "symlink-1");
    char err[256];
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(real_dir, sizeof real_dir, "%s/real", dir);
    CHECK_INT_EQ(mkdir(real_dir, 0700), 0);
    snprintf(target, sizeof target, "%s/w.db", real_dir);
    snprintf(link, sizeof link, "%s/link.db", dir);
    f = fopen(target, "w");
    if (f)
        fclose(f);
    CHECK_INT_EQ(symlink(target, link), 0);
    snprintf(stale, sizeof stale, "%s-wal", link);
    f = fopen(stale, "w"); /* a stale WAL name beside the link */
    if (f)
        fclose(f);
    snprintf(url, sizeof url, "sqlite:%s", link);
    s = open_engine(url);
    CHECK(s != NULL);
    if (!s)
        goto done;
    snprintf(dbpath, sizeof dbpath, "%s", target);
    CHECK_INT_EQ(fds_open_on(stale), 0); /* nothing syncs the stale name */
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_SYMLINK"), 1);
    store_sqlite_free(s);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* The first text column of sql's first row on a fresh connection ("" if none). */
static void fresh_text(const char *sql, const char *arg, char *out, size_t cap) {
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (arg)
            sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
            snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* An event's first routing derives its delivery ids from the event, so the
 * routing a power cut took back (here: a rolled-back group) gives the same
 * ids when done again; a replay's deliveries get new ids. */
static void test_first_routing_ids(struct store_sq *s) {
    char err[256] = "", want_erp[UTIL_ID_MAX], want_crm[UTIL_ID_MAX], got[64];
    const char *eid = "evt_01jdzq8m6qfirstrouting000";
    struct store_event ev = mk_event(eid, "src-first-routing");
    struct store_delivery_new dn[3] = {
        {.endpoint = "erp",
         .event_type = "t",
         .payload = "{}",
         .payload_len = 2,
         .status = "held",
         .next_at = util_now_ms() + 3600000},
        {.endpoint = "crm",
         .event_type = "t",
         .payload = "{}",
         .payload_len = 2,
         .status = "held",
         .next_at = util_now_ms() + 3600000},
        {.endpoint = NULL,
         .event_type = "t",
         .payload = "{}",
         .payload_len = 2,
         .status = "held",
         .next_at = util_now_ms() + 3600000},
    };
    util_id_derive("dlv_", eid, "erp", 0, want_erp, sizeof want_erp);
    util_id_derive("dlv_", eid, "crm", 1, want_crm, sizeof want_crm);
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    /* first try rolled back */
    CHECK_INT_EQ(routed(s, eid, "routed", NULL, dn, 3, err, sizeof err), -1);
    CHECK_INT_EQ(commit(s), 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE event_id = ?", eid), 0);
    /* routed again: the same ids */
    CHECK_INT_EQ(routed(s, eid, "routed", NULL, dn, 2, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    fresh_text("SELECT id FROM deliveries WHERE event_id = ? AND endpoint = 'erp'", eid, got,
               sizeof got);
    CHECK_STR_EQ(got, want_erp);
    fresh_text("SELECT id FROM deliveries WHERE event_id = ? AND endpoint = 'crm'", eid, got,
               sizeof got);
    CHECK_STR_EQ(got, want_crm);
    /* a replay sends anew */
    CHECK_INT_EQ(routed(s, eid, "routed", NULL, dn, 1, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE event_id = ?", eid), 3);
    fresh_text(
        "SELECT id FROM deliveries WHERE event_id = ? AND endpoint = 'erp' ORDER BY seq DESC", eid,
        got, sizeof got);
    CHECK(strncmp(got, "dlv_", 4) == 0);
    CHECK(strcmp(got, want_erp) != 0);
}

/* A delivery inserted and moved to another status in the same group, in a
 * fresh store (no committed row of either status yet): counts stay exact,
 * in the open group and after COMMIT. */
static void test_counts_insert_then_move(void) {
    char saved[256], err[256] = "";
    struct store_sq *s;
    struct store_event ev = mk_event("evt_DRIFT", "src-drift");
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "t",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .status = "held",
                                    .next_at = util_now_ms() + 3600000};
    struct store_counts c;
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/drift.db", dir);
    s = open_engine("sqlite:drift.db");
    CHECK(s != NULL);
    if (!s)
        goto done;
    CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(routed(s, "evt_DRIFT", "routed", NULL, &dn, 1, err, sizeof err), 0);
    /* enabling erp releases its held delivery, in the same group */
    CHECK_INT_EQ(
        store_sqlite_endpoint_set_disabled(s, "erp", 0, NULL, util_now_ms(), NULL, err, sizeof err),
        0);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, 0);
    CHECK_INT_EQ(c.pending, 0); /* committed only: the open group is not shown */
    CHECK_INT_EQ(commit(s), 1);
    CHECK_INT_EQ(store_sqlite_delivery_counts(s, &c), 0);
    CHECK_INT_EQ(c.held, 0);
    CHECK_INT_EQ(c.pending, 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE status = ?", "pending"), 1);
    store_sqlite_free(s);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* ---- durability off the loop, under load that never pauses ---- */

/* A writer event puts 4 events of 64 KiB every millisecond, so a group is
 * always open while the previous one is being synced (the loop is never
 * idle between commits); each tick registers a callback numbered in order. */
struct pump {
    struct store_sq *s;
    struct event *tick;
    int ticks, max_ticks, called, ok_all, in_order, last;
    long long max_wal;
    char *blob;
};

static struct pump *pump_now; /* the running pump: arg carries the tick number */

static void on_pump_commit(void *arg, int ok) {
    int n = (int)(intptr_t)arg;
    pump_now->called++;
    if (!ok)
        pump_now->ok_all = 0;
    if (n != pump_now->last + 1)
        pump_now->in_order = 0;
    pump_now->last = n;
}

static void on_pump_tick(evutil_socket_t fd, short what, void *arg) {
    struct pump *p = arg;
    char id[64], sid[64], err[256] = "", wal[300];
    struct stat stw;
    int i;
    UNUSED(fd);
    UNUSED(what);
    /* At most 8 ticks waiting: a slow sync (valgrind, a loaded machine) must
     * not turn the load into a few huge groups. */
    if (p->ticks - p->called >= 8)
        return;
    for (i = 0; i < 4; i++) {
        struct store_event ev = mk_event(NULL, NULL);
        snprintf(id, sizeof id, "evt_P%d_%d", p->ticks, i);
        snprintf(sid, sizeof sid, "pump-%d-%d", p->ticks, i);
        ev.id = id;
        ev.source_id = sid;
        ev.raw = p->blob;
        ev.raw_len = 65536;
        if (store_sqlite_event_put(p->s, &ev, NULL, NULL, 0, err, sizeof err) != 0)
            p->ok_all = 0;
    }
    p->ticks++;
    if (store_sqlite_on_commit(p->s, on_pump_commit, (void *)(intptr_t)p->ticks) != 0)
        p->ok_all = 0;
    snprintf(wal, sizeof wal, "%s-wal", dbpath);
    if (stat(wal, &stw) == 0 && stw.st_size > p->max_wal)
        p->max_wal = stw.st_size;
    if (p->ticks == p->max_ticks)
        event_del(p->tick);
}

static void test_wal_restarts_under_load(void) {
    static const struct timeval ms = {0, 1000};
    struct pump p = {0};
    char saved[256];
    int i;
    snprintf(saved, sizeof saved, "%s", dbpath);
    snprintf(dbpath, sizeof dbpath, "%s/load.db", dir);
    p.s = open_engine("sqlite:load.db");
    CHECK(p.s != NULL);
    if (!p.s)
        goto done;
    p.blob = malloc(65536);
    memset(p.blob, 'x', 65536);
    /* 640 ticks x 256 KiB = 160 MiB through the WAL, 2.5x its restart size. */
    p.max_ticks = 640;
    p.ok_all = p.in_order = 1;
    pump_now = &p;
    p.tick = event_new(base, -1, EV_PERSIST, on_pump_tick, &p);
    event_add(p.tick, &ms);
    for (i = 0; i < 200000 && p.called < p.max_ticks; i++)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(p.tick);
    CHECK_INT_EQ(p.called, p.max_ticks);
    CHECK(p.ok_all);
    CHECK(p.in_order);
    /* The WAL started over instead of growing with the load: it never held
     * the 160 MiB written (restart size 64 MiB, plus what arrives while the
     * tail is copied). */
    CHECK(p.max_wal > 0);
    CHECK(p.max_wal < 100LL * 1024 * 1024);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events", NULL), 4LL * p.max_ticks);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE length(raw) = 65536", NULL),
                 4LL * p.max_ticks);
    store_sqlite_free(p.s);
    free(p.blob);
done:
    snprintf(dbpath, sizeof dbpath, "%s", saved);
}

/* The events page's type filter means what util_glob_match means: '*' is
 * any run, and SQLite GLOB's own '?' and '[...]' are themselves. */
static void test_type_filter_glob(struct store_sq *s) {
    static const char *const types[] = {"glob.a?c", "glob.abc", "glob.[x]", "glob.x"};
    struct store_event_row *rows = NULL;
    struct store_page q = {.limit = 10};
    char err[256], id[32], sid[32];
    size_t n = 0;
    int64_t next = 0;

    for (size_t i = 0; i < 4; i++) {
        struct store_event ev;
        snprintf(id, sizeof id, "evt_GLOB%zu", i);
        snprintf(sid, sizeof sid, "glob-%zu", i);
        ev = mk_event(id, sid);
        ev.type = types[i];
        CHECK_INT_EQ(store_sqlite_event_put(s, &ev, NULL, NULL, 0, err, sizeof err), 0);
    }
    CHECK_INT_EQ(commit(s), 1);
    q.type = "glob.a?c";
    CHECK_INT_EQ(store_sqlite_events_page(s, &q, &rows, &n, &next, err, sizeof err), 0);
    CHECK_INT_EQ(n, 1);
    CHECK(n == 1 && strcmp(rows[0].type, "glob.a?c") == 0);
    store_event_rows_free(rows, n);
    q.type = "glob.[x]";
    CHECK_INT_EQ(store_sqlite_events_page(s, &q, &rows, &n, &next, err, sizeof err), 0);
    CHECK_INT_EQ(n, 1);
    CHECK(n == 1 && strcmp(rows[0].type, "glob.[x]") == 0);
    store_event_rows_free(rows, n);
    q.type = "glob.*";
    CHECK_INT_EQ(store_sqlite_events_page(s, &q, &rows, &n, &next, err, sizeof err), 0);
    CHECK_INT_EQ(n, 4);
    store_event_rows_free(rows, n);
}

int main(void) {
    struct store_sq *s;
    struct store *front;
    char cwd_db[128];

    snprintf(dir, sizeof dir, "/tmp/waybill-store-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(dbpath, sizeof dbpath, "%s/store.db", dir);
    base = event_base_new();
    event_base_priority_init(base, 3);

    test_open_errors();
    s = open_engine("sqlite:store.db");
    CHECK(s != NULL);
    if (!s)
        return harness_report();
    CHECK(access(dbpath, F_OK) == 0); /* relative to base_dir */
    test_put_commit_dup(s);
    test_on_commit_order_and_empty(s);
    test_priority(s);
    test_reentrant(s);
    test_route_claim_attempt(s);
    test_claim_waits_for_commit(s);
    test_nonces(s);
    test_group_failure(s);
    test_locked(s);
    s = test_crash_release(s);
    test_endpoint_state(s);
    test_query_plans();
    test_batch_windows(s);
    test_unrouted_skips_open_group(s);
    test_committed_before_durable(s);
    test_event_with_plan(s);
    test_backlog_counter(s);
    test_order_keys(s);
    test_counts_per_group(s);
    test_failed_begin_keeps_outcome(s);
    test_failed_begin_with_an_earlier_callback_starts_afresh(s);
    test_commit_callback_writes(s);
    test_first_routing_ids(s);
    test_type_filter_glob(s);
    test_admin_reads_committed_only(s);
    store_sqlite_free(s);
    /* the asynchronous calls, through store.h, on a store of their own */
    front = open_front("sqlite:async.db");
    CHECK(front != NULL);
    if (front) {
        test_async_reads(front);
        test_async_claims(front);
        store_free(front);
    }
#ifdef WAYBILL_CHECKS
    test_reply_delay();
#endif
    test_symlinked_store();
    test_counts_insert_then_move();
    test_counts_trigger_dropped();
    test_shipment_column_added();
    test_migrate_v4_order_keys();
    test_migrate_v5_matched();
    test_seqs_monotonic_after_prune();
    test_prune_keeps_and_batches();
    test_wal_restarts_under_load();
    store_free(NULL);

    /* An absolute path ignores base_dir. */
    snprintf(cwd_db, sizeof cwd_db, "sqlite:%s/abs.db?sync=full", dir);
    s = open_engine(cwd_db);
    CHECK(s != NULL);
    if (s) {
        /* store_sqlite_free drains callbacks that write and register more. */
        struct chain c = {s, {0, 0, 0}, -1, -1};
        CHECK_INT_EQ(store_sqlite_on_commit(s, on_commit_chain, &c), 0);
        store_sqlite_free(s);
        CHECK_INT_EQ(c.first_ok, 1);
        CHECK_INT_EQ(c.second.called, 1);
        CHECK_INT_EQ(c.second.ok, 1);
        snprintf(dbpath, sizeof dbpath, "%s/abs.db", dir);
        CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_CHAIN"), 1);
    }

    event_base_free(base);
    libevent_global_shutdown();
    {
        char cmd[160];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup of %s failed\n", dir);
    }
    return harness_report();
}
