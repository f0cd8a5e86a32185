//! Deleting stored objects after their catalog records are gone.
//!
//! `DeleteProduct` and `DeleteImage` remove the records and, in the same atomic commit, append
//! one entry per storage key the records named (each original and every recorded thumbnail)
//! to the Redis stream `catalog:cleanup` (fields `key`, `product_id`, `image_id`, `reason`).
//! So the outbox is durable exactly when the deletion is: no object is forgotten if the
//! process dies right after the commit, and nothing is queued for a delete that did not happen.
//!
//! A [`Worker`] in every catalog process drains the stream through the consumer group
//! `catalog-cleanup`: it calls `StorageService.Delete` at `catalog.storage_endpoint` with a
//! service token (scope `storage.delete:products`) from the auth service's
//! `IssueServiceToken`, cached until shortly before it expires (the shared
//! `storemesh_mesh::client::ServiceTokens`); both go through the mesh (upstreams `storage`
//! and `auth`). An entry is acknowledged and removed only when storage answers OK or
//! `NOT_FOUND` (already gone); any other outcome, including storage being down, leaves it
//! pending and the worker retries with exponential backoff and jitter. Entries a dead
//! instance had taken are claimed after `catalog.cleanup.claim_idle_ms`. Without
//! `catalog.service_client_id` the worker does not run and the entries wait until an
//! instance with credentials starts.
//!
//! Not covered: thumbnails written *after* their image record was deleted (a late thumbnail
//! job) are unknown to the catalog and stay in storage; a prefix sweep of `products/{id}/` can
//! remove them once storage offers one to service accounts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use storemesh_mesh::MeshChannel;
use storemesh_mesh::client::ServiceTokens;
use storemesh_proto::storage::v1::DeleteRequest;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_runtime::backoff::{Backoff, BackoffError};
use storemesh_runtime::redis::{ensure_group, is_missing_group};
use storemesh_runtime::shutdown::Shutdown;
use tonic::{Code, Request};

use crate::config::CleanupConfig;
use crate::store::keys::CLEANUP_STREAM;

/// The consumer group draining the outbox (created by `storemesh_runtime::redis::ensure_group`).
pub const GROUP: &str = "catalog-cleanup";

/// Counters for tests and logs.
#[derive(Debug, Default)]
pub struct CleanupStats {
    /// Delete calls made (or attempted: token failures count too).
    pub attempts: AtomicU64,
    /// Attempts that left the entry pending.
    pub failures: AtomicU64,
    /// Entries acknowledged (deleted, or already gone).
    pub acknowledged: AtomicU64,
}

impl CleanupStats {
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }
}

pub struct WorkerSettings {
    /// Storage, through the mesh; its upstream's `default_deadline_ms` bounds a `Delete`.
    pub storage: MeshChannel,
    /// The catalog's service account (scope `storage.delete:products`).
    pub tokens: Arc<ServiceTokens>,
    pub config: CleanupConfig,
    /// How long one blocking outbox read waits for new entries.
    pub block: Duration,
}

pub struct Worker {
    redis: ConnectionManager,
    storage: StorageServiceClient<MeshChannel>,
    tokens: Arc<ServiceTokens>,
    config: CleanupConfig,
    backoff: Backoff,
    consumer: String,
    block: Duration,
    stats: Arc<CleanupStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid catalog.cleanup backoff: {0}")]
    Backoff(#[from] BackoffError),
}

impl Worker {
    /// `redis` must be a connection of its own: the worker's blocking reads would hold up
    /// every other command on a shared one.
    pub fn new(
        redis: ConnectionManager,
        settings: WorkerSettings,
        stats: Arc<CleanupStats>,
    ) -> Result<Self, WorkerError> {
        let backoff = settings.config.backoff()?;
        Ok(Self {
            redis,
            storage: StorageServiceClient::new(settings.storage),
            tokens: settings.tokens,
            config: settings.config,
            backoff,
            consumer: format!("catalog-{}", ulid::Ulid::new()),
            block: settings.block,
            stats,
        })
    }

