//! Rust types, tonic server traits and tonic clients for the subset of
//! etcd's v3 gRPC API that paxlog serves.
//!
//! The `.proto` files under `proto/` are paxlog's own compact rewrite of
//! etcd's `mvccpb/kv.proto` and `etcdserverpb/rpc.proto` (etcd is
//! Apache-2.0). They keep etcd's package, service, method and message names
//! and its field numbers and types, so stock etcd clients (`etcdctl`, the Go
//! `clientv3`, `etcd-client` for Rust, ...) talk to paxlog unchanged.
//!
//! The code is generated at build time by `protox` (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and `tonic-prost-build`.
//!
//! Services: `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` (without
//! `Snapshot` and `Downgrade`) and `Auth` (only `Authenticate`). For each
//! the module [`etcdserverpb`] holds a `<service>_server` module with the
//! trait and its tower service (for example [`etcdserverpb::kv_server::Kv`]
//! and [`etcdserverpb::kv_server::KvServer`]) and a `<service>_client`
//! module with the client (for example [`etcdserverpb::kv_client::KvClient`]).

/// etcd's storage-level types: `KeyValue` and `Event`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used
)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's v3 RPC messages, server traits and clients.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used
)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
