#!/bin/bash
# SIGINT -> exit of memprof, and what it holds, in three situations (run as root):
#   idle-1:    one sleeping process probed (libc: ~11 uprobe_multi links, or ~17 perf events)
#   idle-50:   fifty sleeping processes
#   churn-10k: a sleeping process beside 10,000 short-lived processes that came and went
# each with uprobe_multi links (default) and with --no-uprobe-multi (perf events).
# Prints one Markdown table row per run. Usage: bench/exit_churn.sh MEMPROF_BINARY
set -u
bin=${1:?usage: exit_churn.sh MEMPROF_BINARY}
row() { # label, memprof options, sleepers, short-lived processes
    local label=$1 opts=$2 n=$3 churn=$4
    local name=memprof-bench-exit-$$ out=/tmp/memprof-bench-exit-$$
    local cg=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)/$name
    mkdir -p "$cg"; rm -rf "$out"
    local pids=()
    for _ in $(seq "$n"); do sleep 100000 & pids+=($!); echo $! > "$cg/cgroup.procs"; done
    $bin --cgroup "$name" --interval 1s $opts --output "$out" > "$out.log" 2>&1 &
    local mp=$!
    for _ in $(seq 300); do grep -q "attached" "$out.log" && break; sleep 0.1; done
    if [ "$churn" -gt 0 ]; then
        sh -c "echo \$\$ > $cg/cgroup.procs; i=0; while [ \$i -lt $churn ]; do /bin/true; i=\$((i+1)); done"
    fi
    sleep 3
    local fds=$(ls /proc/$mp/fd | wc -l) rss=$(awk '/VmHWM/{print $2}' /proc/$mp/status)
    local t0=$(date +%s.%N); kill -INT $mp; wait $mp; local t1=$(date +%s.%N)
    local short=$(python3 -c "import json;print(json.load(open('$out/summary.json'))['stats'].get('short_lived_processes','-'))" 2>/dev/null)
    printf "| %s | %s | %.2f s | %d | %.0f MiB | %s |\n" "$label" "${opts:-(default)}" "$(echo "$t1 - $t0" | bc)" "$fds" "$(echo "$rss / 1024" | bc -l)" "$short"
    kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null
    rmdir "$cg" 2>/dev/null; rm -rf "$out" "$out.log"
}
echo "| situation | options | SIGINT → exit | fds at the end | peak RSS | short_lived_processes |"
echo "|---|---|---|---|---|---|"
for opts in "" "--no-uprobe-multi"; do
    row idle-1 "$opts" 1 0
    row idle-50 "$opts" 50 0
    row churn-10k "$opts" 1 10000
done
