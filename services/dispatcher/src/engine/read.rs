//! The read loop: new entries of the event stream through the consumer group, each delivered
//! to every target its rules name and acknowledged together with its follow-ups.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use storemesh_proto::events::v1::Event;
use storemesh_runtime::backoff::{Backoff, Jitter};
use storemesh_runtime::redis::{ensure_group, is_missing_group};
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::time::now_ms;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::deliver::Resolution;
use super::{Inner, lock};
use crate::metrics;
use crate::retry::{DeadReason, Decision};
use crate::routing::EventKind;
use crate::store::{DeadLetter, RetryTask};

/// The pause after the n-th failed stream read in a row: 100 ms · n, at most 5 s.
const READ_FAILURE_PAUSE: Backoff = match Backoff::linear(
    Duration::from_millis(100),
    Duration::from_secs(5),
    Jitter::None,
) {
    Ok(backoff) => backoff,
    Err(_) => panic!("a valid backoff"),
};

impl Inner {
    pub(super) async fn read_loop(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = JoinSet::new();
        let mut failures: u32 = 0;
        while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let Some(first) = self.permit(&stop).await else {
                break;
            };
            let count = (self.in_flight.available_permits() + 1).min(self.config.batch_size);
            // Not raced with `stop`: the read ends within `block_ms`, and what it returned must
            // be handled (or it would wait for a claim).
            match self.read_new(count).await {
                Ok(entries) => {
                    failures = 0;
                    let mut first = Some(first);
                    for entry in entries {
                        let permit = match first.take() {
                            Some(permit) => permit,
                            None => match self.in_flight.clone().acquire_owned().await {
                                Ok(permit) => permit,
                                Err(_) => break,
                            },
                        };
                        self.spawn_entry(&mut tasks, entry, permit);
                    }
                }
                Err(error) => {
                    drop(first);
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, "cannot read the event stream");
                    if is_missing_group(&error) {
                        let _ = ensure_group(&self.redis, &self.config.stream, &self.config.group)
                            .await;
                    }
                    let pause = READ_FAILURE_PAUSE.ceiling(failures);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.wait() => break,
                    }
                }
            }
        }
        self.drain(tasks, "stream entries").await;
    }

    async fn read_new(&self, count: usize) -> redis::RedisResult<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.consumer)
            .count(count)
            .block(self.block_ms);
        let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
            &mut self.reader.clone(),
            &[&self.config.stream],
            &[">"],
            &options,
        )
        .await?;
        Ok(reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default())
    }

    /// Handles `entry` in a task of `tasks` (the claim loop hands over entries here too).
    pub(super) fn spawn_entry(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        entry: StreamId,
        permit: OwnedSemaphorePermit,
    ) {
        if !lock(&self.active_entries).insert(entry.id.clone()) {
            return; // already being handled here (claimed again while in flight)
        }
        let this = self.clone();
        tasks.spawn(async move {
            let id = entry.id.clone();
            if let Err(error) = this.process_entry(&entry).await {
                // Left pending: it is claimed again after `claim_idle_ms`.
                tracing::warn!(%error, entry = %id, "cannot record the outcome of an event; it will be delivered again");
            }
            lock(&this.active_entries).remove(&id);
            drop(permit);
        });
    }

    /// Delivers one stream entry to every target its rules name, then records each outcome and
    /// acknowledges the entry in one `MULTI`.
    async fn process_entry(&self, entry: &StreamId) -> redis::RedisResult<()> {
        let encoded: Vec<u8> = entry.get("event").unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        match Event::decode(encoded.as_slice()) {
            Ok(event) if !event.id.is_empty() => {
                let kind = EventKind::from_proto(event.r#type());
                let targets: Vec<String> = kind
                    .map(|kind| self.routes.targets_for(kind, &event.subject))
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                if targets.is_empty() {
                    ::metrics::counter!(metrics::EVENTS_IGNORED_TOTAL).increment(1);
                    tracing::debug!(event = %event.id, key = %event.subject, "no rule matches; acknowledged");
                }
                let first_attempt_ms = now_ms();
                let resolutions = futures::future::join_all(targets.iter().map(|target| {
                    let rule = kind
                        .and_then(|kind| self.routes.rule_for(kind, &event.subject, target))
                        .unwrap_or_default()
                        .to_owned();
                    self.attempt(target, rule, &event, 1, first_attempt_ms, false)
                }))
                .await;
                for resolution in resolutions {
                    self.record(
                        &mut pipe,
                        &resolution,
                        &event,
                        &encoded,
                        first_attempt_ms,
                        false,
                        &entry.id,
                    );
                }
            }
            _ => {
                let text = |name: &str| entry.get::<String>(name).unwrap_or_default();
                let letter = DeadLetter {
                    id: String::new(),
                    event: encoded.clone(),
                    event_id: text("id"),
                    event_type: text("type"),
                    key: text("key"),
                    target: String::new(),
                    rule: String::new(),
                    reason: DeadReason::Undecodable.as_str().into(),
                    attempts: 0,
                    last_error: "the entry's `event` field is missing or not a storemesh.events.v1.Event with an id".into(),
                    first_attempt_ms: now_ms(),
                    failed_ms: now_ms(),
                    source_entry: entry.id.clone(),
                };
                tracing::error!(entry = %entry.id, "undecodable stream entry dead-lettered");
                metrics::delivered("-", "dead_letter");
                pipe.xadd_maxlen(
                    &self.config.dlq_stream,
                    self.dlq_cap(),
                    "*",
                    &letter.fields(),
                )
                .ignore();
            }
        }
        pipe.xack(&self.config.stream, &self.config.group, &[&entry.id])
            .ignore();
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// Adds the follow-up of a resolution (a retry or a dead letter) to `pipe`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        pipe: &mut redis::Pipeline,
        resolution: &Resolution,
        event: &Event,
        encoded: &[u8],
        first_attempt_ms: i64,
        replay: bool,
        source_entry: &str,
    ) {
        match &resolution.decision {
            Decision::Done => {}
            Decision::Retry { delay, error } => {
                let task = RetryTask {
                    target: resolution.target.clone(),
                    rule: resolution.rule.clone(),
                    attempt: resolution.attempts + 1,
                    first_attempt_ms,
                    last_error: error.clone(),
                    replay,
                    event: RetryTask::encode_event(encoded),
                };
                let due = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                pipe.zadd(&self.config.retry_key, task.member(), due)
                    .ignore();
            }
            Decision::DeadLetter { reason, error } => {
                let mut letter = DeadLetter::for_event(
                    event,
                    encoded,
                    &resolution.target,
                    &resolution.rule,
                    *reason,
                );
                letter.attempts = resolution.attempts;
                letter.last_error = error.clone();
                letter.first_attempt_ms = first_attempt_ms;
                letter.source_entry = source_entry.to_owned();
                pipe.xadd_maxlen(
                    &self.config.dlq_stream,
                    self.dlq_cap(),
                    "*",
                    &letter.fields(),
                )
                .ignore();
            }
        }
    }
}
