//! The shared runtime of every Storemesh service.
//!
//! A service crate contributes its domain logic and tonic services; this crate contributes the
//! rest, the same way everywhere:
//!
//! - [`config`]: layered configuration (defaults < TOML file < `STOREMESH_*` environment).
//! - [`telemetry`]: `tracing` subscriber, OTLP export, W3C trace-context propagation.
//! - [`server`]: the gRPC host (health, reflection v1 + v1alpha, gRPC-Web, request ids, message
//!   limits, load shedding, graceful drain) and its admin HTTP port (`/metrics`, `/healthz`,
//!   `/readyz`).
//! - [`observe`]: per-RPC metrics and spans.
//! - [`error`]: the one place where typed errors become `tonic::Status`.
//! - [`redis`]: the Redis connection manager and readiness check.

pub mod auth;
pub mod config;
pub mod error;
pub mod observe;
pub mod redis;
pub mod server;
pub mod shed;
pub mod shutdown;
pub mod telemetry;
pub mod time;

pub use config::{ConfigError, ConfigLoader, ServerConfig};
pub use error::{FieldViolation, ServiceError, ServiceResult};
pub use server::{ServiceHost, ServiceHostBuilder};
