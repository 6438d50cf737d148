/* server.c -- inbound webhooks and the admin API on libevent's evhttp.
 * Inbound checks run in SPEC order: path (404), method (405), size (413,
 * evhttp stops reading past max_body), signature and timestamp (401), JSON
 * (400), dedupe, then the event joins the store's open group and the reply
 * waits for that group's commit: 200 only after commit, 503 if it failed.
 * Invariant: every request gets exactly one reply; an ingest owns its copy
 * of what routing needs, since the request may be gone by commit time.
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include "admin.h"
#include "config.h"
#include "gateway.h"
#include "jsonx.h"
#include "jwks.h"
#include "log.h"
#include "metrics.h"
#include "route.h"
#include "rules.h"
#include "server.h"
#include "store.h"
#include "util.h"
#include "verify.h"

struct server {
    struct gateway *gw;
    struct evhttp *inbound;
    struct evhttp_bound_socket *inbound_sock;
    struct admin *admin;
    SSL_CTX *tls;          /* inbound over TLS when set (config tls) */
    struct jwks **jwks;    /* ShipEngine key sources by location, cached */
    size_t njwks;
    int freeing;           /* set while server_free runs: parked requests get 503 */
};

/* ---- replies ---- */

void server_reply_json(struct evhttp_request *req, int code, const char *reason, json_t *body) {
    struct evbuffer *out = evbuffer_new();
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    if (out && text)
        evbuffer_add(out, text, strlen(text));
    evhttp_send_reply(req, code, reason, out);
    free(text);
    if (out)
        evbuffer_free(out);
    json_decref(body);
}

void server_reply_error(struct evhttp_request *req, int code, const char *reason,
                        const char *message) {
    server_reply_json(req, code, reason, json_pack("{ss}", "error", message));
}

