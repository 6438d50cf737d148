/* test_ruletest.c -- ruletest.c: a small .test file written here, run
 * through the real sandbox: what passes (function and list handlers, string
 * payloads, headers, windows, unrouted, rule_error with a substring, a
 * config: group), each kind of failure with its file:line (a rule's error
 * located on the .test file's own line), the summary line and the exit
 * status; then bench-rules' argument handling and its one JSON line.
 * stdout is captured in a temporary file for each run.
 * SPDX-License-Identifier: MIT */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fixture.h"
#include "harness.h"
#include "log.h"
#include "ruletest.h"

static char tmp_dir[] = "/tmp/waybill-test-ruletest-XXXXXX", lua_dir[PATH_MAX];

/* ---- capturing stdout and stderr ---- */

struct capture {
    FILE *out, *err;
    int saved_out, saved_err;
};

static void capture_start(struct capture *c) {
    fflush(stdout);
    fflush(stderr);
    c->out = tmpfile();
    c->err = tmpfile();
    c->saved_out = dup(1);
    c->saved_err = dup(2);
    if (!c->out || !c->err || c->saved_out < 0 || c->saved_err < 0 || dup2(fileno(c->out), 1) < 0 ||
        dup2(fileno(c->err), 2) < 0) {
        perror("capture");
        exit(2);
    }
}

static char *slurp(FILE *f) {
    long n = ftell(f);
    char *text = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    rewind(f);
    if (text && n > 0 && fread(text, 1, (size_t)n, f) != (size_t)n)
        text[0] = '\0';
    fclose(f);
    return text;
}

/* Restores both; *out and *err receive what was written (new). */
static void capture_end(struct capture *c, char **out, char **err) {
    fflush(stdout);
    fflush(stderr);
    dup2(c->saved_out, 1);
    dup2(c->saved_err, 2);
    close(c->saved_out);
    close(c->saved_err);
    *out = slurp(c->out);
    *err = slurp(c->err);
}

static const char *last_line(const char *text) {
    static char line[256];
    size_t n = strlen(text);
    const char *p;
    while (n && text[n - 1] == '\n')
        n--;
    p = text + n;
    while (p > text && p[-1] != '\n')
        p--;
    snprintf(line, sizeof line, "%.*s", (int)(text + n - p), p);
    return line;
}

static int count_lines_starting(const char *text, const char *prefix) {
    int n = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        n += strncmp(p, prefix, strlen(prefix)) == 0;
    return n;
}

/* ---- test-rules ---- */

