/* admin.c -- the admin API (SPEC section 8) on its own listener: bearer
 * token checked in constant time on every route but /healthz; JSON in and
 * out; one-line errors.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "admin.h"
#include "admin_int.h"
#include "config.h"
#include "deliver.h"
#include "health.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "reqlog.h"
#include "ingest.h"
#include "rules.h"
#include "http.h"
#include "store.h"
#include "subs.h"
#include "util.h"
#include "verify.h"

/* Constant-time token check: compares digests, so neither content nor
 * length leaks through timing. The token comes as "Authorization: Bearer"
 * or, as ShipEngine's clients send it, in "API-Key". */
static int admin_authorized(const struct config *cfg, struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *auth = evhttp_find_header(h, "Authorization");
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];

    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        auth += 7;
    else
        auth = evhttp_find_header(h, "API-Key");
    if (!auth || !cfg->admin_token)
        return 0;
    SHA256((const unsigned char *)cfg->admin_token, strlen(cfg->admin_token), want);
    SHA256((const unsigned char *)auth, strlen(auth), got);
    return util_ct_equal(want, got, sizeof want);
}

/* A request waiting for an asynchronous read, with its listener; freed by
 * the read's callback. */
struct admin_read {
    struct admin *adm;
    struct evhttp_request *req;
};

/* Starts read(store, fn, ctx) for req; on failure replies 503. */
static void admin_read_start(struct admin *adm, struct evhttp_request *req,
                             int (*read)(struct store *, store_read_fn, void *), store_read_fn fn) {
    struct admin_read *r = calloc(1, sizeof *r);

    if (r) {
        r->adm = adm;
        r->req = req;
    }
    if (!r || read(adm->deps.store, fn, r) < 0) {
        free(r);
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    }
}

static void admin_on_status(void *arg, const struct store_result *r) {
    struct admin_read *rd = arg;
    const struct admin_deps *gw = &rd->adm->deps;
    struct admin_status st = {0};
    const struct store_counts *c = r->counts;
    char loaded[32];

    if (r->status < 0 || !c) {
        http_reply_error(rd->req, 503, "Service Unavailable", "store unavailable");
        free(rd);
        return;
    }
    gw->status(gw->arg, &st);
    util_time_rfc3339(rules_loaded_at(*gw->rules), loaded, sizeof loaded);
    json_t *queue =
        json_pack("{sIsIsIsI}", "pending", (json_int_t)c->pending, "held", (json_int_t)c->held,
                  "failed", (json_int_t)c->failed, "delivered", (json_int_t)c->delivered);
    json_t *last_error = st.reload_error[0] ? json_string(st.reload_error) : json_null();
    http_reply_json(rd->req, 200, "OK",
                    json_pack("{sssIsssisisoso}", "version", WAYBILL_VERSION, "uptime_s",
                              (json_int_t)((util_now_ms() - st.started_at) / 1000),
                              "rules_loaded_at", loaded, "reloads", st.reloads, "reload_failures",
                              st.reload_failures, "last_reload_error", last_error, "queue", queue));
    free(rd);
}

/* GET /healthz's answer: the store answers and can write, and no endpoint
 * is stuck. */
static void admin_on_health(void *arg, const struct store_result *r) {
    struct admin_read *rd = arg;
    struct admin *adm = rd->adm;
    char names[512], why[640];
    size_t nstuck;

    if (r->status < 0) {
        http_reply_error(rd->req, 503, "Service Unavailable", r->err);
    } else if (!store_writable(adm->deps.store)) {
        http_reply_error(rd->req, 503, "Service Unavailable",
                         "store cannot write (see the log: a full disk, a lock)");
    } else if ((nstuck = deliver_stuck(adm->deps.deliver, names, sizeof names)) > 0) {
        /* unauthenticated: a count, not the names (GET /api/endpoints
         * shows which, as "stuck": true) */
        snprintf(why, sizeof why,
                 "%zu endpoint%s with deliveries due and a free slot that are not going "
                 "out (see GET /api/endpoints, \"stuck\")",
                 nstuck, nstuck == 1 ? "" : "s");
        http_reply_json(rd->req, 503, "Service Unavailable",
                        json_pack("{sbss}", "ok", 0, "error", why));
    } else {
        http_reply_json(rd->req, 200, "OK", json_pack("{sb}", "ok", 1));
    }
    free(rd);
}

/* GET /api/events/{id}'s answer: the detail has the raw body, headers and
 * each delivery's payload. */
static void admin_on_event(void *arg, const struct store_result *r) {
    struct evhttp_request *req = arg;
    json_t *ev;

    if (r->status < 0)
        http_reply_error(req, 503, "Service Unavailable", r->err);
    else if (!r->detail)
        http_reply_error(req, 404, "Not Found", "no such event");
    else if (!(ev = admin_event_json(r->detail)))
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    else
        http_reply_json(req, 200, "OK", ev);
}

static void admin_event(struct admin *adm, struct evhttp_request *req, const char *id) {
    if (store_read_event_detail(adm->deps.store, id, admin_on_event, req) < 0)
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
}

static void admin_reload(struct admin *adm, struct evhttp_request *req) {
    char err[512];
    char loaded[32];

    if (adm->deps.reload(adm->deps.arg, err, sizeof err) < 0) {
        http_reply_error(req, 422, "Unprocessable Entity", err);
        return;
    }
    util_time_rfc3339(rules_loaded_at(*adm->deps.rules), loaded, sizeof loaded);
    http_reply_json(req, 200, "OK", json_pack("{sbss}", "ok", 1, "rules_loaded_at", loaded));
}

/* ---- helpers for the routes below ---- */

#define ADMIN_LIMIT_DEFAULT 50
#define ADMIN_LIMIT_MAX 500

