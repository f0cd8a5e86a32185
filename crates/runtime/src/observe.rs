//! Per-RPC observability as a tower layer: one span per call (child of the caller's W3C trace
//! context, carrying the request id), and Prometheus metrics in the conventional
//! `grpc_server_*` shape:
//!
//! - `grpc_server_started_total{service,method}`
//! - `grpc_server_handled_total{service,method,code}` (errors are the non-`OK` codes)
//! - `grpc_server_handling_seconds{service,method}` histogram, until the last byte of the response
//!
//! The status is read where gRPC puts it: response headers for trailers-only answers, otherwise
//! the trailers at the end of the body. A body dropped before its end (client went away) counts as
//! `CANCELLED`.
//!
//! Only methods this process knows get their own labels: the contract's
//! (`storemesh_proto::FILE_DESCRIPTOR_SET`), health and reflection, and whatever a host
//! registers ([`register_methods`]). Every other path, which the client chooses, shares the
//! `unknown` labels, so clients cannot grow the metrics (or this layer's map) without bound.
//!
//! The names and their descriptions live with the process-wide recorder in [`crate::metrics`].

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::code_name;
pub use crate::metrics::{HANDLED_TOTAL, HANDLING_SECONDS, STARTED_TOTAL};
use crate::telemetry::adopt_remote_parent;

/// Splits `/package.Service/Method` into its parts; anything else is labelled `unknown`.
fn rpc_names(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method)) if !service.is_empty() && !method.is_empty() => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

/// The request paths (`/package.Service/Method`) given their own metric labels.
static KNOWN_METHODS: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(|| {
    let mut known = HashSet::new();
    for set in [
        storemesh_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        known.extend(method_paths(set));
    }
    RwLock::new(known)
});

/// The request paths of every method of every service in an encoded `FileDescriptorSet`
/// (none when it does not decode).
fn method_paths(descriptor_set: &[u8]) -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptor_set) else {
        tracing::warn!("a descriptor set does not decode; its methods are labelled `unknown`");
        return Vec::new();
    };
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let service_name = if package.is_empty() {
                service.name().to_owned()
            } else {
                format!("{package}.{}", service.name())
            };
            for method in &service.method {
                paths.push(format!("/{service_name}/{}", method.name()));
            }
        }
    }
    paths
}

/// Gives the methods of an encoded `FileDescriptorSet` their own metric labels (a host calls
/// it for the services it adds).
pub fn register_methods(descriptor_set: &[u8]) {
    let paths = method_paths(descriptor_set);
    let mut known = KNOWN_METHODS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    known.extend(paths);
}

fn is_known(path: &str) -> bool {
    KNOWN_METHODS
        .read()
        .map(|known| known.contains(path))
        .unwrap_or_else(|poisoned| poisoned.into_inner().contains(path))
}

/// One RPC path's metric handles, registered once. Looking a labelled metric up in the
/// registry allocates and hashes its labels; on a hot read that showed on every call.
struct RpcMetrics {
    service: String,
    method: String,
    started: metrics::Counter,
    seconds: metrics::Histogram,
    /// `grpc_server_handled_total` by status code (0–16), registered on first use.
    handled: [OnceLock<metrics::Counter>; 17],
}

impl RpcMetrics {
    fn new(service: String, method: String) -> Self {
        let labels = [("service", service.clone()), ("method", method.clone())];
        Self {
            started: metrics::counter!(STARTED_TOTAL, &labels),
            seconds: metrics::histogram!(HANDLING_SECONDS, &labels),
            handled: std::array::from_fn(|_| OnceLock::new()),
            service,
            method,
        }
    }

    fn handled(&self, code: tonic::Code) -> Option<&metrics::Counter> {
        let slot = self.handled.get(code as usize)?;
        Some(slot.get_or_init(|| {
            metrics::counter!(
                HANDLED_TOTAL,
                &[
                    ("service", self.service.clone()),
                    ("method", self.method.clone()),
                    ("code", code_name(code).to_owned()),
                ]
            )
        }))
    }
}

/// The handles for `path`, made on its first call.
fn rpc_metrics(path: &str) -> Arc<RpcMetrics> {
    static BY_PATH: LazyLock<RwLock<HashMap<String, Arc<RpcMetrics>>>> =
        LazyLock::new(RwLock::default);
    static UNKNOWN: LazyLock<Arc<RpcMetrics>> =
        LazyLock::new(|| Arc::new(RpcMetrics::new("unknown".into(), "unknown".into())));
    let known = match BY_PATH.read() {
        Ok(map) => map.get(path).cloned(),
        Err(poisoned) => poisoned.into_inner().get(path).cloned(),
    };
    if let Some(metrics) = known {
        return metrics;
    }
    let (service, method) = rpc_names(path);
    if service == "unknown" || !is_known(path) {
        return UNKNOWN.clone();
    }
    let mut map = match BY_PATH.write() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(metrics) = map.get(path) {
        return metrics.clone();
    }
    let metrics = Arc::new(RpcMetrics::new(service, method));
    map.insert(path.to_owned(), metrics.clone());
    metrics
}

/// A call's correlation ids, put in the request's extensions by the server layers: the
/// server's own id (always made here) and the caller's `x-request-id` when it was well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    pub own: String,
    pub client: Option<String>,
}

/// Records the outcome of one served call exactly once (on status, or on drop).
pub struct CallRecord {
    metrics: Arc<RpcMetrics>,
    start: Instant,
    span: tracing::Span,
    done: bool,
}

