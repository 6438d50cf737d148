/* test_metrics.c -- the Prometheus text of metrics.c: HELP/TYPE lines of
 * every family in order, label escaping, what each recording call counts,
 * the histograms' cumulative buckets, _sum and _count, and metrics_reset.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "metrics.h"

/* The rendered text, NUL-terminated (new; free). */
static char *render(void) {
    struct util_buf b = {NULL, 0, 0};
    CHECK_INT_EQ(metrics_render(&b), 0);
    CHECK_INT_EQ(util_buf_append(&b, "", 1), 0);
    return b.p;
}

/* The value of the sample line that starts with series (name and labels),
 * or NAN when there is none. */
static double sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

/* How many lines of text start with prefix. */
static int lines_with(const char *text, const char *prefix) {
    int n = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        n += strncmp(p, prefix, strlen(prefix)) == 0;
    return n;
}

/* Every line is a HELP, a TYPE, or a sample of the family the last TYPE
 * named (its own name or, for a histogram, _bucket/_sum/_count), with a
 * number after one space; the text ends with a newline. */
static int well_formed(const char *text) {
    char fam[128] = "", kind[16] = "";
    const char *p = text;
    if (!*text || text[strlen(text) - 1] != '\n')
        return 0;
    while (*p) {
        const char *nl = strchr(p, '\n');
        char line[1024], *sp, *end;
        size_t len = (size_t)(nl - p), fl;
        if (len >= sizeof line)
            return 0;
        memcpy(line, p, len);
        line[len] = '\0';
        p = nl + 1;
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (sscanf(line, "# TYPE %127s %15s", fam, kind) == 2) {
            if (strcmp(kind, "counter") && strcmp(kind, "histogram"))
                return 0;
            continue;
        }
        fl = strlen(fam);
        if (!fl || strncmp(line, fam, fl) != 0)
            return 0;
        if (strcmp(kind, "histogram") == 0 && strncmp(line + fl, "_bucket{", 8) &&
            strncmp(line + fl, "_sum", 4) && strncmp(line + fl, "_count", 6))
            return 0;
        if (strcmp(kind, "counter") == 0 && line[fl] != ' ' && line[fl] != '{')
            return 0;
        sp = strrchr(line, ' ');
        if (!sp || !sp[1])
            return 0;
        strtod(sp + 1, &end);
        if (*end)
            return 0;
    }
    return 1;
}

static const char *const families[][2] = {
    {"waybill_events_received_total", "counter"},
    {"waybill_events_rejected_total", "counter"},
    {"waybill_deliveries_total", "counter"},
    {"waybill_delivery_retries_total", "counter"},
    {"waybill_delivery_attempts_total", "counter"},
    {"waybill_delivery_attempt_duration_seconds", "histogram"},
    {"waybill_rule_errors_total", "counter"},
    {"waybill_store_commit_duration_seconds", "histogram"},
    {"waybill_store_wal_frames_total", "counter"},
};
#define NFAM (sizeof families / sizeof families[0])

static void test_empty(void) {
    char *t, type[160], help[160];
    const char *prev = NULL;

    metrics_reset();
    t = render();
    CHECK(well_formed(t));
    /* every family has its HELP then TYPE line, in this order */
    for (size_t i = 0; i < NFAM; i++) {
        const char *h, *ty;
        snprintf(help, sizeof help, "# HELP %s ", families[i][0]);
        snprintf(type, sizeof type, "# TYPE %s %s\n", families[i][0], families[i][1]);
        h = strstr(t, help);
        ty = strstr(t, type);
        CHECK(h != NULL && ty != NULL && h < ty);
        CHECK(h && strchr(h, '\n') + 1 == ty); /* HELP right before TYPE */
        CHECK(!prev || (h && h > prev));
        prev = ty;
        CHECK_INT_EQ(lines_with(t, help), 1);
    }
    /* no series yet, but rule errors always show a 0 */
    CHECK_INT_EQ(lines_with(t, "waybill_"), 1);
    CHECK(strstr(t, "\nwaybill_rule_errors_total 0\n") != NULL);
    free(t);
}

static void test_escape(void) {
    struct util_buf b = {NULL, 0, 0};

    CHECK_INT_EQ(metrics_escape(&b, "plain"), 0);
    CHECK_INT_EQ(metrics_escape(&b, "|a\\b\"c\nd|"), 0);
    CHECK_INT_EQ(metrics_escape(&b, ""), 0);
    CHECK_INT_EQ(metrics_escape(&b, NULL), 0); /* nothing appended */
    CHECK_INT_EQ(util_buf_append(&b, "", 1), 0);
    CHECK_STR_EQ(b.p, "plain|a\\\\b\\\"c\\nd|");
    util_buf_free(&b);

    /* in a rendered series: one line, each special escaped */
    metrics_reset();
    metrics_event_received("multi\nline \"src\" \\");
    {
        char *t = render();
        CHECK(strstr(t, "waybill_events_received_total{source=\"multi\\nline \\\"src\\\" "
                        "\\\\\"} 1\n") != NULL);
        CHECK(well_formed(t));
        free(t);
    }
    metrics_reset();
}

