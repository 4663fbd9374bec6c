//! Compiles `proto/pbft.proto` with protox (pure Rust), so that building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    let schema = format!("{proto_dir}/pbft.proto");
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema.as_str()], [proto_dir])?;
    prost_build::Config::new()
        // Byte fields decode as `bytes::Bytes`: slices of the received buffer, not copies.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
