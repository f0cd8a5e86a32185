//! The `[gateway]` configuration section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use storemesh_mesh::UpstreamConfig;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::config::{ConfigError, Validate};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listener, admin port, concurrency limit and drain time (`max_message_bytes` is unused:
    /// the gateway never decodes messages; see the byte caps below).
    pub server: ServerConfig,
    /// Upstreams by name. `auth`, `catalog` and `storage` default to their local ports when
    /// not configured.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Fully qualified gRPC service name → upstream name. Defaults route the three mesh
    /// services; add entries to expose more.
    pub routes: BTreeMap<String, String>,
    /// Largest request body (all messages of one call), in bytes.
    pub max_request_bytes: usize,
    /// Methods allowed up to `max_streaming_request_bytes` instead (uploads).
    pub streaming_methods: Vec<String>,
    pub max_streaming_request_bytes: u64,
    /// Methods callable without an access token; every other method needs a valid one.
    /// Default: the RPCs the contracts mark `(storemesh.options.v1.public_method) = true`
    /// (`storemesh_proto::contract::public_methods`). Setting the key replaces that list, so it
    /// can also take methods away: list the defaults you keep.
    pub public_methods: Vec<String>,
    pub rate_limit: GatewayRateLimit,
    /// Serve TLS (HTTP/2 and HTTP/1.1 by ALPN) instead of cleartext. `storemesh gateway
    /// dev-cert` makes local development certificates.
    pub tls: Option<ListenerTls>,
    /// Browsers calling with gRPC-Web from other origins (the web console and storefront).
    pub cors: CorsConfig,
}

/// Cross-origin calls from browsers: only the listed origins get CORS headers; every other
/// origin gets none (the browser then refuses the answer). No `*`, and no credentials
/// (cookies): callers authenticate with the `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins, `scheme://host[:port]` (default: the local edge of `storemesh up`).
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: vec![
                "http://127.0.0.1:3000".into(),
                "http://localhost:3000".into(),
            ],
            max_age_secs: 600,
        }
    }
}

