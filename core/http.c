/* http.c -- what both HTTP listeners share, on libevent's evhttp: binding a
 * listener (every method reaches the handler, bounded header size and idle
 * time), TLS 1.2+ from PEM files, and JSON replies.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "http.h"

/* ---- replies ---- */

void http_reply_json(struct evhttp_request *req, int code, const char *reason, json_t *body) {
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

void http_reply_error(struct evhttp_request *req, int code, const char *reason,
                      const char *message) {
    http_reply_json(req, code, reason, json_pack("{ss}", "error", message));
}

const char *http_method_name(int m) {
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "?";
}

/* ---- listeners ---- */

int http_split_listen(const char *listen, char *host, size_t hostlen, unsigned short *port) {
    const char *colon = strrchr(listen, ':');
    char *end;
    long p;
    size_t n;

    if (!colon || !colon[1])
        return -1;
    p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return -1;
    n = (size_t)(colon - listen);
    if (n == 0) { /* ":port" */
        listen = "0.0.0.0";
        n = 7;
    }
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

struct evhttp *http_listener_new(struct event_base *base, const char *listen,
                                 struct evhttp_bound_socket **sock, char *err, size_t errlen) {
    char host[256];
    unsigned short port;
    struct evhttp *http = NULL;

    if (http_split_listen(listen, host, sizeof host, &port) < 0) {
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
 * its own SSL from the listener's context, accepting. */
static struct bufferevent *http_tls_bevcb(struct event_base *base, void *arg) {
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
SSL_CTX *http_tls_context(const char *cert, const char *key, char *err, size_t errlen) {
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

void http_listener_tls(struct evhttp *http, SSL_CTX *tls) {
    evhttp_set_bevcb(http, http_tls_bevcb, tls);
}
