//! Generated protobuf types and gRPC stubs for Storemesh's public contracts.
//!
//! One module per versioned package (`storemesh.<name>.v1`), plus the encoded file descriptor set
//! that services register with server reflection.

pub mod codec;

/// The encoded `FileDescriptorSet` of every Storemesh contract (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/storemesh_descriptor.bin"));

pub mod auth {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("storemesh.auth.v1");
    }
}

pub mod catalog {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("storemesh.catalog.v1");
    }
}

pub mod storage {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("storemesh.storage.v1");
    }
}

pub mod events {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("storemesh.events.v1");
    }
}
