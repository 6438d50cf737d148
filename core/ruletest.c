/* ruletest.c -- `waybill test-rules FILE` (format in ruletest.h). Each test
 * writes its rules into a fresh temporary config folder and loads it as a
 * real generation, so the sandbox, limits and DSL are exactly the gateway's.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "ruletest.h"
#include "rules.h"
#include "util.h"

#define RT_DEFAULT_CONFIG                                                                          \
    "endpoint \"erp\" { url = \"http://127.0.0.1:9/erp\", sign = \"none\" }\n"                     \
    "endpoint \"crm\" { url = \"http://127.0.0.1:9/crm\", sign = \"none\" }\n"                     \
    "endpoint \"bi\" { url = \"http://127.0.0.1:9/bi\", sign = \"none\" }\n"                       \
    "endpoint \"alerts\" { url = \"http://127.0.0.1:9/alerts\", sign = \"none\" }\n"               \
    "endpoint \"warehouse\" { url = \"http://127.0.0.1:9/wms\", sign = \"none\", window = "        \
    "\"10m\" }\n"

/* One group of lines: text (new) and the file line it starts on. */
struct rt_group {
    char *text;
    int line;
};

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    UNUSED(sb);
    UNUSED(flag);
    UNUSED(ftw);
    return remove(p);
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    if (fputs(text, f) < 0) {
        fclose(f);
        return -1;
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* Appends the group in cur (if any) to g. Returns 0 or -1. */
static int rt_flush(struct util_buf *cur, int start, struct rt_group **g, size_t *n, size_t *cap) {
    struct rt_group *grown;

    if (!cur->len)
        return 0;
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        grown = realloc(*g, c * sizeof **g);
        if (!grown)
            return -1;
        *g = grown;
        *cap = c;
    }
    (*g)[*n].text = strndup(cur->p, cur->len);
    (*g)[*n].line = start;
    if (!(*g)[*n].text)
        return -1;
    (*n)++;
    util_buf_reset(cur);
    return 0;
}

/* Splits the file into groups; *out is new. Returns the count or -1. */
static long rt_groups(const char *text, struct rt_group **out) {
    struct rt_group *g = NULL;
    struct util_buf cur = {0};
    size_t n = 0, cap = 0;
    int line = 0, start = 0;
    const char *p = text;

    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        int blank = 1;

        line++;
        for (size_t i = 0; i < len; i++)
            if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
                blank = 0;
        if (blank) {
            if (rt_flush(&cur, start, &g, &n, &cap) < 0)
                goto oom;
        } else if (p[0] != '#') {
            if (!cur.len)
                start = line;
            if (util_buf_append(&cur, p, len) < 0 || util_buf_appends(&cur, "\n") < 0)
                goto oom;
        }
        p = nl ? nl + 1 : p + len;
    }
    if (rt_flush(&cur, start, &g, &n, &cap) < 0)
        goto oom;
    util_buf_free(&cur);
    *out = g;
    return (long)n;
oom:
    util_buf_free(&cur);
    for (size_t i = 0; i < n; i++)
        free(g[i].text);
    free(g);
    return -1;
}

/* Compares one planned send with one expected delivery; 0 when equal,
 * else -1 with the difference in why. */
static int rt_compare(const struct rules_send *s, json_t *want, char *why, size_t whylen) {
    const char *ep = json_string_value(json_object_get(want, "endpoint"));
    json_t *payload = json_object_get(want, "payload"), *win = json_object_get(want, "window");
    json_t *hdrs = json_object_get(want, "headers"), *got = NULL;
    int rc = -1;

    if (!ep || strcmp(ep, s->endpoint) != 0) {
        snprintf(why, whylen, "endpoint: want %s, got %s", ep ? ep : "(none)", s->endpoint);
        return -1;
    }
    if (json_is_string(payload)) {
        if (strlen(json_string_value(payload)) != s->payload_len ||
            memcmp(json_string_value(payload), s->payload, s->payload_len) != 0) {
            snprintf(why, whylen, "payload to %s: want %s, got %s", ep, json_string_value(payload),
                     s->payload);
            return -1;
        }
    } else if (payload) {
        got = json_loadb(s->payload, s->payload_len, JSON_DECODE_ANY, NULL);
        if (!got || !json_equal(got, payload)) {
            char *w = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
            char *g = got ? json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
            snprintf(why, whylen, "payload to %s:\n    want %s\n    got  %s", ep, w ? w : "?",
                     g ? g : s->payload);
            free(w);
            free(g);
            goto done;
        }
    }
    if (win &&
        (json_is_null(win) ? s->window_ms != 0
                           : !json_is_integer(win) || json_integer_value(win) != s->window_ms)) {
        snprintf(why, whylen, "window of %s: want %s, got %lld ms", ep,
                 json_is_null(win) ? "none" : "other", (long long)s->window_ms);
        goto done;
    }
    if (hdrs) {
        json_t *h = s->headers_json ? json_loads(s->headers_json, 0, NULL) : json_object();
        int eq = h && json_equal(h, hdrs);
        json_decref(h);
        if (!eq) {
            snprintf(why, whylen, "headers of %s: got %s", ep,
                     s->headers_json ? s->headers_json : "{}");
            goto done;
        }
    }
    rc = 0;
done:
    json_decref(got);
    return rc;
}

