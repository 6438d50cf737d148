/* test_batch.c -- batch.c: window alignment (30 min and 5 min windows,
 * negative and edge times), and batches through a real store on a
 * temporary folder with a real generation of rules: items collect per
 * (endpoint, window length, window start); max_batch closes a window at
 * once; the timer closes one at its end; a disabled or removed endpoint's
 * batch is held; a new batcher closes what a previous run left open.
 * SPDX-License-Identifier: MIT */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "batch.h"
#include "deliver.h"
#include "health.h"
#include "housekeep.h"
#include "httpc.h"
#include "fixture.h"
#include "harness.h"
#include "log.h"
#include "rules.h"
#include "store.h"
#include "store_wait.h"
#include "util.h"

#define MIN_MS (60 * 1000LL)
#define T0 1767225600000LL /* 2026-01-01T00:00:00Z, a multiple of every window here */

/* ---- window alignment ---- */

static void test_window_start(void) {
    const int64_t w30 = 30 * MIN_MS, w5 = 5 * MIN_MS;
    int ok = 1;

    CHECK_INT_EQ(batch_window_start(0, w30), 0);
    CHECK_INT_EQ(batch_window_start(1, w30), 0);
    CHECK_INT_EQ(batch_window_start(w30 - 1, w30), 0);
    CHECK_INT_EQ(batch_window_start(w30, w30), w30);
    CHECK_INT_EQ(batch_window_start(T0, w30), T0);
    CHECK_INT_EQ(batch_window_start(T0 + 29 * MIN_MS + 59999, w30), T0);
    CHECK_INT_EQ(batch_window_start(T0 + 30 * MIN_MS, w30), T0 + 30 * MIN_MS);
    CHECK_INT_EQ(batch_window_start(T0 + 7 * MIN_MS + 123, w5), T0 + 5 * MIN_MS);
    CHECK_INT_EQ(batch_window_start(T0 + 5 * MIN_MS, w5), T0 + 5 * MIN_MS);
    CHECK_INT_EQ(batch_window_start(T0 + 5 * MIN_MS - 1, w5), T0);
    /* clock-aligned in UTC, not to the first item: 00:29 and 00:31 are in
     * different 30-minute windows though 2 minutes apart */
    CHECK(batch_window_start(T0 + 29 * MIN_MS, w30) != batch_window_start(T0 + 31 * MIN_MS, w30));
    /* before 1970: still [k*W, (k+1)*W), rounding down */
    CHECK_INT_EQ(batch_window_start(-1, w30), -w30);
    CHECK_INT_EQ(batch_window_start(-w30, w30), -w30);
    CHECK_INT_EQ(batch_window_start(-w30 - 1, w30), -2 * w30);
    CHECK_INT_EQ(batch_window_start(-1, w5), -w5);
    CHECK_INT_EQ(batch_window_start(-w5 + 1, w5), -w5);
    /* a 1 ms window is every instant */
    CHECK_INT_EQ(batch_window_start(T0 + 7, 1), T0 + 7);
    CHECK_INT_EQ(batch_window_start(-7, 1), -7);
    /* far future */
    CHECK_INT_EQ(batch_window_start(INT64_MAX, 1000), INT64_MAX - INT64_MAX % 1000);

    /* the defining property, over many times and windows */
    for (int64_t now = -3 * w30 - 17; now < 3 * w30; now += 99991) {
        static const int64_t ws[] = {1000, 7000, 5 * MIN_MS, 30 * MIN_MS, 86400000};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            int64_t s = batch_window_start(now, ws[i]);
            ok &= s <= now && now < s + ws[i] && s % ws[i] == 0;
        }
    }
    CHECK(ok);
}

/* ---- a store, a delivery engine and rules on a temporary folder ----
 * The batcher's timer runs on a base of its own (batch_base), which a test
 * runs only where it means the batcher to act (run_until_queued, before
 * batch_start): the store's answers need the store's loop (base) to run,
 * and the windows at T0 are long past, so a timer on that loop would close
 * them at the first wait, before the test looked at them open. */

struct rig {
    char dir[64];
    struct event_base *base, *batch_base;
    struct store *st;
    struct httpc *hc;
    struct health *hl;
    struct deliver *d;
    struct housekeep *hk;
    struct rules *rules;
    struct batch *b;
};

