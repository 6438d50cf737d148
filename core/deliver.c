/* deliver.c -- outbound delivery: one libcurl multi handle driven by the
 * libevent loop (the structure of curl's hiperfifo example), signing,
 * retries per schedule, every attempt stored, and the scheduler that
 * decides what is claimed from the store and started, endpoint by endpoint
 * (the model and its invariants are in deliver.h).
 * Ownership: a claimed delivery is owned by exactly one struct deliver_xfer
 * (waiting in its endpoint's FIFO, or in flight in the multi) from its claim
 * until its outcome is written, or its lease is released or lapses; ep->nwaiting
 * and ep->inflight count them per endpoint, d->inflight all in the multi.
 * SPDX-License-Identifier: MIT */

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <jansson.h>

#include "deliver.h"
#include "gateway.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "verify.h"

#define DELIVER_MAX_CONNECTS 128L   /* idle connections the multi keeps for reuse */
#define DELIVER_RESPONSE_MAX 1024   /* bytes of a response body stored with an attempt */
#define DELIVER_POLL_MS 1000        /* look again after a claim that found due rows it could not take */
#define DELIVER_AHEAD_MAX 64        /* waiting rows an endpoint keeps beyond its slots, at most */
#define DELIVER_RATE_AHEAD_S 10     /* a rate-limited endpoint claims at most this many seconds' worth */
#define DELIVER_ORDERED_AHEAD 3     /* rows an ordered endpoint reads ahead of its head */
#define DELIVER_CHECK_MS 1000       /* the watchdog's tick */
#define DELIVER_STUCK_MS 10000      /* due with a free slot this long: /healthz reports it */
#define DELIVER_SLOTS_MAX 1024      /* concurrency above this is capped (one process's sockets) */
#define DELIVER_LEASE_MARGIN_MS 30000 /* a transfer starts with at least its timeout + this left */
#define DELIVER_LEASE_MIN_MS 120000 /* a lease covers the longest timeout + 60 s, at least this */
#define DELIVER_LEASE_EXTRA_MS 60000
/* Retry delay of a delivery whose endpoint left the config while in flight. */
#define DELIVER_ORPHAN_DEFER_MS 60000

/* ---- structures ---- */

/* A socket curl asked us to watch (hiperfifo's SockInfo). ev is assigned
 * (EV_PERSIST) while assigned is 1; re-assigned when curl changes the flags;
 * freed on CURL_POLL_REMOVE or, for any curl never removed, at deliver_free. */
struct deliver_sock {
    curl_socket_t fd;
    int assigned;
    struct event ev;
    struct deliver_sock *prev, *next; /* d->socks */
};

/* One endpoint's queue (keyed by name; the config is looked up by name
 * each time). Made for every endpoint of the config, kept while it holds
 * work after leaving it. Owns its waiting xfers and its timer. */
struct deliver_ep {
    struct deliver *d;
    char *name;
    struct event *timer;              /* this endpoint's next look (due row, token, retry) */
    int64_t timer_at;                 /* monotonic ms timer is due, 0 when not pending */
    int inflight;                     /* transfers of this endpoint in the multi */
    struct deliver_xfer *head, *tail; /* claimed, waiting for a slot or a token (FIFO) */
    int nwaiting;                     /* length of the FIFO */
    int warned;                       /* "not in the config" logged for this config */
    double tokens;                    /* rate limit bucket (SPEC 7 `rate`) */
    int64_t tokens_at;                /* monotonic ms of the last refill, 0 = full */
    int64_t token_wait;               /* monotonic ms the next token is there, 0 = now */
    uint64_t progress;                /* claims tried + transfers started, ever */
    uint64_t progress_seen;           /* progress when due_free_since was set */
    int64_t due_free_since;           /* monotonic ms since due with a free slot, 0 = not */
    int stuck;                        /* due with a free slot for DELIVER_STUCK_MS */
    uint64_t lost_wakeups;            /* watchdog found it idle while due (a bug) */
    struct deliver_xfer *xfers;       /* every xfer it holds, waiting or in flight */
    int dirty;                        /* rows were written for it: the next kick looks */
    int64_t dirty_seq;                /* ... once deliveries up to this seq are committed */
    struct deliver_ep *next;
};

/* One claimed delivery and, once started, its transfer. Owns row (a deep
 * copy of the claimed store row) until the outcome is written; the easy
 * handle points at row.payload (CURLOPT_POSTFIELDS, not copied). */
struct deliver_xfer {
    struct deliver *d;
    struct deliver_ep *ep;            /* borrowed; outlives the xfer */
    struct deliver_xfer *qnext;       /* ep FIFO link while waiting */
    struct deliver_xfer *prev, *next; /* d->xfers: every held xfer */
    struct deliver_xfer *ep_prev, *ep_next; /* ep->xfers */
    struct store_delivery row;        /* owned */
    int64_t lease_until;              /* Unix ms its lease ends (claim, or renewal at start) */
    CURL *easy;                       /* NULL until started */
    struct curl_slist *headers;       /* owned, in use by easy */
    int64_t at;                       /* Unix ms the attempt started */
    int64_t t0;                       /* monotonic ms, for the latency */
    size_t resp_len;
    char resp[DELIVER_RESPONSE_MAX]; /* first bytes of the response body */
    char errbuf[CURL_ERROR_SIZE];    /* CURLOPT_ERRORBUFFER */
    char refused[96];                /* SSRF guard's reason, "" when none */
};

/* Registered with store_on_written; detached (d = NULL) by deliver_free so a
 * later callback does nothing. The callback frees it. */
struct deliver_commit {
    struct deliver *d;
};

struct deliver {
    struct event_base *base;
    struct store *store;
    struct health *health;    /* borrowed: endpoint state */
    const struct config *cfg; /* borrowed; NULL until deliver_set_config */
    CURLM *multi;
    int curl_inited;
    struct event *curl_timer; /* curl's single timer (CURLMOPT_TIMERFUNCTION) */
    struct event *kick_ev;    /* coalesced look at every endpoint */
    struct event *check_ev;   /* the watchdog (DELIVER_CHECK_MS) */
    int64_t check_at;         /* monotonic ms of its last tick */
    int64_t check_wall;       /* Unix ms of its last tick */
    int kick_all;             /* the next kick looks at every endpoint */
    int all_at_commit;        /* ... and so does the kick at the next COMMIT */
    struct event *grace_ev;   /* shutdown grace */
    struct event *done_ev;    /* runs the shutdown callback from the loop */
    struct deliver_sock *socks;
    struct deliver_xfer *xfers;
    struct deliver_ep *eps;
    int inflight;
    int64_t lease_ms;
    uint64_t rng;
    struct deliver_commit *commit; /* outstanding store_on_written, or NULL */
    int stopping;
    void (*done)(void *arg);
    void *done_arg;
    struct deliver_probe *probes; /* deliver_probe transfers in flight */
    deliver_notify_fn notify;
    void *notify_arg;
};

static int deliver_probe_finish(struct deliver *d, CURL *easy, CURLcode res);
static void deliver_probes_free(struct deliver *d);

/* ---- pure helpers ---- */

enum deliver_outcome deliver_outcome_classify(int status_code, enum config_success success) {
    if (status_code >= 200 && status_code <= 299) {
        if (success == CONFIG_SUCCESS_200 && status_code != 200)
            return DELIVER_RETRY;
        return DELIVER_DELIVERED;
    }
    if (status_code == 406)
        return DELIVER_FAILED;
    if (status_code == 410)
        return DELIVER_GONE;
    if (status_code == 429 || status_code == 503)
        return DELIVER_RETRY_AFTER;
    return DELIVER_RETRY; /* 0 (no response), 1xx, 3xx, other 4xx, 5xx */
}

int64_t deliver_retry_after_parse(const char *value, int64_t now_ms) {
    const char *p = value;
    int64_t ms;

    if (!p)
        return -1;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p >= '0' && *p <= '9') {
        int64_t secs = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (secs <= DELIVER_RETRY_AFTER_MAX_MS / 1000)
                secs = secs * 10 + (*p - '0');
        }
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p)
            return -1; /* "1.5", "10s", "5 6", or a date starting with a digit */
        ms = secs > DELIVER_RETRY_AFTER_MAX_MS / 1000 ? DELIVER_RETRY_AFTER_MAX_MS : secs * 1000;
    } else {
        time_t t;
        if (!*p || !strpbrk(p, "0123456789"))
            return -1; /* every HTTP date has digits; curl_getdate is lenient */
        t = curl_getdate(p, NULL);
        if (t == (time_t)-1)
            return -1;
        if ((int64_t)t > (now_ms + DELIVER_RETRY_AFTER_MAX_MS) / 1000 + 1)
            return DELIVER_RETRY_AFTER_MAX_MS;
        ms = (int64_t)t * 1000 - now_ms;
        if (ms < 0)
            ms = 0;
    }
    return ms > DELIVER_RETRY_AFTER_MAX_MS ? DELIVER_RETRY_AFTER_MAX_MS : ms;
}

