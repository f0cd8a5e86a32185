//! Schedule expressions, as AWS EventBridge writes them: `rate(5 minutes)`, `cron(0 3 * * *)`,
//! or a bare cron expression. Cron expressions are POSIX/Vixie cron (5 fields, or 6 with
//! seconds first) evaluated in UTC by the `croner` crate.
//!
//! Rates fire on multiples of their period since the Unix epoch, so every instance computes
//! the same firing times and one Redis mark per firing lets exactly one of them run it.

use std::time::Duration;

use chrono::{TimeZone, Utc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "`{0}` is not a rate: write rate(N unit) with N ≥ 1 and unit second(s), minute(s), hour(s) or day(s)"
    )]
    BadRate(String),
    #[error("`{expression}` is not a cron expression: {message}")]
    BadCron { expression: String, message: String },
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Rate(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            return parse_rate(inner)
                .map(Schedule::Rate)
                .ok_or_else(|| ScheduleError::BadRate(text.to_owned()));
        }
        let expression = text
            .strip_prefix("cron(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(text);
        croner::parser::CronParser::new()
            .parse(expression)
            .map(|cron| Schedule::Cron(Box::new(cron)))
            .map_err(|error| ScheduleError::BadCron {
                expression: text.to_owned(),
                message: error.to_string(),
            })
    }

    /// The first firing strictly after `after_ms` (Unix milliseconds), if any.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Rate(period) => {
                let period = i64::try_from(period.as_millis()).ok()?.max(1);
                Some((after_ms.div_euclid(period) + 1) * period)
            }
            Schedule::Cron(cron) => {
                let after = Utc.timestamp_millis_opt(after_ms).single()?;
                cron.find_next_occurrence(&after, false)
                    .ok()
                    .map(|next| next.timestamp_millis())
            }
        }
    }
}

fn parse_rate(inner: &str) -> Option<Duration> {
    let mut parts = inner.split_whitespace();
    let (Some(count), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let count: u64 = count.parse().ok().filter(|count| *count >= 1)?;
    let unit_secs = match unit {
        "second" | "seconds" => 1,
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3_600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    count.checked_mul(unit_secs).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_fire_on_multiples_of_their_period() {
        let Schedule::Rate(period) = Schedule::parse("rate(1 minute)").unwrap() else {
            panic!("not a rate")
        };
        assert_eq!(period, Duration::from_secs(60));
        let schedule = Schedule::parse(" rate(5 minutes) ").unwrap();
        assert_eq!(schedule.next_after(0), Some(300_000));
        assert_eq!(schedule.next_after(299_999), Some(300_000));
        assert_eq!(schedule.next_after(300_000), Some(600_000));
        assert!(matches!(
            Schedule::parse("rate(2 hours)"),
            Ok(Schedule::Rate(d)) if d == Duration::from_secs(7_200)
        ));
        assert!(matches!(
            Schedule::parse("rate(1 day)"),
            Ok(Schedule::Rate(d)) if d == Duration::from_secs(86_400)
        ));
    }

    #[test]
    fn bad_rates_are_refused() {
        for bad in [
            "rate(0 minutes)",
            "rate(minute)",
            "rate(1 fortnight)",
            "rate(-1 minutes)",
            "rate(1 minute",
            "rate(99999999999999999999 days)",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_expressions_in_utc() {
        // 2024-01-01T00:00:00Z
        let midnight = 1_704_067_200_000_i64;
        let daily = Schedule::parse("cron(30 3 * * *)").unwrap();
        assert_eq!(
            daily.next_after(midnight),
            Some(midnight + (3 * 3_600 + 30 * 60) * 1_000)
        );
        let every_15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(every_15.next_after(midnight), Some(midnight + 15 * 60_000));
        let with_seconds = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(with_seconds.next_after(midnight), Some(midnight + 10_000));
        for bad in ["cron(61 * * * *)", "not a schedule", "cron()", "* * *"] {
            assert!(
                matches!(Schedule::parse(bad), Err(ScheduleError::BadCron { .. })),
                "{bad}"
            );
        }
    }
}
