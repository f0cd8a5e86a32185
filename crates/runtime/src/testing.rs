//! Test fixtures shared by every crate's tests (feature `testing`, enabled by dev-dependencies).

use std::net::SocketAddr;

use crate::ServerConfig;

/// A host for tests: loopback ephemeral ports (gRPC and admin), readiness re-checked every
/// 100 ms, in-flight calls given 2 s to drain at stop.
pub fn test_server() -> ServerConfig {
    ServerConfig {
        readiness_interval_ms: 100,
        shutdown_grace_ms: 2_000,
        ..ServerConfig::default()
    }
}

/// [`test_server`] with gRPC on the loopback `port` (chosen by the test, e.g. with
/// `storemesh_testkit::free_port`, when other parts must know it before the host starts).
pub fn test_server_on(port: u16) -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..test_server()
    }
}
