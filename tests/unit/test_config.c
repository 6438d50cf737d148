/* test_config.c -- config.c on its own: the lookups, subscriptions merged
 * into the endpoint table, batch windows and allow_private on hand-built
 * configs; then config_from_lua fed the declarations lua/waybill.lua
 * collects (built here in a plain Lua state, so no rules.c is linked):
 * defaults, paths resolved against the config's folder, and each check's
 * exact "file:line: message", "did you mean" included. Loading through
 * rules_load (where the file:line come from) is test_rules.c's.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "config.h"
#include "harness.h"

static char tmp_dir[] = "/tmp/waybill-test-config-XXXXXX";
static char config_path[PATH_MAX + 32], real_dir[PATH_MAX];

#define LUA_DIR "/opt/waybill/lua"

/* ---- hand-built configs ---- */

static void test_lookups(void) {
    struct config_source src[3];
    struct config_endpoint eps[2];
    struct config cfg;

    memset(src, 0, sizeof src);
    memset(eps, 0, sizeof eps);
    memset(&cfg, 0, sizeof cfg);
    src[0].name = (char *)"atoship";
    src[0].path = (char *)"/hooks/atoship";
    src[1].name = (char *)"pathless"; /* a partly built entry: no path yet */
    src[2].name = (char *)"acme";
    src[2].path = (char *)"/in/acme";
    eps[0].name = (char *)"erp";
    eps[1].name = (char *)"crm";
    cfg.sources = src;
    cfg.nsources = 3;
    cfg.endpoints = eps;
    cfg.nendpoints = 2;

    CHECK(config_source_by_name(&cfg, "atoship") == &src[0]);
    CHECK(config_source_by_name(&cfg, "acme") == &src[2]);
    CHECK(config_source_by_name(&cfg, "pathless") == &src[1]);
    CHECK(config_source_by_name(&cfg, "Atoship") == NULL); /* exact, case included */
    CHECK(config_source_by_name(&cfg, "") == NULL);
    CHECK(config_source_by_name(&cfg, NULL) == NULL);
    CHECK(config_source_by_name(NULL, "atoship") == NULL);
    CHECK(config_source_by_path(&cfg, "/in/acme") == &src[2]);
    CHECK(config_source_by_path(&cfg, "/hooks/atoship") == &src[0]);
    CHECK(config_source_by_path(&cfg, "/hooks/atoship/") == NULL);
    CHECK(config_source_by_path(&cfg, "/hooks/pathless") == NULL);
    CHECK(config_source_by_path(&cfg, NULL) == NULL);
    CHECK(config_source_by_path(NULL, "/in/acme") == NULL);
    CHECK(config_endpoint_by_name(&cfg, "crm") == &eps[1]);
    CHECK(config_endpoint_by_name(&cfg, "erp") == &eps[0]);
    CHECK(config_endpoint_by_name(&cfg, "er") == NULL);
    CHECK(config_endpoint_by_name(&cfg, NULL) == NULL);
    CHECK(config_endpoint_by_name(NULL, "erp") == NULL);
}

struct names {
    char v[8][64];
    int n;
};

static void collect(void *ctx, const char *name) {
    struct names *n = ctx;
    if (n->n < 8)
        snprintf(n->v[n->n], sizeof n->v[0], "%s", name);
    n->n++;
}

static void test_subscriptions(void) {
    struct config *cfg = calloc(1, sizeof *cfg);
    struct config_endpoint file_eps[1], sub_eps[3];
    struct config_subscription v[3];
    struct names got;

    memset(file_eps, 0, sizeof file_eps);
    memset(sub_eps, 0, sizeof sub_eps);
    if (!cfg)
        return;
    file_eps[0].name = (char *)"erp";
    file_eps[0].url = (char *)"http://file/";
    cfg->endpoints = file_eps;
    cfg->nendpoints = 1;
    sub_eps[0].name = (char *)"sub_1";
    sub_eps[1].name = (char *)"sub_2";
    sub_eps[2].name = (char *)"erp"; /* same name as the file's: the file's wins */
    sub_eps[2].url = (char *)"http://sub/";
    v[0] = (struct config_subscription){&sub_eps[0], "tracking.*"};
    v[1] = (struct config_subscription){&sub_eps[1], "*"};
    v[2] = (struct config_subscription){&sub_eps[2], "order.imported"};

    /* none yet */
    memset(&got, 0, sizeof got);
    config_subscribers(cfg, "tracking.delivered", collect, &got);
    CHECK_INT_EQ(got.n, 0);
    CHECK(config_endpoint_by_name(cfg, "sub_1") == NULL);

    CHECK_INT_EQ(config_set_subscriptions(cfg, v, 3), 0);
    CHECK_INT_EQ(cfg->nsubs, 3);
    CHECK(config_endpoint_by_name(cfg, "sub_1") == &sub_eps[0]);
    CHECK(config_endpoint_by_name(cfg, "sub_2") == &sub_eps[1]);
    CHECK(config_endpoint_by_name(cfg, "erp") == &file_eps[0]);

    /* the array was copied: the caller's may change or go */
    v[0] = (struct config_subscription){&sub_eps[1], "nothing.matches"};
    CHECK(config_endpoint_by_name(cfg, "sub_1") == &sub_eps[0]);

    /* matching subscribers, in the order they were set */
    memset(&got, 0, sizeof got);
    config_subscribers(cfg, "tracking.delivered", collect, &got);
    CHECK_INT_EQ(got.n, 2);
    CHECK_STR_EQ(got.v[0], "sub_1");
    CHECK_STR_EQ(got.v[1], "sub_2");
    memset(&got, 0, sizeof got);
    config_subscribers(cfg, "order.imported", collect, &got);
    CHECK_INT_EQ(got.n, 2);
    CHECK_STR_EQ(got.v[0], "sub_2");
    CHECK_STR_EQ(got.v[1], "erp");
    memset(&got, 0, sizeof got);
    config_subscribers(cfg, "tracking", collect, &got); /* "tracking.*" needs the dot */
    CHECK_INT_EQ(got.n, 1);
    CHECK_STR_EQ(got.v[0], "sub_2");
    memset(&got, 0, sizeof got);
    config_subscribers(cfg, NULL, collect, &got);
    config_subscribers(NULL, "x", collect, &got);
    CHECK_INT_EQ(got.n, 0);

    /* replaced whole */
    v[0] = (struct config_subscription){&sub_eps[0], "order.*"};
    CHECK_INT_EQ(config_set_subscriptions(cfg, v, 1), 0);
    CHECK_INT_EQ(cfg->nsubs, 1);
    CHECK(config_endpoint_by_name(cfg, "sub_2") == NULL);
    memset(&got, 0, sizeof got);
    config_subscribers(cfg, "order.imported", collect, &got);
    CHECK_INT_EQ(got.n, 1);
    CHECK_STR_EQ(got.v[0], "sub_1");

    /* and emptied */
    CHECK_INT_EQ(config_set_subscriptions(cfg, NULL, 0), 0);
    CHECK_INT_EQ(cfg->nsubs, 0);
    CHECK(cfg->subs == NULL);
    CHECK(config_endpoint_by_name(cfg, "sub_1") == NULL);
    CHECK(config_endpoint_by_name(cfg, "erp") == &file_eps[0]);

    /* config_free frees the copied array, never what it points to (a
     * sanitizer build would see a leak or a bad free) */
    CHECK_INT_EQ(config_set_subscriptions(cfg, v, 2), 0);
    cfg->endpoints = NULL;
    cfg->nendpoints = 0;
    config_free(cfg);
    config_free(NULL);
}

