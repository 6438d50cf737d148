/* main.c -- the waybill commands: serve (app.c runs the gateway), check,
 * sign, route, init, test-rules, bench-rules, version and the admin API's
 * client commands (cli.c).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "batch.h"
#include "cli.h"
#include "config.h"
#include "app.h"
#include "log.h"
#include "rules.h"
#include "ruletest.h"
#include "store_pg.h"
#include "util.h"
#include "verify.h"

/* Each command's usage: what `waybill CMD --help` prints (and, on a wrong
 * option, stderr). The top usage is their first lines. */
static const struct {
    const char *cmd, *text;
} cmd_usage[] = {
    {"serve", "usage: waybill serve [-c waybill.lua] [--pidfile FILE]\n"
              "  Run the gateway in the foreground; logs to stderr. SIGHUP (or waybill\n"
              "  reload) reloads config and rules; SIGTERM/SIGINT stop gracefully.\n"
              "  -c, --config FILE  the configuration (default ./waybill.lua)\n"
              "  --pidfile FILE     write the pid there once listening (overrides pidfile =)\n"},
    {"check", "usage: waybill check [-c waybill.lua]\n"
              "  Load the config and every rule; exit 0, or 1 with file:line: message.\n"
              "  Unset env() secrets get placeholders (said on stderr).\n"},
    {"migrate", "usage: waybill migrate [-c waybill.lua] [--wait SECONDS]\n"
                "  Create the PostgreSQL store's schema, or bring it up to this waybill's\n"
                "  version, and say what was done (exit 0; 1 on any error). A SQLite store\n"
                "  needs nothing: serve creates and upgrades it.\n"
                "  --wait SECONDS     keep trying to connect that long (a database starting)\n"},
    {"sign", "usage: waybill sign --scheme S --secret K [--secret K2] [FILE]\n"
             "  Print the headers a sender of scheme S attaches to FILE's body (stdin if\n"
             "  absent or -). S: generic|hex, atoship, aftership, easypost,\n"
             "  stripe [--header H], standard, hmac-sha256 --header H [--encoding\n"
             "  hex|base64] [--prefix P], shiptify (prints the body with timestamp, token\n"
             "  and signature), shipengine --key private.pem --kid KID.\n"},
    {"route", "usage: waybill route [-c waybill.lua] --source NAME EVENT.json|-\n"
              "  Dry run: print the normalized event and the deliveries the rules would\n"
              "  make (- reads the event from stdin). Opens no store, sends nothing.\n"},
    {"init", "usage: waybill init [DIR]\n"
             "  Write a commented starter waybill.lua and rules/ (never overwrites).\n"},
    {"test-rules", "usage: waybill test-rules FILE.test\n"
                   "  Run rule tests (format: tests/rules/README.md).\n"},
    {"bench-rules", "usage: waybill bench-rules -c CONFIG --source NAME [-n N] EVENT.json...\n"
                    "  Time the rules over the events: microseconds per event.\n"},
    {"events", "usage: waybill events [--failed] [--type T] [--status S] [--limit N] [--json]\n"
               "  List events (newest first), or the failed deliveries.\n"},
    {"event", "usage: waybill event ID [--json]\n"
              "  One event with its deliveries and their attempts.\n"},
    {"retry", "usage: waybill retry DELIVERY_ID [--json]\n"
              "  Queue a failed delivery again.\n"},
    {"replay", "usage: waybill replay EVENT_ID [--json]\n"
               "  Route a stored event again with the current rules.\n"},
    {"test", "usage: waybill test ENDPOINT TYPE [--json]\n"
             "  Send a sample event of TYPE straight to ENDPOINT (rules bypassed).\n"},
    {"trigger", "usage: waybill trigger [-c waybill.lua] [--source NAME] TYPE\n"
                "  POST a sample event of TYPE (any taxonomy type), with a fresh id and\n"
                "  signed with the source's secret, to the running gateway's webhook\n"
                "  listener, as source NAME (default atoship) would; print the answer.\n"},
    {"reload", "usage: waybill reload [--pidfile FILE]\n"
               "  Reload config and rules: through the admin API (prints the error and\n"
               "  exits 1 when refused), or SIGHUP to the pid in FILE.\n"},
    {"tail", "usage: waybill tail [--source S] [--type T] [--endpoint E] [--status S] [--kind K]\n"
             "  Follow events and delivery attempts live (GET /api/stream), one line each\n"
             "  (--json: one JSON object each). Filters: the source, a type or glob, the\n"
             "  endpoint, an event status or attempt outcome, the kind (event, attempt).\n"},
    {"listen", "usage: waybill listen --forward-to URL [--secret whsec_...] [--source S]\n"
               "  [--type T]\n"
               "  POST each live event (as a subscription gets it) to URL, e.g. your app on\n"
               "  localhost, signed Standard Webhooks with --secret or a fresh one it prints;\n"
               "  one line per event and per answer.\n"},
    {"version", "usage: waybill version  (or waybill --version)\n"},
    {"help", "usage: waybill help [COMMAND]  (or waybill --help, waybill COMMAND --help)\n"},
};

