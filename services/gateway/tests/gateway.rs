//! The gateway in front of a real auth service (real Redis) and the echo fixture, over real
//! sockets with real clients (tonic, grpcurl, hand-built gRPC-Web).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use storemesh_auth::testing;
use storemesh_gateway::config::GatewayRateLimit;
use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::auth::v1 as pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;
use storemesh_testkit::echo::{self, EchoServiceClient, pb::EchoRequest};
use storemesh_testkit::{RedisServer, RunningHost};
use tonic::transport::Channel;
use tonic::{Code, Request};

const ECHO: &str = "storemesh.testing.v1.EchoService";

struct Mesh {
    _redis: RedisServer,
    _keys: tempfile::TempDir,
    _auth: RunningHost,
    _echo: RunningHost,
    gateway: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn mesh(adjust: impl FnOnce(&mut GatewayConfig)) -> Mesh {
    let redis = RedisServer::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut auth_settings = testing::auth_settings(&redis.url(), keys.path());
    // The gateway is auth's trusted proxy: auth counts the client the gateway forwards.
    auth_settings.auth.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let auth = RunningHost::spawn(storemesh_auth::build(auth_settings).await.unwrap()).unwrap();
    let echo = RunningHost::spawn(echo::host(test_server()).bind().await.unwrap()).unwrap();

    let mut config = GatewayConfig {
        server: test_server(),
        ..GatewayConfig::default()
    };
    config.upstreams.insert(
        "auth".into(),
        UpstreamConfig::addresses([auth.addr.to_string()]),
    );
    config.upstreams.insert(
        "echo".into(),
        UpstreamConfig::addresses([echo.addr.to_string()]),
    );
    config.routes.insert(ECHO.into(), "echo".into());
    adjust(&mut config);
    let tokens = TokensConfig {
        auth_endpoint: auth.endpoint(),
        ..TokensConfig::default()
    };
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));
    Mesh {
        _redis: redis,
        _keys: keys,
        _auth: auth,
        _echo: echo,
        gateway,
        stop: Some(stop),
    }
}

impl Mesh {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.gateway))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn seller_token(&self) -> String {
        let mut auth = AuthServiceClient::new(self.channel().await);
        auth.register(pb::RegisterRequest {
            email: "seller@example.com".into(),
            password: "a good long password".into(),
            display_name: "Seller".into(),
            role: pb::Role::Seller.into(),
        })
        .await
        .unwrap();
        auth.login(pb::LoginRequest {
            email: "seller@example.com".into(),
            password: "a good long password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token
    }
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn echo_request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        delay_ms: 0,
    }
}

#[tokio::test]
async fn routes_calls_and_checks_tokens_early() {
    let mesh = mesh(|_| {}).await;
    let token = mesh.seller_token().await;
    let mut auth = AuthServiceClient::new(mesh.channel().await);
    let me = auth
        .who_am_i(bearer(pb::WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(me.role(), pb::Role::Seller);

    let mut echo_client = EchoServiceClient::new(mesh.channel().await);
    let reply = echo_client
        .echo(bearer(echo_request("through the gateway"), &token))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "through the gateway");
    assert!(reply.metadata().get("x-request-id").is_some());

    let anonymous = echo_client
        .echo(echo_request("no token"))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let forged = echo_client
        .echo(bearer(
            echo_request("bad token"),
            "eyJhbGciOiJub25lIn0.e30.",
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);

    let mut unknown = tonic::client::Grpc::new(mesh.channel().await);
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
}

#[tokio::test]
async fn reflection_lists_every_mesh_service_for_grpcurl() {
    let mesh = mesh(|_| {}).await;
    let grpcurl = std::env::var("GRPCURL")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "grpcurl".into());
    let output = tokio::process::Command::new(&grpcurl)
        .args(["-plaintext", &mesh.gateway.to_string(), "list"])
        .output()
        .await
        .unwrap_or_else(|error| panic!("cannot run {grpcurl} ({error}); run scripts/setup"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: BTreeSet<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for service in [
        "storemesh.auth.v1.AuthService",
        "storemesh.catalog.v1.CatalogService",
        "storemesh.storage.v1.StorageService",
        ECHO,
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(service), "{service} in {listed:?}");
    }
    // And a call through grpcurl, routed to auth.
    let output = tokio::process::Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            "{}",
            &mesh.gateway.to_string(),
            "storemesh.auth.v1.AuthService/GetPublicKeys",
        ])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("Ed25519"));
}

