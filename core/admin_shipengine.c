/* admin_shipengine.c -- subscriptions through ShipEngine's webhook routes
 * (SPEC section 8): /v1/environment/webhooks as ShipEngine's published
 * OpenAPI description has them (npm shipengine-openapi: list_webhooks,
 * create_webhook, get_webhook_by_id, update_webhook, delete_webhook), so a
 * client written for ShipEngine works unchanged: a bare-array list, create
 * 200 with exactly {webhook_id,url,event}, update and delete 204, se-...
 * ids, ShipEngine's error shape. The signing secret, which that shape has
 * no field for, is read and rotated through /api/subscriptions
 * (admin_subs.c).
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/rand.h>

#include "admin_int.h"
#include "http.h"
#include "httpc.h"
#include "log.h"
#include "store.h"
#include "subs.h"
#include "util.h"
#include "verify.h"

#define SE_PREFIX "/v1/environment/webhooks"
#define SE_PROBE_TIMEOUT_MS 10000

/* ---- ShipEngine's error shape ---- */

/* A version 4 UUID, as ShipEngine's request_id. */
static void se_request_id(char out[37]) {
    unsigned char b[16] = {0};

    if (RAND_bytes(b, sizeof b) != 1)
        memset(b, 0, sizeof b); /* still a UUID's shape; only the OS entropy source fails */
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

static void se_error(struct evhttp_request *req, int code, const char *phrase, const char *type,
                     const char *ecode, const char *message) {
    char rid[37];

    se_request_id(rid);
    http_reply_json(req, code, phrase,
                    json_pack("{sss[{ssssssss}]}", "request_id", rid, "errors", "error_source",
                              "shipengine", "error_type", type, "error_code", ecode, "message",
                              message));
}

void admin_error(struct evhttp_request *req, int se, int code, const char *phrase,
                 const char *message) {
    const char *type = "system", *ecode = "unspecified";

    if (!se) {
        http_reply_error(req, code, phrase, message);
        return;
    }
    switch (code) {
    case 400:
    case 404:
    case 405:
        type = "validation";
        ecode = code == 404 ? "invalid_identifier" : "invalid_field_value";
        break;
    case 401:
        type = "security";
        ecode = "unauthorized";
        break;
    case 409:
        type = "business_rules";
        ecode = "webhook_event_type_conflict";
        break;
    case 422:
        type = "business_rules";
        ecode = "verification_failure";
        break;
    default:
        break;
    }
    se_error(req, code, phrase, type, ecode, message);
}

int admin_se_path(const char *path) {
    size_t n = strlen(SE_PREFIX);
    return strncmp(path, SE_PREFIX, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static void se_bad(struct evhttp_request *req, const char *msg) {
    admin_error(req, 1, 400, "Bad Request", msg);
}

static void se_not_found(struct evhttp_request *req) {
    admin_error(req, 1, 404, "Not Found", "no such webhook");
}

/* ---- the registry follows each committed change ---- */

enum se_op { SE_ADD, SE_URL, SE_DEL };

static void se_apply(struct admin_commit *c, enum se_op op) {
    struct subs *subs = c->adm->deps.subs;
    const struct subs_entry *e;

    if (op == SE_ADD && subs_add(subs, &c->sub) < 0)
        log_msg(LOG_ERROR, "subscription %s stored but not loaded (out of memory)", c->sub.id);
    else if (op == SE_URL && subs_set_url(subs, c->sub.id, c->sub.url) < 0)
        log_msg(LOG_ERROR, "subscription %s: new url stored but not loaded", c->sub.id);
    else if (op == SE_DEL)
        subs_remove(subs, c->sub.id);
    if (op == SE_ADD && (e = subs_find(subs, c->sub.id)))
        c->reply = admin_webhook_json(e);
}

static void se_apply_add(struct admin_commit *c) {
    se_apply(c, SE_ADD);
}

static void se_apply_url(struct admin_commit *c) {
    se_apply(c, SE_URL);
}

static void se_apply_del(struct admin_commit *c) {
    se_apply(c, SE_DEL);
}

/* ---- the verification POST ---- */

/* A verification POST in flight; the admin request waits for it. */
struct se_verify {
    struct admin *adm;
    struct evhttp_request *req;
    enum se_op op;        /* SE_ADD or SE_URL */
    struct store_sub sub; /* strings owned */
};

static void se_verify_free(struct se_verify *v) {
    admin_sub_clear(&v->sub);
    free(v);
}

struct se_hdrs {
    char lines[4][512];
    int n;
};

static void se_hdr_add(void *ctx, const char *name, const char *value) {
    struct se_hdrs *h = ctx;
    if (h->n < 4)
        snprintf(h->lines[h->n++], sizeof h->lines[0], "%s: %s", name, value);
}

static int se_add_check(struct admin_commit *c, int status) {
    if (status == STORE_DUP)
        admin_error(c->req, 1, 409, "Conflict", "that event already has a webhook");
    return status == STORE_DUP;
}

static int se_change_check(struct admin_commit *c, int status) {
    if (status == 0)
        se_not_found(c->req);
    return status == 0;
}

/* Stores v's change once its URL answered 200; the answer (a conflict, not
 * found, or the change) waits for the write's result and its commit. */
static void se_verify_store(struct se_verify *v) {
    struct store *st = v->adm->deps.store;
    struct admin_commit *c;

    /* create: 200 with the webhook; update: 204 (ShipEngine's statuses) */
    if (!(c = admin_commit_new(v->adm, v->req, v->op == SE_ADD ? 200 : 204,
                               v->op == SE_ADD ? "OK" : "No Content")))
        return;
    c->se = 1;
    c->apply = v->op == SE_ADD ? se_apply_add : se_apply_url;
    c->check = v->op == SE_ADD ? se_add_check : se_change_check;
    c->sub = v->sub; /* handoff of the strings */
    memset(&v->sub, 0, sizeof v->sub);
    admin_done_queued(c, v->op == SE_ADD
                             ? store_sub_put_done(st, &c->sub, admin_on_done, c)
                             : store_sub_change_done(st, c->sub.id, c->sub.url, admin_on_done, c));
}

static void se_verify_done(void *arg, int status_code, const char *reason) {
    struct se_verify *v = arg;
    char msg[600];

    /* shutting down: the request and v->adm are gone with the listener */
    if (status_code < 0)
        goto done;
    if (status_code != 200) {
        if (status_code)
            snprintf(msg, sizeof msg, "verification POST to %s answered %d, not 200", v->sub.url,
                     status_code);
        else
            snprintf(msg, sizeof msg, "verification POST to %s failed: %s", v->sub.url, reason);
        admin_error(v->req, 1, 422, "Unprocessable Entity", msg);
        goto done;
    }
    se_verify_store(v);
done:
    se_verify_free(v);
}

/* Sends v's verification POST, signed `standard` with the subscription's
 * secret; replies (503) and frees v when it cannot start. */
static void se_verify_start(struct se_verify *v) {
    const struct admin_deps *gw = &v->adm->deps;
    struct se_hdrs h = {0};
    struct verify_secret key = {NULL, 0};
    const char *lines[8];
    char msg_id[UTIL_ID_MAX], *body;
    json_t *msg;
    int n = 0, rc = -1;

    util_id_new("msg_", msg_id, sizeof msg_id);
    msg = json_pack("{sssssss{ssss}}", "type", "webhook.verification", "webhook_id", v->sub.id,
                    "event", v->sub.event, "data", "url", v->sub.url, "event", v->sub.event);
    body = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    key.key = verify_whsec_decode(v->sub.secret, &key.len);
    if (body && key.key &&
        verify_sign(SIGN_STANDARD, &key, 1, msg_id, util_now_ms() / 1000, body, strlen(body),
                    se_hdr_add, &h) == 0) {
        lines[n++] = "Content-Type: application/json";
        lines[n++] = "User-Agent: waybill/" WAYBILL_VERSION;
        lines[n++] = "X-Waybill-Event-Type: webhook.verification";
        for (int i = 0; i < h.n && n < 7; i++)
            lines[n++] = h.lines[i];
        lines[n] = NULL;
        rc = httpc_probe(gw->httpc, v->sub.url, body, strlen(body), lines, SE_PROBE_TIMEOUT_MS,
                         se_verify_done, v);
    }
    free(body);
    free(key.key);
    if (rc < 0) {
        admin_error(v->req, 1, 503, "Service Unavailable", "cannot send the verification POST");
        se_verify_free(v);
    }
}

/* ---- the routes ---- */

/* The body as an object holding only the fields named in allowed (a
 * ShipEngine schema's additionalProperties: false); new, or NULL after a
 * 400 in ShipEngine's shape. */
static json_t *se_body(struct evhttp_request *req, const char *const *allowed) {
    struct evbuffer *buf = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(buf);
    const char *p = (const char *)evbuffer_pullup(buf, -1), *k;
    json_error_t jerr;
    json_t *j = json_loadb(p ? p : "", len, 0, &jerr), *val;
    char msg[256];

    if (!j) {
        snprintf(msg, sizeof msg, "body is not valid JSON: %s", jerr.text);
        se_bad(req, msg);
        return NULL;
    }
    if (!json_is_object(j)) {
        se_bad(req, "body must be a JSON object");
        json_decref(j);
        return NULL;
    }
    json_object_foreach(j, k, val) {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], k) != 0)
            i++;
        if (!allowed[i] || !json_is_string(val)) {
            snprintf(msg, sizeof msg,
                     allowed[i] ? "%.64s must be a string"
                                : "%.64s is not a field of this request (secrets are rotated with "
                                  "POST /api/subscriptions/{id}/rotate)",
                     k);
            se_bad(req, msg);
            json_decref(j);
            return NULL;
        }
    }
    return j;
}