#define ADMIN_CLIENT_OPTIONS                                                                       \
    "  The admin client commands (events, event, retry, replay, test, reload, tail,\n"             \
    "  listen) read\n"                                                                             \
    "  the admin address and token from the config: -c waybill.lua, or --url URL\n"                \
    "  --token T; --json prints the admin API's answer as is. trigger reads the\n"                 \
    "  webhook address and the source's secret from the config.\n"

static int usage_index(const char *cmd) {
    for (size_t i = 0; cmd && i < sizeof cmd_usage / sizeof cmd_usage[0]; i++)
        if (strcmp(cmd, cmd_usage[i].cmd) == 0)
            return (int)i;
    return -1;
}

/* One command's usage (the admin client's ones with their common options). */
static void cmd_help(FILE *out, int i) {
    fputs(cmd_usage[i].text, out);
    if (cli_is_command(cmd_usage[i].cmd))
        fputs(ADMIN_CLIENT_OPTIONS, out);
}

static void usage(FILE *out) {
    for (size_t i = 0; i < sizeof cmd_usage / sizeof cmd_usage[0]; i++) {
        const char *t = cmd_usage[i].text + 7; /* past "usage: " */
        fprintf(out, "%s%.*s", i ? "       " : "usage: ", (int)(strchr(t, '\n') - t + 1), t);
    }
    fputs("Options:\n"
          "  -c, --config FILE  the configuration (default ./waybill.lua)\n"
          "  --pidfile FILE     serve: write the pid there; reload: signal that "
          "pid\n" ADMIN_CLIENT_OPTIONS
          "  -h, --help         this text; waybill COMMAND --help: that command's usage\n"
          "  --version          the version\n"
          "See waybill(1), README.md and SPEC.md.\n",
          out);
}

/* `waybill CMD ... --help|-h` (before any "--"): CMD's usage on stdout.
 * Returns 1 when printed. */
static int help_asked(int argc, char **argv) {
    int i = usage_index(argv[1]);

    for (int k = 2; i >= 0 && k < argc && strcmp(argv[k], "--") != 0; k++)
        if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
            cmd_help(stdout, i);
            return 1;
        }
    return 0;
}

/* The shipped Lua library: $WAYBILL_LUA_DIR, else lua/ beside the binary,
 * else PREFIX/share/waybill/lua for a binary in PREFIX/bin (make install
 * with any PREFIX), else /usr/share/waybill/lua. New string. */
static char *find_lua_dir(void) {
    const char *env = getenv("WAYBILL_LUA_DIR");
    char exe[PATH_MAX], path[PATH_MAX + 32];
    struct stat st;
    ssize_t n;

    if (env && *env)
        return strdup(env);
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/lua", exe);
            if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
                return strdup(path);
            snprintf(path, sizeof path, "%s/../share/waybill/lua", exe);
            if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
                return strdup(path);
        }
    }
    return strdup("/usr/share/waybill/lua");
}

/* ---- serve ---- */

static int serve(const char *config_path, const char *pidfile) {
    char *lua_dir = find_lua_dir();
    struct app *a = NULL;
    char err[512];
    int rc = 1;

    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "waybill: libcurl failed to initialize\n");
        goto done;
    }
    if (!lua_dir || !(a = app_new(config_path, lua_dir, pidfile, err, sizeof err))) {
        fprintf(stderr, "waybill: %s\n", lua_dir ? err : "out of memory");
        goto cleanup;
    }
    rc = app_run(a) == 0 ? 0 : 1;
cleanup:
    app_free(a);
    curl_global_cleanup();
done:
    free(lua_dir);
    return rc;
}

