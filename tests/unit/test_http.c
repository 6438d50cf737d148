/* test_http.c -- http.c: method names; listeners refusing bad addresses
 * with a clear reason and binding 127.0.0.1:0; every method reaching the
 * handler; the 64 KiB header bound; JSON and error replies as a real
 * libevent client sees them; TLS contexts from PEM files made here (and
 * refused when missing or mismatched), and a request over TLS.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <netinet/in.h>
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
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "harness.h"
#include "http.h"

static char tmp_dir[] = "/tmp/waybill-test-http-XXXXXX";

static void test_method_names(void) {
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_GET), "GET");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_POST), "POST");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_HEAD), "HEAD");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_PUT), "PUT");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_DELETE), "DELETE");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_OPTIONS), "OPTIONS");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_TRACE), "TRACE");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_CONNECT), "CONNECT");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_PATCH), "PATCH");
    CHECK_STR_EQ(http_method_name(0), "?");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_GET | EVHTTP_REQ_POST), "?");
    CHECK_STR_EQ(http_method_name(EVHTTP_REQ_PATCH << 1), "?");
    CHECK_STR_EQ(http_method_name(-1), "?");
}

static int bound_port(struct evhttp_bound_socket *sock) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void test_listener_addresses(void) {
    struct event_base *base = event_base_new();
    struct evhttp_bound_socket *sock = NULL;
    struct evhttp *http, *again;
    char err[300], want[400], addr[64], long_host[400];
    /* (a bare "host:" is port 0 here: config.c refuses it first) */
    static const char *const bad[] = {
        "nocolon",         "127.0.0.1:x", "127.0.0.1:80x", "127.0.0.1:-1",
        "127.0.0.1:65536", "[]:80",       "[::1]",         NULL};
    int port;

    for (int i = 0; bad[i]; i++) {
        err[0] = '\0';
        sock = (struct evhttp_bound_socket *)&sock;
        CHECK(http_listener_new(base, bad[i], &sock, err, sizeof err) == NULL);
        snprintf(want, sizeof want, "bad listen address '%s' (want host:port)", bad[i]);
        CHECK_STR_EQ(err, want);
    }
    memset(long_host, 'h', 300);
    snprintf(long_host + 300, sizeof long_host - 300, ":80");
    CHECK(http_listener_new(base, long_host, &sock, err, sizeof err) == NULL);
    CHECK(strncmp(err, "bad listen address 'hhhh", 24) == 0);

    /* an ephemeral port on loopback */
    sock = NULL;
    http = http_listener_new(base, "127.0.0.1:0", &sock, err, sizeof err);
    CHECK(http != NULL && sock != NULL);
    if (!http) {
        fprintf(stderr, "bind: %s\n", err);
        event_base_free(base);
        return;
    }
    port = bound_port(sock);
    CHECK(port > 0);

    /* that port is taken now: a second listener says so */
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    err[0] = '\0';
    again = http_listener_new(base, addr, &sock, err, sizeof err);
    CHECK(again == NULL);
    snprintf(want, sizeof want, "cannot listen on %s: Address already in use", addr);
    CHECK_STR_EQ(err, want);
    if (again)
        evhttp_free(again);

    /* an address this machine does not have (TEST-NET-1) */
    CHECK(http_listener_new(base, "192.0.2.1:0", &sock, err, sizeof err) == NULL);
    CHECK_STR_EQ(err, "cannot listen on 192.0.2.1:0: Cannot assign requested address");
    evhttp_free(http);

    /* IPv6 in brackets, where the machine has it */
    {
        int fd = socket(AF_INET6, SOCK_STREAM, 0);
        struct sockaddr_in6 s6;
        int have6;
        memset(&s6, 0, sizeof s6);
        s6.sin6_family = AF_INET6;
        s6.sin6_addr = in6addr_loopback;
        have6 = fd >= 0 && bind(fd, (struct sockaddr *)&s6, sizeof s6) == 0;
        if (fd >= 0)
            close(fd);
        if (have6) {
            http = http_listener_new(base, "[::1]:0", &sock, err, sizeof err);
            CHECK(http != NULL);
            CHECK(http && bound_port(sock) > 0);
            evhttp_free(http);
        } else {
            fprintf(stderr, "note: no IPv6 loopback here; [::1]:0 not tried\n");
        }
    }
    event_base_free(base);

    /* config.c accepts listen = ":8080" (and cli.c reads a bare ":port" as
     * the wildcard): the listener binds every IPv4 address for it, rather
     * than `waybill check` saying ok and `waybill serve` refusing it. */
    base = event_base_new();
    {
        struct evhttp *any = http_listener_new(base, ":0", &sock, err, sizeof err);
        CHECK(any != NULL);
        CHECK(any && bound_port(sock) > 0);
        if (any)
            evhttp_free(any);
        CHECK(http_listener_new(base, "127.0.0.1:", &sock, err, sizeof err) == NULL);
    }
    event_base_free(base);
}

/* ---- a server and a real client on one loop ---- */

struct seen {
    char methods[16][12];
    int n;
};

