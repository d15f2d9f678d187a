#!/bin/bash
# memprof's own CPU (user + system ticks of its process, 100 per second) over 20 s while its
# target, one sleeping process in a cgroup of its own, does nothing. Usage (root):
#   bench/idle_cpu.sh MEMPROF_BINARY [memprof options...]
set -u
bin=${1:?usage: idle_cpu.sh MEMPROF_BINARY [options]}; shift
name=memprof-bench-idle-$$
cg=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)/$name
mkdir -p "$cg"
sleep 100000 & sp=$!; echo $sp > "$cg/cgroup.procs"
$bin --cgroup "$name" --interval 10s --output "/tmp/$name" "$@" > "/tmp/$name.log" 2>&1 &
mp=$!
sleep 3
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$mp/stat)
sleep 20
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$mp/stat)
echo "| ${*:-(default)} | $((u1 - u0 + s1 - s0)) ticks = $(( (u1 - u0 + s1 - s0) * 10 )) ms in 20 s |"
kill -INT $mp; wait $mp; kill $sp; wait $sp 2>/dev/null
rmdir "$cg"; rm -rf "/tmp/$name" "/tmp/$name.log"
