#!/usr/bin/env bash
# Builds teamgate and teamgate-bench in release, then runs the benchmark. Every argument goes
# to teamgate-bench (see bench/README.md), e.g.:
#   bench/run.sh                                  # default data set, all backends
#   bench/run.sh --duration 2 --warmup 0.5 --out /tmp/smoke
#   bench/run.sh --large --backends postgres-redis
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin teamgate --bin teamgate-bench
exec "${CARGO_TARGET_DIR:-target}/release/teamgate-bench" "$@"
