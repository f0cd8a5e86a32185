//! The `[catalog]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use storemesh_runtime::backoff::{Backoff, BackoffError, Jitter};
use storemesh_runtime::config::{ConfigError, Validate};
use storemesh_runtime::endpoint::ServiceEndpoint;
use storemesh_runtime::{Secret, ServerConfig};

/// Default largest gRPC message: 16 MiB, not the runtime's 4 MiB. The contract promises
/// `INVALID_ARGUMENT` with a field violation for an oversized field (e.g. a 10 MB
/// description); with a 4 MiB limit tonic would refuse such a request with
/// `RESOURCE_EXHAUSTED` before it reaches validation. Responses stay far below this (a product
/// is at most ~40 KB), so the larger limit costs nothing for well-behaved callers.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Default of `catalog.max_products_per_seller`.
pub const DEFAULT_MAX_PRODUCTS_PER_SELLER: usize = 10_000;

/// Default of `catalog.max_watch_streams_per_identity`: a console has a few tabs open, each
/// watching one product.
pub const DEFAULT_MAX_WATCH_STREAMS_PER_IDENTITY: usize = 16;

/// The local edge runtime, where the `images` function serves `/img/...` in development.
pub const DEFAULT_PUBLIC_IMAGE_BASE_URL: &str = "http://127.0.0.1:3000";

/// Secrets are [`Secret`]s, so `Debug` never prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    pub server: ServerConfig,
    /// Thumbnail sizes (longest side, pixels) the thumbnail function makes. An image is
    /// `READY` once it has a variant named `w{N}` for every N here, so keep this equal to the
    /// thumbnail function's sizes.
    pub variant_sizes: Vec<u32>,
    /// gRPC endpoint of the storage service, where the clean-up worker deletes objects:
    /// `http://host:port`, `https://host:port` or `dns:///name:port` (every address an
    /// endpoint, re-resolved; see `storemesh_runtime::endpoint`). Called through the mesh
    /// (upstream `storage`).
    pub storage_endpoint: String,
    /// Service account the clean-up worker uses to get a token with scope
    /// `storage.delete:products` from the auth service (`tokens.auth_endpoint`). When empty,
    /// the worker does not run and clean-up requests wait in the outbox.
    pub service_client_id: String,
    pub service_client_secret: Secret,
    /// Changes buffered per `WatchProduct` stream; a watcher further behind than this is ended
    /// with `ABORTED` so it cannot hold back the others.
    pub watch_buffer: usize,
    /// `WatchProduct` streams one identity (token subject) may hold open at once on one
    /// catalog process; one more is `RESOURCE_EXHAUSTED`. Each stream holds a buffer of
    /// `watch_buffer` changes, so this bounds what one caller can pin in memory.
    pub max_watch_streams_per_identity: usize,
    /// Products one seller may own; `CreateProduct` beyond it is `RESOURCE_EXHAUSTED`. Checked
    /// atomically with the create, so concurrent creates cannot overshoot it, and deleting a
    /// product frees its place.
    pub max_products_per_seller: usize,
    pub cleanup: CleanupConfig,
    /// Where the `images` edge function is reachable from clients, e.g.
    /// `https://img.example.com`: image URLs in responses are this plus `/img/...`. Empty:
    /// responses carry paths only (`url` equals `url_path`).
    pub public_image_base_url: String,
    /// HMAC keys of `SignImageUrl` (each at least 16 bytes, at most 8): the first signs, the
    /// `images` function accepts any of its own list, so keys rotate by adding the new one
    /// first there, then here. Empty: `SignImageUrl` is `FAILED_PRECONDITION`.
    pub image_url_signing_keys: Vec<Secret>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                ..ServerConfig::on_ports(50052, 9052)
            },
            variant_sizes: vec![160, 320, 640],
            storage_endpoint: "http://127.0.0.1:50053".into(),
            service_client_id: String::new(),
            service_client_secret: Secret::default(),
            watch_buffer: 256,
            max_watch_streams_per_identity: DEFAULT_MAX_WATCH_STREAMS_PER_IDENTITY,
            max_products_per_seller: DEFAULT_MAX_PRODUCTS_PER_SELLER,
            cleanup: CleanupConfig::default(),
            public_image_base_url: DEFAULT_PUBLIC_IMAGE_BASE_URL.into(),
            image_url_signing_keys: Vec::new(),
        }
    }
}

