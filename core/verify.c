/* verify.c -- inbound signature checks and outbound signing with OpenSSL's
 * EVP_MAC (HMAC-SHA256). Invariants: every signature comparison goes through
 * util_ct_equal over fixed-length digests; reasons never quote a header
 * value or a secret.
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "util.h"
#include "verify.h"

#define DIGEST_LEN 32

/* ---- HMAC ---- */

struct hmac_part {
    const void *p;
    size_t n;
};

/* The HMAC algorithm is fetched once; only the loop thread signs. */
static EVP_MAC *hmac_alg(void) {
    static EVP_MAC *mac;
    if (!mac)
        mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    return mac;
}

/* Keyed HMAC contexts kept for the last few keys (a source's secret, an
 * endpoint's signing key): EVP_MAC_init with a NULL key restarts a context
 * with the key it already holds, which skips the context allocation and the
 * key schedule (more than half the cost of signing a 600-byte body). Only
 * the loop thread signs; the contexts live until exit. */
#define HMAC_CACHE 8
static struct hmac_cached {
    EVP_MAC_CTX *ctx;
    unsigned char *key;
    size_t keylen;
} hmac_cache[HMAC_CACHE];
static unsigned hmac_cache_next;

static void hmac_cache_free(void) {
    for (size_t i = 0; i < HMAC_CACHE; i++) {
        EVP_MAC_CTX_free(hmac_cache[i].ctx);
        if (hmac_cache[i].key)
            OPENSSL_clear_free(hmac_cache[i].key, hmac_cache[i].keylen);
        memset(&hmac_cache[i], 0, sizeof hmac_cache[i]);
    }
}

/* A context keyed with key, ready for updates, or NULL. Borrowed. */
static EVP_MAC_CTX *hmac_keyed(const unsigned char *key, size_t keylen) {
    static const unsigned char empty_key[1];
    static int registered;
    EVP_MAC *mac = hmac_alg();
    struct hmac_cached *slot;
    OSSL_PARAM params[2];

    for (size_t i = 0; i < HMAC_CACHE; i++) {
        struct hmac_cached *c = &hmac_cache[i];
        /* Comparing two of our own secrets: nothing a sender controls. */
        if (c->ctx && c->keylen == keylen && (!keylen || memcmp(c->key, key, keylen) == 0))
            return EVP_MAC_init(c->ctx, NULL, 0, NULL) ? c->ctx : NULL;
    }
    if (!mac)
        return NULL;
    if (!registered) {
        registered = 1;
        atexit(hmac_cache_free);
    }
    slot = &hmac_cache[hmac_cache_next++ % HMAC_CACHE];
    EVP_MAC_CTX_free(slot->ctx);
    if (slot->key)
        OPENSSL_clear_free(slot->key, slot->keylen);
    memset(slot, 0, sizeof *slot);
    if (!(slot->ctx = EVP_MAC_CTX_new(mac)) || !(slot->key = OPENSSL_malloc(keylen ? keylen : 1)))
        goto fail;
    if (keylen)
        memcpy(slot->key, key, keylen);
    slot->keylen = keylen;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    /* OpenSSL refuses a NULL key; an empty secret is still a (weak) key. */
    if (!EVP_MAC_init(slot->ctx, keylen ? key : empty_key, keylen, params))
        goto fail;
    return slot->ctx;
fail:
    EVP_MAC_CTX_free(slot->ctx);
    OPENSSL_free(slot->key);
    memset(slot, 0, sizeof *slot);
    return NULL;
}

/* HMAC-SHA256 over the concatenation of parts, without copying them. */
static int hmac_parts(const unsigned char *key, size_t keylen, const struct hmac_part *parts,
                      size_t nparts, unsigned char out[DIGEST_LEN]) {
    EVP_MAC_CTX *ctx = hmac_keyed(key, keylen);
    size_t outlen = 0;

    if (!ctx)
        return -1;
    for (size_t i = 0; i < nparts; i++)
        if (parts[i].n && !EVP_MAC_update(ctx, parts[i].p, parts[i].n))
            return -1;
    if (!EVP_MAC_final(ctx, out, &outlen, DIGEST_LEN) || outlen != DIGEST_LEN)
        return -1;
    return 0;
}

int verify_hmac_sha256(const unsigned char *key, size_t keylen, const void *msg, size_t len,
                       unsigned char out[32]) {
    struct hmac_part part = {msg, len};
    return hmac_parts(key, keylen, &part, 1, out);
}