/* Line numbers matter: the failures below name them. */
static const char *test_file =
    /*  1 */
    "# passing: a function handler, headers, a string payload, windows\n"
    /*  2 */ "on(\"order.*\", function(ev)\n"
    /*  3 */ "  send(\"erp\", { n = ev.data.n }, { headers = { [\"X-K\"] = \"v\" } })\n"
    /*  4 */ "  send(\"crm\", \"raw text\")\n"
    /*  5 */ "  batch(\"warehouse\", { n = ev.data.n })\n"
    /*  6 */ "end)\n"
    /*  7 */ "\n"
    /*  8 */ "{\"type\":\"order.created\",\"data\":{\"n\":1}}\n"
    /*  9 */ "  \n"
    /* 10 */ "[{\"endpoint\":\"erp\",\"payload\":{\"n\":1},\"headers\":{\"X-K\":\"v\"},\"window\":"
    "null},"
    "{\"endpoint\":\"crm\",\"payload\":\"raw text\"},"
    "{\"endpoint\":\"warehouse\",\"payload\":{\"n\":1},\"window\":600000}]\n"
    /* 11 */ "\n"
    /* 12 */ "# passing: a list handler sends the event whole; unrouted\n"
    /* 13 */ "on(\"order.*\", {\"erp\"})\n"
    /* 14 */ "\n"
    /* 15 */ "{\"type\":\"order.created\",\"id\":\"evt_1\",\"source\":\"shop\",\"data\":{\"k\":"
    "\"v\"}}\n"
    /* 16 */ "\n"
    /* 17 */ "[{\"endpoint\":\"erp\",\"payload\":{\"id\":\"evt_1\",\"source\":\"shop\","
    "\"source_id\":\"src_test\",\"type\":\"order.created\","
    "\"received_at\":\"2026-01-01T00:00:00Z\",\"data\":{\"k\":\"v\"}}}]\n"
    /* 18 */ "\n"
    /* 19 */ "on(\"order.*\", {\"erp\"})\n"
    /* 20 */ "\n"
    /* 21 */ "{\"type\":\"tracking.delivered\",\"data\":{}}\n"
    /* 22 */ "\n"
    /* 23 */ "unrouted\n"
    /* 24 */ "\n"
    /* 25 */ "# passing: rule_error with a substring\n"
    /* 26 */ "on(\"*\", function(ev) error(\"kaboom\") end)\n"
    /* 27 */ "\n"
    /* 28 */ "{\"type\":\"x.y\",\"data\":{}}\n"
    /* 29 */ "\n"
    /* 30 */ "rule_error: kaboom\n"
    /* 31 */ "\n"
    /* 32 */ "config:\n"
    /* 33 */ "environment = \"sandbox\"\n"
    /* 34 */ "endpoint \"erp\" { url = \"http://127.0.0.1:9/erp\", sign = \"none\" }\n"
    /* 35 */ "\n"
    /* 36 */ "# passing: the config above (sandbox: a 5m default window)\n"
    /* 37 */ "on(\"*\", function(ev) batch(\"erp\", {}) end)\n"
    /* 38 */ "\n"
    /* 39 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 40 */ "\n"
    /* 41 */ "[{\"endpoint\":\"erp\",\"window\":300000}]\n"
    /* 42 */ "\n"
    /* 43 */ "# failing: another payload\n"
    /* 44 */ "on(\"*\", function(ev) send(\"erp\", { n = 2 }) end)\n"
    /* 45 */ "\n"
    /* 46 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 47 */ "\n"
    /* 48 */ "[{\"endpoint\":\"erp\",\"payload\":{\"n\":3}}]\n"
    /* 49 */ "\n"
    /* 50 */ "# failing: an error on the rules' second line\n"
    /* 51 */ "on(\"*\", function(ev)\n"
    /* 52 */ "  local x = nil + 1\n"
    /* 53 */ "end)\n"
    /* 54 */ "\n"
    /* 55 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 56 */ "\n"
    /* 57 */ "[{\"endpoint\":\"erp\"}]\n"
    /* 58 */ "\n"
    /* 59 */ "on(\"*\", {\"erp\"})\n"
    /* 60 */ "\n"
    /* 61 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 62 */ "\n"
    /* 63 */ "unrouted\n"
    /* 64 */ "\n"
    /* 65 */ "on(\"*\", {\"erp\"})\n"
    /* 66 */ "\n"
    /* 67 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 68 */ "\n"
    /* 69 */ "rule_error\n"
    /* 70 */ "\n"
    /* 71 */ "on(\"*\", function() error(\"other\") end)\n"
    /* 72 */ "\n"
    /* 73 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 74 */ "\n"
    /* 75 */ "rule_error: kaboom\n"
    /* 76 */ "\n"
    /* 77 */ "on(\"*\", {\"crm\"})\n"
    /* 78 */ "\n"
    /* 79 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 80 */ "\n"
    /* 81 */ "[]\n"
    /* 82 */ "\n"
    /* 83 */ "on(\"*\", {\"erp\"})\n"
    /* 84 */ "\n"
    /* 85 */ "not json\n"
    /* 86 */ "\n"
    /* 87 */ "[]\n"
    /* 88 */ "\n"
    /* 89 */ "on(\"*\", {\"erp\"})\n"
    /* 90 */ "\n"
    /* 91 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 92 */ "\n"
    /* 93 */ "maybe\n"
    /* 94 */ "\n"
    /* 95 */ "on(\"*\", {\"erp\"})\n"
    /* 96 */ "\n"
    /* 97 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 98 */ "\n"
    /* 99 */ "[]\n"
    /* 100 */ "\n"
    /* 101 */ "on(\"*\", function(ev) send(\"erp\", {}, { headers = { A = \"1\" } }) end)\n"
    /* 102 */ "\n"
    /* 103 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 104 */ "\n"
    /* 105 */ "[{\"endpoint\":\"crm\"}]\n"
    /* 106 */ "\n"
    /* 107 */ "on(\"*\", function(ev) send(\"erp\", {}, { headers = { A = \"1\" } }) end)\n"
    /* 108 */ "\n"
    /* 109 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 110 */ "\n"
    /* 111 */ "[{\"endpoint\":\"erp\",\"headers\":{\"A\":\"2\"}}]\n"
    /* 112 */ "\n"
    /* 113 */ "on(\"*\", function(ev) batch(\"erp\", {}, \"1m\") end)\n"
    /* 114 */ "\n"
    /* 115 */ "{\"type\":\"a.b\",\"data\":{}}\n"
    /* 116 */ "\n"
    /* 117 */ "[{\"endpoint\":\"erp\",\"window\":null}]\n"
    /* 118 */ "\n"
    /* 119 */ "# a test without its expectation\n"
    /* 120 */ "on(\"*\", {\"erp\"})\n"
    /* 121 */ "\n"
    /* 122 */ "{\"type\":\"a.b\",\"data\":{}}\n";

