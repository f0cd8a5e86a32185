//! The background janitor: turns uploads whose lease ran out into garbage and deletes garbage
//! blobs once their grace period is over (see the commit protocol in `store`). Several storage
//! replicas may run it at once: every step claims its entries atomically.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::store::{Store, now_ms};

const BATCH: usize = 100;

/// How long a janitor owns the garbage it claimed before another may retry it.
const CLAIM: Duration = Duration::from_secs(60);

/// Stops the janitor when dropped (with the service that owns it).
pub struct JanitorHandle {
    _stop: oneshot::Sender<()>,
}

pub fn spawn(store: Store, backend: Backend, interval: Duration) -> JanitorHandle {
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => return,
            }
            if let Err(error) = sweep(&store, &backend).await {
                // Redis down: the next tick retries; nothing is lost in the meantime.
                tracing::debug!(%error, "janitor pass failed");
            }
        }
    });
    JanitorHandle { _stop: stop }
}

/// One pass; returns how many blobs were deleted.
pub async fn sweep(store: &Store, backend: &Backend) -> storemesh_runtime::ServiceResult<usize> {
    let now = now_ms();
    loop {
        let expired = store.expire_uploads(now, BATCH).await?;
        if expired > 0 {
            tracing::info!(expired, "uploads whose lease ran out were abandoned");
        }
        if expired < BATCH {
            break;
        }
    }
    let claim_until = now.saturating_add(i64::try_from(CLAIM.as_millis()).unwrap_or(i64::MAX));
    let mut deleted = 0;
    loop {
        let due = store.claim_garbage(now, claim_until, BATCH).await?;
        let claimed = due.len();
        for blob in due {
            match backend.delete(&blob).await {
                Ok(()) => {
                    store.forget_garbage(&blob).await?;
                    deleted += 1;
                }
                // Left claimed: retried once the claim runs out.
                Err(error) => tracing::warn!(%error, %blob, "cannot delete garbage blob"),
            }
        }
        if claimed < BATCH {
            break;
        }
    }
    if deleted > 0 {
        metrics::counter!("storage_garbage_blobs_deleted_total").increment(deleted as u64);
        tracing::debug!(deleted, "garbage blobs deleted");
    }
    Ok(deleted)
}