impl StatusSink for CallRecord {
    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        let name = code_name(code);
        let elapsed = self.start.elapsed();
        if let Some(counter) = self.metrics.handled(code) {
            counter.increment(1);
        }
        self.metrics.seconds.record(elapsed.as_secs_f64());
        self.span.record("grpc.code", name);
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        match code {
            tonic::Code::Ok | tonic::Code::NotFound | tonic::Code::Cancelled => {
                tracing::debug!(parent: &self.span, grpc.code = name, elapsed_ms, "rpc finished");
            }
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                tracing::error!(parent: &self.span, grpc.code = name, elapsed_ms, "rpc failed");
            }
            _ => {
                tracing::info!(parent: &self.span, grpc.code = name, elapsed_ms, "rpc refused");
            }
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// The observability layer; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcObserveLayer;

impl<S> Layer<S> for RpcObserveLayer {
    type Service = RpcObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcObserve { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcObserve<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcObserve<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<StatusBody<ResBody, CallRecord>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let metrics = rpc_metrics(request.uri().path());
        let ids = request.extensions().get::<RequestIds>();
        // Without the server layers (a bare use of this layer), the header as it is.
        let request_id = ids.map(|ids| ids.own.clone()).unwrap_or_else(|| {
            request
                .headers()
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        });
        let client_request_id = ids.and_then(|ids| ids.client.clone());
        let span = tracing::info_span!(
            "rpc",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %metrics.service,
            rpc.method = %metrics.method,
            request_id = %request_id,
            client_request_id = tracing::field::Empty,
            grpc.code = tracing::field::Empty,
            subject = tracing::field::Empty,
        );
        if let Some(client) = &client_request_id {
            span.record("client_request_id", client.as_str());
        }
        adopt_remote_parent(&span, request.headers());
        metrics.started.increment(1);
        let mut record = CallRecord {
            metrics,
            start: Instant::now(),
            span: span.clone(),
            done: false,
        };
        let future = self.inner.call(request).instrument(span);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    if let Some(code) = status_code(response.headers()) {
                        record.finish(code);
                    }
                    Ok(response.map(|body| StatusBody::new(body, record)))
                }
                Err(error) => {
                    record.finish(tonic::Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

/// Told the final gRPC status of a call. `finish` may be called more than once (e.g. for a
/// trailers-only answer and again at the end of its empty body); only the first counts.
pub trait StatusSink {
    fn finish(&mut self, code: tonic::Code);
}

pin_project! {
    /// A gRPC response body that reports the call's status to `S` when its trailers (or its
    /// end, or an error) arrive. Dropping it early drops `S`, whose `Drop` can count the call
    /// as cancelled.
    pub struct StatusBody<B, S> {
        #[pin]
        inner: B,
        sink: Option<S>,
    }
}

impl<B, S> StatusBody<B, S> {
    pub fn new(inner: B, sink: S) -> Self {
        Self {
            inner,
            sink: Some(sink),
        }
    }
}

/// The `grpc-status` of a header or trailer map.
pub fn status_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl<B: Body, S: StatusSink> Body for StatusBody<B, S> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(sink) = this.sink.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        sink.finish(status_code(trailers).unwrap_or(tonic::Code::Unknown));
                    }
                }
                Some(Err(_)) => sink.finish(tonic::Code::Internal),
                // Ending without trailers or a header status is malformed gRPC.
                None => sink.finish(tonic::Code::Unknown),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            rpc_names("/storemesh.auth.v1.AuthService/Login"),
            ("storemesh.auth.v1.AuthService".into(), "Login".into())
        );
        assert_eq!(rpc_names("/"), ("unknown".into(), "unknown".into()));
        assert_eq!(rpc_names("/only"), ("unknown".into(), "unknown".into()));
    }

    #[test]
    fn only_known_methods_get_their_own_labels() {
        let login = rpc_metrics("/storemesh.auth.v1.AuthService/Login");
        assert_eq!(
            (login.service.as_str(), login.method.as_str()),
            ("storemesh.auth.v1.AuthService", "Login")
        );
        assert!(Arc::ptr_eq(
            &login,
            &rpc_metrics("/storemesh.auth.v1.AuthService/Login")
        ));
        assert_eq!(rpc_metrics("/grpc.health.v1.Health/Check").method, "Check");
        assert_eq!(
            rpc_metrics("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").method,
            "ServerReflectionInfo"
        );
        // Paths the client makes up, even under a known service, share one label.
        for path in [
            "/storemesh.auth.v1.AuthService/NoSuchMethod",
            "/storemesh.test.v1.Invented/M1",
            "/x/y",
        ] {
            let metrics = rpc_metrics(path);
            assert_eq!(
                (metrics.service.as_str(), metrics.method.as_str()),
                ("unknown", "unknown"),
                "{path}"
            );
        }
    }

    #[test]
    fn registered_methods_get_their_labels() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some("registered.proto".into()),
                package: Some("storemesh.registered.v1".into()),
                service: vec![prost_types::ServiceDescriptorProto {
                    name: Some("Registered".into()),
                    method: vec![prost_types::MethodDescriptorProto {
                        name: Some("Call".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let path = "/storemesh.registered.v1.Registered/Call";
        assert_eq!(rpc_metrics(path).method, "unknown");
        register_methods(&set.encode_to_vec());
        assert_eq!(rpc_metrics(path).method, "Call");
    }
}