/* ---- presets ---- */

static void spec_hmac(struct verify_spec *spec, const char *header, enum verify_encoding enc,
                      const char *prefix) {
    spec->kind = VERIFY_HMAC;
    snprintf(spec->header, sizeof spec->header, "%s", header);
    spec->encoding = enc;
    snprintf(spec->prefix, sizeof spec->prefix, "%s", prefix);
}

int verify_preset(const char *name, struct verify_spec *spec) {
    memset(spec, 0, sizeof *spec);
    spec->tolerance_ms = 5 * 60 * 1000;
    if (strcmp(name, "generic") == 0)
        spec_hmac(spec, "X-Signature", VERIFY_HEX, "");
    else if (strcmp(name, "atoship") == 0)
        spec_hmac(spec, "X-Atoship-Signature", VERIFY_HEX, "");
    else if (strcmp(name, "aftership") == 0)
        spec_hmac(spec, "aftership-hmac-sha256", VERIFY_BASE64, "");
    else if (strcmp(name, "easypost") == 0)
        spec_hmac(spec, "X-Hmac-Signature", VERIFY_HEX, "hmac-sha256-hex=");
    else if (strcmp(name, "stripe") == 0) {
        spec->kind = VERIFY_STRIPE;
        snprintf(spec->header, sizeof spec->header, "Stripe-Signature");
    } else if (strcmp(name, "shippo") == 0) {
        spec->kind = VERIFY_STRIPE;
        snprintf(spec->header, sizeof spec->header, "Shippo-Auth-Signature");
    } else if (strcmp(name, "standard") == 0)
        spec->kind = VERIFY_STANDARD;
    else if (strcmp(name, "shiptify") == 0)
        spec->kind = VERIFY_SHIPTIFY;
    else if (strcmp(name, "shipengine") == 0)
        spec->kind = VERIFY_SHIPENGINE;
    else if (strcmp(name, "none") == 0)
        spec->kind = VERIFY_NONE;
    else
        return -1;
    return 0;
}

/* ---- inbound checks ---- */

