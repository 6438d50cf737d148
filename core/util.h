/* util.h -- small helpers shared by every module: durations and sizes,
 * hex/base64, constant-time compare, clocks, ids, a growable byte buffer.
 * None of these allocate unless stated; none log.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_UTIL_H
#define CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define UNUSED(x) ((void)(x))

#define WAYBILL_VERSION "0.1.0"

/* ---- durations and sizes ---- */

/* Parses "500ms", "30s", "5m", "2h", "1d" (or a bare number of seconds,
 * possibly fractional) into milliseconds. Returns 0, or -1 on a malformed,
 * negative or overflowing value (*ms untouched). */
int util_duration_parse(const char *s, int64_t *ms);

/* Parses "1MiB", "512KiB", "1GiB", "64kB"/"1MB" (powers of 1000), or a bare
 * number of bytes. Returns 0 or -1. */
int util_size_parse(const char *s, size_t *bytes);

/* ---- encodings ---- */

/* Writes 2*n lowercase hex digits and a NUL to out (capacity >= 2*n+1). */
void util_hex_encode(const unsigned char *in, size_t n, char *out);

/* Decodes exactly len hex digits (either case) into out. Returns the number
 * of bytes written, or -1 on odd length, a non-hex digit or cap too small. */
long util_hex_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/* Standard base64 with padding; writes a NUL. Returns the length written
 * (out needs 4*((n+2)/3)+1 bytes). */
size_t util_base64_encode(const unsigned char *in, size_t n, char *out);

/* Decodes standard base64 (padding optional, no whitespace). Returns bytes
 * written, or -1 on a bad character, bad length or cap too small. */
long util_base64_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/* Constant-time equality of two n-byte buffers: 1 if equal, else 0. */
int util_ct_equal(const void *a, const void *b, size_t n);

/* ---- clocks and ids ---- */

int64_t util_now_ms(void);  /* wall clock, Unix epoch ms */
int64_t util_mono_ms(void); /* monotonic ms, for deadlines and latencies */

/* Formats a Unix ms time as RFC 3339 UTC "2026-11-23T16:03:38.123Z" (or
 * without millis when they are 0). out needs 32 bytes. */
void util_time_rfc3339(int64_t ms, char *out, size_t outlen);

/* Reads text as a time: Unix ms (digits only, at most 15) or RFC 3339
 * "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)" ('t', 'z' and a space
 * for 'T' too; the fraction cut to ms), years 1970 to 9999. Returns 0 with
 * *ms, or -1 when text is neither. */
int util_time_parse(const char *text, int64_t *ms);

/* 1 when text matches glob pattern, where '*' matches any run of
 * characters (none included) and every other character itself; else 0.
 * The one matcher of event types (rules' on() patterns, subscriptions, and
 * the admin API's type filter, which the store gives SQL in this sense). */
int util_glob_match(const char *pattern, const char *text);

/* Length of the valid UTF-8 sequence at s (n bytes available, n >= 1): 1
 * to 4, or 0 when the bytes there are not one (overlong forms, surrogates
 * and code points past U+10FFFF included). The one UTF-8 check: the JSON
 * encoder and decoder and the admin API's text all use it. Inline: the
 * encoder calls it per byte of every string. */
static inline size_t util_utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0)) /* overlong, surrogate */
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90)) /* overlong, > U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

/* url for a message: the password of its userinfo ("scheme://user:pw@")
 * and the value of a "password=" query parameter (libpq's URIs take one)
 * replaced by "***"; anything else copied as it is (cut to outlen; NULL
 * gives ""). Returns out. */
const char *util_url_redact(const char *url, char *out, size_t outlen);

/* 1 when name is an HTTP header name (an RFC 9110 token: letters, digits
 * and !#$%&'*+-.^_`|~, at least one), else 0. */
int util_header_name_ok(const char *name);

/* 1 when value (len bytes) can be a header value: no CR, LF or NUL (no
 * header injection), else 0. */
int util_header_value_ok(const char *value, size_t len);

/* 1 when name is a header no endpoint option or rule may set, else 0: the
 * one list. waybill's own (X-Waybill-*), the signature schemes'
 * (webhook-*), and framing (Content-Length, Transfer-Encoding, Host,
 * Connection, Expect). Case-insensitive. */
int util_header_reserved(const char *name);

/* 1 when url is an http:// or https:// URL with a host (right after the
 * "://") and no whitespace or control characters, as libcurl's URL parser
 * (curl_url) reads it; else
 * 0. The one URL check: endpoints in the config, subscriptions in the
 * admin API. */
int util_http_url_ok(const char *url);

#define UTIL_ID_MAX 40
/* Writes prefix + 26 Crockford base32 chars (48-bit ms time, 80 random bits:
 * sortable by creation time, like ULID) and a NUL. out needs strlen(prefix)+27.
 * e.g. util_id_new("evt_", buf, sizeof buf). */
void util_id_new(const char *prefix, char *out, size_t outlen);

/* The same format, but derived, not random: the time part is from's (an id
 * of that format; now when from is not one) and the rest comes from a hash
 * of from, salt and n. The same arguments give the same id: a delivery
 * made again for the same event, endpoint and place gets the id it had. */
void util_id_derive(const char *prefix, const char *from, const char *salt, unsigned n, char *out,
                    size_t outlen);

/* The same with the time part given (Unix ms) and the rest from a hash of
 * key and n. */
void util_id_derive_at(const char *prefix, int64_t at_ms, const char *key, unsigned n, char *out,
                       size_t outlen);

/* ---- growable buffer ---- */

/* Invariant: p is NULL (len == cap == 0) or points to cap bytes, of which
 * len are used and p[len] == '\0' (so text stays a C string). */
struct util_buf {
    char *p;
    size_t len, cap;
};

/* Each returns 0, or -1 on allocation failure (buffer unchanged). */
int util_buf_append(struct util_buf *b, const void *data, size_t n);
int util_buf_appends(struct util_buf *b, const char *s);
int util_buf_printf(struct util_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void util_buf_reset(struct util_buf *b); /* len = 0, keeps the memory */
void util_buf_free(struct util_buf *b);  /* frees, back to {NULL,0,0} */

/* ---- strings ---- */

/* strdup that returns NULL for NULL. */
char *util_strdup(const char *s);

/* Reads a whole file into a new NUL-terminated buffer (caller frees).
 * Returns NULL with errno set on failure. */
char *util_file_read(const char *path, size_t *len);

#endif
