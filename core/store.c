/* store.c -- the store's front: each call of store.h, handed to the
 * engine over a backend (store_bx*.c: PostgreSQL, store_backend.h) when the
 * store has one (s->bx), else to the SQLite engine (store_sqlite*.c,
 * s->sq); and the helpers every file of the store shares. The synchronous
 * calls only SQLite serves (the unit tests' and the tools' reads and
 * writes) refuse on a backend.
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "store.h"
#include "store_int.h"
#include "store_pg.h"
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

/* A synchronous call only the SQLite engine serves, made on a backend. */
static int store_front_none(char *err, size_t errlen) {
    store_err(err, errlen, "store: only the SQLite store serves this call");
    return -1;
}

/* ---- open and close ---- */

struct store *store_open(struct event_base *base, const char *url, const char *base_dir, char *err,
                         size_t errlen) {
    struct store *s = calloc(1, sizeof *s);

    if (!s) {
        store_err(err, errlen, "store: out of memory");
        return NULL;
    }
    if (store_pg_is_url(url)) { /* the engine over the PostgreSQL backend (store_bx.c) */
        if (store_bx_open(s, base, url, base_dir, err, errlen) < 0) {
            store_bx_free(s);
            free(s);
            return NULL;
        }
        return s;
    }
    s->sq = store_sqlite_open(base, url, base_dir, err, errlen);
    if (!s->sq) {
        free(s);
        return NULL;
    }
    return s;
}

void store_free(struct store *s) {
    int rounds = 0;
    if (!s)
        return;
    if (s->bx) {
        while (!store_bx_idle(s) && ++rounds < 100)
            store_bx_flush(s);
        store_bx_free(s);
    } else {
        store_sqlite_free(s->sq);
    }
    free(s);
}

int store_shared(const struct store *s) {
    return s && s->bx;
}

void store_loop_running(struct store *s, int running) {
    if (s && s->bx)
        s->bx->running = running;
}

void store_delivery_seqs(const struct store *s, int64_t *committed, int64_t *last) {
    if (s->bx)
        store_bx_seqs(s, committed, last);
    else
        store_sqlite_delivery_seqs(s->sq, committed, last);
}

/* ---- the rest of store.h, in its order ---- */

int store_on_commit(struct store *s, store_commit_fn fn, void *arg) {
    if (s->bx)
        return store_bx_on_group(s, fn, arg);
    return store_sqlite_on_commit(s->sq, fn, arg);
}

int store_on_written(struct store *s, store_commit_fn fn, void *arg) {
    if (s->bx)
        return store_bx_on_group(s, fn, arg);
    return store_sqlite_on_written(s->sq, fn, arg);
}

int store_flush(struct store *s) {
    if (s->bx)
        return store_bx_flush(s);
    return store_sqlite_flush(s->sq);
}

int store_idle(const struct store *s) {
    if (s->bx)
        return store_bx_idle(s);
    return store_sqlite_idle(s->sq);
}

int store_ping(struct store *s) {
    if (!s->sq)
        return 0;
    return store_sqlite_ping(s->sq);
}

int store_writable(const struct store *s) {
    if (s->bx)
        return store_bx_writable(s);
    return store_sqlite_writable(s->sq);
}

int store_event_put(struct store *s, const struct store_event *ev, struct store_plan *plan,
                    char *dup_id, size_t dup_len, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_event_put(s->sq, ev, plan, dup_id, dup_len, err, errlen);
}

int store_event_routed(struct store *s, const char *event_id, struct store_plan *plan, char *err,
                       size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_event_routed(s->sq, event_id, plan, err, errlen);
}

int store_nonce_put(struct store *s, const char *source, const char *nonce, const char *digest,
                    int64_t now_ms, int64_t keep_ms, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_nonce_put(s->sq, source, nonce, digest, now_ms, keep_ms, err, errlen);
}

int store_events_unrouted(struct store *s, int64_t after_seq, size_t max,
                          struct store_event_row **rows, size_t *n, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_events_unrouted(s->sq, after_seq, max, rows, n, err, errlen);
}

int store_endpoint_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                             size_t max, struct store_delivery **out, size_t *n, char *err,
                             size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_endpoint_claim_due(s->sq, name, now, lease_ms, max, out, n, err, errlen);
}

int64_t store_endpoint_next_due(struct store *s, const char *name) {
    if (!s->sq)
        return INT64_MAX;
    return store_sqlite_endpoint_next_due(s->sq, name);
}

