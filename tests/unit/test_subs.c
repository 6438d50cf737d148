/* test_subs.c -- subscription patterns (ShipEngine aliases, globs), the
 * registry as an endpoint source for config_endpoint_by_name and
 * config_subscribers, subs_poll following what another process stored
 * (and dropping an answer older than a local change), and the Prometheus
 * text of metrics.c. */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "harness.h"
#include "metrics.h"
#include "store_wait.h"
#include "subs.h"

static void test_patterns(void) {
    char out[160], err[256];

    CHECK_INT_EQ(subs_pattern("track", out, sizeof out, err, sizeof err), 0);
    CHECK_STR_EQ(out, "tracking.*");
    CHECK_INT_EQ(subs_pattern("sales_orders_imported", out, sizeof out, err, sizeof err), 0);
    CHECK_STR_EQ(out, "order.imported");
    CHECK_INT_EQ(subs_pattern("order_source_refresh_complete", out, sizeof out, err, sizeof err),
                 0);
    CHECK_STR_EQ(out, "store.refreshed");
    CHECK_INT_EQ(subs_pattern("carrier_connected", out, sizeof out, err, sizeof err), 0);
    CHECK_STR_EQ(out, "carrier.connected");
    CHECK_INT_EQ(subs_pattern("batch", out, sizeof out, err, sizeof err), 0);
    CHECK_STR_EQ(out, "batch.completed");
    CHECK_INT_EQ(subs_pattern("rate", out, sizeof out, err, sizeof err), 0);
    CHECK_STR_EQ(out, "rate.updated");
    CHECK_INT_EQ(subs_pattern("tracking.delivered", out, sizeof out, err, sizeof err), 0);
    CHECK_STR_EQ(out, "tracking.delivered");
    CHECK_INT_EQ(subs_pattern("*", out, sizeof out, err, sizeof err), 0);
    CHECK_INT_EQ(subs_pattern("*.delivered", out, sizeof out, err, sizeof err), 0);
    CHECK_INT_EQ(subs_pattern("", out, sizeof out, err, sizeof err), -1);
    CHECK_INT_EQ(subs_pattern("Tracking.X", out, sizeof out, err, sizeof err), -1);
    CHECK_INT_EQ(subs_pattern("nodots", out, sizeof out, err, sizeof err), -1);
    CHECK_INT_EQ(subs_pattern("a.b c", out, sizeof out, err, sizeof err), -1);
    CHECK(strstr(err, "track") != NULL);

    CHECK(util_glob_match("*", "tracking.delivered"));
    CHECK(util_glob_match("tracking.*", "tracking.delivered"));
    CHECK(!util_glob_match("tracking.*", "shipment.delivered"));
    CHECK(util_glob_match("*.delivered", "shipment.delivered"));
    CHECK(!util_glob_match("*.delivered", "shipment.delivered.late"));
    CHECK(util_glob_match("a*b*c", "axxbyyc"));
    CHECK(!util_glob_match("a*b*c", "axxbyy"));
    CHECK(util_glob_match("order.imported", "order.imported"));
    CHECK(!util_glob_match("order.imported", "order.imported2"));
}

struct names {
    char v[8][64];
    int n;
};

static void collect(void *ctx, const char *name) {
    struct names *n = ctx;
    if (n->n < 8)
        snprintf(n->v[n->n++], sizeof n->v[0], "%s", name);
}

/* What the app does when subscriptions change: merge them into the
 * config's endpoint table. */
static void merge_into(void *arg, const struct subs *subs) {
    struct config_subscription *v = NULL;
    size_t n = 0;
    CHECK_INT_EQ(subs_config_list(subs, &v, &n), 0);
    CHECK_INT_EQ(config_set_subscriptions(arg, v, n), 0);
    free(v);
}