static int fail(char *reason, size_t reasonlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *reason, size_t reasonlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, reasonlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Decodes one signature text into exactly DIGEST_LEN bytes. */
static int decode_digest(const char *text, size_t len, enum verify_encoding enc,
                         unsigned char out[DIGEST_LEN]) {
    long n = enc == VERIFY_HEX ? util_hex_decode(text, len, out, DIGEST_LEN)
                               : util_base64_decode(text, len, out, DIGEST_LEN);
    return n == DIGEST_LEN ? 0 : -1;
}

/* 1 when one secret's HMAC over parts equals want (constant-time per secret). */
static int any_secret_matches(const struct verify_secret *secrets, size_t nsecrets,
                              const struct hmac_part *parts, size_t nparts,
                              const unsigned char want[DIGEST_LEN]) {
    unsigned char got[DIGEST_LEN];
    int match = 0;

    for (size_t i = 0; i < nsecrets; i++) {
        if (hmac_parts(secrets[i].key, secrets[i].len, parts, nparts, got) < 0)
            continue;
        match |= util_ct_equal(got, want, DIGEST_LEN);
    }
    return match;
}

static int check_hmac(const struct verify_spec *spec, const struct verify_secret *secrets,
                      size_t nsecrets, const struct verify_request *req, char *reason,
                      size_t reasonlen) {
    const char *value = req->header(req->header_ctx, spec->header);
    size_t plen = strlen(spec->prefix), vlen;
    unsigned char want[DIGEST_LEN];
    struct hmac_part body = {req->body, req->body_len};

    if (!value)
        return fail(reason, reasonlen, "missing header %s", spec->header);
    while (*value == ' ')
        value++;
    if (plen) {
        if (strncasecmp(value, spec->prefix, plen) != 0)
            return fail(reason, reasonlen, "header %s lacks its prefix", spec->header);
        value += plen;
    }
    vlen = strlen(value);
    while (vlen && value[vlen - 1] == ' ')
        vlen--;
    if (decode_digest(value, vlen, spec->encoding, want) < 0)
        return fail(reason, reasonlen, "bad %s in %s",
                    spec->encoding == VERIFY_HEX ? "hex" : "base64", spec->header);
    if (!any_secret_matches(secrets, nsecrets, &body, 1, want))
        return fail(reason, reasonlen, "%s", "no secret matched the signature");
    return 0;
}

/* Parses a decimal Unix-seconds timestamp; -1 when malformed. */
static int parse_unix_seconds(const char *s, size_t len, int64_t *out) {
    int64_t v = 0;
    if (len == 0 || len > 15)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

static int within_tolerance(int64_t ts_s, const struct verify_spec *spec, int64_t now_ms) {
    int64_t delta = now_ms - ts_s * 1000;
    if (delta < 0)
        delta = -delta;
    return delta <= spec->tolerance_ms;
}

static int check_standard(const struct verify_spec *spec, const struct verify_secret *secrets,
                          size_t nsecrets, const struct verify_request *req, char *reason,
                          size_t reasonlen) {
    const char *id = req->header(req->header_ctx, "webhook-id");
    const char *ts = req->header(req->header_ctx, "webhook-timestamp");
    const char *sigs = req->header(req->header_ctx, "webhook-signature");
    int64_t ts_s;
    int any_well_formed = 0;

    if (!id)
        return fail(reason, reasonlen, "missing header %s", "webhook-id");
    if (!ts)
        return fail(reason, reasonlen, "missing header %s", "webhook-timestamp");
    if (!sigs)
        return fail(reason, reasonlen, "missing header %s", "webhook-signature");
    if (parse_unix_seconds(ts, strlen(ts), &ts_s) < 0)
        return fail(reason, reasonlen, "malformed %s", "webhook-timestamp");
    if (!within_tolerance(ts_s, spec, req->now_ms))
        return fail(reason, reasonlen, "%s", "timestamp outside tolerance");

    struct hmac_part parts[] = {
        {id, strlen(id)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {req->body, req->body_len}};
    for (const char *p = sigs; *p;) {
        const char *end;
        unsigned char want[DIGEST_LEN];

        while (*p == ' ')
            p++;
        end = p + strcspn(p, " ");
        if (end - p > 3 && strncmp(p, "v1,", 3) == 0 &&
            decode_digest(p + 3, (size_t)(end - p - 3), VERIFY_BASE64, want) == 0) {
            any_well_formed = 1;
            if (any_secret_matches(secrets, nsecrets, parts, 5, want))
                return 0;
        }
        p = end;
    }
    return fail(reason, reasonlen, "%s",
                any_well_formed ? "no secret matched the signature"
                                : "no v1 signature in webhook-signature");
}

static int check_stripe(const struct verify_spec *spec, const struct verify_secret *secrets,
                        size_t nsecrets, const struct verify_request *req, char *reason,
                        size_t reasonlen) {
    const char *value = req->header(req->header_ctx, spec->header);
    const char *t = NULL;
    size_t tlen = 0;
    int64_t ts_s;
    int nv1 = 0;

    if (!value)
        return fail(reason, reasonlen, "missing header %s", spec->header);
    for (const char *p = value; *p;) {
        const char *end = p + strcspn(p, ",");
        while (*p == ' ')
            p++;
        if (strncmp(p, "t=", 2) == 0 && end > p + 2) {
            t = p + 2;
            tlen = (size_t)(end - t);
        }
        if (strncmp(p, "v1=", 3) == 0)
            nv1++;
        p = *end ? end + 1 : end;
    }
    if (!t || parse_unix_seconds(t, tlen, &ts_s) < 0)
        return fail(reason, reasonlen, "missing or malformed t= in %s", spec->header);
    if (!nv1)
        return fail(reason, reasonlen, "missing v1= in %s", spec->header);
    if (!within_tolerance(ts_s, spec, req->now_ms))
        return fail(reason, reasonlen, "%s", "timestamp outside tolerance");

    struct hmac_part parts[] = {{t, tlen}, {".", 1}, {req->body, req->body_len}};
    for (const char *p = value; *p;) {
        const char *end = p + strcspn(p, ",");
        unsigned char want[DIGEST_LEN];
        while (*p == ' ')
            p++;
        if (strncmp(p, "v1=", 3) == 0 &&
            decode_digest(p + 3, (size_t)(end - p - 3), VERIFY_HEX, want) == 0 &&
            any_secret_matches(secrets, nsecrets, parts, 3, want))
            return 0;
        p = *end ? end + 1 : end;
    }
    return fail(reason, reasonlen, "%s", "no secret matched the signature");
}

/* ---- Shiptify: the signature lives in the body ---- */

/* The timestamp field's decimal text (a JSON integer or a string of
 * digits) into text, and its value in ms (seconds, or ms past 10^12). */
static int shiptify_timestamp(json_t *v, char *text, size_t textlen, int64_t *ms) {
    int64_t n;
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return -1;
        snprintf(text, textlen, "%lld", (long long)json_integer_value(v));
    } else if (json_is_string(v) && json_string_length(v) < textlen) {
        snprintf(text, textlen, "%s", json_string_value(v));
    } else {
        return -1;
    }
    if (parse_unix_seconds(text, strlen(text), &n) < 0)
        return -1;
    *ms = n > 1000000000000LL ? n : n * 1000;
    return 0;
}

static int check_shiptify(const struct verify_spec *spec, const struct verify_secret *secrets,
                          size_t nsecrets, const struct verify_request *req, char *reason,
                          size_t reasonlen) {
    json_t *body = json_loadb((const char *)req->body, req->body_len, 0, NULL);
    json_t *token, *sig;
    char ts[24];
    int64_t ts_ms, delta;
    unsigned char want[DIGEST_LEN];
    int rc = -1;

    if (!json_is_object(body)) {
        fail(reason, reasonlen, "%s", "body is not a JSON object");
        goto done;
    }
    token = json_object_get(body, "token");
    sig = json_object_get(body, "signature");
    if (!json_object_get(body, "timestamp") || !token || !sig) {
        fail(reason, reasonlen, "%s", "missing timestamp, token or signature in the body");
        goto done;
    }
    if (shiptify_timestamp(json_object_get(body, "timestamp"), ts, sizeof ts, &ts_ms) < 0) {
        fail(reason, reasonlen, "%s", "malformed timestamp in the body");
        goto done;
    }
    if (!json_is_string(token) || json_string_length(token) == 0) {
        fail(reason, reasonlen, "%s", "malformed token in the body");
        goto done;
    }
    if (!json_is_string(sig) ||
        decode_digest(json_string_value(sig), json_string_length(sig), VERIFY_HEX, want) < 0) {
        fail(reason, reasonlen, "%s", "bad hex in the body's signature");
        goto done;
    }
    delta = req->now_ms - ts_ms;
    if (delta < 0)
        delta = -delta;
    if (delta > spec->tolerance_ms) {
        fail(reason, reasonlen, "%s", "timestamp outside tolerance");
        goto done;
    }
    struct hmac_part parts[] = {{ts, strlen(ts)},
                                {json_string_value(token), json_string_length(token)}};
    if (!any_secret_matches(secrets, nsecrets, parts, 2, want)) {
        fail(reason, reasonlen, "%s", "no secret matched the signature");
        goto done;
    }
    rc = 0;
done:
    json_decref(body);
    return rc;
}

int verify_shiptify_token(const unsigned char *body, size_t len, char *out, size_t outlen) {
    json_t *j = json_loadb((const char *)body, len, 0, NULL);
    json_t *token = json_object_get(j, "token");
    int rc = -1;

    if (json_is_string(token) && json_string_length(token) > 0 &&
        json_string_length(token) < outlen &&
        !memchr(json_string_value(token), '\0', json_string_length(token))) {
        memcpy(out, json_string_value(token), json_string_length(token) + 1);
        rc = 0;
    }
    json_decref(j);
    return rc;
}

/* ---- ShipEngine: RSA-SHA256 over "timestamp.body" ---- */

static int two_digits(const char *s, int *out) {
    if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]))
        return -1;
    *out = (s[0] - '0') * 10 + (s[1] - '0');
    return 0;
}

