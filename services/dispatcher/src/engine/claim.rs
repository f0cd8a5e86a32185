//! The claim loop: work another instance took and did not finish. At start this consumer's
//! own pending entries (a restart under a stable name); then, every `claim_interval_ms`, the
//! leases of work in flight here are renewed and entries idle for `claim_idle_ms` are taken
//! over with `XAUTOCLAIM`; about once a minute consumers of stopped instances are forgotten.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::time::now_ms;
use tokio::task::JoinSet;

use super::{Inner, lock};

impl Inner {
    pub(super) async fn claim_loop(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = JoinSet::new();
        let interval = Duration::from_millis(self.config.claim_interval_ms);
        // With a stable consumer name (`dispatcher.consumer`), a restarted instance resumes
        // what it had read before it died at once instead of after `claim_idle_ms`.
        match self.own_pending().await {
            Ok(entries) => {
                if !entries.is_empty() {
                    tracing::info!(
                        count = entries.len(),
                        "resuming events read before a restart"
                    );
                }
                for entry in entries {
                    let Some(permit) = self.permit(&stop).await else {
                        break;
                    };
                    self.spawn_entry(&mut tasks, entry, permit);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read this consumer's pending events"),
        }
        let mut rounds: u64 = 0;
        while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            // About once a minute: forget consumers of stopped instances.
            if rounds.is_multiple_of((60_000 / self.config.claim_interval_ms).max(1))
                && let Err(error) = self.forget_stopped_consumers().await
            {
                tracing::debug!(%error, "cannot list the group's consumers");
            }
            rounds += 1;
            if let Err(error) = self.renew_leases().await {
                tracing::warn!(%error, "cannot renew the leases of work in flight");
            }
            match self.autoclaim().await {
                Ok(entries) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            count = entries.len(),
                            "took over events abandoned by another instance"
                        );
                    }
                    for entry in entries {
                        let Some(permit) = self.permit(&stop).await else {
                            break;
                        };
                        self.spawn_entry(&mut tasks, entry, permit);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot claim abandoned events"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.wait() => break,
            }
        }
        self.drain(tasks, "claimed entries").await;
    }

    /// Work in flight here must not look abandoned: reset the idle time of the stream entries
    /// (`XCLAIM … JUSTID` to ourselves) and push the retries' leases forward.
    async fn renew_leases(&self) -> redis::RedisResult<()> {
        let entries: Vec<String> = lock(&self.active_entries).iter().cloned().collect();
        let tasks: Vec<String> = lock(&self.active_tasks).iter().cloned().collect();
        if entries.is_empty() && tasks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !entries.is_empty() {
            pipe.cmd("XCLAIM")
                .arg(&self.config.stream)
                .arg(&self.config.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&entries)
                .arg("JUSTID")
                .ignore();
        }
        let lease_end = now_ms() + i64::try_from(self.config.claim_idle_ms).unwrap_or(i64::MAX / 4);
        for member in &tasks {
            pipe.cmd("ZADD")
                .arg(&self.config.retry_key)
                .arg("XX")
                .arg(lease_end)
                .arg(member)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// Removes consumers with nothing pending that have been idle for
    /// `forget_consumers_after_ms` (stopped instances). Nothing is lost: a consumer with
    /// pending entries is kept until they are claimed, and a live consumer that reads again is
    /// recreated by Redis.
    pub(crate) async fn forget_stopped_consumers(&self) -> redis::RedisResult<i64> {
        // One script, so a consumer cannot read something between the check and the delete.
        let forgotten: i64 = redis::Script::new(crate::store::FORGET_CONSUMERS)
            .key(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg(self.config.forget_consumers_after_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if forgotten > 0 {
            tracing::info!(forgotten, "forgot the consumers of stopped instances");
        }
        Ok(forgotten)
    }

    /// Entries this consumer read earlier and never acknowledged (its pending list).
    async fn own_pending(&self) -> redis::RedisResult<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.consumer)
            .count(self.config.max_in_flight);
        let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
            &mut self.redis.clone(),
            &[&self.config.stream],
            &["0"],
            &options,
        )
        .await?;
        Ok(reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default())
    }

    async fn autoclaim(&self) -> redis::RedisResult<Vec<StreamId>> {
        let reply: redis::streams::StreamAutoClaimReply = redis::AsyncCommands::xautoclaim_options(
            &mut self.redis.clone(),
            &self.config.stream,
            &self.config.group,
            &self.consumer,
            self.config.claim_idle_ms,
            "0-0",
            StreamAutoClaimOptions::default().count(self.config.batch_size),
        )
        .await?;
        Ok(reply.claimed)
    }
}
