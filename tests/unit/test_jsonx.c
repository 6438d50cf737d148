/* test_jsonx.c -- the JSON <-> Lua bridge: JSON.stringify-compatible output
 * (numbers, escapes, key order, arrays vs objects), decoding, and errors.
 * Expected strings were checked against node's JSON.stringify.
 * SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "harness.h"
#include "jsonx.h"

static lua_State *L;
static char last_err[256];

/* Evaluates a Lua expression, encodes it; returns a static copy or NULL. */
static const char *enc(const char *expr) {
    static char out[4096];
    struct util_buf b = {0};
    char code[2048];
    int rc;

    snprintf(code, sizeof code, "return %s", expr);
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        return NULL;
    }
    rc = jsonx_encode(L, -1, &b, 0, last_err, sizeof last_err);
    lua_settop(L, 0);
    if (rc < 0) {
        util_buf_free(&b);
        return NULL;
    }
    snprintf(out, sizeof out, "%s", b.p ? b.p : "");
    util_buf_free(&b);
    return out;
}

/* Decodes text with json.decode, re-encodes it. */
static const char *roundtrip(const char *text) {
    static char out[4096];
    struct util_buf b = {0};
    int rc;

    if (jsonx_decode(L, text, strlen(text), JSON_DECODE_ANY, last_err, sizeof last_err) < 0)
        return NULL;
    rc = jsonx_encode(L, -1, &b, 0, last_err, sizeof last_err);
    lua_settop(L, 0);
    if (rc < 0) {
        util_buf_free(&b);
        return NULL;
    }
    snprintf(out, sizeof out, "%s", b.p ? b.p : "");
    util_buf_free(&b);
    return out;
}

/* Runs a Lua chunk that returns a boolean. */
static int lua_true(const char *code) {
    int ok;
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        return 0;
    }
    ok = lua_toboolean(L, -1);
    lua_settop(L, 0);
    return ok;
}

static const char *num(double d) {
    static char out[32];
    jsonx_number_format(d, out);
    return out;
}

static void test_numbers(void) {
    CHECK_STR_EQ(num(40.0), "40");
    CHECK_STR_EQ(num(0.1), "0.1");
    CHECK_STR_EQ(num(0.1 + 0.2), "0.30000000000000004");
    CHECK_STR_EQ(num(1e21), "1e+21");
    CHECK_STR_EQ(num(1e20), "100000000000000000000");
    CHECK_STR_EQ(num(1e-7), "1e-7");
    CHECK_STR_EQ(num(1e-6), "0.000001");
    CHECK_STR_EQ(num(1.5e-7), "1.5e-7");
    CHECK_STR_EQ(num(-1.5), "-1.5");
    CHECK_STR_EQ(num(-0.0), "0");
    CHECK_STR_EQ(num(123.456), "123.456");
    CHECK_STR_EQ(num(5e-324), "5e-324");
    CHECK_STR_EQ(num(1.7976931348623157e308), "1.7976931348623157e+308");
    CHECK_STR_EQ(num(9007199254740993.0), "9007199254740992");
    CHECK_STR_EQ(num(ldexp(1, -1022)), "2.2250738585072014e-308");
    CHECK_STR_EQ(num(ldexp(1, 100)), "1.2676506002282294e+30");

    CHECK_STR_EQ(enc("40.0"), "40");
    CHECK_STR_EQ(enc("12"), "12");
    /* past +-2^53 an integer goes out as the double JavaScript holds */
    CHECK_STR_EQ(enc("math.maxinteger"), "9223372036854776000");
    CHECK_STR_EQ(enc("math.mininteger"), "-9223372036854776000");
    CHECK_STR_EQ(enc("9007199254740992"), "9007199254740992");
    CHECK_STR_EQ(enc("-9007199254740992"), "-9007199254740992");
    CHECK_STR_EQ(enc("9007199254740993"), "9007199254740992");
    CHECK_STR_EQ(enc("-9007199254740993"), "-9007199254740992");
    CHECK_STR_EQ(enc("9007199254740995"), "9007199254740996");
    CHECK_STR_EQ(enc("1 << 60"), "1152921504606847000");
    CHECK_STR_EQ(enc("{ n = 123456789012345678 }"), "{\"n\":123456789012345680}");
    CHECK_STR_EQ(roundtrip("[9007199254740993,18014398509481985,-9223372036854775808]"),
                 "[9007199254740992,18014398509481984,-9223372036854776000]");
    CHECK_STR_EQ(enc("{ 1.0, 2.5, -3, 1e300 }"), "[1,2.5,-3,1e+300]");
    /* NaN and infinities as JSON.stringify writes them */
    CHECK_STR_EQ(enc("0/0"), "null");
    CHECK_STR_EQ(enc("{ x = math.huge }"), "{\"x\":null}");
    CHECK_STR_EQ(enc("{ -math.huge, 1 }"), "[null,1]");
    /* past the double range JSON.parse reads infinity; 1e-400 is 0 */
    CHECK_STR_EQ(roundtrip("[1e400,-1E400,1e-400,-1e-400]"), "[null,null,0,0]");
    CHECK(lua_true("return json.decode('1e400') == math.huge"));
}

