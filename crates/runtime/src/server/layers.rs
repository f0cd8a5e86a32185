//! The tower layers of the mesh's gRPC servers.
//!
//! - [`GrpcLayer`]: what every gRPC listener (each service host and the gateway) puts in front
//!   of what it serves, outermost first: `x-request-id` assigned (a UUID unless the caller sent
//!   one) and echoed on the response, gRPC-Web ⇄ gRPC, the per-RPC span and metrics
//!   ([`crate::observe`]), load shedding at the concurrency limit ([`crate::shed`]).
//! - [`GrpcTimeoutLayer`]: the caller's `grpc-timeout` enforced on the server, as
//!   `tonic::transport::Server` does (the service hosts; the gateway propagates deadlines
//!   upstream instead).
//! - [`tonic_connection`]: what `tonic::transport::Server` adds per connection, so handlers keep
//!   `Request::remote_addr` and errors become gRPC statuses.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tonic::service::RecoverError;
use tonic::transport::server::TcpConnectInfo;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::util::MapRequest;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer,
};

use super::accept::ConnectionInfo;
use crate::observe::{RpcObserve, RpcObserveLayer};
use crate::shed::{LoadShed, LoadShedLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The common layers of a gRPC listener; see the module docs. Clones share one concurrency
/// limit.
#[derive(Debug, Clone)]
pub struct GrpcLayer {
    shed: LoadShedLayer,
}

impl GrpcLayer {
    /// At most `concurrency_limit` calls in flight (health checks exempt); more are answered
    /// `RESOURCE_EXHAUSTED` at once.
    pub fn new(concurrency_limit: usize) -> Self {
        Self {
            shed: LoadShedLayer::new(concurrency_limit),
        }
    }
}

/// A service behind [`GrpcLayer`].
pub type Grpc<S> =
    SetRequestId<PropagateRequestId<GrpcWebService<RpcObserve<LoadShed<S>>>>, MakeRequestUuid>;

impl<S> Layer<S> for GrpcLayer {
    type Service = Grpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(GrpcWebLayer::new())
            .layer(RpcObserveLayer)
            .layer(self.shed.clone())
            .service(inner)
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
