//! The Storemesh catalog service (`storemesh serve catalog`).
//!
//! Products with optimistic concurrency (etag/version) and field-mask updates, each a draft
//! (signed-in readers only) or published (also anonymous shoppers: `GetProduct` and
//! `ListProducts` answer without a token, from indexes of published products alone); the
//! images attached to them and their thumbnail variants, recorded idempotently from storage
//! events until every configured size is present (`READY`) or processing fails (`FAILED`);
//! image URLs added to every image on output ([`urls`], `catalog.public_image_base_url`) and
//! signed, expiring URLs minted by `SignImageUrl` (`catalog.image_url_signing_keys`); a
//! `WatchProduct` stream of changes over Redis pub/sub ([`watch`]); and a durable outbox that
//! deletes the stored objects of deleted products and images ([`cleanup`]). State lives in
//! Redis; the key schema is documented in [`store`].

pub mod authz;
pub mod cleanup;
pub mod config;
pub mod model;
pub mod paging;
pub mod service;
pub mod store;
pub mod urls;
pub mod validate;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use storemesh_mesh::UpstreamConfig;
use storemesh_mesh::client::{self, ClientError, ServiceTokens};
use storemesh_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use storemesh_runtime::auth::{Authenticator, GrpcKeySource, TokensConfig};
use storemesh_runtime::redis::{RedisConfig, RedisReadiness};
use storemesh_runtime::server::ServeError;
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::{ConfigError, ConfigLoader, Secret, ServiceError, ServiceHost};

pub use config::CatalogConfig;

/// Everything the catalog service reads from configuration.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    pub catalog: CatalogConfig,
    pub redis: RedisConfig,
    pub tokens: TokensConfig,
}

