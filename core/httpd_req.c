/* httpd_req.c -- the httpd module's requests: http-parser's callbacks
 * filling a pooled request (target, headers, body, with the limits checked
 * as the bytes come), the accessors the handler reads it with, and the
 * answers, formatted into the request's reused buffer.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <jansson.h>

#include "httpd_int.h"
#include "jsonx.h"

/* Buffers larger than this are not kept in the pool. */
#define POOL_BUF_MAX (64 * 1024)
#define POOL_MAX 256

int64_t httpd_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the pool ---- */

struct httpd_req *httpd_req_get(struct httpd_conn *c) {
    struct httpd *s = c->s;
    struct httpd_req *r = s->pool;

    if (r) {
        s->pool = r->next;
        s->npool--;
    } else if (!(r = calloc(1, sizeof *r))) {
        return NULL;
    }
    r->c = c;
    r->next = NULL;
    r->state = REQ_PARSING;
    r->method = -1;
    r->http10 = 0;
    r->keep_alive = 0;
    r->want_continue = 0;
    util_buf_reset(&r->head);
    util_buf_reset(&r->hdrs);
    util_buf_reset(&r->body);
    util_buf_reset(&r->reply);
    r->nhdrs = 0;
    r->target = 0;
    r->path = SIZE_MAX;
    r->reply_hdr_end = 0;
    return r;
}

void httpd_req_free(struct httpd_req *r) {
    if (!r)
        return;
    util_buf_free(&r->head);
    util_buf_free(&r->hdrs);
    util_buf_free(&r->body);
    util_buf_free(&r->reply);
    free(r);
}

void httpd_req_put(struct httpd *s, struct httpd_req *r) {
    if (s->npool >= POOL_MAX || r->head.cap > POOL_BUF_MAX || r->body.cap > POOL_BUF_MAX ||
        r->hdrs.cap > POOL_BUF_MAX) {
        httpd_req_free(r);
        return;
    }
    r->c = NULL;
    r->next = s->pool;
    s->pool = r;
    s->npool++;
}

/* ---- the parser's callbacks (p->data is the connection) ---- */

static int conn_reject(struct httpd_conn *c, int code, const char *msg) {
    c->reject = code;
    c->reject_msg = msg;
    return -1;
}

/* Ends the piece being read (the target, a name, a value: values lose
 * trailing blanks), NUL-terminated in head. Returns 0 or -1. */
static int item_end(struct httpd_conn *c) {
    struct httpd_req *r = c->cur;
    struct httpd_hdr *h = r->nhdrs ? (struct httpd_hdr *)r->hdrs.p + r->nhdrs - 1 : NULL;

    switch (c->item) {
    case ITEM_NONE:
        return 0;
    case ITEM_TARGET:
        break;
    case ITEM_NAME:
        h->namelen = (uint32_t)(r->head.len - c->item_start);
        break;
    case ITEM_VALUE:
        while (r->head.len > c->item_start &&
               (r->head.p[r->head.len - 1] == ' ' || r->head.p[r->head.len - 1] == '\t'))
            r->head.len--;
        h->valuelen = (uint32_t)(r->head.len - c->item_start);
        break;
    }
    c->item = ITEM_NONE;
    return util_buf_append(&r->head, "", 1);
}

/* Appends a piece of the head, counting it against max_header (431). */
static int head_add(struct httpd_conn *c, enum httpd_item item, const char *at, size_t len) {
    struct httpd_req *r = c->cur;

    if (c->item != item) {
        if (item_end(c) < 0)
            return conn_reject(c, 503, "out of memory");
        c->item = item;
        c->item_start = r->head.len;
        if (item == ITEM_NAME) {
            struct httpd_hdr h = {.name = (uint32_t)r->head.len};
            if (util_buf_append(&r->hdrs, &h, sizeof h) < 0)
                return conn_reject(c, 503, "out of memory");
            r->nhdrs++;
        } else if (item == ITEM_VALUE) {
            ((struct httpd_hdr *)r->hdrs.p)[r->nhdrs - 1].value = (uint32_t)r->head.len;
        }
    }
    /* Each piece costs at least its line's ": " and CRLF as sent. */
    if (r->head.len + len + 4 * r->nhdrs > c->s->lim.max_header)
        return conn_reject(c, 431, "request headers too large");
    if (util_buf_append(&r->head, at, len) < 0)
        return conn_reject(c, 503, "out of memory");
    return 0;
}

static int on_message_begin(http_parser *p) {
    struct httpd_conn *c = p->data;

    if (!(c->cur = httpd_req_get(c)))
        return conn_reject(c, 503, "out of memory");
    c->item = ITEM_NONE;
    c->trailer_bytes = 0;
    if (c->phase == PH_IDLE) /* a new connection's deadline runs from its accept */
        c->phase_ms = httpd_now_ms();
    c->phase = PH_HEADERS;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    return head_add(p->data, ITEM_TARGET, at, len);
}

/* A chunked body's trailer fields are not kept (a signature header after
 * the body would not be covered by what was checked before it); they count
 * against max_header. */
