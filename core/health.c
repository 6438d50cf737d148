/* health.c -- endpoint state: the disabled set (a copy of the store's
 * flags), enable and disable, the 410 and disable_after rules, and the
 * events they emit. Writes go into the store's open group; a rolled-back
 * group makes it read the stored flags again (the store is the truth).
 * Ownership: the disabled names are owned copies; the config and store are
 * borrowed.
 * SPDX-License-Identifier: MIT */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "health.h"
#include "log.h"
#include "util.h"

/* Registered with store_on_written; detached (h = NULL) by health_free so a
 * later callback does nothing. The callback frees it. */
struct health_commit {
    struct health *h;
};

/* A disabled endpoint. */
struct health_off {
    char *name;
    struct health_off *next;
};

struct health {
    struct store *store;
    const struct config *cfg;     /* borrowed; NULL until health_set_config */
    struct health_off *off;       /* disabled endpoints */
    int loaded;                   /* the stored flags were read */
    struct health_commit *commit; /* outstanding store_on_written, or NULL */
    health_notify_fn notify;
    void *notify_arg;
    health_change_fn change;
    void *change_arg;
};

const char *health_fmt_delay(int64_t ms, char *buf, size_t len) {
    if (ms < 1000)
        snprintf(buf, len, "%" PRId64 "ms", ms);
    else if (ms < 120000)
        snprintf(buf, len, "%" PRId64 "s", (ms + 500) / 1000);
    else if (ms < 2 * 3600000)
        snprintf(buf, len, "%" PRId64 "m", (ms + 30000) / 60000);
    else
        snprintf(buf, len, "%" PRId64 "h", (ms + 1800000) / 3600000);
    return buf;
}

/* ---- the disabled set ---- */

static struct health_off **health_find(struct health *h, const char *name) {
    struct health_off **pp;

    for (pp = &h->off; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->name, name))
            return pp;
    return NULL;
}

int health_endpoint_disabled(const struct health *h, const char *name) {
    for (const struct health_off *o = h ? h->off : NULL; o; o = o->next)
        if (!strcmp(o->name, name))
            return 1;
    return 0;
}

/* Marks name disabled (1) or not (0) in memory. Returns 0, or -1 when out
 * of memory. */
static int health_mark(struct health *h, const char *name, int disabled) {
    struct health_off **pp = health_find(h, name), *o;

    if (!disabled) {
        if (pp) {
            o = *pp;
            *pp = o->next;
            free(o->name);
            free(o);
        }
        return 0;
    }
    if (pp)
        return 0;
    if (!(o = calloc(1, sizeof *o)) || !(o->name = strdup(name))) {
        free(o);
        return -1;
    }
    o->next = h->off;
    h->off = o;
    return 0;
}

static void health_clear(struct health *h) {
    while (h->off) {
        struct health_off *o = h->off;
        h->off = o->next;
        free(o->name);
        free(o);
    }
}

/* Reads the stored disabled flags, so a restart keeps endpoints disabled. */
static void health_load(struct health *h) {
    struct store_endpoint_state *st = NULL;
    size_t n = 0, i;
    char err[256];

    if (store_endpoint_states(h->store, &st, &n, err, sizeof err) < 0) {
        log_msg(LOG_ERROR, "reading endpoint states: %s", err);
        return;
    }
    for (i = 0; i < n; i++)
        if (st[i].disabled && health_mark(h, st[i].name, 1) < 0)
            log_msg(LOG_ERROR, "endpoint %s: out of memory keeping it disabled", st[i].name);
    store_endpoint_states_free(st, n);
    h->loaded = 1;
}

/* ---- the open group ---- */

static void health_commit_cb(void *arg, int ok) {
    struct health_commit *c = arg;
    struct health *h = c->h;

    free(c);
    if (!h)
        return; /* health_free ran */
    h->commit = NULL;
    if (ok)
        return;
    /* Memory may say an endpoint is enabled or disabled when the store
     * does not. */
    log_msg(LOG_WARN, "endpoint state changes were rolled back; reading the stored state again");
    health_clear(h);
    health_load(h);
    if (h->change)
        h->change(h->change_arg, NULL, 0);
}

/* Reads the stored state again if the open group rolls back. */
static void health_commit_watch(struct health *h) {
    struct health_commit *c;

    if (h->commit)
        return;
    if ((c = malloc(sizeof *c))) {
        c->h = h;
        if (store_on_written(h->store, health_commit_cb, c) == 0) {
            h->commit = c;
            return;
        }
        free(c);
    }
    /* cannot watch: whoever holds state looks at every endpoint now */
    if (h->change)
        h->change(h->change_arg, NULL, 0);
}

/* Hands an operational event to the notify hook (which takes data). */
static void health_emit(struct health *h, const char *type, json_t *data) {
    if (!data)
        return;
    if (h->notify)
        h->notify(h->notify_arg, type, data);
    else
        json_decref(data);
}

