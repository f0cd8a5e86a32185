//! The `[storage]` configuration section.
//!
//! ```toml
//! [storage]
//! backend = "local"                  # or "s3"
//! data_dir = "data/storage/objects"  # local backend: where object bytes live
//! max_object_bytes = 5368709120      # objects no prefix rule covers
//! limits = [
//!   { prefix = "products/*/originals/", max_bytes = 67108864 },
//!   { prefix = "products/*/thumbnails/", max_bytes = 16777216 },
//! ]
//!
//! max_concurrent_uploads_per_identity = 16
//! max_concurrent_uploads_per_service = 64
//! upload_min_bytes_per_sec = 16384     # 0: no minimum rate (the idle timeout remains)
//! upload_min_rate_window_ms = 30000
//! upload_min_rate_grace_ms = 10000
//! max_stored_bytes_per_seller = 10737418240
//!
//! [storage.events]
//! stream = "storage:events"
//! max_len = 100000
//!
//! [storage.s3]                       # backend = "s3" (AWS S3, MinIO, ...)
//! bucket = "storemesh"
//! region = "us-east-1"
//! endpoint = "http://127.0.0.1:9000" # empty for AWS
//! allow_http = true                  # MinIO without TLS
//! ```
//!
//! Every key can also be set from the environment, e.g. `STOREMESH_STORAGE__DATA_DIR`,
//! `STOREMESH_STORAGE__BACKEND=s3`, `STOREMESH_STORAGE__S3__BUCKET`. Empty S3 credentials fall
//! back to the usual `AWS_*` environment variables (and instance metadata).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storemesh_runtime::config::{ConfigError, Validate};
use storemesh_runtime::endpoint::ServiceEndpoint;
use storemesh_runtime::{Secret, ServerConfig};

use crate::limits::{PrefixLimit, pattern_problem};

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A directory on the local filesystem (`data_dir`).
    Local,
    /// An S3-compatible bucket (`[storage.s3]`).
    S3,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub server: ServerConfig,
    /// Where object bytes live: `local` (default) or `s3`. Metadata always lives in Redis.
    pub backend: BackendKind,
    /// Root directory of the local backend; created when missing.
    pub data_dir: PathBuf,
    /// Local backend: fsync each object and its directory before the upload commits, so a
    /// committed object survives a power loss (as S3 guarantees).
    pub fsync: bool,
    pub s3: S3Config,
    /// Largest object, in bytes, where no `limits` rule applies.
    pub max_object_bytes: u64,
    /// Per-prefix size limits (see `limits`): the most specific matching rule wins.
    pub limits: Vec<PrefixLimit>,
    /// Bytes per multipart part sent to the backend (S3 needs at least 5 MiB). Memory per
    /// upload is at most `part_size_bytes × (parts_in_flight + 1)` plus one 4 MiB chunk.
    pub part_size_bytes: u64,
    /// Parts written to the backend concurrently per upload.
    pub parts_in_flight: usize,
    pub events: EventsConfig,
    /// gRPC endpoint of the catalog service, asked who owns a product: `http://host:port`,
    /// `https://host:port` or `dns:///name:port` (every address an endpoint, re-resolved;
    /// see `storemesh_runtime::endpoint`). Called through the mesh (upstream `catalog`).
    pub catalog_endpoint: String,
    /// Deadline of one catalog call, in milliseconds.
    pub catalog_timeout_ms: u64,
    /// How long a product's owner is remembered, in milliseconds (0: ask every time).
    pub owner_cache_ms: u64,
    /// An upload that sends nothing for this long is aborted (`DEADLINE_EXCEEDED`), in ms.
    pub upload_idle_timeout_ms: u64,
    /// Lease of an upload in progress, in milliseconds; renewed while it streams. An upload
    /// whose server died is cleaned up once its lease ran out.
    pub upload_lease_ms: u64,
    /// How long the bytes of a replaced or deleted version stay readable for downloads
    /// already streaming them, in milliseconds.
    pub gc_grace_ms: u64,
    /// How often the janitor looks for expired uploads and garbage, in milliseconds.
    pub janitor_interval_ms: u64,
    /// Uploads one user (seller, admin, customer) may have in progress at once, across every
    /// storage instance (counted in Redis under the uploads' leases); one more is refused
    /// `RESOURCE_EXHAUSTED` with `retry-after` before any byte is stored.
    pub max_concurrent_uploads_per_identity: u32,
    /// The same for one service account (the thumbnail function uploads several variants of
    /// many images at once).
    pub max_concurrent_uploads_per_service: u32,
    /// Slowest accepted upload, in bytes per second, averaged over `upload_min_rate_window_ms`
    /// once `upload_min_rate_grace_ms` have passed; a slower upload is aborted
    /// (`DEADLINE_EXCEEDED`) and cleaned up. 0 turns the check off (the idle timeout remains).
    /// Bytes count when a whole chunk has arrived, so a window should be long enough for a
    /// client at this rate to send a few chunks.
    pub upload_min_bytes_per_sec: u64,
    /// The window the upload rate is averaged over, in milliseconds.
    pub upload_min_rate_window_ms: u64,
    /// Time after the upload starts streaming during which no rate is required, in ms.
    pub upload_min_rate_grace_ms: u64,
    /// Bytes a seller may store in total (originals and variants under their products, as
    /// accounted in Redis). A seller's upload that would go over it is refused
    /// `RESOURCE_EXHAUSTED`; variants made by services are counted but never refused.
    pub max_stored_bytes_per_seller: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(50053, 9053),
            backend: BackendKind::Local,
            data_dir: PathBuf::from("data/storage/objects"),
            fsync: true,
            s3: S3Config::default(),
            max_object_bytes: 5 * 1024 * MIB,
            limits: vec![
                PrefixLimit {
                    prefix: "products/*/originals/".into(),
                    max_bytes: 64 * MIB,
                },
                PrefixLimit {
                    prefix: "products/*/thumbnails/".into(),
                    max_bytes: 16 * MIB,
                },
            ],
            part_size_bytes: 5 * MIB,
            parts_in_flight: 2,
            events: EventsConfig::default(),
            catalog_endpoint: "http://127.0.0.1:50052".into(),
            catalog_timeout_ms: 5_000,
            owner_cache_ms: 30_000,
            upload_idle_timeout_ms: 60_000,
            upload_lease_ms: 60_000,
            gc_grace_ms: 5 * 60_000,
            janitor_interval_ms: 10_000,
            max_concurrent_uploads_per_identity: 16,
            max_concurrent_uploads_per_service: 64,
            upload_min_bytes_per_sec: 16 * 1024,
            upload_min_rate_window_ms: 30_000,
            upload_min_rate_grace_ms: 10_000,
            max_stored_bytes_per_seller: 10 * 1024 * MIB,
        }
    }
}