static void test_window(void) {
    struct config cfg;
    struct config_endpoint ep;

    memset(&cfg, 0, sizeof cfg);
    memset(&ep, 0, sizeof ep);
    CHECK_INT_EQ(config_endpoint_window(&cfg, &ep), 30 * 60 * 1000);
    CHECK_INT_EQ(config_endpoint_window(&cfg, NULL), 30 * 60 * 1000);
    CHECK_INT_EQ(config_endpoint_window(NULL, NULL), 30 * 60 * 1000);
    cfg.sandbox = 1;
    CHECK_INT_EQ(config_endpoint_window(&cfg, &ep), 5 * 60 * 1000);
    CHECK_INT_EQ(config_endpoint_window(&cfg, NULL), 5 * 60 * 1000);
    ep.window_ms = 2000; /* its own wins, in either environment */
    CHECK_INT_EQ(config_endpoint_window(&cfg, &ep), 2000);
    cfg.sandbox = 0;
    CHECK_INT_EQ(config_endpoint_window(&cfg, &ep), 2000);
    CHECK_INT_EQ(config_endpoint_window(NULL, &ep), 2000);
}

static int allowed4(const struct config *cfg, const char *text) {
    unsigned char a[4];
    if (inet_pton(AF_INET, text, a) != 1)
        return -1;
    return config_private_allowed(cfg, AF_INET, a);
}

static int allowed6(const struct config *cfg, const char *text) {
    unsigned char a[16];
    if (inet_pton(AF_INET6, text, a) != 1)
        return -1;
    return config_private_allowed(cfg, AF_INET6, a);
}

static struct config_cidr cidr(int family, const char *text, int prefix_len) {
    struct config_cidr c;
    memset(&c, 0, sizeof c);
    c.family = family;
    c.prefix_len = prefix_len;
    inet_pton(family, text, c.addr);
    return c;
}

static void test_private_allowed(void) {
    struct config cfg;
    struct config_cidr list[6];

    memset(&cfg, 0, sizeof cfg);
    CHECK_INT_EQ(allowed4(&cfg, "127.0.0.1"), 0); /* nothing allowed by default */
    CHECK_INT_EQ(allowed6(&cfg, "::1"), 0);
    CHECK_INT_EQ(allowed4(NULL, "10.0.0.1"), 0);

    list[0] = cidr(AF_INET, "10.0.0.0", 8);
    list[1] = cidr(AF_INET, "172.16.0.0", 12); /* a prefix that ends inside a byte */
    list[2] = cidr(AF_INET, "192.168.1.7", 32);
    list[3] = cidr(AF_INET6, "fe80::", 10);
    list[4] = cidr(AF_INET6, "fd00::1:0", 127);
    list[5] = cidr(AF_INET6, "::1", 128);
    cfg.allow_private = list;
    cfg.nallow_private = 6;
    CHECK_INT_EQ(allowed4(&cfg, "10.0.0.0"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "10.255.255.255"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "11.0.0.0"), 0);
    CHECK_INT_EQ(allowed4(&cfg, "9.255.255.255"), 0);
    CHECK_INT_EQ(allowed4(&cfg, "172.16.0.1"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "172.31.255.255"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "172.32.0.0"), 0);
    CHECK_INT_EQ(allowed4(&cfg, "172.15.255.255"), 0);
    CHECK_INT_EQ(allowed4(&cfg, "192.168.1.7"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "192.168.1.6"), 0);
    CHECK_INT_EQ(allowed4(&cfg, "192.168.1.8"), 0);
    CHECK_INT_EQ(allowed4(&cfg, "127.0.0.1"), 0);
    CHECK_INT_EQ(allowed6(&cfg, "fe80::1"), 1);
    CHECK_INT_EQ(allowed6(&cfg, "febf:ffff::1"), 1);
    CHECK_INT_EQ(allowed6(&cfg, "fec0::1"), 0);
    CHECK_INT_EQ(allowed6(&cfg, "fd00::1:0"), 1);
    CHECK_INT_EQ(allowed6(&cfg, "fd00::1:1"), 1);
    CHECK_INT_EQ(allowed6(&cfg, "fd00::1:2"), 0);
    CHECK_INT_EQ(allowed6(&cfg, "::1"), 1);
    CHECK_INT_EQ(allowed6(&cfg, "::2"), 0);
    /* a family matches only its own: 10.0.0.1 in IPv6 clothes is not 10/8 */
    CHECK_INT_EQ(allowed6(&cfg, "::ffff:10.0.0.1"), 0);
    {
        unsigned char a[16] = {10};
        CHECK_INT_EQ(config_private_allowed(&cfg, AF_UNIX, a), 0);
    }

    /* /0 lets every address of its family through, and only those */
    list[0] = cidr(AF_INET, "0.0.0.0", 0);
    cfg.nallow_private = 1;
    CHECK_INT_EQ(allowed4(&cfg, "127.0.0.1"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "255.255.255.255"), 1);
    CHECK_INT_EQ(allowed6(&cfg, "::1"), 0);
    list[0] = cidr(AF_INET6, "::", 0);
    CHECK_INT_EQ(allowed6(&cfg, "fd12:3456::1"), 1);
    CHECK_INT_EQ(allowed4(&cfg, "10.0.0.1"), 0);
}

