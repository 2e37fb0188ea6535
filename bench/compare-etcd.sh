#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd cluster and a 3-replica paxlog
# cluster on loopback, both with fsync on, driven in turn by the same
# closed-loop generator (`paxlog bench`). Prints one table with the
# paxlog/etcd ratio per row. The HTTP rows compare paxlog's HTTP API with
# etcd's JSON gateway; the gRPC rows drive both through etcd's own v3 gRPC
# API with the same client.
#
#   bench/compare-etcd.sh           # about 10 s per workload (a few minutes)
#   bench/compare-etcd.sh --quick   # about 2 s per workload (under a minute)
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10
warmup=2
if [[ "${1:-}" == "--quick" ]]; then
  duration=2
  warmup=0.5
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--quick]" >&2
  exit 2
fi

if ! command -v etcd >/dev/null 2>&1; then
  echo "== installing etcd-server (Debian package)"
  if ! apt-get install -y -qq etcd-server >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq etcd-server >/dev/null
  fi
fi
# The Debian package starts a default member as a service; ours are separate.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi

cargo build --release --locked -p paxlog-cli >/dev/null
paxlog=target/release/paxlog
work=$(mktemp -d /tmp/paxlog-vs-etcd.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # url
  for _ in $(seq 1 200); do
    if curl -sf -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  return 1
}

# Workloads: name | generator flags.
workloads=(
  "1 client, writes|--clients 1 --workload write"
  "64 clients, writes|--clients 64 --workload write"
  "64 clients, linearizable reads|--clients 64 --workload read --read-consistency linearizable"
  "64 clients, 90% reads / 10% writes|--clients 64 --workload mixed:0.9"
  "64 clients, writes, 256-byte values|--clients 64 --workload write --value-size 256"
  "gRPC: 1 client, puts|--protocol grpc --clients 1 --workload write"
  "gRPC: 64 clients, puts|--protocol grpc --clients 64 --workload write"
  "gRPC: 64 clients, linearizable ranges|--protocol grpc --clients 64 --workload read --read-consistency linearizable"
  "gRPC: 64 clients, serializable ranges|--protocol grpc --clients 64 --workload read --read-consistency local"
  "gRPC: 64 clients, txn (compare version, put)|--protocol grpc --clients 64 --workload txn"
  "gRPC: watch fan-out, 100 watchers, 8 writers (events/s)|--protocol grpc --clients 8 --workload watch --watchers 100"
)

run_workloads() { # target http-endpoints grpc-endpoints outfile
  local target=$1 http_endpoints=$2 grpc_endpoints=$3 out=$4
  for w in "${workloads[@]}"; do
    local name=${w%%|*} flags=${w#*|} endpoints=$http_endpoints
    if [[ $flags == *"--protocol grpc"* ]]; then endpoints=$grpc_endpoints; fi
    # shellcheck disable=SC2086
    "$paxlog" bench --target "$target" --endpoints "$endpoints" $flags \
      --duration "$duration" --warmup "$warmup" --json |
      python3 -c 'import json,sys; d=json.load(sys.stdin); d["name"]=sys.argv[1]; print(json.dumps(d))' "$name" >>"$out"
  done
}

echo "== etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'): 3 members on loopback"
cluster=""
for i in 0 1 2; do cluster+="e$i=http://127.0.0.1:$((23800 + i)),"; done
cluster=${cluster%,}
for i in 0 1 2; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((23790 + i))" \
    --advertise-client-urls "http://127.0.0.1:$((23790 + i))" \
    --listen-peer-urls "http://127.0.0.1:$((23800 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --initial-cluster-token paxlog-bench >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do wait_for "http://127.0.0.1:$((23790 + i))/health"; done
etcd_endpoints="http://127.0.0.1:23790,http://127.0.0.1:23791,http://127.0.0.1:23792"
# etcd serves gRPC and its JSON gateway on the same client port.
run_workloads etcd "$etcd_endpoints" "$etcd_endpoints" "$work/etcd.jsonl"
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

echo "== paxlog: 3 replicas on loopback"
peers="127.0.0.1:26000,127.0.0.1:26001,127.0.0.1:26002"
for i in 0 1 2; do
  RUST_LOG=warn "$paxlog" node --initial-cluster-state new --id "$i" --peers "$peers" --http "127.0.0.1:$((25000 + i))" \
    --grpc "127.0.0.1:$((27000 + i))" --data-dir "$work/paxlog$i" >"$work/paxlog$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do wait_for "http://127.0.0.1:$((25000 + i))/status"; done
paxlog_endpoints="http://127.0.0.1:25000,http://127.0.0.1:25001,http://127.0.0.1:25002"
paxlog_grpc="127.0.0.1:27000,127.0.0.1:27001,127.0.0.1:27002"
run_workloads paxlog "$paxlog_endpoints" "$paxlog_grpc" "$work/paxlog.jsonl"
peak_rss_mb=0
for pid in "${pids[@]}"; do
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  mb=$((hwm / 1024))
  if ((mb > peak_rss_mb)); then peak_rss_mb=$mb; fi
done

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "each workload: ${warmup}s warm-up, ${duration}s measured; all processes share the machine"
python3 - "$work/etcd.jsonl" "$work/paxlog.jsonl" "$peak_rss_mb" <<'PY'
import json, sys
etcd = [json.loads(l) for l in open(sys.argv[1])]
pax = [json.loads(l) for l in open(sys.argv[2])]
rows = [("workload", "etcd ops/s", "paxlog ops/s", "ratio", "etcd p50/p99 ms", "paxlog p50/p99 ms", "errors e/p")]
for e, p in zip(etcd, pax):
    ratio = p["ops_per_sec"] / e["ops_per_sec"] if e["ops_per_sec"] else float("inf")
    rows.append((e["name"], f'{e["ops_per_sec"]:.0f}', f'{p["ops_per_sec"]:.0f}', f"{ratio:.2f}x",
                 f'{e["p50_ms"]:.2f} / {e["p99_ms"]:.2f}', f'{p["p50_ms"]:.2f} / {p["p99_ms"]:.2f}',
                 f'{e["errors"]}/{p["errors"]}'))
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for i, r in enumerate(rows):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
print(f"paxlog peak resident memory of one replica: {sys.argv[3]} MB")
PY
