/* admin_render.c -- the admin API's JSON, rendered from the plain rows the
 * store returns (SPEC section 8): the event detail, the pages of events
 * and deliveries, and the subscriptions, key by key in the order the API has always answered
 * them. Text the store kept as given (a response body, a raw request) is
 * made valid UTF-8 on the way out.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "admin_int.h"
#include "store.h"
#include "subs.h"
#include "util.h"

/* A JSON string of n bytes at p, each invalid UTF-8 byte replaced by U+FFFD
 * (a response body may be Latin-1 or cut mid-character); null for NULL.
 * Returns new, or NULL when out of memory. */
static json_t *admin_json_text(const void *p, size_t n) {
    const unsigned char *b = p;
    struct util_buf buf = {NULL, 0, 0};
    json_t *j;
    size_t i = 0, k;
    if (!p)
        return json_null();
    j = json_stringn(p, n);
    if (j)
        return j;
    while (i < n) {
        k = util_utf8_seq(b + i, n - i);
        if (k ? util_buf_append(&buf, b + i, k) : util_buf_append(&buf, "\xEF\xBF\xBD", 3)) {
            util_buf_free(&buf);
            return NULL;
        }
        i += k ? k : 1;
    }
    j = json_stringn(buf.p ? buf.p : "", buf.len);
    util_buf_free(&buf);
    return j;
}

/* A NUL-terminated text as a JSON string (null for NULL). */
static json_t *admin_json_str(const char *s) {
    return s ? admin_json_text(s, strlen(s)) : json_null();
}

/* Unix ms as an RFC 3339 string. */
static json_t *admin_json_time(int64_t ms) {
    char t[32];
    util_time_rfc3339(ms, t, sizeof t);
    return json_string(t);
}

/* Stored JSON text (an event's data or headers) parsed back, kept as a
 * string when it does not parse; null for NULL. */
