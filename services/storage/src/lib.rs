//! The Storemesh storage service (`storemesh serve storage`): a streaming object store whose
//! every committed change becomes an event on a Redis stream.
//!
//! ## Data
//!
//! Object bytes live in a backend reached through `object_store` (a local directory by
//! default, or an S3-compatible bucket; see [`backend`]) as one immutable blob per version.
//! Metadata (content type, SHA-256, size, owner, user metadata, create time, etag), the key
//! index used by `List`, upload leases, idempotency records and the event stream live in Redis
//! (see [`store`] for the key schema). Redis is therefore the source of truth for which objects
//! exist and must be persistent (AOF, as `storemesh up` runs it).
//!
//! ## Uploads
//!
//! The header is validated (key rules in [`keys`], content type, metadata, checksum syntax),
//! the caller authorized, and the size limit for the key's prefix checked against
//! `expected_size_bytes`. Then chunks are hashed (SHA-256), counted against the limit and
//! written to the backend as a multipart upload with at most `parts_in_flight` parts in
//! memory, so memory stays bounded whatever the object size. The first 12 bytes are sniffed
//! (see [`sniff`]): on image prefixes only JPEG, PNG, WebP and GIF pass, and a declared type
//! must match. Only when the stream ended, the size and checksum match and the blob is complete
//! does one Redis script commit the version and append its event. Any failure, a rejected check
//! or a client that goes away aborts the multipart upload and leaves nothing: no object, no
//! metadata, no event.
//!
//! ## Events and their guarantee
//!
//! `OBJECT_CREATED` and `OBJECT_DELETED` events are appended by the same atomic Redis script
//! that commits the change, so there is no window in which a change is committed without its
//! event (or an event exists for a change that was not committed): a crash or Redis outage
//! leaves both or neither. A separate outbox ("record the event, commit, then publish") is
//! unnecessary because the commit itself is a Redis write; the outbox's role — repairing what
//! a crash between two steps leaves behind — is played, for the one remaining two-step
//! operation (bytes written to the backend, then committed in Redis), by the upload lease and
//! the janitor (see [`store`]). Delivery to consumers is **at least once**: a client that retries
//! an upload whose response was lost produces a second version and a second event, and
//! consumers (the dispatcher) may redeliver; consumers deduplicate by `Event.id`. The stream
//! is bounded (`MAXLEN ~ events.max_len`), so a consumer must not fall further behind than
//! that.
//!
//! ## Authorization
//!
//! Every RPC needs a valid access token (verified locally by the shared layer).
//! - Read (`Download`, `Stat`): admins; service accounts with scope `storage.read` (the
//!   thumbnail and images functions, the dispatcher); a seller for keys under
//!   `products/{product_id}/` of a product they own (asked of the catalog as for writes).
//!   Nobody else: storage does not know whether a product is published, so shoppers and other
//!   sellers get image bytes only through the `images` function, which applies the catalog's
//!   visibility and reads with its service identity.
//! - `List`: the same, where a seller's prefix must name one of their products
//!   (`products/{product_id}/…`).
//! - `Upload`/`Delete` under `products/{product_id}/originals/`: the seller who owns the product
//!   (the catalog's `GetProduct`, called with the caller's token, says who; answers are cached
//!   for `owner_cache_ms`), and admins.
//! - `Upload`/`Delete` under `products/{product_id}/thumbnails/`: service accounts with scope
//!   `storage.write:thumbnails`, and admins.
//! - `Delete` anywhere under `products/`: service accounts with scope `storage.delete:products`.
//! - Anything else: admins only.
//!
//! ## Limits
//!
//! - Uploads in progress per identity (`max_concurrent_uploads_per_identity`, service accounts
//!   `max_concurrent_uploads_per_service`), counted in Redis with the upload leases, so across
//!   instances; one more is refused `RESOURCE_EXHAUSTED` with `retry-after` before any byte is
//!   stored, and a crashed upload's place comes back when its lease runs out.
//! - A minimum upload rate (`upload_min_bytes_per_sec` averaged over
//!   `upload_min_rate_window_ms`, after `upload_min_rate_grace_ms`), besides the idle timeout: a
//!   trickling client is ended `DEADLINE_EXCEEDED` and cleaned up like any failed upload.
//! - Stored bytes per seller (`max_stored_bytes_per_seller`): every object under
//!   `products/{product_id}/` is charged to the product's seller (the uploading seller, or the
//!   seller recorded for the product when a service writes its variants), in the same Redis
//!   script that commits or deletes it (see [`store`]). A seller's upload is refused
//!   `RESOURCE_EXHAUSTED` before streaming when the announced size does not fit, while
//!   streaming once the bytes do not, and at the commit (atomically, so concurrent uploads
//!   cannot overshoot). Variants written by services are charged but never refused (they come
//!   from originals that were admitted). If the totals ever drift (manual edits, objects from
//!   before accounting), [`store::Store::recount_usage`] rebuilds them from the objects while
//!   the service runs.

