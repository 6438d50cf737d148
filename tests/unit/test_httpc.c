/* test_httpc.c -- the shared HTTP client: the SSRF address ranges, header
 * lists, HTTP dates; then transfers against an in-process evhttp server on
 * 127.0.0.1: a GET with a response header and a capped body, a POST with
 * headers (an empty value, no Expect), the guard refusing loopback until
 * allow_private names it (a reused connection too), a probe, a cancel (no callback), and httpc_free
 * ending a hung transfer with status -1. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "harness.h"
#include "config.h"
#include "httpc.h"
#include "log.h"
#include "util.h"

/* What the app answers the guard: the config's allow_private. */
static int allow_from_config(void *arg, int family, const unsigned char *ip) {
    return config_private_allowed(arg, family, ip);
}

static int addr_private(const char *text) {
    unsigned char buf[16];
    if (inet_pton(AF_INET, text, buf) == 1)
        return httpc_address_private(AF_INET, buf);
    if (inet_pton(AF_INET6, text, buf) == 1)
        return httpc_address_private(AF_INET6, buf);
    return -1;
}

static void test_address_private(void) {
    static const char *const priv[] = {
        "127.0.0.1", "127.255.255.255", "0.0.0.0", "0.1.2.3", "10.0.0.1", "10.255.255.255",
        "172.16.0.1", "172.31.255.255", "192.168.0.1", "192.168.255.255", "169.254.0.1",
        "169.254.169.254", "100.64.0.1", "100.127.255.255", "::1", "::", "fc00::1", "fd12:3456::1",
        "fe80::1", "febf:ffff::1", "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254",
        "::ffff:192.168.1.1", "::127.0.0.1", "64:ff9b::10.0.0.1", "64:ff9b::a9fe:a9fe",
        /* the rest of the special-purpose registries */
        "192.0.0.8", "192.0.2.1", "192.88.99.1", "198.18.0.1", "198.19.255.255", "198.51.100.7",
        "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "ff02::1",
        "ff05::2", "100::1", "2001:2::1", "2001:10::1", "2001:20::1", "2001:db8::ffff:7f00:1",
        "3fff::1", "64:ff9b:1::1",
        /* embedded private IPv4: 6to4, Teredo */
        "2002:7f00:1::", "2002:a00:1::1", "2002:c0a8:101::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:0:4136:e378:8000:63bf:f5ff:fffe"};
    static const char *const pub[] = {"8.8.8.8",
                                      "1.1.1.1",
                                      "172.15.255.255",
                                      "172.32.0.1",
                                      "192.167.255.255",
                                      "192.169.0.1",
                                      "169.253.255.255",
                                      "169.255.0.1",
                                      "100.63.255.255",
                                      "100.128.0.1",
                                      "11.0.0.1",
                                      "126.255.255.255",
                                      "128.0.0.1",
                                      "2001:4860:4860::8888",
                                      "2606:4700::1111",
                                      "fec0::1",
                                      "fb00::1",
                                      "::ffff:8.8.8.8",
                                      "64:ff9b::8.8.8.8",
                                      "2002:808:808::1",
                                      "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
                                      "2001:4:112::1",
                                      "198.20.0.1",
                                      "223.255.255.255",
                                      "192.0.3.1"};
    size_t i;
    unsigned char any[16] = {0};

    for (i = 0; i < sizeof priv / sizeof priv[0]; i++) {
        if (addr_private(priv[i]) != 1)
            fprintf(stderr, "expected private: %s\n", priv[i]);
        CHECK_INT_EQ(addr_private(priv[i]), 1);
    }
    for (i = 0; i < sizeof pub / sizeof pub[0]; i++) {
        if (addr_private(pub[i]) != 0)
            fprintf(stderr, "expected public: %s\n", pub[i]);
        CHECK_INT_EQ(addr_private(pub[i]), 0);
    }
    CHECK_INT_EQ(httpc_address_private(AF_UNIX, any), 1);
}

