//! The tower layers of the mesh's gRPC servers.
//!
//! - [`GrpcLayer`]: what every gRPC listener (each service host and the gateway) puts in front
//!   of what it serves, outermost first: the call's ids and client ([`Identify`]: the server's
//!   own request id, the caller's `x-request-id` kept only when well-formed, echoed on the
//!   response; the end client's [`ClientAddr`](super::ClientAddr) through trusted proxies), gRPC-Web ⇄ gRPC, the
//!   per-RPC span and metrics ([`crate::observe`]), the first-message deadline
//!   ([`FirstMessage`]), load shedding at the concurrency limit and the per-address share
//!   ([`crate::shed`]).
//! - [`GrpcTimeoutLayer`]: the caller's `grpc-timeout` enforced on the server, as
//!   `tonic::transport::Server` does (the service hosts; the gateway propagates deadlines
//!   upstream instead).
//! - [`tonic_connection`]: what `tonic::transport::Server` adds per connection, so handlers keep
//!   `Request::remote_addr` and errors become gRPC statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Frame;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tonic::service::RecoverError;
use tonic::transport::server::TcpConnectInfo;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::util::MapRequest;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestId, MakeRequestUuid, PropagateRequestId, PropagateRequestIdLayer,
};

use super::accept::ConnectionInfo;
use super::client::TrustedProxies;
use crate::config::ServerConfig;
use crate::observe::{RequestIds, RpcObserve, RpcObserveLayer};
use crate::shed::{AddressKey, Load, LoadShed, LoadShedLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The common layers of a gRPC listener; see the module docs. Clones share one concurrency
/// limit.
#[derive(Debug, Clone)]
pub struct GrpcLayer {
    shed: LoadShedLayer,
    trusted: Arc<TrustedProxies>,
    first_message: Duration,
}

impl GrpcLayer {
    /// The layers with `config`'s limits: at most `concurrency_limit` calls in flight (health
    /// checks exempt), `in_flight_per_address()` of them from one client; more are answered
    /// `RESOURCE_EXHAUSTED` at once. A call's first message must arrive within
    /// `first_message_timeout_ms`. `x-forwarded-for` is believed from `trusted_proxies` only.
    pub fn new(config: &ServerConfig) -> Self {
        Self {
            shed: LoadShedLayer::with_per_address(
                config.concurrency_limit,
                config.in_flight_per_address(),
            ),
            trusted: Arc::new(TrustedProxies::new(config.trusted_proxies.iter().copied())),
            first_message: Duration::from_millis(config.first_message_timeout_ms),
        }
    }

    /// Whether the calls are being shed at the global limit; readiness reports it
    /// ([`super::admin::ReadyState::watch_load`]).
    pub fn load(&self) -> Load {
        self.shed.load()
    }
}

/// A service behind [`GrpcLayer`].
pub type Grpc<S> =
    Identify<PropagateRequestId<GrpcWebService<RpcObserve<FirstMessage<LoadShed<S>>>>>>;

impl<S> Layer<S> for GrpcLayer {
    type Service = Grpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceBuilder::new()
            .layer_fn(|inner| Identify {
                inner,
                trusted: self.trusted.clone(),
            })
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(GrpcWebLayer::new())
            .layer(RpcObserveLayer)
            .layer_fn(|inner| FirstMessage {
                inner,
                timeout: self.first_message,
            })
            .layer(self.shed.clone())
            .service(inner)
    }
}

/// Whether a caller's `x-request-id` is kept: 1–128 characters of `[A-Za-z0-9._:-]` (a UUID,
/// a ULID, a W3C trace id...). Anything else could forge log lines or bloat every log entry.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Gives each call its ids and its client (see the module docs): [`RequestIds`] and, when the
/// connection is known, [`ClientAddr`](super::ClientAddr) and the shed layer's [`AddressKey`] in the extensions.
#[derive(Debug, Clone)]
pub struct Identify<S> {
    inner: S,
    trusted: Arc<TrustedProxies>,
}

impl<S, B> Service<http::Request<B>> for Identify<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let own = MakeRequestUuid
            .make_request_id(&request)
            .map(|id| id.header_value().clone())
            .unwrap_or_else(|| http::HeaderValue::from_static("unassigned"));
        let client = request
            .headers()
            .get(X_REQUEST_ID)
            .filter(|value| is_valid_request_id(value.as_bytes()))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if client.is_none() {
            // Absent or malformed: the server's id is the call's id everywhere.
            request.headers_mut().insert(X_REQUEST_ID, own.clone());
        }
        let own = own.to_str().unwrap_or_default().to_owned();
        let peer = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.remote.ip())
            .or_else(|| {
                request
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(|info| info.remote_addr)
                    .map(|addr| addr.ip())
            });
        if let Some(peer) = peer {
            let client_addr = self.trusted.client_addr(peer, request.headers());
            // A trusted proxy's own calls carry many clients: no per-address share for them.
            let key = (!self.trusted.contains(client_addr.0)).then(|| client_addr.limit_key());
            request.extensions_mut().insert(client_addr);
            request.extensions_mut().insert(AddressKey(key));
        }
        request.extensions_mut().insert(RequestIds { own, client });
        self.inner.call(request)
    }
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What a call that did not deliver its first message in time is told.
const FIRST_MESSAGE_LATE: &str = "request message not received in time";

