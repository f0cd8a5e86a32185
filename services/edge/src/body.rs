//! The minimum transfer rate of request bodies.
//!
//! An instance that waits for a request body holds one of its component's slots; a client that
//! sends its body slowly (or stops) could hold them all. [`MinRate`] wraps the incoming body and
//! measures the time the instance spends *waiting* for it (from a poll that found no data to
//! the next data), so an instance that reads slowly (back-pressure from its own outbound calls)
//! does not count against the client. After `grace` of waiting, every `window` of waiting must
//! bring `min_bytes_per_sec × window` bytes. When a window falls short, the body reports
//! [`TooSlow`] once through a oneshot channel and never yields again: the runtime then stops the
//! instance and answers `408` (the guest never sees a read error it could answer differently).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// The configured minimum rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// Bytes per second of waiting; `0` disables the check.
    pub min_bytes_per_sec: u64,
    /// Waiting not counted at the start.
    pub grace: Duration,
    /// The measuring window (of waiting time).
    pub window: Duration,
}

impl RatePolicy {
    pub fn is_enabled(&self) -> bool {
        self.min_bytes_per_sec > 0
    }

    /// Bytes each window must bring.
    fn bytes_per_window(&self) -> u64 {
        let bytes = u128::from(self.min_bytes_per_sec) * self.window.as_millis() / 1000;
        u64::try_from(bytes).unwrap_or(u64::MAX).max(1)
    }
}

/// What the runtime learns when a body is too slow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooSlow {
    /// Bytes received in the window that fell short.
    pub window_bytes: u64,
    /// Bytes received in all.
    pub total_bytes: u64,
    pub policy: RatePolicy,
}

impl TooSlow {
    /// The client-facing explanation.
    pub fn message(&self) -> String {
        if self.window_bytes == 0 {
            format!(
                "the request body stopped arriving ({} bytes received; no data for {} ms)",
                self.total_bytes,
                self.policy.window.as_millis()
            )
        } else {
            format!(
                "the request body arrived slower than the minimum of {} bytes/s ({} bytes in {} ms)",
                self.policy.min_bytes_per_sec,
                self.window_bytes,
                self.policy.window.as_millis()
            )
        }
    }
}

/// A request body with a minimum transfer rate (see the module docs).
pub struct MinRate<B> {
    inner: B,
    policy: RatePolicy,
    /// Waiting time counted so far (grace included).
    waited: Duration,
    /// Set while the consumer waits: when the last poll found no data.
    waiting_since: Option<Instant>,
    /// Waiting time at which the current window ends (the first one ends after the grace).
    window_end: Duration,
    window_bytes: u64,
    total_bytes: u64,
    timer: Pin<Box<Sleep>>,
    report: Option<oneshot::Sender<TooSlow>>,
    tripped: bool,
}

impl<B> MinRate<B> {
    /// `inner` with `policy`; the receiver gets [`TooSlow`] if the body falls below it. A
    /// disabled policy never trips.
    pub fn new(inner: B, policy: RatePolicy) -> (Self, oneshot::Receiver<TooSlow>) {
        let (report, receiver) = oneshot::channel();
        let body = Self {
            inner,
            policy,
            waited: Duration::ZERO,
            waiting_since: None,
            window_end: policy.grace + policy.window,
            window_bytes: 0,
            total_bytes: 0,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            report: Some(report),
            tripped: false,
        };
        (body, receiver)
    }

    /// Counts the waiting since the last empty poll, closes every window that ended, and says
    /// whether the body is too slow.
    fn account(&mut self, now: Instant) -> Option<TooSlow> {
        if let Some(since) = self.waiting_since {
            self.waited += now.saturating_duration_since(since);
            self.waiting_since = Some(now);
        }
        while self.waited >= self.window_end {
            if self.window_bytes < self.policy.bytes_per_window() {
                return Some(TooSlow {
                    window_bytes: self.window_bytes,
                    total_bytes: self.total_bytes,
                    policy: self.policy,
                });
            }
            self.window_bytes = 0;
            self.window_end += self.policy.window;
        }
        None
    }

    /// Reports `too_slow` (once) and stops delivering anything.
    fn trip<T>(&mut self, too_slow: TooSlow) -> Poll<T> {
        self.tripped = true;
        if let Some(report) = self.report.take() {
            let _ = report.send(too_slow);
        }
        Poll::Pending
    }
}