impl CatalogSettings {
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        Ok(Self {
            catalog: loader.section("catalog")?,
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
    #[error("the change feed (Redis pub/sub) did not connect within {0:?}")]
    ChangeFeed(Duration),
    #[error("cannot set up token verification: {0}")]
    Authenticator(ServiceError),
    /// Only when the settings were built without validation: loading checks the keys.
    #[error("catalog.image_url_signing_keys: {0}")]
    SigningKeys(storemesh_image_urls::KeyError),
    #[error("cannot set up the storage clean-up worker: {0}")]
    Cleanup(#[from] cleanup::WorkerError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// A view into a running catalog's background machinery (for tests and diagnostics).
#[derive(Clone)]
pub struct CatalogHandle {
    hub: Arc<watch::Hub>,
    cleanup: Option<Arc<cleanup::CleanupStats>>,
}

impl CatalogHandle {
    /// `WatchProduct` streams currently open.
    pub fn active_watchers(&self) -> usize {
        self.hub.active()
    }

    /// `WatchProduct` streams `identity` (a token subject) holds open on this process, as
    /// counted against `catalog.max_watch_streams_per_identity`.
    pub fn watchers_of(&self, identity: &str) -> usize {
        self.hub.active_for(identity)
    }

    /// The clean-up worker's counters; `None` when it is not running (no credentials).
    pub fn cleanup_stats(&self) -> Option<Arc<cleanup::CleanupStats>> {
        self.cleanup.clone()
    }
}

/// Connects, starts the background tasks, and binds the service's listeners.
pub async fn build(settings: CatalogSettings) -> Result<ServiceHost, StartError> {
    Ok(build_with_handle(settings).await?.0)
}

/// [`build`], also returning a [`CatalogHandle`].
pub async fn build_with_handle(
    settings: CatalogSettings,
) -> Result<(ServiceHost, CatalogHandle), StartError> {
    let CatalogSettings {
        catalog,
        redis,
        tokens,
    } = settings;
    let redis_error = |source| StartError::Redis {
        url: storemesh_runtime::secret::redact_url(&redis.url),
        source,
    };
    let connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(redis_error)?;

    // One channel to auth (upstream `auth`) for the verification keys and the clean-up
    // worker's service tokens.
    let auth = client::auth_channel(&tokens).await?;
    let authenticator = Authenticator::new(
        &tokens,
        Arc::new(GrpcKeySource::with_channel(auth.clone())),
        Some(connection.clone()),
    )
    .map_err(|error| StartError::Authenticator(ServiceError::internal(error)))?;
    // Best effort: when auth is not up yet, the first token with an unknown key fetches again.
    authenticator.prefetch_keys().await;

    // Background tasks stop when the service (owned by the host) is dropped.
    let background = Shutdown::new();
    let guard = Arc::new(service::BackgroundGuard(background.clone()));
    let hub = watch::Hub::new();
    let connect_timeout = Duration::from_millis(redis.connect_timeout_ms);
    let client = redis::Client::open(redis.url.as_str()).map_err(redis_error)?;
    tokio::spawn(hub.clone().run(client, connect_timeout, background.clone()));
    if !hub.wait_connected(connect_timeout).await {
        return Err(StartError::ChangeFeed(connect_timeout));
    }

    let worker_connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(redis_error)?;
    storemesh_runtime::redis::ensure_group(
        &worker_connection,
        store::keys::CLEANUP_STREAM,
        cleanup::GROUP,
    )
    .await
    .map_err(redis_error)?;
    let cleanup_stats = if catalog.service_client_id.is_empty() {
        tracing::warn!(
            "catalog.service_client_id is not set: stored objects of deleted products wait in the clean-up outbox"
        );
        None
    } else {
        let stats = Arc::new(cleanup::CleanupStats::default());
        let timeout = catalog.cleanup.request_timeout_ms;
        let storage = UpstreamConfig {
            default_deadline_ms: timeout,
            ..client::upstream("catalog.storage_endpoint", &catalog.storage_endpoint)?
        };
        let service_tokens = ServiceTokens::new(
            auth,
            catalog.service_client_id.clone(),
            catalog.service_client_secret.clone(),
        )
        .scopes([storemesh_tokens::scopes::STORAGE_DELETE_PRODUCTS])
        .timeout(Duration::from_millis(timeout));
        let worker = cleanup::Worker::new(
            worker_connection,
            cleanup::WorkerSettings {
                storage: client::channel("storage", &storage).await?,
                tokens: Arc::new(service_tokens),
                config: catalog.cleanup,
                // Below the connection's response timeout, so a quiet outbox is not an error.
                block: Duration::from_millis((redis.response_timeout_ms / 2).clamp(1, 1_000)),
            },
            stats.clone(),
        )?;
        tokio::spawn(worker.run(background.clone()));
        Some(stats)
    };

    let signing_keys = if catalog.image_url_signing_keys.is_empty() {
        None
    } else {
        Some(
            storemesh_image_urls::SigningKeys::new(
                catalog.image_url_signing_keys.iter().map(Secret::expose),
            )
            .map_err(StartError::SigningKeys)?,
        )
    };
    let api = service::CatalogApi {
        store: store::Store::new(connection.clone()),
        hub: hub.clone(),
        required_variants: Arc::new(config::required_variant_names(&catalog.variant_sizes)),
        watch_buffer: catalog.watch_buffer,
        max_watch_streams_per_identity: catalog.max_watch_streams_per_identity,
        max_products_per_seller: catalog.max_products_per_seller,
        urls: urls::ImageUrls::new(&catalog.public_image_base_url),
        signing_keys,
        _background: guard,
    };
    let builder = ServiceHost::builder("catalog", catalog.server.clone());
    let limit = builder.max_message_bytes();
    let host = builder
        .add_service(
            CatalogServiceServer::new(api)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .descriptor_set(storemesh_proto::FILE_DESCRIPTOR_SET)
        .readiness(RedisReadiness(connection))
        .authenticate_with(Arc::new(authenticator))
        .bind()
        .await?;
    Ok((
        host,
        CatalogHandle {
            hub,
            cleanup: cleanup_stats,
        },
    ))
}
