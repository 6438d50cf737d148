/* verify.h -- inbound signature checks and outbound signing (OpenSSL EVP).
 * Every comparison of a signature is constant-time. Secrets and signatures
 * never appear in the reasons returned here; reasons are for the log only.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_VERIFY_H
#define CORE_VERIFY_H

#include <stddef.h>
#include <stdint.h>

/* ---- inbound ---- */

enum verify_kind {
    VERIFY_NONE,      /* accepted only with insecure = true (config enforces) */
    VERIFY_HMAC,      /* HMAC-SHA256 of the raw body in one header (generic, atoship,
                         aftership, easypost and the hmac-sha256 table form) */
    VERIFY_STANDARD,  /* Standard Webhooks v1 */
    VERIFY_STRIPE,    /* t=<unix>,v1=<hex> over "t.body" */
    VERIFY_SHIPTIFY,  /* in the body: hex HMAC of timestamp text || token */
    VERIFY_SHIPENGINE /* RSA-SHA256 over "timestamp.body", JWKS keys */
};

enum verify_encoding { VERIFY_HEX, VERIFY_BASE64 };

/* A resolved verification rule (config turns a preset name into one). */
struct verify_spec {
    enum verify_kind kind;
    char header[64]; /* VERIFY_HMAC / VERIFY_STRIPE: header name */
    enum verify_encoding encoding;
    char prefix[32];      /* e.g. "sha256=", "hmac-sha256-hex=", or "" */
    int64_t tolerance_ms; /* schemes with a timestamp */
};

/* A secret as raw key bytes (already whsec_-decoded where the scheme says). */
struct verify_secret {
    unsigned char *key;
    size_t len;
};

/* Header lookup supplied by the caller (case-insensitive name); returns
 * NULL when absent. The string is borrowed for the duration of the call. */
typedef const char *(*verify_header_fn)(void *ctx, const char *name);

/* Public-key lookup by key id (VERIFY_SHIPENGINE: the JWKS kid); returns
 * NULL when unknown. The key is borrowed for the duration of the call. */
struct evp_pkey_st;
typedef struct evp_pkey_st *(*verify_key_fn)(void *ctx, const char *kid);

struct verify_request {
    verify_header_fn header;
    void *header_ctx;
    const unsigned char *body;
    size_t body_len;
    int64_t now_ms;
    verify_key_fn key; /* VERIFY_SHIPENGINE only; NULL: no keys */
    void *key_ctx;
};

/* verify_check's answer when the signature names a key id the lookup does
 * not know (the caller may refetch its keys and ask again). */
#define VERIFY_EUNKNOWN_KEY (-2)

/* Fills spec from a preset name ("generic", "atoship", "aftership",
 * "easypost", "stripe", "shippo" (stripe's scheme in Shippo-Auth-Signature),
 * "standard", "shiptify", "shipengine", "none").
 * Returns 0, or -1 for an unknown name. tolerance_ms is set to 5 minutes. */
int verify_preset(const char *name, struct verify_spec *spec);

/* Checks the request against spec with each secret in turn (rotation).
 * Returns 0 when one matches, -1 otherwise with a short reason for the log
 * ("missing header X-Signature", "bad hex", "no secret matched",
 * "timestamp outside tolerance"). SHIPTIFY reads timestamp, token and
 * signature from the JSON body (the caller checks the token as a nonce
 * with verify_shiptify_token). SHIPENGINE looks the key up by the
 * x-shipengine-rsa-sha256-key-id header through req->key and returns
 * VERIFY_EUNKNOWN_KEY (with a reason) when the lookup has no such key. */
int verify_check(const struct verify_spec *spec, const struct verify_secret *secrets,
                 size_t nsecrets, const struct verify_request *req, char *reason, size_t reasonlen);

/* The token of a Shiptify body (a JSON object with a string "token") copied
 * into out. Returns 0, or -1 when absent, not a string or longer than
 * outlen - 1. */
int verify_shiptify_token(const unsigned char *body, size_t len, char *out, size_t outlen);

/* Parses an ISO-8601 / RFC 3339 time ("2024-01-15T10:30:00Z",
 * "...:00.123+02:00") into Unix ms. Returns 0 or -1. */
int verify_iso8601_ms(const char *s, int64_t *ms);

/* Signs "<timestamp>.<body>" with an RSA private key the ShipEngine way:
 * base64 RSA-SHA256 PKCS#1 v1.5 into out (new, caller frees).
 * Returns 0 or -1. */
int verify_rsa_sign(struct evp_pkey_st *key, const char *timestamp, const void *body,
                    size_t body_len, char **out);

/* HMAC-SHA256 of msg under key into out. Returns 0 or -1. */
int verify_hmac_sha256(const unsigned char *key, size_t keylen, const void *msg, size_t len,
                       unsigned char out[32]);

/* Decodes a Standard Webhooks secret: "whsec_<base64>" -> key bytes
 * (new, caller frees). A secret without the prefix is base64 too, as the
 * reference libraries treat it. Returns NULL when it is not base64. */
unsigned char *verify_whsec_decode(const char *secret, size_t *keylen);

/* ---- outbound ---- */

enum verify_sign_scheme {
    SIGN_NONE,
    SIGN_STANDARD, /* webhook-id, webhook-timestamp, webhook-signature: v1,<b64> ... */
    SIGN_HEX,      /* X-Signature: <hex> */
    SIGN_ATOSHIP,  /* X-Atoship-Signature: <hex> */
    SIGN_AFTERSHIP /* aftership-hmac-sha256: <base64> */
};

/* Maps "standard", "hex", "atoship", "aftership", "none". Returns 0 or -1. */
int verify_sign_scheme_parse(const char *name, enum verify_sign_scheme *out);

/* Called once per header to add. name and value are borrowed for the call. */
typedef void (*verify_add_header_fn)(void *ctx, const char *name, const char *value);

/* Produces the signature headers of scheme for body. msg_id (the delivery
 * id) and ts_s (Unix seconds) are used by SIGN_STANDARD only; with several
 * secrets it emits one v1 entry per secret, space-separated in one header.
 * For the single-header schemes the first secret signs. Returns 0 or -1. */
int verify_sign(enum verify_sign_scheme scheme, const struct verify_secret *secrets,
                size_t nsecrets, const char *msg_id, int64_t ts_s, const void *body,
                size_t body_len, verify_add_header_fn add, void *ctx);

#endif
