//! The schedule loops, one per scheduled trigger: each firing is claimed once across
//! instances, then runs the reconciler under a Redis lock.

use std::sync::Arc;
use std::time::Duration;

use storemesh_runtime::shutdown::Shutdown;
use storemesh_runtime::time::now_ms;

use super::Inner;
use crate::metrics;
use crate::plan::SchedulePlan;

impl Inner {
    pub(super) async fn schedule_loop(self: Arc<Self>, index: usize, stop: Shutdown) {
        let planned = &self.schedules[index];
        let schedule = &planned.schedule;
        loop {
            let Some(next) = schedule.next_after(now_ms()) else {
                tracing::warn!(schedule = %planned.name, "the schedule never fires again");
                return;
            };
            let wait = Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.wait() => return,
            }
            let outcome = match self.fire(planned, next).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(schedule = %planned.name, %error, "scheduled run failed");
                    "failed"
                }
            };
            ::metrics::counter!(metrics::SCHEDULE_RUNS_TOTAL, "schedule" => planned.name.clone(), "outcome" => outcome)
                .increment(1);
        }
    }

    /// Runs firing `due` of a schedule unless another instance claimed it or a previous run
    /// still holds the lock. Returns the outcome label.
    async fn fire(
        &self,
        config: &SchedulePlan,
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
