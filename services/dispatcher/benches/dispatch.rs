//! Dispatcher throughput: events appended to a real Redis stream → signed HTTP deliveries to a
//! real HTTP target, against a baseline measured in the same run: the same number of signed
//! deliveries posted straight to the same target by one client with the same concurrency.
//! The ratio is what the dispatcher's stream reading, bookkeeping and acknowledgement cost.
//!
//! `cargo bench -p storemesh-dispatcher --bench dispatch` (`STOREMESH_BENCH_SMOKE=1`: a short
//! run).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use storemesh_dispatcher::config::{DispatcherConfig, RouteConfig, TargetConfig, TargetKind};
use storemesh_dispatcher::{DispatcherSettings, build};
use storemesh_proto::events::v1 as pb;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_testkit::RedisServer;

const SECRET: &str = "bench-delivery-secret-0123";
const CONCURRENCY: usize = 16;

fn event(n: usize) -> pb::Event {
    let key = format!("products/p/originals/i{n}");
    pb::Event {
        id: ulid::Ulid::new().to_string(),
        r#type: pb::EventType::ObjectCreated.into(),
        source: "storemesh.storage".into(),
        subject: key.clone(),
        time: Some(storemesh_runtime::time::now_timestamp()),
        data: Some(pb::event::Data::ObjectCreated(pb::ObjectCreated {
            key,
            size_bytes: 1_000_000,
            content_type: "image/jpeg".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An HTTP target that verifies each delivery's signature (as an edge function does) and
/// counts them.
async fn start_target(count: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router =
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: Bytes| {
            let count = count.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let verified = storemesh_delivery::verify(
                    &[SECRET.as_bytes()],
                    header(storemesh_delivery::TIMESTAMP_HEADER),
                    header(storemesh_delivery::SIGNATURE_HEADER),
                    &body,
                    storemesh_runtime::time::since_epoch().as_secs(),
                    300,
                );
                if verified.is_err() {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                count.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn baseline(
    addr: std::net::SocketAddr,
    events: &[pb::Event],
    count: &AtomicUsize,
) -> Duration {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url: http::Uri = format!("http://{addr}/fn").parse().unwrap();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for event in events {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let url = url.clone();
        let body = pb::Delivery {
            event: Some(event.clone()),
            attempt: 1,
            first_attempt_time: Some(storemesh_runtime::time::now_timestamp()),
        }
        .encode_to_vec();
        tasks.spawn(async move {
            let timestamp = storemesh_runtime::time::since_epoch().as_secs();
            let signature =
                storemesh_delivery::sign_all(&[SECRET.as_bytes()], timestamp, &body).unwrap();
            let request = http::Request::post(url)
                .header(storemesh_delivery::TIMESTAMP_HEADER, timestamp.to_string())
                .header(storemesh_delivery::SIGNATURE_HEADER, signature)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert!(response.status().is_success());
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    assert_eq!(count.load(Ordering::Relaxed), events.len());
    elapsed
}

async fn through_dispatcher(
    redis: &RedisServer,
    addr: std::net::SocketAddr,
    events: &[pb::Event],
    count: &AtomicUsize,
) -> Duration {
    let config = DispatcherConfig {
        server: ServerConfig::default(),
        signing_secrets: vec![SECRET.into()],
        batch_size: 64,
        targets: BTreeMap::from([(
            "fn".to_owned(),
            TargetConfig {
                kind: TargetKind::Http,
                url: format!("http://{addr}/fn"),
                timeout_ms: 10_000,
                concurrency: CONCURRENCY,
                ..TargetConfig::default()
            },
        )]),
        routes: vec![RouteConfig {
            name: "all".into(),
            key_prefix: "products/".into(),
            target: "fn".into(),
            ..RouteConfig::default()
        }],
        schedules: Vec::new(),
        ..DispatcherConfig::default()
    };
    let dispatcher = build(DispatcherSettings {
        dispatcher: config,
        redis: RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        },
        tokens: TokensConfig::default(),
    })
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(dispatcher.run(async move {
        let _ = stopped.await;
    }));
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let started = Instant::now();
    for chunk in events.chunks(500) {
        let mut pipe = redis::pipe();
        for event in chunk {
            pipe.xadd(
                "storage:events",
                "*",
                &[
                    ("event", event.encode_to_vec()),
                    ("id", event.id.clone().into_bytes()),
                    ("type", b"EVENT_TYPE_OBJECT_CREATED".to_vec()),
                    ("key", event.subject.clone().into_bytes()),
                ],
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut connection).await.unwrap();
    }
    while count.load(Ordering::Relaxed) < events.len() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let _ = running.await;
    elapsed
}

fn main() {
    let smoke = std::env::var_os("STOREMESH_BENCH_SMOKE").is_some();
    let n = if smoke { 500 } else { 5_000 };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let redis = RedisServer::start().unwrap();
        let events: Vec<pb::Event> = (0..n).map(event).collect();

        let direct = Arc::new(AtomicUsize::new(0));
        let direct_addr = start_target(direct.clone()).await;
        let base = baseline(direct_addr, &events, &direct).await;

        let dispatched = Arc::new(AtomicUsize::new(0));
        let dispatched_addr = start_target(dispatched.clone()).await;
        let took = through_dispatcher(&redis, dispatched_addr, &events, &dispatched).await;

        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!("dispatch/{n} events, {CONCURRENCY} deliveries in flight");
        println!(
            "  baseline (signed POSTs straight to the target): {:>9.0} events/s ({:.2?})",
            rate(base),
            base
        );
        println!(
            "  through the dispatcher (stream → delivery → ack): {:>9.0} events/s ({:.2?})",
            rate(took),
            took
        );
        println!("  dispatcher / baseline: {:.2}", rate(took) / rate(base));
    });
}
