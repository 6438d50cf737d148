/* cli.c -- see cli.h. Every command is one admin API request; what it
 * prints is the answer, as a table or as JSON.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "cli.h"
#include "cli_int.h"
#include "config.h"
#include "rules.h"
#include "util.h"
#include "verify.h"

static const char *const cli_commands[] = {"events", "event",   "retry", "replay", "test",
                                           "reload", "trigger", "tail",  "listen", NULL};

int cli_is_command(const char *cmd) {
    for (int i = 0; cmd && cli_commands[i]; i++)
        if (strcmp(cmd, cli_commands[i]) == 0)
            return 1;
    return 0;
}

static void cli_usage(void) {
    fprintf(stderr,
            "usage: waybill events [--failed] [--type T] [--status S] [--limit N] [--json]\n"
            "       waybill event ID [--json]\n"
            "       waybill retry DELIVERY_ID [--json]\n"
            "       waybill replay EVENT_ID [--json]\n"
            "       waybill test ENDPOINT TYPE [--json]\n"
            "       waybill trigger [--source NAME] TYPE   POST a signed sample event\n"
            "       waybill reload [--pidfile FILE]    reload config and rules (admin API, or\n"
            "                                          SIGHUP to the pid in FILE)\n"
            "       waybill tail [--source S] [--type T] [--endpoint E] [--status S] [--kind K]\n"
            "                    [--json]              follow events and attempts live\n"
            "       waybill listen --forward-to URL [--secret whsec_...] [--source S] [--type T]\n"
            "                                          POST each live event to URL, signed\n"
            "  common: -c waybill.lua (admin address and token), or --url URL --token T\n");
}

static size_t cli_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
    return util_buf_append(userdata, ptr, size * nmemb) == 0 ? size * nmemb : 0;
}

/* One request; *out is the parsed JSON answer (new) on 2xx. Returns 0, or 1
 * with the reason printed. */
static int cli_request(const struct cli *c, const char *method, const char *path, const char *body,
                       json_t **out) {
    CURL *easy = curl_easy_init();
    struct curl_slist *h = NULL;
    struct util_buf resp = {NULL, 0, 0};
    char url[1200];
    long code = 0;
    CURLcode rc;
    json_t *j = NULL;
    int ret = 1;

    *out = NULL;
    if (!easy)
        goto done;
    snprintf(url, sizeof url, "%s%s", c->base, path);
    h = curl_slist_append(h, c->auth);
    if (body)
        h = curl_slist_append(h, "Content-Type: application/json");
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, "");
    }
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, cli_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &resp);
    rc = curl_easy_perform(easy);
    if (rc != CURLE_OK) {
        fprintf(stderr, "waybill: %s: %s\n", c->base, curl_easy_strerror(rc));
        goto done;
    }
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    j = resp.len ? json_loadb(resp.p, resp.len, 0, NULL) : json_object();
    if (code < 200 || code > 299) {
        const char *e = json_string_value(json_object_get(j, "error"));
        fprintf(stderr, "waybill: HTTP %ld: %s\n", code, e ? e : "unexpected answer");
        goto done;
    }
    if (!j) {
        fprintf(stderr, "waybill: the admin API answered something that is not JSON\n");
        goto done;
    }
    *out = j;
    j = NULL;
    ret = 0;
done:
    json_decref(j);
    util_buf_free(&resp);
    curl_slist_free_all(h);
    if (easy)
        curl_easy_cleanup(easy);
    return ret;
}

/* ---- tables ---- */

#define CLI_COLS 8

struct cli_table {
    int ncols;
    char **cells; /* rows * ncols, owned */
    size_t nrows, cap;
};

static void cli_row(struct cli_table *t, const char *const *cols) {
    if (t->nrows == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 16;
        char **p = realloc(t->cells, ncap * (size_t)t->ncols * sizeof *p);
        if (!p)
            return;
        t->cells = p;
        t->cap = ncap;
    }
    for (int i = 0; i < t->ncols; i++) {
        char *v = util_strdup(cols[i] ? cols[i] : "-");
        /* one line per row: cut at a newline, and at 60 characters */
        if (v) {
            v[strcspn(v, "\r\n")] = '\0';
            if (strlen(v) > 60)
                strcpy(v + 57, "...");
        }
        t->cells[t->nrows * (size_t)t->ncols + (size_t)i] = v;
    }
    t->nrows++;
}

