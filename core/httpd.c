/* httpd.c -- the httpd module's connections: accepting (a cap, paused at it
 * or on EMFILE, never spinning), reading into one buffer per connection
 * and feeding http-parser, handing complete requests to the handler (up to
 * `pipeline` ahead of their answers), writing answers in request order
 * with one send() each where the socket takes it (no epoll change per
 * request: a connection's read interest stays on while it waits), the
 * timers (header deadline, body deadline, idle), TLS through
 * bufferevent_openssl, and the graceful stop.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "http.h"
#include "httpd_int.h"

#define READ_CHUNK 16384
#define LINGER_MS 1000

static void conn_update(struct httpd_conn *c);
static void conn_check(struct httpd_conn *c);

/* ---- limits ---- */

static int default_max_conns(void) {
    struct rlimit rl;
    long n = 1024;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        n = (long)rl.rlim_cur;
    /* Leave room for the store, the admin listener, deliveries, logs. */
    n = n > 512 ? n - 256 : n / 2;
    return n > 16384 ? 16384 : (int)n;
}

static void limits_fill(struct httpd_limits *l, const struct httpd_limits *given) {
    if (given)
        *l = *given;
    if (!l->max_header)
        l->max_header = 64 * 1024;
    if (!l->max_body)
        l->max_body = (size_t)1 << 20;
    if (!l->header_timeout_ms)
        l->header_timeout_ms = 10 * 1000;
    if (!l->body_timeout_ms)
        l->body_timeout_ms = 60 * 1000;
    if (!l->idle_timeout_ms)
        l->idle_timeout_ms = 60 * 1000;
    if (!l->max_conns)
        l->max_conns = default_max_conns();
    if (!l->pipeline)
        l->pipeline = 16;
}

/* ---- accepting ---- */

static void accept_pause(struct httpd *s) {
    if (s->listener && !s->accept_paused) {
        evconnlistener_disable(s->listener);
        s->accept_paused = 1;
    }
}

static void accept_resume(struct httpd *s) {
    if (s->listener && s->accept_paused && s->nconns < s->lim.max_conns && !s->stopping) {
        evconnlistener_enable(s->listener);
        s->accept_paused = 0;
    }
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
    UNUSED(fd);
    UNUSED(what);
    accept_resume(arg);
}

/* EMFILE and the like: accept again when a connection closes, or in 100 ms
 * (a descriptor may be freed elsewhere). */
static void on_accept_error(struct evconnlistener *l, void *arg) {
    struct httpd *s = arg;
    struct timeval tv = {0, 100 * 1000};
    UNUSED(l);
    accept_pause(s);
    if (s->resume)
        event_add(s->resume, &tv);
}

/* ---- closing ---- */

/* The socket and its events go; the struct stays while the handler holds
 * requests of it. */
static void conn_kill(struct httpd_conn *c) {
    struct httpd *s = c->s;

    if (c->dead)
        return;
    c->dead = 1;
    c->reading = 0;
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    c->rev = c->wev = NULL;
    if (c->bev)
        bufferevent_free(c->bev); /* closes fd, frees the SSL */
    else if (c->fd >= 0)
        evutil_closesocket(c->fd);
    c->bev = NULL;
    c->fd = -1;
    if (c->counted) {
        c->counted = 0;
        s->nconns--;
        accept_resume(s);
    }
}

static void conn_free(struct httpd_conn *c) {
    struct httpd *s = c->s;
    struct httpd_req *r, *next;

    conn_kill(c);
    if (c->timer)
        event_free(c->timer);
    for (r = c->qhead; r; r = next) {
        next = r->next;
        httpd_req_put(s, r);
    }
    if (c->cur)
        httpd_req_put(s, c->cur);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    util_buf_free(&c->out);
    free(c->in);
    free(c);
}

/* Frees c when nothing refers to it any more. */
static void conn_check(struct httpd_conn *c) {
    if (c->busy || !c->dead || c->outstanding)
        return;
    conn_free(c);
}

/* All answered and written, no more requests: half-close and read what
 * the client still sends (so it gets our answer, not a reset) until it
 * closes or LINGER_MS pass. */