static void test_strings(void) {
    CHECK_STR_EQ(enc("'plain'"), "\"plain\"");
    CHECK_STR_EQ(enc("'q\"b\\\\s/'"), "\"q\\\"b\\\\s/\"");
    CHECK_STR_EQ(enc("'\\b\\f\\n\\r\\t'"), "\"\\b\\f\\n\\r\\t\"");
    CHECK_STR_EQ(enc("'\\0\\1\\31\\127'"), "\"\\u0000\\u0001\\u001f\x7f\"");
    CHECK_STR_EQ(enc("'h\\u{e9}llo \\u{2713} \\u{1F600} \\u{2028}'"),
                 "\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe2\x80\xa8\"");
    CHECK(enc("'\\xff'") == NULL);
    CHECK_STR_EQ(last_err, "invalid UTF-8 in a string");
    /* a surrogate in three-byte form (a lone \\ud800 decodes to it): the
     * escape JSON.stringify writes for it; high + low as their character */
    CHECK_STR_EQ(enc("'\\xed\\xa0\\x80'"), "\"\\ud800\"");
    CHECK_STR_EQ(enc("'a\\xed\\xbf\\xbfb\\xed\\xa0\\xbd'"), "\"a\\udfffb\\ud83d\"");
    CHECK_STR_EQ(enc("'\\xed\\xa0\\xbd\\xed\\xb8\\x80'"), "\"\xf0\x9f\x98\x80\"");
    CHECK(enc("'\\xed\\xa0'") == NULL);
    CHECK(enc("'\\xc0\\xaf'") == NULL);           /* overlong */
    CHECK(enc("'\\xf4\\x90\\x80\\x80'") == NULL); /* past U+10FFFF */
    CHECK(enc("'abc\\xe2\\x9c'") == NULL);        /* truncated */
    CHECK(enc("{ ['\\xff'] = 1 }") == NULL);      /* keys too */
}

static void test_tables(void) {
    CHECK_STR_EQ(enc("{}"), "{}");
    CHECK_STR_EQ(enc("json.array()"), "[]");
    CHECK_STR_EQ(enc("json.array({})"), "[]");
    CHECK_STR_EQ(enc("{ 1, 2, 3 }"), "[1,2,3]");
    CHECK_STR_EQ(enc("{ 'a', { true, false }, {} }"), "[\"a\",[true,false],{}]");
    CHECK_STR_EQ(enc("{ [1] = 1, [3] = 3 }"), "{\"1\":1,\"3\":3}");
    CHECK_STR_EQ(enc("{ 1, 2, x = 3 }"), "{\"1\":1,\"2\":2,\"x\":3}");
    CHECK_STR_EQ(enc("{ [0] = 'z', [1] = 'o' }"), "{\"0\":\"z\",\"1\":\"o\"}");
    CHECK_STR_EQ(enc("{ [-1] = 1 }"), "{\"-1\":1}");
    /* a marked array keeps its holes as null, like a JavaScript array */
    CHECK_STR_EQ(enc("json.array({ 1, nil, 3 })"), "[1,null,3]");
    /* sorted keys, in the order JSON.stringify(JSON.parse(x)) keeps */
    CHECK_STR_EQ(enc("{ b = 1, a = 2, ['10'] = 3, ['2'] = 4, ['$'] = 5, A = 6, ['01'] = 7 }"),
                 "{\"2\":4,\"10\":3,\"$\":5,\"01\":7,\"A\":6,\"a\":2,\"b\":1}");
    CHECK_STR_EQ(enc("{ ['4294967294'] = 1, ['4294967295'] = 2, ['3'] = 3 }"),
                 "{\"3\":3,\"4294967294\":1,\"4294967295\":2}");
    CHECK_STR_EQ(enc("{ z = { y = { x = {} } }, a = json.null }"),
                 "{\"a\":null,\"z\":{\"y\":{\"x\":{}}}}");
    CHECK_STR_EQ(enc("{ s = 'x', n = 1, t = true, f = false, l = { 'a' } }"),
                 "{\"f\":false,\"l\":[\"a\"],\"n\":1,\"s\":\"x\",\"t\":true}");
    CHECK_STR_EQ(enc("nil"), "null");
    CHECK_STR_EQ(enc("json.null"), "null");

    /* errors */
    CHECK(enc("{ f = print }") == NULL);
    CHECK_STR_EQ(last_err, "cannot encode a function value");
    CHECK(enc("{ [true] = 1 }") == NULL);
    CHECK_STR_EQ(last_err, "cannot encode a table key of type boolean");
    CHECK(enc("{ [1.5] = 1 }") == NULL);
    CHECK_STR_EQ(last_err, "cannot encode a table key of type non-integer number");
    CHECK(enc("(function() local t = {} t.self = t return t end)()") == NULL);
    CHECK_STR_EQ(last_err, "nesting deeper than 2048 levels (a cycle?)");
    CHECK(enc("{ [1] = 'a', ['1'] = 'b' }") == NULL);
    CHECK(enc("coroutine.create(print)") == NULL);
    CHECK_STR_EQ(last_err, "cannot encode a thread value");
    /* metamethods are not consulted */
    CHECK_STR_EQ(enc("setmetatable({ a = 1 }, { __index = { b = 2 }, __pairs = error })"),
                 "{\"a\":1}");
}