static int se_url_ok(const char *url) {
    return url && strlen(url) < 2048 && util_http_url_ok(url);
}

/* "se-" and 20 lower-case letters and digits: ShipEngine's se_id
 * (^se(-[a-z0-9]+)+$, at most 25 characters). 0, or -1 without randomness. */
static int se_id_new(char out[32]) {
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    unsigned char raw[20];

    if (RAND_bytes(raw, sizeof raw) != 1)
        return -1;
    memcpy(out, "se-", 3);
    for (size_t i = 0; i < sizeof raw; i++)
        out[3 + i] = digits[raw[i] % 36]; /* a slight bias, harmless in an id */
    out[3 + sizeof raw] = '\0';
    return 0;
}

/* A new "whsec_" secret of 24 random bytes; 0, or -1 without randomness. */
int admin_secret_new(char out[64]) {
    unsigned char raw[24];

    if (RAND_bytes(raw, sizeof raw) != 1)
        return -1;
    memcpy(out, "whsec_", 6);
    util_base64_encode(raw, sizeof raw, out + 6);
    return 0;
}

static void se_create(struct admin *adm, struct evhttp_request *req) {
    static const char *const fields[] = {"url", "event", NULL};
    json_t *body = se_body(req, fields);
    const char *url, *event;
    char pattern[160], err[512], id[32], secret[64];
    struct se_verify *v;

    if (!body)
        return;
    url = json_string_value(json_object_get(body, "url"));
    event = json_string_value(json_object_get(body, "event"));
    if (!se_url_ok(url)) {
        se_bad(req, "url must be an http:// or https:// URL");
        goto done;
    }
    if (!event) {
        se_bad(req, "event is required");
        goto done;
    }
    if (subs_pattern(event, pattern, sizeof pattern, err, sizeof err) < 0) {
        se_bad(req, err);
        goto done;
    }
    if (subs_find_pattern(adm->deps.subs, pattern)) {
        admin_error(req, 1, 409, "Conflict", "that event already has a webhook");
        goto done;
    }
    if (admin_secret_new(secret) < 0 || se_id_new(id) < 0) {
        admin_error(req, 1, 503, "Service Unavailable", "no randomness for an id or a secret");
        goto done;
    }
    if (!(v = calloc(1, sizeof *v)))
        goto oom;
    v->adm = adm;
    v->req = req;
    v->op = SE_ADD;
    v->sub.id = util_strdup(id);
    v->sub.event = util_strdup(event);
    v->sub.pattern = util_strdup(pattern);
    v->sub.url = util_strdup(url);
    v->sub.secret = util_strdup(secret);
    v->sub.created_at = util_now_ms();
    if (!v->sub.id || !v->sub.event || !v->sub.pattern || !v->sub.url || !v->sub.secret) {
        se_verify_free(v);
        goto oom;
    }
    se_verify_start(v);
    goto done;
oom:
    admin_error(req, 1, 503, "Service Unavailable", "out of memory");
done:
    json_decref(body);
}

