//! How one upstream (a set of replicas of one service) is found and called.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storemesh_runtime::backoff::{Backoff, Jitter};
use storemesh_runtime::config::{ConfigError, Validate};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Static endpoints, `host:port`. Exactly one of `addresses`, `addresses_file`, `dns`.
    pub addresses: Vec<String>,
    /// A file with one `host:port` per line (`#` comments), re-read every
    /// `refresh_interval_ms`: endpoints can be added and removed at runtime.
    pub addresses_file: Option<PathBuf>,
    /// `name:port` re-resolved every `refresh_interval_ms`; every address is an endpoint
    /// (a Kubernetes headless Service).
    pub dns: Option<String>,
    pub refresh_interval_ms: u64,
    /// Time to open a connection to an endpoint, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Deadline applied when the caller sends no `grpc-timeout`, in milliseconds.
    pub default_deadline_ms: u64,
    /// Extra attempts for idempotent calls.
    pub max_retries: u32,
    /// Backoff before a retry: full jitter under `retry_backoff_ms × 2^attempt` (see
    /// [`UpstreamConfig::retry_backoff`]); 0 retries at once.
    pub retry_backoff_ms: u64,
    /// Retries allowed as a share of requests (percent), so retries cannot amplify an outage.
    pub retry_budget_percent: f32,
    /// Retries always allowed per second regardless of traffic.
    pub retry_budget_min_per_sec: u32,
    /// Largest idempotent request body kept for replay; larger bodies are streamed once.
    pub max_retry_buffer_bytes: usize,
    /// Longest wait for the whole body of an idempotent call to arrive before it is sent (the
    /// body is buffered for replay), in milliseconds; the call's deadline bounds it too. A
    /// client that does not send its body in time is answered `DEADLINE_EXCEEDED`, so a
    /// trickled body cannot hold a call open without limit.
    pub retry_buffer_timeout_ms: u64,
    /// Methods outside the Storemesh contracts (`/package.Service/Method`) that are safe to send
    /// twice, for extra routes. The contracts' own are marked there (`idempotency_level`).
    pub idempotent_methods: Vec<String>,
    /// Consecutive failures (transport errors or `UNAVAILABLE`) that eject an endpoint.
    pub eject_after_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// Call the endpoints over TLS (ALPN `h2`) instead of cleartext HTTP/2.
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTls {
    /// CA certificate(s) to trust (PEM); the public web roots when unset.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            addresses_file: None,
            dns: None,
            refresh_interval_ms: 5_000,
            connect_timeout_ms: 1_000,
            default_deadline_ms: 30_000,
            max_retries: 2,
            retry_backoff_ms: 20,
            retry_budget_percent: 20.0,
            retry_budget_min_per_sec: 10,
            max_retry_buffer_bytes: 1024 * 1024,
            retry_buffer_timeout_ms: 10_000,
            idempotent_methods: Vec::new(),
            eject_after_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 30_000,
            tls: None,
        }
    }
}

impl UpstreamConfig {
    /// The wait before retry n (1-based) of an idempotent call: full jitter under
    /// `retry_backoff_ms × 2^n` (the factor stops at 2^10). Every value is accepted: `None` for
    /// `retry_backoff_ms = 0`, when retries go at once.
    pub fn retry_backoff(&self) -> Option<Backoff> {
        let base = Duration::from_millis(self.retry_backoff_ms);
        Backoff::exponential(
            base.saturating_mul(2),
            base.saturating_mul(1 << 10),
            Jitter::Full,
        )
        .ok()
    }

    /// Static endpoints with the other settings at their defaults.
    pub fn addresses<I: IntoIterator<Item = S>, S: Into<String>>(addresses: I) -> Self {
        Self {
            addresses: addresses.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

impl Validate for UpstreamConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(file) = &mut self.addresses_file {
            storemesh_runtime::config::resolve_path(file, base);
        }
        if let Some(ca_file) = self.tls.as_mut().and_then(|tls| tls.ca_file.as_mut()) {
            storemesh_runtime::config::resolve_path(ca_file, base);
        }
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message: message.to_owned(),
        };
        let sources = usize::from(!self.addresses.is_empty())
            + usize::from(self.addresses_file.is_some())
            + usize::from(self.dns.is_some());
        if sources != 1 {
            return Err(invalid(
                "addresses",
                "set exactly one of addresses, addresses_file, dns",
            ));
        }
        if let Some(bad) = self.addresses.iter().find(|a| split_authority(a).is_none()) {
            return Err(invalid("addresses", &format!("`{bad}` is not host:port")));
        }
        if let Some(dns) = &self.dns
            && split_authority(dns).is_none()
        {
            return Err(invalid("dns", "must be name:port"));
        }
        if self.refresh_interval_ms < 100 {
            return Err(invalid("refresh_interval_ms", "must be at least 100"));
        }
        if self.default_deadline_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(invalid("default_deadline_ms", "timeouts must be positive"));
        }
        if !(0.0..=1000.0).contains(&self.retry_budget_percent) {
            return Err(invalid("retry_budget_percent", "must be 0 to 1000"));
        }
        if self.eject_after_failures == 0 {
            return Err(invalid("eject_after_failures", "must be at least 1"));
        }
        if self.retry_buffer_timeout_ms == 0 {
            return Err(invalid("retry_buffer_timeout_ms", "must be at least 1"));
        }
        if let Some(bad) = self.idempotent_methods.iter().find(|path| {
            let mut parts = path.strip_prefix('/').unwrap_or_default().split('/');
            !matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(service), Some(method), None) if !service.is_empty() && !method.is_empty()
            )
        }) {
            return Err(invalid(
                "idempotent_methods",
                &format!("`{bad}` is not /package.Service/Method"),
            ));
        }
        Ok(())
    }
}

/// `host:port` → (host, port); IPv6 hosts in brackets.
pub fn split_authority(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_source() {
        assert!(
            UpstreamConfig::addresses(["127.0.0.1:1"])
                .validate("u")
                .is_ok()
        );
        assert!(UpstreamConfig::default().validate("u").is_err());
        let both = UpstreamConfig {
            dns: Some("catalog:50052".into()),
            ..UpstreamConfig::addresses(["127.0.0.1:1"])
        };
        assert!(both.validate("u").is_err());
        assert!(
            UpstreamConfig::addresses(["no-port"])
                .validate("u")
                .is_err()
        );
    }

    #[test]
    fn extra_idempotent_methods_are_method_paths() {
        let with = |methods: &[&str]| UpstreamConfig {
            idempotent_methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            ..UpstreamConfig::addresses(["127.0.0.1:1"])
        };
        assert!(with(&["/pkg.Service/Get"]).validate("u").is_ok());
        for bad in [
            "pkg.Service/Get",
            "/pkg.Service",
            "/pkg.Service/",
            "/a/b/c",
            "",
        ] {
            let error = with(&[bad]).validate("u").unwrap_err().to_string();
            assert!(error.contains("u.idempotent_methods"), "{bad}: {error}");
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(split_authority("a:1"), Some(("a", 1)));
        assert_eq!(split_authority("[::1]:50052"), Some(("::1", 50052)));
        assert_eq!(split_authority("a"), None);
        assert_eq!(split_authority(":1"), None);
    }
}