/* Objects bigger than the insertion sort's range, integer keys beside
 * nested tables that grow the encoder's key scratch (it moves), and a
 * table too big to hold its values on the stack: same bytes as the
 * reference built by string concatenation. */
static void test_big_tables(void) {
    CHECK(lua_true("local t, parts = {}, {}"
                   " for i = 1, 40 do"
                   "   local inner = { [-i] = i, x = {} }"
                   "   for j = 1, 20 do inner['k' .. string.format('%02d', j)] = j end"
                   "   t['n' .. string.format('%02d', i)] = inner"
                   "   local ip = { string.format('\"-%d\":%d', i, i) }"
                   "   for j = 1, 20 do ip[#ip + 1] = string.format('\"k%02d\":%d', j, j) end"
                   "   ip[#ip + 1] = '\"x\":{}'"
                   "   local body = table.concat(ip, ',')"
                   "   parts[#parts + 1] = string.format('\"n%02d\":{%s}', i, body)"
                   " end"
                   " t[7] = 'seven' t[-3] = 'minus'"
                   " table.insert(parts, 1, '\"7\":\"seven\"')"
                   " table.insert(parts, 2, '\"-3\":\"minus\"')"
                   " return json.encode(t) == '{' .. table.concat(parts, ',') .. '}'"));
    {
        struct util_buf b = {0};
        char err[128];
        CHECK(luaL_dostring(L, "local t = {} for i = 1, 100005 do t[-i] = i end return t") ==
              LUA_OK);
        CHECK(jsonx_encode(L, -1, &b, 0, err, sizeof err) == 0);
        CHECK(b.len > 1000000 && strncmp(b.p, "{\"-1\":1,\"-10\":10,\"-100\":100,", 28) == 0);
        CHECK(b.len > 20 && strcmp(b.p + b.len - 16, ",\"-99999\":99999}") == 0);
        lua_settop(L, 0);
        util_buf_free(&b);
    }
    CHECK(lua_true("local t = {} for i = 1, 100005 do t['k' .. i] = { i } end t.k5 = print"
                   " local ok, e = pcall(json.encode, t)"
                   " return not ok and e:find('cannot encode a function value', 1, true) ~= nil"));
}

/* jsonx_encode_clone: the bytes jsonx_encode writes, and a value that is
 * what decoding them gives, down to number types, array marks, key types
 * and the order next() visits keys in (the tables are built alike). */
static int clone_same(const char *expr) {
    struct util_buf a = {0}, b = {0};
    char code[4096], err[200];
    int ok = 0;

    snprintf(code, sizeof code, "return %s", expr);
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        return 0;
    }
    if (jsonx_encode(L, 1, &a, 0, err, sizeof err) == 0 &&
        jsonx_encode_clone(L, 1, &b, 0, err, sizeof err) == 0 && lua_gettop(L) == 2 &&
        a.len == b.len && memcmp(a.p, b.p, a.len) == 0 &&
        jsonx_decode(L, b.p, b.len, JSON_DECODE_ANY, err, sizeof err) == 0) {
        lua_getglobal(L, "same_decoded");
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
        ok = lua_pcall(L, 2, 1, 0) == LUA_OK && lua_toboolean(L, -1);
    }
    if (!ok)
        fprintf(stderr, "clone differs for %s: %s\n", expr, err);
    lua_settop(L, 0);
    util_buf_free(&a);
    util_buf_free(&b);
    return ok;
}

