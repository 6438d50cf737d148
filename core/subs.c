/* subs.c -- the subscription registry (see subs.h).
 * Several instances on one database (store_shared): a subscription made,
 * changed, rotated or deleted through another instance is in the store,
 * not in this mirror, so the app calls subs_poll every second: it reads
 * the stored list (asynchronously) and makes the mirror say the same,
 * through the same changed() notice a local change gives (routing and
 * delivery see it), writing and announcing nothing. Polling rather than
 * LISTEN/NOTIFY: LISTEN needs a session of its own on a direct connection
 * (through PgBouncer's transaction pooling it is lost with its
 * transaction), a reconnect would need a read anyway for what it missed,
 * and the read is one small statement per second per instance. An answer
 * older than a change mirrored here meanwhile is dropped (gen counts the
 * mirror's changes; the next poll reads again), and a local mirror of a
 * change a poll already brought is a no-op.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "subs.h"
#include "util.h"
#include "verify.h"

struct subs {
    struct subs_entry **v;
    size_t n, cap;
    void (*changed)(void *arg, const struct subs *subs); /* after every change */
    void *changed_arg;
    int loading;       /* subs_new: one notice at the end, not one per entry */
    unsigned gen;      /* bumped by every change of the list */
    unsigned poll_gen; /* gen when the poll out was made */
    int polling;       /* a subs_poll read is out */
    int freed;         /* subs_free ran while it was: its answer frees */
};

static void subs_entry_free(struct subs_entry *e) {
    if (!e)
        return;
    free(e->id);
    free(e->event);
    free(e->pattern);
    free(e->url);
    if (e->ep.secrets) {
        free(e->ep.secrets[0].key);
        free(e->ep.secrets);
    }
    free(e->ep.retry_ms);
    free(e->secret);
    free(e);
}

int subs_pattern(const char *event, char *out, size_t outlen, char *err, size_t errlen) {
    static const char *const alias[][2] = {
        {"track", "tracking.*"},
        {"batch", "batch.completed"},
        {"rate", "rate.updated"},
        {"carrier_connected", "carrier.connected"},
        {"sales_orders_imported", "order.imported"},
        {"order_source_refresh_complete", "store.refreshed"},
        {"report_complete", "report.completed"},
    };
    size_t len = event ? strlen(event) : 0;

    for (size_t i = 0; event && i < sizeof alias / sizeof alias[0]; i++) {
        if (strcmp(event, alias[i][0]) == 0) {
            snprintf(out, outlen, "%s", alias[i][1]);
            return 0;
        }
    }
    /* A waybill type or glob: dotted lower-case words, '*' anywhere. */
    if (len == 0 || len >= outlen || len > 128 || (strcmp(event, "*") != 0 && !strchr(event, '.')))
        goto bad;
    for (const char *c = event; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.' ||
              *c == '*' || *c == '-'))
            goto bad;
    memcpy(out, event, len + 1);
    return 0;
bad:
    snprintf(err, errlen,
             "event must be a waybill type or glob (e.g. \"tracking.*\") or a ShipEngine event "
             "(track, batch, rate, carrier_connected, sales_orders_imported, "
             "order_source_refresh_complete, report_complete)");
    return -1;
}

const struct subs_entry *subs_find(const struct subs *subs, const char *id) {
    for (size_t i = 0; subs && id && i < subs->n; i++)
        if (strcmp(subs->v[i]->id, id) == 0)
            return subs->v[i];
    return NULL;
}

const struct subs_entry *subs_find_pattern(const struct subs *subs, const char *pattern) {
    for (size_t i = 0; subs && pattern && i < subs->n; i++)
        if (strcmp(subs->v[i]->pattern, pattern) == 0)
            return subs->v[i];
    return NULL;
}

/* Tells the owner the list changed (it merges subs_config_list into the
 * config's endpoint table). */
