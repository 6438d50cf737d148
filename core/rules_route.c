/* rules_route.c -- routing: runs every handler whose pattern matches an
 * event's type (waybill's own events only for patterns naming them) over
 * the event's table, and hands back the plan of deliveries their send()
 * and batch() calls made (rules_api.c). A list handler, on(pattern,
 * {endpoints}), over canonical data is done in C, with the event's JSON
 * built from its fields, unless a function handler ran before it.
 * Invariants: routing runs inside one pcall under the generation's limits;
 * handlers are independent: a failed one (an error, its budget, the memory
 * cap, a failed send even when a pcall in the rule caught it) leaves none
 * of its own sends in the plan, is recorded, and the next one runs.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "jsonx.h"
#include "rules.h"
#include "rules_int.h"
#include "util.h"

/* ---- the event table ---- */

/* util_time_rfc3339(ms) with the date and time of day kept per second:
 * events arrive many per second, and formatting them is not free. out
 * needs 32 bytes. */
static void received_at_text(struct rules *r, int64_t ms, char *out) {
    int64_t secs = ms / 1000;
    int millis = (int)(ms % 1000);

    if (millis < 0) {
        millis += 1000;
        secs -= 1;
    }
    if (!r->when_base[0] || secs != r->when_secs) {
        char full[40];
        util_time_rfc3339(secs * 1000, full, sizeof full); /* "...:SSZ" */
        snprintf(r->when_base, sizeof r->when_base, "%.*s", (int)strcspn(full, "Z"), full);
        r->when_secs = secs;
    }
    if (millis)
        snprintf(out, 32, "%s.%03dZ", r->when_base, millis);
    else
        snprintf(out, 32, "%sZ", r->when_base);
}

struct route_ctx {
    struct rules *r;
    const struct rules_input *in;
    int failed;     /* the route as a whole failed (the event's table) */
    size_t nfailed; /* handlers that failed; err holds why, "; "-joined */
    char *err;
    size_t errlen;
    struct util_buf whole; /* the event as a list handler sends it, once built */
    int whole_state;       /* 0 not tried, 1 built, -1 not buildable here */
    char *key_error;       /* a key function's failure (rules_keys), new */
};

static void set_text(lua_State *L, int t, const char *field, const char *value) {
    if (!value)
        return;
    lua_pushstring(L, value);
    lua_setfield(L, t, field);
}

/* The __index of an event table: raw and headers read like fields.
 * headers is decoded from its text on first use (most handlers never read
 * it) and kept, so every read gives the same table. Upvalues: raw (a
 * string, or nil), the headers' JSON text (or nil), their table once made. */
static int event_index(lua_State *L) {
    size_t klen, hlen;
    const char *k, *h;
    char err[256];

    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    k = lua_tolstring(L, 2, &klen);
    if (klen == 3 && memcmp(k, "raw", 3) == 0) {
        lua_pushvalue(L, lua_upvalueindex(1));
        return 1;
    }
    if (klen != 7 || memcmp(k, "headers", 7) != 0)
        return 0;
    if (lua_type(L, lua_upvalueindex(3)) != LUA_TTABLE) {
        h = lua_tolstring(L, lua_upvalueindex(2), &hlen);
        if (!h || jsonx_decode(L, h, hlen, 0, err, sizeof err) < 0)
            lua_newtable(L);
        lua_replace(L, lua_upvalueindex(3));
    }
    lua_pushvalue(L, lua_upvalueindex(3));
    return 1;
}

/* Pushes the event table handlers get. raw and headers sit behind a
 * protected metatable's __index, so they read like fields but the JSON
 * encoder (raw access) never sends them with the event. */