static void conn_finish(struct httpd_conn *c) {
    struct timeval tv = {0, LINGER_MS * 1000};

    if (c->lingering || c->dead)
        return;
    if (c->bev) { /* else killed by on_bev_write once its output is out */
        if (!evbuffer_get_length(bufferevent_get_output(c->bev)))
            conn_kill(c);
        return;
    }
    if (c->eof) {
        conn_kill(c);
        return;
    }
    c->lingering = 1;
    shutdown(c->fd, SHUT_WR);
    c->inoff = c->inlen = 0;
    event_add(c->timer, &tv);
    if (!c->reading && event_add(c->rev, NULL) == 0)
        c->reading = 1;
}

/* ---- writing ---- */

static void conn_write(struct httpd_conn *c) {
    if (c->dead)
        return;
    if (c->bev) {
        if (c->out.len > c->outoff &&
            bufferevent_write(c->bev, c->out.p + c->outoff, c->out.len - c->outoff) < 0)
            conn_kill(c);
        c->out.len = c->outoff = 0;
        return;
    }
    while (c->outoff < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->outoff, c->out.len - c->outoff, MSG_NOSIGNAL);
        if (n > 0) {
            c->outoff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->wpending && event_add(c->wev, NULL) == 0)
                c->wpending = 1;
            return;
        } else {
            conn_kill(c);
            return;
        }
    }
    c->out.len = c->outoff = 0;
    if (c->wpending) {
        event_del(c->wev);
        c->wpending = 0;
    }
}

/* Moves the answers at the head of the queue to the output, in order (a
 * Connection: close on the last one when the connection ends after it),
 * then a 100 Continue for the request being read once nothing is before
 * it; writes. */
static void conn_flush(struct httpd_conn *c) {
    struct httpd *s = c->s;
    struct httpd_req *r;

    while ((r = c->qhead) && r->state == REQ_ANSWERED) {
        int last = !r->keep_alive || (c->closing && !r->next && !c->cur);
        if (!c->dead && !c->shut &&
            (util_buf_append(&c->out, r->reply.p, r->reply_hdr_end) < 0 ||
             util_buf_appends(&c->out, last        ? "Connection: close\r\n"
                                       : r->http10 ? "Connection: keep-alive\r\n"
                                                   : "") < 0 ||
             util_buf_append(&c->out, r->reply.p + r->reply_hdr_end,
                             r->reply.len - r->reply_hdr_end) < 0))
            conn_kill(c);
        c->qhead = r->next;
        if (!c->qhead)
            c->qtail = NULL;
        c->nqueued--;
        httpd_req_put(s, r);
        if (last) {
            c->closing = 1;
            c->shut = c->shut || !c->qhead; /* nothing more is written */
            break;
        }
    }
    if (!c->qhead && c->cur && c->cur->want_continue && !c->closing && !c->dead) {
        c->cur->want_continue = 0;
        if (util_buf_appends(&c->out, "HTTP/1.1 100 Continue\r\n\r\n") < 0)
            conn_kill(c);
    }
    conn_write(c);
    if (c->shut && !c->dead && c->out.len == 0 && !c->qhead)
        conn_finish(c);
}

/* ---- reading ---- */

void httpd_conn_enqueue(struct httpd_conn *c, struct httpd_req *r) {
    r->next = NULL;
    if (c->qtail)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->nqueued++;
}

/* An error found while parsing: its answer ends the queue and the
 * connection. */
static void conn_fail(struct httpd_conn *c, int code, const char *msg) {
    struct httpd_req *r = c->cur;

    c->cur = NULL;
    if (!r && !(r = httpd_req_get(c))) {
        conn_kill(c);
        return;
    }
    httpd_conn_enqueue(c, r);
    c->closing = 1;
    c->phase = PH_IDLE;
    c->phase_ms = httpd_now_ms(); /* the answer's own write deadline runs from now */
    httpd_req_fail(r, code, msg);
}

/* Parses what was read, handing each complete request to the handler as
 * the parser pauses after it. Stops at the pipeline bound, an error, or a
 * last request (Connection: close, an upgrade, the stop). */
