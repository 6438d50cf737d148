/* util.c -- durations, sizes, hex/base64, constant-time compare, clocks,
 * sortable ids and a growable buffer. No logging, no global state but the
 * random source.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "util.h"

/* ---- durations and sizes ---- */

int util_duration_parse(const char *s, int64_t *ms) {
    char *end;
    double v, unit;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -1;
    if (*end == '\0' || strcmp(end, "s") == 0)
        unit = 1000;
    else if (strcmp(end, "ms") == 0)
        unit = 1;
    else if (strcmp(end, "m") == 0)
        unit = 60e3;
    else if (strcmp(end, "h") == 0)
        unit = 3600e3;
    else if (strcmp(end, "d") == 0)
        unit = 86400e3;
    else
        return -1;
    v *= unit;
    if (v > 9.2e18)
        return -1;
    *ms = (int64_t)llround(v);
    return 0;
}

int util_size_parse(const char *s, size_t *bytes) {
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {
        {"", 1},     {"B", 1},    {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0},
        {"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6},     {"GB", 1e9}};
    char *end;
    double v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            v *= units[i].mult;
            if (v > 1.8e19)
                return -1;
            *bytes = (size_t)v;
            return 0;
        }
    }
    return -1;
}

/* ---- encodings ---- */

void util_hex_encode(const unsigned char *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long util_hex_decode(const char *in, size_t len, unsigned char *out, size_t cap) {
    if (len % 2 || len / 2 > cap)
        return -1;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hex_value((unsigned char)in[i]), lo = hex_value((unsigned char)in[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return (long)(len / 2);
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t util_base64_encode(const unsigned char *in, size_t n, char *out) {
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long util_base64_decode(const char *in, size_t len, unsigned char *out, size_t cap) {
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;

    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)o;
}

int util_ct_equal(const void *a, const void *b, size_t n) {
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* ---- clocks and ids ---- */

int64_t util_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void util_time_rfc3339(int64_t ms, char *out, size_t outlen) {
    time_t secs = (time_t)(ms / 1000);
    int millis = (int)(ms % 1000);
    struct tm tm;
    char base[24];

    if (millis < 0) {
        millis += 1000;
        secs -= 1;
    }
    gmtime_r(&secs, &tm);
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    if (millis)
        snprintf(out, outlen, "%s.%03dZ", base, millis);
    else
        snprintf(out, outlen, "%sZ", base);
}

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, int m, int d) {
    int64_t era, yoe, doy;

    y -= m <= 2;
    era = y / 400; /* y >= 1969 here: no negative division */
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

/* n digits at s as a number, or -1 when one is not a digit. */
static int digits(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int util_time_parse(const char *text, int64_t *ms) {
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = text;
    int y, mo, d, h, mi, sec, frac = 0, scale = 100, off = 0;
    size_t len = text ? strlen(text) : 0;

    if (len && len <= 15 && strspn(text, "0123456789") == len) {
        *ms = strtoll(text, NULL, 10);
        return 0;
    }
    if (len < 20 || (y = digits(p, 4)) < 1970 || p[4] != '-' || (mo = digits(p + 5, 2)) < 1 ||
        mo > 12 || p[7] != '-' || (d = digits(p + 8, 2)) < 1 || d > mdays[mo - 1] ||
        (mo == 2 && d == 29 && (y % 4 || (y % 100 == 0 && y % 400))) || !strchr("Tt ", p[10]) ||
        (h = digits(p + 11, 2)) < 0 || h > 23 || p[13] != ':' || (mi = digits(p + 14, 2)) < 0 ||
        mi > 59 || p[16] != ':' || (sec = digits(p + 17, 2)) < 0 || sec > 60)
        return -1;
    p += 19;
    if (*p == '.') {
        if (p[1] < '0' || p[1] > '9')
            return -1;
        for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac += (*p - '0') * scale;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && (h = digits(p + 1, 2)) >= 0 && h <= 23 && p[3] == ':' &&
               (mi = digits(p + 4, 2)) >= 0 && mi <= 59) {
        off = (*p == '-' ? -1 : 1) * (h * 60 + mi);
        p += 6;
    } else {
        return -1;
    }
    if (*p)
        return -1;
    *ms = ((days_from_civil(y, mo, d) * 86400 + digits(text + 11, 2) * 3600 +
            digits(text + 14, 2) * 60 + sec - off * 60) *
           1000) +
          frac;
    return 0;
}

/* prefix + 10 Crockford chars of t + 16 of the first 80 bits of rnd. */
static void id_format(const char *prefix, uint64_t t, const unsigned char *rnd, char *out,
                      size_t outlen) {
    static const char crockford[] = "0123456789abcdefghjkmnpqrstvwxyz";
    char body[27];
    /* 10 chars of time (50 bits, the top 2 always 0 until year 10889). */
    for (int i = 9; i >= 0; i--, t >>= 5)
        body[i] = crockford[t & 31];
    /* 16 chars of randomness (80 bits). */
    for (int i = 0; i < 16; i++) {
        int bit = i * 5, byte = bit / 8, shift = bit % 8;
        unsigned v = (unsigned)rnd[byte] << 8 | (byte + 1 < 10 ? rnd[byte + 1] : 0);
        body[10 + i] = crockford[(v >> (11 - shift)) & 31];
    }
    body[26] = '\0';
    snprintf(out, outlen, "%s%s", prefix, body);
}

void util_id_new(const char *prefix, char *out, size_t outlen) {
    unsigned char rnd[10];
    uint64_t t = (uint64_t)util_now_ms();

    /* Random bytes come from a per-thread pool refilled 4 KiB at a time:
     * each RAND_bytes call costs a DRBG round (thousands of instructions),
     * and an ingest makes one id per event and per delivery. The bytes are
     * as random either way; waybill never forks, so no two processes share
     * a pool. */
    static _Thread_local unsigned char pool[4000];
    static _Thread_local size_t pool_left;
    if (pool_left < sizeof rnd && RAND_bytes(pool, sizeof pool) == 1)
        pool_left = sizeof pool;
    if (pool_left >= sizeof rnd) {
        memcpy(rnd, pool + sizeof pool - pool_left, sizeof rnd);
        memset(pool + sizeof pool - pool_left, 0, sizeof rnd); /* each byte used once */
        pool_left -= sizeof rnd;
    } else {
        /* RAND_bytes fails only when the OS entropy source does; fall back
         * to a process-local mix rather than fail an ingest. */
        static uint64_t counter;
        uint64_t x = t ^ (uint64_t)getpid() << 32 ^ ++counter * 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < sizeof rnd; i++, x = x * 6364136223846793005ull + 1)
            rnd[i] = (unsigned char)(x >> 56);
    }
    id_format(prefix, t, rnd, out, outlen);
}

void util_id_derive_at(const char *prefix, int64_t at_ms, const char *key, unsigned n, char *out,
                       size_t outlen) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char num[16];
    int ok;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    snprintf(num, sizeof num, "%u", n);
    ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
         EVP_DigestUpdate(c, key ? key : "", key ? strlen(key) : 0) == 1 &&
         EVP_DigestUpdate(c, "\n", 1) == 1 && EVP_DigestUpdate(c, num, strlen(num)) == 1 &&
         EVP_DigestFinal_ex(c, md, &mdlen) == 1 && mdlen >= 10;
    EVP_MD_CTX_free(c);
    if (!ok) { /* no digest (out of memory): an id that is at least unique */
        util_id_new(prefix, out, outlen);
        return;
    }
    id_format(prefix, at_ms > 0 ? (uint64_t)at_ms : 0, md, out, outlen);
}

void util_id_derive(const char *prefix, const char *from, const char *salt, unsigned n, char *out,
                    size_t outlen) {
    static const char crockford[] = "0123456789abcdefghjkmnpqrstvwxyz";
    const char *us = from ? strchr(from, '_') : NULL;
    uint64_t t = 0;
    char key[512];
    int i;

    /* The time part is from's own (its 10 chars after the prefix), so
     * derived ids sort with their source; else now. */
    for (i = 0; us && i < 10; i++) {
        const char *k = us[1 + i] ? strchr(crockford, us[1 + i]) : NULL;
        if (!k) {
            us = NULL;
            break;
        }
        t = t << 5 | (uint64_t)(k - crockford);
    }
    if (!us)
        t = (uint64_t)util_now_ms();
    snprintf(key, sizeof key, "%s\n%s", from ? from : "", salt ? salt : "");
    util_id_derive_at(prefix, (int64_t)t, key, n, out, outlen);
}

/* ---- growable buffer ---- */

static int buf_reserve(struct util_buf *b, size_t extra) {
    size_t need = b->len + extra + 1, cap;
    char *p;

    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int util_buf_append(struct util_buf *b, const void *data, size_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int util_buf_appends(struct util_buf *b, const char *s) {
    return util_buf_append(b, s, strlen(s));
}

int util_buf_printf(struct util_buf *b, const char *fmt, ...) {
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void util_buf_reset(struct util_buf *b) {
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

void util_buf_free(struct util_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- strings ---- */

char *util_strdup(const char *s) {
    return s ? strdup(s) : NULL;
}

char *util_file_read(const char *path, size_t *len) {
    char *data = NULL;
    struct stat st;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC), saved;

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) < 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = EISDIR;
        goto fail;
    }
    data = malloc((size_t)st.st_size + 1);
    if (!data)
        goto fail;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, data + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        got += (size_t)n;
    }
    data[got] = '\0';
    if (len)
        *len = got;
    close(fd);
    return data;
fail:
    saved = errno;
    free(data);
    close(fd);
    errno = saved;
    return NULL;
}

/* ---- glob ---- */

int util_glob_match(const char *p, const char *t) {
    /* Iterative, remembering only the last '*': linear in practice, and
     * never exponential whatever the pattern (each '*' restarts once per
     * position of text). */
    const char *star = NULL, *resume = NULL;

    while (*t) {
        if (*p == '*') {
            star = p++;
            resume = t;
        } else if (*p == *t) {
            p++;
            t++;
        } else if (star) {
            p = star + 1;
            t = ++resume;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

/* ---- HTTP headers ---- */

int util_header_name_ok(const char *name) {
    if (!name || !*name)
        return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              strchr("!#$%&'*+-.^_`|~", *p)))
            return 0;
    return 1;
}

int util_header_value_ok(const char *value, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0')
            return 0;
    return 1;
}

int util_header_reserved(const char *name) {
    static const char *const names[] = {
        "content-length", "transfer-encoding", "host", "connection", "expect", NULL};
    for (int i = 0; names[i]; i++)
        if (strcasecmp(name, names[i]) == 0)
            return 1;
    return strncasecmp(name, "x-waybill-", 10) == 0 || strncasecmp(name, "webhook-", 8) == 0;
}

/* ---- URLs ---- */

int util_http_url_ok(const char *url) {
    CURLU *h;
    char *scheme = NULL, *host = NULL;
    int ok = 0;

    const char *sep = url ? strstr(url, "://") : NULL;

    /* "http:///x": curl reads a host out of it; a user meant none */
    if (!sep || !sep[3] || sep[3] == '/' || !(h = curl_url()))
        return 0;
    /* curl_url refuses whitespace and control characters by default */
    if (curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        ok = (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) && host[0] &&
             !strpbrk(url, " \t\r\n");
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(h);
    return ok;
}

/* Replaces the value of each "password=" parameter of out's query (past
 * its first '?') by "***", in place within outlen; where the mask does not
 * fit, out ends before the value. */
static void url_redact_query(char *out, size_t outlen) {
    char *p = strchr(out, '?');

    while (p && *p) {
        p++; /* past '?' or '&' */
        if (strncasecmp(p, "password=", 9) == 0) {
            char *v = p + 9;
            size_t n = strcspn(v, "&#"), len = strlen(out);
            if (len - n + 3 >= outlen) {
                *v = '\0';
                return;
            }
            memmove(v + 3, v + n, strlen(v + n) + 1);
            memcpy(v, "***", 3);
        }
        p += strcspn(p, "&");
    }
}

const char *util_url_redact(const char *url, char *out, size_t outlen) {
    const char *auth = url ? strstr(url, "://") : NULL, *at, *colon, *end;

    if (!outlen)
        return out;
    if (!auth) {
        snprintf(out, outlen, "%s", url ? url : "");
        return out;
    }
    auth += 3;
    end = auth + strcspn(auth, "/?#");
    at = NULL; /* the last '@' of the authority ends the userinfo */
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (!colon)
        snprintf(out, outlen, "%s", url);
    else
        snprintf(out, outlen, "%.*s:***%s", (int)(colon - url), url, at);
    url_redact_query(out, outlen);
    return out;
}
