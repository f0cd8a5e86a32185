//! The accept loop and the drain every listener of the mesh runs on: the gRPC hosts, the
//! gateway (optionally behind TLS) and the edge runtime.
//!
//! [`serve`] accepts TCP connections (`TCP_NODELAY`), speaks HTTP/1.1 and HTTP/2 (h2c, or ALPN
//! over TLS) on each with hyper's automatic builder, and hands every request to the tower
//! service made for its connection. A failed `accept` (e.g. too many open files) is logged and
//! retried after a short pause; what is open keeps being served.
//!
//! When its `shutdown` future resolves it drains:
//!
//! 1. the listening socket is closed at once, so new connections are refused rather than left
//!    waiting in the backlog;
//! 2. every open connection is asked to finish: HTTP/2 sends `GOAWAY` and lets its streams end,
//!    HTTP/1 closes after the response in progress;
//! 3. after the grace period whatever is still open is cut (its tasks are aborted).
//!
//! Against clients that hold resources without using them (see [`ConnectionLimits`]): HTTP/1
//! headers must arrive within `header_read_timeout`, an HTTP/2 connection carries at most
//! `max_concurrent_streams` streams at once, and one client address holds at most
//! `max_connections_per_address` connections (trusted proxies exempt); a connection over that
//! cap is closed at once. Every request carries its [`ConnectionInfo`] in its extensions.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::client::{ClientAddr, TrustedProxies};
use crate::config::ServerConfig;
use crate::shutdown::Shutdown;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an `accept` that failed for want of resources waits before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr`. Processes bind every listener before serving, so an address in use fails at
/// start and `:0` ports are known before the first request.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The HTTP settings of the connections. Both get the [`ConnectionLimits`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HttpSettings {
    /// hyper's defaults otherwise (the gateway and the edge runtime).
    #[default]
    Hyper,
    /// What `tonic::transport::Server` sets otherwise (the gRPC hosts): HTTP/2 keep-alive
    /// timeout 20 s, hyper's default windows and frame size.
    Tonic,
}

/// What one connection, and one client address, may hold (see the module docs).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a client may take to send an HTTP/1 request's headers.
    pub header_read_timeout: Duration,
    /// Streams open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Connections open at once from one client address (IPv6: its /64).
    pub max_connections_per_address: usize,
    /// Peers exempt from the per-address connection cap.
    pub trusted_proxies: TrustedProxies,
}

impl ConnectionLimits {
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            max_concurrent_streams: config.max_concurrent_streams,
            max_connections_per_address: config.max_connections_per_address,
            trusted_proxies: TrustedProxies::new(config.trusted_proxies.iter().copied()),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::from_config(&ServerConfig::default())
    }
}

/// Streams a client may reset before their handler accepted them (hyper's default) and
/// streams the server may reset for protocol errors, per connection: bounds on the HTTP/2
/// "rapid reset" and "made you reset" floods.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How [`serve`] runs.
#[derive(Clone)]
pub struct ServeOptions {
    grace: Duration,
    http: HttpSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
}

impl ServeOptions {
    /// Cleartext with hyper's HTTP settings and the default [`ConnectionLimits`]; in-flight
    /// requests get `grace` to finish once draining starts.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            http: HttpSettings::Hyper,
            tls: None,
            limits: ConnectionLimits::default(),
        }
    }

    /// [`ServeOptions::new`] with the grace period and limits of `config`.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self::new(Duration::from_millis(config.shutdown_grace_ms))
            .limits(ConnectionLimits::from_config(config))
    }

    pub fn http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Terminates TLS on every connection (the handshake runs in the connection's task, so a
    /// slow client cannot stall the accept loop, and is given up after 10 s).
    pub fn tls(mut self, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Self {
        self.tls = acceptor;
        self
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    fn connection_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The timer makes hyper's header read timeout (and HTTP/2 keep-alive) work at all.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
        if self.http == HttpSettings::Tonic {
            // As tonic 0.14's `Server::serve_internal` configures it, with its defaults.
            builder
                .http2()
                .initial_connection_window_size(None::<u32>)
                .initial_stream_window_size(None::<u32>)
                .keep_alive_interval(None::<Duration>)
                .keep_alive_timeout(Duration::from_secs(20))
                .adaptive_window(false)
                .max_frame_size(None::<u32>);
        }
        builder
    }
}

/// Open connections by client address, for `max_connections_per_address`. An address's entry
/// is removed when its last connection closes, so the map holds open connections only.
#[derive(Clone, Default)]
struct ConnectionCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One counted connection; uncounts it when dropped (the connection's task ended).
struct CountedConnection {
    counts: ConnectionCounts,
    key: IpAddr,
}

impl ConnectionCounts {
    /// Counts a connection from `key`, or `None` when the address holds `max` already.
    fn admit(&self, key: IpAddr, max: usize) -> Option<CountedConnection> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(CountedConnection {
            counts: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.0.lock().map(|counts| counts.len()).unwrap_or_default()
    }
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The connection a service is made for; also in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace period.
    Complete,
    /// The grace period ran out; this many connections were cut.
    TimedOut { cut: usize },
}

/// Serves `listener` until `shutdown` resolves, then drains (see the module docs).
///
/// `make_service` is called once per accepted connection; the service it returns answers that
/// connection's requests (clone one shared service in it to share state such as a concurrency
/// limit). Whatever should happen before connections are refused (readiness turning `503`,
/// health `NOT_SERVING`) belongs at the end of `shutdown`.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    options: ServeOptions,
    mut make_service: M,
    shutdown: impl Future<Output = ()>,
) -> Drained
where
    M: FnMut(ConnectionInfo) -> S,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = options.connection_builder();
    let counts = ConnectionCounts::default();
    let drain = Shutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) if is_connection_error(&error) => {
                        tracing::debug!(%error, "accept failed");
                        continue;
                    }
                    Err(error) => {
                        // E.g. too many open files: keep serving what is open.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let limits = &options.limits;
                let counted = if limits.trusted_proxies.contains(remote.ip()) {
                    None
                } else {
                    let key = ClientAddr(remote.ip()).limit_key();
                    match counts.admit(key, limits.max_connections_per_address) {
                        Some(counted) => Some(counted),
                        None => {
                            // Dropping the stream closes it before anything is read.
                            metrics::counter!("server_connections_refused_total").increment(1);
                            tracing::debug!(peer = %remote, "too many connections from this address");
                            continue;
                        }
                    }
                };
                let _ = stream.set_nodelay(true);
                let info = ConnectionInfo {
                    remote,
                    local: stream.local_addr().ok(),
                };
                let service = tower::ServiceBuilder::new()
                    .map_request(move |mut request: http::Request<Incoming>| {
                        request.extensions_mut().insert(info);
                        request
                    })
                    .service(make_service(info));
                let service = TowerToHyperService::new(service);
                let task = connection(
                    builder.clone(),
                    stream,
                    options.tls.clone(),
                    service,
                    info,
                    drain.clone(),
                );
                connections.spawn(async move {
                    task.await;
                    drop(counted);
                });
            }
            // Reap finished connections so the set holds open ones only.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drain.trigger();

    let deadline = tokio::time::sleep(options.grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = connections.join_next() => {
                if joined.is_none() {
                    return Drained::Complete;
                }
            }
            () = &mut deadline => {
                let cut = connections.len();
                tracing::warn!(
                    grace_ms = u64::try_from(options.grace.as_millis()).unwrap_or(u64::MAX),
                    connections = cut,
                    "drain timed out; closing remaining calls"
                );
                connections.shutdown().await;
                return Drained::TimedOut { cut };
            }
        }
    }
}

/// Errors that concern one connection only (the client gave up during the handshake), not the
/// listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
}

/// One connection's task: the TLS handshake if any, then HTTP until the client is done or the
/// drain asks it to finish.
async fn connection<S, B>(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: TowerToHyperService<S>,
    info: ConnectionInfo,
    drain: Shutdown,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match tls {
        None => http(&builder, TokioIo::new(stream), service, info, drain).await,
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(peer = %info.remote, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %info.remote, "TLS handshake timed out");
                        return;
                    }
                };
            http(&builder, TokioIo::new(stream), service, info, drain).await;
        }
    }
}

async fn http<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<S>,
    info: ConnectionInfo,
    drain: Shutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(peer = %info.remote, %error, "connection ended with an error");
                }
                return;
            }
            () = drain.wait(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{Notify, oneshot};

    use super::*;

    /// Answers `/slow` when `release` is notified, anything else at once.
    fn service(
        release: Arc<Notify>,
        started: Arc<Notify>,
    ) -> impl tower::Service<
        http::Request<Incoming>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |request: http::Request<Incoming>| {
            let release = release.clone();
            let started = started.clone();
            async move {
                if request.uri().path() == "/slow" {
                    started.notify_one();
                    release.notified().await;
                }
                Ok::<_, Infallible>(http::Response::new(format!("done {}", request.uri())))
            }
        })
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn an_in_flight_request_completes_while_new_connections_are_refused() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ServeOptions::new(Duration::from_secs(10)),
            {
                let service = service(release.clone(), started.clone());
                move |_| service.clone()
            },
            async move {
                let _ = stopped.await;
            },
        ));
        assert!(get(addr, "/fast").await.unwrap().contains("done /fast"));

        let in_flight = tokio::spawn(get(addr, "/slow"));
        started.notified().await;
        stop.send(()).unwrap();
        // The listener closes at once: new connections are refused, not queued.
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            refused,
            "new connections are refused once the drain started"
        );
        assert!(!server.is_finished(), "the drain waits for the request");

        release.notify_one();
        let answer = in_flight.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("done /slow"), "{answer}");
        assert_eq!(server.await.unwrap(), Drained::Complete);
    }

    #[tokio::test]
    async fn what_is_left_after_the_grace_period_is_cut() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Arc::new(Notify::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ServeOptions::new(Duration::from_millis(200)).http(HttpSettings::Tonic),
            {
                // Never released.
                let service = service(Arc::new(Notify::new()), started.clone());
                move |_| service.clone()
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let stuck = tokio::spawn(get(addr, "/slow"));
        started.notified().await;
        let stopping = std::time::Instant::now();
        stop.send(()).unwrap();
        assert_eq!(server.await.unwrap(), Drained::TimedOut { cut: 1 });
        assert!(stopping.elapsed() < Duration::from_secs(5));
        // The client sees its connection end without an answer.
        let answer = stuck.await.unwrap().unwrap_or_default();
        assert!(answer.is_empty(), "{answer}");
    }

    #[test]
    fn connection_counts_cap_each_address_and_forget_closed_ones() {
        let counts = ConnectionCounts::default();
        let one: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        let first = counts.admit(one, 2).expect("first");
        let second = counts.admit(one, 2).expect("second");
        assert!(counts.admit(one, 2).is_none(), "over the cap");
        let elsewhere = counts.admit(other, 2).expect("another address");
        drop(first);
        let again = counts.admit(one, 2).expect("a place was freed");
        drop((second, again, elsewhere));
        assert_eq!(
            counts.addresses(),
            0,
            "no state for addresses without connections"
        );
    }

    #[tokio::test]
    async fn an_address_in_use_is_named() {
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(addr).await.unwrap_err();
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
