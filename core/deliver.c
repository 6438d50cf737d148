/* deliver.c -- outbound delivery: each claimed delivery's request (our
 * headers, the endpoint's and the rule's, the signature), sent through the
 * shared HTTP client (httpc.c); its outcome (SPEC section 7): retries per
 * schedule, every attempt stored, the endpoint's health told; and the
 * engine's life (config, shutdown). The scheduler that decides what is
 * claimed and started is deliver_sched.c; the model is in deliver.h.
 * Invariants (checked under WAYBILL_CHECKS): a delivery is started once
 * per claim, and its outcome is recorded once per start.
 * SPDX-License-Identifier: MIT */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "deliver_int.h"
#include "log.h"
#include "metrics.h"
#include "stream.h"
#include "util.h"
#include "verify.h"

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
        int64_t t;
        if (!*p || !strpbrk(p, "0123456789"))
            return -1; /* every HTTP date has digits; the date parser is lenient */
        t = httpc_date_parse(p);
        if (t < 0)
            return -1;
        if (t > (now_ms + DELIVER_RETRY_AFTER_MAX_MS) / 1000 + 1)
            return DELIVER_RETRY_AFTER_MAX_MS;
        ms = t * 1000 - now_ms;
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

/* ---- small helpers ---- */

static uint32_t deliver_rand(struct deliver *d) {
    uint64_t x = d->rng; /* xorshift64*: jitter needs spread, not secrecy */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    d->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* ---- the request ---- */

static void deliver_sign_add(void *ctx, const char *name, const char *value) {
    httpc_headers_set(ctx, name, value);
}

/* The delivery's own headers (rules' send(..., {headers=...})): a JSON
 * object of strings (integers are accepted too). Others are skipped. */
static void deliver_hdrs_from_json(struct httpc_headers *h, const struct store_delivery *row) {
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
        if (!v || util_header_reserved(key) || httpc_headers_set(h, key, v) == 1)
            log_msg(LOG_DEBUG, "delivery %s: header %s skipped", row->id, key);
    }
    json_decref(obj);
}

/* Builds the request headers (SPEC section 5) into h. Returns 0, or -1
 * with a reason in err. */
