/* test_rules.c -- config loading and checks, the sandbox, the limits, the
 * rule DSL and the adapters, through rules.h and config.h only.
 * Loads tests/fixtures/config/ for the valid cases; error cases are written
 * into a temporary folder so each message's file:line can be asserted.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "deliver.h"
#include "harness.h"
#include "jsonx.h"
#include "log.h"
#include "rules.h"
#include "util.h"

static char lua_dir[PATH_MAX], fixture_dir[PATH_MAX], tmp_root[PATH_MAX];
static int case_no;

/* ---- helpers ---- */

static int is_lua_dir(const char *dir, char *out) {
    char probe[PATH_MAX + 16];
    struct stat st;
    snprintf(probe, sizeof probe, "%s/waybill.lua", dir);
    return stat(probe, &st) == 0 && realpath(dir, out) != NULL;
}

static void find_dirs(void) {
    const char *env = getenv("WAYBILL_LUA_DIR");
    char exe[PATH_MAX], cand[PATH_MAX + 64];
    ssize_t n;

    if (!(env && is_lua_dir(env, lua_dir)) && !is_lua_dir("lua", lua_dir)) {
        n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = '\0';
        *(strrchr(exe, '/') ? strrchr(exe, '/') : exe) = '\0';
        snprintf(cand, sizeof cand, "%s/../../lua", exe);
        if (!is_lua_dir(cand, lua_dir)) {
            fprintf(stderr, "cannot find waybill's lua/ folder (set WAYBILL_LUA_DIR)\n");
            exit(2);
        }
    }
    snprintf(cand, sizeof cand, "%s/../tests/fixtures/config", lua_dir);
    if (!realpath(cand, fixture_dir)) {
        fprintf(stderr, "cannot find tests/fixtures/config\n");
        exit(2);
    }
}

static void write_file(const char *path, const char *text) {
    char dir[PATH_MAX];
    FILE *f;
    snprintf(dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0755);
            *p = '/';
        }
    }
    f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* A new empty folder under tmp_root, made the working directory. */
static void fresh(void) {
    char dir[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/case%d", tmp_root, ++case_no);
    mkdir(dir, 0755);
    if (chdir(dir) < 0) {
        perror(dir);
        exit(2);
    }
}

static struct rules *load_text(const char *cfg, char *err, size_t errlen) {
    err[0] = '\0';
    write_file("waybill.lua", cfg);
    return rules_load("waybill.lua", lua_dir, err, errlen);
}

/* In the current folder (files already written there). */
#define EXPECT_LOAD_ERR_HERE(cfg, want)                                                            \
    do {                                                                                           \
        char e_[512];                                                                              \
        struct rules *r_;                                                                          \
        r_ = load_text((cfg), e_, sizeof e_);                                                      \
        CHECK(r_ == NULL);                                                                         \
        rules_free(r_);                                                                            \
        CHECK_STR_EQ(e_, (want));                                                                  \
    } while (0)

/* In a fresh folder. */
#define EXPECT_LOAD_ERR(cfg, want)                                                                 \
    do {                                                                                           \
        char e_[512];                                                                              \
        struct rules *r_;                                                                          \
        fresh();                                                                                   \
        r_ = load_text((cfg), e_, sizeof e_);                                                      \
        CHECK(r_ == NULL);                                                                         \
        rules_free(r_);                                                                            \
        CHECK_STR_EQ(e_, (want));                                                                  \
    } while (0)

static const char *test_headers = "{\"user-agent\":\"test/1\",\"x-a\":\"1\"}";

/* Routes an event of type with data (also used as the raw body). */
static int route(struct rules *r, const char *type, const char *data, struct rules_plan *plan,
                 char *err, size_t errlen) {
    struct rules_input in = {"evt_test",
                             "atoship",
                             "src1",
                             type,
                             "2024-01-15T10:30:00Z",
                             1705314601500LL,
                             data,
                             data,
                             strlen(data),
                             test_headers,
                             0,
                             0,
                             NULL};
    err[0] = '\0';
    return rules_route(r, &in, plan, err, errlen);
}

static const struct rules_send *nth(const struct rules_plan *p, size_t i) {
    static const struct rules_send none = {0};
    return i < p->n ? &p->sends[i] : &none;
}

/* ---- the fixture: a valid config, its fields and defaults ---- */

static struct rules *load_fixture(void) {
    char err[512];
    struct rules *r;
    if (chdir(fixture_dir) < 0)
        return NULL;
    r = rules_load("waybill.lua", lua_dir, err, sizeof err);
    if (!r)
        fprintf(stderr, "fixture: %s\n", err);
    return r;
}

static void test_config_fields(struct rules *r) {
    const struct config *cfg = rules_config(r);
    const struct config_source *s;
    const struct config_endpoint *e;
    char path[PATH_MAX + 64];
    unsigned char a4[4], a6[16];

    CHECK(rules_loaded_at(r) > 1700000000000LL);
    snprintf(path, sizeof path, "%s/waybill.lua", fixture_dir);
    CHECK_STR_EQ(cfg->file, path);
    CHECK_STR_EQ(cfg->dir, fixture_dir);
    CHECK_INT_EQ(cfg->sandbox, 0);
    CHECK_STR_EQ(cfg->listen, "127.0.0.1:9090");
    snprintf(path, sizeof path, "%s/tls/cert.pem", fixture_dir);
    CHECK_STR_EQ(cfg->tls_cert, path);
    CHECK_STR_EQ(cfg->tls_key, "/etc/waybill/key.pem");
    CHECK_STR_EQ(cfg->admin_listen, "127.0.0.1:8081");
    CHECK_STR_EQ(cfg->admin_token, "fixture-token");
    CHECK_STR_EQ(cfg->store, "sqlite:data/wb.db?sync=normal");
    CHECK_INT_EQ(cfg->max_body, 512 * 1024);
    CHECK_INT_EQ(cfg->nallow_private, 3);
    inet_pton(AF_INET, "127.5.6.7", a4);
    CHECK(config_private_allowed(cfg, AF_INET, a4));
    inet_pton(AF_INET, "10.1.2.3", a4);
    CHECK(config_private_allowed(cfg, AF_INET, a4));
    inet_pton(AF_INET, "10.1.2.4", a4);
    CHECK(!config_private_allowed(cfg, AF_INET, a4));
    inet_pton(AF_INET, "8.8.8.8", a4);
    CHECK(!config_private_allowed(cfg, AF_INET, a4));
    inet_pton(AF_INET6, "fd12::1", a6);
    CHECK(config_private_allowed(cfg, AF_INET6, a6));
    inet_pton(AF_INET6, "fe80::1", a6);
    CHECK(!config_private_allowed(cfg, AF_INET6, a6));
    CHECK_INT_EQ(cfg->shutdown_grace_ms, 2000);
    CHECK_INT_EQ(cfg->retention_ms, 7LL * 86400 * 1000);
    CHECK_INT_EQ(cfg->max_backlog, 5000);
    CHECK_INT_EQ(cfg->rule_budget, 2000000);
    CHECK_INT_EQ(cfg->rule_memory, 32 << 20);
    snprintf(path, sizeof path, "%s/rules", fixture_dir);
    CHECK_STR_EQ(cfg->rules_dir, path);

    CHECK_INT_EQ(cfg->nsources, 8);
    s = config_source_by_name(cfg, "atoship");
    CHECK(s && s->verify.kind == VERIFY_HMAC);
    if (s) {
        CHECK_STR_EQ(s->verify_name, "atoship");
        CHECK_STR_EQ(s->verify.header, "X-Atoship-Signature");
        CHECK_STR_EQ(s->path, "/hooks/atoship");
        CHECK_INT_EQ(s->nsecrets, 1);
        CHECK(s->nsecrets == 1 && s->secrets[0].len == 10 &&
              !memcmp(s->secrets[0].key, "dev-secret", 10));
        CHECK_INT_EQ(s->verify.tolerance_ms, 300000);
        CHECK(s->adapter == NULL);
    }
    CHECK(config_source_by_path(cfg, "/hooks/atoship") == s);
    s = config_source_by_name(cfg, "aftership");
    CHECK(s && s->nsecrets == 2 && s->verify.encoding == VERIFY_BASE64);
    if (s && s->nsecrets == 2) {
        CHECK(s->secrets[1].len == 10 && !memcmp(s->secrets[1].key, "old-secret", 10));
        CHECK_INT_EQ(s->verify.tolerance_ms, 60000);
    }
    s = config_source_by_path(cfg, "/in/acme");
    CHECK(s && s->verify.kind == VERIFY_HMAC);
    if (s) {
        CHECK_STR_EQ(s->name, "acme");
        CHECK_STR_EQ(s->verify_name, "hmac-sha256");
        CHECK_STR_EQ(s->verify.header, "X-Sig");
        CHECK_STR_EQ(s->verify.prefix, "sha256=");
        CHECK_INT_EQ(s->verify.encoding, VERIFY_BASE64);
    }
    s = config_source_by_name(cfg, "std");
    CHECK(s && s->verify.kind == VERIFY_STANDARD && s->nsecrets == 1 && s->secrets[0].len == 24);
    s = config_source_by_name(cfg, "open");
    CHECK(s && s->verify.kind == VERIFY_NONE && s->insecure);
    snprintf(path, sizeof path, "%s/adapters/kind.lua", fixture_dir);
    CHECK_STR_EQ(s ? s->adapter : NULL, path);
    s = config_source_by_name(cfg, "shippo");
    CHECK(s && s->verify.kind == VERIFY_STRIPE);
    CHECK_STR_EQ(s ? s->verify.header : NULL, "Shippo-Auth-Signature");
    s = config_source_by_name(cfg, "se");
    CHECK(s && s->verify.kind == VERIFY_SHIPENGINE && s->nsecrets == 0);
    snprintf(path, sizeof path, "%s/keys/jwks.json", fixture_dir);
    CHECK_STR_EQ(s ? s->jwks : NULL, path);
    CHECK(config_source_by_name(cfg, "nope") == NULL);
    CHECK(config_source_by_path(cfg, "/hooks/nope") == NULL);

    CHECK_INT_EQ(cfg->nendpoints, 4);
    e = config_endpoint_by_name(cfg, "erp");
    CHECK(e != NULL);
    if (e) {
        CHECK_STR_EQ(e->url, "https://erp.example.com/hooks");
        CHECK_INT_EQ(e->sign, SIGN_STANDARD);
        CHECK(e->nsecrets == 1 && e->secrets[0].len == 24);
        CHECK_INT_EQ(e->nretry, 5);
        CHECK(e->nretry == 5 && e->retry_ms[0] == 0 && e->retry_ms[1] == 1800000 &&
              e->retry_ms[4] == 86400000);
        CHECK_INT_EQ(e->timeout_ms, 2500);
        CHECK_INT_EQ(e->concurrency, 4);
        CHECK(e->rate == 10.0);
        CHECK_INT_EQ(e->max_batch, 50);
        CHECK_INT_EQ(e->nheaders, 2);
        CHECK_STR_EQ(e->nheaders == 2 ? e->headers[0].name : NULL, "Accept");
        CHECK_STR_EQ(e->nheaders == 2 ? e->headers[1].value : NULL, "ops");
        CHECK_INT_EQ(e->success, CONFIG_SUCCESS_200);
        CHECK_INT_EQ(e->ordered, 1);
        CHECK_INT_EQ(e->jitter, 0);
        CHECK_INT_EQ(e->disable_after_ms, 86400000);
        CHECK_INT_EQ(e->enabled, 1);
        CHECK_INT_EQ(e->window_ms, 0);
        CHECK_INT_EQ(config_endpoint_window(cfg, e), 30 * 60000);
    }
    e = config_endpoint_by_name(cfg, "crm");
    CHECK(e && e->sign == SIGN_HEX && e->nsecrets == 1 && e->secrets[0].len == 10);
    if (e) { /* the defaults */
        CHECK_INT_EQ(e->timeout_ms, 5000);
        CHECK_INT_EQ(e->concurrency, 16);
        CHECK_INT_EQ(e->max_batch, 1000);
        CHECK_INT_EQ(e->jitter, 1);
        CHECK_INT_EQ(e->success, CONFIG_SUCCESS_2XX);
        CHECK_INT_EQ(e->ordered, 0);
        CHECK_INT_EQ(e->disable_after_ms, 5LL * 86400000);
        CHECK(e->rate == 0);
        CHECK_INT_EQ(e->nretry, 6);
        CHECK(e->nretry == 6 && e->retry_ms[1] == 60000 && e->retry_ms[5] == 6 * 3600000);
    }
    e = config_endpoint_by_name(cfg, "bi");
    CHECK(e && e->sign == SIGN_ATOSHIP && e->window_ms == 600000);
    if (e) {
        CHECK_INT_EQ(config_endpoint_window(cfg, e), 600000);
        CHECK(e->nretry == 3 && e->retry_ms[0] == 0 && e->retry_ms[1] == 1000 &&
              e->retry_ms[2] == 5000);
    }
    e = config_endpoint_by_name(cfg, "off");
    CHECK(e && e->sign == SIGN_NONE && e->nsecrets == 0 && e->enabled == 0);
    CHECK(config_endpoint_by_name(cfg, "nope") == NULL);
}

static void test_defaults(void) {
    char err[512];
    struct rules *r;
    const struct config *cfg;

    fresh();
    r = load_text("-- nothing but defaults\n", err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "defaults: %s\n", err);
        return;
    }
    cfg = rules_config(r);
    CHECK_STR_EQ(cfg->listen, "0.0.0.0:8080");
    CHECK_STR_EQ(cfg->store, "sqlite:waybill.db");
    CHECK(cfg->admin_listen == NULL && cfg->admin_token == NULL);
    CHECK(cfg->tls_cert == NULL && cfg->tls_key == NULL);
    CHECK_INT_EQ(cfg->sandbox, 0);
    CHECK_INT_EQ(cfg->max_body, 1 << 20);
    CHECK_INT_EQ(cfg->shutdown_grace_ms, 10000);
    CHECK_INT_EQ(cfg->retention_ms, 30LL * 86400000);
    CHECK_INT_EQ(cfg->max_backlog, 10000000);
    CHECK_INT_EQ(cfg->rule_budget, 1000000);
    CHECK_INT_EQ(cfg->rule_memory, 64 << 20);
    CHECK(cfg->rules_dir == NULL && cfg->nsources == 0 && cfg->nendpoints == 0);
    CHECK_INT_EQ(cfg->nallow_private, 0);
    CHECK_INT_EQ(config_endpoint_window(cfg, NULL), 30 * 60000);
    rules_free(r);

    /* sandbox: 5m default window; durations and sizes in every form */
    fresh();
    r = load_text("environment = 'sandbox'\n"
                  "shutdown_grace = '500ms'\nretention = '2h'\nmax_body = 2048\n"
                  "rule_memory = '1GiB'\nadmin = { listen = '[::1]:9000', token = 't' }\n"
                  "endpoint 'e' { url = 'http://h/', sign = 'none', timeout = '1.5s',\n"
                  "  disable_after = 90, retry = 'shipengine' }\n",
                  err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "sandbox: %s\n", err);
        return;
    }
    cfg = rules_config(r);
    CHECK_INT_EQ(cfg->sandbox, 1);
    CHECK_INT_EQ(cfg->shutdown_grace_ms, 500);
    CHECK_INT_EQ(cfg->retention_ms, 7200000);
    CHECK_INT_EQ(cfg->max_body, 2048);
    CHECK_INT_EQ(cfg->rule_memory, (size_t)1 << 30);
    CHECK_STR_EQ(cfg->admin_listen, "[::1]:9000");
    CHECK_INT_EQ(config_endpoint_window(cfg, config_endpoint_by_name(cfg, "e")), 5 * 60000);
    CHECK_INT_EQ(config_endpoint_by_name(cfg, "e")->timeout_ms, 1500);
    CHECK_INT_EQ(config_endpoint_by_name(cfg, "e")->disable_after_ms, 90000);
    CHECK_INT_EQ(config_endpoint_by_name(cfg, "e")->nretry, 3);
    rules_free(r);
}

