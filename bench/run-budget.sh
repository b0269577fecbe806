#!/usr/bin/env bash
# Measures the budget of issue 5 on this host (loopback only; every run bounded).
# Usage: bench/run-budget.sh OUTDIR [PART...]   (one JSON report per run, and a log)
# PART: idle, storm, tls, chat, fanout, during-storm, reconnect, deflate (default: all of
# them), and cql (not in the default: the DM chat on a one-node Cassandra started by
# storage/cql/cassandra.sh, next to the embedded store, alternating, two rounds).
# Each measurement starts a fresh release gateway (2 shards, embedded storage in a
# temporary directory) so memory figures are not polluted by earlier runs.
# EXTRA_TOML: config lines added to every gateway's (e.g. 'commit_log_mib = 0' for an A/B).
set -euo pipefail
out=${1:?usage: bench/run-budget.sh OUTDIR [PART...]}
shift
parts=" ${*:-idle storm tls chat fanout during-storm reconnect deflate} "
want() { [[ $parts == *" $1 "* ]]; }
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p switchboard -p switchboard-bench --manifest-path "$root/Cargo.toml"
sb="$root/target/release/switchboard"
bench="$root/target/release/switchboard-bench"
export SWITCHBOARD_JWT_SECRET=budget-secret-0123456789abcdef
port=9700