int deliver_schedule_next(const int64_t *retry_ms, size_t nretry, int pos, int jitter, uint32_t rnd,
                          int64_t *delay_ms) {
    int64_t delay;

    if (pos < 0 || (size_t)pos + 1 >= nretry)
        return -1;
    delay = retry_ms[pos + 1];
    if (jitter && delay > 0) {
        /* uniform in [-10%, +10%): rnd / 2^32 is in [0, 1) */
        double j = (double)delay * (0.2 * ((double)rnd / 4294967296.0) - 0.1);
        delay += (int64_t)(j < 0 ? j - 0.5 : j + 0.5);
        if (delay < 0)
            delay = 0;
    }
    *delay_ms = delay;
    return pos + 1;
}

static int deliver_v4_private(const unsigned char *b) {
    return b[0] == 0                               /* 0.0.0.0/8 */
           || b[0] == 10                           /* 10/8 */
           || b[0] == 127                          /* loopback */
           || (b[0] == 100 && (b[1] & 0xc0) == 64) /* CGNAT 100.64/10 */
           || (b[0] == 169 && b[1] == 254)         /* link-local, metadata */
           || (b[0] == 172 && (b[1] & 0xf0) == 16) /* 172.16/12 */
           || (b[0] == 192 && b[1] == 168);        /* 192.168/16 */
}

/* The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
 * (::a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) IPv6 address, else NULL. */
static const unsigned char *deliver_embedded_v4(const unsigned char *b) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char compat[12] = {0};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};

    if (!memcmp(b, mapped, 12) || !memcmp(b, compat, 12) || !memcmp(b, nat64, 12))
        return b + 12;
    return NULL;
}

int deliver_address_private(int family, const void *addr) {
    static const unsigned char any6[16] = {0};
    static const unsigned char loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    const unsigned char *b = addr, *v4;

    if (family == AF_INET)
        return deliver_v4_private(b);
    if (family != AF_INET6)
        return 1;
    if (!memcmp(b, any6, 16) || !memcmp(b, loop6, 16))
        return 1;
    if ((b[0] & 0xfe) == 0xfc) /* fc00::/7 */
        return 1;
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) /* fe80::/10 */
        return 1;
    v4 = deliver_embedded_v4(b);
    return v4 ? deliver_v4_private(v4) : 0;
}

/* ---- small helpers ---- */

static uint32_t deliver_rand(struct deliver *d) {
    uint64_t x = d->rng; /* xorshift64*: jitter needs spread, not secrecy */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    d->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static const struct config_endpoint *deliver_endpoint(const struct deliver *d, const char *name) {
    return d->cfg && name ? config_endpoint_by_name(d->cfg, name) : NULL;
}

static int deliver_endpoint_limit(const struct config_endpoint *cep) {
    if (cep->ordered)
        return 1;
    if (cep->concurrency > DELIVER_SLOTS_MAX)
        return DELIVER_SLOTS_MAX;
    return cep->concurrency > 0 ? cep->concurrency : 1;
}

/* ---- header list ---- */

/* Outgoing headers by name (case-insensitive); a later set replaces. */
struct deliver_hdrs {
    struct config_header *v; /* owned names and values */
    size_t n, cap;
    int failed; /* an allocation failed */
};

static int deliver_hdr_valid(const char *name, const char *value) {
    const char *p;

    if (!name || !*name || !value)
        return 0;
    for (p = name; *p; p++) /* an RFC 9110 token */
        if (*p <= ' ' || *p >= 127 || strchr("\"(),/:;<=>?@[\\]{}", *p))
            return 0;
    return strpbrk(value, "\r\n") == NULL;
}

/* Headers that endpoint and rule headers may not set: ours, and framing. */
static int deliver_hdr_reserved(const char *name) {
    return !strncasecmp(name, "x-waybill-", 10) || !strcasecmp(name, "content-length") ||
           !strcasecmp(name, "transfer-encoding") || !strcasecmp(name, "expect");
}

/* Returns 0, 1 when name/value is not a valid header (skipped), -1 when out of memory. */
static int deliver_hdrs_set(struct deliver_hdrs *h, const char *name, const char *value) {
    char *nv = NULL, *nn = NULL;
    size_t i;

    if (!deliver_hdr_valid(name, value))
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
        struct config_header *v = realloc(h->v, cap * sizeof *v);
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

static void deliver_hdrs_free(struct deliver_hdrs *h) {
    size_t i;
    for (i = 0; i < h->n; i++) {
        free(h->v[i].name);
        free(h->v[i].value);
    }
    free(h->v);
}

static void deliver_sign_add(void *ctx, const char *name, const char *value) {
    deliver_hdrs_set(ctx, name, value);
}

/* The delivery's own headers (rules' send(..., {headers=...})): a JSON
 * object of strings (integers are accepted too). Others are skipped. */
static void deliver_hdrs_from_json(struct deliver_hdrs *h, const struct store_delivery *row) {
    json_error_t jerr;
    json_t *obj, *val;
    const char *key;
    char num[32];

    if (!row->headers_json || !*row->headers_json)
        return;
    obj = json_loads(row->headers_json, 0, &jerr);
    if (!json_is_object(obj)) {
        log_msg(LOG_WARN, "delivery %s: its headers are not a JSON object; sent without them",
                row->id);
        json_decref(obj);
        return;
    }
    json_object_foreach(obj, key, val) {
        const char *v = NULL;
        if (json_is_string(val)) {
            v = json_string_value(val);
        } else if (json_is_integer(val)) {
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(val));
            v = num;
        }
        if (!v || deliver_hdr_reserved(key) || deliver_hdrs_set(h, key, v) == 1)
            log_msg(LOG_DEBUG, "delivery %s: header %s skipped", row->id, key);
    }
    json_decref(obj);
}

/* Builds the request headers (SPEC section 5) into a new curl list.
 * Returns 0, or -1 with a reason in err. */
static int deliver_headers_build(struct deliver_xfer *x, const struct config_endpoint *cep,
                                 struct curl_slist **out, char *err, size_t errlen) {
    const struct store_delivery *row = &x->row;
    struct deliver_hdrs h = {0};
    struct curl_slist *list = NULL, *l;
    struct util_buf line = {0};
    char attempt[16];
    size_t i;
    int rc = -1;

    snprintf(attempt, sizeof attempt, "%d", row->attempts + 1);
    deliver_hdrs_set(&h, "Content-Type",
                     row->content_type && *row->content_type ? row->content_type
                                                             : "application/json");
    deliver_hdrs_set(&h, "User-Agent", "waybill/" WAYBILL_VERSION);
    deliver_hdrs_set(&h, "X-Waybill-Event-Type", row->event_type ? row->event_type : "");
    deliver_hdrs_set(&h, "X-Waybill-Delivery", row->id);
    deliver_hdrs_set(&h, "X-Waybill-Attempt", attempt);
    for (i = 0; i < cep->nheaders; i++) {
        const struct config_header *ch = &cep->headers[i];
        if (deliver_hdr_reserved(ch->name) || deliver_hdrs_set(&h, ch->name, ch->value) == 1)
            log_msg(LOG_DEBUG, "endpoint %s: header %s skipped", cep->name, ch->name);
    }
    deliver_hdrs_from_json(&h, row);
    /* last, so a signature header can't be overridden */
    if (verify_sign(cep->sign, cep->secrets, cep->nsecrets, row->id, util_now_ms() / 1000,
                    row->payload, row->payload_len, deliver_sign_add, &h) != 0) {
        snprintf(err, errlen, "could not sign the request");
        goto fail;
    }
    if (h.failed)
        goto oom;
    for (i = 0; i < h.n; i++) {
        util_buf_reset(&line);
        /* "Name;" is curl's way to send a header with an empty value */
        if (util_buf_printf(&line, *h.v[i].value ? "%s: %s" : "%s;%s", h.v[i].name, h.v[i].value) !=
            0)
            goto oom;
        if (!(l = curl_slist_append(list, line.p)))
            goto oom;
        list = l;
    }
    if (!(l = curl_slist_append(list, "Expect:"))) /* no 100-continue round trip */
        goto oom;
    list = l;
    *out = list;
    list = NULL;
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    curl_slist_free_all(list);
    util_buf_free(&line);
    deliver_hdrs_free(&h);
    return rc;
}

/* ---- transfers ---- */

/* A new xfer owning a deep copy of row, linked into d->xfers, or NULL. */
static struct deliver_xfer *deliver_xfer_new(struct deliver *d, const struct store_delivery *row,
                                             struct deliver_ep *ep) {
    struct deliver_xfer *x = calloc(1, sizeof *x);

    if (!x)
        return NULL;
    x->row = *row;
    x->row.endpoint = util_strdup(row->endpoint);
    x->row.event_type = util_strdup(row->event_type);
    x->row.content_type = util_strdup(row->content_type);
    x->row.headers_json = util_strdup(row->headers_json);
    x->row.payload = malloc(row->payload_len + 1);
    if (x->row.payload) {
        if (row->payload_len)
            memcpy(x->row.payload, row->payload, row->payload_len);
        x->row.payload[row->payload_len] = '\0';
    }
    if (!x->row.endpoint || !x->row.payload || (row->event_type && !x->row.event_type) ||
        (row->content_type && !x->row.content_type) ||
        (row->headers_json && !x->row.headers_json)) {
        free(x->row.endpoint);
        free(x->row.event_type);
        free(x->row.content_type);
        free(x->row.headers_json);
        free(x->row.payload);
        free(x);
        return NULL;
    }
    x->d = d;
    x->ep = ep;
    x->next = d->xfers;
    if (d->xfers)
        d->xfers->prev = x;
    d->xfers = x;
    x->ep_next = ep->xfers;
    if (ep->xfers)
        ep->xfers->ep_prev = x;
    ep->xfers = x;
    x->lease_until = util_now_ms() + d->lease_ms;
    return x;
}

/* Frees x (not in an ep FIFO any more), taking its easy handle out of the
 * multi first. Writes nothing: a dropped delivery's lease lapses. */
static void deliver_xfer_free(struct deliver *d, struct deliver_xfer *x) {
    if (x->easy) {
        curl_multi_remove_handle(d->multi, x->easy);
        curl_easy_cleanup(x->easy);
        d->inflight--;
        x->ep->inflight--;
    }
    curl_slist_free_all(x->headers);
    if (x->prev)
        x->prev->next = x->next;
    else
        d->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    if (x->ep_prev)
        x->ep_prev->ep_next = x->ep_next;
    else
        x->ep->xfers = x->ep_next;
    if (x->ep_next)
        x->ep_next->ep_prev = x->ep_prev;
    free(x->row.endpoint);
    free(x->row.event_type);
    free(x->row.content_type);
    free(x->row.headers_json);
    free(x->row.payload);
    free(x);
}

static size_t deliver_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
    struct deliver_xfer *x = userdata;
    size_t n = size * nmemb, room = sizeof x->resp - x->resp_len;

    if (room) {
        size_t take = n < room ? n : room;
        memcpy(x->resp + x->resp_len, ptr, take);
        x->resp_len += take;
    }
    return n; /* the rest is read and discarded */
}

