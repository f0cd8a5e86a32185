//! The Storemesh gateway (`storemesh serve gateway`): the one gRPC authority of the mesh for
//! edge functions and outside clients.
//!
//! - Proxies gRPC over h2c (and HTTP/1.1 gRPC-Web, translated by `tonic-web`) to the upstream
//!   that owns the service in the request path, streaming both ways (no message is buffered
//!   whole except idempotent calls kept for replay), preserving metadata, trailers and status.
//! - Answers `grpc.health.v1` and server reflection (v1 and v1alpha) for every routed mesh
//!   service itself, so `grpcurl -plaintext localhost:50050 list` shows the whole mesh.
//! - Refuses early what the services would refuse anyway: unknown services
//!   (`UNIMPLEMENTED`), missing or invalid tokens on non-public methods (`UNAUTHENTICATED`;
//!   services still authorize on their own), callers over their token bucket per identity or
//!   per end-client address (`RESOURCE_EXHAUSTED` + `retry-after`; see
//!   [`config::GatewayRateLimit`] for who counts where, [`limits`] for the bounded tables),
//!   bodies over the byte cap.
//! - Upstream calls go through `storemesh_mesh` (discovery, power-of-two-choices, ejection,
//!   deadlines, budgeted retries).

pub mod config;
pub mod limits;
pub mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use storemesh_mesh::Upstream;
use storemesh_runtime::auth::{Authenticator, TokensConfig};
use storemesh_runtime::server::{
    AdminServer, BindError, GrpcLayer, ReadyState, ServeOptions, bind, follow_ready, serve,
};
use storemesh_runtime::{ConfigError, ConfigLoader};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

pub use config::GatewayConfig;
use proxy::{Gateway, GatewayService};

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub gateway: GatewayConfig,
    pub tokens: TokensConfig,
}

impl GatewaySettings {
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        Ok(Self {
            gateway: loader.section("gateway")?,
            tokens: loader.section("tokens")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("invalid token settings: {0}")]
    Tokens(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl From<BindError> for StartError {
    fn from(BindError { addr, source }: BindError) -> Self {
        Self::Bind { addr, source }
    }
}

/// A bound gateway, ready to [`BoundGateway::run`].
pub struct BoundGateway {
    listener: TcpListener,
    admin: TcpListener,
    gateway: Arc<Gateway>,
    service: GatewayService,
    health: tonic_health::server::HealthReporter,
    config: GatewayConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds the listeners and starts discovery for every upstream. `extra_descriptor_sets`
/// adds services to reflection beyond the Storemesh contracts (for extra routes).
pub async fn build(
    settings: GatewaySettings,
    extra_descriptor_sets: &[&'static [u8]],
) -> Result<BoundGateway, StartError> {
    let config = settings.gateway;
    let tls = match &config.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            storemesh_mesh::tls::server_config(&files.cert_file, &files.key_file)
                .map_err(|error| StartError::Tls(error.to_string()))?,
        ))),
        None => None,
    };
    let listener = bind(config.server.listen).await?;
    let admin = bind(config.server.admin_listen).await?;

    let mut upstreams = HashMap::new();
    for (name, upstream) in config.effective_upstreams() {
        let started = Upstream::start(name.clone(), upstream)
            .await
            .map_err(|error| StartError::Tls(format!("upstream {name}: {error}")))?;
        upstreams.insert(name, started);
    }
    // No denylist here: the gateway has no Redis; the services check revocation themselves.
    // Keys from `tokens.auth_endpoint` through the mesh (`storemesh_mesh::client`).
    let auth = storemesh_mesh::client::auth_channel(&settings.tokens)
        .await
        .map_err(|error| StartError::Tokens(error.to_string()))?;
    let keys = storemesh_runtime::auth::GrpcKeySource::with_channel(auth);
    let authenticator = Authenticator::new(&settings.tokens, Arc::new(keys), None)
        .map_err(|error| StartError::Tokens(error.to_string()))?;
    let gateway = Arc::new(Gateway::new(&config, &upstreams, Arc::new(authenticator)));
    // Ends when the gateway is dropped.
    tokio::spawn(limits::prune_loop(
        Arc::downgrade(&gateway),
        Duration::from_millis(config.rate_limit.prune_interval_ms),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(storemesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false);
        for set in extra_descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in config.routes.keys() {
            builder = builder.with_service_name(name.clone());
        }
        for name in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let mut local = tonic::service::RoutesBuilder::default();
    local
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok(BoundGateway {
        listener,
        admin,
        service: GatewayService::new(gateway.clone(), local.routes()),
        gateway,
        health,
        config,
        tls,
    })
}

/// What a browser's gRPC-Web call sends and may read (Connect-ES / grpc-web clients). Only the
/// configured origins are answered with CORS headers; origins were validated at start.
fn cors_layer(config: &config::CorsConfig) -> tower_http::cors::CorsLayer {
    use http::header::HeaderName;
    let origins: Vec<http::HeaderValue> = config
        .allowed_origins
        .iter()
        .filter_map(|origin| http::HeaderValue::from_str(origin).ok())
        .collect();
    let names = |names: &[&'static str]| -> Vec<HeaderName> {
        names
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect()
    };
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(names(&[
            "content-type",
            "x-grpc-web",
            "x-user-agent",
            "authorization",
            "grpc-timeout",
            "idempotency-key",
            "connect-protocol-version",
            "connect-timeout-ms",
        ]))
        .expose_headers(names(&[
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
            "retry-after",
            "x-request-id",
        ]))
        .max_age(Duration::from_secs(config.max_age_secs))
}

fn without_cors_for_unlisted_origins<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    if !headers.contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            http::header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    response
}

impl BoundGateway {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The routing core, for diagnostics (e.g. [`Gateway::tracked_addresses`]).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown`, then drains open calls for up to `shutdown_grace_ms`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let ready = ReadyState::default();
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        // Readiness (and health, following it) says `overloaded` while calls are shed at the
        // concurrency limit.
        let grpc = GrpcLayer::new(&self.config.server);
        ready.watch_load(grpc.load());
        let health_follower =
            tokio::spawn(follow_ready(ready.clone(), self.health.clone(), Vec::new()));
        let admin = AdminServer::spawn(self.admin, ready.clone());
        tracing::info!(
            listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            routes = ?self.config.routes.keys().collect::<Vec<_>>(),
            "gateway serving"
        );

        let layers = tower::ServiceBuilder::new()
            // Outermost: a browser's preflight is answered before anything else sees it, and an
            // origin that is not listed gets no CORS header at all (tower-http would still send
            // the exposed and allowed lists without `access-control-allow-origin`).
            .map_response(without_cors_for_unlisted_origins)
            .layer(cors_layer(&self.config.cors))
            .layer(grpc)
            .service(self.service);
        let drain_signal = {
            let health = self.health.clone();
            async move {
                shutdown.await;
                ready.set(Some("shutting down".into()));
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
        };
        let options = ServeOptions::from_config(&self.config.server).tls(self.tls);
        serve(
            self.listener,
            options,
            move |_connection| layers.clone(),
            drain_signal,
        )
        .await;
        health_follower.abort();
        admin.stop().await;
        tracing::info!("gateway stopped");
    }
}