int verify_iso8601_ms(const char *s, int64_t *ms) {
    int year = 0, mon, day, hh, mm, ss, frac_ms = 0, off_min = 0;
    int64_t days;

    for (int i = 0; i < 4; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        year = year * 10 + (s[i] - '0');
    }
    s += 4;
    if (*s++ != '-' || two_digits(s, &mon) < 0 || s[2] != '-' || two_digits(s + 3, &day) < 0)
        return -1;
    s += 5;
    if ((*s != 'T' && *s != 't' && *s != ' ') || two_digits(s + 1, &hh) < 0 || s[3] != ':' ||
        two_digits(s + 4, &mm) < 0 || s[6] != ':' || two_digits(s + 7, &ss) < 0)
        return -1;
    s += 9;
    if (*s == '.') {
        int scale = 100, digits = 0;
        for (s++; isdigit((unsigned char)*s); s++, digits++) {
            frac_ms += (*s - '0') * scale;
            scale /= 10;
        }
        if (!digits)
            return -1;
    }
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        int oh, om, sign = *s == '-' ? -1 : 1;
        if (two_digits(s + 1, &oh) < 0 || s[3] != ':' || two_digits(s + 4, &om) < 0 || oh > 23 ||
            om > 59)
            return -1;
        off_min = sign * (oh * 60 + om);
        s += 6;
    } else {
        return -1;
    }
    if (*s || mon < 1 || mon > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60)
        return -1;
    /* Days from the civil date (proleptic Gregorian), Howard Hinnant's way. */
    {
        int y = year - (mon <= 2);
        int era = (y >= 0 ? y : y - 399) / 400;
        int yoe = y - era * 400;
        int doy = (153 * (mon + (mon > 2 ? -3 : 9)) + 2) / 5 + day - 1;
        int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        days = (int64_t)era * 146097 + doe - 719468;
    }
    *ms = ((days * 86400 + hh * 3600 + mm * 60 + ss) - (int64_t)off_min * 60) * 1000 + frac_ms;
    return 0;
}

