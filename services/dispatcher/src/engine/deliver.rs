//! One delivery attempt of an event to a target and its decision, shared by the read loop
//! (first attempts) and the retry loop (later ones).

use std::time::Duration;

use storemesh_proto::events::v1::Event;
use storemesh_runtime::time::now_ms;
use tokio::time::Instant;

use super::Inner;
use crate::metrics;
use crate::retry::{DeadReason, Decision, too_old};

/// What happened to one event for one target.
pub(super) struct Resolution {
    pub(super) target: String,
    pub(super) rule: String,
    pub(super) decision: Decision,
    /// Attempts made so far (this one included, if it was made).
    pub(super) attempts: u32,
}

impl Inner {
    /// One attempt (number `attempt`) to deliver `event` to `target_name`, and its decision.
    pub(super) async fn attempt(
        &self,
        target_name: &str,
        rule: String,
        event: &Event,
        attempt: u32,
        first_attempt_ms: i64,
        replay: bool,
    ) -> Resolution {
        let resolution = |decision, attempts| Resolution {
            target: target_name.to_owned(),
            rule: rule.clone(),
            decision,
            attempts,
        };
        let Some(target) = self.targets.get(target_name) else {
            metrics::delivered(target_name, "dead_letter");
            return resolution(
                Decision::DeadLetter {
                    reason: DeadReason::UnknownTarget,
                    error: format!("no target named {target_name} is configured"),
                },
                attempt - 1,
            );
        };
        // Without a commit time (not a storage event) the age is unknown: no age limit.
        let event_ms = event
            .time
            .as_ref()
            .map(|time| time.seconds.saturating_mul(1_000) + i64::from(time.nanos / 1_000_000));
        let max_age = Duration::from_secs(self.config.max_event_age_secs);
        if let Some(event_ms) = event_ms
            && !replay
            && too_old(event_ms, now_ms(), max_age)
        {
            metrics::delivered(target_name, "dead_letter");
            tracing::warn!(event = %event.id, target = target_name, "event older than max_event_age_secs dead-lettered");
            return resolution(
                Decision::DeadLetter {
                    reason: DeadReason::MaxEventAge,
                    error: format!(
                        "the event was committed {} s ago, more than max_event_age_secs = {}",
                        (now_ms() - event_ms) / 1_000,
                        self.config.max_event_age_secs
                    ),
                },
                attempt - 1,
            );
        }
        let Ok(_permit) = target.permits.acquire().await else {
            return resolution(
                Decision::Retry {
                    delay: target.policy.backoff.min(),
                    error: "the target is shutting down".into(),
                },
                attempt - 1,
            );
        };
        let started = Instant::now();
        let result = target.deliver(event, attempt, first_attempt_ms).await;
        ::metrics::histogram!(metrics::DELIVERY_DURATION_SECONDS, "target" => target_name.to_owned())
            .record(started.elapsed().as_secs_f64());
        let decision = target.policy.decide(attempt, result, rand::random::<f64>());
        match &decision {
            Decision::Done => {
                metrics::delivered(target_name, "success");
                if let Some(event_ms) = event_ms {
                    let age = (now_ms() - event_ms).max(0) as f64 / 1_000.0;
                    ::metrics::histogram!(metrics::EVENT_AGE_SECONDS, "target" => target_name.to_owned())
                        .record(age);
                }
                tracing::debug!(event = %event.id, target = target_name, attempt, "delivered");
            }
            Decision::Retry { delay, error } => {
                metrics::delivered(target_name, "retry");
                ::metrics::counter!(metrics::RETRIES_TOTAL, "target" => target_name.to_owned())
                    .increment(1);
                tracing::info!(event = %event.id, target = target_name, attempt, delay_ms = delay.as_millis() as u64, %error, "delivery failed; retry scheduled");
            }
            Decision::DeadLetter { reason, error } => {
                metrics::delivered(target_name, "dead_letter");
                tracing::warn!(event = %event.id, key = %event.subject, target = target_name, attempt, reason = reason.as_str(), %error, "event dead-lettered");
            }
        }
        resolution(decision, attempt)
    }
}
