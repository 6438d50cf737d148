/* ingest.c -- the only way an event enters waybill (see ingest.h).
 * Invariant: an event and its routing are one write (store_event_put with
 * the router's plan), so they commit together or not at all; a carrier is
 * answered only once that write is durable, and its deliveries are claimed
 * only then too (the store's watermark).
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "deliver.h"
#include "ingest.h"
#include "log.h"
#include "route.h"
#include "rules.h"
#include "store.h"
#include "stream.h"
#include "util.h"

struct ingest {
    struct ingest_deps deps;
    int64_t refused_logged_at; /* monotonic ms of the last refusal logged */
    int64_t refused_unlogged;  /* refusals since, not logged */
};

/* A store that cannot write refuses every request: one line at once, then
 * at most one a second with how many more (the log must not flood, nor
 * fill the disk that is already full). */
static void ingest_log_refusal(struct ingest *g, const char *source, const char *why) {
    int64_t now = util_mono_ms();

    if (g->refused_logged_at && now - g->refused_logged_at < 1000) {
        g->refused_unlogged++;
        return;
    }
    if (g->refused_unlogged)
        log_msg(LOG_ERROR, "source %s: storing event failed: %s (and %lld more refused since)",
                source, why, (long long)g->refused_unlogged);
    else
        log_msg(LOG_ERROR, "source %s: storing event failed: %s", source, why);
    g->refused_logged_at = now;
    g->refused_unlogged = 0;
}

struct ingest *ingest_new(const struct ingest_deps *deps) {
    struct ingest *g = calloc(1, sizeof *g);

    if (g)
        g->deps = *deps;
    return g;
}

void ingest_free(struct ingest *g) {
    free(g);
}

/* ---- the live feed ---- */

/* JSON text stored for an event, parsed back; null when absent. */
static json_t *ingest_json_or_null(const char *text) {
    json_t *j = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    return j ? j : json_null();
}

/* An event as the live feed shows it (GET /api/stream), new; NULL when
 * nobody watches or out of memory. */
static json_t *ingest_stream_event(const struct ingest *g, const struct store_event *e,
                                   const char *status) {
    char at[32];

    if (!stream_watched(g->deps.stream))
        return NULL;
    util_time_rfc3339(e->received_at, at, sizeof at);
    return json_pack("{s:s, s:s, s:s?, s:s, s:s, s:s, s:s?, s:o, s:o}", "id", e->id, "source",
                     e->source, "source_id", e->source_id, "type", e->type, "status",
                     status ? status : "routed", "received_at", at, "created_at", e->created_at,
                     "shipment", ingest_json_or_null(e->shipment_json), "data",
                     ingest_json_or_null(e->data_json));
}

/* ---- a carrier's event ---- */

/* A carrier's event between its write and its commit (owned). */
struct pending {
    ingest_done_fn done;
    void *arg;
    struct stream *stream;
    json_t *live; /* for the live feed once committed, or NULL */
    char id[UTIL_ID_MAX];
    int duplicate; /* noted, not stored again, not routed */
    char source[];
};

static void on_carrier_committed(void *arg, int ok) {
    struct pending *p = arg;

    p->done(p->arg, ok, p->id, p->duplicate, p->source);
    if (ok && !p->duplicate)
        stream_publish(p->stream, "event", p->live);
    else
        json_decref(p->live);
    free(p);
}

