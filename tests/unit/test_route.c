/* test_route.c -- route.c with a real store, delivery engine, batcher and
 * generation of rules on a temporary folder: what route_event records
 * (deliveries pending at the schedule's first delay, held for a disabled
 * endpoint, batched sends in their window; the event routed, unrouted or
 * rule_error, all or nothing) and route_recover routing every committed
 * "received" event exactly once, past one recovery batch.
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
#include "metrics.h"
#include "route.h"
#include "rules.h"
#include "store.h"
#include "store_wait.h"
#include "util.h"

/* ---- a store, a delivery engine, a batcher and rules on a temporary folder ---- */

struct rig {
    char dir[64];
    struct event_base *base;
    struct store *st;
    struct httpc *hc;
    struct health *hl;
    struct deliver *d;
    struct housekeep *hk;
    struct rules *rules;
    struct batch *b;
    struct route *rt;
};

/* The recovery sweep hands events to the router, as the app wires it. */
static void on_recovered(void *arg, const struct store_event_row *row) {
    struct rig *r = arg;
    route_event(r->rt, row, 0);
}

static int rig_open(struct rig *r, const char *config, const char *rules) {
    char err[512], lua_dir[PATH_MAX], path[PATH_MAX];
    struct batch_deps bd;
    struct route_deps rd;

    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "/tmp/waybill-test-route-XXXXXX");
    if (!mkdtemp(r->dir) || fixture_lua_dir(lua_dir) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/rules", r->dir);
    if (mkdir(path, 0700) < 0 || fixture_write(r->dir, "waybill.lua", config) < 0 ||
        fixture_write(r->dir, "rules/a.lua", rules) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/waybill.lua", r->dir);
    r->base = event_base_new();
    if (!(r->rules = rules_load(path, lua_dir, err, sizeof err)) ||
        !(r->st = store_open(r->base, "sqlite:r.db?sync=normal", r->dir, err, sizeof err)) ||
        !(r->hc = httpc_new(r->base, err, sizeof err)) ||
        !(r->hl = health_new(r->st, err, sizeof err)) ||
        !(r->hk = housekeep_new(r->base, r->st, on_recovered, r, err, sizeof err)) ||
        !(r->d = deliver_new(r->base, r->st, r->hc, r->hl, err,
                             sizeof err))) { /* no config: sends nothing */
        fprintf(stderr, "rig: %s\n", err);
        return -1;
    }
    bd = (struct batch_deps){.base = r->base, .store = r->st, .deliver = r->d, .rules = &r->rules};
    rd = (struct route_deps){.base = r->base,
                             .store = r->st,
                             .deliver = r->d,
                             .health = r->hl,
                             .housekeep = r->hk,
                             .rules = &r->rules};
    if (!(rd.batch = r->b = batch_new(&bd)))
        return -1;
    r->rt = route_new(&rd);
    return r->rt ? 0 : -1;
}

static void rig_close(struct rig *r) {
    char cmd[128];
    route_free(r->rt);
    batch_free(r->b);
    deliver_free(r->d);
    housekeep_free(r->hk);
    health_free(r->hl);
    httpc_free(r->hc);
    store_free(r->st);
    rules_free(r->rules);
    if (r->base)
        event_base_free(r->base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", r->dir);
    if (r->dir[0] && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", r->dir);
}

static struct store_endpoint_queue queue(struct rig *r, const char *endpoint) {
    struct store_endpoint_queue q;
    CHECK_INT_EQ(wait_endpoint_queue(r->base, r->st, endpoint, INT64_MAX / 2, 100000, 1, &q), 0);
    return q;
}

/* Stores a "received" event of type with data; its id into id. */
static int put_event(struct rig *r, const char *type, const char *data, char *id, size_t idlen) {
    char sid[UTIL_ID_MAX];
    struct store_event ev;

    util_id_new("evt_", id, idlen);
    util_id_new("src_", sid, sizeof sid);
    memset(&ev, 0, sizeof ev);
    ev.id = id;
    ev.source = "test";
    ev.source_id = sid;
    ev.type = type;
    ev.created_at = "2026-01-01T00:00:00Z";
    ev.received_at = util_now_ms();
    ev.raw = data;
    ev.raw_len = strlen(data);
    ev.headers_json = "{}";
    ev.data_json = data;
    return wait_event_put(r->base, r->st, &ev, NULL);
}

/* Routes an event and stores it with its plan in one write, as ingest does
 * (the endpoints and windows told at the write, the answer waited for
 * after). */
static void put_and_route(struct rig *r, const char *type, const char *data, char *id,
                          size_t idlen) {
    struct rules_input in;
    struct store_event ev;
    struct route_plan plan;
    struct store_wait put;
    char err[256];
    int issued;

    util_id_new("evt_", id, idlen);
    memset(&in, 0, sizeof in);
    in.id = id;
    in.source = "test";
    in.source_id = id;
    in.type = type;
    in.created_at = "2026-01-01T00:00:00Z";
    in.received_at_ms = util_now_ms();
    in.data_json = data;
    in.raw = data;
    in.raw_len = strlen(data);
    in.headers_json = "{}";
    memset(&ev, 0, sizeof ev);
    ev.id = id;
    ev.source = "test";
    ev.source_id = id;
    ev.type = type;
    ev.created_at = in.created_at;
    ev.received_at = in.received_at_ms;
    ev.raw = data;
    ev.raw_len = in.raw_len;
    ev.headers_json = "{}";
    ev.data_json = data;
    route_plan(r->rt, &in, &plan);
    store_wait_init(&put);
    issued = start_event_put(r->st, &ev, &plan.store, &put);
    CHECK_INT_EQ(route_plan_stored(r->rt, &in, &plan, err, sizeof err), 0);
    CHECK_INT_EQ(store_wait_write(r->base, &put, issued), 0);
    route_plan_clear(&plan); /* the plan is the write's until its answer */
}

/* The stored status of event id ("?" when unknown); its error into error. */
static const char *status_of(struct rig *r, const char *id, char *error, size_t errorlen) {
    static char status[32];
    struct store_event_row *row = NULL;

    snprintf(status, sizeof status, "?");
    if (error)
        error[0] = '\0';
    if (wait_event_get(r->base, r->st, id, &row) == 1) {
        snprintf(status, sizeof status, "%s", row->status ? row->status : "(null)");
        if (error && row->error)
            snprintf(error, errorlen, "%s", row->error);
    }
    store_event_rows_free(row, row ? 1 : 0);
    return status;
}

static int rule_errors_counted(void) {
    struct util_buf b = {NULL, 0, 0};
    const char *p;
    int n = -1;
    if (metrics_render(&b) == 0 && util_buf_append(&b, "", 1) == 0 &&
        (p = strstr(b.p, "\nwaybill_rule_errors_total ")))
        n = atoi(p + strlen("\nwaybill_rule_errors_total "));
    util_buf_free(&b);
    return n;
}

static const char *config_text = "endpoint 'erp' { url = 'http://127.0.0.1:9/erp', sign = 'none',\n"
                                 "  retry = { '3s', '1m' } }\n"
                                 "endpoint 'crm' { url = 'http://127.0.0.1:9/crm', sign = 'none',\n"
                                 "  enabled = false }\n"
                                 "endpoint 'wh' { url = 'http://127.0.0.1:9/wh', sign = 'none',\n"
                                 "  window = '10m' }\n"
                                 "rules 'rules/'\n";

static const char *rules_text =
    "on('order.created', { 'erp', 'crm' })\n"
    "on('tracking.*', function(ev)\n"
    "  send('erp', { tn = ev.data.tn }, { headers = { ['X-Tn'] = ev.data.tn } })\n"
    "  batch('wh', { tn = ev.data.tn })\n"
    "end)\n"
    "on('boom', function(ev) error('kaboom') end)\n"
    "on('partial', function(ev) send('erp', { x = 1 }) error('after a send') end)\n";

static void test_route_event(void) {
    struct rig r;
    struct store_delivery *dl = NULL;
    char id[UTIL_ID_MAX], id2[UTIL_ID_MAX], error[512];
    int64_t t;
    size_t n;

    metrics_reset();
    if (rig_open(&r, config_text, rules_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }

    /* a list handler: the event goes whole to each endpoint; the enabled
     * one's delivery waits for the first delay, the disabled one's is held */
    t = util_now_ms();
    put_and_route(&r, "order.created", "{\"order\":\"o1\"}", id, sizeof id);
    CHECK_STR_EQ(status_of(&r, id, NULL, 0), "routed");
    CHECK_INT_EQ(queue(&r, "erp").pending, 1);
    CHECK_INT_EQ(queue(&r, "erp").held, 0);
    CHECK_INT_EQ(queue(&r, "crm").held, 1);
    CHECK_INT_EQ(queue(&r, "crm").pending, 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(wait_claim_due(r.base, r.st, "erp", t + 2000, 60000, 10, &dl, &n), 0);
    CHECK_INT_EQ(n, 0);
    store_deliveries_free(dl, n);
    CHECK_INT_EQ(wait_claim_due(r.base, r.st, "erp", util_now_ms() + 3500, 60000, 10, &dl, &n), 0);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        json_t *p = json_loadb(dl[0].payload, dl[0].payload_len, 0, NULL);
        CHECK_STR_EQ(dl[0].event_id, id);
        CHECK_STR_EQ(dl[0].event_type, "order.created");
        CHECK(dl[0].next_at >= t + 3000);
        CHECK_STR_EQ(json_string_value(json_object_get(p, "id")), id);
        CHECK_STR_EQ(json_string_value(json_object_get(p, "type")), "order.created");
        CHECK_STR_EQ(json_string_value(json_object_get(json_object_get(p, "data"), "order")), "o1");
        json_decref(p);
    }
    store_deliveries_free(dl, n);

    /* a function handler: a send with headers, and a batch into the
     * endpoint's 10-minute window */
    CHECK_INT_EQ(wait_batch_next_close(r.base, r.st), INT64_MAX);
    t = util_now_ms();
    put_and_route(&r, "tracking.in_transit", "{\"tn\":\"TN1\"}", id, sizeof id);
    CHECK_STR_EQ(status_of(&r, id, NULL, 0), "routed");
    CHECK_INT_EQ(queue(&r, "erp").pending, 2);
    CHECK_INT_EQ(queue(&r, "wh").pending, 0); /* batched, not yet a delivery */
    {
        int64_t end = wait_batch_next_close(r.base, r.st);
        CHECK(end == batch_window_start(t, 600000) + 600000 ||
              end == batch_window_start(util_now_ms(), 600000) + 600000);
    }
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(wait_claim_due(r.base, r.st, "erp", util_now_ms() + 3500, 60000, 10, &dl, &n), 0);
    CHECK_INT_EQ(n, 1);
    if (n == 1) {
        CHECK_STR_EQ(dl[0].event_id, id);
        CHECK(dl[0].payload_len == 12 && memcmp(dl[0].payload, "{\"tn\":\"TN1\"}", 12) == 0);
        CHECK(dl[0].headers_json && strstr(dl[0].headers_json, "\"X-Tn\"") &&
              strstr(dl[0].headers_json, "\"TN1\""));
    }
    store_deliveries_free(dl, n);

    /* no handler: unrouted, nothing written */
    put_and_route(&r, "nothing.here", "{}", id, sizeof id);
    CHECK_STR_EQ(status_of(&r, id, error, sizeof error), "unrouted");
    CHECK_STR_EQ(error, "");
    CHECK_INT_EQ(queue(&r, "erp").pending, 2);

    /* a failing handler: rule_error with the rule's file:line, counted */
    CHECK_INT_EQ(rule_errors_counted(), 0);
    put_and_route(&r, "boom", "{}", id, sizeof id);
    CHECK_STR_EQ(status_of(&r, id, error, sizeof error), "rule_error");
    CHECK(strstr(error, "a.lua:6:") != NULL && strstr(error, "kaboom") != NULL);
    CHECK_INT_EQ(rule_errors_counted(), 1);

    /* all or nothing: a send before the error is not delivered */
    put_and_route(&r, "partial", "{}", id2, sizeof id2);
    CHECK_STR_EQ(status_of(&r, id2, error, sizeof error), "rule_error");
    CHECK(strstr(error, "after a send") != NULL);
    CHECK_INT_EQ(queue(&r, "erp").pending, 2);
    CHECK_INT_EQ(rule_errors_counted(), 2);

    /* what was routed is durable once the group is */
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_STR_EQ(status_of(&r, id, NULL, 0), "rule_error");
    rig_close(&r);
    metrics_reset();
}

/* Counts events still "received" (committed), up to 1000, as read by w
 * (issued: start_events_unrouted's return); -1 on error. */
static long unrouted_of(struct rig *r, struct store_wait *w, int issued) {
    struct store_event_row *rows = NULL;
    size_t n = 0;
    store_wait_run(r->base, w, issued);
    if (take_events_unrouted(w, &rows, &n) < 0)
        return -1;
    store_event_rows_free(rows, n);
    return (long)n;
}

/* Counts events still "received" (committed), up to 1000; -1 on error. */
static long unrouted(struct rig *r) {
    struct store_wait w;
    store_wait_init(&w);
    return unrouted_of(r, &w, start_events_unrouted(r->st, 0, 1000, &w));
}

static void run_until_routed(struct rig *r, int64_t timeout_ms) {
    int64_t deadline = util_mono_ms() + timeout_ms;
    while (util_mono_ms() < deadline && unrouted(r) != 0) {
        event_base_loop(r->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    /* and the last group committed */
    CHECK_INT_EQ(store_flush(r->st), 0);
}

static void test_recover(void) {
    struct rig r;
    char id[UTIL_ID_MAX], first[UTIL_ID_MAX], last[UTIL_ID_MAX];
    const int n = 300; /* more than one recovery batch (256) */
    struct store_wait unrouted_w, queue_w;
    struct store_endpoint_queue q;
    int unrouted_issued, queue_issued;

    if (rig_open(&r, config_text, rules_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    /* committed but never routed, as after a crash between the two */
    for (int i = 0; i < n; i++) {
        CHECK_INT_EQ(put_event(&r, i % 2 ? "order.created" : "nothing.here", "{}", id, sizeof id),
                     0);
        if (i == 0)
            memcpy(first, id, sizeof id);
        if (i == n - 1)
            memcpy(last, id, sizeof id);
    }
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(unrouted(&r), n);

    /* recovery routes from the loop, not inside the call: both read as
     * the call left the store, before the loop runs (a wait runs it) */
    housekeep_recover(r.hk);
    store_wait_init(&unrouted_w);
    store_wait_init(&queue_w);
    unrouted_issued = start_events_unrouted(r.st, 0, 1000, &unrouted_w);
    queue_issued = start_endpoint_queue(r.st, "erp", INT64_MAX / 2, 100000, 1, &queue_w);
    CHECK_INT_EQ(unrouted_of(&r, &unrouted_w, unrouted_issued), n);
    store_wait_run(r.base, &queue_w, queue_issued);
    CHECK_INT_EQ(take_endpoint_queue(&queue_w, &q), 0); /* queue()'s own check */
    CHECK_INT_EQ(q.pending, 0);
    run_until_routed(&r, 10000);
    CHECK_INT_EQ(unrouted(&r), 0);
    CHECK_STR_EQ(status_of(&r, first, NULL, 0), "unrouted");
    CHECK_STR_EQ(status_of(&r, last, NULL, 0), "routed");
    CHECK_INT_EQ(queue(&r, "erp").pending, n / 2);
    CHECK_INT_EQ(queue(&r, "crm").held, n / 2);

    /* again: nothing is routed twice */
    housekeep_recover(r.hk);
    housekeep_recover(r.hk);
    for (int i = 0; i < 5; i++)
        event_base_loop(r.base, EVLOOP_NONBLOCK);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(queue(&r, "erp").pending, n / 2);
    CHECK_INT_EQ(queue(&r, "crm").held, n / 2);
    rig_close(&r);
}

int main(void) {
    if (!getenv("WAYBILL_LOG"))
        log_threshold = LOG_ERROR; /* rule errors are expected here */
    route_free(NULL);
    test_route_event();
    test_recover();
    return harness_report();
}
