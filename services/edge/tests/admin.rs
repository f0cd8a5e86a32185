//! The edge runtime's admin port is the runtime's (`storemesh_runtime::server::admin`): the
//! same routes, statuses, content types and bodies as every other process's, and `/readyz`
//! turns `503` while the edge drains an in-flight request, which still completes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use storemesh_edge::{EdgeConfig, testing};
use storemesh_runtime::server::admin::METRICS_CONTENT_TYPE;
use storemesh_runtime::server::{AdminServer, ReadyState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "admin"
[[trigger.http]]
route = "/..."
component = "app"
[component.app]
source = "{app}"
allowed_outbound_hosts = ["http://127.0.0.1:{upstream}"]
"#;

/// `(status line, content-type, body)` of a `GET`.
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n").as_bytes(),
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

/// The runtime's own admin port, saying what `ready` says.
async fn reference(ready: ReadyState) -> (SocketAddr, AdminServer) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, AdminServer::spawn(listener, ready))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_is_the_runtimes_and_readyz_fails_while_draining() {
    // An upstream that answers only when told to, so a request stays in flight.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (arrived, arrival) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the request ended early");
            request.extend_from_slice(&buffer[..read]);
        }
        let _ = arrived.send(());
        let _ = released.await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let app = testing::fixture("edge-fixture-app").unwrap_or_else(|message| panic!("{message}"));
    let manifest = MANIFEST
        .replace("{app}", &app.display().to_string())
        .replace("{upstream}", &upstream_port.to_string());
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    let config = EdgeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        manifest: dir.path().join("spin.toml"),
        max_instances: 4,
        max_memory_bytes: 64 * 1024 * 1024,
        execution_timeout_ms: 10_000,
        cache_dir: std::env::temp_dir().join("storemesh-edge-test-cache"),
        shutdown_grace_ms: 5_000,
        ..EdgeConfig::default()
    };
    let server = storemesh_edge::build(&config).await.unwrap();
    let edge = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
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

    let path = format!("/?action=fetch&url=http://127.0.0.1:{upstream_port}/slow");
    let in_flight = tokio::spawn(async move { get(edge, &path).await });
    arrival.await.unwrap();
    stop.send(()).unwrap();

    let (reference_addr, reference_admin) = reference(ReadyState::not_ready("not serving")).await;
    let expected = get(reference_addr, "/readyz").await;
    reference_admin.stop().await;
    assert!(expected.0.starts_with("HTTP/1.1 503"), "{expected:?}");
    let mut draining = None;
    for _ in 0..200 {
        let answer = get(admin, "/readyz").await;
        if answer == expected {
            draining = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        draining.is_some(),
        "/readyz says `not serving` while draining"
    );
    assert!(!running.is_finished(), "the drain waits for the request");

    release.send(()).unwrap();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("pong"), "{body}");
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin port closes last"
    );
}