/* Rewrites "DIR/rules/test.lua:N:" in why (the temporary rule file) as
 * "PATH:M:", M being the line of the .test file the rules' line N is on. */
static void rt_locate(char *why, size_t cap, const char *dir, const char *path, int first_line) {
    char prefix[PATH_MAX], out[2048];
    char *at;
    long n;

    snprintf(prefix, sizeof prefix, "%s/rules/test.lua:", dir);
    at = strstr(why, prefix);
    if (!at)
        return;
    n = strtol(at + strlen(prefix), NULL, 10);
    snprintf(out, sizeof out, "%.*s%s:%ld%s", (int)(at - why), why, path, first_line + n - 1,
             strchr(at + strlen(prefix), ':') ? strchr(at + strlen(prefix), ':') : "");
    snprintf(why, cap, "%s", out);
}

/* Writes a test's config folder into dir: waybill.lua (fixed settings,
 * config, then rules "rules/") and rules/test.lua (rules). Sets file to
 * waybill.lua's path. Returns 0, or -1 with the reason in why. */
static int rt_write(const char *dir, const char *config, const char *rules, char *file,
                    size_t filelen, char *why, size_t whylen) {
    struct util_buf cfg = {0};
    int rc = -1;

    util_buf_printf(&cfg,
                    "listen = \"127.0.0.1:1\"\nstore = \"sqlite:x.db\"\n"
                    "allow_private = { \"127.0.0.0/8\" }\n%s\nrules \"rules/\"\n",
                    config);
    snprintf(file, filelen, "%s/rules", dir);
    if (!cfg.p || mkdir(file, 0700) < 0) {
        snprintf(why, whylen, "cannot write the test config");
        goto done;
    }
    snprintf(file, filelen, "%s/rules/test.lua", dir);
    if (write_file(file, rules) < 0) {
        snprintf(why, whylen, "cannot write the test rules");
        goto done;
    }
    snprintf(file, filelen, "%s/waybill.lua", dir);
    if (write_file(file, cfg.p) < 0) {
        snprintf(why, whylen, "cannot write the test config");
        goto done;
    }
    rc = 0;
done:
    util_buf_free(&cfg);
    return rc;
}

/* The test event's string field k, else d. */
static const char *rt_field(json_t *ev, const char *k, const char *d) {
    const char *v = json_string_value(json_object_get(ev, k));
    return v ? v : d;
}

/* Routes the test's event (ev, parsed from its group evg; data_json its
 * data, shipment_json its shipment or NULL) through r, as the gateway
 * routes a stored event. */
static int rt_route(struct rules *r, json_t *ev, const char *data_json, const char *shipment_json,
                    const struct rt_group *evg, struct rules_plan *plan, char *err, size_t errlen) {
    struct rules_input in = {
        .id = rt_field(ev, "id", "evt_test"),
        .source = rt_field(ev, "source", "test"),
        .source_id = rt_field(ev, "source_id", "src_test"),
        .type = rt_field(ev, "type", ""),
        .created_at = rt_field(ev, "created_at", NULL),
        .received_at_ms = 1767225600000, /* 2026-01-01T00:00:00Z */
        .data_json = data_json,
        .shipment_json = shipment_json,
        .raw = evg->text,
        .raw_len = strlen(evg->text),
        .headers_json = "{}",
    };
    return rules_route(r, &in, plan, err, errlen);
}

/* Judges a test expecting "rule_error[: text]": the route must have
 * failed, with text (when given) in its error. Returns 0 or -1 (why). */