static int check(const char *config_path) {
    char *lua_dir = find_lua_dir();
    char err[512], note[512];
    struct rules *r =
        rules_load_offline(config_path, lua_dir, 0, note, sizeof note, err, sizeof err);
    int rc = 0;

    if (!r) {
        fprintf(stderr, "%s\n", err);
        rc = 1;
    } else if (store_pg_is_url(rules_config(r)->store)) {
        /* config and rules are fine; the database is reached and its
         * schema read (never changed), the password never shown */
        char msg[1024];
        const struct config *cfg = rules_config(r);
        if (store_pg_schema(cfg->store, STORE_PG_CHECK, 10000, 0, msg, sizeof msg) < 0) {
            fprintf(stderr, "%s: config and rules ok; %s\n", config_path, msg);
            rc = 1;
        } else {
            printf("%s: ok (%zu source%s, %zu endpoint%s); %s\n", config_path, cfg->nsources,
                   cfg->nsources == 1 ? "" : "s", cfg->nendpoints, cfg->nendpoints == 1 ? "" : "s",
                   msg);
        }
    } else {
        if (note[0])
            fprintf(stderr, "waybill check: %s (serve needs them set)\n", note);
        const struct config *cfg = rules_config(r);
        printf("%s: ok (%zu source%s, %zu endpoint%s)\n", config_path, cfg->nsources,
               cfg->nsources == 1 ? "" : "s", cfg->nendpoints, cfg->nendpoints == 1 ? "" : "s");
    }
    rules_free(r);
    free(lua_dir);
    return rc;
}

/* ---- migrate ---- */

/* waybill migrate [-c FILE] [--wait SECONDS]: the PostgreSQL store's
 * schema step. */
static int migrate(const char *config_path, int wait_s) {
    char *lua_dir = find_lua_dir();
    char err[512], note[512], msg[1024];
    struct rules *r =
        rules_load_offline(config_path, lua_dir, 0, note, sizeof note, err, sizeof err);
    int rc = 1;

    if (!r) {
        fprintf(stderr, "%s\n", err);
    } else if (!store_pg_is_url(rules_config(r)->store)) {
        printf("%s: a SQLite store: serve creates and upgrades its schema, nothing to do\n",
               config_path);
        rc = 0;
    } else if (store_pg_schema(rules_config(r)->store, STORE_PG_MIGRATE, 10000, wait_s * 1000, msg,
                               sizeof msg) < 0) {
        fprintf(stderr, "waybill migrate: %s\n", msg);
    } else {
        printf("%s\n", msg);
        rc = 0;
    }
    rules_free(r);
    free(lua_dir);
    return rc;
}

/* ---- sign ---- */

static void print_header(void *ctx, const char *name, const char *value) {
    UNUSED(ctx);
    printf("%s: %s\n", name, value);
}