/* CURLOPT_OPENSOCKETFUNCTION: the SSRF guard. Runs after DNS, on the very
 * address about to be connected, so a rebinding name can't slip past. */
static curl_socket_t deliver_opensocket_cb(void *clientp, curlsocktype purpose,
                                           struct curl_sockaddr *a) {
    struct deliver_xfer *x = clientp;
    const struct config *cfg = x->d->cfg;
    struct sockaddr_storage ss;
    const unsigned char *ip = NULL, *v4;
    char text[INET6_ADDRSTRLEN];
    size_t len = a->addrlen < sizeof ss ? a->addrlen : sizeof ss;

    memset(&ss, 0, sizeof ss);
    memcpy(&ss, &a->addr, len); /* curl's addr is as long as addrlen says */
    if (a->family == AF_INET && len >= sizeof(struct sockaddr_in))
        ip = (const unsigned char *)&((struct sockaddr_in *)&ss)->sin_addr;
    else if (a->family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
        ip = (const unsigned char *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    if (purpose == CURLSOCKTYPE_IPCXN) {
        if (!ip) {
            snprintf(x->refused, sizeof x->refused, "address family %d refused", a->family);
            return CURL_SOCKET_BAD;
        }
        if (deliver_address_private(a->family, ip) &&
            !(cfg && (config_private_allowed(cfg, a->family, ip) ||
                      (a->family == AF_INET6 && (v4 = deliver_embedded_v4(ip)) &&
                       config_private_allowed(cfg, AF_INET, v4))))) {
            if (!inet_ntop(a->family, ip, text, sizeof text))
                snprintf(text, sizeof text, "?");
            snprintf(x->refused, sizeof x->refused,
                     "address %s is private (allow_private to permit)", text);
            return CURL_SOCKET_BAD;
        }
    }
    x->refused[0] = '\0'; /* an earlier candidate address was refused, this one is fine */
#ifdef SOCK_CLOEXEC
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
    return socket(a->family, a->socktype, a->protocol);
#endif
}

/* Starts x (just taken from its FIFO) on endpoint cep: builds the request and
 * adds it to the multi; curl's 0 ms timer then starts it from the loop.
 * Returns 0, or -1 with a reason in err (x unchanged, not started). */
static int deliver_xfer_start(struct deliver *d, struct deliver_xfer *x,
                              const struct config_endpoint *cep, char *err, size_t errlen) {
    struct curl_slist *headers = NULL;
    CURL *easy = NULL;
    CURLcode rc = CURLE_OK;
    int ret = -1;

    if (deliver_headers_build(x, cep, &headers, err, errlen) != 0)
        goto fail;
    if (!(easy = curl_easy_init())) {
        snprintf(err, errlen, "curl_easy_init failed");
        goto fail;
    }
    x->errbuf[0] = '\0';
    x->refused[0] = '\0';
    x->resp_len = 0;
#define DELIVER_SETOPT(opt, val)                                                                   \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(easy, opt, val)
    DELIVER_SETOPT(CURLOPT_PRIVATE, (void *)x);
    DELIVER_SETOPT(CURLOPT_URL, cep->url);
    DELIVER_SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    DELIVER_SETOPT(CURLOPT_PROXY,
                   ""); /* no proxy from the environment: it would bypass the guard */
    DELIVER_SETOPT(CURLOPT_POSTFIELDS, x->row.payload);
    DELIVER_SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->row.payload_len);
    DELIVER_SETOPT(CURLOPT_HTTPHEADER, headers);
    DELIVER_SETOPT(CURLOPT_TIMEOUT_MS, (long)cep->timeout_ms);
    DELIVER_SETOPT(CURLOPT_FOLLOWLOCATION, 0L); /* a 3xx is a failure */
    DELIVER_SETOPT(CURLOPT_NOSIGNAL, 1L);
    DELIVER_SETOPT(CURLOPT_WRITEFUNCTION, deliver_write_cb);
    DELIVER_SETOPT(CURLOPT_WRITEDATA, (void *)x);
    DELIVER_SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
    DELIVER_SETOPT(CURLOPT_OPENSOCKETFUNCTION, deliver_opensocket_cb);
    DELIVER_SETOPT(CURLOPT_OPENSOCKETDATA, (void *)x);
#undef DELIVER_SETOPT
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(rc));
        goto fail;
    }
    x->at = util_now_ms();
    x->t0 = util_mono_ms();
    if (curl_multi_add_handle(d->multi, easy) != CURLM_OK) {
        snprintf(err, errlen, "curl_multi_add_handle failed");
        goto fail;
    }
    /* handoff: the multi drives easy, x owns both until CURLMSG_DONE */
    x->easy = easy;
    x->headers = headers;
    easy = NULL;
    headers = NULL;
    d->inflight++;
    x->ep->inflight++;
    ret = 0;
fail:
    if (easy)
        curl_easy_cleanup(easy);
    curl_slist_free_all(headers);
    return ret;
}

/* ---- outcomes ---- */

static void deliver_kick_now(struct deliver *d, int all);

static void deliver_commit_cb(void *arg, int ok) {
    struct deliver_commit *c = arg;
    struct deliver *d = c->d;

    free(c);
    if (!d)
        return; /* deliver_free ran */
    d->commit = NULL;
    if (!ok) {
        /* endpoint states written in that group are read again by health.c */
        log_msg(LOG_WARN, "delivery outcomes were rolled back; those deliveries go out again "
                          "when their leases end");
        deliver_kick_now(d, 1);
    } else if (d->all_at_commit) {
        d->all_at_commit = 0;
        deliver_kick_now(d, 1);
    }
}

/* Looks at the group being written once it is committed: on a rollback,
 * looks at every endpoint; with all_at_commit
 * set (deliver_kick_all), looks at every endpoint. */
static void deliver_commit_watch(struct deliver *d) {
    struct deliver_commit *c;

    if (d->commit)
        return;
    if (!(c = malloc(sizeof *c))) {
        deliver_kick_now(d, 1);
        return;
    }
    c->d = d;
    if (store_on_written(d->store, deliver_commit_cb, c) != 0) {
        free(c);
        deliver_kick_now(d, 1);
        return;
    }
    d->commit = c;
}

/* Hands an operational event to the notify hook (which takes data). */
static void deliver_emit(struct deliver *d, const char *type, json_t *data) {
    if (!data)
        return;
    if (d->notify)
        d->notify(d->notify_arg, type, data);
    else
        json_decref(data);
}

/* Records the outcome of x's attempt (SPEC section 7) and frees x. res is
 * curl's result when x was started; otherwise start_err says why it could
 * not be. */
