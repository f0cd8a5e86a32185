//! The dispatcher against real parts: a real redis-server, a real HTTP target verifying
//! signatures, and the real auth, catalog and storage services where gRPC targets and the
//! reconciler need them.
#![allow(clippy::unwrap_used)]

mod harness;

mod cli;
mod delivery;
mod failures;
mod mesh;
