/* gateway.c -- operations on the loop's one context: reload of config and
 * rules (SIGHUP, POST /api/reload) with the old generation kept on error.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "deliver.h"
#include "gateway.h"
#include "health.h"
#include "housekeep.h"
#include "httpc.h"
#include "log.h"
#include "route.h"
#include "rules.h"
#include "server.h"
#include "store.h"
#include "util.h"

static int differs(const char *a, const char *b) {
    if (!a || !b)
        return a != b;
    return strcmp(a, b) != 0;
}

int gateway_reload(struct gateway *gw, char *err, size_t errlen) {
    struct rules *fresh = rules_load(gw->config_path, gw->lua_dir, err, errlen);
    const struct config *old, *cfg;
    struct rules *stale;

    if (!fresh) {
        gw->reload_failures++;
        snprintf(gw->reload_error, sizeof gw->reload_error, "%s", err);
        log_msg(LOG_ERROR, "reload failed, keeping the current rules: %s", err);
        gateway_emit(gw, "waybill.reload.failed", json_pack("{ss}", "error", err));
        return -1;
    }
    old = rules_config(gw->rules);
    cfg = rules_config(fresh);
    if (differs(old->listen, cfg->listen) || differs(old->admin_listen, cfg->admin_listen) ||
        differs(old->tls_cert, cfg->tls_cert) || differs(old->tls_key, cfg->tls_key))
        log_msg(LOG_WARN, "reload: a changed listen/admin/tls address needs a restart; "
                          "still serving on the old one");
    if (differs(old->store, cfg->store))
        log_msg(LOG_WARN, "reload: a changed store needs a restart; still using %s", old->store);
    /* Endpoint state, the HTTP client, the sweeps, the delivery engine and
     * the listeners move to the new config before the old generation (which
     * owns the old config) is freed; endpoint state first, as it compares
     * the two. */
    health_set_config(gw->health, cfg);
    httpc_set_config(gw->httpc, cfg);
    housekeep_set_config(gw->housekeep, cfg);
    deliver_set_config(gw->deliver, cfg);
    stale = gw->rules;
    gw->rules = fresh;
    server_reconfigure(gw->server);
    rules_free(stale);
    gw->reloads++;
    gw->reload_error[0] = '\0';
    log_msg(LOG_INFO, "reloaded %s", gw->config_path);
    return 0;
}


void gateway_emit(void *arg, const char *type, json_t *data) {
    struct gateway *gw = arg;
    struct store_event ev = {0};
    char id[UTIL_ID_MAX], err[256], created[32];
    char *data_json = NULL, *raw = NULL;
    json_t *whole = NULL;
    int64_t now = util_now_ms();

    if (!gw->store || !gw->route || !data)
        goto done;
    util_id_new("evt_", id, sizeof id);
    util_time_rfc3339(now, created, sizeof created);
    data_json = json_dumps(data, JSON_COMPACT);
    whole = json_pack("{sssssssO}", "id", id, "type", type, "created_at", created, "data", data);
    raw = whole ? json_dumps(whole, JSON_COMPACT) : NULL;
    if (!data_json || !raw) {
        log_msg(LOG_ERROR, "%s: out of memory; not emitted", type);
        goto done;
    }
    ev.id = id;
    ev.source = "waybill";
    ev.source_id = id;
    ev.type = type;
    ev.created_at = created;
    ev.received_at = now;
    ev.raw = raw;
    ev.raw_len = strlen(raw);
    ev.headers_json = "{}";
    ev.data_json = data_json;
    ev.status = "received";
    if (store_event_put(gw->store, &ev, NULL, 0, err, sizeof err) != 0) {
        log_msg(LOG_ERROR, "%s: not stored: %s", type, err);
        goto done;
    }
    /* Routed in the same group: both commit or neither (recovery routes
     * it again if only the event made it). */
    struct rules_input in = {id, "waybill", id, type, created, now, data_json, raw, ev.raw_len,
                             "{}", 0, 0};
    route_event(gw->route, &in);
    log_msg(LOG_INFO, "event %s: %s", id, type);
done:
    free(data_json);
    free(raw);
    json_decref(whole);
    json_decref(data);
}