/* ---- config errors: each one's exact file:line: message ---- */

static void test_config_errors(void) {
    EXPECT_LOAD_ERR("listen = '0.0.0.0:8080'\nlisen = '0.0.0.0:1'\n",
                    "waybill.lua:2: unknown setting 'lisen' (did you mean 'listen'?)");
    EXPECT_LOAD_ERR("\n\nfoo = 1\n", "waybill.lua:3: unknown setting 'foo'");
    EXPECT_LOAD_ERR("source 'a' { verify = 'atoship', secret = 'x',\n  secrte = 'y' }\n",
                    "waybill.lua:1: source a: unknown option 'secrte' (did you mean 'secret'?)");
    EXPECT_LOAD_ERR("\nendpoint 'erp' {\n  url = 'https://x.test/', sign = 'none',\n"
                    "  retyr = 'atoship',\n}\n",
                    "waybill.lua:2: endpoint erp: unknown option 'retyr' (did you mean 'retry'?)");
    EXPECT_LOAD_ERR("admin = { token = 't', lisen = 'x' }\n",
                    "waybill.lua:1: admin: unknown option 'lisen' (did you mean 'listen'?)");
    EXPECT_LOAD_ERR("-- grace\nshutdown_grace = '10 seconds'\n",
                    "waybill.lua:2: shutdown_grace: bad duration '10 seconds' (use e.g. \"500ms\", "
                    "\"30s\", \"5m\", \"2h\", \"1d\")");
    EXPECT_LOAD_ERR("retention = -5\n", "waybill.lua:1: retention: bad duration -5 (seconds)");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'http://h/', sign = 'none', timeout = '5x' }\n",
                    "waybill.lua:1: endpoint e: timeout: bad duration '5x' (use e.g. \"500ms\", "
                    "\"30s\", \"5m\", \"2h\", \"1d\")");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'http://h/', sign = 'none', retry = { '0s', 'soon' } }\n",
                    "waybill.lua:1: endpoint e: retry #2: bad duration 'soon' (use e.g. "
                    "\"500ms\", \"30s\", \"5m\", \"2h\", \"1d\")");
    EXPECT_LOAD_ERR("max_body = '1 MB'\n",
                    "waybill.lua:1: max_body: bad size '1 MB' (use e.g. \"1MiB\", \"512KiB\", "
                    "\"64MiB\")");
    EXPECT_LOAD_ERR("rule_memory = '64kB'\n", "waybill.lua:1: rule_memory must be at least 1MiB");
    EXPECT_LOAD_ERR("rule_budget = 1.5\n", "waybill.lua:1: rule_budget must be a whole number");
    EXPECT_LOAD_ERR("source 'a' { verify = 'atoshp', secret = 'x' }\n",
                    "waybill.lua:1: source a: unknown verify preset 'atoshp' (did you mean "
                    "'atoship'?)");
    EXPECT_LOAD_ERR("source 'acme' { secret = 'x' }\n",
                    "waybill.lua:1: source acme: verify is required (a preset such as "
                    "\"atoship\", or { scheme = \"hmac-sha256\", header = ..., encoding = ... })");
    EXPECT_LOAD_ERR("source 'a' { verify = { scheme = 'hmac-sha256' }, secret = 'x' }\n",
                    "waybill.lua:1: source a: verify.header is required (e.g. header = "
                    "\"X-Signature\")");
    EXPECT_LOAD_ERR("source 'a' { verify = { header = 'X-S', encodng = 'hex' }, secret = 'x' }\n",
                    "waybill.lua:1: source a: unknown verify option 'encodng' (did you mean "
                    "'encoding'?)");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'https://h/', sign = 'hmac', secret = 'x' }\n",
                    "waybill.lua:1: endpoint e: unknown sign preset 'hmac' (standard, hex, "
                    "atoship, aftership, none)");
    EXPECT_LOAD_ERR("\nsource 'open' { verify = 'none' }\n",
                    "waybill.lua:2: source open: verify \"none\" needs insecure = true");
    EXPECT_LOAD_ERR("source 'atoship' {}\n",
                    "waybill.lua:1: source atoship: verify \"atoship\" needs a secret");
    EXPECT_LOAD_ERR(
        "source 'se' { verify = 'shipengine' }\n",
        "waybill.lua:1: source se: verify \"shipengine\" needs jwks (a JWKS file or URL)");
    EXPECT_LOAD_ERR("-- the ERP\n\nendpoint 'erp' {\n  url = 'https://erp.example.com/',\n}\n",
                    "waybill.lua:3: endpoint erp: sign \"standard\" needs a secret");
    EXPECT_LOAD_ERR("endpoint 'erp' { url = 'https://h/', sign = 'hex' }\n",
                    "waybill.lua:1: endpoint erp: sign \"hex\" needs a secret");
    EXPECT_LOAD_ERR("endpoint 'erp' { url = 'https://h/', secret = 'not base64!' }\n",
                    "waybill.lua:1: endpoint erp: secret is not a whsec_<base64> key");
    EXPECT_LOAD_ERR(
        "endpoint 'erp' { url = 'https://h/', secret = { 'whsec_aGVsbG8=', 'whsec_%' } }\n",
        "waybill.lua:1: endpoint erp: secret in the list is not a whsec_<base64> key");
    EXPECT_LOAD_ERR("source 's' { verify = 'standard', secret = 'whsec_!!' }\n",
                    "waybill.lua:1: source s: secret is not a whsec_<base64> key");
    EXPECT_LOAD_ERR("source 'a' { verify = 'generic', secret = 'x' }\n"
                    "source 'a' { verify = 'generic', secret = 'y' }\n",
                    "waybill.lua:2: source a is declared twice (first at waybill.lua:1)");
    EXPECT_LOAD_ERR("source 'a' { verify = 'generic', secret = 'x', path = '/h' }\n"
                    "source 'b' { verify = 'generic', secret = 'y', path = '/h' }\n",
                    "waybill.lua:2: source b: path /h is already used by source a");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'http://h/', sign = 'none' }\n\n"
                    "endpoint 'e' { url = 'http://i/', sign = 'none' }\n",
                    "waybill.lua:3: endpoint e is declared twice (first at waybill.lua:1)");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'ftp://h/x', sign = 'none' }\n",
                    "waybill.lua:1: endpoint e: url must be an http:// or https:// URL, not "
                    "'ftp://h/x'");
    EXPECT_LOAD_ERR("endpoint 'e' { sign = 'none' }\n",
                    "waybill.lua:1: endpoint e: url is required");
    EXPECT_LOAD_ERR("allow_private = { '127.0.0.0/8', '10.0.0.0/33' }\n",
                    "waybill.lua:1: allow_private: bad CIDR '10.0.0.0/33' (want e.g. "
                    "\"10.0.0.0/8\" or \"fd00::/8\")");
    EXPECT_LOAD_ERR("allow_private = { 'localhost' }\n",
                    "waybill.lua:1: allow_private: bad CIDR 'localhost' (want e.g. \"10.0.0.0/8\" "
                    "or \"fd00::/8\")");
    EXPECT_LOAD_ERR("admin = { listen = '127.0.0.1:9999' }\n",
                    "waybill.lua:1: admin: token is required (admin = { token = "
                    "env(\"WAYBILL_ADMIN_TOKEN\") })");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'http://h/', sign = 'none', retry = 'fast' }\n",
                    "waybill.lua:1: endpoint e: unknown retry preset 'fast' (atoship, shipengine, "
                    "shiptify, or a list of delays such as { \"0s\", \"1m\", \"10m\" })");
    EXPECT_LOAD_ERR("environment = 'staging'\n",
                    "waybill.lua:1: environment: must be \"production\" or \"sandbox\"");
    EXPECT_LOAD_ERR("listen = 8080\n", "waybill.lua:1: listen must be a string, not a number");
    EXPECT_LOAD_ERR("listen = 'localhost'\n",
                    "waybill.lua:1: listen: bad address 'localhost' (want host:port, e.g. "
                    "\"0.0.0.0:8080\")");
    EXPECT_LOAD_ERR("store = 'mysql://x'\n",
                    "waybill.lua:1: store: unsupported store 'mysql://x' (use \"sqlite:FILE\")");
    /* a PostgreSQL URL is read as it is (store_pg.h says what it can do) */
    {
        char e_[512];
        struct rules *r_;
        fresh();
        r_ = load_text("store = 'postgresql://wb:s3cret@db.example:5432/waybill'\n", e_, sizeof e_);
        CHECK(r_ != NULL);
        if (r_)
            CHECK_STR_EQ(rules_config(r_)->store, "postgresql://wb:s3cret@db.example:5432/waybill");
        rules_free(r_);
    }
    EXPECT_LOAD_ERR("tls = { cert = 'c.pem' }\n", "waybill.lua:1: tls: key is required");
    /* a multi-line assignment is blamed on its first line */
    EXPECT_LOAD_ERR("listen = '0.0.0.0:8080'\nadmin = {\n  listen = '127.0.0.1:9999',\n}\n",
                    "waybill.lua:2: admin: token is required (admin = { token = "
                    "env(\"WAYBILL_ADMIN_TOKEN\") })");
    EXPECT_LOAD_ERR(
        "source 's' { verify = 'generic', secret = 'x' }\ntls =\n{\n  cert = 'c.pem'\n}\n",
        "waybill.lua:2: tls: key is required");
    EXPECT_LOAD_ERR("allow_private = {\n  '127.0.0.0/8',\n  'nope',\n}\n",
                    "waybill.lua:1: allow_private: bad CIDR 'nope' (want e.g. \"10.0.0.0/8\" or "
                    "\"fd00::/8\")");
    EXPECT_LOAD_ERR("max_body = '1MiB'; shutdown_grace =\n  '1 hour'\n",
                    "waybill.lua:1: shutdown_grace: bad duration '1 hour' (use e.g. \"500ms\", "
                    "\"30s\", \"5m\", \"2h\", \"1d\")");
    EXPECT_LOAD_ERR("endpoint 'bad name' { url = 'http://h/', sign = 'none' }\n",
                    "waybill.lua:1: endpoint bad name: the name must be 1-64 letters, digits, '_' "
                    "or '-'");
    EXPECT_LOAD_ERR("endpoint 'e' { url = 'http://h/', sign = 'none', headers = { ['X-A'] = "
                    "'a\\r\\nB: c' } }\n",
                    "waybill.lua:1: endpoint e: headers: X-A holds a line break or NUL");
}