/* ---- config_from_lua ---- */

/* Declaration helpers in the shape lua/waybill.lua hands over: every
 * declaration carries where = "waybill.lua:LINE". */
static const char *prelude =
    "local D = { settings = {}, sources = {}, endpoints = {} }\n"
    "local function at(line) return 'waybill.lua:' .. line end\n"
    "local function set(line, key, value)\n"
    "  D.settings[#D.settings + 1] = { key = key, value = value, where = at(line) }\n"
    "end\n"
    "local function source(line, name, opts)\n"
    "  D.sources[#D.sources + 1] = { name = name, opts = opts, where = at(line) }\n"
    "end\n"
    "local function endpoint(line, name, opts)\n"
    "  D.endpoints[#D.endpoints + 1] = { name = name, opts = opts, where = at(line) }\n"
    "end\n"
    "local function rules(line, dir) D.rules = { dir = dir, where = at(line) } end\n";

/* Builds a config from the declarations body makes. Returns
 * config_from_lua's result; *out as it left it. */
static int build(const char *path, const char *body, struct config **out, char *err,
                 size_t errlen) {
    lua_State *L = luaL_newstate();
    char chunk[8192];
    int rc = -1;

    *out = NULL;
    err[0] = '\0';
    if (!L)
        return -1;
    luaL_openlibs(L);
    snprintf(chunk, sizeof chunk, "%s%s\nreturn D\n", prelude, body);
    if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "test declarations: %s\n", lua_tostring(L, -1));
        snprintf(err, errlen, "(bad test declarations)");
    } else {
        rc = config_from_lua(L, -1, path, LUA_DIR, out, err, errlen);
        CHECK_INT_EQ(lua_gettop(L), 1); /* [-0, +0] */
    }
    lua_close(L);
    return rc;
}

static struct config *load_ok(const char *body) {
    struct config *cfg;
    char err[512];
    if (build(config_path, body, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "unexpected error: %s\n", err);
        CHECK(cfg == NULL);
        return NULL;
    }
    return cfg;
}

#define EXPECT_ERR(body, want)                                                                     \
    do {                                                                                           \
        struct config *c_;                                                                         \
        char e_[600];                                                                              \
        CHECK_INT_EQ(build(config_path, (body), &c_, e_, sizeof e_), -1);                          \
        CHECK(c_ == NULL);                                                                         \
        CHECK_STR_EQ(e_, (want));                                                                  \
    } while (0)