static void test_run(void) {
    char path[PATH_MAX], want[PATH_MAX * 2 + 200];
    struct capture c;
    char *out, *err;
    int rc;

    snprintf(path, sizeof path, "%s/t.test", tmp_dir);
    CHECK_INT_EQ(fixture_write_path(path, test_file), 0);
    capture_start(&c);
    rc = ruletest_run(path, lua_dir);
    capture_end(&c, &out, &err);
    CHECK_INT_EQ(rc, 1);
    CHECK_STR_EQ(last_line(out), "5 passed, 13 failed");
    CHECK_INT_EQ(count_lines_starting(out, "FAIL "), 13);
#define FAILED(line, text)                                                                         \
    do {                                                                                           \
        snprintf(want, sizeof want, "FAIL %s:%d: %s\n", path, (line), (text));                     \
        if (!strstr(out, want))                                                                    \
            fprintf(stderr, "missing: %s", want);                                                  \
        CHECK(strstr(out, want) != NULL);                                                          \
    } while (0)
    FAILED(44, "payload to erp:\n    want {\"n\":3}\n    got  {\"n\":2}");
    {
        /* the rule's line 2 is line 52 of the .test file */
        char located[PATH_MAX + 100];
        snprintf(located, sizeof located,
                 "rule_error: %s:52: attempt to perform arithmetic on a nil value", path);
        FAILED(51, located);
    }
    FAILED(59, "want unrouted, got 1 deliveries (first to erp)");
    FAILED(65, "want rule_error, got 1 deliveries");
    snprintf(want, sizeof want, "FAIL %s:71: rule_error without \"kaboom\": %s:71: other\n", path,
             path);
    CHECK(strstr(out, want) != NULL);
    snprintf(want, sizeof want,
             "FAIL %s:77: rules do not load: %s:77: on: unknown endpoint 'crm'\n", path, path);
    CHECK(strstr(out, want) != NULL);
    FAILED(83, "line 85: the event must be a JSON object with a type");
    FAILED(89, "line 93: expected deliveries must be a JSON array, unrouted or rule_error");
    FAILED(95, "want 0 deliveries, got 1");
    FAILED(101, "endpoint: want crm, got erp");
    FAILED(107, "headers of erp: got {\"A\":\"1\"}");
    FAILED(113, "window of erp: want none, got 60000 ms");
    FAILED(120, "a test needs rules, an event and the expected deliveries");
#undef FAILED
    /* nothing of the temporary folders is left in the messages */
    CHECK(strstr(out, "waybill-ruletest-") == NULL);
    free(out);
    free(err);

    /* all passing: 0 */
    snprintf(path, sizeof path, "%s/ok.test", tmp_dir);
    CHECK_INT_EQ(fixture_write_path(path, "# only comments and a test\n\n"
                                          "on(\"*\", function(ev) send(\"alerts\", ev.data) end)\n"
                                          "\n\n\n"
                                          "{\"type\":\"a.b\",\"data\":{\"x\":[1,2]}}\n"
                                          "\n"
                                          "[{\"endpoint\":\"alerts\",\"payload\":{\"x\":[1,2]}}]\n"
                                          "\n"
                                          "# an event without data: {} (asan: nothing leaks)\n"
                                          "on(\"*\", function(ev) send(\"alerts\", ev.data) end)\n"
                                          "\n"
                                          "{\"type\":\"a.b\"}\n"
                                          "\n"
                                          "[{\"endpoint\":\"alerts\",\"payload\":{}}]\n"),
                 0);
    capture_start(&c);
    rc = ruletest_run(path, lua_dir);
    capture_end(&c, &out, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(out, "2 passed, 0 failed\n");
    free(out);
    free(err);

    /* an empty file: nothing to run */
    snprintf(path, sizeof path, "%s/empty.test", tmp_dir);
    CHECK_INT_EQ(fixture_write_path(path, "# nothing\n\n"), 0);
    capture_start(&c);
    rc = ruletest_run(path, lua_dir);
    capture_end(&c, &out, &err);
    CHECK_INT_EQ(rc, 0);
    CHECK_STR_EQ(out, "0 passed, 0 failed\n");
    free(out);
    free(err);

    /* a file that cannot be read: 2, and still a summary line */
    snprintf(path, sizeof path, "%s/missing.test", tmp_dir);
    capture_start(&c);
    rc = ruletest_run(path, lua_dir);
    capture_end(&c, &out, &err);
    CHECK_INT_EQ(rc, 2);
    CHECK_STR_EQ(out, "0 passed, 1 failed\n");
    snprintf(want, sizeof want, "waybill test-rules: cannot read %s: No such file or directory\n",
             path);
    CHECK_STR_EQ(err, want);
    free(out);
    free(err);
}

/* ---- bench-rules ---- */

/* Runs ruletest_bench on the arguments (a NULL-terminated list). */
static int bench(char **out, char **err, ...) {
    char *argv[16];
    struct capture c;
    va_list ap;
    int argc = 0, rc;

    va_start(ap, err);
    while (argc < 15 && (argv[argc] = va_arg(ap, char *)) != NULL)
        argc++;
    va_end(ap);
    argv[argc] = NULL;
    capture_start(&c);
    rc = ruletest_bench(argc, argv, lua_dir);
    capture_end(&c, out, err);
    return rc;
}

static void test_bench(void) {
    char cfg[PATH_MAX], ev1[PATH_MAX], ev2[PATH_MAX], rules[PATH_MAX], missing[PATH_MAX];
    char *out, *err;
    json_t *j;

    snprintf(rules, sizeof rules, "%s/rules", tmp_dir);
    mkdir(rules, 0700);
    snprintf(rules, sizeof rules, "%s/rules/a.lua", tmp_dir);
    snprintf(cfg, sizeof cfg, "%s/bench.lua", tmp_dir);
    snprintf(ev1, sizeof ev1, "%s/ev1.json", tmp_dir);
    snprintf(ev2, sizeof ev2, "%s/ev2.json", tmp_dir);
    snprintf(missing, sizeof missing, "%s/missing.json", tmp_dir);
    CHECK_INT_EQ(
        fixture_write_path(cfg, "source 'shop' { verify = 'none', insecure = true }\n"
                                "endpoint 'erp' { url = 'http://127.0.0.1:9/', sign = 'none' }\n"
                                "endpoint 'crm' { url = 'http://127.0.0.1:9/', sign = 'none' }\n"
                                "rules 'rules/'\n"),
        0);
    /* order.updated is in the taxonomy: the generic adapter keeps it */
    CHECK_INT_EQ(fixture_write_path(rules, "on('order.updated', { 'erp', 'crm' })\n"), 0);
    CHECK_INT_EQ(fixture_write_path(ev1, "{\"type\":\"order.updated\",\"id\":\"1\",\"data\":{}}"),
                 0);
    CHECK_INT_EQ(fixture_write_path(ev2, "{\"type\":\"order.cancelled\",\"id\":\"2\",\"data\":{}}"),
                 0);

    /* usage errors: 2 */
    CHECK_INT_EQ(bench(&out, &err, "bench-rules", "-c", cfg, NULL), 2);
    CHECK(strstr(err, "usage: waybill bench-rules") != NULL);
    CHECK_STR_EQ(out, "");
    free(out);
    free(err);
    CHECK_INT_EQ(bench(&out, &err, "bench-rules", "-c", cfg, "--source", "shop", NULL), 2);
    free(out);
    free(err);
    CHECK_INT_EQ(
        bench(&out, &err, "bench-rules", "-c", cfg, "--source", "shop", "-n", "0", ev1, NULL), 2);
    free(out);
    free(err);
    CHECK_INT_EQ(bench(&out, &err, "bench-rules", "--bogus", "--source", "shop", NULL), 2);
    free(out);
    free(err);

    /* errors: 1, said on stderr */
    CHECK_INT_EQ(bench(&out, &err, "bench-rules", "-c", cfg, "--source", "nope", ev1, NULL), 1);
    CHECK_STR_EQ(err, "waybill bench-rules: unknown source\n");
    free(out);
    free(err);
    CHECK_INT_EQ(bench(&out, &err, "bench-rules", "-c", missing, "--source", "shop", ev1, NULL), 1);
    CHECK(strstr(err, "cannot read") != NULL);
    free(out);
    free(err);
    CHECK_INT_EQ(bench(&out, &err, "bench-rules", "-c", cfg, "--source", "shop", missing, NULL), 1);
    CHECK(strncmp(err, missing, strlen(missing)) == 0 && strstr(err, "No such file"));
    free(out);
    free(err);

    /* one JSON line: 2 events, N rounds, 1 send per event on average */
    CHECK_INT_EQ(
        bench(&out, &err, "bench-rules", "-c", cfg, "--source", "shop", "-n", "5", ev1, ev2, NULL),
        0);
    j = json_loads(out, 0, NULL);
    CHECK(j != NULL && strchr(out, '\n') == out + strlen(out) - 1);
    CHECK_INT_EQ(json_integer_value(json_object_get(j, "events")), 2);
    CHECK_INT_EQ(json_integer_value(json_object_get(j, "rounds")), 5);
    CHECK(json_number_value(json_object_get(j, "sends_per_event")) == 1.0);
    CHECK(json_number_value(json_object_get(j, "us_per_event")) >= 0);
    json_decref(j);
    free(out);
    free(err);
}

int main(void) {
    char cmd[PATH_MAX];

    log_threshold = LOG_ERROR;
    if (!mkdtemp(tmp_dir) || fixture_lua_dir(lua_dir) < 0) {
        fprintf(stderr, "cannot set up %s or find lua/\n", tmp_dir);
        return 2;
    }
    test_run();
    test_bench();
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_dir);
    CHECK_INT_EQ(system(cmd), 0);
    return harness_report();
}
