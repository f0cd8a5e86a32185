//! Edge runtime: per-request cost of the pooling-allocator instantiation of a hello component,
//! and trivial-request throughput over real sockets, against a native hyper handler serving the
//! same answer in the same run.
//!
//! - `edge_instantiate/hello_component`: a fresh store plus `instantiate_pre` →
//!   `instantiate_async` of the hello fixture (what every request pays before its handler runs).
//!   Goal: < 100 µs.
//! - `edge_throughput/native_hyper` vs `edge_throughput/wasm_hello`: batches of `BATCH` GET
//!   requests over `CONNECTIONS` keep-alive HTTP/1.1 connections (client and server share this
//!   machine's cores); criterion's elements/s is requests per second. Goal: ≥ 10k req/s.
//!
//! Needs the fixtures: `cargo build --release --target wasm32-wasip2 --manifest-path
//! edge-functions/Cargo.toml -p edge-fixture-hello` (scripts/test builds them).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use storemesh_edge::{App, EdgeConfig, testing};

const CONNECTIONS: usize = 8;
const BATCH: usize = 256;

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "bench"
[[trigger.http]]
route = "/..."
component = "hello"
[component.hello]
source = "HELLO"
"#;

fn config(dir: &std::path::Path) -> EdgeConfig {
    let hello =
        testing::fixture("edge-fixture-hello").unwrap_or_else(|message| panic!("{message}"));
    let manifest = dir.join("spin.toml");
    std::fs::write(
        &manifest,
        MANIFEST.replace("HELLO", &hello.display().to_string()),
    )
    .unwrap();
    EdgeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        manifest,
        cache_dir: dir.join("cache"),
        ..EdgeConfig::default()
    }
}

fn instantiation(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = runtime.block_on(App::load(&config(dir.path()))).unwrap();
    runtime.block_on(app.instantiate("hello")).unwrap();

    let mut group = c.benchmark_group("edge_instantiate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hello_component", |b| {
        b.to_async(&runtime)
            .iter(|| async { app.instantiate("hello").await.unwrap() });
    });
    group.finish();
}

/// The native baseline: a hyper HTTP/1.1 server answering `hello`.
async fn native_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let mut response = http::Response::new(Full::new(Bytes::from_static(b"hello")));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> Vec<SendRequest<Empty<Bytes>>> {
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    senders
}

/// Sends `total` requests spread over the connections; returns how long it took.
async fn drive(
    senders: &mut Vec<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
    total: usize,
) -> Duration {
    let started = Instant::now();
    let per_connection = total.div_ceil(CONNECTIONS);
    let mut tasks = Vec::new();
    for mut sender in senders.drain(..) {
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_connection {
                sender.ready().await.unwrap();
                let request = http::Request::get(format!("http://{addr}/hello"))
                    .header(http::header::HOST, addr.to_string())
                    .body(Empty::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"hello");
            }
            sender
        }));
    }
    for task in tasks {
        senders.push(task.await.unwrap());
    }
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (edge_addr, _stop) = runtime.block_on(async {
        let server = storemesh_edge::build(&config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    });
    let native_addr = runtime.block_on(native_server());

    let mut group = c.benchmark_group("edge_throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    if !storemesh_benches::smoke() {
        group.sample_size(20);
    }
    for (name, addr) in [("native_hyper", native_addr), ("wasm_hello", edge_addr)] {
        let mut senders = runtime.block_on(connect(addr));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        total += drive(&mut senders, addr, BATCH).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

/// `STOREMESH_BENCH_SMOKE=1`: the fewest samples criterion allows, briefly.
fn criterion_config() -> Criterion {
    if storemesh_benches::smoke() {
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300))
    } else {
        Criterion::default()
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = instantiation, throughput
}
criterion_main!(benches);
