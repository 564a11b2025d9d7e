//! Compiles `proto/` without a system `protoc`: protox parses the files into a descriptor set, which
//! feeds both code generation and server reflection.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/nrl/v1/registry.proto",
        "proto/nrl/v1/locator.proto",
        "proto/nrl/v1/admin.proto",
        "proto/nrl/v1/federation.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Reflection serves google.rpc's error details too (`proto/google/rpc/`, vendored unchanged from
    // googleapis), so that a tool can decode the BadRequest and PreconditionFailure an error
    // carries. Reflection only: their Rust types are tonic-types'.
    let error_details = ["google/rpc/error_details.proto", "google/rpc/status.proto"];
    let served = protox::compile(protos.iter().chain(&error_details), ["proto"])?;
    fs::write(out.join("nrl_descriptor.bin"), served.encode_to_vec())?;

    // Two passes, because a request that does not decode is the caller's fault (INVALID_ARGUMENT)
    // while a response that does not decode is not: the servers decode with
    // `api::grpc::codec::RequestCodec`, the clients (CLI, load runner, peer calls) keep prost's codec.
    // Pass 1: the messages (with their proto names, which the request codec puts in its errors)
    // and the clients.
    let mut messages = tonic_prost_build::Config::new();
    messages.enable_type_names();
    tonic_prost_build::configure()
        // A snapshot item is a cursor or a whole pointer: box the pointer so the enum stays small.
        .boxed(".nrl.v1.SnapshotItem.item.pointer")
        .build_server(false)
        .compile_fds_with_config(fds.clone(), messages)?;
    // Pass 2: only the servers. The messages are declared external (they are pass 1's), so this
    // pass writes the server modules alone, which are appended to pass 1's file: `lib.rs` includes
    // one `nrl.v1.rs` with the messages, the clients and the servers, as one pass would write it.
    let servers = out.join("servers");
    fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::api::grpc::codec::RequestCodec")
        .extern_path(".nrl.v1", "crate::proto::nrl::v1")
        .out_dir(&servers)
        .compile_fds(fds)?;
    let mut code = fs::read_to_string(out.join("nrl.v1.rs"))?;
    code.push_str(&fs::read_to_string(servers.join("nrl.v1.rs"))?);
    fs::write(out.join("nrl.v1.rs"), code)?;
    Ok(())
}
