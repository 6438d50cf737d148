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

struct admin {
    struct admin_deps deps;
    struct evhttp *http;
    struct admin_streams *streams; /* GET /api/stream's connections */
    struct admin_web *web;         /* the dashboard (admin_web.c) */
};

/* Constant-time token check: compares digests, so neither content nor
 * length leaks through timing. */
static int admin_authorized(const struct config *cfg, struct evhttp_request *req) {
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];

    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !cfg->admin_token)
        return 0;
    auth += 7;
    SHA256((const unsigned char *)cfg->admin_token, strlen(cfg->admin_token), want);
    SHA256((const unsigned char *)auth, strlen(auth), got);
    return util_ct_equal(want, got, sizeof want);
}

static void admin_status(struct admin *adm, struct evhttp_request *req) {
    const struct admin_deps *gw = &adm->deps;
    struct admin_status st = {0};
    struct store_counts c = {0};
    char loaded[32];

    gw->status(gw->arg, &st);
    util_time_rfc3339(rules_loaded_at(*gw->rules), loaded, sizeof loaded);
    if (store_delivery_counts(gw->store, &c) < 0) {
        http_reply_error(req, 503, "Service Unavailable", "store unavailable");
        return;
    }
    json_t *queue =
        json_pack("{sIsIsIsI}", "pending", (json_int_t)c.pending, "held", (json_int_t)c.held,
                  "failed", (json_int_t)c.failed, "delivered", (json_int_t)c.delivered);
    json_t *last_error = st.reload_error[0] ? json_string(st.reload_error) : json_null();
    http_reply_json(req, 200, "OK",
                    json_pack("{sssIsssisisoso}", "version", WAYBILL_VERSION, "uptime_s",
                              (json_int_t)((util_now_ms() - st.started_at) / 1000),
                              "rules_loaded_at", loaded, "reloads", st.reloads, "reload_failures",
                              st.reload_failures, "last_reload_error", last_error, "queue", queue));
}

