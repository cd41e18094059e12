/* SPDX-License-Identifier: MIT */
/*
 * test-malloc.c - the contract of every member of the malloc family as zkmem serves it
 * (zkm_* and the glibc-only members behind libzkmem-preload.so's malloc names):
 * free(NULL), malloc(0), calloc overflow, realloc in every direction, posix_memalign
 * and aligned_alloc errors, alignments up to 1 GiB, ENOMEM with errno for absurd
 * sizes, usable sizes, and pointers zkmem did not allocate.
 */
#include "alloc.h"

#include <check.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const size_t sizes[] = {1,       7,       8,       9,     16,     24,      100,
                               128,     129,     256,     257,   1000,   4096,    8191,
                               8192,    8193,    20000,   65536, 100000, 1 << 20, (2 << 20) - 4096,
                               2 << 20, 3 << 20, 17 << 20};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/* hide constant sizes from -Walloc-size-larger-than: the point is to pass them */
static size_t opaque(size_t v)
{
    volatile size_t x = v;
    return x;
}

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i += (n > 65536 ? 4093 : 1))
        p[i] = (uint8_t)(seed + i);
    p[n - 1] = (uint8_t)(seed + n - 1);
}

static void check(const uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i += (n > 65536 ? 4093 : 1))
        ck_assert_uint_eq(p[i], (uint8_t)(seed + i));
    ck_assert_uint_eq(p[n - 1], (uint8_t)(seed + n - 1));
}

START_TEST(free_null_and_usable_null)
{
    zkm_free(NULL);
    zkm_free_bulk(NULL, 0);
    ck_assert_uint_eq(zkm_usable_size(NULL), 0);
    ck_assert_int_eq(zkm_owns(NULL), 0);
}
END_TEST

START_TEST(malloc_zero)
{
    void *a = zkm_malloc(0), *b = zkm_malloc(0);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    ck_assert(zkm_owns(a));
    zkm_free(a);
    zkm_free(b);
}
END_TEST

START_TEST(malloc_every_tier_usable_aligned)
{
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = sizes[i];
        uint8_t *p = zkm_malloc(n);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_ge(zkm_usable_size(p), n);
        ck_assert_uint_eq((uintptr_t)p % (n > 8 ? 16 : 8), 0);
        ck_assert(zkm_owns(p));
        fill(p, n, (uint8_t)i);
        check(p, n, (uint8_t)i);
        zkm_free(p);
    }
}
END_TEST

START_TEST(enomem_absurd_sizes)
{
    size_t bad[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        errno = 0;
        ck_assert_ptr_null(zkm_malloc(opaque(bad[i])));
        ck_assert_int_eq(errno, ENOMEM);
        errno = 0;
        ck_assert_ptr_null(zkm_aligned_alloc(64, bad[i]));
        ck_assert_int_eq(errno, ENOMEM);
        errno = 0;
        ck_assert_ptr_null(zkm_aligned_alloc((size_t)1 << 22, bad[i]));
        ck_assert_int_eq(errno, ENOMEM);
        void *p = (void *)1;
        ck_assert_int_eq(zkm__posix_memalign(&p, 4096, bad[i]), ENOMEM);
        ck_assert_ptr_eq(p, (void *)1);
    }
}
END_TEST

START_TEST(calloc_contract)
{
    errno = 0;
    ck_assert_ptr_null(zkm_calloc(opaque(SIZE_MAX / 2 + 1), 2));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(zkm_calloc(2, opaque(SIZE_MAX / 2 + 1)));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(zkm_calloc(opaque((size_t)1 << 33), (size_t)1 << 31));
    ck_assert_int_eq(errno, ENOMEM);
    void *z = zkm_calloc(0, 10);
    ck_assert_ptr_nonnull(z);
    zkm_free(z);
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < NSIZES; i++) {
            size_t n = sizes[i];
            uint8_t *p = zkm_calloc(1, n);
            ck_assert_ptr_nonnull(p);
            for (size_t k = 0; k < n; k += (n > 65536 ? 511 : 1))
                ck_assert_uint_eq(p[k], 0);
            ck_assert_uint_eq(p[n - 1], 0);
            memset(p, 0xcd, n); /* dirty it: the next round reuses this memory */
            zkm_free(p);
        }
    }
}
END_TEST

START_TEST(realloc_contract)
{
    /* NULL: malloc */
    uint8_t *p = zkm_realloc(NULL, 100);
    ck_assert_ptr_nonnull(p);
    fill(p, 100, 3);
    /* same class: in place */
    uint8_t *q = zkm_realloc(p, 99);
    ck_assert_ptr_eq(q, p);
    q = zkm_realloc(p, zkm_usable_size(p));
    ck_assert_ptr_eq(q, p);
    check(q, 99, 3);
    /* grow through every tier, content kept */
    size_t have = 99;
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = sizes[i];
        if (n <= have)
            continue;
        q = zkm_realloc(q, n);
        ck_assert_ptr_nonnull(q);
        check(q, have, 3);
        fill(q, n, 3);
        have = n;
    }
    /* shrink back down, prefix kept */
    for (size_t i = NSIZES; i-- > 0;) {
        size_t n = sizes[i];
        if (n >= have)
            continue;
        q = zkm_realloc(q, n);
        ck_assert_ptr_nonnull(q);
        ck_assert_uint_ge(zkm_usable_size(q), n);
        check(q, n, 3);
        have = n;
    }
    /* failure leaves the block untouched */
    errno = 0;
    ck_assert_ptr_null(zkm_realloc(q, opaque(SIZE_MAX - 10)));
    ck_assert_int_eq(errno, ENOMEM);
    check(q, have, 3);
    errno = 0;
    ck_assert_ptr_null(zkm__reallocarray(q, SIZE_MAX / 4, 8));
    ck_assert_int_eq(errno, ENOMEM);
    check(q, have, 3);
    q = zkm__reallocarray(q, 10, 30);
    ck_assert_ptr_nonnull(q);
    check(q, have < 300 ? have : 300, 3);
    /* size 0: frees, returns NULL */
    ck_assert_ptr_null(zkm_realloc(q, 0));
}
END_TEST

