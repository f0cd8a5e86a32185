//! Test fixtures (feature `testing`, enabled by the dev-dependencies of the crates whose tests
//! start an auth service): one definition of the cheap settings every suite uses.

use std::path::Path;

use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;

use crate::config::{Argon2Config, ServiceAccountConfig};
use crate::{AuthConfig, AuthSettings};

/// Argon2id at a cost that keeps suites fast (256 KiB, one pass, one lane); production cost is
/// the configuration default.
pub fn cheap_argon2() -> Argon2Config {
    Argon2Config {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
        ..Argon2Config::default()
    }
}

/// An auth configuration for tests: [`test_server`] (ephemeral loopback ports), signing keys in
/// `keys_dir`, [`cheap_argon2`], the rest defaults (no admin, no service accounts).
pub fn auth_config(keys_dir: &Path) -> AuthConfig {
    AuthConfig {
        server: test_server(),
        keys_dir: keys_dir.to_path_buf(),
        argon2: cheap_argon2(),
        ..AuthConfig::default()
    }
}

/// [`auth_config`] with the Redis at `redis_url` and default token settings.
pub fn auth_settings(redis_url: &str, keys_dir: &Path) -> AuthSettings {
    AuthSettings {
        auth: auth_config(keys_dir),
        redis: RedisConfig {
            url: redis_url.to_owned(),
            ..RedisConfig::default()
        },
        tokens: TokensConfig::default(),
    }
}

/// A service account `client_id` with `secret` and `scopes`.
pub fn service_account(client_id: &str, secret: &str, scopes: &[&str]) -> ServiceAccountConfig {
    ServiceAccountConfig {
        client_id: client_id.to_owned(),
        client_secret: secret.into(),
        scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
    }
}