static void handler(struct evhttp_request *req, void *arg) {
    struct seen *s = arg;
    const char *uri = evhttp_request_get_uri(req);

    if (s->n < 16)
        snprintf(s->methods[s->n], sizeof s->methods[0], "%s",
                 http_method_name(evhttp_request_get_command(req)));
    s->n++;
    if (strcmp(uri, "/empty") == 0)
        http_reply_json(req, 204, "No Content", NULL);
    else if (strcmp(uri, "/error") == 0)
        http_reply_error(req, 422, "Unprocessable Entity", "bad \"thing\"\\ here");
    else
        http_reply_json(req, 201, "Created",
                        json_pack("{sisssn}", "a", 1, "s", "caf\xc3\xa9", "nil"));
}

struct answer {
    struct event_base *base;
    int done, code;
    char ctype[64], body[256];
};

static void on_answer(struct evhttp_request *req, void *arg) {
    struct answer *a = arg;
    a->done = 1;
    if (req) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
        size_t n = evbuffer_get_length(in);
        a->code = evhttp_request_get_response_code(req);
        snprintf(a->ctype, sizeof a->ctype, "%s", ct ? ct : "");
        if (n >= sizeof a->body)
            n = sizeof a->body - 1;
        evbuffer_remove(in, a->body, n);
        a->body[n] = '\0';
    }
    event_base_loopbreak(a->base);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

/* Sends one request on a new connection (bev: a TLS one, or NULL) and runs
 * the loop until its answer (5 s at most). */
static struct answer ask(struct event_base *base, struct bufferevent *bev, int port,
                         enum evhttp_cmd_type cmd, const char *path, const char *big_header) {
    struct answer a;
    struct evhttp_connection *conn =
        evhttp_connection_base_bufferevent_new(base, NULL, bev, "127.0.0.1", (unsigned short)port);
    struct evhttp_request *req = evhttp_request_new(on_answer, &a);
    struct event *deadline = evtimer_new(base, on_deadline, base);
    struct timeval five = {5, 0};

    memset(&a, 0, sizeof a);
    a.base = base;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    if (big_header)
        evhttp_add_header(evhttp_request_get_output_headers(req), "X-Big", big_header);
    evhttp_make_request(conn, req, cmd, path);
    evtimer_add(deadline, &five);
    event_base_dispatch(base);
    CHECK(a.done);
    event_free(deadline);
    evhttp_connection_free(conn);
    return a;
}

static void test_replies(void) {
    struct event_base *base = event_base_new();
    struct evhttp_bound_socket *sock;
    struct seen seen;
    struct evhttp *http;
    struct answer a;
    char err[256], *big;
    int port;
    static const enum evhttp_cmd_type cmds[] = {
        EVHTTP_REQ_GET,     EVHTTP_REQ_POST,  EVHTTP_REQ_PUT,   EVHTTP_REQ_DELETE,
        EVHTTP_REQ_OPTIONS, EVHTTP_REQ_TRACE, EVHTTP_REQ_PATCH, EVHTTP_REQ_HEAD};
    static const char *const names[] = {"GET",     "POST",  "PUT",   "DELETE",
                                        "OPTIONS", "TRACE", "PATCH", "HEAD"};

    memset(&seen, 0, sizeof seen);
    http = http_listener_new(base, "127.0.0.1:0", &sock, err, sizeof err);
    CHECK(http != NULL);
    if (!http) {
        event_base_free(base);
        return;
    }
    evhttp_set_gencb(http, handler, &seen);
    port = bound_port(sock);

    /* every method reaches the handler (which answers 405 itself where it
     * must): libevent's own 405 never comes first */
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        a = ask(base, NULL, port, cmds[i], "/json", NULL);
        CHECK_INT_EQ(a.code, 201);
        CHECK_STR_EQ(a.ctype, "application/json");
        if (cmds[i] != EVHTTP_REQ_HEAD)
            CHECK_STR_EQ(a.body, "{\"a\":1,\"s\":\"caf\xc3\xa9\",\"nil\":null}");
    }
    CHECK_INT_EQ(seen.n, 8);
    for (int i = 0; i < 8 && i < seen.n; i++)
        CHECK_STR_EQ(seen.methods[i], names[i]);

    a = ask(base, NULL, port, EVHTTP_REQ_GET, "/empty", NULL);
    CHECK_INT_EQ(a.code, 204);
    CHECK_STR_EQ(a.ctype, "application/json");
    CHECK_STR_EQ(a.body, "");
    a = ask(base, NULL, port, EVHTTP_REQ_POST, "/error", NULL);
    CHECK_INT_EQ(a.code, 422);
    CHECK_STR_EQ(a.ctype, "application/json");
    CHECK_STR_EQ(a.body, "{\"error\":\"bad \\\"thing\\\"\\\\ here\"}");

    /* headers are bounded at 64 KiB: a request past it never reaches the
     * handler; one under it does */
    seen.n = 0;
    big = malloc(70 * 1024);
    if (big) {
        memset(big, 'b', 70 * 1024 - 1);
        big[70 * 1024 - 1] = '\0';
        a = ask(base, NULL, port, EVHTTP_REQ_GET, "/json", big);
        CHECK(a.code == 400 || a.code == 413); /* libevent 2.1 says 400, later 413 */
        CHECK_INT_EQ(seen.n, 0);
        big[60 * 1024] = '\0';
        a = ask(base, NULL, port, EVHTTP_REQ_GET, "/json", big);
        CHECK_INT_EQ(a.code, 201);
        CHECK_INT_EQ(seen.n, 1);
        free(big);
    }
    evhttp_free(http);
    event_base_free(base);
}

