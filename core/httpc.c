/* httpc.c -- one libcurl multi handle on the libevent loop (hiperfifo):
 * curl's sockets and its one timer become loop events; every
 * curl_multi_socket_action is followed by draining finished transfers to
 * their callbacks. Also the SSRF guard, header lists and one-off probes.
 * Invariants: each transfer is in hc->xfers exactly while its easy handle
 * is in the multi (HTTPC_ADDED), and leaves it once, by its callback or by
 * httpc_cancel; hc->inflight counts them. Checked under WAYBILL_CHECKS.
 * SPDX-License-Identifier: MIT */

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "httpc.h"
#include "log.h"
#include "util.h"

#define HTTPC_MAX_CONNECTS 128L /* idle connections the multi keeps for reuse */

#ifdef WAYBILL_CHECKS
#define HTTPC_CHECK(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            log_write(LOG_ERROR, "httpc: invariant broken: %s (%s:%d)", #cond, __FILE__,           \
                      __LINE__);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#else
#define HTTPC_CHECK(cond) ((void)0)
#endif

/* ---- structures ---- */

/* A socket curl asked us to watch (hiperfifo's SockInfo). ev is assigned
 * (EV_PERSIST) while assigned is 1; re-assigned when curl changes the flags;
 * freed on CURL_POLL_REMOVE or, for any curl never removed, at httpc_free. */
struct httpc_sock {
    curl_socket_t fd;
    int assigned;
    struct event ev;
    struct httpc_sock *prev, *next; /* hc->socks */
};

enum httpc_state { HTTPC_NEW, HTTPC_ADDED, HTTPC_ENDED };

/* One request. Owns its easy handle, header list, body copy and response
 * buffer; the easy handle points at them (not copied by curl). */
struct httpc_xfer {
    struct httpc *hc;
    struct httpc_xfer *prev, *next; /* hc->xfers, while HTTPC_ADDED */
    enum httpc_state state;
    CURL *easy;
    struct curl_slist *headers;
    char *body; /* owned copy (copy_body), or NULL */
    struct util_buf resp;
    size_t resp_max;
    int resp_limit, too_large;
    size_t resp_read; /* body bytes read, kept or not */
    int cut;          /* the body was cut at HTTPC_READ_MAX: the status stands */
    httpc_done_fn done;
    void *arg;
    char errbuf[CURL_ERROR_SIZE];   /* CURLOPT_ERRORBUFFER */
    char refused[96];               /* the guard's reason, "" when none */
    char why[CURL_ERROR_SIZE + 64]; /* httpc_why's text */
};

struct httpc {
    struct event_base *base;
    CURLM *multi;
    int curl_inited;
    struct event *timer; /* curl's single timer (CURLMOPT_TIMERFUNCTION) */
    struct httpc_sock *socks;
    struct httpc_xfer *xfers;
    int inflight;
    int freeing;            /* httpc_free runs: nothing new starts */
    httpc_allow_fn allowed; /* allow_private, asked of the owner */
    void *allowed_arg;
};

/* ---- the address check ---- */

/* The IPv4 special-purpose registry (IANA, RFC 6890 and updates): every
 * block that is not globally reachable, plus multicast and the reserved
 * 240/4 (with the broadcast address). */
static int httpc_v4_private(const unsigned char *b) {
    return b[0] == 0                                     /* 0.0.0.0/8 */
           || b[0] == 10                                 /* 10/8 */
           || b[0] == 127                                /* loopback */
           || (b[0] == 100 && (b[1] & 0xc0) == 64)       /* CGNAT 100.64/10 */
           || (b[0] == 169 && b[1] == 254)               /* link-local, metadata */
           || (b[0] == 172 && (b[1] & 0xf0) == 16)       /* 172.16/12 */
           || (b[0] == 192 && b[1] == 0 && b[2] == 0)    /* IETF protocol 192.0.0/24 */
           || (b[0] == 192 && b[1] == 0 && b[2] == 2)    /* TEST-NET-1 */
           || (b[0] == 192 && b[1] == 88 && b[2] == 99)  /* 6to4 relay anycast */
           || (b[0] == 192 && b[1] == 168)               /* 192.168/16 */
           || (b[0] == 198 && (b[1] & 0xfe) == 18)       /* benchmarking 198.18/15 */
           || (b[0] == 198 && b[1] == 51 && b[2] == 100) /* TEST-NET-2 */
           || (b[0] == 203 && b[1] == 0 && b[2] == 113)  /* TEST-NET-3 */
           || b[0] >= 224;                               /* multicast, 240/4, broadcast */
}

