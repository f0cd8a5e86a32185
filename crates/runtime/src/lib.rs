//! The shared runtime of every Storemesh service.
//!
//! A service crate contributes its domain logic and tonic services; this crate contributes the
//! rest, the same way everywhere:
//!
//! - [`config`]: layered configuration (defaults < TOML file < `STOREMESH_*` environment).
//! - [`telemetry`]: `tracing` subscriber, OTLP export, W3C trace-context propagation.
//! - [`server`]: server bootstrap for every process: the accept loop with its graceful drain,
//!   the common gRPC layers, the admin HTTP port (`/metrics`, `/healthz`, `/readyz`), and the
//!   gRPC host (health, reflection v1 + v1alpha, gRPC-Web, request ids, message limits, load
//!   shedding) built from them.
//! - [`metrics`]: the process-wide Prometheus recorder.
//! - [`observe`]: per-RPC metrics and spans.
//! - [`error`]: the one place where typed errors become `tonic::Status`.
//! - [`redis`]: the Redis connection manager, readiness check and consumer-group set-up.
//! - [`backoff`]: validated retry delays (exponential or linear, with or without jitter).
//! - [`secret`]: secrets in configuration, which `Debug` never prints.
//! - [`endpoint`]: the `*_endpoint` keys naming another service (`http://`, `https://`,
//!   `dns:///`), parsed for validation; `storemesh_mesh::client` builds the clients.
//! - `testing` (feature `testing`): fixtures for tests, e.g. `testing::test_server()`.
//!
//! Modules depend on each other in one direction only, leaves first: `config`, `endpoint`,
//! `error`, `shutdown`, `time` and [`metrics`] import nothing else from this crate → [`telemetry`]
//! (installs the recorder at start) → [`observe`] and [`shed`] (the per-call layers) → [`auth`]
//! → [`server`] (assembles them) → [`redis`] (a readiness check for the host).

pub mod auth;
pub mod backoff;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod metrics;
pub mod observe;
pub mod redis;
pub mod secret;
pub mod server;
pub mod shed;
pub mod shutdown;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;

pub use config::{ConfigError, ConfigLoader, ServerConfig};
pub use error::{FieldViolation, ServiceError, ServiceResult};
pub use secret::Secret;
pub use server::{ServiceHost, ServiceHostBuilder};
