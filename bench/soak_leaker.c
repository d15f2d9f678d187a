// The soak's long-running target (`cargo xtask soak`): a steady leak beside a cache.
//
//   leak_step:  every 100 ms, one 4 KiB block that is kept forever (never freed);
//   cache_step: every 10 ms, one slot of a ring of 1000 blocks (1–16 KiB) replaced round-robin:
//               the new block is allocated, the old one freed, so the cache stays flat.
//
// Runs until killed. Usage: soak_leaker [LEAK_BYTES [CACHE_BLOCKS]]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_MS 10
#define LEAK_EVERY_TICKS 10

static void *volatile *leaked;  // every leaked block, reachable (a real leak would lose them)
static size_t n_leaked, cap_leaked;

__attribute__((noinline)) static void leak_step(size_t bytes) {
    void *p = malloc(bytes);
    if (!p) abort();
    memset(p, 0xab, bytes);
    if (n_leaked == cap_leaked) {
        cap_leaked = cap_leaked ? cap_leaked * 2 : 1024;
        leaked = realloc((void *)leaked, cap_leaked * sizeof(void *));
        if (!leaked) abort();
    }
    leaked[n_leaked++] = p;
}

__attribute__((noinline)) static void cache_step(void **ring, size_t n, uint64_t i) {
    size_t slot = i % n;
    size_t bytes = 1024 + (i * 2654435761u) % (15 * 1024);
    void *p = malloc(bytes);
    if (!p) abort();
    memset(p, 0xcd, bytes < 256 ? bytes : 256);
    free(ring[slot]);
    ring[slot] = p;
}

int main(int argc, char **argv) {
    size_t leak_bytes = argc > 1 ? strtoul(argv[1], NULL, 10) : 4096;
    size_t blocks = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000;
    if (leak_bytes == 0 || blocks == 0) {
        fprintf(stderr, "usage: %s [LEAK_BYTES [CACHE_BLOCKS]]\n", argv[0]);
        return 2;
    }
    void **ring = calloc(blocks, sizeof(void *));
    if (!ring) abort();
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (uint64_t tick = 0;; tick++) {
        cache_step(ring, blocks, tick);
        if (tick % LEAK_EVERY_TICKS == 0) leak_step(leak_bytes);
        // Absolute deadlines: the rates hold however long a step takes.
        next.tv_nsec += TICK_MS * 1000000L;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
