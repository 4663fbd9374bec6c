//! Compiles `proto/pbft.proto` with protox (pure Rust), so that building needs no `protoc` on the machine. With
//! the `grpc` feature the gRPC client and server stubs of `service ReplicaApi` are generated beside the messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    let schema = format!("{proto_dir}/pbft.proto");
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema.as_str()], [proto_dir])?;
    let mut config = prost_build::Config::new();
    // Byte fields decode as `bytes::Bytes`: slices of the received buffer, not copies.
    config.bytes(["."]);
    #[cfg(feature = "grpc")]
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;
    #[cfg(not(feature = "grpc"))]
    config.compile_fds(descriptors)?;
    Ok(())
}
