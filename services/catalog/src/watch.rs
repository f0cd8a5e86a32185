//! `WatchProduct`: change fan-out from Redis pub/sub to server streams.
//!
//! Every commit that changes a product or one of its images increments the product's change
//! counter (`catalog:product:{id}:changes`) and publishes `{counter}:{encoded change}` on
//! `catalog:watch:{id}`, inside the same Lua script, so the counter order is the commit order.
//!
//! Each catalog process has one [`Hub`]: a single pub/sub connection pattern-subscribed to
//! `catalog:watch:*` that hands every message to the local watchers of that product through a
//! bounded channel each. One connection per process instead of one per stream keeps Redis's
//! connection count flat; the price is that every instance sees every change, which is small
//! next to the read traffic.
//!
//! A stream registers with the hub *before* it reads its snapshot (product, images and change
//! counter in one atomic script); live changes numbered at or below the snapshot's counter are
//! already in the snapshot and skipped, so nothing is missed or repeated. A gap in the numbers
//! means the feed lost messages: the stream ends with `UNAVAILABLE`.
//!
//! The hub never waits for a watcher: when a watcher's channel is full (the client reads too
//! slowly), the hub drops it and its stream ends with `ABORTED` after the buffered changes.
//! When the pub/sub connection breaks, every stream ends with `UNAVAILABLE` and the hub
//! reconnects with backoff. A stream whose client went away is dropped by tonic, which
//! unregisters it.
//!
//! Each identity (token subject) may hold at most `max_per_identity` subscriptions on one
//! process: each one pins a buffer, so one caller opening streams without end would otherwise
//! exhaust memory. The count is per process, not Redis-wide: it lives with the buffers it
//! protects, and is released exactly when a subscription is dropped (the stream ended, or the
//! client went away), without a Redis round trip or a lease that a crash could leak.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use storemesh_runtime::backoff::{Backoff, Jitter};
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::{ServiceError, ServiceResult};
use tokio::sync::{mpsc, watch};

use crate::store::keys;

/// The wait before reconnecting the change feed after the n-th failure in a row: 100 ms,
/// doubling, at most 5 s.
const RECONNECT_BACKOFF: Backoff = match Backoff::exponential(
    Duration::from_millis(100),
    Duration::from_secs(5),
    Jitter::None,
) {
    Ok(backoff) => backoff,
    Err(_) => panic!("a valid backoff"),
};

/// One published change: its number in the product's change sequence and its encoded
/// `WatchProductResponse` (without `sequence`).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub change: u64,
    pub payload: Vec<u8>,
}

/// Why the hub ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The watcher's buffer was full: changes were dropped.
    Overflow,
    /// The pub/sub connection broke.
    FeedLost,
    ShuttingDown,
}

struct Watcher {
    id: u64,
    sender: mpsc::Sender<Delivery>,
    ended: Arc<OnceLock<EndReason>>,
}

#[derive(Default)]
struct Registry {
    connected: bool,
    watchers: HashMap<String, Vec<Watcher>>,
    /// Live subscriptions per identity (entries removed at zero, so the map stays bounded by
    /// the identities watching right now).
    per_identity: HashMap<String, usize>,
}

