/* admin_int.h -- what admin.c (the routes) takes from admin_render.c (the
 * JSON of rows). Private to the admin module.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ADMIN_INT_H
#define CORE_ADMIN_INT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "store.h"

struct subs;
struct subs_entry;

/* The event as GET /api/events/{id} shows it, with its raw body, headers
 * and each delivery's payload. Returns new; NULL with err empty when id is
 * unknown, NULL with a reason on a store error. */
json_t *admin_event_json(struct store *s, const char *id, char *err, size_t errlen);

/* One page of events / deliveries as the list routes show them: *data new,
 * *next the next page's cursor (0 = the last). Returns 0, or -1 with a
 * reason in err. */
int admin_events_page_json(struct store *s, const struct store_page *q, json_t **data,
                           int64_t *next, char *err, size_t errlen);
int admin_deliveries_page_json(struct store *s, const struct store_page *q, json_t **data,
                               int64_t *next, char *err, size_t errlen);

/* A subscription as the ShipEngine-shaped routes show it: {webhook_id,
 * url, event, created_at} (+ secret when with_secret), new. */
json_t *admin_sub_json(const struct subs_entry *e, int with_secret);

/* Every subscription (without secrets) as a new JSON array, NULL when out
 * of memory. */
json_t *admin_subs_json(const struct subs *subs);

struct evhttp_request;

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
