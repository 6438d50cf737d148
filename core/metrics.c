/* metrics.c -- see metrics.h. Series live in one list per family, keyed by
 * their rendered label set; a scrape walks them in creation order.
 * SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* Histogram upper bounds in ms (rendered in seconds). */
static const int64_t metrics_bounds_ms[] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
#define METRICS_NB (sizeof metrics_bounds_ms / sizeof metrics_bounds_ms[0])

struct metrics_series {
    struct metrics_series *next;
    char *labels; /* rendered: a="x",b="y" (may be empty) */
    double value; /* counters; histograms: the sum in seconds */
    uint64_t count, buckets[METRICS_NB];
};

enum metrics_kind { M_COUNTER, M_HISTOGRAM };

struct metrics_family {
    const char *name, *help;
    enum metrics_kind kind;
    struct metrics_series *head, *tail;
};

enum {
    F_RECEIVED,
    F_REJECTED,
    F_DUPLICATES,
    F_DELIVERIES,
    F_RETRIES,
    F_ATTEMPTS,
    F_LATENCY,
    F_RULE_ERRORS,
    F_KEY_MISSING,
    F_COMMIT,
    F_WAL_FRAMES,
    F_TAKEOVERS,
    F_COUNT_
};

static struct metrics_family metrics_fam[F_COUNT_] = {
    [F_RECEIVED] = {"waybill_events_received_total", "Events accepted and stored, by source.",
                    M_COUNTER, NULL, NULL},
    [F_REJECTED] = {"waybill_events_rejected_total",
                    "Inbound requests answered with an error, by source and reason.", M_COUNTER,
                    NULL, NULL},
    [F_DUPLICATES] = {"waybill_events_duplicate_total",
                      "Inbound requests answered 200 as a duplicate of a stored event, by source.",
                      M_COUNTER, NULL, NULL},
    [F_DELIVERIES] =
        {"waybill_deliveries_total",
         "Deliveries that reached a final outcome, by endpoint, event type and outcome.", M_COUNTER,
         NULL, NULL},
    [F_RETRIES] = {"waybill_delivery_retries_total",
                   "Failed attempts after which a retry was scheduled, by endpoint.", M_COUNTER,
                   NULL, NULL},
    [F_ATTEMPTS] = {"waybill_delivery_attempts_total", "Delivery attempts made, by endpoint.",
                    M_COUNTER, NULL, NULL},
    [F_LATENCY] = {"waybill_delivery_attempt_duration_seconds",
                   "Latency of delivery attempts (request to response).", M_HISTOGRAM, NULL, NULL},
    [F_RULE_ERRORS] = {"waybill_rule_errors_total", "Events whose routing failed in the rules.",
                       M_COUNTER, NULL, NULL},
    [F_KEY_MISSING] = {"waybill_ordered_key_missing_total",
                       "Deliveries to an endpoint ordered by key whose event had no key (sent "
                       "unordered), by endpoint.",
                       M_COUNTER, NULL, NULL},
    [F_COMMIT] = {"waybill_store_commit_duration_seconds", "Duration of store group commits.",
                  M_HISTOGRAM, NULL, NULL},
    [F_WAL_FRAMES] = {"waybill_store_wal_frames_total",
                      "Pages written to the store's write-ahead log (each page_size + 24 bytes).",
                      M_COUNTER, NULL, NULL},
    [F_TAKEOVERS] = {"waybill_delivery_lease_takeovers_total",
                     "Deliveries claimed after another instance's lease on them expired or was "
                     "given back at its death (each may be sent twice), by endpoint.",
                     M_COUNTER, NULL, NULL},
};

int metrics_escape(struct util_buf *b, const char *v) {
    for (; v && *v; v++) {
        const char *e = *v == '\\' ? "\\\\" : *v == '"' ? "\\\"" : *v == '\n' ? "\\n" : NULL;
        if (e ? util_buf_appends(b, e) : util_buf_append(b, v, 1))
            return -1;
    }
    return 0;
}

/* The series of family f with labels (k1=v1, k2=v2, k3=v3; a NULL key
 * ends the list). */
