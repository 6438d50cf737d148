/* gateway.c -- operations on the loop's one context: reload of config and
 * rules (SIGHUP, POST /api/reload) with the old generation kept on error.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "deliver.h"
#include "gateway.h"
#include "log.h"
#include "rules.h"
#include "server.h"

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
    /* The delivery engine and listeners move to the new config before the
     * old generation (which owns the old config) is freed. */
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