pub struct Hub {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    connected: watch::Sender<bool>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            connected: watch::channel(false).0,
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: every update is one step.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Streams currently registered.
    pub fn active(&self) -> usize {
        self.registry().watchers.values().map(Vec::len).sum()
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the pub/sub connection is up, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut receiver = self.connected.subscribe();
        tokio::time::timeout(timeout, receiver.wait_for(|up| *up))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Live subscriptions of `identity`.
    pub fn active_for(&self, identity: &str) -> usize {
        self.registry()
            .per_identity
            .get(identity)
            .copied()
            .unwrap_or(0)
    }

    /// Registers a watcher of `product_id` for `identity` with room for `buffer` undelivered
    /// changes; `RESOURCE_EXHAUSTED` when `identity` already holds `max_per_identity`.
    pub fn subscribe(
        self: &Arc<Self>,
        product_id: &str,
        buffer: usize,
        identity: &str,
        max_per_identity: usize,
    ) -> ServiceResult<Subscription> {
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let ended = Arc::new(OnceLock::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut registry = self.registry();
            if !registry.connected {
                return Err(ServiceError::Unavailable(
                    "the change feed is unavailable; retry with backoff".into(),
                ));
            }
            let held = registry.per_identity.get(identity).copied().unwrap_or(0);
            if held >= max_per_identity {
                return Err(ServiceError::ResourceExhausted {
                    message: format!(
                        "this caller already has {held} WatchProduct streams open, the most allowed (catalog.max_watch_streams_per_identity); close one first"
                    ),
                    retry_after: None,
                });
            }
            *registry
                .per_identity
                .entry(identity.to_owned())
                .or_default() += 1;
            registry
                .watchers
                .entry(product_id.to_owned())
                .or_default()
                .push(Watcher {
                    id,
                    sender,
                    ended: ended.clone(),
                });
        }
        metrics::gauge!("catalog_watch_streams").increment(1.0);
        Ok(Subscription {
            hub: self.clone(),
            product_id: product_id.to_owned(),
            identity: identity.to_owned(),
            id,
            receiver,
            ended,
        })
    }

    fn unregister(&self, product_id: &str, id: u64, identity: &str) {
        let mut registry = self.registry();
        if let Some(held) = registry.per_identity.get_mut(identity) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                registry.per_identity.remove(identity);
            }
        }
        if let Some(list) = registry.watchers.get_mut(product_id) {
            list.retain(|watcher| watcher.id != id);
            if list.is_empty() {
                registry.watchers.remove(product_id);
            }
        }
    }

    /// Hands a change to every watcher of the product, never waiting.
    fn dispatch(&self, product_id: &str, delivery: &Delivery) {
        let mut registry = self.registry();
        let Some(list) = registry.watchers.get_mut(product_id) else {
            return;
        };
        list.retain(|watcher| match watcher.sender.try_send(delivery.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let _ = watcher.ended.set(EndReason::Overflow);
                tracing::info!(product = %product_id, "watcher fell behind; ending its stream");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if list.is_empty() {
            registry.watchers.remove(product_id);
        }
    }

    fn set_connected(&self, up: bool, reason: EndReason) {
        let dropped = {
            let mut registry = self.registry();
            registry.connected = up;
            if up {
                Vec::new()
            } else {
                registry
                    .watchers
                    .drain()
                    .flat_map(|(_, list)| list)
                    .collect()
            }
        };
        for watcher in dropped {
            let _ = watcher.ended.set(reason);
        }
        self.connected.send_replace(up);
    }

    /// Keeps the pub/sub connection up and dispatches its messages until `stop`.
    pub async fn run(
        self: Arc<Self>,
        client: redis::Client,
        connect_timeout: Duration,
        stop: Shutdown,
    ) {
        // Failed or lost connections since the last good one.
        let mut failures: u32 = 0;
        loop {
            let connecting = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.psubscribe(keys::WATCH_PATTERN).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let connected = tokio::select! {
                result = tokio::time::timeout(connect_timeout, connecting) => result,
                () = stop.wait() => break,
            };
            match connected {
                Ok(Ok(pubsub)) => {
                    tracing::info!("change feed connected");
                    failures = 0;
                    self.set_connected(true, EndReason::FeedLost);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => self.handle(&message),
                                None => break,
                            },
                            () = stop.wait() => {
                                self.set_connected(false, EndReason::ShuttingDown);
                                return;
                            }
                        }
                    }
                    tracing::warn!("change feed disconnected; watch streams end with UNAVAILABLE");
                    self.set_connected(false, EndReason::FeedLost);
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot connect the change feed"),
                Err(_) => tracing::warn!("connecting the change feed timed out"),
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_BACKOFF.ceiling(failures)) => {}
                () = stop.wait() => break,
            }
        }
        self.set_connected(false, EndReason::ShuttingDown);
    }

    fn handle(&self, message: &redis::Msg) {
        let Some(product_id) = message.get_channel_name().strip_prefix(keys::WATCH_PREFIX) else {
            return;
        };
        let payload = message.get_payload_bytes();
        let Some(split) = payload.iter().position(|b| *b == b':') else {
            tracing::warn!(
                channel = message.get_channel_name(),
                "malformed change message"
            );
            return;
        };
        let change = std::str::from_utf8(&payload[..split])
            .ok()
            .and_then(|text| text.parse().ok());
        let Some(change) = change else {
            tracing::warn!(
                channel = message.get_channel_name(),
                "malformed change number"
            );
            return;
        };
        let delivery = Delivery {
            change,
            payload: payload[split + 1..].to_vec(),
        };
        self.dispatch(product_id, &delivery);
    }
}

