/* route.h -- routing of committed events through the current rules, and
 * the recovery of events committed but never routed (a crash between the
 * two). Routing writes go into the store's open group; deliveries start
 * once that group commits.
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

/* Routes every stored event still "received", in batches, from the loop
 * (soon, not inside this call). Safe to call again: the store's view
 * includes the open group, so nothing is routed twice. */
void route_recover(struct route *rt);

#endif
