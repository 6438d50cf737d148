/* inbound.c -- the webhook listener: a carrier's request -> checks -> the
 * store's open group -> a reply after that group's durable commit -> routing.
 * Checks run in SPEC order: path (404), method (405), size (413, httpd
 * stops reading past max_body), signature and timestamp (401), JSON (400),
 * a Shiptify token (stored first: its answer, from the loop, says replay
 * 401 or go on; see ingest.c), the backlog (503); then the event joins the
 * open group and the reply waits for that group's commit: 200 only after
 * commit (with the first copy's id for a duplicate), 503 if it failed.
 * Invariant: every request gets exactly one reply (an accepted one from
 * on_ingested, after its commit).
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <http_parser.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include "config.h"
#include "http.h"
#include "httpd.h"
#include "inbound.h"
#include "jsonx.h"
#include "jwks.h"
#include "log.h"
#include "metrics.h"
#include "reqlog.h"
#include "ingest.h"
#include "rules.h"
#include "store.h"
#include "util.h"
#include "verify.h"

struct inbound {
    struct inbound_deps deps;
    struct httpd *httpd;
    SSL_CTX *tls;       /* over TLS when set (config tls) */
    struct jwks **jwks; /* ShipEngine key sources by location, cached */
    size_t njwks;
    int stopping; /* inbound_stop ran: requests still arriving get 503 */
    int freeing;  /* set while inbound_free runs: parked requests get 503 */
};

static const struct config *inbound_config(const struct inbound *ib) {
    return rules_config(*ib->deps.rules);
}

/* ---- after the commit ---- */

/* 200 {"id":"evt_..."}: the common answer, written without a jansson
 * object or a heap allocation (an id is letters, digits and '_', so nothing
 * needs escaping). */
static void reply_id(struct httpd_req *req, const char *id) {
    char body[UTIL_ID_MAX + 16];
    int n = snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
    if (n < 0 || (size_t)n >= sizeof body) {
        httpd_reply_json(req, 200, "OK", NULL, json_pack("{ss}", "id", id));
        return;
    }
    httpd_reply(req, 200, "OK", NULL, body, (size_t)n);
}

/* The answer, once the event's group is durable or failed (ingest_done_fn;
 * arg is the request). */
static void on_ingested(void *arg, int ok, const char *id, int duplicate, const char *source) {
    struct httpd_req *req = arg;

    if (!ok) {
        metrics_event_rejected(source, "store_unavailable");
        httpd_reply_error(req, 503, "Service Unavailable", "Retry-After: 5\r\n",
                          "store unavailable, retry later");
        return;
    }
    if (log_threshold <= LOG_INFO) { /* the 200's line, with its ids (inbound_reply_log skips it) */
        char peer[80];
        reqlog_line(LOG_INFO, "inbound", httpd_req_method_name(req), httpd_req_path(req), 200,
                    httpd_req_peer(req, peer, sizeof peer), source, id, duplicate);
    }
    if (duplicate) {
        metrics_event_duplicate(source); /* answered 200: not a rejection */
        httpd_reply_json(req, 200, "OK", NULL, json_pack("{sssb}", "id", id, "duplicate", 1));
    } else {
        metrics_event_received(source);
        reply_id(req, id);
    }
}

static const char *header_lookup(void *ctx, const char *name) {
    return httpd_req_header(ctx, name);
}

/* One request header for headers_to_json: its lowercase name (at most 127
 * bytes kept) and whether it is the last with that name. */
struct hdr {
    char name[128];
    size_t namelen;
    const char *value;
    int keep;
};

/* By name, then by position (entries sit in one array in request order). */
static int hdr_cmp(const void *pa, const void *pb) {
    const struct hdr *a = *(const struct hdr *const *)pa, *b = *(const struct hdr *const *)pb;
    int c = strcmp(a->name, b->name);
    return c ? c : (a < b ? -1 : a > b);
}

