/* reqlog.h -- one log line per HTTP request a listener answered (the
 * listener, method, path without its query, status, peer, and the ids the
 * answer carried).
 * SPDX-License-Identifier: MIT */
#ifndef CORE_REQLOG_H
#define CORE_REQLOG_H

struct evhttp_request;

/* Which listener a request came to, a status whose line its handler
 * writes itself (with reqlog_write, to add ids; 0 = none), and a path whose
 * successful requests (a health probe's) are logged at debug level only
 * (NULL = none). Static. */
struct reqlog_site {
    const char *listener;
    int own_status;
    const char *quiet_path;
};

/* Logs req's line once its answer has been sent (every status but
 * site->own_status). site is borrowed for req's life. */
void reqlog_watch(struct evhttp_request *req, const struct reqlog_site *site);

/* Logs req's line now, with status and the source and event it stored
 * (either NULL to leave it out; duplicate when the event was one). */
void reqlog_write(struct evhttp_request *req, const char *listener, int status, const char *source,
                  const char *event_id, int duplicate);

/* The line itself, for a listener not on evhttp (the webhook listener's
 * httpd): method, path without its query, peer (NULL when unknown). */
void reqlog_line(int level, const char *listener, const char *method, const char *path, int status,
                 const char *peer, const char *source, const char *event_id, int duplicate);

/* reqlog_write at level (LOG_INFO, or LOG_DEBUG for probes). */
void reqlog_write_at(int level, struct evhttp_request *req, const char *listener, int status,
                     const char *source, const char *event_id, int duplicate);

#endif
