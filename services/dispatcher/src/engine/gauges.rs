//! The gauge loop: dead letters, scheduled retries, the consumer group's lag and pending
//! count, and Redis's memory against its `maxmemory` (for the alert before Redis is full),
//! read from Redis every `claim_interval_ms` (at most 5 s).

use std::sync::Arc;
use std::time::Duration;

use storemesh_runtime::shutdown::Shutdown;

use super::Inner;
use crate::metrics;

impl Inner {
    pub(super) async fn gauge_loop(self: Arc<Self>, stop: Shutdown) {
        let interval = Duration::from_millis(self.config.claim_interval_ms.min(5_000));
        while !stop.is_triggered() {
            if let Err(error) = self.update_gauges().await {
                tracing::debug!(%error, "cannot update the dispatcher gauges");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.wait() => break,
            }
        }
    }

    pub(crate) async fn update_gauges(&self) -> redis::RedisResult<()> {
        // The dispatcher runs in every deployment and already reads Redis on a loop, so it
        // reports Redis's memory too: no exporter to deploy next to a managed Redis.
        let memory = storemesh_runtime::redis::memory(&self.redis).await?;
        ::metrics::gauge!(metrics::REDIS_USED_MEMORY).set(memory.used_bytes as f64);
        ::metrics::gauge!(metrics::REDIS_MAXMEMORY).set(memory.max_bytes as f64);
        ::metrics::gauge!(metrics::REDIS_NOEVICTION)
            .set(f64::from(u8::from(memory.is_noeviction())));
        let mut redis = self.redis.clone();
        let (dlq, retries, groups): (u64, u64, redis::Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.config.dlq_stream)
            .cmd("ZCARD")
            .arg(&self.config.retry_key)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.config.stream)
            .query_async(&mut redis)
            .await?;
        ::metrics::gauge!(metrics::DLQ_ENTRIES).set(dlq as f64);
        ::metrics::gauge!(metrics::RETRIES_SCHEDULED).set(retries as f64);
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::from_redis_value(groups)?;
        for group in groups {
            let name: Option<String> = group
                .get("name")
                .and_then(|value| redis::from_redis_value(value.clone()).ok());
            if name.as_deref() != Some(self.config.group.as_str()) {
                continue;
            }
            let number = |field: &str| -> Option<u64> {
                group
                    .get(field)
                    .and_then(|value| redis::from_redis_value(value.clone()).ok())
            };
            // `lag` is nil when Redis cannot tell (after deletions); keep the last value then.
            if let Some(lag) = number("lag") {
                ::metrics::gauge!(metrics::CONSUMER_LAG).set(lag as f64);
            }
            if let Some(pending) = number("pending") {
                ::metrics::gauge!(metrics::CONSUMER_PENDING).set(pending as f64);
            }
        }
        Ok(())
    }
}
