/* admin_web.c -- the dashboard on the admin listener: its files (embedded
 * at build time, served with a content-hash ETag and a strict CSP), the
 * sign-in (the admin token traded for an expiring HttpOnly SameSite=Strict
 * session cookie; a state-changing request with the cookie must come from
 * this listener's own origin), and the routes its views need beside SPEC
 * section 8's: the last hour's samples, the rules' state, a dry run, the
 * open batch windows.
 * SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sys/queue.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "admin.h"
#include "admin_int.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "rules.h"
#include "store.h"
#include "util.h"

#define WEB_SESSIONS 64
#define WEB_SESSION_TTL_MS (8LL * 3600 * 1000)
#define WEB_COOKIE "waybill_session"
#define WEB_SAMPLE_MS 10000
#define WEB_SAMPLES 360 /* an hour of samples */

struct web_session {
    unsigned char digest[SHA256_DIGEST_LENGTH]; /* of the cookie's value */
    int64_t expires;                            /* Unix ms; 0 = free */
};

struct web_sample {
    int64_t t;
    double received, delivered, failed, retries;
    int64_t pending, held;
    uint64_t attempts, buckets[METRICS_LATENCY_NB];
    const int64_t *bounds_ms; /* metrics.c's bucket bounds (static) */
};

struct admin_web {
    const struct admin_deps *deps;
    struct web_session sessions[WEB_SESSIONS];
    struct event *tick;
    struct web_sample ring[WEB_SAMPLES];
    size_t head, count; /* ring[head] is the next slot written */
};

/* A request waiting for an asynchronous read, with the dashboard's state;
 * freed by the read's callback. */
struct web_read {
    struct admin_web *w;
    struct evhttp_request *req;
};

/* ---- samples ---- */

static void web_sample_take(struct web_sample *s, const struct store_counts *c) {
    struct metrics_totals t;

    metrics_totals(&t);
    s->t = util_now_ms();
    s->received = t.received;
    s->delivered = t.delivered;
    s->failed = t.failed;
    s->retries = t.retries;
    s->pending = c ? c->pending : 0; /* zeros when the read failed */
    s->held = c ? c->held : 0;
    s->attempts = t.attempts;
    memcpy(s->buckets, t.buckets, sizeof s->buckets);
    s->bounds_ms = t.bounds_ms;
}

/* The tick's sample, taken when the store's counts come. */
static void web_on_counts(void *arg, const struct store_result *r) {
    struct admin_web *w = arg;
    web_sample_take(&w->ring[w->head], r->status < 0 ? NULL : r->counts);
    w->head = (w->head + 1) % WEB_SAMPLES;
    if (w->count < WEB_SAMPLES)
        w->count++;
}

static void web_on_tick(evutil_socket_t fd, short what, void *arg) {
    struct admin_web *w = arg;
    (void)fd;
    (void)what;
    if (store_read_delivery_counts(w->deps->store, web_on_counts, w) < 0)
        log_msg(LOG_WARN, "dashboard: out of memory for a sample");
}

/* The latency (ms, a bucket's upper bound) under which fraction q of the
 * attempts between a and b fell; -1 when none was made. */
static int64_t web_quantile(const struct web_sample *a, const struct web_sample *b, double q) {
    const int64_t *bounds = b->bounds_ms;
    uint64_t n = b->attempts - a->attempts;
    if (b->attempts <= a->attempts)
        return -1;
    for (size_t i = 0; i < METRICS_LATENCY_NB; i++)
        if ((double)(b->buckets[i] - a->buckets[i]) >= q * (double)n)
            return bounds[i];
    return bounds[METRICS_LATENCY_NB - 1] + 1; /* above the last bound */
}

/* One point between samples a and b: rates per second, counts in the
 * interval, the queue at b, latency quantiles. New, or NULL (OOM). */
static json_t *web_point(const struct web_sample *a, const struct web_sample *b) {
    double dt = (double)(b->t - a->t) / 1000.0;
    int64_t p50 = web_quantile(a, b, 0.5), p99 = web_quantile(a, b, 0.99);
    char t[32];

    if (dt <= 0)
        dt = 1;
    util_time_rfc3339(b->t, t, sizeof t);
    return json_pack(
        "{sssfsfsIsIsIsIsoso}", "t", t, "received_per_s", (b->received - a->received) / dt,
        "delivered_per_s", (b->delivered - a->delivered) / dt, "failed",
        (json_int_t)(b->failed - a->failed), "retries", (json_int_t)(b->retries - a->retries),
        "pending", (json_int_t)b->pending, "held", (json_int_t)b->held, "p50_ms",
        p50 < 0 ? json_null() : json_integer(p50), "p99_ms",
        p99 < 0 ? json_null() : json_integer(p99));
}

