//! A tonic channel over an [`Upstream`], so generated clients get the same governance as the
//! gateway: `CatalogServiceClient::new(MeshChannel::new(upstream))`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::upstream::{ProxyBody, Upstream};

/// Storemesh methods that are safe to send twice: reads, and writes that are idempotent by
/// contract (keyed by event id, image id or object key). Any call carrying an
/// `idempotency-key` header is treated as idempotent too.
const IDEMPOTENT_METHODS: &[&str] = &[
    "/storemesh.auth.v1.AuthService/WhoAmI",
    "/storemesh.auth.v1.AuthService/GetPublicKeys",
    "/storemesh.auth.v1.AuthService/ListUsers",
    "/storemesh.catalog.v1.CatalogService/GetProduct",
    "/storemesh.catalog.v1.CatalogService/ListProducts",
    "/storemesh.catalog.v1.CatalogService/GetImage",
    "/storemesh.catalog.v1.CatalogService/ListProductImages",
    "/storemesh.catalog.v1.CatalogService/ListImages",
    "/storemesh.catalog.v1.CatalogService/AttachImage",
    "/storemesh.catalog.v1.CatalogService/RecordVariant",
    "/storemesh.catalog.v1.CatalogService/MarkImageFailed",
    "/storemesh.storage.v1.StorageService/Stat",
    "/storemesh.storage.v1.StorageService/List",
    "/storemesh.storage.v1.StorageService/Download",
    "/storemesh.storage.v1.StorageService/Delete",
    "/grpc.health.v1.Health/Check",
];

/// Whether a call may be retried.
pub fn is_idempotent(path: &str, headers: &http::HeaderMap) -> bool {
    IDEMPOTENT_METHODS.contains(&path) || headers.contains_key("idempotency-key")
}

#[derive(Clone)]
pub struct MeshChannel {
    upstream: Arc<Upstream>,
}

impl MeshChannel {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Self { upstream }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let upstream = self.upstream.clone();
        let retryable = is_idempotent(request.uri().path(), request.headers());
        Box::pin(async move { Ok(upstream.call(request, retryable).await) })
    }
}