static void test_defaults_and_paths(void) {
    struct config *cfg;
    char want[PATH_MAX + 64];
    const struct config_source *s;
    const struct config_endpoint *e;
    unsigned char a4[4];

    cfg = load_ok("");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_STR_EQ(cfg->file, config_path);
        CHECK_STR_EQ(cfg->dir, real_dir);
        CHECK_STR_EQ(cfg->listen, "0.0.0.0:8080");
        CHECK_STR_EQ(cfg->store, "sqlite:waybill.db");
        CHECK_INT_EQ(cfg->lease_ms, 30000);
        CHECK_INT_EQ(cfg->max_body, 1 << 20);
        CHECK_INT_EQ(cfg->rule_memory, 64 << 20);
        CHECK_INT_EQ(cfg->rule_budget, 1000000);
        CHECK(cfg->rules_dir == NULL && cfg->admin_listen == NULL && cfg->tls_cert == NULL);
        CHECK(cfg->nsources == 0 && cfg->nendpoints == 0 && cfg->nsubs == 0);
    }
    config_free(cfg);

    /* a later assignment wins; paths are joined to the config's folder
     * ("./" dropped), absolute ones kept; admin alone listens on loopback */
    cfg = load_ok("set(1, 'listen', '127.0.0.1:1')\n"
                  "set(2, 'listen', '[::1]:8443')\n"
                  "set(3, 'tls', { cert = './tls/c.pem', key = '/etc/k.pem' })\n"
                  "set(4, 'admin', { token = 'secret-token' })\n"
                  "set(5, 'allow_private', '10.1.2.3/8')\n"
                  "set(6, 'store', 'sqlite:data/x.db?sync=normal')\n"
                  "set(7, 'lease', '3s')\n"
                  "rules(8, 'rules///')\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_STR_EQ(cfg->listen, "[::1]:8443");
        snprintf(want, sizeof want, "%s/tls/c.pem", real_dir);
        CHECK_STR_EQ(cfg->tls_cert, want);
        CHECK_STR_EQ(cfg->tls_key, "/etc/k.pem");
        CHECK_STR_EQ(cfg->admin_listen, "127.0.0.1:8081");
        CHECK_STR_EQ(cfg->admin_token, "secret-token");
        CHECK_STR_EQ(cfg->store, "sqlite:data/x.db?sync=normal");
        CHECK_INT_EQ(cfg->lease_ms, 3000);
        snprintf(want, sizeof want, "%s/rules", real_dir);
        CHECK_STR_EQ(cfg->rules_dir, want);
        /* host bits cleared: the entry is 10.0.0.0/8 */
        CHECK_INT_EQ(cfg->nallow_private, 1);
        CHECK(cfg->nallow_private == 1 && cfg->allow_private[0].prefix_len == 8 &&
              cfg->allow_private[0].addr[1] == 0 && cfg->allow_private[0].addr[3] == 0);
        inet_pton(AF_INET, "10.200.0.1", a4);
        CHECK_INT_EQ(config_private_allowed(cfg, AF_INET, a4), 1);
    }
    config_free(cfg);

    /* a setting set back to off */
    cfg = load_ok("set(1, 'admin', { token = 't', listen = '127.0.0.1:9' })\n"
                  "set(2, 'tls', { cert = 'c', key = 'k' })\n"
                  "set(3, 'admin', false)\nset(4, 'tls', false)\n"
                  "set(5, 'allow_private', {})\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK(cfg->admin_listen == NULL && cfg->admin_token == NULL);
        CHECK(cfg->tls_cert == NULL && cfg->tls_key == NULL);
        CHECK_INT_EQ(cfg->nallow_private, 0);
    }
    config_free(cfg);

    /* sources: default path, adapters by name, by file, as a function;
     * a JWKS URL is kept as written */
    cfg = load_ok("source(1, 'atoship', { secret = 's', adapter = 'generic' })\n"
                  "source(2, 'b', { verify = 'generic', secret = { 'x', 'y' },\n"
                  "  adapter = './adapters/b.lua', path = '/in/b' })\n"
                  "source(4, 'c', { verify = 'none', insecure = true,\n"
                  "  adapter = function() end })\n"
                  "source(6, 'se', { verify = 'shipengine',\n"
                  "  jwks = 'https://api.example.com/jwks' })\n"
                  "source(8, 'std', { verify = 'standard', secret = 'whsec_aGVsbG8=' })\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT_EQ(cfg->nsources, 5);
        s = config_source_by_name(cfg, "atoship");
        CHECK(s && s->verify.kind == VERIFY_HMAC);
        CHECK_STR_EQ(s ? s->path : NULL, "/hooks/atoship");
        CHECK_STR_EQ(s ? s->verify_name : NULL, "atoship");
        CHECK_STR_EQ(s ? s->adapter : NULL, LUA_DIR "/sources/generic.lua");
        s = config_source_by_path(cfg, "/in/b");
        CHECK(s && s->nsecrets == 2 && s->secrets[1].len == 1 && s->secrets[1].key[0] == 'y');
        snprintf(want, sizeof want, "%s/adapters/b.lua", real_dir);
        CHECK_STR_EQ(s ? s->adapter : NULL, want);
        s = config_source_by_name(cfg, "c");
        CHECK(s && s->insecure && s->adapter == NULL); /* rules.c keeps the function */
        s = config_source_by_name(cfg, "se");
        CHECK_STR_EQ(s ? s->jwks : NULL, "https://api.example.com/jwks");
        s = config_source_by_name(cfg, "std"); /* standard secrets are whsec_-decoded */
        CHECK(s && s->nsecrets == 1 && s->secrets[0].len == 5 &&
              memcmp(s->secrets[0].key, "hello", 5) == 0);
    }
    config_free(cfg);

    /* the carrier: carrier =, else a verify preset naming one, else none
     * (generic); a Stripe-style signature names no carrier */
    cfg = load_ok("source(1, 'a', { verify = 'stripe', secret = 'x', carrier = 'shippo' })\n"
                  "source(2, 'aftership', { secret = 'x' })\n"
                  "source(3, 'c', { verify = 'shippo', secret = 'x' })\n"
                  "source(4, 'd', { verify = 'stripe', secret = 'x' })\n"
                  "source(5, 'e', { verify = 'easypost', secret = 'x', carrier = 'generic' })\n");
    CHECK(cfg != NULL);
    if (cfg) {
        s = config_source_by_name(cfg, "a");
        CHECK_STR_EQ(s ? s->carrier : NULL, "shippo");
        CHECK(s && s->verify.kind == VERIFY_STRIPE &&
              strcmp(s->verify.header, "Stripe-Signature") == 0);
        s = config_source_by_name(cfg, "aftership");
        CHECK_STR_EQ(s ? s->carrier : NULL, "aftership");
        s = config_source_by_name(cfg, "c");
        CHECK_STR_EQ(s ? s->carrier : NULL, "shippo");
        CHECK(s && s->verify.kind == VERIFY_STRIPE &&
              strcmp(s->verify.header, "Shippo-Auth-Signature") == 0);
        s = config_source_by_name(cfg, "d");
        CHECK(s && s->carrier == NULL);
        s = config_source_by_name(cfg, "e");
        CHECK_STR_EQ(s ? s->carrier : NULL, "generic");
    }
    config_free(cfg);

    /* endpoints: headers sorted by name whatever the case, retry lists in
     * both forms, success as a number, raw secrets for non-standard signing */
    cfg = load_ok("endpoint(1, 'e', { url = 'HTTPS://h.example/x', sign = 'hex', secret = 'raw',\n"
                  "  headers = { b = '1', A = '2', C = '3' }, retry = { 0, '1s', 2.5, '1m' },\n"
                  "  success = 200, window = 90, rate = 0.5 })\n"
                  "endpoint(4, 'f', { url = 'http://h', secret = 'whsec_aGVsbG8=',\n"
                  "  retry = 'shiptify', enabled = false })\n");
    CHECK(cfg != NULL);
    if (cfg) {
        e = config_endpoint_by_name(cfg, "e");
        CHECK(e && e->nheaders == 3);
        if (e && e->nheaders == 3) {
            CHECK_STR_EQ(e->headers[0].name, "A");
            CHECK_STR_EQ(e->headers[1].name, "b");
            CHECK_STR_EQ(e->headers[2].name, "C");
            CHECK_STR_EQ(e->headers[2].value, "3");
        }
        CHECK(e && e->nretry == 4 && e->retry_ms[0] == 0 && e->retry_ms[1] == 1000 &&
              e->retry_ms[2] == 2500 && e->retry_ms[3] == 60000);
        CHECK(e && e->success == CONFIG_SUCCESS_200 && e->window_ms == 90000 && e->rate == 0.5);
        CHECK(e && e->sign == SIGN_HEX && e->nsecrets == 1 && e->secrets[0].len == 3);
        CHECK_INT_EQ(config_endpoint_window(cfg, e), 90000);
        e = config_endpoint_by_name(cfg, "f");
        CHECK(e && e->sign == SIGN_STANDARD && e->secrets[0].len == 5 && !e->enabled);
        CHECK(e && e->nretry == 5 && e->retry_ms[4] == 86400000);
    }
    config_free(cfg);
}

