/* test_jwks.c -- JWKS parsing (RSA keys from n and e) and ShipEngine's
 * RSA-SHA256 check with keys looked up by kid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "harness.h"
#include "jwks.h"
#include "util.h"
#include "verify.h"

/* base64url without padding of a big number. */
static void b64url_bn(const BIGNUM *bn, char *out) {
    unsigned char raw[1024];
    int n = BN_bn2bin(bn, raw);
    size_t len = util_base64_encode(raw, (size_t)n, out);
    for (size_t i = 0; i < len; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    while (len && out[len - 1] == '=')
        out[--len] = '\0';
}

/* A JWKS document holding key under kid (plus keys the parser skips). */
static void jwks_text(EVP_PKEY *key, const char *kid, char *out, size_t outlen) {
    BIGNUM *n = NULL, *e = NULL;
    char n64[1400], e64[32];
    EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n);
    EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e);
    b64url_bn(n, n64);
    b64url_bn(e, e64);
    snprintf(
        out, outlen,
        "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"ec\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"},"
        "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"},"
        "{\"kty\":\"RSA\",\"kid\":\"%s\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%"
        "s\"}]}",
        kid, n64, e64);
    BN_free(n);
    BN_free(e);
}

struct hdrs {
    const char *names[3];
    const char *values[3];
};

static const char *hdr_get(void *ctx, const char *name) {
    struct hdrs *h = ctx;
    for (int i = 0; i < 3 && h->names[i]; i++)
        if (strcasecmp(h->names[i], name) == 0)
            return h->values[i];
    return NULL;
}

static EVP_PKEY *lookup(void *ctx, const char *kid) {
    return jwks_set_find(ctx, kid);
}

static void test_parse_and_verify(void) {
    EVP_PKEY *key = EVP_RSA_gen(2048), *other = EVP_RSA_gen(2048);
    static char doc[4096];
    char err[256], reason[128], *sig = NULL, *sig_other = NULL;
    const char *body = "{\"resource_type\":\"API_BATCH\"}";
    const char *ts = "2024-01-15T10:30:00Z";
    struct jwks_set *set;
    struct verify_spec spec;

    CHECK(key && other);
    jwks_text(key, "kid-1", doc, sizeof doc);
    set = jwks_set_parse(doc, strlen(doc), err, sizeof err);
    CHECK(set != NULL);
    CHECK_INT_EQ((int)jwks_set_count(set), 1);
    CHECK(jwks_set_find(set, "kid-1") != NULL);
    CHECK(jwks_set_find(set, "ec") == NULL && jwks_set_find(set, "enc") == NULL);

    CHECK_INT_EQ(verify_rsa_sign(key, ts, body, strlen(body), &sig), 0);
    CHECK_INT_EQ(verify_rsa_sign(other, ts, body, strlen(body), &sig_other), 0);
    struct hdrs h = {{"x-shipengine-rsa-sha256-signature", "x-shipengine-rsa-sha256-key-id",
                      "x-shipengine-timestamp"},
                     {sig, "kid-1", ts}};
    struct verify_request r = {
        hdr_get, &h, (const unsigned char *)body, strlen(body), 1705314600000LL + 2000,
        lookup,  set};
    verify_preset("shipengine", &spec);
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), 0);
    /* another key's signature, a tampered body, a stale time, an unknown kid */
    h.values[0] = sig_other;
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "RSA signature did not verify");
    h.values[0] = sig;
    r.body_len--;
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), -1);
    r.body_len++;
    r.now_ms += 301 * 1000;
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "timestamp outside tolerance");
    r.now_ms -= 301 * 1000;
    h.values[1] = "kid-2";
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), VERIFY_EUNKNOWN_KEY);
    h.values[1] = "kid-1";
    h.values[0] = "not base64!";
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "bad base64 in x-shipengine-rsa-sha256-signature");
    h.values[0] = sig;
    h.values[2] = "15/01/2024";
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "malformed x-shipengine-timestamp");
    h.names[2] = "x-other";
    CHECK_INT_EQ(verify_check(&spec, NULL, 0, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "missing header x-shipengine-timestamp");

    free(sig);
    free(sig_other);
    jwks_set_free(set);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void test_bad_documents(void) {
    static const char *const bad[] = {
        "not json",
        "{\"nokeys\":[]}",
        "{\"keys\":{}}",
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", /* 17 bits */
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k\",\"n\":\"!!\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k\",\"n\":\"AQAB\",\"e\":\"\"}]}",
    };
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct jwks_set *set = jwks_set_parse(bad[i], strlen(bad[i]), err, sizeof err);
        CHECK(set == NULL);
        CHECK(err[0] != '\0');
        jwks_set_free(set);
    }
    struct jwks_set *empty = jwks_set_parse("{\"keys\":[]}", 11, err, sizeof err);
    CHECK(empty != NULL && jwks_set_count(empty) == 0);
    jwks_set_free(empty);
    CHECK(jwks_set_load("/nonexistent/jwks.json", err, sizeof err) == NULL);
}

int main(void) {
    test_parse_and_verify();
    test_bad_documents();
    return harness_report();
}
