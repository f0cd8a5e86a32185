//! The `[edge]` configuration section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storemesh_runtime::Secret;
use storemesh_runtime::config::{ConfigError, Validate};

use crate::template::is_variable_name;

const MIB: u64 = 1024 * 1024;

/// `Debug` is written by hand: variable values may be secrets (the manifest says which), so it
/// prints their names only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// HTTP listen address of the application (Spin's default is 127.0.0.1:3000).
    pub listen: SocketAddr,
    /// Admin HTTP listen address (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// The Spin manifest; component `source` paths are relative to its directory.
    pub manifest: PathBuf,
    /// Application variable values (`SPIN_VARIABLE_<NAME>` environment variables win over these).
    pub variables: BTreeMap<String, String>,
    /// Cleartext authorities (`host:port`, compared exactly) spoken to with HTTP/2 prior
    /// knowledge (h2c), e.g. the gateway for native gRPC. `SPIN_OUTBOUND_H2C_PRIOR_KNOWLEDGE`
    /// adds to this list.
    pub h2c_prior_knowledge: Vec<String>,
    /// Component instances alive at once (the pooling allocator's size). Requests beyond it are
    /// answered `503` at once rather than queued.
    pub max_instances: u32,
    /// Linear memory one instance may use, in bytes.
    pub max_memory_bytes: u64,
    /// Wall-clock limit of one request's execution (including streaming the response body), in
    /// milliseconds.
    pub execution_timeout_ms: u64,
    /// Epoch tick (the granularity of the execution limit and of yielding to other requests),
    /// in milliseconds.
    pub epoch_tick_ms: u64,
    /// Directory for the compiled-component cache (keyed by wasm hash and engine version);
    /// empty disables the cache.
    pub cache_dir: PathBuf,
    /// Connect timeout of outbound HTTP requests, in milliseconds (a component's own
    /// `request-options` take precedence).
    pub outbound_connect_timeout_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT, in milliseconds.
    pub shutdown_grace_ms: u64,
}