static struct metrics_series *metrics_get3(int f, const char *k1, const char *v1, const char *k2,
                                           const char *v2, const char *k3, const char *v3) {
    struct metrics_family *fam = &metrics_fam[f];
    struct util_buf b = {NULL, 0, 0};
    struct metrics_series *s;

    if (k1 && (util_buf_printf(&b, "%s=\"", k1) || metrics_escape(&b, v1 ? v1 : "") ||
               util_buf_appends(&b, "\"")))
        goto oom;
    if (k2 && (util_buf_printf(&b, ",%s=\"", k2) || metrics_escape(&b, v2 ? v2 : "") ||
               util_buf_appends(&b, "\"")))
        goto oom;
    if (k2 && k3 &&
        (util_buf_printf(&b, ",%s=\"", k3) || metrics_escape(&b, v3 ? v3 : "") ||
         util_buf_appends(&b, "\"")))
        goto oom;
    if (util_buf_append(&b, "", 1))
        goto oom;
    for (s = fam->head; s; s = s->next) {
        if (strcmp(s->labels, b.p) == 0) {
            util_buf_free(&b);
            return s;
        }
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto oom;
    s->labels = b.p; /* handoff */
    if (fam->tail)
        fam->tail->next = s;
    else
        fam->head = s;
    fam->tail = s;
    return s;
oom:
    util_buf_free(&b);
    return NULL;
}

static struct metrics_series *metrics_get(int f, const char *k1, const char *v1, const char *k2,
                                          const char *v2) {
    return metrics_get3(f, k1, v1, k2, v2, NULL, NULL);
}

static void metrics_observe(struct metrics_series *s, int64_t ms) {
    if (!s)
        return;
    s->count++;
    s->value += (double)ms / 1000.0;
    for (size_t i = 0; i < METRICS_NB; i++)
        if (ms <= metrics_bounds_ms[i])
            s->buckets[i]++;
}

void metrics_event_received(const char *source) {
    struct metrics_series *s = metrics_get(F_RECEIVED, "source", source, NULL, NULL);
    if (s)
        s->value++;
}

void metrics_event_duplicate(const char *source) {
    struct metrics_series *s = metrics_get(F_DUPLICATES, "source", source, NULL, NULL);
    if (s)
        s->value++;
}

void metrics_event_rejected(const char *source, const char *reason) {
    struct metrics_series *s = metrics_get(F_REJECTED, "source", source, "reason", reason);
    if (s)
        s->value++;
}

/* Event types come from carriers ("<source>.<name>" for names outside the
 * taxonomy), so any signed sender could mint series without end: the
 * first METRICS_TYPES_MAX distinct types get their own, the rest "other". */
#define METRICS_TYPES_MAX 64
static char *metrics_types[METRICS_TYPES_MAX];
static size_t metrics_ntypes;

static const char *metrics_type_label(const char *type) {
    size_t i;

    if (!type)
        return "other";
    for (i = 0; i < metrics_ntypes; i++)
        if (!strcmp(metrics_types[i], type))
            return metrics_types[i];
    if (metrics_ntypes == METRICS_TYPES_MAX || !(metrics_types[metrics_ntypes] = strdup(type)))
        return "other";
    return metrics_types[metrics_ntypes++];
}

void metrics_attempt(const char *endpoint, const char *type, const char *status,
                     int64_t latency_ms) {
    struct metrics_series *s;
    if (latency_ms >= 0) {
        if ((s = metrics_get(F_ATTEMPTS, "endpoint", endpoint, NULL, NULL)))
            s->value++;
        metrics_observe(metrics_get(F_LATENCY, NULL, NULL, NULL, NULL), latency_ms);
    }
    if (strcmp(status, "delivered") == 0 || strcmp(status, "failed") == 0)
        s = metrics_get3(F_DELIVERIES, "endpoint", endpoint, "type", metrics_type_label(type),
                         "outcome", status);
    else if (strcmp(status, "pending") == 0)
        s = metrics_get(F_RETRIES, "endpoint", endpoint, NULL, NULL);
    else
        s = NULL;
    if (s)
        s->value++;
}

void metrics_rule_error(void) {
    struct metrics_series *s = metrics_get(F_RULE_ERRORS, NULL, NULL, NULL, NULL);
    if (s)
        s->value++;
}

void metrics_key_missing(const char *endpoint) {
    struct metrics_series *s = metrics_get(F_KEY_MISSING, "endpoint", endpoint, NULL, NULL);
    if (s)
        s->value++;
}

void metrics_store_commit(int64_t ms) {
    metrics_observe(metrics_get(F_COMMIT, NULL, NULL, NULL, NULL), ms);
}

void metrics_store_wal_frames(int64_t frames) {
    struct metrics_series *s = metrics_get(F_WAL_FRAMES, NULL, NULL, NULL, NULL);
    if (s)
        s->value += (double)frames;
}

void metrics_lease_takeover(const char *endpoint) {
    struct metrics_series *s = metrics_get(F_TAKEOVERS, "endpoint", endpoint, NULL, NULL);
    if (s)
        s->value++;
}

int metrics_render(struct util_buf *b) {
    int bad = 0;
    for (int f = 0; f < F_COUNT_; f++) {
        struct metrics_family *fam = &metrics_fam[f];
        bad |= util_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help, fam->name,
                               fam->kind == M_COUNTER ? "counter" : "histogram");
        if (fam->kind == M_COUNTER && !fam->head && f == F_RULE_ERRORS)
            bad |= util_buf_printf(b, "%s 0\n", fam->name);
        for (struct metrics_series *s = fam->head; s; s = s->next) {
            const char *sep = s->labels[0] ? "," : "";
            if (fam->kind == M_COUNTER) {
                bad |= util_buf_printf(b, "%s%s%s%s %.17g\n", fam->name, s->labels[0] ? "{" : "",
                                       s->labels, s->labels[0] ? "}" : "", s->value);
                continue;
            }
            for (size_t i = 0; i < METRICS_NB; i++)
                bad |= util_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", fam->name, s->labels,
                                       sep, (double)metrics_bounds_ms[i] / 1000.0,
                                       (unsigned long long)s->buckets[i]);
            bad |= util_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", fam->name, s->labels,
                                   sep, (unsigned long long)s->count);
            bad |= util_buf_printf(b, "%s_sum%s%s%s %.17g\n%s_count%s%s%s %llu\n", fam->name,
                                   s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "",
                                   s->value, fam->name, s->labels[0] ? "{" : "", s->labels,
                                   s->labels[0] ? "}" : "", (unsigned long long)s->count);
        }
    }
    return bad ? -1 : 0;
}

