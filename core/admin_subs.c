/* admin_subs.c -- /api/subscriptions (SPEC section 8): the subscriptions
 * made through ShipEngine's routes (admin_shipengine.c) in waybill's own
 * shape, with what ShipEngine's shape has no field for: the signing secret
 * (GET /api/subscriptions/{id}) and its rotation (POST .../rotate).
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "admin_int.h"
#include "http.h"
#include "log.h"
#include "store.h"
#include "subs.h"
#include "util.h"

#define SUBS_PREFIX "/api/subscriptions"

void admin_sub_clear(struct store_sub *sub) {
    free((char *)sub->id);
    free((char *)sub->event);
    free((char *)sub->pattern);
    free((char *)sub->url);
    free((char *)sub->secret);
    memset(sub, 0, sizeof *sub);
}

/* GET /api/subscriptions: oldest first, without secrets, paged; the cursor
 * is how many were listed before the page. */
static void subs_list(struct admin *adm, struct evhttp_request *req) {
    const struct subs *subs = adm->deps.subs;
    struct evkeyvalq q;
    struct store_page page = {0};
    size_t i, n = subs_count(subs), from;
    json_t *data;

    if (admin_query(req, &q) < 0)
        return;
    if (admin_paging(req, &q, &page) < 0)
        goto done;
    from = (uint64_t)page.after < n ? (size_t)page.after : n;
    data = json_array();
    for (i = from; data && i < n && i - from < page.limit; i++) {
        if (json_array_append_new(data, admin_sub_json(subs_at(subs, i), 0)) < 0) {
            json_decref(data);
            data = NULL;
        }
    }
    if (!data)
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
    else
        admin_reply_page(req, data, i < n ? (int64_t)i : 0);
done:
    evhttp_clear_headers(&q);
}

static void subs_apply_rotate(struct admin_commit *c) {
    struct subs *subs = c->adm->deps.subs;
    const struct subs_entry *e;

    if (subs_set_secret(subs, c->sub.id, c->sub.secret) < 0)
        log_msg(LOG_ERROR, "subscription %s: new secret stored but not loaded", c->sub.id);
    if ((e = subs_find(subs, c->sub.id)))
        c->reply = admin_sub_json(e, 1);
}

/* POST /api/subscriptions/{id}/rotate: a new secret, answered once stored;
 * every delivery signed after that uses it (no overlap: the old one stops
 * at the commit). */
static int subs_rotate_check(struct admin_commit *c, int status) {
    if (status == 0)
        http_reply_error(c->req, 404, "Not Found", "no such subscription");
    return status == 0;
}

static void subs_rotate(struct admin *adm, struct evhttp_request *req, const char *id) {
    struct admin_commit *c;
    char secret[64];

    if (!subs_find(adm->deps.subs, id)) {
        http_reply_error(req, 404, "Not Found", "no such subscription");
        return;
    }
    if (admin_secret_new(secret) < 0) {
        http_reply_error(req, 503, "Service Unavailable", "no randomness for a secret");
        return;
    }
    if (!(c = admin_commit_new(adm, req, 200, "OK")))
        return;
    c->apply = subs_apply_rotate;
    c->check = subs_rotate_check;
    c->sub.id = util_strdup(id);
    c->sub.secret = util_strdup(secret);
    if (!c->sub.id || !c->sub.secret) {
        http_reply_error(req, 503, "Service Unavailable", "out of memory");
        admin_commit_free(c);
        return;
    }
    admin_done_queued(c, store_sub_set_secret_done(adm->deps.store, id, secret, admin_on_done, c));
}

int admin_subs_dispatch(struct admin *adm, struct evhttp_request *req, const char *path,
                        int method) {
    const struct subs_entry *e;
    char id[256];

    if (strcmp(path, SUBS_PREFIX) == 0 && method == EVHTTP_REQ_GET) {
        subs_list(adm, req);
    } else if (admin_path_id(path, SUBS_PREFIX "/", "", id, sizeof id) &&
               method == EVHTTP_REQ_GET) {
        if ((e = subs_find(adm->deps.subs, id)))
            http_reply_json(req, 200, "OK", admin_sub_json(e, 1));
        else
            http_reply_error(req, 404, "Not Found", "no such subscription");
    } else if (admin_path_id(path, SUBS_PREFIX "/", "/rotate", id, sizeof id) &&
               method == EVHTTP_REQ_POST) {
        subs_rotate(adm, req, id);
    } else {
        return 0;
    }
    return 1;
}
