/* test_ingest.c -- ingest.c with a real store, router, delivery engine and
 * generation of rules on a temporary folder: a carrier's event is routed
 * and stored with its deliveries in one write, answered (done) only after
 * its commit; a duplicate is only
 * noted; an adapter failure is stored as rule_error, unrouted; waybill's
 * own events are stored and routed in one group; a test event goes
 * straight to its endpoint; a replay routes a stored event again with the
 * current rules, and an unknown id is 0.
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
#include "ingest.h"
#include "log.h"
#include "route.h"
#include "rules.h"
#include "store.h"
#include "store_wait.h"
#include "util.h"

/* ---- a store, the pipeline and rules on a temporary folder ---- */

struct rig {
    char dir[64], lua_dir[PATH_MAX];
    struct event_base *base;
    struct store *st;
    struct httpc *hc;
    struct health *hl;
    struct deliver *d;
    struct housekeep *hk;
    struct rules *rules;
    struct batch *b;
    struct route *rt;
    struct ingest *g;
};

/* A generation of config and rules from r->dir (rules/a.lua = rules). */
static struct rules *load(struct rig *r, const char *rules) {
    char err[512], path[PATH_MAX];
    struct rules *gen;
    if (fixture_write(r->dir, "rules/a.lua", rules) < 0)
        return NULL;
    snprintf(path, sizeof path, "%s/waybill.lua", r->dir);
    gen = rules_load(path, r->lua_dir, err, sizeof err);
    if (!gen)
        fprintf(stderr, "rules: %s\n", err);
    return gen;
}

/* The recovery sweep hands events to the router, as the app wires it. */
static void on_recovered(void *arg, const struct store_event_row *row) {
    struct rig *r = arg;
    route_event(r->rt, row, 0);
}

static int rig_open(struct rig *r, const char *config, const char *rules) {
    char err[512], path[PATH_MAX];
    struct batch_deps bd;
    struct route_deps rd;
    struct ingest_deps gd;

    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "/tmp/waybill-test-ingest-XXXXXX");
    if (!mkdtemp(r->dir) || fixture_lua_dir(r->lua_dir) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/rules", r->dir);
    if (mkdir(path, 0700) < 0 || fixture_write(r->dir, "waybill.lua", config) < 0)
        return -1;
    r->base = event_base_new();
    if (!(r->rules = load(r, rules)))
        return -1;
    if (!(r->st = store_open(r->base, "sqlite:i.db?sync=normal", r->dir, err, sizeof err)) ||
        !(r->hc = httpc_new(r->base, err, sizeof err)) ||
        !(r->hl = health_new(r->st, err, sizeof err)) ||
        !(r->hk = housekeep_new(r->base, r->st, on_recovered, r, err, sizeof err)) ||
        !(r->d = deliver_new(r->base, r->st, r->hc, r->hl, err,
                             sizeof err))) { /* no config: sends nothing */
        fprintf(stderr, "rig: %s\n", err);
        return -1;
    }
    bd = (struct batch_deps){.base = r->base, .store = r->st, .deliver = r->d, .rules = &r->rules};
    if (!(r->b = batch_new(&bd)))
        return -1;
    rd = (struct route_deps){.base = r->base,
                             .store = r->st,
                             .deliver = r->d,
                             .batch = r->b,
                             .health = r->hl,
                             .housekeep = r->hk,
                             .rules = &r->rules};
    if (!(r->rt = route_new(&rd)))
        return -1;
    gd = (struct ingest_deps){.store = r->st, .route = r->rt, .deliver = r->d, .rules = &r->rules};
    r->g = ingest_new(&gd);
    return r->g ? 0 : -1;
}

