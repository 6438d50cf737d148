/* store.c -- the store's front: each call of store.h, handed to the one
 * engine (store_bx*.c), which runs it over the store's backend
 * (store_backend.h: SQLite, store_sqlite*.c, or PostgreSQL, store_pg*.c,
 * chosen by the URL at open); and the helpers every file of the store
 * shares.
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "store.h"
#include "store_int.h"
#include "util.h"

/* ---- small helpers ---- */

void store_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void *store_rows_grow(void *v, size_t *cap, size_t cnt, size_t sz, size_t first) {
    size_t ncap;
    void *p;
    if (cnt < *cap)
        return v;
    ncap = *cap ? *cap * 2 : first;
    p = realloc(v, ncap * sz);
    if (p)
        *cap = ncap;
    return p;
}

#ifdef WAYBILL_CHECKS
void store_check_failed(const char *what, const char *file, int line) {
    log_write(LOG_ERROR, "store: invariant violated at %s:%d: %s", file, line, what);
    abort();
}
#endif

/* ---- open and close ---- */

struct store *store_open(struct event_base *base, const char *url, const char *base_dir, char *err,
                         size_t errlen) {
    struct store *s = calloc(1, sizeof *s);

    if (!s) {
        store_err(err, errlen, "store: out of memory");
        return NULL;
    }
    if (store_bx_open(s, base, url, base_dir, err, errlen) < 0) {
        store_bx_free(s);
        free(s);
        return NULL;
    }
    return s;
}

void store_free(struct store *s) {
    int rounds = 0;
    if (!s)
        return;
    while (!store_bx_idle(s) && ++rounds < 100)
        store_bx_flush(s);
    store_bx_free(s);
    free(s);
}

/* Several instances may run on the store (PostgreSQL); one process owns an
 * SQLite file (its flock). */
int store_shared(const struct store *s) {
    return s && store_bx_shared(s);
}

void store_loop_running(struct store *s, int running) {
    if (s && s->bx)
        s->bx->running = running;
}

void store_delivery_seqs(const struct store *s, int64_t *committed, int64_t *last) {
    store_bx_seqs(s, committed, last);
}

/* ---- the rest of store.h, in its order ---- */

int store_on_commit(struct store *s, store_commit_fn fn, void *arg) {
    return store_bx_on_group(s, fn, arg);
}

int store_on_written(struct store *s, store_commit_fn fn, void *arg) {
    return store_bx_on_group(s, fn, arg);
}

int store_flush(struct store *s) {
    return store_bx_flush(s);
}

int store_idle(const struct store *s) {
    return store_bx_idle(s);
}

int store_writable(const struct store *s) {
    return store_bx_writable(s);
}

int store_delivery_lease(struct store *s, int64_t seq, int64_t next_at, int lease, char *err,
                         size_t errlen) {
    return store_bx_delivery_lease(s, seq, next_at, lease, err, errlen);
}

int store_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                      const char *status, int64_t next_at, int schedule_pos, char *err,
                      size_t errlen) {
    return store_bx_attempt_put(s, delivery_id, a, status, next_at, schedule_pos, err, errlen);
}

int64_t store_backlog(struct store *s) {
    return store_bx_backlog(s);
}

int store_subs_load(struct store *s, void (*fn)(void *arg, const struct store_sub *sub), void *arg,
                    char *err, size_t errlen) {
    return store_bx_subs_load(s, fn, arg, err, errlen);
}

int store_endpoint_states(struct store *s, struct store_endpoint_state **out, size_t *n, char *err,
                          size_t errlen) {
    return store_bx_endpoint_states(s, out, n, err, errlen);
}

int store_read_events_page(struct store *s, const struct store_page *q, store_read_fn fn,
                           void *arg) {
    return store_bx_read_events_page(s, q, fn, arg);
}

int store_read_deliveries_page(struct store *s, const struct store_page *q, store_read_fn fn,
                               void *arg) {
    return store_bx_read_deliveries_page(s, q, fn, arg);
}

int store_read_event_detail(struct store *s, const char *id, store_read_fn fn, void *arg) {
    return store_bx_read_event_detail(s, id, fn, arg);
}

int store_read_events_find(struct store *s, const char *text, size_t max, store_read_fn fn,
                           void *arg) {
    return store_bx_read_events_find(s, text, max, fn, arg);
}

int store_read_batch_windows(struct store *s, store_read_fn fn, void *arg) {
    return store_bx_read_batch_windows(s, fn, arg);
}

int store_read_delivery_counts(struct store *s, store_read_fn fn, void *arg) {
    return store_bx_read_delivery_counts(s, fn, arg);
}

