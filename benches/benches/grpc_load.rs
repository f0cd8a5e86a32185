//! Unary gRPC throughput and latency under concurrent load, each against a baseline measured
//! in the same run (these machines are shared and noisy; the ratios are what we track):
//!
//! - `GetProduct` on the catalog (real Redis, real auth token checks) vs a **bare tonic
//!   hello-world server** (the same echo handler on `tonic::transport::Server` with none of
//!   our layers). Goal: ≥ 0.8× the bare baseline's req/s.
//! - `GetProduct` **through the gateway** vs directly to the catalog. Goal: ≤ 15 % fewer
//!   req/s and < 0.5 ms added at p50.
//!
//! The load comes from `h2load` (an external HTTP/2 load generator, so the client's work is not
//! charged to the servers' runtime) at a fixed 32 concurrent calls over 4 connections; without
//! h2load installed it falls back to an in-process tonic client and says so.
//!
//! `cargo bench -p storemesh-benches --bench grpc_load` (full: 5 runs × 5 s per target);
//! `STOREMESH_BENCH_SMOKE=1` for a 1-run × 1 s smoke pass. Prints a Markdown table and records
//! the goal checks (`storemesh_benches::report`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost::Message as _;
use redis::AsyncCommands as _;
use storemesh_auth::{AuthConfig, AuthSettings};
use storemesh_benches::report::{self, Check, Goal};
use storemesh_benches::{h2load, median, spread};
use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_testkit::echo::pb::echo_service_server::{EchoService, EchoServiceServer};
use storemesh_testkit::echo::pb::{EchoRequest, EchoResponse, EchoStreamRequest};
use storemesh_testkit::echo::{Echo, EchoServiceClient};
use storemesh_testkit::{RedisServer, RunningHost};
use tonic::transport::Channel;

const CONCURRENCY: usize = 32;
const GET_PRODUCT: &str = "/storemesh.catalog.v1.CatalogService/GetProduct";
const CONNECTIONS: usize = 4;

/// The second baseline: a bare tonic server whose handler does what `GetProduct`'s store does,
/// one `HGETALL` of the product on the same redis-server, and nothing else (no auth, no layers).
/// `GetProduct ÷ this` is what Storemesh's own per-call work costs beyond the Redis round trip.
#[derive(Clone)]
struct RedisEcho {
    redis: redis::aio::ConnectionManager,
    key: String,
}

#[tonic::async_trait]
impl EchoService for RedisEcho {
    async fn echo(
        &self,
        _request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
        let fields: HashMap<String, String> = self
            .redis
            .clone()
            .hgetall(&self.key)
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        Ok(tonic::Response::new(EchoResponse {
            message: fields.get("title").cloned().unwrap_or_default(),
        }))
    }

    type EchoStreamStream = storemesh_testkit::echo::EchoResponseStream;

    async fn echo_stream(
        &self,
        _request: tonic::Request<EchoStreamRequest>,
    ) -> Result<tonic::Response<Self::EchoStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not part of the benchmark"))
    }
}

