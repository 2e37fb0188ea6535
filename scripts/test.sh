#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it).
# Unit, scenario, property, storage, end-to-end and fault-campaign tests, the
# etcd-client crate against paxlog (when protoc is installed),
# then a sweep of deterministic simulator seeds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${PAXLOG_SIM_SEEDS:-3000}
./scripts/deps.sh
# The end-to-end campaign tests drive the release binary.
cargo build --release --locked -q -p paxlog-cli -p paxlog-sim
cargo test --workspace --locked
# The etcd-client crate (crates.io) against a paxlog cluster: a workspace of
# its own (compat/etcd-client, own Cargo.lock) since its build script needs
# protoc, which the main workspace must not. It shares target/ and copies the
# main profiles; --release reuses the paxlog-cli release build above about as
# well as dev would reuse `cargo test --workspace` (tokio, hyper, tonic differ
# in features either way), and measured a little less to build on top.
if command -v protoc >/dev/null 2>&1; then
  echo "== etcd-client crate against paxlog"
  (cd compat/etcd-client && CARGO_TARGET_DIR="$PWD/../../target" cargo clippy --locked --release --all-targets -q -- -D warnings)
  (cd compat/etcd-client && CARGO_TARGET_DIR="$PWD/../../target" PAXLOG_BIN="$PWD/../../target/release/paxlog" cargo test --locked --release)
else
  echo "note: protoc not installed (scripts/deps.sh installs protobuf-compiler as root): skipping the etcd-client crate test"
fi
echo "== simulator: $seeds seeds from 0"
./target/release/paxlog-sim --seeds "$seeds"
echo "== simulator: 1000 seeds from 0 with a lease keeper (never early)"
./target/release/paxlog-sim --seeds 1000 --leases
echo "== simulator: regression seeds (crates/sim/regression-seeds.txt)"
grep -o '^[0-9]\+' crates/sim/regression-seeds.txt | while read -r seed; do
  ./target/release/paxlog-sim --seed "$seed" >/dev/null || {
    echo "regression seed $seed fails: replay with cargo run --release -p paxlog-sim -- --seed $seed"
    exit 1
  }
done
# New ground on every run: a fresh random range, printed so a failure can be
# replayed; failing seeds go to target/sim-failing-seeds.txt.
fresh_start=${PAXLOG_SIM_START:-$(( ($(od -An -N4 -tu4 /dev/urandom | tr -d ' ') % 1000000000) + 1000000 ))}
fresh=${PAXLOG_SIM_FRESH_SEEDS:-1000}
echo "== simulator: $fresh fresh seeds from $fresh_start (replay: PAXLOG_SIM_START=$fresh_start)"
if ! ./target/release/paxlog-sim --seeds "$fresh" --start-seed "$fresh_start" 2> target/sim-fresh.log; then
  cat target/sim-fresh.log
  grep -o '^seed [0-9]\+' target/sim-fresh.log | cut -d' ' -f2 >> target/sim-failing-seeds.txt
  echo "failing seeds written to target/sim-failing-seeds.txt: add them to crates/sim/regression-seeds.txt"
  exit 1
fi
