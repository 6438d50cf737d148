/* server.h -- the HTTP listeners: inbound webhooks (checks of SPEC section 4
 * in order, group-committed before the reply) and the admin API.
 * Invariant: a 200 goes out only from the commit callback of the group that
 * holds the event.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_SERVER_H
#define CORE_SERVER_H

#include <stddef.h>

struct event_base;

struct gateway;
struct server;

/* Binds the inbound listener (and the admin one when configured) of the
 * current config of gw. Returns new, or NULL with a reason in err. */
struct server *server_new(struct gateway *gw, char *err, size_t errlen);

/* Applies what a reload may change without a restart (max_body, admin
 * token is read per request). */
void server_reconfigure(struct server *srv);

/* Closes the inbound listener: no new webhooks are accepted. Requests
 * already read still get their reply after their commit. */
void server_stop_inbound(struct server *srv);

void server_free(struct server *srv);

/* ---- shared with admin.c ---- */

struct evhttp;
struct evhttp_bound_socket;
struct evhttp_request;
struct json_t;

/* An evhttp bound to listen ("host:port", "[::1]:port"), every method let
 * through to the handler. Returns new, or NULL with a reason in err. */
struct evhttp *server_listener_new(struct event_base *base, const char *listen,
                                   struct evhttp_bound_socket **sock, char *err, size_t errlen);

/* Replies with body as compact JSON (Content-Type application/json);
 * steals body (NULL sends an empty body). */
void server_reply_json(struct evhttp_request *req, int code, const char *reason,
                       struct json_t *body);

/* Replies {"error": message}; message is one line, never a secret. */
void server_reply_error(struct evhttp_request *req, int code, const char *reason,
                        const char *message);

/* "GET", "POST", ... */
const char *server_method_name(int cmd);

#endif