static void cli_table_print(struct cli_table *t) {
    size_t w[CLI_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (int i = 0; i < t->ncols; i++) {
            const char *v = t->cells[r * (size_t)t->ncols + (size_t)i];
            if (v && strlen(v) > w[i])
                w[i] = strlen(v);
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (int i = 0; i < t->ncols; i++) {
            const char *v = t->cells[r * (size_t)t->ncols + (size_t)i];
            if (i == t->ncols - 1)
                printf("%s\n", v ? v : "");
            else
                printf("%-*s  ", (int)w[i], v ? v : "");
        }
    }
    for (size_t k = 0; k < t->nrows * (size_t)t->ncols; k++)
        free(t->cells[k]);
    free(t->cells);
}

static const char *cli_str(json_t *o, const char *key, char *buf, size_t len) {
    json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    return NULL;
}

static void cli_print_json(json_t *j) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    if (s)
        printf("%s\n", s);
    free(s);
}

/* ---- commands ---- */

static int cli_events(struct cli *c, int failed, const char *type, const char *status,
                      const char *limit) {
    struct util_buf path = {NULL, 0, 0};
    json_t *j = NULL, *o;
    size_t i;
    int rc;

    if (failed)
        util_buf_printf(&path, "/api/deliveries?status=failed");
    else
        util_buf_printf(&path, "/api/events?x=1");
    if (type && !failed) {
        char *e = curl_easy_escape(NULL, type, 0);
        util_buf_printf(&path, "&type=%s", e ? e : "");
        curl_free(e);
    }
    if (status && !failed)
        util_buf_printf(&path, "&status=%s", status);
    if (limit)
        util_buf_printf(&path, "&limit=%s", limit);
    util_buf_append(&path, "", 1);
    rc = path.p ? cli_request(c, "GET", path.p, NULL, &j) : 1;
    util_buf_free(&path);
    if (rc)
        return rc;
    if (c->json) {
        cli_print_json(j);
    } else if (failed) {
        struct cli_table t = {8, NULL, 0, 0};
        const char *hdr[] = {"DELIVERY", "EVENT",  "ENDPOINT",    "TYPE",
                             "ATTEMPTS", "STATUS", "LAST_STATUS", "LAST_ERROR"};
        cli_row(&t, hdr);
        json_array_foreach(json_object_get(j, "data"), i, o) {
            char b1[32], b2[32];
            const char *row[] = {cli_str(o, "id", NULL, 0),
                                 cli_str(o, "event_id", NULL, 0),
                                 cli_str(o, "endpoint", NULL, 0),
                                 cli_str(o, "event_type", NULL, 0),
                                 cli_str(o, "attempts", b1, sizeof b1),
                                 cli_str(o, "status", NULL, 0),
                                 cli_str(o, "last_status_code", b2, sizeof b2),
                                 cli_str(o, "last_error", NULL, 0)};
            cli_row(&t, row);
        }
        cli_table_print(&t);
    } else {
        struct cli_table t = {5, NULL, 0, 0};
        const char *hdr[] = {"EVENT", "TYPE", "SOURCE", "STATUS", "RECEIVED"};
        cli_row(&t, hdr);
        json_array_foreach(json_object_get(j, "data"), i, o) {
            const char *row[] = {cli_str(o, "id", NULL, 0), cli_str(o, "type", NULL, 0),
                                 cli_str(o, "source", NULL, 0), cli_str(o, "status", NULL, 0),
                                 cli_str(o, "received_at", NULL, 0)};
            cli_row(&t, row);
        }
        cli_table_print(&t);
    }
    json_decref(j);
    return 0;
}

/* An attempt's HTTP status as the table shows it: "-" when none came. */
static const char *cli_http(json_t *a, char *buf, size_t len) {
    json_t *v = json_object_get(a, "status_code");
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return "-";
    snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    return buf;
}

/* When the pending delivery id of endpoint is tried next, from the
 * deliveries list (newest first; the event's detail has no next_at).
 * Returns the time (borrowed from *list) or NULL. */
static const char *cli_next_try(const struct cli *c, const char *endpoint, const char *id,
                                json_t **list) {
    char path[400], *e = curl_easy_escape(NULL, endpoint, 0);
    size_t i;
    json_t *o;

    snprintf(path, sizeof path, "/api/deliveries?status=pending&limit=500&endpoint=%s", e ? e : "");
    curl_free(e);
    json_decref(*list);
    if (cli_request(c, "GET", path, NULL, list))
        return NULL;
    json_array_foreach(json_object_get(*list, "data"), i, o) {
        const char *oid = cli_str(o, "id", NULL, 0);
        if (oid && strcmp(oid, id) == 0)
            return cli_str(o, "next_at", NULL, 0);
    }
    return NULL;
}

