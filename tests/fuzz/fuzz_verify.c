/* fuzz_verify.c -- libFuzzer target: signature headers of every header
 * preset (generic, atoship, aftership, easypost, stripe, standard,
 * shipengine). Input: the header value, a newline, the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "verify.h"

struct ctx {
    const char *value;
};

static const char *any_header(void *arg, const char *name) {
    struct ctx *c = arg;
    /* The webhook-* / x-shipengine-* families read several headers: give each
     * the same fuzzed value, so id, timestamp and signature parsers all run. */
    (void)name;
    return c->value;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const presets[] = {"generic", "atoship", "aftership", "easypost",
                                          "stripe",  "standard", "shipengine"};
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hlen = nl ? (size_t)(nl - data) : size;
    char *value = malloc(hlen + 1);
    struct verify_secret secrets[2] = {{(unsigned char *)"key", 3}, {(unsigned char *)"", 0}};
    char reason[128];

    if (!value)
        return 0;
    memcpy(value, data, hlen);
    value[hlen] = '\0';
    if (memchr(value, '\0', hlen)) { /* a header value holds no NUL */
        free(value);
        return 0;
    }
    struct ctx c = {value};
    struct verify_request r = {any_header, &c, nl ? nl + 1 : data + size,
                               nl ? size - hlen - 1 : 0, 1700000000000LL, NULL, NULL};
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        struct verify_spec spec;
        verify_preset(presets[i], &spec);
        verify_check(&spec, secrets, 2, &r, reason, sizeof reason);
    }
    free(value);
    return 0;
}
