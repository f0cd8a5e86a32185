//! Delays between retries, once for every loop that waits before trying again.
//!
//! A [`Backoff`] is validated when it is built (a minimum above zero, a maximum no smaller than
//! the minimum, a jitter fraction within `[0, 1]`), so a configuration that builds one refuses
//! bad values when it is validated, not on the first failure. Computing a delay is pure: the
//! randomness is passed in, so callers (and tests) decide where it comes from.
//!
//! Retry number `n` (1-based) has a *ceiling*, growing from `min` by [`Growth`] and capped at
//! `max`, and a *floor* below it set by the [`Jitter`]; the delay is between the two:
//!
//! | jitter | floor | used for |
//! |---|---|---|
//! | [`Jitter::None`] | the ceiling | one waiter (a reconnect loop, a supervisor) |
//! | [`Jitter::Full`] | zero | many instances retrying one outage ("Exponential Backoff and Jitter", AWS Architecture Blog) |
//! | [`Jitter::Proportional`]`(f)` | `ceiling · (1 − f)` | spreading out while keeping most of the wait |
//!
//! Nothing overflows: the ceiling saturates at `max` for any attempt number, and a delay is
//! computed in nanoseconds within `[floor, ceiling]`.

use std::time::Duration;

/// How the ceiling grows from one retry to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// `min · 2^(n−1)`: the usual exponential backoff.
    Doubling,
    /// `min · n`: for short waits that should grow gently.
    Linear,
}

/// How much of the ceiling is left to chance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Always the ceiling.
    None,
    /// Uniformly between zero and the ceiling.
    Full,
    /// Uniformly between `ceiling · (1 − fraction)` and the ceiling; `fraction` in `[0, 1]`
    /// (`0.5`: "halves at most").
    Proportional(f64),
}

/// Why a [`Backoff`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("the minimum delay must be greater than zero")]
    ZeroMin,
    #[error("the maximum delay ({max:?}) must be at least the minimum delay ({min:?})")]
    MaxBelowMin { min: Duration, max: Duration },
    #[error("the jitter fraction must be between 0 and 1, not {0}")]
    JitterOutOfRange(f64),
}

/// A validated backoff: `min`, `max`, [`Growth`] and [`Jitter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    growth: Growth,
    jitter: Jitter,
}

impl Backoff {
    /// Doubling from `min` up to `max`.
    pub const fn exponential(
        min: Duration,
        max: Duration,
        jitter: Jitter,
    ) -> Result<Self, BackoffError> {
        Self::new(min, max, Growth::Doubling, jitter)
    }

    /// Growing by `min` each time, up to `max`.
    pub const fn linear(
        min: Duration,
        max: Duration,
        jitter: Jitter,
    ) -> Result<Self, BackoffError> {
        Self::new(min, max, Growth::Linear, jitter)
    }

    /// `min > 0`, `max ≥ min`, and a [`Jitter::Proportional`] fraction within `[0, 1]`.
    pub const fn new(
        min: Duration,
        max: Duration,
        growth: Growth,
        jitter: Jitter,
    ) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if max.as_nanos() < min.as_nanos() {
            return Err(BackoffError::MaxBelowMin { min, max });
        }
        if let Jitter::Proportional(fraction) = jitter
            && !(fraction >= 0.0 && fraction <= 1.0)
        {
            return Err(BackoffError::JitterOutOfRange(fraction));
        }
        Ok(Self {
            min,
            max,
            growth,
            jitter,
        })
    }

    pub const fn min(&self) -> Duration {
        self.min
    }

    pub const fn max(&self) -> Duration {
        self.max
    }

    pub const fn growth(&self) -> Growth {
        self.growth
    }

    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The longest delay before retry `attempt` (1-based; 0 counts as 1): `min` grown by
    /// [`Growth`], at most `max`. Never decreases as `attempt` grows.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let attempt = attempt.max(1);
        let grown = match self.growth {
            Growth::Doubling => {
                // Doubling from at least 1 ns passes any `Duration` within 96 steps, so the loop
                // ends at `max` long before `attempt` does for large attempt numbers.
                let mut grown = self.min;
                for _ in 1..attempt {
                    if grown >= self.max {
                        break;
                    }
                    grown = grown.saturating_mul(2);
                }
                grown
            }
            Growth::Linear => self.min.saturating_mul(attempt),
        };
        grown.min(self.max)
    }

    /// The shortest delay before retry `attempt`: the ceiling less what the jitter may take.
    pub fn floor(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => Duration::ZERO,
            Jitter::Proportional(fraction) => ceiling - scale(ceiling, fraction),
        }
    }

    /// The delay before retry `attempt` (1-based), `random` uniform in `[0, 1]` placing it
    /// between [`Self::floor`] (0) and [`Self::ceiling`] (1). Out-of-range values are clamped;
    /// NaN counts as 1. With [`Jitter::None`] `random` does not matter.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let floor = self.floor(attempt);
        let random = if random.is_nan() {
            1.0
        } else {
            random.clamp(0.0, 1.0)
        };
        floor + scale(ceiling - floor, random)
    }
}

