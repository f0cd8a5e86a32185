//! The admin HTTP port every process serves: `/metrics` (the process-wide Prometheus recorder,
//! [`crate::metrics`]), `/healthz` (alive) and `/readyz` (200 `ready` while [`ReadyState`] says
//! so, otherwise 503 with the reason). It also keeps the recorder's histograms trimmed while it
//! runs, and it is the last thing a process closes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::prometheus;
use crate::shutdown::Shutdown;

/// The `content-type` of `/metrics` (Prometheus text format).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// How often the recorder's upkeep runs (trims the histograms between scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What readiness currently says, shared with `/readyz`: `None` when ready, otherwise why not.
#[derive(Clone, Default)]
pub struct ReadyState(Arc<Mutex<Option<String>>>);

impl ReadyState {
    /// Not ready (yet) for `reason`.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        let state = Self::default();
        state.set(Some(reason.into()));
        state
    }

    pub fn set(&self, not_ready_reason: Option<String>) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = not_ready_reason;
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or_else(|_| Some("readiness state unavailable".into()))
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