static char *read_all(FILE *f, size_t *len) {
    struct util_buf b = {0};
    char chunk[65536];
    size_t n;

    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (util_buf_append(&b, chunk, n) < 0) {
            util_buf_free(&b);
            return NULL;
        }
    if (ferror(f) || util_buf_append(&b, "", 0) < 0) {
        util_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* Shiptify puts its signature in the body: prints body (a JSON object)
 * with timestamp (now, seconds), a random 50-character token and the hex
 * HMAC-SHA256 of timestamp || token under the first secret. */
static int sign_shiptify(const struct verify_secret *secret, const char *body, size_t len,
                         int64_t now_s) {
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    json_error_t jerr;
    json_t *obj = json_loadb(body, len, JSON_PRESERVE_ORDER, &jerr);
    unsigned char rnd[50], mac[32];
    char token[51], ts[24], msg[80], hex[65], *text = NULL;
    int rc = 1;

    if (!json_is_object(obj)) {
        fprintf(stderr, "waybill sign: a shiptify body is a JSON object\n");
        goto done;
    }
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        goto done;
    for (size_t i = 0; i < sizeof rnd; i++)
        token[i] = alnum[rnd[i] % (sizeof alnum - 1)];
    token[50] = '\0';
    snprintf(ts, sizeof ts, "%lld", (long long)now_s);
    snprintf(msg, sizeof msg, "%s%s", ts, token);
    if (verify_hmac_sha256(secret->key, secret->len, msg, strlen(msg), mac) < 0)
        goto done;
    util_hex_encode(mac, sizeof mac, hex);
    json_object_set_new(obj, "timestamp", json_integer(now_s));
    json_object_set_new(obj, "token", json_string(token));
    json_object_set_new(obj, "signature", json_string(hex));
    text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text) {
        printf("%s\n", text);
        rc = 0;
    }
done:
    free(text);
    json_decref(obj);
    return rc;
}

/* ShipEngine: RSA-SHA256 of "<ISO timestamp>.<body>" with a private key. */
static int sign_shipengine(const char *key_path, const char *kid, const char *body, size_t len,
                           int64_t now_ms) {
    FILE *f = fopen(key_path, "r");
    EVP_PKEY *key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    char ts[40], *sig = NULL;
    int rc = 1;

    if (f)
        fclose(f);
    if (!key) {
        fprintf(stderr, "waybill sign: %s: not a readable PEM private key\n", key_path);
        return 1;
    }
    util_time_rfc3339(now_ms - now_ms % 1000, ts, sizeof ts);
    if (verify_rsa_sign(key, ts, body, len, &sig) == 0) {
        printf("x-shipengine-rsa-sha256-signature: %s\n", sig);
        printf("x-shipengine-rsa-sha256-key-id: %s\n", kid);
        printf("x-shipengine-timestamp: %s\n", ts);
        rc = 0;
    } else {
        fprintf(stderr, "waybill sign: %s: cannot sign with this key\n", key_path);
    }
    free(sig);
    EVP_PKEY_free(key);
    return rc;
}

/* What `waybill sign` was asked: its options and raw secrets. */
struct sign_args {
    const char *scheme, *header, *file, *key_path, *kid, *encoding, *prefix;
    const char *raw_secrets[8];
    size_t nsecrets;
};

/* Reads sign's command line into a. Returns 0, or 2 after printing what
 * is wrong (usage or a missing option). */
static int sign_parse(int argc, char **argv, struct sign_args *a) {
    static const struct option opts[] = {
        {"scheme", required_argument, NULL, 's'}, {"secret", required_argument, NULL, 'k'},
        {"header", required_argument, NULL, 'H'}, {"key", required_argument, NULL, 'K'},
        {"kid", required_argument, NULL, 'I'},    {"encoding", required_argument, NULL, 'E'},
        {"prefix", required_argument, NULL, 'P'}, {NULL, 0, NULL, 0}};
    int c;

    memset(a, 0, sizeof *a);
    a->encoding = "hex";
    a->prefix = "";
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:k:H:K:I:E:P:", opts, NULL)) != -1) {
        if (c == 's')
            a->scheme = optarg;
        else if (c == 'k' && a->nsecrets < 8)
            a->raw_secrets[a->nsecrets++] = optarg;
        else if (c == 'H')
            a->header = optarg;
        else if (c == 'K')
            a->key_path = optarg;
        else if (c == 'I')
            a->kid = optarg;
        else if (c == 'E')
            a->encoding = optarg;
        else if (c == 'P')
            a->prefix = optarg;
        else {
            usage(stderr);
            return 2;
        }
    }
    if (a->scheme && strcmp(a->scheme, "shipengine") == 0) {
        if (!a->key_path || !a->kid) {
            fprintf(stderr, "waybill sign: shipengine needs --key private.pem and --kid KID\n");
            return 2;
        }
    } else if (!a->scheme || a->nsecrets == 0) {
        fprintf(stderr, "waybill sign: --scheme and --secret are required\n");
        return 2;
    }
    if (optind < argc)
        a->file = argv[optind];
    return 0;
}

/* The body to sign: file's bytes, else stdin's. New; NULL after printing
 * why when it cannot be read. */
static char *sign_body(const char *file, size_t *len) {
    char *body;

    if (file && strcmp(file, "-") != 0) {
        body = util_file_read(file, len);
        if (!body)
            fprintf(stderr, "waybill sign: %s: %s\n", file, strerror(errno));
    } else {
        body = read_all(stdin, len);
        if (!body)
            fprintf(stderr, "waybill sign: cannot read stdin\n");
    }
    return body;
}

/* a's secrets as keys into secrets[0..a->nsecrets): whsec_-decoded for
 * "standard", else their bytes (each key new: the caller frees them all,
 * also on failure). Returns 0, or -1 after printing why. */
static int sign_keys(const struct sign_args *a, struct verify_secret *secrets) {
    for (size_t i = 0; i < a->nsecrets; i++) {
        if (strcmp(a->scheme, "standard") == 0) {
            secrets[i].key = verify_whsec_decode(a->raw_secrets[i], &secrets[i].len);
            if (!secrets[i].key) {
                fprintf(stderr, "waybill sign: a standard secret is whsec_<base64>\n");
                return -1;
            }
        } else {
            secrets[i].key = (unsigned char *)strdup(a->raw_secrets[i]);
            secrets[i].len = strlen(a->raw_secrets[i]);
        }
    }
    return 0;
}

/* hmac-sha256 --header H [--encoding hex|base64] [--prefix P]: one header,
 * H: P<signature>. Returns the exit code. */
