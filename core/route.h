/* route.h -- routing of committed events through the current rules.
 * Routing writes go into the store's open group; deliveries start once
 * that group commits. (Events committed but never routed, a crash between
 * the two, are routed again by housekeep.h's recovery sweep.)
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ROUTE_H
#define CORE_ROUTE_H

#include "rules.h"

struct gateway;
struct route;

struct route *route_new(struct gateway *gw);
void route_free(struct route *rt);

/* Routes one committed event (borrowed, used only during the call) with the
 * current rules and records the outcome in the open group. */
void route_event(struct route *rt, const struct rules_input *ev);

#endif