/* The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
 * (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) or 6to4 (2002:AABB:CCDD::) IPv6
 * address, else NULL. (Teredo's is stored inverted: httpc_address_private
 * reads it.) */
static const unsigned char *httpc_embedded_v4(const unsigned char *b) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char compat[12] = {0};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};

    if (!memcmp(b, mapped, 12) || !memcmp(b, compat, 12) || !memcmp(b, nat64, 12))
        return b + 12;
    if (b[0] == 0x20 && b[1] == 0x02)
        return b + 2;
    return NULL;
}

int httpc_address_private(int family, const void *addr) {
    static const unsigned char any6[16] = {0};
    static const unsigned char loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    const unsigned char *b = addr, *v4;

    if (family == AF_INET)
        return httpc_v4_private(b);
    if (family != AF_INET6)
        return 1;
    if (!memcmp(b, any6, 16) || !memcmp(b, loop6, 16))
        return 1;
    if ((b[0] & 0xfe) == 0xfc) /* fc00::/7 */
        return 1;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) /* fe80::/10 */
        return 1;
    if (b[0] == 0xff) /* multicast ff00::/8 */
        return 1;
    /* the IPv6 special-purpose registry's blocks that are not globally
     * reachable: discard 100::/64, benchmarking 2001:2::/48, ORCHID
     * 2001:10::/28 and 2001:20::/28, documentation 2001:db8::/32 and
     * 3fff::/20, local-use NAT64 64:ff9b:1::/48 */
    if ((b[0] == 0x01 && !b[1] && !memcmp(b + 2, any6, 6)) ||
        (b[0] == 0x20 && b[1] == 0x01 && !b[2] && b[3] == 0x02 && !b[4] && !b[5]) ||
        (b[0] == 0x20 && b[1] == 0x01 && !b[2] &&
         ((b[3] & 0xf0) == 0x10 || (b[3] & 0xf0) == 0x20)) ||
        (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) ||
        (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0) ||
        (!b[0] && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && !b[4] && b[5] == 0x01))
        return 1;
    /* Teredo 2001::/32: the client's address is the last 4 bytes, inverted */
    if (b[0] == 0x20 && b[1] == 0x01 && !b[2] && !b[3]) {
        unsigned char client[4] = {(unsigned char)~b[12], (unsigned char)~b[13],
                                   (unsigned char)~b[14], (unsigned char)~b[15]};
        return httpc_v4_private(b + 4) || httpc_v4_private(client);
    }
    v4 = httpc_embedded_v4(b);
    return v4 ? httpc_v4_private(v4) : 0;
}

/* 1 when allow_private covers ip, directly or as the IPv4 address inside
 * an IPv6 one. */
static int httpc_allowed(const struct httpc *hc, int family, const unsigned char *ip) {
    const unsigned char *v4;

    if (!hc->allowed)
        return 0;
    if (hc->allowed(hc->allowed_arg, family, ip))
        return 1;
    return family == AF_INET6 && (v4 = httpc_embedded_v4(ip)) &&
           hc->allowed(hc->allowed_arg, AF_INET, v4);
}

/* 1 (with the reason in x->refused) when a guarded x may not talk to ip
 * (family's bytes, network order; NULL when not an IP address). */
static int httpc_refused(struct httpc_xfer *x, int family, const unsigned char *ip) {
    char text[INET6_ADDRSTRLEN];

    if (!ip) {
        snprintf(x->refused, sizeof x->refused, "address family %d refused", family);
        return 1;
    }
    if (!httpc_address_private(family, ip) || httpc_allowed(x->hc, family, ip))
        return 0;
    if (!inet_ntop(family, ip, text, sizeof text))
        snprintf(text, sizeof text, "?");
    snprintf(x->refused, sizeof x->refused, "address %s is private (allow_private to permit)",
             text);
    return 1;
}

