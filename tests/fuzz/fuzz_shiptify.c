/* fuzz_shiptify.c -- libFuzzer target: Shiptify's body-borne signature
 * (timestamp, token, signature in JSON), its token extraction, and the
 * ISO-8601 parser ShipEngine's timestamps go through. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "verify.h"

static const char *no_header(void *arg, const char *name) {
    (void)arg;
    (void)name;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct verify_secret secret = {(unsigned char *)"key", 3};
    struct verify_spec spec;
    char reason[128], token[256], *text;
    int64_t ms;
    struct verify_request r = {no_header, NULL, data, size, 1643117545594LL, NULL, NULL};

    verify_preset("shiptify", &spec);
    verify_check(&spec, &secret, 1, &r, reason, sizeof reason);
    verify_shiptify_token(data, size, token, sizeof token);
    text = malloc(size + 1);
    if (text) {
        memcpy(text, data, size);
        text[size] = '\0';
        verify_iso8601_ms(text, &ms);
        free(text);
    }
    return 0;
}
