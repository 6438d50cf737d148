/* route.c -- runs the rules over an event and records what they decided as
 * the store's plan: deliveries (pending, or held for a disabled endpoint),
 * batch items and the event's status: "routed", "unrouted", "partial" (a
 * handler failed, the others' sends stored) or "rule_error" (handlers
 * failed, nothing to send). A failed handler leaves none of its own sends.
 * Invariant: a plan's pointers stay valid until route_plan_clear; nothing
 * of it reaches the delivery engine or the batcher before the store took
 * it (route_plan_stored).
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "config.h"
#include "deliver.h"
#include "health.h"
#include "housekeep.h"
#include "log.h"
#include "metrics.h"
#include "route.h"
#include "rules.h"
#include "store.h"
#include "util.h"

struct route {
    struct route_deps deps;
    int64_t failed_logged_at; /* util_mono_ms of the last "not committed" line */
};

/* Empties p's sends and marks it a rule error with why. */
static void plan_rule_error(struct route_plan *p, const char *why) {
    if (why != p->error)
        snprintf(p->error, sizeof p->error, "%s", why);
    p->store.ndeliveries = p->store.nitems = 0;
    p->store.status = "rule_error";
    p->store.error = p->error;
}

/* The handlers that matched (p->rules.matched) into the store's plan, so
 * the event records them. Returns 0, or -1 when out of memory. */