/* The request headers as a JSON object with lowercase names (at most 127
 * bytes kept); credentials (Authorization, Cookie) are left out, and so is
 * a header whose name or value is not valid UTF-8. A name sent twice keeps
 * its last value (found by sorting, so a request with thousands of headers
 * costs n log n, not n^2). Names in bytewise order, the order the encoder
 * gives keys of its own, so decoding them keeps no received order. Built
 * straight into a buffer (no jansson object per request). New string, NULL
 * on failure. */
static char *headers_to_json(const struct httpd_req *req) {
    struct util_buf out = {0};
    struct hdr *h = NULL, **by_name = NULL;
    size_t n = httpd_req_nheaders(req), total = n, i;
    char *text = NULL;

    if (n && (!(h = calloc(n, sizeof *h)) || !(by_name = calloc(n, sizeof *by_name))))
        goto done;
    n = 0;
    for (size_t k = 0; k < total; k++) {
        struct hdr *e = &h[n];
        const char *key;
        size_t keylen, vlen;
        httpd_req_header_at(req, k, &key, &keylen, &e->value, &vlen);
        for (i = 0; i < keylen && i < sizeof e->name - 1; i++)
            e->name[i] = (char)tolower((unsigned char)key[i]);
        e->name[i] = '\0';
        e->namelen = i;
        if (strcmp(e->name, "authorization") == 0 || strcmp(e->name, "cookie") == 0)
            continue;
        by_name[n] = e;
        n++;
    }
    if (n > 1)
        qsort(by_name, n, sizeof *by_name, hdr_cmp);
    for (i = 0; i < n; i++) /* the last of each run of one name */
        by_name[i]->keep = i + 1 == n || strcmp(by_name[i]->name, by_name[i + 1]->name) != 0;
    if (util_buf_append(&out, "{", 1) < 0)
        goto done;
    for (i = 0; i < n; i++) { /* by name: the decoder need not keep their order */
        const struct hdr *e = by_name[i];
        size_t mark = out.len;
        if (!e->keep)
            continue;
        if ((out.len > 1 && util_buf_append(&out, ",", 1) < 0) ||
            jsonx_append_string(&out, e->name, e->namelen) < 0 ||
            util_buf_append(&out, ":", 1) < 0 ||
            jsonx_append_string(&out, e->value, strlen(e->value)) < 0) {
            out.len = mark; /* not UTF-8 (or no memory): leave this header out */
            out.p[mark] = '\0';
        }
    }
    if (util_buf_append(&out, "}", 1) < 0)
        goto done;
    text = out.p;
    out.p = NULL;
done:
    util_buf_free(&out);
    free(h);
    free(by_name);
    return text;
}

/* ---- key sources (ShipEngine) ---- */

static EVP_PKEY *key_lookup(void *ctx, const char *kid) {
    return ctx ? jwks_find(ctx, kid) : NULL;
}

/* The cached key source for location, made on first use. NULL with a
 * logged reason when it cannot be made. */
static struct jwks *inbound_jwks(struct inbound *ib, const char *location) {
    struct jwks **grown, *j;
    char err[300];