/* GET /api/series: the last hour, one point per 10 s sample, and a last
 * point for now (taken when the store's counts come). */
static void web_on_series(void *arg, const struct store_result *r) {
    struct web_read *c = arg;
    struct admin_web *w = c->w;
    json_t *pts = json_array();
    struct web_sample now;
    const struct web_sample *prev = NULL, *cur;
    size_t first = (w->head + WEB_SAMPLES - w->count) % WEB_SAMPLES;

    web_sample_take(&now, r->status < 0 ? NULL : r->counts);
    for (size_t i = 0; pts && i <= w->count; i++) {
        cur = i < w->count ? &w->ring[(first + i) % WEB_SAMPLES] : &now;
        if (prev && json_array_append_new(pts, web_point(prev, cur)) < 0) {
            json_decref(pts);
            pts = NULL;
        }
        prev = cur;
    }
    if (!pts)
        http_reply_error(c->req, 503, "Service Unavailable", "out of memory");
    else
        http_reply_json(c->req, 200, "OK",
                        json_pack("{s:i, s:o, s:f}", "interval_s", WEB_SAMPLE_MS / 1000, "points",
                                  pts, "received_total", now.received));
    free(c);
}

static void web_series(struct admin_web *w, struct evhttp_request *req) {
    struct web_read *c = calloc(1, sizeof *c);

    if (c) {
        c->w = w;
        c->req = req;
    }
    if (!c || store_read_delivery_counts(w->deps->store, web_on_series, c) < 0) {
        free(c);
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    }
}

/* ---- headers, files ---- */

static void web_security_headers(struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Security-Policy",
                      "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                      "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                      "form-action 'self'; frame-ancestors 'none'");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "X-Frame-Options", "DENY");
    evhttp_add_header(h, "Referrer-Policy", "no-referrer");
}

static const struct admin_asset *web_asset(const char *path) {
    if (strcmp(path, "/") == 0)
        path = "/index.html";
    for (size_t i = 0; i < admin_nassets; i++)
        if (strcmp(admin_assets[i].path, path) == 0)
            return &admin_assets[i];
    return NULL;
}

static void web_serve(struct evhttp_request *req, const struct admin_asset *a) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    const char *inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
    struct evbuffer *out;

    web_security_headers(req);
    evhttp_add_header(h, "ETag", a->etag);
    evhttp_add_header(h, "Cache-Control", "no-cache");
    if (inm && strstr(inm, a->etag)) {
        evhttp_send_reply(req, 304, "Not Modified", NULL);
        return;
    }
    evhttp_add_header(h, "Content-Type", a->type);
    out = evbuffer_new();
    if (!out || evbuffer_add_reference(out, a->data, a->len, NULL, NULL) < 0) {
        if (out)
            evbuffer_free(out);
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        return;
    }
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

/* ---- sessions ---- */

static int web_tls(struct evhttp_request *req) {
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    return bev && bufferevent_openssl_get_ssl(bev) != NULL;
}

/* Whether req's Origin is this listener's own (scheme://Host). */
static int web_same_origin(struct evhttp_request *req) {
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *origin = evhttp_find_header(in, "Origin"), *host = evhttp_find_header(in, "Host");
    const char *scheme = web_tls(req) ? "https://" : "http://";
    size_t k = strlen(scheme);

    return origin && host && strncasecmp(origin, scheme, k) == 0 &&
           strcasecmp(origin + k, host) == 0;
}

/* The cookie's value (64 hex digits) copied into out; 1 when present. */
static int web_cookie(struct evhttp_request *req, char out[65]) {
    const char *c = evhttp_find_header(evhttp_request_get_input_headers(req), "Cookie");
    const char *p = c;
    size_t k = strlen(WEB_COOKIE);

    while (p && (p = strstr(p, WEB_COOKIE "=")) != NULL) {
        if (p == c || p[-1] == ' ' || p[-1] == ';') {
            p += k + 1;
            if (strspn(p, "0123456789abcdef") != 64)
                return 0;
            memcpy(out, p, 64);
            out[64] = '\0';
            return 1;
        }
        p += k;
    }
    return 0;
}