const char *server_method_name(int m) {
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

/* ---- inbound ---- */

/* Everything an accepted event needs after its commit (all owned). */
struct ingest {
    struct server *srv;
    struct evhttp_request *req;
    char id[UTIL_ID_MAX];
    int duplicate;     /* answered with the first copy's id, not routed */
    int route;         /* 0 when the adapter failed: stored as rule_error */
    char *source, *source_id, *type, *created_at, *data_json, *headers_json;
    char *raw;
    size_t raw_len;
    int64_t received_at;
    uint64_t data_token; /* the adapter's data kept for routing (rules_adapt_keep) */
    struct gateway *gw;  /* outlives the server and the store (ingest_free may run late) */
};

static void ingest_free(struct ingest *in) {
    if (!in)
        return;
    /* Not routed (a duplicate, a failed commit, a refusal): its kept data
     * goes now; a token of an older generation is a no-op. */
    if (in->data_token && in->gw)
        rules_data_drop(in->gw->rules, in->data_token);
    free(in->source);
    free(in->source_id);
    free(in->type);
    free(in->created_at);
    free(in->data_json);
    free(in->headers_json);
    free(in->raw);
    free(in);
}

/* 200 {"id":"evt_..."}: the common answer, written without a jansson
 * object (an id is letters, digits and '_', so nothing needs escaping). */
static void reply_id(struct evhttp_request *req, const char *id) {
    struct evbuffer *out = evbuffer_new();
    if (!out) {
        server_reply_json(req, 200, "OK", json_pack("{ss}", "id", id));
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add_printf(out, "{\"id\":\"%s\"}", id);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void on_ingest_committed(void *arg, int ok) {
    struct ingest *in = arg;
    struct evkeyvalq *oh = evhttp_request_get_output_headers(in->req);

    if (!ok) {
        metrics_event_rejected(in->source, "store_unavailable");
        evhttp_add_header(oh, "Retry-After", "5");
        server_reply_error(in->req, 503, "Service Unavailable", "store unavailable, retry later");
        ingest_free(in);
        return;
    }
    if (in->duplicate)
        metrics_event_rejected(in->source, "duplicate");
    else
        metrics_event_received(in->source);
    if (in->duplicate)
        server_reply_json(in->req, 200, "OK", json_pack("{sssb}", "id", in->id, "duplicate", 1));
    else
        reply_id(in->req, in->id);
    if (in->route) {
        struct rules_input ev = {in->id,         in->source,    in->source_id,
                                 in->type,       in->created_at, in->received_at,
                                 in->data_json,  in->raw,       in->raw_len,
                                 in->headers_json, 1 /* data_json from rules_adapt */,
                                 in->data_token};
        route_event(in->srv->gw->route, &ev);
        in->data_token = 0; /* taken or freed by rules_route */
    }
    ingest_free(in);
}

static const char *header_lookup(void *ctx, const char *name) {
    return evhttp_find_header(ctx, name);
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
 * costs n log n, not n^2). Built straight into a buffer (no jansson object
 * per request). New string, NULL on failure. */
static char *headers_to_json(struct evkeyvalq *headers) {
    struct util_buf out = {0};
    struct hdr *h = NULL, **by_name = NULL;
    size_t n = 0, i;
    char *text = NULL;

    for (struct evkeyval *kv = headers->tqh_first; kv; kv = kv->next.tqe_next)
        n++;
    if (n && (!(h = calloc(n, sizeof *h)) || !(by_name = calloc(n, sizeof *by_name))))
        goto done;
    n = 0;
    for (struct evkeyval *kv = headers->tqh_first; kv; kv = kv->next.tqe_next) {
        struct hdr *e = &h[n];
        for (i = 0; kv->key[i] && i < sizeof e->name - 1; i++)
            e->name[i] = (char)tolower((unsigned char)kv->key[i]);
        e->name[i] = '\0';
        e->namelen = i;
        e->value = kv->value;
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
    for (i = 0; i < n; i++) {
        size_t mark = out.len;
        if (!h[i].keep)
            continue;
        if ((out.len > 1 && util_buf_append(&out, ",", 1) < 0) ||
            jsonx_append_string(&out, h[i].name, h[i].namelen) < 0 ||
            util_buf_append(&out, ":", 1) < 0 ||
            jsonx_append_string(&out, h[i].value, strlen(h[i].value)) < 0) {
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

static EVP_PKEY *key_lookup(void *ctx, const char *kid) {
    return ctx ? jwks_find(ctx, kid) : NULL;
}

/* The cached key source for location, made on first use. NULL with a
 * logged reason when it cannot be made. */
static struct jwks *server_jwks(struct server *srv, const char *location) {
    struct jwks **grown, *j;
    char err[300];

    for (size_t i = 0; i < srv->njwks; i++)
        if (jwks_is(srv->jwks[i], location))
            return srv->jwks[i];
    grown = realloc(srv->jwks, (srv->njwks + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    srv->jwks = grown;
    j = jwks_new(srv->gw->httpc, location, err, sizeof err);
    if (!j) {
        log_msg(LOG_ERROR, "jwks: %s", err);
        return NULL;
    }
    srv->jwks[srv->njwks++] = j;
    return j;
}

/* A request waiting for a JWKS refetch (ShipEngine, unknown kid). */
struct parked {
    struct server *srv;
    struct evhttp_request *req;
};

static void on_inbound(struct evhttp_request *req, void *arg);

static void on_keys_refetched(void *arg, int ok) {
    struct parked *p = arg;
    UNUSED(ok);
    if (p->srv->freeing) {
        evhttp_add_header(evhttp_request_get_output_headers(p->req), "Retry-After", "5");
        server_reply_error(p->req, 503, "Service Unavailable", "shutting down");
    } else {
        /* Verify again: the kid was refetched once, so an unknown kid now
         * gets its 401 without another fetch. */
        on_inbound(p->req, p->srv);
    }
    free(p);
}

static void on_inbound(struct evhttp_request *req, void *arg) {
    struct server *srv = arg;
    struct gateway *gw = srv->gw;
    struct rules *rules = gw->rules;
    const struct config *cfg = rules_config(rules);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    const struct config_source *src = path ? config_source_by_path(cfg, path) : NULL;
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    struct evbuffer *body_buf = evhttp_request_get_input_buffer(req);
    struct rules_event ev = {0};
    struct ingest *in = NULL;
    char reason[512], serr[256], msg[600];
    size_t len;
    const char *body;
    int rc;

    if (gw->stopping) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "5");
        server_reply_error(req, 503, "Service Unavailable", "shutting down");
        metrics_event_rejected(NULL, "shutting_down");
        return;
    }
    if (!src) {
        snprintf(msg, sizeof msg, "no source at %s", path ? path : "?");
        server_reply_error(req, 404, "Not Found", msg);
        metrics_event_rejected(NULL, "unknown_source");
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        snprintf(msg, sizeof msg, "method %s not allowed; webhooks are POSTed",
                 server_method_name(evhttp_request_get_command(req)));
        server_reply_error(req, 405, "Method Not Allowed", msg);
        metrics_event_rejected(src->name, "method");
        return;
    }
    len = evbuffer_get_length(body_buf);
    body = (const char *)evbuffer_pullup(body_buf, -1);
    if (!body)
        body = "";

    if (src->verify.kind == VERIFY_SHIPTIFY) {
        /* The signature is in the body: it must be JSON before it is checked. */
        json_t *parsed = jsonx_parse(body, len, 0, reason, sizeof reason);
        if (!parsed) {
            server_reply_error(req, 400, "Bad Request", reason);
            return;
        }
        json_decref(parsed);
    }
    struct verify_request vr = {header_lookup, headers, (const unsigned char *)body, len,
                                util_now_ms(), key_lookup, NULL};
    if (src->verify.kind == VERIFY_SHIPENGINE && !(vr.key_ctx = server_jwks(srv, src->jwks))) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "5");
        server_reply_error(req, 503, "Service Unavailable", "signing keys unavailable");
        return;
    }
    rc = verify_check(&src->verify, src->secrets, src->nsecrets, &vr, reason, sizeof reason);
    if (rc == VERIFY_EUNKNOWN_KEY) {
        const char *kid = evhttp_find_header(headers, "x-shipengine-rsa-sha256-key-id");
        struct parked *p = calloc(1, sizeof *p);
        int r = p ? jwks_refetch(vr.key_ctx, kid, on_keys_refetched, p) : -1;
        if (r == 0) {
            p->srv = srv;
            p->req = req;
            return; /* answered by on_keys_refetched, within the fetch timeout */
        }
        free(p);
        if (r == JWKS_REFETCHED)
            rc = verify_check(&src->verify, src->secrets, src->nsecrets, &vr, reason,
                              sizeof reason);
    }
    if (rc < 0) {
        log_msg(LOG_WARN, "source %s: rejected request: %s", src->name, reason);
        server_reply_error(req, 401, "Unauthorized", "signature verification failed");
        metrics_event_rejected(src->name, "signature");
        return;
    }
    char nonce[256] = "";
    if (src->verify.kind == VERIFY_SHIPTIFY) {
        /* Shiptify's signature does not cover the body: its token is a
         * nonce, kept durably with the body's digest. */
        unsigned char digest[SHA256_DIGEST_LENGTH];
        char hex[2 * SHA256_DIGEST_LENGTH + 1];
        SHA256((const unsigned char *)body, len, digest);
        util_hex_encode(digest, sizeof digest, hex);
        if (verify_shiptify_token((const unsigned char *)body, len, nonce, sizeof nonce) < 0) {
            log_msg(LOG_WARN, "source %s: rejected request: %s", src->name, "token too long");
            server_reply_error(req, 401, "Unauthorized", "signature verification failed");
            return;
        }
        /* Kept for twice the tolerance (a timestamp may be that far either
         * side of now), and at least a day. */
        int64_t keep = 2 * src->verify.tolerance_ms + 1000;
        rc = store_nonce_put(gw->store, src->name, nonce, hex, vr.now_ms,
                             keep > 86400000 ? keep : 86400000, serr, sizeof serr);
        if (rc == STORE_REPLAY) {
            log_msg(LOG_WARN, "source %s: rejected request: %s", src->name,
                    "token replayed with a different body");
            server_reply_error(req, 401, "Unauthorized", "signature verification failed");
            return;
        }
        if (rc < 0) {
            log_msg(LOG_ERROR, "source %s: storing the token failed: %s", src->name, serr);
            evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "5");
            server_reply_error(req, 503, "Service Unavailable", "store unavailable, retry later");
            return;
        }
    }

    in = calloc(1, sizeof *in);
    if (!in)
        goto unavailable;
    in->srv = srv;
    in->gw = gw;
    in->req = req;
    in->received_at = vr.now_ms;
    in->headers_json = headers_to_json(headers);
    if (!in->headers_json)
        goto unavailable;
    rc = rules_adapt_keep(rules, src, body, len, in->headers_json, &ev, reason, sizeof reason);
    in->data_token = ev.data_token; /* freed by ingest_free unless routed */
    ev.data_token = 0;
    if (rc == RULES_EBADJSON) {
        server_reply_error(req, 400, "Bad Request", reason);
        metrics_event_rejected(src->name, "bad_json");
        goto done;
    }
    in->route = rc == 0;
    if (rc < 0) {
        /* The body is valid JSON the adapter could not read: keep it (a
         * fixed adapter can replay it) rather than make the carrier retry. */
        log_msg(LOG_WARN, "source %s: adapter failed: %s", src->name, reason);
        snprintf(msg, sizeof msg, "%s.unknown", src->name);
        rules_event_clear(&ev);
        ev.type = strdup(msg);
        ev.data_json = strdup("{}");
    }
    if (!ev.source_id) {
        /* No carrier id: webhook-id where the signature covers it
         * (Standard Webhooks), else the body's digest, is the key. An
         * unsigned webhook-id would let a replayed body pass as new. */
        const char *wid = src->verify.kind == VERIFY_STANDARD
                              ? evhttp_find_header(headers, "webhook-id")
                              : NULL;
        unsigned char digest[SHA256_DIGEST_LENGTH];
        char hex[2 * SHA256_DIGEST_LENGTH + 1];
        if (wid) {
            ev.source_id = strdup(wid);
        } else if (nonce[0]) {
            ev.source_id = strdup(nonce);
        } else {
            SHA256((const unsigned char *)body, len, digest);
            util_hex_encode(digest, sizeof digest, hex);
            ev.source_id = strdup(hex);
        }
    }
    if (!ev.type || !ev.data_json || !ev.source_id)
        goto unavailable;
    util_id_new("evt_", in->id, sizeof in->id);

    struct store_event se = {in->id,         src->name, ev.source_id,
                             ev.type,        ev.created_at, in->received_at,
                             body,           len,       in->headers_json,
                             ev.data_json,   in->route ? "received" : "rule_error",
                             in->route ? NULL : reason};
    /* max_backlog: past it the carrier is told to come back later rather
     * than the queue growing without bound (counts are kept by triggers). */
    struct store_counts backlog;
    if (store_delivery_counts(gw->store, &backlog) == 0 &&
        backlog.pending + backlog.held >= cfg->max_backlog) {
        log_msg(LOG_WARN, "source %s: backlog of %lld deliveries reached max_backlog; answering 503",
                src->name, (long long)(backlog.pending + backlog.held));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "30");
        server_reply_error(req, 503, "Service Unavailable", "delivery backlog full, retry later");
        goto done;
    }
    rc = store_event_put(gw->store, &se, in->id, sizeof in->id, serr, sizeof serr);
    if (rc < 0) {
        log_msg(LOG_ERROR, "source %s: storing event failed: %s", src->name, serr);
        goto unavailable;
    }
    in->duplicate = rc == STORE_DUP;
    /* counted once acknowledged (on_ingest_committed), under this name */
    in->source = strdup(src->name);
    if (!in->source)
        goto unavailable;
    if (in->duplicate) {
        in->route = 0;
        log_msg(LOG_INFO, "source %s: duplicate of %s (source id %s)", src->name, in->id,
                ev.source_id);
    }
    if (in->route) {
        /* Routing reads these after the commit; the request may be gone. */
        in->raw = malloc(len + 1);
        if (!in->raw)
            goto unavailable;
        memcpy(in->raw, body, len);
        in->raw[len] = '\0';
        in->raw_len = len;
        in->source_id = ev.source_id;
        in->type = ev.type;
        in->created_at = ev.created_at;
        in->data_json = ev.data_json;
        ev.source_id = ev.type = ev.created_at = ev.data_json = NULL;
    }
    if (store_on_commit(gw->store, on_ingest_committed, in) < 0)
        goto unavailable;
    in = NULL; /* owned by the commit callback now */
    goto done;

unavailable:
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "5");
    server_reply_error(req, 503, "Service Unavailable", "store unavailable, retry later");
    metrics_event_rejected(src->name, "store_unavailable");
done:
    rules_event_clear(&ev);
    ingest_free(in);
}

/* ---- listeners ---- */

/* Splits "host:port" ("[::1]:8080" for IPv6). Returns 0 or -1. */
static int split_listen(const char *listen, char *host, size_t hostlen, unsigned short *port) {
    const char *colon = strrchr(listen, ':');
    char *end;
    long p;
    size_t n;

    if (!colon)
        return -1;
    p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return -1;
    n = (size_t)(colon - listen);
    if (n >= 2 && listen[0] == '[' && listen[n - 1] == ']') {
        listen++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen)
        return -1;
    memcpy(host, listen, n);
    host[n] = '\0';
    *port = (unsigned short)p;
    return 0;
}

struct evhttp *server_listener_new(struct event_base *base, const char *listen,
                                   struct evhttp_bound_socket **sock, char *err, size_t errlen) {
    char host[256];
    unsigned short port;
    struct evhttp *http = NULL;

    if (split_listen(listen, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "bad listen address '%s' (want host:port)", listen);
        return NULL;
    }
    http = evhttp_new(base);
    if (!http) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    *sock = evhttp_bind_socket_with_handle(http, host, port);
    if (!*sock) {
        snprintf(err, errlen, "cannot listen on %s", listen);
        evhttp_free(http);
        return NULL;
    }
    /* Every method reaches our handler, which answers 405 itself. */
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_timeout(http, 60);
    /* Headers are stored with each event: bound them (libevent's default
     * is unlimited). */
    evhttp_set_max_headers_size(http, 64 * 1024);
    return http;
}

/* evhttp's bufferevent factory for the TLS listener: each connection gets
 * its own SSL from the server's context, accepting. */
static struct bufferevent *tls_bevcb(struct event_base *base, void *arg) {
    SSL *ssl = SSL_new(arg);
    struct bufferevent *bev;
    if (!ssl)
        return NULL;
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        SSL_free(ssl);
    return bev;
}

/* A server TLS context from PEM files: TLS 1.2 and later only, the key
 * checked against the certificate. NULL with a reason in err. */
static SSL_CTX *tls_context(const char *cert, const char *key, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char why[256] = "out of memory";

    if (!ctx)
        goto fail;
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        goto fail_ssl;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errlen, "tls: cert %s: %s", cert,
                 ERR_reason_error_string(ERR_peek_last_error()));
        goto fail_quiet;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errlen, "tls: key %s: %s", key,
                 ERR_reason_error_string(ERR_peek_last_error()));
        goto fail_quiet;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "tls: key %s does not match cert %s", key, cert);
        goto fail_quiet;
    }
    ERR_clear_error();
    return ctx;
