/* jsonx_encode.c -- Lua values -> JSON text, byte for byte what JavaScript's
 * JSON.stringify prints for the same data (jsonx.h says how), and the same
 * string escaping for C strings (jsonx_append_string). With a clone, the
 * encoder also builds what jsonx_decode would make of the text it writes.
 * Invariant: the encoder runs under its own pcall and raises its failures
 * (enc_fail) as a light userdata, so raising allocates nothing; its C
 * scratch memory is freed by the caller of that pcall either way.
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

/* ---- the writer ---- */

/* An object key, ready to sort. Keys live in the encoder's scratch array
 * (e->keys), which nested tables may grow and move: nothing keeps a
 * pointer into it across a recursive call, and an integer key's text is
 * found through key_text, never stored as a pointer. */
struct enc_key {
    const char *s; /* a string key's text (the table keeps the string alive) */
    size_t len;
    int is_int;   /* an integer key: its text is in num */
    int is_index; /* an array index ("0".."4294967294"): sorted first */
    uint32_t index;
    int vidx;         /* the stack slot holding its value, 0 when fetched by key */
    lua_Integer rank; /* its place in the received order (1..), 0 when not in it */
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

/* ---- strings ---- */

/* The escape JSON.stringify writes for c, one of '"', '\\' or a C0
 * control (\b \f \n \r \t, else \u00xx in lowercase hex), into esc;
 * returns its length. The one JSON string escape: both writers below use
 * it. */
static inline size_t json_escape(unsigned c, char esc[6]) {
    static const char hex[] = "0123456789abcdef";

    esc[0] = '\\';
    switch (c) {
    case '"':
        esc[1] = '"';
        return 2;
    case '\\':
        esc[1] = '\\';
        return 2;
    case '\b':
        esc[1] = 'b';
        return 2;
    case '\f':
        esc[1] = 'f';
        return 2;
    case '\n':
        esc[1] = 'n';
        return 2;
    case '\r':
        esc[1] = 'r';
        return 2;
    case '\t':
        esc[1] = 't';
        return 2;
    default:
        memcpy(esc + 1, "u00", 3);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
}

/* The surrogate (U+D800..U+DFFF) in three-byte form at s + i, or 0. */
static unsigned surrogate_at(const unsigned char *s, size_t len, size_t i) {
    if (len - i < 3 || s[i] != 0xed || s[i + 1] < 0xa0 || s[i + 1] > 0xbf ||
        (s[i + 2] & 0xc0) != 0x80)
        return 0;
    return 0xd000u | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
}

/* At s + i, bytes that are not UTF-8 (run: where the bytes not yet written
 * start): a surrogate in three-byte form, as a lone "\ud800" escape that
 * JSON.parse reads into a string (the decoder's form for it), is written as
 * JSON.stringify writes a lone surrogate, "\ud800"; a high one followed by
 * a low one as the character they make together. Anything else fails.
 * Returns the bytes consumed. */
static size_t put_surrogate(struct enc *e, const unsigned char *s, size_t len, size_t i,
                            size_t run) {
    static const char hex[] = "0123456789abcdef";
    unsigned hi = surrogate_at(s, len, i), lo;
    char out[6];

    if (!hi)
        enc_fail(e, "invalid UTF-8 in a string");
    if (i > run)
        put(e, s + run, i - run);
    lo = hi < 0xdc00 ? surrogate_at(s, len, i + 3) : 0;
    if (lo >= 0xdc00) {
        unsigned cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
        out[0] = (char)(0xf0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        put(e, out, 4);
        return 6;
    }
    memcpy(out, "\\u", 2);
    out[2] = hex[(hi >> 12) & 15];
    out[3] = hex[(hi >> 8) & 15];
    out[4] = hex[(hi >> 4) & 15];
    out[5] = hex[hi & 15];
    put(e, out, 6);
    return 3;
}

/* A string as JSON.stringify writes it: only '"', '\\' and C0 controls are
 * escaped (json_escape); a lone surrogate as its escape (put_surrogate). */
static void put_string(struct enc *e, const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;

    i = jsonx_plain_run(s, len);
    if (i == len) {
        put_quoted(e, str, len);
        return;
    }
    PUTS(e, "\"");
    while (i < len) {
        unsigned c;
        char esc[6];
        size_t elen;

        /* Plain ASCII runs (most of any payload) go by in a tight loop. */
        i += jsonx_plain_run(s + i, len - i);
        if (i >= len)
            break;
        c = s[i];
        if (c >= 0x80) {
            size_t n = util_utf8_seq(s + i, len - i);
            if (!n) {
                n = put_surrogate(e, s, len, i, run);
                run = i + n;
            }
            i += n;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        elen = json_escape(c, esc);
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
    const unsigned char *s = (const unsigned char *)str;
    size_t i, run = 0, start = out->len;

    if (jsonx_plain_run(s, len) == len) { /* nothing to check or escape */
        if (util_buf_append(out, "\"", 1) < 0 || util_buf_append(out, str, len) < 0 ||
            util_buf_append(out, "\"", 1) < 0)
            goto fail;
        return 0;
    }
    for (i = 0; i < len;) { /* valid UTF-8 first: nothing is appended otherwise */
        size_t n = util_utf8_seq(s + i, len - i);
        if (!n)
            return -1;
        i += n;
    }
    if (util_buf_append(out, "\"", 1) < 0)
        goto fail;
    for (i = 0; i < len; i++) {
        unsigned c = s[i];
        char esc[6];
        size_t elen;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        elen = json_escape(c, esc);
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

/* ---- numbers and object keys ---- */

/* Beyond +-2^53 an integer is not exact as a JavaScript number: it is
 * written as the double it becomes there (9007199254740993 ->
 * 9007199254740992, 2^60 -> 1152921504606847000), as JSON.stringify would
 * write what JSON.parse read. */
#define JS_SAFE_INT 9007199254740992LL

/* Writes integer v; returns 1 when it went out as a double (then a clone
 * holds what its text reads back as), else 0. text needs 32 bytes. */
static int put_integer(struct enc *e, lua_Integer v, char *text, size_t *n) {
    if (v > JS_SAFE_INT || v < -JS_SAFE_INT) {
        *n = jsonx_number_format((double)v, text);
        put(e, text, *n);
        return 1;
    }
    *n = (size_t)snprintf(text, 32, "%lld", (long long)v);
    put(e, text, *n);
    return 0;
}

static const char *key_text(const struct enc_key *k) {
    return k->is_int ? k->num : k->s;
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

/* key_cmp for keys with a received order: array indexes as always, then
 * the received keys in that order, then the others as key_cmp puts them. */
static int key_cmp_ranked(const void *pa, const void *pb) {
    const struct enc_key *a = pa, *b = pb;
    if (!a->is_index && !b->is_index && a->rank != b->rank) {
        if (a->rank && b->rank)
            return a->rank < b->rank ? -1 : 1;
        return a->rank ? -1 : 1;
    }
    return key_cmp(a, b);
}

/* Sorts n keys by cmp: insertion sort for the small objects most payloads
 * hold (no call per comparison's setup, no allocation), qsort past that. */
static inline void keys_sort_by(struct enc_key *keys, size_t n,
                                int (*cmp)(const void *, const void *)) {
    if (n > 16) {
        qsort(keys, n, sizeof *keys, cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        struct enc_key k = keys[i];
        size_t j = i;
        while (j > 0 && cmp(&keys[j - 1], &k) > 0) {
            keys[j] = keys[j - 1];
            j--;
        }
        keys[j] = k;
    }
}

static void keys_sort(struct enc_key *keys, size_t n) {
    keys_sort_by(keys, n, key_cmp);
}

static void enc_value(struct enc *e, int idx, int depth);

/* Puts the n keys at keys (sorted by key_cmp) in the received order of the
 * table at idx when it has one (jsonx_int.h), and pushes that list, or nil.
 * Each listed key's first appearance ranks it; a listed key the table no
 * longer holds is passed over. */
static void keys_order(struct enc *e, int idx, struct enc_key *keys, size_t n) {
    lua_State *L = e->L;
    size_t first = 0; /* keys[first..n): the non-index keys, bytewise */
    lua_Integer m;
    int ranked = 0;

    lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_order_key);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_type(L, -1) != LUA_TTABLE)
        return;
    while (first < n && keys[first].is_index)
        first++;
    for (size_t i = first; i < n; i++)
        keys[i].rank = 0;
    m = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer r = 1; r <= m; r++) {
        struct enc_key probe;
        size_t lo = first, hi = n;
        if (lua_rawgeti(L, -1, r) != LUA_TSTRING) {
            lua_pop(L, 1);
            continue;
        }
        probe.is_int = 0;
        probe.is_index = 0;
        probe.s = lua_tolstring(L, -1, &probe.len);
        while (lo < hi) { /* binary search: key_cmp's order among non-index keys */
            size_t mid = lo + (hi - lo) / 2;
            int c = key_cmp(&keys[mid], &probe);
            if (c == 0) {
                if (!keys[mid].rank) {
                    keys[mid].rank = r;
                    ranked = 1;
                }
                break;
            }
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        lua_pop(L, 1);
    }
    if (ranked)
        keys_sort_by(keys + first, n - first, key_cmp_ranked);
}

/* One more key slot in the scratch array; returns its index. */
static size_t keys_push(struct enc *e) {
    if (e->nkeys == e->capkeys) {
        size_t cap = e->capkeys * 2;
        struct enc_key *p =
            e->keys == e->small ? malloc(cap * sizeof *p) : realloc(e->keys, cap * sizeof *p);
        if (!p)
            enc_fail(e, "not enough memory");
        if (e->keys == e->small)
            memcpy(p, e->small, sizeof e->small);
        e->keys = p;
        e->capkeys = cap;
    }
    return e->nkeys++;
}

/* ---- tables and values ---- */

/* Whether the table at idx carries the array mark (json.array). */
static int is_marked_array(lua_State *L, int idx) {
    int marked;
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &jsonx_array_key);
    marked = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return marked;
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
    k->is_index = jsonx_key_index(key_text(k), k->len, &k->index);
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
        jsonx_new_table(L, 1);
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
    luaL_checkstack(L, 6, "JSON nesting");
    keys_order(e, idx, e->keys + base, n); /* pushes the received order, or nil */
    if (e->clone && !lua_isnil(L, -1)) {   /* the clone's: the keys as written */
        lua_Integer r = 0;
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            const struct enc_key *k = &e->keys[base + i];
            if (k->is_index)
                continue;
            lua_pushlstring(L, key_text(k), k->len);
            lua_rawseti(L, -2, ++r);
        }
        lua_replace(L, -2);
    }
    if (e->clone) {
        jsonx_new_object(L, n);
        ctab = lua_gettop(L);
        if (!lua_isnil(L, -2))
            jsonx_set_order(L, ctab, -2);
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
            jsonx_new_table(L, marked);
        return;
    }
    /* Keys 1..n make an array; a marked array may have holes (null). */
    if (s.positive_ints && ((size_t)s.maxk == s.n || (marked && (size_t)s.maxk <= 2 * s.n + 64))) {
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
            char text[32];
            size_t n;
            int as_double = put_integer(e, lua_tointeger(L, idx), text, &n);
            if (e->clone && as_double)
                jsonx_push_number_text(L, text, n);
            else if (e->clone)
                lua_pushinteger(L, lua_tointeger(L, idx));
        } else {
            char text[32];
            double d = (double)lua_tonumber(L, idx);
            size_t n;
            if (!isfinite(d)) { /* JSON.stringify writes NaN and infinities as null */
                PUTS(e, "null");
                if (e->clone)
                    jsonx_push_null(L);
                break;
            }
            n = jsonx_number_format(d, text);
            put(e, text, n);
            if (e->clone)
                jsonx_push_number_text(L, text, n);
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

/* ---- entry points ---- */

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
