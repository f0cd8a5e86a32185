//! The Storemesh auth service (`storemesh serve auth`).
//!
//! Accounts with Argon2id passwords; Ed25519-signed JWT access tokens; opaque, single-use
//! refresh tokens with reuse detection; service accounts with scopes; Redis-backed rate
//! limits. Other services verify tokens locally with the keys from `GetPublicKeys` (see
//! `storemesh_runtime::auth`). The Redis key schema is documented in [`store`].

pub mod config;
pub mod keys;
pub mod passwords;
pub mod ratelimit;
pub mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;

use std::sync::Arc;

use futures::future::BoxFuture;
use storemesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use storemesh_runtime::auth::{Authenticator, KeySource, TokensConfig};
use storemesh_runtime::redis::{RedisConfig, RedisReadiness};
use storemesh_runtime::server::ServeError;
use storemesh_runtime::{ConfigError, ConfigLoader, ServiceError, ServiceHost};
use storemesh_tokens::PublicJwk;

pub use config::AuthConfig;

/// Everything the auth service reads from configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub tokens: TokensConfig,
}

impl AuthSettings {
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        Ok(Self {
            auth: loader.section("auth")?,
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
    Keys(#[from] keys::KeyError),
    #[error("invalid argon2 parameters: {0}")]
    Argon2(argon2::Error),
    #[error("bootstrap failed: {0}")]
    Bootstrap(ServiceError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The auth service verifies tokens with its own keyring, no network round trip.
struct KeyringSource(Arc<keys::Keyring>);

impl KeySource for KeyringSource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PublicJwk>, String>> {
        Box::pin(std::future::ready(Ok(self.0.public_keys())))
    }
}

/// Connects, bootstraps accounts, and binds the service's listeners.
pub async fn build(settings: AuthSettings) -> Result<ServiceHost, StartError> {
    let AuthSettings {
        auth,
        redis,
        tokens,
    } = settings;
    if auth.trust_forwarded_for {
        // Believing the header from any peer let callers pick their rate-limit bucket.
        tracing::warn!(
            "auth.trust_forwarded_for is deprecated and ignored: list the gateway's and other \
             proxies' addresses in auth.server.trusted_proxies instead"
        );
    }
    let connection = storemesh_runtime::redis::connect(&redis)
        .await
        .map_err(|source| StartError::Redis {
            url: storemesh_runtime::secret::redact_url(&redis.url),
            source,
        })?;
    let max_ttl = auth.access_token_ttl_secs.max(auth.service_token_ttl_secs);
    let keyring = Arc::new(keys::Keyring::load(
        &auth.keys_dir,
        auth.generate_missing_key,
        max_ttl,
    )?);
    tracing::info!(
        kid = keyring.current.kid(),
        previous = keyring.previous.len(),
        "signing keys loaded"
    );
    let hasher = passwords::PasswordHasher::new(auth.argon2).map_err(StartError::Argon2)?;
    let api = service::AuthApi {
        store: store::Store::new(connection.clone()),
        hasher,
        verified_secrets: Arc::new(passwords::VerifiedSecrets::new(
            passwords::VERIFIED_SECRET_TTL,
        )),
        keyring: keyring.clone(),
        config: Arc::new(auth.clone()),
        tokens: tokens.clone(),
    };
    api.bootstrap_admin().await.map_err(StartError::Bootstrap)?;
    api.bootstrap_service_accounts()
        .await
        .map_err(StartError::Bootstrap)?;

    // The issuer itself sees a logout at once: no revocation-check interval here.
    let strict = TokensConfig {
        revocation_check_interval_ms: 0,
        ..tokens.clone()
    };
    let authenticator = Authenticator::new(
        &strict,
        Arc::new(KeyringSource(keyring)),
        Some(connection.clone()),
    )
    .map_err(|error| StartError::Bootstrap(ServiceError::internal(error)))?;
    authenticator.prefetch_keys().await;

    let builder = ServiceHost::builder("auth", auth.server.clone());
    let limit = builder.max_message_bytes();
    let host = builder
        .add_service(
            AuthServiceServer::new(api)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .descriptor_set(storemesh_proto::FILE_DESCRIPTOR_SET)
        .readiness(RedisReadiness(connection))
        .authenticate_with(Arc::new(authenticator))
        .bind()
        .await?;
    Ok(host)
}