fail_ssl:
    snprintf(why, sizeof why, "%s", ERR_reason_error_string(ERR_peek_last_error()));
fail:
    snprintf(err, errlen, "tls: %s", why);
fail_quiet:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

struct server *server_new(struct gateway *gw, char *err, size_t errlen) {
    const struct config *cfg = rules_config(gw->rules);
    struct server *srv = calloc(1, sizeof *srv);

    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    srv->gw = gw;
    srv->inbound = server_listener_new(gw->base, cfg->listen, &srv->inbound_sock, err, errlen);
    if (!srv->inbound)
        goto fail;
    evhttp_set_gencb(srv->inbound, on_inbound, srv);
    if (cfg->tls_cert && cfg->tls_key) {
        srv->tls = tls_context(cfg->tls_cert, cfg->tls_key, err, errlen);
        if (!srv->tls)
            goto fail;
        evhttp_set_bevcb(srv->inbound, tls_bevcb, srv->tls);
    }
    if (cfg->admin_listen) {
        srv->admin = admin_new(gw, cfg->admin_listen, err, errlen);
        if (!srv->admin)
            goto fail;
    }
    server_reconfigure(srv);
    log_msg(LOG_INFO, "listening for webhooks on %s%s%s%s", cfg->listen, srv->tls ? " (TLS)" : "",
            cfg->admin_listen ? ", admin on " : "", cfg->admin_listen ? cfg->admin_listen : "");
    return srv;
fail:
    server_free(srv);
    return NULL;
}

