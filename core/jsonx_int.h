/* jsonx_int.h -- what the files of the jsonx module share: jsonx.c (numbers,
 * json.null and array marks, the jansson side, the rules' json module),
 * jsonx_encode.c (Lua values -> JSON text) and jsonx_decode.c (the direct
 * JSON text -> Lua decoder). Private: included by jsonx*.c only; everyone
 * else uses jsonx.h. The scanners are static inline: both the encoder and
 * the decoder run them on every string, so a call would cost.
 * SPDX-License-Identifier: MIT */
#ifndef CORE_JSONX_INT_H
#define CORE_JSONX_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>

#include "util.h"

/* The registry key of the arrays' shared metatable (an address, so no
 * string is interned to look it up). */
extern const char jsonx_array_key;

/* Length of the run at s (at most n bytes) of bytes a JSON string holds
 * as they are: 0x20..0x7f but '"' and '\\'. Eight bytes a step (a word
 * with any other byte is left to the byte loop), since strings are most of
 * what the decoder and encoder read. */
static inline size_t jsonx_plain_run(const unsigned char *s, size_t n) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;

    while (n - i >= 8) {
        uint64_t v, q, b;
        memcpy(&v, s + i, 8);
        q = v ^ (ones * '"');
        b = v ^ (ones * '\\');
        /* high bit set in a byte < 0x20 or >= 0x80, or one equal to '"' or '\\' */
        if ((((v - ones * 0x20) & ~v) | v | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs)
            break;
        i += 8;
    }
    while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\')
        i++;
    return i;
}

/* The registry key of the received key order: a table with weak keys,
 * object table -> list of its keys in the order they were received (first
 * appearances; a later duplicate may be listed again). Only objects whose
 * keys did not come in the encoder's own order have one: the encoder writes
 * listed keys in that order, after array-index keys as JavaScript does, and
 * keys added since in its own order after them. */
extern const char jsonx_order_key;

/* JavaScript's array-index test: canonical decimal, at most 2^32 - 2. Such
 * keys come first in every JavaScript object, in numeric order. */
static inline int jsonx_key_index(const char *s, size_t len, uint32_t *index) {
    uint64_t v = 0;
    if (len == 0 || len > 10 || (len > 1 && s[0] == '0'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > 4294967294u)
        return 0;
    *index = (uint32_t)v;
    return 1;
}

/* Whether key b comes strictly after key a in the encoder's own order for
 * keys without a received order: array indexes first, in numeric order,
 * then the rest bytewise. */
static inline int jsonx_key_after(const char *a, size_t alen, const char *b, size_t blen) {
    uint32_t ia = 0, ib = 0;
    int xa = jsonx_key_index(a, alen, &ia), xb = jsonx_key_index(b, blen, &ib), c;
    if (xa != xb)
        return xa;
    if (xa)
        return ib > ia;
    c = memcmp(a, b, alen < blen ? alen : blen);
    return c < 0 || (c == 0 && alen < blen);
}

/* Records the list at idx as the received key order of the table at t.
 * [-0, +0, m] */
static inline void jsonx_set_order(lua_State *L, int t, int idx) {
    t = lua_absindex(L, t);
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_order_key);
    lua_pushvalue(L, t);
    lua_pushvalue(L, idx);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* How many members the decoder holds before it makes an object's table. */
#define JSONX_OBJECT_HELD 32

/* Pushes a new table for an object of n members as the decoder makes it:
 * sized for them, up to JSONX_OBJECT_HELD (a longer object grows past
 * that as it is filled); the encoder's clones make theirs the same way, so
 * both fill alike. [-0, +1, m] */
static inline void jsonx_new_object(lua_State *L, size_t n) {
    lua_createtable(L, 0, (int)(n < JSONX_OBJECT_HELD ? n : JSONX_OBJECT_HELD));
}

/* Pushes a new table as the decoder starts an object or an array (the
 * encoder's clones start theirs the same way, so both fill alike).
 * [-0, +1, m] */
static inline void jsonx_new_table(lua_State *L, int array) {
    if (array) {
        lua_createtable(L, 0, 0);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_array_key); /* jsonx_mark_array */
        lua_setmetatable(L, -2);
    } else {
        jsonx_new_object(L, 0);
    }
}

/* Pushes the number jsonx_decode reads from text (n bytes, written by
 * jsonx_number_format, so well formed): what a clone holds for a float.
 * [-0, +1, -] */
void jsonx_push_number_text(lua_State *L, const char *text, size_t n);

#endif