/// `duration · factor` for `factor` in `[0, 1]`, never more than `duration` and never panicking
/// (`Duration::mul_f64` can overflow near `Duration::MAX`).
fn scale(duration: Duration, factor: f64) -> Duration {
    let nanos = duration.as_nanos();
    // `as` saturates; the float product may round above `nanos`, hence the `min`.
    let scaled = ((nanos as f64 * factor) as u128).min(nanos);
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    // `scaled ≤ nanos`, so the seconds fit in a u64 as the original's did.
    Duration::new(
        u64::try_from(scaled / NANOS_PER_SEC).unwrap_or(u64::MAX),
        (scaled % NANOS_PER_SEC) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(
            Backoff::exponential(Duration::ZERO, ms(1), Jitter::None),
            Err(BackoffError::ZeroMin)
        );
        assert_eq!(
            Backoff::exponential(ms(10), ms(5), Jitter::Full),
            Err(BackoffError::MaxBelowMin {
                min: ms(10),
                max: ms(5)
            })
        );
        for fraction in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Backoff::linear(ms(1), ms(1), Jitter::Proportional(fraction)),
                Err(BackoffError::JitterOutOfRange(_))
            ));
        }
        assert!(Backoff::exponential(ms(1), ms(1), Jitter::Proportional(0.0)).is_ok());
        assert!(Backoff::exponential(ms(1), ms(1), Jitter::Proportional(1.0)).is_ok());
    }

    #[test]
    fn doubling_and_linear_ceilings() -> Result<(), BackoffError> {
        let doubling = Backoff::exponential(ms(100), ms(1_000), Jitter::None)?;
        let ceilings: Vec<u128> = (0..=6).map(|n| doubling.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(doubling.ceiling(u32::MAX), ms(1_000));
        let linear = Backoff::linear(ms(100), ms(350), Jitter::None)?;
        let ceilings: Vec<u128> = (1..=5).map(|n| linear.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 300, 350, 350]);
        assert_eq!(linear.ceiling(u32::MAX), ms(350));
        Ok(())
    }

    #[test]
    fn jitter_places_the_delay_between_floor_and_ceiling() -> Result<(), BackoffError> {
        let none = Backoff::exponential(ms(100), ms(1_000), Jitter::None)?;
        assert_eq!(none.delay(3, 0.0), ms(400));
        assert_eq!(none.delay(3, 0.7), ms(400));
        let full = Backoff::exponential(ms(100), ms(1_000), Jitter::Full)?;
        assert_eq!(full.delay(3, 0.0), Duration::ZERO);
        assert_eq!(full.delay(3, 0.5), ms(200));
        assert_eq!(full.delay(3, 1.0), ms(400));
        assert_eq!(full.delay(3, f64::NAN), ms(400), "NaN counts as 1");
        assert_eq!(full.delay(3, -3.0), Duration::ZERO, "clamped");
        let halves = Backoff::exponential(ms(100), ms(1_000), Jitter::Proportional(0.5))?;
        assert_eq!(halves.floor(2), ms(100));
        assert_eq!(halves.delay(2, 0.0), ms(100), "halves at most");
        assert_eq!(halves.delay(2, 0.5), ms(150));
        assert_eq!(halves.delay(2, 1.0), ms(200));
        Ok(())
    }

    #[test]
    fn extremes_do_not_overflow() -> Result<(), BackoffError> {
        let huge = Backoff::exponential(Duration::MAX, Duration::MAX, Jitter::Full)?;
        assert!(huge.delay(u32::MAX, 0.999_999) <= Duration::MAX);
        assert_eq!(huge.delay(u32::MAX, 1.0), Duration::MAX);
        let tiny = Backoff::exponential(Duration::from_nanos(1), Duration::MAX, Jitter::None)?;
        assert_eq!(tiny.ceiling(u32::MAX), Duration::MAX);
        let linear = Backoff::linear(
            Duration::from_secs(u64::MAX / 2),
            Duration::MAX,
            Jitter::None,
        )?;
        assert_eq!(linear.ceiling(u32::MAX), Duration::MAX);
        Ok(())
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (1_u64..=10_000_000).prop_map(Duration::from_micros),
            (1_u64..=u64::MAX, 0_u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::from_nanos(1)),
            Just(Duration::MAX),
        ]
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            (0.0_f64..=1.0).prop_map(Jitter::Proportional),
        ]
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        (
            duration(),
            duration(),
            prop_oneof![Just(Growth::Doubling), Just(Growth::Linear)],
            jitter(),
        )
            .prop_filter_map("needs min ≤ max", |(a, b, growth, jitter)| {
                Backoff::new(a.min(b), a.max(b), growth, jitter).ok()
            })
    }

    fn random() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0_f64..=1.0,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            -1e300_f64..1e300,
        ]
    }

    proptest! {
        #[test]
        fn delay_is_between_floor_and_ceiling(backoff in backoff(), attempt in any::<u32>(), random in random()) {
            let delay = backoff.delay(attempt, random);
            prop_assert!(backoff.floor(attempt) <= delay);
            prop_assert!(delay <= backoff.ceiling(attempt));
        }

        #[test]
        fn ceiling_is_monotone_within_min_and_max(backoff in backoff(), attempt in any::<u32>()) {
            let ceiling = backoff.ceiling(attempt);
            prop_assert!(backoff.min() <= ceiling && ceiling <= backoff.max());
            prop_assert!(ceiling <= backoff.ceiling(attempt.saturating_add(1)));
        }

        #[test]
        fn never_above_max(backoff in backoff(), attempt in any::<u32>(), random in random()) {
            prop_assert!(backoff.delay(attempt, random) <= backoff.max());
        }

        #[test]
        fn delay_grows_with_random(backoff in backoff(), attempt in any::<u32>(), a in 0.0_f64..=1.0, b in 0.0_f64..=1.0) {
            let (low, high) = (a.min(b), a.max(b));
            prop_assert!(backoff.delay(attempt, low) <= backoff.delay(attempt, high));
        }

        #[test]
        fn building_validates(min in any::<u64>(), max in any::<u64>(), fraction in any::<f64>()) {
            let (min, max) = (Duration::from_nanos(min), Duration::from_nanos(max));
            let built = Backoff::exponential(min, max, Jitter::Proportional(fraction));
            let valid = !min.is_zero() && max >= min && (0.0..=1.0).contains(&fraction);
            prop_assert_eq!(built.is_ok(), valid);
        }
    }
}