#[tokio::test]
async fn grpc_web_clients_go_through_the_gateway() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let mesh = mesh(|_| {}).await;
    let message = pb::GetPublicKeysRequest {}.encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put_slice(&message);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(format!(
        "http://{}/storemesh.auth.v1.AuthService/GetPublicKeys",
        mesh.gateway
    ))
    .header("content-type", "application/grpc-web+proto")
    .header("x-grpc-web", "1")
    .body(Full::new(frame.freeze()))
    .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.get_u8(), 0);
    let length = body.get_u32() as usize;
    let keys = pb::GetPublicKeysResponse::decode(body.split_to(length)).unwrap();
    assert!(keys.jwks_json.contains("Ed25519"));
    assert_eq!(body.get_u8(), 0x80, "trailers frame");
    let length = body.get_u32() as usize;
    let trailers = String::from_utf8(body.split_to(length).to_vec()).unwrap();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

/// Browsers on a listed origin may call the mesh with gRPC-Web (preflight and real calls get
/// CORS headers naming that origin, the gRPC trailers exposed); any other origin gets no CORS
/// headers at all, so a browser refuses the answer.
#[tokio::test]
async fn cors_answers_listed_origins_only() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    const CONSOLE: &str = "http://console.example:8080";
    let mesh = mesh(|config| {
        config.cors.allowed_origins = vec![CONSOLE.into()];
    })
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!(
        "http://{}/storemesh.auth.v1.AuthService/GetPublicKeys",
        mesh.gateway
    );
    let preflight = |origin: &'static str| {
        http::Request::builder()
            .method("OPTIONS")
            .uri(&url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent,authorization,grpc-timeout",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let answer = client.request(preflight(CONSOLE)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let headers = answer.headers();
    assert_eq!(headers["access-control-allow-origin"], CONSOLE);
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "authorization",
        "grpc-timeout",
        "idempotency-key",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(headers["access-control-max-age"], "600");
    assert!(headers.get("access-control-allow-credentials").is_none());
    let answer = client
        .request(preflight("http://evil.example"))
        .await
        .unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        answer.headers()
    );

    let message = pb::GetPublicKeysRequest {}.encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put_slice(&message);
    let frame = frame.freeze();
    let call = |origin: &'static str| {
        http::Request::post(&url)
            .header("origin", origin)
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(Full::new(frame.clone()))
            .unwrap()
    };
    let answer = client.request(call(CONSOLE)).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], CONSOLE);
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "retry-after",
        "x-request-id",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    assert!(
        !answer
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    let answer = client.request(call("http://evil.example")).await.unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(
        answer
            .headers()
            .get("access-control-expose-headers")
            .is_none()
    );
}

