/* admin.h -- the admin API listener (SPEC section 8).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_ADMIN_H
#define CORE_ADMIN_H

#include <stddef.h>
#include <stdint.h>

struct admin;
struct deliver;
struct event_base;
struct health;
struct httpc;
struct ingest;
struct rules;
struct store;
struct stream;
struct subs;

/* What GET /api/status and /metrics report of the app itself. */
struct admin_status {
    int64_t started_at; /* Unix ms */
    int reloads, reload_failures;
    const char *reload_error; /* the last reload's error, "" when it succeeded; borrowed */
};

/* What the admin API works with; all borrowed, and must outlive it. The
 * app above it is reached only through the callbacks. */
struct admin_deps {
    struct event_base *base;
    struct store *store;
    struct deliver *deliver;
    struct health *health; /* endpoint state: enable/disable */
    struct httpc *httpc;   /* subscription verification POSTs */
    struct ingest *ingest; /* test events and replays enter through it */
    struct subs *subs;
    struct stream *stream;      /* the live feed GET /api/stream serves */
    struct rules *const *rules; /* the current generation (swapped whole on reload) */
    /* POST /api/reload: as SIGHUP. Returns 0, or -1 with a reason in err. */
    int (*reload)(void *arg, char *err, size_t errlen);
    void (*status)(void *arg, struct admin_status *st);
    void *arg;
};

/* Serves the admin routes on fd (listen, "host:port", bound by http_bind;
 * fd is owned from here on, closed also on failure). Returns new, or NULL
 * with a reason in err. */
struct admin *admin_new(const struct admin_deps *deps, int fd, const char *listen, char *err,
                        size_t errlen);

/* The gateway is stopping: live streams (GET /api/stream) end now, new ones
 * are refused; every other route still answers. NULL is a no-op. */
void admin_stop(struct admin *adm);

/* Closes the listener; NULL is a no-op. */
void admin_free(struct admin *adm);

#endif
