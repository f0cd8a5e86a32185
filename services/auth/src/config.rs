//! The `[auth]` configuration section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storemesh_runtime::Secret;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::config::{ConfigError, Validate};
use storemesh_tokens::scopes;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub server: ServerConfig,
    /// Directory with `current.pem` (the Ed25519 signing key, PKCS#8 PEM) and `previous/`
    /// (rotated-out keys, still published until their tokens have expired).
    pub keys_dir: PathBuf,
    /// Create `current.pem` on first start when it is missing (local use). Turn off in
    /// production, where the key comes from a secret.
    pub generate_missing_key: bool,
    /// Lifetime of user access tokens, in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens, in seconds (each use gets a new one: an idle limit).
    pub refresh_token_ttl_secs: u64,
    /// Absolute lifetime of a session (a refresh token family), from its Login, in seconds:
    /// refreshing never extends a session beyond it, so a stolen refresh token that is used
    /// regularly still dies.
    pub refresh_session_max_lifetime_secs: u64,
    /// After its first use, a refresh token presented again within this many milliseconds gets
    /// another fresh pair instead of revoking its family (a client's retry after a lost
    /// answer, two tabs refreshing at once). 0 turns the grace off.
    pub refresh_reuse_grace_ms: u64,
    /// Lifetime of service-account access tokens, in seconds.
    pub service_token_ttl_secs: u64,
    pub argon2: Argon2Config,
    /// The admin account created (or promoted) at start; nothing is created when empty.
    pub admin_email: String,
    pub admin_password: Secret,
    pub admin_display_name: String,
    /// Service accounts created or updated at start.
    pub service_accounts: Vec<ServiceAccountConfig>,
    pub rate_limit: RateLimitConfig,
    /// Deprecated and ignored: the client address comes from the server layer
    /// (`storemesh_runtime::server::ClientAddr`), which believes `x-forwarded-for` only from
    /// `auth.server.trusted_proxies`. Still accepted so old configurations load; a warning is
    /// logged when set.
    pub trust_forwarded_for: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(50051, 9051),
            keys_dir: PathBuf::from("data/auth/keys"),
            generate_missing_key: true,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            refresh_session_max_lifetime_secs: 30 * 24 * 3600,
            refresh_reuse_grace_ms: 10_000,
            service_token_ttl_secs: 15 * 60,
            argon2: Argon2Config::default(),
            admin_email: String::new(),
            admin_password: Secret::default(),
            admin_display_name: "Administrator".into(),
            service_accounts: Vec::new(),
            rate_limit: RateLimitConfig::default(),
            trust_forwarded_for: false,
        }
    }
}

/// Argon2id cost. The defaults are OWASP's minimum recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Hashes running at once (each holds `memory_kib`); 0 means one per CPU core.
    pub max_concurrent: u32,
    /// Hashes waiting for a turn; beyond them a call (Login, Register, ChangePassword, a
    /// first IssueServiceToken) is refused at once with `RESOURCE_EXHAUSTED` and
    /// `retry-after`.
    pub max_queued: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
            max_queued: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountConfig {
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
}

/// Fixed-window limits, each counted per window in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Window length, in seconds.
    pub window_secs: u64,
    /// Login attempts per account (email) per window from client addresses that never logged
    /// in to it (see `known_address_ttl_secs`). Addresses the owner logged in from are not
    /// counted here, so guessing from elsewhere cannot lock the owner out of them.
    pub login_per_account: u64,
    /// Login attempts per account and client address per window (every address, known or
    /// not): bounds guessing from any one address, the owner's included.
    pub login_per_account_address: u64,
    /// How long a client address stays known to an account after a successful login from it,
    /// in seconds.
    pub known_address_ttl_secs: u64,
    /// Known addresses kept per account (the most recent).
    pub known_addresses_per_account: u64,
    /// Login attempts per client address per window.
    pub login_per_address: u64,
    /// Registrations per client address per window.
    pub register_per_address: u64,
    /// Registration attempts per email per window.
    pub register_per_account: u64,
    /// Refresh calls per client address per window.
    pub refresh_per_address: u64,
    /// Service token requests per client id (and per client address) per window. High by
    /// default: an edge function instance lives for one request, so the thumbnail function
    /// takes a token per delivery and the `images` function one per image request (a
    /// storefront page is dozens); a verified secret is remembered, so each costs an HMAC and
    /// a signature, not an Argon2id hash.
    pub service_token_per_client: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            window_secs: 60,
            login_per_account: 10,
            login_per_account_address: 10,
            known_address_ttl_secs: 90 * 24 * 3600,
            known_addresses_per_account: 32,
            login_per_address: 60,
            register_per_address: 30,
            register_per_account: 5,
            refresh_per_address: 120,
            // The thumbnail function runs as a Spin component: an instance lives for one request
            // and cannot keep a token, so it asks for one per event delivery (50 concurrent
            // uploads → 50 tokens within seconds). Service secrets are long random strings, so
            // this limit guards the Argon2 cost, not guessing: 1200 per minute (20/s) covers
            // a busy edge while still capping a runaway or leaked client. The address limit
            // uses the same number because calls arrive through the gateway's one address.
            service_token_per_client: 60_000,
        }
    }
}

