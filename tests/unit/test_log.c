/* test_log.c -- log.c: the line format, the level threshold (and that a
 * filtered call evaluates no argument), WAYBILL_LOG, long messages, and
 * libevent's own messages routed in. stderr is captured in a temporary
 * file for each check.
 * SPDX-License-Identifier: MIT */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "harness.h"
#include "log.h"

static FILE *capture_file;
static int saved_stderr = -1;

/* From now on, stderr goes to a fresh temporary file. */
static void capture_start(void) {
    fflush(stderr);
    capture_file = tmpfile();
    saved_stderr = dup(2);
    if (!capture_file || saved_stderr < 0 || dup2(fileno(capture_file), 2) < 0) {
        perror("capture");
        exit(2);
    }
}

/* stderr back as it was; what was written meanwhile (new; free). */
static char *capture_end(void) {
    long n;
    char *text;

    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    n = ftell(capture_file);
    text = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    rewind(capture_file);
    if (text && n > 0 && fread(text, 1, (size_t)n, capture_file) != (size_t)n)
        text[0] = '\0';
    fclose(capture_file);
    return text;
}

static int line_count(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* 1 when text is exactly one line matching the extended regex re. */
static int one_line_matching(const char *text, const char *re) {
    regex_t rx;
    int ok;
    if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB) != 0)
        return 0;
    ok = line_count(text) == 1 && regexec(&rx, text, 0, NULL, 0) == 0;
    regfree(&rx);
    return ok;
}

/* RFC 3339 UTC with milliseconds (util_time_rfc3339 leaves them out when
 * they are 0), then the level padded to 5, then the message. */
#define TS "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{3})?Z "

static void test_format(void) {
    char *out;

    log_threshold = LOG_DEBUG;
    capture_start();
    log_write(LOG_INFO, "hello %s %d", "world", 42);
    out = capture_end();
    CHECK(one_line_matching(out, TS "INFO  hello world 42\n$"));
    free(out);

    capture_start();
    log_write(LOG_DEBUG, "d");
    log_write(LOG_WARN, "w");
    log_write(LOG_ERROR, "e");
    out = capture_end();
    CHECK_INT_EQ(line_count(out), 3);
    CHECK(strstr(out, "Z DEBUG d\n") != NULL);
    CHECK(strstr(out, "Z WARN  w\n") != NULL);
    CHECK(strstr(out, "Z ERROR e\n") != NULL);
    free(out);

    /* a level out of range is written as an error, not read out of bounds */
    capture_start();
    log_write(-1, "low");
    log_write(99, "high");
    out = capture_end();
    CHECK(strstr(out, "Z ERROR low\n") != NULL);
    CHECK(strstr(out, "Z ERROR high\n") != NULL);
    free(out);
}

static int evaluated;

static const char *counted(const char *s) {
    evaluated++;
    return s;
}

static void test_threshold(void) {
    char *out;

    log_threshold = LOG_WARN;
    evaluated = 0;
    capture_start();
    log_msg(LOG_DEBUG, "%s", counted("debug"));
    log_msg(LOG_INFO, "%s", counted("info"));
    log_msg(LOG_WARN, "%s", counted("warn"));
    log_msg(LOG_ERROR, "%s", counted("error"));
    out = capture_end();
    CHECK_INT_EQ(evaluated, 2); /* the filtered calls evaluated nothing */
    CHECK_INT_EQ(line_count(out), 2);
    CHECK(strstr(out, "debug") == NULL && strstr(out, "info") == NULL);
    CHECK(strstr(out, " WARN  warn\n") != NULL && strstr(out, " ERROR error\n") != NULL);
    free(out);

    log_threshold = LOG_ERROR + 1; /* above every level: silence */
    capture_start();
    log_msg(LOG_ERROR, "%s", counted("nothing"));
    out = capture_end();
    CHECK_INT_EQ(evaluated, 2);
    CHECK_STR_EQ(out, "");
    free(out);

    /* log_write itself does not filter: log_msg does */
    capture_start();
    log_write(LOG_DEBUG, "direct");
    out = capture_end();
    CHECK(strstr(out, " DEBUG direct\n") != NULL);
    free(out);
    log_threshold = LOG_INFO;
}

static void test_long_message(void) {
    size_t n = 100000;
    char *big = malloc(n + 1), *out;
    const char *msg;

    if (!big)
        return;
    memset(big, 'x', n);
    big[n] = '\0';
    log_threshold = LOG_INFO;
    capture_start();
    log_write(LOG_INFO, "%s", big);
    log_write(LOG_INFO, "after");
    out = capture_end();
    /* cut, still one whole line, and the next line intact */
    CHECK_INT_EQ(line_count(out), 2);
    msg = strstr(out, "INFO  x");
    CHECK(msg != NULL);
    if (msg) {
        size_t xs = strspn(msg + 6, "x");
        CHECK(xs > 1000 && xs < n);
        CHECK(msg[6 + xs] == '\n');
    }
    CHECK(strstr(out, " INFO  after\n") != NULL);
    free(out);
    free(big);

    /* percent signs passed as data are written as they are */
    capture_start();
    log_write(LOG_WARN, "%s", "100% sure %d %n");
    out = capture_end();
    CHECK(one_line_matching(out, TS "WARN  100% sure %d %n\n$"));
    free(out);
}

static void test_init(void) {
    setenv("WAYBILL_LOG", "warn", 1);
    log_threshold = LOG_INFO;
    log_init();
    CHECK_INT_EQ(log_threshold, LOG_WARN);
    setenv("WAYBILL_LOG", "DEBUG", 1); /* case does not matter */
    log_init();
    CHECK_INT_EQ(log_threshold, LOG_DEBUG);
    setenv("WAYBILL_LOG", "error", 1);
    log_init();
    CHECK_INT_EQ(log_threshold, LOG_ERROR);
    setenv("WAYBILL_LOG", "verbose", 1); /* unknown: left as it was */
    log_init();
    CHECK_INT_EQ(log_threshold, LOG_ERROR);
    unsetenv("WAYBILL_LOG");
    log_threshold = LOG_INFO;
    log_init();
    CHECK_INT_EQ(log_threshold, LOG_INFO);
}

/* libevent's messages come through log_write, at libevent's severity
 * mapped to ours (EVENT_SHOW_METHOD makes a new base say which backend it
 * uses, at "msg" severity: our INFO). */
static void test_libevent_routed(void) {
    struct event_base *base;
    char *out;

    log_init();
    setenv("EVENT_SHOW_METHOD", "1", 1);
    log_threshold = LOG_INFO;
    capture_start();
    base = event_base_new();
    out = capture_end();
    CHECK(base != NULL);
    CHECK(one_line_matching(out, TS "INFO  libevent: libevent using: [a-z0-9]+\n$"));
    free(out);
    event_base_free(base);

    /* filtered like any other line */
    log_threshold = LOG_WARN;
    capture_start();
    base = event_base_new();
    out = capture_end();
    CHECK_STR_EQ(out, "");
    free(out);
    event_base_free(base);
    unsetenv("EVENT_SHOW_METHOD");
    event_set_log_callback(NULL);
    log_threshold = LOG_INFO;
}

int main(void) {
    unsetenv("WAYBILL_LOG");
    test_format();
    test_threshold();
    test_long_message();
    test_init();
    test_libevent_routed();
    return harness_report();
}