/* Disables name in the open group (its pending deliveries become held),
 * tells the change hook when hook is set, and announces it. Returns 0 or
 * -1 (logged). */
static int health_disable(struct health *h, const char *name, const char *reason, int hook) {
    char err[256];
    int64_t moved = 0;

    if (store_endpoint_set_disabled(h->store, name, 1, reason, util_now_ms(), &moved, err,
                                    sizeof err) < 0) {
        log_msg(LOG_ERROR, "endpoint %s: could not be disabled (%s): %s", name, reason, err);
        return -1;
    }
    if (health_mark(h, name, 1) < 0)
        log_msg(LOG_ERROR, "endpoint %s: out of memory keeping it disabled", name);
    if (hook && h->change)
        h->change(h->change_arg, name, 1);
    log_msg(LOG_WARN, "endpoint %s disabled: %s; %" PRId64 " deliveries held until it is enabled",
            name, reason, moved);
    health_emit(
        h, "waybill.endpoint.disabled",
        json_pack("{sssssI}", "endpoint", name, "reason", reason, "held", (json_int_t)moved));
    health_commit_watch(h);
    return 0;
}

/* ---- public ---- */

int health_endpoint_set_disabled(struct health *h, const char *name, int disabled,
                                 const char *reason, char *err, size_t errlen) {
    int64_t moved = 0;

    if (!h->cfg || !config_endpoint_by_name(h->cfg, name)) {
        snprintf(err, errlen, "no endpoint '%s' in the config", name);
        return -1;
    }
    if (disabled) {
        if (health_endpoint_disabled(h, name))
            return 0;
        if (health_disable(h, name, reason ? reason : "disabled by the admin API", 1) < 0) {
            snprintf(err, errlen, "the store could not record it");
            return -1;
        }
        return 0;
    }
    if (!health_endpoint_disabled(h, name))
        return 0;
    if (store_endpoint_set_disabled(h->store, name, 0, NULL, util_now_ms(), &moved, err, errlen) <
        0)
        return -1;
    health_mark(h, name, 0);
    if (h->change)
        h->change(h->change_arg, name, 0);
    log_msg(LOG_INFO, "endpoint %s enabled: %" PRId64 " held deliveries go out", name, moved);
    health_emit(h, "waybill.endpoint.enabled",
                json_pack("{sssI}", "endpoint", name, "released", (json_int_t)moved));
    health_commit_watch(h);
    return 0;
}

int health_attempt(struct health *h, const struct config_endpoint *cep, enum health_verdict v,
                   const char *error, int64_t now) {
    int64_t first = 0;
    char err[256], reason[160], text[32];

    if (store_endpoint_attempt(h->store, cep->name, v == HEALTH_OK, error, now, &first, err,
                               sizeof err) < 0)
        log_msg(LOG_WARN, "endpoint %s: health not stored: %s", cep->name, err);
    if (health_endpoint_disabled(h, cep->name))
        return 1;
    if (v == HEALTH_GONE) {
        snprintf(reason, sizeof reason, "answered 410 Gone");
        health_disable(h, cep->name, reason, 0);
    } else if (first && cep->disable_after_ms > 0 && now - first >= cep->disable_after_ms) {
        snprintf(reason, sizeof reason, "every attempt failed for %s",
                 health_fmt_delay(now - first, text, sizeof text));
        health_disable(h, cep->name, reason, 0);
    }
    return health_endpoint_disabled(h, cep->name);
}

void health_set_notify(struct health *h, health_notify_fn fn, void *arg) {
    h->notify = fn;
    h->notify_arg = arg;
}

void health_set_change_hook(struct health *h, health_change_fn fn, void *arg) {
    h->change = fn;
    h->change_arg = arg;
}

struct health *health_new(struct store *s, char *err, size_t errlen) {
    struct health *h = calloc(1, sizeof *h);

    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->store = s;
    health_load(h);
    return h;
}

void health_set_config(struct health *h, const struct config *cfg) {
    char err[256];

    /* An endpoint the old config had `enabled = false` and this one enables:
     * its held deliveries go out (unless it is disabled in the store too). */
    for (size_t i = 0; cfg && h->cfg && i < cfg->nendpoints; i++) {
        const struct config_endpoint *ep = &cfg->endpoints[i];
        const struct config_endpoint *was = config_endpoint_by_name(h->cfg, ep->name);
        if (was && !was->enabled && ep->enabled && !health_endpoint_disabled(h, ep->name) &&
            store_endpoint_set_disabled(h->store, ep->name, 0, NULL, util_now_ms(), NULL, err,
                                        sizeof err) < 0)
            log_msg(LOG_ERROR, "endpoint %s: releasing held deliveries: %s", ep->name, err);
    }
    h->cfg = cfg;
    if (!h->loaded)
        health_load(h);
}

void health_free(struct health *h) {
    if (!h)
        return;
    if (h->commit)
        h->commit->h = NULL; /* the store frees it when the group ends */
    health_clear(h);
    free(h);
}
