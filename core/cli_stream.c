/* cli_stream.c -- `waybill tail` and `waybill listen`: GET /api/stream
 * (Server-Sent Events) read with libcurl easy, one message at a time.
 * tail prints each message; listen POSTs each event to a local URL, signed
 * Standard Webhooks, as `stripe listen --forward-to` does for Stripe's.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/rand.h>

#include "cli_int.h"
#include "util.h"
#include "verify.h"

/* One SSE connection's reader: the line being read, the message being
 * built, and what is done with each message. */
struct sse_reader {
    struct util_buf line, data;
    char event[32];
    long status;          /* the HTTP status, once known */
    struct util_buf body; /* the answer's body when it is not 200 */
    CURL *easy;
    void (*on_open)(void *arg); /* once the stream answered 200 */
    void (*on_message)(void *arg, const char *event, const char *data);
    void *arg;
};

static void sse_dispatch(struct sse_reader *r) {
    if (r->data.len && util_buf_append(&r->data, "", 1) == 0)
        r->on_message(r->arg, r->event[0] ? r->event : "message", r->data.p);
    util_buf_reset(&r->data);
    r->event[0] = '\0';
}

/* One line of the stream (without its newline). */
static void sse_line(struct sse_reader *r, const char *l, size_t n) {
    const char *colon = memchr(l, ':', n);
    size_t klen = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vlen = n - (size_t)(v - l);

    if (n == 0) {
        sse_dispatch(r);
        return;
    }
    if (klen == 0)
        return; /* a comment */
    if (vlen && *v == ' ') {
        v++;
        vlen--;
    }
    if (klen == 5 && memcmp(l, "event", 5) == 0)
        snprintf(r->event, sizeof r->event, "%.*s", (int)vlen, v);
    else if (klen == 4 && memcmp(l, "data", 4) == 0) {
        if (r->data.len)
            util_buf_append(&r->data, "\n", 1);
        util_buf_append(&r->data, v, vlen);
    }
}

static size_t sse_write(char *p, size_t size, size_t nmemb, void *arg) {
    struct sse_reader *r = arg;
    size_t n = size * nmemb;

    if (!r->status) {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
        if (r->status == 200 && r->on_open)
            r->on_open(r->arg);
    }
    if (r->status != 200)
        return util_buf_append(&r->body, p, n) == 0 ? n : 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            size_t len = r->line.len;
            if (len && r->line.p[len - 1] == '\r')
                len--;
            sse_line(r, r->line.p ? r->line.p : "", len);
            util_buf_reset(&r->line);
        } else if (util_buf_append(&r->line, p + i, 1) < 0) {
            return 0;
        }
    }
    return n;
}

/* Appends "&name=value" (escaped) to url when value is set. */
static void sse_query(CURL *easy, char *url, size_t len, const char *name, const char *value) {
    char *esc;
    size_t used = strlen(url);

    if (!value || !(esc = curl_easy_escape(easy, value, 0)))
        return;
    snprintf(url + used, len - used, "%s%s=%s", strchr(url, '?') ? "&" : "?", name, esc);
    curl_free(esc);
}

/* Reads GET /api/stream with o's filters (kind forced when set) until it
 * ends. Returns the exit code: 1 (the stream cannot start or it ended). */
