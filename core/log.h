/* log.h -- leveled log lines on stderr: text, logfmt or JSON lines.
 * log_msg() checks the level before evaluating its arguments, so a filtered
 * debug line costs one comparison. Secrets must never be passed to it.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* How a line is written (config log_format): "text" (the default) is
 * "TIME LEVEL message key=value ...", "logfmt" is "time=... level=...
 * msg=... key=value ...", "json" one JSON object per line with the keys
 * time, level, msg and the fields. */
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_LOGFMT = 1, LOG_FORMAT_JSON = 2 };

/* Current threshold; lines below it are dropped. Default LOG_INFO;
 * WAYBILL_LOG=debug|info|warn|error in the environment overrides it. */
extern int log_threshold;

/* One named value of a structured line: a string (NULL is left out) or,
 * when is_num, an integer (a JSON number). */
struct log_field {
    const char *key;
    const char *str;
    long long num;
    int is_num;
};

#define LOG_S(k, v) ((struct log_field){(k), (v), 0, 0})
#define LOG_N(k, v) ((struct log_field){(k), NULL, (long long)(v), 1})

#define log_msg(level, ...)                                                                        \
    do {                                                                                           \
        if ((level) >= log_threshold)                                                              \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)

/* log_kv(LOG_INFO, "attempt", LOG_S("delivery", id), LOG_N("status", 200)):
 * one line with a fixed message and its fields (keys are plain words). */
#define log_kv(level, msg, ...)                                                                    \
    do {                                                                                           \
        if ((level) >= log_threshold) {                                                            \
            const struct log_field log_f_[] = {__VA_ARGS__};                                       \
            log_write_fields((level), (msg), log_f_, sizeof log_f_ / sizeof log_f_[0]);            \
        }                                                                                          \
    } while (0)

/* Writes one line with message fmt (the "msg" of logfmt and JSON) to
 * stderr. Can't fail. */
void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes one line of msg and fields f[0..n) to stderr. Can't fail. */
void log_write_fields(int level, const char *msg, const struct log_field *f, size_t n);

/* The format for name ("text", "logfmt", "json"), or -1 when unknown. */
int log_format_parse(const char *name);

/* Sets the format of the lines written from now on. */
void log_set_format(int format);

/* Reads WAYBILL_LOG and routes libevent's own log lines into log_write. */
void log_init(void);

#endif
