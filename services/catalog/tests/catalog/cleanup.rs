//! The clean-up outbox and its worker: retries while storage is unreachable, then deletes
//! with a properly scoped service token, acknowledging on success and on NOT_FOUND.
//!
//! Storage is a stand-in here (a minimal `StorageService.Delete` on the configured port); the
//! end-to-end test against the real storage service belongs with that service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::AsyncCommands;
use storemesh_catalog::store::keys;
use storemesh_proto::auth::v1::WhoAmIRequest;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::storage::v1::{DeleteRequest, DeleteResponse};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::harness::*;

/// Keys and bearer tokens of the Delete calls received.
type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// Answers `Delete`: NOT_FOUND for keys containing `gone`, OK otherwise.
#[derive(Clone)]
struct FakeStorage {
    calls: Calls,
}

impl NamedService for FakeStorage {
    const NAME: &'static str = "storemesh.storage.v1.StorageService";
}

struct DeleteHandler(Calls);

impl tonic::server::UnaryService<DeleteRequest> for DeleteHandler {
    type Response = DeleteResponse;
    type Future = BoxFuture<'static, Result<Response<DeleteResponse>, Status>>;

    fn call(&mut self, request: Request<DeleteRequest>) -> Self::Future {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let key = request.into_inner().key;
        self.0.lock().unwrap().push((key.clone(), authorization));
        Box::pin(async move {
            if key.contains("gone") {
                Err(Status::not_found("no such object"))
            } else {
                Ok(Response::new(DeleteResponse { existed: true }))
            }
        })
    }
}

impl tower::Service<http::Request<Body>> for FakeStorage {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let calls = self.calls.clone();
        Box::pin(async move {
            if request.uri().path() != "/storemesh.storage.v1.StorageService/Delete" {
                return Ok(Status::unimplemented("only Delete").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                DeleteResponse,
                DeleteRequest,
            >::default());
            Ok(grpc.unary(DeleteHandler(calls), request).await)
        })
    }
}

#[tokio::test]
async fn worker_retries_while_storage_is_down_then_deletes_with_a_scoped_token() {
    // Storage's address, with nothing listening yet.
    let storage_port = storemesh_testkit::free_port().unwrap();
    let storage_addr = SocketAddr::from(([127, 0, 0, 1], storage_port));
    let harness = Harness::start_with(|settings| {
        settings.catalog.storage_endpoint = format!("http://{storage_addr}");
        settings.catalog.service_client_id = "catalog".into();
        settings.catalog.service_client_secret = SECRET.into();
    })
    .await;
    let stats = harness.handle.cleanup_stats().expect("the worker runs");
    let seller = harness.seller("cleanup@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;

    let product = create(&mut client, &seller.token, new_product("Doomed", &[])).await;
    attach(&mut client, &seller.token, &product.id, "doomed").await;
    attach(&mut client, &seller.token, &product.id, "gone").await;
    record(
        &mut client,
        &thumbnail,
        "doomed",
        variant(&product.id, "doomed", 160),
        "e1",
    )
    .await
    .unwrap();
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: product.id.clone(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap();

    // Storage is down: the worker keeps retrying and the entries stay queued.
    eventually(
        "the worker retried several times",
        Duration::from_secs(10),
        || async { stats.failures() >= 3 },
    )
    .await;
    let mut redis = harness.redis().await;
    let queued: usize = redis.xlen(keys::CLEANUP_STREAM).await.unwrap();
    assert_eq!(
        queued, 3,
        "nothing acknowledged while storage is unreachable"
    );
    assert_eq!(stats.acknowledged(), 0);

    // Storage comes up: every entry is deleted (or found gone) and acknowledged.
    let calls = Calls::default();
    let listener = tokio::net::TcpListener::bind(storage_addr).await.unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FakeStorage {
                calls: calls.clone(),
            })
            .serve_with_incoming(tokio_stream_incoming(listener)),
    );
    eventually("the outbox is drained", Duration::from_secs(15), || {
        let mut redis = redis.clone();
        async move {
            let length: usize = redis.xlen(keys::CLEANUP_STREAM).await.unwrap();
            length == 0
        }
    })
    .await;
    assert_eq!(stats.acknowledged(), 3);
    let calls = calls.lock().unwrap().clone();
    let mut deleted: Vec<&str> = calls.iter().map(|(key, _)| key.as_str()).collect();
    deleted.sort_unstable();
    deleted.dedup();
    let p = &product.id;
    assert_eq!(
        deleted,
        [
            format!("products/{p}/originals/doomed"),
            format!("products/{p}/originals/gone"),
            format!("products/{p}/thumbnails/doomed/w160.jpg"),
        ]
    );
    // Nothing is left pending in the group either.
    let pending: redis::streams::StreamPendingReply = redis
        .xpending(keys::CLEANUP_STREAM, storemesh_catalog::cleanup::GROUP)
        .await
        .unwrap();
    assert_eq!(pending.count(), 0);

    // The worker authenticated as its service account with exactly the delete scope.
    let authorization = &calls[0].1;
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let principal = harness
        .auth_client()
        .await
        .who_am_i(bearer(WhoAmIRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(principal.subject, "catalog");
    assert_eq!(principal.scopes, ["storage.delete:products"]);
    server.abort();
}

/// The listener as the incoming-connection stream tonic serves.
fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}

/// `mesh_upstream_requests_total{upstream, endpoint, outcome="OK"}` from the process's recorder.
fn answered(upstream: &str, endpoint: &str) -> f64 {
    let text = storemesh_runtime::metrics::prometheus().render();
    text.lines()
        .filter(|line| line.starts_with("mesh_upstream_requests_total{"))
        .filter(|line| line.contains(&format!("upstream=\"{upstream}\"")))
        .filter(|line| line.contains(&format!("endpoint=\"{endpoint}\"")))
        .filter(|line| line.contains("outcome=\"OK\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The worker's calls are mesh calls (`storemesh_mesh::client`): `Delete` on upstream
/// `storage`, and its service token on upstream `auth`, the channel the verification keys
/// came through.
#[tokio::test]
async fn the_workers_calls_go_through_the_mesh() {
    // The recorder first: a series touched before it is installed is lost.
    let _ = storemesh_runtime::metrics::prometheus();
    let calls = Calls::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let storage_addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FakeStorage {
                calls: calls.clone(),
            })
            .serve_with_incoming(tokio_stream_incoming(listener)),
    );
    let harness = Harness::start_with(|settings| {
        settings.catalog.storage_endpoint = format!("http://{storage_addr}");
        settings.catalog.service_client_id = "catalog".into();
        settings.catalog.service_client_secret = SECRET.into();
    })
    .await;
    let auth = harness.auth.addr.to_string();
    let keys = answered("auth", &auth);
    assert!(keys >= 1.0, "the verification keys came through the mesh");

    let stats = harness.handle.cleanup_stats().expect("the worker runs");
    let seller = harness.seller("mesh-cleanup@example.com").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Doomed", &[])).await;
    attach(&mut client, &seller.token, &product.id, "doomed").await;
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: product.id.clone(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    eventually(
        "the original is deleted",
        Duration::from_secs(10),
        || async { stats.acknowledged() == 1 },
    )
    .await;
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(answered("storage", &storage_addr), 1.0, "Delete");
    assert_eq!(answered("auth", &auth) - keys, 1.0, "IssueServiceToken");
    server.abort();
}
