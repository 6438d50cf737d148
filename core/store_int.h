/* store_int.h -- the store's private interface, shared by core/store*.c and
 * included by nothing else (other modules see store.h): the struct behind
 * store.h's handle, the one engine (store_bx*.c) over a backend
 * (store_backend.h), and the small helpers every file uses.
 *
 * The files, by job: store.c (the front: each store.h call, handed to the
 * engine; the shared helpers);
 * store_plan.c (what a plan makes, whatever the backend: the delivery
 * ids, the matched handlers' JSON); store_bx.c, store_bx_write.c,
 * store_bx_read.c (the engine over store_backend.h); store_sqlite*.c
 * (SQLite, store_sqlite_int.h lists its files); store_pg*.c (the
 * PostgreSQL backend, store_pg_int.h).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_INT_H
#define CORE_STORE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"
#include "util.h"

struct event;
struct event_base;

/* ---- invariant checks (debug and sanitizer builds) ---- */

/* STORE_CHECK(cond) aborts with the condition's text when cond is false, in
 * builds with WAYBILL_CHECKS (make asan, make tsan); elsewhere it is
 * compiled out and cond is not evaluated (it must have no side effects). */
#ifdef WAYBILL_CHECKS
#define STORE_CHECK(cond) ((cond) ? (void)0 : store_check_failed(#cond, __FILE__, __LINE__))
void store_check_failed(const char *what, const char *file, int line) __attribute__((noreturn));
#else
#define STORE_CHECK(cond) ((void)0)
#endif

/* ---- the store ---- */

/* A callback waiting for the end of a group. */
struct store_cb {
    store_commit_fn fn;
    void *arg;
};

struct store_backend_ops;
struct store_be;
struct store_bx;

/* store.h's handle: the backend (ops, be: SQLite or PostgreSQL) and the
 * engine over it (bx). */
struct store {
    const struct store_backend_ops *ops;
    struct store_be *be;
    struct store_bx *bx;
};

/* ---- the engine over a backend (store_bx*.c, store_backend.h) ----
 * Every store.h call goes to the store_bx_* functions below (store.c). */
struct bx_grp;

/* An answer due from the loop for a call that never reached the backend. */
struct bx_late {
    struct bx_late *next;
    void (*run)(void *p);
    void *p;
};

struct store_bx {
    struct event_base *base;
    char shown[512];              /* the URL without its password */
    struct event *commit_ev;      /* ends the open group (lowest priority) */
    struct event *commit_late_ev; /* ends it when commit_ev waited too long */
    struct event *late_ev;        /* hands the late answers over */
    struct bx_late *late, *late_tail;
    struct bx_grp *cur;            /* the open record: callbacks, and the group when tx_open */
    struct bx_grp *fly, *fly_tail; /* ended records waiting for their answers, in order */
    int tx_open, scheduled, committing, waiting, gave_up;
    int running;                       /* the loop runs (store_loop_running): no waiting in it */
    int64_t groups_begun, groups_done; /* store_delivery_seqs */
    int last_outcome_ok;
    int64_t last_outcome_at, fail_logged_at;
    int nreads; /* reads in flight */
    /* store_backlog: the last read, the deliveries inserted since */
    int64_t backlog, backlog_added, backlog_added_at_read, backlog_read_at;
    int backlog_reading, backlog_known;
    struct bx_sync *sync; /* a read of the start being waited for */
};

int store_bx_open(struct store *s, struct event_base *base, const char *url, const char *base_dir,
                  char *err, size_t errlen);
void store_bx_free(struct store *s);
int store_bx_late(struct store *s, void (*run)(void *p), void *p);
int store_bx_group(struct store *s, char *err, size_t errlen);
int store_bx_on_group(struct store *s, store_commit_fn fn, void *arg);
/* A write of this loop turn could not be queued (the database down): the
 * callbacks waiting for the turn's commit hear ok 0, as on SQLite. */
void store_bx_write_failed(struct store *s);
void store_bx_seqs(const struct store *s, int64_t *committed, int64_t *last);
/* The backend's shared flag (store_shared). */
int store_bx_shared(const struct store *s);
int store_bx_writable(const struct store *s);
int store_bx_idle(const struct store *s);
int store_bx_flush(struct store *s);
int64_t store_bx_backlog(struct store *s);
int store_bx_subs_load(struct store *s, void (*fn)(void *arg, const struct store_sub *sub),
                       void *arg, char *err, size_t errlen);
int store_bx_endpoint_states(struct store *s, struct store_endpoint_state **out, size_t *n,
                             char *err, size_t errlen);
int store_bx_states_copy(const struct store_endpoint_state *v, size_t n,
                         struct store_endpoint_state **out);
/* store_bx_write.c */
int store_bx_event_put(struct store *s, const struct store_event *ev, struct store_plan *plan,
                       store_done_fn fn, void *arg);
