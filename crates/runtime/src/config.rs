//! Layered configuration: built-in defaults < an optional TOML file < `STOREMESH_*` environment
//! variables (`__` separates nesting, e.g. `STOREMESH_AUTH__SERVER__LISTEN=0.0.0.0:50051`).
//!
//! Each crate owns the typed section it reads (`auth`, `redis`, `telemetry`, ...). Sections are
//! extracted on their own, so one service's settings never need another's to be valid, and every
//! error names the offending key and where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Environment variable naming the TOML configuration file (the `--config` flag wins over it).
pub const CONFIG_FILE_ENV: &str = "STOREMESH_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    MissingFile { path: PathBuf },
    /// A value that could not be parsed; figment's message names the key and its source.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    /// A value that parsed but is not acceptable.
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        ConfigError::Parse(Box::new(error))
    }
}

/// Semantic checks run after a section parsed. `section` is the section's key, so messages can
/// name the full key (`auth.server.concurrency_limit`).
pub trait Validate {
    fn validate(&self, section: &str) -> Result<(), ConfigError>;

    /// Makes every relative path of the section absolute against `base` (the working directory
    /// the process started in), so a path means the same wherever it is used later: in a log
    /// line, after a library changes directory, or where a library insists on absolute paths
    /// (wasmtime's cache). Sections with paths override this with [`resolve_path`].
    fn resolve_paths(&mut self, _base: &Path) {}
}

/// `base.join(path)` for a relative, non-empty `path` (an empty path keeps its "unset" meaning).
pub fn resolve_path(path: &mut PathBuf, base: &Path) {
    if !path.as_os_str().is_empty() && path.is_relative() {
        *path = base.join(&*path);
    }
}

/// Builds typed configuration sections from the layered sources.
#[derive(Clone)]
pub struct ConfigLoader {
    figment: Figment,
    /// What relative paths in the configuration are relative to: the working directory.
    base: PathBuf,
}

impl ConfigLoader {
    /// Loads the file named by `file` (or `$STOREMESH_CONFIG`), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env_file = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(env_file);
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile { path });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(Self {
            figment: with_environment(figment),
            base: working_dir(),
        })
    }

    /// A loader from TOML text plus the environment (tests, embedded defaults).
    pub fn from_toml_str(toml: &str) -> Self {
        Self {
            figment: with_environment(Figment::new().merge(Toml::string(toml))),
            base: working_dir(),
        }
    }

    /// Whether `key` (dotted, e.g. `dispatcher.targets.thumbnail.url`) is set by the file or the
    /// environment rather than left to the built-in default: launchers such as `storemesh up`
    /// fill in only what the operator left unset.
    pub fn is_set(&self, key: &str) -> bool {
        self.figment.find_value(key).is_ok()
    }

    /// Resolves relative paths against `base` instead of the working directory.
    pub fn with_base(mut self, base: impl Into<PathBuf>) -> Self {
        self.base = base.into();
        self
    }

    /// Extracts and validates one section, starting from `T::default()` so partially given
    /// sections keep the section's own defaults for the rest (e.g. a service's default ports).
    pub fn section<T>(&self, key: &str) -> Result<T, ConfigError>
    where
        T: Default + Serialize + DeserializeOwned + Validate,
    {
        let mut value: T = Figment::from(Serialized::default(key, T::default()))
            .merge(self.figment.clone())
            .extract_inner(key)?;
        value.resolve_paths(&self.base);
        value.validate(key)?;
        Ok(value)
    }
}

/// The working directory; `.` when it cannot be read (a deleted directory), which keeps
/// relative paths working as the OS resolves them.
fn working_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn with_environment(figment: Figment) -> Figment {
    // `REDIS_URL` is the conventional name; `STOREMESH_REDIS__URL` (merged after it) wins.
    figment
        .merge(Env::raw().only(&["REDIS_URL"]).map(|_| "redis.url".into()))
        .merge(Env::prefixed("STOREMESH_").split("__").ignore(&["config"]))
}

