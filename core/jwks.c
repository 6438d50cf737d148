/* jwks.c -- JSON Web Key Sets: RSA public keys by kid (OpenSSL 3 EVP_PKEY
 * from n and e), read from a file or fetched from a URL through the shared
 * HTTP client (httpc.h: socket-driven on the loop; fetches are rare:
 * start-up and unknown kids; each is bounded by a 5 s timeout).
 * Invariants: set is never NULL after jwks_new (an empty set until the first
 * fetch lands); at most one fetch is in flight; waiters run exactly once.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include "httpc.h"
#include "jwks.h"
#include "log.h"
#include "util.h"

#define JWKS_MAX_BYTES (256 * 1024)
#define JWKS_FETCH_TIMEOUT_MS 5000L
#define JWKS_TRIED_MAX 32
#define JWKS_TRIED_MS (5 * 60 * 1000)
/* Unknown kids cost a fetch each: at most this many per minute, so a stream
 * of made-up kids cannot turn waybill into a load on the key server. */
#define JWKS_REFETCH_PER_MIN 10

/* ---- parsing ---- */

struct jwks_key {
    char *kid;
    EVP_PKEY *pkey;
};

struct jwks_set {
    struct jwks_key *keys;
    size_t n;
};

void jwks_set_free(struct jwks_set *set) {
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++) {
        free(set->keys[i].kid);
        EVP_PKEY_free(set->keys[i].pkey);
    }
    free(set->keys);
    free(set);
}

