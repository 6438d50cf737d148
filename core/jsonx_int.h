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

/* Pushes a new table as the decoder starts an object or an array (the
 * encoder's clones start theirs the same way, so both fill alike).
 * [-0, +1, m] */
static inline void jsonx_new_table(lua_State *L, int array) {
    if (array) {
        lua_createtable(L, 0, 0);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_array_key); /* jsonx_mark_array */
        lua_setmetatable(L, -2);
    } else {
        lua_createtable(L, 0, 4);
    }
}

/* Pushes the number jsonx_decode reads from text (n bytes, written by
 * jsonx_number_format, so well formed): what a clone holds for a float.
 * [-0, +1, -] */
void jsonx_push_number_text(lua_State *L, const char *text, size_t n);

#endif