    /// Drains the outbox until `stop`.
    pub async fn run(mut self, stop: Shutdown) {
        tracing::info!(consumer = %self.consumer, "storage clean-up worker started");
        let mut failures: u32 = 0;
        loop {
            let round = async {
                match self.next_batch().await {
                    Ok(entries) => {
                        for entry in entries {
                            if !self.process(&entry).await {
                                return false;
                            }
                        }
                        true
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the clean-up outbox");
                        if is_missing_group(&error) {
                            // The stream was removed (e.g. a flushed Redis): start it again.
                            let _ = ensure_group(&self.redis, CLEANUP_STREAM, GROUP).await;
                        }
                        false
                    }
                }
            };
            let succeeded = tokio::select! {
                succeeded = round => succeeded,
                () = stop.wait() => break,
            };
            if succeeded {
                failures = 0;
                continue;
            }
            failures = failures.saturating_add(1);
            let delay = self.backoff.delay(failures, rand::random::<f64>());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.wait() => break,
            }
        }
        tracing::info!("storage clean-up worker stopped");
    }

    /// Own unfinished entries first (retries), then entries a dead instance left behind, then
    /// new ones (waiting up to `block` for them).
    async fn next_batch(&mut self) -> redis::RedisResult<Vec<StreamId>> {
        let count = self.config.batch_size;
        let own = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count);
        let pending: Option<StreamReadReply> = self
            .redis
            .xread_options(&[CLEANUP_STREAM], &["0"], &own)
            .await?;
        let pending = flatten(pending);
        if !pending.is_empty() {
            return Ok(pending);
        }
        let claimed: redis::streams::StreamAutoClaimReply = self
            .redis
            .xautoclaim_options(
                CLEANUP_STREAM,
                GROUP,
                &self.consumer,
                self.config.claim_idle_ms,
                "0-0",
                StreamAutoClaimOptions::default().count(count),
            )
            .await?;
        if !claimed.claimed.is_empty() {
            return Ok(claimed.claimed);
        }
        let fresh = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count)
            .block(usize::try_from(self.block.as_millis()).unwrap_or(1_000));
        let fresh: Option<StreamReadReply> = self
            .redis
            .xread_options(&[CLEANUP_STREAM], &[">"], &fresh)
            .await?;
        Ok(flatten(fresh))
    }

    /// `true` when the entry is done with (acknowledged).
    async fn process(&mut self, entry: &StreamId) -> bool {
        let Some(key) = entry.get::<String>("key") else {
            tracing::error!(id = %entry.id, "clean-up entry without a key; dropping it");
            return self.ack(&entry.id).await;
        };
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("catalog_cleanup_attempts_total").increment(1);
        let token = match self.tokens.get().await {
            Ok(token) => token,
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot get a service token for storage clean-up");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("catalog_cleanup_failures_total").increment(1);
                return false;
            }
        };
        let mut request = Request::new(DeleteRequest { key: key.clone() });
        match format!("Bearer {token}").parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => {
                self.tokens.invalidate(&token).await;
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        match self.storage.delete(request).await {
            Ok(response) => {
                tracing::info!(%key, existed = response.into_inner().existed, "stored object deleted");
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::info!(%key, "stored object already gone");
            }
            Err(status) => {
                if status.code() == Code::Unauthenticated {
                    self.tokens.invalidate(&token).await;
                }
                tracing::warn!(%key, code = ?status.code(), message = status.message(), "storage delete failed; will retry");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("catalog_cleanup_failures_total").increment(1);
                return false;
            }
        }
        self.ack(&entry.id).await
    }

    async fn ack(&mut self, id: &str) -> bool {
        let acked: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .xack(CLEANUP_STREAM, GROUP, &[id])
            .ignore()
            .xdel(CLEANUP_STREAM, &[id])
            .ignore()
            .query_async(&mut self.redis)
            .await;
        match acked {
            Ok(()) => {
                self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("catalog_cleanup_completed_total").increment(1);
                true
            }
            Err(error) => {
                tracing::warn!(%error, %id, "cannot acknowledge a clean-up entry");
                false
            }
        }
    }
}

fn flatten(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = CleanupConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..CleanupConfig::default()
        };
        let backoff = config.backoff().unwrap();
        let delays: Vec<u128> = (1..=6).map(|n| backoff.delay(n, 1.0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(
            backoff.delay(2, 0.0).as_millis(),
            100,
            "jitter halves at most"
        );
        assert_eq!(backoff.delay(2, -1.0).as_millis(), 100, "jitter is clamped");
        assert_eq!(backoff.delay(u32::MAX, 1.0).as_millis(), 1_000);
    }
}