static void subs_changed(struct subs *subs) {
    subs->gen++;
    if (subs->changed)
        subs->changed(subs->changed_arg, subs);
}

int subs_config_list(const struct subs *subs, struct config_subscription **out, size_t *n) {
    struct config_subscription *v = NULL;

    *out = NULL;
    *n = 0;
    if (!subs || !subs->n)
        return 0;
    if (!(v = calloc(subs->n, sizeof *v)))
        return -1;
    for (size_t i = 0; i < subs->n; i++) {
        v[i].ep = &subs->v[i]->ep;
        v[i].pattern = subs->v[i]->pattern;
    }
    *out = v;
    *n = subs->n;
    return 0;
}

int subs_add(struct subs *subs, const struct store_sub *sub) {
    struct subs_entry *e;
    size_t keylen = 0;

    if (subs_find(subs, sub->id))
        return 0; /* a poll brought the committed row first */
    if (!(e = calloc(1, sizeof *e)))
        return -1;
    e->id = util_strdup(sub->id);
    e->event = util_strdup(sub->event);
    e->pattern = util_strdup(sub->pattern);
    e->url = util_strdup(sub->url);
    e->secret = util_strdup(sub->secret);
    e->created_at = sub->created_at;
    e->ep.secrets = calloc(1, sizeof *e->ep.secrets);
    if (!e->id || !e->event || !e->pattern || !e->url || !e->secret || !e->ep.secrets ||
        config_endpoint_defaults(&e->ep) < 0)
        goto fail;
    e->ep.secrets[0].key = verify_whsec_decode(sub->secret, &keylen);
    if (!e->ep.secrets[0].key)
        goto fail;
    e->ep.secrets[0].len = keylen;
    e->ep.nsecrets = 1;
    e->ep.name = e->id; /* a subscription: the defaults, signed standard with its secret */
    e->ep.url = e->url;
    if (subs->n == subs->cap) {
        size_t ncap = subs->cap ? subs->cap * 2 : 8;
        struct subs_entry **p = realloc(subs->v, ncap * sizeof *p);
        if (!p)
            goto fail;
        subs->v = p;
        subs->cap = ncap;
    }
    subs->v[subs->n++] = e;
    if (!subs->loading)
        subs_changed(subs);
    return 0;
fail:
    subs_entry_free(e);
    return -1;
}

int subs_set_url(struct subs *subs, const char *id, const char *url) {
    struct subs_entry *e = (struct subs_entry *)subs_find(subs, id);
    char *u = util_strdup(url);
    if (!e || !u) {
        free(u);
        return -1;
    }
    free(e->url);
    e->url = e->ep.url = u;
    subs_changed(subs);
    return 0;
}

int subs_set_secret(struct subs *subs, const char *id, const char *secret) {
    struct subs_entry *e = (struct subs_entry *)subs_find(subs, id);
    char *sec = util_strdup(secret);
    size_t keylen = 0;
    unsigned char *key = secret ? verify_whsec_decode(secret, &keylen) : NULL;

    if (!e || !sec || !key) {
        free(sec);
        free(key);
        return -1;
    }
    /* the old key goes at once: no delivery is signed with it from here on */
    free(e->secret);
    e->secret = sec;
    free(e->ep.secrets[0].key);
    e->ep.secrets[0].key = key;
    e->ep.secrets[0].len = keylen;
    subs_changed(subs);
    return 0;
}

void subs_remove(struct subs *subs, const char *id) {
    for (size_t i = 0; i < subs->n; i++) {
        if (strcmp(subs->v[i]->id, id) == 0) {
            struct subs_entry *e = subs->v[i];
            memmove(&subs->v[i], &subs->v[i + 1], (subs->n - i - 1) * sizeof subs->v[0]);
            subs->n--;
            subs_changed(subs); /* out of the config's table before it is freed */
            subs_entry_free(e);
            return;
        }
    }
}

size_t subs_count(const struct subs *subs) {
    return subs ? subs->n : 0;
}