static void test_counters(void) {
    char *t;

    metrics_reset();
    metrics_event_received("atoship");
    metrics_event_received("shiptify");
    metrics_event_received("atoship");
    metrics_event_rejected("atoship", "signature");
    metrics_event_rejected("atoship", "duplicate");
    metrics_event_rejected("atoship", "signature");
    metrics_event_rejected(NULL, NULL);
    /* delivered and failed are final outcomes; pending is a retry; held
     * is neither; latency < 0 is no attempt */
    metrics_attempt("erp", "order.created", "delivered", 30);
    metrics_attempt("erp", "order.created", "failed", 40);
    metrics_attempt("erp", "order.created", "failed", -1);
    metrics_attempt("erp", "order.created", "pending", 50);
    metrics_attempt("erp", NULL, "pending", 60);
    metrics_attempt("crm", "x", "held", 70);
    metrics_attempt("crm", "x", "held", -1);
    metrics_rule_error();
    metrics_rule_error();
    t = render();
    CHECK(well_formed(t));
    CHECK(sample(t, "waybill_events_received_total{source=\"atoship\"}") == 2);
    CHECK(sample(t, "waybill_events_received_total{source=\"shiptify\"}") == 1);
    /* series keep their order of creation */
    CHECK(strstr(t, "{source=\"atoship\"}") < strstr(t, "{source=\"shiptify\"}"));
    CHECK(sample(t, "waybill_events_rejected_total{source=\"atoship\",reason=\"signature\"}") == 2);
    CHECK(sample(t, "waybill_events_rejected_total{source=\"atoship\",reason=\"duplicate\"}") == 1);
    CHECK(sample(t, "waybill_events_rejected_total{source=\"\",reason=\"\"}") == 1);
    CHECK(sample(t, "waybill_deliveries_total{endpoint=\"erp\",type=\"order.created\","
                    "outcome=\"delivered\"}") == 1);
    CHECK(sample(t, "waybill_deliveries_total{endpoint=\"erp\",type=\"order.created\","
                    "outcome=\"failed\"}") == 2);
    CHECK_INT_EQ(lines_with(t, "waybill_deliveries_total{"), 2); /* held: no outcome */
    CHECK(sample(t, "waybill_delivery_retries_total{endpoint=\"erp\"}") == 2);
    CHECK_INT_EQ(lines_with(t, "waybill_delivery_retries_total{"), 1);
    CHECK(sample(t, "waybill_delivery_attempts_total{endpoint=\"erp\"}") == 4);
    CHECK(sample(t, "waybill_delivery_attempts_total{endpoint=\"crm\"}") == 1);
    CHECK(sample(t, "waybill_delivery_attempt_duration_seconds_count") == 5);
    CHECK(sample(t, "waybill_rule_errors_total") == 2);
    CHECK_INT_EQ(lines_with(t, "waybill_rule_errors_total "), 1); /* no "0" line besides */
    free(t);

    /* reset forgets every series */
    metrics_reset();
    t = render();
    CHECK_INT_EQ(lines_with(t, "waybill_"), 1);
    CHECK(sample(t, "waybill_rule_errors_total") == 0);
    free(t);
}

/* The store's write-ahead log pages, summed over commits. */
static void test_wal_frames(void) {
    char *t;

    metrics_reset();
    metrics_store_wal_frames(3);
    metrics_store_wal_frames(0);
    metrics_store_wal_frames(40);
    t = render();
    CHECK(well_formed(t));
    CHECK(sample(t, "waybill_store_wal_frames_total") == 43);
    CHECK_INT_EQ(lines_with(t, "waybill_store_wal_frames_total "), 1);
    free(t);
}