#define RSA_SIG_MAX 1024 /* bytes: up to 8192-bit keys */

static int check_shipengine(const struct verify_spec *spec, const struct verify_request *req,
                            char *reason, size_t reasonlen) {
    const char *sig = req->header(req->header_ctx, "x-shipengine-rsa-sha256-signature");
    const char *kid = req->header(req->header_ctx, "x-shipengine-rsa-sha256-key-id");
    const char *ts = req->header(req->header_ctx, "x-shipengine-timestamp");
    unsigned char raw[RSA_SIG_MAX];
    EVP_MD_CTX *md = NULL;
    EVP_PKEY *key;
    int64_t ts_ms, delta;
    long n;
    int rc = -1;

    if (!sig)
        return fail(reason, reasonlen, "missing header %s", "x-shipengine-rsa-sha256-signature");
    if (!kid)
        return fail(reason, reasonlen, "missing header %s", "x-shipengine-rsa-sha256-key-id");
    if (!ts)
        return fail(reason, reasonlen, "missing header %s", "x-shipengine-timestamp");
    if (verify_iso8601_ms(ts, &ts_ms) < 0)
        return fail(reason, reasonlen, "malformed %s", "x-shipengine-timestamp");
    delta = req->now_ms - ts_ms;
    if (delta < 0)
        delta = -delta;
    if (delta > spec->tolerance_ms)
        return fail(reason, reasonlen, "%s", "timestamp outside tolerance");
    n = util_base64_decode(sig, strlen(sig), raw, sizeof raw);
    if (n <= 0)
        return fail(reason, reasonlen, "bad base64 in %s", "x-shipengine-rsa-sha256-signature");
    key = req->key ? req->key(req->key_ctx, kid) : NULL;
    if (!key) {
        fail(reason, reasonlen, "%s", "unknown key id");
        return VERIFY_EUNKNOWN_KEY;
    }
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestVerifyUpdate(md, ts, strlen(ts)) != 1 ||
        EVP_DigestVerifyUpdate(md, ".", 1) != 1 ||
        (req->body_len && EVP_DigestVerifyUpdate(md, req->body, req->body_len) != 1)) {
        fail(reason, reasonlen, "%s", "RSA verification could not run");
        goto done;
    }
    if (EVP_DigestVerifyFinal(md, raw, (size_t)n) != 1) {
        fail(reason, reasonlen, "%s", "RSA signature did not verify");
        goto done;
    }
    rc = 0;
done:
    EVP_MD_CTX_free(md);
    return rc;
}

int verify_rsa_sign(EVP_PKEY *key, const char *timestamp, const void *body, size_t body_len,
                    char **out) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *sig = NULL;
    size_t siglen = 0;
    int rc = -1;

    *out = NULL;
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSignUpdate(md, timestamp, strlen(timestamp)) != 1 ||
        EVP_DigestSignUpdate(md, ".", 1) != 1 ||
        (body_len && EVP_DigestSignUpdate(md, body, body_len) != 1) ||
        EVP_DigestSignFinal(md, NULL, &siglen) != 1 || !(sig = malloc(siglen)) ||
        EVP_DigestSignFinal(md, sig, &siglen) != 1 || !(*out = malloc(4 * ((siglen + 2) / 3) + 1)))
        goto done;
    util_base64_encode(sig, siglen, *out);
    rc = 0;