/* The live session of req's cookie, or NULL. */
static struct web_session *web_find(struct admin_web *w, struct evhttp_request *req) {
    unsigned char d[SHA256_DIGEST_LENGTH];
    struct web_session *found = NULL;
    int64_t now = util_now_ms();
    char v[65];

    if (!web_cookie(req, v))
        return NULL;
    SHA256((const unsigned char *)v, 64, d);
    for (size_t i = 0; i < WEB_SESSIONS; i++) {
        struct web_session *s = &w->sessions[i];
        if (s->expires && s->expires <= now)
            memset(s, 0, sizeof *s);
        if (s->expires && util_ct_equal(s->digest, d, sizeof d))
            found = s;
    }
    return found;
}

int admin_web_session(struct admin_web *w, struct evhttp_request *req) {
    enum evhttp_cmd_type m = evhttp_request_get_command(req);

    if (!web_find(w, req))
        return 0;
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD && !web_same_origin(req)) {
        http_reply_error(req, 403, "Forbidden",
                         "a request with the session cookie that changes state must come from "
                         "the dashboard's own origin");
        return -1;
    }
    return 1;
}

/* Constant-time check of the token given against the configured one. */
static int web_token_ok(struct admin_web *w, const char *given) {
    const char *want = rules_config(*w->deps->rules)->admin_token;
    unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];

    if (!want || !given)
        return 0;
    SHA256((const unsigned char *)want, strlen(want), a);
    SHA256((const unsigned char *)given, strlen(given), b);
    return util_ct_equal(a, b, sizeof a);
}

static void web_set_cookie(struct evhttp_request *req, const char *value, long max_age) {
    char line[256];
    snprintf(line, sizeof line, WEB_COOKIE "=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%ld%s",
             value, max_age, web_tls(req) ? "; Secure" : "");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Set-Cookie", line);
}

/* POST /login {"token": "..."}: 204 with the cookie, 401 on a wrong token. */
static void web_login(struct admin_web *w, struct evhttp_request *req) {
    struct evbuffer *buf = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(buf), slot = 0;
    const char *p = (const char *)evbuffer_pullup(buf, -1);
    json_t *body = json_loadb(p ? p : "", len, 0, NULL);
    const char *token = json_string_value(json_object_get(body, "token"));
    unsigned char raw[32];
    char value[65];
    int64_t now = util_now_ms();

    web_security_headers(req);
    if (!web_same_origin(req)) {
        http_reply_error(req, 403, "Forbidden", "sign in from the dashboard's own origin");
        goto done;
    }
    if (!token) {
        http_reply_error(req, 400, "Bad Request", "body must be {\"token\": \"...\"}");
        goto done;
    }
    if (!web_token_ok(w, token)) {
        log_msg(LOG_WARN, "admin: dashboard sign-in with a wrong token");
        http_reply_error(req, 401, "Unauthorized", "wrong token");
        goto done;
    }
    if (RAND_bytes(raw, sizeof raw) != 1) {
        http_reply_error(req, 503, "Service Unavailable", "no randomness for a session");
        goto done;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(value + 2 * i, 3, "%02x", raw[i]);
    for (size_t i = 0; i < WEB_SESSIONS; i++) { /* a free slot, else the oldest session */
        if (w->sessions[i].expires <= now) {
            slot = i;
            break;
        }
        if (w->sessions[i].expires < w->sessions[slot].expires)
            slot = i;
    }
    SHA256((const unsigned char *)value, 64, w->sessions[slot].digest);
    w->sessions[slot].expires = now + WEB_SESSION_TTL_MS;
    web_set_cookie(req, value, (long)(WEB_SESSION_TTL_MS / 1000));
    evhttp_send_reply(req, 204, "No Content", NULL);
done:
    json_decref(body);
}

/* POST /logout: forgets the session, clears the cookie. */
static void web_logout(struct admin_web *w, struct evhttp_request *req) {
    struct web_session *s;

    web_security_headers(req);
    if (!web_same_origin(req)) {
        http_reply_error(req, 403, "Forbidden", "sign out from the dashboard's own origin");
        return;
    }
    if ((s = web_find(w, req)) != NULL)
        memset(s, 0, sizeof *s);
    web_set_cookie(req, "", 0);
    evhttp_send_reply(req, 204, "No Content", NULL);
}

int admin_web_public(struct admin_web *w, struct evhttp_request *req, const char *path,
                     int method) {
    const struct admin_asset *a;

    if (strcmp(path, "/login") == 0 && method == EVHTTP_REQ_POST)
        web_login(w, req);
    else if (strcmp(path, "/logout") == 0 && method == EVHTTP_REQ_POST)
        web_logout(w, req);
    else if (strcmp(path, "/session") == 0 && method == EVHTTP_REQ_GET)
        http_reply_json(req, 200, "OK", json_pack("{sb}", "signed_in", web_find(w, req) != NULL));
    else if ((method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD) && (a = web_asset(path)))
        web_serve(req, a);
    else
        return 0;
    return 1;
}

/* ---- GET /api/rules ---- */

static int web_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .lua files of dir, sorted, as a new array (empty when unreadable). */
static json_t *web_rule_files(const char *dir) {
    json_t *arr = json_array();
    DIR *d = dir ? opendir(dir) : NULL;
    struct dirent *e;
    char *names[256];
    size_t n = 0, len;

    while (d && n < 256 && (e = readdir(d)) != NULL) {
        len = strlen(e->d_name);
        if (e->d_name[0] != '.' && len > 4 && strcmp(e->d_name + len - 4, ".lua") == 0 &&
            (names[n] = util_strdup(e->d_name)) != NULL)
            n++;
    }
    if (d)
        closedir(d);
    qsort(names, n, sizeof names[0], web_cmp);
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, json_string(names[i]));
        free(names[i]);
    }
    return arr;
}

