/* admin_int.h -- what admin.c (the routes) takes from admin_render.c (the
 * JSON of rows). Private to the admin module.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ADMIN_INT_H
#define CORE_ADMIN_INT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "admin.h"
#include "store.h"

struct subs;
struct subs_entry;
struct evhttp;
struct evhttp_request;
struct evkeyvalq;
struct admin_streams;
struct admin_web;

/* One admin listener (admin.c). */
struct admin {
    struct admin_deps deps;
    struct evhttp *http;
    struct admin_streams *streams; /* GET /api/stream's connections */
    struct admin_web *web;         /* the dashboard (admin_web.c) */
};

/* ---- what the route files share (admin.c) ---- */

/* A write's reply, sent once the group holding the write committed: then
 * apply (may be NULL) runs (e.g. the subscription registry, which mirrors
 * committed rows only, is updated and reply set), and the reply goes out:
 * 204 without a body, or reply as JSON; a failed group answers 503. */
struct admin_commit {
    struct admin *adm;
    struct evhttp_request *req;
    int code;
    const char *phrase;
    json_t *reply;  /* owned; NULL = an event's detail, read after the commit */
    char *event_id; /* for that read */
    int se;         /* errors in ShipEngine's shape (the /v1 routes) */
    void (*apply)(struct admin_commit *c);
    struct store_sub sub; /* strings owned (admin_sub_clear) */
    int kick;             /* deliveries became due */
    /* For a write whose result comes later (admin_on_done): given the
     * result's status, answers an error and returns 1, or returns 0 (the
     * reply goes out as above). NULL: every status is a success. */
    int (*check)(struct admin_commit *c, int status);
};

/* New (the caller fills it and hands it to admin_after_commit), or NULL
 * after a 503 was sent. */
struct admin_commit *admin_commit_new(struct admin *adm, struct evhttp_request *req, int code,
                                      const char *phrase);
void admin_commit_free(struct admin_commit *c);

/* Registers c for the open group's commit; on failure replies 503 and frees c. */
void admin_after_commit(struct admin_commit *c);

/* The store_done_fn of an action queued with a store *_done call (arg: c,
 * the call durable): a failed write or group answers 503, else c->check
 * decides, else c's reply goes out as admin_after_commit's would. Frees c.
 * admin_done_queued(c, rc) takes the *_done call's return: -1 (out of
 * memory, the callback will not run) answers 503 and frees c. */
struct store_done;
void admin_on_done(void *arg, const struct store_done *d);
void admin_done_queued(struct admin_commit *c, int rc);

/* Frees a store_sub's owned strings and zeroes it. */
void admin_sub_clear(struct store_sub *sub);

/* The request body as a JSON object (new), or NULL after a 400 was sent. */
json_t *admin_body_object(struct evhttp_request *req);

/* Parses the URI's query into q (clear with evhttp_clear_headers); 0 or -1
 * after a 400 was sent. */
int admin_query(struct evhttp_request *req, struct evkeyvalq *q);

/* A paging query's limit and after; 0, or -1 after a 400 was sent. */
int admin_paging(struct evhttp_request *req, struct evkeyvalq *q, struct store_page *page);

/* Replies {"data": data (taken), "next": cursor or null (next 0)}. */
void admin_reply_page(struct evhttp_request *req, json_t *data, int64_t next);

/* "/prefix/{id}/suffix" -> id copied into out; 1 when path has that shape. */
int admin_path_id(const char *path, const char *prefix, const char *suffix, char *out,
                  size_t outlen);

/* ---- ShipEngine's webhook routes (admin_shipengine.c) ---- */

/* The /v1/environment/webhooks routes (ShipEngine's OpenAPI description):
 * answers and returns 1 when path is one of them, else returns 0. */
int admin_se_dispatch(struct admin *adm, struct evhttp_request *req, const char *path, int method);

/* A new signing secret, "whsec_" and 24 random bytes in base64; 0, or -1
 * without randomness. */
int admin_secret_new(char out[64]);

/* Whether path is one of those routes (their errors take ShipEngine's shape). */
int admin_se_path(const char *path);

/* An error reply: ShipEngine's shape ({request_id, errors:[{error_source,
 * error_type, error_code, message}]}) when se, else {"error": message}. */
void admin_error(struct evhttp_request *req, int se, int code, const char *phrase,
                 const char *message);

/* ---- /api/subscriptions (admin_subs.c) ---- */