START_TEST(posix_memalign_contract)
{
    size_t bad[] = {0, 1, 2, 4, 3, 24, 48, 4097};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        void *p = (void *)1;
        errno = 1234;
        ck_assert_int_eq(zkm__posix_memalign(&p, bad[i], 10), EINVAL);
        ck_assert_ptr_eq(p, (void *)1); /* untouched */
        ck_assert_int_eq(errno, 1234);  /* errno left alone */
    }
    for (size_t a = sizeof(void *); a <= ((size_t)1 << 30); a <<= 1) {
        size_t ns[] = {0, 1, 100, a - 1, a, a + 1, 3 * a + 5, 70000};
        for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
            if (a >= ((size_t)1 << 26) && k >= 6)
                continue; /* keep the mapping small */
            void *p = NULL;
            errno = 1234;
            ck_assert_int_eq(zkm__posix_memalign(&p, a, ns[k]), 0);
            ck_assert_int_eq(errno, 1234);
            ck_assert_ptr_nonnull(p);
            ck_assert_msg((uintptr_t)p % a == 0, "%p not aligned to %zu", p, a);
            ck_assert_uint_ge(zkm_usable_size(p), ns[k]);
            ck_assert(zkm_owns(p));
            if (ns[k])
                fill(p, ns[k], (uint8_t)k);
            if (ns[k])
                check(p, ns[k], (uint8_t)k);
            zkm_free(p);
        }
    }
}
END_TEST

START_TEST(aligned_alloc_memalign_valloc)
{
    errno = 0;
    ck_assert_ptr_null(zkm_aligned_alloc(3, 10));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(zkm_aligned_alloc(0, 10));
    ck_assert_int_eq(errno, EINVAL);
    for (size_t a = 1; a <= ((size_t)1 << 24); a <<= 1) {
        uint8_t *p = zkm_aligned_alloc(a, a * 2 + 3);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % a, 0);
        fill(p, a * 2 + 3, 9);
        check(p, a * 2 + 3, 9);
        zkm_free(p);
    }
    /* memalign rounds a non-power-of-two alignment up */
    void *m = zkm__memalign(48, 100);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq((uintptr_t)m % 64, 0);
    zkm_free(m);
    long pg = sysconf(_SC_PAGESIZE);
    void *v = zkm__valloc(10);
    ck_assert_uint_eq((uintptr_t)v % (size_t)pg, 0);
    zkm_free(v);
    void *pv = zkm__pvalloc(1);
    ck_assert_uint_eq((uintptr_t)pv % (size_t)pg, 0);
    ck_assert_uint_ge(zkm_usable_size(pv), (size_t)pg);
    zkm_free(pv);
    pv = zkm__pvalloc(0);
    ck_assert_ptr_nonnull(pv);
    ck_assert_uint_ge(zkm_usable_size(pv), (size_t)pg);
    zkm_free(pv);
}
END_TEST

START_TEST(foreign_pointers)
{
    /* memory from the program's own allocator, the stack and static storage */
    char *g = malloc(300);
    ck_assert_ptr_nonnull(g);
    strcpy(g, "glibc block");
    static int st;
    int local;
    ck_assert_int_eq(zkm_owns(g), 0);
    ck_assert_int_eq(zkm_owns(&st), 0);
    ck_assert_int_eq(zkm_owns(&local), 0);
    ck_assert_int_eq(zkm_owns((void *)0x1000), 0);
    ck_assert_int_eq(zkm_owns((void *)UINTPTR_MAX), 0);
    ck_assert_int_eq(zkm_owns((void *)((uintptr_t)1 << 50)), 0);
    ck_assert_uint_ge(zkm_usable_size(g), 300);
    g = zkm_realloc(g, 5000); /* stays with its allocator, content kept */
    ck_assert_ptr_nonnull(g);
    ck_assert_str_eq(g, "glibc block");
    ck_assert_int_eq(zkm_owns(g), 0);
    struct zkm_alloc_counters c0, c1;
    zkm__alloc_counters(&c0);
    zkm_free(g); /* handed to the C library's free, not crashed on */
    zkm__alloc_counters(&c1);
    ck_assert_uint_eq(c1.foreign_frees, c0.foreign_frees + 1);
    /* interior pointers of our slabs are ours */
    char *z = zkm_malloc(1000);
    ck_assert(zkm_owns(z + 500));
    zkm_free(z);
}
END_TEST

static Suite *malloc_suite(void)
{
    Suite *s = suite_create("malloc");
    TCase *tc = tcase_create("contracts");
    tcase_add_test(tc, free_null_and_usable_null);
    tcase_add_test(tc, malloc_zero);
    tcase_add_test(tc, malloc_every_tier_usable_aligned);
    tcase_add_test(tc, enomem_absurd_sizes);
    tcase_add_test(tc, calloc_contract);
    tcase_add_test(tc, realloc_contract);
    tcase_add_test(tc, posix_memalign_contract);
    tcase_add_test(tc, aligned_alloc_memalign_valloc);
    tcase_add_test(tc, foreign_pointers);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(malloc_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
