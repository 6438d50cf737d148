/* harness.h -- the C unit tests' checks (Redis testhelp.h + libuv ASSERT_*).
 * A failed CHECK records and carries on; harness_report() prints
 * "N passed, N failed" as the last line and returns the exit status.
 * SPDX-License-Identifier: MIT */
#ifndef TESTS_HARNESS_H
#define TESTS_HARNESS_H

#include <stdio.h>
#include <string.h>

static int harness_passed, harness_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            harness_passed++;                                                                      \
        } else {                                                                                   \
            harness_failed++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                                         \
    do {                                                                                           \
        long long harness_a_ = (long long)(a), harness_b_ = (long long)(b);                        \
        if (harness_a_ == harness_b_) {                                                            \
            harness_passed++;                                                                      \
        } else {                                                                                   \
            harness_failed++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b,   \
                    harness_a_, harness_b_);                                                       \
        }                                                                                          \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *harness_a_ = (a), *harness_b_ = (b);                                           \
        if (harness_a_ && harness_b_ && strcmp(harness_a_, harness_b_) == 0) {                     \
            harness_passed++;                                                                      \
        } else {                                                                                   \
            harness_failed++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s == %s (\"%s\" != \"%s\")\n", __FILE__, __LINE__, #a,   \
                    #b, harness_a_ ? harness_a_ : "(null)", harness_b_ ? harness_b_ : "(null)");   \
        }                                                                                          \
    } while (0)

static inline int harness_report(void) {
    printf("%d passed, %d failed\n", harness_passed, harness_failed);
    /* Flushed now: a sanitizer report at exit must not swallow the line. */
    fflush(stdout);
    return harness_failed ? 1 : 0;
}

#endif
