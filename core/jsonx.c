/* jsonx.c -- JSON <-> Lua values: a JSON.stringify-compatible encoder over
 * Lua tables, a direct JSON text -> Lua decoder (and a jansson -> Lua one),
 * plus the rules' json module.
 * Invariant: every Lua allocation here happens inside a pcall or a Lua-
 * called function, and C memory that must survive a Lua error lives in a
 * box userdata whose __gc frees it, so a memory error never leaks.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "jsonx.h"

/* Registry keys (addresses, so no string is interned to look them up). */
static const char jsonx_array_key = 'a';
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

static int is_marked_array(lua_State *L, int idx) {
    int marked;
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_array_key);
    marked = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return marked;
}

/* ---- encoder ---- */

/* An object key, ready to sort. Keys live in the encoder's scratch array
 * (e->keys), which nested tables may grow and move: nothing keeps a
 * pointer into it across a recursive call, and an integer key's text is
 * found through key_text, never stored as a pointer. */
struct enc_key {
    const char *s; /* a string key's text (the table keeps the string alive) */
    size_t len;
    int is_int;    /* an integer key: its text is in num */
    int is_index;  /* an array index ("0".."4294967294"): sorted first */
    uint32_t index;
    int vidx;      /* the stack slot holding its value, 0 when fetched by key */
    lua_Integer ikey;
    char num[24];
};

struct enc {
    lua_State *L;
    struct util_buf *out;
    size_t start, max;
    struct enc_key *keys; /* scratch: the keys of the tables being written */
    size_t nkeys, capkeys;
    int clone; /* also push what jsonx_decode would make of each value written */
    char err[200];
    struct enc_key small[16]; /* keys' first home: no allocation for small payloads */
};

/* Raises the encoder's own failure: a light userdata, so raising allocates
 * nothing and jsonx_encode can tell it from a memory error. */
static void enc_fail(struct enc *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void enc_fail(struct enc *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, sizeof e->err, fmt, ap);
    va_end(ap);
    lua_pushlightuserdata(e->L, e);
    lua_error(e->L);
}

static void put_grow(struct enc *e, const void *p, size_t n) __attribute__((noinline));
static void put_grow(struct enc *e, const void *p, size_t n) {
    if (util_buf_append(e->out, p, n) < 0)
        enc_fail(e, "not enough memory");
}

static inline void put(struct enc *e, const void *p, size_t n) {
    struct util_buf *b = e->out;
    if (e->max && b->len - e->start + n > e->max)
        enc_fail(e, "output larger than %zu bytes", e->max);
    if (b->p && b->len + n < b->cap) { /* room left (and for the NUL): no call */
        memcpy(b->p + b->len, p, n);
        b->len += n;
        b->p[b->len] = '\0';
        return;
    }
    put_grow(e, p, n);
}

/* '"' s '"' for a string that needs no escaping: one copy when there is
 * room (most strings of most payloads). */
static void put_quoted(struct enc *e, const char *s, size_t n) {
    struct util_buf *b = e->out;
    if ((!e->max || b->len - e->start + n + 2 <= e->max) && b->p && b->len + n + 2 < b->cap) {
        char *o = b->p + b->len;
        o[0] = '"';
        memcpy(o + 1, s, n);
        o[n + 1] = '"';
        o[n + 2] = '\0';
        b->len += n + 2;
        return;
    }
    put(e, "\"", 1);
    put(e, s, n);
    put(e, "\"", 1);
}

#define PUTS(e, lit) put((e), (lit), sizeof(lit) - 1)

/* Length of the run at s (at most n bytes) of bytes a JSON string holds
 * as they are: 0x20..0x7f but '"' and '\\'. Eight bytes a step (a word
 * with any other byte is left to the byte loop), since strings are most of
 * what the decoder and encoder read. */
