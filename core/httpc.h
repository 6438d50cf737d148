/* httpc.h -- the one HTTP client: a libcurl multi handle driven by the
 * libevent loop (curl_multi_socket_action, the structure of curl's
 * hiperfifo example), shared by deliveries, subscription probes and JWKS
 * fetches. It owns the socket and timer glue, the SSRF guard (every
 * connection of a guarded request goes to a public address, or to one
 * allow_private names, checked after DNS on the very address connected)
 * and completion dispatch to each transfer's callback.
 * Ownership: a transfer belongs to httpc from httpc_start until its done
 * callback returns, or until httpc_cancel; the caller keeps the handle only
 * to cancel it. Invariants (checked under WAYBILL_CHECKS): a transfer is
 * added to the multi once, and ends exactly once (done, or cancel).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_HTTPC_H
#define CORE_HTTPC_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct httpc;
struct httpc_xfer;

/* Creates the client on base (libcurl's global state is set up here and
 * released by httpc_free). Until httpc_set_allow, guarded requests reach
 * public addresses only. Returns new, or NULL with a reason in err. */
struct httpc *httpc_new(struct event_base *base, char *err, size_t errlen);

/* 1 when the private address ip (family AF_INET or AF_INET6, network
 * order) may be reached anyway (the config's allow_private), else 0. */
typedef int (*httpc_allow_fn)(void *arg, int family, const unsigned char *ip);

/* The guard asks allowed(arg, ...) from now on about private addresses
 * (directly, and for the IPv4 address inside an IPv6 one); NULL allows
 * none. The owner answers from its current config, so this module needs
 * none. */
void httpc_set_allow(struct httpc *hc, httpc_allow_fn allowed, void *arg);

/* Ends every transfer still open with status -1 ("shutting down"; their
 * callbacks cannot start new ones), then frees; NULL is a no-op. Free the
 * modules that hold transfers first if they would rather cancel theirs. */
void httpc_free(struct httpc *hc);

/* ---- header lists ---- */

struct httpc_header {
    char *name, *value; /* owned */
};

/* Outgoing headers, one value per name (case-insensitive; a later set
 * replaces the value in place). Zero-initialize; free with
 * httpc_headers_clear. */
struct httpc_headers {
    struct httpc_header *v;
    size_t n, cap;
    int failed; /* an allocation failed: the list is incomplete */
};

/* Sets name to value (both copied). Returns 0; 1 when name is not an RFC
 * 9110 token or value holds CR or LF (skipped); -1 when out of memory (and
 * failed is set). */
int httpc_headers_set(struct httpc_headers *h, const char *name, const char *value);

/* Frees what h holds and zeroes it. */
void httpc_headers_clear(struct httpc_headers *h);

/* ---- transfers ---- */

struct httpc_request {
    const char *url;  /* http:// or https:// (others are refused by curl); copied */
    const char *body; /* the POST body; NULL for a GET */
    size_t body_len;
    int copy_body; /* 1: body is copied; 0: borrowed until the transfer ends */
    const struct httpc_headers *headers; /* copied; NULL for none; empty values are sent */
    const char *const *lines; /* more headers, "Name: value", NULL-terminated, copied; or NULL */
    const char *user_agent;   /* copied; NULL: none unless a header sets one */
    int64_t timeout_ms;       /* the whole transfer */
    size_t response_max;      /* response body bytes kept; the rest is read and dropped */
    int response_limit;       /* 1: a longer response fails the transfer (too_large) instead */
    int guarded;              /* 1: the SSRF guard applies, and no proxy from the environment
                               * (it would bypass the guard) */
};

/* How a transfer ended. Redirects are never followed (a 3xx is a status). */
struct httpc_result {
    int status;            /* the HTTP status; 0 when there was no response; -1 when
                            * httpc_free ended the transfer */
    const char *error;     /* NULL when answered; else why not: the guard's refusal,
                            * curl's error buffer, or the text of curl's code */
    const char *code_text; /* NULL when answered; else the text of curl's code alone */
    int too_large;         /* the response outgrew response_max under response_limit */
    const char *body;      /* the response body kept, NUL-terminated ("" when none) */
    size_t body_len;
    const struct httpc_xfer *xfer; /* for httpc_result_header */
};

/* Runs once when a started transfer ends, from the loop (never from inside
 * httpc_start). r and everything it points to are valid during the call
 * only; the transfer is freed right after. The callback may start
 * transfers and cancel other ones, not its own. */
typedef void (*httpc_done_fn)(void *arg, const struct httpc_result *r);

/* Starts req on the shared multi (curl's 0 ms timer then runs it from the
 * loop). Returns the transfer, or NULL with a reason in err when it could
 * not start (done is then never called). */
struct httpc_xfer *httpc_start(struct httpc *hc, const struct httpc_request *req,
                               httpc_done_fn done, void *arg, char *err, size_t errlen);

/* Aborts x without calling its done callback, and frees it. x must not
 * have ended (a done callback must not cancel its own transfer). */
void httpc_cancel(struct httpc *hc, struct httpc_xfer *x);

/* The value of response header name (the last one when repeated), borrowed
 * until the callback returns; NULL when absent or r has no response. */
const char *httpc_result_header(const struct httpc_result *r, const char *name);

/* Number of transfers open. */
int httpc_inflight(const struct httpc *hc);

/* ---- one-off requests ---- */

/* Runs when a probe ends: status_code is the HTTP status; or 0 with a
 * reason (connection error, timeout, address refused); or -1 from
 * httpc_free when it never finished. reason is "" when answered. */
typedef void (*httpc_probe_fn)(void *arg, int status_code, const char *reason);

/* POSTs body (copied) to url once, guarded, discarding the response (e.g.
 * a new subscription's verification POST). headers: NULL-terminated
 * "Name: value" lines, copied. Returns 0 (done runs exactly once), or -1
 * when it could not start (done not called). */
int httpc_probe(struct httpc *hc, const char *url, const char *body, size_t len,
                const char *const *headers, int64_t timeout_ms, httpc_probe_fn done, void *arg);

/* ---- pure helpers (exposed for the unit tests) ---- */

/* 1 when addr (family AF_INET or AF_INET6, network order, as in a sockaddr)
 * is one a guarded request may not reach without allow_private: loopback
 * (127/8, ::1), unspecified (0/8, ::), private (10/8, 172.16/12,
 * 192.168/16, fc00::/7), link-local (169.254/16 including the metadata
 * address 169.254.169.254, fe80::/10), CGNAT (100.64/10), and these ranges
 * seen through IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96) or
 * NAT64 (64:ff9b::/96) IPv6.
 * Any other family counts as private. Else 0. */
int httpc_address_private(int family, const void *addr);

/* An HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT", or the RFC 850 and
 * asctime forms) as Unix seconds; -1 when text is not one (curl's
 * lenient parser: the caller checks the shape it needs). */
int64_t httpc_date_parse(const char *text);

#endif
