/* ingest.c -- the only way an event enters waybill (see ingest.h).
 * Invariant: an event is stored before it is routed, in the same group
 * (operational, test, replay) or routed only once its group is durable (a
 * carrier's, answered first); a carrier's pending event owns its copy of
 * what routing needs, since the request may be gone by commit time.
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
#include "util.h"

struct ingest {
    struct ingest_deps deps;
};

struct ingest *ingest_new(const struct ingest_deps *deps) {
    struct ingest *g = calloc(1, sizeof *g);

    if (g)
        g->deps = *deps;
    return g;
}

void ingest_free(struct ingest *g) {
    free(g);
}

/* ---- a carrier's event ---- */

/* A carrier's event between its store and its commit (all owned). */
struct pending {
    struct ingest *g; /* outlives every commit callback (ingest_free after the drain) */
    ingest_done_fn done;
    void *arg;
    char id[UTIL_ID_MAX];
    int duplicate; /* noted, not stored again, not routed */
    int route;     /* 0 when the adapter failed: stored as rule_error */
    char *source, *source_id, *type, *created_at, *data_json, *headers_json;
    char *shipment_json;
    char *raw;
    size_t raw_len;
    int64_t received_at;
    uint64_t data_token; /* the adapter's data kept for routing (rules_adapt_keep) */
};

static void pending_free(struct pending *p) {
    if (!p)
        return;
    /* Not routed (a duplicate, a failed commit, a refusal): its kept data
     * goes now; a token of an older generation is a no-op. */
    if (p->data_token)
        rules_data_drop(*p->g->deps.rules, p->data_token);
    free(p->source);
    free(p->source_id);
    free(p->type);
    free(p->created_at);
    free(p->data_json);
    free(p->shipment_json);
    free(p->headers_json);
    free(p->raw);
    free(p);
}

static void on_carrier_committed(void *arg, int ok) {
    struct pending *p = arg;

    p->done(p->arg, ok, p->id, p->duplicate, p->source);
    if (ok && p->route) {
        struct rules_input ev = {.id = p->id,
                                 .source = p->source,
                                 .source_id = p->source_id,
                                 .type = p->type,
                                 .created_at = p->created_at,
                                 .received_at_ms = p->received_at,
                                 .data_json = p->data_json,
                                 .shipment_json = p->shipment_json,
                                 .raw = p->raw,
                                 .raw_len = p->raw_len,
                                 .headers_json = p->headers_json,
                                 .data_canonical = 1,
                                 .data_token = p->data_token};
        route_event(p->g->deps.route, &ev);
        p->data_token = 0; /* taken or freed by rules_route */
    }
    pending_free(p);
}

int ingest_carrier(struct ingest *g, struct ingest_carrier *c, ingest_done_fn done, void *arg,
                   char *err, size_t errlen) {
    struct pending *p = calloc(1, sizeof *p);
    struct rules_event *ev = c->ev;
    char serr[256];
    int rc;

    if (p) {
        p->g = g;
        p->headers_json = c->headers_json;
        p->data_token = c->data_token;
    } else { /* taken in every case: freed here */
        free(c->headers_json);
        if (c->data_token)
            rules_data_drop(*g->deps.rules, c->data_token);
    }
    c->headers_json = NULL;
    c->data_token = 0;
    if (!p || !(p->source = strdup(c->source)))
        goto oom;
    p->done = done;
    p->arg = arg;
    p->route = c->adapted;
    p->received_at = c->received_at;
    util_id_new("evt_", p->id, sizeof p->id);
    struct store_event se = {.id = p->id,
                             .source = c->source,
                             .source_id = ev->source_id,
                             .type = ev->type,
                             .created_at = ev->created_at,
                             .received_at = c->received_at,
                             .raw = c->body,
                             .raw_len = c->len,
                             .headers_json = p->headers_json,
                             .data_json = ev->data_json,
                             .shipment_json = ev->shipment_json,
                             .status = c->adapted ? "received" : "rule_error",
                             .error = c->adapted ? NULL : c->error};
    rc = store_event_put(g->deps.store, &se, p->id, sizeof p->id, serr, sizeof serr);
    if (rc < 0) {
        log_msg(LOG_ERROR, "source %s: storing event failed: %s", c->source, serr);
        snprintf(err, errlen, "%s", serr);
        goto fail;
    }
    p->duplicate = rc == STORE_DUP;
    if (p->duplicate) {
        p->route = 0;
        log_msg(LOG_INFO, "source %s: duplicate of %s (source id %s)", c->source, p->id,
                ev->source_id);
    }
    if (p->route) {
        /* Routing reads these after the commit; the request may be gone. */
        if (!(p->raw = malloc(c->len + 1)))
            goto oom;
        memcpy(p->raw, c->body, c->len);
        p->raw[c->len] = '\0';
        p->raw_len = c->len;
        p->source_id = ev->source_id;
        p->type = ev->type;
        p->created_at = ev->created_at;
        p->data_json = ev->data_json;
        p->shipment_json = ev->shipment_json;
        ev->source_id = ev->type = ev->created_at = ev->data_json = ev->shipment_json = NULL;
    }
    if (store_on_commit(g->deps.store, on_carrier_committed, p) < 0)
        goto oom;
    return 0; /* p is owned by the commit callback now */
oom:
    snprintf(err, errlen, "out of memory");
fail:
    pending_free(p);
    return -1;
}

/* ---- waybill's own events ---- */

void ingest_emit(void *arg, const char *type, json_t *data) {
    struct ingest *g = arg;
    struct store_event ev = {0};
    char id[UTIL_ID_MAX], err[256], created[32];
    char *data_json = NULL, *raw = NULL;
    json_t *whole = NULL;
    int64_t now = util_now_ms();

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
    ev.id = id;
    ev.source = "waybill";
    ev.source_id = id;
    ev.type = type;
    ev.created_at = created;
    ev.received_at = now;
    ev.raw = raw;
    ev.raw_len = strlen(raw);
    ev.headers_json = "{}";
    ev.data_json = data_json;
    ev.status = "received";
    if (store_event_put(g->deps.store, &ev, NULL, 0, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s: not stored: %s", type, err);
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
                             .raw_len = ev.raw_len,
                             .headers_json = "{}"};
    route_event(g->deps.route, &in);
    log_msg(LOG_INFO, "event %s: %s", id, type);
done:
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
                             .data_json = data_text,
                             .status = "received"};
    struct store_delivery_new dn = {.endpoint = ep->name,
                                    .event_type = type,
                                    .payload = payload,
                                    .payload_len = strlen(payload),
                                    .content_type = "application/json",
                                    .status = ep->enabled ? "pending" : "held",
                                    .next_at = now};
    if (store_event_put(g->deps.store, &se, NULL, 0, err, errlen) != 0 ||
        store_event_routed(g->deps.store, id, "routed", NULL, &dn, 1, err, errlen) < 0)
        goto done;
    deliver_watch_endpoint(g->deps.deliver, ep->name); /* looked at once committed */
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
    struct rules_input in = {.id = row->id,
                             .source = row->source,
                             .source_id = row->source_id,
                             .type = row->type,
                             .created_at = row->created_at,
                             .received_at_ms = row->received_at,
                             .data_json = row->data_json,
                             .shipment_json = row->shipment_json,
                             .raw = row->raw,
                             .raw_len = row->raw_len,
                             .headers_json = row->headers_json};
    route_event(g->deps.route, &in);
    store_event_rows_free(row, 1);
    return 1;
}
