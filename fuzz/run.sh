#!/usr/bin/env bash
# Build every fuzz target and run each for SECONDS (default 10), seeded by seed.py; fails
# on the first crash, hang or divergence (libFuzzer writes the input to
# fuzz/artifacts/TARGET/). Prints one line per target: executions and time.
# Usage: run.sh [--dev] [SECONDS]. --dev builds without optimisation (CI: the build is
# most of the time, and a few seconds of slower runs still cover the seeds and beyond).
# On a stable toolchain (see docs/security.md "Fuzzing"): RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its -Z flags, and --sanitizer none because the sanitizers need a
# nightly std.
set -euo pipefail
cd "$(dirname "$0")"
profile=()
if [ "${1:-}" = "--dev" ]; then
  profile=(--dev)
  shift
fi
seconds=${1:-10}
export RUSTC_BOOTSTRAP=1
python3 seed.py
cargo fuzz build --sanitizer none "${profile[@]}"
for target in $(cargo fuzz list); do
  log=$(mktemp)
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: one over 2 GiB a leak.
  if ! cargo fuzz run --sanitizer none "${profile[@]}" "$target" -- \
      -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  echo "fuzz: $target: $execs executions in ${seconds}s"
  rm -f "$log"
done