int store_delivery_lease(struct store *s, int64_t seq, int64_t next_at, int lease, char *err,
                         size_t errlen) {
    if (s->bx)
        return store_bx_delivery_lease(s, seq, next_at, lease, err, errlen);
    return store_sqlite_delivery_lease(s->sq, seq, next_at, lease, err, errlen);
}

int store_endpoints_pending(struct store *s, void (*fn)(void *arg, const char *name), void *arg) {
    if (!s->sq)
        return -1;
    return store_sqlite_endpoints_pending(s->sq, fn, arg);
}

int store_endpoint_queue(struct store *s, const char *name, int64_t now, int64_t due_cap,
                         int counts, struct store_endpoint_queue *q) {
    if (!s->sq)
        return -1;
    return store_sqlite_endpoint_queue(s->sq, name, now, due_cap, counts, q);
}

int store_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                      const char *status, int64_t next_at, int schedule_pos, char *err,
                      size_t errlen) {
    if (s->bx)
        return store_bx_attempt_put(s, delivery_id, a, status, next_at, schedule_pos, err, errlen);
    return store_sqlite_attempt_put(s->sq, delivery_id, a, status, next_at, schedule_pos, err,
                                    errlen);
}

int store_delivery_counts(struct store *s, struct store_counts *c) {
    if (!s->sq)
        return -1;
    return store_sqlite_delivery_counts(s->sq, c);
}

int64_t store_backlog(struct store *s) {
    if (s->bx)
        return store_bx_backlog(s);
    return store_sqlite_backlog(s->sq);
}

int store_events_page(struct store *s, const struct store_page *q, struct store_event_row **rows,
                      size_t *n, int64_t *next, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_events_page(s->sq, q, rows, n, next, err, errlen);
}

int store_events_find(struct store *s, const char *text, size_t max, char ***ids, size_t *n,
                      char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_events_find(s->sq, text, max, ids, n, err, errlen);
}

int store_deliveries_page(struct store *s, const struct store_page *q,
                          struct store_delivery_item **rows, size_t *n, int64_t *next, char *err,
                          size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_deliveries_page(s->sq, q, rows, n, next, err, errlen);
}

int store_event_get(struct store *s, const char *id, struct store_event_row **row, char *err,
                    size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_event_get(s->sq, id, row, err, errlen);
}

int store_event_detail(struct store *s, const char *id, struct store_event_detail **out, char *err,
                       size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_event_detail(s->sq, id, out, err, errlen);
}

int store_delivery_retry(struct store *s, const char *id, int64_t next_at, char *err,
                         size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_delivery_retry(s->sq, id, next_at, err, errlen);
}

int store_delivery_skip(struct store *s, const char *id, int64_t now, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_delivery_skip(s->sq, id, now, err, errlen);
}

int store_endpoint_blocked(struct store *s, const char *name, size_t max,
                           struct store_blocked_key **out, size_t *n, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_endpoint_blocked(s->sq, name, max, out, n, err, errlen);
}

int store_sub_put(struct store *s, const struct store_sub *sub, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_sub_put(s->sq, sub, err, errlen);
}

int store_sub_change(struct store *s, const char *id, const char *url, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_sub_change(s->sq, id, url, err, errlen);
}

int store_sub_set_secret(struct store *s, const char *id, const char *secret, char *err,
                         size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_sub_set_secret(s->sq, id, secret, err, errlen);
}

int store_subs_load(struct store *s, void (*fn)(void *arg, const struct store_sub *sub), void *arg,
                    char *err, size_t errlen) {
    if (s->bx)
        return store_bx_subs_load(s, fn, arg, err, errlen);
    return store_sqlite_subs_load(s->sq, fn, arg, err, errlen);
}

int store_endpoint_attempt(struct store *s, const char *name, int ok, const char *error,
                           int64_t now, int64_t *first_failure_at, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_endpoint_attempt(s->sq, name, ok, error, now, first_failure_at, err,
                                         errlen);
}

int store_endpoint_set_disabled(struct store *s, const char *name, int disabled, const char *reason,
                                int64_t now, int64_t *moved, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_endpoint_set_disabled(s->sq, name, disabled, reason, now, moved, err,
                                              errlen);
}

int store_endpoint_states(struct store *s, struct store_endpoint_state **out, size_t *n, char *err,
                          size_t errlen) {
    if (s->bx)
        return store_bx_endpoint_states(s, out, n, err, errlen);
    return store_sqlite_endpoint_states(s->sq, out, n, err, errlen);
}