static void deliver_finish(struct deliver *d, struct deliver_xfer *x, CURLcode res,
                           const char *start_err) {
    const struct config_endpoint *cep = deliver_endpoint(d, x->row.endpoint);
    struct store_attempt a = {0};
    struct curl_header *h;
    enum deliver_outcome outcome;
    const char *status, *why = "";
    char err[256], msg[64], what[320], delay_text[32];
    int64_t now = util_now_ms(), next_at = 0, delay = 0, retry_after = -1;
    long code = 0;
    int pos = x->row.schedule_pos, npos;

    a.n = x->row.attempts + 1;
    a.at = x->easy ? x->at : now;
    a.latency_ms = x->easy ? util_mono_ms() - x->t0 : 0;
    if (!x->easy) {
        a.error = start_err;
    } else if (res != CURLE_OK) {
        a.error = x->refused[0] ? x->refused : x->errbuf[0] ? x->errbuf : curl_easy_strerror(res);
    } else {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
        a.status_code = (int)code;
        a.response = x->resp;
        a.response_len = x->resp_len;
        if (curl_easy_header(x->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
            retry_after = deliver_retry_after_parse(h->value, now);
    }
    outcome =
        a.error ? DELIVER_RETRY
                : deliver_outcome_classify(a.status_code, cep ? cep->success : CONFIG_SUCCESS_2XX);
    if (!a.error && outcome != DELIVER_DELIVERED) {
        snprintf(msg, sizeof msg, "HTTP %d%s", a.status_code,
                 a.status_code >= 300 && a.status_code < 400 ? " (redirects are not followed)"
                                                             : "");
        a.error = msg;
    }

    switch (outcome) {
    case DELIVER_DELIVERED:
        status = "delivered";
        break;
    case DELIVER_FAILED:
        status = "failed";
        why = " (no retry after 406)";
        break;
    case DELIVER_GONE:
        status = "failed"; /* and the endpoint is disabled, below */
        why = " (410 Gone)";
        break;
    case DELIVER_RETRY:
    case DELIVER_RETRY_AFTER:
    default:
        if (!cep) { /* the endpoint left the config while this was in flight */
            status = "pending";
            delay = DELIVER_ORPHAN_DEFER_MS;
        } else if ((npos = deliver_schedule_next(cep->retry_ms, cep->nretry, pos, cep->jitter,
                                                 deliver_rand(d), &delay)) < 0) {
            status = "failed";
            why = " (retries exhausted)";
        } else {
            status = "pending";
            pos = npos;
            if (outcome == DELIVER_RETRY_AFTER && retry_after > delay)
                delay = retry_after;
        }
        if (!strcmp(status, "pending"))
            next_at = now + delay;
        break;
    }

    /* Endpoint health (health.c): the attempt is counted; a 410, or failing
     * every attempt for disable_after, disables the endpoint, and a delivery
     * of a disabled endpoint waits as held. */
    if (cep) {
        int was = health_endpoint_disabled(d->health, x->ep->name);
        if (health_attempt(d->health, cep,
                           outcome == DELIVER_DELIVERED ? HEALTH_OK
                           : outcome == DELIVER_GONE    ? HEALTH_GONE
                                                        : HEALTH_FAILED,
                           a.error, now)) {
            if (!was)
                x->ep->warned = 0; /* disabled just now */
            if (!strcmp(status, "pending")) {
                status = "held";
                next_at = now;
            }
        }
    }
    /* The dead letter is announced; not for waybill's own events, so an
     * alert endpoint that fails cannot feed itself. */
    if (!strcmp(status, "failed") &&
        !(x->row.event_type && !strncmp(x->row.event_type, "waybill.", 8)))
        deliver_emit(d, "waybill.delivery.failed",
                     json_pack("{sssssssssisiss?}", "delivery_id", x->row.id, "event_id",
                               x->row.event_id, "endpoint", x->row.endpoint, "event_type",
                               x->row.event_type ? x->row.event_type : "", "attempts", a.n,
                               "status_code", a.status_code, "error", a.error));

    if (!x->easy)
        snprintf(what, sizeof what, "not sent (%s)", a.error);
    else if (res != CURLE_OK)
        snprintf(what, sizeof what, "%s", a.error);
    else
        snprintf(what, sizeof what, "%d", a.status_code);
    if (store_attempt_put(d->store, x->row.id, &a, status, next_at, pos, err, sizeof err) != 0) {
        log_msg(LOG_ERROR,
                "delivery %s to %s attempt %d: %s; outcome not stored (%s), it goes "
                "out again when its lease ends",
                x->row.id, x->row.endpoint, a.n, what, err);
        /* its endpoint is looked at right after this (deliver_check_multi);
         * the row stays leased and is due again when the lease ends */
    } else {
        deliver_commit_watch(d);
        metrics_attempt(x->row.endpoint, x->row.event_type, status, x->easy ? a.latency_ms : -1);
        if (next_at && strcmp(status, "held") != 0)
            log_msg(LOG_INFO, "delivery %s to %s attempt %d: %s in %" PRId64 " ms, retry in %s",
                    x->row.id, x->row.endpoint, a.n, what, a.latency_ms,
                    health_fmt_delay(delay, delay_text, sizeof delay_text));
        else
            log_msg(LOG_INFO, "delivery %s to %s attempt %d: %s in %" PRId64 " ms, %s%s", x->row.id,
                    x->row.endpoint, a.n, what, a.latency_ms, status, why);
    }
    deliver_xfer_free(d, x);
}

/* ---- endpoint queues ---- */

static void deliver_ep_timer_cb(evutil_socket_t fd, short kind, void *arg);

static struct deliver_ep *deliver_ep_find(const struct deliver *d, const char *name) {
    struct deliver_ep *ep;

    for (ep = d->eps; ep; ep = ep->next)
        if (!strcmp(ep->name, name))
            return ep;
    return NULL;
}

static struct deliver_ep *deliver_ep_get(struct deliver *d, const char *name) {
    struct deliver_ep *ep = deliver_ep_find(d, name);

    if (ep)
        return ep;
    if (!(ep = calloc(1, sizeof *ep)))
        return NULL;
    ep->d = d;
    if (!(ep->name = strdup(name)) || !(ep->timer = evtimer_new(d->base, deliver_ep_timer_cb, ep))) {
        free(ep->name);
        free(ep);
        return NULL;
    }
    ep->next = d->eps;
    d->eps = ep;
    return ep;
}

static void deliver_ep_free(struct deliver_ep *ep) {
    if (ep->timer)
        event_free(ep->timer);
    free(ep->name);
    free(ep);
}

/* Deliveries of an endpoint that is not in the config, or disabled, are
 * neither claimed nor sent: they wait in the store (pending, or held when
 * disabled). Logged once per endpoint and config. */
static void deliver_ep_unavailable(struct deliver *d, struct deliver_ep *ep,
                                   const struct config_endpoint *cep) {
    UNUSED(d);
    if (ep->warned)
        return;
    ep->warned = 1;
    log_msg(LOG_WARN, "endpoint %s is %s: its deliveries wait in the store", ep->name,
            !cep ? "not in the config" : !cep->enabled ? "enabled = false" : "disabled");
}

static struct deliver_xfer *deliver_ep_pop(struct deliver_ep *ep) {
    struct deliver_xfer *x = ep->head;

    if (x) {
        ep->head = x->qnext;
        if (!ep->head)
            ep->tail = NULL;
        x->qnext = NULL;
        ep->nwaiting--;
    }
    return x;
}

static void deliver_ep_push(struct deliver_ep *ep, struct deliver_xfer *x) {
    if (ep->tail)
        ep->tail->qnext = x;
    else
        ep->head = x;
    ep->tail = x;
    ep->nwaiting++;
}

/* Drops every waiting delivery of ep, writing nothing (at shutdown: their
 * leases lapse, and an SQLite store releases them at the next open). */
static void deliver_ep_drop(struct deliver *d, struct deliver_ep *ep) {
    struct deliver_xfer *x;

    while ((x = deliver_ep_pop(ep)))
        deliver_xfer_free(d, x);
}

/* Gives every waiting delivery of ep back to the store, claimable again at
 * the time it was due (lease released in the open group), and frees them. */
static void deliver_ep_release(struct deliver *d, struct deliver_ep *ep) {
    struct deliver_xfer *x;
    char err[256];

    while ((x = deliver_ep_pop(ep))) {
        if (store_delivery_lease(d->store, x->row.seq, x->row.next_at, 0, err, sizeof err) < 0)
            log_msg(LOG_WARN, "delivery %s: releasing its lease: %s (it is claimed again when "
                              "the lease ends)", x->row.id, err);
        deliver_xfer_free(d, x);
    }
}

/* Arms ep's timer to fire in delay_ms, unless it already fires sooner: a
 * timer may fire early (the endpoint is just looked at again), never late. */
static void deliver_ep_arm(struct deliver_ep *ep, int64_t delay_ms) {
    int64_t at;
    struct timeval tv;

    if (delay_ms < 0)
        delay_ms = 0;
    at = util_mono_ms() + delay_ms;
    if (ep->timer_at && evtimer_pending(ep->timer, NULL) && ep->timer_at <= at)
        return;
    tv.tv_sec = (time_t)(delay_ms / 1000);
    tv.tv_usec = (suseconds_t)(delay_ms % 1000) * 1000;
    evtimer_add(ep->timer, &tv);
    ep->timer_at = at;
}

/* Rate limit (SPEC 7 `rate`): a token bucket holding up to a tenth of a
 * second's worth (at least one). Returns 1 and takes a token, or 0 and arms
 * ep's timer for when the next one is there. */
static int deliver_ep_take_token(struct deliver_ep *ep, const struct config_endpoint *cep) {
    double cap, wait_ms;
    int64_t now;

    ep->token_wait = 0;
    if (cep->rate <= 0)
        return 1;
    cap = cep->rate / 10.0 < 1.0 ? 1.0 : cep->rate / 10.0;
    now = util_mono_ms();
    if (!ep->tokens_at) {
        ep->tokens = cap;
    } else {
        ep->tokens += (double)(now - ep->tokens_at) * cep->rate / 1000.0;
        if (ep->tokens > cap)
            ep->tokens = cap;
    }
    ep->tokens_at = now;
    if (ep->tokens >= 1.0) {
        ep->tokens -= 1.0;
        return 1;
    }
    wait_ms = (1.0 - ep->tokens) * 1000.0 / cep->rate + 1;
    ep->token_wait = now + (int64_t)wait_ms;
    deliver_ep_arm(ep, (int64_t)wait_ms);
    return 0;
}

/* 1 when ep has a token now (not taking it), else 0 with its timer armed
 * for when it has one. */
static int deliver_ep_token_ready(struct deliver_ep *ep, const struct config_endpoint *cep) {
    if (!deliver_ep_take_token(ep, cep))
        return 0;
    ep->tokens += 1.0; /* given back: only looked */
    return 1;
}

/* ep's share of what is claimed into memory, waiting + in flight: its
 * slots plus as many waiting (at most DELIVER_AHEAD_MAX), so each waiting
 * row starts within one slot's round trip (one timeout at worst, inside
 * its lease); a rate-limited endpoint at most DELIVER_RATE_AHEAD_S seconds'
 * worth; an ordered one its head and a short read-ahead. */
static int deliver_ep_window(const struct config_endpoint *cep) {
    int limit = deliver_endpoint_limit(cep), w;

    if (cep->ordered)
        return 1 + DELIVER_ORDERED_AHEAD;
    w = limit + (limit < DELIVER_AHEAD_MAX ? limit : DELIVER_AHEAD_MAX);
    if (cep->rate > 0) {
        double r = cep->rate * DELIVER_RATE_AHEAD_S;
        int rw = r < 1.0 ? 1 : r > (double)w ? w : (int)r;
        if (rw < w)
            w = rw;
    }
    return w;
}

/* Starts x, just popped from ep's FIFO; a delivery that cannot be started
 * is recorded as a failed attempt. */
static void deliver_ep_start(struct deliver *d, struct deliver_ep *ep, struct deliver_xfer *x,
                             const struct config_endpoint *cep) {
    int64_t now = util_now_ms();
    char err[128];

    ep->progress++;
    /* The lease must outlast the whole transfer: renewed when less than its
     * timeout and a margin are left (lease_ms covers the longest timeout +
     * 60 s). A row held by this process is never claimed twice anyway
     * (deliver_ep_holds); the lease is what another claimer would see. */
    if (x->lease_until - now < cep->timeout_ms + DELIVER_LEASE_MARGIN_MS &&
        store_delivery_lease(d->store, x->row.seq, now + d->lease_ms, 1, err, sizeof err) == 0)
        x->lease_until = now + d->lease_ms;
    if (deliver_xfer_start(d, x, cep, err, sizeof err) != 0)
        deliver_finish(d, x, CURLE_OK, err);
}

/* 1 when ep holds the delivery at seq (waiting or in flight). A claim can
 * return such a row when its lease was cleared or rolled back under it (an
 * endpoint disabled and enabled while it was in flight, a group that
 * failed): it must not be sent twice. At most a window's worth to scan. */
static int deliver_ep_holds(const struct deliver_ep *ep, int64_t seq) {
    for (const struct deliver_xfer *x = ep->xfers; x; x = x->ep_next)
        if (x->row.seq == seq)
            return 1;
    return 0;
}

/* Takes a claimed row into ep's FIFO unless ep holds it already. Returns 1
 * taken, 0 held already, -1 out of memory (it goes out when its lease
 * ends). */
static int deliver_ep_take(struct deliver *d, struct deliver_ep *ep,
                           const struct store_delivery *row) {
    struct deliver_xfer *x;

    if (deliver_ep_holds(ep, row->seq)) {
        log_msg(LOG_DEBUG, "delivery %s claimed again while held; lease renewed", row->id);
        return 0;
    }
    if (!(x = deliver_xfer_new(d, row, ep))) {
        log_msg(LOG_ERROR, "delivery %s: out of memory; it goes out when its lease ends", row->id);
        return -1;
    }
    deliver_ep_push(ep, x);
    return 1;
}

/* Claims up to want of ep's due deliveries into its FIFO (earliest due
 * first). Returns how many the store gave (rows that could not be held,
 * out of memory, go out when their leases end: the timer looks then), or
 * -1 on a store error (logged). */
static int deliver_ep_claim(struct deliver *d, struct deliver_ep *ep, size_t want) {
    struct store_delivery *rows = NULL;
    size_t n = 0, i;
    char err[256];

    ep->progress++;
    if (store_endpoint_claim_due(d->store, ep->name, util_now_ms(), d->lease_ms, want, &rows, &n,
                                 err, sizeof err) < 0) {
        log_msg(LOG_WARN, "endpoint %s: claiming deliveries: %s", ep->name, err);
        return -1;
    }
    for (i = 0; i < n; i++)
        if (deliver_ep_take(d, ep, &rows[i]) < 0)
            deliver_ep_arm(ep, d->lease_ms);
    store_deliveries_free(rows, n);
    return (int)n;
}

/* An unordered endpoint: claim into its window, start what its slots and
 * tokens allow, and arm its timer for whatever it waits on. */
static void deliver_ep_service_plain(struct deliver *d, struct deliver_ep *ep,
                                     const struct config_endpoint *cep) {
    int limit = deliver_endpoint_limit(cep), window = deliver_ep_window(cep);
    int room = window - ep->nwaiting - ep->inflight, got = 0, claimed = 0;
    int64_t next, now;

    /* Claim when the FIFO is empty, or a quarter of the window is free:
     * small claims for one free slot each would cost a query per row. A
     * rate-limited endpoint claims only with a token in hand, so no row
     * waits longer for a token than its window's worth of them. */
    if (room > 0 && (ep->nwaiting == 0 || room >= (window + 3) / 4) &&
        (cep->rate <= 0 || ep->nwaiting || deliver_ep_token_ready(ep, cep))) {
        claimed = 1;
        got = deliver_ep_claim(d, ep, (size_t)room);
    }
    while (ep->head && !health_endpoint_disabled(d->health, ep->name) && ep->inflight < limit && deliver_ep_take_token(ep, cep))
        deliver_ep_start(d, ep, deliver_ep_pop(ep), cep);
    if (got < 0) {
        deliver_ep_arm(ep, DELIVER_POLL_MS);
        return;
    }
    /* Rows waiting: for a slot (a completion looks again) or a token (the
     * timer is armed). In flight after a full claim, or no claim: more may
     * be due, and each completion looks again. */
    if (ep->head || (ep->inflight && (!claimed || got == room)))
        return;
    /* Otherwise every due row was taken (or those taken could not start):
     * sleep until the next one is due. */
    next = store_endpoint_next_due(d->store, ep->name);
    if (next == INT64_MAX)
        return; /* nothing pending: new rows come with a kick */
    now = util_now_ms();
    if (next < 0) /* a store error */
        deliver_ep_arm(ep, DELIVER_POLL_MS);
    else if (next <= now) /* more due behind a full claim, or committed meanwhile */
        deliver_ep_arm(ep, claimed && got == room ? 0 : DELIVER_POLL_MS);
    else
        deliver_ep_arm(ep, next - now);
}

/* An ordered endpoint: one delivery in flight, always its oldest pending
 * row (the head), which may wait for a retry while the rest wait behind it.
 * Memory holds the head and a short read-ahead; when the head is not due,
 * the read-ahead is given back, so a blocked endpoint holds nothing. */
static void deliver_ep_service_ordered(struct deliver *d, struct deliver_ep *ep,
                                       const struct config_endpoint *cep) {
    struct store_delivery *rows = NULL;
    int64_t head, head_at, now;
    size_t n = 0, i;
    int rounds;
    char err[256];

    for (rounds = 0; rounds < 8 && !ep->inflight; rounds++) {
        head = store_endpoint_head(d->store, ep->name, &head_at);
        if (head < 0) { /* a store error: look again soon */
            deliver_ep_arm(ep, DELIVER_POLL_MS);
            return;
        }
        if (ep->head && ep->head->row.seq != head)
            deliver_ep_release(d, ep); /* the head moved (a retry, a row re-queued) */
        if (head == INT64_MAX)
            return; /* nothing pending: new rows come with a kick */
        if (!ep->head) {
            now = util_now_ms();
            if (head_at > now) { /* waits for its retry (or a lease to end) */
                deliver_ep_arm(ep, head_at - now);
                return;
            }
            ep->progress++;
            if (store_endpoint_claim(d->store, ep->name, head - 1, now, d->lease_ms,
                                     1 + DELIVER_ORDERED_AHEAD, &rows, &n, err, sizeof err) < 0) {
                log_msg(LOG_WARN, "endpoint %s: claiming in order: %s", ep->name, err);
                deliver_ep_arm(ep, DELIVER_POLL_MS);
                return;
            }
            for (i = 0; i < n; i++)
                if (deliver_ep_take(d, ep, &rows[i]) < 0)
                    break; /* the rest are claimed again when their leases end */
            store_deliveries_free(rows, n);
            if (!ep->head || ep->head->row.seq != head) {
                /* the head is not committed yet (its commit kicks) */
                deliver_ep_release(d, ep);
                deliver_ep_arm(ep, DELIVER_POLL_MS);
                return;
            }
        }
        if (!deliver_ep_take_token(ep, cep))
            return;
        deliver_ep_start(d, ep, deliver_ep_pop(ep), cep);
    }
    if (!ep->inflight)
        deliver_ep_arm(ep, 0); /* heads that could not start, one after another */
}

/* Looks at one endpoint: everything the scheduler does for it happens
 * here, from a kick, its timer, or a completion. */
static void deliver_ep_service(struct deliver *d, struct deliver_ep *ep) {
    const struct config_endpoint *cep;

    if (d->stopping || !d->cfg)
        return;
    cep = deliver_endpoint(d, ep->name);
    if (!cep || !cep->enabled || health_endpoint_disabled(d->health, ep->name)) {
        if (ep->head || !cep)
            deliver_ep_unavailable(d, ep, cep);
        deliver_ep_release(d, ep);
        return;
    }
    if (cep->ordered)
        deliver_ep_service_ordered(d, ep, cep);
    else
        deliver_ep_service_plain(d, ep, cep);
}

static void deliver_ep_timer_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver_ep *ep = arg;

    UNUSED(fd);
    UNUSED(kind);
    ep->timer_at = 0;
    deliver_ep_service(ep->d, ep);
}

/* A kick looks only at endpoints that rows were written for (and whose rows
 * are committed: until then a claim could not see them), or at all of them
 * after deliver_kick_all: a kick costs nothing per idle endpoint, and an
 * endpoint is looked at only for its own reasons, which is what lets the
 * watchdog see a lost wake-up even under other endpoints' traffic. */
static void deliver_kick_cb(evutil_socket_t fd, short what, void *arg) {
    struct deliver *d = arg;
    int64_t committed, last;
    int all = d->kick_all;

    UNUSED(fd);
    UNUSED(what);
    d->kick_all = 0;
    store_delivery_seqs(d->store, &committed, &last);
    for (struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        int look = all;
        if (ep->dirty && ep->dirty_seq <= committed) {
            ep->dirty = 0;
            ep->dirty_seq = 0;
            look = 1;
        }
        if (look)
            deliver_ep_service(d, ep);
    }
}

static void deliver_kick_now(struct deliver *d, int all) {
    if (!d || d->stopping)
        return;
    if (all)
        d->kick_all = 1;
    event_active(d->kick_ev, EV_TIMEOUT, 1); /* coalesces while active */
}

/* Marks ep: rows were written for it in the open group. */
static void deliver_ep_mark(struct deliver *d, struct deliver_ep *ep) {
    int64_t committed, last;

    store_delivery_seqs(d->store, &committed, &last);
    ep->dirty = 1;
    if (last > ep->dirty_seq)
        ep->dirty_seq = last;
}

/* An endpoint with pending rows and no queue (a subscription's, after a
 * restart or an admin retry): give it one and look at it. */
static void deliver_discover_one(void *arg, const char *name) {
    struct deliver *d = arg;
    struct deliver_ep *ep;

    if (!name || deliver_ep_find(d, name) || !deliver_endpoint(d, name))
        return; /* known, or not an endpoint any more: its rows wait */
    if ((ep = deliver_ep_get(d, name)))
        deliver_ep_service(d, ep);
}

static void deliver_discover(struct deliver *d) {
    if (store_endpoints_pending(d->store, deliver_discover_one, d) < 0)
        log_msg(LOG_WARN, "listing endpoints with pending deliveries failed");
}

void deliver_watch_endpoint(struct deliver *d, const char *name) {
    struct deliver_ep *ep;

    if (!d || !name || !deliver_endpoint(d, name))
        return;
    if (!(ep = deliver_ep_get(d, name))) {
        log_msg(LOG_ERROR, "endpoint %s: out of memory for its queue; looked at within a second",
                name);
        return;
    }
    deliver_ep_mark(d, ep);
}

/* ---- the watchdog ---- */

/* 1 when ep could start a delivery now: enabled, a free slot, a token. */
static int deliver_ep_free_slot(const struct deliver *d, const struct deliver_ep *ep,
                                const struct config_endpoint *cep, int64_t mono) {
    if (!cep || !cep->enabled || health_endpoint_disabled(d->health, ep->name))
        return 0;
    if (ep->token_wait && ep->token_wait > mono)
        return 0;
    return ep->inflight < deliver_endpoint_limit(cep);
}

/* 1 when ep has a delivery it could start or claim now: one waiting in
 * memory, or, with room in its window, a committed unleased row due before
 * `before` (ordered: its head). */
static int deliver_ep_due(struct deliver *d, const struct deliver_ep *ep,
                          const struct config_endpoint *cep, int64_t before) {
    int64_t at, head, committed, last;

    if (ep->head)
        return 1;
    if (ep->nwaiting + ep->inflight >= deliver_ep_window(cep))
        return 0;
    if (!cep->ordered) {
        at = store_endpoint_next_due(d->store, ep->name);
        return at >= 0 && at <= before;
    }
    head = store_endpoint_head(d->store, ep->name, &at);
    store_delivery_seqs(d->store, &committed, &last);
    return head >= 0 && head <= committed && at <= before; /* an uncommitted head: not yet */
}

/* Checks, every DELIVER_CHECK_MS, the scheduler's invariant (deliver.h):
 * an endpoint found due with a free slot at two ticks in a row must have
 * had a claim or a start in between, unless a look at it is already on its
 * way (its timer overdue, a kick active, or this tick itself came late
 * because the loop was held up). A breach is a lost wake-up: logged,
 * counted, repaired by looking at the endpoint; under WAYBILL_CHECKS (debug
 * and sanitizer builds) it aborts. Due with a free slot for
 * DELIVER_STUCK_MS (claims that keep finding nothing: the store) marks the
 * endpoint stuck, which /healthz reports. */
static void deliver_check_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver *d = arg;
    int64_t mono = util_mono_ms(), now = util_now_ms();

    int late;

    UNUSED(fd);
    UNUSED(kind);
    if (d->stopping || !d->cfg)
        return;
    /* After the loop was held up (a long sync wait), timers that are due
     * may not have run yet; after the wall clock stepped, rows (due by the
     * wall clock) may be due before the timers (monotonic) that wait for
     * them: judge no one on such a tick. */
    late = d->check_at &&
           (mono - d->check_at > DELIVER_CHECK_MS + DELIVER_CHECK_MS / 2 ||
            llabs((now - d->check_wall) - (mono - d->check_at)) > DELIVER_CHECK_MS / 2);
    d->check_at = mono;
    d->check_wall = now;
    deliver_discover(d);
    for (struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        const struct config_endpoint *cep = deliver_endpoint(d, ep->name);
        /* a second of slack: a row due this instant has a timer on its way */
        if (!deliver_ep_free_slot(d, ep, cep, mono) || !deliver_ep_due(d, ep, cep, now - DELIVER_CHECK_MS)) {
            ep->due_free_since = 0;
            ep->stuck = 0;
            continue;
        }
        if (!ep->due_free_since) {
            ep->due_free_since = mono;
            ep->progress_seen = ep->progress;
            continue;
        }
        if (ep->progress == ep->progress_seen && !late &&
            !(ep->timer_at && ep->timer_at <= mono && evtimer_pending(ep->timer, NULL)) &&
            !event_pending(d->kick_ev, EV_TIMEOUT, NULL)) {
            ep->lost_wakeups++;
            log_msg(LOG_ERROR, "endpoint %s: a delivery is due and a slot is free, but nothing "
                               "was claimed or started for %" PRId64 " ms (a scheduler bug); "
                               "looking again", ep->name, mono - ep->due_free_since);
#ifdef WAYBILL_CHECKS
            abort();
#endif
            deliver_ep_service(d, ep);
        }
        ep->progress_seen = ep->progress;
        if (mono - ep->due_free_since >= DELIVER_STUCK_MS && !ep->stuck) {
            ep->stuck = 1;
            log_msg(LOG_ERROR, "endpoint %s: deliveries due for %" PRId64 " s with a free slot are "
                               "not going out", ep->name, (mono - ep->due_free_since) / 1000);
        }
    }
}

