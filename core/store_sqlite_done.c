/* store_sqlite_done.c -- store.h's asynchronous write results on SQLite (issue
 * 15): each call runs the synchronous write (or read) at once, as today,
 * and holds its value until the group it went into ends: the commit
 * callback (store_on_commit for a durable answer, store_on_written for
 * work that only needs the rows committed) hands it over. A PostgreSQL
 * store hands the same values over when the group's round trip comes back;
 * callers written for this shape work with both.
 * Invariants: a held answer owns its rows until its callback returned;
 * every call that returned 0 is answered exactly once, from the loop
 * (store_flush and store_free run the commit callbacks, so a shutdown
 * answers them all); a call that returned -1 left nothing in the group.
 * SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "store_int.h"
#include "store_sqlite_int.h"

/* One answer held until its group ends; owns its rows. */
struct store_held {
    store_done_fn fn;
    void *arg;
    int rc;   /* what the synchronous call returned (its status when >= 0) */
    int read; /* a read: ok is the read's, whatever the group does */
    char err[256];
    char id[UTIL_ID_MAX];
    int64_t value;
    struct store_prune prune;
    int has_prune;
    struct store_event_row *rows;
    size_t n;
    struct store_endpoint_state *states;
    size_t nstates;
    struct store_sub *subs; /* store_get_subs: owned copies */
    size_t nsubs, capsubs;
};

static void held_subs_free(struct store_held *h) {
    for (size_t i = 0; i < h->nsubs; i++) {
        free((char *)h->subs[i].id);
        free((char *)h->subs[i].event);
        free((char *)h->subs[i].pattern);
        free((char *)h->subs[i].url);
        free((char *)h->subs[i].secret);
    }
    free(h->subs);
}

static void held_free(struct store_held *h) {
    store_event_rows_free(h->rows, h->n);
    store_endpoint_states_free(h->states, h->nstates);
    held_subs_free(h);
    free(h);
}

/* The group ended (ok: committed): hands the value over, then frees h. */
static void held_cb(void *arg, int ok) {
    struct store_held *h = arg;
    struct store_done d = {0};

    d.ok = h->rc >= 0 && (h->read || ok);
    d.status = d.ok ? h->rc : 0;
    if (d.ok)
        d.err = "";
    else if (h->rc < 0)
        d.err = h->err[0] ? h->err : "store: the write failed";
    else
        d.err = "store: the group was rolled back";
    d.id = h->id;
    d.value = h->value;
    d.prune = h->has_prune ? &h->prune : NULL;
    d.rows = h->rows;
    d.n = h->n;
    d.states = h->states;
    d.nstates = h->nstates;
    d.subs = h->subs;
    d.nsubs = h->nsubs;
    h->fn(h->arg, &d);
    held_free(h);
}

/* A new answer for fn(arg), or NULL when out of memory. */
static struct store_held *held_new(store_done_fn fn, void *arg) {
    struct store_held *h = calloc(1, sizeof *h);
    if (h) {
        h->fn = fn;
        h->arg = arg;
    }
    return h;
}

/* Holds h until the open group ends: durable (store_on_commit) or written
 * (store_on_written). Returns 0, or -1 when out of memory: h is freed and
 * a write already made fails the group, so nothing of it commits unheard. */
static int held_queue(struct store_sq *s, struct store_held *h, int durable) {
    int rc =
        durable ? store_sqlite_on_commit(s, held_cb, h) : store_sqlite_on_written(s, held_cb, h);

    if (rc == 0) {
        /* An answer that does not hang on the group (a read, or a write
         * that failed: ok is 0 whatever the group does) must not pin a
         * group whose BEGIN failed: a carrier's retry in the same loop turn
         * still starts afresh (store_group_begin). */
        if (s->begin_failed && (h->read || h->rc < 0)) {
            s->fail_ncbs = s->ncbs;
            s->fail_nwcbs = s->nwcbs;
        }
        return 0;
    }
    if (h->rc >= 0 && !h->read)
        store_group_fail(s, "out of memory", NULL, 0);
    held_free(h);
    return -1;
}

/* ---- writes ---- */

int store_sqlite_event_put_done(struct store_sq *s, const struct store_event *ev,
                                struct store_plan *plan, store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_event_put(s, ev, plan, h->id, sizeof h->id, h->err, sizeof h->err);
    if (h->rc == 0)
        snprintf(h->id, sizeof h->id, "%s", ev->id);
    return held_queue(s, h, 1);
}

int store_sqlite_nonce_put_done(struct store_sq *s, const char *source, const char *nonce,
                                const char *digest, int64_t now_ms, int64_t keep_ms,
                                store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc =
        store_sqlite_nonce_put(s, source, nonce, digest, now_ms, keep_ms, h->err, sizeof h->err);
    return held_queue(s, h, 0);
}

int store_sqlite_event_routed_done(struct store_sq *s, const char *event_id,
                                   struct store_plan *plan, store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_event_routed(s, event_id, plan, h->err, sizeof h->err);
    /* An unknown id writes nothing and keeps the group (open, not failed):
     * an answer, 0; a failure fails the group or never began it. */
    if (h->rc == 0)
        h->rc = 1;
    else if (h->rc == STORE_ROUTED_ALREADY)
        ; /* nothing written: the answer as it is */
    else if (s->in_txn && !s->failed)
        h->rc = 0;
    return held_queue(s, h, 0);
}

