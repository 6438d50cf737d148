/* test_verify.c -- HMAC schemes, Standard Webhooks vectors, Stripe-style
 * headers, outbound signing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness.h"
#include "util.h"
#include "verify.h"

/* A request's headers for the header callback. */
struct hdrs {
    const char *names[4];
    const char *values[4];
};

static const char *hdr_get(void *ctx, const char *name) {
    struct hdrs *h = ctx;
    for (int i = 0; i < 4 && h->names[i]; i++)
        if (strcasecmp(h->names[i], name) == 0)
            return h->values[i];
    return NULL;
}

static struct verify_request request(struct hdrs *h, const char *body, int64_t now_ms) {
    struct verify_request r = {hdr_get, h,   (const unsigned char *)body, strlen(body), now_ms,
                               NULL,    NULL};
    return r;
}

static void test_hmac_vector(void) {
    unsigned char mac[32];
    char hex[65];
    const char *msg = "The quick brown fox jumps over the lazy dog";
    CHECK_INT_EQ(verify_hmac_sha256((const unsigned char *)"key", 3, msg, strlen(msg), mac), 0);
    util_hex_encode(mac, 32, hex);
    CHECK_STR_EQ(hex, "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
}

static void test_hmac_presets(void) {
    struct verify_spec spec;
    struct verify_secret secrets[2] = {{(unsigned char *)"old", 3}, {(unsigned char *)"key", 3}};
    const char *body = "The quick brown fox jumps over the lazy dog";
    char reason[128];
    struct hdrs h = {{"X-Atoship-Signature"},
                     {"f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"}};
    struct verify_request r = request(&h, body, 0);

    CHECK_INT_EQ(verify_preset("atoship", &spec), 0);
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), 0);
    /* only the first (wrong) secret */
    CHECK_INT_EQ(verify_check(&spec, secrets, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "no secret matched the signature");
    /* uppercase hex is accepted */
    h.values[0] = "F7BC83F430538424B13298E6AA6FB143EF4D59A14946175997479DBC2D1A3CD8";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), 0);
    h.values[0] = "f7bc83f4zz";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "bad hex in X-Atoship-Signature");
    h.names[0] = "X-Other";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "missing header X-Atoship-Signature");

    /* generic = X-Signature; aftership = base64 */
    CHECK_INT_EQ(verify_preset("generic", &spec), 0);
    CHECK_STR_EQ(spec.header, "X-Signature");
    CHECK_INT_EQ(verify_preset("aftership", &spec), 0);
    h.names[0] = "aftership-hmac-sha256";
    h.values[0] = "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg=";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), 0);
    h.values[0] = "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPN!=";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "bad base64 in aftership-hmac-sha256");

    /* easypost: prefix */
    CHECK_INT_EQ(verify_preset("easypost", &spec), 0);
    h.names[0] = "X-Hmac-Signature";
    h.values[0] =
        "hmac-sha256-hex=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), 0);
    h.values[0] = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
    CHECK_INT_EQ(verify_check(&spec, secrets, 2, &r, reason, sizeof reason), -1);
    CHECK(verify_preset("nonsense", &spec) == -1);
}

/* The Standard Webhooks reference vector (standard-webhooks library tests). */
static void test_standard_vector(void) {
    struct verify_spec spec;
    size_t keylen = 0;
    unsigned char *key = verify_whsec_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &keylen);
    struct verify_secret secret = {key, keylen};
    const char *body = "{\"test\": 2432232314}";
    char reason[128];
    struct hdrs h = {{"webhook-id", "webhook-timestamp", "webhook-signature"},
                     {"msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
                      "v1,bm9ldHUjKzFob2VudXRob2VodWUzMjRvdWVvdW9ldQo= "
                      "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}};
    struct verify_request r = request(&h, body, 1614265330LL * 1000);

    CHECK(key != NULL);
    CHECK_INT_EQ(verify_preset("standard", &spec), 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    /* stale timestamp */
    r.now_ms = (1614265330LL + 301) * 1000;
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "timestamp outside tolerance");
    r.now_ms = 1614265330LL * 1000;
    /* tampered body */
    r.body = (const unsigned char *)"{\"test\": 2432232315}";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    r.body = (const unsigned char *)body;
    h.values[2] = "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "no v1 signature in webhook-signature");
    h.values[1] = "16142x5330";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "malformed webhook-timestamp");

    CHECK(verify_whsec_decode("whsec_not*base64", &keylen) == NULL);
    free(key);
}

struct collected {
    char names[4][32];
    char values[4][256];
    int n;
};

