/* rules_adapt.c -- carrier adapters: a source's Lua adapter turns a
 * carrier's body (decoded straight into the VM) into a normalized event
 * (type, id, created_at, its shipment and its data as JSON). rules_adapt_keep also keeps
 * the data's decoded form, made while encoding it, for rules_route to use
 * instead of decoding data_json again: a ring of RULES_KEEP_SLOTS per
 * generation (rules_int.h), its bytes capped at rule_memory / 16.
 * Invariants: an adapter runs under the generation's limits inside one
 * pcall, and what it returns is copied out before the stack is cleared; a
 * kept token is never reused (here or in any other generation), so a stale
 * or foreign one just misses.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "jsonx.h"
#include "rules.h"
#include "rules_int.h"
#include "util.h"

/* Tokens for kept data; rules run on the loop thread only. */
static uint64_t keep_next_token;

/* ---- data kept from the adapter for routing ---- */

/* Pushes token's kept value and forgets it (take), or just forgets it;
 * returns 0, or -1 (nothing pushed) when this generation does not hold it.
 * Never allocates (it only clears an existing key). */
int rules_keep_take(struct rules *r, uint64_t token, int push) {
    lua_State *L = r->L;
    size_t slot = (size_t)(token % RULES_KEEP_SLOTS);
    if (!token || r->keep_ref == LUA_NOREF || r->keep_token[slot] != token)
        return -1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->keep_ref);
    if (push) {
        lua_rawgeti(L, -1, (lua_Integer)token);
        lua_insert(L, -2);
    }
    lua_pushnil(L);
    lua_rawseti(L, -2, (lua_Integer)token);
    lua_pop(L, 1);
    r->kept_bytes -= r->keep_bytes[slot];
    r->keep_token[slot] = 0;
    r->keep_bytes[slot] = 0;
    return 0;
}

/* keep_table[token] = value (arguments: value, token); may raise a memory
 * error, so it runs protected. */
static int keep_store(lua_State *L) {
    struct rules *r = rules_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->keep_ref);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, lua_tointeger(L, 2));
    return 0;
}

/* Keeps the value at the top (popped) as token's, dropping the oldest when
 * the ring is full. Returns 0, or -1 (nothing kept) when out of memory. */
static int keep_put(struct rules *r, uint64_t token, size_t bytes) {
    lua_State *L = r->L;
    size_t slot = (size_t)(token % RULES_KEEP_SLOTS);
    rules_keep_take(r, r->keep_token[slot], 0);
    lua_pushcfunction(L, keep_store);
    lua_insert(L, -2);
    lua_pushinteger(L, (lua_Integer)token);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return -1;
    }
    r->keep_token[slot] = token;
    r->keep_bytes[slot] = bytes;
    r->kept_bytes += bytes;
    return 0;
}

/* Whether routing an event of type will build the handler's table: some
 * matching handler is a function (list handlers send data_json's text). */
static int type_needs_table(const struct rules *r, const char *type) {
    if (r->cfg->rule_budget < RULES_LIST_MIN_BUDGET)
        return 1;
    /* an order key is read from the event's table (rules_key.c) */
    for (size_t i = 0; i < r->cfg->nendpoints; i++)
        if (CONFIG_ORDERED_BY_KEY(&r->cfg->endpoints[i]))
            return 1;
    for (size_t i = 0; i < r->nhandlers; i++) {
        const struct rules_handler *h = &r->handlers[i];
        if (!h->names && rules_handler_matches(h, type))
            return 1;
    }
    return 0;
}

void rules_data_drop(struct rules *r, uint64_t token) {
    if (r)
        rules_keep_take(r, token, 0);
}

/* ---- adapters ---- */

struct adapt_ctx {
    struct rules *r;
    int keep; /* keep the data's decoded form for routing (rules_adapt_keep) */
    const char *source;
    const char *where;
    int bad_json; /* the body is not JSON: msg holds the parser's reason */
    const char *raw;
    size_t raw_len;
    const char *headers_json;
    struct rules_event *out;
    char msg[300]; /* a failure found here, already "where: message" */
};

