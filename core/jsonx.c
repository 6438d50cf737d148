/* jsonx.c -- JSON <-> Lua values, the module's common part: numbers as
 * JavaScript prints them, json.null and the array mark, jansson -> Lua
 * (jsonx_parse, jsonx_push) and the rules' json module. The encoder is in
 * jsonx_encode.c, the direct decoder in jsonx_decode.c (jsonx_int.h).
 * Invariant: every Lua allocation here happens inside a pcall or a Lua-
 * called function, and C memory that must survive a Lua error lives in a
 * box userdata whose __gc frees it, so a memory error never leaks.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "jsonx.h"
#include "jsonx_int.h"

/* Registry keys (addresses, so no string is interned to look them up). */
const char jsonx_array_key = 'a';
const char jsonx_order_key = 'o';
static const char jsonx_box_key = 'b';
static const char jsonx_null_tag = 'n';

/* ---- numbers ---- */

/* Parses "%.*e" output "d.ddde[+-]XX" into its digits and exponent. */
static void number_split(const char *s, char *digits, int *exp10) {
    int k = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9')
            digits[k++] = *s;
    digits[k] = '\0';
    *exp10 = *s == 'e' ? atoi(s + 1) : 0;
}

static double number_value(const char *digits, int exp10) {
    char text[48];
    snprintf(text, sizeof text, "%c.%se%d", digits[0], digits + 1, exp10);
    return strtod(text, NULL);
}

/* Adds one unit in the last place of the decimal digits (carrying). */
static void number_bump(char *digits, int *exp10) {
    int i = (int)strlen(digits) - 1;
    for (; i >= 0; i--) {
        if (digits[i] != '9') {
            digits[i]++;
            return;
        }
        digits[i] = '0';
    }
    digits[0] = '1'; /* 999 -> 1000: keep the width, move the point */
    (*exp10)++;
}

size_t jsonx_number_format(double d, char *out) {
    char text[48], digits[24];
    int exp10 = 0, k, n;
    size_t o = 0;

    if (d == 0) { /* -0 too: JSON.stringify(-0) is "0" */
        memcpy(out, "0", 2);
        return 1;
    }
    if (d < 0) {
        out[o++] = '-';
        d = -d;
    }
    /* Shortest digits that read back as d. The correctly rounded candidate
     * is the nearest; where d is a power of two its rounding interval is
     * lopsided, and the next decimal up may round-trip when the nearest
     * (below d) does not: JavaScript takes that one. */
    for (int p = 1; p <= 17; p++) {
        double back;
        snprintf(text, sizeof text, "%.*e", p - 1, d);
        number_split(text, digits, &exp10);
        back = number_value(digits, exp10);
        if (back == d)
            break;
        if (back < d && p < 17) {
            number_bump(digits, &exp10);
            if (number_value(digits, exp10) == d)
                break;
        }
    }
    k = (int)strlen(digits);
    while (k > 1 && digits[k - 1] == '0')
        digits[--k] = '\0';
    n = exp10 + 1; /* d = 0.digits * 10^n */
    if (k <= n && n <= 21) {
        memcpy(out + o, digits, (size_t)k);
        o += (size_t)k;
        for (int i = k; i < n; i++)
            out[o++] = '0';
    } else if (0 < n && n <= 21) {
        memcpy(out + o, digits, (size_t)n);
        o += (size_t)n;
        out[o++] = '.';
        memcpy(out + o, digits + n, (size_t)(k - n));
        o += (size_t)(k - n);
    } else if (-6 < n && n <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = n; i < 0; i++)
            out[o++] = '0';
        memcpy(out + o, digits, (size_t)k);
        o += (size_t)k;
    } else {
        out[o++] = digits[0];
        if (k > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, (size_t)(k - 1));
            o += (size_t)(k - 1);
        }
        o += (size_t)sprintf(out + o, "e%c%d", n - 1 > 0 ? '+' : '-', abs(n - 1));
    }
    out[o] = '\0';
    return o;
}

int jsonx_nesting(const char *s, size_t len) {
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

/* ---- boxes: C memory a Lua error must not leak ---- */

struct jsonx_box {
    struct util_buf buf;
    json_t *json;
};

static int box_gc(lua_State *L) {
    struct jsonx_box *box = lua_touserdata(L, 1);
    if (box) {
        util_buf_free(&box->buf);
        json_decref(box->json);
        box->json = NULL;
    }
    return 0;
}

/* Pushes a new empty box. [-0, +1, m] */
static struct jsonx_box *box_new(lua_State *L) {
    struct jsonx_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    memset(box, 0, sizeof *box);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_box_key);
    lua_setmetatable(L, -2);
    return box;
}

