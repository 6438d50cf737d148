/* ingest.c -- the only way an event enters waybill (see ingest.h).
 * Invariant: an event and its routing are one write (store_event_put_done
 * with the router's plan), so they commit together or not at all; a
 * carrier is answered only once that write is durable, and its deliveries
 * are claimed only then too (the store's watermark). The answer is decided
 * by the write's result, handed over from the loop once the group ended
 * (issue 15: on PostgreSQL the group is pipelined and a dedupe hit is known
 * only when its round trip comes back): 200 with the event's id, 200 with
 * the first copy's id for a duplicate, 503 for a failed group.
 *
 * A Shiptify token (a nonce: its signature does not cover the body) goes in
 * before its event, in its own group, and the event only once the nonce's
 * answer came back (inbound.c), rather than both in one group:
 * - in one pipelined group every statement runs whatever an earlier one
 *   answered, so a replay (the token seen with another body, known only at
 *   the end of the round trip) would have stored its event by then; making
 *   the event's INSERT conditional in SQL would put Shiptify's rule into
 *   every backend, and failing the statement would abort the whole group
 *   (every other carrier's request in it: 503);
 * - after the answer: a replay (STORE_REPLAY) stores nothing and gets 401;
 *   a new token or the same body again (STORE_DUP: a carrier's retry) stores
 *   the event, whose dedupe key is the token when the body has no carrier
 *   id, so a retry gets 200 with the first copy's id. A crash between the
 *   two groups leaves a token without its event: the carrier had no 200,
 *   sends the same body again, which is STORE_DUP, and the event goes in.
 *   The cost is one more group's wait for Shiptify's requests only; the
 *   nonce's answer is "written" (at its COMMIT), and the event's group,
 *   later, is made durable after it, so the 200 still waits for both.
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

/* ---- a carrier's event ----
 * The answer is decided by the write's result (store_event_put_done), which
 * a PostgreSQL store knows only when the group's round trip comes back:
 * 200 with the event's id, or the first copy's id for a duplicate, once
 * the group is durable; 503 when it failed. The plan stays with the
 * request until then: a duplicate stored nothing, so its routing is
 * reported (logged, counted) only for an event that was stored. */

/* A carrier's event between its write and its commit (owned). */
struct pending {
    struct ingest *g;
    ingest_done_fn done; /* NULL: waybill's own or a test event (failures logged) */
    void *arg;
    json_t *live;           /* for the live feed once committed, or NULL */
    struct route_plan plan; /* never moved: its matches may point into it */
    int adapted;            /* the plan is the rules' (reported once stored) */
    char *type;             /* for the report */
    char source[];
};

static void on_carrier_done(void *arg, const struct store_done *d) {
    struct pending *p = arg;
    struct ingest *g = p->g;
    int duplicate = d->ok && d->status == STORE_DUP;

    if (!d->ok && !p->done)
        log_msg(LOG_ERROR, "%s: not stored: %s", p->type, d->err);
    else if (!d->ok)
        ingest_log_refusal(g, p->source, d->err);
    else if (duplicate)
        log_msg(LOG_INFO, "source %s: duplicate of %s", p->source, d->id);
    if (d->ok && !duplicate)
        route_plan_counted(g->deps.route, &p->plan); /* max_batch: the counts came now */
    if (d->ok && !duplicate && p->adapted)
        route_plan_report(d->id, p->type, &p->plan);
    if (p->done)
        p->done(p->arg, d->ok, d->id, duplicate, p->source);
    if (d->ok && !duplicate)
        stream_publish(g->deps.stream, "event", p->live);
    else
        json_decref(p->live);
    route_plan_clear(&p->plan);
    free(p->type);
    free(p);
}