static int trailer_add(struct httpd_conn *c, size_t len) {
    c->trailer_bytes += len + 4;
    return c->trailer_bytes > c->s->lim.max_header
               ? conn_reject(c, 431, "request trailers too large")
               : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
    struct httpd_conn *c = p->data;
    if (c->phase == PH_BODY)
        return trailer_add(c, len);
    /* http-parser takes "Content-Length :" as Content-Length; a proxy in
     * front may not (RFC 9112 section 5.1: 400) */
    if (memchr(at, ' ', len) || memchr(at, '\t', len))
        return conn_reject(c, 400, "whitespace in a header name");
    return head_add(c, ITEM_NAME, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    struct httpd_conn *c = p->data;
    if (memchr(at, '\0', len))
        return conn_reject(c, 400, "NUL in a header value");
    return c->phase == PH_BODY ? trailer_add(c, len) : head_add(c, ITEM_VALUE, at, len);
}

/* The path of the target, NUL-ended at the end of head. */
static int req_path(struct httpd_req *r) {
    struct http_parser_url u;
    const char *t = r->head.p + r->target;
    size_t tlen = strlen(t);

    http_parser_url_init(&u);
    if (http_parser_parse_url(t, tlen, r->method == HTTP_CONNECT, &u) != 0)
        return -1;
    if (!(u.field_set & (1 << UF_PATH)))
        return 0;
    /* Room first: appending from head itself would read a moved buffer. */
    r->path = r->head.len;
    if (util_buf_printf(&r->head, "%*s", (int)u.field_data[UF_PATH].len, "") < 0 ||
        util_buf_append(&r->head, "", 1) < 0)
        return -2;
    memcpy(r->head.p + r->path, r->head.p + r->target + u.field_data[UF_PATH].off,
           u.field_data[UF_PATH].len);
    return 0;
}

static int on_headers_complete(http_parser *p) {
    struct httpd_conn *c = p->data;
    struct httpd_req *r = c->cur;
    const char *expect, *te;
    int rc;

    if (item_end(c) < 0)
        return conn_reject(c, 503, "out of memory");
    /* 4xx rather than 505 and 501: a carrier retries a 5xx */
    if (p->http_major != 1)
        return conn_reject(c, 400, "HTTP version not supported");
    te = httpd_req_header(r, "transfer-encoding");
    if (te && strcasecmp(te, "chunked") != 0)
        return conn_reject(c, 400, "transfer coding not supported (chunked only)");
    r->method = p->method;
    r->http10 = p->http_major == 1 && p->http_minor == 0;
    r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    if ((rc = req_path(r)) < 0)
        return conn_reject(c, rc == -1 ? 400 : 503,
                           rc == -1 ? "bad request target" : "out of memory");
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > c->s->lim.max_body)
        return conn_reject(c, 413, "request body too large");
    expect = httpd_req_header(r, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && !r->http10 &&
        ((p->flags & F_CHUNKED) || (p->content_length != ULLONG_MAX && p->content_length > 0)))
        r->want_continue = 1;
    c->phase = PH_BODY;
    c->phase_ms = httpd_now_ms();
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    struct httpd_conn *c = p->data;
    struct httpd_req *r = c->cur;

    if (r->body.len + len > c->s->lim.max_body)
        return conn_reject(c, 413, "request body too large");
    if (util_buf_append(&r->body, at, len) < 0)
        return conn_reject(c, 503, "out of memory");
    return 0;
}

/* A whole request: queued; the parser pauses so that the connection hands
 * it to the handler outside the parser. */
static int on_message_complete(http_parser *p) {
    struct httpd_conn *c = p->data;
    struct httpd_req *r = c->cur;

    if (!r->body.p && util_buf_append(&r->body, "", 0) < 0) /* never NULL */
        return conn_reject(c, 503, "out of memory");
    r->want_continue = 0;
    c->cur = NULL;
    c->phase = PH_IDLE;
    c->phase_ms = httpd_now_ms();
    httpd_conn_enqueue(c, r);
    http_parser_pause(p, 1);
    return 0;
}

const http_parser_settings httpd_parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- reading a request ---- */

int httpd_req_method(const struct httpd_req *r) {
    return r->method;
}

const char *httpd_req_method_name(const struct httpd_req *r) {
    return r->method < 0 ? "?" : http_method_str((enum http_method)r->method);
}

const char *httpd_req_path(const struct httpd_req *r) {
    return r->path == SIZE_MAX ? NULL : r->head.p + r->path;
}

const char *httpd_req_peer(const struct httpd_req *r, char *out, size_t outlen) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "";
    unsigned port = 0;

    out[0] = '\0';
    if (r->c->peerlen) {
        memcpy(&ss, &r->c->peer, r->c->peerlen);
        len = r->c->peerlen;
    } else if (getpeername(r->c->fd, (struct sockaddr *)&ss, &len) < 0) {
        return NULL;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, outlen, "%s:%u", host, port);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, outlen, "[%s]:%u", host, port);
    }
    return out[0] ? out : NULL;
}

