/* soak_sink.c -- the soak's receiver (tests/torture/sc_soak.py): a bare
 * libevent evhttp server that keeps up with thousands of deliveries a second,
 * which the Python CountingSink cannot. It answers every FAIL_EVERY-th POST
 * 500 (0: never) and every other one 200, and for each 200 writes the value
 * of the first string member KEY (default "id": waybill's event id) in the
 * body, one a line, to FILE (buffered; the file is complete once the process
 * exits on SIGTERM/SIGINT).
 * `GET /_count` answers "ANSWERED REFUSED".
 * Usage: soak_sink PORT FILE [FAIL_EVERY [KEY]] (binds 127.0.0.1)
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

static unsigned long long sink_total, sink_refused;
static unsigned long sink_fail_every;
static FILE *sink_out;
static char sink_key[64] = "\"id\":\"";

/* Writes the first KEY value of req's body to sink_out ("-" if none). */
static void sink_note(struct evhttp_request *req) {
    size_t klen = strlen(sink_key);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const char *body = n ? (const char *)evbuffer_pullup(in, -1) : NULL;
    const char *p = body ? memmem(body, n, sink_key, klen) : NULL, *q = NULL;

    if (p) {
        p += klen;
        q = memchr(p, '"', n - (size_t)(p - body));
    }
    if (q && q - p < 128)
        fprintf(sink_out, "%.*s\n", (int)(q - p), p);
    else
        fputs("-\n", sink_out);
}

static void sink_reply(struct evhttp_request *req, void *arg) {
    struct evbuffer *out = arg;
    const char *uri = evhttp_request_get_uri(req);
    int code = 200;

    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && uri && strcmp(uri, "/_count") == 0) {
        evbuffer_add_printf(out, "%llu %llu\n", sink_total, sink_refused);
        evhttp_send_reply(req, 200, "OK", out);
        return;
    }
    sink_total++;
    if (sink_fail_every && sink_total % sink_fail_every == 0) {
        sink_refused++;
        code = 500;
    } else {
        sink_note(req);
    }
    evbuffer_add(out, code == 200 ? "ok" : "no", 2);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Internal Server Error", out);
}

static void sink_on_signal(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

int main(int argc, char **argv) {
    struct event_base *base = NULL;
    struct evhttp *http = NULL;
    struct evbuffer *out = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    int port = argc > 2 ? atoi(argv[1]) : 0, rc = 1;

    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: %s PORT FILE [FAIL_EVERY [KEY]]\n", argv[0]);
        return 2;
    }
    sink_fail_every = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;
    if (argc > 4)
        snprintf(sink_key, sizeof sink_key, "\"%s\":\"", argv[4]);
    signal(SIGPIPE, SIG_IGN);
    if (!(sink_out = fopen(argv[2], "w")) || setvbuf(sink_out, NULL, _IOFBF, 1 << 20) != 0)
        goto fail;
    if (!(base = event_base_new()) || !(http = evhttp_new(base)) || !(out = evbuffer_new()))
        goto fail;
    evhttp_set_gencb(http, sink_reply, out);
    evhttp_set_max_body_size(http, 1 << 20);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
        fprintf(stderr, "soak_sink: cannot bind 127.0.0.1:%d\n", port);
        goto fail;
    }
    sigint = evsignal_new(base, SIGINT, sink_on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, sink_on_signal, base);
    if (!sigint || !sigterm || evsignal_add(sigint, NULL) || evsignal_add(sigterm, NULL))
        goto fail;
    rc = event_base_dispatch(base) < 0;
fail:
    if (sink_out && fclose(sink_out) != 0)
        rc = 1;
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (out)
        evbuffer_free(out);
    if (http)
        evhttp_free(http);
    if (base)
        event_base_free(base);
    return rc;
}
