/* store_plan.c -- what a routing plan makes before any backend writes it,
 * the same whatever the backend: its deliveries' ids and the JSON of its
 * matched handlers (events.matched). The SQLite engine writes both with
 * the event's row (store_sqlite_events.c), the PostgreSQL backend with its
 * event statement (store_pg_write.c).
 * SPDX-License-Identifier: MIT */
#include <string.h>

#include "jsonx.h"
#include "store.h"
#include "store_int.h"
#include "util.h"

void store_plan_ids(const char *event_id, const struct store_plan *plan, int derive,
                    char (*ids)[UTIL_ID_MAX]) {
    const struct store_delivery_new *d = plan->deliveries;

    for (size_t i = 0; i < plan->ndeliveries; i++) {
        if (derive)
            util_id_derive("dlv_", event_id, d[i].endpoint, (unsigned)i, ids[i], UTIL_ID_MAX);
        else
            util_id_new("dlv_", ids[i], UTIL_ID_MAX);
    }
}

/* Appends "key":"value" (a JSON string) to b. */
static int json_pair(struct util_buf *b, const char *key, const char *value) {
    return util_buf_appends(b, key) < 0 || jsonx_append_string(b, value, strlen(value)) < 0 ? -1
                                                                                            : 0;
}

/* What handler m sent: its deliveries (ids[]) and batch items, as the
 * "sent" array's members. Returns 0 or -1. */
static int match_sent(const struct store_plan *plan, size_t m, char (*ids)[UTIL_ID_MAX],
                      struct util_buf *b) {
    int first = 1;

    for (size_t i = 0; i < plan->ndeliveries; i++) {
        if (plan->deliveries[i].match != m)
            continue;
        if ((!first && util_buf_append(b, ",", 1) < 0) ||
            json_pair(b, "{\"endpoint\":", plan->deliveries[i].endpoint) < 0 ||
            json_pair(b, ",\"delivery\":", ids[i]) < 0 || util_buf_append(b, "}", 1) < 0)
            return -1;
        first = 0;
    }
    for (size_t i = 0; i < plan->nitems; i++) {
        if (plan->items[i].match != m)
            continue;
        if ((!first && util_buf_append(b, ",", 1) < 0) ||
            json_pair(b, "{\"endpoint\":", plan->items[i].endpoint) < 0 ||
            util_buf_printf(b, ",\"window_start\":%lld}", (long long)plan->items[i].window_start) <
                0)
            return -1;
        first = 0;
    }
    return 0;
}

int store_plan_matched(const struct store_plan *plan, char (*ids)[UTIL_ID_MAX],
                       struct util_buf *b) {
    if (util_buf_append(b, "[", 1) < 0)
        return -1;
    for (size_t m = 0; m < plan->nmatches; m++) {
        const struct store_match *h = &plan->matches[m];
        if ((m && util_buf_append(b, ",", 1) < 0) || json_pair(b, "{\"rule\":", h->where) < 0 ||
            json_pair(b, ",\"on\":", h->pattern) < 0 || util_buf_appends(b, ",\"sent\":[") < 0 ||
            match_sent(plan, m, ids, b) < 0 || util_buf_append(b, "]", 1) < 0 ||
            (h->failed && util_buf_appends(b, ",\"failed\":true") < 0) ||
            util_buf_append(b, "}", 1) < 0)
            return -1;
    }
    return util_buf_append(b, "]", 1);
}