/// The first-message deadline: a call whose first complete gRPC message (the 5-byte prefix and
/// the bytes it announces) has not arrived `timeout` after the call started ends with
/// `DEADLINE_EXCEEDED`, and its handler (and with it the concurrency slot) is dropped. A body
/// that ends first (no message, e.g. an empty client stream) is fine. Without it, a client can
/// hold every slot by opening calls and never sending their message.
#[derive(Debug, Clone)]
pub struct FirstMessage<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for FirstMessage<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
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

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        use http_body::Body as _;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let state = Arc::new(FirstMessageState {
            arrived: AtomicBool::new(request.body().is_end_stream()),
        });
        let request = request.map(|body| {
            let late = deadline + BODY_DEADLINE_GRACE;
            tonic::body::Body::new(FirstMessageBody::new(body, late, state.clone()))
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            tokio::pin!(future);
            let late = async {
                tokio::time::sleep_until(deadline).await;
                if state.arrived.load(Ordering::Acquire) {
                    // In time: the handler runs as long as it needs.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                result = &mut future => result,
                () = late => {
                    metrics::counter!("grpc_server_first_message_timeouts_total").increment(1);
                    Ok(tonic::Status::deadline_exceeded(FIRST_MESSAGE_LATE).into_http())
                }
            }
        })
    }
}

/// What a call's [`FirstMessage`] future and its request body share.
struct FirstMessageState {
    /// The first message is complete (or the body ended without one).
    arrived: AtomicBool,
}

/// How much later than the call's deadline its request body fails on its own: the layer's
/// future answers first whenever the response has not started, so a proxy reading the body
/// cannot turn the deadline into another status; the body's own deadline is for calls that
/// answered before reading (and for a body a proxy still pumps upstream after the call ended).
const BODY_DEADLINE_GRACE: Duration = Duration::from_millis(250);

pin_project! {
    /// A request body that notes when its first gRPC message is complete, and fails (with
    /// `DEADLINE_EXCEEDED`, which tonic passes on as the call's status) when polled past its
    /// deadline without it (see [`BODY_DEADLINE_GRACE`]).
    struct FirstMessageBody {
        #[pin]
        inner: tonic::body::Body,
        #[pin]
        sleep: tokio::time::Sleep,
        state: Arc<FirstMessageState>,
        // Bytes of the first message still expected: the prefix's 5, then what it announces.
        prefix: [u8; 5],
        prefix_len: usize,
        remaining: Option<u64>,
    }
}

impl FirstMessageBody {
    fn new(
        inner: tonic::body::Body,
        deadline: tokio::time::Instant,
        state: Arc<FirstMessageState>,
    ) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep_until(deadline),
            state,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: None,
        }
    }
}

impl http_body::Body for FirstMessageBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let arrived = &this.state.arrived;
        if arrived.load(Ordering::Acquire) {
            return this.inner.poll_frame(cx);
        }
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                ready!(this.sleep.poll(cx));
                return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                    FIRST_MESSAGE_LATE,
                ))));
            }
        };
        match &frame {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    let mut data = data.clone();
                    while data.has_remaining() {
                        match *this.remaining {
                            None => {
                                let take = (5 - *this.prefix_len).min(data.remaining());
                                let start = *this.prefix_len;
                                data.copy_to_slice(&mut this.prefix[start..start + take]);
                                *this.prefix_len += take;
                                if *this.prefix_len == 5 {
                                    let [_, a, b, c, d] = *this.prefix;
                                    *this.remaining =
                                        Some(u64::from(u32::from_be_bytes([a, b, c, d])));
                                }
                            }
                            Some(_) => break,
                        }
                    }
                    if let Some(remaining) = this.remaining.as_mut() {
                        let consumed = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
                        *remaining = remaining.saturating_sub(consumed);
                        if *remaining == 0 {
                            arrived.store(true, Ordering::Release);
                        }
                    }
                }
                // Trailers end the body.
                None => arrived.store(true, Ordering::Release),
            },
            // The body's end (or its error) settles the call without this deadline.
            Some(Err(_)) | None => arrived.store(true, Ordering::Release),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Ends a call whose `grpc-timeout` passed with an error (`tonic::TimeoutExpired`, which
/// [`RecoverError`] answers as `CANCELLED` "Timeout expired"); the handler's future is dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTimeoutLayer;

impl<S> Layer<S> for GrpcTimeoutLayer {
    type Service = GrpcTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTimeout { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTimeout<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for GrpcTimeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = grpc_timeout(request.headers());
        TimeoutFuture {
            inner: self.inner.call(request),
            sleep: timeout.map(tokio::time::sleep),
        }
    }
}

pin_project! {
    /// The future of [`GrpcTimeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            return Poll::Ready(Err(tonic::TimeoutExpired(()).into()));
        }
        Poll::Pending
    }
}

/// The `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit `H`, `M`, `S`,
/// `m`, `u` or `n`); `None` when absent or malformed, as tonic reads it.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.is_empty() || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 60 * 60),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A host's service for one connection, as `tonic::transport::Server` makes it: the request
/// body as `tonic::body::Body`, the connection's addresses as [`TcpConnectInfo`] (what
/// `tonic::Request::remote_addr` reads), the client's `grpc-timeout` enforced, and errors
/// answered as gRPC statuses.
pub fn tonic_connection<S>(
    service: S,
    connection: ConnectionInfo,
) -> MapRequest<
    RecoverError<GrpcTimeout<S>>,
    impl FnMut(http::Request<Incoming>) -> http::Request<tonic::body::Body> + Clone,
> {
    let info = TcpConnectInfo {
        local_addr: connection.local,
        remote_addr: Some(connection.remote),
    };
    ServiceBuilder::new()
        .map_request(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            request.map(tonic::body::Body::new)
        })
        .layer(tonic::service::RecoverErrorLayer::new())
        .layer(GrpcTimeoutLayer)
        .service(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "grpc-timeout",
            http::HeaderValue::from_str(value).expect("a header value"),
        );
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_as_tonic_reads_them() {
        assert_eq!(timeout("3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(timeout("42S"), Some(Duration::from_secs(42)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
