//! The gateway's limits against real hosts over real sockets: token buckets keyed by the end
//! client (through trusted proxies only), service identities outside the address buckets,
//! rejections in the metrics, bounded bucket tables, and what is buffered for replay.
//!
//! Clients pick their source address on the loopback network (127.0.0.0/8 is all local on
//! Linux), so "another machine" is another address here.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use storemesh_auth::testing;
use storemesh_gateway::config::GatewayRateLimit;
use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;
use storemesh_testkit::echo::{self, EchoServiceClient, pb::EchoRequest, pb::EchoResponse};
use storemesh_testkit::{RedisServer, RunningHost};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

const ECHO: &str = "storemesh.testing.v1.EchoService";
/// The address of the "edge runtime": a trusted proxy that also makes calls of its own.
const PROXY: &str = "127.0.0.2";

/// An echo upstream that counts its calls, remembers the `x-forwarded-for` it was sent, and
/// answers `UNAVAILABLE` after reading the request when `fail` is set (what a retry follows).
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<AtomicUsize>,
    forwarded: Arc<Mutex<Vec<String>>>,
    fail: bool,
}

#[tonic::async_trait]
impl echo::pb::echo_service_server::EchoService for Recorder {
    type EchoStreamStream = echo::EchoResponseStream;

    async fn echo_stream(
        &self,
        _request: Request<echo::pb::EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        Err(Status::unimplemented("unary only"))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let forwarded = request
            .metadata()
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        self.forwarded.lock().unwrap().push(forwarded);
        if self.fail {
            return Err(Status::unavailable("failing after reading the request"));
        }
        Ok(Response::new(EchoResponse {
            message: request.into_inner().message,
        }))
    }
}

async fn recorder(fail: bool) -> (SocketAddr, Recorder) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder {
        fail,
        ..Recorder::default()
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo::pb::echo_service_server::EchoServiceServer::new(
                recorder.clone(),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, recorder)
}

struct Mesh {
    _redis: RedisServer,
    _keys: tempfile::TempDir,
    auth: RunningHost,
    _catalog: RunningHost,
    echo: Recorder,
    gateway: SocketAddr,
    admin: SocketAddr,
    handle: Arc<storemesh_gateway::proxy::Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Redis, auth (with the `images` service account), catalog, a [`Recorder`] routed as the echo
/// service (public, `Echo` failing when `failing_echo`), and the gateway trusting [`PROXY`].
async fn mesh(failing_echo: bool, adjust: impl FnOnce(&mut GatewayConfig)) -> Mesh {
    // Metrics handles are registered on first use: the recorder must exist before any call.
    let _ = storemesh_runtime::metrics::prometheus();
    let redis = RedisServer::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut auth_settings = testing::auth_settings(&redis.url(), keys.path());
    auth_settings.auth.service_accounts = vec![testing::service_account(
        "images",
        "images-secret",
        &["catalog.read"],
    )];
    let auth = RunningHost::spawn(storemesh_auth::build(auth_settings).await.unwrap()).unwrap();
    let tokens = TokensConfig {
        auth_endpoint: auth.endpoint(),
        ..TokensConfig::default()
    };
    let catalog = RunningHost::spawn(
        storemesh_catalog::build(storemesh_catalog::CatalogSettings {
            catalog: storemesh_catalog::CatalogConfig {
                server: test_server(),
                ..storemesh_catalog::CatalogConfig::default()
            },
            redis: RedisConfig {
                url: redis.url(),
                ..RedisConfig::default()
            },
            tokens: tokens.clone(),
        })
        .await
        .unwrap(),
    )
    .unwrap();
    let (echo_addr, echo) = recorder(failing_echo).await;

    let mut config = GatewayConfig {
        server: test_server(),
        ..GatewayConfig::default()
    };
    config.server.trusted_proxies = vec![format!("{PROXY}/32").parse().unwrap()];
    for (name, addr) in [
        ("auth", auth.addr),
        ("catalog", catalog.addr),
        ("echo", echo_addr),
    ] {
        config
            .upstreams
            .insert(name.into(), UpstreamConfig::addresses([addr.to_string()]));
    }
    config.routes.insert(ECHO.into(), "echo".into());
    config.public_methods.push(format!("/{ECHO}/Echo"));
    adjust(&mut config);
    let bound = storemesh_gateway::build(
        GatewaySettings {
            gateway: config,
            tokens,
        },
        &[echo::pb::FILE_DESCRIPTOR_SET],
    )
    .await
    .unwrap();
    let gateway = bound.local_addr().unwrap();
    let admin = bound.admin_addr().unwrap();
    let handle = bound.gateway();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));
    Mesh {
        _redis: redis,
        _keys: keys,
        auth,
        _catalog: catalog,
        echo,
        gateway,
        admin,
        handle,
        stop: Some(stop),
    }
}

