#!/usr/bin/env bash
# Checks the host limits Switchboard depends on and prints what to change.
# Usage: tuning/check-host.sh [target-connections]   (read-only: changes nothing)
set -u
target=${1:-100000}
warn=0
say() { printf '%-28s %s\n' "$1" "$2"; }
nofile=$(ulimit -Hn)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt $((target + 1000)) ]; then
  say "nofile (hard) = $nofile" "LOW: one fd per connection; set LimitNOFILE=$((target + 10000)) (systemd) or nofile in limits.conf"; warn=1
else say "nofile (hard) = $nofile" ok; fi
memlock=$(ulimit -l)
if [ "$memlock" != unlimited ] && [ "$memlock" -lt 512 ]; then
  say "memlock = ${memlock} KiB" "LOW: glommio refuses to start below 512 KiB; set LimitMEMLOCK=infinity"; warn=1
else say "memlock = ${memlock} KiB" ok; fi
for kv in "net.core.somaxconn 4096" "fs.nr_open $((target + 1000))" "fs.file-max $((target * 2))"; do
  set -- $kv
  v=$(sysctl -n "$1" 2>/dev/null || echo 0)
  if [ "$v" -lt "$2" ]; then say "$1 = $v" "LOW: want >= $2"; warn=1; else say "$1 = $v" ok; fi
done
say "net.ipv4.ip_local_port_range" "$(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null) (matters for load clients, not the server)"
if [ -e /proc/sys/kernel/io_uring_disabled ] && [ "$(cat /proc/sys/kernel/io_uring_disabled)" != 0 ]; then
  say "kernel.io_uring_disabled" "io_uring is disabled: Switchboard cannot run"; warn=1
else say "io_uring" "enabled (kernel $(uname -r))"; fi
exit $warn