static void test_setting_errors(void) {
    char long_key[120], body[300], want[400];

    /* "did you mean": the closest name within 2 edits (1 for a word of 3
     * letters or fewer), else nothing */
    EXPECT_ERR("set(4, 'enviroment', 'sandbox')",
               "waybill.lua:4: unknown setting 'enviroment' (did you mean 'environment'?)");
    EXPECT_ERR("set(1, 'rule_memroy', '8MiB')",
               "waybill.lua:1: unknown setting 'rule_memroy' (did you mean 'rule_memory'?)");
    EXPECT_ERR("set(1, 'maxbody', 1)",
               "waybill.lua:1: unknown setting 'maxbody' (did you mean 'max_body'?)");
    EXPECT_ERR("set(1, 'tl', {})", "waybill.lua:1: unknown setting 'tl' (did you mean 'tls'?)");
    EXPECT_ERR("set(1, 'tx', {})", "waybill.lua:1: unknown setting 'tx'");
    EXPECT_ERR("set(1, 'abc', 1)", "waybill.lua:1: unknown setting 'abc'");
    EXPECT_ERR("set(1, 'retention_days', 1)", "waybill.lua:1: unknown setting 'retention_days'");
    memset(long_key, 'k', sizeof long_key - 1); /* past the edit-distance table */
    long_key[sizeof long_key - 1] = '\0';
    snprintf(body, sizeof body, "set(1, '%s', 1)", long_key);
    snprintf(want, sizeof want, "waybill.lua:1: unknown setting '%s'", long_key);
    EXPECT_ERR(body, want);
    EXPECT_ERR("D.settings[1] = { key = 5, value = 1, where = 'waybill.lua:9' }",
               "waybill.lua:9: unknown setting (a number key)");
    /* the first bad one stops the build */
    EXPECT_ERR("set(1, 'listen', '127.0.0.1:1')\nset(2, 'lisen', 'x')\nset(3, 'foo', 1)",
               "waybill.lua:2: unknown setting 'lisen' (did you mean 'listen'?)");

    /* listen */
    EXPECT_ERR("set(1, 'listen', '127.0.0.1:0')",
               "waybill.lua:1: listen: bad address '127.0.0.1:0' (want host:port, e.g. "
               "\"0.0.0.0:8080\")");
    EXPECT_ERR("set(1, 'listen', '127.0.0.1:65536')",
               "waybill.lua:1: listen: bad address '127.0.0.1:65536' (want host:port, e.g. "
               "\"0.0.0.0:8080\")");
    EXPECT_ERR("set(1, 'listen', 'h:+80')",
               "waybill.lua:1: listen: bad address 'h:+80' (want host:port, e.g. "
               "\"0.0.0.0:8080\")");
    EXPECT_ERR("set(1, 'listen', '[::1:8080')",
               "waybill.lua:1: listen: bad address '[::1:8080' (want host:port, e.g. "
               "\"0.0.0.0:8080\")");
    EXPECT_ERR("set(1, 'listen', 'h:80x')",
               "waybill.lua:1: listen: bad address 'h:80x' (want host:port, e.g. "
               "\"0.0.0.0:8080\")");
    EXPECT_ERR("set(1, 'listen', '')", "waybill.lua:1: listen must not be empty");

    /* store, sizes, numbers, durations */
    EXPECT_ERR("set(1, 'store', 'sqlite:')",
               "waybill.lua:1: store: sqlite: needs a file name, e.g. \"sqlite:waybill.db\"");
    EXPECT_ERR("set(1, 'max_body', 0)", "waybill.lua:1: max_body must be more than 0 bytes");
    EXPECT_ERR("set(1, 'max_body', {})",
               "waybill.lua:1: max_body must be a size (e.g. \"1MiB\") or a number of bytes, not "
               "a table");
    EXPECT_ERR("set(1, 'max_body', -1)", "waybill.lua:1: max_body: bad size -1");
    EXPECT_ERR("set(1, 'max_backlog', 0)",
               "waybill.lua:1: max_backlog must be between 1 and 4611686018427387903");
    EXPECT_ERR("set(1, 'max_backlog', '10')",
               "waybill.lua:1: max_backlog must be a number, not a string");
    EXPECT_ERR("set(1, 'rule_budget', 0)",
               "waybill.lua:1: rule_budget must be between 1 and 2305843009213693951");
    EXPECT_ERR("set(1, 'rule_budget', 1e300)",
               "waybill.lua:1: rule_budget must be between 1 and 2305843009213693951");
    EXPECT_ERR("set(1, 'retention', 1/0)", "waybill.lua:1: retention: bad duration inf (seconds)");
    EXPECT_ERR("set(1, 'shutdown_grace', true)",
               "waybill.lua:1: shutdown_grace must be a duration (e.g. \"30s\") or a number of "
               "seconds, not a boolean");
    EXPECT_ERR("set(1, 'lease', '30 seconds')",
               "waybill.lua:1: lease: bad duration '30 seconds' (use e.g. \"500ms\", \"30s\", "
               "\"5m\", \"2h\", \"1d\")");
    EXPECT_ERR("set(1, 'lease', {})",
               "waybill.lua:1: lease must be a duration (e.g. \"30s\") or a number of seconds, "
               "not a table");
    EXPECT_ERR("set(1, 'lease', -1)", "waybill.lua:1: lease: bad duration -1 (seconds)");
    EXPECT_ERR("set(1, 'lease', '999ms')", "waybill.lua:1: lease must be between 1s and 1h");
    EXPECT_ERR("set(1, 'lease', '2h')", "waybill.lua:1: lease must be between 1s and 1h");
    EXPECT_ERR("set(1, 'rule_memory', 1048575)",
               "waybill.lua:1: rule_memory must be at least 1MiB");
    EXPECT_ERR("set(1, 'environment', 42)",
               "waybill.lua:1: environment: must be \"production\" or \"sandbox\"");

    /* tables */
    EXPECT_ERR("set(1, 'tls', 'cert.pem')",
               "waybill.lua:1: tls: expected { cert = \"cert.pem\", key = \"key.pem\" }, not a "
               "string");
    EXPECT_ERR("set(1, 'tls', { cert = 'c', key = 'k', ca = 'x' })",
               "waybill.lua:1: tls: unknown option 'ca'");
    EXPECT_ERR("set(1, 'tls', { cert = 'c', kee = 'k' })",
               "waybill.lua:1: tls: unknown option 'kee' (did you mean 'key'?)");
    EXPECT_ERR("set(1, 'tls', { cert = 'c', kye = 'k' })", /* a swap is 2 edits */
               "waybill.lua:1: tls: unknown option 'kye'");
    EXPECT_ERR("set(1, 'tls', { key = 'k' })", "waybill.lua:1: tls: cert is required");
    EXPECT_ERR("set(1, 'admin', 5)",
               "waybill.lua:1: admin: expected { listen = \"127.0.0.1:8081\", token = "
               "env(\"...\") }, not a number");
    EXPECT_ERR("set(1, 'admin', { listen = 'nope', token = 't' })",
               "waybill.lua:1: admin: listen: bad address 'nope' (want host:port)");
    EXPECT_ERR("set(1, 'admin', { listen = ':8081', token = 't' })",
               "waybill.lua:1: admin: listen: ':8081' names no host; the admin API listens on "
               "one address (e.g. \"127.0.0.1:8081\")");
    EXPECT_ERR("set(1, 'admin', { token = '' })", "waybill.lua:1: admin: token must not be empty");
    EXPECT_ERR("set(1, 'admin', { [1] = 't' })",
               "waybill.lua:1: admin: option keys must be names, not a number");
    EXPECT_ERR("set(1, 'allow_private', 7)",
               "waybill.lua:1: allow_private: expected a list of CIDRs, e.g. { \"10.0.0.0/8\" }, "
               "not a number");
    EXPECT_ERR("set(1, 'allow_private', { '10.0.0.0/8', 7 })",
               "waybill.lua:1: allow_private: entry #2 must be a CIDR string, not a number");
    {
        static const char *const bad[] = {"10.0.0.0/",   "10.0.0.0/-1", "10.0.0.0/+8",
                                          "10.0.0.0/8x", "/8",          "::1/129",
                                          "10.0.0/8",    "fd00::/x",    NULL};
        for (int i = 0; bad[i]; i++) {
            snprintf(body, sizeof body, "set(1, 'allow_private', '%s')", bad[i]);
            snprintf(want, sizeof want,
                     "waybill.lua:1: allow_private: bad CIDR '%s' (want e.g. \"10.0.0.0/8\" or "
                     "\"fd00::/8\")",
                     bad[i]);
            EXPECT_ERR(body, want);
        }
    }
}