/* A string or number field of the adapter's result as new text (NULL when
 * absent or null). */
static int result_text(lua_State *L, int t, const char *field, char **out) {
    char num[32];
    lua_pushstring(L, field);
    lua_rawget(L, t);
    *out = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        *out = strdup(lua_tostring(L, -1));
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
        if (lua_isinteger(L, -1))
            snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1));
        else if (isfinite(lua_tonumber(L, -1)))
            jsonx_number_format((double)lua_tonumber(L, -1), num);
        else
            snprintf(num, sizeof num, "0");
        *out = strdup(num);
    } else {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    return *out ? 0 : -1;
}

static int adapt_protected(lua_State *L) {
    struct adapt_ctx *c = lua_touserdata(L, 1);
    struct rules *r = c->r;
    struct util_buf data = {0};
    const char *raw = c->raw;
    size_t raw_len = c->raw_len;
    char err[256];
    int res;

    lua_settop(L, 0);
    /* A UTF-8 byte order mark before the body is passed over, as Express's
     * body parser does (the signature covered it, as sent). */
    if (raw_len >= 3 && memcmp(raw, "\xef\xbb\xbf", 3) == 0) {
        raw += 3;
        raw_len -= 3;
    }
    /* Deeper than the event built from it could be sent: refused here
     * rather than accepted and never delivered. */
    if (raw_len >= 2 * JSONX_MAX_BODY_DEPTH && jsonx_nesting(raw, raw_len) > JSONX_MAX_BODY_DEPTH) {
        snprintf(c->msg, sizeof c->msg, "JSON nested deeper than %d levels (waybill's limit)",
                 JSONX_MAX_BODY_DEPTH);
        c->bad_json = 1;
        return 0;
    }
    /* Decoded here, straight into the VM: no jansson tree per request. */
    if (jsonx_decode(L, raw, raw_len, 0, c->msg, sizeof c->msg) < 0) {
        c->bad_json = 1;
        return 0;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->adapters_ref);
    lua_getfield(L, -1, c->source);
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        snprintf(c->msg, sizeof c->msg, "%s: source %s has no adapter", c->where, c->source);
        return 0;
    }
    lua_remove(L, 2); /* body, adapter */
    lua_insert(L, 1); /* adapter, body */
    if (!c->headers_json ||
        jsonx_decode(L, c->headers_json, strlen(c->headers_json), 0, err, sizeof err) < 0)
        lua_newtable(L);
    lua_pushstring(L, c->source);
    lua_pushlstring(L, c->raw, c->raw_len);
    rules_limits_arm(r, r->cfg->rule_budget, "rule stopped");
    lua_call(L, 4, 1);
    res = lua_gettop(L);
    if (r->stop || (r->mem_hit && r->mem_refused))
        return luaL_error(L, "stopped"); /* classified by the caller */
    if (lua_type(L, res) != LUA_TTABLE) {
        snprintf(c->msg, sizeof c->msg, "%s: the adapter returned a %s, not an event table",
                 c->where, luaL_typename(L, res));
        return 0;
    }
    if (result_text(L, res, "type", &c->out->type) < 0 ||
        result_text(L, res, "id", &c->out->source_id) < 0 ||
        result_text(L, res, "created_at", &c->out->created_at) < 0) {
        snprintf(c->msg, sizeof c->msg, "%s: out of memory", c->where);
        return 0;
    }
    if (!c->out->type || !c->out->type[0] || strlen(c->out->type) > 200) {
        snprintf(c->msg, sizeof c->msg, "%s: the adapter returned no event type", c->where);
        return 0;
    }
    lua_pushliteral(L, "shipment");
    if (lua_rawget(L, res) == LUA_TTABLE) {
        if (jsonx_encode(L, -1, &data, r->max_output, err, sizeof err) < 0) {
            snprintf(c->msg, sizeof c->msg, "%s: the adapter's shipment: %s", c->where, err);
            util_buf_free(&data);
            return 0;
        }
        c->out->shipment_json = data.p;
        data = (struct util_buf){0};
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "data");
    if (lua_rawget(L, res) == LUA_TNIL) {
        c->out->data_json = strdup("{}");
    } else if (c->keep && r->kept_bytes < r->mem_limit / 16 && type_needs_table(r, c->out->type) &&
               jsonx_encode_clone(L, -1, &data, r->max_output, err, sizeof err) == 0) {
        /* What routing would decode from data_json, made while writing it
         * (kept by rules_adapt, to which it is returned). Any failure here,
         * even for memory, falls back to the plain encoding below. */
        c->out->data_token = ++keep_next_token;
        c->out->data_json = data.p;
        data.p = NULL;
        return 1;
    } else if (jsonx_encode(L, -1, &data, r->max_output, err, sizeof err) < 0) {
        snprintf(c->msg, sizeof c->msg, "%s: the adapter's data: %s", c->where, err);
        return 0;
    } else {
        c->out->data_json = data.p ? data.p : strdup("null");
        data.p = NULL;
    }
    if (!c->out->data_json)
        snprintf(c->msg, sizeof c->msg, "%s: out of memory", c->where);
    return 0;
}