static void se_update(struct admin *adm, struct evhttp_request *req, const char *id) {
    static const char *const fields[] = {"url", NULL};
    const struct subs_entry *e = subs_find(adm->deps.subs, id);
    json_t *body;
    const char *url;
    struct se_verify *v = NULL;

    if (!e) {
        se_not_found(req);
        return;
    }
    if (!(body = se_body(req, fields)))
        return;
    url = json_string_value(json_object_get(body, "url"));
    if (!url) {
        /* ShipEngine's update body has no required field: nothing to change */
        evhttp_send_reply(req, 204, "No Content", NULL);
        goto done;
    }
    if (!se_url_ok(url)) {
        se_bad(req, "url must be an http:// or https:// URL");
        goto done;
    }
    /* The new URL is verified like a new subscription's. */
    if ((v = calloc(1, sizeof *v))) {
        v->adm = adm;
        v->req = req;
        v->op = SE_URL;
        v->sub.id = util_strdup(e->id);
        v->sub.event = util_strdup(e->event);
        v->sub.pattern = util_strdup(e->pattern);
        v->sub.url = util_strdup(url);
        v->sub.secret = util_strdup(e->secret);
        v->sub.created_at = e->created_at;
    }
    if (!v || !v->sub.id || !v->sub.event || !v->sub.pattern || !v->sub.url || !v->sub.secret) {
        admin_error(req, 1, 503, "Service Unavailable", "out of memory");
        if (v)
            se_verify_free(v);
        goto done;
    }
    se_verify_start(v);
done:
    json_decref(body);
}

