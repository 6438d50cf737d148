/* http.c -- what both HTTP listeners share, on libevent's evhttp: binding a
 * listener (every method reaches the handler, bounded header size and idle
 * time), TLS 1.2+ from PEM files, and JSON replies.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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
    /* 15 significant digits: 0.8, not 0.80000000000000004 */
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;

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

static int listen_fd_start(int fd) {
    return listen(fd, 511);
}

int http_bind(const char *listen, char *err, size_t errlen) {
    struct addrinfo hints, *ai = NULL;
    char host[256], port_text[8];
    unsigned short port;
    int fd = -1, one = 1, rc, saved;

    if (http_split_listen(listen, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "bad listen address '%s' (want host:port)", listen);
        return -1;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port_text, sizeof port_text, "%u", port);
    if ((rc = getaddrinfo(host, port_text, &hints, &ai)) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", listen, gai_strerror(rc));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen_fd_start(fd) < 0) {
        saved = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", listen, strerror(saved));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

struct evhttp *http_listener_new(struct event_base *base, const char *listen,
                                 struct evhttp_bound_socket **sock, char *err, size_t errlen) {
    int fd = http_bind(listen, err, errlen);

    return fd < 0 ? NULL : http_listener_fd(base, fd, listen, sock, err, errlen);
}

struct evhttp *http_listener_fd(struct event_base *base, int fd, const char *listen,
                                struct evhttp_bound_socket **sock, char *err, size_t errlen) {
    struct evhttp *http = evhttp_new(base);

    if (!http) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    *sock = evhttp_accept_socket_with_handle(http, fd);
    if (!*sock) {
        snprintf(err, errlen, "cannot listen on %s", listen);
        close(fd);
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
