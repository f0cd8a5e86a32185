//! One upstream endpoint: its load estimate and its health (outlier ejection with half-open
//! probing). The state machine is pure; callers pass the current time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use storemesh_runtime::backoff::{Backoff, Jitter};
use tokio::time::Instant;

/// Per-endpoint metric handles, registered on the endpoint's first call: a labelled metric
/// looked up in the registry allocates and hashes its labels each time, on every proxied call.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    upstream: String,
    endpoint: String,
    pub(crate) seconds: metrics::Histogram,
    /// `mesh_upstream_requests_total` by outcome: the 17 gRPC codes, then transport error.
    outcomes: [OnceLock<metrics::Counter>; 18],
}

/// How one attempt on an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Status(tonic::Code),
    TransportError,
}

impl EndpointMetrics {
    fn new(upstream: &str, endpoint: &str) -> Self {
        Self {
            seconds: metrics::histogram!(
                "mesh_upstream_request_seconds",
                "upstream" => upstream.to_owned(),
                "endpoint" => endpoint.to_owned()
            ),
            outcomes: std::array::from_fn(|_| OnceLock::new()),
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        }
    }

    pub(crate) fn requests(&self, outcome: Outcome) -> Option<&metrics::Counter> {
        let (index, label) = match outcome {
            Outcome::Status(code) => (code as usize, storemesh_runtime::error::code_name(code)),
            Outcome::TransportError => (17, "TRANSPORT_ERROR"),
        };
        Some(self.outcomes.get(index)?.get_or_init(|| {
            metrics::counter!(
                "mesh_upstream_requests_total",
                "upstream" => self.upstream.clone(),
                "endpoint" => self.endpoint.clone(),
                "outcome" => label
            )
        }))
    }
}

/// When an endpoint is taken out of rotation and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// How long ejection n in a row lasts; `None`: no time at all.
    ejection: Option<Backoff>,
}

impl EjectionPolicy {
    /// The first ejection lasts `base`, each one in a row twice as long as the one before (the
    /// factor stops at 2^16), at most `max`. Every value is accepted: a `max` below `base`
    /// is the length of every ejection, and a zero `base` or `max` makes ejections last no time.
    pub fn new(consecutive_failures: u32, base: Duration, max: Duration) -> Self {
        let ejection = Backoff::exponential(
            base.min(max),
            max.min(base.saturating_mul(1 << 16)),
            Jitter::None,
        )
        .ok();
        Self {
            consecutive_failures,
            ejection,
        }
    }

    /// How long the ejection after `previous` ejections in a row lasts.
    pub fn ejection(&self, previous: u32) -> Duration {
        self.ejection.map_or(Duration::ZERO, |backoff| {
            backoff.ceiling(previous.saturating_add(1))
        })
    }
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self::new(3, Duration::from_secs(1), Duration::from_secs(30))
    }
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row without a success in between (drives the backoff).
    ejections: u32,
    /// A half-open probe is in flight: nothing else goes to this endpoint until it answers.
    probing: bool,
}

/// What [`Endpoint::record_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    Ejected { for_duration: Duration },
}

#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as dialled.
    pub authority: String,
    pending: AtomicUsize,
    health: Mutex<Health>,
    metrics: OnceLock<EndpointMetrics>,
}

impl Endpoint {
    pub fn new(authority: impl Into<String>) -> Self {
        Self {
            authority: authority.into(),
            pending: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
            metrics: OnceLock::new(),
        }
    }

    /// This endpoint's metric handles, labelled with `upstream` (its owner) on first use.
    pub(crate) fn metrics(&self, upstream: &str) -> &EndpointMetrics {
        self.metrics
            .get_or_init(|| EndpointMetrics::new(upstream, &self.authority))
    }

    /// Requests sent and not yet answered: the load estimate for power-of-two-choices.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request may be sent now (healthy, or ejection over and no probe in flight).
    pub fn selectable(&self, now: Instant) -> bool {
        let health = self.health();
        match health.ejected_until {
            None => true,
            Some(until) => now >= until && !health.probing,
        }
    }

