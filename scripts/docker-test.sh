#!/usr/bin/env bash
# Container smoke test: builds the FROM-scratch image, runs the 3-replica
# docker-compose cluster (peers by service name), kills the leader's
# container, writes through the other two, restarts it and checks that all
# three /db answers converge.  Then it grows the cluster with the join flow:
# starts paxlog-3 (compose profile `scale`), waits until /v1/members shows 4
# voters, writes through paxlog-3, checks that all four /db converge,
# restarts paxlog-3 (its volume keeps its id), and removes it again with
# `paxlog member remove 3` run inside the network (as docker-compose.yml
# documents).
#
# Skips (exit 0) when Docker is not usable (fails instead when CI=true).
# Always removes its containers, network and volumes.  Runs beside other
# clusters: its own compose project name and random host ports.
#
# Environment:
#   PAXLOG_SKIP_BUILD=1   reuse the existing image (default: docker/build-scratch.sh,
#                         which also reads PAXLOG_SRC_REV, CARGO_TARGET_DIR, ...)
#   PAXLOG_IMAGE          image to test                      (default paxlog:local)
#   PAXLOG_TEST_PORT      first of 4 host ports              (default: random 20000-29990)
#   PAXLOG_TEST_TIMEOUT   seconds to wait for each step      (default 90)
#   PAXLOG_TEST_JOIN_TIMEOUT  seconds for paxlog-3 to join and
#                         become a voter                     (default 240)
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
timeout=${PAXLOG_TEST_TIMEOUT:-90}
join_timeout=${PAXLOG_TEST_JOIN_TIMEOUT:-240}

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
        port_free "$base" && port_free $((base + 1)) && port_free $((base + 2)) \
            && port_free $((base + 3)) && port_free $((base + 10)) \
            && port_free $((base + 11)) && port_free $((base + 12)) \
            && port_free $((base + 13)) && break
    done
fi
export PAXLOG_HTTP_PORT_0=$base PAXLOG_HTTP_PORT_1=$((base + 1)) \
    PAXLOG_HTTP_PORT_2=$((base + 2)) PAXLOG_HTTP_PORT_3=$((base + 3))
export PAXLOG_GRPC_PORT_0=$((base + 10)) PAXLOG_GRPC_PORT_1=$((base + 11)) \
    PAXLOG_GRPC_PORT_2=$((base + 12)) PAXLOG_GRPC_PORT_3=$((base + 13))
project=paxlog-test-$$-$RANDOM
dc() { "${compose[@]}" -p "$project" -f "$root/docker-compose.yml" "$@"; }
# With the `scale` profile: paxlog-3 is then part of the project too.
dcs() { "${compose[@]}" -p "$project" -f "$root/docker-compose.yml" --profile scale "$@"; }

cleanup() {
    rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "docker-test: --- last container logs ---" >&2
        dcs logs --no-color --tail 20 >&2 2>&1 || true
    fi
    dcs down -v --remove-orphans >/dev/null 2>&1 || say "warning: 'down -v' failed for project $project"
    say "torn down project $project ($((SECONDS - t0))s total)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "project $project: ports 127.0.0.1:$base-$((base + 3)), ${compose[*]}"
dc up -d >/dev/null 2>&1 || { dc up -d || true; fail "'${compose[*]} up -d' failed"; }

url() { echo "http://127.0.0.1:$((base + $1))"; }
container() { dcs ps -q "paxlog-$1"; }
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
    local deadline=$((SECONDS + ${wait_timeout:-$timeout}))
    until "$@" >/dev/null; do
        ((SECONDS < deadline)) || fail "timed out after ${wait_timeout:-$timeout}s waiting for $what"
        sleep 0.5
    done
}
put() {        # put NODE KEY JSON: one attempt
    curl -sf -m 10 -X PUT -H 'content-type: application/json' \
        --data-binary "$3" "$(url "$1")/v1/kv/$2" >/dev/null
}
canon_db() { curl -sf -m 5 "$(url "$1")/db" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True))'; }
converged() {  # converged NODE...: prints the /db all of them agree on
    local n a first=""
    for n in "$@"; do
        a=$(canon_db "$n") || return 1
        [[ -z $first || $a == "$first" ]] || return 1
        first=$a
    done
    echo "$first"
}
db_summary() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("current_round=%s keys=%d" % (d["current_round"], len(d["db"])))' "$1"; }
# members NODE: GET /v1/members, compact: "voters=0,1,2,3 learners= leader=1 http=paxlog-0:5000,..."
members() {
    curl -sf -m 3 "$(url "$1")/v1/members" | python3 -c '
import json, sys
m = json.load(sys.stdin)
ids = lambda k: ",".join(str(i) for i in sorted(m[k]))
print("voters=%s learners=%s leader=%s leader_http=%s members=%s" % (
    ids("voters"), ids("learners"), m.get("leader"), m.get("leader_http"),
    ",".join("%s:%s@%s/%s" % (x["id"], x["role"], x.get("peer"), x.get("http"))
             for x in sorted(m["members"], key=lambda x: x["id"]))))'
}
voters_are() { # voters_are NODE LIST: /v1/members on NODE shows exactly these voters, no learners
    local out
    out=$(members "$1") || return 1
    [[ $out == "voters=$2 learners= "* ]]
}

t=$SECONDS
wait_for "a leader agreed by all 3 replicas" leader 0 1 2
lead=$(leader 0 1 2)
say "leader is replica $lead ($((SECONDS - t))s after start)"
wait_for "/v1/members on replica 0 to show a leader_http" \
    bash -c "curl -sf -m 3 $(url 0)/v1/members | grep -q '\"leader_http\":\"paxlog-'"
say "members: $(members 0)"

