//! utopia's gRPC API: the generated tonic/prost code for `utopia.v1`.
//!
//! This is the only crate that exposes prost types; the rest of the
//! workspace converts to and from its own types at the edge.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("utopia.v1");

    /// Encoded `FileDescriptorSet` for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("utopia_descriptor");
}

/// The transport between utopia servers.
pub mod raft_v1 {
    tonic::include_proto!("utopia.raft.v1");
}

/// A client for the part of etcd's v3 API that `utopia bench --target etcd`
/// uses (`etcdserverpb.KV` Range/Put, `etcdserverpb.Maintenance` Status).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
