/*
 * Shared by the bench workloads (see BENCHMARKS.md and xtask/src/bench.rs).
 *
 * Protocol on stdout (flushed line by line):
 *   `ready <pid>`            then the workload blocks until SIGUSR1 (the "go" signal: the
 *                            profiler attaches first). SIGUSR1 is blocked and taken with
 *                            sigwait, so a signal sent before the wait starts is not lost.
 *   ... workload-specific lines, then `ns_per_op X` (nanoseconds per allocator cycle).
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOIPA __attribute__((noipa, used))

/* Blocks SIGUSR1 (inherited by threads created later), prints `ready <pid>`, waits for it. */
static void wait_for_go(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
        perror("sigprocmask");
        exit(1);
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    int sig = 0;
    if (sigwait(&set, &sig) != 0) {
        perror("sigwait");
        exit(1);
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The first argument as a positive count, or `dflt`. */
static long arg_count(int argc, char **argv, long dflt)
{
    if (argc < 2)
        return dflt;
    long n = strtol(argv[1], NULL, 10);
    if (n <= 0) {
        fprintf(stderr, "usage: %s [COUNT]\n", argv[0]);
        exit(2);
    }
    return n;
}

/* xorshift64: cheap sizes that vary without a pattern the allocator could learn. */
static inline uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Sizes from 8 bytes to 4 KiB, small ones most often (like real programs). */
static inline size_t pick_size(uint64_t *s)
{
    uint64_t r = next_rand(s);
    switch (r & 7) {
    case 0: case 1: case 2: case 3:
        return 8 + (r >> 8) % 120;   /* 8..127 */
    case 4: case 5:
        return 128 + (r >> 8) % 896; /* 128..1023 */
    default:
        return 1024 + (r >> 8) % 3072; /* 1..4 KiB */
    }
}

#define RING 64 /* blocks kept in flight per thread: a block is freed 64 cycles after its birth */

/*
 * One allocator cycle: free the block allocated RING cycles ago, allocate a new one in its
 * place. The allocation is malloc (4 of 8 cycles), calloc (2 of 8), malloc + realloc to another
 * size (1 of 8) or realloc(NULL, n) (1 of 8). Returns the new block (touched, so the compiler
 * cannot drop the pair).
 */
NOIPA static void *cycle(void **slot, uint64_t i, uint64_t *rng)
{
    free(*slot);
    size_t n = pick_size(rng);
    void *p;
    switch (i & 7) {
    case 0: case 1: case 2: case 3:
        p = malloc(n);
        break;
    case 4: case 5:
        p = calloc(1, n);
        break;
    case 6:
        p = malloc(n);
        if (p) {
            void *q = realloc(p, pick_size(rng));
            if (q)
                p = q;
        }
        break;
    default:
        p = realloc(NULL, n);
        break;
    }
    if (!p) {
        perror("alloc");
        exit(1);
    }
    *(volatile char *)p = (char)i;
    *slot = p;
    return p;
}

#endif
