//! What to do after a delivery attempt: the pure rules (classification of answers, backoff,
//! attempt and age limits), separate from the I/O that applies them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use storemesh_runtime::backoff::Backoff;

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The target accepted the event.
    Delivered,
    /// A transient failure: try again later (no sooner than `retry_after` when the target
    /// said so).
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The target refused the event for good (a bad request, a permission, a precondition).
    Permanent { error: String },
}

/// Why an event ended in the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The target answered with a final refusal.
    NonRetryable,
    /// Every allowed attempt failed transiently.
    RetriesExhausted,
    /// The event was older than `max_event_age_secs` before an attempt.
    MaxEventAge,
    /// The stream entry holds no decodable event.
    Undecodable,
    /// The target named by a retry or replay is no longer configured.
    UnknownTarget,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::NonRetryable => "non_retryable",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::MaxEventAge => "max_event_age",
            DeadReason::Undecodable => "undecodable",
            DeadReason::UnknownTarget => "unknown_target",
        }
    }
}

/// What happens next for one event and one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Done,
    /// Attempt again after `delay`.
    Retry {
        delay: Duration,
        error: String,
    },
    DeadLetter {
        reason: DeadReason,
        error: String,
    },
}

/// Retry policy of one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// The delay after failed attempt `n` (1-based): full jitter ("Exponential Backoff and
    /// Jitter", AWS Architecture Blog) under `min(max, initial · 2^(n-1))`, so instances
    /// retrying the same outage spread out.
    pub backoff: Backoff,
}

impl Policy {
    /// The delay after failed attempt `attempt`, `jitter` in `[0, 1]` (see [`Backoff::delay`]).
    /// A target's `Retry-After` is honoured as a floor, within the maximum; never zero.
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let jittered = self.backoff.delay(attempt, jitter);
        let floor = retry_after.unwrap_or_default().min(self.backoff.max());
        jittered.max(floor).max(Duration::from_millis(1))
    }

    /// The decision after attempt number `attempt` ended with `result`.
    pub fn decide(&self, attempt: u32, result: Attempt, jitter: f64) -> Decision {
        match result {
            Attempt::Delivered => Decision::Done,
            Attempt::Permanent { error } => Decision::DeadLetter {
                reason: DeadReason::NonRetryable,
                error,
            },
            Attempt::Transient { error, .. } if attempt >= self.max_attempts => {
                Decision::DeadLetter {
                    reason: DeadReason::RetriesExhausted,
                    error,
                }
            }
            Attempt::Transient { error, retry_after } => Decision::Retry {
                delay: self.delay(attempt, jitter, retry_after),
                error,
            },
        }
    }
}

/// HTTP answers per the delivery contract: 2xx done; 408, 429 and 5xx retry; anything else
/// (other 4xx, and redirects, which a delivery never follows) is final.
pub fn classify_http(status: u16, detail: &str, retry_after: Option<Duration>) -> Attempt {
    let error = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    match status {
        200..=299 => Attempt::Delivered,
        408 | 429 | 500..=599 => Attempt::Transient { error, retry_after },
        _ => Attempt::Permanent { error },
    }
}

/// gRPC statuses. `not_found_retries`: for `RecordVariant` a missing image may simply not be
/// attached yet (the upload hook attaches after the upload commits), so `NOT_FOUND` is retried
/// with backoff. `UNAUTHENTICATED` is retried because the caller renews its token first.
pub fn classify_grpc(code: tonic::Code, message: &str, not_found_retries: bool) -> Attempt {
    use tonic::Code;
    let error = format!(
        "gRPC {}: {message}",
        storemesh_runtime::error::code_name(code)
    );
    match code {
        Code::Ok => Attempt::Delivered,
        Code::NotFound if not_found_retries => Attempt::Transient {
            error,
            retry_after: None,
        },
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::Unauthenticated => Attempt::Transient {
            error,
            retry_after: None,
        },
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss => Attempt::Permanent { error },
    }
}