impl Mesh {
    /// A channel to the gateway from the local address `from`.
    async fn channel_from(&self, from: &str) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.gateway))
            .unwrap()
            .local_address(Some(from.parse::<IpAddr>().unwrap()))
            .connect()
            .await
            .unwrap()
    }

    /// Registers and logs in a seller directly at auth (not through the gateway's buckets).
    async fn seller(&self, email: &str) -> String {
        let mut auth = AuthServiceClient::new(self.auth.channel().await.unwrap());
        auth.register(auth_pb::RegisterRequest {
            email: email.into(),
            password: "a good long password".into(),
            display_name: "Seller".into(),
            role: auth_pb::Role::Seller.into(),
        })
        .await
        .unwrap();
        auth.login(auth_pb::LoginRequest {
            email: email.into(),
            password: "a good long password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token
    }

    async fn service_token(&self) -> String {
        let mut auth = AuthServiceClient::new(self.auth.channel().await.unwrap());
        auth.issue_service_token(auth_pb::IssueServiceTokenRequest {
            client_id: "images".into(),
            client_secret: "images-secret".into(),
            requested_scopes: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }
}

fn with_metadata<T>(message: T, entries: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in entries {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn echo_request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        delay_ms: 0,
    }
}

async fn create_product(client: &mut CatalogServiceClient<Channel>, token: &str) -> String {
    client
        .create_product(with_metadata(
            pb::CreateProductRequest {
                title: "Lamp".into(),
                price: Some(pb::Money {
                    amount_minor: 1_000,
                    currency_code: "EUR".into(),
                }),
                ..Default::default()
            },
            &[("authorization", &bearer(token))],
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .id
}

/// Calls `GetProduct` until the gateway refuses one with `RESOURCE_EXHAUSTED`.
async fn hammer_until_limited(client: &mut CatalogServiceClient<Channel>, token: &str, id: &str) {
    for _ in 0..200 {
        let result = client
            .get_product(with_metadata(
                pb::GetProductRequest { id: id.into() },
                &[("authorization", &bearer(token))],
            ))
            .await;
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.metadata().get("retry-after").is_some());
            return;
        }
    }
    panic!("the address bucket never ran dry");
}

/// The issue's run: one seller's `GetProduct` load from the address the edge runtime also
/// calls from made another seller's uploads fail with 429. Now the other seller's calls,
/// forwarded by the trusted proxy, count against their own address; the edge's calls with a
/// service token count against no address at all; a spoofed `x-forwarded-for` from an
/// untrusted peer changes nothing; and the services see the end client's address.
#[tokio::test]
async fn one_clients_load_does_not_starve_others_behind_the_same_proxy() {
    let mesh = mesh(false, |config| {
        config.rate_limit = GatewayRateLimit {
            per_address_per_sec: 1,
            per_address_burst: 20,
            ..GatewayRateLimit::default()
        };
    })
    .await;
    let seller_a = mesh.seller("a@example.com").await;
    let seller_b = mesh.seller("b@example.com").await;
    let service = mesh.service_token().await;

    // Seller A calls from the proxy's address itself (one machine, as with `storemesh up`).
    let mut from_proxy = CatalogServiceClient::new(mesh.channel_from(PROXY).await);
    let a_product = create_product(&mut from_proxy, &seller_a).await;
    let b_product = create_product(&mut from_proxy, &seller_b).await;
    hammer_until_limited(&mut from_proxy, &seller_a, &a_product).await;

    // Seller B's calls, forwarded by the proxy with B's own address, still succeed.
    for n in 0..5 {
        let product = from_proxy
            .get_product(with_metadata(
                pb::GetProductRequest {
                    id: b_product.clone(),
                },
                &[
                    ("authorization", &bearer(&seller_b)),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
            ))
            .await
            .unwrap_or_else(|status| panic!("call {n} of seller B was refused: {status:?}"));
        assert_eq!(product.into_inner().product.unwrap().id, b_product);
    }
    // The proxy's own calls with a service token are not charged to its (empty) address bucket.
    for n in 0..5 {
        let result = from_proxy
            .get_product(with_metadata(
                pb::GetProductRequest {
                    id: a_product.clone(),
                },
                &[("authorization", &bearer(&service))],
            ))
            .await;
        if let Err(status) = result {
            assert_ne!(
                status.code(),
                Code::ResourceExhausted,
                "service call {n}: {status:?}"
            );
        }
    }

    // From an untrusted peer, `x-forwarded-for` is ignored: the peer's bucket still counts.
    let mut untrusted = CatalogServiceClient::new(mesh.channel_from("127.0.0.3").await);
    hammer_until_limited(&mut untrusted, &seller_a, &a_product).await;
    let spoofed = untrusted
        .get_product(with_metadata(
            pb::GetProductRequest {
                id: a_product.clone(),
            },
            &[
                ("authorization", &bearer(&seller_a)),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(spoofed.code(), Code::ResourceExhausted);

    // IPv6 clients behind the proxy share the bucket of their /64.
    let mut echo_client = EchoServiceClient::new(mesh.channel_from(PROXY).await);
    let mut refused = None;
    for n in 1..=100 {
        let address = format!("2001:db8:1:2::{n:x}");
        let result = echo_client
            .echo(with_metadata(
                echo_request("v6"),
                &[("x-forwarded-for", &address)],
            ))
            .await;
        if let Err(status) = result {
            refused = Some((n, status));
            break;
        }
    }
    let (n, status) = refused.expect("one /64 is one bucket");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(n <= 25, "refused after {n} calls");

    // What the services see: the resolved end client, not what a caller claimed.
    let before = mesh.echo.forwarded.lock().unwrap().len();
    let mut direct = EchoServiceClient::new(mesh.channel_from("127.0.0.4").await);
    direct
        .echo(with_metadata(
            echo_request("spoof"),
            &[("x-forwarded-for", "203.0.113.9")],
        ))
        .await
        .unwrap();
    let mut proxied = EchoServiceClient::new(mesh.channel_from(PROXY).await);
    proxied
        .echo(with_metadata(
            echo_request("proxied"),
            &[("x-forwarded-for", "203.0.113.9, 198.51.100.8")],
        ))
        .await
        .unwrap();
    let forwarded = mesh.echo.forwarded.lock().unwrap()[before..].to_vec();
    assert_eq!(forwarded, ["127.0.0.4", "198.51.100.8"]);
}

/// Every call the gateway refuses itself shows in `grpc_server_handled_total` with its method
/// and code, over gRPC and gRPC-Web: rate limited, unauthenticated, over the byte cap, unknown
/// service.
#[tokio::test]
async fn refused_calls_are_counted_by_method_and_code() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    let mesh = mesh(false, |config| {
        config.rate_limit = GatewayRateLimit {
            per_address_per_sec: 1,
            per_address_burst: 5,
            ..GatewayRateLimit::default()
        };
        config.max_request_bytes = 4 * 1024;
    })
    .await;
    let handled = |text: &str, method: Option<&str>, code: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with("grpc_server_handled_total{"))
            .filter(|line| method.is_none_or(|m| line.contains(&format!("method=\"{m}\""))))
            .filter(|line| line.contains(&format!("code=\"{code}\"")))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let before = mesh.metrics().await;

    let mut catalog = CatalogServiceClient::new(mesh.channel_from("127.0.0.5").await);
    let status = catalog
        .get_product(pb::GetProductRequest {
            id: "x".repeat(16 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status = catalog
        .create_product(pb::CreateProductRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut auth = AuthServiceClient::new(mesh.channel_from("127.0.0.6").await);
    let mut limited = 0;
    for _ in 0..30 {
        if let Err(status) = auth.get_public_keys(auth_pb::GetPublicKeysRequest {}).await {
            assert_eq!(status.code(), Code::ResourceExhausted);
            limited += 1;
        }
    }
    assert!(limited >= 20, "{limited} refused");
    // gRPC-Web over HTTP/1.1 from the same (empty) address.
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some("127.0.0.6".parse().unwrap()));
    let web = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    for _ in 0..3 {
        let request = http::Request::post(format!(
            "http://{}/storemesh.auth.v1.AuthService/GetPublicKeys",
            mesh.gateway
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
        let response = web.request(request).await.unwrap();
        let code = response.headers().get("grpc-status").cloned();
        let _ = response.into_body().collect().await;
        assert_eq!(code.unwrap(), "8", "RESOURCE_EXHAUSTED");
        limited += 1;
    }

    let mut unknown = tonic::client::Grpc::new(mesh.channel_from("127.0.0.7").await);
    unknown.ready().await.unwrap();
    let status = unknown
        .unary::<_, EchoRequest, _>(
            Request::new(echo_request("?")),
            "/storemesh.nothing.v1.NoService/Call".parse().unwrap(),
            tonic_prost::ProstCodec::<EchoRequest, EchoRequest>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // Other tests in this binary share the process-wide recorder: compare increases.
    let after = mesh.metrics().await;
    let grew = |method: Option<&str>, code: &str| {
        handled(&after, method, code) - handled(&before, method, code)
    };
    let shown = || {
        after
            .lines()
            .filter(|line| line.starts_with("grpc_server_handled_total"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        grew(Some("GetPublicKeys"), "RESOURCE_EXHAUSTED") >= f64::from(limited),
        "{limited} refused: {}",
        shown()
    );
    assert!(
        grew(Some("GetProduct"), "RESOURCE_EXHAUSTED") >= 1.0,
        "{}",
        shown()
    );
    assert!(
        grew(Some("CreateProduct"), "UNAUTHENTICATED") >= 1.0,
        "{}",
        shown()
    );
    assert!(grew(None, "UNIMPLEMENTED") >= 1.0, "{}", shown());
}

/// Callers that rotate addresses (here, forwarded through the trusted proxy) cannot grow the
/// bucket tables past `max_keys`, and pruning empties them again once the buckets refill.
#[tokio::test]
async fn bucket_tables_stay_bounded_and_are_pruned() {
    let mesh = mesh(false, |config| {
        config.rate_limit = GatewayRateLimit {
            max_keys: 1_000,
            prune_interval_ms: 200,
            ..GatewayRateLimit::default()
        };
    })
    .await;
    let channel = mesh.channel_from(PROXY).await;
    let calls = (0..1_500_u32).map(|n| {
        let mut client = EchoServiceClient::new(channel.clone());
        let address = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff);
        async move {
            let _ = client
                .echo(with_metadata(
                    echo_request("hi"),
                    &[("x-forwarded-for", &address)],
                ))
                .await;
        }
    });
    futures::StreamExt::collect::<Vec<()>>(futures::StreamExt::buffer_unordered(
        futures::stream::iter(calls),
        50,
    ))
    .await;
    let tracked = mesh.handle.tracked_addresses();
    assert!(
        tracked <= 1_000 + 50,
        "{tracked} addresses tracked past the cap"
    );
    // Every bucket refills within a few milliseconds; the next prunes drop them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mesh.handle.tracked_addresses() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} addresses still tracked",
            mesh.handle.tracked_addresses()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `idempotency-key` header does not make a method replayable: a non-idempotent call whose
/// upstream fails after reading it is sent once, not retried.
#[tokio::test]
async fn an_idempotency_key_header_does_not_make_a_call_replayable() {
    let mesh = mesh(true, |_| {}).await;
    let mut client = EchoServiceClient::new(mesh.channel_from("127.0.0.8").await);
    let status = client
        .echo(with_metadata(
            echo_request("once"),
            &[("idempotency-key", "k-1")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        mesh.echo.calls.load(Ordering::SeqCst),
        1,
        "sent exactly once"
    );
}

/// A replayable call's body is buffered for at most `retry_buffer_timeout_ms`: a client that
/// sends its message and then never ends the stream is answered `DEADLINE_EXCEEDED` instead of
/// holding the call open.
#[tokio::test]
async fn buffering_a_replayable_body_has_a_deadline() {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let mesh = mesh(false, |config| {
        config.server.first_message_timeout_ms = 300_000;
        config
            .upstreams
            .get_mut("auth")
            .unwrap()
            .retry_buffer_timeout_ms = 300;
    })
    .await;
    let message = auth_pb::GetPublicKeysRequest {}.encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put_slice(&message);
    // The first (and only) message, then nothing: the stream stays open.
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    sender
        .send(Ok(http_body::Frame::data(frame.freeze())))
        .await
        .unwrap();
    let body =
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = http::Request::post(format!(
        "http://{}/storemesh.auth.v1.AuthService/GetPublicKeys",
        mesh.gateway
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let response = client.request(request).await.unwrap();
        match response.headers().get("grpc-status") {
            Some(code) => code.to_str().unwrap().to_owned(),
            None => {
                let collected = response.into_body().collect().await.unwrap();
                collected.trailers().unwrap()["grpc-status"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            }
        }
    })
    .await
    .expect("the gateway answered before the test's deadline");
    assert_eq!(answer, "4", "DEADLINE_EXCEEDED");
    drop(sender);
}
