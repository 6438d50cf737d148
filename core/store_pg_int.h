/* store_pg_int.h -- the PostgreSQL backend's private interface, shared by
 * core/store_pg*.c and included by nothing else (other modules see
 * store_pg.h): the asynchronous connection (store_pg_conn.c), the password
 * scrubbing every message goes through, and the schema (store_pg.c).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_STORE_PG_INT_H
#define CORE_STORE_PG_INT_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

struct event_base;
struct store_pg_conn;

/* ---- the connection (store_pg_conn.c) ---- */

/* Called when the connection comes up (up = 1, err NULL) and each time an
 * attempt fails or a live connection is lost (up = 0, err says why, the
 * password scrubbed); after a 0 the connection retries on its own (see the
 * backoff in store_pg_conn.c) unless freed. May send queries when up. Must
 * not free the connection. */
typedef void (*store_pg_state_fn)(void *arg, int up, const char *err);

/* The result of one query: res (borrowed: cleared after the call) is the
 * query's result, or NULL when the connection was lost before it came (err
 * says why; the query may or may not have run: a lost COMMIT is reported as
 * a failure, never as an ok). res may also carry an error status
 * (PGRES_FATAL_ERROR, or PGRES_PIPELINE_ABORTED for a query after a failed
 * one in the same sync): store_pg_res_ok tells. Must not free the
 * connection. */
typedef void (*store_pg_result_fn)(void *arg, const PGresult *res, const char *err);

/* A new connection to url (postgres:// or postgresql://, read by libpq's
 * PQconninfoParse and handed back to it: several hosts,
 * target_session_attrs and the password from the URL, PGPASSWORD or
 * ~/.pgpass work as libpq documents), on base. Each host of an attempt is
 * bounded by connect_ms (or the URL's connect_timeout, in seconds), then
 * the next one is tried. The first attempt starts from the loop, not
 * inside this call. Returns NULL with a reason in err (a URL libpq cannot
 * parse; out of memory), the password scrubbed. */
struct store_pg_conn *store_pg_conn_new(struct event_base *base, const char *url, int connect_ms,
                                        store_pg_state_fn fn, void *arg, char *err, size_t errlen);

/* Closes the connection; queries in flight get their callback with res NULL
 * and err "closed". NULL is a no-op. */
void store_pg_conn_free(struct store_pg_conn *c);

/* 1 when connected and in pipeline mode, else 0. */
int store_pg_conn_up(const struct store_pg_conn *c);

/* Queues one statement (one only: the extended protocol) with n text
 * parameters (NULL values are SQL NULLs; params are copied by libpq before
 * this returns) on the pipeline. Nothing is sent before store_pg_conn_sync.
 * fn(arg, ...) runs exactly once, from the loop, in the order the queries
 * were queued. Returns 0, or -1 when not connected or libpq refuses (fn is
 * then never called). */
int store_pg_conn_query(struct store_pg_conn *c, const char *sql, int n, const char *const *params,
                        store_pg_result_fn fn, void *arg);

/* Ends a pipeline segment (PQpipelineSync) and sends everything queued:
 * one round trip for all the queries since the last sync. A failed query
 * aborts the segment's later ones (PGRES_PIPELINE_ABORTED) up to here.
 * Returns 0 or -1 (not connected; the queries queued since the last sync
 * will get their callbacks with res NULL). */
int store_pg_conn_sync(struct store_pg_conn *c);

/* What the connection sent since it was made: queries queued and Syncs
 * (each ends a pipeline segment), for tests and metrics. */
void store_pg_conn_counts(const struct store_pg_conn *c, uint64_t *queries, uint64_t *syncs);

/* The backend pid libpq was told at connection (behind a pooler: the
 * pooler's, not PostgreSQL's); 0 when down. */
int store_pg_conn_pid(const struct store_pg_conn *c);

/* The server's session attributes once up (e.g. "server_version"); NULL
 * before. */
const char *store_pg_conn_param(const struct store_pg_conn *c, const char *name);

/* 1 when res is a success (COMMAND_OK or TUPLES_OK), else 0. */
int store_pg_res_ok(const PGresult *res);

/* res's error text (one line, the server's message), or a fixed word. */
const char *store_pg_res_error(const PGresult *res);

/* ---- messages without the password ---- */

/* Copies msg into out with every occurrence of url's password (from its
 * userinfo or its password= query parameter, raw and percent-decoded) and
 * of PGPASSWORD replaced by "***", newlines folded into "; " and a trailing
 * newline dropped. libpq's own messages do not quote the password, except
 * when it cannot parse the URL ("invalid percent-encoded token"), so every
 * message built from libpq's goes through here. Returns out. */
const char *store_pg_scrub(const char *url, const char *msg, char *out, size_t outlen);

/* ---- the schema (store_pg.c) ---- */

/* The schema version this binary writes and reads (2: endpoint_state's
 * shared `rate` bucket; 3: instances' session lock). */
#define STORE_PG_SCHEMA_VERSION 3

/* The key of pg_advisory_xact_lock taken by every schema change ("waybill"
 * in ASCII): a transaction-scoped lock, released at COMMIT or ROLLBACK, so
 * it holds behind PgBouncer's transaction pooling too. */
#define STORE_PG_SCHEMA_LOCK "33610883074878572"

/* The first key of the session advisory lock each instance holds while it
 * lives (pg_try_advisory_lock(STORE_PG_INSTANCE_LOCK, instances.lock_key);
 * "wayb" in ASCII): the two-key form, never the schema's one-key lock. */
#define STORE_PG_INSTANCE_LOCK "2002876770"

#endif