/// Whether an event committed at `event_ms` is too old at `now_ms` to be delivered.
pub fn too_old(event_ms: i64, now_ms: i64, max_age: Duration) -> bool {
    let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(event_ms) > max_age_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use storemesh_runtime::backoff::Jitter;

    fn policy() -> Policy {
        Policy {
            max_attempts: 4,
            backoff: Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_millis(1_000),
                Jitter::Full,
            )
            .unwrap(),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let policy = policy();
        let ceilings: Vec<u128> = (1..=6)
            .map(|n| policy.backoff.ceiling(n).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(policy.delay(3, 1.0, None).as_millis(), 400);
        assert_eq!(policy.delay(3, 0.5, None).as_millis(), 200);
        assert_eq!(policy.delay(3, 0.0, None).as_millis(), 1, "never zero");
        assert_eq!(
            policy
                .delay(1, 0.0, Some(Duration::from_millis(700)))
                .as_millis(),
            700,
            "Retry-After is a floor"
        );
        assert_eq!(
            policy
                .delay(1, 0.0, Some(Duration::from_secs(3_600)))
                .as_millis(),
            1_000,
            "within the maximum"
        );
        assert_eq!(policy.backoff.ceiling(u32::MAX).as_millis(), 1_000);
    }

    #[test]
    fn decisions_follow_attempts_and_answers() {
        let policy = policy();
        let transient = || Attempt::Transient {
            error: "HTTP 503".into(),
            retry_after: None,
        };
        assert_eq!(policy.decide(1, Attempt::Delivered, 0.5), Decision::Done);
        assert!(matches!(
            policy.decide(1, transient(), 0.5),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            policy.decide(3, transient(), 0.5),
            Decision::Retry { .. }
        ));
        assert_eq!(
            policy.decide(4, transient(), 0.5),
            Decision::DeadLetter {
                reason: DeadReason::RetriesExhausted,
                error: "HTTP 503".into()
            }
        );
        assert_eq!(
            policy.decide(
                1,
                Attempt::Permanent {
                    error: "HTTP 400".into()
                },
                0.5
            ),
            Decision::DeadLetter {
                reason: DeadReason::NonRetryable,
                error: "HTTP 400".into()
            }
        );
    }

    #[test]
    fn http_answers_per_the_contract() {
        assert_eq!(classify_http(200, "", None), Attempt::Delivered);
        assert_eq!(classify_http(204, "", None), Attempt::Delivered);
        for retried in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_http(retried, "", None), Attempt::Transient { .. }),
                "{retried}"
            );
        }
        for final_status in [400, 401, 403, 404, 409, 410, 413, 422, 301, 302] {
            assert!(
                matches!(
                    classify_http(final_status, "", None),
                    Attempt::Permanent { .. }
                ),
                "{final_status}"
            );
        }
        assert_eq!(
            classify_http(422, "bad image", None),
            Attempt::Permanent {
                error: "HTTP 422: bad image".into()
            }
        );
    }

    #[test]
    fn grpc_statuses() {
        use tonic::Code;
        assert!(matches!(
            classify_grpc(Code::NotFound, "image", true),
            Attempt::Transient { .. }
        ));
        assert!(matches!(
            classify_grpc(Code::NotFound, "image", false),
            Attempt::Permanent { .. }
        ));
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
        ] {
            assert!(matches!(
                classify_grpc(code, "", true),
                Attempt::Permanent { .. }
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
        ] {
            assert!(matches!(
                classify_grpc(code, "", true),
                Attempt::Transient { .. }
            ));
        }
    }

    #[test]
    fn age_limit() {
        let day = Duration::from_secs(86_400);
        assert!(!too_old(0, 86_400_000, day));
        assert!(too_old(0, 86_400_001, day));
        assert!(!too_old(1_000, 0, day), "clock skew is not age");
    }
}
