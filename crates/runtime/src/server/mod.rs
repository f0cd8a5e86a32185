//! Server bootstrap: the building blocks every process serves with, so the gRPC hosts, the
//! gateway and the edge runtime accept, layer, drain and report the same way.
//!
//! - [`accept`]: [`bind`] a listener (an address in use fails at start, naming it) and
//!   [`serve`] it: the accept loop (HTTP/1.1 + h2c, optional TLS, a pause after a failed
//!   `accept`), one tower service per connection, and the drain on shutdown (listener closed at
//!   once, connections asked to finish, cut after the grace period).
//! - [`layers`]: [`GrpcLayer`] (request ids, the client's address, gRPC-Web, per-RPC spans and
//!   metrics, the first-message deadline, load shedding with a per-address share) in front of
//!   every gRPC listener; the `grpc-timeout` and connection info tonic's
//!   own server adds, for the hosts.
//! - [`admin`]: the admin port (`/metrics`, `/healthz`, `/readyz`), [`ReadyState`] (which says
//!   `overloaded` while calls are shed at the limit) and [`follow_ready`] (health following it).
//! - [`client`]: [`ClientAddr`], the end client's address (through [`TrustedProxies`]), in
//!   every gRPC request's extensions.
//! - [`ServiceHost`]: the gRPC host of each service (health following readiness, reflection v1
//!   and v1alpha, authentication), made of the above.
//!
//! The shutdown signal itself is [`crate::shutdown`]; the metrics recorder the admin port
//! renders is [`crate::metrics`].

pub mod accept;
pub mod admin;
pub mod client;
mod host;
pub mod layers;

pub use accept::{
    BindError, ConnectionInfo, ConnectionLimits, Drained, HttpSettings, ServeOptions, bind, serve,
};
pub use admin::{AdminServer, OVERLOADED, ReadyState, follow_ready, serve_admin};
pub use client::{ClientAddr, TrustedProxies};
pub use host::{ReadinessCheck, ServeError, ServiceHost, ServiceHostBuilder};
pub use layers::GrpcLayer;