static void test_clone(void) {
    CHECK(luaL_dostring(L, "function same_decoded(a, b)\n"
                           "  if type(a) ~= type(b) then return false end\n"
                           "  if type(a) == 'number' then return math.type(a) == math.type(b)\n"
                           "    and (a == b or a ~= a and b ~= b) end\n"
                           "  if type(a) ~= 'table' then return rawequal(a, b) or a == b end\n"
                           "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
                           "  if rawlen(a) ~= rawlen(b) then return false end\n"
                           "  local ka, kb = next(a), next(b)\n"
                           "  while ka ~= nil or kb ~= nil do\n"
                           "    if math.type(ka) ~= math.type(kb) or ka ~= kb then\n"
                           "      return false\n"
                           "    end\n"
                           "    if not same_decoded(a[ka], b[kb]) then return false end\n"
                           "    ka, kb = next(a, ka), next(b, kb)\n"
                           "  end\n"
                           "  return true\n"
                           "end") == LUA_OK);
    CHECK(clone_same("{}"));
    CHECK(clone_same("json.array()"));
    CHECK(clone_same("{ 1, 2.5, 3.0, -0.0, 1e21, 2^63, 1e300, math.mininteger, 0.1 }"));
    CHECK(clone_same("{ 9007199254740993, math.maxinteger, -(1 << 60), 1 << 53 }"));
    CHECK(clone_same("{ a = 1.0, b = { [1] = 'x', [3] = 'y' }, c = { 1, 2 }, [7] = true }"));
    CHECK(clone_same("{ [-1] = 1, [0] = false, ['10'] = 2, ['2'] = 3, z = json.null }"));
    CHECK(clone_same("json.array({ 1, nil, { nil }, nil, 5 })"));
    CHECK(clone_same("{ s = 'caf\\u{e9} \\1 \"q\"', deep = { { { { {} } } } },"
                     " e = json.array() }"));
    CHECK(clone_same("'just a string'"));
    CHECK(clone_same("4.0"));
    CHECK(clone_same("nil"));
    CHECK(clone_same("json.null"));
    CHECK(clone_same("(function() local t = {} for i = 1, 40 do t['k' .. i] = i * 0.5 end"
                     " return t end)()"));
    CHECK(clone_same("(function() local shared = { x = 1 } return { a = shared, b = shared }"
                     " end)()"));
    /* a table past the stack-held limit (values fetched by key) */
    CHECK(clone_same("(function() local t = {} for i = 1, 100005 do t['k' .. i] = { i } end"
                     " return t end)()"));
    /* the original's changes do not reach the clone; failures push nothing */
    {
        struct util_buf b = {0};
        char err[200];
        CHECK(luaL_dostring(L, "return { a = { 1 } }") == LUA_OK);
        CHECK(jsonx_encode_clone(L, 1, &b, 0, err, sizeof err) == 0);
        lua_getfield(L, 1, "a");
        lua_pushinteger(L, 2);
        lua_rawseti(L, -2, 1);
        lua_getfield(L, 2, "a");
        lua_rawgeti(L, -1, 1);
        CHECK_INT_EQ((int)lua_tointeger(L, -1), 1);
        CHECK(!lua_rawequal(L, -2, -4));
        lua_settop(L, 0);
        util_buf_free(&b);
        CHECK(luaL_dostring(L, "return { f = print }") == LUA_OK);
        CHECK(jsonx_encode_clone(L, 1, &b, 0, err, sizeof err) < 0);
        CHECK_STR_EQ(err, "cannot encode a function value");
        CHECK_INT_EQ(lua_gettop(L), 1);
        lua_settop(L, 0);
        util_buf_free(&b);
    }
}

static void test_decode(void) {
    CHECK_STR_EQ(roundtrip("{\"a\":[],\"b\":{},\"c\":[{}],\"d\":[[]]}"),
                 "{\"a\":[],\"b\":{},\"c\":[{}],\"d\":[[]]}");
    CHECK_STR_EQ(roundtrip("{ \"b\" : 1.0, \"a\" : [ 1 , 2e3, -0.5, 1E-7 ] }"),
                 "{\"b\":1,\"a\":[1,2000,-0.5,1e-7]}");
    CHECK_STR_EQ(roundtrip("{\"a\":null,\"b\":[null,1,null]}"), "{\"a\":null,\"b\":[null,1,null]}");
    CHECK_STR_EQ(roundtrip("\"\\u00e9\\ud83d\\ude00\\u0000\\/\""),
                 "\"\xc3\xa9\xf0\x9f\x98\x80\\u0000/\"");
    CHECK_STR_EQ(roundtrip("123456789012345678901234567890"), "1.2345678901234568e+29");
    CHECK_STR_EQ(roundtrip("9223372036854775807"), "9223372036854776000");
    CHECK_STR_EQ(roundtrip("true"), "true");
    CHECK(roundtrip("{\"a\":") == NULL);
    CHECK(strncmp(last_err, "invalid JSON at line 1 column ", 30) == 0);
    CHECK(roundtrip("[1,]") == NULL);
    CHECK(roundtrip("{\"a\" 1}") == NULL);

    /* object or array only unless JSON_DECODE_ANY */
    CHECK(jsonx_decode(L, "\"x\"", 3, 0, last_err, sizeof last_err) < 0);
    CHECK(strstr(last_err, "'[' or '{' expected") != NULL);
    CHECK(jsonx_decode(L, "x", 1, 0, last_err, sizeof last_err) < 0);
    CHECK_STR_EQ(last_err, "invalid JSON at line 1 column 1: '[' or '{' expected near 'x'");
    CHECK_INT_EQ(lua_gettop(L), 0);

    /* Lua sees: arrays as sequences, null as json.null, integers as integers */
    CHECK(lua_true("local t = json.decode('{\"a\":[1,2,3],\"n\":null,\"i\":7,\"f\":7.5}')"
                   " return #t.a == 3 and t.n == json.null and math.type(t.i) == 'integer'"
                   " and math.type(t.f) == 'float' and getmetatable(t.a) == 'json.array'"));
    CHECK(lua_true("return json.encode({ json.decode('[]') }) == '[[]]'"));
    CHECK(lua_true("local ok, e = pcall(json.decode, '{') return not ok and"
                   " e:find('json.decode: invalid JSON at line 1', 1, true) ~= nil"));
    CHECK(lua_true("local ok, e = pcall(json.encode, { f = print }) return not ok and"
                   " e:find('json.encode: cannot encode a function value', 1, true) ~= nil"));
    CHECK(lua_true("local ok = pcall(setmetatable, json.decode('[]'), {}) return not ok"));
    CHECK(lua_true("local ok = pcall(json.array, setmetatable({}, {})) return not ok"));

    /* deep nesting both ways */
    {
        size_t depth = 3000, n = 0;
        char *deep = malloc(depth * 2 + 1);
        for (size_t i = 0; i < depth; i++)
            deep[n++] = '[';
        for (size_t i = 0; i < depth; i++)
            deep[n++] = ']';
        deep[n] = '\0';
        CHECK(jsonx_decode(L, deep, n, 0, last_err, sizeof last_err) < 0);
        CHECK(strstr(last_err, "depth") != NULL);
        free(deep);
    }
}