static void test_registry(void) {
    struct config *cfg = calloc(1, sizeof *cfg);
    char err[256];
    struct store *st;
    struct subs *subs;
    struct event_base *base = NULL;
    const struct config_endpoint *ep;
    struct names got = {0};
    char dir[] = "/tmp/wb-subs-XXXXXX";
    struct store_sub a = {"sub_a",
                          "track",
                          "tracking.*",
                          "http://127.0.0.1:1/a",
                          "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                          1000};
    struct store_sub b = {
        "sub_b", "*", "*", "http://127.0.0.1:1/b", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 2000};

    CHECK(mkdtemp(dir) != NULL);
    base = event_base_new();
    st = store_open(base, "sqlite:subs.db?sync=normal", dir, err, sizeof err);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(wait_sub_put(base, st, &a), 0);
    CHECK_INT_EQ(wait_sub_put(base, st, &a), STORE_DUP);
    CHECK_INT_EQ(wait_sub_put(base, st, &b), 0);
    CHECK_INT_EQ(store_flush(st), 0);

    subs = subs_new(st, merge_into, cfg, err, sizeof err);
    CHECK(subs != NULL);
    ep = config_endpoint_by_name(cfg, "sub_a");
    CHECK(ep != NULL && strcmp(ep->url, "http://127.0.0.1:1/a") == 0);
    CHECK(ep && ep->sign == SIGN_STANDARD && ep->nsecrets == 1 && ep->secrets[0].len == 24);
    CHECK(ep && ep->nretry == 6 && ep->retry_ms[1] == 60000);
    CHECK(config_endpoint_by_name(cfg, "sub_zzz") == NULL);
    CHECK(config_endpoint_by_name(cfg, "erp") == NULL);

    config_subscribers(cfg, "tracking.delivered", collect, &got);
    CHECK_INT_EQ(got.n, 2);
    CHECK_STR_EQ(got.v[0], "sub_a");
    got.n = 0;
    config_subscribers(cfg, "order.imported", collect, &got);
    CHECK_INT_EQ(got.n, 1);
    CHECK_STR_EQ(got.v[0], "sub_b");

    CHECK_INT_EQ(subs_set_url(subs, "sub_a", "http://127.0.0.1:2/new"), 0);
    ep = config_endpoint_by_name(cfg, "sub_a");
    CHECK(ep && strcmp(ep->url, "http://127.0.0.1:2/new") == 0);
    subs_remove(subs, "sub_a");
    CHECK(config_endpoint_by_name(cfg, "sub_a") == NULL);
    CHECK(subs_find_pattern(subs, "*") != NULL);

    /* store changes: unknown id is 0 */
    CHECK_INT_EQ(wait_sub_change(base, st, "sub_nope", NULL), 0);
    CHECK_INT_EQ(wait_sub_change(base, st, "sub_b", "http://127.0.0.1:3/"), 1);
    CHECK_INT_EQ(wait_sub_change(base, st, "sub_a", NULL), 1);
    CHECK_INT_EQ(store_flush(st), 0);
    subs_free(subs);
    CHECK(config_endpoint_by_name(cfg, "sub_b") == NULL);

    subs = subs_new(st, merge_into, cfg, err, sizeof err); /* reloaded from the store */
    CHECK(subs && subs_find(subs, "sub_a") == NULL);
    CHECK(subs && subs_find(subs, "sub_b") &&
          strcmp(subs_find(subs, "sub_b")->url, "http://127.0.0.1:3/") == 0);
    subs_free(subs);
    config_free(cfg);
    store_free(st);
    event_base_free(base);
    {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK_INT_EQ(system(cmd), 0);
    }
}

/* The store's held answers (subs_poll's read among them) run. */
static void settle(struct event_base *base, struct store *st) {
    CHECK_INT_EQ(store_flush(st), 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK_INT_EQ(store_flush(st), 0);
}

static void test_poll(void) {
    struct config *cfg = calloc(1, sizeof *cfg);
    char err[256];
    struct store *st;
    struct subs *subs;
    struct event_base *base = event_base_new();
    const struct config_endpoint *ep;
    char dir[] = "/tmp/wb-subs-XXXXXX";
    static const char sec1[] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                      sec2[] = "whsec_c2VjcmV0LWZvci10aGUtY3JtLWVuZHBvaW50";
    struct store_sub a = {"se-a", "track", "tracking.*", "http://127.0.0.1:1/a", sec1, 1000};
    struct store_sub b = {"se-b", "*", "*", "http://127.0.0.1:1/b", sec1, 2000};
    struct store_wait del;
    int issued;

    CHECK(mkdtemp(dir) != NULL);
    st = store_open(base, "sqlite:poll.db?sync=normal", dir, err, sizeof err);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(wait_sub_put(base, st, &a), 0);
    CHECK_INT_EQ(store_flush(st), 0);
    subs = subs_new(st, merge_into, cfg, err, sizeof err);
    CHECK(subs != NULL);
    if (!subs)
        return;

    /* another instance adds b and moves a: followed at the poll's answer */
    CHECK_INT_EQ(wait_sub_put(base, st, &b), 0);
    CHECK_INT_EQ(wait_sub_change(base, st, "se-a", "http://127.0.0.1:2/a"), 1);
    CHECK_INT_EQ(store_flush(st), 0);
    CHECK(config_endpoint_by_name(cfg, "se-b") == NULL);
    CHECK_INT_EQ(subs_poll(subs, st), 0);
    settle(base, st);
    ep = config_endpoint_by_name(cfg, "se-b");
    CHECK(ep && strcmp(ep->url, "http://127.0.0.1:1/b") == 0);
    ep = config_endpoint_by_name(cfg, "se-a");
    CHECK(ep && strcmp(ep->url, "http://127.0.0.1:2/a") == 0);
    /* the local mirror of an add a poll brought first: no second entry */
    CHECK_INT_EQ(subs_add(subs, &b), 0);
    CHECK_INT_EQ((int)subs_count(subs), 2);

    /* rotated elsewhere: signed with the new key from the answer on */
    CHECK_INT_EQ(wait_sub_set_secret(base, st, "se-b", sec2), 1);
    CHECK_INT_EQ(store_flush(st), 0);
    CHECK_INT_EQ(subs_poll(subs, st), 0);
    settle(base, st);
    CHECK(subs_find(subs, "se-b") && strcmp(subs_find(subs, "se-b")->secret, sec2) == 0);

    /* a poll read before a's delete through this instance answers after
     * its mirror: dropped, a stays deleted (the delete's answer is waited
     * for after the mirror: a wait runs the loop, which would hand the
     * poll's answer over before the mirror was made) */
    CHECK_INT_EQ(subs_poll(subs, st), 0);
    store_wait_init(&del);
    issued = start_sub_change(st, "se-a", NULL, &del);
    subs_remove(subs, "se-a");
    settle(base, st);
    CHECK_INT_EQ(store_wait_write(base, &del, issued), 1);
    CHECK(subs_find(subs, "se-a") == NULL && config_endpoint_by_name(cfg, "se-a") == NULL);

    /* deleted elsewhere */
    CHECK_INT_EQ(wait_sub_change(base, st, "se-b", NULL), 1);
    CHECK_INT_EQ(store_flush(st), 0);
    CHECK_INT_EQ(subs_poll(subs, st), 0);
    settle(base, st);
    CHECK_INT_EQ((int)subs_count(subs), 0);
    CHECK(config_endpoint_by_name(cfg, "se-b") == NULL);

    /* freed with a poll out: its answer frees it */
    CHECK_INT_EQ(subs_poll(subs, st), 0);
    subs_free(subs);
    settle(base, st);
    config_free(cfg);
    store_free(st);
    event_base_free(base);
    {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK_INT_EQ(system(cmd), 0);
    }
}

static void test_metrics_text(void) {
    struct util_buf b = {NULL, 0, 0};

    metrics_reset();
    metrics_event_received("atoship");
    metrics_event_received("atoship");
    metrics_event_rejected(NULL, "unknown_source");
    metrics_event_rejected("we\"ird\\", "signature");
    metrics_attempt("erp", "tracking.delivered", "delivered", 7);
    metrics_attempt("erp", "tracking.delivered", "pending", 20000);
    metrics_attempt("erp", NULL, "held", -1);
    CHECK_INT_EQ(metrics_render(&b), 0);
    CHECK_INT_EQ(util_buf_append(&b, "", 1), 0);
    CHECK(strstr(b.p, "# TYPE waybill_events_received_total counter\n") != NULL);
    CHECK(strstr(b.p, "waybill_events_received_total{source=\"atoship\"} 2\n") != NULL);
    CHECK(strstr(b.p, "waybill_events_rejected_total{source=\"\",reason=\"unknown_source\"} 1\n"));
    CHECK(strstr(b.p, "{source=\"we\\\"ird\\\\\",reason=\"signature\"} 1\n") != NULL);
    CHECK(strstr(b.p, "waybill_deliveries_total{endpoint=\"erp\",type=\"tracking.delivered\","
                      "outcome=\"delivered\"} 1\n") != NULL);
    CHECK(strstr(b.p, "waybill_delivery_retries_total{endpoint=\"erp\"} 1\n") != NULL);
    CHECK(strstr(b.p, "waybill_delivery_attempts_total{endpoint=\"erp\"} 2\n") != NULL);
    CHECK(strstr(b.p, "waybill_delivery_attempt_duration_seconds_bucket{le=\"0.005\"} 0\n"));
    CHECK(strstr(b.p, "waybill_delivery_attempt_duration_seconds_bucket{le=\"0.01\"} 1\n"));
    CHECK(strstr(b.p, "waybill_delivery_attempt_duration_seconds_bucket{le=\"10\"} 1\n"));
    CHECK(strstr(b.p, "waybill_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
    CHECK(strstr(b.p, "waybill_delivery_attempt_duration_seconds_count 2\n"));
    CHECK(strstr(b.p, "waybill_rule_errors_total 0\n"));
    util_buf_free(&b);
    metrics_reset();
}

int main(void) {
    test_patterns();
    test_registry();
    test_poll();
    test_metrics_text();
    return harness_report();
}
