//! The shared server bootstrap against clients that hold resources without using them (issue
//! 20, items 1, 9 and 10): real hosts on sockets, a raw HTTP/2 client (`h2`) for the attacker,
//! and other callers from other loopback addresses (Linux routes all of 127/8 to `lo`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use storemesh_runtime::ServerConfig;
use storemesh_runtime::server::{ConnectionLimits, HttpSettings, ServeOptions, bind, serve};
use storemesh_testkit::RunningHost;
use storemesh_testkit::echo::{self, EchoServiceClient, pb::EchoRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ECHO: &str = "/storemesh.testing.v1.EchoService/Echo";
const ATTACKER: [u8; 4] = [127, 0, 0, 3];
const CALLER: [u8; 4] = [127, 0, 0, 2];
const PROBE: [u8; 4] = [127, 0, 0, 4];
/// How long a "still served" caller may take: generous, this is not a performance check.
const DEADLINE: Duration = Duration::from_secs(10);

fn config() -> ServerConfig {
    ServerConfig {
        readiness_interval_ms: 100,
        shutdown_grace_ms: 2_000,
        ..ServerConfig::default()
    }
}

async fn start(config: ServerConfig) -> RunningHost {
    RunningHost::spawn(echo::host(config).bind().await.unwrap()).unwrap()
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(addr).await
}

/// An HTTP/2 connection (h2c, prior knowledge) from `from`; the task drives it until aborted.
async fn h2_from(
    from: [u8; 4],
    addr: SocketAddr,
) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let stream = connect_from(from, addr).await.unwrap();
    let (send, connection) = h2::client::handshake(stream).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, task)
}

/// Opens a gRPC call to `path` (HEADERS only: no message, no end of stream) and keeps it open
/// while the returned send half lives.
async fn unfinished_call(
    send: &mut SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
) -> (ResponseFuture, h2::SendStream<Bytes>) {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://attacker{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    *send = send.clone().ready().await.unwrap();
    send.send_request(request.body(()).unwrap(), false).unwrap()
}

/// The `grpc-status` (and `retry-after`) a call ends with, from its headers (trailers-only) or
/// its trailers.
async fn grpc_status(response: ResponseFuture) -> (Option<String>, Option<String>) {
    let Ok(response) = response.await else {
        return (None, None);
    };
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(response.headers(), "retry-after");
    if let Some(status) = header(response.headers(), "grpc-status") {
        return (Some(status), retry_after);
    }
    let mut body = response.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
    (header(&trailers, "grpc-status"), retry_after)
}

/// An `Echo` call from `from` with `metadata`, within [`DEADLINE`].
async fn echo_from(
    from: [u8; 4],
    addr: SocketAddr,
    metadata: &[(&'static str, &str)],
) -> Result<tonic::Response<echo::pb::EchoResponse>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(IpAddr::from(from)))
        .timeout(DEADLINE)
        .connect_timeout(DEADLINE)
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut request = tonic::Request::new(EchoRequest {
        message: "hello".into(),
        delay_ms: 0,
    });
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    EchoServiceClient::new(channel).echo(request).await
}

/// `(status code, body)` of a GET on the admin port.
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn health_from(from: [u8; 4], addr: SocketAddr) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(IpAddr::from(from)))
        .timeout(DEADLINE)
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