static void admin_bad(struct evhttp_request *req, const char *msg) {
    http_reply_error(req, 400, "Bad Request", msg);
}

json_t *admin_body_object(struct evhttp_request *req) {
    struct evbuffer *buf = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(buf);
    const char *p = (const char *)evbuffer_pullup(buf, -1);
    json_error_t jerr;
    json_t *j = json_loadb(p ? p : "", len, 0, &jerr);
    char msg[256];

    if (!j) {
        snprintf(msg, sizeof msg, "body is not valid JSON: %s", jerr.text);
        admin_bad(req, msg);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        admin_bad(req, "body must be a JSON object");
        return NULL;
    }
    return j;
}

/* A paging query's limit and after; 0, or -1 after a 400 was sent. The
 * query's strings stay valid while q (owned by the caller) is alive. */
int admin_paging(struct evhttp_request *req, struct evkeyvalq *q, struct store_page *page) {
    const char *limit = evhttp_find_header(q, "limit"), *after = evhttp_find_header(q, "after");
    char *end;
    long long v;

    page->limit = ADMIN_LIMIT_DEFAULT;
    page->after = 0;
    if (limit) {
        v = strtoll(limit, &end, 10);
        if (!*limit || *end || v < 1) {
            admin_bad(req, "limit must be a positive integer");
            return -1;
        }
        page->limit = v > ADMIN_LIMIT_MAX ? ADMIN_LIMIT_MAX : (size_t)v;
    }
    if (after && *after) {
        v = strtoll(after, &end, 10);
        if (*end || v < 1) {
            admin_bad(req, "after must be a cursor from an earlier page's \"next\"");
            return -1;
        }
        page->after = v;
    }
    return 0;
}

/* Parses the URI's query into q (clear with evhttp_clear_headers); 0 or -1
 * after a 400 was sent. */
int admin_query(struct evhttp_request *req, struct evkeyvalq *q) {
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    TAILQ_INIT(q);
    if (query && evhttp_parse_query_str(query, q) < 0) {
        admin_bad(req, "malformed query string");
        return -1;
    }
    return 0;
}

void admin_reply_page(struct evhttp_request *req, json_t *data, int64_t next) {
    char cur[32];
    snprintf(cur, sizeof cur, "%lld", (long long)next);
    http_reply_json(
        req, 200, "OK",
        json_pack("{soso}", "data", data, "next", next ? json_string(cur) : json_null()));
}

/* A page read's answer (r->events or r->deliveries rendered by render). */
static void admin_on_page(struct evhttp_request *req, const struct store_result *r, json_t *data) {
    if (r->status < 0) {
        json_decref(data);
        http_reply_error(req, 503, "Service Unavailable", r->err);
    } else if (!data) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    } else {
        admin_reply_page(req, data, r->next);
    }
}

void admin_on_events_page(void *arg, const struct store_result *r) {
    admin_on_page(arg, r, r->status < 0 ? NULL : admin_events_json(r->events, r->n));
}

void admin_on_deliveries_page(void *arg, const struct store_result *r) {
    admin_on_page(arg, r, r->status < 0 ? NULL : admin_deliveries_json(r->deliveries, r->n));
}

/* ---- GET /api/events ---- */

static void admin_events(struct admin *adm, struct evhttp_request *req) {
    struct evkeyvalq q;
    struct store_page page = {0};
    char err[256];

    if (admin_query(req, &q) < 0)
        return;
    if (admin_paging(req, &q, &page) < 0)
        goto done;
    page.type = evhttp_find_header(&q, "type");
    page.source = evhttp_find_header(&q, "source");
    page.status = evhttp_find_header(&q, "status");
    if (admin_time_window(&q, &page, err, sizeof err) < 0) {
        admin_bad(req, err);
        goto done;
    }
    if (page.status && strcmp(page.status, "received") != 0 && strcmp(page.status, "routed") != 0 &&
        strcmp(page.status, "unrouted") != 0 && strcmp(page.status, "partial") != 0 &&
        strcmp(page.status, "rule_error") != 0) {
        admin_bad(req, "status must be received, routed, unrouted, partial or rule_error");
        goto done;
    }
    if (store_read_events_page(adm->deps.store, &page, admin_on_events_page, req) < 0)
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
done:
    evhttp_clear_headers(&q);
}

/* ---- GET /api/deliveries ---- */

static void admin_deliveries(struct admin *adm, struct evhttp_request *req) {
    struct evkeyvalq q;
    struct store_page page = {0};

    if (admin_query(req, &q) < 0)
        return;
    if (admin_paging(req, &q, &page) < 0)
        goto done;
    page.status = evhttp_find_header(&q, "status");
    page.endpoint = evhttp_find_header(&q, "endpoint");
    if (page.status && strcmp(page.status, "pending") != 0 &&
        strcmp(page.status, "delivered") != 0 && strcmp(page.status, "failed") != 0 &&
        strcmp(page.status, "held") != 0) {
        admin_bad(req, "status must be pending, delivered, failed or held");
        goto done;
    }
    if (store_read_deliveries_page(adm->deps.store, &page, admin_on_deliveries_page, req) < 0)
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
done:
    evhttp_clear_headers(&q);
}

/* ---- replies that wait for the group commit ---- */

/* Sends c's reply (why: the reason when there is none) and frees c. */
static void admin_commit_reply(struct admin_commit *c, const char *why) {
    if (c->code == 204) {
        evhttp_send_reply(c->req, 204, "No Content", NULL);
    } else if (c->reply) {
        http_reply_json(c->req, c->code, c->phrase, c->reply);
        c->reply = NULL; /* http_reply_json took it */
    } else {
        admin_error(c->req, c->se, 503, "Service Unavailable", why);
    }
    admin_commit_free(c);
}