/* "next try  dlv_… (erp) at T" for each pending delivery of ev. */
static void cli_event_next(const struct cli *c, json_t *ev) {
    json_t *d, *list = NULL;
    size_t i;

    json_array_foreach(json_object_get(ev, "deliveries"), i, d) {
        const char *st = cli_str(d, "status", NULL, 0), *id = cli_str(d, "id", NULL, 0),
                   *ep = cli_str(d, "endpoint", NULL, 0), *at;
        if (!st || strcmp(st, "pending") != 0 || !id || !ep)
            continue;
        at = cli_next_try(c, ep, id, &list);
        if (at)
            printf("next try  %s (%s) at %s\n", id, ep, at);
    }
    json_decref(list);
}

static void cli_event_print(json_t *ev) {
    json_t *d, *a;
    size_t i, k;
    struct cli_table t = {7, NULL, 0, 0};
    const char *hdr[] = {"DELIVERY", "ENDPOINT", "STATUS", "ATTEMPT", "AT", "HTTP", "ERROR"};
    char b1[32], b2[32];

    printf("event     %s\ntype      %s\nsource    %s (%s)\nstatus    %s\nreceived  %s\n",
           cli_str(ev, "id", NULL, 0), cli_str(ev, "type", NULL, 0), cli_str(ev, "source", NULL, 0),
           cli_str(ev, "source_id", NULL, 0), cli_str(ev, "status", NULL, 0),
           cli_str(ev, "received_at", NULL, 0));
    if (json_is_string(json_object_get(ev, "error")))
        printf("error     %s\n", json_string_value(json_object_get(ev, "error")));
    printf("\n");
    cli_row(&t, hdr);
    json_array_foreach(json_object_get(ev, "deliveries"), i, d) {
        json_t *atts = json_object_get(d, "attempts");
        if (json_array_size(atts) == 0) {
            const char *row[] = {cli_str(d, "id", NULL, 0),
                                 cli_str(d, "endpoint", NULL, 0),
                                 cli_str(d, "status", NULL, 0),
                                 NULL,
                                 NULL,
                                 NULL,
                                 NULL};
            cli_row(&t, row);
        }
        json_array_foreach(atts, k, a) {
            const char *row[] = {k ? "" : cli_str(d, "id", NULL, 0),
                                 k ? "" : cli_str(d, "endpoint", NULL, 0),
                                 k ? "" : cli_str(d, "status", NULL, 0),
                                 cli_str(a, "n", b1, sizeof b1),
                                 cli_str(a, "at", NULL, 0),
                                 cli_http(a, b2, sizeof b2),
                                 cli_str(a, "error", NULL, 0)};
            cli_row(&t, row);
        }
    }
    cli_table_print(&t);
}

/* waybill replay ID: routes the event again and shows what the rules did;
 * exit 1 when a handler failed (status partial or rule_error), saying what
 * the event's status was before. */
static int cli_replay(struct cli *c, const char *id) {
    char path[512], was[32] = "";
    const char *now, *e;
    json_t *j = NULL;
    int rc;

    snprintf(path, sizeof path, "/api/events/%s", id);
    if (cli_request(c, "GET", path, NULL, &j) == 0 && cli_str(j, "status", NULL, 0))
        snprintf(was, sizeof was, "%s", cli_str(j, "status", NULL, 0));
    json_decref(j);
    snprintf(path, sizeof path, "/api/events/%s/replay", id);
    if ((rc = cli_request(c, "POST", path, NULL, &j)))
        return rc;
    if (c->json)
        cli_print_json(j);
    else
        cli_event_print(j);
    now = cli_str(j, "status", NULL, 0);
    e = cli_str(j, "error", NULL, 0);
    rc = now && (strcmp(now, "partial") == 0 || strcmp(now, "rule_error") == 0);
    if (rc)
        fprintf(stderr, "waybill replay: a handler failed (%s); the event is now %s%s%s\n",
                e ? e : "?", now, was[0] ? ", was " : "", was);
    json_decref(j);
    return rc;
}

/* Path segment of an id: refuses what would change the path. */
static int cli_id_ok(const char *id) {
    return id && *id && strlen(id) < 200 && !strpbrk(id, "/?#% \t\r\n");
}