static void rig_close(struct rig *r) {
    char cmd[128];
    for (int i = 0; r->st && !store_idle(r->st) && i < 100; i++)
        store_flush(r->st); /* every commit callback has run, and what they wrote */
    ingest_free(r->g);
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

/* Event id as stored (new; store_event_rows_free(row, 1)), or NULL. */
static struct store_event_row *event_row(struct rig *r, const char *id) {
    struct store_event_row *row = NULL;
    if (wait_event_get(r->base, r->st, id, &row) != 1)
        return NULL;
    return row;
}

/* The payload of endpoint's one due delivery, parsed (new), or NULL. */
static json_t *claim_one(struct rig *r, const char *endpoint) {
    struct store_delivery *dl = NULL;
    size_t n = 0;
    json_t *p = NULL;
    CHECK_INT_EQ(wait_claim_due(r->base, r->st, endpoint, util_now_ms() + 1000, 60000, 10, &dl, &n),
                 0);
    CHECK_INT_EQ(n, 1);
    if (n == 1)
        p = json_loadb(dl[0].payload, dl[0].payload_len, 0, NULL);
    store_deliveries_free(dl, n);
    return p;
}

static const char *config_text = "endpoint 'erp' { url = 'http://127.0.0.1:9/erp', sign = 'none',\n"
                                 "  retry = { '0s' } }\n"
                                 "endpoint 'ops' { url = 'http://127.0.0.1:9/ops', sign = 'none',\n"
                                 "  retry = { '0s' } }\n"
                                 "endpoint 'crm' { url = 'http://127.0.0.1:9/crm', sign = 'none',\n"
                                 "  enabled = false }\n"
                                 "rules 'rules/'\n";

static const char *rules_text =
    "on('order.created', { 'erp' })\n"
    "on('waybill.*', function(ev)\n"
    "  send('ops', { id = ev.id, type = ev.type, source = ev.source, data = ev.data })\n"
    "end)\n";

/* ---- a carrier's event ---- */

struct done_rec {
    int calls, ok, duplicate;
    char id[UTIL_ID_MAX], source[32];
};

static void on_done(void *arg, int ok, const char *id, int duplicate, const char *source) {
    struct done_rec *d = arg;
    d->calls++;
    d->ok = ok;
    d->duplicate = duplicate;
    snprintf(d->id, sizeof d->id, "%s", id ? id : "");
    snprintf(d->source, sizeof d->source, "%s", source ? source : "");
}

/* Hands one carrier request to ingest_carrier, as inbound.c does (ev and
 * headers owned by the caller, cleared after). Returns its result. */
static int carrier(struct rig *r, const char *source_id, int adapted, const char *error,
                   struct done_rec *done) {
    struct rules_event ev = {0};
    const char *body = "{\"order\":\"o1\",\"n\":1}";
    struct ingest_carrier c = {.source = "shop",
                               .ev = &ev,
                               .body = body,
                               .len = strlen(body),
                               .received_at = util_now_ms(),
                               .adapted = adapted,
                               .error = error};
    char err[256];
    int rc;

    ev.source_id = strdup(source_id);
    ev.type = strdup(adapted ? "order.created" : "shop.unknown");
    ev.created_at = strdup("2026-01-01T00:00:00Z");
    ev.data_json = strdup(adapted ? "{\"n\":1,\"order\":\"o1\"}" : "{}");
    c.headers_json = strdup("{\"x-shop\":\"1\"}");
    memset(done, 0, sizeof *done);
    rc = ingest_carrier(r->g, &c, on_done, done, err, sizeof err);
    /* the taken parts are taken in every case */
    CHECK(c.headers_json == NULL);
    CHECK(c.data_token == 0);
    /* ev's strings are borrowed: the caller clears ev in every case */
    CHECK(ev.type != NULL && ev.data_json != NULL);
    rules_event_clear(&ev);
    free(c.headers_json);
    return rc;
}

static void test_carrier(void) {
    struct rig r;
    struct done_rec d1, d2, d3, d4;
    struct store_event_row *row;
    json_t *p;

    if (rig_open(&r, config_text, rules_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    CHECK_INT_EQ(carrier(&r, "S-1", 1, NULL, &d1), 0);
    /* the event and its delivery in the open group, one write; answered
     * only once it is committed */
    CHECK_INT_EQ(d1.calls, 0);
    CHECK_INT_EQ(queue(&r, "erp").pending, 1);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(d1.calls, 1);
    CHECK_INT_EQ(d1.ok, 1);
    CHECK_INT_EQ(d1.duplicate, 0);
    CHECK_STR_EQ(d1.source, "shop");
    CHECK(strncmp(d1.id, "evt_", 4) == 0);
    CHECK_INT_EQ(queue(&r, "erp").pending, 1);
    row = event_row(&r, d1.id);
    CHECK(row != NULL);
    if (row) {
        CHECK_STR_EQ(row->status, "routed");
        CHECK_STR_EQ(row->source, "shop");
        CHECK_STR_EQ(row->source_id, "S-1");
        CHECK_STR_EQ(row->type, "order.created");
        CHECK(row->raw_len == 20 && memcmp(row->raw, "{\"order\":\"o1\",\"n\":1}", 20) == 0);
        CHECK_STR_EQ(row->headers_json, "{\"x-shop\":\"1\"}");
        store_event_rows_free(row, 1);
    }
    CHECK_INT_EQ(store_flush(r.st), 0);
    p = claim_one(&r, "erp");
    CHECK_STR_EQ(json_string_value(json_object_get(p, "id")), d1.id);
    CHECK_STR_EQ(json_string_value(json_object_get(p, "source")), "shop");
    CHECK_STR_EQ(json_string_value(json_object_get(json_object_get(p, "data"), "order")), "o1");
    json_decref(p);

    /* the same carrier event again: only noted, answered with the first id */
    CHECK_INT_EQ(carrier(&r, "S-1", 1, NULL, &d2), 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(d2.calls, 1);
    CHECK_INT_EQ(d2.ok, 1);
    CHECK_INT_EQ(d2.duplicate, 1);
    CHECK_STR_EQ(d2.id, d1.id);
    CHECK_INT_EQ(queue(&r, "erp").pending, 1); /* not routed again */

    /* twice in one group: the second is the duplicate */
    CHECK_INT_EQ(carrier(&r, "S-2", 1, NULL, &d3), 0);
    CHECK_INT_EQ(carrier(&r, "S-2", 1, NULL, &d4), 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK(d3.calls == 1 && d4.calls == 1);
    CHECK(d3.duplicate == 0 && d4.duplicate == 1);
    CHECK_STR_EQ(d4.id, d3.id);
    CHECK(strcmp(d3.id, d1.id) != 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(queue(&r, "erp").pending, 2);

    /* the adapter failed: stored with its error, answered, never routed */
    CHECK_INT_EQ(carrier(&r, "S-3", 0, "adapters/shop.lua:3: no type", &d1), 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(d1.calls, 1);
    CHECK_INT_EQ(d1.ok, 1);
    CHECK_INT_EQ(d1.duplicate, 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    row = event_row(&r, d1.id);
    CHECK(row != NULL);
    if (row) {
        CHECK_STR_EQ(row->status, "rule_error");
        CHECK_STR_EQ(row->error, "adapters/shop.lua:3: no type");
        CHECK_STR_EQ(row->type, "shop.unknown");
        store_event_rows_free(row, 1);
    }
    CHECK_INT_EQ(queue(&r, "erp").pending, 2);
    rig_close(&r);
}

/* ---- waybill's own events, test events, replays ---- */

static void test_emit(void) {
    struct rig r;
    struct store_event_row *row;
    const char *id;
    json_t *p;

    if (rig_open(&r, config_text, rules_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    ingest_emit(r.g, "waybill.delivery.failed", json_pack("{ss}", "delivery", "dlv_1"));
    /* stored and routed in the same (open) group */
    CHECK_INT_EQ(queue(&r, "ops").pending, 1);
    CHECK_INT_EQ(store_flush(r.st), 0);
    p = claim_one(&r, "ops");
    id = json_string_value(json_object_get(p, "id"));
    CHECK(id && strncmp(id, "evt_", 4) == 0);
    CHECK_STR_EQ(json_string_value(json_object_get(p, "type")), "waybill.delivery.failed");
    CHECK_STR_EQ(json_string_value(json_object_get(p, "source")), "waybill");
    CHECK_STR_EQ(json_string_value(json_object_get(json_object_get(p, "data"), "delivery")),
                 "dlv_1");
    row = id ? event_row(&r, id) : NULL;
    CHECK(row != NULL);
    if (row) {
        json_t *raw = json_loadb(row->raw, row->raw_len, 0, NULL);
        CHECK_STR_EQ(row->status, "routed");
        CHECK_STR_EQ(row->source, "waybill");
        CHECK_STR_EQ(row->source_id, id);
        CHECK_STR_EQ(row->data_json, "{\"delivery\":\"dlv_1\"}");
        CHECK_STR_EQ(json_string_value(json_object_get(raw, "id")), id);
        CHECK_STR_EQ(json_string_value(json_object_get(raw, "type")), "waybill.delivery.failed");
        CHECK(json_is_string(json_object_get(raw, "created_at")));
        json_decref(raw);
        store_event_rows_free(row, 1);
    }
    json_decref(p);

    /* no rule for it: stored, unrouted */
    ingest_emit(r.g, "other.thing", json_object());
    CHECK_INT_EQ(queue(&r, "ops").pending, 1);
    /* nothing to emit: no crash, nothing stored */
    ingest_emit(r.g, "waybill.nothing", NULL);
    ingest_emit(NULL, "waybill.nothing", NULL);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(queue(&r, "ops").pending, 1);
    rig_close(&r);
}

static void test_test_event(void) {
    struct rig r;
    const struct config *cfg;
    struct store_event_row *row;
    char id[UTIL_ID_MAX], err[256];
    json_t *data = json_pack("{si}", "k", 7), *p;

    if (rig_open(&r, config_text, rules_text) < 0) {
        CHECK(0);
        rig_close(&r);
        json_decref(data);
        return;
    }
    cfg = rules_config(r.rules);
    CHECK_INT_EQ(ingest_test(r.g, config_endpoint_by_name(cfg, "erp"), "shipment.created", data, id,
                             sizeof id, err, sizeof err),
                 0);
    /* the rules are bypassed: no rule sends shipment.created */
    CHECK_INT_EQ(queue(&r, "erp").pending, 1);
    row = event_row(&r, id);
    CHECK(row != NULL);
    if (row) {
        CHECK_STR_EQ(row->status, "routed");
        CHECK_STR_EQ(row->source, "waybill.test");
        CHECK_STR_EQ(row->type, "shipment.created");
        CHECK(strncmp(row->source_id, "test_", 5) == 0);
        store_event_rows_free(row, 1);
    }
    CHECK_INT_EQ(store_flush(r.st), 0);
    p = claim_one(&r, "erp");
    CHECK_STR_EQ(json_string_value(json_object_get(p, "id")), id);
    CHECK_STR_EQ(json_string_value(json_object_get(p, "source")), "waybill.test");
    CHECK_STR_EQ(json_string_value(json_object_get(p, "type")), "shipment.created");
    CHECK(json_is_true(json_object_get(p, "test")));
    CHECK_INT_EQ(json_integer_value(json_object_get(json_object_get(p, "data"), "k")), 7);
    CHECK(json_is_string(json_object_get(p, "received_at")));
    json_decref(p);

    /* to a disabled endpoint: held */
    CHECK_INT_EQ(ingest_test(r.g, config_endpoint_by_name(cfg, "crm"), "x.y", data, id, sizeof id,
                             err, sizeof err),
                 0);
    CHECK_INT_EQ(queue(&r, "crm").held, 1);
    CHECK_INT_EQ(queue(&r, "crm").pending, 0);
    json_decref(data); /* borrowed by ingest_test */
    rig_close(&r);
}

/* A replay's outcome as ingest_replay_fn reports it. */
struct replay_rec {
    int calls, rc;
};

static void on_replayed(void *arg, int rc, const char *err) {
    struct replay_rec *rec = arg;
    (void)err;
    rec->calls++;
    rec->rc = rc;
}

/* Replays id: never answered inside the call, once from the loop (a flush
 * runs what the loop would); the outcome, or -2 when not answered. */
static int replay(struct rig *r, const char *id) {
    struct replay_rec rec = {0};
    CHECK_INT_EQ(ingest_replay(r->g, id, on_replayed, &rec), 0);
    CHECK_INT_EQ(rec.calls, 0);
    CHECK_INT_EQ(store_flush(r->st), 0);
    CHECK_INT_EQ(rec.calls, 1);
    return rec.calls == 1 ? rec.rc : -2;
}

static void test_replay(void) {
    struct rig r;
    struct rules *next;
    struct done_rec d;

    if (rig_open(&r, config_text, rules_text) < 0) {
        CHECK(0);
        rig_close(&r);
        return;
    }
    CHECK_INT_EQ(replay(&r, "evt_nope"), 0);
    CHECK_INT_EQ(carrier(&r, "S-9", 1, NULL, &d), 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(store_flush(r.st), 0);
    CHECK_INT_EQ(queue(&r, "erp").pending, 1);

    /* routed again: a new delivery, the first one kept */
    CHECK_INT_EQ(replay(&r, d.id), 1);
    CHECK_INT_EQ(queue(&r, "erp").pending, 2);

    /* with the current rules: a reload that sends order.created elsewhere */
    next = load(&r, "on('order.created', { 'crm' })\n");
    CHECK(next != NULL);
    if (next) {
        struct rules *old = r.rules;
        r.rules = next; /* the swap a reload makes */
        rules_free(old);
        CHECK_INT_EQ(replay(&r, d.id), 1);
        CHECK_INT_EQ(queue(&r, "erp").pending, 2);
        CHECK_INT_EQ(queue(&r, "crm").held, 1);
    }
    CHECK_INT_EQ(store_flush(r.st), 0);
    ingest_free(NULL);
    rig_close(&r);
}

int main(void) {
    if (!getenv("WAYBILL_LOG"))
        log_threshold = LOG_WARN;
    test_carrier();
    test_emit();
    test_test_event();
    test_replay();
    return harness_report();
}
