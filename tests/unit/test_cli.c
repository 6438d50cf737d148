/* test_cli.c -- cli.c: which commands it owns; its usage errors (2); a
 * config that cannot be read or has no admin listener (1); the admin
 * address it derives from the config (a wildcard host becomes loopback) as
 * its connection error shows it; and, against a small HTTP receiver on a
 * thread that records each request and answers what the test sets, the
 * request each command makes (method, path, query escaping, token, body)
 * and what it prints: tables (cells cut at a newline and at 60 characters,
 * "-" for none), JSON with --json, and errors from the answer.
 * The admin API itself is tests/integration/test_admin.py's.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "fixture.h"
#include "harness.h"
#include "log.h"

static char tmp_dir[] = "/tmp/waybill-test-cli-XXXXXX", lua_dir[PATH_MAX];

/* ---- capturing stdout and stderr ---- */

struct capture {
    FILE *out, *err;
    int saved_out, saved_err;
};

static void capture_start(struct capture *c) {
    fflush(stdout);
    fflush(stderr);
    c->out = tmpfile();
    c->err = tmpfile();
    c->saved_out = dup(1);
    c->saved_err = dup(2);
    if (!c->out || !c->err || c->saved_out < 0 || c->saved_err < 0 || dup2(fileno(c->out), 1) < 0 ||
        dup2(fileno(c->err), 2) < 0) {
        perror("capture");
        exit(2);
    }
}

static char *slurp(FILE *f) {
    long n = ftell(f);
    char *text = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    rewind(f);
    if (text && n > 0 && fread(text, 1, (size_t)n, f) != (size_t)n)
        text[0] = '\0';
    fclose(f);
    return text;
}

static void capture_end(struct capture *c, char **out, char **err) {
    fflush(stdout);
    fflush(stderr);
    dup2(c->saved_out, 1);
    dup2(c->saved_err, 2);
    close(c->saved_out);
    close(c->saved_err);
    *out = slurp(c->out);
    *err = slurp(c->err);
}

/* What cli_main returned and printed (out, err: new). */
struct run {
    int rc;
    char *out, *err;
};

/* cli_main on a NULL-terminated argument list (the command first). */
static struct run cli(const char *cmd, ...) {
    char *argv[24];
    int argc = 0;
    struct capture c;
    struct run r;
    va_list ap;

    argv[argc++] = (char *)cmd;
    va_start(ap, cmd);
    while (argc < 23 && (argv[argc] = va_arg(ap, char *)) != NULL)
        argc++;
    va_end(ap);
    argv[argc] = NULL;
    capture_start(&c);
    r.rc = cli_main(argc, argv, lua_dir);
    capture_end(&c, &r.out, &r.err);
    return r;
}

static void run_free(struct run *r) {
    free(r->out);
    free(r->err);
}

/* A loopback port that refuses connections: bound, never listening. The
 * socket is kept open (closed by the caller) so no one else takes it. */
static int refusing_port(int *fd) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *fd = socket(AF_INET, SOCK_STREAM, 0);
    if (*fd < 0 || bind(*fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        getsockname(*fd, (struct sockaddr *)&sin, &len) < 0)
        return -1;
    return ntohs(sin.sin_port);
}

/* ---- what needs no server ---- */

static void test_commands(void) {
    static const char *const mine[] = {"events", "event", "retry", "replay", "test", NULL};
    static const char *const others[] = {"serve", "check",  "sign",    "route", "init",
                                         "",      "Events", "events ", "even",  NULL};
    for (int i = 0; mine[i]; i++)
        CHECK_INT_EQ(cli_is_command(mine[i]), 1);
    for (int i = 0; others[i]; i++)
        CHECK_INT_EQ(cli_is_command(others[i]), 0);
    CHECK_INT_EQ(cli_is_command(NULL), 0);
}