static void web_rules(struct admin_web *w, struct evhttp_request *req) {
    const struct admin_deps *gw = w->deps;
    const struct config *cfg = rules_config(*gw->rules);
    struct admin_status st = {0};
    json_t *sources = json_array();
    char loaded[32];

    gw->status(gw->arg, &st);
    util_time_rfc3339(rules_loaded_at(*gw->rules), loaded, sizeof loaded);
    for (size_t i = 0; sources && i < cfg->nsources; i++)
        json_array_append_new(sources, json_string(cfg->sources[i].name));
    http_reply_json(req, 200, "OK",
                    json_pack("{s:s?, s:s, s:o, s:i, s:i, s:o, s:o}", "dir", cfg->rules_dir,
                              "loaded_at", loaded, "files", web_rule_files(cfg->rules_dir),
                              "reloads", st.reloads, "reload_failures", st.reload_failures,
                              "last_reload_error",
                              st.reload_error[0] ? json_string(st.reload_error) : json_null(),
                              "sources", sources ? sources : json_array()));
}

/* ---- POST /api/dryrun ---- */

/* A payload as the dry run shows it: its JSON value, else the text. */
static json_t *web_payload(const char *p, size_t len) {
    json_t *j = json_loadb(p, len, JSON_DECODE_ANY, NULL);
    return j ? j : json_stringn(p, len);
}

/* The sends of plan as `waybill route` prints them: {endpoint, window_ms,
 * payload, headers (+ key)} each. New. */
static json_t *web_plan_json(const struct rules_plan *plan) {
    json_t *dels = json_array(), *d, *hdrs;

    for (size_t i = 0; dels && i < plan->n; i++) {
        const struct rules_send *sd = &plan->sends[i];
        hdrs = sd->headers_json ? json_loads(sd->headers_json, 0, NULL) : NULL;
        if (!hdrs)
            hdrs = json_object();
        json_object_set_new(hdrs, "Content-Type", json_string(sd->content_type));
        d = json_pack("{s:s, s:I, s:o, s:o}", "endpoint", sd->endpoint, "window_ms",
                      (json_int_t)sd->window_ms, "payload",
                      web_payload(sd->payload, sd->payload_len), "headers", hdrs);
        if (d && (sd->key || sd->key_missing))
            json_object_set_new(d, "key", sd->key ? json_string(sd->key) : json_null());
        json_array_append_new(dels, d);
    }
    return dels ? dels : json_array();
}

/* Adapts body as source's and routes it with the rules loaded now; replies
 * {status, error, event: {type, source_id, data}, deliveries}. */
