//! Test support shared by every Storemesh test suite.
//!
//! - [`RedisServer`]: a real `redis-server` child process on a free port, removed on drop.
//! - [`free_port`]: an ephemeral loopback port.
//! - [`echo`]: a small service built on the shared runtime, used to test the runtime itself.
//! - [`process`]: the children `storemesh up` supervises, found through `/proc`.

pub mod echo;
pub mod host;
pub mod process;
mod redis_server;

pub use host::RunningHost;
pub use redis_server::{RedisServer, RedisServerError};

/// Asks the OS for a free loopback port. Another process may take it before it is used, so
/// callers that bind later must tolerate (and retry on) "address in use".
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