static void test_usage_errors(void) {
    static const char *const bad_ids[] = {"a/b", "a?b", "a#b", "a%2fb", "a b", "", NULL};
    struct run r;

    /* --url and --token: the config is not read (there is none here) */
#define U "--url", "http://127.0.0.1:1", "--token", "t"
    r = cli("event", U, NULL);
    CHECK_INT_EQ(r.rc, 2);
    CHECK(strstr(r.err, "usage: waybill events") != NULL);
    CHECK_STR_EQ(r.out, "");
    run_free(&r);
    r = cli("event", U, "a", "b", NULL);
    CHECK_INT_EQ(r.rc, 2);
    run_free(&r);
    r = cli("events", U, "extra", NULL);
    CHECK_INT_EQ(r.rc, 2);
    run_free(&r);
    r = cli("retry", U, NULL);
    CHECK_INT_EQ(r.rc, 2);
    run_free(&r);
    r = cli("test", U, "erp", NULL);
    CHECK_INT_EQ(r.rc, 2);
    run_free(&r);
    r = cli("test", U, "erp/x", "t.x", NULL);
    CHECK_INT_EQ(r.rc, 2);
    run_free(&r);
    r = cli("events", U, "--nope", NULL);
    CHECK_INT_EQ(r.rc, 2);
    CHECK(strstr(r.err, "usage: waybill events") != NULL);
    run_free(&r);
    /* an id that would change the path is refused before any request */
    for (int i = 0; bad_ids[i]; i++) {
        r = cli("replay", U, bad_ids[i], NULL);
        CHECK_INT_EQ(r.rc, 2);
        CHECK(strstr(r.err, "usage:") != NULL);
        run_free(&r);
    }
    {
        char long_id[260];
        memset(long_id, 'i', sizeof long_id - 1);
        long_id[sizeof long_id - 1] = '\0';
        r = cli("event", U, long_id, NULL);
        CHECK_INT_EQ(r.rc, 2);
        run_free(&r);
    }
#undef U
}

static void test_config_errors(void) {
    char path[PATH_MAX], want[PATH_MAX + 100];
    struct run r;

    snprintf(path, sizeof path, "%s/missing.lua", tmp_dir);
    r = cli("events", "-c", path, NULL);
    CHECK_INT_EQ(r.rc, 1);
    snprintf(want, sizeof want, "waybill: %s: cannot read: No such file or directory\n", path);
    CHECK_STR_EQ(r.err, want);
    run_free(&r);

    snprintf(path, sizeof path, "%s/noadmin.lua", tmp_dir);
    CHECK_INT_EQ(fixture_write_path(path, "listen = '127.0.0.1:1'\n"), 0);
    r = cli("events", "--config", path, NULL);
    CHECK_INT_EQ(r.rc, 1);
    snprintf(want, sizeof want, "waybill: %s has no admin listener (admin = {...})\n", path);
    CHECK_STR_EQ(r.err, want);
    run_free(&r);
    /* --url alone still needs the token from the config */
    r = cli("events", "--config", path, "--url", "http://127.0.0.1:1", NULL);
    CHECK_INT_EQ(r.rc, 1);
    CHECK_STR_EQ(r.err, want);
    run_free(&r);

    snprintf(path, sizeof path, "%s/broken.lua", tmp_dir);
    CHECK_INT_EQ(fixture_write_path(path, "\nlisen = 1\n"), 0);
    r = cli("events", "-c", path, NULL);
    CHECK_INT_EQ(r.rc, 1);
    snprintf(want, sizeof want, "waybill: %s:2: unknown setting 'lisen' (did you mean 'listen'?)\n",
             path);
    CHECK_STR_EQ(r.err, want);
    run_free(&r);
}

/* The admin base URL comes from admin.listen; the connection error names
 * it. */