_Static_assert(METRICS_NB == METRICS_LATENCY_NB, "metrics.h's bucket count");

/* Family f's counters summed, only the series whose labels end with tail
 * when tail is not NULL (the last label: values escape their quotes). */
static double metrics_sum(int f, const char *tail) {
    size_t k = tail ? strlen(tail) : 0, n;
    double v = 0;
    for (struct metrics_series *s = metrics_fam[f].head; s; s = s->next) {
        n = strlen(s->labels);
        if (!tail || (n >= k && strcmp(s->labels + n - k, tail) == 0))
            v += s->value;
    }
    return v;
}

void metrics_totals(struct metrics_totals *t) {
    struct metrics_series *lat = metrics_fam[F_LATENCY].head;

    memset(t, 0, sizeof *t);
    t->bounds_ms = metrics_bounds_ms;
    t->received = metrics_sum(F_RECEIVED, NULL);
    t->delivered = metrics_sum(F_DELIVERIES, ",outcome=\"delivered\"");
    t->failed = metrics_sum(F_DELIVERIES, ",outcome=\"failed\"");
    t->retries = metrics_sum(F_RETRIES, NULL);
    if (lat) {
        t->attempts = lat->count;
        memcpy(t->buckets, lat->buckets, sizeof t->buckets);
    }
}

void metrics_reset(void) {
    for (int f = 0; f < F_COUNT_; f++) {
        struct metrics_series *s = metrics_fam[f].head, *n;
        for (; s; s = n) {
            n = s->next;
            free(s->labels);
            free(s);
        }
        metrics_fam[f].head = metrics_fam[f].tail = NULL;
    }
    for (size_t i = 0; i < metrics_ntypes; i++)
        free(metrics_types[i]);
    metrics_ntypes = 0;
}