static int adapt(struct rules *r, const struct config_source *src, const char *body, size_t len,
                 const char *headers_json, int keep, struct rules_event *out, char *err,
                 size_t errlen) {
    struct adapt_ctx *c;
    const struct config_source *own;
    int status;

    memset(out, 0, sizeof *out);
    own = src ? config_source_by_name(r->cfg, src->name) : NULL;
    if (!own) {
        snprintf(err, errlen, "%s: no source %s in this configuration", r->config_path,
                 src ? src->name : "(null)");
        return -1;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->r = r;
    c->keep = keep;
    c->source = own->name;
    c->where = r->adapter_where && r->adapter_where[own - r->cfg->sources]
                   ? r->adapter_where[own - r->cfg->sources]
                   : own->name;
    c->raw = body ? body : "";
    c->raw_len = body ? len : 0;
    c->headers_json = headers_json;
    c->out = out;
    rules_limits_arm(r, r->cfg->rule_budget, "rule stopped");
    lua_pushcfunction(r->L, adapt_protected);
    lua_pushlightuserdata(r->L, c);
    status = lua_pcall(r->L, 1, 1, 0);     /* the data's decoded form when kept, else nil */
    if (status == LUA_OK && c->bad_json) { /* "invalid JSON at line L column C: ..." */
        snprintf(err, errlen, "%s", c->msg);
        free(c);
        out->type = NULL;
        lua_settop(r->L, 0);
        return RULES_EBADJSON;
    }
    if (status != LUA_OK)
        rules_call_error(r, status, c->where, err, errlen);
    else if (c->msg[0])
        snprintf(err, errlen, "%s", c->msg);
    if (status != LUA_OK || c->msg[0]) {
        free(c);
        rules_event_clear(out);
        rules_recover(r);
        return -1;
    }
    free(c);
    if (out->data_token && keep_put(r, out->data_token, strlen(out->data_json) * 4 + 256) < 0)
        out->data_token = 0; /* no room: routing decodes data_json */
    lua_settop(r->L, 0);
    rules_maybe_gc(r);
    return 0;
}

int rules_adapt(struct rules *r, const struct config_source *src, const char *body, size_t len,
                const char *headers_json, struct rules_event *out, char *err, size_t errlen) {
    return adapt(r, src, body, len, headers_json, 0, out, err, errlen);
}

int rules_adapt_keep(struct rules *r, const struct config_source *src, const char *body, size_t len,
                     const char *headers_json, struct rules_event *out, char *err, size_t errlen) {
    return adapt(r, src, body, len, headers_json, 1, out, err, errlen);
}
