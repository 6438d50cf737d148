/* health.c -- endpoint state: the disabled set (a copy of the store's
 * flags), enable and disable, the 410 and disable_after rules, and the
 * events they emit. Writes go into the store's open group; a rolled-back
 * group makes it read the stored flags again (the store is the truth).
 * Values only the store knows come with its answers, from the loop
 * (store.h, asynchronous write results): disable_after is decided from the
 * stored start of the run of failures once the attempt's count came back;
 * how many deliveries an enable or disable moved is logged and announced
 * once it is stored. The disabled set in memory changes at once (routing
 * and the scheduler act on it); only the first read of it, at the start,
 * is synchronous (before the loop runs).
 * Several instances on one database (store_shared): an enable or disable
 * made through another instance is in the store, not in this memory, so
 * the app calls health_poll every second, which reads the stored states
 * (asynchronously) and follows them: within about a second this instance
 * routes to the endpoint held (or pending again) and its scheduler drops
 * (or takes up) the endpoint, writing and announcing nothing (the other
 * instance did). Polling rather than LISTEN/NOTIFY: LISTEN needs a
 * session of its own on a direct connection (through PgBouncer's
 * transaction pooling a LISTEN is lost with its transaction), a missed
 * notification needs a read anyway after every reconnect, and the read
 * is one small statement per second per instance on the read connection.
 * An answer older than a change made here is not applied: gen counts the
 * changes of memory, and a poll is applied only when gen did not move
 * since it was made and no change of this instance is on its way to the
 * store (one not stored yet would be missing from the answer).
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
    int waiting;       /* store calls whose callback has not run (each holds h) */
    int freed;         /* health_free ran while some waited: the last one frees h */
    unsigned gen;      /* bumped by every change made through this instance */
    int changing;      /* this instance's enables/disables not stored yet */
    int polling;       /* a health_poll read is out */
    unsigned poll_gen; /* gen when it was made */
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

    h->gen++;
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
    h->gen++;
    while (h->off) {
        struct health_off *o = h->off;
        h->off = o->next;
        free(o->name);
        free(o);
    }
}

/* Marks the disabled ones of n stored states. */
static void health_mark_states(struct health *h, const struct store_endpoint_state *st, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (st[i].disabled && health_mark(h, st[i].name, 1) < 0)
            log_msg(LOG_ERROR, "endpoint %s: out of memory keeping it disabled", st[i].name);
}

/* Reads the stored disabled flags, so a restart keeps endpoints disabled:
 * synchronously, at the start (health_new, before the loop runs: no
 * request waits, and routing must know the disabled set from the first
 * event on) and after a rolled-back group (health_commit_cb). Otherwise, in
 * the loop, health_reload. */
static int health_load(struct health *h) {
    struct store_endpoint_state *st = NULL;
    size_t n = 0;
    char err[256];

    if (store_endpoint_states(h->store, &st, &n, err, sizeof err) < 0) {
        log_msg(LOG_ERROR, "reading endpoint states: %s", err);
        return -1;
    }
    health_clear(h);
    health_mark_states(h, st, n);
    store_endpoint_states_free(st, n);
    h->loaded = 1;
    return 0;
}

/* ---- store calls answered later ---- */

static void health_free_now(struct health *h);

/* One callback of h answered: returns h, or NULL when health_free ran
 * meanwhile (h freed here once the last one came back). */
static struct health *health_answered(struct health *h) {
    h->waiting--;
    if (!h->freed)
        return h;
    if (!h->waiting)
        health_free_now(h);
    return NULL;
}

static void on_states_read(void *arg, const struct store_done *d) {
    struct health *h = health_answered(arg);

    if (!h)
        return;
    if (!d->ok) {
        log_msg(LOG_ERROR, "reading endpoint states: %s", d->err);
        return;
    }
    /* The set is replaced only now: until the answer, the old one stands. */
    health_clear(h);
    health_mark_states(h, d->states, d->nstates);
    h->loaded = 1;
    if (h->change)
        h->change(h->change_arg, NULL, 0);
}

/* Reads the stored disabled flags again from the loop; the change hook is
 * told (name NULL) once they are in. */
static void health_reload(struct health *h) {
    if (store_get_endpoint_states(h->store, on_states_read, h) < 0) {
        log_msg(LOG_ERROR, "reading endpoint states: out of memory");
        return;
    }
    h->waiting++;
}

/* ---- another instance's changes (a shared store) ---- */

/* Makes memory say what the store says of name (disabled or not) when it
 * does not: another instance enabled or disabled it. The scheduler is told
 * as for a local change; nothing is written (that instance wrote it) and
 * nothing is announced (it announced it). */
static void health_follow(struct health *h, const char *name, int disabled) {
    if (health_endpoint_disabled(h, name) == disabled)
        return;
    if (health_mark(h, name, disabled) < 0) {
        log_msg(LOG_ERROR, "endpoint %s: out of memory keeping it disabled", name);
        return;
    }
    log_msg(LOG_INFO, "endpoint %s %s through another instance", name,
            disabled ? "disabled" : "enabled");
    if (h->change)
        h->change(h->change_arg, name, disabled);
}

