/* reqlog.c -- one log line per answered HTTP request (see reqlog.h). The
 * query string is never logged: a carrier or an operator may put a token
 * there; so are no headers (credentials).
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include <event2/http.h>

#include "http.h"
#include "log.h"
#include "reqlog.h"

void reqlog_line(int level, const char *listener, const char *method, const char *path, int status,
                 const char *peer, const char *source, const char *event_id, int duplicate) {
    log_kv(level, "request", LOG_S("listener", listener), LOG_S("method", method),
           LOG_S("path", path ? path : "?"), LOG_N("status", status), LOG_S("peer", peer),
           LOG_S("source", source), LOG_S("event", event_id),
           LOG_S("duplicate", duplicate ? "true" : NULL));
}

void reqlog_write_at(int level, struct evhttp_request *req, const char *listener, int status,
                     const char *source, const char *event_id, int duplicate) {
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    char *peer_host = NULL;
    ev_uint16_t peer_port = 0;
    char peer[128] = "";

    if (conn) {
        evhttp_connection_get_peer(conn, &peer_host, &peer_port);
        if (peer_host)
            snprintf(peer, sizeof peer, "%s:%u", peer_host, (unsigned)peer_port);
    }
    log_kv(level, "request", LOG_S("listener", listener),
           LOG_S("method", http_method_name(evhttp_request_get_command(req))),
           LOG_S("path", path ? path : "?"), LOG_N("status", status),
           LOG_S("peer", peer[0] ? peer : NULL), LOG_S("source", source), LOG_S("event", event_id),
           LOG_S("duplicate", duplicate ? "true" : NULL));
}

void reqlog_write(struct evhttp_request *req, const char *listener, int status, const char *source,
                  const char *event_id, int duplicate) {
    reqlog_write_at(LOG_INFO, req, listener, status, source, event_id, duplicate);
}

static void on_complete(struct evhttp_request *req, void *arg) {
    const struct reqlog_site *site = arg;
    int status = evhttp_request_get_response_code(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    int quiet = site->quiet_path && status == 200 && path && strcmp(path, site->quiet_path) == 0;

    if (site->own_status && status == site->own_status)
        return;
    reqlog_write_at(quiet ? LOG_DEBUG : LOG_INFO, req, site->listener, status, NULL, NULL, 0);
}

void reqlog_watch(struct evhttp_request *req, const struct reqlog_site *site) {
    if (log_threshold <= LOG_INFO)
        evhttp_request_set_on_complete_cb(req, on_complete, (void *)site);
}