/* CURLOPT_OPENSOCKETFUNCTION: the SSRF guard. Runs after DNS, on the very
 * address about to be connected, so a rebinding name can't slip past. */
static curl_socket_t httpc_opensocket_cb(void *clientp, curlsocktype purpose,
                                         struct curl_sockaddr *a) {
    struct httpc_xfer *x = clientp;
    struct sockaddr_storage ss;
    const unsigned char *ip = NULL;
    size_t len = a->addrlen < sizeof ss ? a->addrlen : sizeof ss;

    memset(&ss, 0, sizeof ss);
    memcpy(&ss, &a->addr, len); /* curl's addr is as long as addrlen says */
    if (a->family == AF_INET && len >= sizeof(struct sockaddr_in))
        ip = (const unsigned char *)&((struct sockaddr_in *)&ss)->sin_addr;
    else if (a->family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
        ip = (const unsigned char *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    if (purpose == CURLSOCKTYPE_IPCXN && httpc_refused(x, a->family, ip))
        return CURL_SOCKET_BAD;
    x->refused[0] = '\0'; /* an earlier candidate address was refused, this one is fine */
#ifdef SOCK_CLOEXEC
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
    return socket(a->family, a->socktype, a->protocol);
#endif
}

/* CURLOPT_PREREQFUNCTION: the guard again, on the connection a request is
 * about to be sent on, new or reused. The multi's connections are shared,
 * so a guarded request could otherwise reuse one an unguarded request (a
 * JWKS fetch) opened, or one opened before a reload narrowed
 * allow_private. */
static int httpc_prereq_cb(void *clientp, char *primary_ip, char *local_ip, int primary_port,
                           int local_port) {
    struct httpc_xfer *x = clientp;
    unsigned char ip[16];
    char text[INET6_ADDRSTRLEN + 8], *zone;
    int family = AF_INET;

    UNUSED(local_ip);
    UNUSED(primary_port);
    UNUSED(local_port);
    snprintf(text, sizeof text, "%s", primary_ip ? primary_ip : "");
    if ((zone = strchr(text, '%'))) /* fe80::1%eth0 */
        *zone = '\0';
    if (inet_pton(AF_INET, text, ip) != 1) {
        family = AF_INET6;
        if (inet_pton(AF_INET6, text, ip) != 1)
            return httpc_refused(x, AF_UNSPEC, NULL) ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
    }
    return httpc_refused(x, family, ip) ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}

int64_t httpc_date_parse(const char *text) {
    time_t t = text ? curl_getdate(text, NULL) : (time_t)-1;
    return t == (time_t)-1 ? -1 : (int64_t)t;
}

/* ---- header lists ---- */

static int httpc_header_valid(const char *name, const char *value) {
    return util_header_name_ok(name) && value && util_header_value_ok(value, strlen(value));
}

int httpc_headers_set(struct httpc_headers *h, const char *name, const char *value) {
    char *nv = NULL, *nn = NULL;
    size_t i;

    if (!httpc_header_valid(name, value))
        return 1;
    if (!(nv = strdup(value)))
        goto fail;
    for (i = 0; i < h->n; i++) {
        if (!strcasecmp(h->v[i].name, name)) {
            free(h->v[i].value);
            h->v[i].value = nv;
            return 0;
        }
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 16;
        struct httpc_header *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            goto fail;
        h->v = v;
        h->cap = cap;
    }
    if (!(nn = strdup(name)))
        goto fail;
    h->v[h->n].name = nn;
    h->v[h->n].value = nv;
    h->n++;
    return 0;
fail:
    free(nv);
    free(nn);
    h->failed = 1;
    return -1;
}

void httpc_headers_clear(struct httpc_headers *h) {
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i].name);
        free(h->v[i].value);
    }
    free(h->v);
    memset(h, 0, sizeof *h);
}

/* The curl list for req's headers, with "Expect:" for a POST (no
 * 100-continue round trip). Returns 0, or -1 when out of memory. */