static void test_load_errors(void) {
    char want[PATH_MAX + 200];

    unsetenv("WB_TEST_UNSET_VAR");
    EXPECT_LOAD_ERR(
        "listen = '0.0.0.0:8080'\n\n\n\n\n\nadmin = { token = env('WB_TEST_UNSET_VAR') }\n",
        "waybill.lua:7: env WB_TEST_UNSET_VAR is not set");
    setenv("WB_TEST_SET_VAR", "v", 1);
    fresh();
    {
        char err[512];
        struct rules *r = load_text("admin = { token = env('WB_TEST_SET_VAR') }\n"
                                    "listen = env('WB_TEST_UNSET_VAR', '127.0.0.1:1234')\n",
                                    err, sizeof err);
        CHECK(r != NULL);
        if (r) {
            CHECK_STR_EQ(rules_config(r)->admin_token, "v");
            CHECK_STR_EQ(rules_config(r)->listen, "127.0.0.1:1234");
        }
        rules_free(r);
    }
    EXPECT_LOAD_ERR("listen = = 1\n", "waybill.lua:1: unexpected symbol near '='");
    EXPECT_LOAD_ERR("local a = 1\nlocal b = nil + a\n",
                    "waybill.lua:2: attempt to perform arithmetic on a nil value");
    EXPECT_LOAD_ERR("error('plain', 0)\n", "waybill.lua: plain");
    EXPECT_LOAD_ERR("\nrules 'nope/'\n",
                    "waybill.lua:2: rules: cannot open folder 'nope/': No such file or directory");
    EXPECT_LOAD_ERR("rules 'a/'\nrules 'b/'\n",
                    "waybill.lua:2: rules: already set at waybill.lua:1");
    EXPECT_LOAD_ERR("source 'x' ({})\n",
                    "waybill.lua:1: source x: verify is required (a preset such as \"atoship\", "
                    "or { scheme = \"hmac-sha256\", header = ..., encoding = ... })");
    EXPECT_LOAD_ERR("while true do end\n",
                    "waybill.lua:1: stopped while loading: instruction budget exceeded");

    /* rule files: syntax and runtime errors at load, in their own names */
    fresh();
    write_file("rules/10-ok.lua", "on('x', function() end)\n");
    write_file("rules/20-bad.lua", "on('x', function()\n  retrun 1\nend)\n");
    {
        char err[512];
        struct rules *r = load_text("rules 'rules/'\n", err, sizeof err);
        CHECK(r == NULL);
        CHECK_STR_EQ(err, "rules/20-bad.lua:2: syntax error near '1'");
        rules_free(r);
    }
    fresh();
    write_file("conf/rules/a.lua", "\n\nlocal t = nil\nprint(t.x)\n");
    write_file("conf/waybill.lua", "rules './rules/'\n");
    {
        char err[512];
        struct rules *r = rules_load("conf/waybill.lua", lua_dir, err, sizeof err);
        CHECK(r == NULL);
        CHECK_STR_EQ(err, "conf/rules/a.lua:4: attempt to index a nil value (local 't')");
        rules_free(r);
    }
    fresh();
    write_file("rules/a.lua", "\n\non('shipment.*', { 'erp', 'crm' })\n");
    EXPECT_LOAD_ERR_HERE("endpoint 'erp' { url = 'http://h/', sign = 'none' }\nrules 'rules'\n",
                         "rules/a.lua:3: on: unknown endpoint 'crm'");
    fresh();
    write_file("rules/a.lua", "send('erp', {})\n");
    EXPECT_LOAD_ERR_HERE("endpoint 'erp' { url = 'http://h/', sign = 'none' }\nrules 'rules'\n",
                         "rules/a.lua:1: send: only a handler can send (inside on(...))");
    fresh();
    write_file("rules/a.lua", "on(42, function() end)\n");
    EXPECT_LOAD_ERR_HERE(
        "rules 'rules'\n",
        "rules/a.lua:1: on: the first argument must be an event type or glob, e.g. "
        "\"tracking.*\"");
    fresh();
    write_file("rules/a.lua", "on({}, function() end)\n");
    EXPECT_LOAD_ERR_HERE("rules 'rules'\n", "rules/a.lua:1: on: the pattern list is empty");
    fresh();
    write_file("rules/a.lua", "on({'tracking.*', 7}, function() end)\n");
    EXPECT_LOAD_ERR_HERE("rules 'rules'\n", "rules/a.lua:1: on: the pattern list must hold event "
                                            "types or globs, e.g. \"tracking.*\"");
    fresh();
    write_file("rules/a.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = {} end\n");
    /* the allocator can't tell the line: the file is blamed */
    EXPECT_LOAD_ERR_HERE("rules 'rules'\n",
                         "rules/a.lua: stopped while loading: memory limit exceeded");
    fresh();
    write_file("x.lua", "return 42\n");
    EXPECT_LOAD_ERR_HERE("source 'a' { verify = 'none', insecure = true, adapter = './x.lua' }\n",
                         "x.lua: an adapter file must return a function(body, headers, source)");
    fresh();
    snprintf(want, sizeof want,
             "waybill.lua:1: source a: adapter %s/sources/nope.lua: No such file or directory",
             lua_dir);
    EXPECT_LOAD_ERR("source 'a' { verify = 'generic', secret = 'x', adapter = 'nope' }\n", want);
    /* a missing config file */
    fresh();
    {
        char err[512];
        CHECK(rules_load("missing.lua", lua_dir, err, sizeof err) == NULL);
        CHECK_STR_EQ(err, "missing.lua: cannot read: No such file or directory");
    }
}

/* ---- routing ---- */

