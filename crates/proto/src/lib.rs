//! Generated protobuf types and gRPC stubs for Storemesh's public contracts.
//!
//! One module per versioned package (`storemesh.<name>.v1`), plus the encoded file descriptor set
//! that services register with server reflection, and what the contracts' method options say
//! (`contract`: which methods are idempotent, which are public).

pub mod codec;
#[cfg(feature = "contract")]
pub mod contract;

/// The encoded `FileDescriptorSet` of every Storemesh contract and its imports, custom options
/// included (for gRPC server reflection, and read by `contract`).
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
