/* fuzz_json.c -- libFuzzer target: the direct decoder (jsonx_decode)
 * against jansson (jsonx_parse + jsonx_push) on the same bytes, both with
 * and without JSON_DECODE_ANY. Where both read the text, what they push
 * must encode to the same bytes; where only the direct decoder reads it,
 * jansson's reason must be one of the documented departures (README: what
 * waybill's JSON promises); jansson reading what the decoder refuses is a
 * finding. Every accepted value must also re-encode and decode again to the
 * same bytes (the encoder's output is what it reads). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "jsonx.h"

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    L = luaL_newstate();
    if (!L)
        abort();
    jsonx_open(L, NULL);
    lua_setglobal(L, "json");
    return 0;
}

static int departure(const char *reason) {
    return strstr(reason, "real number overflow") || strstr(reason, "NUL byte in object key") ||
           strstr(reason, "invalid Unicode") || strstr(reason, "unable to decode byte");
}

static void one(const char *text, size_t n, size_t flags) {
    char e1[300], e2[300], e3[300];
    struct util_buf a = {0}, b = {0}, c = {0};
    int r1 = jsonx_decode(L, text, n, flags, e1, sizeof e1);
    json_t *j = jsonx_parse(text, n, flags, e2, sizeof e2);

    if (r1 == 0) {
        if (jsonx_encode(L, -1, &a, 0, e3, sizeof e3) != 0)
            abort();
        lua_settop(L, 0);
        /* what the encoder writes reads back to itself */
        if (jsonx_decode(L, a.p, a.len, JSON_DECODE_ANY, e3, sizeof e3) != 0 ||
            jsonx_encode(L, -1, &c, 0, e3, sizeof e3) != 0 || a.len != c.len ||
            memcmp(a.p, c.p, a.len) != 0)
            abort();
        lua_settop(L, 0);
    }
    if (j) {
        if (r1 != 0 && !memchr(text, '\0', n)) /* jansson reads what the decoder refuses */
            abort(); /* (jansson stops at a raw NUL byte; the decoder refuses it) */
        if (r1 != 0) {
            json_decref(j);
            util_buf_free(&a);
            return;
        }
        jsonx_push(L, j);
        json_decref(j);
        if (jsonx_encode(L, -1, &b, 0, e3, sizeof e3) != 0 || a.len != b.len ||
            memcmp(a.p, b.p, a.len) != 0)
            abort();
        lua_settop(L, 0);
    } else if (r1 == 0 && !departure(e2)) {
        fprintf(stderr, "decoder reads it, jansson: %s\n", e2);
        abort();
    }
    util_buf_free(&a);
    util_buf_free(&b);
    util_buf_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    one((const char *)data, size, 0);
    one((const char *)data, size, JSON_DECODE_ANY);
    lua_settop(L, 0);
    return 0;
}