    for (size_t i = 0; i < ib->njwks; i++)
        if (jwks_is(ib->jwks[i], location))
            return ib->jwks[i];
    grown = realloc(ib->jwks, (ib->njwks + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    ib->jwks = grown;
    j = jwks_new(ib->deps.httpc, location, err, sizeof err);
    if (!j) {
        log_msg(LOG_ERROR, "jwks: %s", err);
        return NULL;
    }
    ib->jwks[ib->njwks++] = j;
    return j;
}

/* ---- the request ---- */

/* Answers 503 with Retry-After (seconds); counts it under metric when set. */
static void inbound_unavailable(struct httpd_req *req, const char *retry_after, const char *message,
                                const char *source, const char *metric) {
    char header[64];
    snprintf(header, sizeof header, "Retry-After: %s\r\n", retry_after);
    httpd_reply_error(req, 503, "Service Unavailable", header, message);
    if (metric)
        metrics_event_rejected(source, metric);
}

/* A request waiting for a JWKS refetch (ShipEngine, unknown kid). */
struct parked {
    struct inbound *ib;
    struct httpd_req *req;
};

static void on_inbound(struct httpd_req *req, void *arg);

static void on_keys_refetched(void *arg, int ok) {
    struct parked *p = arg;
    UNUSED(ok);
    if (p->ib->freeing) {
        inbound_unavailable(p->req, "5", "shutting down", NULL, NULL);
    } else {
        /* Verify again: the kid was refetched once, so an unknown kid now
         * gets its 401 without another fetch. */
        on_inbound(p->req, p->ib);
    }
    free(p);
}

/* The checks before the body is looked at: shutting down (503), the path
 * names a source (404), the method is POST (405). Returns the source, or
 * NULL when the request was answered. */
static const struct config_source *inbound_source(struct inbound *ib, struct httpd_req *req) {
    const char *path = httpd_req_path(req);
    const struct config_source *src = path ? config_source_by_path(inbound_config(ib), path) : NULL;
    char msg[600];

    if (ib->stopping) {
        inbound_unavailable(req, "5", "shutting down", NULL, "shutting_down");
        return NULL;
    }
    if (!src) {
        snprintf(msg, sizeof msg, "no source at %s", path ? path : "?");
        httpd_reply_error(req, 404, "Not Found", NULL, msg);
        metrics_event_rejected(NULL, "unknown_source");
        return NULL;
    }
    if (httpd_req_method(req) != HTTP_POST) {
        snprintf(msg, sizeof msg, "method %s not allowed; webhooks are POSTed",
                 httpd_req_method_name(req));
        httpd_reply_error(req, 405, "Method Not Allowed", "Allow: POST\r\n", msg);
        metrics_event_rejected(src->name, "method");
        return NULL;
    }
    return src;
}

/* The signature (SPEC section 4), fetching a ShipEngine key set again once
 * on an unknown kid (the request is parked meanwhile). vr is filled for the
 * later steps. Returns 0 verified, 1 answered or parked. */
static int inbound_verify(struct inbound *ib, struct httpd_req *req,
                          const struct config_source *src, const char *body, size_t len,
                          struct verify_request *vr) {
    char reason[512];
    int rc;

    if (src->verify.kind == VERIFY_SHIPTIFY) {
        /* The signature is in the body: it must be JSON before it is checked
         * (past a byte order mark, which this signature does not cover). */
        json_t *parsed;
        if (len >= 3 && memcmp(body, "\xef\xbb\xbf", 3) == 0) {
            body += 3;
            len -= 3;
        }
        parsed = jsonx_parse(body, len, 0, reason, sizeof reason);
        if (!parsed) {
            httpd_reply_error(req, 400, "Bad Request", NULL, reason);
            return 1;
        }
        json_decref(parsed);
    }
    *vr = (struct verify_request){.header = header_lookup,
                                  .header_ctx = req,
                                  .body = (const unsigned char *)body,
                                  .body_len = len,
                                  .now_ms = util_now_ms(),
                                  .key = key_lookup,
                                  .key_ctx = NULL};
    if (src->verify.kind == VERIFY_SHIPENGINE && !(vr->key_ctx = inbound_jwks(ib, src->jwks))) {
        inbound_unavailable(req, "5", "signing keys unavailable", src->name, "keys_unavailable");
        return 1;
    }
    rc = verify_check(&src->verify, src->secrets, src->nsecrets, vr, reason, sizeof reason);
    if (rc == VERIFY_EUNKNOWN_KEY) {
        const char *kid = httpd_req_header(req, "x-shipengine-rsa-sha256-key-id");
        struct parked *p = calloc(1, sizeof *p);
        int r = p ? jwks_refetch(vr->key_ctx, kid, on_keys_refetched, p) : -1;
        if (r == 0) {
            p->ib = ib;
            p->req = req;
            return 1; /* answered by on_keys_refetched, within the fetch timeout */
        }
        free(p);
        if (r == JWKS_REFETCHED)
            rc = verify_check(&src->verify, src->secrets, src->nsecrets, vr, reason, sizeof reason);
    }
    if (rc < 0) {
        log_msg(LOG_WARN, "source %s: rejected request: %s", src->name, reason);
        httpd_reply_error(req, 401, "Unauthorized", NULL, "signature verification failed");
        metrics_event_rejected(src->name, "signature");
        return 1;
    }
    return 0;
}

/* Shiptify's signature does not cover the body: its token is a nonce, kept
 * durably with the body's digest. The nonce goes in first, in its own
 * group, and the event only once the nonce's answer came back (see
 * ingest.c: on PostgreSQL the group is pipelined, and a replay known only
 * at the end of its round trip must not have stored its event by then).
 * A request waits here meanwhile. */
struct nonce_wait {
    struct inbound *ib;
    struct httpd_req *req;
    int64_t now_ms;
    char nonce[256];
};

static void inbound_accept(struct inbound *ib, struct httpd_req *req,
                           const struct config_source *src, const char *body, size_t len,
                           int64_t now_ms, const char *nonce);
static const struct config_source *inbound_source(struct inbound *ib, struct httpd_req *req);

static void on_nonce_done(void *arg, const struct store_done *d) {
    struct nonce_wait *w = arg;
    struct inbound *ib = w->ib;
    const struct config_source *src;
    const char *body;
    size_t len;

    /* The source again: a reload may have changed the config meanwhile (a
     * stopping listener answers 503 here). */
    if (!(src = inbound_source(ib, w->req)))
        goto done;
    if (!d->ok) {
        log_msg(LOG_ERROR, "source %s: storing the token failed: %s", src->name, d->err);
        inbound_unavailable(w->req, "5", "store unavailable, retry later", src->name,
                            "store_unavailable");
        goto done;
    }
    if (d->status == STORE_REPLAY) {
        log_msg(LOG_WARN, "source %s: rejected request: %s", src->name,
                "token replayed with a different body");
        httpd_reply_error(w->req, 401, "Unauthorized", NULL, "signature verification failed");
        metrics_event_rejected(src->name, "replay");
        goto done;
    }
    /* New, or seen with this body (a carrier's retry): the event goes in;
     * its dedupe answers a retry with the first copy's id. */
    body = httpd_req_body(w->req, &len);
    inbound_accept(ib, w->req, src, body, len, w->now_ms, w->nonce);
done:
    free(w);
}

/* Checks a Shiptify token (other sources: nothing to do, returns 0) and
 * stores it; the request goes on from on_nonce_done. Returns 0 when the
 * request goes on now (not Shiptify), or 1 answered or waiting. */
static int inbound_nonce(struct inbound *ib, struct httpd_req *req, const struct config_source *src,
                         const char *body, size_t len, int64_t now_ms) {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    struct nonce_wait *w;
    int64_t keep;

    if (src->verify.kind != VERIFY_SHIPTIFY)
        return 0;
    if (!(w = calloc(1, sizeof *w))) {
        inbound_unavailable(req, "5", "out of memory, retry later", src->name, NULL);
        return 1;
    }
    w->ib = ib;
    w->req = req;
    w->now_ms = now_ms;
    SHA256((const unsigned char *)body, len, digest);
    util_hex_encode(digest, sizeof digest, hex);
    if (verify_shiptify_token((const unsigned char *)body, len, w->nonce, sizeof w->nonce) < 0) {
        log_msg(LOG_WARN, "source %s: rejected request: %s", src->name, "token too long");
        httpd_reply_error(req, 401, "Unauthorized", NULL, "signature verification failed");
        metrics_event_rejected(src->name, "signature");
        free(w);
        return 1;
    }
    /* Kept for twice the tolerance (a timestamp may be that far either side
     * of now), and at least a day. */
    keep = 2 * src->verify.tolerance_ms + 1000;
    if (store_nonce_put_done(ib->deps.store, src->name, w->nonce, hex, now_ms,
                             keep > 86400000 ? keep : 86400000, on_nonce_done, w) < 0) {
        free(w);
        inbound_unavailable(req, "5", "store unavailable, retry later", src->name,
                            "store_unavailable");
    }
    return 1;
}

/* The event's dedupe key when the adapter found no carrier id: webhook-id
 * where the signature covers it (Standard Webhooks), else the Shiptify
 * token, else the body's digest. An unsigned webhook-id would let a
 * replayed body pass as new. New string, NULL when out of memory. */
static char *inbound_source_id(const struct config_source *src, const struct httpd_req *req,
                               const char *nonce, const char *body, size_t len) {
    const char *wid =
        src->verify.kind == VERIFY_STANDARD ? httpd_req_header(req, "webhook-id") : NULL;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];

    if (wid)
        return strdup(wid);
    if (nonce[0])
        return strdup(nonce);
    SHA256((const unsigned char *)body, len, digest);
    util_hex_encode(digest, sizeof digest, hex);
    return strdup(hex);
}

/* Past max_backlog the carrier is told to come back later rather than the
 * queue growing without bound (the counts are kept by the store). Returns
 * 1 answered (503), else 0. */
static int inbound_backlog_full(struct inbound *ib, struct httpd_req *req,
                                const struct config_source *src) {
    int64_t backlog = store_backlog(ib->deps.store); /* a counter, not a query */

    if (backlog < inbound_config(ib)->max_backlog)
        return 0;
    log_msg(LOG_WARN, "source %s: backlog of %lld deliveries reached max_backlog; answering 503",
            src->name, (long long)backlog);
    inbound_unavailable(req, "30", "delivery backlog full, retry later", src->name, "backlog");
    return 1;
}

/* A verified request: the adapter reads it into an event (a body it cannot
 * read is kept as "<source>.unknown" with status rule_error, so a fixed
 * adapter can replay it), which is stored and answered after the commit. */
static void inbound_accept(struct inbound *ib, struct httpd_req *req,
                           const struct config_source *src, const char *body, size_t len,
                           int64_t now_ms, const char *nonce) {
    struct rules_event ev = {0};
    struct ingest_carrier c = {
        .source = src->name, .ev = &ev, .body = body, .len = len, .received_at = now_ms};
    char reason[512], msg[600], serr[256];
    int rc;

    if (!(c.headers_json = headers_to_json(req)))
        goto unavailable;
    rc = rules_adapt_keep(*ib->deps.rules, src, body, len, c.headers_json, &ev, reason,
                          sizeof reason);
    c.data_token = ev.data_token; /* ingest_carrier takes it */
    ev.data_token = 0;
    if (rc == RULES_EBADJSON) {
        httpd_reply_error(req, 400, "Bad Request", NULL, reason);
        metrics_event_rejected(src->name, "bad_json");
        goto done;
    }
    c.adapted = rc == 0;
    if (rc < 0) {
        log_msg(LOG_WARN, "source %s: adapter failed: %s", src->name, reason);
        snprintf(msg, sizeof msg, "%s.unknown", src->name);
        rules_event_clear(&ev);
        ev.type = strdup(msg);
        ev.data_json = strdup("{}");
        c.error = reason;
    }
    if (!ev.source_id)
        ev.source_id = inbound_source_id(src, req, nonce, body, len);
    if (!ev.type || !ev.data_json || !ev.source_id)
        goto unavailable;
    if (inbound_backlog_full(ib, req, src))
        goto done;
    if (ingest_carrier(ib->deps.ingest, &c, on_ingested, req, serr, sizeof serr) == 0)
        goto done; /* answered by on_ingested once the group is durable */
unavailable:
    inbound_unavailable(req, "5", "store unavailable, retry later", src->name, "store_unavailable");
done:
    rules_event_clear(&ev);
    free(c.headers_json);
    if (c.data_token)
        rules_data_drop(*ib->deps.rules, c.data_token);
}

static void on_inbound(struct httpd_req *req, void *arg) {
    struct inbound *ib = arg;
    const struct config_source *src;
    struct verify_request vr;
    const char *body;
    size_t len;

    if (!(src = inbound_source(ib, req)))
        return;
    body = httpd_req_body(req, &len);
    if (inbound_verify(ib, req, src, body, len, &vr) != 0 ||
        inbound_nonce(ib, req, src, body, len, vr.now_ms) != 0)
        return;
    inbound_accept(ib, req, src, body, len, vr.now_ms, "");
}

/* ---- life ---- */

/* The request log's line of every answer but an accepted event's 200
 * (on_ingested writes that one, with the event's ids). */
static void inbound_reply_log(void *arg, const struct httpd_req *req, int code) {
    struct inbound *ib = arg;
    const struct config_source *src;
    const char *path;
    char peer[80];

    if (code == 413) { /* answered by the server before the handler saw it */
        path = httpd_req_path(req);
        src = path ? config_source_by_path(inbound_config(ib), path) : NULL;
        metrics_event_rejected(src ? src->name : NULL, "too_large");
    }
    if (code != 200 && log_threshold <= LOG_INFO)
        reqlog_line(LOG_INFO, "inbound", httpd_req_method_name(req), httpd_req_path(req), code,
                    httpd_req_peer(req, peer, sizeof peer), NULL, NULL, 0);
}

struct inbound *inbound_new(const struct inbound_deps *deps, char *err, size_t errlen) {
    struct inbound *ib = calloc(1, sizeof *ib);
    const struct config *cfg;
    int fd = deps->listen_fd; /* ours: closed on every failure */

