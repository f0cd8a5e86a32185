//! The gateway's token buckets: per client address, per user identity, per service identity.
//!
//! governor's keyed limiters keep one state per key and never forget one on their own, and the
//! keys (addresses, token subjects) are chosen by callers. So each limiter here holds at most
//! `max_keys` keys ([`BoundedStore`]: a key that is new when the table is full shares one
//! overflow bucket with every other such key, instead of growing the table), and a background
//! task ([`prune_loop`]) drops the keys whose bucket is full again (`retain_recent`: their state
//! is indistinguishable from a new key's) and gives the memory back (`shrink_to_fit`).

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Weak;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

/// A keyed state store of at most `max_keys` keys (plus the few racing inserts): once full, new
/// keys are measured against one shared overflow state. Keys already tracked keep their own
/// bucket, so clients seen before are unaffected by a flood of new addresses; the flood (and any
/// genuinely new client until the next prune frees room) shares one bucket.
pub struct BoundedStore<K: Hash + Eq + Clone> {
    keys: DashMap<K, InMemoryState>,
    overflow: InMemoryState,
    max_keys: usize,
    limiter: &'static str,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    fn new(max_keys: usize, limiter: &'static str) -> Self {
        Self {
            keys: DashMap::new(),
            overflow: InMemoryState::default(),
            max_keys,
            limiter,
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.keys.len() >= self.max_keys && !self.keys.contains_key(key) {
            metrics::counter!("gateway_rate_limit_overflow_total", "limiter" => self.limiter)
                .increment(1);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        StateStore::measure_and_replace(&self.keys, key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.keys, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.keys.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One keyed token bucket limiter with a bounded key table.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, BoundedStore<K>, DefaultClock, NoOpMiddleware>,
    name: &'static str,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_sec` calls a second with bursts of `burst`, per key; at most `max_keys` keys.
    pub fn new(name: &'static str, per_sec: u32, burst: u32, max_keys: usize) -> Self {
        let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self {
            limiter: RateLimiter::new(
                quota,
                BoundedStore::new(max_keys, name),
                DefaultClock::default(),
            ),
            name,
        }
    }

    /// Takes one token of `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter.check_key(key).map_err(|not_until| {
            metrics::counter!("gateway_rate_limited_total", "limiter" => self.name).increment(1);
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Drops the keys whose bucket is full again and frees the memory they held.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        metrics::gauge!("gateway_rate_limit_keys", "limiter" => self.name).set(self.len() as f64);
    }
}

/// Something whose limiters are pruned periodically.
pub trait Prune: Send + Sync + 'static {
    fn prune(&self);
}

/// Prunes `target` every `interval` until it is dropped (the task then ends on its own).
pub async fn prune_loop<T: Prune>(target: Weak<T>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match target.upgrade() {
            Some(target) => target.prune(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_table_stops_growing_at_its_cap_and_pruning_empties_it() {
        let limiter = KeyedLimiter::<u32>::new("test", 1_000_000, 1, 100);
        for key in 0..1_000 {
            // A burst of 1: the overflow bucket refuses most of the keys past the cap.
            let _ = limiter.check(&key);
        }
        assert_eq!(limiter.len(), 100);
        // Keys seen before the table filled keep their own bucket.
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.check(&7).is_ok());
        std::thread::sleep(Duration::from_millis(5));
        limiter.prune();
        assert!(limiter.is_empty(), "{} keys left", limiter.len());
    }

    #[test]
    fn an_emptied_bucket_is_kept_by_pruning() {
        let limiter = KeyedLimiter::<u32>::new("test", 1, 2, 100);
        assert!(limiter.check(&1).is_ok());
        assert!(limiter.check(&1).is_ok());
        let wait = limiter.check(&1).unwrap_err();
        assert!(wait > Duration::ZERO);
        limiter.prune();
        assert_eq!(limiter.len(), 1);
        assert!(
            limiter.check(&1).is_err(),
            "pruning does not refill a bucket"
        );
    }
}