static int httpc_slist(const struct httpc_request *req, struct curl_slist **out) {
    struct curl_slist *list = NULL, *l;
    struct util_buf line = {0};
    const struct httpc_headers *h = req->headers;
    size_t i;
    int rc = -1;

    if (h && h->failed)
        goto done;
    for (i = 0; h && i < h->n; i++) {
        util_buf_reset(&line);
        /* "Name;" is curl's way to send a header with an empty value */
        if (util_buf_printf(&line, *h->v[i].value ? "%s: %s" : "%s;%s", h->v[i].name,
                            h->v[i].value) != 0 ||
            !(l = curl_slist_append(list, line.p)))
            goto done;
        list = l;
    }
    for (i = 0; req->lines && req->lines[i]; i++) {
        if (!(l = curl_slist_append(list, req->lines[i])))
            goto done;
        list = l;
    }
    if (req->body) {
        if (!(l = curl_slist_append(list, "Expect:")))
            goto done;
        list = l;
    }
    *out = list;
    list = NULL;
    rc = 0;
done:
    curl_slist_free_all(list);
    util_buf_free(&line);
    return rc;
}

/* ---- transfers ---- */

/* A response body past the kept excerpt is read on (so the connection can
 * be reused) up to this many bytes, then the transfer is cut: a receiver
 * that streams without end costs the loop a bounded amount of work. */
#define HTTPC_READ_MAX (64 * 1024)

static size_t httpc_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
    struct httpc_xfer *x = userdata;
    size_t n = size * nmemb, room = x->resp_max - x->resp.len, take = n;

    x->resp_read += n;
    if (!x->resp_limit && x->resp_read > HTTPC_READ_MAX && x->resp_read - n >= x->resp_max) {
        x->cut = 1;
        return 0; /* ends the transfer; httpc_end keeps its status */
    }

    if (n > room) {
        if (x->resp_limit) {
            x->too_large = 1;
            return 0; /* fails the transfer */
        }
        take = room;
    }
    if (take && util_buf_append(&x->resp, ptr, take) < 0 && x->resp_limit)
        return 0;
    return n; /* the rest is read and discarded */
}

static void httpc_xfer_free(struct httpc_xfer *x) {
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    free(x->body);
    util_buf_free(&x->resp);
    free(x);
}

/* Takes x out of hc->xfers: it has ended (its easy handle is still in the
 * multi, for the callback to read). */
static void httpc_unlink(struct httpc *hc, struct httpc_xfer *x) {
    HTTPC_CHECK(x->state == HTTPC_ADDED && hc->inflight > 0); /* ends exactly once */
    if (x->prev)
        x->prev->next = x->next;
    else
        hc->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    x->state = HTTPC_ENDED;
    hc->inflight--;
}