impl CorsConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        for (index, origin) in self.allowed_origins.iter().enumerate() {
            let invalid = |message: &str| ConfigError::Invalid {
                key: format!("{section}.allowed_origins[{index}]"),
                message: format!("{origin:?} {message}"),
            };
            if origin == "*" {
                return Err(invalid("is not allowed: list the origins"));
            }
            let Some((scheme, authority)) = origin.split_once("://") else {
                return Err(invalid("is not an origin (scheme://host[:port])"));
            };
            if !matches!(scheme, "http" | "https")
                || authority.is_empty()
                || authority.contains(['/', '?', '#', '@', ' '])
                || authority.parse::<http::uri::Authority>().is_err()
            {
                return Err(invalid("is not an origin (scheme://host[:port])"));
            }
        }
        if self.max_age_secs > 86_400 {
            return Err(ConfigError::Invalid {
                key: format!("{section}.max_age_secs"),
                message: "must be at most 86400".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain, PEM.
    pub cert_file: std::path::PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

/// Token buckets, per caller identity (JWT `sub`) and per client address.
///
/// The address is the end client's ([`storemesh_runtime::server::ClientAddr`]: the TCP peer, or
/// what trusted proxies such as the edge runtime forwarded in `x-forwarded-for`; IPv6 by /64).
/// Calls with a user token count against both their address and their identity. Calls with a
/// service token (role `service`: the edge functions, the dispatcher, the services) count only
/// against their own per-service bucket: they come from the mesh's few addresses on behalf of
/// many end clients, so an address bucket would make every client of the edge share one (and
/// let one client's load starve another's uploads); the end clients' own calls are what is
/// limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayRateLimit {
    pub per_identity_per_sec: u32,
    pub per_identity_burst: u32,
    pub per_address_per_sec: u32,
    pub per_address_burst: u32,
    /// Per service identity (role `service`): a ceiling for a leaked or runaway service
    /// credential, well above what the mesh's own traffic needs.
    pub per_service_per_sec: u32,
    pub per_service_burst: u32,
    /// Keys (addresses, identities) each bucket table tracks at most; past it, new keys share
    /// one overflow bucket until pruning frees room. Bounds the gateway's memory against callers
    /// that rotate addresses or tokens.
    pub max_keys: usize,
    /// How often keys whose bucket is full again are dropped from the tables, in milliseconds.
    pub prune_interval_ms: u64,
}

impl Default for GatewayRateLimit {
    fn default() -> Self {
        Self {
            per_identity_per_sec: 500,
            per_identity_burst: 1_000,
            per_address_per_sec: 2_000,
            per_address_burst: 4_000,
            per_service_per_sec: 20_000,
            per_service_burst: 40_000,
            max_keys: 100_000,
            prune_interval_ms: 10_000,
        }
    }
}

pub const AUTH_SERVICE: &str = "storemesh.auth.v1.AuthService";
pub const CATALOG_SERVICE: &str = "storemesh.catalog.v1.CatalogService";
pub const STORAGE_SERVICE: &str = "storemesh.storage.v1.StorageService";

impl Default for GatewayConfig {
    fn default() -> Self {
        let routes = [
            (AUTH_SERVICE, "auth"),
            (CATALOG_SERVICE, "catalog"),
            (STORAGE_SERVICE, "storage"),
        ]
        .into_iter()
        .map(|(service, upstream)| (service.to_owned(), upstream.to_owned()))
        .collect();
        Self {
            server: ServerConfig::on_ports(50050, 9050),
            upstreams: BTreeMap::new(),
            routes,
            max_request_bytes: 8 * 1024 * 1024,
            streaming_methods: vec![format!("/{STORAGE_SERVICE}/Upload")],
            max_streaming_request_bytes: 2 * 1024 * 1024 * 1024,
            // Auth's sign-up, log-in and token calls and the storefront reads (anonymous
            // shoppers see published products; the catalog still verifies a token that is sent).
            public_methods: storemesh_proto::contract::public_methods()
                .iter()
                .cloned()
                .collect(),
            rate_limit: GatewayRateLimit::default(),
            tls: None,
            cors: CorsConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// Configured upstreams plus local defaults for the mesh services not configured.
    pub fn effective_upstreams(&self) -> BTreeMap<String, UpstreamConfig> {
        let mut upstreams = self.upstreams.clone();
        for (name, port) in [("auth", 50051), ("catalog", 50052), ("storage", 50053)] {
            upstreams
                .entry(name.to_owned())
                .or_insert_with(|| UpstreamConfig::addresses([format!("127.0.0.1:{port}")]));
        }
        upstreams
    }
}

impl Validate for GatewayConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(tls) = &mut self.tls {
            storemesh_runtime::config::resolve_path(&mut tls.cert_file, base);
            storemesh_runtime::config::resolve_path(&mut tls.key_file, base);
        }
        for upstream in self.upstreams.values_mut() {
            upstream.resolve_paths(base);
        }
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        self.server.validate(&format!("{section}.server"))?;
        self.cors.validate(&format!("{section}.cors"))?;
        for (name, upstream) in &self.upstreams {
            upstream.validate(&format!("{section}.upstreams.{name}"))?;
        }
        let upstreams = self.effective_upstreams();
        for (service, upstream) in &self.routes {
            if !upstreams.contains_key(upstream) {
                return Err(ConfigError::Invalid {
                    key: format!("{section}.routes.{service}"),
                    message: format!("no upstream named `{upstream}`"),
                });
            }
        }
        if self.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: format!("{section}.max_request_bytes"),
                message: "must be at least 1024".into(),
            });
        }
        let limits = self.rate_limit;
        if [
            limits.per_identity_per_sec,
            limits.per_identity_burst,
            limits.per_address_per_sec,
            limits.per_address_burst,
            limits.per_service_per_sec,
            limits.per_service_burst,
        ]
        .contains(&0)
        {
            return Err(ConfigError::Invalid {
                key: format!("{section}.rate_limit"),
                message: "rates and bursts must be at least 1".into(),
            });
        }
        if limits.max_keys < 1_000 {
            return Err(ConfigError::Invalid {
                key: format!("{section}.rate_limit.max_keys"),
                message: "must be at least 1000".into(),
            });
        }
        if !(100..=3_600_000).contains(&limits.prune_interval_ms) {
            return Err(ConfigError::Invalid {
                key: format!("{section}.rate_limit.prune_interval_ms"),
                message: "must be between 100 and 3600000".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn public_methods_default_to_the_contracts_and_configuration_replaces_them() {
        let load = |toml: &str| {
            storemesh_runtime::ConfigLoader::from_toml_str(toml)
                .section::<GatewayConfig>("gateway")
                .unwrap()
        };
        let auth = [
            "Register",
            "Login",
            "Refresh",
            "Logout",
            "GetPublicKeys",
            "IssueServiceToken",
        ]
        .map(|method| format!("/{AUTH_SERVICE}/{method}"));
        let catalog = ["GetProduct", "ListProducts", "ListProductImages"]
            .map(|method| format!("/{CATALOG_SERVICE}/{method}"));
        let mut defaults = load("").public_methods;
        defaults.sort();
        let mut expected: Vec<String> = auth.into_iter().chain(catalog).collect();
        expected.sort();
        assert_eq!(defaults, expected);
        assert_eq!(
            GatewayConfig::default().public_methods.len(),
            expected.len()
        );

        let only_login = format!("/{AUTH_SERVICE}/Login");
        let config = load(&format!("[gateway]\npublic_methods = [\"{only_login}\"]\n"));
        assert_eq!(config.public_methods, [only_login]);
    }

    #[test]
    fn rate_limit_bounds_are_validated_by_key() {
        let load = |toml: &str| {
            storemesh_runtime::ConfigLoader::from_toml_str(toml).section::<GatewayConfig>("gateway")
        };
        for (toml, key) in [
            ("per_service_per_sec = 0", "gateway.rate_limit"),
            ("max_keys = 10", "gateway.rate_limit.max_keys"),
            (
                "prune_interval_ms = 1",
                "gateway.rate_limit.prune_interval_ms",
            ),
        ] {
            let error = load(&format!("[gateway.rate_limit]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
        assert!(load("[gateway.rate_limit]\nmax_keys = 5000\n").is_ok());
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let load = |toml: &str| {
            storemesh_runtime::ConfigLoader::from_toml_str(toml).section::<GatewayConfig>("gateway")
        };
        let config = load("").unwrap();
        assert_eq!(
            config.cors.allowed_origins,
            ["http://127.0.0.1:3000", "http://localhost:3000"]
        );
        assert!(load("[gateway.cors]\nallowed_origins = [\"https://shop.example.com\"]\n").is_ok());
        for bad in [
            "*",
            "shop.example.com",
            "https://shop.example.com/app",
            "ftp://x",
            "https://",
        ] {
            let error = load(&format!("[gateway.cors]\nallowed_origins = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("gateway.cors.allowed_origins[0]"),
                "{bad}: {error}"
            );
        }
    }
}
