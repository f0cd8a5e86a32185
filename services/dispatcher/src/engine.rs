//! The delivery engine: the consumer-group reader, the retry poller, the claimer of abandoned
//! work, the gauges and the scheduler, all owned by [`Engine::run`].
//!
//! Every piece of work (a stream entry, a due retry) runs as a task in a `JoinSet` owned by
//! its loop, so dropping the engine's future (a crash, in tests) stops everything at once and
//! leaves the work pending in Redis, where another instance takes it over. See [`crate::store`]
//! for why nothing is lost.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use storemesh_proto::events::v1::Event;
use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::time::now_ms;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{DispatcherConfig, ScheduleConfig};
use crate::metrics;
use crate::reconciler::Reconciler;
use crate::retry::{DeadReason, Decision, too_old};
use crate::routing::{EventKind, RouteTable};
use crate::schedule::Schedule;
use crate::store::{CLAIM_DUE, CLAIM_FIRING, DeadLetter, FINISH, RELEASE_LOCK, RetryTask};
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
    pub(crate) schedules: Vec<(ScheduleConfig, Schedule)>,
    pub(crate) reconciler: Option<Arc<Reconciler>>,
    /// Stream entry ids and retry members being worked on here (their leases are renewed).
    active_entries: Mutex<HashSet<String>>,
    active_tasks: Mutex<HashSet<String>>,
    claim_due: redis::Script,
    finish: redis::Script,
    claim_firing: redis::Script,
    release_lock: redis::Script,
}

/// What happened to one event for one target.
struct Resolution {
    target: String,
    rule: String,
    decision: Decision,
    /// Attempts made so far (this one included, if it was made).
    attempts: u32,
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
        schedules: Vec<(ScheduleConfig, Schedule)>,
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

    // ---- the stream -------------------------------------------------------------------