static void collect(void *ctx, const char *name, const char *value) {
    struct collected *c = ctx;
    if (c->n < 4) {
        snprintf(c->names[c->n], sizeof c->names[0], "%s", name);
        snprintf(c->values[c->n], sizeof c->values[0], "%s", value);
        c->n++;
    }
}

static void test_sign(void) {
    size_t keylen = 0;
    unsigned char *key = verify_whsec_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &keylen);
    struct verify_secret two[2] = {{key, keylen}, {(unsigned char *)"key", 3}};
    struct collected c = {0};
    enum verify_sign_scheme scheme;
    const char *body = "{\"test\": 2432232314}";

    CHECK_INT_EQ(verify_sign_scheme_parse("standard", &scheme), 0);
    CHECK_INT_EQ(verify_sign(scheme, two, 1, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                             strlen(body), collect, &c),
                 0);
    CHECK_INT_EQ(c.n, 3);
    CHECK_STR_EQ(c.names[0], "webhook-id");
    CHECK_STR_EQ(c.values[1], "1614265330");
    CHECK_STR_EQ(c.values[2], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /* rotation: one entry per secret */
    memset(&c, 0, sizeof c);
    verify_sign(scheme, two, 2, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body),
                collect, &c);
    CHECK(strncmp(c.values[2], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,", 51) == 0);

    const char *fox = "The quick brown fox jumps over the lazy dog";
    memset(&c, 0, sizeof c);
    CHECK_INT_EQ(verify_sign_scheme_parse("hex", &scheme), 0);
    verify_sign(scheme, two + 1, 1, "x", 0, fox, strlen(fox), collect, &c);
    CHECK_STR_EQ(c.names[0], "X-Signature");
    CHECK_STR_EQ(c.values[0], "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
    CHECK_INT_EQ(verify_sign_scheme_parse("bogus", &scheme), -1);
    free(key);
}

static void test_stripe(void) {
    struct verify_spec spec;
    struct verify_secret secret = {(unsigned char *)"key", 3};
    unsigned char mac[32];
    char hex[65], header[256], reason[128];
    const char *body = "{\"a\":1}";
    const char *signed_text = "1700000000.{\"a\":1}";
    struct hdrs h = {{"Stripe-Signature"}, {header}};
    struct verify_request r = request(&h, body, 1700000000LL * 1000);

    verify_hmac_sha256(secret.key, 3, signed_text, strlen(signed_text), mac);
    util_hex_encode(mac, 32, hex);
    snprintf(header, sizeof header, "t=1700000000,v1=%064d,v1=%s", 0, hex);
    CHECK_INT_EQ(verify_preset("stripe", &spec), 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    snprintf(header, sizeof header, "v1=%s", hex);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "missing or malformed t= in Stripe-Signature");
    snprintf(header, sizeof header, "t=1700000000");
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "missing v1= in Stripe-Signature");
}

/* The other cases of the standard-webhooks libraries' tests
 * (libraries/javascript/src/webhook.test.ts and the Python/Go/Ruby/C#
 * suites) that carry fixed values: the published vector's signature among
 * the suites' wrong-key "v1,Ceo5..." and ignored "v2," entries, the secret
 * without its whsec_ prefix, a partial "v1," entry, a malformed timestamp,
 * timestamps just past the 5-minute tolerance either way. */
static void test_standard_library_cases(void) {
    struct verify_spec spec;
    size_t keylen = 0, rawlen = 0;
    unsigned char *key = verify_whsec_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &keylen);
    unsigned char *raw = verify_whsec_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &rawlen);
    struct verify_secret secret = {key, keylen}, unbranded = {raw, rawlen};
    const char *body = "{\"test\": 2432232314}";
    char reason[128];
    struct hdrs h = {{"webhook-id", "webhook-timestamp", "webhook-signature"},
                     {"msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
                      "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= "
                      "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= "
                      "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= "
                      "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="}};
    struct verify_request r = request(&h, body, 1614265330LL * 1000);

    verify_preset("standard", &spec);
    CHECK(key && raw && keylen == rawlen && memcmp(key, raw, keylen) == 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    CHECK_INT_EQ(verify_check(&spec, &unbranded, 1, &r, reason, sizeof reason), 0);
    h.values[2] = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "no secret matched the signature");
    h.values[2] = "v1,";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    h.values[2] = "v1,g0hM9S";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    h.values[2] = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    h.values[1] = "teadwd";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "malformed webhook-timestamp");
    h.values[1] = "1614265330";
    r.now_ms = (1614265330LL - 301) * 1000; /* the message is from the future */
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "timestamp outside tolerance");
    r.now_ms = (1614265330LL + 299) * 1000;
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    /* a signature over another id does not verify */
    h.values[0] = "msg_other";
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    free(key);
    free(raw);
}