static int rig_open(struct rig *r, const char *config) {
    char err[512], lua_dir[PATH_MAX], path[PATH_MAX];
    struct batch_deps deps;

    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "/tmp/waybill-test-batch-XXXXXX");
    if (!mkdtemp(r->dir) || fixture_lua_dir(lua_dir) < 0 ||
        fixture_write(r->dir, "waybill.lua", config) < 0) {
        fprintf(stderr, "rig: cannot set up %s\n", r->dir);
        return -1;
    }
    snprintf(path, sizeof path, "%s/waybill.lua", r->dir);
    r->base = event_base_new();
    r->batch_base = event_base_new();
    r->rules = rules_load(path, lua_dir, err, sizeof err);
    if (!r->rules) {
        fprintf(stderr, "rig: rules: %s\n", err);
        return -1;
    }
    r->st = store_open(r->base, "sqlite:b.db?sync=normal", r->dir, err, sizeof err);
    if (!r->st) {
        fprintf(stderr, "rig: store: %s\n", err);
        return -1;
    }
    r->hc = httpc_new(r->base, err, sizeof err);
    r->hl = r->hc ? health_new(r->st, err, sizeof err) : NULL;
    r->d = r->hl ? deliver_new(r->base, r->st, r->hc, r->hl, err, sizeof err)
                 : NULL; /* no config: sends nothing */
    if (!r->d) {
        fprintf(stderr, "rig: deliver: %s\n", err);
        return -1;
    }
    deps.base = r->batch_base;
    deps.store = r->st;
    deps.deliver = r->d;
    deps.rules = &r->rules;
    r->b = batch_new(&deps);
    return r->b ? 0 : -1;
}

