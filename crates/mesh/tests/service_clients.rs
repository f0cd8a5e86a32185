//! The service-to-service clients of `storemesh_mesh::client` against a stand-in auth service
//! over real sockets: the service-token cache (caching, renewal before expiry, single flight,
//! refresh after `UNAUTHENTICATED`, shared failures) and the token-verification key fetch,
//! both counted in the mesh's `mesh_upstream_*` metrics.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use storemesh_mesh::MeshChannel;
use storemesh_mesh::client::{self, ServiceTokens};
use storemesh_proto::auth::v1::{
    GetPublicKeysRequest, GetPublicKeysResponse, IssueServiceTokenRequest,
    IssueServiceTokenResponse,
};
use storemesh_runtime::Secret;
use storemesh_runtime::auth::{GrpcKeySource, KeySource, TokensConfig};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// How the stand-in answers, and what it was asked.
#[derive(Default)]
struct AuthState {
    issued: AtomicU64,
    key_fetches: AtomicU64,
    lifetime_secs: AtomicU64,
    delay_ms: AtomicU64,
    refuse: AtomicBool,
    requests: Mutex<Vec<IssueServiceTokenRequest>>,
}

/// `AuthService` with `IssueServiceToken` (tokens `token-1`, `token-2`, …) and
/// `GetPublicKeys` (no keys); everything else `UNIMPLEMENTED`.
#[derive(Clone)]
struct FakeAuth(Arc<AuthState>);

impl NamedService for FakeAuth {
    const NAME: &'static str = "storemesh.auth.v1.AuthService";
}

struct Issue(Arc<AuthState>);

impl tonic::server::UnaryService<IssueServiceTokenRequest> for Issue {
    type Response = IssueServiceTokenResponse;
    type Future = BoxFuture<'static, Result<Response<IssueServiceTokenResponse>, Status>>;

    fn call(&mut self, request: Request<IssueServiceTokenRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            state.requests.lock().unwrap().push(request.into_inner());
            let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(state.delay_ms.load(Ordering::SeqCst))).await;
            if state.refuse.load(Ordering::SeqCst) {
                return Err(Status::permission_denied("wrong client secret"));
            }
            let now = storemesh_runtime::time::since_epoch().as_secs();
            let expires = now + state.lifetime_secs.load(Ordering::SeqCst);
            Ok(Response::new(IssueServiceTokenResponse {
                access_token: format!("token-{n}"),
                expire_time: Some(prost_types::Timestamp {
                    seconds: i64::try_from(expires).unwrap(),
                    nanos: 0,
                }),
                scopes: Vec::new(),
            }))
        })
    }
}

struct Keys(Arc<AuthState>);

impl tonic::server::UnaryService<GetPublicKeysRequest> for Keys {
    type Response = GetPublicKeysResponse;
    type Future = BoxFuture<'static, Result<Response<GetPublicKeysResponse>, Status>>;

    fn call(&mut self, _request: Request<GetPublicKeysRequest>) -> Self::Future {
        self.0.key_fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(Response::new(GetPublicKeysResponse {
                jwks_json: r#"{"keys":[]}"#.into(),
                ..GetPublicKeysResponse::default()
            }))
        })
    }
}

impl tower::Service<http::Request<Body>> for FakeAuth {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/storemesh.auth.v1.AuthService/IssueServiceToken" => {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        IssueServiceTokenResponse,
                        IssueServiceTokenRequest,
                    >::default());
                    grpc.unary(Issue(state), request).await
                }
                "/storemesh.auth.v1.AuthService/GetPublicKeys" => {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        GetPublicKeysResponse,
                        GetPublicKeysRequest,
                    >::default());
                    grpc.unary(Keys(state), request).await
                }
                _ => Status::unimplemented("not in the stand-in").into_http(),
            })
        })
    }
}