static void test_histograms(void) {
    static const char *const les[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                      "0.5",   "1",    "2.5",   "5",    "10",  "+Inf"};
    /* latencies (ms), chosen on and around the bounds (a bound is inclusive) */
    static const int64_t lat[] = {0, 5, 6, 10, 99, 100, 2500, 10000, 10001, 60000};
    static const int want[] = {2, 4, 4, 4, 6, 6, 6, 6, 7, 7, 8, 10};
    char series[160], *t;
    double sum = 0, prev = -1;
    int ok = 1;

    metrics_reset();
    for (size_t i = 0; i < sizeof lat / sizeof lat[0]; i++) {
        metrics_attempt("erp", "t", "delivered", lat[i]);
        sum += (double)lat[i] / 1000.0;
    }
    metrics_store_commit(3);
    metrics_store_commit(700);
    t = render();
    CHECK(well_formed(t));
    for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
        double v;
        snprintf(series, sizeof series,
                 "waybill_delivery_attempt_duration_seconds_bucket{le=\"%s\"}", les[i]);
        v = sample(t, series);
        if (v != want[i] || v < prev) { /* cumulative, never decreasing */
            fprintf(stderr, "bucket le=%s: %g, want %d\n", les[i], v, want[i]);
            ok = 0;
        }
        prev = v;
    }
    CHECK(ok);
    CHECK_INT_EQ(lines_with(t, "waybill_delivery_attempt_duration_seconds_bucket{"), 12);
    CHECK(fabs(sample(t, "waybill_delivery_attempt_duration_seconds_sum") - sum) < 1e-9);
    CHECK(sample(t, "waybill_delivery_attempt_duration_seconds_count") == 10);
    /* the last bucket equals the count */
    CHECK(sample(t, "waybill_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"}") == 10);
    /* buckets come before _sum and _count */
    CHECK(strstr(t, "le=\"+Inf\"") < strstr(t, "waybill_delivery_attempt_duration_seconds_sum"));
    CHECK(strstr(t, "waybill_delivery_attempt_duration_seconds_sum") <
          strstr(t, "waybill_delivery_attempt_duration_seconds_count"));

    /* the store's commit histogram is its own */
    CHECK(sample(t, "waybill_store_commit_duration_seconds_bucket{le=\"0.005\"}") == 1);
    CHECK(sample(t, "waybill_store_commit_duration_seconds_bucket{le=\"0.5\"}") == 1);
    CHECK(sample(t, "waybill_store_commit_duration_seconds_bucket{le=\"1\"}") == 2);
    CHECK(fabs(sample(t, "waybill_store_commit_duration_seconds_sum") - 0.703) < 1e-9);
    CHECK(sample(t, "waybill_store_commit_duration_seconds_count") == 2);
    free(t);
    metrics_reset();
}

/* Counters accumulate across renders; rendering appends to what b holds. */
static void test_render_appends(void) {
    struct util_buf b = {NULL, 0, 0};
    size_t first;

    metrics_reset();
    CHECK_INT_EQ(util_buf_appends(&b, "# before\n"), 0);
    metrics_event_received("a");
    CHECK_INT_EQ(metrics_render(&b), 0);
    first = b.len;
    metrics_event_received("a");
    CHECK_INT_EQ(metrics_render(&b), 0);
    CHECK_INT_EQ(util_buf_append(&b, "", 1), 0);
    CHECK(strncmp(b.p, "# before\n# HELP ", 16) == 0);
    CHECK(sample(b.p, "waybill_events_received_total{source=\"a\"}") == 1);
    CHECK(sample(b.p + first, "waybill_events_received_total{source=\"a\"}") == 2);
    util_buf_free(&b);
    metrics_reset();
}

/* Many series: each one found again, none lost. */
static void test_many_series(void) {
    char name[32], series[96], *t;
    int ok = 1;

    metrics_reset();
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 300; i++) {
            snprintf(name, sizeof name, "ep%d", i);
            metrics_attempt(name, "t", "pending", 1);
        }
    t = render();
    for (int i = 0; i < 300; i++) {
        snprintf(series, sizeof series, "waybill_delivery_retries_total{endpoint=\"ep%d\"}", i);
        ok &= sample(t, series) == 3;
    }
    CHECK(ok);
    CHECK_INT_EQ(lines_with(t, "waybill_delivery_retries_total{"), 300);
    CHECK(sample(t, "waybill_delivery_attempt_duration_seconds_count") == 900);
    free(t);
    metrics_reset();
}

/* Carrier-supplied event types cannot mint series without end: past the
 * first 64 distinct types, deliveries count under type "other". */
static void test_type_labels_capped(void) {
    char type[48], *t;

    metrics_reset();
    for (int i = 0; i < 500; i++) {
        snprintf(type, sizeof type, "shop.minted_%d", i);
        metrics_attempt("erp", type, "delivered", 1);
    }
    metrics_attempt("erp", "shop.minted_3", "delivered", 1); /* a known one keeps its own */
    t = render();
    CHECK_INT_EQ(lines_with(t, "waybill_deliveries_total{"), 65);
    CHECK(sample(t, "waybill_deliveries_total{endpoint=\"erp\",type=\"other\","
                    "outcome=\"delivered\"}") == 436);
    CHECK(sample(t, "waybill_deliveries_total{endpoint=\"erp\",type=\"shop.minted_3\","
                    "outcome=\"delivered\"}") == 2);
    free(t);
    metrics_reset();
}

int main(void) {
    test_empty();
    test_escape();
    test_counters();
    test_wal_frames();
    test_histograms();
    test_render_appends();
    test_many_series();
    test_type_labels_capped();
    return harness_report();
}