/* GET /api/subscriptions, GET /api/subscriptions/{id} and POST
 * /api/subscriptions/{id}/rotate: answers and returns 1 when path is one
 * of them, else returns 0. */
int admin_subs_dispatch(struct admin *adm, struct evhttp_request *req, const char *path,
                        int method);

/* The event as GET /api/events/{id} shows it, with its raw body, headers
 * and each delivery's payload, from its detail as read. Returns new, or
 * NULL when out of memory. */
json_t *admin_event_json(const struct store_event_detail *d);

/* A page of events / deliveries as the list routes show them: a new
 * array, or NULL when out of memory. */
json_t *admin_events_json(const struct store_event_row *rows, size_t n);
json_t *admin_deliveries_json(const struct store_delivery_item *rows, size_t n);

/* Answers a list route from an asynchronous page read: {"data", "next"}
 * (admin_events_json or admin_deliveries_json of the rows), or 503 with
 * the store's reason. arg is the evhttp request. */
void admin_on_events_page(void *arg, const struct store_result *r);
void admin_on_deliveries_page(void *arg, const struct store_result *r);

/* A subscription as ShipEngine's routes show it: exactly {webhook_id,
 * url, event}, new. */
json_t *admin_webhook_json(const struct subs_entry *e);

/* Every subscription in ShipEngine's shape, a new bare JSON array; NULL
 * when out of memory. */
json_t *admin_webhooks_json(const struct subs *subs);

/* A subscription in waybill's shape (GET /api/subscriptions/{id}): {id,
 * url, event, created_at} and, when with_secret, its secret; new. */
json_t *admin_sub_json(const struct subs_entry *e, int with_secret);

/* GET /api/openapi.json (admin_openapi.c): answers it and returns 1 when
 * path and method (an evhttp_cmd_type) are its, else returns 0. */
int admin_openapi_dispatch(struct evhttp_request *req, const char *path, int method);

/* GET /api/stream (admin_stream.c): the live feed as Server-Sent Events. */
struct admin_streams;
struct event_base;
struct stream;

/* The open streams of one admin listener, fed by stream (borrowed). New, or
 * NULL when out of memory. */
struct admin_streams *admin_streams_new(struct event_base *base, struct stream *stream);

/* Ends every open stream cleanly (the last chunk) and refuses new ones
 * (503): the gateway is stopping. NULL is a no-op. */
void admin_streams_stop(struct admin_streams *s);

/* Ends every open stream (before the listener goes); NULL is a no-op. */
void admin_streams_free(struct admin_streams *s);

/* Answers GET /api/stream and returns 1, or returns 0 for another path or
 * method (an evhttp_cmd_type). */
int admin_stream_dispatch(struct admin_streams *s, struct evhttp_request *req, const char *path,
                          int method);

/* ---- the dashboard (admin_web.c) ---- */

struct admin_deps;
struct admin_web;

/* A file of core/web/, embedded at build time (build/web_assets.c, made by
 * tests/webembed.sh): etag is its content hash, quoted. */
struct admin_asset {
    const char *path, *type, *etag;
    const unsigned char *data;
    size_t len;
};
extern const struct admin_asset admin_assets[];
extern const size_t admin_nassets;

/* The dashboard's state: sessions and the last hour's samples. deps is
 * borrowed (the admin's own copy). Returns new, or NULL when out of memory. */
struct admin_web *admin_web_new(const struct admin_deps *deps);
void admin_web_free(struct admin_web *w);

/* The routes open without a token: the page, its files, POST /login and
 * POST /logout. Returns 1 when path was one of them (answered). */
int admin_web_public(struct admin_web *w, struct evhttp_request *req, const char *path, int method);

/* Whether req carries a live session cookie: 1 yes (and, for a method that
 * changes state, its Origin is this listener's own); 0 no cookie or an
 * expired or unknown one; -1 a session without a same-origin Origin (a
 * 403 was sent). */
int admin_web_session(struct admin_web *w, struct evhttp_request *req);

/* The API routes the dashboard added (behind the token or a session):
 * GET /api/series, GET /api/rules, POST /api/dryrun, GET /api/batches.
 * Returns 1 when path was one of them (answered). */
int admin_web_api(struct admin_web *w, struct evhttp_request *req, const char *path, int method);

/* GET /api/events' time window: query q's since and until (RFC 3339 or
 * Unix ms, util_time_parse) into page. Returns 0, or -1 with a one-line
 * reason in why (for a 400). */
struct evkeyvalq;
int admin_time_window(struct evkeyvalq *q, struct store_page *page, char *why, size_t whylen);

#endif