/* The direct decoder accepts and refuses exactly what jansson does, and
 * builds the same values: edge cases, then mutations of them. */
static int same_as_jansson(const char *t, size_t n, size_t flags) {
    char e1[300], e2[300];
    struct util_buf a = {0}, b = {0};
    int same, r1 = jsonx_decode(L, t, n, flags, e1, sizeof e1);
    json_t *j;
    if (r1 == 0) {
        jsonx_encode(L, -1, &a, 0, e1, sizeof e1);
        lua_settop(L, 0);
    }
    j = jsonx_parse(t, n, flags, e2, sizeof e2);
    if (j) {
        jsonx_push(L, j);
        json_decref(j);
        jsonx_encode(L, -1, &b, 0, e2, sizeof e2);
        lua_settop(L, 0);
    }
    same = (r1 == 0) == (j != NULL) &&
           (r1 < 0 || (a.len == b.len && (!a.len || memcmp(a.p, b.p, a.len) == 0)));
    /* Where the decoder reads what JSON.parse reads and jansson refuses
     * (README: what waybill's JSON promises): only those reasons. */
    if (r1 == 0 && !j &&
        (strstr(e2, "real number overflow") || strstr(e2, "NUL byte in object key") ||
         strstr(e2, "invalid Unicode") || strstr(e2, "unable to decode byte")))
        same = 1;
    if (r1 < 0 && strncmp(e1, "invalid JSON at line ", 21) != 0)
        same = 0;
    if (!same)
        fprintf(stderr, "decoders differ on [%.*s]: %s | %s\n", (int)n, t, r1 ? e1 : a.p,
                j ? b.p : e2);
    util_buf_free(&a);
    util_buf_free(&b);
    return same && lua_gettop(L) == 0;
}

/* Keys keep the order they were received in, as JSON.stringify(JSON.parse(x))
 * keeps it: array indexes first in numeric order, then the rest as received
 * (a duplicate where it first appeared, with its last value); keys a rule
 * adds go after them in the encoder's own order. */