static int sse_follow(const struct cli *c, const struct cli_opts *o, const char *kind,
                      const char *who, struct sse_reader *r) {
    struct curl_slist *h = NULL;
    char url[2048];
    CURLcode rc;
    int ret = 1;

    if (!(r->easy = curl_easy_init()))
        return 1;
    snprintf(url, sizeof url, "%s/api/stream", c->base);
    sse_query(r->easy, url, sizeof url, "source", o->source);
    sse_query(r->easy, url, sizeof url, "type", o->type);
    sse_query(r->easy, url, sizeof url, "endpoint", o->endpoint);
    sse_query(r->easy, url, sizeof url, "status", o->status);
    sse_query(r->easy, url, sizeof url, "kind", kind ? kind : o->kind);
    h = curl_slist_append(h, c->auth);
    h = curl_slist_append(h, "Accept: text/event-stream");
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(r->easy, CURLOPT_PROXY, "");
    curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, sse_write);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    rc = curl_easy_perform(r->easy);
    if (r->status && r->status != 200) {
        json_t *j = r->body.len ? json_loadb(r->body.p, r->body.len, 0, NULL) : NULL;
        const char *e = json_string_value(json_object_get(j, "error"));
        fprintf(stderr, "waybill %s: HTTP %ld: %s\n", who, r->status, e ? e : "unexpected answer");
        json_decref(j);
    } else if (rc != CURLE_OK && !(r->status == 200 && rc == CURLE_PARTIAL_FILE)) {
        fprintf(stderr, "waybill %s: %s: %s\n", who, c->base, curl_easy_strerror(rc));
    } else { /* ended, or cut (a stopped gateway leaves the chunked answer open) */
        fprintf(stderr, "waybill %s: the gateway closed the stream\n", who);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(r->easy);
    util_buf_free(&r->line);
    util_buf_free(&r->data);
    util_buf_free(&r->body);
    return ret;
}

/* ---- tail ---- */

/* "HH:MM:SS.mmm" of an RFC 3339 time, or the text as it is. */
static const char *tail_clock(const char *t, char *out, size_t n) {
    const char *tee = t ? strchr(t, 'T') : NULL;
    snprintf(out, n, "%.12s", tee ? tee + 1 : (t ? t : "-"));
    return out;
}

static const char *tail_str(json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static void tail_message(void *arg, const char *event, const char *data) {
    const struct cli *c = arg;
    json_t *m = json_loads(data, 0, NULL);
    char clock[16], next[16], what[64];

    if (c->json) {
        json_t *line = json_pack("{s:s}", "kind", event);
        char *text;
        if (m && line)
            json_object_update(line, m);
        text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        if (text)
            printf("%s\n", text);
        free(text);
        json_decref(line);
    } else if (strcmp(event, "event") == 0 && m) {
        printf("%s  event    %s  %s  %s  %s\n",
               tail_clock(tail_str(m, "received_at"), clock, sizeof clock), tail_str(m, "id"),
               tail_str(m, "source"), tail_str(m, "type"), tail_str(m, "status"));
    } else if (strcmp(event, "attempt") == 0 && m) {
        json_t *code = json_object_get(m, "status_code");
        if (json_is_integer(code))
            snprintf(what, sizeof what, "%lld", (long long)json_integer_value(code));
        else
            snprintf(what, sizeof what, "%s", tail_str(m, "error"));
        printf("%s  attempt  %s  %s  #%lld  %s  %lldms  %s%s%s  %s\n",
               tail_clock(tail_str(m, "at"), clock, sizeof clock), tail_str(m, "delivery"),
               tail_str(m, "endpoint"),
               (long long)json_integer_value(json_object_get(m, "attempt")), what,
               (long long)json_integer_value(json_object_get(m, "ms")), tail_str(m, "outcome"),
               json_is_string(json_object_get(m, "next_at")) ? ", next " : "",
               json_is_string(json_object_get(m, "next_at"))
                   ? tail_clock(tail_str(m, "next_at"), next, sizeof next)
                   : "",
               tail_str(m, "event"));
    } else if (strcmp(event, "dropped") == 0) {
        printf("(%lld messages dropped: this reader fell behind)\n",
               m ? (long long)json_integer_value(json_object_get(m, "count")) : 0LL);
    }
    fflush(stdout);
    json_decref(m);
}

static void tail_open(void *arg) {
    const struct cli *c = arg;
    fprintf(stderr, "waybill tail: following %s/api/stream (Ctrl-C to stop)\n", c->base);
}

int cli_tail(const struct cli *c, const struct cli_opts *o) {
    struct sse_reader r = {.on_open = tail_open, .on_message = tail_message, .arg = (void *)c};

    return sse_follow(c, o, NULL, "tail", &r);
}

/* ---- listen ---- */

struct listener {
    const char *base, *url, *shown;
    struct verify_secret secret;
};

/* "HH:MM:SS.mmm" now. */
static const char *listen_now(char *out, size_t n) {
    char t[32];
    util_time_rfc3339(util_now_ms(), t, sizeof t);
    return tail_clock(t, out, n);
}

static void listen_open(void *arg) {
    const struct listener *l = arg;
    printf("Ready! Forwarding waybill events from %s to %s\n"
           "Signing secret (Standard Webhooks, webhook-signature): %s\n",
           l->base, l->url, l->shown);
    fflush(stdout);
}

static void listen_add_header(void *ctx, const char *name, const char *value) {
    struct curl_slist **h = ctx;
    char line[1024];
    snprintf(line, sizeof line, "%s: %s", name, value);
    *h = curl_slist_append(*h, line);
}

static size_t listen_discard(char *p, size_t size, size_t nmemb, void *arg) {
    (void)p;
    (void)arg;
    return size * nmemb;
}

/* The event as a subscription gets it (the stream's message without its
 * status), POSTed to the listener's URL, signed. */
static void listen_message(void *arg, const char *event, const char *data) {
    struct listener *l = arg;
    json_t *m = strcmp(event, "event") == 0 ? json_loads(data, 0, NULL) : NULL;
    struct curl_slist *h = NULL;
    char *body = NULL, clock[16];
    const char *id = tail_str(m, "id");
    CURL *easy = NULL;
    CURLcode rc;
    long code = 0;

    if (!m)
        goto done;
    json_object_del(m, "status");
    if (!(body = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS)) || !(easy = curl_easy_init()))
        goto done;
    printf("%s  --> %s [%s]\n", listen_now(clock, sizeof clock), tail_str(m, "type"), id);
    fflush(stdout);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "User-Agent: waybill-listen/" WAYBILL_VERSION);
    verify_sign(SIGN_STANDARD, &l->secret, 1, id, util_now_ms() / 1000, body, strlen(body),
                listen_add_header, &h);
    curl_easy_setopt(easy, CURLOPT_URL, l->url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, listen_discard);
    rc = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    if (rc == CURLE_OK)
        printf("%s  <-- [%ld] POST %s [%s]\n",
               tail_clock(tail_str(m, "received_at"), clock, sizeof clock), code, l->url, id);
    else
        printf("%s  <-- failed: %s: POST %s [%s]\n",
               tail_clock(tail_str(m, "received_at"), clock, sizeof clock), curl_easy_strerror(rc),
               l->url, id);
