/* http.h -- what both HTTP listeners (inbound webhooks, the admin API)
 * share: binding, TLS, JSON replies. Every request handed to a handler must
 * get exactly one reply (evhttp's rule); these helpers send it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_HTTP_H
#define CORE_HTTP_H

#include <stddef.h>

#include <openssl/ssl.h>

struct event_base;
struct evhttp;
struct evhttp_bound_socket;
struct evhttp_request;
struct json_t;

/* A listening socket bound to listen ("host:port", "[::1]:port", ":port"
 * for every IPv4 address), non-blocking, close-on-exec. Returns the fd, or
 * -1 with "cannot listen on ADDR: reason" in err. */
int http_bind(const char *listen, char *err, size_t errlen);

/* An evhttp serving fd (from http_bind; owned from here on, closed also on
 * failure; listen names it in messages), every method let through to the
 * handler, request headers bounded to 64 KiB, 60 s idle timeout. *sock
 * receives the bound socket. Returns new, or NULL with a reason in err. */
struct evhttp *http_listener_fd(struct event_base *base, int fd, const char *listen,
                                struct evhttp_bound_socket **sock, char *err, size_t errlen);

/* http_bind(listen), then http_listener_fd. */
struct evhttp *http_listener_new(struct event_base *base, const char *listen,
                                 struct evhttp_bound_socket **sock, char *err, size_t errlen);

/* Splits "host:port" ("[::1]:8080" for IPv6; ":8080" is every IPv4
 * address, as config.c and the CLI read it). Returns 0 or -1. */
int http_split_listen(const char *listen, char *host, size_t hostlen, unsigned short *port);

/* A server TLS context from PEM files: TLS 1.2 and later only, the key
 * checked against the certificate. Returns new (SSL_CTX_free), or NULL with
 * a reason in err. */
SSL_CTX *http_tls_context(const char *cert, const char *key, char *err, size_t errlen);

/* Serves http over TLS with tls (borrowed: must outlive http). */
void http_listener_tls(struct evhttp *http, SSL_CTX *tls);

/* Replies with body as compact JSON (Content-Type application/json);
 * steals body (NULL sends an empty body). */
void http_reply_json(struct evhttp_request *req, int code, const char *reason, struct json_t *body);

/* Replies {"error": message}; message is one line, never a secret. */
void http_reply_error(struct evhttp_request *req, int code, const char *reason,
                      const char *message);

/* "GET", "POST", ... for an evhttp command; "?" when unknown. */
const char *http_method_name(int cmd);

#endif
