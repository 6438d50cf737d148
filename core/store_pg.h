/* store_pg.h -- the PostgreSQL store's schema step, created or checked on
 * a real database over the asynchronous connection (store_pg_conn.c), for
 * `waybill migrate`, `check` and `serve` (the backend's open runs it;
 * serving is store_bx*.c over store_backend.h).
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
    STORE_PG_SERVE    /* as migrate (the first instance creates it) */
};

/* Connects to url (each host bounded by connect_ms; failed attempts are
 * retried on the connection's backoff for wait_ms, 0: one attempt), runs
 * mode's schema
 * step inside one transaction under pg_advisory_xact_lock (two processes at
 * once: one creates, the other finds it made), and writes one line for the
 * user into msg: what was done or found, or why not (unreachable, refused
 * password, a schema newer than this binary, a failed statement). Returns
 * 1 when it created or upgraded the schema, 0 when it succeeded otherwise
 * (check: the schema is this binary's, older, or none yet), else -1. Runs
 * its own event loop
 * until done: for the commands, not for a running gateway. */
int store_pg_schema(const char *url, enum store_pg_mode mode, int connect_ms, int wait_ms,
                    char *msg, size_t msglen);

#endif
