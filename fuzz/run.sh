#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, two at a time, starting from the
# committed seeds. Needs cargo-fuzz (`cargo install cargo-fuzz`); works on stable Rust
# with RUSTC_BOOTSTRAP=1 (libFuzzer instrumentation flags). New inputs go to
# fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
run() {
  mkdir -p "corpus/$1"
  local log="corpus/$1.log"
  cargo fuzz run -O "$1" "corpus/$1" "seeds/$1" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || echo "$1: fuzzer exited with an error (see fuzz/$log)"
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY)' "$log" | sed "s/^/$1: /" || true
}
targets=(json_client fb_client upgrade jwt ws_frames tls_records tls_established)
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" &
  if [ $((i + 1)) -lt ${#targets[@]} ]; then run "${targets[i + 1]}" & fi
  wait
done
for t in "${targets[@]}"; do echo "$t: corpus $(ls "corpus/$t" | wc -l) inputs"; done
if ls artifacts/*/crash-* >/dev/null 2>&1; then echo "CRASHES FOUND:"; ls artifacts/*/crash-*; exit 1; fi
echo "no crashes"