static void conn_parse(struct httpd_conn *c) {
    struct httpd *s = c->s;

    while (c->inoff < c->inlen && !c->dead && !(c->closing && !c->cur) &&
           c->nqueued < s->lim.pipeline) {
        size_t n = http_parser_execute(&c->parser, &httpd_parser_settings, c->in + c->inoff,
                                       c->inlen - c->inoff);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);

        c->inoff += n;
        if (e == HPE_PAUSED) {
            struct httpd_req *r = c->qtail;
            http_parser_pause(&c->parser, 0);
            if (!r->keep_alive || c->parser.upgrade)
                c->closing = 1;
            r->state = REQ_HANDLER;
            c->outstanding++;
            s->fn(r, s->arg);
        } else if (e != HPE_OK) {
            int code = c->reject ? c->reject : e == HPE_HEADER_OVERFLOW ? 431 : 400;
            const char *msg = c->reject ? c->reject_msg : http_errno_description(e);
            c->reject = 0;
            conn_fail(c, code, msg);
        }
    }
    if (c->inoff == c->inlen)
        c->inoff = c->inlen = 0;
}

/* Room for READ_CHUNK more bytes in c->in. Returns 0 or -1. */
static int conn_in_room(struct httpd_conn *c) {
    if (c->inoff && c->incap - c->inlen < READ_CHUNK) {
        memmove(c->in, c->in + c->inoff, c->inlen - c->inoff);
        c->inlen -= c->inoff;
        c->inoff = 0;
    }
    if (c->incap - c->inlen < READ_CHUNK) {
        size_t cap = c->incap ? c->incap * 2 : READ_CHUNK;
        char *p;
        while (cap - c->inlen < READ_CHUNK)
            cap *= 2;
        if (!(p = realloc(c->in, cap)))
            return -1;
        c->in = p;
        c->incap = cap;
    }
    return 0;
}

