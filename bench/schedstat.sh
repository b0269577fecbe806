#!/usr/bin/env bash
# Per-thread CPU time and run-queue wait of running processes over an interval, from
# /proc/PID/task/*/schedstat: shows whether threads wait for a CPU (contention) rather
# than for work. Usage: bench/schedstat.sh SECONDS PID [PID...]
# Prints, per thread that ran at least 50 ms: time running, time runnable but waiting,
# time slices, and the average wait per slice.
set -euo pipefail
secs=${1:?usage: bench/schedstat.sh SECONDS PID [PID...]}
shift
[ $# -gt 0 ] || { echo "usage: bench/schedstat.sh SECONDS PID [PID...]" >&2; exit 2; }
snap() {
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      [ -r "$t/schedstat" ] && echo "$p $(tr ' ' _ < "$t/comm") $(cat "$t/schedstat")" || true
    done
  done
}
a=$(snap "$@")
sleep "$secs"
b=$(snap "$@")
python3 - "$a" "$b" <<'PY'
import sys
def parse(text):
    d = {}
    for line in text.splitlines():
        pid, comm, run, wait, slices = line.split()
        r, w, n = d.get((pid, comm), (0, 0, 0))
        d[(pid, comm)] = (r + int(run), w + int(wait), n + int(slices))
    return d
a, b = parse(sys.argv[1]), parse(sys.argv[2])
print(f"{'pid':>8} {'thread':<18} {'run s':>7} {'wait s':>7} {'slices':>8} {'wait/slice':>11}")
for key in sorted(b):
    if key not in a:
        continue
    run = (b[key][0] - a[key][0]) / 1e9
    wait = (b[key][1] - a[key][1]) / 1e9
    n = b[key][2] - a[key][2]
    if run >= 0.05:
        print(f"{key[0]:>8} {key[1]:<18} {run:7.2f} {wait:7.2f} {n:8d} {wait / max(n, 1) * 1e6:9.0f} us")
PY