static int sign_hmac(const struct sign_args *a, const struct verify_secret *secret,
                     const char *body, size_t len) {
    unsigned char mac[32];
    char hex[65], b64[45];

    if (!a->header || (strcmp(a->encoding, "hex") != 0 && strcmp(a->encoding, "base64") != 0)) {
        fprintf(stderr, "waybill sign: hmac-sha256 needs --header H and --encoding "
                        "hex|base64\n");
        return 2;
    }
    verify_hmac_sha256(secret->key, secret->len, body, len, mac);
    util_hex_encode(mac, sizeof mac, hex);
    util_base64_encode(mac, sizeof mac, b64);
    printf("%s: %s%s\n", a->header, a->prefix, strcmp(a->encoding, "hex") == 0 ? hex : b64);
    return 0;
}

/* Stripe's scheme: "t=<now>,v1=<hex HMAC of "now.body">" with one v1 per
 * secret, under header (default Stripe-Signature). */
static int sign_stripe(const char *header, const struct verify_secret *secrets, size_t nsecrets,
                       const char *body, size_t len, int64_t now_s) {
    struct util_buf msg = {0};
    unsigned char mac[32];
    char hex[65];

    util_buf_printf(&msg, "%lld.", (long long)now_s);
    util_buf_append(&msg, body, len);
    printf("%s: t=%lld", header ? header : "Stripe-Signature", (long long)now_s);
    for (size_t i = 0; i < nsecrets; i++) {
        verify_hmac_sha256(secrets[i].key, secrets[i].len, msg.p, msg.len, mac);
        util_hex_encode(mac, sizeof mac, hex);
        printf(",v1=%s", hex);
    }
    printf("\n");
    util_buf_free(&msg);
    return 0;
}

/* Prints what a sender of a->scheme attaches to body (headers, or for
 * shiptify the body itself). Returns the exit code. */
static int sign_print(const struct sign_args *a, const struct verify_secret *secrets,
                      const char *body, size_t len, int64_t now_s) {
    const char *scheme = a->scheme;
    unsigned char mac[32];
    char hex[65], id[UTIL_ID_MAX];

    if (strcmp(scheme, "standard") == 0) {
        util_id_new("msg_", id, sizeof id);
        return verify_sign(SIGN_STANDARD, secrets, a->nsecrets, id, now_s, body, len, print_header,
                           NULL) < 0;
    }
    if (strcmp(scheme, "generic") == 0 || strcmp(scheme, "hex") == 0)
        return verify_sign(SIGN_HEX, secrets, 1, "", now_s, body, len, print_header, NULL) < 0;
    if (strcmp(scheme, "atoship") == 0)
        return verify_sign(SIGN_ATOSHIP, secrets, 1, "", now_s, body, len, print_header, NULL) < 0;
    if (strcmp(scheme, "aftership") == 0)
        return verify_sign(SIGN_AFTERSHIP, secrets, 1, "", now_s, body, len, print_header, NULL) <
               0;
    if (strcmp(scheme, "easypost") == 0) {
        verify_hmac_sha256(secrets[0].key, secrets[0].len, body, len, mac);
        util_hex_encode(mac, sizeof mac, hex);
        printf("X-Hmac-Signature: hmac-sha256-hex=%s\n", hex);
        return 0;
    }
    if (strcmp(scheme, "shiptify") == 0)
        return sign_shiptify(&secrets[0], body, len, now_s);
    if (strcmp(scheme, "shipengine") == 0)
        return sign_shipengine(a->key_path, a->kid, body, len, util_now_ms());
    if (strcmp(scheme, "hmac-sha256") == 0)
        return sign_hmac(a, &secrets[0], body, len);
    if (strcmp(scheme, "stripe") == 0)
        return sign_stripe(a->header, secrets, a->nsecrets, body, len, now_s);
    fprintf(stderr, "waybill sign: unknown scheme '%s'\n", scheme);
    return 2;
}

/* waybill sign --scheme S --secret K [...] [FILE]: see usage(). */
static int sign(int argc, char **argv) {
    struct sign_args a;
    struct verify_secret secrets[8];
    size_t len = 0;
    char *body;
    int64_t now_s = util_now_ms() / 1000;
    int rc;

    if ((rc = sign_parse(argc, argv, &a)) != 0)
        return rc;
    if (!(body = sign_body(a.file, &len)))
        return 1;
    memset(secrets, 0, sizeof secrets);
    rc = sign_keys(&a, secrets) < 0 ? 1 : sign_print(&a, secrets, body, len, now_s);
    for (size_t i = 0; i < a.nsecrets; i++)
        free(secrets[i].key);
    free(body);
    return rc;
}

