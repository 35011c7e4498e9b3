//! Generates the tonic/prost code for utopia's API, plus the encoded file
//! descriptor set that the gRPC reflection service serves; and a client (no
//! server) for the subset of etcd's API that the benchmark drives.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The client port's reflection lists the client API only: the peer
    // transport is compiled on its own, outside that descriptor set.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("utopia_descriptor.bin"))
        .compile_protos(&["proto/utopia/v1/utopia.proto"], &["proto"])?;
    tonic_prost_build::configure().compile_protos(&["proto/utopia/v1/raft.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd/rpc.proto"], &["proto"])?;
    Ok(())
}
