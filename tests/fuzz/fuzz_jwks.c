/* fuzz_jwks.c -- libFuzzer target: JWKS documents (JSON, base64url n/e,
 * RSA keys built from them). */
#include <stdint.h>
#include <stddef.h>

#include "jwks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    struct jwks_set *set = jwks_set_parse((const char *)data, size, err, sizeof err);
    jwks_set_find(set, "kid");
    jwks_set_free(set);
    return 0;
}
