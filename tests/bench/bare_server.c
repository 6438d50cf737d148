/* bare_server.c -- the bench's baseline: a bare libevent evhttp server that
 * answers 200 "ok" to any request, reading nothing but what evhttp reads.
 * It counts the requests it answers; `GET /_count` returns that number (the
 * bench uses it as a delivery sink).
 * With a second argument "record" it also notes, for each request it
 * counts, the time it had read the whole request (CLOCK_REALTIME, us) and the
 * first "order_id" value in its body; `GET /_dump` returns those lines
 * ("ORDER_ID USEC\n") and forgets them: the bench's end-to-end latency sink,
 * which must not be the bottleneck (a Python sink adds its own GIL delays).
 * Usage: bare_server PORT [record]   (binds 127.0.0.1; SIGINT/SIGTERM stop it)
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

static unsigned long long bare_count;
static struct evbuffer *bare_record; /* NULL unless recording */

/* Appends "ORDER_ID USEC\n" for req to bare_record (order id "-" if none). */
static void bare_note(struct evhttp_request *req) {
    static const char key[] = "\"order_id\":\"";
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in), idlen = 1;
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : NULL, *id = "-";
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    for (size_t i = 0; body && i + sizeof key - 1 <= n; i++) {
        if (memcmp(body + i, key, sizeof key - 1) == 0) {
            const char *p = body + i + sizeof key - 1;
            const char *q = memchr(p, '"', n - (size_t)(p - body));
            if (q && q > p && q - p < 128) {
                id = p;
                idlen = (size_t)(q - p);
            }
            break;
        }
    }
    evbuffer_add_printf(bare_record, "%.*s %lld\n", (int)idlen, id,
                        (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}

static void bare_reply(struct evhttp_request *req, void *arg) {
    struct evbuffer *out = arg;
    const char *uri = evhttp_request_get_uri(req);

    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && uri && strcmp(uri, "/_count") == 0) {
        evbuffer_add_printf(out, "%llu\n", bare_count);
        evhttp_send_reply(req, 200, "OK", out);
        return;
    }
    if (bare_record && evhttp_request_get_command(req) == EVHTTP_REQ_GET && uri &&
        strcmp(uri, "/_dump") == 0) {
        evbuffer_add_buffer(out, bare_record);
        evhttp_send_reply(req, 200, "OK", out);
        return;
    }
    bare_count++;
    if (bare_record)
        bare_note(req);
    evbuffer_add(out, "ok", 2);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, 200, "OK", out); /* drains out; out stays ours */
}

static void bare_on_signal(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

int main(int argc, char **argv) {
    struct event_base *base = NULL;
    struct evhttp *http = NULL;
    struct evbuffer *out = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    int port = argc > 1 ? atoi(argv[1]) : 0, rc = 1;

    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: %s PORT [record]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!(base = event_base_new()) || !(http = evhttp_new(base)) || !(out = evbuffer_new()))
        goto fail;
    if (argc > 2 && strcmp(argv[2], "record") == 0 && !(bare_record = evbuffer_new()))
        goto fail;
    evhttp_set_gencb(http, bare_reply, out);
    evhttp_set_max_body_size(http, 1 << 20);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
        fprintf(stderr, "bare_server: cannot bind 127.0.0.1:%d\n", port);
        goto fail;
    }
    sigint = evsignal_new(base, SIGINT, bare_on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, bare_on_signal, base);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) || evsignal_add(sigterm, NULL))
        goto fail;
    fprintf(stderr, "bare_server: listening on 127.0.0.1:%d\n", port);
    rc = event_base_dispatch(base) < 0;
fail:
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (out)
        evbuffer_free(out);
    if (bare_record)
        evbuffer_free(bare_record);
    if (http)
        evhttp_free(http);
    if (base)
        event_base_free(base);
    return rc;
}
