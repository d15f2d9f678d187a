'use strict';
/*
 * What memprof's JS stack walk costs, by JS stack depth (for `cargo xtask bench-node`).
 *
 * usage: node depth.js DEPTH ALLOCS
 *
 * Recurses DEPTH JS calls deep (`descend`, kept from inlining by its recursion), then times
 * ALLOCS allocations of a 4 KiB Buffer there (each a `calloc` by Node's ArrayBuffer allocator;
 * one in 64 is kept, the rest die young and are freed by the GC).
 *
 * Bench protocol: prints `ready <pid>`, waits for SIGUSR1, runs, prints `ns_per_alloc <x>` and
 * `frames <n>` (JS frames on the stack where the allocations run: DEPTH × descend, plus
 * `allocs` and the signal handler's caller), then stays alive until it is killed.
 */

const KEEP_EVERY = 64;
const kept = [];

function allocs(n) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const b = Buffer.alloc(4096);
    if (i % KEEP_EVERY === 0) kept.push(b);
  }
  const ns = Number(process.hrtime.bigint() - t0) / n;
  return ns;
}

function descend(depth, n) {
  if (depth > 1) return descend(depth - 1, n);
  return allocs(n);
}

const [depth, n] = process.argv.slice(2).map(Number);
if (!(depth >= 1) || !(n >= 1)) {
  process.stderr.write('usage: node depth.js DEPTH ALLOCS\n');
  process.exit(2);
}
const keepAlive = setInterval(() => {}, 1 << 30);
process.on('SIGUSR1', () => {
  const ns = descend(depth, n);
  process.stdout.write(`ns_per_alloc ${ns.toFixed(1)}\nframes ${depth + 2}\n`);
});
process.stdout.write(`ready ${process.pid}\n`);
void keepAlive;
