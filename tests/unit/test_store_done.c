/* test_store_done.c -- store.h's asynchronous write results (store_*_done,
 * and the loop's store_get_* reads), whatever engine answers them: every
 * call answers from the loop, never inside the call; the value is the one
 * store.h documents for it (struct store_done); a write's ok is 0 when it
 * failed or its group did; a read answers whatever the group does; a
 * failed write does not pin a group whose BEGIN failed.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

#include "fixture.h"
#include "harness.h"
#include "store.h"
#include "util.h"

static struct event_base *base;
static char dir[64], dbpath[256];

/* ---- helpers ---- */

/* What one callback was handed (copied: d lives for the call only). */
struct rec {
    int calls, ok, status;
    char err[256], id[UTIL_ID_MAX];
    int64_t value;
    struct store_prune prune;
    size_t n, nstates;
    char first_id[UTIL_ID_MAX]; /* rows[0].id, or the first state's name */
    int first_disabled;
};

static void on_done(void *arg, const struct store_done *d) {
    struct rec *r = arg;
    r->calls++;
    r->ok = d->ok;
    r->status = d->status;
    snprintf(r->err, sizeof r->err, "%s", d->err ? d->err : "(null)");
    snprintf(r->id, sizeof r->id, "%s", d->id ? d->id : "");
    r->value = d->value;
    if (d->prune)
        r->prune = *d->prune;
    r->n = d->n;
    r->nstates = d->nstates;
    if (d->n)
        snprintf(r->first_id, sizeof r->first_id, "%s", d->rows[0].id);
    if (d->nstates) {
        snprintf(r->first_id, sizeof r->first_id, "%s", d->states[0].name);
        r->first_disabled = d->states[0].disabled;
    }
}

/* Runs the loop until r was answered (at most 100 turns: a turn may wait
 * for the sync thread). */
static void run_until(struct rec *r) {
    for (int i = 0; i < 100 && !r->calls; i++)
        event_base_loop(base, EVLOOP_ONCE);
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
        .headers_json = "{}",
        .data_json = "{\"n\":1}",
    };
    return ev;
}

/* count(*) of sql (one ? bound to arg, if any) on a fresh connection:
 * what is committed. */
static long long fresh_count(const char *sql, const char *arg) {
    return fixture_count(dbpath, sql, arg);
}

/* A write that fails the open group: a delivery without an endpoint. Its
 * own answer goes to r (ok 0: failed_write checks it). */
static void fail_group(struct store *s, const char *event_id, struct rec *r) {
    struct store_delivery_new bad = {
        .endpoint = NULL, .payload = "x", .payload_len = 1, .status = "pending", .next_at = 0};
    struct store_plan plan = {.status = "routed", .deliveries = &bad, .ndeliveries = 1};
    CHECK_INT_EQ(store_event_routed_done(s, event_id, &plan, on_done, r), 0);
}

/* fail_group's write was answered as failed (the synchronous call's -1). */
static void failed_write(struct rec *r) {
    run_until(r);
    CHECK(r->calls == 1 && !r->ok);
}

/* ---- tests ---- */

/* An event: answered after the durable commit with its id; its copy
 * (same source id) with STORE_DUP and the first copy's id. */
static void test_event_put(struct store *s) {
    struct store_event a = mk_event("evt_DA", "done-a"), b = mk_event("evt_DB", "done-a");
    struct rec ra = {0}, rb = {0};

    CHECK_INT_EQ(store_event_put_done(s, &a, NULL, on_done, &ra), 0);
    CHECK_INT_EQ(store_event_put_done(s, &b, NULL, on_done, &rb), 0);
    CHECK_INT_EQ(ra.calls + rb.calls, 0); /* never inside the call */
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_DA"), 0);
    run_until(&rb);
    CHECK_INT_EQ(ra.calls, 1);
    CHECK_INT_EQ(ra.ok, 1);
    CHECK_INT_EQ(ra.status, 0);
    CHECK_STR_EQ(ra.id, "evt_DA");
    CHECK_STR_EQ(ra.err, "");
    CHECK_INT_EQ(rb.calls, 1);
    CHECK_INT_EQ(rb.ok, 1);
    CHECK_INT_EQ(rb.status, STORE_DUP);
    CHECK_STR_EQ(rb.id, "evt_DA");
    /* answered once the group is committed: a fresh connection sees it */
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_DA"), 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_DB"), 0);
}

