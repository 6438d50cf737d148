/* cli_int.h -- what cli.c (the admin client's commands and options) shares
 * with cli_stream.c (tail and listen, on GET /api/stream). Private to the
 * cli module.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_CLI_INT_H
#define CORE_CLI_INT_H

/* Where the admin API is and how to talk to it. */
struct cli {
    char base[300]; /* "http://127.0.0.1:8081" */
    char auth[600]; /* "Authorization: Bearer ..." */
    int json;
};

/* The admin client's options. */
struct cli_opts {
    const char *config_path, *url, *token, *type, *status, *limit, *pidfile, *source;
    const char *endpoint, *kind, *forward_to, *secret;
    int failed, json;
};

/* waybill tail: follows GET /api/stream with o's filters, one line per
 * message (the message's JSON with --json). Returns the exit code. */
int cli_tail(const struct cli *c, const struct cli_opts *o);

/* waybill listen --forward-to URL: POSTs every event of the stream (o's
 * filters) to URL, signed Standard Webhooks with o->secret or a fresh
 * whsec_ secret it prints. Returns the exit code. */
int cli_listen(const struct cli *c, const struct cli_opts *o);

#endif