/* ---- curl multi glue (hiperfifo) ---- */

/* Every finished transfer: record it, free it, and look at its endpoint
 * again (a slot is free; an ordered endpoint's head moved or waits). */
static void deliver_check_multi(struct deliver *d) {
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(d->multi, &left))) {
        char *priv = NULL;
        struct deliver_xfer *x;
        struct deliver_ep *ep;
        CURLcode res;
        if (m->msg != CURLMSG_DONE)
            continue;
        res = m->data.result;
        if (deliver_probe_finish(d, m->easy_handle, res))
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        if (!priv)
            continue;
        x = (struct deliver_xfer *)(void *)priv;
        ep = x->ep; /* outlives x: endpoints are pruned only by deliver_set_config */
        deliver_finish(d, x, res, NULL);
        deliver_ep_service(d, ep);
    }
    if (d->stopping && d->inflight == 0 && d->done)
        event_active(d->done_ev, EV_TIMEOUT, 1);
}

static void deliver_sock_event_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver *d = arg; /* not the deliver_sock: curl may free it in the call */
    int mask = (kind & EV_READ ? CURL_CSELECT_IN : 0) | (kind & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    CURLMcode rc;

    rc = curl_multi_socket_action(d->multi, fd, mask, &running);
    if (rc != CURLM_OK)
        log_msg(LOG_WARN, "curl_multi_socket_action: %s", curl_multi_strerror(rc));
    deliver_check_multi(d);
}

