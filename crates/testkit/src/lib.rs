//! Test support shared by every Storemesh test suite.
//!
//! - [`RedisServer`]: a real `redis-server` child process on a free port, removed on drop.
//! - [`free_port`]: a free loopback port, outside the range the OS hands out by itself.
//! - [`echo`]: a small service built on the shared runtime, used to test the runtime itself.
//! - [`process`]: the children `storemesh up` supervises, found through `/proc`.

pub mod echo;
pub mod host;
pub mod process;
mod redis_server;

pub use host::RunningHost;
pub use redis_server::{RedisServer, RedisServerError};

/// A free loopback port for a server a test starts later.
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`), where the OS never
/// hands out ports by itself: a port from that range could be taken by any process's outgoing
/// connection between this call and the server's bind (tests that pick the gateway's port
/// first and bind it last failed that way on busy machines). Each port is returned once per
/// process and checked bindable; when none is found, an ephemeral one as before.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;

    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > LOWEST + 1_000 {
        let span = u64::from(ephemeral_start - LOWEST);
        let random = RandomState::new();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for attempt in 0_u64..64 {
            let offset = random.hash_one((attempt, std::process::id())) % span;
            let Ok(port) = u16::try_from(u64::from(LOWEST) + offset) else {
                continue;
            };
            if given.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return Ok(port);
            }
        }
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
