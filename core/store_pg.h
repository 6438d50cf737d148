/* store_pg.h -- the PostgreSQL store as far as it goes today: its schema,
 * created or checked on a real database over the asynchronous connection
 * (store_pg_conn.c), for `waybill migrate`, `check` and `serve`. Serving
 * events from it is not built yet (store_backend.h is the plan): serve and
 * check refuse such a store after the schema step, saying so.
 *
 * Every message names the database by its URL without the password
 * (util_url_redact) and passes libpq's text through store_pg_scrub.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_PG_H
#define CORE_STORE_PG_H

#include <stddef.h>

/* 1 when url names a PostgreSQL store (postgres:// or postgresql://). */
int store_pg_is_url(const char *url);

/* What the schema step does. */
enum store_pg_mode {
    STORE_PG_CHECK,   /* read the version only; change nothing */
    STORE_PG_MIGRATE, /* create the schema or bring it up to this binary's version */
    STORE_PG_SERVE    /* as migrate (the first instance creates it), then refuse */
};

/* Connects to url (each host bounded by connect_ms; failed attempts are
 * retried on the connection's backoff for wait_ms, 0: one attempt), runs
 * mode's schema
 * step inside one transaction under pg_advisory_xact_lock (two processes at
 * once: one creates, the other finds it made), and writes one line for the
 * user into msg: what was done, or why not (unreachable, refused password,
 * a schema newer than this binary, a failed statement). Returns 0 when
 * mode is STORE_PG_MIGRATE and it succeeded; -1 otherwise (check and serve
 * always: the store cannot serve yet, msg says so). Runs its own event loop
 * until done: for the commands, not for a running gateway. */
int store_pg_schema(const char *url, enum store_pg_mode mode, int connect_ms, int wait_ms,
                    char *msg, size_t msglen);

#endif
