/* route.h -- the router: runs the current rules over one event and turns
 * what they decided into the store's plan (status, deliveries, batch
 * items), which the event's writer hands to the store with the event in
 * one call (ingest.h); then it tells the delivery engine and the batcher.
 * A stored event routed again (a replay, recovery) goes the same way.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ROUTE_H
#define CORE_ROUTE_H

#include "rules.h"
#include "store.h"

struct batch;
struct deliver;
struct event_base;
struct health;
struct housekeep;
struct route;
struct store;

/* What routing works with; all borrowed, and must outlive the router. */
struct route_deps {
    struct event_base *base;
    struct store *store;
    struct deliver *deliver;
    struct batch *batch;
    struct health *health;       /* whether an endpoint is disabled (its rows held) */
    struct housekeep *housekeep; /* recovery, when a group of routings failed */
    struct rules *const *rules;  /* the current generation (swapped whole on reload) */
};

struct route *route_new(const struct route_deps *deps);
void route_free(struct route *rt);

/* What routing decided for one event: the store's plan and what backs it
 * (all owned; route_plan_clear frees it). */
struct route_plan {
    struct store_plan store; /* points into the members below */
    struct rules_plan rules;
    struct store_delivery_new *dels;
    struct store_batch_item *items;
    struct store_match *matches; /* match_buf, or new when more handlers matched */
    struct store_match match_buf[4];
    char error[512]; /* the rule error, "file:line: message" */
};

/* Runs the current rules over ev (borrowed, used only during the call) into
 * *p. Never fails: a failed handler, an unknown endpoint or no memory gives
 * status "rule_error" with no delivery (routing is all or nothing). */
void route_plan(struct route *rt, const struct rules_input *ev, struct route_plan *p);

/* After the store took p for event ev in the open group: marks the
 * endpoints with new deliveries (claimed once the group is durable), closes
 * batch windows that reached max_batch or arms their timer, counts and logs.
 * Returns 0, or -1 with a reason (closing a full window failed the group). */
int route_plan_stored(struct route *rt, const struct rules_input *ev, struct route_plan *p,
                      char *err, size_t errlen);

/* route_plan_stored in its two halves, for a write whose outcome comes
 * later (store_event_put_done): route_plan_queued right after the plan was
 * queued in the open group (the endpoints watched, the batch windows;
 * returns 0, or -1 with a reason when closing a full window failed the
 * group), and route_plan_report once the event is known stored (not a
 * duplicate): the log line and the rule-error count. */
int route_plan_queued(struct route *rt, struct route_plan *p, char *err, size_t errlen);

/* After store_*_done said ok: the plan's items now hold their windows'
 * counts (they come with the write's answer, whatever the backend), and a
 * window found full (max_batch) is closed now. route_plan_queued, at the
 * write, only arms the windows' timers (the counts are 0 then). */
void route_plan_counted(struct route *rt, struct route_plan *p);
void route_plan_report(const char *id, const char *type, const struct route_plan *p);

void route_plan_clear(struct route_plan *p);

/* Routes stored event row (borrowed, read during the call only) again with
 * the current rules and records the outcome in the open group
 * (store_event_routed_done); its result is logged once the group ended, and
 * a group that fails leaves the event to the recovery sweep. replay 0 (the
 * recovery of an event left "received"): written only while it still is
 * (another instance may have routed it meanwhile); 1: a new routing of an
 * event routed before (new delivery ids). */
void route_event(struct route *rt, const struct store_event_row *row, int replay);

#endif