static void web_dryrun_run(struct admin_web *w, struct evhttp_request *req, const char *source,
                           const char *body, size_t len, const char *headers_json) {
    struct rules *r = *w->deps->rules;
    const struct config_source *src = config_source_by_name(rules_config(r), source);
    struct rules_event ev = {0};
    struct rules_plan plan = {0};
    char err[1024] = "", id[UTIL_ID_MAX], sid[UTIL_ID_MAX];
    int routed;

    if (!src) {
        http_reply_error(req, 400, "Bad Request", "no such source");
        return;
    }
    if (rules_adapt(r, src, body, len, headers_json ? headers_json : "{}", &ev, err, sizeof err)) {
        http_reply_json(req, 200, "OK",
                        json_pack("{s:s, s:s, s:n, s:[]}", "status", "adapter_error", "error", err,
                                  "event", "deliveries"));
        goto done;
    }
    util_id_new("evt_", id, sizeof id);
    util_id_new("dry_", sid, sizeof sid);
    struct rules_input in = {.id = id,
                             .source = source,
                             .source_id = ev.source_id ? ev.source_id : sid,
                             .type = ev.type,
                             .created_at = ev.created_at,
                             .received_at_ms = util_now_ms(),
                             .data_json = ev.data_json,
                             .shipment_json = ev.shipment_json,
                             .raw = body,
                             .raw_len = len,
                             .headers_json = headers_json ? headers_json : "{}"};
    routed = rules_route(r, &in, &plan, err, sizeof err);
    http_reply_json(req, 200, "OK",
                    json_pack("{s:s, s:s?, s:{s:s, s:s?, s:o}, s:o}", "status",
                              routed < 0    ? "rule_error"
                              : routed > 0  ? "partial"
                              : plan.n == 0 ? "unrouted"
                                            : "routed",
                              "error", routed ? err : NULL, "event", "type", ev.type, "source_id",
                              ev.source_id, "data", web_payload(ev.data_json, strlen(ev.data_json)),
                              "deliveries", web_plan_json(&plan)));
done:
    rules_plan_clear(&plan);
    rules_event_clear(&ev);
}

/* POST /api/dryrun {"source", "body"} (a carrier body as text) or
 * {"event_id"} (a stored event's raw body and headers): what the rules
 * loaded now would send; nothing is stored or sent. */
/* A dry run of a stored event, once its detail is read. */
static void web_on_dryrun_event(void *arg, const struct store_result *r) {
    struct web_read *c = arg;
    const struct store_event_row *ev = r->detail ? r->detail->ev : NULL;

    if (r->status < 0)
        http_reply_error(c->req, 503, "Service Unavailable", r->err);
    else if (!ev)
        http_reply_error(c->req, 404, "Not Found", "no such event");
    else
        web_dryrun_run(c->w, c->req, ev->source, ev->raw ? ev->raw : "", ev->raw_len,
                       ev->headers_json);
    free(c);
}

static void web_dryrun(struct admin_web *w, struct evhttp_request *req) {
    struct evbuffer *buf = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(buf);
    const char *p = (const char *)evbuffer_pullup(buf, -1);
    json_t *q = json_loadb(p ? p : "", len, 0, NULL);
    const char *event_id = json_string_value(json_object_get(q, "event_id"));
    const char *source = json_string_value(json_object_get(q, "source"));
    const char *body = json_string_value(json_object_get(q, "body"));
    struct web_read *c;

    if (event_id) {
        if (!(c = calloc(1, sizeof *c)) ||
            (c->w = w, c->req = req,
             store_read_event_detail(w->deps->store, event_id, web_on_dryrun_event, c) < 0)) {
            free(c);
            http_reply_error(req, 503, "Service Unavailable", "out of memory");
        }
    } else if (source && body) {
        web_dryrun_run(w, req, source, body, json_string_length(json_object_get(q, "body")), NULL);
    } else {
        http_reply_error(req, 400, "Bad Request",
                         "body must be {\"event_id\": \"evt_...\"} or {\"source\": NAME, "
                         "\"body\": TEXT}");
    }
    json_decref(q);
}

/* ---- GET /api/batches ---- */

