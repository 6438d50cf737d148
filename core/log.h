/* log.h -- leveled logging to stderr.
 * log_msg() checks the level before evaluating its arguments, so a filtered
 * debug line costs one comparison. Secrets must never be passed to it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_LOG_H
#define CORE_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Current threshold; lines below it are dropped. Default LOG_INFO;
 * WAYBILL_LOG=debug|info|warn|error in the environment overrides it. */
extern int log_threshold;

#define log_msg(level, ...)                                                                        \
    do {                                                                                           \
        if ((level) >= log_threshold)                                                              \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)

/* Writes one line "2026-11-23T16:03:38.123Z LEVEL message\n" to stderr. Can't fail. */
void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads WAYBILL_LOG and routes libevent's own log lines into log_write. */
void log_init(void);

#endif