/// The storage clean-up worker (see [`crate::cleanup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanupConfig {
    /// First retry delay after a failed delete, in milliseconds; doubles up to the maximum.
    pub initial_backoff_ms: u64,
    /// Largest retry delay, in milliseconds.
    pub max_backoff_ms: u64,
    /// Entries another (dead) catalog instance took but did not finish are taken over after
    /// being idle this long, in milliseconds.
    pub claim_idle_ms: u64,
    /// Entries read from the outbox at once.
    pub batch_size: usize,
    /// Deadline of one storage `Delete` call, in milliseconds.
    pub request_timeout_ms: u64,
}

impl CleanupConfig {
    /// The delay before retry number n (1-based): `initial · 2^(n-1)`, capped, less a random
    /// share of at most half, so instances do not retry in lockstep. Refused (when the section
    /// is validated) for `initial_backoff_ms = 0` or `max_backoff_ms < initial_backoff_ms`.
    pub fn backoff(&self) -> Result<Backoff, BackoffError> {
        Backoff::exponential(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
            Jitter::Proportional(0.5),
        )
    }
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            claim_idle_ms: 60_000,
            batch_size: 32,
            request_timeout_ms: 10_000,
        }
    }
}

/// Whether `url` can be the public image base URL: `http(s)://host[:port][/path]`, no query or
/// fragment (paths are appended to it).
fn is_base_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    !host.is_empty()
        && !host.contains('@')
        && !rest.contains(['?', '#'])
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The variant names an image needs to be `READY` (`w{N}` per configured size).
pub fn required_variant_names(sizes: &[u32]) -> Vec<String> {
    let mut names: Vec<String> = sizes.iter().map(|size| format!("w{size}")).collect();
    names.sort();
    names.dedup();
    names
}

