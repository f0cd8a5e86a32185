//! The gRPC host every service runs on, and its admin HTTP port.
//!
//! A service adds its tonic services, its descriptor set and its readiness checks; the host adds
//! `grpc.health.v1` (serving status follows readiness), server reflection v1 and v1alpha (grpcurl
//! 1.8 speaks only v1alpha), gRPC-Web over HTTP/1.1, `x-request-id` assignment and echo, per-RPC
//! spans and metrics, load shedding, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::auth::{AuthLayer, Authenticator};
use crate::config::ServerConfig;
use crate::observe::{RpcObserveLayer, describe_metrics};
use crate::shed::LoadShedLayer;
use crate::shutdown::Shutdown;

/// Something the service needs in order to do useful work (Redis, an upstream, ...).
pub trait ReadinessCheck: Send + Sync + 'static {
    /// `Err(reason)` while not ready; the reason is logged and shown on `/readyz`.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the latency bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
        }
        describe_metrics();
        handle
    })
}

/// Collects what one service contributes to its host.
pub struct ServiceHostBuilder {
    name: String,
    config: ServerConfig,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    readiness: Vec<Arc<dyn ReadinessCheck>>,
    authenticator: Option<Arc<Authenticator>>,
}

impl ServiceHostBuilder {
    /// Verifies bearer tokens on every call and hands handlers the caller's identity.
    pub fn authenticate_with(mut self, authenticator: Arc<Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// The configured message size limit, for `max_{en,de}coding_message_size` on generated
    /// servers (tonic sets it per service, not per host).
    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    /// Adds a tonic service; it is advertised by reflection and gets a health status.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Registers an encoded `FileDescriptorSet` describing the added services (for reflection).
    pub fn descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Adds a readiness check; the host is ready when all checks pass.
    pub fn readiness(mut self, check: impl ReadinessCheck) -> Self {
        self.readiness.push(Arc::new(check));
        self
    }

    /// Binds both listeners, so an address in use fails here and `:0` ports become known.
    pub async fn bind(self) -> Result<ServiceHost, ServeError> {
        let grpc = bind(self.config.listen).await?;
        let admin = bind(self.config.admin_listen).await?;
        Ok(ServiceHost {
            builder: self,
            grpc,
            admin,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// A bound, not yet running host.
pub struct ServiceHost {
    builder: ServiceHostBuilder,
    grpc: TcpListener,
    admin: TcpListener,
}

/// What readiness currently says, shared with `/readyz`: `None` when ready, otherwise why not.
#[derive(Clone, Default)]
pub struct ReadyState(Arc<Mutex<Option<String>>>);

impl ReadyState {
    pub fn set(&self, not_ready_reason: Option<String>) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = not_ready_reason;
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or_else(|_| Some("readiness state unavailable".into()))
    }
}

impl ServiceHost {
    pub fn builder(name: impl Into<String>, config: ServerConfig) -> ServiceHostBuilder {
        ServiceHostBuilder {
            name: name.into(),
            config,
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            descriptor_sets: Vec::new(),
            readiness: Vec::new(),
            authenticator: None,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    fn reflection_builder(&self) -> tonic_reflection::server::Builder<'static> {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false);
        for set in &self.builder.descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        // Advertise only what this host serves, not every service in the shared descriptor set.
        for name in [HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA] {
            builder = builder.with_service_name(name);
        }
        for name in &self.builder.service_names {
            builder = builder.with_service_name(*name);
        }
        builder
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls for up to
    /// `shutdown_grace_ms` before closing what is left.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let prometheus = prometheus().clone();
        let name = self.builder.name.clone();
        let config = self.builder.config.clone();
        let reflection_v1 = self.reflection_builder().build_v1()?;
        let reflection_v1alpha = self.reflection_builder().build_v1alpha()?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let service_names = self.builder.service_names.clone();
        let ready = ReadyState::default();
        ready.set(Some("starting".into()));

        let stop = Shutdown::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.trigger();
            }
        });

        let readiness = tokio::spawn(watch_readiness(
            self.builder.readiness.clone(),
            reporter.clone(),
            service_names.clone(),
            ready.clone(),
            Duration::from_millis(config.readiness_interval_ms),
            stop.clone(),
        ));

        let admin_stop = Shutdown::new();
        let admin = tokio::spawn(serve_admin(
            self.admin,
            prometheus.clone(),
            ready.clone(),
            admin_stop.clone(),
        ));
        let upkeep = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => prometheus.run_upkeep(),
                        () = stop.wait() => break,
                    }
                }
            }
        });

        let drain_signal = {
            let stop = stop.clone();
            let reporter = reporter.clone();
            let ready = ready.clone();
            let service_names = service_names.clone();
            async move {
                stop.wait().await;
                ready.set(Some("shutting down".into()));
                set_all(&reporter, &service_names, ServingStatus::NotServing).await;
            }
        };

        let layers = tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(RpcObserveLayer)
            .layer(LoadShedLayer::new(config.concurrency_limit))
            .option_layer(self.builder.authenticator.clone().map(AuthLayer::new))
            .into_inner();

        let mut routes = self.builder.routes;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        tracing::info!(
            service = %name,
            grpc = %self.grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            services = ?service_names,
            "serving"
        );
        let incoming = TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(layers)
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, drain_signal);
        tokio::pin!(server);

        let grace = Duration::from_millis(config.shutdown_grace_ms);
        let result = tokio::select! {
            result = &mut server => result.map_err(ServeError::from),
            () = async { stop.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_ms = config.shutdown_grace_ms, "drain timed out; closing remaining calls");
                Ok(())
            }
        };
        stop.trigger();
        admin_stop.trigger();
        let _ = tokio::join!(admin, readiness, upkeep);
        tracing::info!(service = %name, "stopped");
        result
    }
}

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

async fn set_all(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

async fn watch_readiness(
    checks: Vec<Arc<dyn ReadinessCheck>>,
    reporter: HealthReporter,
    names: Vec<&'static str>,
    ready: ReadyState,
    interval: Duration,
    stop: Shutdown,
) {
    let mut last: Option<Option<String>> = None;
    loop {
        let mut reason = None;
        for check in &checks {
            if let Err(why) = check.check().await {
                reason = Some(why);
                break;
            }
        }
        if stop.is_triggered() {
            return;
        }
        if last.as_ref() != Some(&reason) {
            match &reason {
                None => tracing::info!("ready"),
                Some(why) => tracing::warn!(reason = %why, "not ready"),
            }
            let status = if reason.is_none() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, &names, status).await;
            ready.set(reason.clone());
            last = Some(reason);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.wait() => return,
        }
    }
}

/// The admin HTTP port: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (200 when
/// `ready` says so, 503 with the reason otherwise). Runs until `stop` is triggered.
pub async fn serve_admin(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    ready: ReadyState,
    stop: Shutdown,
) {
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(match ready.get() {
                    None => (StatusCode::OK, "ready\n".to_owned()),
                    Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                })
            }),
        );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.wait())
        .await
    {
        tracing::error!(%error, "admin server failed");
    }
}