impl Validate for AuthConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        storemesh_runtime::config::resolve_path(&mut self.keys_dir, base);
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message,
        };
        self.server.validate(&format!("{section}.server"))?;
        if self.access_token_ttl_secs < 30 || self.access_token_ttl_secs > 24 * 3600 {
            return Err(invalid(
                "access_token_ttl_secs",
                "must be between 30 and 86400".into(),
            ));
        }
        if self.service_token_ttl_secs < 30 || self.service_token_ttl_secs > 24 * 3600 {
            return Err(invalid(
                "service_token_ttl_secs",
                "must be between 30 and 86400".into(),
            ));
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs {
            return Err(invalid(
                "refresh_token_ttl_secs",
                "must be at least access_token_ttl_secs".into(),
            ));
        }
        if self.refresh_session_max_lifetime_secs < self.access_token_ttl_secs {
            return Err(invalid(
                "refresh_session_max_lifetime_secs",
                "must be at least access_token_ttl_secs".into(),
            ));
        }
        if self.refresh_reuse_grace_ms > 60_000 {
            // A long grace hands a thief who replays a used token a live session unnoticed.
            return Err(invalid(
                "refresh_reuse_grace_ms",
                "must be at most 60000".into(),
            ));
        }
        if self.argon2.max_queued > 100_000 {
            return Err(invalid(
                "argon2.max_queued",
                "must be at most 100000".into(),
            ));
        }
        if self.argon2.memory_kib < 8 * self.argon2.parallelism.max(1)
            || self.argon2.iterations == 0
            || self.argon2.parallelism == 0
        {
            return Err(invalid(
                "argon2",
                "memory_kib ≥ 8 × parallelism, iterations ≥ 1 and parallelism ≥ 1".into(),
            ));
        }
        if self.admin_email.is_empty() != self.admin_password.is_empty() {
            return Err(invalid(
                "admin_password",
                "admin_email and admin_password are set together".into(),
            ));
        }
        if !self.admin_password.is_empty()
            && let Err(problem) = crate::validate::password_problem(self.admin_password.expose())
        {
            return Err(invalid("admin_password", problem.into()));
        }
        for (index, account) in self.service_accounts.iter().enumerate() {
            let key = format!("service_accounts[{index}]");
            if crate::validate::client_id_problem(&account.client_id).is_some() {
                return Err(invalid(
                    &format!("{key}.client_id"),
                    "1 to 64 characters of [A-Za-z0-9_.-]".into(),
                ));
            }
            if !(16..=256).contains(&account.client_secret.expose().len()) {
                return Err(invalid(
                    &format!("{key}.client_secret"),
                    "must be 16 to 256 characters".into(),
                ));
            }
            if let Some(unknown) = account.scopes.iter().find(|s| !scopes::is_known(s)) {
                return Err(invalid(
                    &format!("{key}.scopes"),
                    format!(
                        "unknown scope `{unknown}`; known: {}",
                        scopes::ALL.join(", ")
                    ),
                ));
            }
        }
        let limits = self.rate_limit;
        if limits.window_secs == 0
            || [
                limits.login_per_account,
                limits.login_per_account_address,
                limits.known_address_ttl_secs,
                limits.known_addresses_per_account,
                limits.login_per_address,
                limits.register_per_address,
                limits.register_per_account,
                limits.refresh_per_address,
                limits.service_token_per_client,
            ]
            .contains(&0)
        {
            return Err(invalid(
                "rate_limit",
                "every limit must be at least 1".into(),
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

    #[test]
    fn secrets_stay_out_of_debug() {
        let config: AuthConfig = ConfigLoader::from_toml_str(
            "[auth]\nadmin_email = \"admin@example.com\"\nadmin_password = \"admin-password-4711\"\n\
             service_accounts = [{ client_id = \"thumbnail\", client_secret = \"client-secret-4711-abcdef\", scopes = [] }]\n",
        )
        .section("auth")
        .unwrap();
        assert_eq!(config.admin_password.expose(), "admin-password-4711");
        assert_eq!(
            config.service_accounts[0].client_secret.expose(),
            "client-secret-4711-abcdef"
        );
        let debug = format!("{config:?}");
        for secret in ["admin-password-4711", "client-secret-4711"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("admin@example.com"), "{debug}");
        assert!(debug.contains("thumbnail"), "{debug}");
    }
}
