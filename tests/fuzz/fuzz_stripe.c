/* fuzz_stripe.c -- libFuzzer target: the Stripe-style header
 * (t=<unix>,v1=<hex>[,v1=...]) under a clock that matches any t= the
 * input names, so the signature comparison runs too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "verify.h"

static const char *header(void *arg, const char *name) {
    return strcasecmp(name, "Stripe-Signature") == 0 ? arg : NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *value = malloc(size + 1), *t, reason[128];
    struct verify_secret secret = {(unsigned char *)"whsec", 5};
    struct verify_spec spec;
    long long now = 1700000000;

    if (!value)
        return 0;
    memcpy(value, data, size);
    value[size] = '\0';
    if ((t = strstr(value, "t=")) != NULL)
        now = strtoll(t + 2, NULL, 10);
    struct verify_request r = {header, value, (const unsigned char *)"{}", 2,
                               (now > 0 && now < 100000000000LL ? now : 0) * 1000, NULL, NULL};
    verify_preset("stripe", &spec);
    verify_check(&spec, &secret, 1, &r, reason, sizeof reason);
    free(value);
    return 0;
}