    async fn read_loop(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = JoinSet::new();
        let mut failures: u32 = 0;
        while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let Some(first) = self.permit(&stop).await else {
                break;
            };
            let count = (self.in_flight.available_permits() + 1).min(self.config.batch_size);
            // Not raced with `stop`: the read ends within `block_ms`, and what it returned must
            // be handled (or it would wait for a claim).
            match self.read_new(count).await {
                Ok(entries) => {
                    failures = 0;
                    let mut first = Some(first);
                    for entry in entries {
                        let permit = match first.take() {
                            Some(permit) => permit,
                            None => match self.in_flight.clone().acquire_owned().await {
                                Ok(permit) => permit,
                                Err(_) => break,
                            },
                        };
                        self.spawn_entry(&mut tasks, entry, permit);
                    }
                }
                Err(error) => {
                    drop(first);
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, "cannot read the event stream");
                    if error.to_string().contains("NOGROUP") {
                        let _ = ensure_group(&self.redis, &self.config).await;
                    }
                    let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.wait() => break,
                    }
                }
            }
        }
        self.drain(tasks, "stream entries").await;
    }

    async fn read_new(&self, count: usize) -> redis::RedisResult<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.consumer)
            .count(count)
            .block(self.block_ms);
        let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
            &mut self.reader.clone(),
            &[&self.config.stream],
            &[">"],
            &options,
        )
        .await?;
        Ok(reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default())
    }

    fn spawn_entry(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        entry: StreamId,
        permit: OwnedSemaphorePermit,
    ) {
        if !lock(&self.active_entries).insert(entry.id.clone()) {
            return; // already being handled here (claimed again while in flight)
        }
        let this = self.clone();
        tasks.spawn(async move {
            let id = entry.id.clone();
            if let Err(error) = this.process_entry(&entry).await {
                // Left pending: it is claimed again after `claim_idle_ms`.
                tracing::warn!(%error, entry = %id, "cannot record the outcome of an event; it will be delivered again");
            }
            lock(&this.active_entries).remove(&id);
            drop(permit);
        });
    }

    /// Delivers one stream entry to every target its rules name, then records each outcome and
    /// acknowledges the entry in one `MULTI`.
    async fn process_entry(&self, entry: &StreamId) -> redis::RedisResult<()> {
        let encoded: Vec<u8> = entry.get("event").unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        match Event::decode(encoded.as_slice()) {
            Ok(event) if !event.id.is_empty() => {
                let kind = EventKind::from_proto(event.r#type());
                let targets: Vec<String> = kind
                    .map(|kind| self.routes.targets_for(kind, &event.subject))
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                if targets.is_empty() {
                    ::metrics::counter!(metrics::EVENTS_IGNORED_TOTAL).increment(1);
                    tracing::debug!(event = %event.id, key = %event.subject, "no rule matches; acknowledged");
                }
                let first_attempt_ms = now_ms();
                let resolutions = futures::future::join_all(targets.iter().map(|target| {
                    let rule = kind
                        .and_then(|kind| self.routes.rule_for(kind, &event.subject, target))
                        .unwrap_or_default()
                        .to_owned();
                    self.attempt(target, rule, &event, 1, first_attempt_ms, false)
                }))
                .await;
                for resolution in resolutions {
                    self.record(
                        &mut pipe,
                        &resolution,
                        &event,
                        &encoded,
                        first_attempt_ms,
                        false,
                        &entry.id,
                    );
                }
            }
            _ => {
                let text = |name: &str| entry.get::<String>(name).unwrap_or_default();
                let letter = DeadLetter {
                    id: String::new(),
                    event: encoded.clone(),
                    event_id: text("id"),
                    event_type: text("type"),
                    key: text("key"),
                    target: String::new(),
                    rule: String::new(),
                    reason: DeadReason::Undecodable.as_str().into(),
                    attempts: 0,
                    last_error: "the entry's `event` field is missing or not a storemesh.events.v1.Event with an id".into(),
                    first_attempt_ms: now_ms(),
                    failed_ms: now_ms(),
                    source_entry: entry.id.clone(),
                };
                tracing::error!(entry = %entry.id, "undecodable stream entry dead-lettered");
                metrics::delivered("-", "dead_letter");
                pipe.xadd(&self.config.dlq_stream, "*", &letter.fields())
                    .ignore();
            }
        }
        pipe.xack(&self.config.stream, &self.config.group, &[&entry.id])
            .ignore();
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// Adds the follow-up of a resolution (a retry or a dead letter) to `pipe`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        pipe: &mut redis::Pipeline,
        resolution: &Resolution,
        event: &Event,
        encoded: &[u8],
        first_attempt_ms: i64,
        replay: bool,
        source_entry: &str,
    ) {
        match &resolution.decision {
            Decision::Done => {}
            Decision::Retry { delay, error } => {
                let task = RetryTask {
                    target: resolution.target.clone(),
                    rule: resolution.rule.clone(),
                    attempt: resolution.attempts + 1,
                    first_attempt_ms,
                    last_error: error.clone(),
                    replay,
                    event: RetryTask::encode_event(encoded),
                };
                let due = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                pipe.zadd(&self.config.retry_key, task.member(), due)
                    .ignore();
            }
            Decision::DeadLetter { reason, error } => {
                let mut letter = DeadLetter::for_event(
                    event,
                    encoded,
                    &resolution.target,
                    &resolution.rule,
                    *reason,
                );
                letter.attempts = resolution.attempts;
                letter.last_error = error.clone();
                letter.first_attempt_ms = first_attempt_ms;
                letter.source_entry = source_entry.to_owned();
                pipe.xadd(&self.config.dlq_stream, "*", &letter.fields())
                    .ignore();
            }
        }
    }

    /// One attempt (number `attempt`) to deliver `event` to `target_name`, and its decision.
    async fn attempt(
        &self,
        target_name: &str,
        rule: String,
        event: &Event,
        attempt: u32,
        first_attempt_ms: i64,
        replay: bool,
    ) -> Resolution {
        let resolution = |decision, attempts| Resolution {
            target: target_name.to_owned(),
            rule: rule.clone(),
            decision,
            attempts,
        };
        let Some(target) = self.targets.get(target_name) else {
            metrics::delivered(target_name, "dead_letter");
            return resolution(
                Decision::DeadLetter {
                    reason: DeadReason::UnknownTarget,
                    error: format!("no target named {target_name} is configured"),
                },
                attempt - 1,
            );
        };
        // Without a commit time (not a storage event) the age is unknown: no age limit.
        let event_ms = event
            .time
            .as_ref()
            .map(|time| time.seconds.saturating_mul(1_000) + i64::from(time.nanos / 1_000_000));
        let max_age = Duration::from_secs(self.config.max_event_age_secs);
        if let Some(event_ms) = event_ms
            && !replay
            && too_old(event_ms, now_ms(), max_age)
        {
            metrics::delivered(target_name, "dead_letter");
            tracing::warn!(event = %event.id, target = target_name, "event older than max_event_age_secs dead-lettered");
            return resolution(
                Decision::DeadLetter {
                    reason: DeadReason::MaxEventAge,
                    error: format!(
                        "the event was committed {} s ago, more than max_event_age_secs = {}",
                        (now_ms() - event_ms) / 1_000,
                        self.config.max_event_age_secs
                    ),
                },
                attempt - 1,
            );
        }
        let Ok(_permit) = target.permits.acquire().await else {
            return resolution(
                Decision::Retry {
                    delay: target.policy.initial_backoff,
                    error: "the target is shutting down".into(),
                },
                attempt - 1,
            );
        };
        let started = Instant::now();
        let result = target.deliver(event, attempt, first_attempt_ms).await;
        ::metrics::histogram!(metrics::DELIVERY_DURATION_SECONDS, "target" => target_name.to_owned())
            .record(started.elapsed().as_secs_f64());
        let decision = target.policy.decide(attempt, result, rand::random::<f64>());
        match &decision {
            Decision::Done => {
                metrics::delivered(target_name, "success");
                if let Some(event_ms) = event_ms {
                    let age = (now_ms() - event_ms).max(0) as f64 / 1_000.0;
                    ::metrics::histogram!(metrics::EVENT_AGE_SECONDS, "target" => target_name.to_owned())
                        .record(age);
                }
                tracing::debug!(event = %event.id, target = target_name, attempt, "delivered");
            }
            Decision::Retry { delay, error } => {
                metrics::delivered(target_name, "retry");
                ::metrics::counter!(metrics::RETRIES_TOTAL, "target" => target_name.to_owned())
                    .increment(1);
                tracing::info!(event = %event.id, target = target_name, attempt, delay_ms = delay.as_millis() as u64, %error, "delivery failed; retry scheduled");
            }
            Decision::DeadLetter { reason, error } => {
                metrics::delivered(target_name, "dead_letter");
                tracing::warn!(event = %event.id, key = %event.subject, target = target_name, attempt, reason = reason.as_str(), %error, "event dead-lettered");
            }
        }
        resolution(decision, attempt)
    }

    // ---- retries ----------------------------------------------------------------------

    async fn retry_loop(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = JoinSet::new();
        let poll = Duration::from_millis(self.config.retry_poll_ms);
        while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            let available = self
                .in_flight
                .available_permits()
                .min(self.config.batch_size);
            if available > 0 {
                match self.claim_due(available).await {
                    Ok(members) => {
                        let mut unstarted = Vec::new();
                        for member in members {
                            match self.in_flight.clone().try_acquire_owned() {
                                Ok(permit) => self.spawn_task(&mut tasks, member, permit),
                                Err(_) => unstarted.push(member),
                            }
                        }
                        // Stream entries took the capacity meanwhile: make these due again
                        // now rather than after their lease.
                        if !unstarted.is_empty() {
                            let mut pipe = redis::pipe();
                            for member in &unstarted {
                                pipe.cmd("ZADD")
                                    .arg(&self.config.retry_key)
                                    .arg("XX")
                                    .arg(now_ms())
                                    .arg(member)
                                    .ignore();
                            }
                            if let Err(error) =
                                pipe.query_async::<()>(&mut self.redis.clone()).await
                            {
                                tracing::debug!(%error, "cannot hand back unstarted retries; their lease brings them back");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read due retries"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = stop.wait() => break,
            }
        }
        self.drain(tasks, "retries").await;
    }

    async fn claim_due(&self, count: usize) -> redis::RedisResult<Vec<String>> {
        let now = now_ms();
        let lease = i64::try_from(self.config.claim_idle_ms).unwrap_or(i64::MAX / 4);
        self.claim_due
            .key(&self.config.retry_key)
            .arg(now)
            .arg(count)
            .arg(now + lease)
            .invoke_async(&mut self.redis.clone())
            .await
    }

    fn spawn_task(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        member: String,
        permit: OwnedSemaphorePermit,
    ) {
        if !lock(&self.active_tasks).insert(member.clone()) {
            return;
        }
        let this = self.clone();
        tasks.spawn(async move {
            if let Err(error) = this.process_task(&member).await {
                tracing::warn!(%error, "cannot record the outcome of a retry; it runs again when its lease ends");
            }
            lock(&this.active_tasks).remove(&member);
            drop(permit);
        });
    }

    async fn process_task(&self, member: &str) -> redis::RedisResult<()> {
        let finish = |mode: &str| {
            let mut invocation = self.finish.prepare_invoke();
            invocation
                .key(&self.config.retry_key)
                .key(&self.config.dlq_stream)
                .arg(member)
                .arg(mode);
            invocation
        };
        let Some(task) = RetryTask::parse(member) else {
            tracing::error!(member, "unreadable retry entry dropped");
            return finish("done")
                .arg("")
                .arg(0)
                .invoke_async::<i64>(&mut self.redis.clone())
                .await
                .map(drop);
        };
        let encoded = task.encoded_event().unwrap_or_default();
        let Ok(event) = Event::decode(encoded.as_slice()) else {
            let letter = DeadLetter {
                id: String::new(),
                event: encoded,
                event_id: String::new(),
                event_type: String::new(),
                key: String::new(),
                target: task.target.clone(),
                rule: task.rule.clone(),
                reason: DeadReason::Undecodable.as_str().into(),
                attempts: task.attempt - 1,
                last_error: "the retry holds no decodable event".into(),
                first_attempt_ms: task.first_attempt_ms,
                failed_ms: now_ms(),
                source_entry: String::new(),
            };
            let mut invocation = finish("dead");
            invocation.arg("").arg(0);
            for value in letter.flat_fields() {
                invocation.arg(value);
            }
            return invocation
                .invoke_async::<i64>(&mut self.redis.clone())
                .await
                .map(drop);
        };
        let resolution = self
            .attempt(
                &task.target,
                task.rule.clone(),
                &event,
                task.attempt,
                task.first_attempt_ms,
                task.replay,
            )
            .await;
        let mut invocation;
        match &resolution.decision {
            Decision::Done => {
                invocation = finish("done");
                invocation.arg("").arg(0);
            }
            Decision::Retry { delay, error } => {
                let next = RetryTask {
                    attempt: resolution.attempts + 1,
                    last_error: error.clone(),
                    ..task.clone()
                };
                let due = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                invocation = finish("retry");
                invocation.arg(next.member()).arg(due);
            }
            Decision::DeadLetter { reason, error } => {
                let mut letter =
                    DeadLetter::for_event(&event, &encoded, &task.target, &task.rule, *reason);
                letter.attempts = resolution.attempts;
                letter.last_error = error.clone();
                letter.first_attempt_ms = task.first_attempt_ms;
                invocation = finish("dead");
                invocation.arg("").arg(0);
                for value in letter.flat_fields() {
                    invocation.arg(value);
                }
            }
        }
        let finished: i64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        if finished == 0 {
            tracing::info!(event = %event.id, target = %task.target, "retry already finished by another instance");
        }
        Ok(())
    }

    // ---- abandoned work -----------------------------------------------------------------

    async fn claim_loop(self: Arc<Self>, stop: Shutdown) {
        let mut tasks = JoinSet::new();
        let interval = Duration::from_millis(self.config.claim_interval_ms);
        // With a stable consumer name (`dispatcher.consumer`), a restarted instance resumes
        // what it had read before it died at once instead of after `claim_idle_ms`.
        match self.own_pending().await {
            Ok(entries) => {
                if !entries.is_empty() {
                    tracing::info!(
                        count = entries.len(),
                        "resuming events read before a restart"
                    );
                }
                for entry in entries {
                    let Some(permit) = self.permit(&stop).await else {
                        break;
                    };
                    self.spawn_entry(&mut tasks, entry, permit);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read this consumer's pending events"),
        }
        let mut rounds: u64 = 0;
        while !stop.is_triggered() {
            while tasks.try_join_next().is_some() {}
            // About once a minute: forget consumers of stopped instances.
            if rounds.is_multiple_of((60_000 / self.config.claim_interval_ms).max(1))
                && let Err(error) = self.forget_stopped_consumers().await
            {
                tracing::debug!(%error, "cannot list the group's consumers");
            }
            rounds += 1;
            if let Err(error) = self.renew_leases().await {
                tracing::warn!(%error, "cannot renew the leases of work in flight");
            }
            match self.autoclaim().await {
                Ok(entries) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            count = entries.len(),
                            "took over events abandoned by another instance"
                        );
                    }
                    for entry in entries {
                        let Some(permit) = self.permit(&stop).await else {
                            break;
                        };
                        self.spawn_entry(&mut tasks, entry, permit);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot claim abandoned events"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.wait() => break,
            }
        }
        self.drain(tasks, "claimed entries").await;
    }

    /// Work in flight here must not look abandoned: reset the idle time of the stream entries
    /// (`XCLAIM … JUSTID` to ourselves) and push the retries' leases forward.
    async fn renew_leases(&self) -> redis::RedisResult<()> {
        let entries: Vec<String> = lock(&self.active_entries).iter().cloned().collect();
        let tasks: Vec<String> = lock(&self.active_tasks).iter().cloned().collect();
        if entries.is_empty() && tasks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if !entries.is_empty() {
            pipe.cmd("XCLAIM")
                .arg(&self.config.stream)
                .arg(&self.config.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&entries)
                .arg("JUSTID")
                .ignore();
        }
        let lease_end = now_ms() + i64::try_from(self.config.claim_idle_ms).unwrap_or(i64::MAX / 4);
        for member in &tasks {
            pipe.cmd("ZADD")
                .arg(&self.config.retry_key)
                .arg("XX")
                .arg(lease_end)
                .arg(member)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await
    }

    /// Removes consumers with nothing pending that have been idle for
    /// `forget_consumers_after_ms` (stopped instances). Nothing is lost: a consumer with
    /// pending entries is kept until they are claimed, and a live consumer that reads again is
    /// recreated by Redis.
    pub(crate) async fn forget_stopped_consumers(&self) -> redis::RedisResult<i64> {
        // One script, so a consumer cannot read something between the check and the delete.
        let forgotten: i64 = redis::Script::new(crate::store::FORGET_CONSUMERS)
            .key(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.consumer)
            .arg(self.config.forget_consumers_after_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if forgotten > 0 {
            tracing::info!(forgotten, "forgot the consumers of stopped instances");
        }
        Ok(forgotten)
    }

    /// Entries this consumer read earlier and never acknowledged (its pending list).
    async fn own_pending(&self) -> redis::RedisResult<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.consumer)
            .count(self.config.max_in_flight);
        let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
            &mut self.redis.clone(),
            &[&self.config.stream],
            &["0"],
            &options,
        )
        .await?;
        Ok(reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default())
    }

    async fn autoclaim(&self) -> redis::RedisResult<Vec<StreamId>> {
        let reply: redis::streams::StreamAutoClaimReply = redis::AsyncCommands::xautoclaim_options(
            &mut self.redis.clone(),
            &self.config.stream,
            &self.config.group,
            &self.consumer,
            self.config.claim_idle_ms,
            "0-0",
            StreamAutoClaimOptions::default().count(self.config.batch_size),
        )
        .await?;
        Ok(reply.claimed)
    }

    // ---- gauges -------------------------------------------------------------------------

    async fn gauge_loop(self: Arc<Self>, stop: Shutdown) {
        let interval = Duration::from_millis(self.config.claim_interval_ms.min(5_000));
        while !stop.is_triggered() {
            if let Err(error) = self.update_gauges().await {
                tracing::debug!(%error, "cannot update the dispatcher gauges");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.wait() => break,
            }
        }
    }

    pub(crate) async fn update_gauges(&self) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let (dlq, retries, groups): (u64, u64, redis::Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.config.dlq_stream)
            .cmd("ZCARD")
            .arg(&self.config.retry_key)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.config.stream)
            .query_async(&mut redis)
            .await?;
        ::metrics::gauge!(metrics::DLQ_ENTRIES).set(dlq as f64);
        ::metrics::gauge!(metrics::RETRIES_SCHEDULED).set(retries as f64);
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::from_redis_value(groups)?;
        for group in groups {
            let name: Option<String> = group
                .get("name")
                .and_then(|value| redis::from_redis_value(value.clone()).ok());
            if name.as_deref() != Some(self.config.group.as_str()) {
                continue;
            }
            let number = |field: &str| -> Option<u64> {
                group
                    .get(field)
                    .and_then(|value| redis::from_redis_value(value.clone()).ok())
            };
            // `lag` is nil when Redis cannot tell (after deletions); keep the last value then.
            if let Some(lag) = number("lag") {
                ::metrics::gauge!(metrics::CONSUMER_LAG).set(lag as f64);
            }
            if let Some(pending) = number("pending") {
                ::metrics::gauge!(metrics::CONSUMER_PENDING).set(pending as f64);
            }
        }
        Ok(())
    }

    // ---- schedules ----------------------------------------------------------------------

    async fn schedule_loop(self: Arc<Self>, index: usize, stop: Shutdown) {
        let (config, schedule) = &self.schedules[index];
        loop {
            let Some(next) = schedule.next_after(now_ms()) else {
                tracing::warn!(schedule = %config.name, "the schedule never fires again");
                return;
            };
            let wait = Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.wait() => return,
            }
            let outcome = match self.fire(config, next).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(schedule = %config.name, %error, "scheduled run failed");
                    "failed"
                }
            };
            ::metrics::counter!(metrics::SCHEDULE_RUNS_TOTAL, "schedule" => config.name.clone(), "outcome" => outcome)
                .increment(1);
        }
    }

    /// Runs firing `due` of a schedule unless another instance claimed it or a previous run
    /// still holds the lock. Returns the outcome label.
    async fn fire(
        &self,
        config: &ScheduleConfig,
        due: i64,
    ) -> Result<&'static str, crate::reconciler::ReconcileError> {
        let prefix = &self.config.key_prefix;
        let mut redis = self.redis.clone();
        let claimed: i64 = self
            .claim_firing
            .key(format!("{prefix}schedule:{}:fired", config.name))
            .arg(due)
            .arg(7 * 86_400_000_i64)
            .invoke_async(&mut redis)
            .await?;
        if claimed == 0 {
            return Ok("skipped");
        }
        let Some(reconciler) = &self.reconciler else {
            return Ok("skipped");
        };
        let lock_key = format!("{prefix}lock:{}", config.name);
        let token = ulid::Ulid::new().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&lock_key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.config.reconciler.lock_ttl_ms)
            .query_async(&mut redis)
            .await?;
        if locked.is_none() {
            tracing::info!(schedule = %config.name, "previous run still holds the lock; skipped");
            return Ok("skipped");
        }
        let limit = Duration::from_millis(self.config.reconciler.lock_ttl_ms);
        let result = tokio::time::timeout(limit, reconciler.run_once()).await;
        let _: redis::RedisResult<i64> = self
            .release_lock
            .key(&lock_key)
            .arg(&token)
            .invoke_async(&mut redis)
            .await;
        match result {
            Ok(Ok(report)) => {
                tracing::info!(schedule = %config.name, stuck = report.stuck, reemitted = report.reemitted, failed = report.failed, "reconciler run finished");
                Ok("ok")
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(crate::reconciler::ReconcileError::TimedOut),
        }
    }
}

/// Creates the consumer group (and the stream) unless they exist. A new group starts at the
/// beginning of the stream: events written before the first dispatcher started are delivered.
pub async fn ensure_group(
    redis: &ConnectionManager,
    config: &DispatcherConfig,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::AsyncCommands::xgroup_create_mkstream(
        &mut redis.clone(),
        &config.stream,
        &config.group,
        "0",
    )
    .await;
    match created {
        Err(error) if error.to_string().contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}
