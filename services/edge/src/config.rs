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
    /// Per-component settings (`[edge.components.<id>]`), by component id.
    pub components: BTreeMap<String, ComponentLimits>,
    /// The slowest request body accepted, in bytes per second of waiting for it; `0` disables
    /// the check. A slower body (or one that stops arriving) is answered `408` and its instance
    /// stopped, so a slow client cannot hold an instance slot.
    pub min_body_bytes_per_sec: u64,
    /// Waiting for a request body that is not counted against `min_body_bytes_per_sec` (a
    /// client's slow start), in milliseconds.
    pub body_grace_ms: u64,
    /// The window over which `min_body_bytes_per_sec` is measured, in milliseconds of waiting:
    /// each window must bring `min_body_bytes_per_sec × window` bytes. A body that stops
    /// arriving is ended within `body_grace_ms` + 2 windows; keep that below the functions'
    /// `mesh_timeout_ms`, so the client is blamed (`408`) rather than the mesh (`504`).
    pub body_rate_window_ms: u64,
}

/// One component's share of the runtime (`[edge.components.<id>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentLimits {
    /// Requests the component serves at once: its own instance slots, reserved out of
    /// `max_instances`. Unset: an equal share of the slots no component reserves explicitly.
    /// Beyond it, requests to this component are answered `503` (other components unaffected).
    pub max_concurrent_requests: Option<u32>,
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
            components,
            min_body_bytes_per_sec,
            body_grace_ms,
            body_rate_window_ms,
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
            .field("components", components)
            .field("min_body_bytes_per_sec", min_body_bytes_per_sec)
            .field("body_grace_ms", body_grace_ms)
            .field("body_rate_window_ms", body_rate_window_ms)
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
            components: BTreeMap::new(),
            min_body_bytes_per_sec: DEFAULT_MIN_BODY_BYTES_PER_SEC,
            body_grace_ms: 2_000,
            body_rate_window_ms: 3_000,
        }
    }
}

/// 4 KiB/s: far below any real uploader (a 2G link moves several times that), far above a
/// slow-loris trickle.
pub const DEFAULT_MIN_BODY_BYTES_PER_SEC: u64 = 4 * 1024;

impl EdgeConfig {
    /// The instance slots of each of `components` (the triggered components' ids): the explicit
    /// `max_concurrent_requests`, else an equal share of the slots left. Every component gets
    /// at least one slot and together they fit in `max_instances`, so no component can take
    /// another's slots.
    pub fn component_slots<'a>(
        &self,
        components: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, u32>, ConfigError> {
        let components: Vec<&str> = components.into_iter().collect();
        if let Some(unknown) = self
            .components
            .keys()
            .find(|id| !components.contains(&id.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: format!("edge.components.{unknown}"),
                message: format!(
                    "no triggered component `{unknown}` in the manifest (components: {})",
                    components.join(", ")
                ),
            });
        }
        let explicit = |id: &str| {
            self.components
                .get(id)
                .and_then(|limits| limits.max_concurrent_requests)
        };
        let reserved: u64 = components
            .iter()
            .filter_map(|id| explicit(id))
            .map(u64::from)
            .sum();
        let shared = components
            .iter()
            .filter(|id| explicit(id).is_none())
            .count() as u64;
        let left = u64::from(self.max_instances).saturating_sub(reserved);
        if reserved > u64::from(self.max_instances) || (shared > 0 && left < shared) {
            return Err(ConfigError::Invalid {
                key: "edge.max_instances".into(),
                message: format!(
                    "{} instance slots cannot hold the components' own slots ({reserved} reserved by edge.components.*.max_concurrent_requests, at least one for each of the other {shared} components)",
                    self.max_instances
                ),
            });
        }
        let share = left
            .checked_div(shared)
            .map_or(0, |share| u32::try_from(share).unwrap_or(u32::MAX));
        Ok(components
            .iter()
            .map(|id| ((*id).to_owned(), explicit(id).unwrap_or(share)))
            .collect())
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
        for (id, limits) in &self.components {
            if limits
                .max_concurrent_requests
                .is_some_and(|slots| slots == 0 || slots > self.max_instances)
            {
                return Err(invalid(
                    &format!("components.{id}.max_concurrent_requests"),
                    format!(
                        "must be between 1 and max_instances ({})",
                        self.max_instances
                    ),
                ));
            }
        }
        if self.min_body_bytes_per_sec > 1024 * MIB {
            return Err(invalid(
                "min_body_bytes_per_sec",
                "must be at most 1 GiB/s (0 disables the check)".into(),
            ));
        }
        if self.body_grace_ms > 600_000 {
            return Err(invalid("body_grace_ms", "must be at most 600000 ms".into()));
        }
        if !(100..=600_000).contains(&self.body_rate_window_ms) {
            return Err(invalid(
                "body_rate_window_ms",
                "must be between 100 and 600000 ms".into(),
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
                "[edge.components.upload-hook]\nmax_concurrent_requests = 0\n",
                "edge.components.upload-hook.max_concurrent_requests",
            ),
            (
                "[edge]\nbody_rate_window_ms = 10\n",
                "edge.body_rate_window_ms",
            ),
            (
                "[edge]\nmin_body_bytes_per_sec = 2000000000\n",
                "edge.min_body_bytes_per_sec",
            ),
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
        let error = load("[edge.components.web]\nmax_concurent_requests = 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_concurent_requests"), "{error}");
    }

    #[test]
    fn every_component_gets_its_own_slots_within_the_pool() {
        let components = ["upload-hook", "thumbnail", "images", "web"];
        // Defaults: an equal share each.
        let slots = load("").unwrap().component_slots(components).unwrap();
        assert_eq!(
            slots.values().copied().collect::<Vec<_>>(),
            [32, 32, 32, 32]
        );

        // Explicit slots are reserved; the others share what is left.
        let config = load(
            "[edge]\nmax_instances = 20\n[edge.components.upload-hook]\nmax_concurrent_requests = 2\n",
        )
        .unwrap();
        let slots = config.component_slots(components).unwrap();
        assert_eq!(slots["upload-hook"], 2);
        assert_eq!(slots["thumbnail"], 6);
        assert_eq!(slots.values().sum::<u32>(), 20);

        // More than the pool, or too little left for the others, fails the start.
        let config = load(
            "[edge]\nmax_instances = 4\n[edge.components.upload-hook]\nmax_concurrent_requests = 3\n",
        )
        .unwrap();
        let error = config.component_slots(components).unwrap_err().to_string();
        assert!(error.contains("edge.max_instances"), "{error}");
        // A component the manifest does not trigger is named.
        let config = load("[edge.components.uplaod-hook]\nmax_concurrent_requests = 3\n").unwrap();
        let error = config.component_slots(components).unwrap_err().to_string();
        assert!(error.contains("edge.components.uplaod-hook"), "{error}");
    }

    #[test]
    fn body_rate_defaults_end_a_stall_before_the_functions_mesh_timeout() {
        let config = load("").unwrap();
        assert_eq!(config.min_body_bytes_per_sec, 4096);
        // A stalled body is ended within grace + 2 windows: below spin.toml's mesh_timeout_ms
        // (10 s), so the client gets 408, not the mesh's 504.
        assert!(config.body_grace_ms + 2 * config.body_rate_window_ms < 10_000);
    }
}
