//! Fixed-window rate limits kept in Redis, so every auth replica counts the same attempts.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use storemesh_runtime::{ServiceError, ServiceResult};

const HIT: &str = r"
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
";

/// Counts one attempt in `bucket` for `subject` (an email, address or client id; hashed, so
/// key names reveal nothing) and refuses it with `RESOURCE_EXHAUSTED` + retry-after once more
/// than `limit` attempts fell in the current window.
pub async fn hit(
    redis: &ConnectionManager,
    bucket: &str,
    subject: &str,
    limit: u64,
    window: Duration,
) -> ServiceResult<()> {
    let digest = hex(&Sha256::digest(subject.as_bytes())[..12]);
    let key = format!("auth:rl:{bucket}:{digest}");
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let (count, ttl_ms): (u64, i64) = redis::Script::new(HIT)
        .key(key)
        .arg(window_ms)
        .invoke_async(&mut redis.clone())
        .await?;
    if count > limit {
        tracing::info!(bucket, "rate limit exceeded");
        return Err(ServiceError::ResourceExhausted {
            message: "too many attempts; retry later".into(),
            retry_after: Some(Duration::from_millis(
                u64::try_from(ttl_ms.max(1)).unwrap_or(1),
            )),
        });
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