int64_t store_endpoint_head(struct store *s, const char *name, int64_t *next_at) {
    if (!s->sq)
        return INT64_MAX;
    return store_sqlite_endpoint_head(s->sq, name, next_at);
}

int store_endpoint_claim(struct store *s, const char *name, int64_t after_seq, int64_t now,
                         int64_t lease_ms, size_t max, struct store_delivery **out, size_t *n,
                         char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_endpoint_claim(s->sq, name, after_seq, now, lease_ms, max, out, n, err,
                                       errlen);
}

int store_read_events_page(struct store *s, const struct store_page *q, store_read_fn fn,
                           void *arg) {
    if (s->bx)
        return store_bx_read_events_page(s, q, fn, arg);
    return store_sqlite_read_events_page(s->sq, q, fn, arg);
}

int store_read_deliveries_page(struct store *s, const struct store_page *q, store_read_fn fn,
                               void *arg) {
    if (s->bx)
        return store_bx_read_deliveries_page(s, q, fn, arg);
    return store_sqlite_read_deliveries_page(s->sq, q, fn, arg);
}

int store_read_event_detail(struct store *s, const char *id, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_event_detail(s, id, fn, arg);
    return store_sqlite_read_event_detail(s->sq, id, fn, arg);
}

int store_read_events_find(struct store *s, const char *text, size_t max, store_read_fn fn,
                           void *arg) {
    if (s->bx)
        return store_bx_read_events_find(s, text, max, fn, arg);
    return store_sqlite_read_events_find(s->sq, text, max, fn, arg);
}

int store_read_batch_windows(struct store *s, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_batch_windows(s, fn, arg);
    return store_sqlite_read_batch_windows(s->sq, fn, arg);
}

int store_read_delivery_counts(struct store *s, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_delivery_counts(s, fn, arg);
    return store_sqlite_read_delivery_counts(s->sq, fn, arg);
}

int store_read_endpoints(struct store *s, const char *const *names, size_t n, int64_t now,
                         int64_t due_cap, int counts, const char *blocked_of, size_t blocked_max,
                         store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_endpoints(s, names, n, now, due_cap, counts, blocked_of, blocked_max,
                                       fn, arg);
    return store_sqlite_read_endpoints(s->sq, names, n, now, due_cap, counts, blocked_of,
                                       blocked_max, fn, arg);
}

int store_read_ping(struct store *s, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_ping(s, fn, arg);
    return store_sqlite_read_ping(s->sq, fn, arg);
}

int store_read_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                         size_t max, size_t cap, double rate, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_claim_due(s, name, now, lease_ms, max, cap, rate, fn, arg);
    return store_sqlite_read_claim_due(s->sq, name, now, lease_ms, max, cap, rate, fn, arg);
}

int store_read_claim_ordered(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                             size_t max, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_claim_ordered(s, name, now, lease_ms, max, fn, arg);
    return store_sqlite_read_claim_ordered(s->sq, name, now, lease_ms, max, fn, arg);
}

int store_read_endpoints_due(struct store *s, const char *const *names, size_t n, int pending,
                             store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_endpoints_due(s, names, n, pending, fn, arg);
    return store_sqlite_read_endpoints_due(s->sq, names, n, pending, fn, arg);
}

int store_read_batch_due(struct store *s, int64_t now, store_read_fn fn, void *arg) {
    if (s->bx)
        return store_bx_read_batch_due(s, now, fn, arg);
    return store_sqlite_read_batch_due(s->sq, now, fn, arg);
}

int store_prune(struct store *s, struct store_prune *p, char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_prune(s->sq, p, err, errlen);
}

int store_reclaim(struct store *s, int64_t keep_pages, int step_pages, int *freed, char *err,
                  size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_reclaim(s->sq, keep_pages, step_pages, freed, err, errlen);
}

int64_t store_batch_next_close(struct store *s) {
    if (!s->sq)
        return INT64_MAX;
    return store_sqlite_batch_next_close(s->sq);
}

int store_batch_due(struct store *s, int64_t now, struct store_batch_window **out, size_t *n,
                    char *err, size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_batch_due(s->sq, now, out, n, err, errlen);
}

int store_batch_windows(struct store *s, struct store_batch_window **out, size_t *n, char *err,
                        size_t errlen) {
    if (!s->sq)
        return store_front_none(err, errlen);
    return store_sqlite_batch_windows(s->sq, out, n, err, errlen);
}