static void deliver_timer_event_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver *d = arg;
    int running;
    CURLMcode rc;

    UNUSED(fd);
    UNUSED(kind);
    rc = curl_multi_socket_action(d->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (rc != CURLM_OK)
        log_msg(LOG_WARN, "curl_multi_socket_action: %s", curl_multi_strerror(rc));
    deliver_check_multi(d);
}

static void deliver_sock_free(struct deliver *d, struct deliver_sock *ds) {
    if (ds->assigned)
        event_del(&ds->ev);
    if (ds->prev)
        ds->prev->next = ds->next;
    else
        d->socks = ds->next;
    if (ds->next)
        ds->next->prev = ds->prev;
    free(ds);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl asks, or stop. */
static int deliver_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    struct deliver *d = userp;
    struct deliver_sock *ds = socketp;
    short kind;

    UNUSED(easy);
    if (what == CURL_POLL_REMOVE) {
        if (ds)
            deliver_sock_free(d, ds);
        return 0;
    }
    if (!ds) {
        if (!(ds = calloc(1, sizeof *ds))) {
            log_msg(LOG_ERROR, "out of memory watching a delivery socket");
            return -1;
        }
        ds->fd = s;
        ds->next = d->socks;
        if (d->socks)
            d->socks->prev = ds;
        d->socks = ds;
        curl_multi_assign(d->multi, s, ds);
    } else if (ds->assigned) {
        event_del(&ds->ev);
    }
    kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0) |
                   EV_PERSIST);
    event_assign(&ds->ev, d->base, s, kind, deliver_sock_event_cb, d);
    event_add(&ds->ev, NULL);
    ds->assigned = 1;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: (re)arm or delete our one timer. Never calls
 * libcurl: the timer's event does, from the loop. */
