//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so a fresh
//! machine needs no system `protoc`. The descriptor set is also written out
//! for the server's gRPC reflection.

use prost::Message;
use std::path::PathBuf;

/// Messages that carry secret values get a hand-written, redacting `Debug`
/// (see `src/proto.rs`) instead of the derived one.
const VALUE_CARRYING: &[&str] = &[
    "rekey.v1.CreateSecretRequest",
    "rekey.v1.GetSecretValueResponse",
    "rekey.v1.PutSecretValueRequest",
    "rekey.v1.UpdateSecretRequest",
    "rekey.v1.GetRandomPasswordResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("../proto");
    let files = [
        "rekey/v1/secrets.proto",
        "rekey/v1/admin.proto",
        "rekey/v1/rotation.proto",
    ];
    println!("cargo:rerun-if-changed=../proto");

    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("rekey_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .skip_debug(VALUE_CARRYING.iter().copied())
        .compile_fds(descriptors)?;
    Ok(())
}
