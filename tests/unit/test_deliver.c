/* test_deliver.c -- outcome classes, Retry-After, retry schedule and jitter
 * (the SSRF address ranges are test_httpc.c's); then the engine end to end
 * on a real store in a temporary folder against an in-process evhttp sink
 * on 127.0.0.1: retries, headers and signature, 406, Retry-After,
 * per-endpoint concurrency, the guard, an endpoint not in the config, and
 * shutdown with a hung transfer. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>

#include "harness.h"
#include "config.h"
#include "deliver.h"
#include "health.h"
#include "httpc.h"
#include "log.h"
#include "store.h"
#include "store_wait.h"
#include "util.h"
#include "verify.h"

/* ---- pure helpers ---- */

/* What the app answers the guard: the config's allow_private. */
static int allow_from_config(void *arg, int family, const unsigned char *ip) {
    return config_private_allowed(arg, family, ip);
}

static void test_classify(void) {
    CHECK_INT_EQ(deliver_outcome_classify(200, CONFIG_SUCCESS_2XX), DELIVER_DELIVERED);
    CHECK_INT_EQ(deliver_outcome_classify(201, CONFIG_SUCCESS_2XX), DELIVER_DELIVERED);
    CHECK_INT_EQ(deliver_outcome_classify(204, CONFIG_SUCCESS_2XX), DELIVER_DELIVERED);
    CHECK_INT_EQ(deliver_outcome_classify(299, CONFIG_SUCCESS_2XX), DELIVER_DELIVERED);
    CHECK_INT_EQ(deliver_outcome_classify(200, CONFIG_SUCCESS_200), DELIVER_DELIVERED);
    CHECK_INT_EQ(deliver_outcome_classify(201, CONFIG_SUCCESS_200), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(204, CONFIG_SUCCESS_200), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(301, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(302, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(304, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(308, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(406, CONFIG_SUCCESS_2XX), DELIVER_FAILED);
    CHECK_INT_EQ(deliver_outcome_classify(406, CONFIG_SUCCESS_200), DELIVER_FAILED);
    CHECK_INT_EQ(deliver_outcome_classify(410, CONFIG_SUCCESS_2XX), DELIVER_GONE);
    CHECK_INT_EQ(deliver_outcome_classify(429, CONFIG_SUCCESS_2XX), DELIVER_RETRY_AFTER);
    CHECK_INT_EQ(deliver_outcome_classify(503, CONFIG_SUCCESS_2XX), DELIVER_RETRY_AFTER);
    CHECK_INT_EQ(deliver_outcome_classify(500, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(502, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(400, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(404, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(408, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(100, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
    CHECK_INT_EQ(deliver_outcome_classify(0, CONFIG_SUCCESS_2XX), DELIVER_RETRY);
}

static void test_retry_after(void) {
    const int64_t now = 1445412480000LL; /* Wed, 21 Oct 2015 07:28:00 GMT */
    const int64_t day = DELIVER_RETRY_AFTER_MAX_MS;

    CHECK_INT_EQ(day, 86400000);
    CHECK_INT_EQ(deliver_retry_after_parse("120", now), 120000);
    CHECK_INT_EQ(deliver_retry_after_parse("0", now), 0);
    CHECK_INT_EQ(deliver_retry_after_parse(" 5 ", now), 5000);
    CHECK_INT_EQ(deliver_retry_after_parse("86400", now), day);
    CHECK_INT_EQ(deliver_retry_after_parse("86401", now), day);
    CHECK_INT_EQ(deliver_retry_after_parse("999999999999999999999999", now), day);
    /* the three HTTP date forms */
    CHECK_INT_EQ(deliver_retry_after_parse("Wed, 21 Oct 2015 07:29:00 GMT", now), 60000);
    CHECK_INT_EQ(deliver_retry_after_parse("Wednesday, 21-Oct-15 07:29:00 GMT", now), 60000);
    CHECK_INT_EQ(deliver_retry_after_parse("Wed Oct 21 07:29:00 2015", now), 60000);
    CHECK_INT_EQ(deliver_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", now + 400), 0);
    CHECK_INT_EQ(deliver_retry_after_parse("Tue, 20 Oct 2015 07:28:00 GMT", now), 0); /* past */
    CHECK_INT_EQ(deliver_retry_after_parse("Fri, 23 Oct 2015 07:28:00 GMT", now), day);
    CHECK_INT_EQ(deliver_retry_after_parse("Thu, 22 Oct 2015 07:28:00 GMT", now), day);
    CHECK_INT_EQ(deliver_retry_after_parse("Thu, 22 Oct 2015 07:27:59 GMT", now), day - 1000);
    CHECK_INT_EQ(deliver_retry_after_parse("Sat, 01 Jan 2100 00:00:00 GMT", now), day);
    /* garbage */
    CHECK_INT_EQ(deliver_retry_after_parse(NULL, now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("   ", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("soon", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("1.5", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("10s", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("5 6", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("-5", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("+5", now), -1);
    CHECK_INT_EQ(deliver_retry_after_parse("Wed, 99 Foo 2015 99:99:99 GMT", now), -1);
}

static void test_schedule(void) {
    /* the atoship preset: 0, 1m, 5m, 30m, 2h, 6h */
    static const int64_t atoship[] = {0, 60000, 300000, 1800000, 7200000, 21600000};
    static const int64_t one[] = {0};
    const size_t n = sizeof atoship / sizeof atoship[0];
    int64_t delay = -7, lo = INT64_MAX, hi = 0;
    double sum = 0;
    uint32_t r = 12345;
    int pos, i, ok = 1;

    /* progression without jitter: attempt at pos k -> delay[k + 1], pos k + 1 */
    for (pos = 0; pos + 1 < (int)n; pos++) {
        CHECK_INT_EQ(deliver_schedule_next(atoship, n, pos, 0, 0, &delay), pos + 1);
        CHECK_INT_EQ(delay, atoship[pos + 1]);
    }
    delay = -7;
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, 5, 0, 0, &delay), -1); /* after the 6th */
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, 9, 0, 0, &delay), -1); /* schedule shrank */
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, -1, 0, 0, &delay), -1);
    CHECK_INT_EQ(deliver_schedule_next(one, 1, 0, 1, 0, &delay), -1); /* one attempt only */
    CHECK_INT_EQ(deliver_schedule_next(atoship, 0, 0, 1, 0, &delay), -1);
    CHECK_INT_EQ(delay, -7); /* untouched when exhausted */

    /* jitter: +-10%, exact at the midpoint, bounds at the ends */
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, 0, 1, 0x80000000u, &delay), 1);
    CHECK_INT_EQ(delay, 60000);
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, 0, 1, 0, &delay), 1);
    CHECK_INT_EQ(delay, 54000);
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, 0, 1, 0xffffffffu, &delay), 1);
    CHECK(delay >= 65999 && delay <= 66000);
    CHECK_INT_EQ(deliver_schedule_next(atoship, n, 4, 1, 0, &delay), 5);
    CHECK_INT_EQ(delay, 19440000);
    for (i = 0; i < 20000; i++) {
        r = r * 1664525u + 1013904223u;
        deliver_schedule_next(atoship, n, 0, 1, r, &delay);
        if (delay < 54000 || delay > 66000)
            ok = 0;
        lo = delay < lo ? delay : lo;
        hi = delay > hi ? delay : hi;
        sum += (double)delay;
    }
    CHECK(ok);
    CHECK(lo < 54300 && hi > 65700); /* spread over the whole range */
    CHECK(sum / 20000 > 59700 && sum / 20000 < 60300);
    /* a zero delay stays zero */
    {
        static const int64_t zeros[] = {0, 0};
        CHECK_INT_EQ(deliver_schedule_next(zeros, 2, 0, 1, 0, &delay), 1);
        CHECK_INT_EQ(delay, 0);
    }
}

/* ---- the engine against a sink ---- */

struct sink {
    struct event_base *base;
    int ok_n, e406_n, busy_n, slow_n, slow_active, slow_max, hang_n;
    int64_t busy_at[2];
    char ok_attempt[2][16], ok_delivery[2][64], ok_type[64], ok_ctype[64], ok_ua[64];
    char ok_sig[80], ok_env[16], ok_rule[16], ok_body[64];
    int ok_expect;         /* an Expect header was seen */
    unsigned slow_port[3]; /* client ports: one connection, reused */
};

struct sink_delay {
    struct sink *s;
    struct evhttp_request *req;
    struct event *ev;
};

static void copy_header(struct evkeyvalq *h, const char *name, char *out, size_t len) {
    const char *v = evhttp_find_header(h, name);
    snprintf(out, len, "%s", v ? v : "(none)");
}

static void reply(struct evhttp_request *req, int code, const char *body) {
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s", body);
    evhttp_send_reply(req, code, "X", b);
    evbuffer_free(b);
}

static void slow_done(evutil_socket_t fd, short what, void *arg) {
    struct sink_delay *sd = arg;
    UNUSED(fd);
    UNUSED(what);
    sd->s->slow_active--;
    reply(sd->req, 200, "slow ok");
    event_free(sd->ev);
    free(sd);
}

static void sink_cb(struct evhttp_request *req, void *arg) {
    struct sink *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);

    if (!strcmp(uri, "/ok")) {
        int i = s->ok_n < 2 ? s->ok_n : 1;
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        copy_header(h, "X-Waybill-Attempt", s->ok_attempt[i], sizeof s->ok_attempt[i]);
        copy_header(h, "X-Waybill-Delivery", s->ok_delivery[i], sizeof s->ok_delivery[i]);
        copy_header(h, "X-Waybill-Event-Type", s->ok_type, sizeof s->ok_type);
        copy_header(h, "Content-Type", s->ok_ctype, sizeof s->ok_ctype);
        copy_header(h, "User-Agent", s->ok_ua, sizeof s->ok_ua);
        copy_header(h, "X-Signature", s->ok_sig, sizeof s->ok_sig);
        copy_header(h, "X-Env", s->ok_env, sizeof s->ok_env);
        copy_header(h, "X-Rule", s->ok_rule, sizeof s->ok_rule);
        s->ok_expect |= evhttp_find_header(h, "Expect") != NULL;
        if (len >= sizeof s->ok_body)
            len = sizeof s->ok_body - 1;
        evbuffer_copyout(in, s->ok_body, len);
        s->ok_body[len] = '\0';
        if (s->ok_n++ == 0)
            reply(req, 500, "nope");
        else
            reply(req, 200, "ok");
    } else if (!strcmp(uri, "/406")) {
        s->e406_n++;
        reply(req, 406, "not acceptable");
    } else if (!strcmp(uri, "/busy")) {
        if (s->busy_n < 2)
            s->busy_at[s->busy_n] = util_mono_ms();
        if (s->busy_n++ == 0) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
            reply(req, 503, "busy");
        } else {
            reply(req, 200, "ok");
        }
    } else if (!strcmp(uri, "/slow")) {
        struct sink_delay *sd = calloc(1, sizeof *sd);
        struct timeval tv = {0, 50000};
        char *peer = NULL;
        ev_uint16_t pport = 0;
        evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &pport);
        if (s->slow_n < 3)
            s->slow_port[s->slow_n] = pport;
        s->slow_n++;
        if (++s->slow_active > s->slow_max)
            s->slow_max = s->slow_active;
        sd->s = s;
        sd->req = req;
        sd->ev = evtimer_new(s->base, slow_done, sd);
        evtimer_add(sd->ev, &tv);
    } else if (!strcmp(uri, "/hang")) {
        s->hang_n++; /* never answered: the engine aborts it at shutdown */
    } else {
        reply(req, 404, "?");
    }
}

struct run {
    struct event_base *base;
    struct store *store;
    struct deliver *d;
    struct sink *sink;
    const char *evt_id;
    struct event *poll;
    struct store_wait detail; /* the event detail read in flight, when reading */
    int reading;
    int64_t deadline;
    int shutting, done, timed_out;
};

/* The status of the delivery to endpoint (the idx-th one) in the event
 * detail ev (NULL: none), the delivery in *att. */
static const char *dlv_status(const struct store_event_detail *ev, const char *endpoint, int idx,
                              const struct store_event_delivery **att) {
    size_t i;
    for (i = 0; ev && i < ev->ndeliveries; i++) {
        const struct store_event_delivery *d = &ev->deliveries[i];
        if (strcmp(d->endpoint, endpoint))
            continue;
        if (idx-- > 0)
            continue;
        if (att)
            *att = d;
        return d->status;
    }
    return "(missing)";
}

/* The number of attempts of d (0 for NULL) and its k-th (an empty row when
 * there is none). */
static size_t natt(const struct store_event_delivery *d) {
    return d ? d->nattempts : 0;
}

static const struct store_attempt_row *att_row(const struct store_event_delivery *d, size_t k) {
    static const struct store_attempt_row none;
    return d && k < d->nattempts ? &d->attempts[k] : &none;
}

static void shutdown_done(void *arg) {
    struct run *r = arg;
    r->done = 1;
    event_base_loopbreak(r->base);
}

/* Every 20 ms: the event detail read the last time, when it came, is
 * looked at, and the next read is issued (one in flight: its answer comes
 * from the loop, which this callback runs in). */
static void poll_cb(evutil_socket_t fd, short what, void *arg) {
    struct run *r = arg;
    struct store_event_detail *ev = NULL;
    int settled;

    UNUSED(fd);
    UNUSED(what);
    if (util_mono_ms() > r->deadline) {
        r->timed_out = 1;
        event_base_loopbreak(r->base);
        return;
    }
    if (r->reading && !r->detail.came)
        return;
    if (!r->reading) {
        store_wait_init(&r->detail);
        r->reading = start_event_detail(r->store, r->evt_id, &r->detail) == 0;
        return;
    }
    take_event_detail(&r->detail, &ev);
    store_wait_init(&r->detail);
    r->reading = start_event_detail(r->store, r->evt_id, &r->detail) == 0;
    settled = ev && !strcmp(dlv_status(ev, "ok", 0, NULL), "delivered") &&
              !strcmp(dlv_status(ev, "e406", 0, NULL), "failed") &&
              !strcmp(dlv_status(ev, "blocked", 0, NULL), "failed") &&
              !strcmp(dlv_status(ev, "busy", 0, NULL), "delivered") &&
              !strcmp(dlv_status(ev, "slow", 0, NULL), "delivered") &&
              !strcmp(dlv_status(ev, "slow", 1, NULL), "delivered") &&
              !strcmp(dlv_status(ev, "slow", 2, NULL), "delivered") && r->sink->hang_n == 1;
    store_event_detail_free(ev);
    if (settled && !r->shutting) {
        r->shutting = 1;
        CHECK_INT_EQ(deliver_inflight(r->d), 1); /* the hung one */
        deliver_shutdown(r->d, 200, shutdown_done, r);
    }
}

static void test_engine(void) {
    char dir[] = "/tmp/waybill-test-deliver-XXXXXX", url[6][80], path[300], err[256];
    char evt_id[UTIL_ID_MAX], sig[65];
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    struct evhttp_bound_socket *bound;
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    struct sink sink;
    struct run r;
    struct store *st;
    struct httpc *hc;
    struct health *hl;
    struct deliver *d;
    struct timeval tv = {0, 20000};
    unsigned char key[] = "k", mac[32];
    struct verify_secret secret = {key, 1};
    struct config_header ep_headers[] = {{(char *)"X-Env", (char *)"test"},
                                         {(char *)"X-Waybill-Attempt", (char *)"77"}};
    int64_t retry_quick[] = {0, 100}, retry_once[] = {0}, retry_busy[] = {0, 10};
    const char *names[] = {"ok", "e406", "blocked", "busy", "slow", "hang"};
    const char *paths[] = {"/ok", "/406", "/", "/busy", "/slow", "/hang"};
    struct config_endpoint eps[6];
    struct config_cidr loopback = {AF_INET, {127}, 8};
    struct config cfg;
    struct store_event sev;
    struct store_delivery_new dn[8];
    const char *payload = "{\"order\":42}";
    struct store_event_detail *ev = NULL;
    const struct store_event_delivery *att;
    int i, port, ok;

    memset(&sink, 0, sizeof sink);
    memset(&r, 0, sizeof r);
    memset(eps, 0, sizeof eps);
    memset(&cfg, 0, sizeof cfg);
    memset(dn, 0, sizeof dn);
    CHECK(mkdtemp(dir) != NULL);
    sink.base = base;

    /* the sink */
    evhttp_set_gencb(http, sink_cb, &sink);
    bound = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    CHECK(bound != NULL);
    if (!bound)
        return;
    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &slen);
    port = ntohs(sin.sin_port);

    /* the config */
    for (i = 0; i < 6; i++) {
        if (i == 2) /* private, and not in allow_private: refused before connecting */
            snprintf(url[i], sizeof url[i], "http://10.255.255.1:9/");
        else
            snprintf(url[i], sizeof url[i], "http://127.0.0.1:%d%s", port, paths[i]);
        eps[i].name = (char *)names[i];
        eps[i].url = url[i];
        eps[i].sign = SIGN_NONE;
        eps[i].timeout_ms = 5000;
        eps[i].retry_ms = retry_once;
        eps[i].nretry = 1;
        eps[i].jitter = 0;
        eps[i].concurrency = 16;
        eps[i].success = CONFIG_SUCCESS_2XX;
        eps[i].enabled = 1;
    }
    eps[0].sign = SIGN_HEX;
    eps[0].secrets = &secret;
    eps[0].nsecrets = 1;
    eps[0].headers = ep_headers;
    eps[0].nheaders = 2;
    eps[0].retry_ms = retry_quick;
    eps[0].nretry = 2;
    eps[3].retry_ms = retry_busy;
    eps[3].nretry = 2;
    eps[4].concurrency = 1;
    cfg.endpoints = eps;
    cfg.nendpoints = 6;
    cfg.allow_private = &loopback;
    cfg.nallow_private = 1;

    /* the store: one event, deliveries to each endpoint, and one to an
     * endpoint the config does not have */
    st = store_open(base, "sqlite:deliver.db", dir, err, sizeof err);
    CHECK(st != NULL);
    if (!st) {
        fprintf(stderr, "store_open: %s\n", err);
        return;
    }
    util_id_new("evt_", evt_id, sizeof evt_id);
    memset(&sev, 0, sizeof sev);
    sev.id = evt_id;
    sev.source = "test";
    sev.source_id = "1";
    sev.type = "tracking.delivered";
    sev.received_at = util_now_ms();
    sev.raw = "{}";
    sev.raw_len = 2;
    sev.headers_json = "{}";
    sev.data_json = "{}";
    CHECK_INT_EQ(wait_event_put(base, st, &sev, NULL), 0);
    for (i = 0; i < 8; i++) {
        dn[i].endpoint = i < 6 ? names[i] : i == 6 ? "slow" : "ghost";
        dn[i].event_type = "tracking.delivered";
        dn[i].payload = payload;
        dn[i].payload_len = strlen(payload);
        dn[i].content_type = "application/json";
        dn[i].status = "pending";
        dn[i].next_at = util_now_ms();
    }
    dn[0].headers_json =
        "{\"X-Rule\":\"r1\",\"X-Waybill-Delivery\":\"forged\",\"Bad\\nName\":\"x\"}";
    dn[5].endpoint = "slow"; /* three to "slow", then "hang" last */
    dn[6].endpoint = "slow";
    dn[7].endpoint = "ghost";
    {
        struct store_delivery_new hang = dn[0];
        hang.endpoint = "hang";
        hang.headers_json = NULL;
        struct store_plan plan = {.status = "routed", .deliveries = dn, .ndeliveries = 8};
        struct store_plan plan_hang = {.status = "routed", .deliveries = &hang, .ndeliveries = 1};
        CHECK_INT_EQ(wait_event_routed(base, st, evt_id, &plan), 1); /* routed */
        CHECK_INT_EQ(wait_event_routed(base, st, evt_id, &plan_hang), 1);
    }
    CHECK_INT_EQ(store_flush(st), 0);

    hc = httpc_new(base, err, sizeof err);
    hl = health_new(st, err, sizeof err);
    d = hc && hl ? deliver_new(base, st, hc, hl, err, sizeof err) : NULL;
    CHECK(d != NULL);
    if (!d) {
        health_free(hl);
        httpc_free(hc);
        store_free(st);
        return;
    }
    httpc_set_allow(hc, allow_from_config, &cfg);
    health_set_config(hl, &cfg);
    deliver_set_config(d, &cfg);
    deliver_kick(d);

    r.base = base;
    r.store = st;
    r.d = d;
    r.sink = &sink;
    r.evt_id = evt_id;
    r.deadline = util_mono_ms() + 15000;
    r.poll = event_new(base, -1, EV_PERSIST, poll_cb, &r);
    event_add(r.poll, &tv);
    event_base_dispatch(base);
    event_del(r.poll); /* the loop runs again for the reads below: no more polls */
    CHECK(!r.timed_out);
    CHECK(r.done);
    CHECK_INT_EQ(deliver_inflight(d), 0);

    /* what the sink saw */
    CHECK_INT_EQ(sink.ok_n, 2);
    CHECK_STR_EQ(sink.ok_attempt[0], "1");
    CHECK_STR_EQ(sink.ok_attempt[1], "2");
    CHECK(!strncmp(sink.ok_delivery[0], "dlv_", 4));
    CHECK_STR_EQ(sink.ok_delivery[0], sink.ok_delivery[1]); /* stable across retries */
    CHECK_STR_EQ(sink.ok_type, "tracking.delivered");
    CHECK_STR_EQ(sink.ok_ctype, "application/json");
    CHECK_STR_EQ(sink.ok_ua, "waybill/" WAYBILL_VERSION);
    CHECK_STR_EQ(sink.ok_env, "test");
    CHECK_STR_EQ(sink.ok_rule, "r1");
    CHECK_STR_EQ(sink.ok_body, payload);
    CHECK(!sink.ok_expect);
    verify_hmac_sha256(key, 1, payload, strlen(payload), mac);
    util_hex_encode(mac, 32, sig);
    CHECK_STR_EQ(sink.ok_sig, sig);
    CHECK_INT_EQ(sink.e406_n, 1);
    CHECK_INT_EQ(sink.busy_n, 2);
    CHECK(sink.busy_at[1] - sink.busy_at[0] >= 950); /* Retry-After: 1 beat the 10 ms delay */
    CHECK_INT_EQ(sink.slow_n, 3);
    CHECK_INT_EQ(sink.slow_max, 1); /* concurrency = 1 */
    CHECK(sink.slow_port[0] != 0);
    CHECK_INT_EQ(sink.slow_port[1], sink.slow_port[0]); /* the connection was reused */
    CHECK_INT_EQ(sink.slow_port[2], sink.slow_port[0]);
    CHECK_INT_EQ(sink.hang_n, 1);

    /* what the store recorded */
    ev = NULL;
    CHECK_INT_EQ(wait_event_detail(base, st, evt_id, &ev), 1);
    CHECK(ev != NULL);
    att = NULL;
    CHECK_STR_EQ(dlv_status(ev, "ok", 0, &att), "delivered");
    CHECK_INT_EQ(natt(att), 2);
    CHECK_INT_EQ(att_row(att, 0)->n, 1);
    CHECK_INT_EQ(att_row(att, 0)->status_code, 500);
    CHECK_STR_EQ(att_row(att, 0)->error, "HTTP 500");
    CHECK_STR_EQ(att_row(att, 0)->response, "nope");
    CHECK_INT_EQ(att_row(att, 1)->n, 2);
    CHECK_INT_EQ(att_row(att, 1)->status_code, 200);
    CHECK(att_row(att, 1)->error == NULL);
    CHECK_STR_EQ(dlv_status(ev, "e406", 0, &att), "failed");
    CHECK_INT_EQ(natt(att), 1);
    CHECK_INT_EQ(att_row(att, 0)->status_code, 406);
    CHECK_STR_EQ(dlv_status(ev, "blocked", 0, &att), "failed");
    CHECK_INT_EQ(natt(att), 1);
    CHECK_INT_EQ(att_row(att, 0)->status_code, 0);
    CHECK_STR_EQ(att_row(att, 0)->error,
                 "address 10.255.255.1 is private (allow_private to permit)");
    CHECK_STR_EQ(dlv_status(ev, "busy", 0, &att), "delivered");
    CHECK_INT_EQ(natt(att), 2);
    CHECK_INT_EQ(att_row(att, 0)->status_code, 503);
    for (i = 0, ok = 1; i < 3; i++)
        ok &= !strcmp(dlv_status(ev, "slow", i, NULL), "delivered");
    CHECK(ok);
    CHECK_STR_EQ(dlv_status(ev, "ghost", 0, &att), "pending"); /* left leased, no attempt */
    CHECK_INT_EQ(natt(att), 0);
    CHECK_STR_EQ(dlv_status(ev, "hang", 0, &att), "pending"); /* aborted: nothing written */
    CHECK_INT_EQ(natt(att), 0);
    store_event_detail_free(ev);

    event_free(r.poll);
    deliver_free(d);
    health_free(hl);
    httpc_free(hc);
    store_free(st);
    store_wait_clear(&r.detail); /* a poll's read answered late (by store_free) */
    evhttp_free(http);
    event_base_free(base);
    snprintf(path, sizeof path, "%s/deliver.db", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/deliver.db-wal", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/deliver.db-shm", dir);
    unlink(path);
    rmdir(dir);
}

/* ---- under writes in every group, committed rows are looked at ----
 * A carrier's event marks its endpoint in the open group; the kick at
 * that group's end looks at it. Under steady ingest the next group marks
 * the endpoint again before the first one ends: the look must not wait for
 * the last mark's group (there is always a later one), nor for the
 * watchdog's second. An event goes in, then one more on every loop turn
 * for 700 ms; the first must reach the receiver well before they stop. */

struct marks_sink {
    int n;
    int64_t first_at;
};

static void marks_sink_cb(struct evhttp_request *req, void *arg) {
    struct marks_sink *m = arg;
    if (!m->n++)
        m->first_at = util_mono_ms();
    reply(req, 200, "ok");
}

struct marks_put {
    struct store_delivery_new dn;
    struct store_plan plan;
    char id[UTIL_ID_MAX], sid[32];
    int *answered;
};

static void marks_put_done(void *arg, const struct store_done *dd) {
    struct marks_put *mp = arg;
    if (dd->ok && dd->status == 0)
        (*mp->answered)++;
    free(mp);
}

/* Puts event n with one delivery to "erp" and marks the endpoint, as
 * ingest does (route_plan_queued). Returns 0 or -1. */
static int marks_put(struct store *st, struct deliver *d, int n, int *answered) {
    struct marks_put *mp = calloc(1, sizeof *mp);
    struct store_event sev = {0};
    if (!mp)
        return -1;
    util_id_new("evt_", mp->id, sizeof mp->id);
    snprintf(mp->sid, sizeof mp->sid, "marks-%d", n);
    mp->answered = answered;
    mp->dn = (struct store_delivery_new){.endpoint = "erp",
                                         .event_type = "t",
                                         .payload = "{}",
                                         .payload_len = 2,
                                         .status = "pending",
                                         .next_at = util_now_ms()};
    mp->plan = (struct store_plan){.status = "routed", .deliveries = &mp->dn, .ndeliveries = 1};
    sev.id = mp->id;
    sev.source = "test";
    sev.source_id = mp->sid;
    sev.type = "t";
    sev.received_at = util_now_ms();
    sev.raw = "{}";
    sev.raw_len = 2;
    sev.headers_json = "{}";
    sev.data_json = "{}";
    if (store_event_put_done(st, &sev, &mp->plan, marks_put_done, mp) < 0) {
        free(mp);
        return -1;
    }
    deliver_watch_endpoint(d, "erp");
    return 0;
}

static void test_marks_under_steady_writes(void) {
    char dir[] = "/tmp/waybill-test-deliver-XXXXXX", err[256], url[80], cmd[128];
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    struct evhttp_bound_socket *bound;
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    struct marks_sink sink = {0, 0};
    struct config_endpoint ep;
    struct config_cidr loopback = {AF_INET, {127}, 8};
    struct config cfg;
    int64_t retry_once[] = {0}, t0;
    struct store *st;
    struct httpc *hc;
    struct health *hl;
    struct deliver *d;
    int n = 0, answered = 0, failed = 0, i;

    CHECK(mkdtemp(dir) != NULL);
    evhttp_set_gencb(http, marks_sink_cb, &sink);
    bound = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    CHECK(bound != NULL);
    if (!bound)
        return;
    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &slen);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/erp", ntohs(sin.sin_port));
    memset(&ep, 0, sizeof ep);
    memset(&cfg, 0, sizeof cfg);
    ep.name = (char *)"erp";
    ep.url = url;
    ep.sign = SIGN_NONE;
    ep.timeout_ms = 5000;
    ep.retry_ms = retry_once;
    ep.nretry = 1;
    ep.concurrency = 4;
    ep.success = CONFIG_SUCCESS_2XX;
    ep.enabled = 1;
    cfg.endpoints = &ep;
    cfg.nendpoints = 1;
    cfg.allow_private = &loopback;
    cfg.nallow_private = 1;

    st = store_open(base, "sqlite:marks.db", dir, err, sizeof err); /* sync=full */
    CHECK(st != NULL);
    if (!st)
        return;
    hc = httpc_new(base, err, sizeof err);
    hl = health_new(st, err, sizeof err);
    d = hc && hl ? deliver_new(base, st, hc, hl, err, sizeof err) : NULL;
    CHECK(d != NULL);
    if (d) {
        httpc_set_allow(hc, allow_from_config, &cfg);
        health_set_config(hl, &cfg);
        deliver_set_config(d, &cfg);
        for (i = 0; i < 20; i++) /* the config's kick: nothing to claim yet */
            event_base_loop(base, EVLOOP_NONBLOCK);
        t0 = util_mono_ms();
        failed += marks_put(st, d, n++, &answered) < 0;
        while (util_mono_ms() - t0 < 700) { /* a write, and a mark, in every group */
            event_base_loop(base, EVLOOP_NONBLOCK);
            failed += marks_put(st, d, n++, &answered) < 0;
            usleep(200);
        }
        CHECK_INT_EQ(failed, 0);
        CHECK(answered > 10); /* the groups went on committing */
        CHECK(sink.n >= 1);
        CHECK(sink.first_at > 0 && sink.first_at - t0 < 400);
        if (!(sink.first_at > 0 && sink.first_at - t0 < 400))
            fprintf(stderr,
                    "first delivery %lld ms after the first event (%d events, %d answered)\n",
                    (long long)(sink.first_at ? sink.first_at - t0 : -1), n, answered);
    }
    deliver_free(d);
    health_free(hl);
    httpc_free(hc);
    store_free(st);
    evhttp_free(http);
    event_base_free(base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

#ifdef WAYBILL_CHECKS
static void stopped(void *arg) {
    *(int *)arg = 1;
}

/* A claim answered after deliver_shutdown (the store slow: its answers
 * 300 ms late, WAYBILL_STORE_REPLY_DELAY_MS, checked builds) gives its rows
 * back: the flush that drains the store hands the answer over, and the
 * rows are due again, not leased for the lease's 30 s. */
static void test_claim_answered_while_stopping(void) {
    char dir[] = "/tmp/waybill-test-deliver-XXXXXX", err[256], evt_id[UTIL_ID_MAX], cmd[128];
    struct event_base *base = event_base_new();
    struct config_endpoint ep;
    struct config_cidr loopback = {AF_INET, {127}, 8};
    struct config cfg;
    struct store_event sev;
    struct store_delivery_new dn[3];
    struct deliver_endpoint_stats stats;
    int64_t retry_once[] = {0}, now, due = -1;
    struct store *st;
    struct httpc *hc;
    struct health *hl;
    struct deliver *d;
    int i, done = 0;

    CHECK(mkdtemp(dir) != NULL);
    memset(&ep, 0, sizeof ep);
    memset(&cfg, 0, sizeof cfg);
    memset(&sev, 0, sizeof sev);
    memset(dn, 0, sizeof dn);
    ep.name = (char *)"erp";
    ep.url = (char *)"http://127.0.0.1:9/";
    ep.sign = SIGN_NONE;
    ep.timeout_ms = 5000;
    ep.retry_ms = retry_once;
    ep.nretry = 1;
    ep.concurrency = 4; /* a window of 8: one claim takes all three */
    ep.success = CONFIG_SUCCESS_2XX;
    ep.enabled = 1;
    cfg.endpoints = &ep;
    cfg.nendpoints = 1;
    cfg.allow_private = &loopback;
    cfg.nallow_private = 1;

    setenv("WAYBILL_STORE_REPLY_DELAY_MS", "300", 1);
    st = store_open(base, "sqlite:stop.db", dir, err, sizeof err);
    unsetenv("WAYBILL_STORE_REPLY_DELAY_MS");
    CHECK(st != NULL);
    if (!st)
        return;
    util_id_new("evt_", evt_id, sizeof evt_id);
    sev.id = evt_id;
    sev.source = "test";
    sev.source_id = "stop-1";
    sev.type = "t";
    sev.received_at = util_now_ms();
    sev.raw = "{}";
    sev.raw_len = 2;
    sev.headers_json = "{}";
    sev.data_json = "{}";
    now = util_now_ms();
    for (i = 0; i < 3; i++)
        dn[i] = (struct store_delivery_new){.endpoint = "erp",
                                            .event_type = "t",
                                            .payload = "{}",
                                            .payload_len = 2,
                                            .status = "pending",
                                            .next_at = now - 10 + i};
    {
        struct store_plan plan = {.status = "routed", .deliveries = dn, .ndeliveries = 3};
        CHECK_INT_EQ(wait_event_put(base, st, &sev, &plan), 0);
    }
    CHECK_INT_EQ(store_flush(st), 0);

    hc = httpc_new(base, err, sizeof err);
    hl = health_new(st, err, sizeof err);
    d = hc && hl ? deliver_new(base, st, hc, hl, err, sizeof err) : NULL;
    CHECK(d != NULL);
    if (d) {
        struct store_wait leased;
        int issued;

        httpc_set_allow(hc, allow_from_config, &cfg);
        health_set_config(hl, &cfg);
        deliver_set_config(d, &cfg);
        /* the claim is made (its rows leased at once: the config's kick
         * claims on the first turn), its answer waits (300 ms: these turns
         * take far less) */
        for (i = 0; i < 100; i++)
            event_base_loop(base, EVLOOP_NONBLOCK);
        deliver_endpoint_stats(d, "erp", &stats);
        CHECK_INT_EQ(stats.in_memory, 0); /* not answered yet */
        deliver_shutdown(d, 0, stopped, &done);
        /* The lease, read before the flush hands the claim's answer over
         * (a read of the loop's is read at its call; every read answers
         * after the claim's, so none can be looked at before it). */
        store_wait_init(&leased);
        issued = start_next_due(st, "erp", &leased);
        CHECK_INT_EQ(store_flush(st), 0); /* answered now, while stopping */
        if (store_wait_run(base, &leased, issued))
            due = leased.due_next;
        CHECK(due >= now + 20000);                              /* the lease: 30 s by default */
        CHECK_INT_EQ(wait_next_due(base, st, "erp"), now - 10); /* given back */
        deliver_endpoint_stats(d, "erp", &stats);
        CHECK_INT_EQ(stats.in_memory, 0);
        CHECK_INT_EQ(deliver_inflight(d), 0);
        for (i = 0; i < 100 && !done; i++)
            event_base_loop(base, EVLOOP_NONBLOCK);
        CHECK(done);
    }
    deliver_free(d);
    health_free(hl);
    httpc_free(hc);
    store_free(st);
    event_base_free(base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}
#endif

int main(void) {
    if (!getenv("WAYBILL_LOG"))
        log_threshold = LOG_WARN;
    test_classify();
    test_retry_after();
    test_schedule();
    test_engine();
    test_marks_under_steady_writes();
#ifdef WAYBILL_CHECKS
    test_claim_answered_while_stopping();
#endif
    return harness_report();
}