pub mod authz;
pub mod backend;
pub mod config;
pub mod events;
pub mod janitor;
pub mod keys;
pub mod limits;
pub mod page_token;
pub mod range;
pub mod service;
pub mod sniff;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use storemesh_mesh::UpstreamConfig;
use storemesh_mesh::client::{self, ClientError};
use storemesh_proto::storage::v1::storage_service_server::StorageServiceServer;
use storemesh_runtime::auth::{Authenticator, GrpcKeySource, TokensConfig};
use storemesh_runtime::redis::{RedisConfig, RedisReadiness};
use storemesh_runtime::server::ServeError;
use storemesh_runtime::{ConfigError, ConfigLoader, ServiceError, ServiceHost};

pub use authz::ProductOwners;
pub use config::StorageConfig;

/// Everything the storage service reads from configuration.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub storage: StorageConfig,
    pub redis: RedisConfig,
    pub tokens: TokensConfig,
}

impl StorageSettings {
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        Ok(Self {
            storage: loader.section("storage")?,
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
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot set up {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: ServiceError,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Connects, starts the janitor and binds the service's listeners; product ownership comes
/// from the catalog at `storage.catalog_endpoint`, through the mesh (upstream `catalog`).
pub async fn build(settings: StorageSettings) -> Result<ServiceHost, StartError> {
    let config = &settings.storage;
    let catalog = UpstreamConfig {
        default_deadline_ms: config.catalog_timeout_ms,
        ..client::upstream("storage.catalog_endpoint", &config.catalog_endpoint)?
    };
    let owners = authz::CatalogOwners::new(
        client::channel("catalog", &catalog).await?,
        Duration::from_millis(config.owner_cache_ms),
    );
    build_with_owners(settings, Arc::new(owners)).await
}

/// [`build`] with another source of product ownership (embedding, tests).
pub async fn build_with_owners(
    settings: StorageSettings,
    owners: Arc<dyn ProductOwners>,
) -> Result<ServiceHost, StartError> {
    let StorageSettings {
        storage,
        redis,
        tokens,
    } = settings;
    let connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(|source| StartError::Redis {
            url: storemesh_runtime::secret::redact_url(&redis.url),
            source,
        })?;
    let backend = backend::Backend::open(&storage)?;
    tracing::info!(backend = ?backend, events = %storage.events.stream, "storage backend ready");
    let store = store::Store::new(connection.clone(), storage.events.clone());
    let janitor = janitor::spawn(
        store.clone(),
        backend.clone(),
        Duration::from_millis(storage.janitor_interval_ms),
    );
    let api = service::StorageApi::new(
        store,
        backend.clone(),
        owners,
        storage.clone(),
        Some(janitor),
    );

    // Verification keys from auth through the mesh (upstream `auth`).
    let keys = GrpcKeySource::with_channel(client::auth_channel(&tokens).await?);
    let authenticator = Authenticator::new(&tokens, Arc::new(keys), Some(connection.clone()))
        .map_err(|error| StartError::Setup {
            what: "token verification",
            source: ServiceError::internal(error),
        })?;
    authenticator.prefetch_keys().await;

    let builder = ServiceHost::builder("storage", storage.server.clone());
    let limit = builder.max_message_bytes();
    let host = builder
        .add_service(
            StorageServiceServer::new(api)
                // Room for the message framing around a full 4 MiB chunk.
                .max_decoding_message_size(limit.saturating_add(1024))
                .max_encoding_message_size(limit.saturating_add(1024)),
        )
        .descriptor_set(storemesh_proto::FILE_DESCRIPTOR_SET)
        .readiness(RedisReadiness(connection))
        .readiness(backend::BackendReadiness(backend))
        .authenticate_with(Arc::new(authenticator))
        .bind()
        .await?;
    Ok(host)
}
