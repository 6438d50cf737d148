/* jsonx_decode.c -- the direct decoder: JSON text straight onto the Lua
 * stack (jsonx_decode), with no jansson tree in between.
 * It stays for speed: the ingest path decodes every body, its headers and,
 * when routing, its data, and this one pass with no intermediate
 * allocations takes about a quarter of the instructions jsonx_parse +
 * jsonx_push take for the bench's event (callgrind: ~33k against ~128k);
 * it is ~16% of the instructions per event in tests/bench/instructions.sh.
 * What it must match, exactly, is jsonx_parse followed by jsonx_push (the
 * jansson path) wherever jansson reads the text: the same texts accepted
 * and refused (RFC 8259, nesting up to JSONX_MAX_DEPTH, an integer too big
 * for 64 bits read as a double). Where jansson refuses
 * what Node's JSON.parse reads, it reads as Node does (README, what
 * waybill's JSON promises): \u0000 in keys, a lone surrogate escape (kept
 * in three-byte form), bytes that are not UTF-8 (U+FFFD per maximal
 * subpart), a number past the double range (infinity). And the same values
 * pushed (objects as tables, arrays as marked tables, null as json.null,
 * integers as integers, reals as floats) and errors worded and placed as
 * jansson words them: "invalid JSON at line L column C: reason".
 * tests/unit/test_jsonx.c (test_decode_vs_jansson) holds it to that on edge
 * cases and random mutations of them. The encoder's clones build what this
 * decoder would (jsonx_new_object, jsonx_new_table, jsonx_push_number_text).
 * Invariant: no C memory is held across a Lua call that may raise (a long
 * number's text is freed before it is pushed), so a memory error, which
 * raises, leaks nothing.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "jsonx.h"
#include "jsonx_int.h"

struct dec {
    lua_State *L;
    const unsigned char *s, *p, *end;
    const unsigned char *err_at; /* where the error is, for line/column */
    char msg[160];
};

static void dec_fail(struct dec *d, const unsigned char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void dec_fail(struct dec *d, const unsigned char *at, const char *fmt, ...) {
    va_list ap;
    if (d->err_at)
        return;
    d->err_at = at;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof d->msg, fmt, ap);
    va_end(ap);
}

/* "near 'x'" (the character at p, escaped when not printable) or "near end
 * of file", as jansson words it. */
static void dec_near(struct dec *d, const unsigned char *p, const char *what) {
    if (p >= d->end)
        dec_fail(d, p, "%s near end of file", what);
    else if (*p >= 0x20 && *p < 0x7f)
        dec_fail(d, p, "%s near '%c'", what, *p);
    else
        dec_fail(d, p, "%s near byte 0x%02x", what, *p);
}

static void dec_ws(struct dec *d) {
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
        d->p++;
}

static int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Writes code point cp (at most U+10FFFF) as UTF-8 into u8; returns the
 * length (1 to 4). */
