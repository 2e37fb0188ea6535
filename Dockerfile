# syntax=docker/dockerfile:1
#
# paxlog container image, built from source (multi-stage).
#
#   docker build -t paxlog:local .
#
# Stage 1 compiles `paxlog` (crate paxlog-cli) with the official Rust image;
# stage 2 is distroless "cc" (glibc + libgcc_s, no shell, no package manager),
# running as the unprivileged uid 65532.  Both base images are pulled from a
# registry, so this file needs network access to Docker Hub / gcr.io.  On a
# machine without a registry use docker/build-scratch.sh instead (host-built
# binary in a FROM-scratch image); see docs/operations-containers.md.
#
# The builder is Debian bookworm and so is distroless/cc-debian12: the binary's
# glibc requirement matches the runtime.  Keep the two in step if you change
# either.  RUST_IMAGE must be at least the workspace's rust-version (1.89).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p paxlog-cli \
 && mkdir -p /out/data \
 && objcopy --strip-debug target/release/paxlog /out/paxlog \
 && /out/paxlog --version

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/paxlog /usr/local/bin/paxlog
# An empty, writable /data: a fresh named volume mounted here inherits the
# ownership, so the non-root process can create its data directory.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV PAXLOG_HTTP=0.0.0.0:5000 \
    NO_COLOR=1 \
    PAXLOG_DATA_DIR=/data \
    RUST_LOG=info
# 5000: client HTTP API.  6000: peer protocol (conventional; it is whatever
# port PAXLOG_PEERS gives this replica).
EXPOSE 5000 2379 6000
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/paxlog"]
CMD ["node"]
