/* rules_api.c -- the C half of the rule DSL: the functions a rule (through
 * the prelude, lua/waybill.lua) may call: send() and batch() into the plan
 * of the event being routed, subscribers(), where(), env(), readfile(),
 * log(), the coroutine call and the stop check. Each runs inside the
 * generation's limits (rules_int.h) and raises a Lua error on bad input.
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "jsonx.h"
#include "log.h"
#include "rules.h"
#include "util.h"

#include "rules_int.h"

/* ---- the plan ---- */

void rapi_send_clear(struct rules_send *s) {
    free(s->endpoint);
    free(s->payload);
    free(s->content_type);
    free(s->headers_json);
    free(s->key);
    memset(s, 0, sizeof *s);
}

void rapi_plan_reset(struct rules *r) {
    for (size_t i = 0; i < r->nplan; i++)
        rapi_send_clear(&r->plan[i]);
    free(r->plan);
    r->plan = NULL;
    r->nplan = r->capplan = r->plan_bytes = 0;
}

/* Returns 0, -1 when out of memory, -2 past the plan's byte limit. */
int rapi_plan_add(struct rules *r, const char *endpoint, const char *body, size_t len,
                  const char *ctype, const char *headers_json, int64_t window_ms) {
    size_t cost = sizeof(struct rules_send) + len + strlen(endpoint) + strlen(ctype) +
                  (headers_json ? strlen(headers_json) : 0) + 4;
    struct rules_send *s;

    if (r->plan_bytes + cost > r->mem_limit)
        return -2;
    if (r->nplan == r->capplan) {
        size_t cap = r->capplan ? r->capplan * 2 : 4;
        struct rules_send *p = realloc(r->plan, cap * sizeof *p);
        if (!p)
            return -1;
        r->plan = p;
        r->capplan = cap;
    }
    s = &r->plan[r->nplan];
    memset(s, 0, sizeof *s);
    s->endpoint = strdup(endpoint);
    s->payload = malloc(len + 1);
    s->content_type = strdup(ctype);
    s->headers_json = headers_json ? strdup(headers_json) : NULL;
    if (!s->endpoint || !s->payload || !s->content_type || (headers_json && !s->headers_json)) {
        rapi_send_clear(s);
        return -1;
    }
    memcpy(s->payload, body, len);
    s->payload[len] = '\0';
    s->payload_len = len;
    s->window_ms = window_ms;
    s->match = r->nmatched ? r->nmatched - 1 : 0; /* the handler running now */
    r->nplan++;
    r->plan_bytes += cost;
    return 0;
}

void rules_plan_clear(struct rules_plan *plan) {
    if (!plan)
        return;
    for (size_t i = 0; plan->sends && i < plan->n; i++)
        rapi_send_clear(&plan->sends[i]);
    free(plan->sends);
    free(plan->key_error);
    plan->sends = NULL;
    plan->key_error = NULL;
    plan->n = 0;
    plan->matched = NULL;
    plan->nmatched = 0;
}

void rules_event_clear(struct rules_event *ev) {
    if (!ev)
        return;
    free(ev->source_id);
    free(ev->type);
    free(ev->created_at);
    free(ev->data_json);
    free(ev->shipment_json);
    memset(ev, 0, sizeof *ev);
}

/* ---- send and batch (the C half of the rule DSL) ---- */

/* Raises "file:line: send: msg", remembering the first one of the event so
 * a pcall around send can't turn a failed route into a partial one. */
static int emit_fail(lua_State *L, struct rules *r, const char *what, const char *msg) {
    char loc[RULES_WHERE_MAX], full[600];
    rules_user_where(L, r, loc, sizeof loc);
    snprintf(full, sizeof full, "%s%s%s: %s", loc, loc[0] ? ": " : "", what, msg);
    if (r->routing && !r->send_error)
        r->send_error = strdup(full);
    lua_pushstring(L, full);
    return lua_error(L);
}