/* The event detail read after the commit (a replay's answer). */
static void admin_on_commit_detail(void *arg, const struct store_result *r) {
    struct admin_commit *c = arg;

    if (r->status >= 0 && r->detail)
        c->reply = admin_event_json(r->detail);
    admin_commit_reply(c, r->status < 0 ? r->err
                          : !r->detail  ? "the event is gone (retention)"
                                        : "out of memory");
}

static void admin_on_commit(void *arg, int ok) {
    struct admin_commit *c = arg;
    const struct admin_deps *gw = &c->adm->deps;

    if (!ok) {
        admin_error(c->req, c->se, 503, "Service Unavailable", "store unavailable, retry later");
        admin_commit_free(c);
        return;
    }
    if (c->apply)
        c->apply(c);
    if (c->kick)
        deliver_kick_all(gw->deliver);
    if (!c->reply && c->event_id && c->code != 204) {
        if (store_read_event_detail(gw->store, c->event_id, admin_on_commit_detail, c) < 0)
            admin_commit_reply(c, "out of memory");
        return;
    }
    admin_commit_reply(c, "out of memory");
}

void admin_on_done(void *arg, const struct store_done *d) {
    struct admin_commit *c = arg;

    if (!d->ok) {
        admin_error(c->req, c->se, 503, "Service Unavailable",
                    d->err[0] ? d->err : "store unavailable, retry later");
        admin_commit_free(c);
        return;
    }
    if (c->check && c->check(c, d->status)) {
        admin_commit_free(c);
        return;
    }
    admin_on_commit(c, 1); /* the call was durable: its group is on disk */
}

void admin_done_queued(struct admin_commit *c, int rc) {
    if (rc < 0) {
        admin_error(c->req, c->se, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
    }
}

void admin_commit_free(struct admin_commit *c) {
    json_decref(c->reply);
    free(c->event_id);
    admin_sub_clear(&c->sub);
    free(c);
}

void admin_after_commit(struct admin_commit *c) {
    if (store_on_commit(c->adm->deps.store, admin_on_commit, c) < 0) {
        admin_error(c->req, c->se, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
    }
}

struct admin_commit *admin_commit_new(struct admin *adm, struct evhttp_request *req, int code,
                                      const char *phrase) {
    struct admin_commit *c = calloc(1, sizeof *c);
    if (!c) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        return NULL;
    }
    c->adm = adm;
    c->req = req;
    c->code = code;
    c->phrase = phrase;
    return c;
}

/* ---- POST /api/events/{id}/replay ---- */

/* The replay's outcome (ingest_replay_fn): its new deliveries are in the
 * open group; the answer (the event's detail) waits for its commit. */
static void admin_on_replayed(void *arg, int rc, const char *err) {
    struct admin_commit *c = arg;

    if (rc < 0) {
        http_reply_error(c->req, 503, "Service Unavailable", err);
        admin_commit_free(c);
    } else if (rc == 0) {
        http_reply_error(c->req, 404, "Not Found", "no such event");
        admin_commit_free(c);
    } else {
        admin_after_commit(c);
    }
}

static void admin_replay(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c = admin_commit_new(adm, req, 200, "OK");

    if (!c)
        return;
    if (!(c->event_id = util_strdup(id)) ||
        ingest_replay(adm->deps.ingest, id, admin_on_replayed, c) < 0) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
    }
}

/* ---- POST /api/deliveries/{id}/retry ---- */

static int admin_retry_check(struct admin_commit *c, int status) {
    if (status == 0)
        http_reply_error(c->req, 404, "Not Found", "no such delivery");
    else if (status == 2)
        http_reply_error(c->req, 409, "Conflict", "only a failed delivery can be retried");
    return status != 1;
}

static void admin_retry(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c = admin_commit_new(adm, req, 200, "OK");

    if (!c)
        return;
    c->kick = 1;
    c->check = admin_retry_check;
    c->reply = json_pack("{sssssb}", "id", id, "status", "pending", "ok", 1);
    admin_done_queued(
        c, store_delivery_retry_done(adm->deps.store, id, util_now_ms(), admin_on_done, c));
    deliver_kick_all(adm->deps.deliver); /* claimable at COMMIT, before the reply's sync */
}

/* ---- POST /api/deliveries/{id}/skip ---- */

static int admin_skip_check(struct admin_commit *c, int status) {
    if (status == 0)
        http_reply_error(c->req, 404, "Not Found", "no such delivery");
    else if (status == 2)
        http_reply_error(c->req, 409, "Conflict",
                         "only a failed delivery that blocks its order key can be skipped");
    return status != 1;
}

/* A failed delivery that blocks its order key: it stays failed (a dead
 * letter), and the key's next delivery goes. */
static void admin_skip(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c = admin_commit_new(adm, req, 200, "OK");

    if (!c)
        return;
    c->kick = 1;
    c->check = admin_skip_check;
    c->reply = json_pack("{sssssb}", "id", id, "status", "failed", "skipped", 1);
    admin_done_queued(
        c, store_delivery_skip_done(adm->deps.store, id, util_now_ms(), admin_on_done, c));
    deliver_kick_all(adm->deps.deliver);
}

/* ---- POST /api/endpoints/{name}/test ---- */