/// Polls `condition` every 100 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether the server closed `stream` (EOF or reset) within `within`, rather than keeping it.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn calls_that_never_send_their_message_end_at_the_first_message_deadline() {
    let host = start(ServerConfig {
        concurrency_limit: 4,
        max_in_flight_per_address: Some(4),
        first_message_timeout_ms: 1_000,
        ..config()
    })
    .await;
    // The attacker takes every slot with calls that never send their message.
    let (mut send, connection) = h2_from(ATTACKER, host.addr).await;
    let mut calls = Vec::new();
    for _ in 0..4 {
        calls.push(unfinished_call(&mut send, ECHO, &[]).await);
    }
    // Each ends with DEADLINE_EXCEEDED (the stream stays open on the client's side).
    let mut streams = Vec::new();
    for (response, stream) in calls {
        streams.push(stream);
        let (status, _) = tokio::time::timeout(DEADLINE, grpc_status(response))
            .await
            .expect("the call is ended by the server");
        assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    }
    // Their slots are free again: another caller is served.
    let answer = echo_from(CALLER, host.addr, &[]).await.unwrap();
    assert_eq!(answer.into_inner().message, "hello");
    // A call whose message does arrive in time is not affected.
    let answer = echo_from(ATTACKER, host.addr, &[]).await.unwrap();
    assert_eq!(answer.into_inner().message, "hello");
    connection.abort();
    host.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_the_whole_concurrency_limit() {
    // The default share: a quarter of the limit.
    let host = start(ServerConfig {
        concurrency_limit: 8,
        first_message_timeout_ms: 60_000,
        ..config()
    })
    .await;
    let (mut send, connection) = h2_from(ATTACKER, host.addr).await;
    let mut calls = Vec::new();
    for _ in 0..6 {
        calls.push(unfinished_call(&mut send, ECHO, &[]).await);
    }
    let mut _streams = Vec::new();
    let mut outcomes = Vec::new();
    for (response, stream) in calls {
        _streams.push(stream);
        outcomes.push(tokio::spawn(tokio::time::timeout(
            Duration::from_secs(3),
            grpc_status(response),
        )));
    }
    let mut refused = 0;
    let mut held = 0;
    for outcome in outcomes {
        match outcome.await.unwrap() {
            Ok((status, retry_after)) => {
                assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
                assert_eq!(retry_after.as_deref(), Some("1"));
                refused += 1;
            }
            Err(_) => held += 1,
        }
    }
    assert_eq!((held, refused), (2, 4), "two in flight, the rest refused");
    // Another address is served at once although the attacker still holds its share.
    let answer = echo_from(CALLER, host.addr, &[]).await.unwrap();
    assert_eq!(answer.into_inner().message, "hello");
    connection.abort();
    host.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let host = start(ServerConfig {
        concurrency_limit: 8,
        first_message_timeout_ms: 60_000,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..config()
    })
    .await;
    // Through the trusted proxy: 192.0.2.1 holds its share of two.
    let (mut proxy, proxy_connection) = h2_from([127, 0, 0, 1], host.addr).await;
    let forwarded = [("x-forwarded-for", "192.0.2.1")];
    let _held = [
        unfinished_call(&mut proxy, ECHO, &forwarded).await,
        unfinished_call(&mut proxy, ECHO, &forwarded).await,
    ];
    let refused = echo_from(
        [127, 0, 0, 1],
        host.addr,
        &[("x-forwarded-for", "192.0.2.1")],
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "1");
    // Another client behind the same proxy, and the proxy's own calls, are served.
    echo_from(
        [127, 0, 0, 1],
        host.addr,
        &[("x-forwarded-for", "192.0.2.2")],
    )
    .await
    .unwrap();
    echo_from([127, 0, 0, 1], host.addr, &[]).await.unwrap();

    // From anyone else, x-forwarded-for is ignored: the peer is the client.
    let (mut attacker, attacker_connection) = h2_from(ATTACKER, host.addr).await;
    let _also_held = [
        unfinished_call(&mut attacker, ECHO, &[("x-forwarded-for", "198.51.100.1")]).await,
        unfinished_call(&mut attacker, ECHO, &[("x-forwarded-for", "198.51.100.2")]).await,
    ];
    let refused = echo_from(ATTACKER, host.addr, &[("x-forwarded-for", "198.51.100.3")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    proxy_connection.abort();
    attacker_connection.abort();
    host.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let host = start(ServerConfig {
        max_connections_per_address: 3,
        ..config()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(ATTACKER, host.addr).await.unwrap();
        assert!(
            !closed_within(&mut stream, Duration::from_millis(300)).await,
            "within the cap, a connection stays open"
        );
        open.push(stream);
    }
    let mut over = connect_from(ATTACKER, host.addr).await.unwrap();
    assert!(
        closed_within(&mut over, DEADLINE).await,
        "the connection over the cap is closed"
    );
    // Other addresses are not affected.
    echo_from(CALLER, host.addr, &[]).await.unwrap();
    // A closed connection frees its place.
    open.pop();
    assert!(
        eventually(DEADLINE, || async {
            echo_from(ATTACKER, host.addr, &[]).await.is_ok()
        })
        .await
    );
    host.stop().await;
}

#[tokio::test]
async fn http1_headers_must_arrive_in_time() {
    // The gateway's and the edge runtime's settings (hyper's), and the hosts' (tonic's).
    for http in [HttpSettings::Hyper, HttpSettings::Tonic] {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(500),
            ..ConnectionLimits::default()
        };
        let server = tokio::spawn(serve(
            listener,
            ServeOptions::new(Duration::from_secs(1))
                .http(http)
                .limits(limits),
            |_| {
                tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(String::from("ok")))
                })
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Headers begun, never finished.
        stream
            .write_all(b"POST /slow HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        assert!(
            closed_within(&mut stream, DEADLINE).await,
            "{http:?}: a client trickling its headers is cut off"
        );
        let _ = stop.send(());
        server.await.unwrap();
    }
}

#[tokio::test]
async fn http2_connections_advertise_the_stream_limit() {
    let host = start(ServerConfig {
        max_concurrent_streams: 7,
        ..config()
    })
    .await;
    let (mut send, connection) = h2_from(CALLER, host.addr).await;
    // One finished exchange, so the server's SETTINGS have been applied.
    let (response, mut stream) =
        unfinished_call(&mut send, "/grpc.health.v1.Health/Check", &[]).await;
    stream
        .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    assert_eq!(grpc_status(response).await.0.as_deref(), Some("0"));
    assert_eq!(send.current_max_send_streams(), 7);
    connection.abort();
    host.stop().await;
}

#[tokio::test]
async fn readiness_reports_an_overloaded_host_and_recovers() {
    let host = start(ServerConfig {
        concurrency_limit: 2,
        max_in_flight_per_address: Some(2),
        first_message_timeout_ms: 60_000,
        ..config()
    })
    .await;
    assert!(
        eventually(DEADLINE, || async {
            admin_get(host.admin, "/readyz").await.0 == 200
                && health_from(PROBE, host.addr).await == Some(ServingStatus::Serving)
        })
        .await,
        "ready at first"
    );
    let (mut send, connection) = h2_from(ATTACKER, host.addr).await;
    let _held = [
        unfinished_call(&mut send, ECHO, &[]).await,
        unfinished_call(&mut send, ECHO, &[]).await,
    ];
    // Calls keep being shed at the limit: readiness and health say so.
    assert!(
        eventually(DEADLINE, || async {
            let shed = echo_from(CALLER, host.addr, &[]).await;
            assert_eq!(shed.unwrap_err().code(), Code::ResourceExhausted);
            let (status, body) = admin_get(host.admin, "/readyz").await;
            status == 503
                && body.trim() == "overloaded"
                && health_from(PROBE, host.addr).await == Some(ServingStatus::NotServing)
        })
        .await,
        "overload is reported"
    );
    // The load goes away: ready and serving again.
    connection.abort();
    drop(_held);
    assert!(
        eventually(DEADLINE, || async {
            admin_get(host.admin, "/readyz").await.0 == 200
                && health_from(PROBE, host.addr).await == Some(ServingStatus::Serving)
        })
        .await,
        "recovered"
    );
    echo_from(CALLER, host.addr, &[]).await.unwrap();
    host.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_only_when_well_formed() {
    let host = start(config()).await;
    let kept = echo_from(CALLER, host.addr, &[("x-request-id", "client-id_1.2:3")])
        .await
        .unwrap();
    assert_eq!(
        kept.metadata().get("x-request-id").unwrap(),
        "client-id_1.2:3"
    );
    for bad in ["x".repeat(129), "id with spaces".into(), "<script>".into()] {
        let replaced = echo_from(CALLER, host.addr, &[("x-request-id", &bad)])
            .await
            .unwrap();
        let id = replaced
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a server UUID instead of {bad:?}: {id}");
    }
    host.stop().await;
}

#[tokio::test]
async fn unknown_paths_share_one_metric_label() {
    let host = start(config()).await;
    let (mut send, connection) = h2_from(CALLER, host.addr).await;
    for index in 0..3 {
        let path = format!("/storemesh.testing.v1.EchoService/Invented{index}");
        let (response, mut stream) = unfinished_call(&mut send, &path, &[]).await;
        stream
            .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        assert_eq!(grpc_status(response).await.0.as_deref(), Some("12"));
    }
    echo_from(CALLER, host.addr, &[]).await.unwrap();
    let (_, metrics) = admin_get(host.admin, "/metrics").await;
    assert!(!metrics.contains("Invented"), "{metrics}");
    assert!(
        metrics.contains(r#"grpc_server_started_total{service="unknown",method="unknown"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"grpc_server_started_total{service="storemesh.testing.v1.EchoService",method="Echo"}"#
        ),
        "{metrics}"
    );
    connection.abort();
    host.stop().await;
}