struct Auth {
    state: Arc<AuthState>,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Auth {
    async fn start(lifetime_secs: u64) -> Self {
        let state = Arc::new(AuthState::default());
        state.lifetime_secs.store(lifetime_secs, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn({
            let service = FakeAuth(state.clone());
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await
                    .unwrap();
            }
        });
        Self {
            state,
            addr,
            server,
        }
    }

    fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// The channel a service builds from `tokens.auth_endpoint`.
    async fn channel(&self) -> MeshChannel {
        let tokens = TokensConfig {
            auth_endpoint: format!("http://{}", self.addr),
            ..TokensConfig::default()
        };
        client::auth_channel(&tokens).await.unwrap()
    }

    async fn tokens(&self) -> ServiceTokens {
        ServiceTokens::new(
            self.channel().await,
            "catalog",
            Secret::new("a-secret-of-16-chars".to_owned()),
        )
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `mesh_upstream_requests_total{upstream, endpoint, outcome}` from the process's recorder.
fn mesh_requests(upstream: &str, endpoint: &str, outcome: &str) -> f64 {
    let text = storemesh_runtime::metrics::prometheus().render();
    text.lines()
        .filter(|line| line.starts_with("mesh_upstream_requests_total{"))
        .filter(|line| line.contains(&format!("upstream=\"{upstream}\"")))
        .filter(|line| line.contains(&format!("endpoint=\"{endpoint}\"")))
        .filter(|line| line.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn tokens_are_cached_and_renewed_before_they_expire_through_the_mesh() {
    let _ = storemesh_runtime::metrics::prometheus();
    // A 6 s token is renewed after 1 s (at least 5 s before it expires).
    let auth = Auth::start(6).await;
    let tokens = auth.tokens().await.scopes(["storage.delete:products"]);

    let first = tokens.get().await.unwrap();
    assert_eq!(first, "token-1");
    assert_eq!(tokens.get().await.unwrap(), first, "cached");
    assert_eq!(tokens.get().await.unwrap(), first, "cached");
    assert_eq!(auth.issued(), 1);

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let renewed = tokens.get().await.unwrap();
    assert_eq!(renewed, "token-2", "renewed 5 s before the first expires");
    assert_eq!(tokens.get().await.unwrap(), renewed);
    assert_eq!(auth.issued(), 2);

    let requests = auth.state.requests.lock().unwrap().clone();
    for request in &requests {
        assert_eq!(request.client_id, "catalog");
        assert_eq!(request.client_secret, "a-secret-of-16-chars");
        assert_eq!(request.requested_scopes, ["storage.delete:products"]);
    }
    // Both fetches went through the mesh's upstream `auth`.
    let endpoint = auth.addr.to_string();
    assert_eq!(mesh_requests("auth", &endpoint, "OK"), 2.0);
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let auth = Auth::start(900).await;
    auth.state.delay_ms.store(300, Ordering::SeqCst);
    let tokens = Arc::new(auth.tokens().await);
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.get().await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "token-1");
    }
    assert_eq!(auth.issued(), 1, "one fetch for every waiting caller");
}

#[tokio::test]
async fn a_refused_token_is_replaced_and_a_renewed_one_kept() {
    let auth = Auth::start(900).await;
    let tokens = auth.tokens().await;
    let first = tokens.get().await.unwrap();

    // A call with it was answered UNAUTHENTICATED (revoked, or the signing key rotated).
    tokens.invalidate(&first).await;
    let second = tokens.get().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(auth.issued(), 2);

    // A late refusal of the old token does not throw the new one away.
    tokens.invalidate(&first).await;
    assert_eq!(tokens.get().await.unwrap(), second);
    assert_eq!(auth.issued(), 2);
}

#[tokio::test]
async fn a_failed_fetch_answers_its_waiters_and_the_next_caller_asks_again() {
    let auth = Auth::start(900).await;
    auth.state.refuse.store(true, Ordering::SeqCst);
    auth.state.delay_ms.store(300, Ordering::SeqCst);
    let tokens = Arc::new(auth.tokens().await);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.get().await })
        })
        .collect();
    for caller in callers {
        let status = caller.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
    assert_eq!(
        auth.issued(),
        1,
        "the waiters got the failed fetch's answer"
    );

    auth.state.refuse.store(false, Ordering::SeqCst);
    auth.state.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(tokens.get().await.unwrap(), "token-2");
    assert_eq!(auth.issued(), 2);
}

#[tokio::test]
async fn the_key_fetch_goes_through_the_mesh() {
    let _ = storemesh_runtime::metrics::prometheus();
    let auth = Auth::start(900).await;
    let source = GrpcKeySource::with_channel(auth.channel().await);
    assert!(source.fetch().await.unwrap().is_empty());
    assert!(source.fetch().await.unwrap().is_empty());
    assert_eq!(auth.state.key_fetches.load(Ordering::SeqCst), 2);
    assert_eq!(mesh_requests("auth", &auth.addr.to_string(), "OK"), 2.0);
}

/// Endpoint keys naming a DNS name make one endpoint per address, re-resolved.
#[tokio::test]
async fn a_dns_endpoint_is_discovered() {
    let _ = storemesh_runtime::metrics::prometheus();
    let auth = Auth::start(900).await;
    let port = auth.addr.port();
    let config =
        client::upstream("tokens.auth_endpoint", &format!("dns:///127.0.0.1:{port}")).unwrap();
    let upstream = storemesh_mesh::Upstream::start("auth-dns", config)
        .await
        .unwrap();
    assert_eq!(upstream.endpoints(), [format!("127.0.0.1:{port}")]);
    let tokens = ServiceTokens::new(
        MeshChannel::new(upstream),
        "catalog",
        Secret::new("a-secret-of-16-chars".to_owned()),
    );
    assert_eq!(tokens.get().await.unwrap(), "token-1");
    assert_eq!(
        mesh_requests("auth-dns", &format!("127.0.0.1:{port}"), "OK"),
        1.0
    );
}