struct Measurement {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Runs `CONCURRENCY` callers over `CONNECTIONS` HTTP/2 connections for `duration`.
async fn load<F, Fut>(channels: &[Channel], duration: Duration, call: F) -> Measurement
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let stop_at = Instant::now() + duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CONCURRENCY {
        let channel = channels[worker % channels.len()].clone();
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let mut errors = 0_u64;
            while Instant::now() < stop_at {
                let begun = Instant::now();
                if call(channel.clone()).await {
                    histogram
                        .record(begun.elapsed().as_micros() as u64)
                        .unwrap();
                } else {
                    errors += 1;
                }
            }
            (histogram, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for worker in workers {
        let (partial, failed) = worker.await.unwrap();
        histogram.add(partial).unwrap();
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Measurement {
        requests_per_sec: histogram.len() as f64 / elapsed,
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    }
}

async fn gateway_channels_one(addr: std::net::SocketAddr) -> Channel {
    channels(addr).await.remove(0)
}

async fn channels(addr: std::net::SocketAddr) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    channels
}

fn quiet_server() -> ServerConfig {
    ServerConfig {
        concurrency_limit: 100_000,
        ..ServerConfig::default()
    }
}

struct Summary {
    name: &'static str,
    rps: f64,
    rps_spread: (f64, f64),
    p50: f64,
    p99: f64,
    errors: u64,
}

fn summarize(name: &'static str, runs: &[Measurement]) -> Summary {
    let rps: Vec<f64> = runs.iter().map(|m| m.requests_per_sec).collect();
    let latencies = |pick: fn(&Measurement) -> f64| runs.iter().map(pick).collect::<Vec<_>>();
    Summary {
        name,
        rps_spread: spread(&rps),
        rps: median(&rps),
        p50: median(&latencies(|m| m.p50_ms)),
        p99: median(&latencies(|m| m.p99_ms)),
        errors: runs.iter().map(|m| m.errors).sum(),
    }
}

fn main() {
    let (runs, duration) = if storemesh_benches::smoke() {
        (1, Duration::from_secs(1))
    } else {
        (5, Duration::from_secs(5))
    };
    // Multi-threaded: h2load runs are blocking calls (`block_in_place`) while the servers serve.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        // Baseline: bare tonic, no layers of ours.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServiceServer::new(Echo))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        // The mesh: Redis, auth, catalog, gateway.
        let redis = RedisServer::start().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let auth = RunningHost::spawn(
            storemesh_auth::build(AuthSettings {
                auth: AuthConfig {
                    server: quiet_server(),
                    keys_dir: keys.path().to_path_buf(),
                    argon2: storemesh_auth::testing::cheap_argon2(),
                    ..AuthConfig::default()
                },
                redis: RedisConfig {
                    url: redis.url(),
                    ..RedisConfig::default()
                },
                tokens: TokensConfig::default(),
            })
            .await
            .unwrap(),
        )
        .unwrap();
        let tokens = TokensConfig {
            auth_endpoint: auth.endpoint(),
            ..TokensConfig::default()
        };
        let catalog = RunningHost::spawn(
            storemesh_catalog::build(storemesh_catalog::CatalogSettings {
                catalog: storemesh_catalog::CatalogConfig {
                    server: quiet_server(),
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
        let mut gateway_config = GatewayConfig {
            server: quiet_server(),
            ..GatewayConfig::default()
        };
        gateway_config.rate_limit.per_identity_per_sec = 1_000_000;
        gateway_config.rate_limit.per_identity_burst = 1_000_000;
        gateway_config.rate_limit.per_address_per_sec = 1_000_000;
        gateway_config.rate_limit.per_address_burst = 1_000_000;
        for (name, host) in [("auth", &auth), ("catalog", &catalog)] {
            gateway_config
                .upstreams
                .insert(name.into(), UpstreamConfig::addresses([host.addr.to_string()]));
        }
        let gateway = storemesh_gateway::build(
            GatewaySettings {
                gateway: gateway_config,
                tokens,
            },
            &[],
        )
        .await
        .unwrap();
        let gateway_addr = gateway.local_addr().unwrap();
        tokio::spawn(gateway.run(std::future::pending()));

        let mut auth_client = AuthServiceClient::new(auth.channel().await.unwrap());
        auth_client
            .register(auth_pb::RegisterRequest {
                email: "bench@example.com".into(),
                password: "benchmark password".into(),
                display_name: "Bench".into(),
                role: auth_pb::Role::Seller.into(),
            })
            .await
            .unwrap();
        let token = auth_client
            .login(auth_pb::LoginRequest {
                email: "bench@example.com".into(),
                password: "benchmark password".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap()
            .access_token;
        let authorization: tonic::metadata::MetadataValue<_> =
            format!("Bearer {token}").parse().unwrap();
        let mut create = tonic::Request::new(catalog_pb::CreateProductRequest {
            title: "Benchmark lamp".into(),
            description: "A lamp that is fetched a great many times.".into(),
            price: Some(catalog_pb::Money {
                amount_minor: 2_500,
                currency_code: "EUR".into(),
            }),
            tags: vec!["lighting".into(), "bench".into()],
            ..catalog_pb::CreateProductRequest::default()
        });
        create
            .metadata_mut()
            .insert("authorization", authorization.clone());
        let product_id = CatalogServiceClient::new(catalog.channel().await.unwrap())
            .create_product(create)
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .id;

        let redis_baseline = {
            let redis = redis::Client::open(redis.url())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(EchoServiceServer::new(RedisEcho {
                        redis,
                        key: storemesh_catalog::store::keys::product(&product_id),
                    }))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            addr
        };
        let get_product = {
            let authorization = authorization.clone();
            let product_id = product_id.clone();
            move |channel: Channel| {
                let mut request = tonic::Request::new(catalog_pb::GetProductRequest {
                    id: product_id.clone(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                async move {
                    CatalogServiceClient::new(channel)
                        .get_product(request)
                        .await
                        .is_ok()
                }
            }
        };
        let hello = |channel: Channel| async move {
            EchoServiceClient::new(channel)
                .echo(EchoRequest {
                    message: "hello".into(),
                    delay_ms: 0,
                })
                .await
                .is_ok()
        };

        // One call of each by hand, to know the size of a good answer: h2load counts a gRPC
        // error (HTTP 200, trailers only) as a success, so every run is checked against it.
        let hello_request = EchoRequest {
            message: "hello".into(),
            delay_ms: 0,
        };
        let hello_answer = EchoServiceClient::new(channels(bare_addr).await.remove(0))
            .echo(hello_request.clone())
            .await
            .unwrap()
            .into_inner();
        let redis_answer = EchoServiceClient::new(channels(redis_baseline).await.remove(0))
            .echo(hello_request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(redis_answer.message, "Benchmark lamp", "the baseline reads the product");
        let product_request = catalog_pb::GetProductRequest {
            id: product_id.clone(),
        };
        let mut by_hand = tonic::Request::new(product_request.clone());
        by_hand
            .metadata_mut()
            .insert("authorization", authorization.clone());
        let product_answer = CatalogServiceClient::new(gateway_channels_one(gateway_addr).await)
            .get_product(by_hand)
            .await
            .unwrap()
            .into_inner();

        let (mut bare, mut direct, mut through) = (Vec::new(), Vec::new(), Vec::new());
        let mut with_redis = Vec::new();
        let driver = match h2load::find() {
            Some(h2load_path) => {
                let auth_header = [format!("authorization: Bearer {token}")];
                let hello_body = h2load::grpc_frame(&hello_request.encode_to_vec());
                let product_body = h2load::grpc_frame(&product_request.encode_to_vec());
                let hello_frame = hello_answer.encoded_len() as u64 + 5;
                let redis_frame = redis_answer.encoded_len() as u64 + 5;
                let product_frame = product_answer.encoded_len() as u64 + 5;
                let targets = [
                    (
                        format!("http://{bare_addr}/storemesh.testing.v1.EchoService/Echo"),
                        &hello_body,
                        &[][..],
                        hello_frame,
                    ),
                    (
                        format!("http://{redis_baseline}/storemesh.testing.v1.EchoService/Echo"),
                        &hello_body,
                        &[][..],
                        redis_frame,
                    ),
                    (
                        format!("http://{}{GET_PRODUCT}", catalog.addr),
                        &product_body,
                        &auth_header[..],
                        product_frame,
                    ),
                    (
                        format!("http://{gateway_addr}{GET_PRODUCT}"),
                        &product_body,
                        &auth_header[..],
                        product_frame,
                    ),
                ];
                let measure = |index: usize, duration: Duration| {
                    let (url, body, headers, frame) = &targets[index];
                    let run = h2load::run(
                        &h2load_path,
                        &h2load::Target {
                            url: url.clone(),
                            headers,
                            body,
                        },
                        CONNECTIONS,
                        CONCURRENCY / CONNECTIONS,
                        duration,
                    )
                    .unwrap_or_else(|error| panic!("{url}: {error}"));
                    run.check_responses(*frame)
                        .unwrap_or_else(|error| panic!("{url}: {error}"));
                    Measurement {
                        requests_per_sec: run.requests_per_sec,
                        p50_ms: run.p50_ms,
                        p99_ms: run.p99_ms,
                        errors: run.failed,
                    }
                };
                // Warm-up: connections, JWKS caches, Redis scripts.
                tokio::task::block_in_place(|| measure(3, Duration::from_secs(1)));
                // Interleaved, so drift in machine load hits every target alike.
                for _ in 0..runs {
                    bare.push(tokio::task::block_in_place(|| measure(0, duration)));
                    with_redis.push(tokio::task::block_in_place(|| measure(1, duration)));
                    direct.push(tokio::task::block_in_place(|| measure(2, duration)));
                    through.push(tokio::task::block_in_place(|| measure(3, duration)));
                }
                "h2load (nghttp2), one client thread"
            }
            None => {
                println!(
                    "h2load not found (Debian nghttp2-client; scripts/bench installs it): \
                     measuring with an in-process tonic client instead"
                );
                let bare_channels = channels(bare_addr).await;
                let redis_channels = channels(redis_baseline).await;
                let catalog_channels = channels(catalog.addr).await;
                let gateway_channels = channels(gateway_addr).await;
                load(&gateway_channels, Duration::from_millis(300), get_product.clone()).await;
                for _ in 0..runs {
                    bare.push(load(&bare_channels, duration, hello).await);
                    with_redis.push(load(&redis_channels, duration, hello).await);
                    direct.push(load(&catalog_channels, duration, get_product.clone()).await);
                    through.push(load(&gateway_channels, duration, get_product.clone()).await);
                }
                "an in-process tonic client (h2load not installed)"
            }
        };
        let bare = summarize("bare tonic hello (baseline)", &bare);
        let with_redis = summarize("bare tonic + one Redis HGETALL (baseline 2)", &with_redis);
        let direct = summarize("GetProduct direct to catalog", &direct);
        let through = summarize("GetProduct through the gateway", &through);

        println!();
        println!(
            "| target | req/s (median) | req/s spread | p50 ms | p99 ms | × baseline | errors |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (row, baseline) in [
            (&bare, &bare),
            (&with_redis, &bare),
            (&direct, &bare),
            (&through, &direct),
        ] {
            println!(
                "| {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.2} | {} |",
                row.name,
                row.rps,
                row.rps_spread.0,
                row.rps_spread.1,
                row.p50,
                row.p99,
                row.rps / baseline.rps,
                row.errors
            );
        }
        println!();
        println!(
            "Load: {driver}; {} run(s) × {:?} per target, interleaved; {CONCURRENCY} concurrent calls over {CONNECTIONS} HTTP/2 connections; auth, catalog, gateway and the bare server share this process's tokio runtime, with Redis in its own process. Ratios: baseline 2 and direct against bare tonic, the gateway against direct; direct against baseline 2: {:.2}×.",
            runs,
            duration,
            direct.rps / with_redis.rps
        );
        println!();
        report::record(&Check::new(
            "grpc_load",
            "GetProduct req/s ÷ bare tonic hello",
            direct.rps / bare.rps,
            "×",
            Some(Goal::AtLeast(0.8)),
        ));
        report::record(&Check::new(
            "grpc_load",
            "GetProduct req/s ÷ bare tonic + one Redis HGETALL",
            direct.rps / with_redis.rps,
            "×",
            None,
        ));
        report::record(&Check::new(
            "grpc_load",
            "gateway overhead (req/s lost vs direct)",
            (1.0 - through.rps / direct.rps) * 100.0,
            "%",
            Some(Goal::AtMost(15.0)),
        ));
        report::record(&Check::new(
            "grpc_load",
            "gateway p50 added",
            through.p50 - direct.p50,
            "ms",
            Some(Goal::AtMost(0.5)),
        ));
        report::record(&Check::new(
            "grpc_load",
            "GetProduct p99 through the gateway",
            through.p99,
            "ms",
            None,
        ));
        assert_eq!(
            bare.errors + with_redis.errors + direct.errors + through.errors,
            0,
            "calls failed during the benchmark"
        );
        drop((auth, catalog, redis, keys));
    });
}