/* The client closed its side: requests read are still answered. */
static void conn_eof(struct httpd_conn *c) {
    c->eof = 1;
    c->closing = 1;
    if (c->cur) { /* a request cut short: no answer is possible */
        httpd_req_put(c->s, c->cur);
        c->cur = NULL;
    }
    if (!c->qhead && c->out.len == 0)
        conn_kill(c);
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
    struct httpd_conn *c = arg;
    ssize_t n;
    UNUSED(what);

    c->busy++;
    if (c->lingering) { /* read and drop */
        char sink[4096];
        while ((n = recv(fd, sink, sizeof sink, 0)) > 0)
            ;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            conn_kill(c);
        goto out;
    }
    if (conn_in_room(c) < 0) {
        conn_kill(c);
        goto out;
    }
    n = recv(fd, c->in + c->inlen, c->incap - c->inlen, 0);
    if (n > 0) {
        c->inlen += (size_t)n;
        conn_parse(c);
        conn_flush(c);
    } else if (n == 0) {
        conn_eof(c);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        conn_kill(c);
    }
out:
    c->busy--;
    conn_update(c);
    conn_check(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
    struct httpd_conn *c = arg;
    UNUSED(fd);
    UNUSED(what);
    c->busy++;
    c->wpending = 0;
    conn_flush(c);
    c->busy--;
    conn_update(c);
    conn_check(c);
}

/* TLS: bufferevent_openssl decrypts into its input; move it to c->in. */
static void on_bev_read(struct bufferevent *bev, void *arg) {
    struct httpd_conn *c = arg;
    struct evbuffer *input = bufferevent_get_input(bev);

    c->busy++;
    while (!c->dead && evbuffer_get_length(input) && c->nqueued < c->s->lim.pipeline &&
           !(c->closing && !c->cur)) {
        int n;
        if (conn_in_room(c) < 0) {
            conn_kill(c);
            break;
        }
        n = evbuffer_remove(input, c->in + c->inlen, c->incap - c->inlen);
        if (n <= 0)
            break;
        c->inlen += (size_t)n;
        conn_parse(c);
    }
    conn_flush(c);
    c->busy--;
    conn_update(c);
    conn_check(c);
}

static void on_bev_write(struct bufferevent *bev, void *arg) {
    struct httpd_conn *c = arg;
    UNUSED(bev);
    if (c->closing && !c->qhead && !c->cur && c->out.len == 0)
        conn_kill(c);
    conn_check(c);
}

static void on_bev_event(struct bufferevent *bev, short what, void *arg) {
    struct httpd_conn *c = arg;
    UNUSED(bev);
    c->busy++;
    if (what & BEV_EVENT_ERROR)
        conn_kill(c);
    else if (what & BEV_EVENT_EOF)
        conn_eof(c);
    c->busy--;
    conn_update(c);
    conn_check(c);
}

void httpd_conn_answered(struct httpd_conn *c) {
    if (c->busy)
        return; /* the loop on the stack flushes */
    c->busy++;
    conn_flush(c);
    if (c->bev && !c->dead && evbuffer_get_length(bufferevent_get_input(c->bev)))
        on_bev_read(c->bev, c); /* what waited behind the pipeline bound */
    else
        conn_parse(c);
    conn_flush(c);
    c->busy--;
    conn_update(c);
    conn_check(c);
}

/* ---- interest and timers ---- */

/* The deadline of c's phase (monotonic ms), or 0 when none applies. */
static int64_t conn_deadline(const struct httpd_conn *c) {
    const struct httpd_limits *l = &c->s->lim;

    if (c->lingering)
        return 0; /* its timer is set by conn_finish */
    if (c->shut)  /* the last answer, to a client that may not read it */
        return c->phase_ms + l->body_timeout_ms;
    if (c->phase == PH_HEADERS)
        return c->phase_ms + l->header_timeout_ms;
    if (c->phase == PH_BODY)
        return c->phase_ms + l->body_timeout_ms;
    if (c->outstanding)
        return 0; /* the handler answers (after a commit) */
    if (c->qhead || c->out.len || c->wpending)
        return c->phase_ms + l->body_timeout_ms; /* a client not reading its answers */
    return c->phase_ms + l->idle_timeout_ms;
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    struct httpd_conn *c = arg;
    int64_t due = conn_deadline(c);
    UNUSED(fd);
    UNUSED(what);

    c->busy++;
    if (c->lingering) {
        conn_kill(c);
    } else if (due && due <= httpd_now_ms()) {
        if (c->cur && !c->dead)
            conn_fail(c, 408,
                      c->phase == PH_HEADERS ? "request headers not received in time"
                                             : "request body not received in time");
        else
            conn_kill(c);
        conn_flush(c);
        if (!c->dead && !c->shut)
            conn_kill(c); /* the 408 could not be written at once */
    }
    c->busy--;
    conn_update(c);
    conn_check(c);
}

/* Read interest on while another request may be read; the timer armed for
 * the phase's deadline (re-armed when it fires early, so a request does
 * not move it). */
static void conn_update(struct httpd_conn *c) {
    struct httpd *s = c->s;
    int want;
    int64_t due;

    if (c->dead)
        return;
    want = c->lingering || (!c->shut && !(c->closing && !c->cur) && c->nqueued < s->lim.pipeline);
    if (c->bev) {
        if (want != c->reading)
            want ? bufferevent_enable(c->bev, EV_READ) : bufferevent_disable(c->bev, EV_READ);
    } else if (want && !c->reading) {
        event_add(c->rev, NULL);
    } else if (!want && c->reading) {
        event_del(c->rev);
    }
    c->reading = want;
    if (!c->shut && !c->lingering && c->closing && !c->qhead && !c->cur && c->out.len == 0 &&
        !c->outstanding && !c->eof) {
        conn_finish(c); /* the stop, on an idle connection */
        return;
    }
    due = conn_deadline(c);
    if (due && (!evtimer_pending(c->timer, NULL) || due < c->timer_due)) {
        int64_t left = due - httpd_now_ms();
        struct timeval tv = {left > 0 ? left / 1000 : 0, left > 0 ? (left % 1000) * 1000 : 0};
        evtimer_add(c->timer, &tv);
        c->timer_due = due;
    }
}

/* ---- connections ---- */

/* Serves fd (taken), over TLS when the server has a context; sa is its
 * peer's address when known (NULL otherwise). */
static int conn_new(struct httpd *s, evutil_socket_t fd, const struct sockaddr *sa, int salen) {
    struct httpd_conn *c = calloc(1, sizeof *c);
    int one = 1;

    if (!c) {
        evutil_closesocket(fd);
        return -1;
    }
    c->s = s;
    c->fd = fd;
    if (sa && salen > 0 && (size_t)salen <= sizeof c->peer) {
        memcpy(&c->peer, sa, (size_t)salen);
        c->peerlen = (socklen_t)salen;
    }
    c->counted = 1;
    s->nconns++;
    if ((c->next = s->conns))
        c->next->prev = c;
    s->conns = c;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->phase = PH_HEADERS; /* the first request's head is due from now */
    c->phase_ms = httpd_now_ms();
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (!(c->timer = evtimer_new(s->base, on_timer, c)))
        goto fail;
    if (s->tls) {
        SSL *ssl = SSL_new(s->tls);
        if (!ssl)
            goto fail;
        c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (!c->bev) {
            SSL_free(ssl);
            goto fail;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        bufferevent_setcb(c->bev, on_bev_read, on_bev_write, on_bev_event, c);
    } else if (!(c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, on_read, c)) ||
               !(c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, on_write, c))) {
        goto fail;
    }
    if (s->nconns >= s->lim.max_conns)
        accept_pause(s);
    conn_update(c);
    return 0;
fail:
    conn_free(c);
    return -1;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg) {
    UNUSED(l);
    conn_new(arg, fd, sa, salen);
}