static void test_base_url(void) {
    /* listen without its port, and the base URL the CLI should use */
    /* (":port" names no host: the config refuses it for admin, test_config) */
    static const char *const listens[] = {"127.0.0.1:", "0.0.0.0:", "[::]:", "localhost:", NULL};
    static const char *const bases[] = {
        "http://127.0.0.1:", "http://127.0.0.1:", "http://[::1]:", "http://localhost:", NULL};
    char path[PATH_MAX], cfg[200], listen[64], want[200], url[64];
    struct run r;
    int fd, port = refusing_port(&fd);

    CHECK(port > 0);
    snprintf(path, sizeof path, "%s/admin.lua", tmp_dir);
    for (int i = 0; listens[i]; i++) {
        snprintf(listen, sizeof listen, "%s%d", listens[i], port);
        snprintf(cfg, sizeof cfg, "admin = { listen = '%s', token = 'cfg-token' }\n", listen);
        CHECK_INT_EQ(fixture_write_path(path, cfg), 0);
        r = cli("event", "-c", path, "evt_1", NULL);
        CHECK_INT_EQ(r.rc, 1);
        snprintf(want, sizeof want, "%s%d: ", bases[i], port);
        CHECK(strncmp(r.err, "waybill: ", 9) == 0 && strncmp(r.err + 9, want, strlen(want)) == 0);
        if (strncmp(r.err + 9, want, strlen(want)) != 0)
            fprintf(stderr, "listen %s: %s", listen, r.err);
        CHECK_STR_EQ(r.out, "");
        run_free(&r);
    }
    /* --url wins over the config's address */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/base", port);
    r = cli("event", "-c", path, "--url", url, "evt_1", NULL);
    CHECK_INT_EQ(r.rc, 1);
    snprintf(want, sizeof want, "waybill: %s: Couldn't connect to server\n", url);
    CHECK_STR_EQ(r.err, want);
    run_free(&r);
    close(fd);
}

/* ---- a recording receiver ---- */

struct receiver {
    int fd, port;
    pthread_t thread;
    pthread_mutex_t mu;
    /* set by the test before a request */
    int status;
    char reply[4096];
    /* recorded from the last request */
    int requests;
    char line[1024], auth[256], ctype[128], body[1024];
};

/* The value of header name in the request head (case-insensitive). */
static void header_value(const char *head, const char *name, char *out, size_t len) {
    size_t n = strlen(name);
    out[0] = '\0';
    for (const char *p = strstr(head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        const char *h = p + 2, *end = strstr(h, "\r\n");
        if (end && strncasecmp(h, name, n) == 0 && h[n] == ':') {
            h += n + 1;
            while (*h == ' ')
                h++;
            snprintf(out, len, "%.*s", (int)(end - h), h);
            return;
        }
    }
}

static void *receiver_main(void *arg) {
    struct receiver *rv = arg;
    for (;;) {
        char req[8192], clen[32], resp[8192];
        size_t got = 0, want;
        char *head_end = NULL;
        int c = accept(rv->fd, NULL, NULL), n;
        if (c < 0)
            break; /* shut down */
        req[0] = '\0';
        while (got < sizeof req - 1 && !(head_end = strstr(req, "\r\n\r\n"))) {
            ssize_t k = read(c, req + got, sizeof req - 1 - got);
            if (k <= 0)
                break;
            got += (size_t)k;
            req[got] = '\0';
        }
        if (!head_end) {
            close(c);
            continue;
        }
        header_value(req, "Content-Length", clen, sizeof clen);
        want = (size_t)(head_end + 4 - req) + (size_t)atoi(clen);
        while (got < want && got < sizeof req - 1) {
            ssize_t k = read(c, req + got, sizeof req - 1 - got);
            if (k <= 0)
                break;
            got += (size_t)k;
            req[got] = '\0';
        }
        pthread_mutex_lock(&rv->mu);
        rv->requests++;
        snprintf(rv->line, sizeof rv->line, "%.*s", (int)strcspn(req, "\r\n"), req);
        header_value(req, "Authorization", rv->auth, sizeof rv->auth);
        header_value(req, "Content-Type", rv->ctype, sizeof rv->ctype);
        snprintf(rv->body, sizeof rv->body, "%s", head_end + 4);
        n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                     "%zu\r\nConnection: close\r\n\r\n%s",
                     rv->status, strlen(rv->reply), rv->reply);
        pthread_mutex_unlock(&rv->mu);
        if (write(c, resp, (size_t)n) != n)
            perror("receiver write");
        close(c);
    }
    return NULL;
}

