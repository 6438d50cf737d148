/* test_util.c -- durations, sizes, hex/base64, time formatting, ids. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "util.h"

static void test_durations(void) {
    int64_t ms = -1;
    CHECK_INT_EQ(util_duration_parse("500ms", &ms), 0);
    CHECK_INT_EQ(ms, 500);
    CHECK_INT_EQ(util_duration_parse("30s", &ms), 0);
    CHECK_INT_EQ(ms, 30000);
    CHECK_INT_EQ(util_duration_parse("5m", &ms), 0);
    CHECK_INT_EQ(ms, 300000);
    CHECK_INT_EQ(util_duration_parse("2h", &ms), 0);
    CHECK_INT_EQ(ms, 7200000);
    CHECK_INT_EQ(util_duration_parse("1d", &ms), 0);
    CHECK_INT_EQ(ms, 86400000);
    CHECK_INT_EQ(util_duration_parse("0s", &ms), 0);
    CHECK_INT_EQ(ms, 0);
    CHECK_INT_EQ(util_duration_parse("1.5", &ms), 0);
    CHECK_INT_EQ(ms, 1500);
    ms = 7;
    CHECK_INT_EQ(util_duration_parse("5x", &ms), -1);
    CHECK_INT_EQ(util_duration_parse("", &ms), -1);
    CHECK_INT_EQ(util_duration_parse("-1s", &ms), -1);
    CHECK_INT_EQ(util_duration_parse("ms", &ms), -1);
    CHECK_INT_EQ(util_duration_parse("1e300d", &ms), -1);
    CHECK_INT_EQ(ms, 7); /* untouched on error */
}

static void test_sizes(void) {
    size_t n = 0;
    CHECK_INT_EQ(util_size_parse("1MiB", &n), 0);
    CHECK_INT_EQ(n, 1048576);
    CHECK_INT_EQ(util_size_parse("512KiB", &n), 0);
    CHECK_INT_EQ(n, 524288);
    CHECK_INT_EQ(util_size_parse("64kB", &n), 0);
    CHECK_INT_EQ(n, 64000);
    CHECK_INT_EQ(util_size_parse("1000", &n), 0);
    CHECK_INT_EQ(n, 1000);
    CHECK_INT_EQ(util_size_parse("1 MiB", &n), -1);
    CHECK_INT_EQ(util_size_parse("1TB", &n), -1);
}