static void test_source_errors(void) {
    char body[300], want[PATH_MAX + 200];

    EXPECT_ERR("source(3, 'a b', { verify = 'generic', secret = 'x' })",
               "waybill.lua:3: source a b: the name must be 1-64 letters, digits, '_' or '-'");
    EXPECT_ERR(
        "source(1, string.rep('n', 65), { verify = 'generic', secret = 'x' })",
        "waybill.lua:1: source nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn: "
        "the name must be 1-64 letters, digits, '_' or '-'");
    EXPECT_ERR("source(2, 'a', 'generic')", "waybill.lua:2: a: options must be a table");
    EXPECT_ERR("D.sources[1] = { opts = {}, where = 'waybill.lua:5' }",
               "waybill.lua:5: a declaration without a name");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', adaptr = 'y' })",
               "waybill.lua:1: source a: unknown option 'adaptr' (did you mean 'adapter'?)");
    EXPECT_ERR("source(1, 'a', { verify = 'stirpe', secret = 'x' })",
               "waybill.lua:1: source a: unknown verify preset 'stirpe' (did you mean 'stripe'?)");
    EXPECT_ERR("source(1, 'a', { verify = 'shipengin' })",
               "waybill.lua:1: source a: unknown verify preset 'shipengin' (did you mean "
               "'shipengine'?)");
    EXPECT_ERR("source(1, 'a', { verify = 'paypal', secret = 'x' })",
               "waybill.lua:1: source a: unknown verify preset 'paypal'");
    /* carrier = a carrier with an adapter, never just any name */
    EXPECT_ERR("source(3, 'a', { verify = 'stripe', secret = 'x', carrier = 'shipo' })",
               "waybill.lua:3: source a: unknown carrier 'shipo' (did you mean 'shippo'?)");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', carrier = 'fedex' })",
               "waybill.lua:1: source a: unknown carrier 'fedex' (aftership, atoship, easypost, "
               "generic, shipengine, shippo, shiptify)");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', carrier = 7 })",
               "waybill.lua:1: source a: carrier must be a string, not a number");
    EXPECT_ERR("source(1, 'a', { verify = 'hmac-sha256', secret = 'x' })",
               "waybill.lua:1: source a: verify \"hmac-sha256\" takes the table form: { scheme = "
               "\"hmac-sha256\", header = \"X-Signature\", encoding = \"hex\" }");
    EXPECT_ERR("source(1, 'a', { verify = 5, secret = 'x' })",
               "waybill.lua:1: source a: verify must be a preset name or a table, not a number");
    EXPECT_ERR("source(1, 'none', { insecure = true })",
               "waybill.lua:1: source none: verify is required (a preset such as \"atoship\", or "
               "{ scheme = \"hmac-sha256\", header = ..., encoding = ... })");
    EXPECT_ERR("source(1, 'a', { verify = { scheme = 'standard', header = 'X-S' }, secret = 'x' "
               "})",
               "waybill.lua:1: source a: verify scheme 'standard' takes no header");
    EXPECT_ERR("source(1, 'a', { verify = { scheme = 'nope' }, secret = 'x' })",
               "waybill.lua:1: source a: unknown verify scheme 'nope'");
    EXPECT_ERR("source(1, 'a', { verify = { header = 'X-S', encoding = 'b64' }, secret = 'x' })",
               "waybill.lua:1: source a: verify.encoding must be \"hex\" or \"base64\"");
    EXPECT_ERR("source(1, 'a', { verify = { header = 'Bad Header' }, secret = 'x' })",
               "waybill.lua:1: source a: verify.header: bad header name 'Bad Header'");
    EXPECT_ERR("source(1, 'a', { verify = { header = 'X', prefix = string.rep('p', 32) }, "
               "secret = 'x' })",
               "waybill.lua:1: source a: verify.prefix is too long");
    EXPECT_ERR("source(1, 'a', { verify = { header = 'X', prefix = 5 }, secret = 'x' })",
               "waybill.lua:1: source a: verify.prefix must be a string");
    /* secrets */
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = {} })",
               "waybill.lua:1: source a: secret list is empty");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = { 'x', 5 } })",
               "waybill.lua:1: source a: secret #2 must be a string, not a number");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = '' })",
               "waybill.lua:1: source a: secret is empty");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = { 'x', '' } })",
               "waybill.lua:1: source a: secret in the list is empty");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 5 })",
               "waybill.lua:1: source a: secret must be a string or a list of strings, not a "
               "number");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', insecure = 'yes' })",
               "waybill.lua:1: source a: insecure must be true or false, not a string");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', tolerance = 'a while' })",
               "waybill.lua:1: source a: tolerance: bad duration 'a while' (use e.g. \"500ms\", "
               "\"30s\", \"5m\", \"2h\", \"1d\")");
    /* paths and adapters */
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', path = 'hooks/a' })",
               "waybill.lua:1: source a: path must start with '/' and hold no '?', '#' or spaces");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', path = '/a?b=1' })",
               "waybill.lua:1: source a: path must start with '/' and hold no '?', '#' or spaces");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', adapter = 'bad name!' })",
               "waybill.lua:1: source a: adapter: bad adapter name 'bad name!'");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x', adapter = 5 })",
               "waybill.lua:1: source a: adapter must be a file name or a function");
    /* duplicates, named by the first one's place */
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x' })\n"
               "source(7, 'a', { verify = 'generic', secret = 'x', path = '/other' })",
               "waybill.lua:7: source a is declared twice (first at waybill.lua:1)");
    EXPECT_ERR("source(1, 'a', { verify = 'generic', secret = 'x' })\n"
               "source(2, 'b', { verify = 'generic', secret = 'x', path = '/hooks/a' })",
               "waybill.lua:2: source b: path /hooks/a is already used by source a");
    /* a JWKS file is read now: a bad one is a config error */
    snprintf(body, sizeof body, "source(1, 'se', { verify = 'shipengine', jwks = 'keys.json' })");
    snprintf(want, sizeof want,
             "waybill.lua:1: source se: jwks: %s/keys.json: No such file or directory", real_dir);
    EXPECT_ERR(body, want);
}

