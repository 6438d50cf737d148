/* fuzz_httpd.c -- libFuzzer target: the webhook listener's HTTP/1.1 layer
 * (core/httpd*.c, http-parser's glue) over a real socket pair. The input's
 * first byte picks how the rest is cut into writes (every piece size from
 * 1 byte up, so each callback sees its pieces split) and which requests the
 * handler answers at once and which later (as after a commit); then the
 * client half-closes and reads until the server closes. Small limits, so
 * 431, 413 and the pipeline bound are reached often. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "httpd.h"

#define DEFERRED_MAX 64

static struct event_base *base;
static struct httpd_req *deferred[DEFERRED_MAX];
static size_t ndeferred;
static unsigned mode;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (!(base = event_base_new()))
        abort();
    return 0;
}

/* Reads what the handler may read, as inbound.c does. */
static void touch(struct httpd_req *r) {
    const char *name, *value, *body, *path = httpd_req_path(r);
    size_t nlen, vlen, blen, n = httpd_req_nheaders(r);
    volatile size_t sum = path ? strlen(path) : 0;

    for (size_t i = 0; i < n; i++) {
        httpd_req_header_at(r, i, &name, &nlen, &value, &vlen);
        sum += nlen + vlen + (size_t)(unsigned char)name[0] + strlen(value);
    }
    body = httpd_req_body(r, &blen);
    sum += blen ? (size_t)(unsigned char)body[blen - 1] : 0;
    sum += httpd_req_header(r, "x-signature") != NULL;
    sum += strlen(httpd_req_method_name(r));
    (void)sum;
}

static void handler(struct httpd_req *r, void *arg) {
    (void)arg;
    touch(r);
    if ((mode & 1) && ndeferred < DEFERRED_MAX) {
        deferred[ndeferred++] = r; /* answered after a loop turn, in any order */
        return;
    }
    httpd_reply(r, 200, "OK", "X-Test: 1\r\n", "{\"id\":\"evt_1\"}", 14);
}

static void answer_deferred(void) {
    size_t n = ndeferred;
    ndeferred = 0;
    for (size_t i = 0; i < n; i++) {
        struct httpd_req *r = deferred[(mode & 2) ? n - 1 - i : i];
        if (i % 3 == 2)
            httpd_reply_error(r, 503, "Service Unavailable", "Retry-After: 5\r\n", "later");
        else
            httpd_reply(r, 200, "OK", NULL, "{}", 2);
    }
}

/* Reads and drops what the server wrote; 1 once it closed. */
static int drain(int fd) {
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            continue;
        if (n == 0)
            return 1;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct httpd_limits lim = {.max_header = 2048, .max_body = 4096, .pipeline = 4};
    struct httpd *s;
    int sv[2], closed = 0;
    size_t piece, off;

    if (size < 1)
        return 0;
    mode = data[0] >> 6;
    piece = (size_t)(data[0] & 63) + 1;
    data++;
    size--;
    if (!(s = httpd_new(base, &lim, handler, NULL)))
        abort();
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        abort();
    if (httpd_adopt(s, sv[0]) < 0)
        abort();
    for (off = 0; off < size && !closed; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        if (send(sv[1], data + off, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN)
            break;
        event_base_loop(base, EVLOOP_NONBLOCK);
        answer_deferred();
        closed = drain(sv[1]);
    }
    shutdown(sv[1], SHUT_WR);
    for (int i = 0; i < 200 && !closed; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        answer_deferred();
        closed = drain(sv[1]);
    }
    answer_deferred();
    httpd_free(s);
    close(sv[1]);
    return 0;
}