static int rt_check_error(const char *expect, int routed, const struct rules_plan *plan,
                          const char *err, char *why, size_t whylen) {
    const char *sub = expect + 10;
    char want_sub[512];
    size_t k;

    if (routed == 0) {
        snprintf(why, whylen, "want rule_error, got %zu deliveries", plan->n);
        return -1;
    }
    while (*sub == ':' || *sub == ' ')
        sub++;
    snprintf(want_sub, sizeof want_sub, "%s", sub);
    k = strlen(want_sub);
    while (k && (want_sub[k - 1] == '\n' || want_sub[k - 1] == ' '))
        want_sub[--k] = '\0';
    if (k && !strstr(err, want_sub)) {
        snprintf(why, whylen, "rule_error without \"%s\": %s", want_sub, err);
        return -1;
    }
    return 0;
}

/* Judges a routed event's plan against expect ("unrouted" or a JSON
 * array of deliveries, in order; line: where expect starts). Returns 0 or
 * -1 (why). */
static int rt_check_plan(const char *expect, int line, const struct rules_plan *plan, char *why,
                         size_t whylen) {
    json_t *want;
    int rc = -1;

    if (strncmp(expect, "unrouted", 8) == 0) {
        if (plan->n) {
            snprintf(why, whylen, "want unrouted, got %zu deliveries (first to %s)", plan->n,
                     plan->sends[0].endpoint);
            return -1;
        }
        return 0;
    }
    want = json_loads(expect, 0, NULL);
    if (!json_is_array(want)) {
        snprintf(why, whylen,
                 "line %d: expected deliveries must be a JSON array, unrouted or rule_error", line);
        goto done;
    }
    if (json_array_size(want) != plan->n) {
        snprintf(why, whylen, "want %zu deliveries, got %zu", json_array_size(want), plan->n);
        goto done;
    }
    for (size_t i = 0; i < plan->n; i++)
        if (rt_compare(&plan->sends[i], json_array_get(want, i), why, whylen) < 0)
            goto done;
    rc = 0;
done:
    json_decref(want);
    return rc;
}

/* Runs one test (g[0] rules, g[1] event, g[2] expected) in a fresh
 * temporary config folder; 0 passed, -1 failed (reason printed). */
static int rt_one(const char *path, const char *lua_dir, const char *config,
                  const struct rt_group *g) {
    char dir[] = "/tmp/waybill-ruletest-XXXXXX", file[PATH_MAX], err[1024], why[2048];
    struct rules *r = NULL;
    struct rules_plan plan = {0};
    json_t *ev = NULL, *data, *no_data = NULL;
    const char *expect = g[2].text;
    int rc = -1, routed;
    char *data_json = NULL, *shipment_json = NULL;

    why[0] = '\0';
    if (!mkdtemp(dir)) {
        snprintf(why, sizeof why, "mkdtemp: %s", strerror(errno));
        goto done;
    }
    if (rt_write(dir, config, g[0].text, file, sizeof file, why, sizeof why) < 0)
        goto done;
    ev = json_loads(g[1].text, 0, NULL);
    if (!json_is_object(ev) || !json_is_string(json_object_get(ev, "type"))) {
        snprintf(why, sizeof why, "line %d: the event must be a JSON object with a type",
                 g[1].line);
        goto done;
    }
    data = json_object_get(ev, "data");
    data_json = json_dumps(data ? data : (no_data = json_object()), JSON_COMPACT | JSON_ENCODE_ANY);
    if (json_is_object(json_object_get(ev, "shipment")))
        shipment_json = json_dumps(json_object_get(ev, "shipment"), JSON_COMPACT | JSON_SORT_KEYS);
    r = rules_load(file, lua_dir, err, sizeof err);
    if (!r) {
        snprintf(why, sizeof why, "rules do not load: %s", err);
        goto done;
    }
    routed = rt_route(r, ev, data_json, shipment_json, &g[1], &plan, err, sizeof err);
    if (strncmp(expect, "rule_error", 10) == 0)
        rc = rt_check_error(expect, routed, &plan, err, why, sizeof why);
    else if (routed != 0)
        snprintf(why, sizeof why, "%s: %s", routed < 0 ? "rule_error" : "partial", err);
    else
        rc = rt_check_plan(expect, g[2].line, &plan, why, sizeof why);
done:
    if (rc < 0) {
        rt_locate(why, sizeof why, dir, path, g[0].line);
        printf("FAIL %s:%d: %s\n", path, g[0].line, why);
    }
    rules_plan_clear(&plan);
    rules_free(r);
    json_decref(ev);
    json_decref(no_data);
    free(data_json);
    free(shipment_json);
    if (dir[sizeof dir - 7] != 'X')
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return rc;
}

