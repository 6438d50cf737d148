/* deliver.h -- outbound delivery: libcurl multi driven by the libevent loop
 * (curl_multi_socket_action, as in curl's hiperfifo example), signing,
 * retries per schedule, every attempt stored.
 * A delivery has one owner at a time: store (pending row) -> this module
 * once claimed (in flight, via CURLOPT_PRIVATE) -> store again when its
 * attempt is recorded. Nothing is dropped: a delivery whose outcome could
 * not be stored is claimed again when its lease ends.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_DELIVER_H
#define CORE_DELIVER_H

#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "store.h"

struct event_base;
struct deliver;

/* Creates the delivery engine on base, reading and writing s (borrowed,
 * must outlive it). Nothing is sent until deliver_set_config. Returns new
 * or NULL with a reason in err. */
struct deliver *deliver_new(struct event_base *base, struct store *s, char *err, size_t errlen);

/* Uses cfg's endpoints, allow_private and user agent from now on. cfg is
 * borrowed and must stay valid until the next call or deliver_free; in-flight
 * transfers look their endpoint up by name when they complete, so a reload
 * that removes an endpoint leaves them safe. */
void deliver_set_config(struct deliver *d, const struct config *cfg);

/* New deliveries may be due: claim and start what is due, soon (from the
 * loop, not inside this call). Call after the group holding them committed. */
void deliver_kick(struct deliver *d);

/* Runs when a probe ends: status_code is the HTTP status, or 0 with a
 * reason (connection error, timeout, address refused). Called from the
 * loop; the probe is freed right after. */
typedef void (*deliver_probe_fn)(void *arg, int status_code, const char *reason);

/* POSTs body (copied) to url once, outside the queue and without retries
 * (e.g. a new subscription's verification POST), on the same curl multi
 * and behind the same SSRF guard as deliveries. headers: NULL-terminated
 * "Name: value" lines, copied. A 3xx is not followed. Returns 0 (done will
 * run exactly once; with status_code -1 from deliver_free when the probe
 * never finished), or -1 when it could not start (done not called). */
int deliver_probe(struct deliver *d, const char *url, const char *body, size_t len,
                  const char *const *headers, int64_t timeout_ms, deliver_probe_fn done,
                  void *arg);

/* Number of transfers in flight. */
int deliver_inflight(const struct deliver *d);

/* Stops claiming new work; transfers in flight go on. When none is left,
 * or after grace_ms, the rest are aborted (their leases end, so they are
 * claimed again after a restart) and done(arg) runs from the loop. */
void deliver_shutdown(struct deliver *d, int64_t grace_ms, void (*done)(void *arg), void *arg);

/* Aborts every transfer and frees; NULL is a no-op. */
void deliver_free(struct deliver *d);

/* ---- endpoint state (SPEC section 7) ---- */

/* 1 when name was disabled by a 410, disable_after or the admin API (and
 * not enabled since), else 0. Deliveries routed to it are created held. */
int deliver_endpoint_disabled(const struct deliver *d, const char *name);

/* Disables (reason may be NULL) or enables name, in the open group: its
 * pending deliveries become held, or its held ones pending and due now.
 * Emits waybill.endpoint.disabled / .enabled. Doing what is already so is
 * a no-op. Returns 0, or -1 with a reason (unknown endpoint, store error). */
int deliver_endpoint_set_disabled(struct deliver *d, const char *name, int disabled,
                                  const char *reason, char *err, size_t errlen);

/* Operational events (waybill.delivery.failed, waybill.endpoint.disabled,
 * waybill.endpoint.enabled) go to fn(arg, type, data) from the loop; fn
 * takes the reference to data. NULL fn: dropped. */
typedef void (*deliver_notify_fn)(void *arg, const char *type, json_t *data);
void deliver_set_notify(struct deliver *d, deliver_notify_fn fn, void *arg);

/* ---- pure helpers (exposed for the unit tests) ---- */

/* What an HTTP answer means for a delivery (SPEC section 7). */
enum deliver_outcome {
    DELIVER_DELIVERED,   /* a success status */
    DELIVER_RETRY,       /* any other status, or no response: retry per schedule */
    DELIVER_RETRY_AFTER, /* 429 / 503: retry per schedule, honouring Retry-After */
    DELIVER_FAILED,      /* 406: failed now, no retry */
    DELIVER_GONE         /* 410: failed now; the endpoint is to be disabled */
};

/* Classifies status_code (0 = no HTTP response) under an endpoint's success
 * mode: any 2xx, or exactly 200 with CONFIG_SUCCESS_200. 3xx is a failure
 * (redirects are not followed). Can't fail. */
enum deliver_outcome deliver_outcome_classify(int status_code, enum config_success success);

#define DELIVER_RETRY_AFTER_MAX_MS (24 * 3600 * 1000LL)

/* Parses a Retry-After value, delta seconds ("120") or an HTTP date
 * ("Wed, 21 Oct 2015 07:28:00 GMT"), into a delay in ms from now_ms
 * (Unix ms): 0 for a date in the past, capped at DELIVER_RETRY_AFTER_MAX_MS.
 * Returns -1 when value is NULL, empty or not one of the two forms. */
int64_t deliver_retry_after_parse(const char *value, int64_t now_ms);

/* The step after an attempt made at schedule position pos of retry_ms
 * (nretry delays, [0] before the first attempt). Returns pos + 1 and sets
 * *delay_ms to retry_ms[pos + 1], with +-10% uniform jitter when jitter is
 * non-zero (rnd is a uniform 32-bit random number; rnd = 2^31 gives the
 * exact delay); returns -1 (*delay_ms untouched) when the schedule is
 * exhausted. */
int deliver_schedule_next(const int64_t *retry_ms, size_t nretry, int pos, int jitter, uint32_t rnd,
                          int64_t *delay_ms);

/* 1 when addr (family AF_INET or AF_INET6, network order, as in a sockaddr)
 * is one an endpoint may not reach without allow_private: loopback
 * (127/8, ::1), unspecified (0/8, ::), private (10/8, 172.16/12,
 * 192.168/16, fc00::/7), link-local (169.254/16 including the metadata
 * address 169.254.169.254, fe80::/10), CGNAT (100.64/10), and these ranges
 * seen through IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96) or
 * NAT64 (64:ff9b::/96) IPv6.
 * Any other family counts as private. Else 0. */
int deliver_address_private(int family, const void *addr);

#endif
