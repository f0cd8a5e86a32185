//! The delivery engine: its loops, all owned by [`Engine::run`], one module each:
//!
//! - [`read`]: the consumer-group reader of the event stream (new entries, each delivered to
//!   the targets its rules name and acknowledged with its follow-ups);
//! - [`retry`]: the poller of due retries;
//! - [`claim`]: the claimer of abandoned work (this consumer's own entries after a restart,
//!   `XAUTOCLAIM` of another instance's, lease renewal, forgetting stopped consumers);
//! - [`gauges`]: the DLQ, retry and consumer-lag gauges;
//! - [`schedule`]: one loop per scheduled trigger (the reconciler).
//!
//! [`deliver`] holds what the reader and the retry poller share: one delivery attempt and its
//! decision.
//!
//! Every piece of work (a stream entry, a due retry) runs as a task in a `JoinSet` owned by
//! its loop, so dropping the engine's future (a crash, in tests) stops everything at once and
//! leaves the work pending in Redis, where another instance takes it over. See [`crate::store`]
//! for why nothing is lost.

mod claim;
mod deliver;
mod gauges;
mod read;
mod retry;
mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use storemesh_runtime::shutdown::Shutdown;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::DispatcherConfig;
use crate::plan::SchedulePlan;
use crate::reconciler::Reconciler;
use crate::routing::RouteTable;
use crate::store::{CLAIM_DUE, CLAIM_FIRING, FINISH, RELEASE_LOCK};
use crate::target::Target;

/// A running dispatcher's moving parts.
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: DispatcherConfig,
    /// Short commands.
    pub(crate) redis: ConnectionManager,
    /// Blocking stream reads only, so they never hold up other commands.
    pub(crate) reader: ConnectionManager,
    pub(crate) block_ms: usize,
    pub(crate) routes: RouteTable,
    pub(crate) targets: BTreeMap<String, Arc<Target>>,
    pub(crate) consumer: String,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) schedules: Vec<SchedulePlan>,
    pub(crate) reconciler: Option<Arc<Reconciler>>,
    /// Stream entry ids and retry members being worked on here (their leases are renewed).
    active_entries: Mutex<HashSet<String>>,
    active_tasks: Mutex<HashSet<String>>,
    claim_due: redis::Script,
    finish: redis::Script,
    claim_firing: redis::Script,
    release_lock: redis::Script,
}

impl Inner {
    /// The trim of every append to the dead-letter stream: about `dlq_max_entries`.
    pub(crate) fn dlq_cap(&self) -> redis::streams::StreamMaxlen {
        redis::streams::StreamMaxlen::Approx(
            usize::try_from(self.config.dlq_max_entries).unwrap_or(usize::MAX),
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: DispatcherConfig,
        redis: ConnectionManager,
        reader: ConnectionManager,
        block_ms: usize,
        routes: RouteTable,
        targets: BTreeMap<String, Arc<Target>>,
        consumer: String,
        schedules: Vec<SchedulePlan>,
        reconciler: Option<Arc<Reconciler>>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        Self {
            inner: Arc::new(Inner {
                config,
                redis,
                reader,
                block_ms,
                routes,
                targets,
                consumer,
                in_flight,
                schedules,
                reconciler,
                active_entries: Mutex::new(HashSet::new()),
                active_tasks: Mutex::new(HashSet::new()),
                claim_due: redis::Script::new(CLAIM_DUE),
                finish: redis::Script::new(FINISH),
                claim_firing: redis::Script::new(CLAIM_FIRING),
                release_lock: redis::Script::new(RELEASE_LOCK),
            }),
        }
    }

    /// This instance's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// Runs until `stop`, then lets work in flight finish for up to `server.shutdown_grace_ms`;
    /// what is still running then is left pending (never half-acknowledged) for another
    /// instance.
    pub async fn run(self, stop: Shutdown) {
        let inner = self.inner;
        tracing::info!(
            consumer = %inner.consumer,
            stream = %inner.config.stream,
            group = %inner.config.group,
            targets = ?inner.targets.keys().collect::<Vec<_>>(),
            "dispatcher started"
        );
        let schedules = futures::future::join_all(
            (0..inner.schedules.len())
                .map(|index| inner.clone().schedule_loop(index, stop.clone())),
        );
        tokio::join!(
            inner.clone().read_loop(stop.clone()),
            inner.clone().retry_loop(stop.clone()),
            inner.clone().claim_loop(stop.clone()),
            inner.clone().gauge_loop(stop.clone()),
            schedules,
        );
        tracing::info!(consumer = %inner.consumer, "dispatcher stopped");
    }
}

impl Inner {
    fn grace(&self) -> Duration {
        Duration::from_millis(self.config.server.shutdown_grace_ms)
    }

    /// Waits for the tasks of a stopping loop, up to the grace period.
    async fn drain(&self, mut tasks: JoinSet<()>, what: &str) {
        if tasks.is_empty() {
            return;
        }
        let left = tasks.len();
        let drained = tokio::time::timeout(self.grace(), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                of = left,
                what,
                "grace period over; leaving the rest pending for another instance"
            );
        }
    }

    async fn permit(&self, stop: &Shutdown) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            permit = self.in_flight.clone().acquire_owned() => permit.ok(),
            () = stop.wait() => None,
        }
    }
}