/* ---- route: dry run ---- */

/* A payload as the dry run shows it: its JSON value, else the text. */
static json_t *payload_json(const char *p, size_t len) {
    json_t *j = json_loadb(p, len, JSON_DECODE_ANY, NULL);
    return j ? j : json_stringn(p, len);
}

/* The plan of one event as {"event":{...},"deliveries":[...]}; new. */
static json_t *route_plan_json(const struct rules_input *in, const struct rules_plan *plan) {
    json_t *ev, *dels = json_array(), *out;
    char t[64];

    util_time_rfc3339(in->received_at_ms, t, sizeof t);
    ev = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:s, s:o, s:o}", "id", in->id, "source", in->source,
                   "source_id", in->source_id, "type", in->type, "created_at", in->created_at,
                   "received_at", t, "shipment",
                   in->shipment_json ? payload_json(in->shipment_json, strlen(in->shipment_json))
                                     : json_null(),
                   "data", payload_json(in->data_json, strlen(in->data_json)));
    for (size_t i = 0; i < plan->n && dels; i++) {
        const struct rules_send *sd = &plan->sends[i];
        json_t *win = json_null(), *hdrs;

        if (sd->window_ms > 0) {
            int64_t start = batch_window_start(in->received_at_ms, sd->window_ms);
            char ws[64], we[64];
            util_time_rfc3339(start, ws, sizeof ws);
            util_time_rfc3339(start + sd->window_ms, we, sizeof we);
            win = json_pack("{s:I, s:s, s:s}", "ms", (json_int_t)sd->window_ms, "start", ws, "end",
                            we);
        }
        hdrs = sd->headers_json ? json_loads(sd->headers_json, 0, NULL) : NULL;
        if (!hdrs)
            hdrs = json_object();
        json_object_set_new(hdrs, "Content-Type", json_string(sd->content_type));
        json_t *d =
            json_pack("{s:s, s:o, s:o, s:o}", "endpoint", sd->endpoint, "window", win, "payload",
                      payload_json(sd->payload, sd->payload_len), "headers", hdrs);
        /* ordered by key: its key, or null when the event has none (unordered) */
        if (d && (sd->key || sd->key_missing))
            json_object_set_new(d, "key", sd->key ? json_string(sd->key) : json_null());
        json_array_append_new(dels, d);
    }
    out = json_pack("{s:o, s:o}", "event", ev ? ev : json_null(), "deliveries",
                    dels ? dels : json_array());
    if (out && plan->key_error)
        json_object_set_new(out, "key_error", json_string(plan->key_error));
    return out;
}

/* waybill route [-c FILE] --source NAME EVENT.json: runs the source's
 * adapter and the rules over the file, prints the plan; opens no store,
 * sends nothing. Exit 0, 1 on a rule or adapter error, 2 on usage. */