static void test_hex_base64(void) {
    unsigned char bytes[] = {0x00, 0xff, 0x10, 0xab}, out[8];
    char text[16];

    util_hex_encode(bytes, 4, text);
    CHECK_STR_EQ(text, "00ff10ab");
    CHECK_INT_EQ(util_hex_decode("00FF10ab", 8, out, sizeof out), 4);
    CHECK(memcmp(out, bytes, 4) == 0);
    CHECK_INT_EQ(util_hex_decode("0ff", 3, out, sizeof out), -1);
    CHECK_INT_EQ(util_hex_decode("zz", 2, out, sizeof out), -1);
    CHECK_INT_EQ(util_hex_decode("00ff10ab", 8, out, 3), -1);

    /* RFC 4648 section 10 vectors. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const b64[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char enc[16];
        unsigned char dec[16];
        util_base64_encode((const unsigned char *)plain[i], strlen(plain[i]), enc);
        CHECK_STR_EQ(enc, b64[i]);
        long n = util_base64_decode(b64[i], strlen(b64[i]), dec, sizeof dec);
        CHECK_INT_EQ(n, (long)strlen(plain[i]));
        CHECK(memcmp(dec, plain[i], strlen(plain[i])) == 0);
    }
    CHECK_INT_EQ(util_base64_decode("Zm9v!", 5, out, sizeof out), -1);
    CHECK_INT_EQ(util_base64_decode("Z", 1, out, sizeof out), -1);
    CHECK_INT_EQ(util_ct_equal("abc", "abc", 3), 1);
    CHECK_INT_EQ(util_ct_equal("abc", "abd", 3), 0);
}

/* The ms time encoded in an id's 10 Crockford chars after its prefix, or -1. */
static int64_t id_time(const char *id) {
    static const char crockford[] = "0123456789abcdefghjkmnpqrstvwxyz";
    const char *p = strchr(id, '_'), *k;
    int64_t t = 0;
    if (!p)
        return -1;
    for (int i = 1; i <= 10; i++) {
        if (!p[i] || !(k = strchr(crockford, p[i])))
            return -1;
        t = t << 5 | (int64_t)(k - crockford);
    }
    return t;
}

static void test_time_and_ids(void) {
    char t[32], a[UTIL_ID_MAX], b[UTIL_ID_MAX];
    int64_t t0, t1;

    util_time_rfc3339(0, t, sizeof t);
    CHECK_STR_EQ(t, "1970-01-01T00:00:00Z");
    util_time_rfc3339(1705314600123LL, t, sizeof t);
    CHECK_STR_EQ(t, "2024-01-15T10:30:00.123Z");

    t0 = util_now_ms();
    util_id_new("evt_", a, sizeof a);
    util_id_new("evt_", b, sizeof b);
    t1 = util_now_ms();
    CHECK_INT_EQ(strlen(a), 30);
    CHECK(strncmp(a, "evt_", 4) == 0);
    CHECK(strcmp(a, b) != 0);
    /* the time part is the creation time in ms (a prefix comparison of two
     * ids flaked when a slow first call crossed a 1 s boundary) */
    CHECK(id_time(a) >= t0 && id_time(a) <= t1);
    CHECK(id_time(b) >= id_time(a) && id_time(b) <= t1);
}

static void test_buf(void) {
    struct util_buf b = {0};
    CHECK_INT_EQ(util_buf_appends(&b, "ab"), 0);
    CHECK_INT_EQ(util_buf_printf(&b, "%d-%s", 42, "x"), 0);
    CHECK_STR_EQ(b.p, "ab42-x");
    CHECK_INT_EQ(b.len, 6);
    for (int i = 0; i < 1000; i++)
        util_buf_append(&b, "0123456789", 10);
    CHECK_INT_EQ(b.len, 10006);
    util_buf_reset(&b);
    CHECK_INT_EQ(b.len, 0);
    util_buf_free(&b);
    CHECK(b.p == NULL);
}

/* Derived ids: same arguments, same id; the source's time part; each of
 * from, salt and n changes the rest; now when from is not an id. */
static void test_id_derive(void) {
    char a[UTIL_ID_MAX], b[UTIL_ID_MAX], c[UTIL_ID_MAX];
    int64_t t0;
    const char *evt = "evt_01jdzq8m6qabcdefghjkmnpqrs";
    util_id_derive("dlv_", evt, "erp", 0, a, sizeof a);
    util_id_derive("dlv_", evt, "erp", 0, b, sizeof b);
    CHECK_STR_EQ(a, b);
    CHECK_INT_EQ((int)strlen(a), 30);
    CHECK(strncmp(a, "dlv_01jdzq8m6q", 14) == 0); /* the event's time part */
    util_id_derive("dlv_", evt, "erp", 1, c, sizeof c);
    CHECK(strcmp(a, c) != 0);
    util_id_derive("dlv_", evt, "crm", 0, c, sizeof c);
    CHECK(strcmp(a, c) != 0);
    util_id_derive("dlv_", "evt_01jdzq8m6qabcdefghjkmnpqrt", "erp", 0, c, sizeof c);
    CHECK(strcmp(a, c) != 0);
    CHECK(strncmp(c, "dlv_01jdzq8m6q", 14) == 0);
    /* not an id of that format: the time part is now's */
    t0 = util_now_ms();
    util_id_derive("dlv_", "evt_backlog", "erp", 0, c, sizeof c);
    CHECK_INT_EQ((int)strlen(c), 30);
    CHECK(id_time(c) >= t0 && id_time(c) <= util_now_ms());
    util_id_derive("dlv_", NULL, NULL, 0, c, sizeof c);
    CHECK_INT_EQ((int)strlen(c), 30);
    /* the time part given: 1795017780000 ms is 01m7qpbas0 in Crockford base32 */
    util_id_derive_at("dlv_", 1795017780000LL, "batch\nwms", 0, a, sizeof a);
    CHECK(id_time(a) == 1795017780000LL);
    util_id_derive_at("dlv_", 1795017780000LL, "batch\nwms", 0, b, sizeof b);
    CHECK_STR_EQ(a, b);
    CHECK(strncmp(a, "dlv_01m7qpbas0", 14) == 0);
    util_id_derive_at("dlv_", 1795017780000LL, "batch\nwms", 1, c, sizeof c);
    CHECK(strcmp(a, c) != 0);
    CHECK(strncmp(a, c, 14) == 0);
}

/* The one glob matcher (rules' on() patterns, subscriptions): '*' is any
 * run, dots included; everything else is itself; and a pattern of many
 * stars against a long text that does not match answers at once. */
static void test_glob(void) {
    char text[4097];
    int64_t t0;

    CHECK(util_glob_match("*", ""));
    CHECK(util_glob_match("*", "tracking.delivered"));
    CHECK(util_glob_match("tracking.*", "tracking.delivered"));
    CHECK(util_glob_match("tracking.*", "tracking."));
    CHECK(!util_glob_match("tracking.*", "tracking"));
    CHECK(!util_glob_match("tracking.*", "shipment.delivered"));
    CHECK(util_glob_match("*.delivered", "shipment.delivered"));
    CHECK(!util_glob_match("*.delivered", "shipment.delivered.late"));
    CHECK(util_glob_match("a*b*c", "axxbyyc"));
    CHECK(!util_glob_match("a*b*c", "axxbyy"));
    CHECK(util_glob_match("waybill.*", "waybill.delivery.failed"));
    CHECK(!util_glob_match("order.imported", "order.imported2"));
    CHECK(!util_glob_match("", "x"));
    CHECK(util_glob_match("", ""));
    CHECK(util_glob_match("t?pe", "t?pe")); /* no '?' wildcard: itself */
    CHECK(!util_glob_match("t?pe", "type"));
    memset(text, 'a', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    t0 = util_mono_ms();
    CHECK(!util_glob_match("*a*a*a*a*a*a*a*a*a*a*a*a*b", text));
    CHECK(util_mono_ms() - t0 < 1000);
}

/* The one URL check (config endpoints, admin subscriptions). */
static void test_http_url(void) {
    CHECK(util_http_url_ok("http://127.0.0.1:8080/hook"));
    CHECK(util_http_url_ok("https://erp.example.com/webhooks?x=1"));
    CHECK(util_http_url_ok("HTTPS://erp.example.com/"));
    CHECK(util_http_url_ok("http://[::1]:9/x"));
    CHECK(!util_http_url_ok(NULL));
    CHECK(!util_http_url_ok(""));
    CHECK(!util_http_url_ok("erp.example.com/webhooks"));
    CHECK(!util_http_url_ok("ftp://erp.example.com/"));
    CHECK(!util_http_url_ok("file:///etc/passwd"));
    CHECK(!util_http_url_ok("http://"));
    CHECK(!util_http_url_ok("http:///x"));
    CHECK(!util_http_url_ok("http://exa mple.com/"));
    CHECK(!util_http_url_ok("http://example.com/\r\nX-Evil: 1"));
    CHECK(!util_http_url_ok("http://example.com/a\tb"));
}

/* The one set of header checks (config, rules' send(), the HTTP client). */
/* Messages show a store URL without its password. */
static void test_url_redact(void) {
    char out[128];

    util_url_redact("postgresql://wb:s3cret@db:5432/waybill", out, sizeof out);
    CHECK_STR_EQ(out, "postgresql://wb:***@db:5432/waybill");
    util_url_redact("postgres://wb:p@ss:w0rd@db/x?sslmode=require", out, sizeof out);
    CHECK_STR_EQ(out, "postgres://wb:***@db/x?sslmode=require");
    util_url_redact("postgres://wb@db/x", out, sizeof out); /* no password */
    CHECK_STR_EQ(out, "postgres://wb@db/x");
    util_url_redact("postgres://db/x?user=a@b", out, sizeof out); /* '@' past the authority */
    CHECK_STR_EQ(out, "postgres://db/x?user=a@b");
    util_url_redact("sqlite:waybill.db", out, sizeof out);
    CHECK_STR_EQ(out, "sqlite:waybill.db");
    /* libpq's URIs also take the password as a query parameter */
    util_url_redact("postgres://wb@db/x?sslmode=require&password=s3cret&x=1", out, sizeof out);
    CHECK_STR_EQ(out, "postgres://wb@db/x?sslmode=require&password=***&x=1");
    util_url_redact("postgres://wb:a@db/x?PASSWORD=pw", out, sizeof out);
    CHECK_STR_EQ(out, "postgres://wb:***@db/x?PASSWORD=***");
    {
        char small[32]; /* cut in the middle of the value: no prefix of it shown */
        util_url_redact("postgres://db/x?password=s3cretlongvalue", small, sizeof small);
        CHECK(strstr(small, "s3cr") == NULL);
    }
    util_url_redact(NULL, out, sizeof out);
    CHECK_STR_EQ(out, "");
}

static void test_headers(void) {
    CHECK(util_header_name_ok("X-Custom-1"));
    CHECK(util_header_name_ok("a!#$%&'*+-.^_`|~z"));
    CHECK(!util_header_name_ok(""));
    CHECK(!util_header_name_ok(NULL));
    CHECK(!util_header_name_ok("X Custom"));
    CHECK(!util_header_name_ok("X:Custom"));
    CHECK(!util_header_name_ok("X-\xc3\xa9"));
    CHECK(util_header_value_ok("a value; with: anything", 23));
    CHECK(util_header_value_ok("", 0));
    CHECK(!util_header_value_ok("a\r\nX-Evil: 1", 13));
    CHECK(!util_header_value_ok("a\nb", 3));
    CHECK(!util_header_value_ok("a\0b", 3));
    CHECK(util_header_reserved("X-Waybill-Delivery"));
    CHECK(util_header_reserved("x-waybill-anything"));
    CHECK(util_header_reserved("Webhook-Signature"));
    CHECK(util_header_reserved("content-length"));
    CHECK(util_header_reserved("Transfer-Encoding"));
    CHECK(util_header_reserved("HOST"));
    CHECK(util_header_reserved("Connection"));
    CHECK(util_header_reserved("Expect"));
    CHECK(!util_header_reserved("X-Signature"));
    CHECK(!util_header_reserved("Authorization"));
    CHECK(!util_header_reserved("Content-Type"));
}

/* util_time_parse: what util_time_rfc3339 writes reads back; offsets,
 * fractions and Unix ms; everything else refused. */
static void test_time_parse(void) {
    static const char *bad[] = {"",
                                "yesterday",
                                "2026-11-23T16:03:38",
                                "2026-11-23 16:03",
                                "2026-13-01T00:00:00Z",
                                "2026-02-29T00:00:00Z",
                                "2026-11-31T00:00:00Z",
                                "2026-11-23T24:00:00Z",
                                "2026-11-23T16:03:38.Z",
                                "2026-11-23T16:03:38Z ",
                                "2026-11-23T16:03:38+0100",
                                "1969-12-31T23:59:59Z",
                                "1234567890123456",
                                "-5",
                                NULL};
    int64_t ms = 0, samples[] = {0, 1795017818123, 1795017818000, 951782400000 /* 2000-02-29 */};
    char text[40];

    for (size_t i = 0; i < sizeof samples / sizeof *samples; i++) {
        util_time_rfc3339(samples[i], text, sizeof text);
        CHECK_INT_EQ(util_time_parse(text, &ms), 0);
        CHECK_INT_EQ(ms, samples[i]);
    }
    CHECK_INT_EQ(util_time_parse("2026-11-23T17:03:38.123456+01:00", &ms), 0);
    CHECK_INT_EQ(ms, 1795449818123);
    CHECK_INT_EQ(util_time_parse("2026-11-23t11:03:38.1-05:00", &ms), 0);
    CHECK_INT_EQ(ms, 1795449818100);
    CHECK_INT_EQ(util_time_parse("2026-11-23 16:03:38z", &ms), 0);
    CHECK_INT_EQ(ms, 1795449818000);
    CHECK_INT_EQ(util_time_parse("1795017818123", &ms), 0);
    CHECK_INT_EQ(ms, 1795017818123);
    for (size_t i = 0; bad[i]; i++) {
        ms = 42;
        CHECK_INT_EQ(util_time_parse(bad[i], &ms), -1);
        CHECK_INT_EQ(ms, 42);
    }
}

int main(void) {
    test_durations();
    test_sizes();
    test_hex_base64();
    test_time_and_ids();
    test_id_derive();
    test_buf();
    test_glob();
    test_http_url();
    test_headers();
    test_url_redact();
    test_time_parse();
    return harness_report();
}
