//! The governance layer against real tonic servers over real sockets.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use storemesh_mesh::{MeshChannel, Upstream, UpstreamConfig};
use storemesh_runtime::ServerConfig;
use storemesh_testkit::RunningHost;
use storemesh_testkit::echo::{self, EchoServiceClient, pb::EchoRequest, pb::EchoResponse};
use tonic::{Code, Request, Response, Status};

async fn replica() -> RunningHost {
    let config = ServerConfig {
        readiness_interval_ms: 100,
        ..ServerConfig::default()
    };
    RunningHost::spawn(echo::host(config).bind().await.unwrap()).unwrap()
}

/// A call the upstreams below may retry: `Echo` is listed in their `idempotent_methods` (it is
/// outside the Storemesh contracts, which mark their own methods).
fn idempotent(message: &str) -> Request<EchoRequest> {
    Request::new(EchoRequest {
        message: message.into(),
        delay_ms: 0,
    })
}

fn echo_is_idempotent() -> Vec<String> {
    vec!["/storemesh.testing.v1.EchoService/Echo".into()]
}

/// Calls answered by each endpoint, from the mesh's own metrics.
fn answered_by(endpoint: &str) -> f64 {
    let text = storemesh_runtime::metrics::prometheus().render();
    text.lines()
        .filter(|line| line.starts_with("mesh_upstream_requests_total{"))
        .filter(|line| line.contains(&format!("endpoint=\"{endpoint}\"")))
        .filter(|line| line.contains("outcome=\"OK\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn fast_config(addresses: Vec<String>) -> UpstreamConfig {
    UpstreamConfig {
        idempotent_methods: echo_is_idempotent(),
        base_ejection_ms: 200,
        ..UpstreamConfig::addresses(addresses)
    }
}

#[tokio::test]
async fn load_is_spread_and_a_crashed_replica_costs_no_idempotent_call() {
    let _ = storemesh_runtime::metrics::prometheus();
    let (a, b) = (replica().await, replica().await);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let upstream = Upstream::start("echo", fast_config(vec![a_addr.clone(), b_addr.clone()]))
        .await
        .unwrap();
    let client = EchoServiceClient::new(MeshChannel::new(upstream.clone()));

    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_millis(2_500);
    let mut workers = Vec::new();
    for worker in 0..8 {
        let mut client = client.clone();
        let (failures, successes) = (failures.clone(), successes.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                n += 1;
                match client.echo(idempotent(&format!("w{worker}-{n}"))).await {
                    Ok(reply) => {
                        assert_eq!(reply.into_inner().message, format!("w{worker}-{n}"));
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        eprintln!("failed: {status:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a_before_crash = answered_by(&a_addr);
    let b_before_crash = answered_by(&b_addr);
    a.abort();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no idempotent call failed"
    );
    assert!(successes.load(Ordering::Relaxed) > 100);
    assert!(
        a_before_crash > 10.0 && b_before_crash > 10.0,
        "both replicas served: {a_before_crash} / {b_before_crash}"
    );
    assert!(
        answered_by(&b_addr) > b_before_crash,
        "the survivor took over"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_replica_added_at_runtime_receives_traffic() {
    let _ = storemesh_runtime::metrics::prometheus();
    let first = replica().await;
    let dir = tempfile_dir();
    let file = dir.join("echo.endpoints");
    std::fs::write(&file, format!("# echo replicas\n{}\n", first.addr)).unwrap();
    let upstream = Upstream::start(
        "echo-file",
        UpstreamConfig {
            idempotent_methods: echo_is_idempotent(),
            addresses_file: Some(file.clone()),
            refresh_interval_ms: 100,
            ..UpstreamConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(upstream.endpoints(), [first.addr.to_string()]);
    let mut client = EchoServiceClient::new(MeshChannel::new(upstream.clone()));
    client.echo(idempotent("before")).await.unwrap();

    let second = replica().await;
    std::fs::write(&file, format!("{}\n{}\n", first.addr, second.addr)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.endpoints().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the new replica was never discovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..50 {
        client
            .echo(idempotent(&format!("after-{n}")))
            .await
            .unwrap();
    }
    assert!(
        answered_by(&second.addr.to_string()) > 0.0,
        "new replica got traffic"
    );

    // Removed from the file: no more traffic, and nothing in flight breaks.
    std::fs::write(&file, format!("{}\n", second.addr)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.endpoints() != [second.addr.to_string()] {
        assert!(Instant::now() < deadline, "removal never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;
    second.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "storemesh-mesh-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reports the deadline it was given, as seen upstream.
struct DeadlineReporter;

#[tonic::async_trait]
impl echo::pb::echo_service_server::EchoService for DeadlineReporter {
    type EchoStreamStream = echo::EchoResponseStream;

    async fn echo_stream(
        &self,
        _request: Request<echo::pb::EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        Err(Status::unimplemented("this test only answers unary calls"))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let seen = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let delay = request.get_ref().delay_ms;
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        Ok(Response::new(EchoResponse { message: seen }))
    }
}

#[tokio::test]
async fn deadlines_are_propagated_and_enforced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo::pb::echo_service_server::EchoServiceServer::new(
                DeadlineReporter,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let upstream = Upstream::start(
        "deadline",
        UpstreamConfig {
            idempotent_methods: echo_is_idempotent(),
            default_deadline_ms: 5_000,
            ..UpstreamConfig::addresses([addr.to_string()])
        },
    )
    .await
    .unwrap();
    let mut client = EchoServiceClient::new(MeshChannel::new(upstream));

    let mut request = Request::new(EchoRequest {
        message: String::new(),
        delay_ms: 0,
    });
    request.set_timeout(Duration::from_millis(800));
    let seen = client.echo(request).await.unwrap().into_inner().message;
    let propagated = storemesh_mesh::timeout::parse(&seen).expect("upstream saw a grpc-timeout");
    assert!(
        propagated <= Duration::from_millis(800) && propagated > Duration::from_millis(500),
        "caller's deadline minus elapsed time: {seen}"
    );

    let without = client
        .echo(Request::new(EchoRequest {
            message: String::new(),
            delay_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .message;
    let default = storemesh_mesh::timeout::parse(&without).unwrap();
    assert!(
        default > Duration::from_secs(4),
        "default deadline applied: {without}"
    );

    let started = Instant::now();
    let mut slow = Request::new(EchoRequest {
        message: String::new(),
        delay_ms: 3_000,
    });
    slow.set_timeout(Duration::from_millis(200));
    let status = client.echo(slow).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test]
async fn dead_endpoints_are_ejected_and_only_idempotent_calls_retried() {
    let _ = storemesh_runtime::metrics::prometheus();
    let live = replica().await;
    // Nothing listens on the second address.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let upstream = Upstream::start(
        "echo-dead",
        UpstreamConfig {
            idempotent_methods: echo_is_idempotent(),
            base_ejection_ms: 60_000,
            ..UpstreamConfig::addresses([live.addr.to_string(), dead.clone()])
        },
    )
    .await
    .unwrap();
    let mut client = EchoServiceClient::new(MeshChannel::new(upstream));
    for n in 0..30 {
        client
            .echo(idempotent(&format!("retried-{n}")))
            .await
            .expect("idempotent calls are retried on the live replica");
    }
    // The dead endpoint is ejected now, so even calls that cannot be retried succeed
    // (`EchoStream` is not in `idempotent_methods`).
    for n in 0..30 {
        let mut stream = client
            .echo_stream(echo::pb::EchoStreamRequest {
                message: format!("once-{n}"),
                count: 1,
                interval_ms: 0,
            })
            .await
            .expect("ejected endpoint is not chosen")
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
    }
    let text = storemesh_runtime::metrics::prometheus().render();
    assert!(
        text.lines()
            .any(|line| line.starts_with("mesh_upstream_ejections_total") && line.contains(&dead)),
        "ejection counted"
    );
    live.stop().await;
}

#[tokio::test]
async fn no_endpoint_is_unavailable() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let upstream = Upstream::start("nothing", UpstreamConfig::addresses([dead]))
        .await
        .unwrap();
    let mut client = EchoServiceClient::new(MeshChannel::new(upstream));
    let status = client.echo(idempotent("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_replica_that_comes_back_is_used_although_every_endpoint_was_ejected() {
    let _ = storemesh_runtime::metrics::prometheus();
    // The only replica is not up yet (a service started before its dependency).
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let upstream = Upstream::start(
        "echo-late",
        UpstreamConfig {
            idempotent_methods: echo_is_idempotent(),
            base_ejection_ms: 60_000,
            ..UpstreamConfig::addresses([address.to_string()])
        },
    )
    .await
    .unwrap();
    let mut client = EchoServiceClient::new(MeshChannel::new(upstream));
    for n in 0..5 {
        let status = client
            .echo(idempotent(&format!("early-{n}")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    let text = storemesh_runtime::metrics::prometheus().render();
    assert!(
        text.lines()
            .any(|line| line.starts_with("mesh_upstream_ejections_total")
                && line.contains(&address.to_string())),
        "the only endpoint is ejected (for a minute)"
    );
    // It starts: the next call reaches it at once instead of waiting out the ejection.
    let config = ServerConfig {
        listen: address,
        readiness_interval_ms: 100,
        ..ServerConfig::default()
    };
    let late = RunningHost::spawn(echo::host(config).bind().await.unwrap()).unwrap();
    let reply = client.echo(idempotent("late")).await.unwrap();
    assert_eq!(reply.into_inner().message, "late");
    let text = storemesh_runtime::metrics::prometheus().render();
    assert!(
        text.lines()
            .any(|line| line.starts_with("mesh_upstream_panic_total") && line.contains("echo-late")),
        "panic mode counted"
    );
    late.stop().await;
}
