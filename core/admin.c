/* admin.c -- the admin API (SPEC section 8) on its own listener: bearer
 * token checked in constant time on every route but /healthz; JSON in and
 * out; one-line errors.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/sha.h>

#include "admin.h"
#include "config.h"
#include "gateway.h"
#include "rules.h"
#include "server.h"
#include "store.h"
#include "util.h"

struct admin {
    struct gateway *gw;
    struct evhttp *http;
};

/* Constant-time token check: compares digests, so neither content nor
 * length leaks through timing. */
static int admin_authorized(const struct config *cfg, struct evhttp_request *req) {
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];

    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !cfg->admin_token)
        return 0;
    auth += 7;
    SHA256((const unsigned char *)cfg->admin_token, strlen(cfg->admin_token), want);
    SHA256((const unsigned char *)auth, strlen(auth), got);
    return util_ct_equal(want, got, sizeof want);
}

static void admin_status(struct admin *adm, struct evhttp_request *req) {
    struct gateway *gw = adm->gw;
    struct store_counts c = {0};
    char loaded[32];

    util_time_rfc3339(rules_loaded_at(gw->rules), loaded, sizeof loaded);
    if (store_delivery_counts(gw->store, &c) < 0) {
        server_reply_error(req, 503, "Service Unavailable", "store unavailable");
        return;
    }
    json_t *queue = json_pack("{sIsIsIsI}", "pending", (json_int_t)c.pending, "held",
                              (json_int_t)c.held, "failed", (json_int_t)c.failed, "delivered",
                              (json_int_t)c.delivered);
    json_t *last_error = gw->reload_error[0] ? json_string(gw->reload_error) : json_null();
    server_reply_json(req, 200, "OK",
               json_pack("{sssIsssisisoso}", "version", WAYBILL_VERSION, "uptime_s",
                         (json_int_t)((util_now_ms() - gw->started_at) / 1000), "rules_loaded_at",
                         loaded, "reloads", gw->reloads, "reload_failures", gw->reload_failures,
                         "last_reload_error", last_error, "queue", queue));
}

static void admin_event(struct admin *adm, struct evhttp_request *req, const char *id) {
    char err[256] = "";
    json_t *ev = store_event_json(adm->gw->store, id, err, sizeof err);

    if (ev)
        server_reply_json(req, 200, "OK", ev);
    else if (err[0])
        server_reply_error(req, 503, "Service Unavailable", err);
    else
        server_reply_error(req, 404, "Not Found", "no such event");
}

static void admin_reload(struct admin *adm, struct evhttp_request *req) {
    char err[512];
    char loaded[32];

    if (gateway_reload(adm->gw, err, sizeof err) < 0) {
        server_reply_error(req, 422, "Unprocessable Entity", err);
        return;
    }
    util_time_rfc3339(rules_loaded_at(adm->gw->rules), loaded, sizeof loaded);
    server_reply_json(req, 200, "OK", json_pack("{sbss}", "ok", 1, "rules_loaded_at", loaded));
}

static void on_admin(struct evhttp_request *req, void *arg) {
    struct admin *adm = arg;
    const struct config *cfg = rules_config(adm->gw->rules);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type m = evhttp_request_get_command(req);

    if (!path)
        path = "";
    if (strcmp(path, "/healthz") == 0) {
        if (store_ping(adm->gw->store))
            server_reply_json(req, 200, "OK", json_pack("{sb}", "ok", 1));
        else
            server_reply_error(req, 503, "Service Unavailable", "store does not answer");
        return;
    }
    if (!admin_authorized(cfg, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        server_reply_error(req, 401, "Unauthorized", "missing or wrong bearer token");
        return;
    }
    if (strcmp(path, "/api/status") == 0 && m == EVHTTP_REQ_GET) {
        admin_status(adm, req);
    } else if (strncmp(path, "/api/events/", 12) == 0 && path[12] && !strchr(path + 12, '/') &&
               m == EVHTTP_REQ_GET) {
        admin_event(adm, req, path + 12);
    } else if (strcmp(path, "/api/reload") == 0 && m == EVHTTP_REQ_POST) {
        admin_reload(adm, req);
    } else {
        server_reply_error(req, 404, "Not Found", "no such route");
    }
}

struct admin *admin_new(struct gateway *gw, const char *listen, char *err, size_t errlen) {
    struct admin *adm = calloc(1, sizeof *adm);
    struct evhttp_bound_socket *sock;

    if (!adm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    adm->gw = gw;
    adm->http = server_listener_new(gw->base, listen, &sock, err, errlen);
    if (!adm->http) {
        free(adm);
        return NULL;
    }
    evhttp_set_gencb(adm->http, on_admin, adm);
    evhttp_set_max_body_size(adm->http, 1 << 20);
    return adm;
}

void admin_free(struct admin *adm) {
    if (!adm)
        return;
    evhttp_free(adm->http);
    free(adm);
}
