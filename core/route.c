/* route.c -- runs the rules over committed events and records what they
 * decided: deliveries (pending, or held for a disabled endpoint) and the
 * event's status: "routed", "unrouted", "partial" (a handler failed, the
 * others' deliveries stored) or "rule_error" (handlers failed, nothing to
 * send).
 * Events left "received" by a crash or a failed group are routed again by
 * the recovery sweep (housekeep.c).
 * SPDX-License-Identifier: MIT */
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
    int kick_pending; /* a commit callback will kick the delivery engine */
};

static void on_routes_committed(void *arg, int ok) {
    struct route *rt = arg;

    rt->kick_pending = 0;
    if (ok) {
        deliver_kick(rt->deps.deliver);
    } else {
        /* The events of that group are still "received" in the store. */
        log_msg(LOG_WARN, "routing results were not committed; routing again");
        housekeep_recover(rt->deps.housekeep);
    }
}

void route_event(struct route *rt, const struct rules_input *ev) {
    struct rules *rules = *rt->deps.rules;
    const struct config *cfg = rules_config(rules);
    struct rules_plan plan = {0};
    struct store_delivery_new *dels = NULL;
    char err[512], serr[256];
    const char *status;
    int64_t now = util_now_ms();
    size_t n = 0, nbatched = 0;
    int partial = rules_route(rules, ev, &plan, err, sizeof err);

    if (partial > 0)
        log_msg(LOG_WARN, "event %s (%s): rule error, the other handlers' sends go out: %s", ev->id,
                ev->type, err);
    if (partial < 0) {
        log_msg(LOG_WARN, "event %s (%s): rule error: %s", ev->id, ev->type, err);
        status = "rule_error";
        goto record;
    }
    dels = calloc(plan.n ? plan.n : 1, sizeof *dels);
    if (!dels) {
        snprintf(err, sizeof err, "out of memory");
        status = "rule_error";
        goto record;
    }
    for (size_t i = 0; i < plan.n; i++) {
        const struct rules_send *s = &plan.sends[i];
        const struct config_endpoint *ep = config_endpoint_by_name(cfg, s->endpoint);

        if (!ep) { /* rules_route checks names; a reload in between can't happen */
            snprintf(err, sizeof err, "unknown endpoint '%s'", s->endpoint);
            status = "rule_error";
            n = 0;
            goto record;
        }
        if (s->window_ms > 0) { /* into its window once the whole plan checked out */
            nbatched++;
            continue;
        }
        dels[n].endpoint = s->endpoint;
        dels[n].event_type = ev->type;
        dels[n].payload = s->payload;
        dels[n].payload_len = s->payload_len;
        dels[n].content_type = s->content_type;
        dels[n].headers_json = s->headers_json;
        dels[n].status = ep->enabled && !health_endpoint_disabled(rt->deps.health, ep->name)
                             ? "pending"
                             : "held";
        dels[n].next_at = now + (ep->nretry ? ep->retry_ms[0] : 0);
        n++;
    }
    for (size_t i = 0; i < plan.n && nbatched; i++) {
        const struct rules_send *s = &plan.sends[i];
        if (s->window_ms <= 0)
            continue;
        /* A failure here has failed the store's group: the event stays
         * "received" and is routed again (housekeep_recover) with its sends. */
        if (batch_add(rt->deps.batch, config_endpoint_by_name(cfg, s->endpoint), s->window_ms,
                      ev->id, s->payload, s->payload_len, now, serr, sizeof serr) < 0) {
            log_msg(LOG_ERROR, "event %s: batching failed: %s", ev->id, serr);
            goto done;
        }
    }
    status = partial > 0 ? "partial" : n || nbatched ? "routed" : "unrouted";
    if (partial <= 0)
        err[0] = '\0';
record:
    if (store_event_routed(rt->deps.store, ev->id, status, err[0] ? err : NULL, dels, n, serr,
                           sizeof serr) < 0) {
        log_msg(LOG_ERROR, "event %s: storing its routing failed: %s", ev->id, serr);
    } else {
        /* after the insert: the mark waits for these rows' commit */
        for (size_t i = 0; i < n; i++)
            deliver_watch_endpoint(rt->deps.deliver, dels[i].endpoint);
        log_msg(LOG_DEBUG, "event %s (%s): %s, %zu deliveries", ev->id, ev->type, status, n);
    }
    if (strcmp(status, "rule_error") == 0 || strcmp(status, "partial") == 0)
        metrics_rule_error();
    /* Registered whatever n is: if this group fails, even an unrouted or
     * rule_error outcome must be recorded again by recovery. */
    if (!rt->kick_pending && store_on_written(rt->deps.store, on_routes_committed, rt) == 0)
        rt->kick_pending = 1;
done:
    free(dels);
    rules_plan_clear(&plan);
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