/// Settings every gRPC host has. Each service embeds one under `<service>.server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC (and gRPC-Web) listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// Largest accepted or sent gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Requests handled at once; more are refused with `RESOURCE_EXHAUSTED` instead of queueing.
    pub concurrency_limit: usize,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// How often readiness (e.g. Redis reachability) is re-checked, in milliseconds.
    pub readiness_interval_ms: u64,
    /// Networks (CIDRs, e.g. `127.0.0.1/32`) of the proxies whose `x-forwarded-for` is believed
    /// (the gateway, the edge runtime, a load balancer). Empty (default): nobody's; every
    /// caller is its TCP peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a client may take to send an HTTP/1 request's headers, in milliseconds (a
    /// connection trickling them is closed).
    pub header_read_timeout_ms: u64,
    /// How long a call may take to deliver its first complete gRPC message (the 5-byte prefix
    /// and the message it announces), in milliseconds; a call still waiting then ends with
    /// `DEADLINE_EXCEEDED` and frees its slot.
    pub first_message_timeout_ms: u64,
    /// Streams one HTTP/2 connection may have open at once (advertised in its SETTINGS).
    pub max_concurrent_streams: u32,
    /// Open connections one client address (IPv6: its /64) may hold; more are closed at once.
    /// Trusted proxies are exempt: they carry many clients.
    pub max_connections_per_address: usize,
    /// Calls one client address (IPv6: its /64; the forwarded one behind trusted proxies) may
    /// have in flight; more are answered `RESOURCE_EXHAUSTED` with `retry-after`. Default: a
    /// quarter of `concurrency_limit`.
    pub max_in_flight_per_address: Option<usize>,
}

