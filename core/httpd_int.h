/* httpd_int.h -- private to the httpd module (httpd.c: connections, I/O,
 * the listener; httpd_req.c: the parser glue, requests and answers).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_HTTPD_INT_H
#define CORE_HTTPD_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <http_parser.h>

#include "httpd.h"
#include "util.h"

struct bufferevent;
struct event;
struct evconnlistener;

enum httpd_req_state {
    REQ_PARSING,  /* its bytes are being read */
    REQ_HANDLER,  /* complete, with the handler until it answers */
    REQ_ANSWERED, /* its answer waits for those before it */
};

/* One header: offsets into the request's head buffer. */
struct httpd_hdr {
    uint32_t name, namelen, value, valuelen;
};

/* A request: pooled by the server with its buffers (no heap allocation per
 * request once the pool is warm). */
struct httpd_req {
    struct httpd_conn *c;
    struct httpd_req *next; /* in its connection's queue, or the pool */
    enum httpd_req_state state;
    int method;
    int http10;           /* HTTP/1.0: keep-alive only when asked */
    int keep_alive;       /* the connection may serve another request after it */
    int want_continue;    /* Expect: 100-continue, not yet answered */
    struct util_buf head; /* the target, names, values, path: each NUL-ended */
    struct util_buf hdrs; /* struct httpd_hdr[nhdrs] */
    size_t nhdrs;
    size_t target, path; /* offsets in head; path SIZE_MAX when none */
    struct util_buf body;
    struct util_buf reply; /* the answer, from its status line */
    size_t reply_hdr_end;  /* where its blank line starts (Connection: goes there) */
};

/* What the parser's callbacks are in: the kind of the last piece seen. */
enum httpd_item { ITEM_NONE, ITEM_TARGET, ITEM_NAME, ITEM_VALUE };

/* Where a connection is. */
enum httpd_phase {
    PH_IDLE,    /* between requests (or before the first) */
    PH_HEADERS, /* a request's head is being read */
    PH_BODY,    /* its body is being read */
};

/* A connection. Invariant: it is freed only when no request of it is with
 * the handler (outstanding == 0) and no callback of it is on the stack
 * (busy == 0); until then a dead connection only swallows answers. */
struct httpd_conn {
    struct httpd *s;
    struct httpd_conn *prev, *next;
    evutil_socket_t fd;
    /* The peer's address from accept, so a request's log line needs no
     * getpeername(2); peerlen 0 (an adopted socket): asked when needed. */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    struct bufferevent *bev; /* TLS only */
    struct event *rev, *wev, *timer;
    http_parser parser;
    enum httpd_item item;
    size_t item_start;
    enum httpd_phase phase;
    int64_t phase_ms;  /* when the phase began (monotonic ms) */
    int64_t timer_due; /* when the timer, if pending, fires */
    char *in;          /* read, not yet parsed: in[inoff, inlen) */
    size_t inoff, inlen, incap;
    struct util_buf out; /* to write: out.p[outoff, out.len) */
    size_t outoff;
    struct httpd_req *cur;           /* being read */
    struct httpd_req *qhead, *qtail; /* complete, in request order, until written */
    int nqueued;
    int outstanding; /* with the handler */
    int busy;
    size_t trailer_bytes;   /* a chunked body's trailer, not kept */
    int reject;             /* a status decided in a callback (413, 431, 400) */
    const char *reject_msg; /* its one-line reason */
    /* closing: no request after those read; shut: its last answer is
     * queued (written, it half-closes); lingering: half-closed, reading
     * and dropping until the client closes or a second passes. */
    unsigned reading : 1, wpending : 1, closing : 1, eof : 1, dead : 1, shut : 1, lingering : 1,
        counted : 1;
};

struct httpd {
    struct event_base *base;
    struct httpd_limits lim;
    httpd_handler_fn fn;
    void *arg;
    struct evconnlistener *listener;
    struct event *resume; /* accept again after EMFILE */
    SSL_CTX *tls;
    struct httpd_conn *conns;
    int nconns;
    int accept_paused;
    int stopping;
    struct httpd_req *pool;
    int npool;
    int64_t date_sec;
    char date[40];                  /* "Date: ...\r\n" for date_sec */
    httpd_reply_hook_fn reply_hook; /* told of every answer (request logs), or NULL */
    void *reply_hook_arg;
};

/* httpd_req.c */
extern const http_parser_settings httpd_parser_settings;
struct httpd_req *httpd_req_get(struct httpd_conn *c);
void httpd_req_put(struct httpd *s, struct httpd_req *r);
void httpd_req_free(struct httpd_req *r);
/* The answer for an error found by the server itself; the connection
 * closes after it. */
void httpd_req_fail(struct httpd_req *r, int code, const char *message);
const char *httpd_reason(int code);
int64_t httpd_now_ms(void);

/* httpd.c */
/* Puts r (complete) at the end of its connection's queue. */
void httpd_conn_enqueue(struct httpd_conn *c, struct httpd_req *r);
/* After an answer: writes what is ready when no callback is on the stack. */
void httpd_conn_answered(struct httpd_conn *c);

#endif