/// The change-event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Redis stream the events are appended to.
    pub stream: String,
    /// Approximate bound of the stream (`XADD … MAXLEN ~`): older entries are trimmed, so
    /// consumers must keep up within this many events.
    pub max_len: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            stream: "storage:events".into(),
            max_len: 100_000,
        }
    }
}

/// An S3-compatible bucket. The secret key and session token are [`Secret`]s: `Debug` never
/// prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Region, e.g. `us-east-1` (MinIO accepts any).
    pub region: String,
    /// Endpoint URL for S3-compatible services, e.g. `http://127.0.0.1:9000`; empty for AWS.
    pub endpoint: String,
    /// Key prefix inside the bucket (e.g. `storemesh/`); empty for the bucket root.
    pub prefix: String,
    /// Static credentials; empty means the `AWS_*` environment / instance metadata.
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// Allow plain-HTTP endpoints (local MinIO).
    pub allow_http: bool,
    /// `https://{bucket}.{endpoint}` instead of `https://{endpoint}/{bucket}`.
    pub virtual_hosted_style: bool,
}

fn is_http_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

impl Validate for StorageConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        storemesh_runtime::config::resolve_path(&mut self.data_dir, base);
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message,
        };
        self.server.validate(&format!("{section}.server"))?;
        match self.backend {
            BackendKind::Local => {
                if self.data_dir.as_os_str().is_empty() {
                    return Err(invalid("data_dir", "must not be empty".into()));
                }
            }
            BackendKind::S3 => {
                if self.s3.bucket.trim().is_empty() {
                    return Err(invalid(
                        "s3.bucket",
                        "must be set when backend is s3".into(),
                    ));
                }
                if !self.s3.endpoint.is_empty() && !is_http_url(&self.s3.endpoint) {
                    return Err(invalid(
                        "s3.endpoint",
                        "must be an http:// or https:// URL".into(),
                    ));
                }
                if self.s3.endpoint.starts_with("http://") && !self.s3.allow_http {
                    return Err(invalid(
                        "s3.allow_http",
                        "must be true for an http:// endpoint".into(),
                    ));
                }
                if self.s3.access_key_id.is_empty() != self.s3.secret_access_key.is_empty() {
                    return Err(invalid(
                        "s3.secret_access_key",
                        "access_key_id and secret_access_key are set together".into(),
                    ));
                }
                if self.part_size_bytes < 5 * MIB {
                    return Err(invalid(
                        "part_size_bytes",
                        "must be at least 5 MiB (5242880) with the s3 backend".into(),
                    ));
                }
            }
        }
        if self.max_object_bytes == 0 {
            return Err(invalid("max_object_bytes", "must be at least 1".into()));
        }
        for (index, rule) in self.limits.iter().enumerate() {
            if let Some(problem) = pattern_problem(&rule.prefix) {
                return Err(invalid(&format!("limits[{index}].prefix"), problem.into()));
            }
            if rule.max_bytes == 0 {
                return Err(invalid(
                    &format!("limits[{index}].max_bytes"),
                    "must be at least 1".into(),
                ));
            }
        }
        if !(MIB..=64 * MIB).contains(&self.part_size_bytes) {
            return Err(invalid(
                "part_size_bytes",
                "must be between 1 MiB and 64 MiB".into(),
            ));
        }
        if !(1..=16).contains(&self.parts_in_flight) {
            return Err(invalid(
                "parts_in_flight",
                "must be between 1 and 16".into(),
            ));
        }
        if self.events.stream.trim().is_empty() {
            return Err(invalid("events.stream", "must not be empty".into()));
        }
        if self.events.max_len < 100 {
            return Err(invalid("events.max_len", "must be at least 100".into()));
        }
        if let Err(error) = ServiceEndpoint::parse(&self.catalog_endpoint) {
            return Err(invalid("catalog_endpoint", error.to_string()));
        }
        if self.catalog_timeout_ms == 0 {
            return Err(invalid("catalog_timeout_ms", "must be at least 1".into()));
        }
        if self.upload_idle_timeout_ms < 100 {
            return Err(invalid(
                "upload_idle_timeout_ms",
                "must be at least 100".into(),
            ));
        }
        if self.upload_lease_ms < 300 {
            return Err(invalid("upload_lease_ms", "must be at least 300".into()));
        }
        if self.janitor_interval_ms < 50 {
            return Err(invalid("janitor_interval_ms", "must be at least 50".into()));
        }
        if self.max_concurrent_uploads_per_identity == 0 {
            return Err(invalid(
                "max_concurrent_uploads_per_identity",
                "must be at least 1".into(),
            ));
        }
        if self.max_concurrent_uploads_per_service == 0 {
            return Err(invalid(
                "max_concurrent_uploads_per_service",
                "must be at least 1".into(),
            ));
        }
        if self.upload_min_bytes_per_sec > 0 && self.upload_min_rate_window_ms < 100 {
            return Err(invalid(
                "upload_min_rate_window_ms",
                "must be at least 100 when upload_min_bytes_per_sec is set".into(),
            ));
        }
        if self.max_stored_bytes_per_seller == 0 {
            return Err(invalid(
                "max_stored_bytes_per_seller",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use storemesh_runtime::ConfigLoader;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config: StorageConfig = ConfigLoader::from_toml_str("").section("storage").unwrap();
        // The relative default data dir is read as relative to the working directory.
        let expected = StorageConfig {
            data_dir: std::env::current_dir()
                .unwrap()
                .join("data/storage/objects"),
            ..StorageConfig::default()
        };
        assert_eq!(config, expected);
        assert_eq!(config.server.listen.port(), 50053);
        assert_eq!(config.server.admin_listen.port(), 9053);
    }

    #[test]
    fn s3_section_parses() {
        let config: StorageConfig = ConfigLoader::from_toml_str(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nregion = \"us-east-1\"\n\
             endpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        )
        .section("storage")
        .unwrap();
        assert_eq!(config.backend, BackendKind::S3);
        assert_eq!(config.s3.bucket, "b");
    }

    fn error(toml: &str) -> String {
        ConfigLoader::from_toml_str(toml)
            .section::<StorageConfig>("storage")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_full_key() {
        assert!(error("[storage]\nbackend = \"s3\"\n").contains("storage.s3.bucket"));
        assert!(
            error("[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nendpoint = \"http://x\"\n")
                .contains("storage.s3.allow_http")
        );
        assert!(
            error("[storage]\nlimits = [{ prefix = \"products\", max_bytes = 1 }]\n")
                .contains("storage.limits[0].prefix")
        );
        assert!(error("[storage]\npart_size_bytes = 10\n").contains("storage.part_size_bytes"));
        assert!(error("[storage.events]\nstream = \"\"\n").contains("storage.events.stream"));
        assert!(error("[storage]\nbakend = \"local\"\n").contains("bakend"));
        assert!(
            error("[storage]\nmax_concurrent_uploads_per_identity = 0\n")
                .contains("storage.max_concurrent_uploads_per_identity")
        );
        assert!(
            error("[storage]\nupload_min_rate_window_ms = 10\n")
                .contains("storage.upload_min_rate_window_ms")
        );
        assert!(
            error("[storage]\nmax_stored_bytes_per_seller = 0\n")
                .contains("storage.max_stored_bytes_per_seller")
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let config: StorageConfig = ConfigLoader::from_toml_str(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\n\
             access_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"very-secret-key\"\n\
             session_token = \"very-secret-token\"\n",
        )
        .section("storage")
        .unwrap();
        assert_eq!(config.s3.secret_access_key.expose(), "very-secret-key");
        assert_eq!(config.s3.session_token.expose(), "very-secret-token");
        let debug = format!("{config:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("AKIAEXAMPLE"), "{debug}");
    }
}