static int push_event(lua_State *L, struct route_ctx *c) {
    const struct rules_input *in = c->in;
    char when[40], err[256];
    int ev;

    lua_createtable(L, 0, 9);
    ev = lua_gettop(L);
    set_text(L, ev, "id", in->id);
    set_text(L, ev, "type", in->type);
    set_text(L, ev, "source", in->source);
    set_text(L, ev, "source_id", in->source_id);
    set_text(L, ev, "created_at", in->created_at);
    received_at_text(c->r, in->received_at_ms, when);
    set_text(L, ev, "received_at", when);
    if (in->data_token && rules_keep_take(c->r, in->data_token, 1) == 0) {
        /* the adapter's data as decoding data_json makes it, kept */
    } else if (jsonx_decode(L, in->data_json ? in->data_json : "{}",
                            in->data_json ? strlen(in->data_json) : 2, JSON_DECODE_ANY, err,
                            sizeof err) < 0) {
        snprintf(c->err, c->errlen, "event %s: data: %s", in->id ? in->id : "?", err);
        return -1;
    }
    lua_setfield(L, ev, "data");
    if (in->shipment_json) {
        if (jsonx_decode(L, in->shipment_json, strlen(in->shipment_json), 0, err, sizeof err) < 0) {
            snprintf(c->err, c->errlen, "event %s: shipment: %s", in->id ? in->id : "?", err);
            return -1;
        }
        lua_setfield(L, ev, "shipment");
    }

    lua_createtable(L, 0, 2); /* metatable */
    if (in->raw)
        lua_pushlstring(L, in->raw, in->raw_len);
    else
        lua_pushnil(L);
    if (in->headers_json)
        lua_pushstring(L, in->headers_json);
    else
        lua_pushnil(L);
    lua_pushnil(L);
    lua_pushcclosure(L, event_index, 3);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, ev);
    return 0;
}

/* ---- list handlers in C ---- */

/* How deep data_json's arrays and objects nest (strings skipped). */
static int json_nesting(const char *s, size_t len) {
    int depth = 0, max = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[') {
            if (++depth > max)
                max = depth;
        } else if (ch == '}' || ch == ']') {
            depth--;
        }
    }
    return max;
}

/* Appends ,"key":value (value a JSON string) unless value is NULL. */
static int whole_field(struct util_buf *b, const char *key, const char *value) {
    size_t klen, vlen, i;
    if (!value)
        return 0;
    klen = strlen(key);
    vlen = strlen(value);
    for (i = 0; i < vlen; i++) { /* plain ASCII needs no escaping: copied at once */
        unsigned char ch = (unsigned char)value[i];
        if (ch < 0x20 || ch >= 0x80 || ch == '"' || ch == '\\')
            break;
    }
    if (i == vlen && b->len + klen + vlen + 4 < b->cap) {
        char *o = b->p + b->len;
        if (b->len > 1)
            *o++ = ',';
        memcpy(o, key, klen);
        o += klen;
        *o++ = '"';
        memcpy(o, value, vlen);
        o += vlen;
        *o++ = '"';
        *o = '\0';
        b->len = (size_t)(o - b->p);
        return 0;
    }
    if (b->len > 1 && util_buf_append(b, ",", 1) < 0)
        return -1;
    if (util_buf_append(b, key, klen) < 0 || jsonx_append_string(b, value, vlen) < 0)
        return -1;
    return 0;
}

/* The bytes jsonx_encode writes for the event table push_event builds,
 * made from the input's own fields and data_json's text (which, being
 * canonical, is what encoding its decoded table gives back). Keys in the
 * encoder's order. Returns 0, or -1 where only encoding the table would
 * say what happens (a string that is not UTF-8, output past the cap,
 * nesting at the encoder's limit, no memory). */
static int whole_build(struct rules *r, const struct rules_input *in, struct util_buf *b) {
    char when[40];
    const char *data = in->data_json ? in->data_json : "{}";
    size_t dlen = strlen(data);

    /* data sits one level down in the event: deep data fails to encode */
    if (dlen >= 2 * (JSONX_MAX_DEPTH - 1) && json_nesting(data, dlen) >= JSONX_MAX_DEPTH - 1)
        return -1;
    received_at_text(r, in->received_at_ms, when);
    if (!b->p) { /* one allocation: the fields are short beside data */
        size_t cap = dlen + 256;
        const char *f[] = {in->created_at, in->id,   in->source,
                           in->source_id,  in->type, in->shipment_json};
        for (size_t i = 0; i < sizeof f / sizeof *f; i++)
            cap += f[i] ? strlen(f[i]) : 0;
        if (!(b->p = malloc(cap)))
            return -1;
        b->cap = cap;
        b->len = 0;
        b->p[0] = '\0';
    }
    if (util_buf_append(b, "{", 1) < 0 || whole_field(b, "\"created_at\":", in->created_at) < 0 ||
        (b->len > 1 && util_buf_append(b, ",", 1) < 0) || util_buf_appends(b, "\"data\":") < 0 ||
        util_buf_append(b, data, dlen) < 0 || whole_field(b, "\"id\":", in->id) < 0 ||
        whole_field(b, "\"received_at\":", when) < 0 ||
        (in->shipment_json && (util_buf_appends(b, ",\"shipment\":") < 0 ||
                               util_buf_appends(b, in->shipment_json) < 0)) ||
        whole_field(b, "\"source\":", in->source) < 0 ||
        whole_field(b, "\"source_id\":", in->source_id) < 0 ||
        whole_field(b, "\"type\":", in->type) < 0 || util_buf_append(b, "}", 1) < 0)
        return -1;
    if (r->max_output && b->len > r->max_output)
        return -1;
    return 0;
}