int httpd_adopt(struct httpd *s, evutil_socket_t fd) {
    if (evutil_make_socket_nonblocking(fd) < 0) {
        evutil_closesocket(fd);
        return -1;
    }
    return conn_new(s, fd, NULL, 0);
}

/* ---- the server ---- */

struct httpd *httpd_new(struct event_base *base, const struct httpd_limits *limits,
                        httpd_handler_fn fn, void *arg) {
    struct httpd *s = calloc(1, sizeof *s);

    if (!s)
        return NULL;
    s->base = base;
    s->fn = fn;
    s->arg = arg;
    s->date_sec = -1;
    limits_fill(&s->lim, limits);
    if (!(s->resume = evtimer_new(base, on_resume, s))) {
        free(s);
        return NULL;
    }
    return s;
}

int httpd_listen_fd(struct httpd *s, int fd, SSL_CTX *tls, char *err, size_t errlen) {
    s->listener = evconnlistener_new(s->base, on_accept, s,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (!s->listener) {
        snprintf(err, errlen, "cannot serve the webhook listener: out of memory");
        close(fd);
        return -1;
    }
    evconnlistener_set_error_cb(s->listener, on_accept_error);
    s->tls = tls;
    return 0;
}

void httpd_set_max_body(struct httpd *s, size_t max_body) {
    s->lim.max_body = max_body ? max_body : s->lim.max_body;
}

void httpd_set_reply_hook(struct httpd *s, httpd_reply_hook_fn fn, void *arg) {
    s->reply_hook = fn;
    s->reply_hook_arg = arg;
}

int httpd_connections(const struct httpd *s) {
    return s->nconns;
}

void httpd_stop(struct httpd *s) {
    struct httpd_conn *c, *next;

    s->stopping = 1;
    if (s->listener) {
        evconnlistener_free(s->listener);
        s->listener = NULL;
    }
    for (c = s->conns; c; c = next) {
        next = c->next;
        c->closing = 1;
        c->busy++;
        conn_flush(c);
        c->busy--;
        conn_update(c);
        conn_check(c);
    }
}

void httpd_free(struct httpd *s) {
    struct httpd_req *r;

    if (!s)
        return;
    if (s->listener)
        evconnlistener_free(s->listener);
    while (s->conns) {
        s->conns->outstanding = 0;
        s->conns->busy = 0;
        conn_free(s->conns);
    }
    while ((r = s->pool)) {
        s->pool = r->next;
        httpd_req_free(r);
    }
    if (s->resume)
        event_free(s->resume);
    free(s);
}
