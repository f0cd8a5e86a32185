//! The Storemesh event dispatcher (`storemesh serve dispatcher`).
//!
//! Reads the storage event stream (`storage:events`) through a Redis consumer group, so
//! several instances share the work; routes each event by type and key ([`routing`]) to
//! targets ([`target`]): edge-function HTTP routes, signed per `storemesh_delivery`, and
//! catalog `RecordVariant` through the mesh with a service token. Delivery is at least once:
//! an entry is acknowledged only together with the durable record of what happens next
//! ([`store`]); transient failures are retried with exponential backoff and full jitter from
//! a Redis sorted set, so a retry never blocks other events and survives a crash; final
//! refusals, exhausted retries and too old events go to the dead-letter stream. Scheduled
//! triggers ([`schedule`]) run the [`reconciler`]. [`cli`] holds `storemesh events …`.
//!
//! The process serves only health, reflection and the admin port (`/metrics`, `/healthz`,
//! `/readyz`) through the shared runtime host.

pub mod cli;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod pattern;
pub mod reconciler;
pub mod retry;
pub mod routing;
pub mod schedule;
pub mod store;
pub mod target;
pub mod token;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use storemesh_mesh::{MeshChannel, Upstream};
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::{RedisConfig, RedisReadiness};
use storemesh_runtime::server::ServeError;
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::{ConfigError, ConfigLoader, ServiceHost};

pub use config::DispatcherConfig;
pub use engine::Engine;

use crate::config::TargetKind;
use crate::retry::Policy;
use crate::routing::RouteTable;
use crate::schedule::Schedule;
use crate::target::{HttpTarget, RecordVariantTarget, Target, TargetSettings};
use crate::token::ServiceTokens;

/// Everything the dispatcher reads from configuration.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub dispatcher: DispatcherConfig,
    pub redis: RedisConfig,
    pub tokens: TokensConfig,
}

impl DispatcherSettings {
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        Ok(Self {
            dispatcher: loader.section("dispatcher")?,
            redis: loader.section("redis")?,
            tokens: loader.section("tokens")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "dispatcher.signing_secrets is empty: HTTP deliveries to target(s) {0} must be signed; set at least one secret of 16 or more bytes (the same one the edge functions verify)"
    )]
    NoSigningSecret(String),
    #[error(
        "dispatcher.service_client_id / service_client_secret are not set: target(s) {0} call mesh services with a service token; configure a service account with scopes catalog.write:variants, catalog.read and storage.read"
    )]
    NoServiceAccount(String),
    #[error("invalid endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("cannot set up the {upstream} upstream: {message}")]
    Upstream { upstream: String, message: String },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A started dispatcher: the host (health, admin port) and the delivery engine.
pub struct Dispatcher {
    pub host: ServiceHost,
    pub engine: Engine,
}

impl Dispatcher {
    /// Runs until `shutdown` resolves, then drains both (see [`Engine::run`]).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stop = Shutdown::new();
        let host_stop = stop.clone();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.trigger();
            }
        });
        let (served, ()) = tokio::join!(
            self.host.run(host_stop.wait()),
            self.engine.run(stop.clone())
        );
        served
    }
}

fn default_consumer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "dispatcher".into());
    let random = ulid::Ulid::new().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &random[random.len() - 8..]
    )
}