/* Does what list handler h's function does, send(names, ev) with the
 * event unchanged, without calling it. Returns 0 when done, or -1 with
 * nothing changed: then the function is called as usual. */
static int route_list_fast(struct route_ctx *c, const struct rules_handler *h) {
    struct rules *r = c->r;
    size_t nplan = r->nplan, plan_bytes = r->plan_bytes;

    if (c->whole_state == 0)
        c->whole_state = whole_build(r, c->in, &c->whole) == 0 ? 1 : -1;
    if (c->whole_state < 0)
        return -1;
    for (size_t i = 0; i < h->nnames; i++) {
        const struct config_endpoint *ep = config_endpoint_by_name(r->cfg, h->names[i]);
        if (!ep ||
            rapi_plan_add(r, ep->name, c->whole.p, c->whole.len, "application/json", NULL, 0) < 0) {
            while (r->nplan > nplan) /* back as it was: the call reports it */
                rapi_send_clear(&r->plan[--r->nplan]);
            r->plan_bytes = plan_bytes;
            return -1;
        }
    }
    return 0;
}

/* ---- routing ---- */

/* Records that h matched: the sends it makes name it (rapi_plan_add).
 * Returns 0, or -1 when out of memory. */
static int match_add(struct rules *r, const struct rules_handler *h) {
    if (r->nmatched == r->capmatched) {
        size_t cap = r->capmatched ? r->capmatched * 2 : 4;
        struct rules_match *m = realloc(r->matched, cap * sizeof *m);
        if (!m)
            return -1;
        r->matched = m;
        r->capmatched = cap;
    }
    r->matched[r->nmatched++] = (struct rules_match){.where = h->where, .pattern = h->pattern};
    return 0;
}

/* Handler h failed (status: its pcall's): its own sends (those past nplan)
 * leave the plan, why is added to c->err, and routing goes on with the next
 * handler. */
static void route_handler_failed(struct route_ctx *c, const struct rules_handler *h, int status,
                                 size_t nplan, size_t plan_bytes) {
    struct rules *r = c->r;
    char why[512];
    size_t used = strlen(c->err);

    rules_call_error(r, status, h->where, why, sizeof why);
    while (r->nplan > nplan)
        rapi_send_clear(&r->plan[--r->nplan]);
    r->plan_bytes = plan_bytes;
    free(r->send_error);
    r->send_error = NULL;
    if (r->nmatched)
        r->matched[r->nmatched - 1].failed = 1;
    if (c->nfailed++ == 0)
        snprintf(c->err, c->errlen, "%s", why);
    else if (used + 2 < c->errlen)
        snprintf(c->err + used, c->errlen - used, "; %s", why);
}

/* The order keys of the plan's sends to endpoints ordered by key, from a
 * fresh event table (a handler may have changed the one it got). */
static int route_keys(lua_State *L, struct route_ctx *c) {
    struct rules *r = c->r;
    size_t i;

    for (i = 0; i < r->nplan; i++) {
        const struct config_endpoint *ep = config_endpoint_by_name(r->cfg, r->plan[i].endpoint);
        if (ep && CONFIG_ORDERED_BY_KEY(ep))
            break;
    }
    if (i == r->nplan)
        return 0;
    /* the last handler may have stopped on its limits: not ours */
    rules_limits_arm(r, r->cfg->rule_budget, "ordered key stopped");
    if (push_event(L, c) < 0) { /* c->err says why */
        c->failed = 1;
    } else if (rules_keys(r, L, lua_gettop(L), &c->key_error) < 0) {
        snprintf(c->err, c->errlen, "out of memory");
        c->failed = 1;
    }
    return 0;
}

