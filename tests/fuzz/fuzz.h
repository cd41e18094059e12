/* SPDX-License-Identifier: MIT */
/*
 * fuzz.h - what every fuzz target and the replay driver share.
 *
 * A target defines LLVMFuzzerTestOneInput(). Built with clang and -Dfuzz=true it links
 * libFuzzer (-fsanitize=fuzzer,address,undefined); in every build it also links replay.c,
 * whose main() runs the committed corpus through it, so the corpora are regression tests.
 * FUZZ_CHECK is an assertion that stays on in release builds and says what failed.
 */
#ifndef ZKM_FUZZ_H
#define ZKM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
