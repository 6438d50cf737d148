/* httpd.h -- the lean HTTP/1.1 server of the webhook listener, on libevent
 * and Node's http-parser (Debian's libhttp-parser-dev): keep-alive and
 * pipelining (answers in request order), Content-Length and chunked bodies,
 * Expect: 100-continue, header and body limits (431, 413), a total
 * header-read deadline, body and idle timeouts, a connection cap (accept
 * paused at the cap or on EMFILE), TLS through bufferevent_openssl, and a
 * graceful stop. Each complete request is handed to the handler, which
 * answers it exactly once, now or later (after a durable commit); the
 * connection is not read beyond what pipelining needs meanwhile.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_HTTPD_H
#define CORE_HTTPD_H

#include <stddef.h>

#include <event2/util.h>
#include <openssl/ssl.h>

struct event_base;
struct httpd;
struct httpd_req;
struct json_t;

/* The limits; a zero field takes its default. */
struct httpd_limits {
    size_t max_header;     /* request line and headers, bytes (64 KiB): 431 past it */
    size_t max_body;       /* body bytes (1 MiB): 413 past it, not read further */
    int header_timeout_ms; /* the whole header section from its first byte (10 s): 408 */
    int body_timeout_ms;   /* the whole body from the end of the headers (60 s): 408 */
    int idle_timeout_ms;   /* a kept-alive connection with nothing to do (60 s) */
    int max_conns;         /* open connections (from RLIMIT_NOFILE, at most 16,384) */
    int pipeline;          /* requests read ahead of their answers (16) */
};

/* A complete request; the handler answers it with httpd_reply*. */
typedef void (*httpd_handler_fn)(struct httpd_req *req, void *arg);

/* A server on base with limits (NULL: the defaults) calling fn(req, arg).
 * New, or NULL when out of memory. */
struct httpd *httpd_new(struct event_base *base, const struct httpd_limits *limits,
                        httpd_handler_fn fn, void *arg);

/* Serves fd, a socket bound and listening (http_bind: every listener is
 * bound before anything else starts), over TLS when tls is set (borrowed:
 * must outlive the server). fd is taken, closed also on failure. Returns
 * 0, or -1 with a reason in err. */
int httpd_listen_fd(struct httpd *s, int fd, SSL_CTX *tls, char *err, size_t errlen);

/* Serves an already connected socket (taken; plain HTTP): tests and the
 * fuzzer use it. Returns 0, or -1 (fd closed). */
int httpd_adopt(struct httpd *s, evutil_socket_t fd);

/* A reload's new body limit, for requests whose headers come after it. */
void httpd_set_max_body(struct httpd *s, size_t max_body);

/* Stops accepting; idle connections close now, the others after their
 * answers (each says Connection: close). Answers still to come (after a
 * commit) are written. */
void httpd_stop(struct httpd *s);

/* Called with every answer as it is made (code: its status): the request
 * log. r is valid during the call only. */
typedef void (*httpd_reply_hook_fn)(void *arg, const struct httpd_req *r, int code);
void httpd_set_reply_hook(struct httpd *s, httpd_reply_hook_fn fn, void *arg);

/* Open connections (metrics, tests). */
int httpd_connections(const struct httpd *s);

/* Closes every connection and frees the server. No handler may answer a
 * request afterwards. NULL is a no-op. */
void httpd_free(struct httpd *s);

/* ---- a request (valid until answered) ---- */

/* http-parser's enum http_method, and its name ("POST"). */
int httpd_req_method(const struct httpd_req *r);
const char *httpd_req_method_name(const struct httpd_req *r);

/* The target's path (no query), as sent; NULL when the target has none. */
const char *httpd_req_path(const struct httpd_req *r);

/* "addr:port" of the client into out (INET6_ADDRSTRLEN + 8 bytes is
 * enough); returns out, or NULL when unknown. For the request log. */
const char *httpd_req_peer(const struct httpd_req *r, char *out, size_t outlen);

/* The first header named name (any case), or NULL. */
const char *httpd_req_header(const struct httpd_req *r, const char *name);

/* The headers in request order: count, then i's name and value. */
size_t httpd_req_nheaders(const struct httpd_req *r);
void httpd_req_header_at(const struct httpd_req *r, size_t i, const char **name, size_t *namelen,
                         const char **value, size_t *valuelen);

/* The body, decoded from chunks when chunked; never NULL. */
const char *httpd_req_body(const struct httpd_req *r, size_t *len);

/* ---- answers (exactly one per request; r is gone afterwards) ---- */

/* Status code with reason, Content-Type application/json, headers (whole
 * lines each ending in "\r\n", or NULL) and body (len bytes). */
void httpd_reply(struct httpd_req *r, int code, const char *reason, const char *headers,
                 const char *body, size_t len);

/* body as compact JSON; steals body. */
void httpd_reply_json(struct httpd_req *r, int code, const char *reason, const char *headers,
                      struct json_t *body);

/* {"error": message}; message is one line, never a secret. */
void httpd_reply_error(struct httpd_req *r, int code, const char *reason, const char *headers,
                       const char *message);

#endif