static int deliver_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    struct deliver *d = userp;
    struct timeval tv;

    UNUSED(multi);
    if (timeout_ms < 0) {
        evtimer_del(d->curl_timer);
    } else {
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        evtimer_add(d->curl_timer, &tv);
    }
    return 0;
}

/* ---- shutdown ---- */

/* Aborts and drops every held delivery, writing nothing (leases lapse). */
static void deliver_abort_all(struct deliver *d) {
    struct deliver_ep *ep;

    for (ep = d->eps; ep; ep = ep->next)
        deliver_ep_drop(d, ep);
    while (d->xfers)
        deliver_xfer_free(d, d->xfers);
}

static void deliver_done_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver *d = arg;
    void (*done)(void *) = d->done;

    UNUSED(fd);
    UNUSED(kind);
    evtimer_del(d->grace_ev);
    d->done = NULL;
    if (done)
        done(d->done_arg); /* last: it may free d */
}

static void deliver_grace_cb(evutil_socket_t fd, short kind, void *arg) {
    struct deliver *d = arg;

    UNUSED(fd);
    UNUSED(kind);
    if (d->inflight)
        log_msg(LOG_WARN,
                "shutdown grace over: aborting %d deliveries in flight (sent again "
                "after restart)",
                d->inflight);
    deliver_abort_all(d);
    event_active(d->done_ev, EV_TIMEOUT, 1);
}

/* ---- endpoint state changes (health.c's hook) ---- */

/* name was disabled (its waiting deliveries, now held in the store, are
 * dropped) or enabled (its released rows are looked at once committed, and
 * a kick looks now: they are claimable in the open group already); or,
 * name NULL, the stored states were read again: look at every endpoint. */
static void deliver_health_changed(void *arg, const char *name, int disabled) {
    struct deliver *d = arg;
    struct deliver_ep *ep;

    if (!name) {
        deliver_kick_now(d, 1);
        return;
    }
    if (!(ep = deliver_ep_get(d, name))) {
        log_msg(LOG_ERROR, "endpoint %s: out of memory for its queue; looked at within a second",
                name);
        return;
    }
    ep->warned = 0;
    if (disabled) {
        deliver_ep_drop(d, ep);
        return;
    }
    deliver_ep_mark(d, ep);
    deliver_kick_now(d, 0);
}

void deliver_set_notify(struct deliver *d, deliver_notify_fn fn, void *arg) {
    d->notify = fn;
    d->notify_arg = arg;
}

/* ---- public ---- */

struct deliver *deliver_new(struct event_base *base, struct store *s, struct health *h, char *err,
                            size_t errlen) {
    struct deliver *d = calloc(1, sizeof *d);

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->base = base;
    d->store = s;
    d->health = h;
    d->lease_ms = DELIVER_LEASE_MIN_MS;
    d->rng = ((uint64_t)util_now_ms() << 20) ^ ((uint64_t)getpid() << 1) ^ (uint64_t)(uintptr_t)d ^
             (uint64_t)util_mono_ms();
    if (!d->rng)
        d->rng = 0x9E3779B97F4A7C15ULL;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "curl_global_init failed");
        goto fail;
    }
    d->curl_inited = 1;
    d->curl_timer = evtimer_new(base, deliver_timer_event_cb, d);
    d->kick_ev = event_new(base, -1, 0, deliver_kick_cb, d);
    d->check_ev = event_new(base, -1, EV_PERSIST, deliver_check_cb, d);
    d->grace_ev = evtimer_new(base, deliver_grace_cb, d);
    d->done_ev = event_new(base, -1, 0, deliver_done_cb, d);
    if (!d->curl_timer || !d->kick_ev || !d->check_ev || !d->grace_ev || !d->done_ev) {
        snprintf(err, errlen, "could not create the delivery events");
        goto fail;
    }
    if (!(d->multi = curl_multi_init())) {
        snprintf(err, errlen, "curl_multi_init failed");
        goto fail;
    }
    if (curl_multi_setopt(d->multi, CURLMOPT_SOCKETFUNCTION, deliver_socket_cb) != CURLM_OK ||
        curl_multi_setopt(d->multi, CURLMOPT_SOCKETDATA, (void *)d) != CURLM_OK ||
        curl_multi_setopt(d->multi, CURLMOPT_TIMERFUNCTION, deliver_curl_timer_cb) != CURLM_OK ||
        curl_multi_setopt(d->multi, CURLMOPT_TIMERDATA, (void *)d) != CURLM_OK ||
        curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, DELIVER_MAX_CONNECTS) != CURLM_OK) {
        snprintf(err, errlen, "curl_multi_setopt failed");
        goto fail;
    }
    health_set_change_hook(h, deliver_health_changed, d);
    return d;
fail:
    deliver_free(d);
    return NULL;
}