static int health_states_have(const struct store_done *d, const char *name) {
    for (size_t i = 0; i < d->nstates; i++)
        if (d->states[i].disabled && !strcmp(d->states[i].name, name))
            return 1;
    return 0;
}

/* A poll's answer (arg: h; the generation at the call is h->poll_gen). */
static void on_poll_read(void *arg, const struct store_done *d) {
    struct health *h = health_answered(arg);
    struct health_off *o, *next;

    if (!h)
        return;
    h->polling = 0;
    /* Older than a change made here meanwhile: that change stands; the
     * next poll reads the store again. */
    if (!d->ok || h->gen != h->poll_gen || h->changing)
        return;
    for (size_t i = 0; i < d->nstates; i++)
        health_follow(h, d->states[i].name, d->states[i].disabled != 0);
    for (o = h->off; o; o = next) {
        next = o->next; /* health_follow may free o */
        if (!health_states_have(d, o->name))
            health_follow(h, o->name, 0);
    }
    h->loaded = 1;
}

int health_poll(struct health *h) {
    /* A change of this instance not stored yet would be missing from the
     * answer: the poll waits for it. */
    if (!h || h->polling || h->changing || h->freed)
        return 0;
    h->poll_gen = h->gen;
    if (store_get_endpoint_states(h->store, on_poll_read, h) < 0)
        return -1;
    h->waiting++;
    h->polling = 1;
    return 0;
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
    /* At once, not by an answer on a later group: until then memory would
     * hold the change the store does not, and an admin's second disable
     * would be answered 200 from memory with nothing written (seen:
     * test_endpoint_disable_answers_after_commit_and_503_when_store_locked,
     * 1 in 10 runs, 5 in 12 under ASan). A PostgreSQL store cannot read
     * synchronously: there, changes made while the read is out must be
     * written whatever memory says, and an answer older than them must not
     * replace them (issue 15). */
    if (health_load(h) < 0) {
        /* a store across the network reads from the loop only: memory
         * stands until the answer (health_reload) */
        health_reload(h);
        return;
    }
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

/* An enable or disable of name between its write and its group's end. */
struct health_change {
    struct health *h;
    int disabled;
    char *reason; /* disabled: why */
    char name[];
};

/* The change is stored (d->value: deliveries moved): logged and announced;
 * a rolled-back group is logged (health_commit_cb reads the store again). */
static void on_change_stored(void *arg, const struct store_done *d) {
    struct health_change *c = arg;
    struct health *h = health_answered(c->h);

    if (!h)
        goto done; /* health_free ran: nobody to announce it to */
    h->changing--;
    if (!d->ok) {
        log_msg(LOG_ERROR, "endpoint %s: could not be %s: %s", c->name,
                c->disabled ? "disabled" : "enabled", d->err);
        /* Memory goes back to what the store holds (a change is written
         * only when it differs from memory). SQLite's re-read after the
         * rollback would say the same; a database across the network
         * answers that read later, or not while it is down, and meanwhile
         * a second disable would be answered 200 from memory with nothing
         * written. */
        if (health_endpoint_disabled(h, c->name) == c->disabled) {
            if (health_mark(h, c->name, !c->disabled) < 0)
                log_msg(LOG_ERROR, "endpoint %s: out of memory", c->name);
            if (h->change)
                h->change(h->change_arg, c->name, !c->disabled);
        }
    } else if (c->disabled) {
        log_msg(LOG_WARN,
                "endpoint %s disabled: %s; %" PRId64 " deliveries held until it is enabled",
                c->name, c->reason, d->value);
        health_emit(h, "waybill.endpoint.disabled",
                    json_pack("{sssssI}", "endpoint", c->name, "reason", c->reason, "held",
                              (json_int_t)d->value));
    } else {
        log_msg(LOG_INFO, "endpoint %s enabled: %" PRId64 " held deliveries go out", c->name,
                d->value);
        health_emit(h, "waybill.endpoint.enabled",
                    json_pack("{sssI}", "endpoint", c->name, "released", (json_int_t)d->value));
    }
done:
    free(c->reason);
    free(c);
}

/* Writes name's enable or disable into the open group; the log line and
 * the event (with how many deliveries moved, known from the write's
 * result) follow from on_change_stored. Returns 0, or -1 when out of
 * memory (nothing written). */
static int health_store_change(struct health *h, const char *name, int disabled,
                               const char *reason) {
    size_t len = strlen(name) + 1;
    struct health_change *c = calloc(1, sizeof *c + len);

    if (!c || (reason && !(c->reason = strdup(reason)))) {
        free(c);
        return -1;
    }
    c->h = h;
    c->disabled = disabled;
    memcpy(c->name, name, len);
    if (store_endpoint_set_disabled_done(h->store, name, disabled, reason, util_now_ms(),
                                         on_change_stored, c) < 0) {
        free(c->reason);
        free(c);
        return -1;
    }
    h->waiting++;
    h->changing++;
    return 0;
}

/* Disables name in the open group (its pending deliveries become held),
 * tells the change hook when hook is set, and announces it once stored.
 * Returns 0 or -1 (logged). */
static int health_disable(struct health *h, const char *name, const char *reason, int hook) {
    if (health_store_change(h, name, 1, reason) < 0) {
        log_msg(LOG_ERROR, "endpoint %s: could not be disabled (%s): out of memory", name, reason);
        return -1;
    }
    if (health_mark(h, name, 1) < 0)
        log_msg(LOG_ERROR, "endpoint %s: out of memory keeping it disabled", name);
    if (hook && h->change)
        h->change(h->change_arg, name, 1);
    health_commit_watch(h);
    return 0;
}

/* ---- public ---- */

int health_endpoint_set_disabled(struct health *h, const char *name, int disabled,
                                 const char *reason, char *err, size_t errlen) {
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
    if (health_store_change(h, name, 0, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    health_mark(h, name, 0);
    if (h->change)
        h->change(h->change_arg, name, 0);
    health_commit_watch(h);
    return 0;
}

/* An attempt's count between its write and its group's end. */
struct health_count {
    struct health *h;
    int64_t now;
    char name[];
};

/* disable_after, from the stored start of the endpoint's run of failures
 * (d->value): decided only once that value is known, for the endpoint as
 * the config has it then. The caller of health_attempt holds no answer any
 * more: the change hook is told. */
static void on_attempt_counted(void *arg, const struct store_done *d) {
    struct health_count *k = arg;
    struct health *h = health_answered(k->h);
    const struct config_endpoint *cep;
    int64_t first = d->value;
    char reason[160], text[32];

    if (!h)
        goto done;
    if (!d->ok) {
        log_msg(LOG_WARN, "endpoint %s: health not stored: %s", k->name, d->err);
        goto done;
    }
    cep = h->cfg ? config_endpoint_by_name(h->cfg, k->name) : NULL;
    if (!cep || health_endpoint_disabled(h, k->name) || !first || cep->disable_after_ms <= 0 ||
        k->now - first < cep->disable_after_ms)
        goto done;
    snprintf(reason, sizeof reason, "every attempt failed for %s",
             health_fmt_delay(k->now - first, text, sizeof text));
    health_disable(h, k->name, reason, 1);
done:
    free(k);
}

int health_attempt(struct health *h, const struct config_endpoint *cep, enum health_verdict v,
                   const char *error, int64_t now) {
    size_t len = strlen(cep->name) + 1;
    struct health_count *k = malloc(sizeof *k + len);
    char reason[160];

    if (k) {
        k->h = h;
        k->now = now;
        memcpy(k->name, cep->name, len);
    }
    if (!k || store_endpoint_attempt_done(h->store, cep->name, v == HEALTH_OK, error, now,
                                          on_attempt_counted, k) < 0) {
        log_msg(LOG_WARN, "endpoint %s: health not stored: out of memory", cep->name);
        free(k);
    } else {
        h->waiting++;
    }
    if (health_endpoint_disabled(h, cep->name))
        return 1;
    if (v == HEALTH_GONE) { /* the answer itself says so: no stored value needed */
        snprintf(reason, sizeof reason, "answered 410 Gone");
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
    (void)health_load(h);
    return h;
}

/* Held deliveries of an endpoint the config enabled again: released. */
static void on_released(void *arg, const struct store_done *d) {
    if (health_answered(arg) && !d->ok)
        log_msg(LOG_ERROR, "releasing held deliveries: %s", d->err);
}

void health_set_config(struct health *h, const struct config *cfg) {

    /* An endpoint the old config had `enabled = false` and this one enables:
     * its held deliveries go out (unless it is disabled in the store too). */
    for (size_t i = 0; cfg && h->cfg && i < cfg->nendpoints; i++) {
        const struct config_endpoint *ep = &cfg->endpoints[i];
        const struct config_endpoint *was = config_endpoint_by_name(h->cfg, ep->name);
        if (was && !was->enabled && ep->enabled && !health_endpoint_disabled(h, ep->name) &&
            store_endpoint_set_disabled_done(h->store, ep->name, 0, NULL, util_now_ms(),
                                             on_released, h) == 0)
            h->waiting++;
    }
    h->cfg = cfg;
    if (!h->loaded)
        health_reload(h);
}

static void health_free_now(struct health *h) {
    health_clear(h);
    free(h);
}

void health_free(struct health *h) {
    if (!h)
        return;
    if (h->commit)
        h->commit->h = NULL; /* the store frees it when the group ends */
    h->commit = NULL;
    h->notify = NULL;
    h->change = NULL;
    if (h->waiting) { /* the store still holds answers for h: the last frees it */
        h->freed = 1;
        return;
    }
    health_free_now(h);
}