/* Shiptify: hex HMAC of timestamp text || token, both read from the body. */
static void test_shiptify(void) {
    struct verify_spec spec;
    struct verify_secret secret = {(unsigned char *)"key", 3};
    unsigned char mac[32];
    char hex[65], body[512], reason[128], token[64];
    struct hdrs h = {{NULL}, {NULL}};
    struct verify_request r;
    const char *msg = "1643117545594abc";

    verify_hmac_sha256(secret.key, 3, msg, strlen(msg), mac);
    util_hex_encode(mac, 32, hex);
    CHECK_INT_EQ(verify_preset("shiptify", &spec), 0);
    /* the timestamp in milliseconds (> 10^12), as a number */
    snprintf(body, sizeof body,
             "{\"event_type\":\"create_shipment\",\"timestamp\":1643117545594,"
             "\"token\":\"abc\",\"signature\":\"%s\"}",
             hex);
    r = request(&h, body, 1643117545594LL + 1000);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    CHECK_INT_EQ(
        verify_shiptify_token((const unsigned char *)body, strlen(body), token, sizeof token), 0);
    CHECK_STR_EQ(token, "abc");
    CHECK_INT_EQ(verify_shiptify_token((const unsigned char *)body, strlen(body), token, 3), -1);
    r.now_ms = 1643117545594LL + 301 * 1000;
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "timestamp outside tolerance");
    /* as a string, in seconds */
    verify_hmac_sha256(secret.key, 3, "1643117545abc", 13, mac);
    util_hex_encode(mac, 32, hex);
    snprintf(body, sizeof body,
             "{\"timestamp\":\"1643117545\",\"token\":\"abc\",\"signature\":\"%s\"}", hex);
    r = request(&h, body, 1643117545000LL);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), 0);
    snprintf(body, sizeof body,
             "{\"timestamp\":\"1643117545\",\"token\":\"abd\",\"signature\":\"%s\"}", hex);
    r = request(&h, body, 1643117545000LL);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "no secret matched the signature");
    r = request(&h, "{\"timestamp\":1.5,\"token\":\"a\",\"signature\":\"00\"}", 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "malformed timestamp in the body");
    r = request(&h, "{\"timestamp\":1,\"token\":\"a\",\"signature\":\"0g\"}", 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "bad hex in the body's signature");
    r = request(&h, "{\"timestamp\":1,\"token\":\"a\"}", 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
    CHECK_STR_EQ(reason, "missing timestamp, token or signature in the body");
    r = request(&h, "[1]", 0);
    CHECK_INT_EQ(verify_check(&spec, &secret, 1, &r, reason, sizeof reason), -1);
}

static void test_iso8601(void) {
    int64_t ms = 0;
    CHECK_INT_EQ(verify_iso8601_ms("1970-01-01T00:00:00Z", &ms), 0);
    CHECK(ms == 0);
    CHECK_INT_EQ(verify_iso8601_ms("2024-01-15T10:30:00Z", &ms), 0);
    CHECK(ms == 1705314600000LL);
    CHECK_INT_EQ(verify_iso8601_ms("2024-01-15T12:30:00.250+02:00", &ms), 0);
    CHECK(ms == 1705314600250LL);
    CHECK_INT_EQ(verify_iso8601_ms("2018-09-12T19:29:18.69Z", &ms), 0);
    CHECK(ms == 1536780558690LL);
    CHECK_INT_EQ(verify_iso8601_ms("2024-02-29T00:00:00-00:30", &ms), 0);
    CHECK(ms == 1709166600000LL);
    CHECK_INT_EQ(verify_iso8601_ms("2024-01-15 10:30:00", &ms), -1);
    CHECK_INT_EQ(verify_iso8601_ms("2024-13-15T10:30:00Z", &ms), -1);
    CHECK_INT_EQ(verify_iso8601_ms("2024-01-15T10:30:00Zjunk", &ms), -1);
    CHECK_INT_EQ(verify_iso8601_ms("yesterday", &ms), -1);
    CHECK_INT_EQ(verify_iso8601_ms("", &ms), -1);
}

int main(void) {
    test_standard_library_cases();
    test_shiptify();
    test_iso8601();
    test_hmac_vector();
    test_hmac_presets();
    test_standard_vector();
    test_sign();
    test_stripe();
    return harness_report();
}