/* ---- null and arrays ---- */

void jsonx_push_null(lua_State *L) {
    lua_pushlightuserdata(L, (void *)&jsonx_null_tag);
}

int jsonx_is_null(lua_State *L, int idx) {
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA &&
           lua_touserdata(L, idx) == (void *)&jsonx_null_tag;
}

void jsonx_mark_array(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_array_key);
    lua_setmetatable(L, idx);
}

/* ---- the jansson side ---- */

json_t *jsonx_parse(const char *text, size_t len, size_t flags, char *err, size_t errlen) {
    json_error_t je;
    json_t *j = json_loadb(text, len, flags | JSON_ALLOW_NUL, &je);

    if (!j && json_error_code(&je) == json_error_numeric_overflow)
        j = json_loadb(text, len, flags | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    if (!j)
        snprintf(err, errlen, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
    return j;
}

static void push_rec(lua_State *L, const json_t *j, int depth) {
    luaL_checkstack(L, 4, "JSON nesting");
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key, *prev = NULL;
        size_t keylen, prevlen = 0;
        lua_Integer n = 0;
        int ordered = 1;
        json_t *v;
        lua_createtable(L, 0, (int)json_object_size(j));
        lua_createtable(L, (int)json_object_size(j), 0); /* the received order */
        json_object_keylen_foreach((json_t *)j, key, keylen, v) {
            if (prev && !jsonx_key_after(prev, prevlen, key, keylen))
                ordered = 0;
            prev = key;
            prevlen = keylen;
            lua_pushlstring(L, key, keylen);
            lua_pushvalue(L, -1);
            lua_rawseti(L, -3, ++n);
            push_rec(L, v, depth + 1);
            lua_rawset(L, -4);
        }
        if (!ordered)
            jsonx_set_order(L, -2, -1);
        lua_pop(L, 1);
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            push_rec(L, json_array_get(j, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        jsonx_mark_array(L, -1);
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(j));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        jsonx_push_null(L);
    }
}

void jsonx_push(lua_State *L, const json_t *j) {
    push_rec(L, j, 0);
}

/* ---- the json module ---- */

static int json_encode_l(lua_State *L) {
    const size_t *max = lua_touserdata(L, lua_upvalueindex(1));
    struct jsonx_box *box;
    char err[256];

    lua_settop(L, 1);
    box = box_new(L); /* the C buffer is freed even if pushing the result fails */
    if (jsonx_encode(L, 1, &box->buf, max ? *max : 0, err, sizeof err) < 0)
        return luaL_error(L, "json.encode: %s", err);
    lua_pushlstring(L, box->buf.p ? box->buf.p : "", box->buf.len);
    util_buf_free(&box->buf);
    return 1;
}

static int json_decode_l(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[256];

    if (jsonx_decode(L, s, len, JSON_DECODE_ANY, err, sizeof err) < 0)
        return luaL_error(L, "json.decode: %s", err);
    return 1;
}

static int json_array_l(lua_State *L) {
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    if (lua_getmetatable(L, 1)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_array_key);
        if (!lua_rawequal(L, -1, -2))
            return luaL_error(L, "json.array: the table already has a metatable");
        lua_pop(L, 2);
    }
    jsonx_mark_array(L, 1);
    return 1;
}

int jsonx_open(lua_State *L, const size_t *max_output) {
    lua_createtable(L, 0, 0); /* received key orders: weak keys, no rule reaches it */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &jsonx_order_key);

    lua_createtable(L, 0, 1); /* arrays: protected, so no rule can reach or change it */
    lua_pushliteral(L, "json.array");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &jsonx_array_key);

    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &jsonx_box_key);

    lua_createtable(L, 0, 4);
    lua_pushlightuserdata(L, (void *)max_output);
    lua_pushcclosure(L, json_encode_l, 1);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, json_decode_l);
    lua_setfield(L, -2, "decode");
    lua_pushcfunction(L, json_array_l);
    lua_setfield(L, -2, "array");
    jsonx_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
