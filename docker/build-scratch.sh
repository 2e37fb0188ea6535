#!/usr/bin/env bash
# Builds the `paxlog` binary on the host and packs it into a FROM-scratch
# image (default tag paxlog:local).  Needs no base image and no registry.
#
#   docker/build-scratch.sh                 # cargo build + docker build
#   PAXLOG_BIN=/path/to/paxlog docker/build-scratch.sh   # skip cargo, use this binary
#
# Environment:
#   PAXLOG_IMAGE      image tag                      (default paxlog:local)
#   CARGO_TARGET_DIR  cargo's target folder          (default <repo>/target-docker,
#                     kept apart from ./target so other builds don't block on its lock)
#   PAXLOG_TARGET     a rustc target triple, e.g. x86_64-unknown-linux-musl, for a
#                     static binary (then no shared libraries are copied)
#   CARGO_BUILD_JOBS  cargo's -j                      (cargo's default)
#   PAXLOG_SRC_REV    build a git revision (e.g. HEAD) exported with `git archive`
#                     into $CARGO_TARGET_DIR/src, instead of the working tree: other
#                     people's uncommitted edits then cannot break or leak into the image
#   PAXLOG_CARGO_FLAGS extra cargo flags                (default --locked: Cargo.lock is
#                     never rewritten; set to "" to let cargo update it)
#
# A dynamically linked binary gets the libraries `ldd` lists and the loader
# copied next to it, at the same paths; the image then only runs on the same
# CPU architecture as the host, which is always so for a host-built binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=${PAXLOG_IMAGE:-paxlog:local}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-docker}

say() { echo "build-scratch: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed"

if [[ -n ${PAXLOG_BIN:-} ]]; then
    bin=$PAXLOG_BIN
    [[ -x $bin ]] || die "PAXLOG_BIN=$bin is not an executable file"
else
    target_args=()
    out_dir=$CARGO_TARGET_DIR/release
    if [[ -n ${PAXLOG_TARGET:-} ]]; then
        target_args=(--target "$PAXLOG_TARGET")
        out_dir=$CARGO_TARGET_DIR/$PAXLOG_TARGET/release
    fi
    src=$root
    if [[ -n ${PAXLOG_SRC_REV:-} ]]; then
        src=$CARGO_TARGET_DIR/src
        sha=$(git -C "$root" rev-parse --verify "$PAXLOG_SRC_REV^{commit}") || die "no git revision $PAXLOG_SRC_REV"
        mkdir -p "$src"
        if [[ $(cat "$src/.paxlog-rev" 2>/dev/null) != "$sha" ]]; then
            find "$src" -mindepth 1 -delete
            git -C "$root" archive "$sha" | tar -x -C "$src"
            echo "$sha" >"$src/.paxlog-rev"
        fi
        say "building git revision $PAXLOG_SRC_REV ($sha) from $src"
    fi
    read -r -a cargo_flags <<<"${PAXLOG_CARGO_FLAGS---locked}"
    say "cargo build --release ${cargo_flags[*]} -p paxlog-cli ${target_args[*]} (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$src" && cargo build --release "${cargo_flags[@]}" -p paxlog-cli "${target_args[@]}") \
        || die "cargo build failed (uncommitted edits in progress? try PAXLOG_SRC_REV=HEAD)"
    bin=$out_dir/paxlog
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/paxlog-scratch-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/data"
# Line tables are useful on the host, not in the image (38 MB -> ~8 MB).
if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$bin" "$ctx/rootfs/usr/local/bin/paxlog"
else
    cp "$bin" "$ctx/rootfs/usr/local/bin/paxlog"
fi
chmod 0755 "$ctx/rootfs/usr/local/bin/paxlog"

# Shared libraries: every absolute path in `ldd` output (this includes the
# loader, listed last without "=>").  A static binary has none.
if ldd_out=$(ldd "$bin" 2>&1); then
    libs=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$ldd_out" | sort -u)
    for lib in $libs; do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L "$lib" "$ctx/rootfs$lib"      # -L: the file, not the symlink
        say "library $lib"
    done
    interp=$(readelf -l "$bin" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p' || true)
    if [[ -n $interp && ! -e $ctx/rootfs$interp ]]; then
        mkdir -p "$ctx/rootfs$(dirname "$interp")"
        cp -L "$interp" "$ctx/rootfs$interp"
        say "loader $interp"
    fi
else
    say "static binary (ldd: ${ldd_out//$'\n'/ })"
fi

if [[ -n ${PAXLOG_SRC_REV:-} && -z ${PAXLOG_BIN:-} ]]; then
    rev=$(git -C "$root" rev-parse --short "$PAXLOG_SRC_REV")
else
    rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -z $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]] || rev=$rev-dirty
fi
say "docker build -t $image (context $(du -sh "$ctx" | cut -f1), revision $rev)"
docker build -q -t "$image" \
    --label org.opencontainers.image.title=paxlog \
    --label org.opencontainers.image.revision="$rev" \
    --label org.opencontainers.image.source=docker/Dockerfile.scratch \
    -f "$root/docker/Dockerfile.scratch" "$ctx"
docker image ls "$image" --format 'build-scratch: {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' >&2
