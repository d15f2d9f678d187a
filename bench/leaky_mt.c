/*
 * leaky_mt: 4 threads, each doing the churn cycle of common.h; 1 block in 100 is leaked (kept
 * forever) instead of freed. The cycles are split evenly over the threads.
 *
 * Usage: leaky_mt [CYCLES]   (total over all threads; default 1000000)
 * Output: `ready <pid>`, (SIGUSR1), `cycles N`, `leaked L`, `wall_ns W`,
 *         `ns_per_op X` (the mean over threads of a thread's time / its cycles), then exits.
 */
#include "common.h"
#include <pthread.h>

#define NTHREADS 4
#define LEAK_EVERY 100

struct worker {
    pthread_t thread;
    long cycles;
    uint64_t seed;
    uint64_t ns;
    long leaked;
};

NOIPA static void keep(void *p, long *leaked)
{
    /* A leak: the block is never freed. The pointer is dropped on purpose. */
    (void)p;
    ++*leaked;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    void *ring[RING] = {0};
    uint64_t rng = w->seed;
    uint64_t t0 = now_ns();
    for (long i = 0; i < w->cycles; i++) {
        void **slot = &ring[i % RING];
        if (i % LEAK_EVERY == LEAK_EVERY - 1 && *slot) {
            keep(*slot, &w->leaked);
            *slot = NULL; /* free(NULL) in the next cycle: the block stays outstanding */
        }
        cycle(slot, (uint64_t)i, &rng);
    }
    w->ns = now_ns() - t0;
    for (int k = 0; k < RING; k++)
        free(ring[k]);
    return NULL;
}

int main(int argc, char **argv)
{
    long cycles = arg_count(argc, argv, 1000000);
    struct worker w[NTHREADS] = {0};
    wait_for_go();
    uint64_t t0 = now_ns();
    for (int t = 0; t < NTHREADS; t++) {
        w[t].cycles = cycles / NTHREADS;
        w[t].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1);
        if (pthread_create(&w[t].thread, NULL, run, &w[t]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    double sum = 0;
    long total = 0, leaked = 0;
    for (int t = 0; t < NTHREADS; t++) {
        pthread_join(w[t].thread, NULL);
        sum += (double)w[t].ns / (double)w[t].cycles;
        total += w[t].cycles;
        leaked += w[t].leaked;
    }
    uint64_t wall = now_ns() - t0;
    printf("cycles %ld\nleaked %ld\nwall_ns %llu\nns_per_op %.1f\n", total, leaked,
           (unsigned long long)wall, sum / NTHREADS);
    fflush(stdout);
    return 0;
}
