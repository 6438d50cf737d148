/* test_health.c -- health.c on a real store: disable_after is decided from
 * the stored start of the run of failures only once the store's answer
 * came back (never from a value read inside the call), and the change hook
 * is told then; a 410 disables at once; enable and disable are announced
 * with the count of deliveries the store moved, once stored; a health
 * freed while answers wait is freed by the last of them; health_poll (a
 * shared store's) follows a state another process stored, telling the
 * hook and announcing nothing, and drops an answer older than a change
 * made here meanwhile.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "harness.h"
#include "health.h"
#include "log.h"
#include "store.h"
#include "store_wait.h"
#include "util.h"

static struct event_base *base;
static char dir[64];

/* What the hooks were told. */
struct seen {
    int changes, last_disabled;
    char last_name[64];
    int events;
    char last_type[64];
    int64_t last_count; /* "held" or "released" */
};

static void on_change(void *arg, const char *name, int disabled) {
    struct seen *s = arg;
    s->changes++;
    s->last_disabled = disabled;
    snprintf(s->last_name, sizeof s->last_name, "%s", name ? name : "(all)");
}

static void on_notify(void *arg, const char *type, json_t *data) {
    struct seen *s = arg;
    json_t *n = json_object_get(data, "held");
    s->events++;
    snprintf(s->last_type, sizeof s->last_type, "%s", type);
    if (!n)
        n = json_object_get(data, "released");
    s->last_count = n ? json_integer_value(n) : -1;
    json_decref(data);
}

/* One event with a pending delivery to erp, committed. */
static void put_delivery(struct store *st) {
    struct store_event ev = {.id = "evt_H1",
                             .source = "test",
                             .source_id = "h1",
                             .type = "tracking.delivered",
                             .received_at = util_now_ms(),
                             .raw = "{}",
                             .raw_len = 2,
                             .headers_json = "{}",
                             .data_json = "{}"};
    struct store_delivery_new dn = {.endpoint = "erp",
                                    .event_type = "tracking.delivered",
                                    .payload = "{}",
                                    .payload_len = 2,
                                    .content_type = "application/json",
                                    .status = "pending",
                                    .next_at = util_now_ms() + 3600000};
    struct store_plan plan = {.status = "routed", .deliveries = &dn, .ndeliveries = 1};
    CHECK_INT_EQ(wait_event_put(base, st, &ev, &plan), 0);
    CHECK_INT_EQ(store_flush(st), 0);
}

static void test_health(void) {
    static char erp[] = "erp", crm[] = "crm";
    struct config_endpoint eps[2];
    struct config cfg;
    struct seen seen = {0};
    struct store *st;
    struct health *h;
    char err[256];
    int64_t now = util_now_ms();

    memset(eps, 0, sizeof eps);
    memset(&cfg, 0, sizeof cfg);
    eps[0].name = erp;
    eps[0].enabled = 1;
    eps[0].disable_after_ms = 1000;
    eps[1].name = crm;
    eps[1].enabled = 1;
    cfg.endpoints = eps;
    cfg.nendpoints = 2;
    st = store_open(base, "sqlite:health.db?sync=normal", dir, err, sizeof err);
    CHECK(st != NULL);
    if (!st) {
        fprintf(stderr, "store_open: %s\n", err);
        return;
    }
    put_delivery(st);
    h = health_new(st, err, sizeof err);
    CHECK(h != NULL);
    if (!h) {
        store_free(st);
        return;
    }
    health_set_config(h, &cfg);
    health_set_change_hook(h, on_change, &seen);
    health_set_notify(h, on_notify, &seen);

    /* disable_after: the second failure is 5 s after the first, but the
     * endpoint is disabled only once the count's answer says so */
    CHECK_INT_EQ(health_attempt(h, &eps[0], HEALTH_FAILED, "HTTP 500", now - 5000), 0);
    CHECK_INT_EQ(store_flush(st), 0);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 0); /* the first failure: no run yet */
    CHECK_INT_EQ(health_attempt(h, &eps[0], HEALTH_FAILED, "HTTP 500", now), 0);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 0);
    CHECK_INT_EQ(seen.changes, 0);
    CHECK_INT_EQ(store_flush(st), 0); /* the answer: disabled, the hook told */
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 1);
    CHECK_INT_EQ(seen.changes, 1);
    CHECK_STR_EQ(seen.last_name, "erp");
    CHECK_INT_EQ(seen.last_disabled, 1);
    CHECK_INT_EQ(store_flush(st), 0); /* the disable's answer: announced with its count */
    CHECK_INT_EQ(seen.events, 1);
    CHECK_STR_EQ(seen.last_type, "waybill.endpoint.disabled");
    CHECK_INT_EQ(seen.last_count, 1);

    /* enabled again: the hook at once, the announcement once stored */
    CHECK_INT_EQ(health_endpoint_set_disabled(h, "erp", 0, NULL, err, sizeof err), 0);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 0);
    CHECK_INT_EQ(seen.changes, 2);
    CHECK_INT_EQ(seen.events, 1);
    CHECK_INT_EQ(store_flush(st), 0);
    CHECK_INT_EQ(seen.events, 2);
    CHECK_STR_EQ(seen.last_type, "waybill.endpoint.enabled");
    CHECK_INT_EQ(seen.last_count, 1);

    /* a 410 needs no stored value: disabled within the call */
    CHECK_INT_EQ(health_attempt(h, &eps[1], HEALTH_GONE, "HTTP 410", now), 1);
    CHECK_INT_EQ(health_endpoint_disabled(h, "crm"), 1);
    CHECK_INT_EQ(store_flush(st), 0);

    /* freed while the store holds answers for it: the last one frees it */
    CHECK_INT_EQ(health_attempt(h, &eps[0], HEALTH_FAILED, "HTTP 500", now), 0);
    health_free(h);
    CHECK_INT_EQ(store_flush(st), 0);
    store_free(st);
}

