#!/usr/bin/env bash
# Container smoke test: builds the FROM-scratch image, runs the 3-replica
# docker-compose cluster, kills the leader's container, writes through the
# other two, restarts it and checks that all three /db answers converge.
#
# Skips (exit 0) when Docker is not usable.  Always removes its containers,
# network and volumes.  Runs beside other clusters: it uses its own compose
# project, host ports and subnet.
#
# Environment:
#   PAXLOG_SKIP_BUILD=1   reuse the existing image (default: docker/build-scratch.sh,
#                         which also reads PAXLOG_SRC_REV, CARGO_TARGET_DIR, ...)
#   PAXLOG_IMAGE          image to test                      (default paxlog:local)
#   PAXLOG_SUBNET_PREFIX  /24 for the test network, 3 octets (default: random 172.29.x)
#   PAXLOG_TEST_PORT      first of 3 host ports              (default: random 20000-29990)
#   PAXLOG_TEST_TIMEOUT   seconds to wait for each step      (default 60)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { echo "docker-test: $*"; }
fail() { echo "docker-test: FAILED: $*" >&2; exit 1; }
t0=$SECONDS

if ! docker info >/dev/null 2>&1; then
    # CI runs where Docker Engine is: there a missing engine is a failure.
    [[ ${CI:-} == true ]] && fail "docker is not available (docker info failed) and CI=true"
    say "SKIP: docker is not available (docker info failed)"
    exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    [[ ${CI:-} == true ]] && fail "neither docker-compose nor 'docker compose' is available and CI=true"
    say "SKIP: neither docker-compose nor 'docker compose' is available"
    exit 0
fi
command -v curl >/dev/null || fail "curl is needed"
command -v python3 >/dev/null || fail "python3 is needed (to compare JSON)"

export PAXLOG_IMAGE=${PAXLOG_IMAGE:-paxlog:local}
timeout=${PAXLOG_TEST_TIMEOUT:-60}

# --- image ---------------------------------------------------------------------
if [[ ${PAXLOG_SKIP_BUILD:-0} != 1 ]]; then
    say "building $PAXLOG_IMAGE (docker/build-scratch.sh)"
    docker/build-scratch.sh || fail "image build failed"
fi
docker image inspect "$PAXLOG_IMAGE" >/dev/null 2>&1 || fail "no image $PAXLOG_IMAGE"
docker run --rm "$PAXLOG_IMAGE" --help >/dev/null || fail "'docker run --rm $PAXLOG_IMAGE --help' failed"
say "image runs: $(docker run --rm "$PAXLOG_IMAGE" --version)"

# --- cluster -------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -n ${PAXLOG_TEST_PORT:-} ]]; then
    base=$PAXLOG_TEST_PORT
else
    for _ in $(seq 20); do
        base=$((20000 + RANDOM % 9990))
        port_free "$base" && port_free $((base + 1)) && port_free $((base + 2)) && break
    done
fi
used_subnets=$(docker network ls -q | xargs -r docker network inspect \
    -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null || true)
if [[ -z ${PAXLOG_SUBNET_PREFIX:-} ]]; then
    for _ in $(seq 20); do
        PAXLOG_SUBNET_PREFIX=172.29.$((RANDOM % 250))
        grep -q "$PAXLOG_SUBNET_PREFIX\." <<<"$used_subnets" || break
    done
fi
export PAXLOG_SUBNET_PREFIX
export PAXLOG_HTTP_PORT_0=$base PAXLOG_HTTP_PORT_1=$((base + 1)) PAXLOG_HTTP_PORT_2=$((base + 2))
project=paxlog-test-$$-$RANDOM
dc() { "${compose[@]}" -p "$project" -f "$root/docker-compose.yml" "$@"; }