    /// Marks a request as sent. After an ejection this request is the half-open probe.
    pub fn begin(&self, now: Instant) -> InFlight<'_> {
        {
            let mut health = self.health();
            if health.ejected_until.is_some_and(|until| now >= until) {
                health.probing = true;
            }
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: self }
    }

    pub fn record_success(&self) {
        let mut health = self.health();
        *health = Health::default();
    }

    pub fn record_failure(&self, now: Instant, policy: &EjectionPolicy) -> FailureOutcome {
        let mut health = self.health();
        health.consecutive_failures += 1;
        let failed_probe = health.probing;
        if failed_probe || health.consecutive_failures >= policy.consecutive_failures {
            let for_duration = policy.ejection(health.ejections);
            health.ejected_until = Some(now + for_duration);
            health.ejections += 1;
            health.probing = false;
            health.consecutive_failures = 0;
            FailureOutcome::Ejected { for_duration }
        } else {
            FailureOutcome::Counted
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health().ejected_until.is_some_and(|until| now < until)
    }
}

/// Decrements the pending count when the request is answered (or abandoned).
pub struct InFlight<'a> {
    endpoint: &'a Endpoint,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct random candidates, the less loaded wins.
pub fn pick_two<'a, R: rand::Rng>(
    candidates: &[&'a Endpoint],
    rng: &mut R,
) -> Option<&'a Endpoint> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let first = rng.gen_range(0..n);
            let mut second = rng.gen_range(0..n - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (candidates[first], candidates[second]);
            Some(if b.pending() < a.pending() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EjectionPolicy {
        EjectionPolicy::new(2, Duration::from_secs(1), Duration::from_secs(4))
    }

    #[test]
    fn ejects_after_consecutive_failures_and_probes_once() {
        let endpoint = Endpoint::new("a:1");
        let now = Instant::now();
        assert_eq!(
            endpoint.record_failure(now, &policy()),
            FailureOutcome::Counted
        );
        assert_eq!(
            endpoint.record_failure(now, &policy()),
            FailureOutcome::Ejected {
                for_duration: Duration::from_secs(1)
            }
        );
        assert!(!endpoint.selectable(now));
        let later = now + Duration::from_secs(1);
        assert!(endpoint.selectable(later), "half-open");
        let probe = endpoint.begin(later);
        assert!(!endpoint.selectable(later), "one probe at a time");
        drop(probe);
        // A failed probe ejects again, for twice as long.
        assert_eq!(
            endpoint.record_failure(later, &policy()),
            FailureOutcome::Ejected {
                for_duration: Duration::from_secs(2)
            }
        );
        let much_later = later + Duration::from_secs(2);
        let _probe = endpoint.begin(much_later);
        endpoint.record_success();
        assert!(endpoint.selectable(much_later), "healthy again");
        assert!(!endpoint.is_ejected(much_later));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let endpoint = Endpoint::new("a:1");
        let now = Instant::now();
        endpoint.record_failure(now, &policy());
        endpoint.record_success();
        assert_eq!(
            endpoint.record_failure(now, &policy()),
            FailureOutcome::Counted
        );
    }

    #[test]
    fn ejection_time_is_capped() {
        let endpoint = Endpoint::new("a:1");
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..6 {
            endpoint.record_failure(now, &policy());
            if let FailureOutcome::Ejected { for_duration } =
                endpoint.record_failure(now, &policy())
            {
                last = for_duration;
            }
            now += Duration::from_secs(10);
        }
        assert_eq!(last, Duration::from_secs(4));
    }

    #[test]
    fn power_of_two_choices_prefers_the_less_loaded() {
        let idle = Endpoint::new("idle:1");
        let busy = Endpoint::new("busy:1");
        let now = Instant::now();
        let _load: Vec<_> = (0..5).map(|_| busy.begin(now)).collect();
        let mut rng = rand::thread_rng();
        for _ in 0..50 {
            let chosen = pick_two(&[&busy, &idle], &mut rng).unwrap();
            assert_eq!(chosen.authority, "idle:1");
        }
        assert!(pick_two(&[], &mut rng).is_none());
        assert_eq!(pick_two(&[&busy], &mut rng).unwrap().authority, "busy:1");
    }
}