static void test_key_order(void) {
    CHECK_STR_EQ(roundtrip("{\"b\":1,\"a\":2}"), "{\"b\":1,\"a\":2}");
    CHECK_STR_EQ(roundtrip("{\"z\":{\"y\":1,\"x\":[{\"d\":1,\"c\":2}]},\"a\":0}"),
                 "{\"z\":{\"y\":1,\"x\":[{\"d\":1,\"c\":2}]},\"a\":0}");
    CHECK_STR_EQ(roundtrip("{\"b\":1,\"10\":2,\"a\":3,\"2\":4,\"01\":5,\"\":6}"),
                 "{\"2\":4,\"10\":2,\"b\":1,\"a\":3,\"01\":5,\"\":6}");
    CHECK_STR_EQ(roundtrip("{\"b\":1,\"a\":2,\"b\":3}"), "{\"b\":3,\"a\":2}");
    CHECK_STR_EQ(roundtrip("{\"a\":1,\"b\":2,\"a\":3}"), "{\"a\":3,\"b\":2}");
    /* more keys than the decoder holds on the stack: kept all the same */
    CHECK(lua_true("local parts = {} for i = 60, 1, -1 do parts[#parts + 1] ="
                   " string.format('\"k%02d\":%d', i, i) end"
                   " local text = '{' .. table.concat(parts, ',') .. '}'"
                   " return json.encode(json.decode(text)) == text"));
    CHECK(lua_true("local parts = {} for i = 1, 60 do parts[#parts + 1] ="
                   " string.format('\"k%02d\":%d', i, i) end"
                   " local text = '{' .. table.concat(parts, ',') .. '}'"
                   " return json.encode(json.decode(text)) == text"));
    /* a rule's changes: removed keys go, added ones follow in sorted order */
    CHECK(lua_true("local t = json.decode('{\"y\":1,\"x\":2,\"w\":3}')"
                   " t.x = nil t.c = 4 t.a = 5 t[3] = 6 t.y = 7"
                   " return json.encode(t) == '{\"3\":6,\"y\":7,\"w\":3,\"a\":5,\"c\":4}'"));
    /* tables built in Lua: index keys, then bytewise */
    CHECK_STR_EQ(enc("{ b = 1, a = 2 }"), "{\"a\":2,\"b\":1}");
    /* the clone keeps the order too */
    CHECK(lua_true("local t = json.decode('{\"b\":{\"d\":1,\"c\":2},\"a\":0}')"
                   " local copy = { data = t } return json.encode(copy) =="
                   " '{\"data\":{\"b\":{\"d\":1,\"c\":2},\"a\":0}}'"));
    CHECK(clone_same("json.decode('{\"b\":{\"d\":1,\"c\":2},\"a\":0,\"1\":[{\"z\":1,\"y\":2}]}')"));
    {
        struct util_buf b = {0}, c = {0};
        char err[200];
        const char *text = "{\"q\":{\"n\":1,\"m\":2},\"p\":3}";
        CHECK(jsonx_decode(L, text, strlen(text), 0, err, sizeof err) == 0);
        CHECK(jsonx_encode_clone(L, 1, &b, 0, err, sizeof err) == 0);
        CHECK(jsonx_encode(L, 2, &c, 0, err, sizeof err) == 0);
        CHECK(b.p && c.p && strcmp(b.p, text) == 0 && strcmp(c.p, text) == 0);
        lua_settop(L, 0);
        util_buf_free(&b);
        util_buf_free(&c);
    }
    /* jansson's path keeps the order the same way */
    {
        struct util_buf b = {0};
        char err[200];
        const char *text = "{\"q\":{\"n\":1,\"m\":2},\"p\":3,\"q\":4}";
        json_t *j = jsonx_parse(text, strlen(text), 0, err, sizeof err);
        CHECK(j != NULL);
        jsonx_push(L, j);
        json_decref(j);
        CHECK(jsonx_encode(L, -1, &b, 0, err, sizeof err) == 0);
        CHECK_STR_EQ(b.p, "{\"q\":4,\"p\":3}");
        lua_settop(L, 0);
        util_buf_free(&b);
    }
}

static void test_decode_vs_jansson(void) {
    static const char *cases[] = {
        "{\"a\":1,\"b\":[1,2,{\"c\":null}],\"d\":\"x\\u00e9\\ud83d\\ude00\\n\",\"e\":-0.5e3}",
        "[]",
        "{}",
        "[1e400]",
        "[-1e400]",
        "[1e-400]",
        "[123456789012345678901234567890]",
        "[-9223372036854775808]",
        "[9223372036854775807]",
        "[9223372036854775808]",
        "[-9223372036854775809]",
        "[\"\\u0000\"]",
        "{\"\\u0000\":1}",
        "[\"\\ud800\"]",
        "[\"\\ud800\\u0041\"]",
        "[\"\\udc00x\"]",
        "[01]",
        "[1.]",
        "[.5]",
        "[-]",
        "[1e]",
        "[1e+]",
        "[-0]",
        "[0.1,1e21,1E2,-0.0]",
        "[\"\xc3\xa9\"]",
        "[\"\xc3\"]",
        "[\"\xed\xa0\x80\"]",
        "[\"\xf4\x90\x80\x80\"]",
        "[\"\xe0\x80\xaf\"]",
        "[\"\xc0\xaf\"]",
        "  {\"a\" : [ 1 , 2 ] }\r\n",
        "{\"a\":1,}",
        "[1,]",
        "[1 2]",
        "x",
        "\"x\"",
        "",
        "  ",
        "[\"a\tb\"]",
        "[\"\\x\"]",
        "[\"\\u12\"]",
        "[tru]",
        "[nul]",
        "[true,false,null]",
        "{\"a\":1,\"a\":2}",
        "[\"\\/\\b\\f\\r\\t\\\"\\\\\"]",
        "{\"k\":{\"k\":[[[]]]}}",
        "[1]x",
        "[1] ",
        "\xef\xbb\xbf[]",
        "{\"a\"}",
        "{1:2}",
        "[\"abc",
    };
    const char alpha[] = "{}[]\",:0123456789-+.eE \\utrfalsn\xc3\xa9\xed\xa0";
    size_t ncases = sizeof cases / sizeof *cases, bad = 0;
    unsigned seed = 12345;
    char buf[300];

    for (size_t i = 0; i < ncases; i++) {
        bad += !same_as_jansson(cases[i], strlen(cases[i]), 0);
        bad += !same_as_jansson(cases[i], strlen(cases[i]), JSON_DECODE_ANY);
    }
    for (int it = 0; it < 200000 && bad < 5; it++) {
        seed = seed * 1103515245u + 12345u;
        const char *c = cases[(seed >> 16) % ncases];
        size_t n = strlen(c);
        memcpy(buf, c, n);
        for (int m = 0; m < 3; m++) {
            seed = seed * 1103515245u + 12345u;
            size_t pos = n ? (seed >> 8) % (n + 1) : 0;
            char ch = alpha[(seed >> 20) % (sizeof alpha - 1)];
            if ((seed & 3) == 0 && n < sizeof buf - 1) {
                memmove(buf + pos + 1, buf + pos, n - pos);
                buf[pos] = ch;
                n++;
            } else if ((seed & 3) == 1 && pos < n) {
                memmove(buf + pos, buf + pos + 1, n - pos - 1);
                n--;
            } else if (pos < n) {
                buf[pos] = ch;
            }
        }
        bad += !same_as_jansson(buf, n, (seed & 16) ? JSON_DECODE_ANY : 0);
    }
    CHECK_INT_EQ((int)bad, 0);
    /* jansson reads a raw NUL byte as the end of the text ("[1\0]" parses as
     * [1]); the direct decoder refuses it, as RFC 8259 does. */
    CHECK(jsonx_decode(L, "[1\0]", 4, 0, last_err, sizeof last_err) < 0);
    CHECK(!same_as_jansson("[1\0]", 4, 0)); /* the comparison tells them apart */
    CHECK_INT_EQ(lua_gettop(L), 0);
}