const char *httpd_req_header(const struct httpd_req *r, const char *name) {
    const struct httpd_hdr *h = (const struct httpd_hdr *)r->hdrs.p;
    size_t n = strlen(name);

    for (size_t i = 0; i < r->nhdrs; i++)
        if (h[i].namelen == n && strncasecmp(r->head.p + h[i].name, name, n) == 0)
            return r->head.p + h[i].value;
    return NULL;
}

size_t httpd_req_nheaders(const struct httpd_req *r) {
    return r->nhdrs;
}

void httpd_req_header_at(const struct httpd_req *r, size_t i, const char **name, size_t *namelen,
                         const char **value, size_t *valuelen) {
    const struct httpd_hdr *h = (const struct httpd_hdr *)r->hdrs.p + i;
    *name = r->head.p + h->name;
    *namelen = h->namelen;
    *value = r->head.p + h->value;
    *valuelen = h->valuelen;
}

const char *httpd_req_body(const struct httpd_req *r, size_t *len) {
    *len = r->body.len;
    return r->body.p ? r->body.p : "";
}

/* ---- answers ---- */

const char *httpd_reason(int code) {
    const char *s = http_status_str((enum http_status)code);
    return s && strcmp(s, "<unknown>") != 0 ? s : "Unknown";
}

/* "Date: ...\r\n", formatted once a second. */
static const char *date_line(struct httpd *s) {
    time_t now = time(NULL);
    struct tm tm;

    if ((int64_t)now != s->date_sec && gmtime_r(&now, &tm)) {
        strftime(s->date, sizeof s->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        s->date_sec = (int64_t)now;
    }
    return s->date;
}

/* Decimal n into buf (at least 21 bytes) backwards; returns its start. */
static char *utoa_end(char *end, size_t n) {
    *--end = '\0';
    do {
        *--end = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return end;
}

/* Formats the answer into r->reply. Returns 0 or -1 (no memory). */
static int reply_format(struct httpd_req *r, struct httpd *s, int code, const char *reason,
                        const char *headers, const char *body, size_t len) {
    char num[24];
    struct util_buf *b = &r->reply;

    util_buf_reset(b);
    if (util_buf_appends(b, "HTTP/1.1 ") < 0 ||
        util_buf_appends(b, utoa_end(num + 24, (size_t)code)) < 0 || util_buf_appends(b, " ") < 0 ||
        util_buf_appends(b, reason) < 0 ||
        util_buf_appends(b, "\r\nContent-Type: application/json\r\nContent-Length: ") < 0 ||
        util_buf_appends(b, utoa_end(num + 24, len)) < 0 || util_buf_appends(b, "\r\n") < 0 ||
        util_buf_appends(b, date_line(s)) < 0 || (headers && util_buf_appends(b, headers) < 0))
        return -1;
    r->reply_hdr_end = b->len;
    if (util_buf_appends(b, "\r\n") < 0 ||
        (r->method != HTTP_HEAD && len && util_buf_append(b, body, len) < 0))
        return -1;
    return 0;
}

void httpd_reply(struct httpd_req *r, int code, const char *reason, const char *headers,
                 const char *body, size_t len) {
    struct httpd_conn *c = r->c;

    if (c->s->reply_hook)
        c->s->reply_hook(c->s->reply_hook_arg, r, code);
    if (!c->dead && reply_format(r, c->s, code, reason, headers, body, len) < 0) {
        static const char oom[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n";
        util_buf_reset(&r->reply); /* the fixed answer fits what reply already holds */
        if (r->reply.cap > sizeof oom + 2) {
            util_buf_append(&r->reply, oom, sizeof oom - 1);
            r->reply_hdr_end = r->reply.len;
            util_buf_append(&r->reply, "\r\n", 2);
        }
        r->keep_alive = 0;
    }
    r->state = REQ_ANSWERED;
    c->outstanding--;
    httpd_conn_answered(c);
}

void httpd_reply_json(struct httpd_req *r, int code, const char *reason, const char *headers,
                      json_t *body) {
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    httpd_reply(r, code, reason, headers, text ? text : "", text ? strlen(text) : 0);
    free(text);
    json_decref(body);
}

void httpd_reply_error(struct httpd_req *r, int code, const char *reason, const char *headers,
                       const char *message) {
    struct util_buf b = {0};
    if (util_buf_appends(&b, "{\"error\":") < 0 ||
        jsonx_append_string(&b, message, strlen(message)) < 0 || util_buf_appends(&b, "}") < 0)
        util_buf_reset(&b);
    httpd_reply(r, code, reason, headers, b.p ? b.p : "", b.len);
    util_buf_free(&b);
}

void httpd_req_fail(struct httpd_req *r, int code, const char *message) {
    r->state = REQ_HANDLER; /* as if the handler answered */
    r->c->outstanding++;
    r->keep_alive = 0;
    httpd_reply_error(r, code, httpd_reason(code), NULL, message);
}
