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
    fs::write(out.join("nrl_descriptor.bin"), fds.encode_to_vec())?;
    // A snapshot item is a cursor or a whole pointer: box the pointer so the enum stays small.
    tonic_prost_build::configure().boxed(".nrl.v1.SnapshotItem.item.pointer").compile_fds(fds)?;
    Ok(())
}