/* A write made, then its group failed (a later write of the same group):
 * ok 0, and nothing of it stored; the next group is fine. */
static void test_group_fails(struct store *s) {
    struct store_event a = mk_event("evt_DF1", "done-f1"), b = mk_event("evt_DF2", "done-f2");
    struct rec ra = {0}, rb = {0}, rc = {0}, bad = {0};

    CHECK_INT_EQ(store_event_put_done(s, &a, NULL, on_done, &ra), 0);
    fail_group(s, "evt_DF1", &bad);
    CHECK_INT_EQ(store_event_put_done(s, &b, NULL, on_done, &rb), 0); /* fails at once */
    CHECK_INT_EQ(ra.calls + rb.calls, 0);
    run_until(&rb);
    CHECK_INT_EQ(ra.calls, 1);
    CHECK_INT_EQ(ra.ok, 0);
    CHECK(ra.err[0] != '\0');
    CHECK_INT_EQ(rb.calls, 1);
    CHECK_INT_EQ(rb.ok, 0);
    CHECK(strstr(rb.err, "commit group failed") != NULL);
    failed_write(&bad);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_DF1"), 0);
    CHECK_INT_EQ(store_event_put_done(s, &b, NULL, on_done, &rc), 0);
    run_until(&rc);
    CHECK_INT_EQ(rc.ok, 1);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_DF2"), 1);
}

/* Nonces: new, the same body again (a retry), another body (a replay). */
static void test_nonce(struct store *s) {
    int64_t t0 = 1795017818000, day = 86400000;
    struct rec r1 = {0}, r2 = {0}, r3 = {0};

    CHECK_INT_EQ(store_nonce_put_done(s, "shiptify", "tokD", "d1", t0, day, on_done, &r1), 0);
    CHECK_INT_EQ(store_nonce_put_done(s, "shiptify", "tokD", "d1", t0 + 1, day, on_done, &r2), 0);
    CHECK_INT_EQ(store_nonce_put_done(s, "shiptify", "tokD", "d2", t0 + 2, day, on_done, &r3), 0);
    CHECK_INT_EQ(r1.calls + r2.calls + r3.calls, 0);
    run_until(&r3);
    CHECK_INT_EQ(r1.ok && r2.ok && r3.ok, 1);
    CHECK_INT_EQ(r1.status, 0);
    CHECK_INT_EQ(r2.status, STORE_DUP);
    CHECK_INT_EQ(r3.status, STORE_REPLAY);
}

/* A routing of an unknown event is an answer (0), not a failure; of a
 * stored one, 1. Retry and skip: unknown 0, not failed 2. */
static void test_routed_retry_skip(struct store *s) {
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "t",
                                    .payload = "p",
                                    .payload_len = 1,
                                    .content_type = "text/plain",
                                    .status = "pending",
                                    .next_at = 1000};
    struct store_plan plan = {.status = "routed", .deliveries = &dn, .ndeliveries = 1};
    struct rec unknown = {0}, known = {0}, retry_nope = {0}, skip_nope = {0};

    CHECK_INT_EQ(store_event_routed_done(s, "evt_nope", &plan, on_done, &unknown), 0);
    CHECK_INT_EQ(store_event_routed_done(s, "evt_DA", &plan, on_done, &known), 0);
    CHECK_INT_EQ(store_delivery_retry_done(s, "dlv_nope", 1000, on_done, &retry_nope), 0);
    CHECK_INT_EQ(store_delivery_skip_done(s, "dlv_nope", 1000, on_done, &skip_nope), 0);
    CHECK_INT_EQ(unknown.calls + known.calls + retry_nope.calls + skip_nope.calls, 0);
    run_until(&skip_nope);
    CHECK_INT_EQ(unknown.ok, 1);
    CHECK_INT_EQ(unknown.status, 0);
    CHECK_INT_EQ(known.ok, 1);
    CHECK_INT_EQ(known.status, 1);
    CHECK_INT_EQ(retry_nope.ok, 1);
    CHECK_INT_EQ(retry_nope.status, 0);
    CHECK_INT_EQ(skip_nope.ok, 1);
    CHECK_INT_EQ(skip_nope.status, 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM deliveries WHERE event_id = ?", "evt_DA"), 1);
}

