//! The gateway's admin port is the runtime's (`storemesh_runtime::server::admin`): the same
//! routes, statuses, content types and bodies as every other process's, and `/readyz` turns
//! `503` while the gateway drains.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::server::admin::METRICS_CONTENT_TYPE;
use storemesh_runtime::server::{AdminServer, ReadyState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `(status line, content-type, body)` of a `GET`.
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let content_type = head
        .lines()
        .find_map(|line| line.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

/// The runtime's own admin port, saying `ready`.
async fn reference(ready: ReadyState) -> (SocketAddr, AdminServer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, AdminServer::spawn(listener, ready))
}

#[tokio::test]
async fn the_admin_port_is_the_runtimes_and_readyz_fails_while_draining() {
    let config = GatewayConfig {
        server: ServerConfig {
            shutdown_grace_ms: 2_000,
            ..ServerConfig::default()
        },
        ..GatewayConfig::default()
    };
    let bound = storemesh_gateway::build(
        GatewaySettings {
            gateway: config,
            tokens: TokensConfig::default(),
        },
        &[],
    )
    .await
    .unwrap();
    let gateway = bound.local_addr().unwrap();
    let admin = bound.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(bound.run(async move {
        let _ = stopped.await;
    }));

    let (reference_addr, reference_admin) = reference(ReadyState::default()).await;
    for path in ["/healthz", "/readyz", "/nothing-here"] {
        assert_eq!(
            get(admin, path).await,
            get(reference_addr, path).await,
            "{path}"
        );
    }
    let (status, content_type, _) = get(admin, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, METRICS_CONTENT_TYPE);
    reference_admin.stop().await;

    // A health watch is a call that never ends: the drain waits for it, so readiness can be
    // watched while the gateway drains.
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{gateway}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    stop.send(()).unwrap();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    let (reference_addr, reference_admin) = reference(ReadyState::not_ready("shutting down")).await;
    let draining = get(admin, "/readyz").await;
    assert_eq!(draining, get(reference_addr, "/readyz").await);
    assert!(draining.0.starts_with("HTTP/1.1 503"), "{draining:?}");
    reference_admin.stop().await;
    // New connections are refused while the watch drains.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(gateway).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener closes when the drain starts");
    assert!(!running.is_finished(), "the drain waits for the watch");

    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    // The admin port closes last.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}