static size_t plain_run(const unsigned char *s, size_t n) {
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

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if none. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0)) /* overlong, surrogate */
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90)) /* overlong, > U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

/* A string as JSON.stringify writes it: only '"', '\\' and C0 controls are
 * escaped (\b \f \n \r \t, else \u00xx in lowercase hex). */
static void put_string(struct enc *e, const char *str, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;

    i = plain_run(s, len);
    if (i == len) {
        put_quoted(e, str, len);
        return;
    }
    PUTS(e, "\"");
    while (i < len) {
        unsigned c;
        char esc[6];
        size_t elen = 2;

        /* Plain ASCII runs (most of any payload) go by in a tight loop. */
        i += plain_run(s + i, len - i);
        if (i >= len)
            break;
        c = s[i];
        if (c >= 0x80) {
            size_t n = utf8_seq(s + i, len - i);
            if (!n)
                enc_fail(e, "invalid UTF-8 in a string");
            i += n;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        esc[0] = '\\';
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (i > run)
            put(e, s + run, i - run);
        put(e, esc, elen);
        run = ++i;
    }
    if (i > run)
        put(e, s + run, i - run);
    PUTS(e, "\"");
}

int jsonx_append_string(struct util_buf *out, const char *str, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i, run = 0, start = out->len;

    if (plain_run(s, len) == len) { /* nothing to check or escape */
        if (util_buf_append(out, "\"", 1) < 0 || util_buf_append(out, str, len) < 0 ||
            util_buf_append(out, "\"", 1) < 0)
            goto fail;
        return 0;
    }
    for (i = 0; i < len;) { /* valid UTF-8 first: nothing is appended otherwise */
        size_t n = utf8_seq(s + i, len - i);
        if (!n)
            return -1;
        i += n;
    }
    if (util_buf_append(out, "\"", 1) < 0)
        goto fail;
    for (i = 0; i < len; i++) {
        unsigned c = s[i];
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t elen = 2;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if ((i > run && util_buf_append(out, s + run, i - run) < 0) ||
            util_buf_append(out, esc, elen) < 0)
            goto fail;
        run = i + 1;
    }
    if ((i > run && util_buf_append(out, s + run, i - run) < 0) ||
        util_buf_append(out, "\"", 1) < 0)
        goto fail;
    return 0;
fail:
    out->len = start;
    if (out->p)
        out->p[start] = '\0';
    return -1;
}

static void put_integer(struct enc *e, lua_Integer v) {
    char text[24];
    int n = snprintf(text, sizeof text, "%lld", (long long)v);
    put(e, text, (size_t)n);
}

static const char *key_text(const struct enc_key *k) {
    return k->is_int ? k->num : k->s;
}

/* JavaScript's array-index test: canonical decimal, at most 2^32 - 2. */
static int key_index(const char *s, size_t len, uint32_t *index) {
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

static int key_cmp(const void *pa, const void *pb) {
    const struct enc_key *a = pa, *b = pb;
    int c;
    if (a->is_index != b->is_index)
        return a->is_index ? -1 : 1;
    if (a->is_index)
        return a->index < b->index ? -1 : a->index > b->index;
    c = memcmp(key_text(a), key_text(b), a->len < b->len ? a->len : b->len);
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* Sorts n keys: insertion sort for the small objects most payloads hold
 * (no call per comparison's setup, no allocation), qsort past that. */
static void keys_sort(struct enc_key *keys, size_t n) {
    if (n > 16) {
        qsort(keys, n, sizeof *keys, key_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        struct enc_key k = keys[i];
        size_t j = i;
        while (j > 0 && key_cmp(&keys[j - 1], &k) > 0) {
            keys[j] = keys[j - 1];
            j--;
        }
        keys[j] = k;
    }
}

static void enc_value(struct enc *e, int idx, int depth);
static void dec_new_table(lua_State *L, int array);
static void dec_number_text(lua_State *L, const char *text, size_t n);

/* One more key slot in the scratch array; returns its index. */
static size_t keys_push(struct enc *e) {
    if (e->nkeys == e->capkeys) {
        size_t cap = e->capkeys * 2;
        struct enc_key *p = e->keys == e->small ? malloc(cap * sizeof *p)
                                                : realloc(e->keys, cap * sizeof *p);
        if (!p)
            enc_fail(e, "not enough memory");
        if (e->keys == e->small)
            memcpy(p, e->small, sizeof e->small);
        e->keys = p;
        e->capkeys = cap;
    }
    return e->nkeys++;
}

/* Past this many keys a table's values are fetched by key rather than
 * held on the stack (Lua's stack has a hard limit of a million slots). */
#define ENC_STACK_KEYS 100000

/* What a pass over a table found: its keys are in e->keys[base..base+n). */
struct enc_scan {
    size_t n;          /* how many keys */
    lua_Integer maxk;  /* the largest positive integer key */
    int positive_ints; /* every key is an integer >= 1 */
};

/* Records the key at -2 (of Lua type kt, already checked) in a new slot
 * of e->keys. */
static void enc_key_add(struct enc *e, int kt) {
    lua_State *L = e->L;
    size_t ki = keys_push(e); /* may move e->keys */
    struct enc_key *k = &e->keys[ki];

    k->is_int = kt == LUA_TNUMBER;
    if (k->is_int) {
        k->ikey = lua_tointeger(L, -2);
        k->len = (size_t)snprintf(k->num, sizeof k->num, "%lld", (long long)k->ikey);
        k->s = NULL;
    } else {
        k->s = lua_tolstring(L, -2, &k->len); /* a string already: no conversion */
    }
    k->is_index = key_index(key_text(k), k->len, &k->index);
}

/* One pass over the table at idx: collects its keys (e->keys from base)
 * and, unless by_key, leaves each value on the stack above top (its slot
 * in the key's vidx), so an object's values are not looked up again by key
 * (which would hash every key string once more). Returns 0, or -1 with the
 * stack and e->keys back as they were when the values do not fit on the
 * stack (then the caller collects again by_key). */
static int enc_collect(struct enc *e, int idx, int top, size_t base, int by_key,
                       struct enc_scan *s) {
    lua_State *L = e->L;

    s->maxk = 0;
    s->n = 0;
    s->positive_ints = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) { /* ... [values] key value */
        int kt = lua_type(L, -2);
        if (kt == LUA_TNUMBER && lua_isinteger(L, -2)) {
            lua_Integer ik = lua_tointeger(L, -2);
            if (ik < 1)
                s->positive_ints = 0;
            else if (ik > s->maxk)
                s->maxk = ik;
        } else if (kt == LUA_TSTRING) {
            s->positive_ints = 0;
        } else {
            lua_pop(L, 2);
            enc_fail(e, "cannot encode a table key of type %s",
                     kt == LUA_TNUMBER ? "non-integer number" : lua_typename(L, kt));
        }
        enc_key_add(e, kt);
        s->n++;
        if (by_key) {
            e->keys[e->nkeys - 1].vidx = 0;
            lua_pop(L, 1);
            continue;
        }
        if (s->n > ENC_STACK_KEYS || !lua_checkstack(L, 4)) { /* too many to hold every value */
            lua_settop(L, top);
            e->nkeys = base;
            return -1;
        }
        e->keys[e->nkeys - 1].vidx = top + (int)s->n;
        lua_insert(L, -2); /* the value stays, the key goes on top for lua_next */
    }
    return 0;
}

/* Writes the table at idx as an array of its values 1..maxk (holes as
 * null); with e->clone, pushes the clone. */
static void enc_array(struct enc *e, int idx, lua_Integer maxk, int depth) {
    lua_State *L = e->L;
    int ctab = 0;

    if (e->clone) {
        dec_new_table(L, 1);
        ctab = lua_gettop(L);
    }
    PUTS(e, "[");
    for (lua_Integer k = 1; k <= maxk; k++) {
        if (k > 1)
            PUTS(e, ",");
        lua_rawgeti(L, idx, k);
        enc_value(e, lua_absindex(L, -1), depth + 1);
        if (ctab)
            lua_rawseti(L, ctab, k);
        lua_pop(L, 1);
    }
    PUTS(e, "]");
}

/* Writes the table at idx as an object, its n keys (collected from base,
 * values on the stack above top or fetched by key) in the encoder's
 * order; refuses a key written twice (1 and "1"). Leaves the stack at top,
 * plus the clone with e->clone; e->keys back to base. */
static void enc_object(struct enc *e, int idx, int top, size_t base, size_t n, int depth) {
    lua_State *L = e->L;
    int ctab = 0;

    keys_sort(e->keys + base, n);
    for (size_t i = 1; i < n; i++) {
        const struct enc_key *a = &e->keys[base + i - 1], *b = &e->keys[base + i];
        if (key_cmp(a, b) == 0)
            enc_fail(e, "table has both %s and \"%s\" as keys", key_text(b), key_text(b));
    }
    if (e->clone) {
        luaL_checkstack(L, 4, "JSON nesting");
        dec_new_table(L, 0);
        ctab = lua_gettop(L);
    }
    PUTS(e, "{");
    for (size_t i = 0; i < n; i++) {
        const struct enc_key *k = &e->keys[base + i]; /* again each time: e->keys may move */
        int vidx = k->vidx, fetched = 0;
        if (i)
            PUTS(e, ",");
        put_string(e, key_text(k), k->len);
        PUTS(e, ":");
        if (!vidx) {
            if (k->is_int)
                lua_rawgeti(L, idx, k->ikey);
            else {
                lua_pushlstring(L, k->s, k->len);
                lua_rawget(L, idx);
            }
            vidx = lua_gettop(L);
            fetched = 1;
        }
        if (ctab) /* the key as decoding reads it: always a string */
            lua_pushlstring(L, key_text(k), k->len);
        enc_value(e, vidx, depth + 1);
        if (ctab)
            lua_rawset(L, ctab);
        if (fetched)
            lua_pop(L, 1);
    }
    PUTS(e, "}");
    if (ctab && ctab != top + 1)
        lua_replace(L, top + 1); /* the clone is all this call leaves */
    lua_settop(L, top + (ctab ? 1 : 0));
    e->nkeys = base;
}

/* Writes the table at idx: an array when its keys are 1..n (a marked
 * array may have holes), else an object; "[]" or "{}" when empty, as
 * marked. A table too big for the stack is collected again with its
 * values fetched by key. */
static void enc_table(struct enc *e, int idx, int depth) {
    lua_State *L = e->L;
    struct enc_scan s;
    size_t base = e->nkeys;
    int marked, top, by_key = 0;

    if (depth >= JSONX_MAX_DEPTH)
        enc_fail(e, "nesting deeper than %d levels (a cycle?)", JSONX_MAX_DEPTH);
    luaL_checkstack(L, 6, "JSON nesting");
    marked = is_marked_array(L, idx);
    top = lua_gettop(L);

    while (enc_collect(e, idx, top, base, by_key, &s) < 0) /* by_key never fails */
        by_key = 1;
    if (s.n == 0) {
        if (marked)
            PUTS(e, "[]");
        else
            PUTS(e, "{}");
        if (e->clone) /* as jsonx_decode makes them */
            dec_new_table(L, marked);
        return;
    }
    /* Keys 1..n make an array; a marked array may have holes (null). */
    if (s.positive_ints &&
        ((size_t)s.maxk == s.n || (marked && (size_t)s.maxk <= 2 * s.n + 64))) {
        lua_settop(L, top);
        e->nkeys = base;
        enc_array(e, idx, s.maxk, depth);
        return;
    }
    enc_object(e, idx, top, base, s.n, depth);
}

/* Writes the value at idx; with e->clone, also pushes what decoding the
 * bytes written gives: nil (an array's hole) and json.null as json.null,
 * a float as its text reads back (1.0 -> integer 1), a string as itself,
 * a table as enc_table makes it. */
static void enc_value(struct enc *e, int idx, int depth) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        PUTS(e, "null");
        if (e->clone)
            jsonx_push_null(L);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            PUTS(e, "true");
        else
            PUTS(e, "false");
        if (e->clone)
            lua_pushboolean(L, lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            put_integer(e, lua_tointeger(L, idx));
            if (e->clone)
                lua_pushinteger(L, lua_tointeger(L, idx));
        } else {
            char text[32];
            double d = (double)lua_tonumber(L, idx);
            size_t n;
            if (!isfinite(d))
                enc_fail(e, "cannot encode NaN or infinity");
            n = jsonx_number_format(d, text);
            put(e, text, n);
            if (e->clone)
                dec_number_text(L, text, n);
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        put_string(e, s, len);
        if (e->clone)
            lua_pushvalue(L, idx);
        break;
    }
    case LUA_TTABLE:
        enc_table(e, idx, depth);
        break;
    case LUA_TLIGHTUSERDATA:
        if (jsonx_is_null(L, idx)) {
            PUTS(e, "null");
            if (e->clone)
                jsonx_push_null(L);
            break;
        }
        /* fall through */
    default:
        enc_fail(e, "cannot encode a %s value", luaL_typename(L, idx));
    }
}

static int enc_protected(lua_State *L) {
    struct enc *e = lua_touserdata(L, 1);
    enc_value(e, 2, 0);
    return e->clone ? 1 : 0;
}

static int encode(lua_State *L, int idx, struct util_buf *out, size_t max, int clone, char *err,
                  size_t errlen) {
    struct enc e;
    int status;

    memset(&e, 0, sizeof e);
    e.clone = clone;
    e.L = L;
    e.out = out;
    e.start = out->len;
    e.max = max;
    e.keys = e.small;
    e.capkeys = sizeof e.small / sizeof *e.small;
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "not enough memory");
        return -1;
    }
    lua_pushcfunction(L, enc_protected);
    lua_pushlightuserdata(L, &e);
    lua_pushvalue(L, idx);
    status = lua_pcall(L, 2, clone ? 1 : 0, 0);
    if (e.keys != e.small)
        free(e.keys);
    if (status == LUA_OK)
        return 0;
    if (lua_touserdata(L, -1) == (void *)&e)
        snprintf(err, errlen, "%s", e.err);
    else if (status == LUA_ERRMEM)
        snprintf(err, errlen, "not enough memory");
    else
        snprintf(err, errlen, "%s", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
    out->len = e.start;
    if (out->p)
        out->p[out->len] = '\0';
    return -1;
}

int jsonx_encode(lua_State *L, int idx, struct util_buf *out, size_t max, char *err,
                 size_t errlen) {
    return encode(L, idx, out, max, 0, err, errlen);
}

int jsonx_encode_clone(lua_State *L, int idx, struct util_buf *out, size_t max, char *err,
                       size_t errlen) {
    return encode(L, idx, out, max, 1, err, errlen);
}

/* ---- decoder ---- */

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
        const char *key;
        size_t keylen;
        json_t *v;
        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_keylen_foreach((json_t *)j, key, keylen, v) {
            lua_pushlstring(L, key, keylen);
            push_rec(L, v, depth + 1);
            lua_rawset(L, -3);
        }
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

/* The direct decoder: JSON text straight onto the Lua stack, no jansson
 * tree in between (the ingest path decodes every body, its headers and,
 * when routing, its data: one pass and no intermediate allocations each).
 * It accepts exactly what jsonx_parse accepts (RFC 8259, \u0000 allowed in
 * strings but not in keys, valid UTF-8 only, no lone surrogates, nesting up
 * to JSONX_MAX_DEPTH, an integer too big for 64 bits read as a double, a
 * number whose magnitude overflows a double refused) and reports errors the
 * same way: "invalid JSON at line L column C: reason". */

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
 * two, into the code point's UTF-8 in u8 (*n bytes). key: an object key (a
 * NUL is refused). Returns the escape's length in bytes (6 or 12), or -1
 * (d->msg set). */
