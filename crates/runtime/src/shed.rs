//! A process-wide concurrency limit that sheds load instead of queueing, with a share per
//! client address, and the overload signal readiness reports.
//!
//! tower's `ConcurrencyLimit` waits for a permit (a hang under overload) and its `LoadShed` ends
//! the call with a transport error; callers deserve a gRPC status they can act on, so this layer
//! answers `RESOURCE_EXHAUSTED` (with `retry-after`) at once when every permit is taken, or when
//! the caller's address already has its share of them in flight (so one address cannot take the
//! whole limit). Health checks are never shed: an overloaded instance is still alive, and probes
//! must say so.
//!
//! Calls shed at the global limit mark the process [`Load::overloaded`] for a second, which
//! `/readyz` and gRPC health report, so an orchestrator can move traffic elsewhere. Calls shed
//! at the per-address cap do not: one client's excess is not the process's overload.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::error::ServiceError;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// How long after the last call shed at the global limit the process still reports itself
/// overloaded.
pub const OVERLOAD_WINDOW: Duration = Duration::from_secs(1);

/// What a shed caller is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where a call counts for the per-address cap, put in the request's extensions by the server
/// layers (`runtime::server`, from the resolved client address): `None` for callers exempt from
/// it (trusted proxies' own calls). Calls without it are counted only globally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressKey(pub Option<IpAddr>);

/// Whether the process is shedding calls at its global limit; clones share the state.
#[derive(Debug, Clone)]
pub struct Load(Arc<LoadState>);

#[derive(Debug)]
struct LoadState {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last call shed at the global limit, plus one (0: none).
    last_shed: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self(Arc::new(LoadState {
            epoch: Instant::now(),
            last_shed: AtomicU64::new(0),
        }))
    }
}

impl Load {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A call was just shed at the global limit.
    pub fn record_shed(&self) {
        self.0
            .last_shed
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
    }

    /// Whether a call was shed at the global limit within the last [`OVERLOAD_WINDOW`].
    pub fn overloaded(&self) -> bool {
        let last = self.0.last_shed.load(Ordering::Relaxed);
        last != 0
            && self.now_ms().saturating_add(1).saturating_sub(last)
                < u64::try_from(OVERLOAD_WINDOW.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Calls in flight by client address. An address's entry is removed when its count drops to
/// zero, so the map holds only addresses with calls in flight.
#[derive(Debug, Clone)]
struct PerAddress {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One call counted for its address; uncounts it when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerAddress {
    fn acquire(&self, key: IpAddr) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.counts.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    per_address: PerAddress,
    load: Load,
}

impl LoadShedLayer {
    /// At most `limit` calls in flight, and no per-address cap.
    pub fn new(limit: usize) -> Self {
        Self::with_per_address(limit, limit)
    }

    /// At most `limit` calls in flight, at most `per_address` of them from one address.
    pub fn with_per_address(limit: usize, per_address: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            per_address: PerAddress {
                max: per_address.max(1),
                counts: Arc::default(),
            },
            load: Load::default(),
        }
    }

    /// The overload signal of this limit (for readiness).
    pub fn load(&self) -> Load {
        self.load.clone()
    }

    /// Addresses with calls in flight (tests check the map shrinks back).
    pub fn addresses_in_flight(&self) -> usize {
        self.per_address
            .counts
            .lock()
            .map(|counts| counts.len())
            .unwrap_or_default()
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.permits.clone(),
            per_address: self.per_address.clone(),
            load: self.load.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    per_address: PerAddress,
    load: Load,
}

fn shed<B>(reason: &'static str, message: &str) -> http::Response<B>
where
    B: Default,
{
    metrics::counter!("grpc_server_shed_total", "reason" => reason).increment(1);
    tonic::Status::from(ServiceError::ResourceExhausted {
        message: message.to_owned(),
        retry_after: Some(RETRY_AFTER),
    })
    .into_http()
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LoadShed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        // The address's share first: one client at its cap must not use up global permits (nor
        // make the process look overloaded).
        let key = request
            .extensions()
            .get::<AddressKey>()
            .and_then(|key| key.0);
        let slot = match key.map(|key| self.per_address.acquire(key)) {
            Some(None) => {
                return Box::pin(std::future::ready(Ok(shed(
                    "address",
                    "too many calls in flight from this address; retry with backoff",
                ))));
            }
            Some(Some(slot)) => Some(slot),
            None => None,
        };
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let future = self.inner.call(request);
                Box::pin(async move {
                    let response = future.await;
                    drop(permit);
                    drop(slot);
                    response
                })
            }
            Err(_) => {
                self.load.record_shed();
                Box::pin(std::future::ready(Ok(shed(
                    "limit",
                    "server is at its concurrency limit; retry with backoff",
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    fn request(key: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder()
            .uri("/storemesh.test.v1.Test/Call")
            .body(())
            .unwrap_or_default();
        if let Some(key) = key {
            request
                .extensions_mut()
                .insert(AddressKey(key.parse().ok()));
        }
        request
    }

    #[tokio::test]
    async fn one_address_gets_its_share_and_the_map_empties_again() {
        let layer = LoadShedLayer::with_per_address(4, 2);
        let release = Arc::new(tokio::sync::Notify::new());
        let service = layer.layer(tower::service_fn({
            let release = release.clone();
            move |_: http::Request<()>| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok::<_, Infallible>(http::Response::new(String::new()))
                }
            }
        }));
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::spawn(
                service.clone().oneshot(request(Some("192.0.2.1"))),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = service
            .clone()
            .oneshot(request(Some("192.0.2.1")))
            .await
            .unwrap_or_default();
        assert_eq!(
            refused.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"8"[..])
        );
        assert_eq!(
            refused.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert!(!layer.load().overloaded(), "one address is not overload");
        // Another address still gets a permit.
        let other = tokio::spawn(service.clone().oneshot(request(Some("192.0.2.2"))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(layer.addresses_in_flight(), 2);
        release.notify_waiters();
        for call in held {
            let answered = call.await.map(|r| r.is_ok()).unwrap_or_default();
            assert!(answered);
        }
        assert!(other.await.map(|r| r.is_ok()).unwrap_or_default());
        assert_eq!(layer.addresses_in_flight(), 0, "per-address state is freed");
    }

    #[tokio::test]
    async fn shedding_at_the_global_limit_marks_the_process_overloaded() {
        let layer = LoadShedLayer::new(1);
        let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
        let _held = tokio::spawn(service.clone().oneshot(request(None)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!layer.load().overloaded());
        let refused = service
            .clone()
            .oneshot(request(None))
            .await
            .unwrap_or_default();
        assert_eq!(
            refused.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"8"[..])
        );
        assert!(layer.load().overloaded());
    }
}