impl ServerConfig {
    /// Loopback defaults on the given ports.
    pub fn on_ports(grpc: u16, admin: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], grpc)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], admin)),
            ..Self::default()
        }
    }

    /// Calls one client address may have in flight: `max_in_flight_per_address`, or a quarter
    /// of `concurrency_limit` (at least 1).
    pub fn in_flight_per_address(&self) -> usize {
        self.max_in_flight_per_address
            .unwrap_or(self.concurrency_limit / 4)
            .clamp(1, self.concurrency_limit.max(1))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_message_bytes: 4 * 1024 * 1024,
            concurrency_limit: 1024,
            shutdown_grace_ms: 10_000,
            readiness_interval_ms: 2_000,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 10_000,
            first_message_timeout_ms: 10_000,
            max_concurrent_streams: 100,
            max_connections_per_address: 64,
            max_in_flight_per_address: None,
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message: message.to_owned(),
        };
        if self.max_message_bytes < 1024 || self.max_message_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "max_message_bytes",
                "must be between 1024 and 67108864 bytes",
            ));
        }
        if self.concurrency_limit == 0 {
            return Err(invalid("concurrency_limit", "must be at least 1"));
        }
        if self.readiness_interval_ms < 50 {
            return Err(invalid("readiness_interval_ms", "must be at least 50 ms"));
        }
        if !(100..=300_000).contains(&self.header_read_timeout_ms) {
            return Err(invalid(
                "header_read_timeout_ms",
                "must be between 100 and 300000 ms",
            ));
        }
        if !(100..=300_000).contains(&self.first_message_timeout_ms) {
            return Err(invalid(
                "first_message_timeout_ms",
                "must be between 100 and 300000 ms",
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent_streams) {
            return Err(invalid(
                "max_concurrent_streams",
                "must be between 1 and 10000",
            ));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid("max_connections_per_address", "must be at least 1"));
        }
        if let Some(per_address) = self.max_in_flight_per_address
            && (per_address == 0 || per_address > self.concurrency_limit)
        {
            return Err(invalid(
                "max_in_flight_per_address",
                "must be between 1 and `concurrency_limit`",
            ));
        }
        if self.listen.port() != 0 && self.listen == self.admin_listen {
            return Err(invalid("admin_listen", "must differ from `listen`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct DemoSection {
        server: ServerConfig,
        greeting: String,
    }

    impl Default for DemoSection {
        fn default() -> Self {
            Self {
                server: ServerConfig::on_ports(50099, 9099),
                greeting: "hello".into(),
            }
        }
    }

    impl Validate for DemoSection {
        fn validate(&self, section: &str) -> Result<(), ConfigError> {
            self.server.validate(&format!("{section}.server"))
        }
    }

    #[test]
    fn partial_section_keeps_section_defaults() {
        let loader = ConfigLoader::from_toml_str("[demo.server]\nlisten = \"0.0.0.0:7000\"\n");
        let demo: DemoSection = loader.section("demo").unwrap();
        assert_eq!(demo.server.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(demo.server.admin_listen, "127.0.0.1:9099".parse().unwrap());
        assert_eq!(demo.greeting, "hello");
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct PathSection {
        dir: PathBuf,
        unset: PathBuf,
        absolute: PathBuf,
    }

    impl Validate for PathSection {
        fn validate(&self, _section: &str) -> Result<(), ConfigError> {
            Ok(())
        }

        fn resolve_paths(&mut self, base: &Path) {
            resolve_path(&mut self.dir, base);
            resolve_path(&mut self.unset, base);
            resolve_path(&mut self.absolute, base);
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_base_directory() {
        let loader =
            ConfigLoader::from_toml_str("[paths]\ndir = \"data/x\"\nabsolute = \"/srv/y\"\n")
                .with_base("/work/here");
        let paths: PathSection = loader.section("paths").unwrap();
        assert_eq!(paths.dir, PathBuf::from("/work/here/data/x"));
        assert_eq!(paths.unset, PathBuf::new(), "an empty path stays unset");
        assert_eq!(paths.absolute, PathBuf::from("/srv/y"));
        // Without a base, the working directory.
        let paths: PathSection = ConfigLoader::from_toml_str("[paths]\ndir = \"d\"\n")
            .section("paths")
            .unwrap();
        assert_eq!(paths.dir, std::env::current_dir().unwrap().join("d"));
    }

    #[test]
    fn is_set_tells_configured_keys_from_defaults() {
        let loader = ConfigLoader::from_toml_str("[demo.server]\nlisten = \"0.0.0.0:7000\"\n");
        assert!(loader.is_set("demo.server.listen"));
        assert!(loader.is_set("demo.server"));
        assert!(!loader.is_set("demo.server.admin_listen"));
        assert!(!loader.is_set("other"));
    }

    #[test]
    fn missing_section_is_all_defaults() {
        let demo: DemoSection = ConfigLoader::from_toml_str("").section("demo").unwrap();
        assert_eq!(demo, DemoSection::default());
    }

    #[test]
    fn parse_error_names_the_key() {
        let loader = ConfigLoader::from_toml_str("[demo.server]\nlisten = \"not an address\"\n");
        let error = loader
            .section::<DemoSection>("demo")
            .unwrap_err()
            .to_string();
        assert!(error.contains("listen"), "{error}");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let loader = ConfigLoader::from_toml_str("[demo]\ngreetnig = \"typo\"\n");
        let error = loader
            .section::<DemoSection>("demo")
            .unwrap_err()
            .to_string();
        assert!(error.contains("greetnig"), "{error}");
    }

    #[test]
    fn semantic_error_names_the_full_key() {
        let loader = ConfigLoader::from_toml_str("[demo.server]\nconcurrency_limit = 0\n");
        let error = loader
            .section::<DemoSection>("demo")
            .unwrap_err()
            .to_string();
        assert!(error.contains("demo.server.concurrency_limit"), "{error}");
    }

    #[test]
    fn hardening_limits_are_validated_by_key() {
        for (toml, key) in [
            ("first_message_timeout_ms = 0", "first_message_timeout_ms"),
            ("header_read_timeout_ms = 5", "header_read_timeout_ms"),
            ("max_concurrent_streams = 0", "max_concurrent_streams"),
            (
                "max_connections_per_address = 0",
                "max_connections_per_address",
            ),
            (
                "concurrency_limit = 8\nmax_in_flight_per_address = 9",
                "max_in_flight_per_address",
            ),
            ("trusted_proxies = [\"not-a-network\"]", "trusted_proxies"),
        ] {
            let loader = ConfigLoader::from_toml_str(&format!("[demo.server]\n{toml}\n"));
            let error = loader
                .section::<DemoSection>("demo")
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
        let loader = ConfigLoader::from_toml_str(
            "[demo.server]\ntrusted_proxies = [\"127.0.0.1/32\", \"fd00::/8\"]\n",
        );
        let demo: DemoSection = loader.section("demo").unwrap();
        assert_eq!(demo.server.trusted_proxies.len(), 2);
        assert_eq!(demo.server.in_flight_per_address(), 256);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let error = ConfigLoader::load(Some(Path::new("/nonexistent/storemesh.toml")))
            .err()
            .unwrap();
        assert!(matches!(error, ConfigError::MissingFile { .. }));
    }
}