cleanup() {
    rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "docker-test: --- last container logs ---" >&2
        dc logs --no-color --tail 15 >&2 2>&1 || true
    fi
    dc down -v --remove-orphans >/dev/null 2>&1 || say "warning: 'down -v' failed for project $project"
    say "torn down project $project ($((SECONDS - t0))s total)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "project $project: ports 127.0.0.1:$base-$((base + 2)), subnet $PAXLOG_SUBNET_PREFIX.0/24, ${compose[*]}"
dc up -d >/dev/null 2>&1 || { dc up -d || true; fail "'${compose[*]} up -d' failed"; }

url() { echo "http://127.0.0.1:$((base + $1))"; }
container() { dc ps -q "paxlog-$1"; }
# leader [nodes...]: prints the id the given nodes agree is leader (and that
# is itself among them), or fails.
leader() {
    local n out l=""
    for n in "$@"; do
        out=$(curl -sf -m 2 "$(url "$n")/status" | python3 -c \
            'import json,sys; s=json.load(sys.stdin); print(s["leader"] if s["leader"] is not None else "")' 2>/dev/null) || return 1
        [[ -n $out ]] || return 1
        [[ -z $l || $l == "$out" ]] || return 1
        l=$out
    done
    [[ " $* " == *" $l "* ]] || return 1
    echo "$l"
}
wait_for() {   # wait_for DESCRIPTION COMMAND...: retries until it succeeds
    local what=$1; shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null; do
        ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
        sleep 0.5
    done
}
put() {        # put NODE KEY JSON: one attempt
    curl -sf -m 10 -X PUT -H 'content-type: application/json' \
        --data-binary "$3" "$(url "$1")/v1/kv/$2" >/dev/null
}
canon_db() { curl -sf -m 5 "$(url "$1")/db" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True))'; }
converged() {
    local a b c
    a=$(canon_db 0) && b=$(canon_db 1) && c=$(canon_db 2) || return 1
    [[ $a == "$b" && $b == "$c" ]] || return 1
    echo "$a"
}

t=$SECONDS
wait_for "a leader agreed by all 3 replicas" leader 0 1 2
lead=$(leader 0 1 2)
say "leader is replica $lead ($((SECONDS - t))s after start)"

for i in 0 1 2 3 4 5; do
    wait_for "PUT k$i via replica $((i % 3))" put $((i % 3)) "k$i" "{\"n\":$i,\"phase\":\"before\"}"
done
say "wrote k0..k5 through all three replicas"

victim=$lead
cid=$(container "$victim")
[[ -n $cid ]] || fail "no container for paxlog-$victim"
docker kill "$cid" >/dev/null || fail "docker kill paxlog-$victim failed"
[[ $(docker inspect -f '{{.State.Running}}' "$cid") == false ]] || fail "paxlog-$victim still running after kill"
say "killed paxlog-$victim (the leader, SIGKILL)"

survivors=()
for n in 0 1 2; do [[ $n == "$victim" ]] || survivors+=("$n"); done
t=$SECONDS
wait_for "a new leader among ${survivors[*]}" leader "${survivors[@]}"
say "new leader is replica $(leader "${survivors[@]}") ($((SECONDS - t))s after the kill)"
for i in 6 7 8 9; do
    n=${survivors[$((i % 2))]}
    wait_for "PUT k$i via replica $n with paxlog-$victim down" put "$n" "k$i" "{\"n\":$i,\"phase\":\"degraded\"}"
done
put "${survivors[0]}" k0 '"overwritten"' || fail "overwrite of k0 failed with paxlog-$victim down"
got=$(curl -sf -m 5 "$(url "${survivors[1]}")/v1/kv/k0") || fail "GET k0 from replica ${survivors[1]} failed"
[[ $got == *'"overwritten"'* ]] || fail "GET k0 from replica ${survivors[1]} returned $got"
say "wrote k6..k9 and overwrote k0 through replicas ${survivors[*]} (2 of 3)"

docker start "$cid" >/dev/null || fail "docker start paxlog-$victim failed"
t=$SECONDS
wait_for "replica $victim answering after restart" curl -sf -m 2 -o /dev/null "$(url "$victim")/status"
wait_for "/db identical on all three replicas" converged
db=$(converged)
say "all three /db identical $((SECONDS - t))s after restart: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("current_round=%s keys=%d" % (d["current_round"], len(d["db"])))' "$db")"
python3 - "$db" <<'PY' || fail "converged /db does not hold the expected keys: $db"
import json, sys
d = json.loads(sys.argv[1])["db"]
assert d["k0"] == "overwritten", d
for i in range(1, 10):
    assert d["k%d" % i]["n"] == i, d
PY
say "PASS ($((SECONDS - t0))s)"