static void se_delete(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c;

    if (!subs_find(adm->deps.subs, id)) {
        se_not_found(req);
        return;
    }
    if (!(c = admin_commit_new(adm, req, 204, "No Content")))
        return;
    c->se = 1;
    c->apply = se_apply_del;
    c->check = se_change_check;
    c->sub.id = util_strdup(id);
    if (!c->sub.id) {
        admin_error(req, 1, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
        return;
    }
    admin_done_queued(c, store_sub_change_done(adm->deps.store, c->sub.id, NULL, admin_on_done, c));
}

int admin_se_dispatch(struct admin *adm, struct evhttp_request *req, const char *path, int method) {
    const struct subs_entry *e;
    json_t *list;
    char id[256];
    int has_id = admin_path_id(path, SE_PREFIX "/", "", id, sizeof id);

    if (!has_id && strcmp(path, SE_PREFIX) != 0)
        return 0;
    if (!has_id && method == EVHTTP_REQ_POST) {
        se_create(adm, req);
    } else if (!has_id && method == EVHTTP_REQ_GET) {
        if ((list = admin_webhooks_json(adm->deps.subs)))
            http_reply_json(req, 200, "OK", list);
        else
            admin_error(req, 1, 503, "Service Unavailable", "out of memory");
    } else if (has_id && method == EVHTTP_REQ_GET) {
        if ((e = subs_find(adm->deps.subs, id)))
            http_reply_json(req, 200, "OK", admin_webhook_json(e));
        else
            se_not_found(req);
    } else if (has_id && method == EVHTTP_REQ_PUT) {
        se_update(adm, req, id);
    } else if (has_id && method == EVHTTP_REQ_DELETE) {
        se_delete(adm, req, id);
    } else {
        admin_error(req, 1, 405, "Method Not Allowed", "method not allowed on this route");
    }
    return 1;
}
