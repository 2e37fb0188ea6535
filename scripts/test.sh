#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it).
# Unit, scenario, property, storage, end-to-end and fault-campaign tests,
# then a sweep of deterministic simulator seeds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${PAXLOG_SIM_SEEDS:-3000}
./scripts/deps.sh
# The end-to-end campaign tests drive the release binary.
cargo build --release --locked -q -p paxlog-cli -p paxlog-sim
cargo test --workspace --locked
echo "== simulator: $seeds seeds"
./target/release/paxlog-sim --seeds "$seeds"