static void test_headers(void) {
    struct httpc_headers h = {0};

    CHECK_INT_EQ(httpc_headers_set(&h, "Content-Type", "text/plain"), 0);
    CHECK_INT_EQ(httpc_headers_set(&h, "X-Empty", ""), 0);
    CHECK_INT_EQ(httpc_headers_set(&h, "content-type", "application/json"), 0); /* replaces */
    CHECK_INT_EQ(h.n, 2);
    CHECK_STR_EQ(h.v[0].name, "Content-Type");
    CHECK_STR_EQ(h.v[0].value, "application/json");
    CHECK_INT_EQ(httpc_headers_set(&h, "Bad Name", "x"), 1);
    CHECK_INT_EQ(httpc_headers_set(&h, "Bad:Name", "x"), 1);
    CHECK_INT_EQ(httpc_headers_set(&h, "", "x"), 1);
    CHECK_INT_EQ(httpc_headers_set(&h, "X-Split", "a\r\nInjected: 1"), 1);
    CHECK_INT_EQ(httpc_headers_set(&h, "X-Null", NULL), 1);
    CHECK_INT_EQ(h.n, 2);
    CHECK(!h.failed);
    httpc_headers_clear(&h);
    CHECK(h.v == NULL && h.n == 0 && h.cap == 0);
}

static void test_dates(void) {
    CHECK_INT_EQ(httpc_date_parse("Wed, 21 Oct 2015 07:28:00 GMT"), 1445412480);
    CHECK_INT_EQ(httpc_date_parse("Wednesday, 21-Oct-15 07:28:00 GMT"), 1445412480);
    CHECK_INT_EQ(httpc_date_parse("Wed Oct 21 07:28:00 2015"), 1445412480);
    CHECK_INT_EQ(httpc_date_parse("not a date"), -1);
    CHECK_INT_EQ(httpc_date_parse(NULL), -1);
}

/* ---- transfers against a server ---- */

struct srv {
    int get_n, post_n, hang_n;
    char post_body[64], post_empty[16], post_ct[64];
    int post_expect, post_empty_seen;
};

static void reply(struct evhttp_request *req, int code, const char *body) {
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "%s", body);
    evhttp_send_reply(req, code, "X", b);
    evbuffer_free(b);
}

static void srv_cb(struct evhttp_request *req, void *arg) {
    struct srv *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);

    if (!strcmp(uri, "/get")) {
        s->get_n++;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "7");
        reply(req, 203, "0123456789abcdef");
    } else if (!strcmp(uri, "/post")) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        const char *v = evhttp_find_header(h, "X-Empty"),
                   *ct = evhttp_find_header(h, "Content-Type");
        s->post_n++;
        s->post_expect |= evhttp_find_header(h, "Expect") != NULL;
        s->post_empty_seen = v != NULL;
        snprintf(s->post_empty, sizeof s->post_empty, "%s", v ? v : "(none)");
        snprintf(s->post_ct, sizeof s->post_ct, "%s", ct ? ct : "(none)");
        if (len >= sizeof s->post_body)
            len = sizeof s->post_body - 1;
        evbuffer_copyout(in, s->post_body, len);
        s->post_body[len] = '\0';
        reply(req, 201, "created");
    } else if (!strcmp(uri, "/hang")) {
        s->hang_n++; /* never answered */
    } else {
        reply(req, 404, "?");
    }
}

/* What a done callback saw. */
struct seen {
    int calls, status, too_large;
    char error[160], body[64], retry_after[16];
    struct event_base *base;
    int *pending; /* transfers the test still waits for */
};

static void seen_cb(void *arg, const struct httpc_result *r) {
    struct seen *w = arg;
    const char *ra = httpc_result_header(r, "Retry-After");

    w->calls++;
    w->status = r->status;
    w->too_large = r->too_large;
    snprintf(w->error, sizeof w->error, "%s", r->error ? r->error : "(none)");
    snprintf(w->body, sizeof w->body, "%.*s", (int)r->body_len, r->body);
    snprintf(w->retry_after, sizeof w->retry_after, "%s", ra ? ra : "(none)");
    if (w->pending && --*w->pending == 0)
        event_base_loopbreak(w->base);
}

struct probe_seen {
    int calls, status;
    char reason[160];
    int *pending;
    struct event_base *base;
};