static void admin_event(struct admin *adm, struct evhttp_request *req, const char *id) {
    char err[256] = "";
    /* The detail has the raw body, headers and each delivery's payload. */
    json_t *ev = admin_event_json(adm->deps.store, id, err, sizeof err);

    if (ev)
        http_reply_json(req, 200, "OK", ev);
    else if (err[0])
        http_reply_error(req, 503, "Service Unavailable", err);
    else
        http_reply_error(req, 404, "Not Found", "no such event");
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
#define ADMIN_PROBE_TIMEOUT_MS 10000

static void admin_bad(struct evhttp_request *req, const char *msg) {
    http_reply_error(req, 400, "Bad Request", msg);
}

/* The request body as a JSON object (new), or NULL after a 400 was sent. */
static json_t *admin_body_object(struct evhttp_request *req) {
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
static int admin_paging(struct evhttp_request *req, struct evkeyvalq *q, struct store_page *page) {
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
static int admin_query(struct evhttp_request *req, struct evkeyvalq *q) {
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    TAILQ_INIT(q);
    if (query && evhttp_parse_query_str(query, q) < 0) {
        admin_bad(req, "malformed query string");
        return -1;
    }
    return 0;
}

static void admin_reply_page(struct evhttp_request *req, json_t *data, int64_t next) {
    char cur[32];
    snprintf(cur, sizeof cur, "%lld", (long long)next);
    http_reply_json(
        req, 200, "OK",
        json_pack("{soso}", "data", data, "next", next ? json_string(cur) : json_null()));
}

/* ---- GET /api/events ---- */

static void admin_events(struct admin *adm, struct evhttp_request *req) {
    struct evkeyvalq q;
    struct store_page page = {0};
    json_t *data = NULL;
    int64_t next = 0;
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
    if (admin_events_page_json(adm->deps.store, &page, &data, &next, err, sizeof err) < 0)
        http_reply_error(req, 503, "Service Unavailable", err);
    else
        admin_reply_page(req, data, next);
done:
    evhttp_clear_headers(&q);
}

/* ---- GET /api/deliveries ---- */

static void admin_deliveries(struct admin *adm, struct evhttp_request *req) {
    struct evkeyvalq q;
    struct store_page page = {0};
    json_t *data = NULL;
    int64_t next = 0;
    char err[256];

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
    if (admin_deliveries_page_json(adm->deps.store, &page, &data, &next, err, sizeof err) < 0)
        http_reply_error(req, 503, "Service Unavailable", err);
    else
        admin_reply_page(req, data, next);
done:
    evhttp_clear_headers(&q);
}

/* ---- replies that wait for the group commit ---- */

enum admin_op { OP_NONE, OP_SUB_ADD, OP_SUB_URL, OP_SUB_DEL };

/* A write's reply, sent once the group holding the write committed (and,
 * for subscriptions, the registry updated: it mirrors committed rows only). */
struct admin_commit {
    struct admin *adm;
    struct evhttp_request *req;
    int code;
    const char *phrase;
    json_t *reply;  /* owned; NULL = an event's detail, read after the commit */
    char *event_id; /* for that read */
    enum admin_op op;
    struct store_sub sub; /* OP_SUB_*: strings owned (freed here) */
    int kick;             /* deliveries became due */
};

static void admin_commit_free(struct admin_commit *c) {
    json_decref(c->reply);
    free(c->event_id);
    free((char *)c->sub.id);
    free((char *)c->sub.event);
    free((char *)c->sub.pattern);
    free((char *)c->sub.url);
    free((char *)c->sub.secret);
    free(c);
}

static void admin_on_commit(void *arg, int ok) {
    struct admin_commit *c = arg;
    const struct admin_deps *gw = &c->adm->deps;
    const struct subs_entry *e;
    char err[256] = "";

    if (!ok) {
        http_reply_error(c->req, 503, "Service Unavailable", "store unavailable, retry later");
        goto done;
    }
    if (c->op == OP_SUB_ADD && subs_add(gw->subs, &c->sub) < 0)
        log_msg(LOG_ERROR, "subscription %s stored but not loaded (out of memory)", c->sub.id);
    else if (c->op == OP_SUB_URL && subs_set_url(gw->subs, c->sub.id, c->sub.url) < 0)
        log_msg(LOG_ERROR, "subscription %s: new url stored but not loaded", c->sub.id);
    else if (c->op == OP_SUB_DEL)
        subs_remove(gw->subs, c->sub.id);
    if ((c->op == OP_SUB_ADD || c->op == OP_SUB_URL) && (e = subs_find(gw->subs, c->sub.id))) {
        json_decref(c->reply);
        c->reply = admin_sub_json(e, c->op == OP_SUB_ADD);
    }
    if (c->kick)
        deliver_kick_all(gw->deliver);
    if (!c->reply && c->event_id) {
        c->reply = admin_event_json(gw->store, c->event_id, err, sizeof err);
    }
    if (c->code == 204) {
        evhttp_send_reply(c->req, 204, "No Content", NULL);
    } else if (c->reply) {
        http_reply_json(c->req, c->code, c->phrase, c->reply);
        c->reply = NULL; /* http_reply_json took it */
    } else {
        http_reply_error(c->req, 503, "Service Unavailable", err[0] ? err : "out of memory");
    }
done:
    admin_commit_free(c);
}

/* Registers c for the open group's commit; on failure replies 503 and frees c. */
static void admin_after_commit(struct admin_commit *c) {
    if (store_on_commit(c->adm->deps.store, admin_on_commit, c) < 0) {
        http_reply_error(c->req, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
    }
}

static struct admin_commit *admin_commit_new(struct admin *adm, struct evhttp_request *req,
                                             int code, const char *phrase) {
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

static void admin_replay(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c;
    char err[256];
    int rc = ingest_replay(adm->deps.ingest, id, err, sizeof err);

    if (rc < 0) {
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    if (rc == 0) {
        http_reply_error(req, 404, "Not Found", "no such event");
        return;
    }
    c = admin_commit_new(adm, req, 200, "OK");
    if (c) {
        c->event_id = util_strdup(id);
        if (!c->event_id) {
            http_reply_error(req, 503, "Service Unavailable", "out of memory");
            admin_commit_free(c);
        } else {
            admin_after_commit(c);
        }
    }
}

/* ---- POST /api/deliveries/{id}/retry ---- */

static void admin_retry(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c;
    char err[256];
    int rc = store_delivery_retry(adm->deps.store, id, util_now_ms(), err, sizeof err);

    if (rc < 0) {
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    if (rc == 0) {
        http_reply_error(req, 404, "Not Found", "no such delivery");
        return;
    }
    if (rc == 2) {
        http_reply_error(req, 409, "Conflict", "only a failed delivery can be retried");
        return;
    }
    if (!(c = admin_commit_new(adm, req, 200, "OK")))
        return;
    c->kick = 1;
    deliver_kick_all(adm->deps.deliver); /* claimable at COMMIT, before the reply's sync */
    c->reply = json_pack("{sssssb}", "id", id, "status", "pending", "ok", 1);
    admin_after_commit(c);
}

/* ---- POST /api/deliveries/{id}/skip ---- */

/* A failed delivery that blocks its order key: it stays failed (a dead
 * letter), and the key's next delivery goes. */
static void admin_skip(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c;
    char err[256];
    int rc = store_delivery_skip(adm->deps.store, id, util_now_ms(), err, sizeof err);

    if (rc < 0) {
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    if (rc == 0) {
        http_reply_error(req, 404, "Not Found", "no such delivery");
        return;
    }
    if (rc == 2) {
        http_reply_error(req, 409, "Conflict",
                         "only a failed delivery that blocks its order key can be skipped");
        return;
    }
    if (!(c = admin_commit_new(adm, req, 200, "OK")))
        return;
    c->kick = 1;
    deliver_kick_all(adm->deps.deliver);
    c->reply = json_pack("{sssssb}", "id", id, "status", "failed", "skipped", 1);
    admin_after_commit(c);
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

/* ---- subscriptions: /v1/environment/webhooks (ShipEngine's shape) ---- */

/* A verification POST in flight; the admin request waits for it. */
struct admin_verify {
    struct admin *adm;
    struct evhttp_request *req;
    enum admin_op op;     /* OP_SUB_ADD or OP_SUB_URL */
    struct store_sub sub; /* strings owned */
};

static void admin_verify_free(struct admin_verify *v) {
    free((char *)v->sub.id);
    free((char *)v->sub.event);
    free((char *)v->sub.pattern);
    free((char *)v->sub.url);
    free((char *)v->sub.secret);
    free(v);
}

static int admin_url_ok(const char *url) {
    return url && strlen(url) < 2048 && util_http_url_ok(url);
}

struct admin_hdrs {
    char lines[4][512];
    int n;
};

static void admin_hdr_add(void *ctx, const char *name, const char *value) {
    struct admin_hdrs *h = ctx;
    if (h->n < 4)
        snprintf(h->lines[h->n++], sizeof h->lines[0], "%s: %s", name, value);
}

static void admin_verify_done(void *arg, int status_code, const char *reason) {
    struct admin_verify *v = arg;
    struct store *st;
    struct admin_commit *c;
    char err[256], msg[600];
    int rc;

    /* shutting down: the request and v->adm are gone with the listener */
    if (status_code < 0)
        goto done;
    st = v->adm->deps.store;
    if (status_code != 200) {
        if (status_code)
            snprintf(msg, sizeof msg, "verification POST to %s answered %d, not 200", v->sub.url,
                     status_code);
        else
            snprintf(msg, sizeof msg, "verification POST to %s failed: %s", v->sub.url, reason);
        http_reply_error(v->req, 422, "Unprocessable Entity", msg);
        goto done;
    }
    if (v->op == OP_SUB_ADD) {
        rc = store_sub_put(st, &v->sub, err, sizeof err);
        if (rc == STORE_DUP) {
            http_reply_error(v->req, 409, "Conflict", "that event already has a webhook");
            goto done;
        }
    } else {
        rc = store_sub_change(st, v->sub.id, v->sub.url, err, sizeof err);
        if (rc == 0) {
            http_reply_error(v->req, 404, "Not Found", "no such webhook");
            goto done;
        }
        rc = rc == 1 ? 0 : -1;
    }
    if (rc < 0) {
        http_reply_error(v->req, 503, "Service Unavailable", err);
        goto done;
    }
    if (!(c = admin_commit_new(v->adm, v->req, v->op == OP_SUB_ADD ? 201 : 200,
                               v->op == OP_SUB_ADD ? "Created" : "OK")))
        goto done;
    c->op = v->op;
    c->sub = v->sub; /* handoff of the strings */
    memset(&v->sub, 0, sizeof v->sub);
    admin_after_commit(c);
done:
    admin_verify_free(v);
}

/* Sends v's verification POST, signed `standard` with the subscription's
 * secret; replies (422/503) and frees v when it cannot start. */
static void admin_verify_start(struct admin_verify *v) {
    const struct admin_deps *gw = &v->adm->deps;
    struct admin_hdrs h = {0};
    struct verify_secret key = {NULL, 0};
    const char *lines[8];
    char msg_id[UTIL_ID_MAX], *body;
    json_t *msg;
    int n = 0, rc = -1;

    util_id_new("msg_", msg_id, sizeof msg_id);
    msg = json_pack("{sssssss{ssss}}", "type", "webhook.verification", "webhook_id", v->sub.id,
                    "event", v->sub.event, "data", "url", v->sub.url, "event", v->sub.event);
    body = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    key.key = verify_whsec_decode(v->sub.secret, &key.len);
    if (body && key.key &&
        verify_sign(SIGN_STANDARD, &key, 1, msg_id, util_now_ms() / 1000, body, strlen(body),
                    admin_hdr_add, &h) == 0) {
        lines[n++] = "Content-Type: application/json";
        lines[n++] = "User-Agent: waybill/" WAYBILL_VERSION;
        lines[n++] = "X-Waybill-Event-Type: webhook.verification";
        for (int i = 0; i < h.n && n < 7; i++)
            lines[n++] = h.lines[i];
        lines[n] = NULL;
        rc = httpc_probe(gw->httpc, v->sub.url, body, strlen(body), lines, ADMIN_PROBE_TIMEOUT_MS,
                         admin_verify_done, v);
    }
    free(body);
    free(key.key);
    if (rc < 0) {
        http_reply_error(v->req, 503, "Service Unavailable", "cannot send the verification POST");
        admin_verify_free(v);
    }
}

static void admin_webhook_create(struct admin *adm, struct evhttp_request *req) {
    json_t *body = admin_body_object(req);
    const char *url, *event;
    char pattern[160], err[512], id[UTIL_ID_MAX], secret[64];
    unsigned char raw[24];
    struct admin_verify *v;

    if (!body)
        return;
    url = json_string_value(json_object_get(body, "url"));
    event = json_string_value(json_object_get(body, "event"));
    if (!admin_url_ok(url)) {
        admin_bad(req, "url must be an http:// or https:// URL");
        goto done;
    }
    if (!event) {
        admin_bad(req, "event is required");
        goto done;
    }
    if (subs_pattern(event, pattern, sizeof pattern, err, sizeof err) < 0) {
        admin_bad(req, err);
        goto done;
    }
    if (subs_find_pattern(adm->deps.subs, pattern)) {
        http_reply_error(req, 409, "Conflict", "that event already has a webhook");
        goto done;
    }
    if (RAND_bytes(raw, sizeof raw) != 1) {
        http_reply_error(req, 503, "Service Unavailable", "no randomness for a secret");
        goto done;
    }
    memcpy(secret, "whsec_", 6);
    util_base64_encode(raw, sizeof raw, secret + 6);
    util_id_new("sub_", id, sizeof id);
    v = calloc(1, sizeof *v);
    if (!v) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        goto done;
    }
    v->adm = adm;
    v->req = req;
    v->op = OP_SUB_ADD;
    v->sub.id = util_strdup(id);
    v->sub.event = util_strdup(event);
    v->sub.pattern = util_strdup(pattern);
    v->sub.url = util_strdup(url);
    v->sub.secret = util_strdup(secret);
    v->sub.created_at = util_now_ms();
    if (!v->sub.id || !v->sub.event || !v->sub.pattern || !v->sub.url || !v->sub.secret) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        admin_verify_free(v);
        goto done;
    }
    admin_verify_start(v);
done:
    json_decref(body);
}

static void admin_webhook_update(struct admin *adm, struct evhttp_request *req, const char *id) {
    const struct subs_entry *e = subs_find(adm->deps.subs, id);
    json_t *body;
    const char *url;
    struct admin_verify *v;

    if (!e) {
        http_reply_error(req, 404, "Not Found", "no such webhook");
        return;
    }
    if (!(body = admin_body_object(req)))
        return;
    url = json_string_value(json_object_get(body, "url"));
    if (!admin_url_ok(url)) {
        admin_bad(req, "url must be an http:// or https:// URL");
        json_decref(body);
        return;
    }
    /* The new URL is verified like a new subscription's. */
    v = calloc(1, sizeof *v);
    if (v) {
        v->adm = adm;
        v->req = req;
        v->op = OP_SUB_URL;
        v->sub.id = util_strdup(e->id);
        v->sub.event = util_strdup(e->event);
        v->sub.pattern = util_strdup(e->pattern);
        v->sub.url = util_strdup(url);
        v->sub.secret = util_strdup(e->secret);
        v->sub.created_at = e->created_at;
    }
    json_decref(body);
    if (!v || !v->sub.id || !v->sub.event || !v->sub.pattern || !v->sub.url || !v->sub.secret) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        if (v)
            admin_verify_free(v);
        return;
    }
    admin_verify_start(v);
}

static void admin_webhook_delete(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c;
    char err[256];
    int rc = subs_find(adm->deps.subs, id)
                 ? store_sub_change(adm->deps.store, id, NULL, err, sizeof err)
                 : 0;

    if (rc < 0) {
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    if (rc == 0) {
        http_reply_error(req, 404, "Not Found", "no such webhook");
        return;
    }
    if (!(c = admin_commit_new(adm, req, 204, "No Content")))
        return;
    c->op = OP_SUB_DEL;
    c->sub.id = util_strdup(id);
    if (!c->sub.id) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
        return;
    }
    admin_after_commit(c);
}

static void admin_webhooks(struct admin *adm, struct evhttp_request *req, const char *id,
                           enum evhttp_cmd_type m) {
    const struct subs_entry *e;

    if (!id && m == EVHTTP_REQ_POST) {
        admin_webhook_create(adm, req);
    } else if (!id && m == EVHTTP_REQ_GET) {
        http_reply_json(req, 200, "OK",
                        json_pack("{sosn}", "data", admin_subs_json(adm->deps.subs), "next"));
    } else if (id && m == EVHTTP_REQ_GET) {
        if ((e = subs_find(adm->deps.subs, id)))
            http_reply_json(req, 200, "OK", admin_sub_json(e, 0));
        else
            http_reply_error(req, 404, "Not Found", "no such webhook");
    } else if (id && m == EVHTTP_REQ_PUT) {
        admin_webhook_update(adm, req, id);
    } else if (id && m == EVHTTP_REQ_DELETE) {
        admin_webhook_delete(adm, req, id);
    } else {
        http_reply_error(req, 405, "Method Not Allowed", "method not allowed on this route");
    }
}

/* ---- GET /metrics ---- */

/* Due deliveries are counted up to this many per endpoint, so that a scrape
 * of a huge backlog stays short on the loop. */
#define ADMIN_DUE_CAP 100000

/* The scheduler's gauges per configured endpoint. Returns 0 or -1 (OOM). */
static int admin_metrics_endpoints(struct admin *adm, struct util_buf *b) {
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
    int64_t now = util_now_ms(), (*v)[8];
    size_t i, k;
    int bad = 0;

    if (!cfg->nendpoints)
        return 0;
    if (!(v = calloc(cfg->nendpoints, sizeof *v)))
        return -1;
    for (i = 0; i < cfg->nendpoints; i++) {
        struct deliver_endpoint_stats st;
        struct store_endpoint_queue q;
        deliver_endpoint_stats(adm->deps.deliver, cfg->endpoints[i].name, &st);
        /* 0s on error */
        store_endpoint_queue(adm->deps.store, cfg->endpoints[i].name, now, ADMIN_DUE_CAP, 0, &q);
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

static void admin_metrics(struct admin *adm, struct evhttp_request *req) {
    const struct admin_deps *gw = &adm->deps;
    struct admin_status st = {0};
    struct util_buf b = {NULL, 0, 0};
    struct store_counts c = {0};
    struct evbuffer *out = evbuffer_new();
    int bad = store_delivery_counts(gw->store, &c) < 0;

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
               (long long)c.pending, (long long)c.held, (long long)c.failed, (long long)c.delivered,
               deliver_inflight(gw->deliver), st.reloads, st.reload_failures,
               (long long)((util_now_ms() - st.started_at) / 1000)) < 0;
    bad |= admin_metrics_endpoints(adm, &b) < 0;
    if (bad || !out) {
        http_reply_error(req, 503, "Service Unavailable", "metrics unavailable");
    } else {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "text/plain; version=0.0.4; charset=utf-8");
        evbuffer_add(out, b.p, b.len);
        evhttp_send_reply(req, 200, "OK", out);
    }
    if (out)
        evbuffer_free(out);
    util_buf_free(&b);
}

/* "/prefix/{id}/suffix" -> id copied into out; 1 when path has that shape. */
static int admin_path_id(const char *path, const char *prefix, const char *suffix, char *out,
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
    else if (strcmp(path, "/v1/environment/webhooks") == 0)
        admin_webhooks(adm, req, NULL, m);
    else if (admin_path_id(path, "/v1/environment/webhooks/", "", id, sizeof id))
        admin_webhooks(adm, req, id, m);
    else if (strcmp(path, "/metrics") == 0 && m == EVHTTP_REQ_GET)
        admin_metrics(adm, req);
    else
        return 0;
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
static void admin_endpoint_queue(struct admin *adm, json_t *o, const struct config_endpoint *ep,
                                 int64_t now) {
    struct deliver_endpoint_stats st;
    struct store_endpoint_queue q;

    deliver_endpoint_stats(adm->deps.deliver, ep->name, &st);
    if (store_endpoint_queue(adm->deps.store, ep->name, now, ADMIN_DUE_CAP, 1, &q) < 0)
        return; /* the counts from the endpoint's state stay */
    if (CONFIG_ORDERED_BY_KEY(ep))
        json_object_set_new(o, "blocked", json_integer((json_int_t)q.blocked));
    json_object_set_new(o, "pending", json_integer((json_int_t)q.pending));
    json_object_set_new(o, "held", json_integer((json_int_t)q.held));
    json_object_set_new(o, "due", json_integer((json_int_t)q.due));
    json_object_set_new(o, "in_memory", json_integer(st.in_memory));
    json_object_set_new(o, "in_flight", json_integer(st.in_flight));
    json_object_set_new(o, "oldest_due_age_ms",
                        q.oldest_due == INT64_MAX ? json_null()
                                                  : json_integer((json_int_t)(now - q.oldest_due)));
    json_object_set_new(o, "stuck", json_boolean(st.stuck));
}

/* Endpoint ep as GET /api/endpoints shows it: its health from its stored
 * state e (NULL when never attempted or disabled), its queue, and for an
 * endpoint ordered by key its key and how many keys are blocked. New, or
 * NULL when out of memory. */
static json_t *admin_endpoint_json(struct admin *adm, const struct config_endpoint *ep,
                                   const struct store_endpoint_state *e, int64_t now) {
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
    admin_endpoint_queue(adm, o, ep, now);
    return o;
}

/* GET /api/endpoints: every configured endpoint with its health (SPEC 8)
 * and its queue. */
static void admin_endpoints(struct admin *adm, struct evhttp_request *req) {
    const struct config *cfg = rules_config(*adm->deps.rules);
    int64_t now = util_now_ms();
    struct store_endpoint_state *st = NULL;
    size_t n = 0, i, k;
    char err[256];
    json_t *list = json_array();

    if (store_endpoint_states(adm->deps.store, &st, &n, err, sizeof err) < 0) {
        json_decref(list);
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    for (i = 0; i < cfg->nendpoints; i++) {
        const struct config_endpoint *ep = &cfg->endpoints[i];
        const struct store_endpoint_state *e = NULL;
        for (k = 0; k < n; k++)
            if (!strcmp(st[k].name, ep->name))
                e = &st[k];
        json_array_append_new(list, admin_endpoint_json(adm, ep, e, now));
    }
    store_endpoint_states_free(st, n);
    http_reply_json(req, 200, "OK", json_pack("{soss?}", "data", list, "next", NULL));
}

/* Blocked keys shown by GET /api/endpoints/{name}, at most. */
#define ADMIN_BLOCKED_MAX 100

/* GET /api/endpoints/{name}: one endpoint as the list shows it; ordered by
 * key, with its blocked keys ({key, depth, head, since}, oldest first, up
 * to ADMIN_BLOCKED_MAX): retry or skip the head to let a key go on. */
static void admin_endpoint_one(struct admin *adm, struct evhttp_request *req, const char *name) {
    const struct config_endpoint *ep =
        config_endpoint_by_name(rules_config(*adm->deps.rules), name);
    struct store_endpoint_state *st = NULL;
    struct store_blocked_key *bk = NULL;
    size_t n = 0, nk = 0, k;
    int64_t now = util_now_ms();
    char err[256], at[32];
    json_t *o, *keys;

    if (!ep) {
        http_reply_error(req, 404, "Not Found", "no such endpoint");
        return;
    }
    if (store_endpoint_states(adm->deps.store, &st, &n, err, sizeof err) < 0 ||
        (CONFIG_ORDERED_BY_KEY(ep) &&
         store_endpoint_blocked(adm->deps.store, name, ADMIN_BLOCKED_MAX, &bk, &nk, err,
                                sizeof err) < 0)) {
        store_endpoint_states_free(st, n);
        http_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    for (k = 0; k < n && strcmp(st[k].name, name); k++)
        ;
    o = admin_endpoint_json(adm, ep, k < n ? &st[k] : NULL, now);
    if (o && CONFIG_ORDERED_BY_KEY(ep) && (keys = json_array())) {
        for (k = 0; k < nk; k++) {
            util_time_rfc3339(bk[k].since, at, sizeof at);
            json_array_append_new(keys,
                                  json_pack("{sssIssso}", "key", bk[k].key, "depth",
                                            (json_int_t)bk[k].depth, "head", bk[k].head_id, "since",
                                            bk[k].since ? json_string(at) : json_null()));
        }
        json_object_set_new(o, "blocked_keys", keys);
    }
    store_blocked_keys_free(bk, nk);
    store_endpoint_states_free(st, n);
    if (!o) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        return;
    }
    http_reply_json(req, 200, "OK", o);
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
        char names[512], why[640];
        size_t nstuck;
        if (!store_ping(adm->deps.store)) {
            http_reply_error(req, 503, "Service Unavailable", "store does not answer");
        } else if (!store_writable(adm->deps.store)) {
            http_reply_error(req, 503, "Service Unavailable",
                             "store cannot write (see the log: a full disk, a lock)");
        } else if ((nstuck = deliver_stuck(adm->deps.deliver, names, sizeof names)) > 0) {
            /* unauthenticated: a count, not the names (GET /api/endpoints
             * shows which, as "stuck": true) */
            snprintf(why, sizeof why,
                     "%zu endpoint%s with deliveries due and a free slot that are not going "
                     "out (see GET /api/endpoints, \"stuck\")",
                     nstuck, nstuck == 1 ? "" : "s");
            http_reply_json(req, 503, "Service Unavailable",
                            json_pack("{sbss}", "ok", 0, "error", why));
        } else {
            http_reply_json(req, 200, "OK", json_pack("{sb}", "ok", 1));
        }
        return;
    }
    if (admin_web_public(adm->web, req, path, (int)m))
        return; /* the dashboard's page, files, sign-in and sign-out */
    int session = admin_authorized(cfg, req) ? 1 : admin_web_session(adm->web, req);
    if (session < 0)
        return; /* a cookie without the same origin: 403 sent */
    if (!session) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        http_reply_error(req, 401, "Unauthorized", "missing or wrong bearer token");
        return;
    }
    if (strcmp(path, "/api/status") == 0 && m == EVHTTP_REQ_GET) {
        admin_status(adm, req);
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
