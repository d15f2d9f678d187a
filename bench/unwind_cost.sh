#!/bin/bash
# What stack unwinding costs per recorded allocation, and how deep it gets:
# malloc+free pairs timed at a given call depth, with no profiler, memprof --unwind fp and
# memprof --unwind dwarf (the default), for a build with and without frame pointers.
# usage (root, after `cargo build --release -p memprof`): bench/unwind_cost.sh [PAIRS] [REPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
memprof=${MEMPROF_BIN:-$root/target/release/memprof}
pairs=${1:-200000}
reps=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -g -fno-omit-frame-pointer "$root/bench/deep.c" -o "$work/deep-fp"
gcc -O2 -g -fomit-frame-pointer "$root/bench/deep.c" -o "$work/deep-nofp"

# one_run BIN DEPTH MODE -> "ns_per_pair frames_of_top_stack whole_share"
one_run() {
    local bin=$1 depth=$2 mode=$3 out=$work/run
    rm -rf "$out" "$work/fx.out" "$work/mp.err"
    "$bin" "$depth" "$pairs" > "$work/fx.out" &
    local fx=$! mp=
    until grep -q ready "$work/fx.out" 2>/dev/null; do sleep 0.05; done
    if [ "$mode" != none ]; then
        "$memprof" --pid "$fx" --unwind "$mode" --interval 1h -o "$out" > /dev/null 2> "$work/mp.err" &
        mp=$!
        until grep -q "memprof: attached" "$work/mp.err" 2>/dev/null; do sleep 0.1; done
    fi
    kill -USR1 "$fx"
    until grep -q ns_per_pair "$work/fx.out" 2>/dev/null; do sleep 0.1; done
    local ns frames=- share=-
    ns=$(sed -n 's/ns_per_pair=//p' "$work/fx.out")
    if [ -n "$mp" ]; then
        kill -INT "$mp"; wait "$mp" || true
        read -r frames share < <(python3 -c "
import json,sys
s=json.load(open('$out/summary.json'))
top=max(s['stacks'], key=lambda x: x['bytes'])
q=s['stack_quality']['whole_bytes_share']
print(len(top['frames']), '-' if q is None else '%.3f' % q)")
    fi
    kill "$fx"; wait "$fx" 2>/dev/null || true
    echo "$ns $frames $share"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| build | call depth | profiler | ns per pair (median of $reps) | added ns per recorded allocation | frames in the leaking stack | whole-stack share |"
echo "|---|---|---|---|---|---|---|"
for build in fp nofp; do
    for depth in 4 16 48; do
        base=$(for i in $(seq "$reps"); do one_run "$work/deep-$build" "$depth" none | cut -d' ' -f1; done | median)
        echo "| $build | $depth | none | $base | — | — | — |"
        for mode in fp dwarf; do
            rm -f "$work/res"
            for i in $(seq "$reps"); do one_run "$work/deep-$build" "$depth" "$mode" >> "$work/res"; done
            ns=$(cut -d' ' -f1 "$work/res" | median)
            frames=$(tail -1 "$work/res" | cut -d' ' -f2)
            share=$(tail -1 "$work/res" | cut -d' ' -f3)
            added=$(python3 -c "print('%.0f' % ($ns - $base))")
            echo "| $build | $depth | memprof --unwind $mode | $ns | $added | $frames | $share |"
        done
    done
done
