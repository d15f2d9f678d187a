"""What memprof's Python stack walk costs, by Python stack depth (for `cargo xtask bench`).

usage: python3 depth.py DEPTH PAIRS

Recurses DEPTH pure-Python calls deep, then times PAIRS allocation+free pairs of a 1000-byte
`bytes` object there (over pymalloc's 512-byte limit, so each one is a `malloc` and a `free`,
recorded even where Python's object allocator is not probed). One object in 64 is kept, so the
stack stays in memprof's report.

Bench protocol: prints `ready <pid>`, waits for SIGUSR1, runs, prints
`ns_per_pair <x>` and `frames <n>` (Python frames on the stack where the pairs run, this
module's and the runner's) and then sleeps until it is killed.
"""

import os
import signal
import sys
import time
from itertools import repeat

KEEP_EVERY = 64
KEPT = []


def pairs(n):
    """Times n allocation+free pairs (one object in KEEP_EVERY kept). No other object is
    allocated per pair: itertools.repeat instead of range, whose ints above 256 would each be
    an allocation of Python's object allocator (recorded where memprof probes it)."""
    keep = KEPT.append
    rounds = n // KEEP_EVERY
    t0 = time.perf_counter_ns()
    for _ in repeat(None, rounds):
        keep(bytes(1000))
        for _ in repeat(None, KEEP_EVERY - 1):
            bytes(1000)
    elapsed = time.perf_counter_ns() - t0
    return elapsed / (rounds * KEEP_EVERY), len(python_stack())


def descend(depth, n):
    if depth <= 1:
        return pairs(n)
    return descend(depth - 1, n)


def python_stack():
    frames = []
    f = sys._getframe(1)
    while f is not None:
        frames.append(f)
        f = f.f_back
    return frames


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: depth.py DEPTH PAIRS")
    depth, n = int(argv[0]), int(argv[1])
    go = []
    signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
    print(f"ready {os.getpid()}", flush=True)
    while not go:
        time.sleep(0.02)
    ns, frames = descend(depth, n)
    print(f"ns_per_pair {ns:.1f}", flush=True)
    print(f"frames {frames}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