/// Validates the rules, connects, creates the consumer group and binds the host's listeners.
pub async fn build(settings: DispatcherSettings) -> Result<Dispatcher, StartError> {
    let DispatcherSettings {
        dispatcher: config,
        redis,
        tokens,
    } = settings;
    // Loops are refused here too (not only when the section is loaded), naming the rules.
    let routes =
        RouteTable::new(&config.routes, &config.targets).map_err(|error| ConfigError::Invalid {
            key: "dispatcher.routes".into(),
            message: error.to_string(),
        })?;
    let used: Vec<&str> = config
        .routes
        .iter()
        .map(|route| route.target.as_str())
        .chain(config.schedules.iter().map(|s| s.target.as_str()))
        .collect();
    let used_of = |kinds: &[TargetKind]| -> Vec<&str> {
        let mut names: Vec<&str> = config
            .targets
            .iter()
            .filter(|(name, target)| kinds.contains(&target.kind) && used.contains(&name.as_str()))
            .map(|(name, _)| name.as_str())
            .collect();
        names.dedup();
        names
    };
    let http_targets = used_of(&[TargetKind::Http]);
    if !http_targets.is_empty() && config.signing_secrets.is_empty() {
        return Err(StartError::NoSigningSecret(http_targets.join(", ")));
    }
    let mesh_targets = used_of(&[TargetKind::RecordVariant, TargetKind::Reconciler]);
    if !mesh_targets.is_empty() && config.service_client_id.is_empty() {
        return Err(StartError::NoServiceAccount(mesh_targets.join(", ")));
    }

    let redis_error = |source| StartError::Redis {
        url: redis.url.clone(),
        source,
    };
    let connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(redis_error)?;
    let reader = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(redis_error)?;
    engine::ensure_group(&connection, &config)
        .await
        .map_err(redis_error)?;
    // A blocking read must end before the connection's response timeout.
    let block_ms = config
        .block_ms
        .min(redis.response_timeout_ms.saturating_sub(200).max(1));
    let block_ms = usize::try_from(block_ms).unwrap_or(1_000);

    let upstream = |name: &'static str, upstream: storemesh_mesh::UpstreamConfig| async move {
        Upstream::start(name, upstream)
            .await
            .map_err(|error| StartError::Upstream {
                upstream: name.into(),
                message: error.to_string(),
            })
    };
    let needs_mesh = !mesh_targets.is_empty();
    let service_tokens = if needs_mesh {
        Some(Arc::new(ServiceTokens::new(
            &tokens.auth_endpoint,
            &config.service_client_id,
            &config.service_client_secret,
        )?))
    } else {
        None
    };
    let catalog = if needs_mesh {
        Some(CatalogServiceClient::new(MeshChannel::new(
            upstream("catalog", config.catalog.clone()).await?,
        )))
    } else {
        None
    };

    let secrets: Arc<Vec<Vec<u8>>> = Arc::new(
        config
            .signing_secrets
            .iter()
            .map(|secret| secret.as_bytes().to_vec())
            .collect(),
    );
    let mut targets = BTreeMap::new();
    let mut reconciler = None;
    for (name, target) in &config.targets {
        let settings = TargetSettings {
            timeout: Duration::from_millis(target.timeout_ms),
            concurrency: target.concurrency,
            policy: Policy {
                max_attempts: target.max_attempts.unwrap_or(config.max_attempts),
                initial_backoff: Duration::from_millis(config.initial_backoff_ms),
                max_backoff: Duration::from_millis(config.max_backoff_ms),
            },
        };
        let built = match target.kind {
            TargetKind::Http => {
                let url: http::Uri = target.url.parse().map_err(|_| ConfigError::Invalid {
                    key: format!("dispatcher.targets.{name}.url"),
                    message: "must be an http://host:port/path URL".into(),
                })?;
                Target::http(name, settings, HttpTarget::new(url, secrets.clone()))
            }
            TargetKind::RecordVariant => match (&catalog, &service_tokens) {
                (Some(catalog), Some(tokens)) => Target::record_variant(
                    name,
                    settings,
                    RecordVariantTarget::new(catalog.clone(), tokens.clone()),
                ),
                _ => continue, // configured but unused
            },
            TargetKind::Reconciler => {
                if let (Some(catalog), Some(tokens)) = (&catalog, &service_tokens)
                    && reconciler.is_none()
                    && used.contains(&name.as_str())
                {
                    let storage = StorageServiceClient::new(MeshChannel::new(
                        upstream("storage", config.storage.clone()).await?,
                    ));
                    reconciler = Some(Arc::new(reconciler::Reconciler::new(
                        catalog.clone(),
                        storage,
                        tokens.clone(),
                        connection.clone(),
                        config.reconciler,
                        &config.stream,
                        &config.key_prefix,
                    )));
                }
                Target::reconciler(name, settings)
            }
        };
        targets.insert(name.clone(), Arc::new(built));
    }
    let schedules = config
        .schedules
        .iter()
        .map(|schedule| {
            Schedule::parse(&schedule.schedule)
                .map(|parsed| (schedule.clone(), parsed))
                .map_err(|error| ConfigError::Invalid {
                    key: format!("dispatcher.schedules.{}.schedule", schedule.name),
                    message: error.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Install the process-wide recorder first: series touched before it would be lost.
    let _ = storemesh_runtime::server::prometheus();
    metrics::describe();
    // Register every series at zero so dashboards and alerts see them before the first event.
    for name in targets.keys() {
        for outcome in ["success", "retry", "dead_letter"] {
            ::metrics::counter!(metrics::DELIVERIES_TOTAL, "target" => name.clone(), "outcome" => outcome)
                .increment(0);
        }
        ::metrics::counter!(metrics::RETRIES_TOTAL, "target" => name.clone()).increment(0);
    }
    ::metrics::gauge!(metrics::DLQ_ENTRIES).set(0.0);
    ::metrics::gauge!(metrics::CONSUMER_LAG).set(0.0);

    let consumer = if config.consumer.is_empty() {
        default_consumer()
    } else {
        config.consumer.clone()
    };
    let host = ServiceHost::builder("dispatcher", config.server.clone())
        .descriptor_set(storemesh_proto::FILE_DESCRIPTOR_SET)
        .readiness(RedisReadiness(connection.clone()))
        .bind()
        .await?;
    let engine = Engine::new(
        config, connection, reader, block_ms, routes, targets, consumer, schedules, reconciler,
    );
    Ok(Dispatcher { host, engine })
}
