//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and hands
//! the descriptor set to tonic-prost-build for messages, servers and clients.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?,
    );
    let proto_dir = manifest_dir.join("proto");
    let files = [
        proto_dir.join("mvccpb/kv.proto"),
        proto_dir.join("etcdserverpb/rpc.proto"),
    ];

    let fds = protox::compile(&files, [&proto_dir])
        .map_err(|e| format!("compiling the etcd .proto files with protox failed: {e:?}"))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .map_err(|e| format!("generating Rust code from the etcd protos failed: {e}"))?;
    Ok(())
}