/* ---- TLS ---- */

/* A self-signed certificate for 127.0.0.1 and its key, as PEM files. */
static int make_cert(const char *cert_path, const char *key_path) {
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    FILE *f = NULL;
    int ok = 0;

    if (!pkey || !x)
        goto done;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    if (!X509_sign(x, pkey, EVP_sha256()))
        goto done;
    if (cert_path) {
        if (!(f = fopen(cert_path, "w")) || !PEM_write_X509(f, x))
            goto done;
        fclose(f);
        f = NULL;
    }
    if (!(f = fopen(key_path, "w")) || !PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL))
        goto done;
    ok = 1;
done:
    if (f)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return ok;
}

static void test_tls(void) {
    char cert[128], key[128], other_key[128], junk[128], missing[128], err[512], want[600];
    struct event_base *base = event_base_new();
    struct evhttp_bound_socket *sock;
    struct evhttp *http;
    struct seen seen;
    SSL_CTX *ctx, *client;
    FILE *f;
    int port;

    snprintf(cert, sizeof cert, "%s/cert.pem", tmp_dir);
    snprintf(key, sizeof key, "%s/key.pem", tmp_dir);
    snprintf(other_key, sizeof other_key, "%s/other.pem", tmp_dir);
    snprintf(junk, sizeof junk, "%s/junk.pem", tmp_dir);
    snprintf(missing, sizeof missing, "%s/missing.pem", tmp_dir);
    CHECK(make_cert(cert, key));
    CHECK(make_cert(NULL, other_key));
    f = fopen(junk, "w");
    if (f) {
        fputs("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", f);
        fclose(f);
    }

    /* refusals, each naming the file */
    CHECK(http_tls_context(missing, key, err, sizeof err) == NULL);
    snprintf(want, sizeof want, "tls: cert %s: ", missing);
    CHECK(strncmp(err, want, strlen(want)) == 0 && strlen(err) > strlen(want));
    CHECK(http_tls_context(junk, key, err, sizeof err) == NULL);
    snprintf(want, sizeof want, "tls: cert %s: ", junk);
    CHECK(strncmp(err, want, strlen(want)) == 0);
    CHECK(http_tls_context(cert, missing, err, sizeof err) == NULL);
    snprintf(want, sizeof want, "tls: key %s: ", missing);
    CHECK(strncmp(err, want, strlen(want)) == 0 && strlen(err) > strlen(want));
    CHECK(http_tls_context(cert, other_key, err, sizeof err) == NULL);
    /* OpenSSL finds the mismatch while loading the key ("key values
     * mismatch"); http.c's own check says "does not match cert" */
    snprintf(want, sizeof want, "tls: key %s", other_key);
    CHECK(strncmp(err, want, strlen(want)) == 0 &&
          (strstr(err, "mismatch") || strstr(err, "does not match")));

    ctx = http_tls_context(cert, key, err, sizeof err);
    CHECK(ctx != NULL);
    if (!ctx) {
        fprintf(stderr, "tls: %s\n", err);
        event_base_free(base);
        return;
    }
    CHECK_INT_EQ(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);

    /* a request over TLS */
    memset(&seen, 0, sizeof seen);
    http = http_listener_new(base, "127.0.0.1:0", &sock, err, sizeof err);
    CHECK(http != NULL);
    client = SSL_CTX_new(TLS_client_method());
    if (http && client) {
        struct bufferevent *bev;
        struct answer a;
        SSL *ssl = SSL_new(client);
        evhttp_set_gencb(http, handler, &seen);
        http_listener_tls(http, ctx);
        port = bound_port(sock);
        bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE);
        a = ask(base, bev, port, EVHTTP_REQ_POST, "/json", NULL);
        CHECK_INT_EQ(a.code, 201);
        CHECK_STR_EQ(a.body, "{\"a\":1,\"s\":\"caf\xc3\xa9\",\"nil\":null}");
        CHECK_INT_EQ(seen.n, 1);

        /* plain HTTP to the TLS listener gets no answer from the handler */
        a = ask(base, NULL, port, EVHTTP_REQ_GET, "/json", NULL);
        CHECK(a.code != 201);
        CHECK_INT_EQ(seen.n, 1);
    }
    evhttp_free(http);
    SSL_CTX_free(client);
    SSL_CTX_free(ctx);
    event_base_free(base);
}

int main(void) {
    char cmd[128];

    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    /* libevent's warnings (a refused bind) are expected here */
    event_set_log_callback(NULL);
    test_method_names();
    test_listener_addresses();
    test_replies();
    test_tls();
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_dir);
    CHECK_INT_EQ(system(cmd), 0);
    return harness_report();
}
