//! The gRPC host every service runs on ([`ServiceHost`]).
//!
//! A service adds its tonic services, its descriptor set and its readiness checks; the host adds
//! `grpc.health.v1` (serving status follows readiness), server reflection v1 and v1alpha (grpcurl
//! 1.8 speaks only v1alpha), the common gRPC layers ([`GrpcLayer`]: gRPC-Web over HTTP/1.1,
//! `x-request-id`, per-RPC spans and metrics, load shedding), optional authentication, and serves
//! them with the shared accept loop and drain ([`serve`]) and admin port ([`AdminServer`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;

use super::accept::{BindError, HttpSettings, ServeOptions, bind, serve};
use super::admin::{AdminServer, ReadyState, follow_ready};
use super::layers::{GrpcLayer, tonic_connection};
use crate::auth::{AuthLayer, Authenticator};
use crate::config::ServerConfig;
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
}

impl From<BindError> for ServeError {
    fn from(BindError { addr, source }: BindError) -> Self {
        Self::Bind { addr, source }
    }
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

    /// Registers an encoded `FileDescriptorSet` describing the added services (for reflection,
    /// and so their methods get their own metric labels).
    pub fn descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        crate::observe::register_methods(encoded);
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

/// A bound, not yet running host.
pub struct ServiceHost {
    builder: ServiceHostBuilder,
    grpc: TcpListener,
    admin: TcpListener,
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
        let name = self.builder.name.clone();
        let config = self.builder.config.clone();
        let reflection_v1 = self.reflection_builder().build_v1()?;
        let reflection_v1alpha = self.reflection_builder().build_v1alpha()?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let service_names = self.builder.service_names.clone();
        let ready = ReadyState::not_ready("starting");
        let stop = Shutdown::on(shutdown);

        let layer = GrpcLayer::new(&config);
        ready.watch_load(layer.load());
        let readiness = tokio::spawn(watch_readiness(
            self.builder.readiness.clone(),
            ready.clone(),
            Duration::from_millis(config.readiness_interval_ms),
            stop.clone(),
        ));
        // Health follows readiness (checks, overload, shutdown) until the host has stopped.
        let health = tokio::spawn(follow_ready(
            ready.clone(),
            reporter.clone(),
            service_names.clone(),
        ));
        let admin = AdminServer::spawn(self.admin, ready.clone());

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

        let mut routes = self.builder.routes;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let service = ServiceBuilder::new()
            .layer(layer)
            .option_layer(self.builder.authenticator.clone().map(AuthLayer::new))
            .service(routes.routes().prepare());

        tracing::info!(
            service = %name,
            grpc = %self.grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            services = ?service_names,
            "serving"
        );
        let options = ServeOptions::from_config(&config).http(HttpSettings::Tonic);
        serve(
            self.grpc,
            options,
            move |connection| tonic_connection(service.clone(), connection),
            drain_signal,
        )
        .await;
        stop.trigger();
        admin.stop().await;
        let _ = readiness.await;
        health.abort();
        tracing::info!(service = %name, "stopped");
        Ok(())
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

/// Runs the readiness checks every `interval` into `ready` (which health follows).
async fn watch_readiness(
    checks: Vec<Arc<dyn ReadinessCheck>>,
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
            ready.set(reason.clone());
            last = Some(reason);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.wait() => return,
        }
    }
}
