//! Issue 20, item 1, as the attacker tried it: HTTP/2 connections from one address holding
//! hundreds of unfinished, unauthenticated `GetPublicKeys` calls (HEADERS, never a message)
//! against the auth service directly and through the gateway. Another caller must still be
//! served within its deadline, and the attacker's calls are ended by the first-message deadline
//! (or refused at once past the address's share).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use storemesh_auth::testing;
use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::auth::v1::GetPublicKeysRequest;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::testing::test_server;
use storemesh_testkit::{RedisServer, RunningHost};
use tokio::net::TcpSocket;

const GET_PUBLIC_KEYS: &str = "/storemesh.auth.v1.AuthService/GetPublicKeys";
const ATTACKER: [u8; 4] = [127, 0, 0, 3];
const CALLER: [u8; 4] = [127, 0, 0, 2];
const CONNECTIONS: usize = 6;
const STREAMS_PER_CONNECTION: usize = 40;
/// The normal caller's deadline: generous, this is not a performance check.
const DEADLINE: Duration = Duration::from_secs(10);

/// What both servers run with: a small concurrency limit the attacker could fill many times
/// over, and a short first-message deadline so the test need not wait 10 s.
fn server() -> ServerConfig {
    ServerConfig {
        concurrency_limit: 64,
        first_message_timeout_ms: 1_500,
        ..test_server()
    }
}

/// The attacker's open calls: the response futures, the send halves that keep the streams
/// open, and the connections' tasks.
struct Attack {
    responses: Vec<ResponseFuture>,
    _streams: Vec<h2::SendStream<Bytes>>,
    connections: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Attack {
    fn drop(&mut self) {
        for connection in &self.connections {
            connection.abort();
        }
    }
}

async fn attack(target: SocketAddr) -> Attack {
    let mut attack = Attack {
        responses: Vec::new(),
        _streams: Vec::new(),
        connections: Vec::new(),
    };
    for _ in 0..CONNECTIONS {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((ATTACKER, 0))).unwrap();
        let stream = socket.connect(target).await.unwrap();
        let (mut send, connection): (SendRequest<Bytes>, _) =
            h2::client::handshake(stream).await.unwrap();
        attack.connections.push(tokio::spawn(async move {
            let _ = connection.await;
        }));
        for _ in 0..STREAMS_PER_CONNECTION {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{target}{GET_PUBLIC_KEYS}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            send = send.ready().await.unwrap();
            let (response, stream) = send.send_request(request, false).unwrap();
            attack.responses.push(response);
            attack._streams.push(stream);
        }
    }
    attack
}

/// The `grpc-status` a call ended with (headers of a trailers-only answer, or trailers).
async fn grpc_status(response: ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    let status = |map: &http::HeaderMap| {
        map.get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status(&body.trailers().await.ok()??)
}

/// A normal caller from another address, with a deadline.
async fn get_public_keys_from(from: [u8; 4], target: SocketAddr) -> Result<usize, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .unwrap()
        .local_address(Some(IpAddr::from(from)))
        .timeout(DEADLINE)
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let keys = AuthServiceClient::new(channel)
        .get_public_keys(GetPublicKeysRequest::default())
        .await?;
    Ok(keys.into_inner().keys.len())
}

/// Attacks `target`, checks a normal caller is served meanwhile, then that every attacking
/// call was ended by the server: `DEADLINE_EXCEEDED` at the first-message deadline, or
/// `RESOURCE_EXHAUSTED` at once past the address's share.
async fn attacker_cannot_stall(target: SocketAddr, name: &str) {
    let attack = attack(target).await;
    // Let the server take the attacker's streams in before the caller comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = get_public_keys_from(CALLER, target).await;
    assert!(
        matches!(served, Ok(keys) if keys > 0),
        "{name}: another caller is served during the attack: {served:?}"
    );

    let mut outcomes = Vec::new();
    let mut attack = attack;
    for response in attack.responses.drain(..) {
        outcomes.push(tokio::spawn(tokio::time::timeout(
            Duration::from_secs(30),
            grpc_status(response),
        )));
    }
    let (mut deadline_exceeded, mut refused) = (0, 0);
    for outcome in outcomes {
        let status = outcome
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("{name}: an attacking call was left open"));
        match status.as_deref() {
            Some("4") => deadline_exceeded += 1,
            Some("8") => refused += 1,
            other => panic!("{name}: an attacking call ended with {other:?}"),
        }
    }
    assert!(
        deadline_exceeded > 0 && refused > 0,
        "{name}: {deadline_exceeded} ended at the deadline, {refused} refused"
    );
    drop(attack);
    // Served as before once the attack is over.
    assert!(get_public_keys_from(ATTACKER, target).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfinished_streams_from_one_address_cannot_stall_auth_or_the_gateway() {
    storemesh_system_tests::init_logs();
    let redis = RedisServer::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut auth_settings = testing::auth_settings(&redis.url(), keys.path());
    auth_settings.auth.server = ServerConfig {
        // The gateway (on 127.0.0.1) is the auth service's trusted proxy.
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..server()
    };
    let auth = RunningHost::spawn(storemesh_auth::build(auth_settings).await.unwrap()).unwrap();

    let mut gateway = GatewayConfig {
        server: server(),
        ..GatewayConfig::default()
    };
    gateway.upstreams.insert(
        "auth".into(),
        UpstreamConfig::addresses([auth.addr.to_string()]),
    );
    let bound = storemesh_gateway::build(
        GatewaySettings {
            gateway,
            tokens: TokensConfig {
                auth_endpoint: auth.endpoint(),
                ..TokensConfig::default()
            },
        },
        &[],
    )
    .await
    .unwrap();
    let gateway_addr = bound.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));

    attacker_cannot_stall(auth.addr, "auth").await;
    attacker_cannot_stall(gateway_addr, "gateway").await;

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), gateway_task).await;
    auth.stop().await;
}