/* Sample data per type of the canonical taxonomy (lua/taxonomy.lua). */
static const char *admin_sample_data(const char *type) {
    static const struct {
        const char *prefix, *data;
    } samples[] = {
        {"tracking.", "{\"tracking_number\":\"1Z999AA10123456784\",\"carrier\":\"UPS\","
                      "\"location\":\"Louisville, KY, US\","
                      "\"order_id\":\"ord_test_1001\"}"},
        {"shipment.", "{\"shipment_id\":\"shp_test_1001\",\"order_id\":\"ord_test_1001\","
                      "\"carrier\":\"USPS\",\"tracking_number\":\"9400111899223334445566\"}"},
        {"order.", "{\"order_id\":\"ord_test_1001\",\"store\":\"Test Store\","
                   "\"items\":[{\"sku\":\"SKU-1\",\"quantity\":1}]}"},
        {"batch.", "{\"batch_id\":\"bat_test_1001\",\"count\":25}"},
        {"rate.", "{\"rate_id\":\"rte_test_1001\",\"carrier\":\"FedEx\",\"amount\":\"12.34\","
                  "\"currency\":\"USD\"}"},
        {"carrier.", "{\"carrier_id\":\"car_test_1001\",\"carrier\":\"DHL Express\"}"},
        {"store.", "{\"store_id\":\"sto_test_1001\",\"name\":\"Test Store\"}"},
        {"balance.", "{\"balance\":\"4.20\",\"currency\":\"USD\",\"threshold\":\"10.00\"}"},
        {"billing.", "{\"adjustment_id\":\"adj_test_1001\",\"amount\":\"-1.50\","
                     "\"currency\":\"USD\"}"},
    };
    static const char *const types[] = {
        "shipment.created",    "shipment.cancelled",
        "shipment.delivered",  "shipment.returned",
        "shipment.exception",  "tracking.accepted",
        "tracking.in_transit", "tracking.out_for_delivery",
        "tracking.delivered",  "tracking.failed_attempt",
        "tracking.exception",  "tracking.unknown",
        "order.imported",      "order.updated",
        "order.cancelled",     "batch.completed",
        "rate.updated",        "carrier.connected",
        "store.refreshed",     "balance.low",
        "billing.adjustment",
    };
    int known = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        known |= strcmp(type, types[i]) == 0;
    for (size_t i = 0; known && i < sizeof samples / sizeof samples[0]; i++)
        if (strncmp(type, samples[i].prefix, strlen(samples[i].prefix)) == 0)
            return samples[i].data;
    return NULL;
}

static void admin_test(struct admin *adm, struct evhttp_request *req, const char *name) {
    const struct admin_deps *gw = &adm->deps;
    const struct config_endpoint *ep = config_endpoint_by_name(rules_config(*gw->rules), name);
    json_t *body = NULL, *data = NULL;
    const char *type, *fmt;
    char id[UTIL_ID_MAX], err[256];
    struct admin_commit *c;

    if (!ep) {
        http_reply_error(req, 404, "Not Found", "no such endpoint");
        return;
    }
    if (!(body = admin_body_object(req)))
        return;
    type = json_string_value(json_object_get(body, "type"));
    if (!type || !(fmt = admin_sample_data(type))) {
        admin_bad(req, "type must be a type of the taxonomy, e.g. \"tracking.delivered\"");
        goto done;
    }
    if (!(data = json_loads(fmt, 0, NULL)) ||
        json_object_set_new(data, "status", json_string(strchr(type, '.') + 1)) < 0)
        goto oom;
    if (ingest_test(gw->ingest, ep, type, data, id, sizeof id, err, sizeof err) < 0) {
        http_reply_error(req, 503, "Service Unavailable", err);
        goto done;
    }
    if (!(c = admin_commit_new(adm, req, 202, "Accepted")))
        goto done;
    c->kick = 1;
    deliver_kick_all(gw->deliver);
    c->event_id = util_strdup(id);
    if (!c->event_id) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
        goto done;
    }
    admin_after_commit(c);
    goto done;
oom:
    http_reply_error(req, 503, "Service Unavailable", "out of memory");
done:
    json_decref(data);
    json_decref(body);
}

/* ---- GET /metrics ---- */

/* Due deliveries are counted up to this many per endpoint, so that a scrape
 * of a huge backlog stays short on the loop. */
#define ADMIN_DUE_CAP 100000

/* The scheduler's gauges per configured endpoint. Returns 0 or -1 (OOM). */
static const struct store_endpoint_view *admin_queue_of(const struct store_result *r,
                                                        const char *name);

