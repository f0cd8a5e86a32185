//! Redis connections shared by the services that keep state there, and the set-up of the
//! consumer groups they read streams with.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate};
use crate::error::ServiceError;
use crate::server::ReadinessCheck;

/// The `redis` configuration section. `Debug` prints the URL without its password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; also settable as `REDIS_URL`.
    pub url: String,
    /// Time allowed to (re)establish a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for one command's reply, in milliseconds.
    pub response_timeout_ms: u64,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so a new field cannot be forgotten here.
        let Self {
            url,
            connect_timeout_ms,
            response_timeout_ms,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &crate::secret::redact_url(url))
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("response_timeout_ms", response_timeout_ms)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 2_000,
        }
    }
}

impl Validate for RedisConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        redis::Client::open(self.url.as_str()).map_err(|error| ConfigError::Invalid {
            key: format!("{section}.url"),
            message: error.to_string(),
        })?;
        if self.connect_timeout_ms == 0 || self.response_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: format!("{section}.response_timeout_ms"),
                message: "timeouts must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

/// Opens a self-reconnecting connection. The first connection must succeed, so a service with a
/// wrong URL fails at start instead of reporting "not ready" forever.
pub async fn connect(config: &RedisConfig) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(config.url.as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, manager_config).await
}

/// Creates the consumer group `group` of `stream` (and the stream) unless the group exists.
/// A new group starts at the beginning of the stream: entries written before the first consumer
/// started are read too. "The group exists" is Redis's `BUSYGROUP` error code; any other
/// error (e.g. `stream` holding another type) is returned.
pub async fn ensure_group(
    redis: &ConnectionManager,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> =
        redis::AsyncCommands::xgroup_create_mkstream(&mut redis.clone(), stream, group, "0").await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Whether a command failed because the consumer group (or its stream) is gone, e.g. after
/// Redis was flushed: Redis's `NOGROUP` error code. [`ensure_group`] puts it back.
pub fn is_missing_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// Redis's memory use and limit, from `INFO memory` (which managed Redis services answer even
/// where `CONFIG` is disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisMemory {
    /// `used_memory`: bytes allocated for data, what `maxmemory` is compared with.
    pub used_bytes: u64,
    /// `maxmemory`; 0 = no limit.
    pub max_bytes: u64,
    /// `maxmemory_policy`, e.g. `noeviction`.
    pub policy: String,
}

impl RedisMemory {
    /// Parses the text of `INFO memory`; missing fields read as 0 / empty.
    pub fn parse(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .filter_map(|line| line.trim_end().split_once(':'))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_owned())
        };
        let number = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Self {
            used_bytes: number("used_memory"),
            max_bytes: number("maxmemory"),
            policy: field("maxmemory_policy").unwrap_or_default(),
        }
    }

    /// Whether a full Redis refuses writes instead of evicting keys: the only safe policy for
    /// a primary datastore (evicting would silently drop products, events or sessions).
    pub fn is_noeviction(&self) -> bool {
        self.policy == "noeviction"
    }
}

/// Reads [`RedisMemory`] with `INFO memory`.
pub async fn memory(redis: &ConnectionManager) -> redis::RedisResult<RedisMemory> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis.clone())
        .await?;
    Ok(RedisMemory::parse(&info))
}

/// Readiness: Redis answers `PING`.
#[derive(Clone)]
pub struct RedisReadiness(pub ConnectionManager);

impl ReadinessCheck for RedisReadiness {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        let mut connection = self.0.clone();
        Box::pin(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .map_err(|error| format!("redis: {error}"))
        })
    }
}

impl From<redis::RedisError> for ServiceError {
    fn from(error: redis::RedisError) -> Self {
        if error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
        {
            tracing::warn!(%error, "redis unavailable");
            ServiceError::Unavailable("state store unavailable, retry later".into())
        } else {
            ServiceError::internal(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_info_is_parsed() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
                    maxmemory:536870912\r\nmaxmemory_human:512.00M\r\n\
                    maxmemory_policy:noeviction\r\n";
        let memory = RedisMemory::parse(info);
        assert_eq!(memory.used_bytes, 1_048_576);
        assert_eq!(memory.max_bytes, 536_870_912);
        assert!(memory.is_noeviction());
        let unlimited = RedisMemory::parse("used_memory:5\r\nmaxmemory_policy:allkeys-lru\r\n");
        assert_eq!(unlimited.max_bytes, 0);
        assert!(!unlimited.is_noeviction());
    }

    #[test]
    fn debug_does_not_print_the_password() {
        let config = RedisConfig {
            url: "redis://storemesh:redis-password-123@10.0.0.5:6379/2".into(),
            ..RedisConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("redis-password-123"), "{debug}");
        assert!(
            debug.contains("storemesh:[redacted]@10.0.0.5:6379/2"),
            "{debug}"
        );
    }
}
