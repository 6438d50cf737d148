/* rules_key.c -- the order key of each send to an endpoint ordered by key
 * (SPEC section 7, `ordered = "path"` or `ordered = function(ev)`): read
 * from a fresh event table, never from one a handler may have changed.
 * Invariants: a key function runs under the generation's limits and may
 * not send; one that fails or returns no usable value leaves its sends
 * unordered (key NULL, key_missing set) and never fails the route.
 * SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "rules.h"
#include "rules_int.h"

/* Keys longer than this are not keys (counted as missing). */
#define RULES_KEY_MAX 512

/* Pushes the value at dotted path in the table at ev (nil when a step is
 * missing or not a table). [-0, +1, e] */
static void key_path_push(lua_State *L, int ev, const char *path) {
    char name[128];

    lua_pushvalue(L, ev);
    while (*path) {
        size_t n = strcspn(path, ".");
        if (lua_type(L, -1) != LUA_TTABLE || n >= sizeof name) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        memcpy(name, path, n);
        name[n] = '\0';
        lua_getfield(L, -1, name);
        lua_remove(L, -2);
        path += n + (path[n] == '.');
    }
}

/* The key at the stack top as new text: strings as they are, numbers as
 * Lua writes them; anything else (nil, a table, ...) is no key (NULL). */
static char *key_text(lua_State *L) {
    size_t len;
    const char *s;

    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        return NULL;
    lua_pushvalue(L, -1); /* lua_tolstring converts numbers in place */
    s = lua_tolstring(L, -1, &len);
    lua_pop(L, 1);
    if (!s || len == 0 || len > RULES_KEY_MAX || memchr(s, '\0', len))
        return NULL;
    return strdup(s);
}

/* Runs the key function ref over ev; pushes its first result, or pushes
 * nothing and writes "file:line: message" into err when it fails. Returns
 * 0 or -1. */
static int key_fn_call(struct rules *r, lua_State *L, int ref, int ev, char *err, size_t errlen) {
    char where[RULES_WHERE_MAX];
    lua_Debug ar;
    int status;

    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushvalue(L, -1);
    snprintf(where, sizeof where, "ordered key function");
    if (lua_getinfo(L, ">S", &ar) && ar.short_src[0])
        snprintf(where, sizeof where, "%s:%d", ar.short_src, ar.linedefined);
    lua_pushvalue(L, ev);
    rules_limits_arm(r, r->cfg->rule_budget, "ordered key stopped");
    status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_OK && !r->stop && !(r->mem_hit && r->mem_refused))
        return 0;
    rules_call_error(r, status, where, err, errlen);
    lua_pop(L, 1); /* the result or the error */
    free(r->send_error);
    r->send_error = NULL;
    return -1;
}

int rules_keys(struct rules *r, lua_State *L, int ev, char **key_error) {
    char err[512];
    int routing = r->routing, rc = 0;

    r->routing = 0; /* a key function may not send */
    for (size_t i = 0; i < r->nplan && rc == 0; i++) {
        struct rules_send *s = &r->plan[i];
        const struct config_endpoint *ep = config_endpoint_by_name(r->cfg, s->endpoint);
        int top = lua_gettop(L);

        if (!ep || !CONFIG_ORDERED_BY_KEY(ep) || s->window_ms > 0)
            continue;
        /* the same endpoint twice in one plan: the same key */
        for (size_t j = 0; j < i; j++)
            if (r->plan[j].key && !strcmp(r->plan[j].endpoint, s->endpoint)) {
                if (!(s->key = strdup(r->plan[j].key)))
                    rc = -1;
                break;
            }
        if (s->key || rc < 0)
            continue;
        if (ep->order_key) {
            key_path_push(L, ev, ep->order_key);
        } else if (key_fn_call(r, L, ep->order_fn, ev, err, sizeof err) < 0) {
            if (!*key_error && !(*key_error = strdup(err)))
                rc = -1;
            s->key_missing = 1;
            lua_settop(L, top);
            continue;
        }
        s->key = key_text(L);
        s->key_missing = s->key == NULL;
        lua_settop(L, top);
    }
    r->routing = routing;
    if (r->stop || r->mem_hit) /* the handlers' limits, not a key's, from here on */
        rules_limits_arm(r, r->cfg->rule_budget, "rule stopped");
    return rc;
}