int store_sqlite_delivery_retry_done(struct store_sq *s, const char *id, int64_t next_at,
                                     store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_delivery_retry(s, id, next_at, h->err, sizeof h->err);
    return held_queue(s, h, 1);
}

int store_sqlite_delivery_skip_done(struct store_sq *s, const char *id, int64_t now,
                                    store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_delivery_skip(s, id, now, h->err, sizeof h->err);
    return held_queue(s, h, 1);
}

int store_sqlite_sub_put_done(struct store_sq *s, const struct store_sub *sub, store_done_fn fn,
                              void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_sub_put(s, sub, h->err, sizeof h->err);
    return held_queue(s, h, 1);
}

int store_sqlite_sub_change_done(struct store_sq *s, const char *id, const char *url,
                                 store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_sub_change(s, id, url, h->err, sizeof h->err);
    return held_queue(s, h, 1);
}

int store_sqlite_sub_set_secret_done(struct store_sq *s, const char *id, const char *secret,
                                     store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_sub_set_secret(s, id, secret, h->err, sizeof h->err);
    return held_queue(s, h, 1);
}

int store_sqlite_endpoint_attempt_done(struct store_sq *s, const char *name, int ok,
                                       const char *error, int64_t now, store_done_fn fn,
                                       void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc =
        store_sqlite_endpoint_attempt(s, name, ok, error, now, &h->value, h->err, sizeof h->err);
    return held_queue(s, h, 0);
}

int store_sqlite_endpoint_set_disabled_done(struct store_sq *s, const char *name, int disabled,
                                            const char *reason, int64_t now, store_done_fn fn,
                                            void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->rc = store_sqlite_endpoint_set_disabled(s, name, disabled, reason, now, &h->value, h->err,
                                               sizeof h->err);
    return held_queue(s, h, 1);
}

int store_sqlite_prune_done(struct store_sq *s, const struct store_prune *p, store_done_fn fn,
                            void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->prune = *p;
    h->has_prune = 1;
    h->rc = store_sqlite_prune(s, &h->prune, h->err, sizeof h->err);
    return held_queue(s, h, 0);
}

int store_sqlite_reclaim_done(struct store_sq *s, int64_t keep_pages, int step_pages,
                              store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    int freed = 0;
    if (!h)
        return -1;
    h->rc = store_sqlite_reclaim(s, keep_pages, step_pages, &freed, h->err, sizeof h->err);
    h->value = freed;
    return held_queue(s, h, 0);
}

/* ---- the loop's reads ---- */

int store_sqlite_get_events_unrouted(struct store_sq *s, int64_t after_seq, size_t max,
                                     store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->read = 1;
    h->rc = store_sqlite_events_unrouted(s, after_seq, max, &h->rows, &h->n, h->err, sizeof h->err);
    if (h->rc < 0) { /* nothing kept on failure */
        h->rows = NULL;
        h->n = 0;
    }
    return held_queue(s, h, 0);
}

int store_sqlite_get_event(struct store_sq *s, const char *id, store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->read = 1;
    h->rc = store_sqlite_event_get(s, id, &h->rows, h->err, sizeof h->err);
    h->n = h->rc == 1 && h->rows ? 1 : 0;
    if (!h->n) {
        store_event_rows_free(h->rows, 1);
        h->rows = NULL;
    }
    return held_queue(s, h, 0);
}

/* One subscription copied into the held answer (rc -1 when out of memory). */
static void held_sub(void *arg, const struct store_sub *sub) {
    struct store_held *h = arg;
    struct store_sub *c;

    if (h->rc < 0)
        return;
    if (h->nsubs == h->capsubs) {
        size_t ncap = h->capsubs ? 2 * h->capsubs : 8;
        struct store_sub *v = realloc(h->subs, ncap * sizeof *v);
        if (!v)
            goto oom;
        h->subs = v;
        h->capsubs = ncap;
    }
    c = &h->subs[h->nsubs++];
    *c = *sub;
    c->id = util_strdup(sub->id);
    c->event = util_strdup(sub->event);
    c->pattern = util_strdup(sub->pattern);
    c->url = util_strdup(sub->url);
    c->secret = util_strdup(sub->secret);
    if (c->id && c->event && c->pattern && c->url && c->secret)
        return;
oom:
    h->rc = -1;
    snprintf(h->err, sizeof h->err, "store: out of memory");
}

int store_sqlite_get_subs(struct store_sq *s, store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->read = 1;
    if (store_sqlite_subs_load(s, held_sub, h, h->err, sizeof h->err) < 0)
        h->rc = -1;
    if (h->rc < 0) {
        held_subs_free(h);
        h->subs = NULL;
        h->nsubs = 0;
    }
    return held_queue(s, h, 0);
}

int store_sqlite_get_endpoint_states(struct store_sq *s, store_done_fn fn, void *arg) {
    struct store_held *h = held_new(fn, arg);
    if (!h)
        return -1;
    h->read = 1;
    h->rc = store_sqlite_endpoint_states(s, &h->states, &h->nstates, h->err, sizeof h->err);
    if (h->rc < 0) {
        h->states = NULL;
        h->nstates = 0;
    }
    return held_queue(s, h, 0);
}
