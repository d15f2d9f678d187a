/*
 * live: allocates COUNT (default 1000000) small blocks (16..72 bytes) from 1000 distinct call
 * stacks (100 leaf functions, each reached through a recursive helper at depth 0..9) and keeps
 * them all, then waits until killed.
 *
 * Output: `ready <pid>`, (SIGUSR1), `allocated N`, `ns_per_op X`, then it sleeps.
 */
#include "common.h"

static void **blocks;

#define LEAF(k)                                                                                \
    NOIPA static void leaf_##k(long i)                                                         \
    {                                                                                          \
        void *p = malloc(16 + 8 * (size_t)(i % 8));                                            \
        if (!p) {                                                                              \
            perror("malloc");                                                                  \
            exit(1);                                                                           \
        }                                                                                      \
        *(volatile char *)p = (char)k;                                                         \
        blocks[i] = p;                                                                         \
    }
#define LEAF10(t) LEAF(t##0) LEAF(t##1) LEAF(t##2) LEAF(t##3) LEAF(t##4) \
                  LEAF(t##5) LEAF(t##6) LEAF(t##7) LEAF(t##8) LEAF(t##9)
LEAF10(1) LEAF10(2) LEAF10(3) LEAF10(4) LEAF10(5) LEAF10(6) LEAF10(7) LEAF10(8) LEAF10(9)
LEAF10(10)

#define REF(k) leaf_##k,
#define REF10(t) REF(t##0) REF(t##1) REF(t##2) REF(t##3) REF(t##4) \
                 REF(t##5) REF(t##6) REF(t##7) REF(t##8) REF(t##9)
static void (*const leaves[100])(long) = {
    REF10(1) REF10(2) REF10(3) REF10(4) REF10(5) REF10(6) REF10(7) REF10(8) REF10(9) REF10(10)
};

/* Depth d of these frames on top of the leaf: 10 depths x 100 leaves = 1000 call stacks. */
NOIPA static void descend(int d, long i)
{
    if (d > 0) {
        descend(d - 1, i);
        __asm__ volatile("" ::: "memory"); /* not a tail call: the frame stays */
    } else {
        leaves[(i / 10) % 100](i);
    }
}

int main(int argc, char **argv)
{
    long count = arg_count(argc, argv, 1000000);
    blocks = calloc((size_t)count, sizeof *blocks);
    if (!blocks) {
        perror("calloc");
        return 1;
    }
    wait_for_go();
    uint64_t t0 = now_ns();
    for (long i = 0; i < count; i++)
        descend((int)(i % 10), i);
    uint64_t wall = now_ns() - t0;
    printf("allocated %ld\nns_per_op %.1f\n", count, (double)wall / (double)count);
    fflush(stdout);
    for (;;)
        pause();
}