/* Sets x's options for req. Returns curl's code. */
static CURLcode httpc_setopts(struct httpc_xfer *x, const struct httpc_request *req) {
    CURL *e = x->easy;
    CURLcode rc = CURLE_OK;

#define HTTPC_SETOPT(opt, val)                                                                     \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(e, opt, val)
    HTTPC_SETOPT(CURLOPT_PRIVATE, (void *)x);
    HTTPC_SETOPT(CURLOPT_URL, req->url);
    HTTPC_SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    HTTPC_SETOPT(CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    HTTPC_SETOPT(CURLOPT_FOLLOWLOCATION, 0L); /* a 3xx is an answer */
    HTTPC_SETOPT(CURLOPT_NOSIGNAL, 1L);
    HTTPC_SETOPT(CURLOPT_WRITEFUNCTION, httpc_write_cb);
    HTTPC_SETOPT(CURLOPT_WRITEDATA, (void *)x);
    HTTPC_SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
    /* The CA bundle alone (Debian's holds every CA of /etc/ssl/certs): with
     * a CA path as well libcurl does not cache the parsed bundle and parses
     * its ~140 certificates again on the loop for every new TLS connection
     * (~30 ms each; a receiver failing every handshake stalled ingest). */
    HTTPC_SETOPT(CURLOPT_CAPATH, NULL);
    if (x->headers)
        HTTPC_SETOPT(CURLOPT_HTTPHEADER, x->headers);
    if (req->user_agent)
        HTTPC_SETOPT(CURLOPT_USERAGENT, req->user_agent);
    if (req->body) {
        HTTPC_SETOPT(CURLOPT_POSTFIELDS, x->body ? x->body : req->body);
        HTTPC_SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    }
    if (req->guarded) {
        HTTPC_SETOPT(CURLOPT_PROXY, ""); /* no proxy from the environment */
        HTTPC_SETOPT(CURLOPT_OPENSOCKETFUNCTION, httpc_opensocket_cb);
        HTTPC_SETOPT(CURLOPT_OPENSOCKETDATA, (void *)x);
        HTTPC_SETOPT(CURLOPT_PREREQFUNCTION, httpc_prereq_cb);
        HTTPC_SETOPT(CURLOPT_PREREQDATA, (void *)x);
    }
#undef HTTPC_SETOPT
    return rc;
}

struct httpc_xfer *httpc_start(struct httpc *hc, const struct httpc_request *req,
                               httpc_done_fn done, void *arg, char *err, size_t errlen) {
    struct httpc_xfer *x = calloc(1, sizeof *x);
    CURLcode rc;

    if (!x || hc->freeing) {
        snprintf(err, errlen, x ? "shutting down" : "out of memory");
        free(x);
        return NULL;
    }
    x->hc = hc;
    x->done = done;
    x->arg = arg;
    x->resp_max = req->response_max;
    x->resp_limit = req->response_limit;
    if (req->body && req->copy_body) {
        if (!(x->body = malloc(req->body_len + 1)))
            goto oom;
        memcpy(x->body, req->body, req->body_len);
        x->body[req->body_len] = '\0';
    }
    if (httpc_slist(req, &x->headers) != 0)
        goto oom;
    if (!(x->easy = curl_easy_init())) {
        snprintf(err, errlen, "curl_easy_init failed");
        goto fail;
    }
    if ((rc = httpc_setopts(x, req)) != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(rc));
        goto fail;
    }
    HTTPC_CHECK(x->state == HTTPC_NEW); /* added to the multi once */
    if (curl_multi_add_handle(hc->multi, x->easy) != CURLM_OK) {
        snprintf(err, errlen, "curl_multi_add_handle failed");
        goto fail;
    }
    /* handoff: the multi drives the easy handle, hc owns x until it ends */
    x->state = HTTPC_ADDED;
    x->next = hc->xfers;
    if (hc->xfers)
        hc->xfers->prev = x;
    hc->xfers = x;
    hc->inflight++;
    return x;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    httpc_xfer_free(x);
    return NULL;
}

void httpc_cancel(struct httpc *hc, struct httpc_xfer *x) {
    if (!x)
        return;
    httpc_unlink(hc, x);
    curl_multi_remove_handle(hc->multi, x->easy);
    httpc_xfer_free(x);
}