    if (!ib) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    ib->deps = *deps;
    cfg = inbound_config(ib);
    if (!(ib->httpd = httpd_new(deps->base, &(struct httpd_limits){.max_body = cfg->max_body},
                                on_inbound, ib))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    httpd_set_reply_hook(ib->httpd, inbound_reply_log, ib);
    if (cfg->tls_cert && cfg->tls_key &&
        !(ib->tls = http_tls_context(cfg->tls_cert, cfg->tls_key, err, errlen)))
        goto fail;
    /* the listener takes fd, closing it if it fails */
    if (httpd_listen_fd(ib->httpd, fd, ib->tls, err, errlen) < 0) {
        fd = -1;
        goto fail;
    }
    inbound_reconfigure(ib);
    return ib;
fail:
    if (fd >= 0)
        close(fd);
    inbound_free(ib);
    return NULL;
}

int inbound_tls(const struct inbound *ib) {
    return ib->tls != NULL;
}

void inbound_reconfigure(struct inbound *ib) {
    const struct config *cfg = inbound_config(ib);
    size_t kept = 0;

    httpd_set_max_body(ib->httpd, cfg->max_body);
    /* A reload reads JWKS files again (on their next use): a key removed
     * from the file stops verifying. URL key sets stay cached; they are
     * refetched on an unknown kid. A file source never has waiters (its
     * refetch is synchronous), so freeing it here strands no request. */
    for (size_t i = 0; i < ib->njwks; i++) {
        if (!jwks_is_url(ib->jwks[i]))
            jwks_free(ib->jwks[i]);
        else
            ib->jwks[kept++] = ib->jwks[i];
    }
    ib->njwks = kept;
    /* Key sources load now, not on the first request: a URL's first fetch
     * runs while no carrier waits for it. */
    for (size_t i = 0; i < cfg->nsources; i++)
        if (cfg->sources[i].verify.kind == VERIFY_SHIPENGINE && cfg->sources[i].jwks)
            inbound_jwks(ib, cfg->sources[i].jwks);
}

void inbound_stop(struct inbound *ib) {
    if (!ib)
        return;
    ib->stopping = 1;
    if (ib->httpd)
        httpd_stop(ib->httpd);
}

void inbound_free(struct inbound *ib) {
    if (!ib)
        return;
    ib->freeing = 1;
    for (size_t i = 0; i < ib->njwks; i++)
        jwks_free(ib->jwks[i]);
    free(ib->jwks);
    httpd_free(ib->httpd);
    SSL_CTX_free(ib->tls);
    free(ib);
}
