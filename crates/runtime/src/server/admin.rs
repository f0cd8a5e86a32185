//! The admin HTTP port every process serves: `/metrics` (the process-wide Prometheus recorder,
//! [`crate::metrics`]), `/healthz` (alive) and `/readyz` (200 `ready` while [`ReadyState`] says
//! so, otherwise 503 with the reason). It also keeps the recorder's histograms trimmed while it
//! runs, and it is the last thing a process closes.
//!
//! Readiness includes load: while the process sheds calls at its global concurrency limit
//! ([`crate::shed::Load`], watched with [`ReadyState::watch_load`]) it says `overloaded`, and
//! gRPC health following it ([`follow_ready`]) says `NOT_SERVING`, so an orchestrator or the
//! mesh's clients can send traffic elsewhere until it recovers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::prometheus;
use crate::shed::Load;
use crate::shutdown::Shutdown;

/// What readiness says while calls are shed at the global limit.
pub const OVERLOADED: &str = "overloaded";

/// How often [`follow_ready`] looks at the readiness state.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// The `content-type` of `/metrics` (Prometheus text format).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// How often the recorder's upkeep runs (trims the histograms between scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What readiness currently says, shared with `/readyz`: `None` when ready, otherwise why not
/// (a reason set by the process, else [`OVERLOADED`] while a watched [`Load`] is overloaded).
#[derive(Clone, Default)]
pub struct ReadyState {
    reason: Arc<Mutex<Option<String>>>,
    loads: Arc<Mutex<Vec<Load>>>,
}

impl ReadyState {
    /// Not ready (yet) for `reason`.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        let state = Self::default();
        state.set(Some(reason.into()));
        state
    }

    pub fn set(&self, not_ready_reason: Option<String>) {
        if let Ok(mut guard) = self.reason.lock() {
            *guard = not_ready_reason;
        }
    }

    /// Reports [`OVERLOADED`] while `load` is (the listener's `GrpcLayer::load`).
    pub fn watch_load(&self, load: Load) {
        if let Ok(mut loads) = self.loads.lock() {
            loads.push(load);
        }
    }

    pub fn get(&self) -> Option<String> {
        let reason = self
            .reason
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or_else(|_| Some("readiness state unavailable".into()));
        if reason.is_some() {
            return reason;
        }
        let overloaded = self
            .loads
            .lock()
            .map(|loads| loads.iter().any(Load::overloaded))
            .unwrap_or_default();
        overloaded.then(|| OVERLOADED.to_owned())
    }
}

/// Keeps gRPC health (the whole server, `""`, and each of `services`) following `ready`:
/// `SERVING` while ready, `NOT_SERVING` otherwise. Runs until its task is dropped or aborted
/// (after the drain, so it keeps saying `NOT_SERVING` while the process shuts down).
pub async fn follow_ready(
    ready: ReadyState,
    reporter: HealthReporter,
    services: Vec<&'static str>,
) {
    let mut last: Option<Option<String>> = None;
    let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = ready.get();
        if last.as_ref() == Some(&now) {
            continue;
        }
        let status = if now.is_none() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        match (&last, now.as_deref()) {
            (_, Some(OVERLOADED)) => tracing::warn!("overloaded: shedding calls at the limit"),
            (Some(Some(previous)), None) if previous == OVERLOADED => {
                tracing::info!("no longer overloaded");
            }
            _ => {}
        }
        reporter.set_service_status("", status).await;
        for name in &services {
            reporter.set_service_status(*name, status).await;
        }
        last = Some(now);
    }
}

/// The admin routes; see the module docs.
pub fn router(ready: ReadyState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(|| {
                std::future::ready((
                    [(http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                    prometheus().render(),
                ))
            }),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(match ready.get() {
                    None => (StatusCode::OK, "ready\n".to_owned()),
                    Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                })
            }),
        )
}

/// Serves the admin port on `listener` until `stop` is triggered.
pub async fn serve_admin(listener: TcpListener, ready: ReadyState, stop: Shutdown) {
    let upkeep = async {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            prometheus().run_upkeep();
        }
    };
    let serve = axum::serve(listener, router(ready)).with_graceful_shutdown(stop.wait());
    tokio::select! {
        result = serve => {
            if let Err(error) = result {
                tracing::error!(%error, "admin server failed");
            }
        }
        () = upkeep => {}
    }
}

/// The admin port running in its own task, from start until [`AdminServer::stop`] (after the
/// drain, so probes and scrapes see a process to the end).
pub struct AdminServer {
    stop: Shutdown,
    task: JoinHandle<()>,
}

impl AdminServer {
    pub fn spawn(listener: TcpListener, ready: ReadyState) -> Self {
        // Installed now, so nothing the process records from here on is lost.
        prometheus();
        let stop = Shutdown::new();
        let task = tokio::spawn(serve_admin(listener, ready, stop.clone()));
        Self { stop, task }
    }

    /// Closes the port and waits until it is closed.
    pub async fn stop(self) {
        self.stop.trigger();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// `(status line, content-type, body)` of a `GET`.
    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        let content_type = head
            .lines()
            .find_map(|line| line.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (status, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_state_and_metrics_are_prometheus_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        prometheus();
        let ready = ReadyState::not_ready("starting");
        let admin = AdminServer::spawn(listener, ready.clone());

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 503 Service Unavailable", "starting\n")
        );
        ready.set(None);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "ready\n")
        );
        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "ok\n")
        );

        metrics::counter!("storemesh_runtime_admin_test_total").increment(1);
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(content_type, METRICS_CONTENT_TYPE);
        assert!(
            body.contains("storemesh_runtime_admin_test_total 1"),
            "{body}"
        );

        admin.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
