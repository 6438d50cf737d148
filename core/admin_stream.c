/* admin_stream.c -- GET /api/stream: the live feed (stream.h) as
 * Server-Sent Events, filtered per connection (source, type glob,
 * endpoint, status, kind). Each message is "event: KIND\nid: SEQ\ndata:
 * JSON\n\n"; a comment line every 15 s keeps proxies from closing an idle
 * stream. A client that does not read is not buffered without end: past
 * 1 MiB waiting, its messages are dropped and it is told how many
 * ("event: dropped").
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <sys/queue.h>

#include "admin_int.h"
#include "http.h"
#include "log.h"
#include "stream.h"
#include "util.h"

#define SSE_PING_MS 15000
#define SSE_MAX_BUFFERED ((size_t)1 << 20)
#define SSE_FILTER_MAX 200

struct sse {
    struct admin_streams *owner;
    struct sse *prev, *next;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    char source[SSE_FILTER_MAX], type[SSE_FILTER_MAX], endpoint[SSE_FILTER_MAX];
    char status[32], kind[16];
    uint64_t dropped;
};

struct admin_streams {
    struct stream *stream;
    struct event *ping;
    struct sse *head;
    int stopping; /* admin_streams_stop ran: new streams get 503 */
};

static void sse_free(struct sse *c) {
    struct admin_streams *s = c->owner;

    stream_unwatch(s->stream, c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* The client went away: libevent has detached the request (it is ours to
 * end, which frees it) and frees the connection after this call. */
static void on_sse_closed(struct evhttp_connection *conn, void *arg) {
    struct sse *c = arg;
    (void)conn;
    evhttp_send_reply_end(c->req);
    sse_free(c);
}

/* Bytes still waiting to be written to c's client. */
static size_t sse_backlog(const struct sse *c) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

static void sse_send(struct sse *c, const char *text, size_t len) {
    struct evbuffer *out = evbuffer_new();

    if (!out)
        return;
    if (evbuffer_add(out, text, len) == 0)
        evhttp_send_reply_chunk(c->req, out);
    evbuffer_free(out);
}

static int sse_match(const char *want, const char *have) {
    return !want[0] || (have && strcmp(want, have) == 0);
}

/* Whether msg passes c's filters: each filter given must match a field the
 * message has (an attempt has no source, an event no endpoint). */
static int sse_wanted(const struct sse *c, const char *kind, const json_t *msg) {
    const char *type = json_string_value(json_object_get(msg, "type"));
    const char *status = json_string_value(
        json_object_get(msg, strcmp(kind, "attempt") == 0 ? "outcome" : "status"));

    return sse_match(c->kind, kind) &&
           sse_match(c->source, json_string_value(json_object_get(msg, "source"))) &&
           sse_match(c->endpoint, json_string_value(json_object_get(msg, "endpoint"))) &&
           sse_match(c->status, status) &&
           (!c->type[0] || (type && util_glob_match(c->type, type)));
}

static void on_message(void *arg, const char *kind, uint64_t seq, const json_t *msg,
                       const char *text) {
    struct sse *c = arg;
    struct util_buf b = {NULL, 0, 0};

    if (!sse_wanted(c, kind, msg))
        return;
    if (sse_backlog(c) > SSE_MAX_BUFFERED) {
        c->dropped++;
        return;
    }
    if (c->dropped && util_buf_printf(&b, "event: dropped\ndata: {\"count\":%llu}\n\n",
                                      (unsigned long long)c->dropped) == 0)
        c->dropped = 0;
    if (util_buf_printf(&b, "event: %s\nid: %llu\ndata: %s\n\n", kind, (unsigned long long)seq,
                        text) == 0)
        sse_send(c, b.p, b.len);
    util_buf_free(&b);
}

static void on_ping(evutil_socket_t fd, short what, void *arg) {
    struct admin_streams *s = arg;
    static const char ping[] = ": ping\n\n";
    (void)fd;
    (void)what;
    for (struct sse *c = s->head; c; c = c->next)
        if (sse_backlog(c) <= SSE_MAX_BUFFERED)
            sse_send(c, ping, sizeof ping - 1);
}

struct admin_streams *admin_streams_new(struct event_base *base, struct stream *stream) {
    struct admin_streams *s = calloc(1, sizeof *s);
    struct timeval tv = {SSE_PING_MS / 1000, (SSE_PING_MS % 1000) * 1000};

    if (!s)
        return NULL;
    s->stream = stream;
    if (!(s->ping = event_new(base, -1, EV_PERSIST, on_ping, s)) || event_add(s->ping, &tv) < 0) {
        admin_streams_free(s);
        return NULL;
    }
    return s;
}

void admin_streams_stop(struct admin_streams *s) {
    if (!s)
        return;
    s->stopping = 1;
    while (s->head) {
        struct sse *c = s->head;
        evhttp_connection_set_closecb(c->conn, NULL, NULL);
        evhttp_send_reply_end(c->req); /* the last chunk: a clean end */
        sse_free(c);
    }
}

void admin_streams_free(struct admin_streams *s) {
    if (!s)
        return;
    admin_streams_stop(s);
    if (s->ping)
        event_free(s->ping);
    free(s);
}

/* Copies query parameter name of q into out (at most outlen - 1 bytes);
 * returns -1 when it is longer. */
static int sse_param(struct evkeyvalq *q, const char *name, char *out, size_t outlen) {
    const char *v = evhttp_find_header(q, name);
    if (!v)
        return 0;
    if (strlen(v) >= outlen)
        return -1;
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

static const char *const sse_statuses[] = {"received",   "routed",  "unrouted",  "partial",
                                           "rule_error", "pending", "delivered", "failed",
                                           "held",       NULL};

/* c's filters from req's query; NULL, or the reason it is refused (400). */
static const char *sse_filters(struct sse *c, struct evhttp_request *req) {
    static const char *const known[] = {"source", "type", "endpoint", "status", "kind", NULL};
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    struct evkeyvalq q;
    const char *why = NULL;
    int ok = 0;

    TAILQ_INIT(&q);
    if (query && evhttp_parse_query_str(query, &q) < 0)
        return "malformed query string";
    for (struct evkeyval *kv = q.tqh_first; kv && !why; kv = kv->next.tqe_next) {
        int i = 0;
        while (known[i] && strcmp(known[i], kv->key) != 0)
            i++;
        if (!known[i])
            why = "unknown parameter (source, type, endpoint, status, kind)";
    }
    if (!why && (sse_param(&q, "source", c->source, sizeof c->source) < 0 ||
                 sse_param(&q, "type", c->type, sizeof c->type) < 0 ||
                 sse_param(&q, "endpoint", c->endpoint, sizeof c->endpoint) < 0 ||
                 sse_param(&q, "status", c->status, sizeof c->status) < 0 ||
                 sse_param(&q, "kind", c->kind, sizeof c->kind) < 0))
        why = "a parameter is too long";
    for (int i = 0; !why && c->status[0] && sse_statuses[i]; i++)
        ok |= strcmp(sse_statuses[i], c->status) == 0;
    if (!why && c->status[0] && !ok)
        why = "status must be an event's (received, routed, unrouted, partial, rule_error) "
              "or an attempt's outcome (pending, delivered, failed, held)";
    if (!why && c->kind[0] && strcmp(c->kind, "event") != 0 && strcmp(c->kind, "attempt") != 0)
        why = "kind must be event or attempt";
    evhttp_clear_headers(&q);
    return why;
}

int admin_stream_dispatch(struct admin_streams *s, struct evhttp_request *req, const char *path,
                          int method) {
    static const char hello[] = "retry: 2000\n: waybill live feed\n\n";
    struct sse *c;
    const char *why;

    if (strcmp(path, "/api/stream") != 0 || method != EVHTTP_REQ_GET)
        return 0;
    if (s && s->stopping) {
        http_reply_error(req, 503, "Service Unavailable", "shutting down");
        return 1;
    }
    if (!s || !(c = calloc(1, sizeof *c))) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        return 1;
    }
    if ((why = sse_filters(c, req))) {
        free(c);
        http_reply_error(req, 400, "Bad Request", why);
        return 1;
    }
    if (stream_watch(s->stream, on_message, c) < 0) {
        free(c);
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        return 1;
    }
    c->owner = s;
    c->req = req;
    c->conn = evhttp_request_get_connection(req);
    c->next = s->head;
    if (s->head)
        s->head->prev = c;
    s->head = c;
    /* a stream is idle for as long as nothing happens: no idle timeout */
    evhttp_connection_set_timeout(c->conn, -1);
    evhttp_connection_set_closecb(c->conn, on_sse_closed, c);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/event-stream");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply_start(req, 200, "OK");
    sse_send(c, hello, sizeof hello - 1);
    return 1;
}