static int plan_matches(struct route_plan *p) {
    size_t n = p->rules.nmatched;

    p->matches = p->match_buf;
    if (n > sizeof p->match_buf / sizeof *p->match_buf &&
        !(p->matches = malloc(n * sizeof *p->matches))) {
        p->matches = p->match_buf;
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        p->matches[i] = (struct store_match){.where = p->rules.matched[i].where,
                                             .pattern = p->rules.matched[i].pattern,
                                             .failed = p->rules.matched[i].failed};
    p->store.by_rules = 1;
    p->store.matches = p->matches;
    p->store.nmatches = n;
    return 0;
}

void route_plan(struct route *rt, const struct rules_input *ev, struct route_plan *p) {
    struct rules *rules = *rt->deps.rules;
    const struct config *cfg = rules_config(rules);
    int64_t now = util_now_ms();
    size_t n = 0, nitems = 0;
    int partial;

    memset(p, 0, sizeof *p);
    partial = rules_route(rules, ev, &p->rules, p->error, sizeof p->error);
    if (partial < 0) {
        plan_rule_error(p, p->error);
        plan_matches(p); /* which handlers failed: recorded when memory allows */
        return;
    }
    if (p->rules.n && (!(p->dels = calloc(p->rules.n, sizeof *p->dels)) ||
                       !(p->items = calloc(p->rules.n, sizeof *p->items)))) {
        plan_rule_error(p, "out of memory");
        return;
    }
    for (size_t i = 0; i < p->rules.n; i++) {
        const struct rules_send *s = &p->rules.sends[i];
        const struct config_endpoint *ep = config_endpoint_by_name(cfg, s->endpoint);

        if (!ep) { /* rules_route checks names; a reload in between can't happen */
            snprintf(p->error, sizeof p->error, "unknown endpoint '%s'", s->endpoint);
            plan_rule_error(p, p->error);
            return;
        }
        if (s->window_ms > 0) {
            p->items[nitems++] = (struct store_batch_item){
                .endpoint = s->endpoint,
                .window_start = batch_window_start(batch_now(rt->deps.batch), s->window_ms),
                .window_ms = s->window_ms,
                .payload = s->payload,
                .len = s->payload_len,
                .match = s->match,
            };
            continue;
        }
        p->dels[n++] = (struct store_delivery_new){
            .endpoint = s->endpoint,
            .event_type = ev->type,
            .payload = s->payload,
            .payload_len = s->payload_len,
            .content_type = s->content_type,
            .headers_json = s->headers_json,
            .status = ep->enabled && !health_endpoint_disabled(rt->deps.health, ep->name)
                          ? "pending"
                          : "held",
            .next_at = now + (ep->nretry ? ep->retry_ms[0] : 0),
            .okey = s->key,
            .match = s->match,
        };
        if (s->key_missing)
            metrics_key_missing(ep->name);
    }
    if (!partial)
        p->error[0] = '\0';
    if (p->rules.key_error) { /* sent unordered; the event says why */
        size_t used = strlen(p->error);
        snprintf(p->error + used, sizeof p->error - used, "%s%s", used ? "; " : "",
                 p->rules.key_error);
    }
    p->store = (struct store_plan){
        .status = partial       ? "partial"
                  : n || nitems ? "routed"
                                : "unrouted",
        .error = p->error[0] ? p->error : NULL,
        .deliveries = p->dels,
        .ndeliveries = n,
        .items = p->items,
        .nitems = nitems,
    };
    if (plan_matches(p) < 0)
        plan_rule_error(p, "out of memory");
}

int route_plan_queued(struct route *rt, struct route_plan *p, char *err, size_t errlen) {
    const struct config *cfg = rules_config(*rt->deps.rules);

    for (size_t i = 0; i < p->store.ndeliveries; i++)
        deliver_watch_endpoint(rt->deps.deliver, p->dels[i].endpoint);
    for (size_t i = 0; i < p->store.nitems; i++)
        if (batch_item_added(rt->deps.batch, config_endpoint_by_name(cfg, p->items[i].endpoint),
                             &p->items[i], err, errlen) < 0)
            return -1;
    return 0;
}

void route_plan_counted(struct route *rt, struct route_plan *p) {
    const struct config *cfg = rules_config(*rt->deps.rules);
    char err[256];

    for (size_t i = 0; i < p->store.nitems; i++)
        if (p->items[i].count > 0 &&
            batch_item_added(rt->deps.batch, config_endpoint_by_name(cfg, p->items[i].endpoint),
                             &p->items[i], err, sizeof err) < 0)
            log_msg(LOG_ERROR, "batch: %s (it closes at its window's end)", err);
}

void route_plan_report(const char *id, const char *type, const struct route_plan *p) {
    if (strcmp(p->store.status, "rule_error") == 0) {
        log_msg(LOG_WARN, "event %s (%s): rule error: %s", id, type, p->error);
        metrics_rule_error();
    } else if (strcmp(p->store.status, "partial") == 0) {
        log_msg(LOG_WARN, "event %s (%s): rule error, the other handlers' sends go out: %s", id,
                type, p->error);
        metrics_rule_error();
    } else if (p->store.error) {
        log_msg(LOG_WARN, "event %s (%s): sent unordered: %s", id, type, p->error);
        metrics_rule_error();
    } else {
        log_msg(LOG_DEBUG, "event %s (%s): %s, %zu deliveries, %zu batched", id, type,
                p->store.status, p->store.ndeliveries, p->store.nitems);
    }
}

int route_plan_stored(struct route *rt, const struct rules_input *ev, struct route_plan *p,
                      char *err, size_t errlen) {
    if (route_plan_queued(rt, p, err, errlen) < 0)
        return -1;
    route_plan_report(ev->id, ev->type, p);
    return 0;
}

void route_plan_clear(struct route_plan *p) {
    rules_plan_clear(&p->rules);
    free(p->dels);
    free(p->items);
    if (p->matches != p->match_buf)
        free(p->matches);
    memset(p, 0, sizeof *p);
}

/* ---- stored events routed again ---- */

/* A stored event's routing between its write and the end of its group. */
struct rerouted {
    struct route *rt;
    struct route_plan p; /* for the report; matches may point into it: never moved */
    char *type;
    char id[];
};

static void on_rerouted(void *arg, const struct store_done *d) {
    struct rerouted *x = arg;
    struct route *rt = x->rt;
    int64_t mono = util_mono_ms();

    if (d->ok && d->status == 1) {
        route_plan_counted(rt, &x->p);
        route_plan_report(x->id, x->type, &x->p);
    } else if (d->ok && d->status == STORE_ROUTED_ALREADY) {
        log_msg(LOG_DEBUG, "event %s: routed already (by another instance); nothing written",
                x->id);
    } else if (d->ok) {
        log_msg(LOG_WARN, "event %s: gone before its routing was stored (retention)", x->id);
    } else {
        /* The events of that group are still "received" in the store
         * (replays: as they were): the recovery sweep routes them again
         * (one sweep at a time, started over; logged once a second). */
        if (!rt->failed_logged_at || mono - rt->failed_logged_at >= 1000) {
            log_msg(LOG_WARN, "routing results were not committed (%s); routing again", d->err);
            rt->failed_logged_at = mono;
        }
        housekeep_recover(rt->deps.housekeep);
    }
    route_plan_clear(&x->p);
    free(x->type);
    free(x);
}

void route_event(struct route *rt, const struct store_event_row *row, int replay) {
    const struct rules_input ev = {.id = row->id,
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
    size_t idlen = strlen(row->id) + 1;
    struct rerouted *x = calloc(1, sizeof *x + idlen);
    char err[256];

    if (!x || !(x->type = strdup(row->type))) {
        /* Left "received": the recovery sweep (or the admin's next replay)
         * routes it. */
        log_msg(LOG_ERROR, "event %s: out of memory routing it", row->id);
        free(x);
        return;
    }
    x->rt = rt;
    memcpy(x->id, row->id, idlen);
    route_plan(rt, &ev, &x->p);
    x->p.store.first_only = !replay;
    /* Whatever the outcome, the callback runs: if this group fails, even an
     * unrouted or rule_error outcome must be recorded again by recovery. */
    if (store_event_routed_done(rt->deps.store, ev.id, &x->p.store, on_rerouted, x) < 0) {
        log_msg(LOG_ERROR, "event %s: out of memory storing its routing", ev.id);
        route_plan_clear(&x->p);
        free(x->type);
        free(x);
        return;
    }
    if (route_plan_queued(rt, &x->p, err, sizeof err) < 0)
        log_msg(LOG_ERROR, "event %s: storing its routing failed: %s", ev.id, err);
}

struct route *route_new(const struct route_deps *deps) {
    struct route *rt = calloc(1, sizeof *rt);

    if (!rt)
        return NULL;
    rt->deps = *deps;
    return rt;
}

void route_free(struct route *rt) {
    free(rt);
}