int ingest_carrier(struct ingest *g, struct ingest_carrier *c, ingest_done_fn done, void *arg,
                   char *err, size_t errlen) {
    size_t slen = strlen(c->source) + 1;
    struct pending *p = malloc(sizeof *p + slen);
    const struct rules_event *ev = c->ev;
    struct route_plan plan;
    char serr[256];
    int rc;

    memset(&plan, 0, sizeof plan);
    if (!p) { /* taken in every case: freed here */
        free(c->headers_json);
        if (c->data_token)
            rules_data_drop(*g->deps.rules, c->data_token);
        c->headers_json = NULL;
        c->data_token = 0;
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(p, 0, sizeof *p);
    memcpy(p->source, c->source, slen);
    p->done = done;
    p->arg = arg;
    util_id_new("evt_", p->id, sizeof p->id);
    struct rules_input in = {.id = p->id,
                             .source = c->source,
                             .source_id = ev->source_id,
                             .type = ev->type,
                             .created_at = ev->created_at,
                             .received_at_ms = c->received_at,
                             .data_json = ev->data_json,
                             .shipment_json = ev->shipment_json,
                             .raw = c->body,
                             .raw_len = c->len,
                             .headers_json = c->headers_json,
                             .data_canonical = 1,
                             .data_token = c->data_token};
    c->data_token = 0; /* taken by rules_route (route_plan) */
    /* The plan first, so that the event and what it routes to are one
     * write: both commit or neither, and the 200 waits for both. A
     * duplicate is routed for nothing (rare: a carrier's retry). */
    if (c->adapted) {
        route_plan(g->deps.route, &in, &plan);
    } else {
        if (in.data_token)
            rules_data_drop(*g->deps.rules, in.data_token);
        plan.store.status = "rule_error";
        plan.store.error = c->error;
    }
    struct store_event se = {.id = p->id,
                             .source = c->source,
                             .source_id = ev->source_id,
                             .type = ev->type,
                             .created_at = ev->created_at,
                             .received_at = c->received_at,
                             .raw = c->body,
                             .raw_len = c->len,
                             .headers_json = c->headers_json,
                             .data_json = ev->data_json,
                             .shipment_json = ev->shipment_json};
    rc = store_event_put(g->deps.store, &se, &plan.store, p->id, sizeof p->id, serr, sizeof serr);
    if (rc < 0) {
        ingest_log_refusal(g, c->source, serr);
        snprintf(err, errlen, "%s", serr);
        goto fail;
    }
    if (rc == STORE_DUP) {
        p->duplicate = 1;
        log_msg(LOG_INFO, "source %s: duplicate of %s (source id %s)", c->source, p->id,
                ev->source_id);
    } else if (c->adapted && route_plan_stored(g->deps.route, &in, &plan, serr, sizeof serr) < 0) {
        /* The group has failed: done runs with ok = 0 (a 503). */
        log_msg(LOG_ERROR, "event %s: %s", p->id, serr);
    } else {
        p->stream = g->deps.stream;
        p->live = ingest_stream_event(g, &se, plan.store.status);
    }
    if (store_on_commit(g->deps.store, on_carrier_committed, p) < 0) {
        json_decref(p->live);
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    route_plan_clear(&plan);
    free(c->headers_json);
    c->headers_json = NULL;
    return 0; /* p is owned by the commit callback now */
fail:
    route_plan_clear(&plan);
    free(c->headers_json);
    c->headers_json = NULL;
    free(p);
    return -1;
}

/* ---- waybill's own events ---- */

void ingest_emit(void *arg, const char *type, json_t *data) {
    struct ingest *g = arg;
    struct route_plan plan;
    char id[UTIL_ID_MAX], err[256], created[32];
    char *data_json = NULL, *raw = NULL;
    json_t *whole = NULL;
    int64_t now = util_now_ms();

    memset(&plan, 0, sizeof plan);
    if (!g || !data)
        goto done;
    util_id_new("evt_", id, sizeof id);
    util_time_rfc3339(now, created, sizeof created);
    data_json = json_dumps(data, JSON_COMPACT);
    whole = json_pack("{sssssssO}", "id", id, "type", type, "created_at", created, "data", data);
    raw = whole ? json_dumps(whole, JSON_COMPACT) : NULL;
    if (!data_json || !raw) {
        log_msg(LOG_ERROR, "%s: out of memory; not emitted", type);
        goto done;
    }
    struct rules_input in = {.id = id,
                             .source = "waybill",
                             .source_id = id,
                             .type = type,
                             .created_at = created,
                             .received_at_ms = now,
                             .data_json = data_json,
                             .raw = raw,
                             .raw_len = strlen(raw),
                             .headers_json = "{}"};
    struct store_event ev = {.id = id,
                             .source = "waybill",
                             .source_id = id,
                             .type = type,
                             .created_at = created,
                             .received_at = now,
                             .raw = raw,
                             .raw_len = in.raw_len,
                             .headers_json = "{}",
                             .data_json = data_json};
    route_plan(g->deps.route, &in, &plan);
    if (store_event_put(g->deps.store, &ev, &plan.store, NULL, 0, err, sizeof err) != 0 ||
        route_plan_stored(g->deps.route, &in, &plan, err, sizeof err) < 0) {
        log_msg(LOG_ERROR, "%s: not stored: %s", type, err);
        goto done;
    }
    log_msg(LOG_INFO, "event %s: %s", id, type);
    stream_publish(g->deps.stream, "event", ingest_stream_event(g, &ev, plan.store.status));
done:
    route_plan_clear(&plan);
    free(data_json);
    free(raw);
    json_decref(whole);
    json_decref(data);
}

/* ---- an admin test event ---- */

int ingest_test(struct ingest *g, const struct config_endpoint *ep, const char *type, json_t *data,
                char *id, size_t idlen, char *err, size_t errlen) {
    char src_id[UTIL_ID_MAX], at[32], *data_text = NULL, *payload = NULL;
    int64_t now = util_now_ms();
    json_t *env;
    int rc = -1;

    util_id_new("evt_", id, idlen);
    util_id_new("test_", src_id, sizeof src_id);
    util_time_rfc3339(now, at, sizeof at);
    env = json_pack("{sssssssssssssOsb}", "id", id, "type", type, "source", "waybill.test",
                    "source_id", src_id, "created_at", at, "received_at", at, "data", data, "test",
                    1);
    data_text = json_dumps(data, JSON_COMPACT);
    payload = env ? json_dumps(env, JSON_COMPACT) : NULL;
    if (!data_text || !payload) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    struct store_event se = {.id = id,
                             .source = "waybill.test",
                             .source_id = src_id,
                             .type = type,
                             .created_at = at,
                             .received_at = now,
                             .raw = payload,
                             .raw_len = strlen(payload),
                             .headers_json = "{}",
                             .data_json = data_text};
    struct store_delivery_new dn = {.endpoint = ep->name,
                                    .event_type = type,
                                    .payload = payload,
                                    .payload_len = strlen(payload),
                                    .content_type = "application/json",
                                    .status = ep->enabled ? "pending" : "held",
                                    .next_at = now};
    struct store_plan plan = {.status = "routed", .deliveries = &dn, .ndeliveries = 1};
    if (store_event_put(g->deps.store, &se, &plan, NULL, 0, err, errlen) != 0)
        goto done;
    deliver_watch_endpoint(g->deps.deliver, ep->name); /* looked at once committed */
    stream_publish(g->deps.stream, "event", ingest_stream_event(g, &se, plan.status));
    rc = 0;
done:
    free(data_text);
    free(payload);
    json_decref(env);
    return rc;
}

/* ---- a replay ---- */

int ingest_replay(struct ingest *g, const char *id, char *err, size_t errlen) {
    struct store_event_row *row = NULL;
    int rc = store_event_get(g->deps.store, id, &row, err, errlen);

    if (rc <= 0)
        return rc;
    route_event(g->deps.route, row);
    store_event_rows_free(row, 1);
    return 1;
}