/* Checks send's options table at idx into headers (JSON) and *ctype. */
static int emit_options(lua_State *L, struct rules *r, int idx, struct util_buf *headers,
                        const char **ctype, char *msg, size_t msglen) {
    char err[200];
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        if (strcmp(k, "content_type") == 0) {
            size_t len;
            if (lua_type(L, -1) != LUA_TSTRING || !lua_tolstring(L, -1, &len)[0] ||
                !util_header_value_ok(lua_tostring(L, -1), len)) {
                snprintf(msg, msglen, "content_type must be a one-line string");
                lua_pop(L, 2);
                return -1;
            }
            *ctype = lua_tostring(L, -1); /* the options table keeps it alive */
        } else if (strcmp(k, "headers") == 0) {
            int h = lua_gettop(L);
            if (lua_type(L, h) != LUA_TTABLE) {
                snprintf(msg, msglen, "headers must be a table of name = value");
                lua_pop(L, 2);
                return -1;
            }
            lua_pushnil(L);
            while (lua_next(L, h)) {
                size_t vlen;
                const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
                if (!name || !util_header_name_ok(name)) {
                    snprintf(msg, msglen, "headers: bad header name");
                } else if (lua_type(L, -1) != LUA_TSTRING) {
                    snprintf(msg, msglen, "headers: %s must be a string", name);
                } else if (lua_tolstring(L, -1, &vlen),
                           !util_header_value_ok(lua_tostring(L, -1), vlen)) {
                    snprintf(msg, msglen, "headers: %s holds a line break or NUL", name);
                } else if (strcasecmp(name, "content-type") == 0) {
                    snprintf(msg, msglen, "headers: set Content-Type with content_type = ...");
                } else if (util_header_reserved(name)) {
                    snprintf(msg, msglen, "headers: %s is set by waybill", name);
                } else {
                    lua_pop(L, 1);
                    continue;
                }
                lua_pop(L, 4);
                return -1;
            }
            if (jsonx_encode(L, h, headers, r->max_output, err, sizeof err) < 0) {
                snprintf(msg, msglen, "headers: %s", err);
                lua_pop(L, 2);
                return -1;
            }
        } else {
            snprintf(msg, msglen, "unknown option '%s' (headers, content_type)", k);
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* What one send() or batch() call asks for, filled in as its arguments are
 * checked. */
struct emit_call {
    int is_batch;
    size_t n;         /* endpoint names in argument 1 */
    const char *body; /* the payload's bytes: payload.p or argument 2's */
    size_t body_len;
    const char *ctype;       /* a literal, or borrowed from the options table */
    struct util_buf payload; /* a table payload, encoded (owned) */
    struct util_buf headers; /* send's headers option as JSON (owned) */
    int has_window;          /* batch's window given (window_ms) */
    int64_t window_ms;
    char msg[300]; /* why the call fails */
};

/* Argument 1: an endpoint name or a list of names, each one the config
 * knows. Sets ec->n. */
static int emit_targets(lua_State *L, struct rules *r, struct emit_call *ec) {
    if (lua_type(L, 1) == LUA_TSTRING) {
        ec->n = 1;
    } else if (lua_type(L, 1) == LUA_TTABLE) {
        ec->n = lua_rawlen(L, 1);
    } else {
        snprintf(ec->msg, sizeof ec->msg,
                 "the first argument must be an endpoint name or a list of names");
        return -1;
    }
    for (size_t i = 1; i <= ec->n; i++) {
        const char *name;
        if (lua_type(L, 1) == LUA_TTABLE)
            lua_rawgeti(L, 1, (lua_Integer)i);
        else
            lua_pushvalue(L, 1);
        name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        if (!name) {
            snprintf(ec->msg, sizeof ec->msg, "endpoint #%zu is a %s, not a name", i,
                     luaL_typename(L, -1));
            return -1;
        }
        if (!config_endpoint_by_name(r->cfg, name)) {
            snprintf(ec->msg, sizeof ec->msg, "unknown endpoint '%s'", name);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Argument 2: a table (encoded as JSON) or a string (sent as is; for a
 * batch it must be JSON text, as it goes inside the batch's array). */
static int emit_payload(lua_State *L, struct rules *r, struct emit_call *ec) {
    char err[200];

    switch (lua_type(L, 2)) {
    case LUA_TTABLE:
        if (ec->n == 0) /* send(subscribers(ev.type), ev) with none: nothing to encode */
            return 0;
        if (jsonx_encode(L, 2, &ec->payload, r->max_output, err, sizeof err) < 0) {
            snprintf(ec->msg, sizeof ec->msg, "payload: %s", err);
            return -1;
        }
        ec->body = ec->payload.p;
        ec->body_len = ec->payload.len;
        return 0;
    case LUA_TSTRING:
        ec->body = lua_tolstring(L, 2, &ec->body_len);
        if (ec->is_batch && ec->n > 0) { /* it goes inside the batch's "events" array */
            json_t *j = jsonx_parse(ec->body, ec->body_len, JSON_DECODE_ANY, err, sizeof err);
            if (!j) {
                snprintf(ec->msg, sizeof ec->msg, "a string payload must be JSON text (%s)", err);
                return -1;
            }
            json_decref(j);
        }
        return 0;
    default:
        snprintf(ec->msg, sizeof ec->msg, "the payload must be a table or a string, not a %s",
                 luaL_typename(L, 2));
        return -1;
    }
}

/* Argument 3: batch's window (a duration or seconds, above 0) or send's
 * options table; either may be absent (nil). */
static int emit_extra(lua_State *L, struct rules *r, struct emit_call *ec) {
    if (lua_isnil(L, 3))
        return 0;
    if (ec->is_batch) {
        ec->has_window = 1;
        if (lua_type(L, 3) == LUA_TNUMBER) {
            lua_Number s = lua_tonumber(L, 3);
            ec->window_ms = s > 0 && s < 9e12 ? (int64_t)(s * 1000 + 0.5) : 0;
        } else if (lua_type(L, 3) != LUA_TSTRING ||
                   util_duration_parse(lua_tostring(L, 3), &ec->window_ms) < 0) {
            ec->window_ms = 0;
        }
        if (ec->window_ms <= 0) {
            snprintf(ec->msg, sizeof ec->msg,
                     "bad window (use e.g. \"10m\" or a number of seconds)");
            return -1;
        }
        return 0;
    }
    if (lua_type(L, 3) != LUA_TTABLE) {
        snprintf(ec->msg, sizeof ec->msg,
                 "the options must be a table {headers = ..., content_type = ...}");
        return -1;
    }
    return emit_options(L, r, 3, &ec->headers, &ec->ctype, ec->msg, sizeof ec->msg);
}

/* One delivery per endpoint of argument 1 into the plan: a batch's window
 * is its own or the endpoint's. */
static int emit_plan(lua_State *L, struct rules *r, struct emit_call *ec) {
    for (size_t i = 1; i <= ec->n; i++) {
        const struct config_endpoint *ep;
        int64_t window = 0;
        int rc;
        if (lua_type(L, 1) == LUA_TTABLE)
            lua_rawgeti(L, 1, (lua_Integer)i);
        else
            lua_pushvalue(L, 1);
        ep = config_endpoint_by_name(r->cfg, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (ec->is_batch)
            window = ec->has_window ? ec->window_ms : config_endpoint_window(r->cfg, ep);
        rc = rapi_plan_add(r, ep->name, ec->body ? ec->body : "", ec->body_len, ec->ctype,
                           ec->headers.p, window);
        if (rc < 0) {
            snprintf(ec->msg, sizeof ec->msg, "%s",
                     rc == -2 ? "the deliveries of this event exceed rule_memory"
                              : "out of memory");
            return -1;
        }
    }
    return 0;
}

/* send(to, payload [, opts]) and batch(to, payload [, window]). */
static int emit(lua_State *L, int is_batch) {
    struct rules *r = rules_of(L);
    const char *what = is_batch ? "batch" : "send";
    struct emit_call ec;

    memset(&ec, 0, sizeof ec);
    ec.is_batch = is_batch;
    ec.ctype = "application/json";
    lua_settop(L, 3);
    if (!r->routing || !r->cfg) {
        snprintf(ec.msg, sizeof ec.msg, "only a handler can %s (inside on(...))", what);
        goto fail;
    }
    if (emit_targets(L, r, &ec) < 0 || emit_payload(L, r, &ec) < 0 || emit_extra(L, r, &ec) < 0 ||
        emit_plan(L, r, &ec) < 0)
        goto fail;
    util_buf_free(&ec.payload);
    util_buf_free(&ec.headers);
    return 0;
fail:
    util_buf_free(&ec.payload);
    util_buf_free(&ec.headers);
    return emit_fail(L, r, what, ec.msg);
}

static int host_send(lua_State *L) {
    return emit(L, 0);
}

static void subscribers_push(void *ctx, const char *name) {
    lua_State *L = ctx;
    lua_pushstring(L, name);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* subscribers(type) -> {endpoint names of the subscriptions matching type} */
static int host_subscribers(lua_State *L) {
    const char *type = luaL_checkstring(L, 1);
    lua_newtable(L);
    config_subscribers(rules_of(L)->cfg, type, subscribers_push, L);
    return 1;
}

static int host_batch(lua_State *L) {
    return emit(L, 1);
}

/* ---- the other host functions (the prelude's privileges) ---- */

/* where(level) -> "file:line" of the function at that level, or "?". */
static int host_where(lua_State *L) {
    lua_Debug ar;
    int level = (int)luaL_optinteger(L, 1, 1);
    if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
    else
        lua_pushliteral(L, "?");
    return 1;
}

static int host_getenv(lua_State *L) {
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

/* env_missing(name, where) -> a placeholder for an unset variable, or nil.
 * While loading, the name is recorded (once) with where it was asked for
 * and a placeholder is returned: a valid whsec_ key, so the load goes on
 * and finds every other unset name (rules.c then refuses them together
 * unless the load is offline). Outside a load (a handler): nil. */
static int host_env_missing(lua_State *L) {
    struct rules *r = rules_of(L);
    const char *name = luaL_checkstring(L, 1), *where = luaL_optstring(L, 2, "?");
    struct rules_missing_env *m;
    char text[160], b64[220];
    int n;

    if (!r->loading_file) {
        lua_pushnil(L);
        return 1;
    }
    for (size_t i = 0; i < r->nmissing; i++)
        if (strcmp(r->missing[i].name, name) == 0) {
            lua_pushstring(L, r->missing[i].value);
            return 1;
        }
    n = snprintf(text, sizeof text, "waybill placeholder for %.100s", name);
    util_base64_encode((const unsigned char *)text, (size_t)n, b64);
    m = realloc(r->missing, (r->nmissing + 1) * sizeof *m);
    if (!m)
        return luaL_error(L, "out of memory");
    r->missing = m;
    m = &r->missing[r->nmissing];
    m->name = strdup(name);
    m->where = strdup(where);
    m->value = malloc(strlen(b64) + 7);
    if (m->value)
        snprintf(m->value, strlen(b64) + 7, "whsec_%s", b64);
    r->nmissing++;
    if (!m->name || !m->where || !m->value)
        return luaL_error(L, "out of memory");
    lua_pushstring(L, m->value);
    return 1;
}

/* Pushes the text of the file at path (read into Lua memory, so a memory
 * error can't leak it), or returns -1 with errno and nothing pushed. */
int rapi_push_file(lua_State *L, const char *path, size_t *lenp) {
    struct stat st;
    size_t got = 0, size;
    char *text;
    int fd, saved;

    if (stat(path, &st) < 0)
        return -1;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return -1;
    }
    size = (size_t)st.st_size;
    text = lua_newuserdatauv(L, size + 1, 0);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        saved = errno;
        lua_pop(L, 1);
        errno = saved;
        return -1;
    }
    while (got < size) {
        ssize_t k = read(fd, text + got, size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    text[got] = '\0';
    *lenp = got;
    return 0;
}

static int host_readfile(lua_State *L) {
    size_t len;
    if (rapi_push_file(L, luaL_checkstring(L, 1), &len) < 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, lua_touserdata(L, -1), len);
    return 1;
}

/* log.info(...) etc.: the arguments joined by spaces (print: tabs),
 * prefixed with the rule's file:line. Upvalues: level, skip first arg. */
static int host_log(lua_State *L) {
    struct rules *r = rules_of(L);
    int level = (int)lua_tointeger(L, lua_upvalueindex(1));
    int first = lua_toboolean(L, lua_upvalueindex(2)) ? 2 : 1;
    const char *sep = lua_toboolean(L, lua_upvalueindex(3)) ? "\t" : " ";
    int n = lua_gettop(L);
    char loc[RULES_WHERE_MAX];
    luaL_Buffer b;

    if (level < log_threshold)
        return 0;
    luaL_buffinit(L, &b);
    for (int i = first; i <= n; i++) {
        if (i > first)
            luaL_addstring(&b, sep);
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    rules_user_where(L, r, loc, sizeof loc);
    log_msg(level, "%s%s%.2000s", loc, loc[0] ? ": " : "", lua_tostring(L, -1));
    return 0;
}

static void push_log_fn(lua_State *L, int level, int skip_first, int tabs) {
    lua_pushinteger(L, level);
    lua_pushboolean(L, skip_first);
    lua_pushboolean(L, tabs);
    lua_pushcclosure(L, host_log, 3);
}

/* coroutine.create / coroutine.wrap, charged to the budget. Upvalue: the
 * original function. */
static int host_co_call(lua_State *L) {
    rules_budget_charge(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* stopped() -> whether the running call has been stopped (budget, memory). */
static int host_stopped(lua_State *L) {
    lua_pushboolean(L, rules_of(L)->stop != RULES_STOP_NONE);
    return 1;
}

void rapi_push_host(lua_State *L, struct rules *r) {
    lua_createtable(L, 0, 20);
    lua_pushcfunction(L, host_where);
    lua_setfield(L, -2, "where");
    lua_pushcfunction(L, host_getenv);
    lua_setfield(L, -2, "getenv");
    lua_pushcfunction(L, host_env_missing);
    lua_setfield(L, -2, "env_missing");
    lua_pushcfunction(L, host_stopped);
    lua_setfield(L, -2, "stopped");
    lua_pushcfunction(L, host_readfile);
    lua_setfield(L, -2, "readfile");
    lua_pushcfunction(L, host_send);
    lua_setfield(L, -2, "send");
    lua_pushcfunction(L, host_batch);
    lua_setfield(L, -2, "batch");
    lua_pushcfunction(L, host_subscribers);
    lua_setfield(L, -2, "subscribers");
    push_log_fn(L, LOG_DEBUG, 0, 0);
    lua_setfield(L, -2, "log_debug");
    push_log_fn(L, LOG_INFO, 0, 0);
    lua_setfield(L, -2, "log_info");
    push_log_fn(L, LOG_WARN, 0, 0);
    lua_setfield(L, -2, "log_warn");
    push_log_fn(L, LOG_ERROR, 0, 0);
    lua_setfield(L, -2, "log_error");
    push_log_fn(L, LOG_INFO, 1, 0);
    lua_setfield(L, -2, "log_call");
    push_log_fn(L, LOG_INFO, 0, 1);
    lua_setfield(L, -2, "print");
    lua_getglobal(L, LUA_COLIBNAME);
    lua_getfield(L, -1, "create");
    lua_pushcclosure(L, host_co_call, 1);
    lua_setfield(L, -3, "co_create");
    lua_getfield(L, -1, "wrap");
    lua_pushcclosure(L, host_co_call, 1);
    lua_setfield(L, -3, "co_wrap");
    lua_pop(L, 1);
    lua_pushstring(L, r->lua_dir);
    lua_setfield(L, -2, "lua_dir");
    jsonx_open(L, &r->max_output);
    lua_setfield(L, -2, "json");
}