/* Escaping as the byte loop does it, for strings whose special byte sits
 * at every offset of the word-at-a-time scan: encoder, append_string and
 * decoder agree with it. */
static void ref_escape(const unsigned char *s, size_t n, struct util_buf *out) {
    static const char hex[] = "0123456789abcdef";
    util_buf_append(out, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        char e[7];
        unsigned c = s[i];
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            util_buf_append(out, e, 2);
        } else if (c == '\n') {
            util_buf_append(out, "\\n", 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
            util_buf_append(out, e, 6);
        } else {
            util_buf_append(out, &s[i], 1);
        }
    }
    util_buf_append(out, "\"", 1);
}

static void test_string_scan(void) {
    static const char *specials[] = {"\"",   "\\", "\n",       "\x1f",         "\x01",
                                     "\x7f", " ",  "\xc3\xa9", "\xe2\x9c\x93", "\xf0\x9f\x98\x80"};
    int bad = 0;
    for (size_t len = 0; len <= 26; len++) {
        for (size_t pos = 0; pos <= len; pos++) {
            for (size_t k = 0; k < sizeof specials / sizeof *specials; k++) {
                unsigned char str[64];
                struct util_buf want = {0}, got = {0}, app = {0};
                char err[128];
                size_t n = 0, sl = strlen(specials[k]);
                for (size_t i = 0; i < len; i++) {
                    if (i == pos) {
                        memcpy(str + n, specials[k], sl);
                        n += sl;
                    }
                    str[n++] = (unsigned char)('a' + i % 26);
                }
                if (pos == len) {
                    memcpy(str + n, specials[k], sl);
                    n += sl;
                }
                ref_escape(str, n, &want);
                lua_pushlstring(L, (const char *)str, n);
                if (jsonx_encode(L, -1, &got, 0, err, sizeof err) < 0 || got.len != want.len ||
                    memcmp(got.p, want.p, want.len) != 0)
                    bad++;
                lua_settop(L, 0);
                if (jsonx_append_string(&app, (const char *)str, n) < 0 || app.len != want.len ||
                    memcmp(app.p, want.p, want.len) != 0)
                    bad++;
                if (jsonx_decode(L, want.p, want.len, JSON_DECODE_ANY, err, sizeof err) < 0) {
                    bad++;
                } else {
                    size_t dl;
                    const char *d = lua_tolstring(L, -1, &dl);
                    if (!d || dl != n || memcmp(d, str, n) != 0)
                        bad++;
                }
                lua_settop(L, 0);
                util_buf_free(&want);
                util_buf_free(&got);
                util_buf_free(&app);
            }
        }
    }
    CHECK_INT_EQ(bad, 0);
    /* a raw control byte or a bad UTF-8 byte past the first word is refused */
    CHECK(jsonx_decode(L, "[\"abcdefghijk\x01\"]", 16, 0, last_err, sizeof last_err) < 0);
    CHECK(strstr(last_err, "control character 0x1") != NULL);
    /* bytes that are not UTF-8: U+FFFD per maximal subpart, as Node decodes */
    CHECK_STR_EQ(roundtrip("[\"abcdefghijklmnop\xff\"]"), "[\"abcdefghijklmnop\xef\xbf\xbd\"]");
    CHECK_STR_EQ(roundtrip("\"a\xc0\x80\xed\xa0\x80\xe2\x82z\xf0\x9f\x98\""),
                 "\"a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz\xef"
                 "\xbf\xbd\"");
    /* lone surrogate escapes and NUL in keys: read as JSON.parse reads them */
    CHECK_STR_EQ(roundtrip("{\"\\u0000\":\"\\ud800\",\"x\\udc00\":[\"\\ud83d\\ud83d\"]}"),
                 "{\"\\u0000\":\"\\ud800\",\"x\\udc00\":[\"\\ud83d\\ud83d\"]}");
    CHECK(enc("'abcdefghijklmnop\\xff'") == NULL);
    CHECK_STR_EQ(last_err, "invalid UTF-8 in a string");
    {
        struct util_buf b = {0};
        CHECK(jsonx_append_string(&b, "abcdefghijklmnop\xff", 17) < 0 && b.len == 0);
        util_buf_free(&b);
    }
}