static void test_endpoint_errors(void) {
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', windw = '1m' })",
               "waybill.lua:1: endpoint e: unknown option 'windw' (did you mean 'window'?)");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', 'x' })",
               "waybill.lua:1: endpoint e: option keys must be names, not a number");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http:///x', sign = 'none' })",
               "waybill.lua:1: endpoint e: url must be an http:// or https:// URL, not "
               "'http:///x'");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/a b', sign = 'none' })",
               "waybill.lua:1: endpoint e: url must be an http:// or https:// URL, not "
               "'http://h/a b'");
    EXPECT_ERR("endpoint(1, 'e', { url = 'https://', sign = 'none' })",
               "waybill.lua:1: endpoint e: url must be an http:// or https:// URL, not "
               "'https://'");
    EXPECT_ERR("endpoint(1, 'e', { url = 5, sign = 'none' })",
               "waybill.lua:1: endpoint e: url must be a string, not a number");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', concurrency = 0 })",
               "waybill.lua:1: endpoint e: concurrency must be between 1 and 100000");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', concurrency = 100001 })",
               "waybill.lua:1: endpoint e: concurrency must be between 1 and 100000");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', concurrency = 1.5 })",
               "waybill.lua:1: endpoint e: concurrency must be a whole number");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', rate = 0 })",
               "waybill.lua:1: endpoint e: rate must be a number of deliveries per second above "
               "0");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', rate = 'fast' })",
               "waybill.lua:1: endpoint e: rate must be a number of deliveries per second above "
               "0");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', rate = 1/0 })",
               "waybill.lua:1: endpoint e: rate must be a number of deliveries per second above "
               "0");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', window = '0s' })",
               "waybill.lua:1: endpoint e: window must be more than 0");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', timeout = 0 })",
               "waybill.lua:1: endpoint e: timeout must be more than 0");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', disable_after = '0ms' })",
               "waybill.lua:1: endpoint e: disable_after must be more than 0");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', success = '201' })",
               "waybill.lua:1: endpoint e: success must be \"2xx\" or \"200\"");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', max_batch = 0 })",
               "waybill.lua:1: endpoint e: max_batch must be between 1 and 1000000");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', enabled = 1 })",
               "waybill.lua:1: endpoint e: enabled must be true or false, not a number");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', jitter = 'no' })",
               "waybill.lua:1: endpoint e: jitter must be true or false, not a string");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', headers = 'X: y' })",
               "waybill.lua:1: endpoint e: headers must be a table of name = value, not a string");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', headers = { ['Bad Name'] = "
               "'x' } })",
               "waybill.lua:1: endpoint e: headers: bad header name");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', headers = { X = 5 } })",
               "waybill.lua:1: endpoint e: headers: X must be a string");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', headers = { X = 'a\\0b' } })",
               "waybill.lua:1: endpoint e: headers: X holds a line break or NUL");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', retry = {} })",
               "waybill.lua:1: endpoint e: retry: the list needs 1 to 100 delays");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', retry = 5 })",
               "waybill.lua:1: endpoint e: retry must be a preset name or a list of delays, not a "
               "number");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none', retry = { '1s', -1 } })",
               "waybill.lua:1: endpoint e: retry #2: bad duration -1 (seconds)");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'aftership' })",
               "waybill.lua:1: endpoint e: sign \"aftership\" needs a secret");
    EXPECT_ERR("endpoint(1, 'e', { url = 'http://h/', sign = 'none' })\n"
               "endpoint(2, 'f', { url = 'http://h/', sign = 'none' })\n"
               "endpoint(3, 'e', { url = 'http://h/', sign = 'none' })",
               "waybill.lua:3: endpoint e is declared twice (first at waybill.lua:1)");
}