static int admin_metrics_endpoints(struct admin *adm, struct util_buf *b,
                                   const struct store_result *r, int64_t now) {
    static const char *const help[8][3] = {
        {"waybill_endpoint_due", "gauge",
         "Pending deliveries whose time has come, not yet claimed (counted up to 100000)."},
        {"waybill_endpoint_in_memory", "gauge",
         "Deliveries claimed: waiting for a slot or in flight."},
        {"waybill_endpoint_in_flight", "gauge", "Transfers in flight."},
        {"waybill_endpoint_oldest_due_seconds", "gauge",
         "Age of the oldest due delivery (0: none)."},
        {"waybill_endpoint_stuck", "gauge",
         "1 when deliveries have been due with a free slot for 10 s (a bug)."},
        {"waybill_endpoint_lost_wakeups_total", "counter",
         "Times the watchdog found the endpoint idle while due (a bug, repaired)."},
        {"waybill_endpoint_blocked_keys", "gauge",
         "Order keys held behind a failed head (ordered by key; retry or skip it)."},
        {"waybill_endpoint_oldest_blocked_seconds", "gauge",
         "Age of the oldest blocked key's failure (0: none)."}};
    const struct config *cfg = rules_config(*adm->deps.rules);
    int64_t(*v)[8];
    size_t i, k;
    int bad = 0;

    if (!cfg->nendpoints)
        return 0;
    if (!(v = calloc(cfg->nendpoints, sizeof *v)))
        return -1;
    for (i = 0; i < cfg->nendpoints; i++) {
        static const struct store_endpoint_queue none = {0, 0, 0, INT64_MAX, 0, INT64_MAX};
        const struct store_endpoint_view *view = admin_queue_of(r, cfg->endpoints[i].name);
        const struct store_endpoint_queue q = view && view->ok ? view->q : none; /* 0s on error */
        struct deliver_endpoint_stats st;
        deliver_endpoint_stats(adm->deps.deliver, cfg->endpoints[i].name, &st);
        v[i][0] = q.due;
        v[i][1] = st.in_memory;
        v[i][2] = st.in_flight;
        v[i][3] = q.oldest_due == INT64_MAX ? 0 : now - q.oldest_due; /* ms */
        v[i][4] = st.stuck;
        v[i][5] = (int64_t)st.lost_wakeups;
        v[i][6] = q.blocked;
        v[i][7] = q.oldest_blocked == INT64_MAX ? 0 : now - q.oldest_blocked; /* ms */
    }
    for (k = 0; k < 8 && !bad; k++) {
        bad |= util_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", help[k][0], help[k][2],
                               help[k][0], help[k][1]) < 0;
        for (i = 0; i < cfg->nendpoints && !bad; i++)
            bad |= util_buf_printf(b, "%s{endpoint=\"", help[k][0]) < 0 ||
                   metrics_escape(b, cfg->endpoints[i].name) < 0 ||
                   /* ages are seconds to the millisecond, not truncated */
                   ((k == 3 || k == 7)
                        ? util_buf_printf(b, "\"} %lld.%03lld\n", (long long)(v[i][k] / 1000),
                                          (long long)(v[i][k] % 1000))
                        : util_buf_printf(b, "\"} %lld\n", (long long)v[i][k])) < 0;
    }
    free(v);
    return bad ? -1 : 0;
}

/* GET /metrics: the counters, the queue by state (a first read), then
 * every endpoint's queue (a second); freed by the second's callback. */
struct admin_metrics_read {
    struct admin *adm;
    struct evhttp_request *req;
    int64_t now;
    int counts_ok;
    struct store_counts c;
};

static void admin_on_metrics(void *arg, const struct store_result *r) {
    struct admin_metrics_read *m = arg;
    const struct admin_deps *gw = &m->adm->deps;
    struct admin_status st = {0};
    struct util_buf b = {NULL, 0, 0};
    const struct store_counts *c = &m->c;
    struct evbuffer *out = evbuffer_new();
    int bad = !m->counts_ok || r->status < 0;

    gw->status(gw->arg, &st);
    bad |= metrics_render(&b) < 0;
    bad |= util_buf_printf(
               &b,
               "# HELP waybill_queue_depth Deliveries by state.\n# TYPE waybill_queue_depth gauge\n"
               "waybill_queue_depth{state=\"pending\"} %lld\nwaybill_queue_depth{state=\"held\"} "
               "%lld\n"
               "waybill_queue_depth{state=\"failed\"} %lld\n"
               "waybill_queue_depth{state=\"delivered\"} %lld\n"
               "# HELP waybill_deliveries_in_flight Transfers in flight.\n"
               "# TYPE waybill_deliveries_in_flight gauge\nwaybill_deliveries_in_flight %d\n"
               "# HELP waybill_batch_windows_open Batch windows currently collecting.\n"
               "# TYPE waybill_batch_windows_open gauge\nwaybill_batch_windows_open 0\n"
               "# HELP waybill_reloads_total Successful reloads of config and rules.\n"
               "# TYPE waybill_reloads_total counter\nwaybill_reloads_total %d\n"
               "# HELP waybill_reload_failures_total Failed reloads.\n"
               "# TYPE waybill_reload_failures_total counter\nwaybill_reload_failures_total %d\n"
               "# HELP waybill_uptime_seconds Seconds since start.\n"
               "# TYPE waybill_uptime_seconds gauge\nwaybill_uptime_seconds %lld\n",
               (long long)c->pending, (long long)c->held, (long long)c->failed,
               (long long)c->delivered, deliver_inflight(gw->deliver), st.reloads,
               st.reload_failures, (long long)((util_now_ms() - st.started_at) / 1000)) < 0;
    bad |= admin_metrics_endpoints(m->adm, &b, r, m->now) < 0;
    if (bad || !out) {
        http_reply_error(m->req, 503, "Service Unavailable", "metrics unavailable");
    } else {
        evhttp_add_header(evhttp_request_get_output_headers(m->req), "Content-Type",
                          "text/plain; version=0.0.4; charset=utf-8");
        evbuffer_add(out, b.p, b.len);
        evhttp_send_reply(m->req, 200, "OK", out);
    }
    if (out)
        evbuffer_free(out);
    util_buf_free(&b);
    free(m);
}

static void admin_on_metrics_counts(void *arg, const struct store_result *r) {
    struct admin_metrics_read *m = arg;
    const struct config *cfg = rules_config(*m->adm->deps.rules);
    const char **names = calloc(cfg->nendpoints ? cfg->nendpoints : 1, sizeof *names);
    int rc = -1;

    m->counts_ok = r->status >= 0 && r->counts;
    if (m->counts_ok)
        m->c = *r->counts;
    m->now = util_now_ms();
    if (names) {
        for (size_t i = 0; i < cfg->nendpoints; i++)
            names[i] = cfg->endpoints[i].name;
        rc = store_read_endpoints(m->adm->deps.store, names, cfg->nendpoints, m->now, ADMIN_DUE_CAP,
                                  0, NULL, 0, admin_on_metrics, m);
    }
    free(names);
    if (rc < 0) {
        http_reply_error(m->req, 503, "Service Unavailable", "out of memory");
        free(m);
    }
}