/* Runs what the store holds for the loop: group callbacks, held reads. */
static void settle(struct store *st) {
    CHECK_INT_EQ(store_flush(st), 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK_INT_EQ(store_flush(st), 0);
}

/* Another instance's enable or disable: written to the store directly. */
static void store_other(struct store *st, const char *name, int disabled) {
    int64_t moved = 0;
    CHECK_INT_EQ(wait_endpoint_set_disabled(base, st, name, disabled, disabled ? "elsewhere" : NULL,
                                            util_now_ms(), &moved),
                 0);
    CHECK_INT_EQ(store_flush(st), 0);
}

static void test_health_poll(void) {
    static char erp[] = "erp", crm[] = "crm";
    struct config_endpoint eps[2];
    struct config cfg;
    struct seen seen = {0};
    struct store *st;
    struct health *h;
    char err[256];

    memset(eps, 0, sizeof eps);
    memset(&cfg, 0, sizeof cfg);
    eps[0].name = erp;
    eps[0].enabled = 1;
    eps[1].name = crm;
    eps[1].enabled = 1;
    cfg.endpoints = eps;
    cfg.nendpoints = 2;
    st = store_open(base, "sqlite:poll.db?sync=normal", dir, err, sizeof err);
    CHECK(st != NULL);
    if (!st)
        return;
    h = health_new(st, err, sizeof err);
    CHECK(h != NULL);
    if (!h) {
        store_free(st);
        return;
    }
    health_set_config(h, &cfg);
    health_set_change_hook(h, on_change, &seen);
    health_set_notify(h, on_notify, &seen);

    /* disabled elsewhere: followed at the poll's answer, hook told, nothing
     * announced (the other instance did) */
    store_other(st, "erp", 1);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 0);
    CHECK_INT_EQ(health_poll(h), 0);
    settle(st);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 1);
    CHECK_INT_EQ(seen.changes, 1);
    CHECK_STR_EQ(seen.last_name, "erp");
    CHECK_INT_EQ(seen.last_disabled, 1);
    CHECK_INT_EQ(seen.events, 0);

    /* enabled elsewhere while crm is disabled here with the poll's read out:
     * the answer (crm enabled, read before) is older than crm's disable
     * and is dropped whole */
    store_other(st, "erp", 0);
    CHECK_INT_EQ(health_poll(h), 0);
    CHECK_INT_EQ(health_endpoint_set_disabled(h, "crm", 1, NULL, err, sizeof err), 0);
    settle(st);
    CHECK_INT_EQ(health_endpoint_disabled(h, "crm"), 1);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 1); /* until the next poll */
    CHECK_INT_EQ(seen.events, 1);                        /* crm's, announced here */

    /* the next poll: erp followed, crm as stored here */
    seen.changes = 0;
    CHECK_INT_EQ(health_poll(h), 0);
    settle(st);
    CHECK_INT_EQ(health_endpoint_disabled(h, "erp"), 0);
    CHECK_INT_EQ(health_endpoint_disabled(h, "crm"), 1);
    CHECK_INT_EQ(seen.changes, 1);
    CHECK_STR_EQ(seen.last_name, "erp");
    CHECK_INT_EQ(seen.last_disabled, 0);
    CHECK_INT_EQ(seen.events, 1);

    /* freed with a poll out: its answer frees it */
    CHECK_INT_EQ(health_poll(h), 0);
    health_free(h);
    settle(st);
    store_free(st);
}

int main(void) {
    char cmd[128];

    if (!getenv("WAYBILL_LOG"))
        log_threshold = LOG_ERROR;
    snprintf(dir, sizeof dir, "/tmp/waybill-health-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    base = event_base_new();
    test_health();
    test_health_poll();
    event_base_free(base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return harness_report();
}
