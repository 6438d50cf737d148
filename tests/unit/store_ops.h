/* store_ops.h -- what the tests of a backend's operations share
 * (store_backend.h): the answers' recorders, running the loop until an
 * answer came, and one event with its plan (put). A test sets ops, be and
 * base, then drives the operations as the engine does.
 * SPDX-License-Identifier: MIT */
#ifndef TESTS_UNIT_STORE_OPS_H
#define TESTS_UNIT_STORE_OPS_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "store_backend.h"
#include "util.h"

static struct event_base *base;
static struct store_be *be;
static const struct store_backend_ops *ops;

/* ---- running the loop ---- */

struct answer {
    int calls;
    int status;
    size_t n;
    char err[512];
    struct store_be_put put;
    int64_t counts[8];
    int64_t value;
    int64_t seqs[512];
    struct store_counts dc;
};

static inline void on_done(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    a->calls++;
    a->status = status;
    a->n = n;
    snprintf(a->err, sizeof a->err, "%s", err ? err : "");
    (void)rows;
}

static inline void on_put(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_be_put *p = rows;
    on_done(arg, status, rows, n, err);
    if (p) {
        a->put = *p;
        for (size_t i = 0; i < p->ncounts && i < 8; i++)
            a->counts[i] = p->counts[i];
        a->put.counts = NULL;
    }
}

static inline void on_count(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    on_done(arg, status, rows, n, err);
    if (rows)
        a->value = *(const int64_t *)rows;
}

static inline void on_claim(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_delivery *d = rows;
    on_done(arg, status, rows, n, err);
    for (size_t i = 0; i < n && i < 512; i++)
        a->seqs[i] = d[i].seq;
}

static inline void on_items(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_delivery_item *d = rows;
    on_done(arg, status, rows, n, err);
    for (size_t i = 0; i < n && i < 512; i++)
        a->seqs[i] = d[i].seq;
    if (n) {
        snprintf(a->err, sizeof a->err, "%s/%lld/%lld/%d", d[0].status, (long long)d[0].attempts,
                 (long long)d[0].last_status_code, d[0].has_last);
    }
}

static inline void on_detail(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_event_detail *d = rows;
    on_done(arg, status, rows, n, err);
    if (!d)
        return;
    a->value = 0;
    a->n = d->ndeliveries;
    for (size_t i = 0; i < d->ndeliveries; i++) {
        a->value += (int64_t)d->deliveries[i].nattempts;
        a->seqs[0] += d->deliveries[i].batch;
    }
    snprintf(a->err, sizeof a->err, "%s %s %.*s", d->ev->id, d->ev->status, (int)d->ev->raw_len,
             d->ev->raw);
}

static inline void on_counts(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    on_done(arg, status, rows, n, err);
    if (rows)
        a->dc = *(const struct store_counts *)rows;
}

/* A read answered with rows: their count (and the first int64 / name /
 * state's counters in *v). */
static inline void on_rows(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    on_done(arg, status, rows, n, err);
    a->value = rows ? *(const int64_t *)rows : -1;
}

static inline void on_names(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    char *const *names = rows;
    on_done(arg, status, rows, n, err);
    a->err[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(a->err + strlen(a->err), sizeof a->err - strlen(a->err), "%s%s", i ? "," : "",
                 names[i]);
}

static inline void on_states(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_endpoint_state *e = rows;
    on_done(arg, status, rows, n, err);
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, "ep2") == 0)
            a->value = e[i].ok * 10 + e[i].failed;
}

static inline void on_subs(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_sub *v = rows;
    on_done(arg, status, rows, n, err);
    if (n)
        snprintf(a->err, sizeof a->err, "%s %s", v[0].id, v[0].url);
}

static inline void on_unrouted(void *arg, int status, const void *rows, size_t n, const char *err) {
    struct answer *a = arg;
    const struct store_event_row *e = rows;
    on_done(arg, status, rows, n, err);
    if (n)
        snprintf(a->err, sizeof a->err, "%s %s %.*s", e[0].id, e[0].status, (int)e[0].raw_len,
                 e[0].raw);
}

/* Runs the loop until *flag is non-zero or ms pass; returns *flag. */
static inline int wait_flag(const int *flag, int ms) {
    int64_t end = util_mono_ms() + ms;
    struct timeval tick = {0, 20000};
    while (!*flag && util_mono_ms() < end) {
        event_base_loopexit(base, &tick);
        event_base_dispatch(base);
    }
    return *flag;
}

static inline int wait_ready(int ms) {
    int64_t end = util_mono_ms() + ms;
    struct timeval tick = {0, 20000};
    while (!ops->ready(be) && util_mono_ms() < end) {
        event_base_loopexit(base, &tick);
        event_base_dispatch(base);
    }
    return ops->ready(be);
}

/* ---- events ---- */

/* An event src/sid with nd deliveries (to ep0..) and ni batch items. */
static inline int put(const char *id, const char *src, const char *sid, size_t nd, size_t ni,
               struct answer *a) {
    struct store_event ev = {.id = id,
                             .source = src,
                             .source_id = sid,
                             .type = "shipment.delivered",
                             .received_at = util_now_ms(),
                             .raw = "{\"x\":1}",
                             .raw_len = 7,
                             .data_json = "{\"x\":1}"};
    struct store_delivery_new d[8];
    struct store_batch_item it[8];
    struct store_match m = {.where = "rules.lua:1", .pattern = "shipment.*"};
    struct store_plan plan = {.status = "routed", .by_rules = 1, .matches = &m, .nmatches = 1};
    char eps[8][24]; /* "ep" and any size_t: -O1 -Wformat-truncation checks the whole range */

    memset(d, 0, sizeof d);
    memset(it, 0, sizeof it);
    for (size_t i = 0; i < nd; i++) {
        snprintf(eps[i], sizeof eps[i], "ep%zu", i);
        d[i].endpoint = eps[i];
        d[i].event_type = "shipment.delivered";
        d[i].payload = "{\"p\":\"a\\\"b\"}";
        d[i].payload_len = strlen(d[i].payload);
        d[i].content_type = "application/json";
        d[i].status = "pending";
        d[i].next_at = 0;
    }
    for (size_t i = 0; i < ni; i++) {
        it[i].endpoint = "batched";
        it[i].window_start = 60000;
        it[i].window_ms = 60000;
        it[i].payload = "{\"id\":1}";
        it[i].len = 8;
    }
    plan.deliveries = d;
    plan.ndeliveries = nd;
    plan.items = it;
    plan.nitems = ni;
    memset(a, 0, sizeof *a);
    return ops->event_put(be, &ev, &plan, on_put, a);
}

#endif