/* The open batch windows: {endpoint, window_start, closes_at, items}. */
static void web_on_batches(void *arg, const struct store_result *r) {
    struct evhttp_request *req = arg;
    char t1[32], t2[32];
    json_t *arr;

    if (r->status < 0) {
        http_reply_error(req, 503, "Service Unavailable", r->err);
        return;
    }
    arr = json_array();
    for (size_t i = 0; arr && i < r->n; i++) {
        const struct store_batch_window *win = &r->windows[i];
        util_time_rfc3339(win->window_start, t1, sizeof t1);
        util_time_rfc3339(win->window_start + win->window_ms, t2, sizeof t2);
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:I, s:I}", "endpoint", win->endpoint,
                                             "window_start", t1, "closes_at", t2, "window_ms",
                                             (json_int_t)win->window_ms, "items",
                                             (json_int_t)win->items));
    }
    http_reply_json(req, 200, "OK", json_pack("{s:o}", "data", arr ? arr : json_array()));
}

static void web_batches(struct admin_web *w, struct evhttp_request *req) {
    if (store_read_batch_windows(w->deps->store, web_on_batches, req) < 0)
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
}

/* ---- GET /api/find?q= ---- */

#define WEB_FIND_MAX 20

/* The newest events (ids, up to WEB_FIND_MAX) whose id or carrier id is q
 * or whose data or shipment holds it (a tracking number, an order id). */
static void web_on_find(void *arg, const struct store_result *r) {
    struct evhttp_request *req = arg;
    json_t *arr;

    if (r->status < 0) {
        http_reply_error(req, 503, "Service Unavailable", r->err);
        return;
    }
    arr = json_array();
    for (size_t i = 0; arr && i < r->n; i++)
        json_array_append_new(arr, json_string(r->ids[i]));
    http_reply_json(req, 200, "OK", json_pack("{s:o}", "data", arr ? arr : json_array()));
}

static void web_find_events(struct admin_web *w, struct evhttp_request *req) {
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    struct evkeyvalq q;
    const char *text;

    TAILQ_INIT(&q);
    if (!query || evhttp_parse_query_str(query, &q) < 0 || !(text = evhttp_find_header(&q, "q")) ||
        strlen(text) < 3)
        http_reply_error(req, 400, "Bad Request", "q must be at least 3 characters");
    else if (store_read_events_find(w->deps->store, text, WEB_FIND_MAX, web_on_find, req) < 0)
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    evhttp_clear_headers(&q);
}

int admin_web_api(struct admin_web *w, struct evhttp_request *req, const char *path, int method) {
    if (strcmp(path, "/api/series") == 0 && method == EVHTTP_REQ_GET)
        web_series(w, req);
    else if (strcmp(path, "/api/rules") == 0 && method == EVHTTP_REQ_GET)
        web_rules(w, req);
    else if (strcmp(path, "/api/dryrun") == 0 && method == EVHTTP_REQ_POST)
        web_dryrun(w, req);
    else if (strcmp(path, "/api/batches") == 0 && method == EVHTTP_REQ_GET)
        web_batches(w, req);
    else if (strcmp(path, "/api/find") == 0 && method == EVHTTP_REQ_GET)
        web_find_events(w, req);
    else
        return 0;
    return 1;
}

struct admin_web *admin_web_new(const struct admin_deps *deps) {
    struct admin_web *w = calloc(1, sizeof *w);
    struct timeval tv = {WEB_SAMPLE_MS / 1000, 0};

    if (!w)
        return NULL;
    w->deps = deps;
    w->tick = event_new(deps->base, -1, EV_PERSIST, web_on_tick, w);
    if (!w->tick || event_add(w->tick, &tv) < 0) {
        admin_web_free(w);
        return NULL;
    }
    web_on_tick(-1, 0, w); /* the hour starts now */
    return w;
}

void admin_web_free(struct admin_web *w) {
    if (!w)
        return;
    if (w->tick)
        event_free(w->tick);
    free(w);
}

int admin_time_window(struct evkeyvalq *q, struct store_page *page, char *why, size_t whylen) {
    const char *names[2] = {"since", "until"};
    int *has[2] = {&page->has_since, &page->has_until};
    int64_t *at[2] = {&page->since, &page->until};

    for (int i = 0; i < 2; i++) {
        const char *v = evhttp_find_header(q, names[i]);
        if (!v)
            continue;
        if (util_time_parse(v, at[i]) < 0) {
            snprintf(why, whylen,
                     "%s must be an RFC 3339 time (2026-11-23T16:03:38Z) or Unix milliseconds",
                     names[i]);
            return -1;
        }
        *has[i] = 1;
    }
    if (page->has_since && page->has_until && page->until <= page->since) {
        snprintf(why, whylen, "until must be later than since");
        return -1;
    }
    return 0;
}
