/* Unwinding cost: recurse to a given depth, then time malloc+free pairs there.
 * usage: deep DEPTH PAIRS — prints "ready <pid>", waits for SIGUSR1, runs, prints
 * "ns_per_pair=<x>", keeps one block per 64 pairs alive (so stacks stay in the report) and
 * sleeps until killed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static void *keep[1 << 16];
/* Called through volatile pointers, so the compiler cannot elide the malloc/free pairs. */
static void *(*volatile do_malloc)(size_t) = malloc;
static void (*volatile do_free)(void *) = free;

__attribute__((noinline)) static double pairs(long n) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *p = do_malloc(64);
        if ((i & 63) == 0 && (i >> 6) < (1 << 16))
            keep[i >> 6] = p;
        else
            do_free(p);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

__attribute__((noinline)) static double descend(int depth, long n) {
    volatile int guard = depth;
    double r = depth <= 1 ? pairs(n) : descend(depth - 1, n);
    return r + guard * 0.0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s DEPTH PAIRS\n", argv[0]);
        return 2;
    }
    int depth = atoi(argv[1]);
    long n = atol(argv[2]);
    signal(SIGUSR1, on_usr1);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (!go)
        pause();
    printf("ns_per_pair=%.1f\n", descend(depth, n));
    fflush(stdout);
    for (;;)
        pause();
}