void deliver_set_config(struct deliver *d, const struct config *cfg) {
    struct deliver_ep **pp, *ep;
    int64_t longest = 0;
    size_t i;

    d->cfg = cfg;
    if (cfg && !event_pending(d->check_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = {DELIVER_CHECK_MS / 1000, (DELIVER_CHECK_MS % 1000) * 1000};
        event_add(d->check_ev, &tv);
    }
    for (i = 0; cfg && i < cfg->nendpoints; i++)
        if (cfg->endpoints[i].timeout_ms > longest)
            longest = cfg->endpoints[i].timeout_ms;
    d->lease_ms = longest + DELIVER_LEASE_EXTRA_MS;
    if (d->lease_ms < DELIVER_LEASE_MIN_MS)
        d->lease_ms = DELIVER_LEASE_MIN_MS;
    /* A queue per configured endpoint; one that left the config keeps its
     * transfers in flight, gives its waiting rows back, and goes when idle. */
    for (i = 0; cfg && i < cfg->nendpoints; i++)
        if (!deliver_ep_get(d, cfg->endpoints[i].name))
            log_msg(LOG_ERROR, "endpoint %s: out of memory for its queue; its deliveries wait",
                    cfg->endpoints[i].name);
    for (pp = &d->eps; (ep = *pp);) {
        ep->warned = 0;
        ep->due_free_since = 0;
        ep->stuck = 0;
        if (!deliver_endpoint(d, ep->name)) {
            deliver_ep_release(d, ep);
            if (!ep->inflight && !health_endpoint_disabled(d->health, ep->name)) {
                *pp = ep->next;
                deliver_ep_free(ep);
                continue;
            }
        }
        pp = &ep->next;
    }
    if (cfg && !d->stopping)
        deliver_discover(d); /* subscriptions' endpoints with rows from an earlier run */
    deliver_kick_all(d);     /* new endpoints, changed limits */
}

void deliver_kick(struct deliver *d) {
    deliver_kick_now(d, 0);
}

void deliver_kick_all(struct deliver *d) {
    if (!d || d->stopping)
        return;
    d->all_at_commit = 1;
    deliver_commit_watch(d);
    deliver_kick_now(d, 1);
}

int deliver_inflight(const struct deliver *d) {
    return d->inflight;
}

int deliver_endpoint_stats(const struct deliver *d, const char *name,
                           struct deliver_endpoint_stats *st) {
    const struct deliver_ep *ep = deliver_ep_find(d, name);

    memset(st, 0, sizeof *st);
    if (!ep)
        return 0;
    st->in_memory = ep->nwaiting + ep->inflight;
    st->in_flight = ep->inflight;
    st->stuck = ep->stuck;
    st->lost_wakeups = ep->lost_wakeups;
    return 1;
}

size_t deliver_stuck(const struct deliver *d, char *names, size_t len) {
    size_t n = 0, used = 0;

    if (len)
        names[0] = '\0';
    for (const struct deliver_ep *ep = d->eps; ep; ep = ep->next) {
        if (!ep->stuck)
            continue;
        if (len > used) {
            int w = snprintf(names + used, len - used, "%s%s", n ? ", " : "", ep->name);
            used += w > 0 ? (size_t)w : 0;
            if (used >= len)
                used = len - 1;
        }
        n++;
    }
    return n;
}

void deliver_shutdown(struct deliver *d, int64_t grace_ms, void (*done)(void *arg), void *arg) {
    struct deliver_ep *ep;
    struct timeval tv;

    d->stopping = 1;
    d->done = done;
    d->done_arg = arg;
    event_del(d->kick_ev);
    event_del(d->check_ev);
    for (ep = d->eps; ep; ep = ep->next) { /* not started: their leases lapse */
        evtimer_del(ep->timer);
        deliver_ep_drop(d, ep);
    }
    if (d->inflight == 0) {
        event_active(d->done_ev, EV_TIMEOUT, 1);
        return;
    }
    if (grace_ms < 0)
        grace_ms = 0;
    tv.tv_sec = (time_t)(grace_ms / 1000);
    tv.tv_usec = (suseconds_t)(grace_ms % 1000) * 1000;
    evtimer_add(d->grace_ev, &tv);
}

void deliver_free(struct deliver *d) {
    struct event *evs[5];
    size_t i;

    if (!d)
        return;
    deliver_abort_all(d);
    deliver_probes_free(d);
    if (d->multi)
        curl_multi_cleanup(d->multi); /* may still call deliver_socket_cb: d is whole */
    while (d->socks)
        deliver_sock_free(d, d->socks);
    while (d->eps) {
        struct deliver_ep *ep = d->eps;
        d->eps = ep->next;
        deliver_ep_free(ep);
    }
    if (d->commit)
        d->commit->d = NULL; /* the store frees it when the group ends */
    if (d->health)
        health_set_change_hook(d->health, NULL, NULL);
    evs[0] = d->curl_timer;
    evs[1] = d->kick_ev;
    evs[2] = d->check_ev;
    evs[3] = d->grace_ev;
    evs[4] = d->done_ev;
    for (i = 0; i < 5; i++)
        if (evs[i])
            event_free(evs[i]);
    if (d->curl_inited)
        curl_global_cleanup();
    free(d);
}

/* ---- probes: one-off POSTs outside the queue (deliver_probe) ---- */

struct deliver_probe {
    struct deliver *d;
    struct deliver_probe *next;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    deliver_probe_fn done;
    void *arg;
    char errbuf[CURL_ERROR_SIZE];
    char refused[96];
};

static void deliver_probe_free(struct deliver_probe *p) {
    struct deliver_probe **pp;
    for (pp = &p->d->probes; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    if (p->easy) {
        curl_multi_remove_handle(p->d->multi, p->easy);
        curl_easy_cleanup(p->easy);
    }
    curl_slist_free_all(p->headers);
    free(p->body);
    free(p);
}

/* The same SSRF guard as deliveries (deliver_opensocket_cb), for a probe. */
static curl_socket_t deliver_probe_socket_cb(void *clientp, curlsocktype purpose,
                                             struct curl_sockaddr *a) {
    struct deliver_probe *p = clientp;
    const struct config *cfg = p->d->cfg;
    struct sockaddr_storage ss;
    const unsigned char *ip = NULL, *v4;
    size_t len = a->addrlen < sizeof ss ? a->addrlen : sizeof ss;

    memset(&ss, 0, sizeof ss);
    memcpy(&ss, &a->addr, len);
    if (a->family == AF_INET && len >= sizeof(struct sockaddr_in))
        ip = (const unsigned char *)&((struct sockaddr_in *)&ss)->sin_addr;
    else if (a->family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
        ip = (const unsigned char *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    if (purpose == CURLSOCKTYPE_IPCXN &&
        (!ip || (deliver_address_private(a->family, ip) &&
                 !(cfg && (config_private_allowed(cfg, a->family, ip) ||
                           (a->family == AF_INET6 && (v4 = deliver_embedded_v4(ip)) &&
                            config_private_allowed(cfg, AF_INET, v4))))))) {
        snprintf(p->refused, sizeof p->refused, "address is private (allow_private to permit)");
        return CURL_SOCKET_BAD;
    }
    p->refused[0] = '\0';
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

static size_t deliver_probe_discard(char *ptr, size_t size, size_t nmemb, void *userdata) {
    UNUSED(ptr);
    UNUSED(userdata);
    return size * nmemb;
}

int deliver_probe(struct deliver *d, const char *url, const char *body, size_t len,
                  const char *const *headers, int64_t timeout_ms, deliver_probe_fn done,
                  void *arg) {
    struct deliver_probe *p = calloc(1, sizeof *p);
    CURLcode rc = CURLE_OK;

    if (!p)
        return -1;
    p->d = d;
    p->done = done;
    p->arg = arg;
    p->body = malloc(len + 1);
    p->easy = curl_easy_init();
    if (!p->body || !p->easy)
        goto fail;
    memcpy(p->body, body, len);
    p->body[len] = '\0';
    for (size_t i = 0; headers && headers[i]; i++) {
        struct curl_slist *h = curl_slist_append(p->headers, headers[i]);
        if (!h)
            goto fail;
        p->headers = h;
    }
#define PROBE_SETOPT(opt, val)                                                                     \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(p->easy, opt, val)
    PROBE_SETOPT(CURLOPT_URL, url);
    PROBE_SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    PROBE_SETOPT(CURLOPT_PROXY, "");
    PROBE_SETOPT(CURLOPT_POSTFIELDS, p->body);
    PROBE_SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    PROBE_SETOPT(CURLOPT_HTTPHEADER, p->headers);
    PROBE_SETOPT(CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    PROBE_SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    PROBE_SETOPT(CURLOPT_NOSIGNAL, 1L);
    PROBE_SETOPT(CURLOPT_WRITEFUNCTION, deliver_probe_discard);
    PROBE_SETOPT(CURLOPT_ERRORBUFFER, p->errbuf);
    PROBE_SETOPT(CURLOPT_OPENSOCKETFUNCTION, deliver_probe_socket_cb);
    PROBE_SETOPT(CURLOPT_OPENSOCKETDATA, (void *)p);
#undef PROBE_SETOPT
    if (rc != CURLE_OK || curl_multi_add_handle(d->multi, p->easy) != CURLM_OK)
        goto fail;
    p->next = d->probes;
    d->probes = p;
    return 0;
fail:
    if (p->easy)
        curl_easy_cleanup(p->easy);
    curl_slist_free_all(p->headers);
    free(p->body);
    free(p);
    return -1;
}

/* 1 when easy was a probe (its callback ran and it is freed), else 0. */
static int deliver_probe_finish(struct deliver *d, CURL *easy, CURLcode res) {
    struct deliver_probe *p;
    long code = 0;
    char reason[CURL_ERROR_SIZE + 96];

    for (p = d->probes; p && p->easy != easy; p = p->next)
        ;
    if (!p)
        return 0;
    reason[0] = '\0';
    if (res == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    else if (p->refused[0])
        snprintf(reason, sizeof reason, "%s", p->refused);
    else
        snprintf(reason, sizeof reason, "%s", p->errbuf[0] ? p->errbuf : curl_easy_strerror(res));
    p->done(p->arg, (int)code, reason);
    deliver_probe_free(p);
    return 1;
}

/* At deliver_free: each probe's callback learns (status -1) that it ends
 * unanswered, so its owner can free what it holds. */
static void deliver_probes_free(struct deliver *d) {
    while (d->probes) {
        d->probes->done(d->probes->arg, -1, "shutting down");
        deliver_probe_free(d->probes);
    }
}
