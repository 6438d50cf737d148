/* jwks.h -- RSA public keys by kid from a JSON Web Key Set (RFC 7517), for
 * ShipEngine's RSA-SHA256 webhooks. A key set comes from a file (read at
 * config load and again on an unknown kid) or a URL (fetched through the
 * shared HTTP client on the event loop, never blocking it; cached;
 * refetched once per unknown kid).
 * Invariant: only the loop thread touches a struct jwks; a waiter's callback
 * runs exactly once, from the loop, never from inside the call that queued it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_JWKS_H
#define CORE_JWKS_H

#include <stddef.h>
#include <stdint.h>

struct evp_pkey_st;
struct httpc;

/* ---- a parsed key set ---- */

struct jwks_set;

/* Parses a JWKS document {"keys": [{"kty":"RSA","kid":..,"n":..,"e":..}]}.
 * Keys of other types, without a kid or with use other than "sig" are
 * skipped; an RSA key under 2048 bits or with a malformed n/e is an error.
 * Returns a new set (possibly empty), or NULL with a reason in err. */
struct jwks_set *jwks_set_parse(const char *text, size_t len, char *err, size_t errlen);

/* Reads and parses the file at path. Returns new, or NULL with err. */
struct jwks_set *jwks_set_load(const char *path, char *err, size_t errlen);

/* The key with this kid, borrowed from set; NULL when absent. */
struct evp_pkey_st *jwks_set_find(const struct jwks_set *set, const char *kid);

size_t jwks_set_count(const struct jwks_set *set);

void jwks_set_free(struct jwks_set *set);

/* ---- a cached, refetchable source of keys ---- */

struct jwks;

/* A key source for location (an absolute file path, or an http(s):// URL).
 * A file is read now (err on failure); a URL's first fetch starts now on hc
 * (borrowed, must outlive j) and completes later. Returns new, or NULL with
 * a reason in err. */
struct jwks *jwks_new(struct httpc *hc, const char *location, char *err, size_t errlen);

/* Whether j reads location (to find a cached source again). */
int jwks_is(const struct jwks *j, const char *location);

/* Whether j fetches from a URL (else it reads a file). */
int jwks_is_url(const struct jwks *j);

/* The current key for kid, borrowed until the next refetch completes. */
struct evp_pkey_st *jwks_find(struct jwks *j, const char *kid);

/* ok is 1 when the refetch produced a key set (it may still lack the kid),
 * 0 when it failed or j is being freed. */
typedef void (*jwks_done_fn)(void *arg, int ok);

#define JWKS_REFETCHED 1  /* a file was read again now: look the kid up again */
#define JWKS_NO_REFETCH 2 /* kid was already refetched recently: it is unknown */

/* Asks for the keys again because kid was not found. Returns 0 when a URL
 * fetch was started or joined (done(arg, ok) runs when it completes, within
 * the fetch timeout of 5 s); JWKS_REFETCHED when a file was re-read now
 * (done is not called); JWKS_NO_REFETCH (done is not called) when kid was
 * refetched in the last 5 minutes, is implausibly long (128+ bytes), or 10
 * refetches already ran this minute; -1 when out of memory. */
int jwks_refetch(struct jwks *j, const char *kid, jwks_done_fn done, void *arg);

/* Fetches started so far (initial one included), for tests and metrics. */
int jwks_fetches(const struct jwks *j);

/* Stops a fetch in flight (its waiters get ok = 0) and frees j; NULL is a
 * no-op. */
void jwks_free(struct jwks *j);

#endif
