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
pub mod plan;
pub mod reconciler;
pub mod retry;
pub mod routing;
pub mod schedule;
pub mod store;
pub mod target;

use std::collections::BTreeMap;
use std::sync::Arc;

use storemesh_mesh::client::{self, ServiceTokens};
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
use crate::plan::Action;
use crate::target::{HttpTarget, RecordVariantTarget, Target};

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
    #[error(transparent)]
    Client(#[from] client::ClientError),
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

/// Plans the section ([`DispatcherConfig::plan`]: refused as when it is loaded), connects,
/// creates the consumer group and binds the host's listeners.
pub async fn build(settings: DispatcherSettings) -> Result<Dispatcher, StartError> {
    let DispatcherSettings {
        dispatcher: config,
        redis,
        tokens,
    } = settings;
    // Checked here too (not only when the section is loaded): a section built in code.
    let plan = config.plan("dispatcher")?;
    let http_targets = plan.used_targets(&[TargetKind::Http]);
    if !http_targets.is_empty() && config.signing_secrets.is_empty() {
        return Err(StartError::NoSigningSecret(http_targets.join(", ")));
    }
    let mesh_targets = plan.used_targets(&[TargetKind::RecordVariant, TargetKind::Reconciler]);
    if !mesh_targets.is_empty() && config.service_client_id.is_empty() {
        return Err(StartError::NoServiceAccount(mesh_targets.join(", ")));
    }

    let redis_error = |source| StartError::Redis {
        url: storemesh_runtime::secret::redact_url(&redis.url),
        source,
    };
    let connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(redis_error)?;
    let reader = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(redis_error)?;
    // A new group starts at the beginning of the stream: events written before the first
    // dispatcher started are delivered.
    storemesh_runtime::redis::ensure_group(&connection, &config.stream, &config.group)
        .await
        .map_err(redis_error)?;
    // A blocking read must end before the connection's response timeout.
    let block_ms = config
        .block_ms
        .min(redis.response_timeout_ms.saturating_sub(200).max(1));
    let block_ms = usize::try_from(block_ms).unwrap_or(1_000);

    // Every call to another service goes through the mesh (`storemesh_mesh::client`).
    let needs_mesh = !mesh_targets.is_empty();
    let service_tokens = if needs_mesh {
        Some(Arc::new(ServiceTokens::new(
            client::auth_channel(&tokens).await?,
            config.service_client_id.clone(),
            config.service_client_secret.clone(),
        )))
    } else {
        None
    };
    let catalog = if needs_mesh {
        Some(CatalogServiceClient::new(
            client::channel("catalog", &config.catalog).await?,
        ))
    } else {
        None
    };

    let secrets: Arc<Vec<Vec<u8>>> = Arc::new(
        config
            .signing_secrets
            .iter()
            .map(|secret| secret.expose().as_bytes().to_vec())
            .collect(),
    );
    let mut targets = BTreeMap::new();
    let mut reconciler = None;
    for (name, target) in &plan.targets {
        let settings = target.settings;
        let built = match &target.action {
            Action::Http(url) => Target::http(
                name,
                settings,
                HttpTarget::new(url.clone(), secrets.clone()),
            ),
            Action::RecordVariant => match (&catalog, &service_tokens) {
                (Some(catalog), Some(tokens)) => Target::record_variant(
                    name,
                    settings,
                    RecordVariantTarget::new(catalog.clone(), tokens.clone()),
                ),
                _ => continue, // configured but unused
            },
            Action::Reconciler => {
                if let (Some(catalog), Some(tokens)) = (&catalog, &service_tokens)
                    && reconciler.is_none()
                    && target.used
                {
                    let storage = StorageServiceClient::new(
                        client::channel("storage", &config.storage).await?,
                    );
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
    // Install the process-wide recorder first: series touched before it would be lost.
    let _ = storemesh_runtime::metrics::prometheus();
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
        config,
        connection,
        reader,
        block_ms,
        plan.routes,
        targets,
        consumer,
        plan.schedules,
        reconciler,
    );
    Ok(Dispatcher { host, engine })
}