static void rig_close(struct rig *r) {
    char cmd[128];
    batch_free(r->b);
    deliver_free(r->d);
    housekeep_free(r->hk);
    health_free(r->hl);
    httpc_free(r->hc);
    store_free(r->st);
    rules_free(r->rules);
    if (r->base)
        event_base_free(r->base);
    if (r->batch_base)
        event_base_free(r->batch_base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", r->dir);
    if (r->dir[0] && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", r->dir);
}

static struct store_endpoint_queue queue(struct rig *r, const char *endpoint) {
    struct store_endpoint_queue q;
    CHECK_INT_EQ(wait_endpoint_queue(r->base, r->st, endpoint, INT64_MAX / 2, 1000, 1, &q), 0);
    return q;
}

/* Runs the loop until endpoint has want pending + held deliveries, or
 * timeout_ms pass. Returns the Unix ms it saw them at, or -1. */
static int64_t run_until_queued(struct rig *r, const char *endpoint, int64_t want,
                                int64_t timeout_ms) {
    int64_t deadline = util_mono_ms() + timeout_ms;
    while (util_mono_ms() < deadline) {
        struct store_endpoint_queue q;
        if (wait_endpoint_queue(r->base, r->st, endpoint, INT64_MAX / 2, 1000, 1, &q) == 0 &&
            q.pending + q.held >= want)
            return util_now_ms();
        event_base_loop(r->batch_base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        event_base_loop(r->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(2000);
    }
    return -1;
}

/* The committed, due deliveries of endpoint at now (claimed; new). */
static size_t claim(struct rig *r, const char *endpoint, int64_t now, struct store_delivery **out) {
    size_t n = 0;
    CHECK_INT_EQ(wait_claim_due(r->base, r->st, endpoint, now, 60000, 100, out, &n), 0);
    return n;
}

/* Stores event event_id whose routing batched one payload into ep's window
 * of length window_ms holding now, in one write as routing does; the item's
 * item, with the count the store set (known with the write's answer,
 * which this waits for), goes to *it. Returns 0, or -1 (err set). */
static int store_item(struct rig *r, const char *endpoint, int64_t window_start, int64_t window_ms,
                      const char *event_id, const char *payload, size_t len,
                      struct store_batch_item *it, char *err, size_t errlen) {
    struct store_event ev = {.id = event_id,
                             .source = "test",
                             .source_id = event_id,
                             .type = "tracking.in_transit",
                             .received_at = util_now_ms(),
                             .raw = "{}",
                             .raw_len = 2,
                             .headers_json = "{}",
                             .data_json = "{}"};
    struct store_plan plan = {.status = "routed", .items = it, .nitems = 1};

    *it = (struct store_batch_item){.endpoint = endpoint,
                                    .window_start = window_start,
                                    .window_ms = window_ms,
                                    .payload = payload,
                                    .len = len};
    if (wait_event_put(r->base, r->st, &ev, &plan) != 0) {
        snprintf(err, errlen, "the event with its batch item was not stored");
        return -1;
    }
    return 0;
}

/* As routing does: the event with its batch item, then the batcher told. */
static int add_item(struct rig *r, const struct config_endpoint *ep, int64_t window_ms,
                    const char *event_id, const char *payload, size_t len, int64_t now, char *err,
                    size_t errlen) {
    struct store_batch_item it;

    if (store_item(r, ep->name, batch_window_start(now, window_ms), window_ms, event_id, payload,
                   len, &it, err, errlen) != 0)
        return -1;
    return batch_item_added(r->b, ep, &it, err, errlen);
}

static const char *config_text =
    "endpoint 'wh' { url = 'http://127.0.0.1:9/wh', sign = 'none', window = '10m',\n"
    "  max_batch = 3, retry = { '2s', '1m' } }\n"
    "endpoint 'tick' { url = 'http://127.0.0.1:9/tick', sign = 'none' }\n"
    "endpoint 'off' { url = 'http://127.0.0.1:9/off', sign = 'none', enabled = false }\n";

static void test_collect_and_max_batch(void) {
    struct rig r;
    const struct config_endpoint *wh;
    struct store_delivery *dl = NULL;
    const int64_t w = 10 * MIN_MS, now = T0 + 7 * MIN_MS + 123;
    char err[256];
    int64_t t;
    size_t n;

    if (rig_open(&r, config_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    wh = config_endpoint_by_name(rules_config(r.rules), "wh");
    CHECK(wh != NULL && wh->max_batch == 3);
    if (!wh) {
        rig_close(&r);
        return;
    }
    CHECK_INT_EQ(wait_batch_next_close(r.base, r.st), INT64_MAX);
    CHECK_INT_EQ(add_item(&r, wh, w, "evt_1", "{\"n\":1}", 7, now, err, sizeof err), 0);
    CHECK_INT_EQ(add_item(&r, wh, w, "evt_2", "\"two\"", 5, now + 1000, err, sizeof err), 0);
    /* the window is [00:00, 00:10): open, ending at 00:10 */
    CHECK_INT_EQ(wait_batch_next_close(r.base, r.st), T0 + w);
    CHECK_INT_EQ(queue(&r, "wh").pending, 0);
    /* the next window and another length are windows of their own */
    CHECK_INT_EQ(add_item(&r, wh, w, "evt_x", "{}", 2, T0 + w, err, sizeof err), 0);
    CHECK_INT_EQ(add_item(&r, wh, 60000, "evt_y", "{}", 2, now, err, sizeof err), 0);
    CHECK_INT_EQ(wait_batch_next_close(r.base, r.st), T0 + 8 * MIN_MS); /* the 1-minute one */
    CHECK_INT_EQ(queue(&r, "wh").pending, 0);

    /* the third item of the window reaches max_batch: closed at once */
    t = util_now_ms();
    CHECK_INT_EQ(add_item(&r, wh, w, "evt_3", "[3]", 3, now + 2000, err, sizeof err), 0);
    CHECK_INT_EQ(queue(&r, "wh").pending, 1);
    CHECK_INT_EQ(store_flush(r.st), 0);
    /* its first attempt waits for the schedule's first delay (2 s) */
    n = claim(&r, "wh", t + 1000, &dl);
    CHECK_INT_EQ(n, 0);
    store_deliveries_free(dl, n);
    n = claim(&r, "wh", util_now_ms() + 2500, &dl);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        json_t *p = json_loadb(dl[0].payload, dl[0].payload_len, 0, NULL);
        json_t *evs = json_object_get(p, "events");
        CHECK_STR_EQ(dl[0].event_type, "batch");
        CHECK_STR_EQ(dl[0].content_type, "application/json");
        CHECK(dl[0].next_at >= t + 2000);
        CHECK_STR_EQ(json_string_value(json_object_get(p, "type")), "batch");
        CHECK_STR_EQ(json_string_value(json_object_get(p, "window_start")), "2026-01-01T00:00:00Z");
        CHECK_STR_EQ(json_string_value(json_object_get(p, "window_end")), "2026-01-01T00:10:00Z");
        CHECK_INT_EQ(json_integer_value(json_object_get(p, "count")), 3);
        CHECK_INT_EQ(json_array_size(evs), 3);
        /* the items in the order they came, each as it was given */
        CHECK_INT_EQ(json_integer_value(json_object_get(json_array_get(evs, 0), "n")), 1);
        CHECK_STR_EQ(json_string_value(json_array_get(evs, 1)), "two");
        CHECK_INT_EQ(json_integer_value(json_array_get(json_array_get(evs, 2), 0)), 3);
        json_decref(p);
    }
    store_deliveries_free(dl, n);

    /* the other two windows are still open; the full one is gone */
    {
        struct store_batch_window *ws = NULL;
        size_t nw = 0;
        CHECK_INT_EQ(wait_batch_due(r.base, r.st, INT64_MAX / 2, &ws, &nw), 0);
        CHECK_INT_EQ(nw, 2);
        for (size_t i = 0; i < nw; i++)
            CHECK(ws[i].window_start != T0 || ws[i].window_ms != w);
        store_batch_windows_free(ws, nw);
    }
    rig_close(&r);
}

static void test_timer_closes(void) {
    struct rig r;
    const struct config *cfg;
    const struct config_endpoint *tick, *off;
    struct store_delivery *dl = NULL;
    char err[256];
    int64_t now, start, seen;
    size_t n;

    if (rig_open(&r, config_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    cfg = rules_config(r.rules);
    tick = config_endpoint_by_name(cfg, "tick");
    off = config_endpoint_by_name(cfg, "off");
    if (!tick || !off) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    /* a 300 ms window closes at its end, not before */
    now = util_now_ms();
    start = batch_window_start(now, 300);
    CHECK_INT_EQ(add_item(&r, tick, 300, "evt_a", "1", 1, now, err, sizeof err), 0);
    CHECK_INT_EQ(add_item(&r, tick, 300, "evt_b", "2", 1, now, err, sizeof err), 0);
    seen = run_until_queued(&r, "tick", 1, 3000);
    CHECK(seen >= start + 300);
    CHECK_INT_EQ(queue(&r, "tick").pending, 1);
    CHECK_INT_EQ(wait_batch_next_close(r.base, r.st), INT64_MAX);
    CHECK_INT_EQ(store_flush(r.st), 0);
    n = claim(&r, "tick", util_now_ms() + 1000, &dl);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        json_t *p = json_loadb(dl[0].payload, dl[0].payload_len, 0, NULL);
        CHECK_INT_EQ(json_integer_value(json_object_get(p, "count")), 2);
        json_decref(p);
    }
    store_deliveries_free(dl, n);

    /* a window already past closes on the loop's next turn; a disabled
     * endpoint's batch is kept, held */
    CHECK_INT_EQ(add_item(&r, off, MIN_MS, "evt_c", "{}", 2, T0, err, sizeof err), 0);
    CHECK_INT_EQ(queue(&r, "off").held, 0);
    CHECK(run_until_queued(&r, "off", 1, 3000) > 0);
    CHECK_INT_EQ(queue(&r, "off").held, 1);
    CHECK_INT_EQ(queue(&r, "off").pending, 0);
    rig_close(&r);
}

/* What a previous run left open (items committed, no timer) is closed by
 * a new batcher's batch_start: a configured endpoint's as a pending
 * delivery, one no longer configured as held (never dropped). */
static void test_restart(void) {
    struct rig r;
    struct batch_deps deps;
    char err[256];
    struct store_batch_item it;
    int64_t future = batch_window_start(util_now_ms(), 3600000) + 3600000;

    if (rig_open(&r, config_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    CHECK_INT_EQ(store_item(&r, "wh", T0, MIN_MS, "evt_1", "1", 1, &it, err, sizeof err), 0);
    CHECK_INT_EQ(store_item(&r, "gone", T0, MIN_MS, "evt_2", "2", 1, &it, err, sizeof err), 0);
    CHECK_INT_EQ(
        store_item(&r, "wh", future - 3600000, 3600000, "evt_3", "3", 1, &it, err, sizeof err), 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    batch_free(r.b);
    batch_free(NULL);
    deps.base = r.batch_base;
    deps.store = r.st;
    deps.deliver = r.d;
    deps.rules = &r.rules;
    r.b = batch_new(&deps);
    CHECK(r.b != NULL);
    if (!r.b) {
        rig_close(&r);
        return;
    }
    /* nothing happens before batch_start */
    event_base_loop(r.batch_base, EVLOOP_NONBLOCK);
    event_base_loop(r.base, EVLOOP_NONBLOCK);
    CHECK_INT_EQ(queue(&r, "wh").pending, 0);
    batch_start(r.b);
    CHECK(run_until_queued(&r, "wh", 1, 3000) > 0);
    CHECK(run_until_queued(&r, "gone", 1, 3000) > 0);
    CHECK_INT_EQ(queue(&r, "wh").pending, 1);
    CHECK_INT_EQ(queue(&r, "gone").held, 1);
    /* the window still running stays open until its end */
    CHECK_INT_EQ(wait_batch_next_close(r.base, r.st), future);
    rig_close(&r);
}

int main(void) {
    if (!getenv("WAYBILL_LOG"))
        log_threshold = LOG_ERROR; /* "no longer configured" is expected */
    test_window_start();
    test_collect_and_max_batch();
    test_timer_closes();
    test_restart();
    return harness_report();
}