static int dec_unicode(struct dec *d, const unsigned char *q, int key, char *u8, size_t *n) {
    unsigned cp, lo;
    int used = 6;

    if (d->end - q < 6 || hex4(q + 2, &cp) < 0) {
        dec_fail(d, q, "invalid escape");
        return -1;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (d->end - q < 12 || q[6] != '\\' || q[7] != 'u' || hex4(q + 8, &lo) < 0 ||
            lo < 0xDC00 || lo > 0xDFFF) {
            dec_fail(d, q, "invalid Unicode '\\u%04X'", cp);
            return -1;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        used = 12;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        dec_fail(d, q, "invalid Unicode '\\u%04X'", cp);
        return -1;
    }
    if (cp == 0 && key) {
        dec_fail(d, q, "NUL byte in object key not supported");
        return -1;
    }
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
    case '"': luaL_addchar(b, '"'); break;
    case '\\': luaL_addchar(b, '\\'); break;
    case '/': luaL_addchar(b, '/'); break;
    case 'b': luaL_addchar(b, '\b'); break;
    case 'f': luaL_addchar(b, '\f'); break;
    case 'n': luaL_addchar(b, '\n'); break;
    case 'r': luaL_addchar(b, '\r'); break;
    case 't': luaL_addchar(b, '\t'); break;
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

/* Parses the string at d->p (on its opening quote) and pushes it. key: an
 * object key (a NUL in it is refused). Returns 0 or -1 (d->msg set). A
 * string without escapes is pushed straight from the text. */
static int dec_string(struct dec *d, int key) {
    const unsigned char *start = ++d->p, *q = start;
    luaL_Buffer b;
    int buffered = 0, used;

    for (;;) {
        /* Fast scan over plain ASCII. */
        q += plain_run(q, (size_t)(d->end - q));
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
            size_t n = utf8_seq(q, (size_t)(d->end - q));
            if (!n) {
                dec_fail(d, q, "unable to decode byte 0x%x", *q);
                return -1;
            }
            q += n;
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
    if (isinf(v)) {
        dec_fail(d, start, "real number overflow");
        return -1;
    }
    lua_pushnumber(d->L, (lua_Number)v);
    return 0;
}

/* Pushes a new table as the decoder starts an object or an array (the
 * encoder's clones start theirs the same way, so both fill alike). */
static void dec_new_table(lua_State *L, int array) {
    if (array) {
        lua_createtable(L, 0, 0);
        jsonx_mark_array(L, -1);
    } else {
        lua_createtable(L, 0, 4);
    }
}

/* Pushes the number the decoder reads from text (n bytes, written by
 * jsonx_number_format, so well formed). */
static void dec_number_text(lua_State *L, const char *text, size_t n) {
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

/* Parses the object at d->p (on its '{') and pushes it as a table, its
 * members set in the order written (a later duplicate wins). */
static int dec_object(struct dec *d, int depth) {
    lua_State *L = d->L;

    if (!lua_checkstack(L, 4)) {
        dec_fail(d, d->p, "maximum parsing depth reached");
        return -1;
    }
    d->p++;
    dec_new_table(L, 0);
    dec_ws(d);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
        return 0;
    }
    for (;;) {
        dec_ws(d);
        if (d->p >= d->end || *d->p != '"') {
            dec_near(d, d->p, "string or '}' expected");
            return -1;
        }
        if (dec_string(d, 1) < 0)
            return -1;
        dec_ws(d);
        if (d->p >= d->end || *d->p != ':') {
            dec_near(d, d->p, "':' expected");
            return -1;
        }
        d->p++;
        if (dec_value(d, depth + 1) < 0)
            return -1;
        lua_rawset(L, -3);
        dec_ws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == '}') {
            d->p++;
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
    dec_new_table(L, 1);
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