static void admin_metrics(struct admin *adm, struct evhttp_request *req) {
    struct admin_metrics_read *m = calloc(1, sizeof *m);

    if (m) {
        m->adm = adm;
        m->req = req;
    }
    if (!m || store_read_delivery_counts(adm->deps.store, admin_on_metrics_counts, m) < 0) {
        free(m);
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    }
}

/* "/prefix/{id}/suffix" -> id copied into out; 1 when path has that shape. */
int admin_path_id(const char *path, const char *prefix, const char *suffix, char *out,
                  size_t outlen) {
    size_t pl = strlen(prefix), sl = strlen(suffix), len = strlen(path), idl;
    if (len <= pl + sl || strncmp(path, prefix, pl) != 0 || strcmp(path + len - sl, suffix) != 0)
        return 0;
    idl = len - pl - sl;
    if (idl >= outlen || memchr(path + pl, '/', idl))
        return 0;
    memcpy(out, path + pl, idl);
    out[idl] = '\0';
    return 1;
}

static void admin_endpoint_one(struct admin *adm, struct evhttp_request *req, const char *name);

/* Routes added with the operations API; 1 when path was one of them. */
static int admin_dispatch_ops(struct admin *adm, struct evhttp_request *req, const char *path,
                              enum evhttp_cmd_type m) {
    char id[256];

    if (strcmp(path, "/api/events") == 0 && m == EVHTTP_REQ_GET)
        admin_events(adm, req);
    else if (strcmp(path, "/api/deliveries") == 0 && m == EVHTTP_REQ_GET)
        admin_deliveries(adm, req);
    else if (admin_path_id(path, "/api/events/", "/replay", id, sizeof id) && m == EVHTTP_REQ_POST)
        admin_replay(adm, req, id);
    else if (admin_path_id(path, "/api/deliveries/", "/retry", id, sizeof id) &&
             m == EVHTTP_REQ_POST)
        admin_retry(adm, req, id);
    else if (admin_path_id(path, "/api/deliveries/", "/skip", id, sizeof id) &&
             m == EVHTTP_REQ_POST)
        admin_skip(adm, req, id);
    else if (admin_path_id(path, "/api/endpoints/", "", id, sizeof id) && m == EVHTTP_REQ_GET)
        admin_endpoint_one(adm, req, id);
    else if (admin_path_id(path, "/api/endpoints/", "/test", id, sizeof id) && m == EVHTTP_REQ_POST)
        admin_test(adm, req, id);
    else if (strcmp(path, "/metrics") == 0 && m == EVHTTP_REQ_GET)
        admin_metrics(adm, req);
    else
        return admin_se_dispatch(adm, req, path, (int)m) ||
               admin_subs_dispatch(adm, req, path, (int)m);
    return 1;
}

static int admin_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Endpoint ep's queue, set on o: "pending" and "held" (counted for every
 * endpoint, attempted or not), and the scheduler's view: "due" (pending
 * rows whose time has come, not claimed), "in_memory", "in_flight",
 * "oldest_due_age_ms" (null when nothing is due) and "stuck"; ordered by
 * key, "blocked" (keys waiting behind a failed head). */
/* The queue of ep as read (v: NULL or not ok when its read failed: the
 * counts from the endpoint's state stay) beside the scheduler's own state. */
static void admin_endpoint_queue(struct admin *adm, json_t *o, const struct config_endpoint *ep,
                                 const struct store_endpoint_view *v, int64_t now) {
    struct deliver_endpoint_stats st;

    if (!v || !v->ok)
        return;
    deliver_endpoint_stats(adm->deps.deliver, ep->name, &st);
    if (CONFIG_ORDERED_BY_KEY(ep))
        json_object_set_new(o, "blocked", json_integer((json_int_t)v->q.blocked));
    json_object_set_new(o, "pending", json_integer((json_int_t)v->q.pending));
    json_object_set_new(o, "held", json_integer((json_int_t)v->q.held));
    json_object_set_new(o, "due", json_integer((json_int_t)v->q.due));
    json_object_set_new(o, "in_memory", json_integer(st.in_memory));
    json_object_set_new(o, "in_flight", json_integer(st.in_flight));
    json_object_set_new(o, "oldest_due_age_ms",
                        v->q.oldest_due == INT64_MAX
                            ? json_null()
                            : json_integer((json_int_t)(now - v->q.oldest_due)));
    json_object_set_new(o, "stuck", json_boolean(st.stuck));
}

/* The answer's state and queue of endpoint name (NULL when it has none). */
static const struct store_endpoint_state *admin_state_of(const struct store_result *r,
                                                         const char *name) {
    for (size_t k = 0; k < r->nstates; k++)
        if (!strcmp(r->states[k].name, name))
            return &r->states[k];
    return NULL;
}

static const struct store_endpoint_view *admin_queue_of(const struct store_result *r,
                                                        const char *name) {
    for (size_t k = 0; k < r->nqueues; k++)
        if (!strcmp(r->queues[k].name, name))
            return &r->queues[k];
    return NULL;
}

/* Endpoint ep as GET /api/endpoints shows it: its health from its stored
 * state and its queue as the read r answered them, and for an endpoint
 * ordered by key its key and how many keys are blocked. New, or NULL when
 * out of memory. */