static int cli_run(struct cli *c, const char *cmd, char **args, int nargs, int failed,
                   const char *type, const char *status, const char *limit) {
    char path[512];
    json_t *j = NULL;
    int rc;

    if (strcmp(cmd, "events") == 0) {
        if (nargs != 0)
            goto usage;
        return cli_events(c, failed, type, status, limit);
    }
    if (strcmp(cmd, "test") == 0) {
        json_t *body;
        char *text;
        if (nargs != 2 || !cli_id_ok(args[0]))
            goto usage;
        snprintf(path, sizeof path, "/api/endpoints/%s/test", args[0]);
        body = json_pack("{ss}", "type", args[1]);
        text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        rc = text ? cli_request(c, "POST", path, text, &j) : 1;
        free(text);
        if (rc)
            return rc;
        if (c->json)
            cli_print_json(j);
        else
            printf("test event %s (%s) sent to %s as delivery %s\n", cli_str(j, "id", NULL, 0),
                   args[1], args[0],
                   cli_str(json_array_get(json_object_get(j, "deliveries"), 0), "id", NULL, 0));
        json_decref(j);
        return 0;
    }
    if (strcmp(cmd, "reload") == 0) {
        if (nargs != 0)
            goto usage;
        if (cli_request(c, "POST", "/api/reload", NULL, &j)) {
            fprintf(stderr, "waybill: reload refused; the current rules stay\n");
            return 1;
        }
        if (c->json)
            cli_print_json(j);
        else
            printf("reloaded (rules loaded at %s)\n", cli_str(j, "rules_loaded_at", NULL, 0));
        json_decref(j);
        return 0;
    }
    if (nargs != 1 || !cli_id_ok(args[0]))
        goto usage;
    if (strcmp(cmd, "event") == 0) {
        snprintf(path, sizeof path, "/api/events/%s", args[0]);
        if ((rc = cli_request(c, "GET", path, NULL, &j)))
            return rc;
        if (c->json) {
            cli_print_json(j);
        } else {
            cli_event_print(j);
            cli_event_next(c, j);
        }
    } else if (strcmp(cmd, "retry") == 0) {
        snprintf(path, sizeof path, "/api/deliveries/%s/retry", args[0]);
        if ((rc = cli_request(c, "POST", path, NULL, &j)))
            return rc;
        if (c->json)
            cli_print_json(j);
        else
            printf("delivery %s queued again\n", args[0]);
    } else {
        return cli_replay(c, args[0]);
    }
    json_decref(j);
    return 0;
usage:
    cli_usage();
    return 2;
}

/* waybill reload --pidfile FILE: SIGHUP to the process FILE names.
 * Returns the exit code. */
static int cli_reload_signal(const char *pidfile) {
    FILE *f = fopen(pidfile, "r");
    long pid = 0;
    int ok = f && fscanf(f, "%ld", &pid) == 1 && pid > 1;

    if (f)
        fclose(f);
    if (!ok) {
        fprintf(stderr, "waybill: %s: %s\n", pidfile, f ? "holds no process id" : strerror(errno));
        return 1;
    }
    if (kill((pid_t)pid, SIGHUP) < 0) {
        fprintf(stderr, "waybill: pid %ld (from %s): %s\n", pid, pidfile, strerror(errno));
        return 1;
    }
    printf("sent SIGHUP to waybill (pid %ld)\n", pid);
    return 0;
}

/* The base URL for listen ("http://host:port"): a wildcard host becomes
 * loopback. */
static void cli_base_into(char *out, size_t n, const char *listen) {
    const char *colon = strrchr(listen, ':');
    if (colon && (strncmp(listen, "0.0.0.0:", 8) == 0 || colon == listen))
        snprintf(out, n, "http://127.0.0.1%s", colon);
    else if (strncmp(listen, "[::]:", 5) == 0)
        snprintf(out, n, "http://[::1]%s", listen + 4);
    else
        snprintf(out, n, "http://%s", listen);
}

/* ---- trigger: a signed sample event to the webhook listener ---- */

static void cli_add_header(void *ctx, const char *name, const char *value) {
    struct curl_slist **h = ctx;
    char line[1024];
    snprintf(line, sizeof line, "%s: %s", name, value);
    *h = curl_slist_append(*h, line);
}

/* The signature headers src's verification wants for body, onto *h.
 * Returns 0, or -1 after printing why (a scheme trigger cannot sign). */