static size_t utf8_put(unsigned cp, char *u8) {
    if (cp < 0x80) {
        u8[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u8[0] = (char)(0xC0 | (cp >> 6));
        u8[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u8[0] = (char)(0xE0 | (cp >> 12));
        u8[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u8[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u8[0] = (char)(0xF0 | (cp >> 18));
    u8[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u8[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u8[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Reads the \uXXXX escape at q (its backslash), a surrogate pair taking
 * two, into the code point's UTF-8 in u8 (*n bytes; a lone surrogate in
 * its three-byte form). key: an object key (a NUL is kept there too, as
 * JSON.parse keeps it). Returns the escape's length in bytes (6 or 12), or
 * -1 (d->msg set). */
static int dec_unicode(struct dec *d, const unsigned char *q, int key, char *u8, size_t *n) {
    unsigned cp, lo;
    int used = 6;

    if (d->end - q < 6 || hex4(q + 2, &cp) < 0) {
        dec_fail(d, q, "invalid escape");
        return -1;
    }
    (void)key;
    if (cp >= 0xD800 && cp <= 0xDBFF && d->end - q >= 12 && q[6] == '\\' && q[7] == 'u' &&
        hex4(q + 8, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        used = 12;
    }
    /* A lone surrogate (JSON.parse keeps it) goes in as its three-byte form
     * (WTF-8), which the encoder writes back as the same escape. */
    *n = utf8_put(cp, u8);
    return used;
}

/* Adds what the escape at q (its backslash) stands for to b. key: an
 * object key. Returns the escape's length in bytes, or -1 (d->msg set). */
static int dec_escape(struct dec *d, const unsigned char *q, int key, luaL_Buffer *b) {
    char u8[4];
    size_t n;
    int used;

    if (q + 1 >= d->end) {
        dec_fail(d, q + 1, "premature end of input near end of file");
        return -1;
    }
    switch (q[1]) {
    case '"':
        luaL_addchar(b, '"');
        break;
    case '\\':
        luaL_addchar(b, '\\');
        break;
    case '/':
        luaL_addchar(b, '/');
        break;
    case 'b':
        luaL_addchar(b, '\b');
        break;
    case 'f':
        luaL_addchar(b, '\f');
        break;
    case 'n':
        luaL_addchar(b, '\n');
        break;
    case 'r':
        luaL_addchar(b, '\r');
        break;
    case 't':
        luaL_addchar(b, '\t');
        break;
    case 'u':
        if ((used = dec_unicode(d, q, key, u8, &n)) < 0)
            return -1;
        luaL_addlstring(b, u8, n);
        return used;
    default:
        dec_fail(d, q, "invalid escape");
        return -1;
    }
    return 2;
}

/* Length of the maximal subpart at s (n bytes, not a UTF-8 sequence): the
 * bytes a decoder following the WHATWG/Unicode practice replaces with one
 * U+FFFD (the lead byte and the continuation bytes a sequence starting with
 * it may have, up to the first that does not fit). At least 1. */
static size_t dec_bad_utf8(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xbf;
    size_t need, k = 1;

    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c >= 0xe0 && c <= 0xef)
        need = 2;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 3;
    else
        return 1;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    while (k <= need && k < n && s[k] >= lo && s[k] <= hi) {
        k++;
        lo = 0x80;
        hi = 0xbf;
    }
    return k;
}

/* Parses the string at d->p (on its opening quote) and pushes it. key: an
 * object key (a NUL in it is refused). Returns 0 or -1 (d->msg set). A
 * string without escapes is pushed straight from the text. */
static int dec_string(struct dec *d, int key) {
    const unsigned char *start = ++d->p, *q = start;
    luaL_Buffer b;
    int buffered = 0, used;

    for (;;) {
        /* Fast scan over plain ASCII. */
        q += jsonx_plain_run(q, (size_t)(d->end - q));
        if (q >= d->end) {
            dec_fail(d, q, "premature end of input near end of file");
            return -1;
        }
        if (*q == '"')
            break;
        if (*q < 0x20) {
            dec_fail(d, q, "control character 0x%x in a string", *q);
            return -1;
        }
        if (*q >= 0x80) {
            size_t n = util_utf8_seq(q, (size_t)(d->end - q));
            if (n) {
                q += n;
                continue;
            }
            /* Not UTF-8: U+FFFD for its maximal subpart, as Node decodes it. */
            if (!buffered) {
                luaL_buffinit(d->L, &b);
                buffered = 1;
            }
            luaL_addlstring(&b, (const char *)start, (size_t)(q - start));
            luaL_addlstring(&b, "\xef\xbf\xbd", 3);
            q += dec_bad_utf8(q, (size_t)(d->end - q));
            start = q;
            continue;
        }
        /* A backslash: from here on the text is built in a buffer. */
        if (!buffered) {
            luaL_buffinit(d->L, &b);
            buffered = 1;
        }
        luaL_addlstring(&b, (const char *)start, (size_t)(q - start));
        if ((used = dec_escape(d, q, key, &b)) < 0)
            return -1;
        q += used;
        start = q;
    }
    if (buffered) {
        luaL_addlstring(&b, (const char *)start, (size_t)(q - start));
        luaL_pushresult(&b);
    } else {
        lua_pushlstring(d->L, (const char *)start, (size_t)(q - start));
    }
    d->p = q + 1;
    return 0;
}

/* Parses the number at d->p and pushes it (an integer when it has neither
 * fraction nor exponent and fits 64 bits, else a float). */
static int dec_number(struct dec *d) {
    const unsigned char *p = d->p, *start = p;
    int is_int = 1;
    char small[64], *text;
    size_t n;

    if (p < d->end && *p == '-')
        p++;
    if (p < d->end && *p == '0') {
        p++;
        if (p < d->end && *p >= '0' && *p <= '9') {
            dec_fail(d, start, "invalid token near '%c'", *start);
            return -1;
        }
    } else if (p < d->end && *p >= '1' && *p <= '9') {
        while (p < d->end && *p >= '0' && *p <= '9')
            p++;
    } else {
        dec_near(d, start, "invalid token");
        return -1;
    }
    if (p < d->end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= d->end || *p < '0' || *p > '9') {
            dec_near(d, start, "invalid token");
            return -1;
        }
        while (p < d->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < d->end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        if (p < d->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= d->end || *p < '0' || *p > '9') {
            dec_near(d, start, "invalid token");
            return -1;
        }
        while (p < d->end && *p >= '0' && *p <= '9')
            p++;
    }
    d->p = p;
    if (is_int) {
        /* Accumulate negatively so INT64_MIN fits. */
        const unsigned char *q = start + (*start == '-');
        int64_t v = 0;
        int overflow = 0;
        for (; q < p; q++) {
            int dig = *q - '0';
            if (v < (INT64_MIN + dig) / 10) {
                overflow = 1;
                break;
            }
            v = v * 10 - dig;
        }
        if (!overflow && (*start == '-' || v != INT64_MIN)) {
            lua_pushinteger(d->L, (lua_Integer)(*start == '-' ? v : -v));
            return 0;
        }
    }
    n = (size_t)(p - start);
    text = n < sizeof small ? small : malloc(n + 1);
    if (!text) {
        dec_fail(d, start, "out of memory");
        return -1;
    }
    memcpy(text, start, n);
    text[n] = '\0';
    double v = strtod(text, NULL);
    if (text != small)
        free(text);
    /* Past the double range it is infinity, as JSON.parse reads it (and
     * JSON.stringify writes it as null). */
    lua_pushnumber(d->L, (lua_Number)v);
    return 0;
}

/* The clones' floats (jsonx_int.h): read as the decoder reads them. */
void jsonx_push_number_text(lua_State *L, const char *text, size_t n) {
    struct dec d;
    memset(&d, 0, sizeof d);
    d.L = L;
    d.s = d.p = (const unsigned char *)text;
    d.end = d.s + n;
    if (dec_number(&d) < 0) /* cannot happen: finite numbers format well */
        lua_pushnumber(L, (lua_Number)strtod(text, NULL));
}

static int dec_literal(struct dec *d, const char *word, size_t n) {
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) {
        dec_near(d, d->p, "invalid token");
        return -1;
    }
    d->p += n;
    return 0;
}

static int dec_value(struct dec *d, int depth);

/* How many members an object keeps on the stack while it is read (their
 * keys are its received order, in case they do not come in the encoder's
 * own order); then they go into its table, made that size at once
 * (jsonx_new_object): no table grows member by member. */
#define DEC_KEYS_HELD JSONX_OBJECT_HELD

/* Sets the nk members (key, value) held at t+2.. into the table at t (made
 * when absent); with keep_order, appends their keys to the order list at
 * t+1 (made when absent), *total of them there before. Pops them.
 * [-2nk, +0, m] */
static void dec_members_flush(lua_State *L, int t, int nk, int keep_order, lua_Integer *total) {
    if (lua_isnil(L, t)) {
        jsonx_new_object(L, nk);
        lua_replace(L, t);
    }
    if (keep_order) {
        if (lua_isnil(L, t + 1)) {
            lua_createtable(L, nk, 0);
            lua_replace(L, t + 1);
        }
        for (int i = 0; i < nk; i++) {
            lua_pushvalue(L, t + 2 + 2 * i);
            lua_rawseti(L, t + 1, ++*total);
        }
    }
    for (int i = 0; i < nk; i++) { /* in the order written: a later duplicate wins */
        lua_pushvalue(L, t + 2 + 2 * i);
        lua_pushvalue(L, t + 3 + 2 * i);
        lua_rawset(L, t);
    }
    lua_settop(L, t + 1);
}

/* Parses the object at d->p (on its '{') and pushes it as a table, its
 * members set in the order written (a later duplicate wins). When its keys
 * did not come in the encoder's own order, their received order is kept
 * (jsonx_int.h: jsonx_order_key), so encoding writes them back that way. */
static int dec_object(struct dec *d, int depth) {
    lua_State *L = d->L;
    lua_Integer total = 0; /* keys already in the order list */
    int t, nk = 0, ordered = 1, prev_is_index = 0;
    const char *prev = NULL; /* the last key, while ordered (held on the stack) */
    size_t prevlen = 0;
    uint32_t prev_index = 0;

    if (!lua_checkstack(L, 2 * DEC_KEYS_HELD + 8)) {
        dec_fail(d, d->p, "maximum parsing depth reached");
        return -1;
    }
    d->p++;
    dec_ws(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        jsonx_new_object(L, 0);
        return 0;
    }
    lua_pushnil(L); /* t: the table, made when its first members are set */
    t = lua_gettop(L);
    lua_pushnil(L); /* t+1: the order list, made when needed; then the members held */
    for (;;) {
        dec_ws(d);
        if (d->p >= d->end || *d->p != '"') {
            dec_near(d, d->p, "string or '}' expected");
            return -1;
        }
        if (nk == DEC_KEYS_HELD) {
            dec_members_flush(L, t, nk, 1, &total);
            nk = 0;
            ordered = 0; /* a long object: its order is kept either way */
        }
        if (dec_string(d, 1) < 0)
            return -1;
        if (ordered) { /* still in the encoder's own order (jsonx_key_after)? */
            size_t len;
            const char *k = lua_tolstring(L, -1, &len);
            uint32_t index = 0;
            int is_index = jsonx_key_index(k, len, &index);
            if (nk > 0) {
                if (is_index != prev_is_index) {
                    ordered = prev_is_index;
                } else if (is_index) {
                    ordered = index > prev_index;
                } else {
                    int c = memcmp(prev, k, prevlen < len ? prevlen : len);
                    ordered = c < 0 || (c == 0 && prevlen < len);
                }
            }
            prev = k;
            prevlen = len;
            prev_is_index = is_index;
            prev_index = index;
        }
        nk++;
        dec_ws(d);
        if (d->p >= d->end || *d->p != ':') {
            dec_near(d, d->p, "':' expected");
            return -1;
        }
        d->p++;
        if (dec_value(d, depth + 1) < 0) /* held above its key */
            return -1;
        dec_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == '}') {
            d->p++;
            dec_members_flush(L, t, nk, !ordered, &total);
            if (!ordered)
                jsonx_set_order(L, t, t + 1);
            lua_settop(L, t);
            return 0;
        }
        dec_near(d, d->p, "'}' expected");
        return -1;
    }
}

/* Parses the array at d->p (on its '[') and pushes it as a marked table
 * holding its values at 1..n. */
static int dec_array(struct dec *d, int depth) {
    lua_State *L = d->L;
    lua_Integer i = 0;

    if (!lua_checkstack(L, 4)) {
        dec_fail(d, d->p, "maximum parsing depth reached");
        return -1;
    }
    d->p++;
    jsonx_new_table(L, 1);
    dec_ws(d);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
        return 0;
    }
    for (;;) {
        if (dec_value(d, depth + 1) < 0)
            return -1;
        lua_rawseti(L, -2, ++i);
        dec_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == ']') {
            d->p++;
            return 0;
        }
        dec_near(d, d->p, "']' expected");
        return -1;
    }
}

/* Parses one value and pushes it. */
static int dec_value(struct dec *d, int depth) {
    lua_State *L = d->L;
    if (depth > JSONX_MAX_DEPTH) {
        dec_fail(d, d->p, "maximum parsing depth reached");
        return -1;
    }
    dec_ws(d);
    if (d->p >= d->end) {
        dec_fail(d, d->p, "unexpected token near end of file");
        return -1;
    }
    switch (*d->p) {
    case '{':
        return dec_object(d, depth);
    case '[':
        return dec_array(d, depth);
    case '"':
        return dec_string(d, 0);
    case 't':
        if (dec_literal(d, "true", 4) < 0)
            return -1;
        lua_pushboolean(L, 1);
        return 0;
    case 'f':
        if (dec_literal(d, "false", 5) < 0)
            return -1;
        lua_pushboolean(L, 0);
        return 0;
    case 'n':
        if (dec_literal(d, "null", 4) < 0)
            return -1;
        jsonx_push_null(L);
        return 0;
    default:
        if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))
            return dec_number(d);
        dec_near(d, d->p, "invalid token");
        return -1;
    }
}

int jsonx_decode(lua_State *L, const char *text, size_t len, size_t flags, char *err,
                 size_t errlen) {
    struct dec d;
    int top = lua_gettop(L);

    memset(&d, 0, sizeof d);
    luaL_checkstack(L, 8, "JSON decoding");
    d.L = L;
    d.s = d.p = (const unsigned char *)text;
    d.end = d.s + len;
    dec_ws(&d);
    if (!(flags & JSON_DECODE_ANY) && (d.p >= d.end || (*d.p != '{' && *d.p != '[')))
        dec_near(&d, d.p, "'[' or '{' expected");
    else if (dec_value(&d, 0) == 0) {
        dec_ws(&d);
        if (d.p < d.end)
            dec_near(&d, d.p, "end of file expected");
    }
    if (d.err_at) {
        /* Line and column (in characters, as jansson counts) of the error. */
        int line = 1, col = 0;
        for (const unsigned char *q = d.s; q < d.err_at && q < d.end; q++) {
            if (*q == '\n') {
                line++;
                col = 0;
            } else if ((*q & 0xC0) != 0x80) {
                col++;
            }
        }
        if (d.err_at < d.end)
            col++;
        snprintf(err, errlen, "invalid JSON at line %d column %d: %s", line, col, d.msg);
        lua_settop(L, top);
        return -1;
    }
    return 0;
}