void server_reconfigure(struct server *srv) {
    const struct config *cfg = rules_config(srv->gw->rules);
    size_t kept = 0;
    evhttp_set_max_body_size(srv->inbound, (ev_ssize_t)cfg->max_body);
    /* A reload reads JWKS files again (on their next use): a key removed
     * from the file stops verifying. URL key sets stay cached; they are
     * refetched on an unknown kid. A file source never has waiters (its
     * refetch is synchronous), so freeing it here strands no request. */
    for (size_t i = 0; i < srv->njwks; i++) {
        if (!jwks_is_url(srv->jwks[i]))
            jwks_free(srv->jwks[i]);
        else
            srv->jwks[kept++] = srv->jwks[i];
    }
    srv->njwks = kept;
    /* Key sources load now, not on the first request: a URL's first fetch
     * runs while no carrier waits for it. */
    for (size_t i = 0; i < cfg->nsources; i++)
        if (cfg->sources[i].verify.kind == VERIFY_SHIPENGINE && cfg->sources[i].jwks)
            server_jwks(srv, cfg->sources[i].jwks);
}

void server_stop_inbound(struct server *srv) {
    if (srv && srv->inbound_sock) {
        evhttp_del_accept_socket(srv->inbound, srv->inbound_sock);
        srv->inbound_sock = NULL;
    }
}

void server_free(struct server *srv) {
    if (!srv)
        return;
    srv->freeing = 1;
    for (size_t i = 0; i < srv->njwks; i++)
        jwks_free(srv->jwks[i]);
    free(srv->jwks);
    if (srv->inbound)
        evhttp_free(srv->inbound);
    SSL_CTX_free(srv->tls);
    admin_free(srv->admin);
    free(srv);
}