static int receiver_start(struct receiver *rv) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;

    memset(rv, 0, sizeof *rv);
    pthread_mutex_init(&rv->mu, NULL);
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rv->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (rv->fd < 0 || bind(rv->fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        listen(rv->fd, 8) < 0 || getsockname(rv->fd, (struct sockaddr *)&sin, &len) < 0)
        return -1;
    rv->port = ntohs(sin.sin_port);
    return pthread_create(&rv->thread, NULL, receiver_main, rv) == 0 ? 0 : -1;
}

static void receiver_stop(struct receiver *rv) {
    shutdown(rv->fd, SHUT_RDWR); /* accept returns: the thread ends */
    pthread_join(rv->thread, NULL);
    close(rv->fd);
    pthread_mutex_destroy(&rv->mu);
}

static void answer(struct receiver *rv, int status, const char *reply) {
    pthread_mutex_lock(&rv->mu);
    rv->status = status;
    snprintf(rv->reply, sizeof rv->reply, "%s", reply);
    pthread_mutex_unlock(&rv->mu);
}

/* What the last request was: "METHOD PATH" (HTTP version left out). */
static const char *last_request(struct receiver *rv) {
    static char line[1024];
    pthread_mutex_lock(&rv->mu);
    snprintf(line, sizeof line, "%s", rv->line);
    pthread_mutex_unlock(&rv->mu);
    if (strrchr(line, ' '))
        *strrchr(line, ' ') = '\0';
    return line;
}

