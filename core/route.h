/* route.h -- routing of committed events through the current rules.
 * Routing writes go into the store's open group; deliveries start once
 * that group commits. (Events committed but never routed, a crash between
 * the two, are routed again by housekeep.h's recovery sweep.)
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ROUTE_H
#define CORE_ROUTE_H

#include "rules.h"

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

/* Routes one committed event (borrowed, used only during the call) with the
 * current rules and records the outcome in the open group. */
void route_event(struct route *rt, const struct rules_input *ev);

#endif
