//! Client-side traffic governance, shared by the gateway and by any service calling another.
//!
//! - **Discovery**: static addresses, an addresses file, or a DNS name re-resolved
//!   periodically (a Kubernetes headless Service). Changes apply without dropping calls in
//!   flight. No registry server of our own.
//! - **Load balancing**: power of two choices over selectable endpoints, by requests in flight.
//! - **Outlier ejection / circuit breaking**: consecutive transport failures or `UNAVAILABLE`
//!   eject an endpoint with exponential backoff; after it, one half-open probe decides.
//! - **Deadlines**: the caller's `grpc-timeout` (or a default) bounds the whole call, and what
//!   is left is propagated upstream.
//! - **Retries**: only for idempotent calls, with full-jitter backoff and a retry budget
//!   (tower's `TpsBudget`) so retries cannot amplify an outage.
//! - **Metrics** per endpoint: `mesh_upstream_requests_total{upstream,endpoint,outcome}`,
//!   `mesh_upstream_request_seconds`, `mesh_upstream_ejections_total`,
//!   `mesh_upstream_retries_total`, `mesh_upstream_endpoints`, `mesh_upstream_body_timeouts_total`.
//! - **Service-to-service clients** ([`client`]): every call a process makes to another goes
//!   through a [`MeshChannel`] built by [`client::channel`], with one service-token cache
//!   ([`client::ServiceTokens`]).
//!
//! Why not tower's `balance::p2c`: it drops a failing service from its set and has no
//! ejection backoff, half-open probing or per-endpoint metrics; the choice itself is a few
//! lines ([`endpoint::pick_two`]), the rest is the policy we need.

pub mod channel;
pub mod client;
pub mod config;
pub mod endpoint;
pub mod timeout;
pub mod tls;
pub mod upstream;

pub use channel::{MeshChannel, is_idempotent};
pub use config::UpstreamConfig;
pub use upstream::{ProxyBody, Upstream};