static void test_requests(void) {
    struct receiver rv;
    char url[64], path[PATH_MAX], cfg[200], *p;
    struct run r;
    int before;

    if (receiver_start(&rv) < 0) {
        CHECK(0);
        return;
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%d", rv.port);
#define U "--url", url, "--token", "tok-1"

    /* events, as JSON: the filters in the query, type escaped */
    answer(&rv, 200, "{\"data\":[{\"id\":\"evt_1\"}],\"next\":null}");
    r = cli("events", U, "--json", "--type", "tracking.*", "--status", "failed", "--limit", "5",
            NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "GET /api/events?x=1&type=tracking.%2A&status=failed&limit=5");
    CHECK_STR_EQ(rv.auth, "Bearer tok-1");
    CHECK_STR_EQ(r.out, "{\n  \"data\": [\n    {\n      \"id\": \"evt_1\"\n    }\n  ],\n"
                        "  \"next\": null\n}\n");
    CHECK_STR_EQ(r.err, "");
    run_free(&r);

    /* events, as a table: aligned columns, "-" for what is missing */
    answer(&rv, 200,
           "{\"data\":[{\"id\":\"evt_1\",\"type\":\"tracking.delivered\",\"source\":\"shop\","
           "\"status\":\"routed\",\"received_at\":\"2026-01-01T00:00:00Z\"},"
           "{\"id\":\"evt_22\",\"type\":\"a.b\",\"status\":\"unrouted\","
           "\"received_at\":\"2026-01-01T00:00:01Z\"}]}");
    r = cli("events", U, NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "GET /api/events?x=1");
    CHECK_STR_EQ(r.out, "EVENT   TYPE                SOURCE  STATUS    RECEIVED\n"
                        "evt_1   tracking.delivered  shop    routed    2026-01-01T00:00:00Z\n"
                        "evt_22  a.b                 -       unrouted  2026-01-01T00:00:01Z\n");
    run_free(&r);

    /* failed deliveries: numbers printed, a long error cut at 60
     * characters, a multi-line one at its first line; --type and --status
     * do not apply */
    answer(&rv, 200,
           "{\"data\":[{\"id\":\"dlv_1\",\"event_id\":\"evt_1\",\"endpoint\":\"erp\","
           "\"event_type\":\"x.y\",\"attempts\":6,\"status\":\"failed\","
           "\"last_status_code\":503,\"last_error\":\"HTTP 503: "
           "0123456789012345678901234567890123456789012345678901234567890123456789\"},"
           "{\"id\":\"dlv_2\",\"event_id\":\"evt_2\",\"endpoint\":\"crm\",\"event_type\":\"x.y\","
           "\"attempts\":1,\"status\":\"failed\",\"last_status_code\":null,"
           "\"last_error\":\"line one\\nline two\"}]}");
    r = cli("events", U, "--failed", "--type", "ignored", "--status", "ignored", "--limit", "2",
            NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "GET /api/deliveries?status=failed&limit=2");
    p = strchr(r.out, '\n');
    CHECK(p != NULL);
    CHECK(strncmp(r.out,
                  "DELIVERY  EVENT  ENDPOINT  TYPE  ATTEMPTS  STATUS  LAST_STATUS  LAST_ERROR\n",
                  (size_t)(p ? p - r.out + 1 : 0)) == 0);
    CHECK(strstr(r.out, "dlv_1     evt_1  erp       x.y   6         failed  503          HTTP 503: "
                        "01234567890123456789012345678901234567890123456...\n") != NULL);
    CHECK(strstr(r.out,
                 "dlv_2     evt_2  crm       x.y   1         failed  -            line one\n") !=
          NULL);
    CHECK(strstr(r.out, "line two") == NULL);
    run_free(&r);

    /* one event: a summary, then each delivery's attempts */
    answer(&rv, 200,
           "{\"id\":\"evt_1\",\"type\":\"t.x\",\"source\":\"shop\",\"source_id\":\"S-1\","
           "\"status\":\"routed\",\"received_at\":\"2026-01-01T00:00:00Z\",\"error\":null,"
           "\"deliveries\":[{\"id\":\"dlv_1\",\"endpoint\":\"erp\",\"status\":\"delivered\","
           "\"attempts\":[{\"n\":1,\"at\":\"2026-01-01T00:00:01Z\",\"status_code\":500,"
           "\"error\":\"HTTP 500\"},{\"n\":2,\"at\":\"2026-01-01T00:01:01Z\",\"status_code\":200,"
           "\"error\":null}]},{\"id\":\"dlv_2\",\"endpoint\":\"crm\",\"status\":\"held\","
           "\"attempts\":[]}]}");
    r = cli("event", U, "evt_1", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "GET /api/events/evt_1");
    CHECK_STR_EQ(r.out,
                 "event     evt_1\ntype      t.x\nsource    shop (S-1)\nstatus    routed\n"
                 "received  2026-01-01T00:00:00Z\n\n"
                 "DELIVERY  ENDPOINT  STATUS     ATTEMPT  AT                    HTTP  ERROR\n"
                 "dlv_1     erp       delivered  1        2026-01-01T00:00:01Z  500   HTTP 500\n"
                 "                               2        2026-01-01T00:01:01Z  200   -\n"
                 "dlv_2     crm       held       -        -                     -     -\n");
    run_free(&r);

    /* retry and replay are POSTs without a body */
    answer(&rv, 200, "{\"id\":\"dlv_1\",\"status\":\"pending\"}");
    r = cli("retry", U, "dlv_1", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "POST /api/deliveries/dlv_1/retry");
    CHECK_STR_EQ(rv.body, "");
    CHECK_STR_EQ(r.out, "delivery dlv_1 queued again\n");
    run_free(&r);
    r = cli("retry", U, "--json", "dlv_1", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(r.out, "{\n  \"id\": \"dlv_1\",\n  \"status\": \"pending\"\n}\n");
    run_free(&r);
    answer(&rv, 200, "{\"id\":\"evt_1\",\"type\":\"t.x\",\"deliveries\":[]}");
    r = cli("replay", U, "evt_1", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "POST /api/events/evt_1/replay");
    CHECK(strncmp(r.out, "event     evt_1\ntype      t.x\n", 30) == 0);
    run_free(&r);

    /* a test event: its type in a JSON body */
    answer(&rv, 200, "{\"id\":\"evt_T\",\"deliveries\":[{\"id\":\"dlv_T\"}]}");
    r = cli("test", U, "erp", "shipment.created", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(last_request(&rv), "POST /api/endpoints/erp/test");
    CHECK_STR_EQ(rv.ctype, "application/json");
    CHECK_STR_EQ(rv.body, "{\"type\":\"shipment.created\"}");
    CHECK_STR_EQ(r.out, "test event evt_T (shipment.created) sent to erp as delivery dlv_T\n");
    run_free(&r);

    /* errors in the answer: 1, the reason on stderr, nothing on stdout */
    answer(&rv, 404, "{\"error\":\"no such event\"}");
    r = cli("event", U, "evt_nope", NULL);
    CHECK_INT_EQ(r.rc, 1);
    CHECK_STR_EQ(r.err, "waybill: HTTP 404: no such event\n");
    CHECK_STR_EQ(r.out, "");
    run_free(&r);
    answer(&rv, 500, "<html>oops</html>");
    r = cli("event", U, "evt_1", NULL);
    CHECK_INT_EQ(r.rc, 1);
    CHECK_STR_EQ(r.err, "waybill: HTTP 500: unexpected answer\n");
    run_free(&r);
    answer(&rv, 200, "not json");
    r = cli("events", U, NULL);
    CHECK_INT_EQ(r.rc, 1);
    CHECK_STR_EQ(r.err, "waybill: the admin API answered something that is not JSON\n");
    CHECK_STR_EQ(r.out, "");
    run_free(&r);
#undef U

    /* the token from the config, unless --token says otherwise */
    snprintf(path, sizeof path, "%s/admin-live.lua", tmp_dir);
    snprintf(cfg, sizeof cfg, "admin = { listen = '127.0.0.1:%d', token = 'cfg-token' }\n",
             rv.port);
    CHECK_INT_EQ(fixture_write_path(path, cfg), 0);
    answer(&rv, 200, "{\"id\":\"dlv_1\"}");
    r = cli("retry", "-c", path, "dlv_1", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(rv.auth, "Bearer cfg-token");
    run_free(&r);
    r = cli("retry", "-c", path, "--token", "other", "dlv_1", NULL);
    CHECK_INT_EQ(r.rc, 0);
    CHECK_STR_EQ(rv.auth, "Bearer other");
    run_free(&r);

    /* a usage error makes no request */
    pthread_mutex_lock(&rv.mu);
    before = rv.requests;
    pthread_mutex_unlock(&rv.mu);
    r = cli("event", "-c", path, "a/b", NULL);
    CHECK_INT_EQ(r.rc, 2);
    run_free(&r);
    pthread_mutex_lock(&rv.mu);
    CHECK_INT_EQ(rv.requests, before);
    pthread_mutex_unlock(&rv.mu);
    receiver_stop(&rv);
}

int main(void) {
    char cmd[PATH_MAX];

    log_threshold = LOG_ERROR;
    if (!mkdtemp(tmp_dir) || fixture_lua_dir(lua_dir) < 0) {
        fprintf(stderr, "cannot set up %s or find lua/\n", tmp_dir);
        return 2;
    }
    test_commands();
    test_usage_errors();
    test_config_errors();
    test_base_url();
    test_requests();
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_dir);
    CHECK_INT_EQ(system(cmd), 0);
    return harness_report();
}
