//! The dispatcher's Prometheus metrics (served on the admin port's `/metrics`).

/// Counter `{target, outcome}`; outcome `success`, `retry` (a retry was scheduled) or
/// `dead_letter`. One per attempt, plus one `dead_letter` for an event dead-lettered without
/// an attempt (too old, undecodable).
pub const DELIVERIES_TOTAL: &str = "dispatcher_deliveries_total";
/// Histogram `{target}`: duration of one delivery attempt.
pub const DELIVERY_DURATION_SECONDS: &str = "dispatcher_delivery_duration_seconds";
/// Counter `{target}`: retries scheduled.
pub const RETRIES_TOTAL: &str = "dispatcher_retries_total";
/// Gauge: entries in the dead-letter stream (`XLEN`).
pub const DLQ_ENTRIES: &str = "dispatcher_dlq_entries";
/// Gauge: stream entries not yet read by the consumer group (`XINFO GROUPS` `lag`).
pub const CONSUMER_LAG: &str = "dispatcher_consumer_lag";
/// Gauge: entries read by the group but not yet acknowledged (`XINFO GROUPS` `pending`).
pub const CONSUMER_PENDING: &str = "dispatcher_consumer_pending";
/// Gauge: retries waiting in the retry set (`ZCARD`).
pub const RETRIES_SCHEDULED: &str = "dispatcher_retries_scheduled";
/// Gauge: Redis's `used_memory` (bytes), read with `INFO memory` on the gauge loop.
pub const REDIS_USED_MEMORY: &str = "dispatcher_redis_used_memory_bytes";
/// Gauge: Redis's `maxmemory` (bytes; 0 = no limit).
pub const REDIS_MAXMEMORY: &str = "dispatcher_redis_maxmemory_bytes";
/// Gauge: 1 when Redis's `maxmemory-policy` is `noeviction`, else 0.
pub const REDIS_NOEVICTION: &str = "dispatcher_redis_noeviction";
/// Histogram `{target}`: event commit time → successful delivery.
pub const EVENT_AGE_SECONDS: &str = "dispatcher_event_age_seconds";
/// Counter: events that matched no rule (acknowledged without delivery).
pub const EVENTS_IGNORED_TOTAL: &str = "dispatcher_events_ignored_total";
/// Counter `{schedule, outcome}` (`ok`, `failed`, `skipped` when another instance held the lock).
pub const SCHEDULE_RUNS_TOTAL: &str = "dispatcher_schedule_runs_total";
/// Counter: events re-emitted by the reconciler.
pub const RECONCILER_REEMITTED_TOTAL: &str = "dispatcher_reconciler_reemitted_total";
/// Counter: images the reconciler marked `FAILED` (gave up, or original missing).
pub const RECONCILER_FAILED_TOTAL: &str = "dispatcher_reconciler_failed_total";

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        DELIVERIES_TOTAL,
        "delivery attempts by target and outcome (success, retry, dead_letter)"
    );
    describe_histogram!(
        DELIVERY_DURATION_SECONDS,
        Unit::Seconds,
        "duration of one delivery attempt"
    );
    describe_counter!(RETRIES_TOTAL, "retries scheduled by target");
    describe_gauge!(DLQ_ENTRIES, "entries in the dead-letter stream");
    describe_gauge!(
        CONSUMER_LAG,
        "storage events not yet read by the dispatcher consumer group"
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "storage events read but not yet acknowledged"
    );
    describe_gauge!(RETRIES_SCHEDULED, "retries waiting to be due");
    describe_gauge!(
        REDIS_USED_MEMORY,
        Unit::Bytes,
        "memory Redis uses for data (INFO memory used_memory)"
    );
    describe_gauge!(
        REDIS_MAXMEMORY,
        Unit::Bytes,
        "Redis's maxmemory (0 = no limit): at it, a noeviction Redis refuses writes"
    );
    describe_gauge!(
        REDIS_NOEVICTION,
        "1 when Redis's maxmemory-policy is noeviction (full = writes refused, nothing lost)"
    );
    describe_histogram!(
        EVENT_AGE_SECONDS,
        Unit::Seconds,
        "time from the event's commit to its successful delivery"
    );
    describe_counter!(EVENTS_IGNORED_TOTAL, "events that matched no routing rule");
    describe_counter!(SCHEDULE_RUNS_TOTAL, "scheduled job runs by outcome");
    describe_counter!(
        RECONCILER_REEMITTED_TOTAL,
        "events re-emitted for images stuck in PROCESSING"
    );
    describe_counter!(
        RECONCILER_FAILED_TOTAL,
        "stuck images the reconciler marked FAILED"
    );
}

pub fn delivered(target: &str, outcome: &'static str) {
    metrics::counter!(DELIVERIES_TOTAL, "target" => target.to_owned(), "outcome" => outcome)
        .increment(1);
}