static void test_routing(struct rules *r) {
    struct rules_plan p = {0};
    char err[512];
    const char *delivered = "{\"order_id\":\"o1\",\"carrier\":\"USPS\",\"delivered_at\":\"t1\","
                            "\"weight\":2.50,\"none\":null,\"tags\":[]}";

    /* exact + glob, fan-out, file order then definition order */
    CHECK_INT_EQ(route(r, "tracking.delivered", delivered, &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 4);
    CHECK_STR_EQ(nth(&p, 0)->endpoint, "erp");
    CHECK_STR_EQ(nth(&p, 0)->payload,
                 "{\"created_at\":\"2024-01-15T10:30:00Z\",\"data\":{\"order_id\":\"o1\","
                 "\"carrier\":\"USPS\",\"delivered_at\":\"t1\",\"weight\":2.5,\"none\":null,"
                 "\"tags\":[]},\"id\":\"evt_test\",\"received_at\":\"2024-01-15T10:30:01.500Z\","
                 "\"source\":\"atoship\",\"source_id\":\"src1\",\"type\":\"tracking.delivered\"}");
    CHECK_INT_EQ(nth(&p, 0)->payload_len, strlen(nth(&p, 0)->payload));
    CHECK_STR_EQ(nth(&p, 0)->content_type, "application/json");
    CHECK(nth(&p, 0)->headers_json == NULL);
    CHECK_INT_EQ(nth(&p, 0)->window_ms, 0);
    CHECK_STR_EQ(nth(&p, 1)->endpoint, "crm");
    CHECK_STR_EQ(nth(&p, 1)->payload, "{\"at\":\"t1\",\"order\":\"o1\"}");
    CHECK_STR_EQ(nth(&p, 2)->endpoint, "bi");
    CHECK_STR_EQ(nth(&p, 2)->payload, "{\"at\":\"t1\",\"order\":\"o1\"}");
    CHECK_INT_EQ(nth(&p, 2)->window_ms, 0);
    CHECK_STR_EQ(nth(&p, 3)->endpoint, "bi"); /* batch: the endpoint's own window */
    CHECK_INT_EQ(nth(&p, 3)->window_ms, 600000);
    CHECK_STR_EQ(nth(&p, 3)->payload, nth(&p, 0)->payload);
    rules_plan_clear(&p);
    CHECK(p.sends == NULL && p.n == 0);

    /* a filter: nothing sent, not an error */
    CHECK_INT_EQ(route(r, "tracking.in_transit", "{\"carrier\":\"UPS\"}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 0);
    CHECK(p.sends == NULL);
    CHECK_INT_EQ(route(r, "nothing.matches", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 0);

    /* shorthand fan-out, then "*" (no send), then "*.exception" */
    CHECK_INT_EQ(route(r, "shipment.exception", "{\"a\":1}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 4);
    CHECK_STR_EQ(nth(&p, 0)->endpoint, "erp");
    CHECK_STR_EQ(nth(&p, 1)->endpoint, "crm");
    CHECK(nth(&p, 1)->payload && strstr(nth(&p, 1)->payload, "\"data\":{\"a\":1}"));
    CHECK_STR_EQ(nth(&p, 2)->endpoint, "erp");
    CHECK_STR_EQ(nth(&p, 2)->payload, "{\"t\":\"shipment.exception\"}");
    CHECK_INT_EQ(nth(&p, 2)->window_ms, 90000); /* per call */
    CHECK_STR_EQ(nth(&p, 3)->endpoint, "crm");
    CHECK_INT_EQ(nth(&p, 3)->window_ms, 30 * 60000); /* production default */
    rules_plan_clear(&p);

    /* a string payload, headers, content type */
    CHECK_INT_EQ(route(r, "order.updated", "{\"id\":7}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 1);
    CHECK_STR_EQ(nth(&p, 0)->payload, "order 7");
    CHECK_INT_EQ(nth(&p, 0)->payload_len, 7);
    CHECK_STR_EQ(nth(&p, 0)->content_type, "text/plain");
    CHECK_STR_EQ(nth(&p, 0)->headers_json, "{\"X-Kind\":\"order\"}");
    rules_plan_clear(&p);

    /* raw and headers read like fields but are not part of the envelope */
    CHECK_INT_EQ(route(r, "raw.echo", "{\"k\":[1,{\"z\":true}]}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 1);
    CHECK_STR_EQ(nth(&p, 0)->payload, "{\"agent\":\"test/1\",\"data\":{\"k\":[1,{\"z\":true}]},"
                                      "\"raw\":\"{\\\"k\\\":[1,{\\\"z\\\":true}]}\"}");
    rules_plan_clear(&p);

    /* subscribers(): none yet */
    CHECK_INT_EQ(route(r, "sub.x", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 0);

    /* bad event data */
    CHECK_INT_EQ(route(r, "x", "{nope", &p, err, sizeof err), -1);
    CHECK(strncmp(err, "event evt_test: data: invalid JSON", 34) == 0);
    CHECK_INT_EQ(p.n, 0);
}

/* Handlers are independent: after a failed one, the plan holds only the
 * send of 10-ok.lua's handler (none of the failed handler's, not even one
 * made before it failed); cleared. */
static void only_the_ok_send(struct rules_plan *p) {
    CHECK_INT_EQ(p->n, 1);
    CHECK_STR_EQ(nth(p, 0)->payload, "{\"ok\":true}");
    rules_plan_clear(p);
}

/* Rules that fail, written into a temp folder: each failure's message, the
 * other handlers' sends kept (partial); the VM keeps routing afterwards. */
static void test_rule_failures(void) {
    struct rules_plan p = {0};
    char err[512];
    struct rules *r;

    fresh();
    write_file("rules/10-ok.lua", "on('*', function(ev) send('erp', { ok = true }) end)\n");
    write_file(
        "rules/30-bad.lua",
        "on('bad.endpoint', function(ev)\n"
        "  send('crm', ev)\n"
        "end)\n"
        "on('bad.pcall', function(ev)\n"
        "  local ok = pcall(send, 'crm', ev)\n"
        "  send('erp', { caught = not ok })\n"
        "end)\n"
        "on('bad.error', function(ev)\n"
        "  local x = nil\n"
        "  return x.y\n"
        "end)\n"
        "on('bad.object', function(ev) error({}) end)\n"
        "on('bad.plain', function(ev) error('no location', 0) end)\n"
        "local function helper(p) send('erp', p) end\n"
        "on('bad.payload', function(ev)\n"
        "  helper({ f = print })\n"
        "end)\n"
        "on('bad.options', function(ev) send('erp', 'x', { header = {} }) end)\n"
        "on('bad.header', function(ev) send('erp', 'x', { headers = { ['X-A'] = 'a\\nb' } }) end)\n"
        "on('bad.reserved', function(ev) send('erp', 'x', { headers = { ['X-Waybill-Delivery'] = "
        "'a' } }) end)\n"
        "on('bad.window', function(ev) batch('erp', {}, 'soon') end)\n"
        "on('bad.batchstr', function(ev) batch('erp', 'not json') end)\n"
        "on('bad.payloadtype', function(ev) send('erp', 42) end)\n"
        "on('ok.batchstr', function(ev) batch('erp', '{\"a\":1}', 60) end)\n"
        "on('bad.on', function(ev) on('x', function() end) end)\n");
    r = load_text("endpoint 'erp' { url = 'http://h/', sign = 'none' }\nrules 'rules/'\n", err,
                  sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "failures: %s\n", err);
        return;
    }
    CHECK_INT_EQ(route(r, "bad.endpoint", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:2: send: unknown endpoint 'crm'");
    CHECK_INT_EQ(route(r, "bad.pcall", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:5: send: unknown endpoint 'crm'");
    CHECK_INT_EQ(route(r, "bad.error", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:10: attempt to index a nil value (local 'x')");
    CHECK_INT_EQ(route(r, "bad.object", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:12: error object is a table value");
    CHECK_INT_EQ(route(r, "bad.plain", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:13: no location");
    CHECK_INT_EQ(route(r, "bad.payload", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:14: send: payload: cannot encode a function value");
    CHECK_INT_EQ(route(r, "bad.options", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:18: send: unknown option 'header' (headers, content_type)");
    CHECK_INT_EQ(route(r, "bad.header", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:19: send: headers: X-A holds a line break or NUL");
    CHECK_INT_EQ(route(r, "bad.reserved", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:20: send: headers: X-Waybill-Delivery is set by waybill");
    CHECK_INT_EQ(route(r, "bad.window", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(
        err, "rules/30-bad.lua:21: batch: bad window (use e.g. \"10m\" or a number of seconds)");
    CHECK_INT_EQ(route(r, "bad.batchstr", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK(strncmp(err, "rules/30-bad.lua:22: batch: a string payload must be JSON text", 62) == 0);
    CHECK_INT_EQ(route(r, "bad.payloadtype", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(
        err, "rules/30-bad.lua:23: send: the payload must be a table or a string, not a number");
    CHECK_INT_EQ(route(r, "bad.on", "{}", &p, err, sizeof err), 1);
    only_the_ok_send(&p);
    CHECK_STR_EQ(err, "rules/30-bad.lua:25: on: handlers can only be added while the rules load");
    CHECK_INT_EQ(route(r, "ok.batchstr", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 2);
    CHECK_STR_EQ(nth(&p, 1)->payload, "{\"a\":1}");
    CHECK_INT_EQ(nth(&p, 1)->window_ms, 60000);
    rules_plan_clear(&p);
    /* still routing */
    CHECK_INT_EQ(route(r, "fine", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 1);
    CHECK_STR_EQ(nth(&p, 0)->payload, "{\"ok\":true}");
    rules_plan_clear(&p);
    rules_free(r);
}

/* ---- routing from canonical data (the ingest path) ---- */

/* text as rules_adapt stores an adapter's data: decoded, encoded again. */
static char *canonical(const char *text) {
    static size_t max = 0;
    lua_State *L = luaL_newstate();
    struct util_buf b = {0};
    char err[300];
    jsonx_open(L, &max);
    lua_pop(L, 1);
    if (jsonx_decode(L, text, strlen(text), JSON_DECODE_ANY, err, sizeof err) < 0 ||
        jsonx_encode(L, -1, &b, 0, err, sizeof err) < 0) {
        fprintf(stderr, "canonical: %s\n", err);
        util_buf_free(&b);
        b.p = NULL;
    }
    lua_close(L);
    return b.p;
}

/* Routes in with data_canonical 0 (every handler called in Lua, its table
 * decoded from data_json) and 1 (list handlers done in C while the event is
 * unchanged, the table built when a function needs it): the same plan,
 * byte for byte, or the same error. Returns the 0-mode result. */
static int same_both_ways(struct rules *r, struct rules_input in, struct rules_plan *keep,
                          char *err0, size_t errlen) {
    struct rules_plan p0 = {0}, p1 = {0};
    char err1[512];
    int rc0, rc1, same;

    in.data_canonical = 0;
    err0[0] = err1[0] = '\0';
    rc0 = rules_route(r, &in, &p0, err0, errlen);
    in.data_canonical = 1;
    rc1 = rules_route(r, &in, &p1, err1, sizeof err1);
    same = rc0 == rc1 && p0.n == p1.n && (rc0 == 0 || strcmp(err0, err1) == 0);
    for (size_t i = 0; same && i < p0.n; i++) {
        const struct rules_send *a = &p0.sends[i], *b = &p1.sends[i];
        same = strcmp(a->endpoint, b->endpoint) == 0 && a->payload_len == b->payload_len &&
               memcmp(a->payload, b->payload, a->payload_len) == 0 &&
               strcmp(a->content_type, b->content_type) == 0 &&
               (a->headers_json == NULL) == (b->headers_json == NULL) &&
               (!a->headers_json || strcmp(a->headers_json, b->headers_json) == 0) &&
               a->window_ms == b->window_ms;
    }
    if (!same)
        fprintf(stderr, "canonical routing differs for %s: rc %d/%d, n %zu/%zu: %.300s | %.300s\n",
                in.type, rc0, rc1, p0.n, p1.n, rc0 ? err0 : (p0.n ? p0.sends[0].payload : ""),
                rc1 ? err1 : (p1.n ? p1.sends[0].payload : ""));
    CHECK(same);
    rules_plan_clear(&p1);
    if (keep)
        *keep = p0;
    else
        rules_plan_clear(&p0);
    return rc0;
}

static void test_canonical_routing(void) {
    static const char *datas[] = {
        "{}",
        "[]",
        "null",
        "5",
        "1.5",
        "\"text\"",
        "true",
        "[1,2,[3,[]],{}]",
        "{\"a\":1.0,\"b\":1e21,\"c\":-0.0,\"d\":123456789012345678901234567890,\"e\":1e-7}",
        "{\"s\":\"\\u00e9\\ud83d\\ude00\\u0001\\n\\\"\\\\/\",\"k\":{\"2\":1,\"10\":2,\"a\":3}}",
        "{\"n\":null,\"arr\":[null,1,null],\"deep\":{\"x\":{\"y\":{\"z\":[{}]}}}}",
    };
    struct rules_plan p = {0};
    char err[512], *data;
    struct rules *r;

    fresh();
    write_file("rules/10-list.lua", "on('*', { 'a', 'b' })\n"
                                    "on('mut.*', function(ev)\n"
                                    "  ev.data.added = 7\n"
                                    "  ev.id = 'changed'\n"
                                    "  send('a', { seen = ev.data })\n"
                                    "end)\n"
                                    "on('mut.*', 'b')\n"
                                    "on('waybill.*', 'a')\n"
                                    "on('fn.*', function(ev)\n"
                                    "  send('b', { t = ev.type, d = ev.data })\n"
                                    "end)\n"
                                    "on('fn.*', { 'a' })\n"
                                    "local kept\n"
                                    "on('keep.set', function(ev) kept = ev end)\n"
                                    "on('keep.get', function(ev)\n"
                                    "  send('a', { old = kept.headers['x-a'] .. ':' ..\n"
                                    "    kept.raw })\n"
                                    "end)\n"
                                    "on('hdr.*', function(ev)\n"
                                    "  local h = ev.headers\n"
                                    "  h.mark = 'set'\n"
                                    "  local keys = {}\n"
                                    "  for k in pairs(ev) do keys[#keys + 1] = k end\n"
                                    "  table.sort(keys)\n"
                                    "  send('a', { same = ev.headers == h, n = #keys,\n"
                                    "    keys = table.concat(keys, ','), raw = ev.raw,\n"
                                    "    rawh = rawget(ev, 'headers') == nil,\n"
                                    "    mt = getmetatable(ev),\n"
                                    "    other = ev.other == nil and ev[1] == nil })\n"
                                    "end)\n"
                                    "on('hdr.*', function(ev)\n"
                                    "  send('b', { mark = ev.headers.mark,\n"
                                    "    agent = ev.headers['user-agent'] })\n"
                                    "end)\n");
    r = load_text("endpoint 'a' { url = 'http://h/a', sign = 'none' }\n"
                  "endpoint 'b' { url = 'http://h/b', sign = 'none' }\nrules 'rules/'\n",
                  err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "canonical: %s\n", err);
        return;
    }
    for (size_t i = 0; i < sizeof datas / sizeof *datas; i++) {
        static const char *types[] = {"plain.x", "mut.x", "fn.x", "waybill.delivery.failed"};
        data = canonical(datas[i]);
        CHECK(data != NULL);
        for (size_t t = 0; data && t < 4; t++) {
            struct rules_input in = {"evt_c",
                                     "atoship",
                                     "src\\u",
                                     types[t],
                                     "2024-01-15T10:30:00Z",
                                     1705314601500LL,
                                     data,
                                     "{}",
                                     2,
                                     test_headers,
                                     0,
                                     0,
                                     NULL};
            same_both_ways(r, in, NULL, err, sizeof err); /* mut.x fails on a non-table */
        }
        free(data);
    }
    /* what list handlers send, pinned: the envelope around data's own text */
    {
        struct rules_input in = {"evt_c",
                                 "atoship",
                                 "s\x01\xc3\xa9",
                                 "plain.x",
                                 NULL,
                                 1705314601000LL,
                                 "{\"b\":[1.5,null],\"a\":\"x\"}",
                                 "{}",
                                 2,
                                 test_headers,
                                 0,
                                 0,
                                 NULL};
        data = canonical(in.data_json);
        in.data_json = data;
        CHECK_INT_EQ(same_both_ways(r, in, &p, err, sizeof err), 0);
        CHECK_INT_EQ(p.n, 2);
        CHECK_STR_EQ(nth(&p, 0)->payload,
                     "{\"data\":{\"b\":[1.5,null],\"a\":\"x\"},\"id\":\"evt_c\",\"received_at\":"
                     "\"2024-01-15T10:30:01Z\",\"source\":\"atoship\","
                     "\"source_id\":\"s\\u0001\xc3\xa9\","
                     "\"type\":\"plain.x\"}");
        CHECK_STR_EQ(nth(&p, 1)->payload, nth(&p, 0)->payload);
        rules_plan_clear(&p);
        free(data);
    }
    /* a user function that changed the event: later list handlers send it changed */
    {
        struct rules_input in = {"evt_c", "atoship", "s",          "mut.y", NULL, 0,   "{\"k\":1}",
                                 "{}",    2,         test_headers, 0,       0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, &p, err, sizeof err), 0);
        CHECK_INT_EQ(p.n, 4);
        CHECK(strstr(nth(&p, 0)->payload, "\"id\":\"evt_c\"") != NULL);
        CHECK_STR_EQ(nth(&p, 2)->payload, "{\"seen\":{\"added\":7,\"k\":1}}");
        CHECK(strstr(nth(&p, 3)->payload, "\"id\":\"changed\"") != NULL);
        CHECK(strstr(nth(&p, 3)->payload, "\"data\":{\"added\":7,\"k\":1}") != NULL);
        rules_plan_clear(&p);
    }
    /* received_at, formatted once per second and kept: each event's own */
    {
        static const int64_t when[] = {
            1705314601500LL, 1705314601000LL, 1705314602000LL,  1705314601999LL, 0, 999, 1000, -1,
            -1000,           -1500,           253402300799999LL};
        for (size_t k = 0; k < sizeof when / sizeof *when; k++) {
            char want[64], text[40];
            struct rules_input in = {"evt_c", "atoship",    "s",  k % 2 ? "plain.x" : "fn.x",
                                     NULL,    when[k],      "{}", "{}",
                                     2,       test_headers, 0,    0,
                                     NULL};
            util_time_rfc3339(when[k], text, sizeof text);
            snprintf(want, sizeof want, "\"received_at\":\"%s\"", text);
            CHECK_INT_EQ(same_both_ways(r, in, &p, err, sizeof err), 0);
            CHECK(p.n > 0 && strstr(nth(&p, p.n - 1)->payload, want) != NULL);
            rules_plan_clear(&p);
        }
    }
    /* headers: read on first use, the same table every read, kept by an
     * event a handler holds on to; raw and headers never among its fields */
    {
        struct rules_input in = {"evt_h", "atoship", "s",          "hdr.x", NULL, 0,   "{}",
                                 "RAW",   3,         test_headers, 0,       0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, &p, err, sizeof err), 0);
        CHECK_INT_EQ(p.n, 4); /* '*' list first, then the two functions */
        CHECK_STR_EQ(nth(&p, 2)->payload,
                     "{\"keys\":\"data,id,received_at,source,source_id,type\",\"mt\":false,"
                     "\"n\":6,\"other\":true,\"raw\":\"RAW\",\"rawh\":true,\"same\":true}");
        CHECK_STR_EQ(nth(&p, 3)->payload, "{\"agent\":\"test/1\",\"mark\":\"set\"}");
        rules_plan_clear(&p);
        in.raw = NULL;
        in.headers_json = NULL; /* none: an empty table; no raw: nil */
        CHECK_INT_EQ(same_both_ways(r, in, &p, err, sizeof err), 0);
        CHECK_INT_EQ(p.n, 4);
        CHECK_STR_EQ(nth(&p, 2)->payload,
                     "{\"keys\":\"data,id,received_at,source,source_id,type\",\"mt\":false,"
                     "\"n\":6,\"other\":true,\"rawh\":true,\"same\":true}");
        CHECK_STR_EQ(nth(&p, 3)->payload, "{\"mark\":\"set\"}");
        rules_plan_clear(&p);
        in.headers_json = "{not json"; /* unreadable: an empty table too */
        CHECK_INT_EQ(same_both_ways(r, in, &p, err, sizeof err), 0);
        CHECK_INT_EQ(p.n, 4);
        CHECK_STR_EQ(nth(&p, 3)->payload, "{\"mark\":\"set\"}");
        rules_plan_clear(&p);
        /* an event kept by a handler reads its own headers and raw later */
        in.type = "keep.set";
        in.raw = "RAW";
        in.headers_json = test_headers;
        CHECK_INT_EQ(rules_route(r, &in, &p, err, sizeof err), 0);
        rules_plan_clear(&p);
        in.type = "keep.get";
        in.raw = "OTHER";
        in.raw_len = 5;
        in.headers_json = "{\"x-a\":\"2\"}";
        CHECK_INT_EQ(rules_route(r, &in, &p, err, sizeof err), 0);
        CHECK_INT_EQ(p.n, 3);
        CHECK_STR_EQ(nth(&p, 2)->payload, "{\"old\":\"1:RAW\"}");
        rules_plan_clear(&p);
    }
    /* not UTF-8: the same error either way */
    {
        struct rules_input in = {"evt_c", "atoship", "bad\xff",    "plain.x", NULL, 0,   "{}",
                                 "{}",    2,         test_headers, 0,         0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, NULL, err, sizeof err), -1);
        CHECK(strstr(err, "send: payload: invalid UTF-8 in a string") != NULL);
    }
    /* data nested to the encoder's limit: it fits alone, not inside the event */
    for (size_t depth = 2046; depth <= 2048; depth++) {
        char *deep = malloc(2 * depth + 1);
        for (size_t k = 0; k < depth; k++) {
            deep[k] = '[';
            deep[2 * depth - 1 - k] = ']';
        }
        deep[2 * depth] = '\0';
        struct rules_input in = {"evt_c", "atoship", "s",          "plain.x", NULL, 0,   deep,
                                 "{}",    2,         test_headers, 0,         0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, NULL, err, sizeof err), depth < 2048 ? 0 : -1);
        if (depth == 2048)
            CHECK(strstr(err, "nesting deeper than 2048 levels") != NULL);
        free(deep);
    }
    /* a 1 MiB string: well under the default rule_memory */
    {
        size_t n = (1 << 20) + 100;
        char *big = malloc(n + 3);
        big[0] = '"';
        memset(big + 1, 'x', n);
        big[n + 1] = '"';
        big[n + 2] = '\0';
        struct rules_input in = {"evt_c", "atoship", "s",          "plain.x", NULL, 0,   big,
                                 "{}",    2,         test_headers, 0,         0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, NULL, err, sizeof err), 0); /* default 64 MiB */
        free(big);
    }
    rules_free(r);

    /* a budget too small for even a list handler's function: stopped either way */
    r = load_text("rule_budget = 3\nendpoint 'a' { url = 'http://h/a', sign = 'none' }\n"
                  "endpoint 'b' { url = 'http://h/b', sign = 'none' }\nrules 'rules/'\n",
                  err, sizeof err);
    CHECK(r != NULL);
    if (r) {
        struct rules_input in = {"evt_c", "atoship", "s",          "plain.x", NULL, 0,   "{}",
                                 "{}",    2,         test_headers, 0,         0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, NULL, err, sizeof err), -1);
        CHECK(strstr(err, "instruction budget exceeded") != NULL);
        rules_free(r);
    }
    /* rule_memory 1 MiB: a 1 MiB payload is past the cap either way */
    r = load_text("rule_memory = '1MiB'\nendpoint 'a' { url = 'http://h/a', sign = 'none' }\n"
                  "endpoint 'b' { url = 'http://h/b', sign = 'none' }\nrules 'rules/'\n",
                  err, sizeof err);
    CHECK(r != NULL);
    if (r) {
        size_t n = (1 << 20) + 100;
        char *big = malloc(n + 3);
        big[0] = '"';
        memset(big + 1, 'x', n);
        big[n + 1] = '"';
        big[n + 2] = '\0';
        struct rules_input in = {"evt_c", "atoship", "s",          "plain.x", NULL, 0,   big,
                                 "{}",    2,         test_headers, 0,         0,    NULL};
        CHECK_INT_EQ(same_both_ways(r, in, NULL, err, sizeof err), -1);
        CHECK(strstr(err, "output larger than") != NULL || strstr(err, "rule_memory") != NULL ||
              strstr(err, "memory") != NULL);
        free(big);
        rules_free(r);
    }
}

/* ---- the adapter's data kept for routing (rules_adapt_keep) ---- */

/* Adapts body with source s (kept or not), routes the result, returns the
 * first send's payload (new) or the error text. */
static char *adapt_route(struct rules *r, struct rules *route_with, const char *body, int keep,
                         uint64_t *token) {
    const struct config_source *src = config_source_by_name(rules_config(r), "s");
    struct rules_event ev = {0};
    struct rules_plan p = {0};
    char err[512], *out;
    int rc = keep ? rules_adapt_keep(r, src, body, strlen(body), "{}", &ev, err, sizeof err)
                  : rules_adapt(r, src, body, strlen(body), "{}", &ev, err, sizeof err);
    if (rc != 0)
        return strdup(err);
    if (token)
        *token = ev.data_token;
    struct rules_input in = {"evt_k",         "s",  "sid",        ev.type, NULL, 0,
                             ev.data_json,    body, strlen(body), "{}",    1,    ev.data_token,
                             ev.shipment_json};
    rc = rules_route(route_with, &in, &p, err, sizeof err);
    out = strdup(rc ? err : p.n ? p.sends[0].payload : "(no send)");
    rules_plan_clear(&p);
    rules_event_clear(&ev);
    return out;
}

static void test_kept_data(void) {
    /* what a handler can tell about a table: types, number subtypes, array
     * marks, lengths, and the order pairs() visits keys in */
    static const char *describe =
        "local function d(v)\n"
        "  if type(v) == 'number' then return math.type(v) .. ':' .. tostring(v) end\n"
        "  if type(v) ~= 'table' then return type(v) .. ':' .. tostring(v) end\n"
        "  local parts = { tostring(getmetatable(v)), '#' .. #v }\n"
        "  for k, x in pairs(v) do parts[#parts + 1] = math.type(k) or type(k)\n"
        "    parts[#parts + 1] = tostring(k) .. '=' .. d(x) end\n"
        "  return '{' .. table.concat(parts, ' ') .. '}'\n"
        "end\n"
        "on('*', function(ev) send('a', d(ev.data)) end)\n";
    static const char *bodies[] = {
        "{\"type\":\"t\",\"data\":{\"a\":1.0,\"b\":2.5,\"c\":[1,[],{}],\"d\":{\"2\":\"x\"},"
        "\"e\":-0.0,\"f\":1e21,\"g\":123456789012345678901234567890,\"h\":null,\"i\":true}}",
        "{\"type\":\"t\",\"data\":[1,2.0,\"x\",[null]]}",
        "{\"type\":\"t\",\"data\":\"text\"}",
        "{\"type\":\"t\",\"data\":4.0}",
        "{\"type\":\"t\",\"data\":{}}",
        "{\"type\":\"t\",\"data\":[]}",
        "{\"type\":\"t\"}",
        "{\"type\":\"sparse\",\"data\":{}}",
        "{\"type\":\"mixed\",\"data\":{}}",
    };
    char err[512], *a, *b;
    struct rules *r, *other;
    uint64_t token = 0;

    fresh();
    write_file("rules/10-d.lua", describe);
    /* the adapter keeps its last data and changes it on the next call: the
     * kept copy is what was encoded, not the live table */
    write_file("adapters/k.lua",
               "local last\n"
               "return function(body)\n"
               "  if last and type(last) == 'table' then last.changed = true end\n"
               "  local data = body.data\n"
               "  if body.type == 'sparse' then\n"
               "    data = { [1] = 'a', [3] = 'c', [2.0] = 'b2' }\n"
               "  end\n"
               "  if body.type == 'mixed' then data = { 1, 2, x = 1.5, [10] = 0.0 } end\n"
               "  last = data\n"
               "  return { type = body.type, data = data }\n"
               "end\n");
    r = load_text("source 's' { verify = 'none', insecure = true, adapter = 'adapters/k.lua' }\n"
                  "endpoint 'a' { url = 'http://h/a', sign = 'none' }\nrules 'rules/'\n",
                  err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "kept: %s\n", err);
        return;
    }
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        a = adapt_route(r, r, bodies[i], 0, NULL);
        b = adapt_route(r, r, bodies[i], 1, &token);
        CHECK(a && b && strcmp(a, b) == 0);
        if (a && b && strcmp(a, b) != 0)
            fprintf(stderr, "kept data differs: %s | %s\n", a, b);
        free(a);
        free(b);
    }
    CHECK(token != 0); /* the last one was kept */
    /* pinned: what the handler sees of 1.0, -0.0, 1e21, arrays, "2" keys */
    a = adapt_route(r, r, "{\"type\":\"t\",\"data\":{\"a\":1.0,\"c\":[2.0],\"d\":{\"2\":1}}}", 1,
                    NULL);
    CHECK(a && strstr(a, "integer:1") && strstr(a, "{json.array #1 integer 1=integer:2}") &&
          strstr(a, "{nil #0 string 2=integer:1}"));
    free(a);

    /* a token routed by another generation, or twice, just decodes */
    other =
        load_text("source 's' { verify = 'none', insecure = true, adapter = 'adapters/k.lua' }\n"
                  "endpoint 'a' { url = 'http://h/a', sign = 'none' }\nrules 'rules/'\n",
                  err, sizeof err);
    CHECK(other != NULL);
    if (other) {
        a = adapt_route(other, other, bodies[0], 0, NULL); /* pairs order is per VM */
        b = adapt_route(r, other, bodies[0], 1, &token);
        CHECK(a && b && strcmp(a, b) == 0);
        rules_data_drop(other, token); /* not its token: nothing happens */
        rules_data_drop(r, token);     /* its own, still kept: freed */
        rules_data_drop(r, token);     /* twice: nothing */
        free(a);
        free(b);
        rules_free(other);
    }
    /* more kept than slots: the oldest are overwritten and decode instead */
    {
        const struct config_source *src = config_source_by_name(rules_config(r), "s");
        struct rules_event evs[600];
        int same = 1;
        memset(evs, 0, sizeof evs);
        for (size_t i = 0; i < 600; i++)
            CHECK(rules_adapt_keep(r, src, bodies[0], strlen(bodies[0]), "{}", &evs[i], err,
                                   sizeof err) == 0);
        a = adapt_route(r, r, bodies[0], 0, NULL);
        for (size_t i = 0; i < 600; i += 7) {
            struct rules_plan p = {0};
            struct rules_input in = {"evt_k",
                                     "s",
                                     "sid",
                                     evs[i].type,
                                     NULL,
                                     0,
                                     evs[i].data_json,
                                     bodies[0],
                                     strlen(bodies[0]),
                                     "{}",
                                     1,
                                     evs[i].data_token,
                                     evs[i].shipment_json};
            if (rules_route(r, &in, &p, err, sizeof err) != 0 || p.n != 1 || !a ||
                strcmp(p.sends[0].payload, a) != 0)
                same = 0;
            rules_plan_clear(&p);
        }
        CHECK(same);
        for (size_t i = 0; i < 600; i++) {
            rules_data_drop(r, evs[i].data_token);
            rules_event_clear(&evs[i]);
        }
        free(a);
    }
    rules_free(r);
}

/* ---- limits ---- */

static void test_budget(void) {
    struct rules_plan p = {0};
    char err[512];
    struct rules *r;
    int64_t t0;

    fresh();
    write_file("rules/loop.lua",
               "on('ok', function(ev) send('erp', { n = 1 }) end)\n"
               "on('loop.plain', function(ev)\n"
               "  while true do end\n"
               "end)\n"
               "on('loop.pcall', function(ev)\n"
               "  while true do pcall(function() while true do end end) end\n"
               "end)\n"
               "on('loop.xpcall', function(ev)\n"
               "  xpcall(function() while true do end end, function() while true do end end)\n"
               "  send('erp', { escaped = true })\n"
               "end)\n"
               "on('loop.coroutine', function(ev)\n"
               "  while true do coroutine.wrap(function() for i = 1, 500 do end end)() end\n"
               "end)\n"
               "on('loop.co_pcall', function(ev)\n"
               "  local co = coroutine.create(function() while true do end end)\n"
               "  local ok = coroutine.resume(co)\n"
               "  send('erp', { resumed = ok })\n"
               "end)\n"
               "on('loop.recursion', function(ev)\n"
               "  local function f(n) return f(n + 1) + 1 end\n"
               "  f(1)\n"
               "end)\n"
               "on('loop.gsub', function(ev)\n"
               "  local n = 0\n"
               "  string.gsub(string.rep('a', 100000), 'a', function() n = n + 1 end)\n"
               "  string.gsub(string.rep('a', 100000), 'a', function() n = n + 1 end)\n"
               "  string.gsub(string.rep('a', 100000), 'a', function() n = n + 1 end)\n"
               "  string.gsub(string.rep('a', 100000), 'a', function() n = n + 1 end)\n"
               "end)\n"
               "on('loop.sort', function(ev)\n"
               "  local t = {} for i = 1, 50000 do t[i] = -i end\n"
               "  table.sort(t, function(a, b) return a < b end)\n"
               "end)\n");
    r = load_text("endpoint 'erp' { url = 'http://h/', sign = 'none' }\nrules 'rules'\n", err,
                  sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "budget: %s\n", err);
        return;
    }
    t0 = util_mono_ms();
    CHECK_INT_EQ(route(r, "loop.plain", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/loop.lua:3: rule stopped: instruction budget exceeded");
    CHECK_INT_EQ(route(r, "loop.pcall", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/loop.lua:6: rule stopped: instruction budget exceeded");
    CHECK_INT_EQ(route(r, "loop.xpcall", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/loop.lua:9: rule stopped: instruction budget exceeded");
    CHECK_INT_EQ(p.n, 0);
    CHECK_INT_EQ(route(r, "loop.coroutine", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/loop.lua:13: rule stopped: instruction budget exceeded");
    CHECK_INT_EQ(route(r, "loop.co_pcall", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/loop.lua:16: rule stopped: instruction budget exceeded");
    CHECK_INT_EQ(p.n, 0);
    CHECK_INT_EQ(route(r, "loop.recursion", "{}", &p, err, sizeof err), -1);
    CHECK(strstr(err, "rules/loop.lua:21: ") == err);
    CHECK_INT_EQ(route(r, "loop.gsub", "{}", &p, err, sizeof err), -1);
    CHECK(strstr(err, "rule stopped: instruction budget exceeded") != NULL);
    CHECK_INT_EQ(route(r, "loop.sort", "{}", &p, err, sizeof err), -1);
    CHECK(strstr(err, "rule stopped: instruction budget exceeded") != NULL);
    CHECK(util_mono_ms() - t0 < 5000);
    /* the VM still routes */
    CHECK_INT_EQ(route(r, "ok", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 1);
    rules_plan_clear(&p);
    rules_free(r);
}

static void test_memory(void) {
    struct rules_plan p = {0};
    char err[512];
    struct rules *r;

    fresh();
    write_file("rules/mem.lua",
               "on('ok', function(ev) send('erp', { s = string.rep('y', 1000) }) end)\n"
               "on('mem.rep', function(ev)\n"
               "  local s = string.rep('x', 1e9)\n"
               "end)\n"
               "on('mem.rep_pcall', function(ev)\n"
               "  local ok = pcall(string.rep, 'x', 1e9)\n"
               "  send('erp', { survived = ok })\n"
               "end)\n"
               "on('mem.table', function(ev)\n"
               "  local t = {}\n"
               "  for i = 1, 1e9 do t[i] = i end\n"
               "end)\n"
               "on('mem.strings', function(ev)\n"
               "  local t = {}\n"
               "  for i = 1, 1e9 do t[i] = string.rep('z', 1000) .. i end\n"
               "end)\n"
               "on('mem.concat', function(ev)\n"
               "  local s = 'x'\n"
               "  while true do s = s .. s end\n"
               "end)\n"
               "on('mem.sends', function(ev)\n"
               "  local big = string.rep('b', 1e6)\n"
               "  for i = 1, 1e6 do send('erp', big) end\n"
               "end)\n"
               "on('mem.json', function(ev)\n"
               "  local t = {} for i = 1, 30 do t[i] = 'x' end\n"
               "  for d = 1, 8 do local u = {} for i = 1, 30 do u[i] = t end t = u end\n"
               "  send('erp', t)\n"
               "end)\n");
    r = load_text("endpoint 'erp' { url = 'http://h/', sign = 'none' }\n"
                  "rule_memory = '16MiB'\nrule_budget = 1e9\nrules 'rules'\n",
                  err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "memory: %s\n", err);
        return;
    }
    CHECK_INT_EQ(route(r, "mem.rep", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/mem.lua:2: rule stopped: memory limit exceeded");
    CHECK_INT_EQ(route(r, "ok", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 1);
    rules_plan_clear(&p);
    CHECK_INT_EQ(route(r, "mem.rep_pcall", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/mem.lua:7: rule stopped: memory limit exceeded");
    CHECK_INT_EQ(p.n, 0);
    CHECK_INT_EQ(route(r, "mem.table", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/mem.lua:9: rule stopped: memory limit exceeded");
    CHECK_INT_EQ(route(r, "ok", "{}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 1);
    rules_plan_clear(&p);
    CHECK_INT_EQ(route(r, "mem.strings", "{}", &p, err, sizeof err), -1);
    CHECK(strstr(err, "rules/mem.lua:") == err &&
          strstr(err, ": rule stopped: memory limit exceeded"));
    CHECK_INT_EQ(route(r, "mem.concat", "{}", &p, err, sizeof err), -1);
    CHECK(strstr(err, ": rule stopped: memory limit exceeded") != NULL);
    CHECK_INT_EQ(route(r, "mem.sends", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/mem.lua:23: send: the deliveries of this event exceed rule_memory");
    CHECK_INT_EQ(p.n, 0);
    CHECK_INT_EQ(route(r, "mem.json", "{}", &p, err, sizeof err), -1);
    CHECK_STR_EQ(err, "rules/mem.lua:28: send: payload: output larger than 16777216 bytes");
    /* and it still routes, repeatedly */
    for (int i = 0; i < 200; i++) {
        CHECK_INT_EQ(route(r, "ok", "{}", &p, err, sizeof err), 0);
        rules_plan_clear(&p);
    }
    CHECK_INT_EQ(route(r, "ok", "{}", &p, err, sizeof err), 0);
    CHECK(p.n == 1 && nth(&p, 0)->payload_len == 1008);
    rules_plan_clear(&p);
    rules_free(r);
}

/* ---- the sandbox ---- */

static void test_sandbox(void) {
    struct rules_plan p = {0};
    char err[512];
    struct rules *r;

    fresh();
    write_file("rules/a.lua",
               "string.upper = nil -- this file's own copy\n"
               "on('probe', function(ev)\n"
               "  local r = {}\n"
               "  r.io, r.debug, r.package = type(io), type(debug), type(package)\n"
               "  r.dofile, r.loadfile = type(dofile), type(loadfile)\n"
               "  r.collectgarbage = type(collectgarbage)\n"
               "  r.execute, r.getenv, r.exit = type(os.execute), type(os.getenv), type(os.exit)\n"
               "  r.remove, r.tmpname = type(os.remove), type(os.tmpname)\n"
               "  r.dump, r.sdump = type(string.dump), type(('').dump)\n"
               "  r.req_io = pcall(require, 'io')\n"
               "  r.req_os = pcall(require, 'os')\n"
               "  r.req_up = pcall(require, '..waybill')\n"
               "  r.req_self = pcall(require, 'waybill')\n"
               "  r.req_tax = type(require('taxonomy'))\n"
               "  local f, e = load('\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n')\n"
               "  r.bytecode = f == nil and e:find('binary', 1, true) ~= nil\n"
               "  local f2 = load('\\27Lua', 'x', 'b')\n"
               "  r.bytecode_b = f2 == nil\n"
               "  r.text = load('return 1 + 1')()\n"
               "  r.text_env = load('return ev_marker')()\n"
               "  r.strmeta = getmetatable('')\n"
               "  r.gc = pcall(setmetatable, {}, { __gc = function() end })\n"
               "  r.mt = pcall(setmetatable, {}, { __index = {} })\n"
               "  r.time = math.type(os.time())\n"
               "  r.g = _G == _ENV\n"
               "  r.upper = ('x'):upper()\n"
               "  r.my_upper = type(string.upper)\n"
               "  r.evmeta = getmetatable(ev)\n"
               "  r.null = ev.data.n == json.null\n"
               "  r.envvar = env('WB_TEST_SET_VAR')\n"
               "  log('probe', 1, nil) log.warn('w') print('p', true)\n"
               "  send('erp', r)\n"
               "end)\n"
               "ev_marker = 'mine'\n");
    write_file("rules/b.lua",
               "on('probe', function(ev) send('erp', { upper = string.upper('x') }) end)\n");
    r = load_text("endpoint 'erp' { url = 'http://h/', sign = 'none' }\nrules 'rules'\n", err,
                  sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "sandbox: %s\n", err);
        return;
    }
    CHECK_INT_EQ(route(r, "probe", "{\"n\":null}", &p, err, sizeof err), 0);
    CHECK_INT_EQ(p.n, 2);
    CHECK_STR_EQ(nth(&p, 0)->payload,
                 "{\"bytecode\":true,\"bytecode_b\":true,\"collectgarbage\":\"nil\","
                 "\"debug\":\"nil\",\"dofile\":\"nil\",\"dump\":\"nil\",\"envvar\":\"v\","
                 "\"evmeta\":false,\"execute\":\"nil\",\"exit\":\"nil\",\"g\":true,\"gc\":false,"
                 "\"getenv\":\"nil\",\"io\":\"nil\",\"loadfile\":\"nil\",\"mt\":true,"
                 "\"my_upper\":\"nil\",\"null\":true,\"package\":\"nil\",\"remove\":\"nil\","
                 "\"req_io\":false,\"req_os\":false,\"req_self\":false,\"req_tax\":\"table\","
                 "\"req_up\":false,\"sdump\":\"nil\",\"strmeta\":false,\"text\":2,"
                 "\"text_env\":\"mine\",\"time\":\"integer\",\"tmpname\":\"nil\",\"upper\":\"X\"}");
    CHECK_STR_EQ(nth(&p, 1)->payload, "{\"upper\":\"X\"}");
    rules_plan_clear(&p);
    rules_free(r);
}

/* ---- adapters ---- */

static const char *seed_envelope = "{\n"
                                   "\"id\": \"evt_1234567890abcdef\",\n"
                                   "\"type\": \"shipment.delivered\",\n"
                                   "\"created_at\": \"2024-01-15T10:30:00Z\",\n"
                                   "\"data\": {\n"
                                   "\"shipment_id\": \"shp_abc123\",\n"
                                   "\"tracking_number\": \"9400111899223456789012\",\n"
                                   "\"carrier\": \"USPS\",\n"
                                   "\"service\": \"Priority Mail\",\n"
                                   "\"order_id\": \"order_xyz789\",\n"
                                   "\"order_reference\": \"ORD-12345\",\n"
                                   "\"delivered_at\": \"2024-01-15T10:28:00Z\",\n"
                                   "\"delivery_location\": \"Front door\",\n"
                                   "\"signed_by\": \"RESIDENT\"\n"
                                   "},\n"
                                   "\"metadata\": {\n"
                                   "\"organization_id\": \"org_xxxxx\",\n"
                                   "\"attempt\": 1\n"
                                   "}\n"
                                   "}\n";

static int adapt(struct rules *r, const char *source, const char *body, const char *headers,
                 struct rules_event *ev, char *err, size_t errlen) {
    const struct config_source *src = config_source_by_name(rules_config(r), source);
    err[0] = '\0';
    return rules_adapt(r, src, body, strlen(body), headers, ev, err, errlen);
}

static void test_adapters(struct rules *r) {
    struct rules_event ev = {0};
    char err[512];

    CHECK_INT_EQ(adapt(r, "atoship", seed_envelope, "{}", &ev, err, sizeof err), 0);
    CHECK_STR_EQ(ev.type, "shipment.delivered");
    CHECK_STR_EQ(ev.source_id, "evt_1234567890abcdef");
    CHECK_STR_EQ(ev.created_at, "2024-01-15T10:30:00Z");
    /* the carrier's keys in the order it sent them */
    CHECK_STR_EQ(ev.data_json,
                 "{\"shipment_id\":\"shp_abc123\","
                 "\"tracking_number\":\"9400111899223456789012\",\"carrier\":\"USPS\","
                 "\"service\":\"Priority Mail\",\"order_id\":\"order_xyz789\","
                 "\"order_reference\":\"ORD-12345\","
                 "\"delivered_at\":\"2024-01-15T10:28:00Z\","
                 "\"delivery_location\":\"Front door\",\"signed_by\":\"RESIDENT\"}");
    rules_event_clear(&ev);
    CHECK(ev.type == NULL);

    CHECK_INT_EQ(adapt(r, "atoship", "{\"id\":\"e2\",\"type\":\"label.printed\",\"data\":{}}", NULL,
                       &ev, err, sizeof err),
                 0);
    CHECK_STR_EQ(ev.type, "atoship.label.printed");
    CHECK_STR_EQ(ev.data_json, "{}");
    CHECK(ev.created_at == NULL);
    rules_event_clear(&ev);
    CHECK_INT_EQ(adapt(r, "atoship", "[1,2]", NULL, &ev, err, sizeof err), 0);
    CHECK_STR_EQ(ev.type, "atoship.unknown");
    CHECK(ev.source_id == NULL);
    CHECK_STR_EQ(ev.data_json, "{}");
    rules_event_clear(&ev);

    /* not JSON, or not an object or array */
    CHECK_INT_EQ(adapt(r, "atoship", "x", NULL, &ev, err, sizeof err), RULES_EBADJSON);
    CHECK_STR_EQ(err, "invalid JSON at line 1 column 1: '[' or '{' expected near 'x'");
    CHECK_INT_EQ(adapt(r, "atoship", "{\"a\":1,}", NULL, &ev, err, sizeof err), RULES_EBADJSON);
    CHECK(strncmp(err, "invalid JSON at line 1 column ", 30) == 0 && !strchr(err, '\n'));
    CHECK_INT_EQ(adapt(r, "atoship", "\"str\"", NULL, &ev, err, sizeof err), RULES_EBADJSON);
    CHECK_INT_EQ(adapt(r, "atoship", "", NULL, &ev, err, sizeof err), RULES_EBADJSON);
    CHECK(ev.type == NULL && ev.data_json == NULL);

    /* generic: type, event or event_type; data or the whole body */
    CHECK_INT_EQ(adapt(r, "acme", "{\"event\":\"tracking.delivered\",\"id\":42,\"foo\":1.0}", NULL,
                       &ev, err, sizeof err),
                 0);
    CHECK_STR_EQ(ev.type, "tracking.delivered");
    CHECK_STR_EQ(ev.source_id, "42");
    CHECK_STR_EQ(ev.data_json, "{\"event\":\"tracking.delivered\",\"id\":42,\"foo\":1}");
    rules_event_clear(&ev);
    CHECK_INT_EQ(adapt(r, "acme", "{\"event_type\":\"parcel.scanned\",\"data\":{\"p\":[]}}", NULL,
                       &ev, err, sizeof err),
                 0);
    CHECK_STR_EQ(ev.type, "acme.parcel.scanned");
    CHECK(ev.source_id == NULL);
    CHECK_STR_EQ(ev.data_json, "{\"p\":[]}");
    rules_event_clear(&ev);
    CHECK_INT_EQ(adapt(r, "acme", "{}", NULL, &ev, err, sizeof err), 0);
    CHECK_STR_EQ(ev.type, "acme.unknown");
    rules_event_clear(&ev);
    /* aftership: lua/sources/aftership.lua, the tag names the type */
    CHECK_INT_EQ(adapt(r, "aftership",
                       "{\"event_id\":\"e1\",\"msg\":{\"tag\":\"Delivered\",\"updated_at\":\"t\"}}",
                       NULL, &ev, err, sizeof err),
                 0);
    CHECK_STR_EQ(ev.type, "tracking.delivered");
    CHECK_STR_EQ(ev.created_at, "t");
    CHECK_STR_EQ(ev.source_id, "e1");
    rules_event_clear(&ev);
    CHECK_INT_EQ(adapt(r, "aftership", "{\"msg\":{\"tag\":\"Lost\"},\"ts\":1705305731}", NULL, &ev,
                       err, sizeof err),
                 0);
    CHECK_STR_EQ(ev.type, "aftership.Lost");
    CHECK_STR_EQ(ev.created_at, "2024-01-15T08:02:11Z");
    rules_event_clear(&ev);

    /* a source's own adapter file, reading headers; an inline function */
    CHECK_INT_EQ(adapt(r, "open", "{\"q\":1}", "{\"x-kind\":\"open.ping\",\"x-id\":\"h1\"}", &ev,
                       err, sizeof err),
                 0);
    CHECK_STR_EQ(ev.type, "open.ping");
    CHECK_STR_EQ(ev.source_id, "h1");
    CHECK_STR_EQ(ev.data_json, "{\"q\":1}");
    rules_event_clear(&ev);
    CHECK_INT_EQ(adapt(r, "inline", "{\"n\":5,\"kind\":\"k\"}", NULL, &ev, err, sizeof err), 0);
    CHECK_STR_EQ(ev.type, "inline.k");
    CHECK_STR_EQ(ev.source_id, "5");
    CHECK_STR_EQ(ev.data_json, "{\"n\":5}");
    rules_event_clear(&ev);
}

static void test_adapter_failures(void) {
    struct rules_event ev = {0};
    char err[512];
    struct rules *r;

    fresh();
    write_file("adapters/bad.lua", "return function(body)\n  error('nope')\nend\n");
    write_file("adapters/loop.lua", "return function(body)\n  while true do end\nend\n");
    write_file("adapters/notype.lua", "return function(body) return { data = body } end\n");
    r = load_text(
        "source 'bad' { verify = 'none', insecure = true, adapter = 'adapters/bad.lua' }\n"
        "source 'loop' { verify = 'none', insecure = true, adapter = 'adapters/loop.lua' }\n"
        "source 'notype' { verify = 'none', insecure = true, adapter = "
        "'adapters/notype.lua' }\n",
        err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "adapters: %s\n", err);
        return;
    }
    CHECK_INT_EQ(adapt(r, "bad", "{}", NULL, &ev, err, sizeof err), -1);
    CHECK_STR_EQ(err, "adapters/bad.lua:2: nope");
    CHECK_INT_EQ(adapt(r, "loop", "{}", NULL, &ev, err, sizeof err), -1);
    CHECK_STR_EQ(err, "adapters/loop.lua:2: rule stopped: instruction budget exceeded");
    CHECK_INT_EQ(adapt(r, "notype", "{}", NULL, &ev, err, sizeof err), -1);
    CHECK_STR_EQ(err, "adapters/notype.lua: the adapter returned no event type");
    CHECK(ev.type == NULL && ev.data_json == NULL);
    rules_free(r);
}

/* The retry presets (SPEC 7), walked attempt by attempt the way deliver.c
 * does: every delay, then "exhausted"; with jitter every delay within +-10%. */
static void test_retry_presets(void) {
    static const int64_t atoship[] = {0, 60000, 300000, 1800000, 7200000, 21600000};
    static const int64_t shipengine[] = {0, 7200000, 7200000};
    static const int64_t shiptify[] = {0, 1800000, 3600000, 14400000, 86400000};
    static const int64_t list[] = {0, 1000, 5000};
    static const struct {
        const char *name;
        const int64_t *want;
        size_t n;
    } cases[] = {{"a", atoship, 6},
                 {"dflt", atoship, 6},
                 {"se", shipengine, 3},
                 {"st", shiptify, 5},
                 {"l", list, 3}};
    char err[512];
    struct rules *r;
    const struct config *cfg;

    fresh();
    r = load_text(
        "endpoint 'a' { url = 'http://h/', sign = 'none', retry = 'atoship' }\n"
        "endpoint 'dflt' { url = 'http://h/', sign = 'none' }\n"
        "endpoint 'se' { url = 'http://h/', sign = 'none', retry = 'shipengine' }\n"
        "endpoint 'st' { url = 'http://h/', sign = 'none', retry = 'shiptify',"
        " jitter = false }\n"
        "endpoint 'l' { url = 'http://h/', sign = 'none', retry = { '0s', '1s', '5s' } }\n",
        err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "presets: %s\n", err);
        return;
    }
    cfg = rules_config(r);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const struct config_endpoint *ep = config_endpoint_by_name(cfg, cases[c].name);
        int pos = 0;
        int64_t delay = -1;
        CHECK(ep != NULL);
        if (!ep)
            continue;
        CHECK_INT_EQ(ep->nretry, cases[c].n);
        CHECK_INT_EQ(ep->jitter, strcmp(cases[c].name, "st") != 0);
        CHECK_INT_EQ(ep->retry_ms[0], 0);
        for (size_t k = 1; k < cases[c].n; k++) {
            /* exact at the midpoint of the random range, bounded at its ends */
            CHECK_INT_EQ(deliver_schedule_next(ep->retry_ms, ep->nretry, pos, ep->jitter,
                                               0x80000000u, &delay),
                         (int)k);
            CHECK_INT_EQ(delay, cases[c].want[k]);
            deliver_schedule_next(ep->retry_ms, ep->nretry, pos, ep->jitter, 0, &delay);
            CHECK(delay >= cases[c].want[k] - (ep->jitter ? cases[c].want[k] / 10 : 0) &&
                  delay <= cases[c].want[k]);
            deliver_schedule_next(ep->retry_ms, ep->nretry, pos, ep->jitter, 0xffffffffu, &delay);
            CHECK(delay >= cases[c].want[k] &&
                  delay <= cases[c].want[k] + (ep->jitter ? cases[c].want[k] / 10 : 0));
            pos = (int)k;
        }
        CHECK_INT_EQ(deliver_schedule_next(ep->retry_ms, ep->nretry, pos, ep->jitter, 1, &delay),
                     -1);
    }
    rules_free(r);
}

int main(void) {
    struct rules *r;
    char cwd[PATH_MAX];

    if (!getcwd(cwd, sizeof cwd))
        return 2;
    find_dirs();
    snprintf(tmp_root, sizeof tmp_root, "/tmp/waybill-test-rules.XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 2;
    }
    setenv("WB_FIXTURE_TOKEN", "fixture-token", 1);
    unsetenv("WB_FIXTURE_ATOSHIP");
    setenv("WB_TEST_SET_VAR", "v", 1);
    log_threshold = LOG_ERROR; /* rules log; keep the output to the report */

    r = load_fixture();
    CHECK(r != NULL);
    if (r) {
        test_config_fields(r);
        test_routing(r);
        test_adapters(r);
        rules_free(r);
    }
    test_defaults();
    test_config_errors();
    test_load_errors();
    test_rule_failures();
    test_canonical_routing();
    test_kept_data();
    test_budget();
    test_memory();
    test_sandbox();
    test_adapter_failures();
    test_retry_presets();

    if (chdir(cwd) == 0) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmp_root);
    }
    return harness_report();
}