static int cli_trigger_sign(const struct config_source *src, const char *body,
                            struct curl_slist **h) {
    unsigned char mac[32];
    char sig[128], id[UTIL_ID_MAX + 128];
    const struct verify_spec *v = &src->verify;

    if (v->kind == VERIFY_NONE)
        return 0;
    if (v->kind == VERIFY_STANDARD) {
        util_id_new("msg_", id, sizeof id);
        return verify_sign(SIGN_STANDARD, src->secrets, src->nsecrets, id, util_now_ms() / 1000,
                           body, strlen(body), cli_add_header, h);
    }
    if (v->kind != VERIFY_HMAC || src->nsecrets == 0) {
        fprintf(stderr,
                "waybill trigger: source %s verifies %s, which trigger does not sign; "
                "use waybill sign and curl\n",
                src->name, src->verify_name);
        return -1;
    }
    verify_hmac_sha256(src->secrets[0].key, src->secrets[0].len, body, strlen(body), mac);
    if (v->encoding == VERIFY_HEX)
        util_hex_encode(mac, sizeof mac, sig);
    else
        util_base64_encode(mac, sizeof mac, sig);
    snprintf(id, sizeof id, "%s", v->prefix);
    if (strlen(id) + strlen(sig) < sizeof id)
        strcat(id, sig);
    cli_add_header(h, v->header, id);
    return 0;
}

/* A sample event of type in the atoship shape every HMAC preset's adapter
 * reads: a fresh id, the time now. New string. */
static char *cli_trigger_body(const char *type) {
    char id[UTIL_ID_MAX], now[64];
    json_t *ev;
    char *text;

    util_id_new("evt_", id, sizeof id);
    util_time_rfc3339(util_now_ms(), now, sizeof now);
    ev = json_pack("{ss ss ss s{ss ss ss ss ss ss ss ss}}", "id", id, "type", type, "created_at",
                   now, "data", "shipment_id", "shp_sample", "tracking_number",
                   "9400111899223456789012", "carrier", "USPS", "service", "Priority Mail",
                   "order_id", "order_xyz789", "order_reference", "ORD-12345", "delivered_at", now,
                   "signed_by", "RESIDENT");
    text = ev ? json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(ev);
    return text;
}

/* waybill trigger [-c FILE] [--source NAME] TYPE: POSTs a signed sample
 * event of TYPE to the gateway's webhook listener as source NAME (default
 * atoship, else the first source) would; prints the answer. */
static int cli_trigger(const char *config_path, const char *lua_dir, const char *source,
                       const char *type) {
    char err[512], note[512], base[300], url[700], *body = NULL;
    struct rules *r =
        rules_load_offline(config_path, lua_dir, 1, note, sizeof note, err, sizeof err);
    const struct config *cfg = r ? rules_config(r) : NULL;
    const struct config_source *src = NULL;
    struct curl_slist *h = NULL;
    struct util_buf resp = {NULL, 0, 0};
    CURL *easy = NULL;
    long code = 0;
    int rc = 1;

    if (!r) {
        fprintf(stderr, "waybill: %s\n", err);
        return 1;
    }
    src = config_source_by_name(cfg, source ? source : "atoship");
    if (!src && !source && cfg->nsources > 0)
        src = &cfg->sources[0];
    if (!src) {
        fprintf(stderr, "waybill trigger: no source '%s' in %s\n", source ? source : "atoship",
                config_path);
        goto done;
    }
    if (note[0] && src->verify.kind != VERIFY_NONE)
        fprintf(stderr, "waybill trigger: %s: the signature will not match\n", note);
    body = cli_trigger_body(type);
    if (!body || cli_trigger_sign(src, body, &h) < 0)
        goto done;
    h = curl_slist_append(h, "Content-Type: application/json");
    cli_base_into(base, sizeof base, cfg->listen);
    snprintf(url, sizeof url, "%s%s%s", cfg->tls_cert ? "https" : "http", base + 4, src->path);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(easy = curl_easy_init()))
        goto done;
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, cli_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &resp);
    if (curl_easy_perform(easy) != CURLE_OK) {
        fprintf(stderr, "waybill trigger: %s: cannot connect (is the gateway running?)\n", url);
        goto done;
    }
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    printf("%s %s -> %ld %.*s\n", type, src->name, code, (int)resp.len, resp.p ? resp.p : "");
    rc = code >= 200 && code <= 299 ? 0 : 1;
done:
    if (easy) {
        curl_easy_cleanup(easy);
        curl_global_cleanup();
    }
    util_buf_free(&resp);
    curl_slist_free_all(h);
    free(body);
    rules_free(r);
    return rc;
}

