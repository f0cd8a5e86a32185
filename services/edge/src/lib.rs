//! Storemesh's embedded, Spin-compatible edge runtime (`storemesh serve edge`).
//!
//! It runs the Spin application described by `spin.toml` (manifest version 2) — the same `.wasm`
//! files real Spin runs with `spin up` — on an embedded wasmtime host, so `storemesh up` and the
//! tests need no Spin CLI. See `services/edge/README.md` for configuration, design and the exact
//! list of differences from Spin.
//!
//! - [`manifest`], [`routing`], [`template`], [`outbound`], [`variables`]: pure logic (the
//!   manifest model, Spin's route syntax and matching, `{{ variable }}` templates,
//!   `allowed_outbound_hosts` rules, variable resolution), unit-tested on their own.
//! - [`host`]: what an instance can import (WASI 0.2 cli/clocks/random/io/filesystem/http and
//!   `fermyon:spin/variables@2.0.0`), resource limits, the outbound-HTTP policy hook.
//! - [`files`]: the components' `files` as read-only preopens (mounted directly or copied once
//!   at load, as `spin up` does), and their relocation for a copy of the manifest.
//! - [`body`]: the minimum transfer rate of request bodies (a slow client is answered `408`).
//! - [`send`]: outbound HTTP/1.1, h2c with prior knowledge and HTTP/2 over TLS (ALPN).
//! - [`app`]: compile once (disk cache), `instantiate_pre` once, a fresh store per request in
//!   the pooling allocator, wall-clock and memory limits, metrics.
//! - [`server`]: the HTTP listener with graceful shutdown and the admin port (`/metrics`,
//!   `/healthz`, `/readyz`).

pub mod app;
pub mod body;
pub mod config;
pub mod error;
pub mod files;
pub mod host;
pub mod manifest;
pub mod metrics;
pub mod outbound;
pub mod routing;
pub mod send;
pub mod server;
pub mod stdio;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod variables;

pub use app::App;
pub use config::EdgeConfig;
pub use error::EdgeError;
pub use server::EdgeServer;

use storemesh_runtime::{ConfigError, ConfigLoader};

/// Everything `storemesh serve edge` reads from configuration.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub edge: EdgeConfig,
}

impl EdgeSettings {
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        Ok(Self {
            edge: loader.section("edge")?,
        })
    }
}

/// Loads the application (manifest, variables, components) and binds the listeners.
pub async fn build(config: &EdgeConfig) -> Result<EdgeServer, EdgeError> {
    let app = App::load(config).await?;
    EdgeServer::bind(app, config).await
}
