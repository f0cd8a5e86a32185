//! The optimistic-concurrency loop every write shares: a round reads the records, checks them
//! (etag, ownership, state) and commits the change with guards on what it read; a refused
//! guard means a concurrent change won, so after a short random pause the next round reads the
//! newer state and tries again, up to [`MAX_ATTEMPTS`] rounds in all.

use std::time::Duration;

use storemesh_runtime::backoff::{Backoff, Jitter};
use storemesh_runtime::{ServiceError, ServiceResult};

/// How often a write re-reads and retries after losing a race before giving up with
/// `ABORTED`. Each round has a winner, so this bounds the contention a write survives.
pub(crate) const MAX_ATTEMPTS: u32 = 64;

/// The pause after losing race number n (1-based): random up to 2 ms · n, at most 16 ms.
pub(crate) const LOST_RACE_PAUSE: Backoff = match Backoff::linear(
    Duration::from_millis(2),
    Duration::from_millis(16),
    Jitter::Full,
) {
    Ok(backoff) => backoff,
    Err(_) => panic!("a valid backoff"),
};

/// What one round of a write came to.
pub(crate) enum Round<T> {
    /// Finished: committed, or nothing (more) to do.
    Done(T),
    /// Lost a race (a guard refused the commit, or a record vanished under the read): the
    /// next round sees the newer state (and a stale etag, if any).
    LostRace,
}

/// The answer of a write that lost [`MAX_ATTEMPTS`] races in a row.
pub(crate) fn contended() -> ServiceError {
    ServiceError::Aborted("the record kept changing concurrently; retry".into())
}

/// Runs `round` until it is done or fails, pausing after each lost race; gives up with
/// `ABORTED` ([`contended`]) after [`MAX_ATTEMPTS`] rounds.
pub(crate) async fn until_won<T, F, Fut>(round: F) -> ServiceResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ServiceResult<Round<T>>>,
{
    until_won_or(round, contended).await
}

/// [`until_won`] giving up with `exhausted()` instead.
pub(crate) async fn until_won_or<T, F, Fut>(
    mut round: F,
    exhausted: impl FnOnce() -> ServiceError,
) -> ServiceResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ServiceResult<Round<T>>>,
{
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            after_lost_race(attempt).await;
        }
        match round().await? {
            Round::Done(value) => return Ok(value),
            Round::LostRace => {}
        }
    }
    Err(exhausted())
}

/// A short random pause after losing a race, so retrying writers spread out instead of
/// colliding again in lockstep.
async fn after_lost_race(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let pause = LOST_RACE_PAUSE.delay(attempt, rand::random::<f64>());
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tonic::Code;

    use super::*;

    /// A round that loses `losses` races, then finishes with the number of rounds run.
    async fn run(losses: u32) -> (ServiceResult<u32>, u32) {
        let rounds = AtomicU32::new(0);
        let result = until_won(|| async {
            let round = rounds.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if round > losses {
                Round::Done(round)
            } else {
                Round::LostRace
            })
        })
        .await;
        (result, rounds.into_inner())
    }

    #[tokio::test]
    async fn succeeds_after_a_few_lost_races() {
        let (result, rounds) = run(0).await;
        assert_eq!((result.unwrap(), rounds), (1, 1));
        let (result, rounds) = run(3).await;
        assert_eq!((result.unwrap(), rounds), (4, 4));
        // The last allowed round still counts.
        let (result, rounds) = run(MAX_ATTEMPTS - 1).await;
        assert_eq!((result.unwrap(), rounds), (MAX_ATTEMPTS, MAX_ATTEMPTS));
    }

    #[tokio::test]
    async fn gives_up_with_aborted_after_max_attempts_lost_races() {
        let (result, rounds) = run(u32::MAX).await;
        assert_eq!(rounds, MAX_ATTEMPTS);
        let error = result.unwrap_err();
        assert_eq!(error.code(), Code::Aborted);
        assert_eq!(
            error.to_string(),
            "the record kept changing concurrently; retry"
        );
    }

    #[tokio::test]
    async fn gives_up_with_the_given_error() {
        let rounds = AtomicU32::new(0);
        let result: ServiceResult<()> = until_won_or(
            || async {
                rounds.fetch_add(1, Ordering::SeqCst);
                Ok(Round::LostRace)
            },
            || ServiceError::NotFound("image i".into()),
        )
        .await;
        assert_eq!(rounds.into_inner(), MAX_ATTEMPTS);
        assert_eq!(result.unwrap_err().to_string(), "image i not found");
    }

    #[tokio::test]
    async fn an_error_ends_the_write_at_once() {
        let rounds = AtomicU32::new(0);
        let result: ServiceResult<()> = until_won(|| async {
            rounds.fetch_add(1, Ordering::SeqCst);
            Err(ServiceError::FailedPrecondition("no".into()))
        })
        .await;
        assert_eq!(rounds.into_inner(), 1);
        assert_eq!(result.unwrap_err().code(), Code::FailedPrecondition);
    }

    #[test]
    fn the_pause_grows_with_the_losses_up_to_16_ms() {
        assert_eq!(LOST_RACE_PAUSE.ceiling(1), Duration::from_millis(2));
        assert_eq!(LOST_RACE_PAUSE.ceiling(4), Duration::from_millis(8));
        assert_eq!(LOST_RACE_PAUSE.ceiling(8), Duration::from_millis(16));
        assert_eq!(
            LOST_RACE_PAUSE.ceiling(MAX_ATTEMPTS),
            Duration::from_millis(16)
        );
        assert_eq!(LOST_RACE_PAUSE.delay(5, 0.0), Duration::ZERO);
    }
}
