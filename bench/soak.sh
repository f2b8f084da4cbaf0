#!/usr/bin/env bash
# The soak run (issue 7): builds teamgate and teamgate-bench in release, then runs
# `teamgate-bench soak` — 10 minutes of mixed traffic against two replicas on a PostgreSQL and
# a Redis of its own, with faults injected. Not part of CI. Every argument goes to
# `teamgate-bench soak`, e.g.:
#   bench/soak.sh                              # 10 minutes, report in bench/results/<date>-soak.md
#   bench/soak.sh --minutes 2 --cycle-secs 40 --out /tmp/soak
# Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) and redis-server; as root, the
# private PostgreSQL runs as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin teamgate --bin teamgate-bench
exec "${CARGO_TARGET_DIR:-target}/release/teamgate-bench" soak "$@"