static int deliver_headers_build(const struct deliver_xfer *x, const struct config_endpoint *cep,
                                 struct httpc_headers *h, char *err, size_t errlen) {
    const struct store_delivery *row = &x->row;
    char attempt[16];
    size_t i;

    snprintf(attempt, sizeof attempt, "%d", row->attempts + 1);
    httpc_headers_set(h, "Content-Type",
                      row->content_type && *row->content_type ? row->content_type
                                                              : "application/json");
    httpc_headers_set(h, "User-Agent", "waybill/" WAYBILL_VERSION);
    httpc_headers_set(h, "X-Waybill-Event-Type", row->event_type ? row->event_type : "");
    httpc_headers_set(h, "X-Waybill-Delivery", row->id);
    httpc_headers_set(h, "X-Waybill-Attempt", attempt);
    for (i = 0; i < cep->nheaders; i++) {
        const struct config_header *ch = &cep->headers[i];
        if (util_header_reserved(ch->name) || httpc_headers_set(h, ch->name, ch->value) == 1)
            log_msg(LOG_DEBUG, "endpoint %s: header %s skipped", cep->name, ch->name);
    }
    deliver_hdrs_from_json(h, row);
    /* last, so a signature header can't be overridden */
    if (verify_sign(cep->sign, cep->secrets, cep->nsecrets, row->id, util_now_ms() / 1000,
                    row->payload, row->payload_len, deliver_sign_add, h) != 0) {
        snprintf(err, errlen, "could not sign the request");
        return -1;
    }
    if (h->failed) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* ---- transfers ---- */

struct deliver_xfer *deliver_xfer_new(struct deliver *d, const struct store_delivery *row,
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

void deliver_xfer_free(struct deliver *d, struct deliver_xfer *x) {
    deliver_read_gone(x->ep->read, x->row.seq);
    if (x->hx)
        httpc_cancel(d->httpc, x->hx);
    if (x->started) {
        d->inflight--;
        x->ep->inflight--;
    }
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

static void deliver_finish(struct deliver *d, struct deliver_xfer *x, const struct httpc_result *r,
                           const char *start_err);

/* A transfer ended: record it, free it, and look at its endpoint again (a
 * slot is free; an ordered endpoint's head moved or waits). */
static void deliver_xfer_done(void *arg, const struct httpc_result *r) {
    struct deliver_xfer *x = arg;
    struct deliver *d = x->d;
    struct deliver_ep *ep = x->ep; /* outlives x: endpoints are pruned only by deliver_set_config */

    DELIVER_CHECK(x->started && x->hx == r->xfer);
    x->hx = NULL; /* it ends with this call */
    if (r->status < 0) {
        /* httpc_free ran first (the engine should have been freed before
         * it): nothing written, the lease lapses, nothing new starts */
        deliver_xfer_free(d, x);
        return;
    }
    deliver_finish(d, x, r, NULL);
    deliver_ep_service(d, ep);
    if (d->stopping && d->inflight == 0 && d->done)
        event_active(d->done_ev, EV_TIMEOUT, 1);
}

/* Hands x to the client. Returns 0, or -1 with a reason in err (x
 * unchanged, not started). */
static int deliver_xfer_start(struct deliver *d, struct deliver_xfer *x,
                              const struct config_endpoint *cep, char *err, size_t errlen) {
    struct httpc_headers h = {0};
    struct httpc_request req = {
        .url = cep->url,
        .body = x->row.payload,
        .body_len = x->row.payload_len,
        .headers = &h,
        .timeout_ms = cep->timeout_ms,
        .response_max = DELIVER_RESPONSE_MAX,
        .guarded = 1,
    };

    DELIVER_CHECK(!x->started && !x->hx); /* started once per claim */
    if (deliver_headers_build(x, cep, &h, err, errlen) != 0) {
        httpc_headers_clear(&h);
        return -1;
    }
    x->at = util_now_ms();
    x->t0 = util_mono_ms();
    /* the client borrows row.payload until the transfer ends */
    x->hx = httpc_start(d->httpc, &req, deliver_xfer_done, x, err, errlen);
    httpc_headers_clear(&h);
    if (!x->hx)
        return -1;
    x->started = 1;
    d->inflight++;
    x->ep->inflight++;
    return 0;
}

void deliver_xfer_send(struct deliver *d, struct deliver_xfer *x,
                       const struct config_endpoint *cep) {
    char err[128];

    if (deliver_xfer_start(d, x, cep, err, sizeof err) != 0)
        deliver_finish(d, x, NULL, err);
}

/* ---- outcomes ---- */

static void deliver_commit_cb(void *arg, int ok) {
    struct deliver_commit *c = arg;
    struct deliver *d = c->d;

    free(c);
    if (!d)
        return; /* deliver_free ran */
    d->commit = NULL;
    if (deliver_eps_ending_done(d))
        deliver_commit_watch(d);
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

void deliver_commit_watch(struct deliver *d) {
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
        deliver_eps_ending_watch(d, 0);
        deliver_kick_now(d, 1);
        return;
    }
    d->commit = c;
    deliver_eps_ending_watch(d, 1);
}

static void deliver_durable_cb(void *arg, int ok) {
    struct deliver_commit *c = arg;
    struct deliver *d = c->d;

    free(c);
    if (!d)
        return; /* deliver_free ran */
    d->durable = NULL;
    if (ok) /* the marked endpoints whose rows are now claimable */
        deliver_kick_now(d, 0);
    /* Rows marked while this group was being synced are in the open group
     * (the next to commit): watch that one too. */
    if (d->durable_again) {
        d->durable_again = 0;
        deliver_durable_watch(d);
    }
}

void deliver_durable_watch(struct deliver *d) {
    struct deliver_commit *c;

    if (d->durable) { /* registered in an earlier group, maybe in flight */
        d->durable_again = 1;
        return;
    }
    /* Without a callback the watchdog finds the rows within a tick. */
    if (!(c = malloc(sizeof *c)))
        return;
    c->d = d;
    if (store_on_commit(d->store, deliver_durable_cb, c) != 0) {
        free(c);
        return;
    }
    d->durable = c;
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

/* What one attempt came to, and what is written for it. */
struct deliver_verdict {
    struct store_attempt a;
    enum deliver_outcome outcome;
    int64_t retry_after; /* ms from Retry-After, -1 when none */
    const char *status;  /* "delivered", "failed", "pending" or "held" */
    const char *why;     /* for the log after a final status, "" when none */
    int64_t next_at;     /* Unix ms it is due again, 0 when final */
    int64_t delay;       /* ms until then */
    int pos;             /* its schedule position from now on */
    char msg[64];        /* a.error for an answer that is not a success */
};

/* Reads x's attempt into v: r is the transfer's end, or NULL when it could
 * not start (start_err says why). */
static void deliver_attempt_read(const struct deliver *d, const struct deliver_xfer *x,
                                 const struct httpc_result *r, const char *start_err, int64_t now,
                                 struct deliver_verdict *v) {
    const struct config_endpoint *cep = deliver_endpoint(d, x->row.endpoint);
    struct store_attempt *a = &v->a;

    v->retry_after = -1;
    v->pos = x->row.schedule_pos;
    a->n = x->row.attempts + 1;
    a->at = r ? x->at : now;
    a->latency_ms = r ? util_mono_ms() - x->t0 : 0;
    if (!r) {
        a->error = start_err;
    } else if (r->error) {
        a->error = r->error;
    } else {
        a->status_code = r->status;
        a->response = r->body;
        a->response_len = r->body_len;
        v->retry_after = deliver_retry_after_parse(httpc_result_header(r, "Retry-After"), now);
    }
    v->outcome = a->error ? DELIVER_RETRY
                          : deliver_outcome_classify(a->status_code,
                                                     cep ? cep->success : CONFIG_SUCCESS_2XX);
    if (!a->error && v->outcome != DELIVER_DELIVERED) {
        snprintf(v->msg, sizeof v->msg, "HTTP %d%s", a->status_code,
                 a->status_code >= 300 && a->status_code < 400 ? " (redirects are not followed)"
                                                               : "");
        a->error = v->msg;
    }
}

/* The status v's outcome gives under cep (NULL: the endpoint left the
 * config while this was in flight), and when it is due again. */
static void deliver_attempt_next(struct deliver *d, const struct config_endpoint *cep, int64_t now,
                                 struct deliver_verdict *v) {
    int npos;

    v->why = "";
    switch (v->outcome) {
    case DELIVER_DELIVERED:
        v->status = "delivered";
        break;
    case DELIVER_FAILED:
        v->status = "failed";
        v->why = "no retry after 406";
        break;
    case DELIVER_GONE:
        v->status = "failed"; /* and the endpoint is disabled (health.c) */
        v->why = "410 Gone";
        break;
    case DELIVER_RETRY:
    case DELIVER_RETRY_AFTER:
    default:
        if (!cep) {
            v->status = "pending";
            v->delay = DELIVER_ORPHAN_DEFER_MS;
        } else if ((npos = deliver_schedule_next(cep->retry_ms, cep->nretry, v->pos, cep->jitter,
                                                 deliver_rand(d), &v->delay)) < 0) {
            v->status = "failed";
            v->why = "retries exhausted";
        } else {
            v->status = "pending";
            v->pos = npos;
            if (v->outcome == DELIVER_RETRY_AFTER && v->retry_after > v->delay)
                v->delay = v->retry_after;
        }
        if (!strcmp(v->status, "pending"))
            v->next_at = now + v->delay;
        break;
    }
}

/* Endpoint health (health.c): the attempt is counted; a 410, or failing
 * every attempt for disable_after, disables the endpoint, and a delivery of
 * a disabled endpoint waits as held. */
static void deliver_attempt_health(struct deliver *d, struct deliver_xfer *x,
                                   const struct config_endpoint *cep, int64_t now,
                                   struct deliver_verdict *v) {
    enum health_verdict hv = v->outcome == DELIVER_DELIVERED ? HEALTH_OK
                             : v->outcome == DELIVER_GONE    ? HEALTH_GONE
                                                             : HEALTH_FAILED;
    int was = deliver_ep_off(d, x->ep);

    if (!health_attempt(d->health, cep, hv, v->a.error, now))
        return;
    if (!was)
        x->ep->warned = 0; /* disabled just now */
    if (!strcmp(v->status, "pending")) {
        v->status = "held";
        v->next_at = now;
    }
}

/* x's attempt and its outcome v on the live feed. */
static void deliver_attempt_publish(struct deliver *d, const struct deliver_xfer *x,
                                    const struct deliver_verdict *v) {
    char at[32], next[32];

    util_time_rfc3339(v->a.at, at, sizeof at);
    if (v->next_at)
        util_time_rfc3339(v->next_at, next, sizeof next);
    stream_publish(d->stream, "attempt",
                   json_pack("{s:s, s:s, s:s, s:s?, s:i, s:s, s:o, s:s?, s:I, s:s, s:s?}",
                             "delivery", x->row.id, "event", x->row.event_id, "endpoint",
                             x->row.endpoint, "type", x->row.event_type, "attempt", v->a.n, "at",
                             at, "status_code",
                             v->a.status_code ? json_integer(v->a.status_code) : json_null(),
                             "error", v->a.error, "ms", (json_int_t)v->a.latency_ms, "outcome",
                             v->status, "next_at", v->next_at ? next : NULL));
}

/* Writes v for x in the open group and logs it. */
static void deliver_attempt_record(struct deliver *d, const struct deliver_xfer *x, int started,
                                   int answered, const struct deliver_verdict *v) {
    const struct store_attempt *a = &v->a;
    char err[256], what[320], delay_text[32];

    if (!started)
        snprintf(what, sizeof what, "not sent (%s)", a->error);
    else if (!answered)
        snprintf(what, sizeof what, "%s", a->error);
    else
        snprintf(what, sizeof what, "%d", a->status_code);
    if (store_attempt_put(d->store, x->row.id, a, v->status, v->next_at, v->pos, err, sizeof err) !=
        0) {
        log_msg(LOG_ERROR,
                "delivery %s to %s attempt %d: %s; outcome not stored (%s), it goes "
                "out again when its lease ends",
                x->row.id, x->row.endpoint, a->n, what, err);
        /* its endpoint is looked at right after this (deliver_xfer_done);
         * the row stays leased and is due again when the lease ends */
        return;
    }
    if (d->shared)
        x->ep->ending++;
    deliver_commit_watch(d);
    metrics_attempt(x->row.endpoint, x->row.event_type, v->status, started ? a->latency_ms : -1);
    if (v->next_at && strcmp(v->status, "held") != 0)
        health_fmt_delay(v->delay, delay_text, sizeof delay_text);
    else
        delay_text[0] = '\0';
    log_kv(LOG_INFO, "attempt", LOG_S("delivery", x->row.id), LOG_S("event", x->row.event_id),
           LOG_S("endpoint", x->row.endpoint), LOG_S("type", x->row.event_type),
           LOG_N("attempt", a->n),
           a->status_code ? LOG_N("status", a->status_code) : LOG_S("status", NULL),
           LOG_S("error", a->error), LOG_N("ms", a->latency_ms), LOG_S("outcome", v->status),
           LOG_S("retry_in", delay_text[0] ? delay_text : NULL),
           LOG_S("why", v->why && v->why[0] ? v->why : NULL));
    if (stream_watched(d->stream))
        deliver_attempt_publish(d, x, v);
}

/* Records the outcome of x's attempt (SPEC section 7) and frees x. r is how
 * its transfer ended; NULL when it could not start (start_err says why). */
static void deliver_finish(struct deliver *d, struct deliver_xfer *x, const struct httpc_result *r,
                           const char *start_err) {
    const struct config_endpoint *cep = deliver_endpoint(d, x->row.endpoint);
    struct deliver_verdict v = {0};
    int64_t now = util_now_ms();

    deliver_attempt_read(d, x, r, start_err, now, &v);
    deliver_attempt_next(d, cep, now, &v);
    if (cep)
        deliver_attempt_health(d, x, cep, now, &v);
    /* The dead letter is announced; not for waybill's own events, so an
     * alert endpoint that fails cannot feed itself. */
    if (!strcmp(v.status, "failed") &&
        !(x->row.event_type && !strncmp(x->row.event_type, "waybill.", 8)))
        deliver_emit(d, "waybill.delivery.failed",
                     json_pack("{sssssssssisiss?}", "delivery_id", x->row.id, "event_id",
                               x->row.event_id, "endpoint", x->row.endpoint, "event_type",
                               x->row.event_type ? x->row.event_type : "", "attempts", v.a.n,
                               "status_code", v.a.status_code, "error", v.a.error));
    deliver_attempt_record(d, x, r != NULL, r && !r->error, &v);
    deliver_xfer_free(d, x);
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

/* A shared store (several instances): the rows this process holds are
 * given back as it stops, so the next run, or another instance, sends them
 * at once rather than after their leases (a restarted process is a new
 * lease owner). SQLite releases every lease at its next open. */
static void deliver_release_all(struct deliver *d) {
    char err[256];

    if (!d->shared)
        return;
    for (struct deliver_xfer *x = d->xfers; x; x = x->next)
        if (store_delivery_lease(d->store, x->row.seq, x->row.next_at, 0, err, sizeof err) < 0)
            log_msg(LOG_WARN, "delivery %s: releasing its lease: %s (claimed again when it ends)",
                    x->row.id, err);
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
    deliver_release_all(d);
    deliver_abort_all(d);
    event_active(d->done_ev, EV_TIMEOUT, 1);
}

/* ---- public ---- */

struct deliver *deliver_new(struct event_base *base, struct store *s, struct httpc *hc,
                            struct health *h, char *err, size_t errlen) {
    struct deliver *d = calloc(1, sizeof *d);

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->base = base;
    d->store = s;
    d->httpc = hc;
    d->health = h;
    d->lease_ms = DELIVER_LEASE_DEFAULT_MS;
    d->shared = store_shared(s);
    d->rng = ((uint64_t)util_now_ms() << 20) ^ ((uint64_t)getpid() << 1) ^ (uint64_t)(uintptr_t)d ^
             (uint64_t)util_mono_ms();
    if (!d->rng)
        d->rng = 0x9E3779B97F4A7C15ULL;
    d->kick_ev = event_new(base, -1, 0, deliver_kick_cb, d);
    d->check_ev = event_new(base, -1, EV_PERSIST, deliver_check_cb, d);
    d->grace_ev = evtimer_new(base, deliver_grace_cb, d);
    d->done_ev = event_new(base, -1, 0, deliver_done_cb, d);
    if (!d->kick_ev || !d->check_ev || !d->grace_ev || !d->done_ev) {
        snprintf(err, errlen, "could not create the delivery events");
        deliver_free(d);
        return NULL;
    }
    health_set_change_hook(h, deliver_health_changed, d);
    return d;
}

void deliver_set_config(struct deliver *d, const struct config *cfg) {
    struct deliver_ep **pp, *ep;
    size_t i;

    d->cfg = cfg;
    if (cfg && !event_pending(d->check_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = {DELIVER_CHECK_MS / 1000, (DELIVER_CHECK_MS % 1000) * 1000};
        event_add(d->check_ev, &tv);
    }
    /* the `lease` setting (default 30 s): a claim's, renewed while an
     * attempt runs (deliver_leases_renew), whatever the timeouts */
    if (cfg)
        d->lease_ms = cfg->lease_ms > 0 ? cfg->lease_ms : DELIVER_LEASE_DEFAULT_MS;
    /* A queue per configured endpoint; one that left the config keeps its
     * transfers in flight, gives its waiting rows back, and goes when idle
     * (no transfer, no claim in flight). */
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
            if (!ep->inflight && !ep->read && !deliver_ep_off(d, ep)) {
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

void deliver_set_stream(struct deliver *d, struct stream *s) {
    d->stream = s;
}

void deliver_set_notify(struct deliver *d, deliver_notify_fn fn, void *arg) {
    d->notify = fn;
    d->notify_arg = arg;
}

void deliver_shutdown(struct deliver *d, int64_t grace_ms, void (*done)(void *arg), void *arg) {
    struct deliver_ep *ep;
    struct timeval tv;

    d->stopping = 1;
    d->done = done;
    d->done_arg = arg;
    event_del(d->kick_ev);
    event_del(d->check_ev);
    for (ep = d->eps; ep; ep = ep->next) { /* not started: given back (shared) or lapse */
        evtimer_del(ep->timer);
        if (d->shared)
            deliver_ep_release(d, ep);
        else
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
    struct event *evs[4];

    if (!d)
        return;
    deliver_reads_detach(d); /* their answers give back what they claimed */
    deliver_abort_all(d);
    while (d->eps) {
        struct deliver_ep *ep = d->eps;
        d->eps = ep->next;
        deliver_ep_free(ep);
    }
    if (d->commit)
        d->commit->d = NULL; /* the store frees it when the group ends */
    if (d->durable)
        d->durable->d = NULL;
    if (d->health)
        health_set_change_hook(d->health, NULL, NULL);
    evs[0] = d->kick_ev;
    evs[1] = d->check_ev;
    evs[2] = d->grace_ev;
    evs[3] = d->done_ev;
    for (size_t i = 0; i < 4; i++)
        if (evs[i])
            event_free(evs[i]);
    free(d);
}