int ingest_carrier(struct ingest *g, struct ingest_carrier *c, ingest_done_fn done, void *arg,
                   char *err, size_t errlen) {
    size_t slen = strlen(c->source) + 1;
    struct pending *p = calloc(1, sizeof *p + slen);
    const struct rules_event *ev = c->ev;
    char id[UTIL_ID_MAX], serr[256];

    if (!p || !(p->type = strdup(ev->type))) { /* taken in every case: freed here */
        free(p);
        free(c->headers_json);
        if (c->data_token)
            rules_data_drop(*g->deps.rules, c->data_token);
        c->headers_json = NULL;
        c->data_token = 0;
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(p->source, c->source, slen);
    p->g = g;
    p->done = done;
    p->arg = arg;
    util_id_new("evt_", id, sizeof id);
    struct rules_input in = {.id = id,
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
    p->adapted = c->adapted;
    if (c->adapted) {
        route_plan(g->deps.route, &in, &p->plan);
    } else {
        if (in.data_token)
            rules_data_drop(*g->deps.rules, in.data_token);
        p->plan.store.status = "rule_error";
        p->plan.store.error = c->error; /* read by the write only, during the call */
    }
    struct store_event se = {.id = id,
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
    p->live = ingest_stream_event(g, &se, p->plan.store.status);
    if (store_event_put_done(g->deps.store, &se, &p->plan.store, on_carrier_done, p) < 0) {
        json_decref(p->live);
        route_plan_clear(&p->plan);
        free(p->type);
        free(p);
        snprintf(err, errlen, "out of memory");
        free(c->headers_json);
        c->headers_json = NULL;
        return -1;
    }
    if (!c->adapted)
        p->plan.store.error = NULL; /* c->error is the caller's */
    /* The endpoints and batch windows are looked at now (a duplicate wrote
     * none of its rows: there is nothing for them to find); a full window
     * that cannot close fails the group: done runs with ok = 0 (a 503). */
    else if (route_plan_queued(g->deps.route, &p->plan, serr, sizeof serr) < 0)
        log_msg(LOG_ERROR, "event %s: %s", id, serr);
    free(c->headers_json);
    c->headers_json = NULL;
    return 0; /* p is owned by the callback now */
}

/* ---- waybill's own events ---- */

/* A pending write of source's event of type, with no one to answer (emit,
 * test): failures are logged. NULL when out of memory. */
static struct pending *ingest_pending_new(struct ingest *g, const char *source, const char *type) {
    size_t slen = strlen(source) + 1;
    struct pending *p = calloc(1, sizeof *p + slen);

    if (!p || !(p->type = strdup(type))) {
        free(p);
        return NULL;
    }
    memcpy(p->source, source, slen);
    p->g = g;
    return p;
}

static void ingest_pending_free(struct pending *p) {
    json_decref(p->live);
    route_plan_clear(&p->plan);
    free(p->type);
    free(p);
}

void ingest_emit(void *arg, const char *type, json_t *data) {
    struct ingest *g = arg;
    struct pending *p = NULL;
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
    if (!data_json || !raw || !(p = ingest_pending_new(g, "waybill", type))) {
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
    p->adapted = 1;
    route_plan(g->deps.route, &in, &p->plan);
    p->live = ingest_stream_event(g, &ev, p->plan.store.status);
    if (store_event_put_done(g->deps.store, &ev, &p->plan.store, on_carrier_done, p) < 0) {
        log_msg(LOG_ERROR, "%s: out of memory; not emitted", type);
        ingest_pending_free(p);
        goto done;
    }
    if (route_plan_queued(g->deps.route, &p->plan, err, sizeof err) < 0)
        log_msg(LOG_ERROR, "%s: not stored: %s", type, err);
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
    struct pending *p = NULL;
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
    if (!data_text || !payload || !(p = ingest_pending_new(g, "waybill.test", type))) {
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
    /* The caller answers after the group's commit (ok = 0 there: a 503). */
    p->live = ingest_stream_event(g, &se, plan.status);
    if (store_event_put_done(g->deps.store, &se, &plan, on_carrier_done, p) < 0) {
        snprintf(err, errlen, "out of memory");
        ingest_pending_free(p);
        goto done;
    }
    deliver_watch_endpoint(g->deps.deliver, ep->name); /* looked at once committed */
    rc = 0;
done:
    free(data_text);
    free(payload);
    json_decref(env);
    return rc;
}

/* ---- a replay ---- */

/* A replay between its read and its answer. */
struct replay {
    struct ingest *g;
    ingest_replay_fn fn;
    void *arg;
};

static void on_replay_read(void *arg, const struct store_done *d) {
    struct replay *r = arg;

    if (d->ok && d->n == 1)
        route_event(r->g->deps.route, &d->rows[0], 1);
    r->fn(r->arg, d->ok ? d->n == 1 : -1, d->err);
    free(r);
}

int ingest_replay(struct ingest *g, const char *id, ingest_replay_fn fn, void *arg) {
    struct replay *r = malloc(sizeof *r);

    if (!r)
        return -1;
    *r = (struct replay){g, fn, arg};
    if (store_get_event(g->deps.store, id, on_replay_read, r) < 0) {
        free(r);
        return -1;
    }
    return 0;
}