static json_t *admin_endpoint_json(struct admin *adm, const struct config_endpoint *ep,
                                   const struct store_result *r, int64_t now) {
    const struct store_endpoint_state *e = admin_state_of(r, ep->name);
    char t1[32], t2[32];
    json_t *rate = json_null(), *o;

    if (e && e->ok + e->failed > 0)
        rate = json_real((double)e->ok / (double)(e->ok + e->failed));
    if (e && e->disabled_at)
        util_time_rfc3339(e->disabled_at, t1, sizeof t1);
    if (e && e->last_error_at)
        util_time_rfc3339(e->last_error_at, t2, sizeof t2);
    o = json_pack("{sssssbsbsosIsIsIsIsisbss?ss?ss?ss?}", "name", ep->name, "url", ep->url,
                  "enabled", ep->enabled && !(e && e->disabled), "disabled",
                  !ep->enabled || (e && e->disabled), "success_rate", rate, "attempts_ok",
                  (json_int_t)(e ? e->ok : 0), "attempts_failed", (json_int_t)(e ? e->failed : 0),
                  "pending", (json_int_t)(e ? e->pending : 0), "held",
                  (json_int_t)(e ? e->held : 0), "concurrency", ep->concurrency, "ordered",
                  ep->ordered || CONFIG_ORDERED_BY_KEY(ep), "disabled_reason",
                  !ep->enabled ? "enabled = false in the config"
                  : e          ? e->reason
                               : NULL,
                  "disabled_at", e && e->disabled_at ? t1 : NULL, "last_error",
                  e ? e->last_error : NULL, "last_error_at", e && e->last_error_at ? t2 : NULL);
    if (!o)
        return NULL;
    if (ep->rate > 0)
        json_object_set_new(o, "rate", json_real(ep->rate));
    if (CONFIG_ORDERED_BY_KEY(ep))
        json_object_set_new(o, "order_key",
                            json_string(ep->order_key ? ep->order_key : "function"));
    admin_endpoint_queue(adm, o, ep, admin_queue_of(r, ep->name), now);
    return o;
}

/* Blocked keys shown by GET /api/endpoints/{name}, at most. */
#define ADMIN_BLOCKED_MAX 100

/* A read of endpoints for one request: the names asked for (borrowed from
 * the config of the call: read during the call only) and, for one
 * endpoint's page, its name (owned: the config may be reloaded before the
 * answer). Freed by the callback. */
struct admin_endpoints_read {
    struct admin *adm;
    struct evhttp_request *req;
    char *one;
    int64_t now;
};

/* Starts the endpoints read for req: every configured endpoint's queue, or
 * only one's (one, with its blocked keys when ordered by key). */
static void admin_endpoints_read(struct admin *adm, struct evhttp_request *req,
                                 const struct config_endpoint *one, store_read_fn fn) {
    const struct config *cfg = rules_config(*adm->deps.rules);
    struct admin_endpoints_read *c = calloc(1, sizeof *c);
    const char **names = NULL;
    size_t n = one ? 1 : cfg->nendpoints;
    int rc = -1;

    if (c && (names = calloc(n ? n : 1, sizeof *names)) && (!one || (c->one = strdup(one->name)))) {
        c->adm = adm;
        c->req = req;
        c->now = util_now_ms();
        for (size_t i = 0; i < n; i++)
            names[i] = one ? one->name : cfg->endpoints[i].name;
        rc = store_read_endpoints(adm->deps.store, names, n, c->now, ADMIN_DUE_CAP, 1,
                                  one && CONFIG_ORDERED_BY_KEY(one) ? one->name : NULL,
                                  ADMIN_BLOCKED_MAX, fn, c);
    }
    free(names);
    if (rc < 0) {
        if (c)
            free(c->one);
        free(c);
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    }
}

/* GET /api/endpoints: every configured endpoint with its health (SPEC 8)
 * and its queue. */
static void admin_on_endpoints(void *arg, const struct store_result *r) {
    struct admin_endpoints_read *c = arg;
    const struct config *cfg = rules_config(*c->adm->deps.rules);
    json_t *list;

    if (r->status < 0) {
        http_reply_error(c->req, 503, "Service Unavailable", r->err);
    } else {
        list = json_array();
        for (size_t i = 0; list && i < cfg->nendpoints; i++)
            json_array_append_new(list, admin_endpoint_json(c->adm, &cfg->endpoints[i], r, c->now));
        http_reply_json(c->req, 200, "OK", json_pack("{soss?}", "data", list, "next", NULL));
    }
    free(c->one);
    free(c);
}

static void admin_endpoints(struct admin *adm, struct evhttp_request *req) {
    admin_endpoints_read(adm, req, NULL, admin_on_endpoints);
}

/* GET /api/endpoints/{name}: one endpoint as the list shows it; ordered by
 * key, with its blocked keys ({key, depth, head, since}, oldest first, up
 * to ADMIN_BLOCKED_MAX): retry or skip the head to let a key go on. */
static void admin_on_endpoint_one(void *arg, const struct store_result *r) {
    struct admin_endpoints_read *c = arg;
    const struct config_endpoint *ep =
        config_endpoint_by_name(rules_config(*c->adm->deps.rules), c->one);
    char at[32];
    json_t *o, *keys;

    if (r->status < 0) {
        http_reply_error(c->req, 503, "Service Unavailable", r->err);
        goto done;
    }
    if (!ep) { /* reloaded away meanwhile */
        http_reply_error(c->req, 404, "Not Found", "no such endpoint");
        goto done;
    }
    o = admin_endpoint_json(c->adm, ep, r, c->now);
    if (o && CONFIG_ORDERED_BY_KEY(ep) && (keys = json_array())) {
        for (size_t k = 0; k < r->nblocked; k++) {
            const struct store_blocked_key *bk = &r->blocked[k];
            util_time_rfc3339(bk->since, at, sizeof at);
            json_array_append_new(keys,
                                  json_pack("{sssIssso}", "key", bk->key, "depth",
                                            (json_int_t)bk->depth, "head", bk->head_id, "since",
                                            bk->since ? json_string(at) : json_null()));
        }
        json_object_set_new(o, "blocked_keys", keys);
    }
    if (!o)
        http_reply_error(c->req, 503, "Service Unavailable", "out of memory");
    else
        http_reply_json(c->req, 200, "OK", o);
done:
    free(c->one);
    free(c);
}

