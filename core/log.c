/* log.c -- leveled log lines on stderr, with libevent's messages routed in.
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

static const char *const log_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_write(int level, const char *fmt, ...) {
    char when[32], line[2048];
    va_list ap;

    if (level < LOG_DEBUG || level > LOG_ERROR)
        level = LOG_ERROR;
    util_time_rfc3339(util_now_ms(), when, sizeof when);
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines from one process never interleave. */
    fprintf(stderr, "%s %-5s %s\n", when, log_names[level], line);
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
