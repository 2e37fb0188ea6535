#!/usr/bin/env bash
# Installs the system packages some tests use, from Debian's packages:
# chromium (the dashboard test), faketime and fiu-utils (fault campaigns),
# etcd-client (etcdctl, for the etcd API tests), protobuf-compiler (protoc,
# which the etcd-client crate's build script needs: scripts/test.sh builds
# compat/etcd-client only when protoc is found).
# Needs root; otherwise it says what is missing, and the tests that need it
# skip with a message.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
command -v fiu-run >/dev/null 2>&1 || need+=(fiu-utils)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing ${need[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
else
  echo "note: ${need[*]} not installed and not root: the tests that need them will skip"
fi
