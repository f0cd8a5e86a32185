//! A tonic channel over an [`Upstream`], so generated clients get the same governance as the
//! gateway: `CatalogServiceClient::new(MeshChannel::new(upstream))`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::upstream::{ProxyBody, Upstream};

/// Methods outside the Storemesh contracts that are safe to send twice. The Storemesh ones are
/// marked in the contracts (`option idempotency_level`): see `storemesh_proto::contract`.
const OTHER_IDEMPOTENT_METHODS: &[&str] = &["/grpc.health.v1.Health/Check"];

/// Whether a call may be buffered and retried: the contract marks its method `NO_SIDE_EFFECTS`
/// (reads) or `IDEMPOTENT` (writes that are idempotent by contract, keyed by event id, image id
/// or object key), or it is one of [`OTHER_IDEMPOTENT_METHODS`]. Only the method decides: a
/// caller-supplied header (such as `idempotency-key`) does not, or any caller could make the
/// gateway buffer bodies of methods that are not safe to send twice. An upstream can add methods
/// outside the contracts with `idempotent_methods` ([`Upstream::is_idempotent`]).
///
/// [`Upstream::is_idempotent`]: crate::Upstream::is_idempotent
pub fn is_idempotent(path: &str) -> bool {
    storemesh_proto::contract::is_idempotent(path) || OTHER_IDEMPOTENT_METHODS.contains(&path)
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
        let retryable = upstream.is_idempotent(request.uri().path());
        Box::pin(async move { Ok(upstream.call(request, retryable).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The methods retried before the contract said which: exactly these, still.
    #[test]
    fn the_retried_methods_are_unchanged() {
        let expected = [
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
        for path in expected {
            assert!(is_idempotent(path), "{path}");
        }
        let retried: Vec<&str> = storemesh_proto::contract::idempotent_methods()
            .iter()
            .map(String::as_str)
            .chain(OTHER_IDEMPOTENT_METHODS.iter().copied())
            .filter(|path| !expected.contains(path))
            .collect();
        assert!(retried.is_empty(), "newly retried: {retried:?}");

        // Only the method decides: an Upload is never replayed, whatever headers it carries.
        assert!(!is_idempotent(
            "/storemesh.storage.v1.StorageService/Upload"
        ));
    }
}
