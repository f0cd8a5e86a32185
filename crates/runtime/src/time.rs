//! Wall-clock helpers shared by the services: milliseconds since the Unix epoch (how records
//! store time) and `google.protobuf.Timestamp` (how contracts carry it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero if the clock is before it).
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    duration_ms(since_epoch())
}

/// Whole milliseconds of `duration`, saturating.
pub fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A timestamp from milliseconds since the epoch (negative values are before it).
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A timestamp from whole seconds since the epoch.
pub fn timestamp_from_secs(seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// The current time as a timestamp, to the nanosecond.
pub fn now_timestamp() -> prost_types::Timestamp {
    let now = since_epoch();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_split_into_seconds_and_nanos() {
        let t = timestamp_from_ms(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let before = timestamp_from_ms(-1);
        assert_eq!((before.seconds, before.nanos), (-1, 999_000_000));
        assert_eq!(timestamp_from_secs(42).seconds, 42);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