const struct subs_entry *subs_at(const struct subs *subs, size_t i) {
    return subs && i < subs->n ? subs->v[i] : NULL;
}

static void subs_load_one(void *arg, const struct store_sub *sub) {
    if (subs_add(arg, sub) < 0)
        log_msg(LOG_ERROR, "subscription %s could not be loaded", sub->id);
}

struct subs *subs_new(struct store *s, void (*changed)(void *arg, const struct subs *subs),
                      void *arg, char *err, size_t errlen) {
    struct subs *subs = calloc(1, sizeof *subs);

    if (!subs) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    subs->loading = 1;
    /* Synchronous, and the only such read left: subs_new runs at the start,
     * before the loop (no request waits, and the first deliveries need the
     * subscriptions); on PostgreSQL a blocking read there costs nobody.
     * Later changes come from the admin API's answers. */
    if (store_subs_load(s, subs_load_one, subs, err, errlen) < 0) {
        subs_free(subs);
        return NULL;
    }
    subs->loading = 0;
    subs->changed = changed;
    subs->changed_arg = arg;
    subs_changed(subs);
    return subs;
}

void subs_free(struct subs *subs) {
    size_t n;

    if (!subs)
        return;
    n = subs->n;
    subs->n = 0;
    if (n)
        subs_changed(subs); /* the owner's table lets go of them first */
    for (size_t i = 0; i < n; i++)
        subs_entry_free(subs->v[i]);
    free(subs->v);
    subs->v = NULL;
    subs->cap = 0;
    subs->changed = NULL;
    if (subs->polling) { /* the store still holds the poll's answer: it frees */
        subs->freed = 1;
        return;
    }
    free(subs);
}

/* ---- another instance's changes (a shared store) ---- */

static const struct store_sub *subs_stored(const struct store_done *d, const char *id) {
    for (size_t i = 0; i < d->nsubs; i++)
        if (!strcmp(d->subs[i].id, id))
            return &d->subs[i];
    return NULL;
}

/* Makes the mirror what the store holds (d): added, changed, removed. */
static void subs_follow(struct subs *subs, const struct store_done *d) {
    for (size_t i = 0; i < d->nsubs; i++) {
        const struct store_sub *st = &d->subs[i];
        const struct subs_entry *e = subs_find(subs, st->id);
        int rc = 0;

        if (!e) {
            rc = subs_add(subs, st);
            if (rc == 0)
                log_msg(LOG_INFO, "subscription %s added through another instance", st->id);
        } else {
            if (st->url && strcmp(e->url, st->url))
                rc |= subs_set_url(subs, st->id, st->url);
            if (st->secret && strcmp(e->secret, st->secret))
                rc |= subs_set_secret(subs, st->id, st->secret);
        }
        if (rc < 0)
            log_msg(LOG_ERROR, "subscription %s: out of memory following the store", st->id);
    }
    for (size_t i = subs->n; i-- > 0;) {
        if (i < subs->n && !subs_stored(d, subs->v[i]->id)) {
            log_msg(LOG_INFO, "subscription %s deleted through another instance", subs->v[i]->id);
            subs_remove(subs, subs->v[i]->id);
        }
    }
}

static void on_subs_polled(void *arg, const struct store_done *d) {
    struct subs *subs = arg;

    subs->polling = 0;
    if (subs->freed) {
        free(subs);
        return;
    }
    /* Older than a change mirrored here meanwhile: that one stands; the
     * next poll reads again. */
    if (!d->ok || subs->gen != subs->poll_gen)
        return;
    subs_follow(subs, d);
}

int subs_poll(struct subs *subs, struct store *s) {
    if (!subs || subs->polling || subs->freed)
        return 0;
    subs->poll_gen = subs->gen;
    if (store_get_subs(s, on_subs_polled, subs) < 0)
        return -1;
    subs->polling = 1;
    return 0;
}