#[tokio::test]
async fn address_rate_limit_trips_with_retry_after() {
    let mesh = mesh(|config| {
        config.rate_limit = GatewayRateLimit {
            per_address_per_sec: 1,
            per_address_burst: 5,
            ..GatewayRateLimit::default()
        };
    })
    .await;
    let mut auth = AuthServiceClient::new(mesh.channel().await);
    let mut limited = None;
    for _ in 0..10 {
        if let Err(status) = auth.get_public_keys(pb::GetPublicKeysRequest {}).await {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("the bucket ran dry");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_reaching_a_service() {
    let mesh = mesh(|config| {
        config.max_request_bytes = 4 * 1024;
        config.public_methods.push(format!("/{ECHO}/Echo"));
    })
    .await;
    let mut echo_client = EchoServiceClient::new(mesh.channel().await);
    let status = echo_client
        .echo(echo_request(&"x".repeat(16 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"));
    echo_client
        .echo(echo_request("small is fine"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_gateway_enforces_the_callers_deadline() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let mesh = mesh(|config| {
        config.public_methods.push(format!("/{ECHO}/Echo"));
    })
    .await;
    // A raw HTTP/2 client: it sends `grpc-timeout` but does not enforce it itself, so the
    // answer shows what the gateway does.
    let message = EchoRequest {
        message: "slow".into(),
        delay_ms: 5_000,
    }
    .encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap());
    frame.put_slice(&message);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("http://{}/{ECHO}/Echo", mesh.gateway))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::new(frame.freeze()))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    let code = match response.headers().get("grpc-status") {
        Some(code) => code.to_str().unwrap().to_owned(),
        None => {
            let collected = response.into_body().collect().await.unwrap();
            collected.trailers().unwrap()["grpc-status"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(code, "4", "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn start_gateway(config: GatewayConfig, tokens: TokensConfig) -> SocketAddr {
    let bound = storemesh_gateway::build(
        GatewaySettings {
            gateway: config,
            tokens,
        },
        &[],
    )
    .await
    .unwrap();
    let addr = bound.local_addr().unwrap();
    tokio::spawn(bound.run(std::future::pending()));
    addr
}

/// Client → gateway A (h2c) → gateway B (TLS listener, trusted through the dev CA) → auth.
#[tokio::test]
async fn tls_on_the_listener_and_to_upstreams() {
    let mesh = mesh(|_| {}).await;
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = storemesh_mesh::tls::write_dev_certificates(
        certs_dir.path(),
        &["127.0.0.1".into(), "localhost".into()],
    )
    .unwrap();
    let tokens = TokensConfig::default();

    let mut b = GatewayConfig {
        server: test_server(),
        tls: Some(storemesh_gateway::config::ListenerTls {
            cert_file: certs.cert_file.clone(),
            key_file: certs.key_file.clone(),
        }),
        ..GatewayConfig::default()
    };
    // B forwards to the plain gateway of `mesh`, which routes to auth.
    b.upstreams.insert(
        "auth".into(),
        UpstreamConfig::addresses([mesh.gateway.to_string()]),
    );
    let b_addr = start_gateway(b, tokens.clone()).await;

    let through_tls = |ca_file: Option<std::path::PathBuf>| {
        let mut a = GatewayConfig {
            server: test_server(),
            ..GatewayConfig::default()
        };
        a.upstreams.insert(
            "auth".into(),
            UpstreamConfig {
                tls: Some(storemesh_mesh::config::UpstreamTls { ca_file }),
                ..UpstreamConfig::addresses([b_addr.to_string()])
            },
        );
        a
    };
    let a_addr = start_gateway(through_tls(Some(certs.ca_file.clone())), tokens.clone()).await;
    let mut auth = AuthServiceClient::connect(format!("http://{a_addr}"))
        .await
        .unwrap();
    let keys = auth
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect("the call crossed the TLS hop")
        .into_inner();
    assert!(keys.jwks_json.contains("Ed25519"));

    // Without trusting the development CA the TLS hop is refused.
    let untrusting = start_gateway(through_tls(None), tokens).await;
    let mut auth = AuthServiceClient::connect(format!("http://{untrusting}"))
        .await
        .unwrap();
    let status = auth
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

/// Client-streaming Upload and server-streaming Download of a multi-megabyte object through
/// the gateway to the real storage service (ownership checked against the real catalog).
#[tokio::test]
async fn streams_uploads_and_downloads_through_to_storage() {
    use storemesh_proto::catalog::v1 as catalog_pb;
    use storemesh_proto::storage::v1 as storage_pb;
    use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;

    let mesh = mesh(|_| {}).await;
    let auth_endpoint = format!("http://{}", mesh._auth.addr);
    let tokens = TokensConfig {
        auth_endpoint: auth_endpoint.clone(),
        ..TokensConfig::default()
    };
    let redis_url = mesh._redis.url();
    let catalog = RunningHost::spawn(
        storemesh_catalog::build(storemesh_catalog::CatalogSettings {
            catalog: storemesh_catalog::CatalogConfig {
                server: test_server(),
                ..storemesh_catalog::CatalogConfig::default()
            },
            redis: RedisConfig {
                url: redis_url.clone(),
                ..RedisConfig::default()
            },
            tokens: tokens.clone(),
        })
        .await
        .unwrap(),
    )
    .unwrap();
    let objects = tempfile::tempdir().unwrap();
    let storage = RunningHost::spawn(
        storemesh_storage::build(storemesh_storage::StorageSettings {
            storage: storemesh_storage::StorageConfig {
                server: test_server(),
                data_dir: objects.path().to_path_buf(),
                catalog_endpoint: catalog.endpoint(),
                ..storemesh_storage::StorageConfig::default()
            },
            redis: RedisConfig {
                url: redis_url,
                ..RedisConfig::default()
            },
            tokens: tokens.clone(),
        })
        .await
        .unwrap(),
    )
    .unwrap();
    let mut config = GatewayConfig {
        server: test_server(),
        ..GatewayConfig::default()
    };
    for (name, host) in [
        ("auth", &mesh._auth),
        ("catalog", &catalog),
        ("storage", &storage),
    ] {
        config.upstreams.insert(
            name.into(),
            UpstreamConfig::addresses([host.addr.to_string()]),
        );
    }
    let gateway = start_gateway(config, tokens).await;
    let channel = Channel::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // A seller creates a product through the gateway, then uploads its original.
    let token = mesh.seller_token().await;
    let mut catalog_client =
        storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient::new(
            channel.clone(),
        );
    let product = catalog_client
        .create_product(bearer(
            catalog_pb::CreateProductRequest {
                title: "Chair".into(),
                price: Some(catalog_pb::Money {
                    amount_minor: 4_900,
                    currency_code: "EUR".into(),
                }),
                ..catalog_pb::CreateProductRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();

    // 3 MiB of PNG-looking bytes in 64 KiB chunks.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8));
    let key = format!("products/{}/originals/img-1", product.id);
    let mut messages = vec![storage_pb::UploadRequest {
        payload: Some(storage_pb::upload_request::Payload::Header(
            storage_pb::UploadHeader {
                target: Some(storage_pb::upload_header::Target::Key(key.clone())),
                content_type: "image/png".into(),
                expected_size_bytes: Some(bytes.len() as u64),
                ..storage_pb::UploadHeader::default()
            },
        )),
    }];
    for chunk in bytes.chunks(64 * 1024) {
        messages.push(storage_pb::UploadRequest {
            payload: Some(storage_pb::upload_request::Payload::Chunk(chunk.to_vec())),
        });
    }
    let mut storage_client = StorageServiceClient::new(channel);
    let uploaded = storage_client
        .upload(bearer(tokio_stream::iter(messages), &token))
        .await
        .expect("client-streaming upload through the gateway")
        .into_inner()
        .object
        .unwrap();
    assert_eq!(uploaded.size_bytes, bytes.len() as u64);

    let mut stream = storage_client
        .download(bearer(
            storage_pb::DownloadRequest {
                key: key.clone(),
                offset: 1_000,
                length: 2 * 1024 * 1024,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    let mut messages = 0;
    while let Some(message) = tokio_stream::StreamExt::next(&mut stream).await {
        messages += 1;
        if let Some(storage_pb::download_response::Payload::Chunk(chunk)) = message.unwrap().payload
        {
            received.extend_from_slice(&chunk);
        }
    }
    assert!(messages > 2, "streamed in several messages");
    assert_eq!(received, bytes[1_000..1_000 + 2 * 1024 * 1024]);
}