int store_bx_nonce_put(struct store *s, const char *source, const char *nonce, const char *digest,
                       int64_t now_ms, int64_t keep_ms, store_done_fn fn, void *arg);
int store_bx_event_routed(struct store *s, const char *event_id, struct store_plan *plan,
                          store_done_fn fn, void *arg);
int store_bx_delivery_retry(struct store *s, const char *id, int64_t next_at, store_done_fn fn,
                            void *arg);
int store_bx_delivery_skip(struct store *s, const char *id, int64_t now, store_done_fn fn,
                           void *arg);
int store_bx_sub_put(struct store *s, const struct store_sub *sub, store_done_fn fn, void *arg);
int store_bx_sub_change(struct store *s, const char *id, const char *url, store_done_fn fn,
                        void *arg);
int store_bx_sub_set_secret(struct store *s, const char *id, const char *secret, store_done_fn fn,
                            void *arg);
int store_bx_endpoint_attempt(struct store *s, const char *name, int ok, const char *error,
                              int64_t now, store_done_fn fn, void *arg);
int store_bx_endpoint_set_disabled(struct store *s, const char *name, int disabled,
                                   const char *reason, int64_t now, store_done_fn fn, void *arg);
int store_bx_prune(struct store *s, const struct store_prune *p, store_done_fn fn, void *arg);
int store_bx_reclaim(struct store *s, int64_t keep_pages, int step_pages, store_done_fn fn,
                     void *arg);
int store_bx_attempt_put(struct store *s, const char *delivery_id, const struct store_attempt *a,
                         const char *status, int64_t next_at, int schedule_pos, char *err,
                         size_t errlen);
int store_bx_delivery_lease(struct store *s, int64_t seq, int64_t next_at, int lease, char *err,
                            size_t errlen);
int store_bx_batch_close(struct store *s, const struct store_batch_window *w, const char *status,
                         int64_t next_at, size_t *count, char *err, size_t errlen);
/* store_bx_read.c */
int store_bx_read_events_page(struct store *s, const struct store_page *q, store_read_fn fn,
                              void *arg);
int store_bx_read_deliveries_page(struct store *s, const struct store_page *q, store_read_fn fn,
                                  void *arg);
int store_bx_read_event_detail(struct store *s, const char *id, store_read_fn fn, void *arg);
int store_bx_read_events_find(struct store *s, const char *text, size_t max, store_read_fn fn,
                              void *arg);
int store_bx_read_batch_windows(struct store *s, store_read_fn fn, void *arg);
int store_bx_read_delivery_counts(struct store *s, store_read_fn fn, void *arg);
int store_bx_read_ping(struct store *s, store_read_fn fn, void *arg);
int store_bx_read_endpoints(struct store *s, const char *const *names, size_t n, int64_t now,
                            int64_t due_cap, int counts, const char *blocked_of, size_t blocked_max,
                            store_read_fn fn, void *arg);
int store_bx_read_claim_due(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                            size_t max, size_t cap, double rate, store_read_fn fn, void *arg);
int store_bx_read_claim_ordered(struct store *s, const char *name, int64_t now, int64_t lease_ms,
                                size_t max, store_read_fn fn, void *arg);
int store_bx_read_endpoints_due(struct store *s, const char *const *names,
                                const unsigned char *ordered, size_t n, int pending,
                                store_read_fn fn, void *arg);
int store_bx_read_batch_due(struct store *s, int64_t now, store_read_fn fn, void *arg);
int store_bx_get_events_unrouted(struct store *s, int64_t after_seq, size_t max, store_done_fn fn,
                                 void *arg);
int store_bx_get_event(struct store *s, const char *id, store_done_fn fn, void *arg);
int store_bx_get_endpoint_states(struct store *s, store_done_fn fn, void *arg);
int store_bx_get_subs(struct store *s, store_done_fn fn, void *arg);

/* ---- what a plan makes, whatever the backend (store_plan.c) ---- */

/* The ids of plan's deliveries into ids[0..ndeliveries): derived from the
 * event (util_id_derive of event_id, the endpoint and the place in the
 * plan: a routing made again keeps its ids) when derive, else new. */
void store_plan_ids(const char *event_id, const struct store_plan *plan, int derive,
                    char (*ids)[UTIL_ID_MAX]);

/* Appends the matched handlers of plan (store.h, struct store_plan) as the
 * JSON events.matched holds to b, naming the delivery ids ids[]. Returns 0,
 * or -1 when out of memory. */
int store_plan_matched(const struct store_plan *plan, char (*ids)[UTIL_ID_MAX], struct util_buf *b);

/* ---- small helpers (every file) ---- */

/* Writes a reason into err (may be NULL or errlen 0). */
void store_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Makes room in the row array v (*cap elements of size sz, cnt used) for
 * one more, doubling from first. Returns the array (v, or v moved), or
 * NULL when out of memory (v is then untouched and still the caller's). */
void *store_rows_grow(void *v, size_t *cap, size_t cnt, size_t sz, size_t first);

#endif