static json_t *admin_json_data(const char *s) {
    json_t *j;
    if (!s)
        return json_null();
    j = json_loadb(s, strlen(s), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    return j ? j : admin_json_str(s);
}

/* A delivery's payload: JSON when it parses, else text; null for none. */
static json_t *admin_json_payload(const char *p, size_t n) {
    json_t *j;
    if (!p)
        return json_null();
    j = json_loadb(p, n, JSON_DECODE_ANY, NULL);
    return j ? j : admin_json_text(p, n);
}

/* {n, at, status_code, latency_ms, error, response} per attempt of d, as a
 * new array, or NULL when out of memory. */
static json_t *admin_attempts_json(const struct store_event_delivery *d) {
    json_t *arr = json_array(), *a;
    int bad = !arr;
    for (size_t i = 0; i < d->nattempts && !bad; i++) {
        const struct store_attempt_row *r = &d->attempts[i];
        if (!(a = json_object())) {
            bad = 1;
            break;
        }
        bad |= json_object_set_new(a, "n", json_integer(r->n));
        bad |= json_object_set_new(a, "at", admin_json_time(r->at));
        bad |= json_object_set_new(a, "status_code", json_integer(r->status_code));
        bad |= json_object_set_new(a, "latency_ms", json_integer(r->latency_ms));
        bad |= json_object_set_new(a, "error", admin_json_str(r->error));
        bad |= json_object_set_new(a, "response", admin_json_text(r->response, r->response_len));
        bad |= json_array_append_new(arr, a);
    }
    if (bad) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The deliveries of an event detail: {id, endpoint, status, batch,
 * attempts, payload, content_type, event_type} each, then one {id: null,
 * endpoint, status: "batching", batch: true, window_end, attempts: []} per
 * open batch window the event waits in. New, or NULL when out of memory. */
static json_t *admin_event_deliveries_json(const struct store_event_detail *d) {
    json_t *arr = json_array(), *o;
    int bad = !arr;
    char t[64];
    for (size_t i = 0; i < d->ndeliveries && !bad; i++) {
        const struct store_event_delivery *r = &d->deliveries[i];
        if (!(o = json_object())) {
            bad = 1;
            break;
        }
        bad |= json_object_set_new(o, "id", admin_json_str(r->id));
        bad |= json_object_set_new(o, "endpoint", admin_json_str(r->endpoint));
        bad |= json_object_set_new(o, "status", admin_json_str(r->status));
        bad |= json_object_set_new(o, "batch", json_boolean(r->batch));
        bad |= json_object_set_new(o, "attempts", admin_attempts_json(r));
        bad |= json_object_set_new(o, "payload", admin_json_payload(r->payload, r->payload_len));
        bad |= json_object_set_new(o, "content_type", admin_json_str(r->content_type));
        bad |= json_object_set_new(o, "event_type", admin_json_str(r->event_type));
        bad |= json_array_append_new(arr, o);
    }
    for (size_t i = 0; i < d->nwaiting && !bad; i++) {
        util_time_rfc3339(d->waiting[i].window_end, t, sizeof t);
        bad |= json_array_append_new(arr,
                                     json_pack("{s:n, s:s, s:s, s:b, s:s, s:[]}", "id", "endpoint",
                                               d->waiting[i].endpoint, "status", "batching",
                                               "batch", 1, "window_end", t, "attempts")) < 0;
    }
    if (bad) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The rule handlers that matched as stored (store.h, struct store_plan),
 * each batch item's window_start as RFC 3339; null when not recorded. New,
 * or NULL when out of memory. */
static json_t *admin_matched_json(const char *text) {
    json_t *m, *h, *sent, *one, *ws;
    size_t i, j;

    if (!text)
        return json_null();
    if (!(m = json_loads(text, 0, NULL)))
        return admin_json_str(text);
    json_array_foreach(m, i, h) {
        sent = json_object_get(h, "sent");
        json_array_foreach(sent, j, one) {
            if (json_is_integer(ws = json_object_get(one, "window_start")) &&
                json_object_set_new(one, "window_start", admin_json_time(json_integer_value(ws))) <
                    0) {
                json_decref(m);
                return NULL;
            }
        }
    }
    return m;
}

/* The event as the admin API shows it (SPEC section 8): {id, source,
 * source_id, type, status, received_at, created_at, data, error, matched,
 * deliveries, raw, headers}, from its detail as read. Returns a new
 * json_t, or NULL when out of memory. */
json_t *admin_event_json(const struct store_event_detail *d) {
    const struct store_event_row *e = d->ev;
    json_t *ev = json_object();
    int bad = !ev;

    if (ev) {
        bad |= json_object_set_new(ev, "id", admin_json_str(e->id));
        bad |= json_object_set_new(ev, "source", admin_json_str(e->source));
        bad |= json_object_set_new(ev, "source_id", admin_json_str(e->source_id));
        bad |= json_object_set_new(ev, "type", admin_json_str(e->type));
        bad |= json_object_set_new(ev, "status", admin_json_str(e->status));
        bad |= json_object_set_new(ev, "received_at", admin_json_time(e->received_at));
        bad |= json_object_set_new(ev, "created_at", admin_json_str(e->created_at));
        bad |= json_object_set_new(ev, "shipment", admin_json_data(e->shipment_json));
        bad |= json_object_set_new(ev, "data", admin_json_data(e->data_json));
        bad |= json_object_set_new(ev, "error", admin_json_str(e->error));
        bad |= json_object_set_new(ev, "matched", admin_matched_json(e->matched_json));
        bad |= json_object_set_new(ev, "deliveries", admin_event_deliveries_json(d));
        bad |= json_object_set_new(ev, "raw", admin_json_text(e->raw, e->raw_len));
        bad |= json_object_set_new(ev, "headers", admin_json_data(e->headers_json));
    }
    if (bad) {
        json_decref(ev);
        return NULL;
    }
    return ev;
}

/* A page of events ({id, source, source_id, type, status, received_at,
 * created_at, error} each) as a new array, or NULL when out of memory. */
json_t *admin_events_json(const struct store_event_row *rows, size_t n) {
    json_t *arr = json_array(), *o;
    int bad = !arr;

    for (size_t i = 0; i < n && !bad; i++) {
        const struct store_event_row *r = &rows[i];
        if (!(o = json_object())) {
            bad = 1;
            break;
        }
        bad |= json_object_set_new(o, "id", admin_json_str(r->id));
        bad |= json_object_set_new(o, "source", admin_json_str(r->source));
        bad |= json_object_set_new(o, "source_id", admin_json_str(r->source_id));
        bad |= json_object_set_new(o, "type", admin_json_str(r->type));
        bad |= json_object_set_new(o, "status", admin_json_str(r->status));
        bad |= json_object_set_new(o, "received_at", admin_json_time(r->received_at));
        bad |= json_object_set_new(o, "created_at", admin_json_str(r->created_at));
        bad |= json_object_set_new(o, "error", admin_json_str(r->error));
        bad |= json_array_append_new(arr, o);
    }
    if (bad) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* A page of deliveries ({id, event_id, endpoint, event_type, status,
 * attempts, next_at, created_at, last_status_code, last_error, and key for
 * an endpoint ordered by key} each; next_at null while waiting behind its
 * key's head) as a new array, or NULL when out of memory. */
json_t *admin_deliveries_json(const struct store_delivery_item *rows, size_t n) {
    json_t *arr = json_array(), *o;
    int bad = !arr;

    for (size_t i = 0; i < n && !bad; i++) {
        const struct store_delivery_item *r = &rows[i];
        if (!(o = json_object())) {
            bad = 1;
            break;
        }
        bad |= json_object_set_new(o, "id", admin_json_str(r->id));
        bad |= json_object_set_new(o, "event_id", admin_json_str(r->event_id));
        bad |= json_object_set_new(o, "endpoint", admin_json_str(r->endpoint));
        bad |= json_object_set_new(o, "event_type", admin_json_str(r->event_type));
        bad |= json_object_set_new(o, "status", admin_json_str(r->status));
        bad |= json_object_set_new(o, "attempts", json_integer(r->attempts));
        bad |= json_object_set_new(o, "next_at",
                                   r->has_next_at ? admin_json_time(r->next_at) : json_null());
        bad |= json_object_set_new(o, "created_at", admin_json_time(r->created_at));
        bad |= json_object_set_new(o, "last_status_code",
                                   r->has_last ? json_integer(r->last_status_code) : json_null());
        bad |= json_object_set_new(o, "last_error", admin_json_str(r->last_error));
        if (r->key) /* ordered by key: which key's queue it is in */
            bad |= json_object_set_new(o, "key", admin_json_str(r->key));
        bad |= json_array_append_new(arr, o);
    }
    if (bad) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* ---- subscriptions ---- */

json_t *admin_webhook_json(const struct subs_entry *e) {
    return json_pack("{ssssss}", "webhook_id", e->id, "url", e->url, "event", e->event);
}

json_t *admin_webhooks_json(const struct subs *subs) {
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < subs_count(subs); i++) {
        if (json_array_append_new(arr, admin_webhook_json(subs_at(subs, i))) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *admin_sub_json(const struct subs_entry *e, int with_secret) {
    char at[32];
    json_t *j;

    util_time_rfc3339(e->created_at, at, sizeof at);
    j = json_pack("{ssssssss}", "id", e->id, "url", e->url, "event", e->event, "created_at", at);
    if (j && with_secret && json_object_set_new(j, "secret", json_string(e->secret)) < 0) {
        json_decref(j);
        j = NULL;
    }
    return j;
}