/* base64url (no padding) into a new buffer; NULL when malformed. */
static unsigned char *b64url_decode(const char *in, size_t len, size_t *outlen) {
    char *std = malloc(len + 4);
    unsigned char *out = malloc(len + 4);
    long n;
    size_t i;

    if (!std || !out || len == 0)
        goto fail;
    for (i = 0; i < len; i++) {
        char c = in[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (c == '+' || c == '/')
            goto fail;
        std[i] = c;
    }
    while (i % 4)
        std[i++] = '=';
    n = util_base64_decode(std, i, out, len + 4);
    if (n <= 0)
        goto fail;
    free(std);
    *outlen = (size_t)n;
    return out;
fail:
    free(std);
    free(out);
    return NULL;
}

/* An RSA public key from the base64url n and e of a JWK; NULL with err. */
static EVP_PKEY *rsa_from_ne(const char *n64, const char *e64, char *err, size_t errlen) {
    unsigned char *nb = NULL, *eb = NULL;
    size_t nlen = 0, elen = 0;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    nb = b64url_decode(n64, strlen(n64), &nlen);
    eb = b64url_decode(e64, strlen(e64), &elen);
    if (!nb || !eb || elen > 8) {
        snprintf(err, errlen, "malformed n or e");
        goto done;
    }
    n = BN_bin2bn(nb, (int)nlen, NULL);
    e = BN_bin2bn(eb, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!n || !e || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) ||
        !(params = OSSL_PARAM_BLD_to_param(bld)) ||
        !(ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) ||
        EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        snprintf(err, errlen, "not a usable RSA key");
        goto done;
    }
    if (EVP_PKEY_get_bits(pkey) < 2048 || BN_is_odd(e) == 0 || BN_is_one(e)) {
        snprintf(err, errlen, "RSA key too weak (%d bits)", EVP_PKEY_get_bits(pkey));
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
done:
    free(nb);
    free(eb);
    BN_free(n);
    BN_free(e);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

static const char *str_field(json_t *obj, const char *name) {
    json_t *v = json_object_get(obj, name);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

struct jwks_set *jwks_set_parse(const char *text, size_t len, char *err, size_t errlen) {
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, 0, &jerr), *keys, *k;
    struct jwks_set *set = NULL;
    size_t i;
    char why[96];

    if (!doc) {
        snprintf(err, errlen, "invalid JSON at line %d: %s", jerr.line, jerr.text);
        return NULL;
    }
    keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        snprintf(err, errlen, "no \"keys\" array");
        goto fail;
    }
    set = calloc(1, sizeof *set);
    if (!set || (json_array_size(keys) &&
                 !(set->keys = calloc(json_array_size(keys), sizeof *set->keys)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    json_array_foreach(keys, i, k) {
        const char *kty = str_field(k, "kty"), *kid = str_field(k, "kid");
        const char *use = str_field(k, "use"), *n = str_field(k, "n"), *e = str_field(k, "e");
        if (!kty || strcmp(kty, "RSA") != 0 || !kid || !*kid || (use && strcmp(use, "sig") != 0))
            continue;
        if (!n || !e) {
            snprintf(err, errlen, "key %zu: RSA key without n or e", i);
            goto fail;
        }
        EVP_PKEY *pkey = rsa_from_ne(n, e, why, sizeof why);
        if (!pkey) {
            snprintf(err, errlen, "key %zu: %s", i, why);
            goto fail;
        }
        set->keys[set->n].pkey = pkey;
        set->keys[set->n].kid = strdup(kid);
        set->n++;
        if (!set->keys[set->n - 1].kid) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    json_decref(doc);
    return set;
fail:
    json_decref(doc);
    jwks_set_free(set);
    return NULL;
}

struct jwks_set *jwks_set_load(const char *path, char *err, size_t errlen) {
    size_t len = 0;
    char *text = util_file_read(path, &len), why[200];
    struct jwks_set *set;

    if (!text) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    set = jwks_set_parse(text, len, why, sizeof why);
    if (!set)
        snprintf(err, errlen, "%s: %s", path, why);
    free(text);
    return set;
}

EVP_PKEY *jwks_set_find(const struct jwks_set *set, const char *kid) {
    for (size_t i = 0; set && i < set->n; i++)
        if (strcmp(set->keys[i].kid, kid) == 0)
            return set->keys[i].pkey;
    return NULL;
}

size_t jwks_set_count(const struct jwks_set *set) {
    return set ? set->n : 0;
}

/* ---- a refetchable source ---- */

struct jwks_waiter {
    jwks_done_fn done;
    void *arg;
};

struct jwks_tried {
    char kid[128];
    int64_t at;
};

struct jwks {
    struct httpc *hc; /* borrowed */
    char *location;
    int is_url;
    struct jwks_set *set;
    struct httpc_xfer *fetch; /* the fetch in flight, or NULL */
    struct jwks_waiter *waiters;
    size_t nwaiters, capwaiters;
    struct jwks_tried tried[JWKS_TRIED_MAX];
    int64_t window_start; /* refetch rate limit: this minute's start */
    int window_refetches;
    int fetches;
};

int jwks_is(const struct jwks *j, const char *location) {
    return j && strcmp(j->location, location) == 0;
}

int jwks_is_url(const struct jwks *j) {
    return j->is_url;
}

EVP_PKEY *jwks_find(struct jwks *j, const char *kid) {
    return jwks_set_find(j->set, kid);
}

int jwks_fetches(const struct jwks *j) {
    return j->fetches;
}

/* Ends the fetch in flight (its transfer has ended or was cancelled) and
 * runs every waiter. */
static void fetch_end(struct jwks *j, int ok) {
    struct jwks_waiter *w = j->waiters;
    size_t n = j->nwaiters;

    j->fetch = NULL;
    /* A waiter may start the next fetch (a new waiter list) or free nothing
     * of ours: the list is detached first. */
    j->waiters = NULL;
    j->nwaiters = j->capwaiters = 0;
    for (size_t i = 0; i < n; i++)
        w[i].done(w[i].arg, ok);
    free(w);
}

static void on_fetched(void *arg, const struct httpc_result *r) {
    struct jwks *j = arg;
    struct jwks_set *set;
    char err[200];
    int ok = 0;

    if (r->error) {
        log_msg(LOG_WARN, "jwks %s: fetch failed: %s", j->location,
                r->too_large ? "document too large" : r->code_text);
    } else if (r->status != 200) {
        log_msg(LOG_WARN, "jwks %s: fetch answered HTTP %d", j->location, r->status);
    } else if (!(set = jwks_set_parse(r->body, r->body_len, err, sizeof err))) {
        log_msg(LOG_WARN, "jwks %s: %s; keeping the previous keys", j->location, err);
    } else {
        jwks_set_free(j->set);
        j->set = set;
        ok = 1;
        log_msg(LOG_INFO, "jwks %s: %zu keys", j->location, set->n);
    }
    fetch_end(j, ok);
}

/* Starts a fetch of the URL unless one is in flight. Returns 0 or -1. */
static int fetch_start(struct jwks *j) {
    struct httpc_request req = {
        .url = j->location,
        .user_agent = "waybill-jwks",
        .timeout_ms = JWKS_FETCH_TIMEOUT_MS,
        .response_max = JWKS_MAX_BYTES,
        .response_limit = 1,
    };
    char err[128];

    if (j->fetch)
        return 0;
    if (!(j->fetch = httpc_start(j->hc, &req, on_fetched, j, err, sizeof err))) {
        log_msg(LOG_WARN, "jwks %s: fetch not started: %s", j->location, err);
        return -1;
    }
    j->fetches++;
    return 0;
}

struct jwks *jwks_new(struct httpc *hc, const char *location, char *err, size_t errlen) {
    struct jwks *j = calloc(1, sizeof *j);

    if (!j || !(j->location = strdup(location))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    j->hc = hc;
    j->is_url = strncmp(location, "http://", 7) == 0 || strncmp(location, "https://", 8) == 0;
    if (j->is_url) {
        j->set = calloc(1, sizeof *j->set);
        if (!j->set || fetch_start(j) < 0) {
            snprintf(err, errlen, "jwks %s: cannot start a fetch", location);
            goto fail;
        }
    } else {
        j->fetches = 1;
        j->set = jwks_set_load(location, err, errlen);
        if (!j->set)
            goto fail;
    }
    return j;
fail:
    jwks_free(j);
    return NULL;
}

int jwks_refetch(struct jwks *j, const char *kid, jwks_done_fn done, void *arg) {
    int64_t now = util_mono_ms();
    size_t oldest = 0;
    char err[300];

    if (strlen(kid) >= sizeof j->tried[0].kid)
        return JWKS_NO_REFETCH; /* no carrier's kid is this long */
    for (size_t i = 0; i < JWKS_TRIED_MAX; i++) {
        if (j->tried[i].at && now - j->tried[i].at < JWKS_TRIED_MS &&
            strcmp(j->tried[i].kid, kid) == 0)
            return JWKS_NO_REFETCH;
        if (j->tried[i].at < j->tried[oldest].at)
            oldest = i;
    }
    if (now - j->window_start >= 60000) {
        j->window_start = now;
        j->window_refetches = 0;
    }
    if (!j->fetch) { /* joining a fetch in flight costs nothing */
        if (j->window_refetches >= JWKS_REFETCH_PER_MIN) {
            log_msg(LOG_WARN, "jwks %s: %d refetches this minute; not refetching for another kid",
                    j->location, j->window_refetches);
            return JWKS_NO_REFETCH;
        }
        j->window_refetches++;
    }
    snprintf(j->tried[oldest].kid, sizeof j->tried[oldest].kid, "%s", kid);
    j->tried[oldest].at = now ? now : 1;
    if (!j->is_url) {
        struct jwks_set *set = jwks_set_load(j->location, err, sizeof err);
        j->fetches++;
        if (!set) {
            log_msg(LOG_WARN, "jwks: %s; keeping the previous keys", err);
        } else {
            jwks_set_free(j->set);
            j->set = set;
        }
        return JWKS_REFETCHED;
    }
    if (j->nwaiters == j->capwaiters) {
        size_t cap = j->capwaiters ? j->capwaiters * 2 : 4;
        struct jwks_waiter *w = realloc(j->waiters, cap * sizeof *w);
        if (!w)
            return -1;
        j->waiters = w;
        j->capwaiters = cap;
    }
    if (fetch_start(j) < 0)
        return -1;
    j->waiters[j->nwaiters].done = done;
    j->waiters[j->nwaiters].arg = arg;
    j->nwaiters++;
    return 0;
}

void jwks_free(struct jwks *j) {
    if (!j)
        return;
    if (j->fetch) {
        httpc_cancel(j->hc, j->fetch);
        fetch_end(j, 0);
    }
    free(j->waiters);
    jwks_set_free(j->set);
    free(j->location);
    free(j);
}