int store_read_endpoints(struct store *s, const char *const *names, size_t n, int64_t now,
                         int64_t due_cap, int counts, const char *blocked_of, size_t blocked_max,
                         store_read_fn fn, void *arg) {
    return store_bx_read_endpoints(s, names, n, now, due_cap, counts, blocked_of, blocked_max, fn,
                                   arg);
}

int store_read_ping(struct store *s, store_read_fn fn, void *arg) {
    return store_bx_read_ping(s, fn, arg);
}

int store_read_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                         size_t max, size_t cap, double rate, store_read_fn fn, void *arg) {
    return store_bx_read_claim_due(s, name, now, lease_ms, max, cap, rate, fn, arg);
}

int store_read_claim_ordered(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                             size_t max, store_read_fn fn, void *arg) {
    return store_bx_read_claim_ordered(s, name, now, lease_ms, max, fn, arg);
}

int store_read_endpoints_due(struct store *s, const char *const *names,
                             const unsigned char *ordered, size_t n, int pending, store_read_fn fn,
                             void *arg) {
    return store_bx_read_endpoints_due(s, names, ordered, n, pending, fn, arg);
}

int store_read_batch_due(struct store *s, int64_t now, store_read_fn fn, void *arg) {
    return store_bx_read_batch_due(s, now, fn, arg);
}

int store_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                      int64_t next_at, size_t *count, char *err, size_t errlen) {
    return store_bx_batch_close(s, w, status, next_at, count, err, errlen);
}

int store_event_put_done(struct store *s, const struct store_event *ev, struct store_plan *plan,
                         store_done_fn fn, void *arg) {
    return store_bx_event_put(s, ev, plan, fn, arg);
}

int store_nonce_put_done(struct store *s, const char *source, const char *nonce, const char *digest,
                         int64_t now_ms, int64_t keep_ms, store_done_fn fn, void *arg) {
    return store_bx_nonce_put(s, source, nonce, digest, now_ms, keep_ms, fn, arg);
}

int store_event_routed_done(struct store *s, const char *event_id, struct store_plan *plan,
                            store_done_fn fn, void *arg) {
    return store_bx_event_routed(s, event_id, plan, fn, arg);
}

int store_delivery_retry_done(struct store *s, const char *id, int64_t next_at, store_done_fn fn,
                              void *arg) {
    return store_bx_delivery_retry(s, id, next_at, fn, arg);
}

int store_delivery_skip_done(struct store *s, const char *id, int64_t now, store_done_fn fn,
                             void *arg) {
    return store_bx_delivery_skip(s, id, now, fn, arg);
}

int store_sub_put_done(struct store *s, const struct store_sub *sub, store_done_fn fn, void *arg) {
    return store_bx_sub_put(s, sub, fn, arg);
}

int store_sub_change_done(struct store *s, const char *id, const char *url, store_done_fn fn,
                          void *arg) {
    return store_bx_sub_change(s, id, url, fn, arg);
}

int store_sub_set_secret_done(struct store *s, const char *id, const char *secret, store_done_fn fn,
                              void *arg) {
    return store_bx_sub_set_secret(s, id, secret, fn, arg);
}

int store_endpoint_attempt_done(struct store *s, const char *name, int ok, const char *error,
                                int64_t now, store_done_fn fn, void *arg) {
    return store_bx_endpoint_attempt(s, name, ok, error, now, fn, arg);
}

int store_endpoint_set_disabled_done(struct store *s, const char *name, int disabled,
                                     const char *reason, int64_t now, store_done_fn fn, void *arg) {
    return store_bx_endpoint_set_disabled(s, name, disabled, reason, now, fn, arg);
}

int store_prune_done(struct store *s, const struct store_prune *p, store_done_fn fn, void *arg) {
    return store_bx_prune(s, p, fn, arg);
}

int store_reclaim_done(struct store *s, int64_t keep_pages, int step_pages, store_done_fn fn,
                       void *arg) {
    return store_bx_reclaim(s, keep_pages, step_pages, fn, arg);
}

int store_get_events_unrouted(struct store *s, int64_t after_seq, size_t max, store_done_fn fn,
                              void *arg) {
    return store_bx_get_events_unrouted(s, after_seq, max, fn, arg);
}

int store_get_event(struct store *s, const char *id, store_done_fn fn, void *arg) {
    return store_bx_get_event(s, id, fn, arg);
}

int store_get_endpoint_states(struct store *s, store_done_fn fn, void *arg) {
    return store_bx_get_endpoint_states(s, fn, arg);
}

int store_get_subs(struct store *s, store_done_fn fn, void *arg) {
    return store_bx_get_subs(s, fn, arg);
}