impl std::fmt::Debug for EdgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so a new field cannot be forgotten here.
        let Self {
            listen,
            admin_listen,
            manifest,
            variables,
            h2c_prior_knowledge,
            max_instances,
            max_memory_bytes,
            execution_timeout_ms,
            epoch_tick_ms,
            cache_dir,
            outbound_connect_timeout_ms,
            shutdown_grace_ms,
        } = self;
        // Whether a variable is secret is declared in the manifest, not here: every value is
        // printed as a secret.
        let variables = variables
            .keys()
            .map(|name| (name, Secret::new(())))
            .collect::<BTreeMap<_, _>>();
        f.debug_struct("EdgeConfig")
            .field("listen", listen)
            .field("admin_listen", admin_listen)
            .field("manifest", manifest)
            .field("variables", &variables)
            .field("h2c_prior_knowledge", h2c_prior_knowledge)
            .field("max_instances", max_instances)
            .field("max_memory_bytes", max_memory_bytes)
            .field("execution_timeout_ms", execution_timeout_ms)
            .field("epoch_tick_ms", epoch_tick_ms)
            .field("cache_dir", cache_dir)
            .field("outbound_connect_timeout_ms", outbound_connect_timeout_ms)
            .field("shutdown_grace_ms", shutdown_grace_ms)
            .finish()
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            manifest: PathBuf::from("spin.toml"),
            variables: BTreeMap::new(),
            h2c_prior_knowledge: Vec::new(),
            max_instances: 128,
            max_memory_bytes: 256 * MIB,
            execution_timeout_ms: 30_000,
            epoch_tick_ms: 10,
            cache_dir: PathBuf::from("data/edge/cache"),
            outbound_connect_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl Validate for EdgeConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        storemesh_runtime::config::resolve_path(&mut self.manifest, base);
        storemesh_runtime::config::resolve_path(&mut self.cache_dir, base);
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message,
        };
        if self.listen.port() != 0 && self.listen == self.admin_listen {
            return Err(invalid("admin_listen", "must differ from `listen`".into()));
        }
        if self.manifest.as_os_str().is_empty() {
            return Err(invalid("manifest", "must not be empty".into()));
        }
        if let Some(name) = self.variables.keys().find(|name| !is_variable_name(name)) {
            return Err(invalid(
                &format!("variables.{name}"),
                "variable names are lowercase letters, digits and `_`, starting with a letter"
                    .into(),
            ));
        }
        for (index, authority) in self.h2c_prior_knowledge.iter().enumerate() {
            if authority.parse::<http::uri::Authority>().is_err()
                || authority.contains('@')
                || authority.trim() != authority
                || authority.is_empty()
            {
                return Err(invalid(
                    &format!("h2c_prior_knowledge[{index}]"),
                    format!("{authority:?} is not a host:port authority"),
                ));
            }
        }
        if self.max_instances == 0 || self.max_instances > 10_000 {
            return Err(invalid(
                "max_instances",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.max_memory_bytes < MIB || self.max_memory_bytes > 4 * 1024 * MIB {
            return Err(invalid(
                "max_memory_bytes",
                "must be between 1 MiB (1048576) and 4 GiB (4294967296)".into(),
            ));
        }
        if self.execution_timeout_ms < 10 {
            return Err(invalid(
                "execution_timeout_ms",
                "must be at least 10 ms".into(),
            ));
        }
        if self.epoch_tick_ms == 0 || self.epoch_tick_ms > 1_000 {
            return Err(invalid(
                "epoch_tick_ms",
                "must be between 1 and 1000 ms".into(),
            ));
        }
        if self.epoch_tick_ms > self.execution_timeout_ms {
            return Err(invalid(
                "epoch_tick_ms",
                "must not exceed execution_timeout_ms".into(),
            ));
        }
        if self.outbound_connect_timeout_ms == 0 {
            return Err(invalid(
                "outbound_connect_timeout_ms",
                "must be at least 1 ms".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use storemesh_runtime::ConfigLoader;

    use super::*;

    fn load(toml: &str) -> Result<EdgeConfig, ConfigError> {
        ConfigLoader::from_toml_str(toml).section("edge")
    }

    #[test]
    fn defaults_follow_spin_and_the_port_plan() {
        let config = load("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.admin_listen, "127.0.0.1:9080".parse().unwrap());
        // Relative paths are resolved against the working directory (wasmtime's cache insists
        // on an absolute directory).
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.manifest, cwd.join("spin.toml"));
        assert_eq!(config.cache_dir, cwd.join("data/edge/cache"));
        let config = load("[edge]\ncache_dir = \"\"\nmanifest = \"/srv/spin.toml\"\n").unwrap();
        assert_eq!(
            config.cache_dir,
            PathBuf::new(),
            "empty still disables the cache"
        );
        assert_eq!(config.manifest, PathBuf::from("/srv/spin.toml"));
    }

    #[test]
    fn variables_and_h2c_authorities_are_read() {
        let config = load(
            "[edge]\nh2c_prior_knowledge = [\"127.0.0.1:50050\"]\n[edge.variables]\ngateway = \"http://127.0.0.1:50050\"\n",
        )
        .unwrap();
        assert_eq!(config.variables["gateway"], "http://127.0.0.1:50050");
        assert_eq!(config.h2c_prior_knowledge, ["127.0.0.1:50050"]);
    }

    #[test]
    fn variable_values_stay_out_of_debug() {
        let config = load(
            "[edge.variables]\ngateway_url = \"http://127.0.0.1:50050\"\nthumbnail_client_secret = \"client-secret-4711-abcdef\"\n",
        )
        .unwrap();
        assert_eq!(
            config.variables["thumbnail_client_secret"],
            "client-secret-4711-abcdef"
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("client-secret-4711"), "{debug}");
        assert!(debug.contains("thumbnail_client_secret"), "{debug}");
        assert!(debug.contains("spin.toml"), "{debug}");
    }

    #[test]
    fn errors_name_the_full_key() {
        for (toml, key) in [
            ("[edge]\nmax_instances = 0\n", "edge.max_instances"),
            ("[edge]\nmax_memory_bytes = 10\n", "edge.max_memory_bytes"),
            (
                "[edge]\nexecution_timeout_ms = 1\n",
                "edge.execution_timeout_ms",
            ),
            (
                "[edge]\nh2c_prior_knowledge = [\"http://x:1/\"]\n",
                "edge.h2c_prior_knowledge[0]",
            ),
            ("[edge.variables]\nBad = \"x\"\n", "edge.variables.Bad"),
            (
                "[edge]\nlisten = \"127.0.0.1:3000\"\nadmin_listen = \"127.0.0.1:3000\"\n",
                "edge.admin_listen",
            ),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
        let error = load("[edge]\nmax_instnaces = 3\n").unwrap_err().to_string();
        assert!(error.contains("max_instnaces"), "{error}");
    }
}
