#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it).
# Unit, scenario, property, storage and end-to-end tests, then a sweep of
# deterministic simulator seeds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${PAXLOG_SIM_SEEDS:-3000}
cargo test --workspace --locked
echo "== simulator: $seeds seeds"
cargo run --release --locked -q -p paxlog-sim -- --seeds "$seeds"