static void admin_endpoint_one(struct admin *adm, struct evhttp_request *req, const char *name) {
    const struct config_endpoint *ep =
        config_endpoint_by_name(rules_config(*adm->deps.rules), name);

    if (!ep)
        http_reply_error(req, 404, "Not Found", "no such endpoint");
    else
        admin_endpoints_read(adm, req, ep, admin_on_endpoint_one);
}

/* POST /api/endpoints/{name}/enable and .../disable. */
static void admin_endpoint_switch(struct admin *adm, struct evhttp_request *req, const char *rest) {
    const struct config *cfg = rules_config(*adm->deps.rules);
    const struct config_endpoint *ep;
    const char *slash = strchr(rest, '/');
    char name[256], err[256];
    int disable;

    if (!slash || (size_t)(slash - rest) >= sizeof name || slash == rest ||
        (strcmp(slash, "/enable") && strcmp(slash, "/disable"))) {
        http_reply_error(req, 404, "Not Found", "no such route");
        return;
    }
    memcpy(name, rest, (size_t)(slash - rest));
    name[slash - rest] = '\0';
    disable = !strcmp(slash, "/disable");
    if (!(ep = config_endpoint_by_name(cfg, name))) {
        http_reply_error(req, 404, "Not Found", "no such endpoint");
        return;
    }
    if (!disable && !ep->enabled) {
        http_reply_error(req, 409, "Conflict",
                         "the endpoint has enabled = false in the config; change it and reload");
        return;
    }
    if (health_endpoint_set_disabled(adm->deps.health, name, disable,
                                     disable ? "disabled by the admin API" : NULL, err,
                                     sizeof err) < 0) {
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    /* 200 only once the change is committed; a rolled-back group answers
     * 503 (and health.c re-reads the stored state). */
    struct admin_commit *c = admin_commit_new(adm, req, 200, "OK");
    if (!c)
        return;
    c->reply = json_pack("{sssb}", "name", name, "disabled",
                         health_endpoint_disabled(adm->deps.health, name));
    admin_after_commit(c);
}

static void on_admin(struct evhttp_request *req, void *arg) {
    static const struct reqlog_site site = {"admin", 0, "/healthz"};
    struct admin *adm = arg;
    const struct config *cfg = rules_config(*adm->deps.rules);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type m = evhttp_request_get_command(req);

    reqlog_watch(req, &site);
    if (!path)
        path = "";
    if (strcmp(path, "/healthz") == 0) {
        admin_read_start(adm, req, store_read_ping, admin_on_health);
        return;
    }
    if (admin_web_public(adm->web, req, path, (int)m))
        return; /* the dashboard's page, files, sign-in and sign-out */
    int session = admin_authorized(cfg, req) ? 1 : admin_web_session(adm->web, req);
    if (session < 0)
        return; /* a cookie without the same origin: 403 sent */
    if (!session) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        admin_error(req, admin_se_path(path), 401, "Unauthorized",
                    "missing or wrong bearer token (or API-Key)");
        return;
    }
    if (strcmp(path, "/api/status") == 0 && m == EVHTTP_REQ_GET) {
        admin_read_start(adm, req, store_read_delivery_counts, admin_on_status);
    } else if (strncmp(path, "/api/events/", 12) == 0 && path[12] && !strchr(path + 12, '/') &&
               m == EVHTTP_REQ_GET) {
        admin_event(adm, req, path + 12);
    } else if (strcmp(path, "/api/endpoints") == 0 && m == EVHTTP_REQ_GET) {
        admin_endpoints(adm, req);
    } else if (strncmp(path, "/api/endpoints/", 15) == 0 && m == EVHTTP_REQ_POST &&
               (admin_ends_with(path, "/enable") || admin_ends_with(path, "/disable"))) {
        admin_endpoint_switch(adm, req, path + 15);
    } else if (strcmp(path, "/api/reload") == 0 && m == EVHTTP_REQ_POST) {
        admin_reload(adm, req);
    } else if (admin_dispatch_ops(adm, req, path, m) || admin_openapi_dispatch(req, path, (int)m) ||
               admin_stream_dispatch(adm->streams, req, path, (int)m) ||
               admin_web_api(adm->web, req, path, (int)m)) {
        /* answered */
    } else {
        http_reply_error(req, 404, "Not Found", "no such route");
    }
}

struct admin *admin_new(const struct admin_deps *deps, int fd, const char *listen, char *err,
                        size_t errlen) {
    struct admin *adm = calloc(1, sizeof *adm);
    struct evhttp_bound_socket *sock;

    if (!adm) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    adm->deps = *deps;
    if (!(adm->streams = admin_streams_new(deps->base, deps->stream))) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        free(adm);
        return NULL;
    }
    adm->http = http_listener_fd(deps->base, fd, listen, &sock, err, errlen);
    if (!adm->http || !(adm->web = admin_web_new(&adm->deps))) {
        if (adm->http)
            snprintf(err, errlen, "out of memory");
        admin_free(adm);
        return NULL;
    }
    evhttp_set_gencb(adm->http, on_admin, adm);
    evhttp_set_max_body_size(adm->http, 1 << 20);
    return adm;
}

void admin_stop(struct admin *adm) {
    if (adm)
        admin_streams_stop(adm->streams);
}

void admin_free(struct admin *adm) {
    if (!adm)
        return;
    admin_streams_free(adm->streams); /* before the connections go */
    if (adm->http)
        evhttp_free(adm->http);
    admin_web_free(adm->web);
    free(adm);
}
