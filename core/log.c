/* log.c -- leveled log lines on stderr (text, logfmt or JSON lines), with
 * libevent's messages routed in.
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "log.h"
#include "util.h"

int log_threshold = LOG_INFO;
static int log_format_current = LOG_FORMAT_TEXT;

static const char *const log_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
static const char *const log_lower[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"text", "logfmt", "json", NULL};

/* A line being built: at most LOG_LINE_MAX bytes, cut short (with "...")
 * past that. */
#define LOG_LINE_MAX 8192

struct line {
    char b[LOG_LINE_MAX];
    size_t n;
};

static void put(struct line *l, const char *s, size_t n) {
    if (n > sizeof l->b - 1 - l->n)
        n = sizeof l->b - 1 - l->n;
    memcpy(l->b + l->n, s, n);
    l->n += n;
}

static void puts_(struct line *l, const char *s) {
    put(l, s, strlen(s));
}

/* s as a JSON string: control characters escaped, bytes that are not
 * UTF-8 replaced by U+FFFD, so every line parses. */
static void put_json_string(struct line *l, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    char esc[8];

    puts_(l, "\"");
    while (n > 0) {
        size_t k = util_utf8_seq(p, n);
        if (k == 0) {
            puts_(l, "\\ufffd");
            k = 1;
        } else if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(l, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            puts_(l, esc);
        } else {
            put(l, (const char *)p, k);
        }
        p += k;
        n -= k;
    }
    puts_(l, "\"");
}

/* s as a logfmt value: bare when it is one word of printable ASCII, else
 * quoted with \" \\ \n and control bytes escaped. */
static void put_logfmt_value(struct line *l, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    int bare = *p != '\0';
    char esc[8];

    for (const unsigned char *q = p; *q && bare; q++)
        if (*q <= ' ' || *q == '"' || *q == '=' || *q == '\\' || *q >= 0x7f)
            bare = 0;
    if (bare) {
        puts_(l, s);
        return;
    }
    puts_(l, "\"");
    for (; *p; p++) {
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(l, esc, 2);
        } else if (*p == '\n') {
            puts_(l, "\\n");
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", *p);
            puts_(l, esc);
        } else {
            put(l, (const char *)p, 1);
        }
    }
    puts_(l, "\"");
}

static void put_field(struct line *l, const struct log_field *f) {
    char num[32];
    const char *v = f->str;

    if (!f->is_num && !v)
        return;
    if (f->is_num) {
        snprintf(num, sizeof num, "%lld", f->num);
        v = num;
    }
    if (log_format_current == LOG_FORMAT_JSON) {
        puts_(l, ",");
        put_json_string(l, f->key);
        puts_(l, ":");
        if (f->is_num)
            puts_(l, v);
        else
            put_json_string(l, v);
    } else {
        puts_(l, " ");
        puts_(l, f->key);
        puts_(l, "=");
        put_logfmt_value(l, v);
    }
}

/* Time, level and message in the current format, then the fields, then
 * one write of the whole line (lines of one process never interleave). */
static void emit(int level, const char *msg, const struct log_field *f, size_t nf) {
    struct line l = {.n = 0};
    char when[32];

    if (level < LOG_DEBUG || level > LOG_ERROR)
        level = LOG_ERROR;
    util_time_rfc3339(util_now_ms(), when, sizeof when);
    switch (log_format_current) {
    case LOG_FORMAT_JSON:
        puts_(&l, "{\"time\":\"");
        puts_(&l, when);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, log_lower[level]);
        puts_(&l, "\",\"msg\":");
        put_json_string(&l, msg);
        break;
    case LOG_FORMAT_LOGFMT:
        puts_(&l, "time=");
        puts_(&l, when);
        puts_(&l, " level=");
        puts_(&l, log_lower[level]);
        puts_(&l, " msg=");
        put_logfmt_value(&l, msg);
        break;
    default:
        puts_(&l, when);
        puts_(&l, " ");
        puts_(&l, log_names[level]);
        puts_(&l, level == LOG_INFO || level == LOG_WARN ? "  " : " ");
        puts_(&l, msg);
        break;
    }
    for (size_t i = 0; i < nf; i++)
        put_field(&l, &f[i]);
    if (log_format_current == LOG_FORMAT_JSON) {
        /* a line cut short still closes its object */
        if (l.n > sizeof l.b - 4)
            l.n = sizeof l.b - 4;
        puts_(&l, "}");
    }
    l.b[l.n++] = '\n';
    fwrite(l.b, 1, l.n, stderr);
    fflush(stderr);
}

void log_write(int level, const char *fmt, ...) {
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit(level, msg, NULL, 0);
}

void log_write_fields(int level, const char *msg, const struct log_field *f, size_t n) {
    emit(level, msg, f, n);
}

int log_format_parse(const char *name) {
    for (int i = 0; format_names[i]; i++)
        if (strcmp(name, format_names[i]) == 0)
            return i;
    return -1;
}

void log_set_format(int format) {
    if (format >= LOG_FORMAT_TEXT && format <= LOG_FORMAT_JSON)
        log_format_current = format;
}

static void log_from_libevent(int severity, const char *msg) {
    int level = severity == EVENT_LOG_DEBUG  ? LOG_DEBUG
                : severity == EVENT_LOG_MSG  ? LOG_INFO
                : severity == EVENT_LOG_WARN ? LOG_WARN
                                             : LOG_ERROR;
    log_msg(level, "libevent: %s", msg);
}

void log_init(void) {
    const char *want = getenv("WAYBILL_LOG");

    if (want) {
        for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
            if (strcasecmp(want, log_names[i]) == 0)
                log_threshold = i;
    }
    event_set_log_callback(log_from_libevent);
}
