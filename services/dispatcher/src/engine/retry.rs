//! The retry loop: retries due in the sorted set (`dispatcher.retry_key`), claimed under a
//! lease, attempted again and finished by one script (done, rescheduled or dead-lettered).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use storemesh_proto::events::v1::Event;
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::time::now_ms;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::{Inner, lock};
use crate::retry::{DeadReason, Decision};
use crate::store::{DeadLetter, RetryTask};

impl Inner {
    pub(super) async fn retry_loop(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = JoinSet::new();
        let poll = Duration::from_millis(self.config.retry_poll_ms);
        while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let available = self
                .in_flight
                .available_permits()
                .min(self.config.batch_size);
            if available > 0 {
                match self.claim_due(available).await {
                    Ok(members) => {
                        let mut unstarted = Vec::new();
                        for member in members {
                            match self.in_flight.clone().try_acquire_owned() {
                                Ok(permit) => self.spawn_task(&mut tasks, member, permit),
                                Err(_) => unstarted.push(member),
                            }
                        }
                        // Stream entries took the capacity meanwhile: make these due again
                        // now rather than after their lease.
                        if !unstarted.is_empty() {
                            let mut pipe = redis::pipe();
                            for member in &unstarted {
                                pipe.cmd("ZADD")
                                    .arg(&self.config.retry_key)
                                    .arg("XX")
                                    .arg(now_ms())
                                    .arg(member)
                                    .ignore();
                            }
                            if let Err(error) =
                                pipe.query_async::<()>(&mut self.redis.clone()).await
                            {
                                tracing::debug!(%error, "cannot hand back unstarted retries; their lease brings them back");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read due retries"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = stop.wait() => break,
            }
        }
        self.drain(tasks, "retries").await;
    }

    async fn claim_due(&self, count: usize) -> redis::RedisResult<Vec<String>> {
        let now = now_ms();
        let lease = i64::try_from(self.config.claim_idle_ms).unwrap_or(i64::MAX / 4);
        self.claim_due
            .key(&self.config.retry_key)
            .arg(now)
            .arg(count)
            .arg(now + lease)
            .invoke_async(&mut self.redis.clone())
            .await
    }

    fn spawn_task(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        member: String,
        permit: OwnedSemaphorePermit,
    ) {
        if !lock(&self.active_tasks).insert(member.clone()) {
            return;
        }
        let this = self.clone();
        tasks.spawn(async move {
            if let Err(error) = this.process_task(&member).await {
                tracing::warn!(%error, "cannot record the outcome of a retry; it runs again when its lease ends");
            }
            lock(&this.active_tasks).remove(&member);
            drop(permit);
        });
    }

    async fn process_task(&self, member: &str) -> redis::RedisResult<()> {
        let finish = |mode: &str| {
            let mut invocation = self.finish.prepare_invoke();
            invocation
                .key(&self.config.retry_key)
                .key(&self.config.dlq_stream)
                .arg(member)
                .arg(mode)
                .arg(self.config.dlq_max_entries);
            invocation
        };
        let Some(task) = RetryTask::parse(member) else {
            tracing::error!(member, "unreadable retry entry dropped");
            return finish("done")
                .arg("")
                .arg(0)
                .invoke_async::<i64>(&mut self.redis.clone())
                .await
                .map(drop);
        };
        let encoded = task.encoded_event().unwrap_or_default();
        let Ok(event) = Event::decode(encoded.as_slice()) else {
            let letter = DeadLetter {
                id: String::new(),
                event: encoded,
                event_id: String::new(),
                event_type: String::new(),
                key: String::new(),
                target: task.target.clone(),
                rule: task.rule.clone(),
                reason: DeadReason::Undecodable.as_str().into(),
                attempts: task.attempt - 1,
                last_error: "the retry holds no decodable event".into(),
                first_attempt_ms: task.first_attempt_ms,
                failed_ms: now_ms(),
                source_entry: String::new(),
            };
            let mut invocation = finish("dead");
            invocation.arg("").arg(0);
            for value in letter.flat_fields() {
                invocation.arg(value);
            }
            return invocation
                .invoke_async::<i64>(&mut self.redis.clone())
                .await
                .map(drop);
        };
        let resolution = self
            .attempt(
                &task.target,
                task.rule.clone(),
                &event,
                task.attempt,
                task.first_attempt_ms,
                task.replay,
            )
            .await;
        let mut invocation;
        match &resolution.decision {
            Decision::Done => {
                invocation = finish("done");
                invocation.arg("").arg(0);
            }
            Decision::Retry { delay, error } => {
                let next = RetryTask {
                    attempt: resolution.attempts + 1,
                    last_error: error.clone(),
                    ..task.clone()
                };
                let due = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                invocation = finish("retry");
                invocation.arg(next.member()).arg(due);
            }
            Decision::DeadLetter { reason, error } => {
                let mut letter =
                    DeadLetter::for_event(&event, &encoded, &task.target, &task.rule, *reason);
                letter.attempts = resolution.attempts;
                letter.last_error = error.clone();
                letter.first_attempt_ms = task.first_attempt_ms;
                invocation = finish("dead");
                invocation.arg("").arg(0);
                for value in letter.flat_fields() {
                    invocation.arg(value);
                }
            }
        }
        let finished: i64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        if finished == 0 {
            tracing::info!(event = %event.id, target = %task.target, "retry already finished by another instance");
        }
        Ok(())
    }
}