const char *httpc_result_header(const struct httpc_result *r, const char *name) {
    struct curl_header *h;

    if (!r->xfer || r->status <= 0 ||
        curl_easy_header(r->xfer->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return NULL;
    return h->value;
}

int httpc_inflight(const struct httpc *hc) {
    return hc->inflight;
}

/* Why a transfer got no answer, in words a user reads (into x->why): the
 * system's reason for a failed connect ("connection refused"), else
 * curl's error buffer without its " after N ms" (the attempt's latency is
 * shown beside it), else the text of curl's code. */
static const char *httpc_why(struct httpc_xfer *x, CURLcode res, const char *code_text) {
    long os_errno = 0;
    char *p, *end;

    if (res == CURLE_COULDNT_CONNECT &&
        curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &os_errno) == CURLE_OK && os_errno > 0) {
        snprintf(x->why, sizeof x->why, "%s", strerror((int)os_errno));
        x->why[0] = (char)tolower((unsigned char)x->why[0]);
        return x->why;
    }
    if (res == CURLE_OPERATION_TIMEDOUT)
        return "timed out";
    if (!x->errbuf[0])
        return code_text;
    snprintf(x->why, sizeof x->why, "%s", x->errbuf);
    if ((p = strstr(x->why, " after ")) && (strtol(p + 7, &end, 10), end > p + 7) &&
        strncmp(end, " ms", 3) == 0)
        memmove(p, end + 3, strlen(end + 3) + 1);
    return x->why;
}

/* Ends x: its callback runs while the easy handle is still in the multi
 * (its response headers readable), then x leaves the multi and is freed.
 * res is curl's result; shutting: ended by httpc_free. */
static void httpc_end(struct httpc *hc, struct httpc_xfer *x, CURLcode res, int shutting) {
    struct httpc_result r = {0};
    long code = 0;

    httpc_unlink(hc, x);
    r.xfer = x;
    r.too_large = x->too_large;
    r.body = x->resp.p ? x->resp.p : "";
    r.body_len = x->resp.len;
    if (shutting) {
        r.status = -1;
        r.error = r.code_text = "shutting down";
    } else if (res != CURLE_OK && !(res == CURLE_WRITE_ERROR && x->cut)) {
        r.code_text = curl_easy_strerror(res);
        r.error = x->refused[0] ? x->refused : httpc_why(x, res, r.code_text);
    } else {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
        r.status = (int)code;
    }
    x->done(x->arg, &r);
    curl_multi_remove_handle(hc->multi, x->easy);
    httpc_xfer_free(x);
}

#ifdef WAYBILL_CHECKS
/* Every listed transfer is in the multi, and the count matches. */
static int httpc_check_invariants(const struct httpc *hc) {
    int n = 0;

    for (const struct httpc_xfer *x = hc->xfers; x; x = x->next, n++)
        if (x->state != HTTPC_ADDED || x->hc != hc || (x->next && x->next->prev != x))
            return 0;
    return n == hc->inflight;
}
#endif

/* ---- the multi on the loop (hiperfifo) ---- */

/* Every finished transfer: to its callback. */
static void httpc_check_multi(struct httpc *hc) {
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(hc->multi, &left))) {
        char *priv = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        HTTPC_CHECK(priv != NULL);
        if (priv)
            httpc_end(hc, (struct httpc_xfer *)(void *)priv, m->data.result, 0);
    }
    HTTPC_CHECK(httpc_check_invariants(hc));
}

static void httpc_sock_event_cb(evutil_socket_t fd, short kind, void *arg) {
    struct httpc *hc = arg; /* not the httpc_sock: curl may free it in the call */
    int mask = (kind & EV_READ ? CURL_CSELECT_IN : 0) | (kind & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    CURLMcode rc;

    rc = curl_multi_socket_action(hc->multi, fd, mask, &running);
    if (rc != CURLM_OK)
        log_msg(LOG_WARN, "curl_multi_socket_action: %s", curl_multi_strerror(rc));
    httpc_check_multi(hc);
}

static void httpc_timer_event_cb(evutil_socket_t fd, short kind, void *arg) {
    struct httpc *hc = arg;
    int running;
    CURLMcode rc;

    UNUSED(fd);
    UNUSED(kind);
    rc = curl_multi_socket_action(hc->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (rc != CURLM_OK)
        log_msg(LOG_WARN, "curl_multi_socket_action: %s", curl_multi_strerror(rc));
    httpc_check_multi(hc);
}

static void httpc_sock_free(struct httpc *hc, struct httpc_sock *hs) {
    if (hs->assigned)
        event_del(&hs->ev);
    if (hs->prev)
        hs->prev->next = hs->next;
    else
        hc->socks = hs->next;
    if (hs->next)
        hs->next->prev = hs->prev;
    free(hs);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl asks, or stop. */
static int httpc_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    struct httpc *hc = userp;
    struct httpc_sock *hs = socketp;
    short kind;

    UNUSED(easy);
    if (what == CURL_POLL_REMOVE) {
        if (hs)
            httpc_sock_free(hc, hs);
        return 0;
    }
    if (!hs) {
        if (!(hs = calloc(1, sizeof *hs))) {
            log_msg(LOG_ERROR, "out of memory watching an HTTP client socket");
            return -1;
        }
        hs->fd = s;
        hs->next = hc->socks;
        if (hc->socks)
            hc->socks->prev = hs;
        hc->socks = hs;
        curl_multi_assign(hc->multi, s, hs);
    } else if (hs->assigned) {
        event_del(&hs->ev);
    }
    kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0) |
                   EV_PERSIST);
    event_assign(&hs->ev, hc->base, s, kind, httpc_sock_event_cb, hc);
    event_add(&hs->ev, NULL);
    hs->assigned = 1;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: (re)arm or delete our one timer. Never calls
 * libcurl: the timer's event does, from the loop. */
static int httpc_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    struct httpc *hc = userp;
    struct timeval tv;

    UNUSED(multi);
    if (timeout_ms < 0) {
        evtimer_del(hc->timer);
    } else {
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        evtimer_add(hc->timer, &tv);
    }
    return 0;
}

