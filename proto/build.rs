//! Compiles the .proto files with protox (pure Rust: no system `protoc`) and generates prost + tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/lateral/v1/coordinator.proto",
        "proto/lateral/demo/v1/echo.proto",
        "proto/xds/data/orca/v3/orca_load_report.proto",
        "proto/etcd/mvccpb/kv.proto",
        "proto/etcd/etcdserverpb/rpc.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