int ruletest_run(const char *path, const char *lua_dir) {
    char *text = util_file_read(path, NULL);
    struct rt_group *g = NULL;
    const char *config = RT_DEFAULT_CONFIG;
    long n, i = 0;
    int passed = 0, failed = 0;

    if (!text) {
        fprintf(stderr, "waybill test-rules: cannot read %s: %s\n", path, strerror(errno));
        printf("0 passed, 1 failed\n");
        return 2;
    }
    n = rt_groups(text, &g);
    if (n < 0) {
        fprintf(stderr, "waybill test-rules: out of memory\n");
        free(text);
        return 2;
    }
    while (i < n) {
        if (strncmp(g[i].text, "config:", 7) == 0) {
            config = g[i].text + 7;
            i++;
            continue;
        }
        if (i + 3 > n) {
            printf("FAIL %s:%d: a test needs rules, an event and the expected deliveries\n", path,
                   g[i].line);
            failed++;
            break;
        }
        if (rt_one(path, lua_dir, config, &g[i]) == 0)
            passed++;
        else
            failed++;
        i += 3;
    }
    printf("%d passed, %d failed\n", passed, failed);
    for (i = 0; i < n; i++)
        free(g[i].text);
    free(g);
    free(text);
    return failed ? 1 : 0;
}

int ruletest_bench(int argc, char **argv, const char *lua_dir) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"source", required_argument, NULL, 's'},
                                         {NULL, 0, NULL, 0}};
    const char *config_path = "waybill.lua", *source = NULL;
    struct rules *r = NULL;
    struct rules_event *evs = NULL;
    char **bodies = NULL;
    size_t *lens = NULL, nev = 0, sends = 0;
    long rounds = 2000;
    int c, rc = 1;
    char err[512];
    const struct config_source *src;
    int64_t t0, t1;

    optind = 1;
    while ((c = getopt_long(argc, argv, "c:s:n:", opts, NULL)) != -1) {
        if (c == 'c')
            config_path = optarg;
        else if (c == 's')
            source = optarg;
        else if (c == 'n')
            rounds = strtol(optarg, NULL, 10);
        else
            return 2;
    }
    if (!source || optind >= argc || rounds <= 0) {
        fprintf(stderr,
                "usage: waybill bench-rules -c CONFIG --source NAME [-n N] EVENT.json...\n");
        return 2;
    }
    r = rules_load(config_path, lua_dir, err, sizeof err);
    if (!r) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    src = config_source_by_name(rules_config(r), source);
    nev = (size_t)(argc - optind);
    evs = calloc(nev, sizeof *evs);
    bodies = calloc(nev, sizeof *bodies);
    lens = calloc(nev, sizeof *lens);
    if (!src || !evs || !bodies || !lens) {
        fprintf(stderr, "waybill bench-rules: %s\n", src ? "out of memory" : "unknown source");
        goto done;
    }
    for (size_t i = 0; i < nev; i++) {
        bodies[i] = util_file_read(argv[optind + (int)i], &lens[i]);
        if (!bodies[i] ||
            rules_adapt(r, src, bodies[i], lens[i], "{}", &evs[i], err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", argv[optind + (int)i], bodies[i] ? err : strerror(errno));
            goto done;
        }
    }
    t0 = util_mono_ms();
    for (long k = 0; k < rounds; k++) {
        for (size_t i = 0; i < nev; i++) {
            struct rules_plan plan = {0};
            struct rules_input in = {
                .id = "evt_bench",
                .source = source,
                .source_id = evs[i].source_id ? evs[i].source_id : "x",
                .type = evs[i].type,
                .created_at = evs[i].created_at,
                .received_at_ms = 1767225600000,
                .data_json = evs[i].data_json,
                .shipment_json = evs[i].shipment_json,
                .raw = bodies[i],
                .raw_len = lens[i],
                .headers_json = "{}",
                .data_canonical = 1, /* from rules_adapt, as on ingest */
            };
            if (rules_route(r, &in, &plan, err, sizeof err) < 0) {
                fprintf(stderr, "rule_error: %s\n", err);
                goto done;
            }
            if (k == 0)
                sends += plan.n;
            rules_plan_clear(&plan);
        }
    }
    t1 = util_mono_ms();
    printf("{\"events\":%zu,\"rounds\":%ld,\"us_per_event\":%.2f,\"sends_per_event\":%.2f}\n", nev,
           rounds, (double)(t1 - t0) * 1000.0 / ((double)rounds * (double)nev),
           (double)sends / (double)nev);
    rc = 0;
done:
    for (size_t i = 0; i < nev && evs; i++)
        rules_event_clear(&evs[i]);
    for (size_t i = 0; i < nev && bodies; i++)
        free(bodies[i]);
    free(evs);
    free(bodies);
    free(lens);
    rules_free(r);
    return rc;
}