for i in 0 1 2 3 4 5; do
    wait_for "PUT k$i via replica $((i % 3))" put $((i % 3)) "k$i" "{\"n\":$i,\"phase\":\"before\"}"
done
say "wrote k0..k5 through all three replicas"

# etcd's v3 gRPC API through the published ports (when etcdctl is here).
if command -v etcdctl >/dev/null 2>&1; then
    grpc_endpoints="127.0.0.1:$PAXLOG_GRPC_PORT_0,127.0.0.1:$PAXLOG_GRPC_PORT_1,127.0.0.1:$PAXLOG_GRPC_PORT_2"
    wait_for "etcdctl put through the gRPC ports" \
        env ETCDCTL_API=3 etcdctl --endpoints="$grpc_endpoints" put etcd/k via-grpc
    got=$(ETCDCTL_API=3 etcdctl --endpoints="$grpc_endpoints" get etcd/k --print-value-only) \
        || fail "etcdctl get failed"
    [[ $got == via-grpc ]] || fail "etcdctl get returned $got"
    etcd_members=$(ETCDCTL_API=3 etcdctl --endpoints="$grpc_endpoints" member list) || fail "etcdctl member list failed"
    [[ $etcd_members == *"http://paxlog-0:2379"* ]] || fail "member list lacks the advertised gRPC address: $etcd_members"
    say "etcdctl put/get/member list through the containers' gRPC ports"
fi

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
wait_for "overwrite of k0 via replica ${survivors[0]} with paxlog-$victim down" put "${survivors[0]}" k0 '"overwritten"'
got=$(curl -sf -m 5 "$(url "${survivors[1]}")/v1/kv/k0") || fail "GET k0 from replica ${survivors[1]} failed"
[[ $got == *'"overwritten"'* ]] || fail "GET k0 from replica ${survivors[1]} returned $got"
say "wrote k6..k9 and overwrote k0 through replicas ${survivors[*]} (2 of 3)"

# The converged /db ($1) holds k0 overwritten and k1..k$2 = {"n": i, ...}.
expect_keys() {
    python3 - "$1" "$2" <<'PY' || fail "converged /db does not hold the expected keys: $1"
import json, sys
d = json.loads(sys.argv[1])["db"]
assert d["k0"] == "overwritten", d
for i in range(1, int(sys.argv[2]) + 1):
    assert d["k%d" % i]["n"] == i, d
PY
}

docker start "$cid" >/dev/null || fail "docker start paxlog-$victim failed"
t=$SECONDS
wait_for "replica $victim answering after restart" curl -sf -m 2 -o /dev/null "$(url "$victim")/status"
wait_for "/db identical on all three replicas" converged 0 1 2
db=$(converged 0 1 2)
say "all three /db identical $((SECONDS - t))s after restart: $(db_summary "$db")"
expect_keys "$db" 9

# --- join: a 4th replica -----------------------------------------------------------
t=$SECONDS
dcs up -d paxlog-3 >/dev/null 2>&1 || { dcs up -d paxlog-3 || true; fail "'--profile scale up -d paxlog-3' failed"; }
say "started paxlog-3 (profile scale, PAXLOG_JOIN, PAXLOG_PROMOTE)"
wait_timeout=$join_timeout wait_for "4 voters in /v1/members on replica 0" voters_are 0 0,1,2,3
say "4 voters $((SECONDS - t))s after 'up -d paxlog-3': $(members 0)"
[[ $(members 0) == *"3:voter@paxlog-3:6000/paxlog-3:5000"* ]] \
    || fail "member 3 is not paxlog-3's advertised addresses: $(members 0)"
wait_for "replica 3 to see itself as a voter" voters_are 3 0,1,2,3
for i in 10 11 12; do
    wait_for "PUT k$i via replica 3" put 3 "k$i" "{\"n\":$i,\"phase\":\"joined\"}"
done
say "wrote k10..k12 through paxlog-3"
t=$SECONDS
wait_for "/db identical on all four replicas" converged 0 1 2 3
db=$(converged 0 1 2 3)
say "all four /db identical $((SECONDS - t))s after the writes: $(db_summary "$db")"
expect_keys "$db" 12

# Its volume remembers id 3: a restart must not join again as a 5th member.
t=$SECONDS
dcs restart paxlog-3 >/dev/null 2>&1 || fail "restart of paxlog-3 failed"
wait_for "replica 3 answering after restart" curl -sf -m 2 -o /dev/null "$(url 3)/status"
wait_for "PUT k13 via replica 3 after its restart" put 3 k13 '{"n":13,"phase":"restarted"}'
wait_for "/db identical on all four replicas after paxlog-3's restart" converged 0 1 2 3
voters_are 0 0,1,2,3 || fail "after paxlog-3's restart the members are not 0..3: $(members 0)"
say "restarted paxlog-3: same id, still 4 voters, converged ($((SECONDS - t))s)"

# Scale down as documented: remove the member from inside the network, then
# stop the container.
t=$SECONDS
out=$(dcs exec -T paxlog-0 /usr/local/bin/paxlog member remove 3 \
    --endpoints http://paxlog-0:5000,http://paxlog-1:5000,http://paxlog-2:5000 2>&1) \
    || fail "'paxlog member remove 3' (exec in paxlog-0) failed: $out"
wait_for "3 voters again in /v1/members on replica 0" voters_are 0 0,1,2
dcs stop paxlog-3 >/dev/null 2>&1 || fail "stop paxlog-3 failed"
wait_for "PUT k14 via replica 0 after removing paxlog-3" put 0 k14 '{"n":14,"phase":"removed"}'
wait_for "/db identical on the three remaining replicas" converged 0 1 2
say "removed member 3 and stopped paxlog-3 ($((SECONDS - t))s): $(members 0)"
say "PASS ($((SECONDS - t0))s)"