/* Reads argv's options into o. Returns 0, or 2 after printing the usage. */
static int cli_parse(int argc, char **argv, struct cli_opts *o) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"failed", no_argument, NULL, 'f'},
                                         {"url", required_argument, NULL, 'u'},
                                         {"token", required_argument, NULL, 't'},
                                         {"type", required_argument, NULL, 'T'},
                                         {"status", required_argument, NULL, 's'},
                                         {"limit", required_argument, NULL, 'l'},
                                         {"pidfile", required_argument, NULL, 'p'},
                                         {"source", required_argument, NULL, 'S'},
                                         {"endpoint", required_argument, NULL, 'E'},
                                         {"kind", required_argument, NULL, 'k'},
                                         {"forward-to", required_argument, NULL, 'F'},
                                         {"secret", required_argument, NULL, 'x'},
                                         {NULL, 0, NULL, 0}};
    int opt;

    memset(o, 0, sizeof *o);
    o->config_path = "waybill.lua";
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        if (opt == 'c')
            o->config_path = optarg;
        else if (opt == 'j')
            o->json = 1;
        else if (opt == 'f')
            o->failed = 1;
        else if (opt == 'u')
            o->url = optarg;
        else if (opt == 't')
            o->token = optarg;
        else if (opt == 'T')
            o->type = optarg;
        else if (opt == 's')
            o->status = optarg;
        else if (opt == 'l')
            o->limit = optarg;
        else if (opt == 'p')
            o->pidfile = optarg;
        else if (opt == 'S')
            o->source = optarg;
        else if (opt == 'E')
            o->endpoint = optarg;
        else if (opt == 'k')
            o->kind = optarg;
        else if (opt == 'F')
            o->forward_to = optarg;
        else if (opt == 'x')
            o->secret = optarg;
        else {
            cli_usage();
            return 2;
        }
    }
    return 0;
}

int cli_main(int argc, char **argv, const char *lua_dir) {
    struct cli c;
    struct cli_opts o;
    const char *config_path, *url, *token, *cmd = argv[0];
    int rc;
    char err[512], note[512];

    if (cli_parse(argc, argv, &o) != 0)
        return 2;
    memset(&c, 0, sizeof c);
    c.json = o.json;
    config_path = o.config_path;
    url = o.url;
    token = o.token;
    if (strcmp(cmd, "trigger") == 0) {
        if (optind != argc - 1) {
            cli_usage();
            return 2;
        }
        return cli_trigger(config_path, lua_dir, o.source, argv[optind]);
    }
    if (o.pidfile) {
        if (strcmp(cmd, "reload") != 0 || optind != argc) {
            cli_usage();
            return 2;
        }
        return cli_reload_signal(o.pidfile);
    }
    if (!url || !token) {
        struct rules *r =
            rules_load_offline(config_path, lua_dir, 1, note, sizeof note, err, sizeof err);
        const struct config *cfg = r ? rules_config(r) : NULL;
        const char *unset;
        if (!r) {
            fprintf(stderr, "waybill: %s\n", err);
            return 1;
        }
        if (!cfg->admin_listen || !cfg->admin_token) {
            fprintf(stderr, "waybill: %s has no admin listener (admin = {...})\n", config_path);
            rules_free(r);
            return 1;
        }
        /* placeholders serve for every secret but the one this uses */
        if (!token && (unset = rules_placeholder_env(r, cfg->admin_token))) {
            fprintf(stderr,
                    "waybill: the admin token is env %s, which is not set (or pass "
                    "--token)\n",
                    unset);
            rules_free(r);
            return 1;
        }
        if (!url)
            cli_base_into(c.base, sizeof c.base, cfg->admin_listen);
        snprintf(c.auth, sizeof c.auth, "Authorization: Bearer %s",
                 token ? token : cfg->admin_token);
        rules_free(r);
    } else {
        snprintf(c.auth, sizeof c.auth, "Authorization: Bearer %s", token);
    }
    if (url)
        snprintf(c.base, sizeof c.base, "%s", url);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "waybill: libcurl failed to initialize\n");
        return 1;
    }
    if (strcmp(cmd, "tail") == 0 || strcmp(cmd, "listen") == 0) {
        if (optind != argc || (cmd[0] == 'l' && !o.forward_to)) {
            cli_usage();
            rc = 2;
        } else {
            rc = cmd[0] == 't' ? cli_tail(&c, &o) : cli_listen(&c, &o);
        }
    } else {
        rc = cli_run(&c, cmd, argv + optind, argc - optind, o.failed, o.type, o.status, o.limit);
    }
    curl_global_cleanup();
    return rc;
}
