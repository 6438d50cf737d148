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

#endif