/// A registered watcher; unregisters itself when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    product_id: String,
    /// Whose subscription this is: released from its per-identity count on drop.
    identity: String,
    id: u64,
    receiver: mpsc::Receiver<Delivery>,
    ended: Arc<OnceLock<EndReason>>,
}

impl Subscription {
    /// The next change; `Err` with the reason once the hub ended the subscription.
    pub async fn next(&mut self) -> Result<Delivery, EndReason> {
        match self.receiver.recv().await {
            Some(delivery) => Ok(delivery),
            None => Err(self.ended.get().copied().unwrap_or(EndReason::ShuttingDown)),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .unregister(&self.product_id, self.id, &self.identity);
        metrics::gauge!("catalog_watch_streams").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(change: u64) -> Delivery {
        Delivery {
            change,
            payload: vec![],
        }
    }

    #[tokio::test]
    async fn a_full_watcher_is_dropped_without_blocking_the_others() {
        let hub = Hub::new();
        assert!(hub.subscribe("p", 4, "u", 16).is_err(), "not connected yet");
        hub.set_connected(true, EndReason::FeedLost);
        let mut slow = hub.subscribe("p", 2, "u", 16).unwrap();
        let mut fast = hub.subscribe("p", 100, "u", 16).unwrap();
        let mut other = hub.subscribe("q", 1, "u", 16).unwrap();
        for change in 1..=10 {
            hub.dispatch("p", &delivery(change));
        }
        assert_eq!(hub.active(), 2, "the slow watcher is gone");
        for change in 1..=10 {
            assert_eq!(fast.next().await.unwrap().change, change);
        }
        assert_eq!(slow.next().await.unwrap().change, 1);
        assert_eq!(slow.next().await.unwrap().change, 2);
        assert_eq!(slow.next().await.unwrap_err(), EndReason::Overflow);

        hub.set_connected(false, EndReason::FeedLost);
        assert_eq!(other.next().await.unwrap_err(), EndReason::FeedLost);
        drop((slow, fast, other));
        assert_eq!(hub.active(), 0);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new();
        hub.set_connected(true, EndReason::FeedLost);
        let first = hub.subscribe("p", 1, "u", 16).unwrap();
        let second = hub.subscribe("p", 1, "u", 16).unwrap();
        assert_eq!(hub.active(), 2);
        drop(first);
        assert_eq!(hub.active(), 1);
        drop(second);
        assert_eq!(hub.active(), 0);
        assert!(hub.registry().watchers.is_empty());
        assert!(hub.registry().per_identity.is_empty());
    }

    #[tokio::test]
    async fn subscriptions_per_identity_are_capped_and_released_on_drop() {
        let hub = Hub::new();
        hub.set_connected(true, EndReason::FeedLost);
        let first = hub.subscribe("p", 1, "alice", 2).unwrap();
        let _second = hub.subscribe("q", 1, "alice", 2).unwrap();
        let refused = hub.subscribe("p", 1, "alice", 2).err().unwrap();
        assert!(
            matches!(refused, ServiceError::ResourceExhausted { .. }),
            "{refused:?}"
        );
        let _bob = hub.subscribe("p", 1, "bob", 2).unwrap();
        assert_eq!(hub.active_for("alice"), 2);
        // Ended by the hub (feed lost) but not dropped yet: still counted.
        hub.set_connected(false, EndReason::FeedLost);
        hub.set_connected(true, EndReason::FeedLost);
        assert_eq!(hub.active_for("alice"), 2);
        drop(first);
        assert_eq!(hub.active_for("alice"), 1);
        let _third = hub.subscribe("p", 1, "alice", 2).unwrap();
    }
}