/* ---- lifecycle ---- */

struct httpc *httpc_new(struct event_base *base, char *err, size_t errlen) {
    struct httpc *hc = calloc(1, sizeof *hc);

    if (!hc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    hc->base = base;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "curl_global_init failed");
        goto fail;
    }
    hc->curl_inited = 1;
    if (!(hc->timer = evtimer_new(base, httpc_timer_event_cb, hc))) {
        snprintf(err, errlen, "could not create the HTTP client's timer");
        goto fail;
    }
    if (!(hc->multi = curl_multi_init())) {
        snprintf(err, errlen, "curl_multi_init failed");
        goto fail;
    }
    if (curl_multi_setopt(hc->multi, CURLMOPT_SOCKETFUNCTION, httpc_socket_cb) != CURLM_OK ||
        curl_multi_setopt(hc->multi, CURLMOPT_SOCKETDATA, (void *)hc) != CURLM_OK ||
        curl_multi_setopt(hc->multi, CURLMOPT_TIMERFUNCTION, httpc_curl_timer_cb) != CURLM_OK ||
        curl_multi_setopt(hc->multi, CURLMOPT_TIMERDATA, (void *)hc) != CURLM_OK ||
        curl_multi_setopt(hc->multi, CURLMOPT_MAXCONNECTS, HTTPC_MAX_CONNECTS) != CURLM_OK) {
        snprintf(err, errlen, "curl_multi_setopt failed");
        goto fail;
    }
    return hc;
fail:
    httpc_free(hc);
    return NULL;
}

void httpc_set_allow(struct httpc *hc, httpc_allow_fn allowed, void *arg) {
    hc->allowed = allowed;
    hc->allowed_arg = arg;
}

void httpc_free(struct httpc *hc) {
    if (!hc)
        return;
    hc->freeing = 1;
    while (hc->xfers) /* each learns it ends unanswered */
        httpc_end(hc, hc->xfers, CURLE_OK, 1);
    HTTPC_CHECK(hc->inflight == 0);
    if (hc->multi)
        curl_multi_cleanup(hc->multi); /* may still call httpc_socket_cb: hc is whole */
    while (hc->socks)
        httpc_sock_free(hc, hc->socks);
    if (hc->timer)
        event_free(hc->timer);
    if (hc->curl_inited)
        curl_global_cleanup();
    free(hc);
}

/* ---- one-off requests ---- */

struct httpc_probe {
    httpc_probe_fn done;
    void *arg;
};

static void httpc_probe_done(void *arg, const struct httpc_result *r) {
    struct httpc_probe *p = arg;

    p->done(p->arg, r->status, r->error ? r->error : "");
    free(p);
}

int httpc_probe(struct httpc *hc, const char *url, const char *body, size_t len,
                const char *const *headers, int64_t timeout_ms, httpc_probe_fn done, void *arg) {
    struct httpc_probe *p = calloc(1, sizeof *p);
    struct httpc_request req = {
        .url = url,
        .body = body,
        .body_len = len,
        .copy_body = 1,
        .lines = headers,
        .timeout_ms = timeout_ms,
        .guarded = 1,
    };
    char err[128];

    if (!p)
        return -1;
    p->done = done;
    p->arg = arg;
    if (!httpc_start(hc, &req, httpc_probe_done, p, err, sizeof err)) {
        log_msg(LOG_DEBUG, "probe to %s not started: %s", url, err);
        free(p);
        return -1;
    }
    return 0;
}