static int route_cmd(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"source", required_argument, NULL, 's'},
                                         {NULL, 0, NULL, 0}};
    const char *config_path = "waybill.lua", *source = NULL;
    char *lua_dir = NULL, *body = NULL, err[512], note[512], id[UTIL_ID_MAX], sid[UTIL_ID_MAX];
    struct rules *r = NULL;
    struct rules_event ev = {0};
    struct rules_plan plan = {0};
    const struct config_source *src;
    size_t len = 0;
    int c, rc = 1, routed;
    json_t *out;

    optind = 1;
    while ((c = getopt_long(argc, argv, "c:s:", opts, NULL)) != -1) {
        if (c == 'c')
            config_path = optarg;
        else if (c == 's')
            source = optarg;
        else
            goto usage;
    }
    if (!source || optind != argc - 1)
        goto usage;
    lua_dir = find_lua_dir();
    r = rules_load_offline(config_path, lua_dir, 0, note, sizeof note, err, sizeof err);
    if (!r) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    if (note[0])
        fprintf(stderr, "waybill route: %s\n", note);
    src = config_source_by_name(rules_config(r), source);
    if (!src) {
        fprintf(stderr, "waybill route: no source named '%s' in %s\n", source, config_path);
        goto done;
    }
    body =
        strcmp(argv[optind], "-") == 0 ? read_all(stdin, &len) : util_file_read(argv[optind], &len);
    if (!body) {
        fprintf(stderr, "waybill route: cannot read %s: %s\n",
                strcmp(argv[optind], "-") == 0 ? "stdin" : argv[optind], strerror(errno));
        goto done;
    }
    if (rules_adapt(r, src, body, len, "{}", &ev, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", argv[optind], err);
        goto done;
    }
    util_id_new("evt_", id, sizeof id);
    if (!ev.source_id)
        util_id_new("dry_", sid, sizeof sid);
    struct rules_input in = {.id = id,
                             .source = source,
                             .source_id = ev.source_id ? ev.source_id : sid,
                             .type = ev.type,
                             .created_at = ev.created_at,
                             .received_at_ms = util_now_ms(),
                             .data_json = ev.data_json,
                             .shipment_json = ev.shipment_json,
                             .raw = body,
                             .raw_len = len,
                             .headers_json = "{}"};
    routed = rules_route(r, &in, &plan, err, sizeof err);
    if (routed != 0) /* partial: the plan of the handlers that ran, and exit 1 */
        fprintf(stderr, "%s: %s\n", routed < 0 ? "rule_error" : "partial", err);
    if (routed < 0)
        goto done;
    out = route_plan_json(&in, &plan);
    if (!out) {
        fprintf(stderr, "waybill route: out of memory\n");
        goto done;
    }
    json_dumpf(out, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("\n");
    json_decref(out);
    rc = routed > 0 ? 1 : 0;
done:
    rules_plan_clear(&plan);
    rules_event_clear(&ev);
    rules_free(r);
    free(body);
    free(lua_dir);
    return rc;
usage:
    fputs(cmd_usage[usage_index("route")].text, stderr);
    return 2;
}

/* ---- init: a starter config ---- */

static const char init_config[] =
    "-- waybill.lua -- written by `waybill init`; see README and SPEC for every option.\n"
    "-- Check it with `waybill check`, run it with `waybill serve`.\n"
    "\n"
    "environment = \"sandbox\"          -- \"production\": batch windows default to 30m (5m here)\n"
    "listen      = \"127.0.0.1:8080\"   -- carriers POST to http://HOST/hooks/<source>\n"
    "admin       = { listen = \"127.0.0.1:8081\",\n"
    "                token = env(\"WAYBILL_ADMIN_TOKEN\", \"change-me\") }\n"
    "store       = \"sqlite:waybill.db\" -- relative to this file\n"
    "\n"
    "-- Sources: one per carrier account. Secrets come from the environment;\n"
    "-- the second argument of env() is a development default: remove it in\n"
    "-- production so a missing variable stops the load.\n"
    "source \"atoship\" { verify = \"atoship\", secret = env(\"ATOSHIP_SECRET\", "
    "\"dev-atoship-secret\") }\n"
    "\n"
    "-- Endpoints: the systems that receive events. sign = \"standard\" signs\n"
    "-- with Standard Webhooks headers (secret whsec_<base64>).\n"
    "endpoint \"erp\" {\n"
    "  url    = \"https://erp.example.com/webhooks\",\n"
    "  secret = env(\"ERP_SECRET\", \"whsec_ZGV2LWVycC1zZWNyZXQtZm9yLXdheWJpbGw=\"),\n"
    "  sign   = \"standard\",\n"
    "  retry  = \"atoship\",             -- 0, 1m, 5m, 30m, 2h, 6h\n"
    "}\n"
    "\n"
    "-- A system that takes tracking updates in batches, one POST per window.\n"
    "endpoint \"warehouse\" { url = \"https://wms.example.com/batch\", sign = \"hex\",\n"
    "                       secret = env(\"WMS_SECRET\", \"dev-wms-secret\"), window = \"10m\" }\n"
    "\n"
    "rules \"rules/\"                   -- every *.lua there, in name order\n";

static const char init_rules[] =
    "-- rules/10-routes.lua -- which system gets which event (SPEC section 6).\n"
    "-- on(pattern, fn | {endpoints}): exact type, glob (\"tracking.*\") or \"*\".\n"
    "-- Every matching handler runs; an event nothing sends is stored \"unrouted\".\n"
    "\n"
    "-- Delivered shipments go to the ERP, unchanged.\n"
    "on(\"shipment.delivered\", { \"erp\" })\n"
    "\n"
    "-- A transform: the ERP only needs a few fields of an exception.\n"
    "on(\"shipment.exception\", function(ev)\n"
    "  send(\"erp\", { order = ev.data.order_id, tracking = ev.data.tracking_number,\n"
    "                reason = ev.data.exception_reason, at = ev.created_at })\n"
    "end)\n"
    "\n"
    "-- Tracking updates are collected into the warehouse's batch window.\n"
    "on(\"tracking.*\", function(ev)\n"
    "  batch(\"warehouse\", { tracking = ev.data.tracking_number, status = ev.type })\n"
    "end)\n"
    "\n"
    "-- Subscriptions made through the admin API get their events too.\n"
    "on(\"*\", function(ev) send(subscribers(ev.type), ev) end)\n";

/* Writes text to dir/name unless the file exists. Returns 0 or -1. */
static int init_write(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    FILE *f;
    int fd;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        fprintf(stderr, "waybill init: %s: %s\n", path, strerror(errno));
        return -1;
    }
    f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return -1;
    }
    if (fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "waybill init: writing %s failed\n", path);
        return -1;
    }
    printf("wrote %s\n", path);
    return 0;
}

