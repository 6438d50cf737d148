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
#include "deliver.h"
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

static int admin_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* GET /api/endpoints: every configured endpoint with its health (SPEC 8). */
static void admin_endpoints(struct admin *adm, struct evhttp_request *req) {
    const struct config *cfg = rules_config(adm->gw->rules);
    struct store_endpoint_state *st = NULL;
    size_t n = 0, i, k;
    char err[256], t1[32], t2[32];
    json_t *list = json_array();

    if (store_endpoint_states(adm->gw->store, &st, &n, err, sizeof err) < 0) {
        json_decref(list);
        server_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    for (i = 0; i < cfg->nendpoints; i++) {
        const struct config_endpoint *ep = &cfg->endpoints[i];
        const struct store_endpoint_state *e = NULL;
        json_t *rate = json_null(), *o;
        for (k = 0; k < n; k++)
            if (!strcmp(st[k].name, ep->name))
                e = &st[k];
        if (e && e->ok + e->failed > 0)
            rate = json_real((double)e->ok / (double)(e->ok + e->failed));
        if (e && e->disabled_at)
            util_time_rfc3339(e->disabled_at, t1, sizeof t1);
        if (e && e->last_error_at)
            util_time_rfc3339(e->last_error_at, t2, sizeof t2);
        o = json_pack("{sssssbsbsosIsIsIsIsisbss?ss?ss?ss?}", "name", ep->name, "url", ep->url,
                      "enabled", ep->enabled && !(e && e->disabled), "disabled",
                      !ep->enabled || (e && e->disabled), "success_rate", rate, "attempts_ok",
                      (json_int_t)(e ? e->ok : 0), "attempts_failed",
                      (json_int_t)(e ? e->failed : 0), "pending", (json_int_t)(e ? e->pending : 0),
                      "held", (json_int_t)(e ? e->held : 0), "concurrency", ep->concurrency,
                      "ordered", ep->ordered, "disabled_reason",
                      !ep->enabled ? "enabled = false in the config" : e ? e->reason : NULL,
                      "disabled_at", e && e->disabled_at ? t1 : NULL, "last_error",
                      e ? e->last_error : NULL, "last_error_at", e && e->last_error_at ? t2 : NULL);
        if (o && ep->rate > 0)
            json_object_set_new(o, "rate", json_real(ep->rate));
        json_array_append_new(list, o);
    }
    store_endpoint_states_free(st, n);
    server_reply_json(req, 200, "OK", json_pack("{soss?}", "data", list, "next", NULL));
}

/* POST /api/endpoints/{name}/enable and .../disable. */
static void admin_endpoint_switch(struct admin *adm, struct evhttp_request *req, const char *rest) {
    const struct config *cfg = rules_config(adm->gw->rules);
    const struct config_endpoint *ep;
    const char *slash = strchr(rest, '/');
    char name[256], err[256];
    int disable;

    if (!slash || (size_t)(slash - rest) >= sizeof name || slash == rest ||
        (strcmp(slash, "/enable") && strcmp(slash, "/disable"))) {
        server_reply_error(req, 404, "Not Found", "no such route");
        return;
    }
    memcpy(name, rest, (size_t)(slash - rest));
    name[slash - rest] = '\0';
    disable = !strcmp(slash, "/disable");
    if (!(ep = config_endpoint_by_name(cfg, name))) {
        server_reply_error(req, 404, "Not Found", "no such endpoint");
        return;
    }
    if (!disable && !ep->enabled) {
        server_reply_error(req, 409, "Conflict",
                           "the endpoint has enabled = false in the config; change it and reload");
        return;
    }
    if (deliver_endpoint_set_disabled(adm->gw->deliver, name, disable,
                                      disable ? "disabled by the admin API" : NULL, err,
                                      sizeof err) < 0) {
        server_reply_error(req, 503, "Service Unavailable", err);
        return;
    }
    server_reply_json(req, 200, "OK",
                      json_pack("{sssb}", "name", name, "disabled",
                                deliver_endpoint_disabled(adm->gw->deliver, name)));
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
    } else if (strcmp(path, "/api/endpoints") == 0 && m == EVHTTP_REQ_GET) {
        admin_endpoints(adm, req);
    } else if (strncmp(path, "/api/endpoints/", 15) == 0 && m == EVHTTP_REQ_POST &&
               (admin_ends_with(path, "/enable") || admin_ends_with(path, "/disable"))) {
        admin_endpoint_switch(adm, req, path + 15);
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