impl Validate for CatalogConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message: message.to_owned(),
        };
        self.server.validate(&format!("{section}.server"))?;
        if self.variant_sizes.is_empty() || self.variant_sizes.len() > 16 {
            return Err(invalid("variant_sizes", "must list 1 to 16 sizes"));
        }
        if self
            .variant_sizes
            .iter()
            .any(|size| !(1..=10_000).contains(size))
        {
            return Err(invalid(
                "variant_sizes",
                "every size must be between 1 and 10000 pixels",
            ));
        }
        if required_variant_names(&self.variant_sizes).len() != self.variant_sizes.len() {
            return Err(invalid("variant_sizes", "sizes must not repeat"));
        }
        if let Err(error) = ServiceEndpoint::parse(&self.storage_endpoint) {
            return Err(invalid("storage_endpoint", &error.to_string()));
        }
        if self.service_client_id.is_empty() != self.service_client_secret.is_empty() {
            return Err(invalid(
                "service_client_secret",
                "service_client_id and service_client_secret are set together",
            ));
        }
        if !self.service_client_secret.is_empty()
            && !(16..=256).contains(&self.service_client_secret.expose().chars().count())
        {
            return Err(invalid(
                "service_client_secret",
                "must be 16 to 256 characters",
            ));
        }
        if !self.public_image_base_url.is_empty() && !is_base_url(&self.public_image_base_url) {
            return Err(invalid(
                "public_image_base_url",
                "must be empty or an absolute http:// or https:// URL without query or fragment",
            ));
        }
        if !self.image_url_signing_keys.is_empty()
            && let Err(error) = storemesh_image_urls::SigningKeys::new(
                self.image_url_signing_keys.iter().map(Secret::expose),
            )
        {
            // The error names an index and a length rule, never the key itself.
            return Err(invalid("image_url_signing_keys", &error.to_string()));
        }
        if !(1..=65_536).contains(&self.watch_buffer) {
            return Err(invalid("watch_buffer", "must be between 1 and 65536"));
        }
        if !(1..=10_000).contains(&self.max_watch_streams_per_identity) {
            return Err(invalid(
                "max_watch_streams_per_identity",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=100_000_000).contains(&self.max_products_per_seller) {
            return Err(invalid(
                "max_products_per_seller",
                "must be between 1 and 100000000",
            ));
        }
        let cleanup = self.cleanup;
        if let Err(error) = cleanup.backoff() {
            return Err(match error {
                BackoffError::ZeroMin => {
                    invalid("cleanup.initial_backoff_ms", "must be at least 1")
                }
                BackoffError::MaxBelowMin { .. } => invalid(
                    "cleanup.max_backoff_ms",
                    "must be at least cleanup.initial_backoff_ms",
                ),
                // The jitter is not configurable: this names the type's own complaint.
                BackoffError::JitterOutOfRange(_) => {
                    invalid("cleanup.max_backoff_ms", &error.to_string())
                }
            });
        }
        if !(1..=1000).contains(&cleanup.batch_size) {
            return Err(invalid("cleanup.batch_size", "must be between 1 and 1000"));
        }
        if cleanup.request_timeout_ms == 0 {
            return Err(invalid("cleanup.request_timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use storemesh_runtime::ConfigLoader;

    use super::*;

    #[test]
    fn defaults_are_valid_and_allow_large_requests() {
        let config: CatalogConfig = ConfigLoader::from_toml_str("").section("catalog").unwrap();
        assert_eq!(config.server.listen.port(), 50052);
        assert_eq!(config.server.admin_listen.port(), 9052);
        assert!(config.server.max_message_bytes > 10_000_000);
        assert_eq!(
            required_variant_names(&config.variant_sizes),
            ["w160", "w320", "w640"]
        );
        assert_eq!(config.public_image_base_url, "http://127.0.0.1:3000");
        assert!(config.image_url_signing_keys.is_empty());
    }

    #[test]
    fn image_settings_are_accepted_and_secrets_stay_out_of_debug() {
        let config: CatalogConfig = ConfigLoader::from_toml_str(
            "[catalog]\npublic_image_base_url = \"https://img.example.com/\"\n\
             image_url_signing_keys = [\"first-secret-0123456789\", \"second-secret-0123456789\"]\n\
             service_client_id = \"catalog\"\nservice_client_secret = \"client-secret-0123456789\"\n",
        )
        .section("catalog")
        .unwrap();
        assert_eq!(config.image_url_signing_keys.len(), 2);
        let debug = format!("{config:?}");
        for secret in ["first-secret", "second-secret", "client-secret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("https://img.example.com/"), "{debug}");
        let empty: CatalogConfig =
            ConfigLoader::from_toml_str("[catalog]\npublic_image_base_url = \"\"\n")
                .section("catalog")
                .unwrap();
        assert!(empty.public_image_base_url.is_empty());
        let nine = format!(
            "[catalog]\nimage_url_signing_keys = [{}]\n",
            ["\"0123456789abcdef\""; 9].join(", ")
        );
        let error = ConfigLoader::from_toml_str(&nine)
            .section::<CatalogConfig>("catalog")
            .unwrap_err()
            .to_string();
        assert!(error.contains("catalog.image_url_signing_keys"), "{error}");
    }

    #[test]
    fn errors_name_the_full_key() {
        let cases = [
            ("[catalog]\nvariant_sizes = []\n", "catalog.variant_sizes"),
            (
                "[catalog]\nvariant_sizes = [160, 160]\n",
                "catalog.variant_sizes",
            ),
            (
                "[catalog]\nstorage_endpoint = \"x\"\n",
                "catalog.storage_endpoint",
            ),
            (
                "[catalog]\nservice_client_id = \"catalog\"\n",
                "catalog.service_client_secret",
            ),
            ("[catalog]\nwatch_buffer = 0\n", "catalog.watch_buffer"),
            (
                "[catalog]\nmax_watch_streams_per_identity = 0\n",
                "catalog.max_watch_streams_per_identity",
            ),
            (
                "[catalog]\nmax_products_per_seller = 0\n",
                "catalog.max_products_per_seller",
            ),
            (
                "[catalog.cleanup]\ninitial_backoff_ms = 10\nmax_backoff_ms = 5\n",
                "catalog.cleanup.max_backoff_ms",
            ),
            (
                "[catalog.server]\nconcurrency_limit = 0\n",
                "catalog.server.concurrency_limit",
            ),
            ("[catalog]\nvariant_size = [1]\n", "variant_size"),
            (
                "[catalog]\npublic_image_base_url = \"img.example.com\"\n",
                "catalog.public_image_base_url",
            ),
            (
                "[catalog]\npublic_image_base_url = \"https://img.example.com/?v=1\"\n",
                "catalog.public_image_base_url",
            ),
            (
                "[catalog]\nimage_url_signing_keys = [\"short\"]\n",
                "catalog.image_url_signing_keys",
            ),
        ];
        for (toml, key) in cases {
            let error = ConfigLoader::from_toml_str(toml)
                .section::<CatalogConfig>("catalog")
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{toml:?}: {error}");
        }
    }
}