/* waybill init [DIR]: a commented starter waybill.lua and rules/; never
 * overwrites a file. Exit 0 or 1. */
static int init_cmd(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : ".";
    char rules_dir[PATH_MAX];

    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "waybill init: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    snprintf(rules_dir, sizeof rules_dir, "%s/rules", dir);
    if (mkdir(rules_dir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "waybill init: %s: %s\n", rules_dir, strerror(errno));
        return 1;
    }
    if (init_write(dir, "waybill.lua", init_config) < 0 ||
        init_write(dir, "rules/10-routes.lua", init_rules) < 0)
        return 1;
    return 0;
}

/* Parses "-c FILE" / "--config FILE" for serve, check and migrate, serve's
 * "--pidfile FILE" (into *pidfile when pidfile is not NULL) and migrate's
 * "--wait SECONDS" (into *wait_s when wait_s is not NULL). */
static const char *config_arg(int argc, char **argv, const char **pidfile, int *wait_s) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"pidfile", required_argument, NULL, 'p'},
                                         {"wait", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    const char *path = "waybill.lua";
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        if (c == 'c')
            path = optarg;
        else if (c == 'p' && pidfile)
            *pidfile = optarg;
        else if (c == 'w' && wait_s) {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end || v < 0 || v > 86400)
                return NULL;
            *wait_s = (int)v;
        } else
            return NULL;
    }
    return optind == argc ? path : NULL;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : NULL, *config_path;

    log_init();
    if (cmd && help_asked(argc, argv))
        return 0;
    if (cmd && strcmp(cmd, "help") == 0 && argc > 2 && usage_index(argv[2]) >= 0) {
        cmd_help(stdout, usage_index(argv[2]));
        return 0;
    }
    if (!cmd || strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(cmd ? stdout : stderr);
        return cmd ? 0 : 2;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("waybill %s\n", WAYBILL_VERSION);
        return 0;
    }
    if (strcmp(cmd, "sign") == 0)
        return sign(argc - 1, argv + 1);
    if (cli_is_command(cmd)) {
        char *lua_dir = find_lua_dir();
        int rc = cli_main(argc - 1, argv + 1, lua_dir);
        free(lua_dir);
        return rc;
    }
    if (strcmp(cmd, "serve") == 0 || strcmp(cmd, "check") == 0 || strcmp(cmd, "migrate") == 0) {
        const char *pidfile = NULL;
        int is_serve = strcmp(cmd, "serve") == 0, is_migrate = strcmp(cmd, "migrate") == 0;
        int wait_s = 0;
        config_path =
            config_arg(argc - 1, argv + 1, is_serve ? &pidfile : NULL, is_migrate ? &wait_s : NULL);
        if (!config_path) {
            cmd_help(stderr, usage_index(cmd));
            return 2;
        }
        if (is_migrate)
            return migrate(config_path, wait_s);
        return is_serve ? serve(config_path, pidfile) : check(config_path);
    }
    if (strcmp(cmd, "route") == 0)
        return route_cmd(argc - 1, argv + 1);
    if (strcmp(cmd, "init") == 0)
        return init_cmd(argc - 1, argv + 1);
    if (strcmp(cmd, "bench-rules") == 0) { /* used by make bench */
        char *lua_dir = find_lua_dir();
        int rc = ruletest_bench(argc - 1, argv + 1, lua_dir);
        free(lua_dir);
        return rc;
    }
    if (strcmp(cmd, "test-rules") == 0) {
        char *lua_dir;
        int rc;
        if (argc != 3) {
            fprintf(stderr, "usage: waybill test-rules FILE.test\n");
            return 2;
        }
        lua_dir = find_lua_dir();
        rc = ruletest_run(argv[2], lua_dir);
        free(lua_dir);
        return rc;
    }
    fprintf(stderr, "waybill: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