int store_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                      int64_t next_at, size_t *count, char *err, size_t errlen) {
    if (s->bx)
        return store_bx_batch_close(s, w, status, next_at, count, err, errlen);
    return store_sqlite_batch_close(s->sq, w, status, next_at, count, err, errlen);
}

int store_event_put_done(struct store *s, const struct store_event *ev, struct store_plan *plan,
                         store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_event_put(s, ev, plan, fn, arg);
    return store_sqlite_event_put_done(s->sq, ev, plan, fn, arg);
}

int store_nonce_put_done(struct store *s, const char *source, const char *nonce, const char *digest,
                         int64_t now_ms, int64_t keep_ms, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_nonce_put(s, source, nonce, digest, now_ms, keep_ms, fn, arg);
    return store_sqlite_nonce_put_done(s->sq, source, nonce, digest, now_ms, keep_ms, fn, arg);
}

int store_event_routed_done(struct store *s, const char *event_id, struct store_plan *plan,
                            store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_event_routed(s, event_id, plan, fn, arg);
    return store_sqlite_event_routed_done(s->sq, event_id, plan, fn, arg);
}

int store_delivery_retry_done(struct store *s, const char *id, int64_t next_at, store_done_fn fn,
                              void *arg) {
    if (s->bx)
        return store_bx_delivery_retry(s, id, next_at, fn, arg);
    return store_sqlite_delivery_retry_done(s->sq, id, next_at, fn, arg);
}

int store_delivery_skip_done(struct store *s, const char *id, int64_t now, store_done_fn fn,
                             void *arg) {
    if (s->bx)
        return store_bx_delivery_skip(s, id, now, fn, arg);
    return store_sqlite_delivery_skip_done(s->sq, id, now, fn, arg);
}

int store_sub_put_done(struct store *s, const struct store_sub *sub, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_sub_put(s, sub, fn, arg);
    return store_sqlite_sub_put_done(s->sq, sub, fn, arg);
}

int store_sub_change_done(struct store *s, const char *id, const char *url, store_done_fn fn,
                          void *arg) {
    if (s->bx)
        return store_bx_sub_change(s, id, url, fn, arg);
    return store_sqlite_sub_change_done(s->sq, id, url, fn, arg);
}

int store_sub_set_secret_done(struct store *s, const char *id, const char *secret, store_done_fn fn,
                              void *arg) {
    if (s->bx)
        return store_bx_sub_set_secret(s, id, secret, fn, arg);
    return store_sqlite_sub_set_secret_done(s->sq, id, secret, fn, arg);
}

int store_endpoint_attempt_done(struct store *s, const char *name, int ok, const char *error,
                                int64_t now, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_endpoint_attempt(s, name, ok, error, now, fn, arg);
    return store_sqlite_endpoint_attempt_done(s->sq, name, ok, error, now, fn, arg);
}

int store_endpoint_set_disabled_done(struct store *s, const char *name, int disabled,
                                     const char *reason, int64_t now, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_endpoint_set_disabled(s, name, disabled, reason, now, fn, arg);
    return store_sqlite_endpoint_set_disabled_done(s->sq, name, disabled, reason, now, fn, arg);
}

int store_prune_done(struct store *s, const struct store_prune *p, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_prune(s, p, fn, arg);
    return store_sqlite_prune_done(s->sq, p, fn, arg);
}

int store_reclaim_done(struct store *s, int64_t keep_pages, int step_pages, store_done_fn fn,
                       void *arg) {
    if (s->bx)
        return store_bx_reclaim(s, fn, arg);
    return store_sqlite_reclaim_done(s->sq, keep_pages, step_pages, fn, arg);
}

int store_get_events_unrouted(struct store *s, int64_t after_seq, size_t max, store_done_fn fn,
                              void *arg) {
    if (s->bx)
        return store_bx_get_events_unrouted(s, after_seq, max, fn, arg);
    return store_sqlite_get_events_unrouted(s->sq, after_seq, max, fn, arg);
}

int store_get_event(struct store *s, const char *id, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_get_event(s, id, fn, arg);
    return store_sqlite_get_event(s->sq, id, fn, arg);
}

int store_get_endpoint_states(struct store *s, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_get_endpoint_states(s, fn, arg);
    return store_sqlite_get_endpoint_states(s->sq, fn, arg);
}

int store_get_subs(struct store *s, store_done_fn fn, void *arg) {
    if (s->bx)
        return store_bx_get_subs(s, fn, arg);
    return store_sqlite_get_subs(s->sq, fn, arg);
}