start() { # start TOML_LINES [serve flags...]
  local toml=$1; shift
  tmp=$(mktemp -d)
  printf 'send_rate = 0\nmax_frames_per_sec = 65535\nadmin_listen = "127.0.0.1:0"\nhandshake_rate = 0\n%s\n%s\n' "$toml" "${EXTRA_TOML:-}" > "$tmp/c.toml"
  port=$((port + 1))
  RUST_LOG=warn "$sb" serve --listen 127.0.0.1:$port --shards 2 --config "$tmp/c.toml" --data-dir "$tmp/d" "$@" > "$tmp/log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q listening "$tmp/log" 2>/dev/null && break; sleep 0.1; done
  addr=127.0.0.1:$port
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
run() { # run NAME args...   (one JSON report to $out/NAME.json)
  local name=$1; shift
  echo "== $name: $*" | tee -a "$out/log"
  "$bench" "$@" --addr "$addr" --server-pid "$pid" --json > "$out/$name.json" 2>> "$out/log"
}

if want idle; then
# Idle memory per connection, flatness from 1,000 to 19,000 (two processes above 10K).
for n in 1000 5000 10000; do
  start ""; run "storm-idle-$n" storm --connections $n --rate 5000 --hold 2 --sources 127.0.0.2-127.0.0.20 --tag i$n; stop
done
start ""
"$bench" storm --addr "$addr" --server-pid "$pid" --json --connections 9500 --rate 5000 --hold 6 --sources 127.0.0.2-127.0.0.20 --tag j1 > "$out/storm-idle-19000-a.json" 2>> "$out/log" &
bg=$!
"$bench" storm --addr "$addr" --server-pid "$pid" --json --connections 9500 --rate 5000 --hold 6 --sources 127.0.0.21-127.0.0.40 --tag j2 > "$out/storm-idle-19000-b.json" 2>> "$out/log"
wait $bg
"$bench" merge "$out/storm-idle-19000-a.json" "$out/storm-idle-19000-b.json" > "$out/storm-idle-19000.json" 2>> "$out/log"
stop

fi

if want storm; then
# Connection storm rate: plain (two client processes, one executor each).
start ""
"$bench" storm --addr "$addr" --server-pid "$pid" --json --connections 9000 --rate 40000 --hold 1 --threads 1 --sources 127.0.0.2-127.0.0.20 --tag p1 > "$out/storm-rate-a.json" 2>> "$out/log" &
bg=$!
"$bench" storm --addr "$addr" --server-pid "$pid" --json --connections 9000 --rate 40000 --hold 1 --threads 1 --sources 127.0.0.21-127.0.0.40 --tag p2 > "$out/storm-rate-b.json" 2>> "$out/log"
wait $bg
"$bench" merge "$out/storm-rate-a.json" "$out/storm-rate-b.json" > "$out/storm-rate.json" 2>> "$out/log"
stop
fi

if want tls; then
start "" --tls-dev
# TLS handshakes cost the client more CPU than the server: two client executors.
run storm-tls-full storm --connections 8000 --rate 10000 --hold 1 --threads 2 --tls-ca "$tmp/d/dev-cert.pem" --no-resume --sources 127.0.0.2-127.0.0.20 --tag t1
stop
# Resumption: each device connects once unmeasured (its own ticket store), then the
# measured storm is every device reconnecting.
start "" --tls-dev
run storm-tls-resume storm --connections 8000 --rate 10000 --hold 1 --threads 2 --tls-ca "$tmp/d/dev-cert.pem" --sources 127.0.0.2-127.0.0.20 --tag t2
stop
start "" --tls-dev
run storm-tls-idle storm --connections 5000 --rate 2000 --hold 2 --tls-ca "$tmp/d/dev-cert.pem" --no-resume --sources 127.0.0.2-127.0.0.20 --tag t3
stop

fi

if want chat; then
# Durable 1:1 messaging: 1,000 pairs, 64-byte bodies, open loop.
for rate in 20000 40000; do
  start ""; run "chat-$rate" chat --users 2000 --rate $rate --secs 10 --body 64 --tag c$rate; stop
done
start ""; run chat-100k chat --users 10000 --rate 100000 --secs 10 --body 64 --threads 2 --tag c100k; stop
# A mix: 20% of traffic to 50 groups of 20.
start ""; run chat-mix chat --users 2000 --rate 10000 --secs 10 --body 32-512 --groups 50 --group-size 20 --group-share 0.2 --tag mix; stop

fi

if want fanout; then
# Fan-out: one 5,000-member group, 100 msg/s = 499,900 deliveries/s asked (twice the
# 250,000/s target: the scenario is open loop, so it must offer more than the target).
start ""; run fanout-5000 fanout --members 5000 --rate 100 --secs 10 --threads 2 --tag fan; stop

fi

if want during-storm; then
# Latency under a storm: chat at 5,000 msg/s for 30 s; a 10,000-connection storm from
# second 10 (a second process). Compare the chat timeline's p99 before and during.
start ""
"$bench" chat --addr "$addr" --server-pid "$pid" --json --users 2000 --rate 5000 --secs 30 --tag q > "$out/chat-during-storm.json" 2>> "$out/log" &
chatpid=$!
sleep 12
"$bench" storm --addr "$addr" --json --connections 10000 --rate 10000 --hold 5 --sources 127.0.0.2-127.0.0.40 --tag st > "$out/storm-during-chat.json" 2>> "$out/log"
wait $chatpid
stop

fi

if want reconnect; then
# Mass reconnect with sync.
start ""; run reconnect-10000 reconnect --users 10000 --before 3 --missed 5 --threads 2 --tag rc; stop
fi

echo "done: $out" | tee -a "$out/log"

if want deflate; then
# permessage-deflate (gateway with permessage_deflate = true in every run): idle memory
# per connection with and without compression negotiated, then server CPU per message
# in JSON chat (as browsers speak it) without and with, alternating, three rounds each.
for mode in plain deflate; do
  flag=(); [ "$mode" = deflate ] && flag=(--deflate)
  start 'permessage_deflate = true'
  run "deflate-idle-$mode" storm --connections 10000 --rate 5000 --hold 2 --sources 127.0.0.2-127.0.0.20 --tag "i$mode" "${flag[@]}"
  stop
done
for round in 1 2 3; do
  for mode in plain deflate; do
    flag=(); [ "$mode" = deflate ] && flag=(--deflate)
    start 'permessage_deflate = true'
    run "deflate-chat-$mode-$round" chat --users 2000 --rate 10000 --secs 10 --body 24-300 --encoding json --threads 2 --tag "c$mode$round" "${flag[@]}"
    stop
  done
done
fi

if want cql; then
# DM chat stored in Cassandra (one node on 127.0.0.2, commit log synced before each ack)
# next to the embedded store, at 5,000 and 10,000 msg/s, alternating, two rounds.
cassandra="$root/storage/cql/cassandra.sh"
trap '"$cassandra" stop' EXIT
nodes=$("$cassandra" start 1)
for round in 1 2; do
  for rate in 5000 10000; do
    for storage in embedded cql; do
      toml=""
      [ "$storage" = cql ] && toml="storage = \"cql\"
cql_nodes = [\"$nodes\"]
cql_keyspace = \"bench_${round}_$rate\"
cql_replication_factor = 1"
      start "$toml"
      run "cql-chat-$storage-$rate-$round" chat --users 2000 --rate $rate --secs 10 --body 64 --tag "q$storage$rate$round"
      stop
    done
  done
done
"$cassandra" stop
fi