static void probe_cb(void *arg, int status_code, const char *reason) {
    struct probe_seen *p = arg;
    p->calls++;
    p->status = status_code;
    snprintf(p->reason, sizeof p->reason, "%s", reason);
    if (p->pending && --*p->pending == 0)
        event_base_loopbreak(p->base);
}

static void give_up(evutil_socket_t fd, short what, void *arg) {
    UNUSED(fd);
    UNUSED(what);
    event_base_loopbreak(arg);
}

/* Runs the loop until *pending is 0 or 10 s passed. */
static void run_until(struct event_base *base, int *pending) {
    struct event *t = evtimer_new(base, give_up, base);
    struct timeval tv = {10, 0};
    evtimer_add(t, &tv);
    if (*pending)
        event_base_dispatch(base);
    CHECK_INT_EQ(*pending, 0);
    event_free(t);
}

static void test_transfers(void) {
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    struct evhttp_bound_socket *bound;
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    struct srv s;
    struct httpc *hc;
    struct httpc_headers hdrs = {0};
    struct seen get = {0}, cap = {0}, refused = {0}, allowed = {0}, cancelled = {0};
    struct seen hung = {0};
    struct probe_seen probe = {0}, probe_hung = {0};
    struct config_cidr loopback = {AF_INET, {127}, 8};
    struct config cfg;
    char url[5][96], err[256];
    const char *lines[] = {"Content-Type: application/json", NULL};
    const char *payload = "{\"n\":1}";
    struct httpc_xfer *x;
    int pending, port;

    memset(&s, 0, sizeof s);
    memset(&cfg, 0, sizeof cfg);
    evhttp_set_gencb(http, srv_cb, &s);
    bound = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    CHECK(bound != NULL);
    if (!bound)
        return;
    getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &slen);
    port = ntohs(sin.sin_port);
    snprintf(url[0], sizeof url[0], "http://127.0.0.1:%d/get", port);
    snprintf(url[1], sizeof url[1], "http://127.0.0.1:%d/post", port);
    snprintf(url[2], sizeof url[2], "http://127.0.0.1:%d/hang", port);
    hc = httpc_new(base, err, sizeof err);
    CHECK(hc != NULL);
    if (!hc)
        return;

    /* unguarded: a GET with a header read back, and one over its cap */
    {
        struct httpc_request rq = {.url = url[0], .timeout_ms = 5000, .response_max = 64};
        struct httpc_request rcap = {
            .url = url[0], .timeout_ms = 5000, .response_max = 4, .response_limit = 1};
        pending = 2;
        get.base = cap.base = base;
        get.pending = cap.pending = &pending;
        CHECK(httpc_start(hc, &rq, seen_cb, &get, err, sizeof err) != NULL);
        CHECK(httpc_start(hc, &rcap, seen_cb, &cap, err, sizeof err) != NULL);
        CHECK_INT_EQ(get.calls + cap.calls, 0); /* never from inside httpc_start */
        CHECK_INT_EQ(httpc_inflight(hc), 2);
        run_until(base, &pending);
    }
    CHECK_INT_EQ(get.calls, 1);
    CHECK_INT_EQ(get.status, 203);
    CHECK_STR_EQ(get.error, "(none)");
    CHECK_STR_EQ(get.body, "0123456789abcdef");
    CHECK_STR_EQ(get.retry_after, "7");
    CHECK_INT_EQ(cap.calls, 1);
    CHECK_INT_EQ(cap.status, 0);
    CHECK(cap.too_large);
    CHECK_STR_EQ(cap.retry_after, "(none)"); /* no answer: no headers */

    /* guarded, no allow_private: loopback is refused, though the GETs left
     * an open connection to it (checked on reuse too) */
    {
        struct httpc_request rq = {.url = url[1],
                                   .body = payload,
                                   .body_len = strlen(payload),
                                   .timeout_ms = 5000,
                                   .guarded = 1};
        pending = 1;
        refused.base = base;
        refused.pending = &pending;
        CHECK(httpc_start(hc, &rq, seen_cb, &refused, err, sizeof err) != NULL);
        run_until(base, &pending);
    }
    CHECK_INT_EQ(refused.status, 0);
    CHECK_STR_EQ(refused.error, "address 127.0.0.1 is private (allow_private to permit)");
    CHECK_INT_EQ(s.post_n, 0);

    /* guarded with allow_private 127/8: a POST with headers, the body kept
     * to response_max */
    cfg.allow_private = &loopback;
    cfg.nallow_private = 1;
    httpc_set_allow(hc, allow_from_config, &cfg);
    CHECK_INT_EQ(httpc_headers_set(&hdrs, "Content-Type", "application/json"), 0);
    CHECK_INT_EQ(httpc_headers_set(&hdrs, "X-Empty", ""), 0);
    {
        struct httpc_request rq = {.url = url[1],
                                   .body = payload,
                                   .body_len = strlen(payload),
                                   .headers = &hdrs,
                                   .timeout_ms = 5000,
                                   .response_max = 3,
                                   .guarded = 1};
        pending = 1;
        allowed.base = base;
        allowed.pending = &pending;
        CHECK(httpc_start(hc, &rq, seen_cb, &allowed, err, sizeof err) != NULL);
        httpc_headers_clear(&hdrs); /* copied */
        run_until(base, &pending);
    }
    CHECK_INT_EQ(allowed.status, 201);
    CHECK_STR_EQ(allowed.body, "cre");
    CHECK_INT_EQ(s.post_n, 1);
    CHECK_STR_EQ(s.post_body, payload);
    CHECK_STR_EQ(s.post_ct, "application/json");
    CHECK(s.post_empty_seen);
    CHECK_STR_EQ(s.post_empty, "");
    CHECK(!s.post_expect);

    /* a probe (body copied), and a cancelled transfer that never calls back */
    {
        char body[16];
        struct httpc_request rq = {.url = url[2], .timeout_ms = 5000};
        snprintf(body, sizeof body, "%s", payload);
        pending = 1;
        probe.base = base;
        probe.pending = &pending;
        CHECK_INT_EQ(httpc_probe(hc, url[1], body, strlen(body), lines, 5000, probe_cb, &probe), 0);
        memset(body, 'x', sizeof body - 1); /* the probe has its own copy */
        x = httpc_start(hc, &rq, seen_cb, &cancelled, err, sizeof err);
        CHECK(x != NULL);
        httpc_cancel(hc, x);
        run_until(base, &pending);
    }
    CHECK_INT_EQ(probe.calls, 1);
    CHECK_INT_EQ(probe.status, 201);
    CHECK_STR_EQ(probe.reason, "");
    CHECK_STR_EQ(s.post_body, payload);
    CHECK_INT_EQ(cancelled.calls, 0);

    /* open at httpc_free: a transfer and a probe end with status -1 */
    {
        struct httpc_request rq = {.url = url[2], .timeout_ms = 30000};
        CHECK(httpc_start(hc, &rq, seen_cb, &hung, err, sizeof err) != NULL);
        CHECK_INT_EQ(httpc_probe(hc, url[2], "{}", 2, NULL, 30000, probe_cb, &probe_hung), 0);
        int before = s.hang_n; /* the cancelled one may or may not have reached it */
        while (s.hang_n < before + 2 && event_base_loop(base, EVLOOP_ONCE) == 0)
            ;
        CHECK_INT_EQ(s.hang_n, before + 2);
    }
    CHECK_INT_EQ(httpc_inflight(hc), 2);
    httpc_free(hc);
    CHECK_INT_EQ(hung.calls, 1);
    CHECK_INT_EQ(hung.status, -1);
    CHECK_STR_EQ(hung.error, "shutting down");
    CHECK_INT_EQ(probe_hung.calls, 1);
    CHECK_INT_EQ(probe_hung.status, -1);
    CHECK_STR_EQ(probe_hung.reason, "shutting down");

    evhttp_free(http);
    event_base_free(base);
}

int main(void) {
    if (!getenv("WAYBILL_LOG"))
        log_threshold = LOG_WARN;
    test_address_private();
    test_headers();
    test_dates();
    test_transfers();
    return harness_report();
}