done:
    fflush(stdout);
    if (easy)
        curl_easy_cleanup(easy);
    curl_slist_free_all(h);
    free(body);
    json_decref(m);
}

/* The signing secret: o's ("whsec_" + base64 of the key), or 24 random
 * bytes. Prints it as it is used. Returns 0, or -1 with the reason said. */
static int listen_secret(const char *given, unsigned char *key, size_t *len, char *shown,
                         size_t shownlen) {
    long n;

    if (given) {
        if (strncmp(given, "whsec_", 6) != 0 ||
            (n = util_base64_decode(given + 6, strlen(given + 6), key, *len)) < 16) {
            fprintf(stderr, "waybill listen: --secret must be whsec_ and the base64 of at least "
                            "16 bytes\n");
            return -1;
        }
        *len = (size_t)n;
        snprintf(shown, shownlen, "%s", given);
        return 0;
    }
    if (RAND_bytes(key, 24) != 1) {
        fprintf(stderr, "waybill listen: no randomness for a secret\n");
        return -1;
    }
    *len = 24;
    memcpy(shown, "whsec_", 6);
    util_base64_encode(key, 24, shown + 6);
    return 0;
}

int cli_listen(const struct cli *c, const struct cli_opts *o) {
    unsigned char key[128];
    char shown[200];
    size_t len = sizeof key;
    struct listener l = {.base = c->base, .url = o->forward_to, .shown = shown};
    struct sse_reader r = {.on_open = listen_open, .on_message = listen_message, .arg = &l};

    if (!util_http_url_ok(o->forward_to)) {
        fprintf(stderr, "waybill listen: --forward-to must be an http:// or https:// URL\n");
        return 2;
    }
    if (listen_secret(o->secret, key, &len, shown, sizeof shown) < 0)
        return 2;
    l.secret.key = key;
    l.secret.len = len;
    return sse_follow(c, o, "event", "listen", &r);
}
