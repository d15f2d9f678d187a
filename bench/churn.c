/*
 * churn: single-thread mixed allocator churn (malloc/calloc/realloc/free, sizes 8 B..4 KiB).
 * Each iteration is one "allocator cycle" (an allocation + a free; 1 in 8 also reallocs).
 *
 * Usage: churn [CYCLES]   (default 1000000)
 * Output: `ready <pid>`, (SIGUSR1), `cycles N`, `wall_ns W`, `ns_per_op X`, then exits.
 */
#include "common.h"

int main(int argc, char **argv)
{
    long cycles = arg_count(argc, argv, 1000000);
    static void *ring[RING];
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    wait_for_go();
    uint64_t t0 = now_ns();
    for (long i = 0; i < cycles; i++)
        cycle(&ring[i % RING], (uint64_t)i, &rng);
    uint64_t wall = now_ns() - t0;
    for (int k = 0; k < RING; k++)
        free(ring[k]);
    printf("cycles %ld\nwall_ns %llu\nns_per_op %.1f\n", cycles, (unsigned long long)wall,
           (double)wall / (double)cycles);
    fflush(stdout);
    return 0;
}