static void test_append_string(void) {
    struct util_buf b = {0};
    CHECK(util_buf_appends(&b, "[") == 0);
    CHECK(jsonx_append_string(&b, "a\"b\\c\td\x01\xc3\xa9/", 11) == 0);
    CHECK_STR_EQ(b.p, "[\"a\\\"b\\\\c\\td\\u0001\xc3\xa9/\"");
    CHECK(jsonx_append_string(&b, "caf\xe9", 4) < 0); /* not UTF-8: nothing appended */
    CHECK(jsonx_append_string(&b, "\xed\xa0\x80", 3) < 0);
    CHECK_INT_EQ((int)b.len, 22);
    CHECK(jsonx_append_string(&b, "", 0) == 0);
    CHECK_STR_EQ(b.p, "[\"a\\\"b\\\\c\\td\\u0001\xc3\xa9/\"\"\"");
    util_buf_free(&b);
}

static void test_limits(void) {
    struct util_buf b = {0};
    char err[128];
    CHECK(luaL_dostring(L, "return { string.rep('x', 100) }") == LUA_OK);
    CHECK(jsonx_encode(L, -1, &b, 50, err, sizeof err) < 0);
    CHECK_STR_EQ(err, "output larger than 50 bytes");
    CHECK_INT_EQ(b.len, 0);
    util_buf_append(&b, "prefix", 6);
    CHECK(jsonx_encode(L, -1, &b, 200, err, sizeof err) == 0);
    CHECK_INT_EQ(b.len, 6 + 104);
    CHECK(strncmp(b.p, "prefix[\"xxx", 11) == 0);
    lua_settop(L, 0);
    util_buf_free(&b);

    /* a DAG that would expand to gigabytes stops at the cap */
    CHECK(luaL_dostring(
              L, "local t = {} for i = 1, 8 do local u = {} for j = 1, 30 do u[j] = t end t = u end"
                 " return t") == LUA_OK);
    CHECK(jsonx_encode(L, -1, &b, 1 << 20, err, sizeof err) < 0);
    CHECK_STR_EQ(err, "output larger than 1048576 bytes");
    lua_settop(L, 0);
    util_buf_free(&b);
}

/* Decoding an object makes its table at its size: one block for the table
 * and one for its members, none from growing it member by member. Counted
 * with the keys already interned (the first decode is kept) and the
 * collector stopped, so only the tables allocate. */
static lua_Alloc counted_f;
static void *counted_ud;
static int counted_n;
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    (void)ud;
    if (nsize > 0 && !ptr)
        counted_n++;
    return counted_f(counted_ud, ptr, osize, nsize);
}

static int decode_allocs(const char *text) {
    char err[200];
    int n = -1;

    if (jsonx_decode(L, text, strlen(text), 0, err, sizeof err) < 0) /* kept: its keys */
        return -1;
    lua_gc(L, LUA_GCSTOP);
    counted_f = lua_getallocf(L, &counted_ud);
    counted_n = 0;
    lua_setallocf(L, counting_alloc, NULL);
    if (jsonx_decode(L, text, strlen(text), 0, err, sizeof err) == 0)
        n = counted_n;
    lua_setallocf(L, counted_f, counted_ud);
    lua_gc(L, LUA_GCRESTART);
    lua_settop(L, 0);
    return n;
}

static void test_decode_allocs(void) {
    CHECK_INT_EQ(decode_allocs("{\"a\":1,\"b\":2,\"c\":3,\"d\":4,\"e\":5,\"f\":6,"
                               "\"g\":7,\"h\":8,\"i\":9}"),
                 2);
    CHECK_INT_EQ(decode_allocs("{\"a\":1,\"b\":{\"c\":2,\"d\":3,\"e\":4,\"f\":5,"
                               "\"g\":6}}"),
                 4);
    CHECK_INT_EQ(decode_allocs("{}"), 1);
}

int main(void) {
    static size_t max = 1 << 20;
    L = luaL_newstate();
    luaL_openlibs(L);
    jsonx_open(L, &max);
    lua_setglobal(L, "json");

    test_numbers();
    test_strings();
    test_tables();
    test_big_tables();
    test_clone();
    test_decode();
    test_decode_allocs();
    test_key_order();
    test_decode_vs_jansson();
    test_append_string();
    test_string_scan();
    test_limits();
    CHECK(lua_true("local ok, e = pcall(json.encode, string.rep('x', 2000000)) return not ok"
                   " and e:find('output larger than 1048576 bytes', 1, true) ~= nil"));
    lua_close(L);
    return harness_report();
}