/* Subscriptions: a second one for a pattern is STORE_DUP; changes of an
 * unknown id are 0, of a stored one 1. */
static void test_subs(struct store *s) {
    struct store_sub a = {"sub_DA",
                          "track",
                          "tracking.*",
                          "http://127.0.0.1:1/a",
                          "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                          1000};
    struct store_sub a2 = {"sub_DA2",
                           "track",
                           "tracking.*",
                           "http://127.0.0.1:1/b",
                           "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                           1001};
    struct rec put = {0}, dup = {0}, nope = {0}, url = {0}, secret = {0}, gone = {0};

    CHECK_INT_EQ(store_sub_put_done(s, &a, on_done, &put), 0);
    CHECK_INT_EQ(store_sub_put_done(s, &a2, on_done, &dup), 0);
    CHECK_INT_EQ(store_sub_change_done(s, "sub_nope", NULL, on_done, &nope), 0);
    CHECK_INT_EQ(store_sub_change_done(s, "sub_DA", "http://127.0.0.1:2/", on_done, &url), 0);
    CHECK_INT_EQ(store_sub_set_secret_done(s, "sub_DA", "whsec_x", on_done, &secret), 0);
    CHECK_INT_EQ(store_sub_set_secret_done(s, "sub_gone", "whsec_x", on_done, &gone), 0);
    CHECK_INT_EQ(put.calls + dup.calls + nope.calls + url.calls + secret.calls + gone.calls, 0);
    run_until(&gone);
    CHECK_INT_EQ(put.ok && dup.ok && nope.ok && url.ok && secret.ok && gone.ok, 1);
    CHECK_INT_EQ(put.status, 0);
    CHECK_INT_EQ(dup.status, STORE_DUP);
    CHECK_INT_EQ(nope.status, 0);
    CHECK_INT_EQ(url.status, 1);
    CHECK_INT_EQ(secret.status, 1);
    CHECK_INT_EQ(gone.status, 0);
}

/* Endpoint state: the start of the run of failures comes with the
 * attempt's answer; a disable says how many deliveries moved. */
static void test_endpoint_state(struct store *s) {
    int64_t now = util_now_ms();
    struct rec f1 = {0}, f2 = {0}, off = {0}, states = {0}, on = {0}, okr = {0};

    CHECK_INT_EQ(store_endpoint_attempt_done(s, "erp", 0, "HTTP 500", now - 5000, on_done, &f1), 0);
    CHECK_INT_EQ(store_endpoint_attempt_done(s, "erp", 0, "HTTP 502", now, on_done, &f2), 0);
    CHECK_INT_EQ(store_endpoint_set_disabled_done(s, "erp", 1, "test", now, on_done, &off), 0);
    CHECK_INT_EQ(f1.calls + f2.calls + off.calls, 0);
    run_until(&off);
    CHECK_INT_EQ(f1.ok && f2.ok && off.ok, 1);
    CHECK_INT_EQ(f1.value, now - 5000);
    CHECK_INT_EQ(f2.value, now - 5000);
    CHECK_INT_EQ(off.value, 1); /* evt_DA's delivery to erp: pending -> held */
    /* the read: the states as stored */
    CHECK_INT_EQ(store_get_endpoint_states(s, on_done, &states), 0);
    CHECK_INT_EQ(states.calls, 0);
    run_until(&states);
    CHECK_INT_EQ(states.ok, 1);
    CHECK_INT_EQ(states.nstates, 1);
    CHECK_STR_EQ(states.first_id, "erp");
    CHECK_INT_EQ(states.first_disabled, 1);
    CHECK_INT_EQ(store_endpoint_set_disabled_done(s, "erp", 0, NULL, now, on_done, &on), 0);
    CHECK_INT_EQ(store_endpoint_attempt_done(s, "erp", 1, NULL, now, on_done, &okr), 0);
    run_until(&okr);
    run_until(&on); /* durable: after the written answers */
    CHECK_INT_EQ(on.ok && okr.ok, 1);
    CHECK_INT_EQ(on.value, 1);
    CHECK_INT_EQ(okr.value, 0); /* a success ends the run */
}

/* The loop's reads: an event by id (unknown: 0), the unrouted ones; a
 * read's answer stands when the group it waited for fails. */
static void test_reads(struct store *s) {
    struct store_event u = mk_event("evt_DU", "done-u");
    struct rec put = {0}, got = {0}, nope = {0}, unrouted = {0}, failed_put = {0}, bad = {0};

    CHECK_INT_EQ(store_event_put_done(s, &u, NULL, on_done, &put), 0);
    run_until(&put);
    CHECK_INT_EQ(put.ok, 1);
    CHECK_INT_EQ(store_get_event(s, "evt_DU", on_done, &got), 0);
    CHECK_INT_EQ(store_get_event(s, "evt_nope", on_done, &nope), 0);
    CHECK_INT_EQ(store_get_events_unrouted(s, 0, 100, on_done, &unrouted), 0);
    /* the group these answers wait for fails */
    CHECK_INT_EQ(store_event_put_done(s, &u, NULL, on_done, &failed_put), 0);
    fail_group(s, "evt_DU", &bad);
    CHECK_INT_EQ(got.calls + nope.calls + unrouted.calls, 0);
    run_until(&unrouted);
    CHECK_INT_EQ(got.ok, 1);
    CHECK_INT_EQ(got.status, 1);
    CHECK_INT_EQ(got.n, 1);
    CHECK_STR_EQ(got.first_id, "evt_DU");
    CHECK_INT_EQ(nope.ok, 1);
    CHECK_INT_EQ(nope.status, 0);
    CHECK_INT_EQ(nope.n, 0);
    CHECK_INT_EQ(unrouted.ok, 1);
    CHECK(unrouted.n >= 1); /* evt_DU and the other "received" events */
    CHECK_INT_EQ(failed_put.calls, 1);
    CHECK_INT_EQ(failed_put.ok, 0);
    failed_write(&bad);
}

/* Retention: the pass's out fields come with the answer. */
static void test_prune(struct store *s) {
    struct store_prune p = {.before_ms = 0, .upto = INT64_MAX, .cursor = 0, .max = 10};
    struct rec r = {0}, rc = {0};

    CHECK_INT_EQ(store_prune_done(s, &p, on_done, &r), 0);
    CHECK_INT_EQ(store_reclaim_done(s, 1024, 64, on_done, &rc), 0);
    CHECK_INT_EQ(r.calls + rc.calls, 0);
    CHECK_INT_EQ(p.cursor, 0); /* p is read, not written */
    run_until(&rc);
    CHECK_INT_EQ(r.ok, 1);
    CHECK_INT_EQ(r.prune.pruned, 0); /* nothing received before 0 */
    CHECK_INT_EQ(r.prune.done, 1);
    CHECK_INT_EQ(rc.ok, 1);
    CHECK_INT_EQ(rc.value, 0);
}

/* Another process holds the write lock: the write's BEGIN fails and its
 * answer is ok 0; a retry in the same loop turn, once the lock is gone,
 * starts a new group (the failed answer does not pin the failed one). */
static void test_failed_begin_retry(struct store *s) {
    struct store_event a = mk_event("evt_DL", "done-lock");
    struct rec r1 = {0}, r2 = {0};
    sqlite3 *other = NULL;

    CHECK_INT_EQ(sqlite3_open(dbpath, &other), SQLITE_OK);
    CHECK_INT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    CHECK_INT_EQ(store_event_put_done(s, &a, NULL, on_done, &r1), 0);
    sqlite3_exec(other, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(other);
    CHECK_INT_EQ(store_event_put_done(s, &a, NULL, on_done, &r2), 0);
    run_until(&r2);
    CHECK_INT_EQ(r1.calls, 1);
    CHECK_INT_EQ(r1.ok, 0);
    CHECK(strstr(r1.err, "locked") != NULL);
    CHECK_INT_EQ(r2.calls, 1);
    CHECK_INT_EQ(r2.ok, 1);
    CHECK_INT_EQ(r2.status, 0);
    CHECK_INT_EQ(fresh_count("SELECT count(*) FROM events WHERE id = ?", "evt_DL"), 1);
}

/* A loop that is never idle: a timer at the default priority re-armed for
 * the next turn, every turn, for 2 s (as deliveries draining a backlog at
 * full speed keep the loop busy). The group's end and its COMMIT run at the
 * lowest priority, after everything else of a turn: they must not wait for
 * that to stop. A write made meanwhile is answered within a second. */
struct busy {
    struct event *ev;
    int64_t until;
    int turns;
};

static void busy_cb(evutil_socket_t fd, short what, void *arg) {
    static const struct timeval zero = {0, 0};
    struct busy *b = arg;
    UNUSED(fd);
    UNUSED(what);
    b->turns++;
    if (util_mono_ms() < b->until)
        event_add(b->ev, &zero);
}

static void test_busy_loop_commits(struct store *s) {
    static const struct timeval zero = {0, 0};
    struct store_event a = mk_event("evt_DBUSY", "done-busy");
    struct busy b = {NULL, util_mono_ms() + 2000, 0};
    struct rec r = {0};
    int64_t t0;

    b.ev = evtimer_new(base, busy_cb, &b);
    CHECK(b.ev != NULL);
    if (!b.ev)
        return;
    event_add(b.ev, &zero);
    event_base_loop(base, EVLOOP_ONCE); /* the loop is busy from now on */
    t0 = util_mono_ms();
    CHECK_INT_EQ(store_event_put_done(s, &a, NULL, on_done, &r), 0);
    while (!r.calls && util_mono_ms() < b.until)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_INT_EQ(r.calls, 1);
    CHECK_INT_EQ(r.ok, 1);
    CHECK(util_mono_ms() - t0 < 1000);
    CHECK(util_mono_ms() < b.until); /* answered while the loop was still busy */
    while (util_mono_ms() < b.until)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(b.ev);
    CHECK(b.turns > 100);
}

/* A shutdown's flush answers whatever still waits. */
static void test_flush_answers(struct store *s) {
    struct store_event a = mk_event("evt_DZ", "done-z");
    struct rec r = {0}, g = {0};

    CHECK_INT_EQ(store_event_put_done(s, &a, NULL, on_done, &r), 0);
    CHECK_INT_EQ(store_get_event(s, "evt_DZ", on_done, &g), 0);
    CHECK_INT_EQ(store_flush(s), 0);
    CHECK_INT_EQ(r.calls, 1);
    CHECK_INT_EQ(r.ok, 1);
    CHECK_INT_EQ(g.calls, 1);
    CHECK_INT_EQ(g.status, 1);
}

int main(void) {
    struct store *s;
    char err[256] = "", cmd[128];

    snprintf(dir, sizeof dir, "/tmp/waybill-store-done-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(dbpath, sizeof dbpath, "%s/done.db", dir);
    base = event_base_new();
    event_base_priority_init(base, 3);
    s = store_open(base, "sqlite:done.db", dir, err, sizeof err);
    CHECK(s != NULL);
    if (!s) {
        fprintf(stderr, "store_open: %s\n", err);
        return harness_report();
    }
    test_event_put(s);
    test_group_fails(s);
    test_nonce(s);
    test_routed_retry_skip(s);
    test_subs(s);
    test_endpoint_state(s);
    test_reads(s);
    test_prune(s);
    test_failed_begin_retry(s);
    test_busy_loop_commits(s);
    test_flush_answers(s);
    store_free(s);
    event_base_free(base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return harness_report();
}