impl<B> Body for MinRate<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.tripped {
            // The runtime is stopping the instance; nothing more is delivered.
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if !this.policy.is_enabled() {
            return polled;
        }
        let now = Instant::now();
        match polled {
            Poll::Ready(frame) => {
                // Waiting up to now counts: data that comes after a window fell short is late.
                if let Some(too_slow) = this.account(now) {
                    return this.trip(too_slow);
                }
                this.waiting_since = None;
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    let len = data.len() as u64;
                    this.window_bytes = this.window_bytes.saturating_add(len);
                    this.total_bytes = this.total_bytes.saturating_add(len);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    this.waiting_since = Some(now);
                }
                if let Some(too_slow) = this.account(now) {
                    return this.trip(too_slow);
                }
                // Wake up when the current window ends, if no data comes first.
                let left = this.window_end.saturating_sub(this.waited);
                this.timer.as_mut().reset(now + left);
                if this.timer.as_mut().poll(cx).is_ready() {
                    // Already due (a zero-length remainder): check again at once.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.tripped && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed through a channel (`http-body-util`'s own needs a feature this crate lacks).
    struct Channel(mpsc::Receiver<Bytes>);

    impl Channel {
        fn new(buffer: usize) -> (mpsc::Sender<Bytes>, Self) {
            let (sender, receiver) = mpsc::channel(buffer);
            (sender, Self(receiver))
        }
    }

    impl Body for Channel {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|data| data.map(|data| Ok(Frame::data(data))))
        }
    }

    fn policy() -> RatePolicy {
        RatePolicy {
            min_bytes_per_sec: 10_000,
            grace: Duration::from_millis(100),
            window: Duration::from_millis(200),
        }
    }

    // Real time (tokio's paused clock needs a feature the workspace does not build with): lower
    // bounds are exact (waiting never exceeds wall time), upper bounds generous.

    #[tokio::test]
    async fn a_body_that_stops_arriving_trips_after_grace_and_windows() {
        let (sender, body) = Channel::new(8);
        let (mut body, mut report) = MinRate::new(body, policy());
        sender.send(Bytes::from(vec![0; 5000])).await.unwrap();
        assert_eq!(
            body.frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap()
                .len(),
            5000
        );
        let started = Instant::now();
        // Nothing more arrives. The 5000 bytes count for the first window (grace + window of
        // waiting), which passes; the second (empty) one fails.
        let read = tokio::spawn(async move { body.frame().await.is_some() });
        let too_slow = tokio::time::timeout(Duration::from_secs(10), &mut report)
            .await
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(too_slow.window_bytes, 0);
        assert_eq!(too_slow.total_bytes, 5000);
        assert!(
            too_slow.message().contains("stopped arriving"),
            "{}",
            too_slow.message()
        );
        // The reader is never answered (the runtime stops the instance).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!read.is_finished());
        read.abort();
        drop(sender);
    }

    #[tokio::test]
    async fn a_trickle_below_the_minimum_trips_and_a_steady_body_does_not() {
        // 50 bytes every 20 ms (at most 2500 B/s) against 10000 B/s.
        let (sender, body) = Channel::new(1);
        let (mut body, mut report) = MinRate::new(body, policy());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if sender.send(Bytes::from(vec![0; 50])).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let reader = tokio::spawn(async move { while body.frame().await.is_some() {} });
        let too_slow = tokio::time::timeout(Duration::from_secs(10), &mut report)
            .await
            .unwrap()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            too_slow.window_bytes > 0 && too_slow.window_bytes < 2000,
            "{too_slow:?}"
        );
        assert!(
            too_slow.message().contains("slower than"),
            "{}",
            too_slow.message()
        );
        reader.abort();

        // 2000 bytes every 20 ms (about 100 kB/s, ten times the minimum): read to the end.
        let (sender, body) = Channel::new(1);
        let (mut body, report) = MinRate::new(body, policy());
        tokio::spawn(async move {
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                sender.send(Bytes::from(vec![0; 2000])).await.unwrap();
            }
        });
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            total += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(total, 50 * 2000);
        drop(body);
        assert!(report.await.is_err(), "no report for a steady body");
    }

    #[tokio::test]
    async fn time_the_reader_is_busy_does_not_count() {
        let (sender, body) = Channel::new(1);
        let (mut body, mut report) = MinRate::new(body, policy());
        sender.send(Bytes::from_static(b"x")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // The reader does other things without asking for the body, far longer than a window.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        sender.send(Bytes::from(vec![0; 2000])).await.unwrap();
        body.frame().await.unwrap().unwrap();
        assert!(report.try_recv().is_err());

        // Disabled: never trips.
        let (_sender, body) = Channel::new(1);
        let (mut body, report) = MinRate::new(
            body,
            RatePolicy {
                min_bytes_per_sec: 0,
                ..policy()
            },
        );
        let waiting = tokio::spawn(async move { body.frame().await.is_some() });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished());
        waiting.abort();
        let _ = waiting.await;
        assert!(report.await.is_err());
    }
}