done:
    free(sig);
    EVP_MD_CTX_free(md);
    return rc;
}

int verify_check(const struct verify_spec *spec, const struct verify_secret *secrets,
                 size_t nsecrets, const struct verify_request *req, char *reason,
                 size_t reasonlen) {
    switch (spec->kind) {
    case VERIFY_NONE:
        return 0;
    case VERIFY_HMAC:
        return check_hmac(spec, secrets, nsecrets, req, reason, reasonlen);
    case VERIFY_STANDARD:
        return check_standard(spec, secrets, nsecrets, req, reason, reasonlen);
    case VERIFY_STRIPE:
        return check_stripe(spec, secrets, nsecrets, req, reason, reasonlen);
    case VERIFY_SHIPTIFY:
        return check_shiptify(spec, secrets, nsecrets, req, reason, reasonlen);
    case VERIFY_SHIPENGINE:
        return check_shipengine(spec, req, reason, reasonlen);
    default:
        return fail(reason, reasonlen, "%s", "unsupported verification scheme");
    }
}

unsigned char *verify_whsec_decode(const char *secret, size_t *keylen) {
    size_t len;
    unsigned char *key;
    long n;

    if (strncmp(secret, "whsec_", 6) == 0)
        secret += 6;
    len = strlen(secret);
    if (len == 0)
        return NULL;
    key = malloc(len);
    if (!key)
        return NULL;
    n = util_base64_decode(secret, len, key, len);
    if (n <= 0) {
        free(key);
        return NULL;
    }
    *keylen = (size_t)n;
    return key;
}

/* ---- outbound ---- */

int verify_sign_scheme_parse(const char *name, enum verify_sign_scheme *out) {
    static const struct {
        const char *name;
        enum verify_sign_scheme scheme;
    } names[] = {{"standard", SIGN_STANDARD},
                 {"hex", SIGN_HEX},
                 {"atoship", SIGN_ATOSHIP},
                 {"aftership", SIGN_AFTERSHIP},
                 {"none", SIGN_NONE}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name) == 0) {
            *out = names[i].scheme;
            return 0;
        }
    }
    return -1;
}

int verify_sign(enum verify_sign_scheme scheme, const struct verify_secret *secrets,
                size_t nsecrets, const char *msg_id, int64_t ts_s, const void *body,
                size_t body_len, verify_add_header_fn add, void *ctx) {
    unsigned char mac[DIGEST_LEN];
    char text[DIGEST_LEN * 2 + 1], ts[24];
    struct util_buf list = {0};
    int rc = -1;

    if (scheme == SIGN_NONE)
        return 0;
    if (nsecrets == 0)
        return -1;
    if (scheme == SIGN_STANDARD) {
        snprintf(ts, sizeof ts, "%lld", (long long)ts_s);
        struct hmac_part parts[] = {
            {msg_id, strlen(msg_id)}, {".", 1}, {ts, strlen(ts)}, {".", 1}, {body, body_len}};
        for (size_t i = 0; i < nsecrets; i++) {
            if (hmac_parts(secrets[i].key, secrets[i].len, parts, 5, mac) < 0)
                goto done;
            util_base64_encode(mac, DIGEST_LEN, text);
            if (util_buf_printf(&list, "%sv1,%s", i ? " " : "", text) < 0)
                goto done;
        }
        add(ctx, "webhook-id", msg_id);
        add(ctx, "webhook-timestamp", ts);
        add(ctx, "webhook-signature", list.p);
        rc = 0;
        goto done;
    }
    if (verify_hmac_sha256(secrets[0].key, secrets[0].len, body, body_len, mac) < 0)
        goto done;
    switch (scheme) {
    case SIGN_HEX:
        util_hex_encode(mac, DIGEST_LEN, text);
        add(ctx, "X-Signature", text);
        break;
    case SIGN_ATOSHIP:
        util_hex_encode(mac, DIGEST_LEN, text);
        add(ctx, "X-Atoship-Signature", text);
        break;
    case SIGN_AFTERSHIP:
        util_base64_encode(mac, DIGEST_LEN, text);
        add(ctx, "aftership-hmac-sha256", text);
        break;
    default:
        goto done;
    }
    rc = 0;
done:
    util_buf_free(&list);
    return rc;
}
