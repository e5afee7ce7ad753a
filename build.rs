//! Generates the `shoal.v1` protobuf and gRPC code from `proto/shoal/v1/*.proto`.
//!
//! protoc comes from the `protoc-bin-vendored` crate unless `PROTOC` is set, so a fresh
//! machine needs no manual install. The file descriptor set is kept for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `std::env::set_var` is unsafe in edition 2024, so the vendored protoc path is handed
    // to prost-build directly rather than through the PROTOC variable.
    let protoc = match std::env::var_os("PROTOC") {
        Some(_) => None,
        None => Some(protoc_bin_vendored::protoc_bin_path()?),
    };
    generate(protoc)
}

fn generate(protoc: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/shoal/v1/types.proto",
        "proto/shoal/v1/job_service.proto",
        "proto/shoal/v1/storage_service.proto",
        "proto/shoal/v1/node_service.proto",
        "proto/shoal/v1/executor_service.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    if let Some(protoc) = protoc {
        config.protoc_executable(protoc);
    }
    config.bytes(["."]);
    // Type names let the CLI find each message's descriptor for JSON/YAML output.
    config.enable_type_names();
    // No generated `connect` constructors: they clash with ExecutorService.Connect, and
    // clients are built from an explicitly configured Channel anyway.
    tonic_prost_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("shoal_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