static void test_other_errors(void) {
    struct config *cfg = (struct config *)&cfg; /* set to NULL on failure */
    char err[PATH_MAX + 100], want[PATH_MAX + 100];

    EXPECT_ERR("rules(3, '')", "waybill.lua:3: rules: expected a folder name, e.g. rules "
                               "\"rules/\"");
    EXPECT_ERR("rules(3, 5)", "waybill.lua:3: rules: expected a folder name, e.g. rules "
                              "\"rules/\"");
    /* settings are checked before sources, sources before endpoints */
    EXPECT_ERR("endpoint(1, 'e', { url = 'ftp://h' })\nsource(2, 'a', {})\n"
               "set(3, 'max_body', 0)",
               "waybill.lua:3: max_body must be more than 0 bytes");
    EXPECT_ERR("endpoint(1, 'e', { url = 'ftp://h' })\nsource(2, 'a', {})",
               "waybill.lua:2: source a: verify is required (a preset such as \"atoship\", or { "
               "scheme = \"hmac-sha256\", header = ..., encoding = ... })");

    /* the config file must exist: its folder is the base of every path */
    snprintf(want, sizeof want, "%s/missing/waybill.lua", tmp_dir);
    CHECK_INT_EQ(build(want, "", &cfg, err, sizeof err), -1);
    CHECK(cfg == NULL);
    snprintf(want + strlen(want), sizeof want - strlen(want), ": No such file or directory");
    CHECK_STR_EQ(err, want);

    /* an error message longer than the buffer is cut, not overflowed */
    {
        struct config *c2;
        char small[24];
        CHECK_INT_EQ(build(config_path, "set(1, 'enviroment', 'x')", &c2, small, sizeof small), -1);
        CHECK_STR_EQ(small, "waybill.lua:1: unknown "); /* 23 bytes and a NUL */
    }
}

int main(void) {
    char cmd[PATH_MAX + 16];
    FILE *f;

    if (!mkdtemp(tmp_dir) || !realpath(tmp_dir, real_dir)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(config_path, sizeof config_path, "%s/waybill.lua", real_dir);
    f = fopen(config_path, "w");
    if (!f) {
        perror(config_path);
        return 2;
    }
    fclose(f);

    test_lookups();
    test_subscriptions();
    test_window();
    test_private_allowed();
    test_defaults_and_paths();
    test_setting_errors();
    test_source_errors();
    test_endpoint_errors();
    test_other_errors();

    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_dir);
    CHECK_INT_EQ(system(cmd), 0);
    return harness_report();
}