static int route_protected(lua_State *L) {
    struct route_ctx *c = lua_touserdata(L, 1);
    struct rules *r = c->r;
    int fns, ev, status, pristine;
    size_t nplan, plan_bytes;

    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->handlers_ref);
    fns = lua_gettop(L);
    ev = 0;
    /* Canonical data is valid: its table waits until a function needs it. */
    if (!c->in->data_canonical) {
        if (push_event(L, c) < 0) {
            c->failed = 1;
            return 0;
        }
        ev = lua_gettop(L);
    }
    /* Until a function handler runs, no code has seen this event's table,
     * so it holds exactly what was pushed. */
    pristine = c->in->data_canonical && r->cfg->rule_budget >= RULES_LIST_MIN_BUDGET;
    for (size_t i = 0; i < r->nhandlers; i++) {
        const struct rules_handler *h = &r->handlers[i];
        if (!rules_handler_matches(h, c->in->type))
            continue;
        if (match_add(r, h) < 0) {
            snprintf(c->err, c->errlen, "out of memory");
            c->failed = 1;
            return 0;
        }
        if (h->names && pristine && route_list_fast(c, h) == 0)
            continue;
        if (!h->names)
            pristine = 0;
        if (!ev) {
            if (push_event(L, c) < 0) {
                c->failed = 1;
                return 0;
            }
            ev = lua_gettop(L);
        }
        nplan = r->nplan;
        plan_bytes = r->plan_bytes;
        lua_rawgeti(L, fns, (lua_Integer)i + 1);
        lua_pushvalue(L, ev);
        rules_limits_arm(r, r->cfg->rule_budget, "rule stopped");
        status = lua_pcall(L, 1, 0, 0);
        if (status != LUA_OK || r->stop || (r->mem_hit && r->mem_refused) || r->send_error)
            route_handler_failed(c, h, status, nplan, plan_bytes);
        lua_settop(L, ev);
    }
    return route_keys(L, c);
}

int rules_route(struct rules *r, const struct rules_input *ev, struct rules_plan *out, char *err,
                size_t errlen) {
    struct route_ctx c;
    int status;

    out->sends = NULL;
    out->n = 0;
    out->key_error = NULL;
    out->matched = NULL;
    out->nmatched = 0;
    r->nmatched = 0;
    if (!ev || !ev->type) {
        snprintf(err, errlen, "an event without a type");
        return -1;
    }
    memset(&c, 0, sizeof c);
    c.r = r;
    c.in = ev;
    c.err = err;
    c.errlen = errlen;
    if (errlen)
        err[0] = '\0';
    rapi_plan_reset(r);
    free(r->send_error);
    r->send_error = NULL;
    r->routing = 1;
    rules_limits_arm(r, r->cfg->rule_budget, "rule stopped");
    lua_pushcfunction(r->L, route_protected);
    lua_pushlightuserdata(r->L, &c);
    status = lua_pcall(r->L, 1, 0, 0);
    r->routing = 0;
    out->matched = r->matched;
    out->nmatched = r->nmatched;
    util_buf_free(&c.whole);
    rules_keep_take(r, ev->data_token, 0); /* not needed (no function ran), or failed */
    if (status != LUA_OK) {
        rules_call_error(r, status, ev->type, err, errlen);
        c.failed = 1;
    }
    if (c.failed || (c.nfailed && r->nplan == 0)) { /* nothing to send: rule_error */
        free(c.key_error);
        rapi_plan_reset(r);
        rules_recover(r);
        return -1;
    }
    out->sends = r->plan;
    out->n = r->nplan;
    out->key_error = c.key_error;
    r->plan = NULL;
    r->nplan = r->capplan = r->plan_bytes = 0;
    if (c.nfailed) { /* partial: the others' sends go out */
        rules_recover(r);
        return 1;
    }
    lua_settop(r->L, 0);
    rules_maybe_gc(r);
    return 0;
}
