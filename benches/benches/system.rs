//! The whole system as a user runs it: `storemesh up` as a child process on free ports (one
//! `storemesh serve <service>` process per service, a real redis-server), then
//!
//! - **idle RSS** of every service process (`VmRSS` of `/proc/<pid>/status`) once it is up;
//! - **upload → READY**: JPEGs of 1 MP and 12 MP `POST`ed to the edge upload hook
//!   (`/v1/products/{id}/images`, bearer token, 201 + `{"image_id"}`), then `GetImage` through
//!   the gateway polled every `POLL` until `IMAGE_STATE_READY`: p50/p99 per image at
//!   concurrency 1 and 8, and images/s;
//! - `GetProduct` through the gateway under h2load for a few seconds, then **loaded RSS** of every
//!   service (`VmRSS` now and `VmHWM`, the peak since start).
//!
//! `up` runs with `--no-build`: the edge functions must be built first (scripts/bench does:
//! `cargo build --release --target wasm32-wasip2 --manifest-path edge-functions/Cargo.toml`).
//! If the pipeline fails (an image FAILED or never READY), the RSS figures are still reported
//! and the pipeline is marked not measured, with the reason.
//!
//! `STOREMESH_BIN` names the `storemesh` executable (default: next to this benchmark's
//! `deps/` directory, i.e. the same profile's build). `STOREMESH_BENCH_SMOKE=1`: tiny images,
//! a few uploads, 1 s of load.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use storemesh_benches::report::{self, Check};
use storemesh_benches::{h2load, images, median};
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use tonic::transport::Channel;

use common::{memory_mib, new_product, ports, service_pids, start_up, upload};

const POLL: Duration = Duration::from_millis(5);
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Upload, then poll `GetImage` until READY: the whole latency.
async fn upload_until_ready(
    edge: SocketAddr,
    catalog: CatalogServiceClient<Channel>,
    product: String,
    token: String,
    jpeg: Bytes,
) -> Result<Duration, String> {
    let started = Instant::now();
    let image_id = upload(edge, &product, &token, jpeg).await?;
    common::wait_ready(&catalog, &token, &image_id, POLL, READY_TIMEOUT).await?;
    Ok(started.elapsed())
}

struct PipelineRow {
    label: String,
    concurrency: usize,
    latencies_ms: Vec<f64>,
    images_per_sec: f64,
}

async fn pipeline(
    edge: SocketAddr,
    catalog: &CatalogServiceClient<Channel>,
    token: &str,
    cases: &[(&str, Bytes, usize, usize)],
) -> Result<Vec<PipelineRow>, String> {
    let mut rows = Vec::new();
    for (label, jpeg, concurrency, count) in cases {
        let product = new_product(catalog, token).await?;
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut pending = tokio::task::JoinSet::new();
        let mut submitted = 0;
        while submitted < *count || !pending.is_empty() {
            while submitted < *count && pending.len() < *concurrency {
                pending.spawn(upload_until_ready(
                    edge,
                    catalog.clone(),
                    product.clone(),
                    token.to_owned(),
                    jpeg.clone(),
                ));
                submitted += 1;
            }
            if let Some(done) = pending.join_next().await {
                let latency = done.map_err(|error| error.to_string())??;
                latencies.push(latency.as_secs_f64() * 1e3);
            }
        }
        rows.push(PipelineRow {
            label: (*label).to_owned(),
            concurrency: *concurrency,
            images_per_sec: *count as f64 / started.elapsed().as_secs_f64(),
            latencies_ms: latencies,
        });
    }
    Ok(rows)
}

fn percentile(values: &[f64], quantile: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn main() {
    // cargo bench passes `--bench`; `cargo test` runs bench targets without it: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let smoke = storemesh_benches::smoke();
    let data = tempfile::tempdir().unwrap();
    let ports = ports();
    let mut up = start_up(&data.path().join("up"), &ports, "system-up.log");
    up.wait_for("Storemesh is up.", Duration::from_secs(600))
        .unwrap_or_else(|message| panic!("{message}"));
    // Let start-up work (JWKS fetches, connection pools) settle before the idle reading.
    std::thread::sleep(Duration::from_secs(if smoke { 1 } else { 3 }));
    let pids = service_pids(up.child.id());
    let idle: Vec<(String, u32, f64)> = pids
        .iter()
        .map(|(name, pid)| (name.clone(), *pid, memory_mib(*pid).0))
        .collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let gateway = SocketAddr::from(([127, 0, 0, 1], ports.gateway));
    let edge = SocketAddr::from(([127, 0, 0, 1], ports.edge));
    let (token, product_id, catalog) = runtime.block_on(async {
        let (token, catalog) = common::admin_session(gateway, &data.path().join("up")).await;
        let product_id = new_product(&catalog, &token).await.unwrap();
        (token, product_id, catalog)
    });

    // Upload → READY.
    let pipeline_result = {
        let (small, large) = if smoke {
            ((320, 240), (640, 480))
        } else {
            ((1152, 864), (4000, 3000))
        };
        let small_jpeg = Bytes::from(images::photo_jpeg(small.0, small.1));
        let large_jpeg = Bytes::from(images::photo_jpeg(large.0, large.1));
        let (small_label, large_label) = if smoke {
            ("320x240 (smoke)", "640x480 (smoke)")
        } else {
            ("1 MP (1152x864)", "12 MP (4000x3000)")
        };
        let cases: Vec<(&str, Bytes, usize, usize)> = if smoke {
            vec![
                (small_label, small_jpeg.clone(), 1, 2),
                (large_label, large_jpeg.clone(), 2, 2),
            ]
        } else {
            vec![
                (small_label, small_jpeg.clone(), 1, 20),
                (small_label, small_jpeg.clone(), 8, 48),
                (large_label, large_jpeg.clone(), 1, 10),
                (large_label, large_jpeg.clone(), 8, 24),
            ]
        };
        runtime.block_on(async {
            // One warm-up image: compiles nothing (the edge caches components) but fills pools.
            pipeline(edge, &catalog, &token, &[(small_label, small_jpeg, 1, 1)]).await?;
            pipeline(edge, &catalog, &token, &cases).await
        })
    };

    // Load for the loaded RSS: GetProduct through the gateway.
    let load_secs = if smoke { 1 } else { 10 };
    let load_note = match h2load::find() {
        Some(h2load_path) => {
            let body = h2load::grpc_frame(
                &catalog_pb::GetProductRequest {
                    id: product_id.clone(),
                }
                .encode_to_vec(),
            );
            let headers = [format!("authorization: Bearer {token}")];
            match h2load::run(
                &h2load_path,
                &h2load::Target {
                    url: format!("http://{gateway}/storemesh.catalog.v1.CatalogService/GetProduct"),
                    headers: &headers,
                    body: &body,
                },
                4,
                8,
                Duration::from_secs(load_secs),
            ) {
                Ok(run) => format!(
                    "{load_secs} s of GetProduct through the gateway with h2load (32 concurrent \
                     calls): {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    run.requests_per_sec, run.p50_ms, run.p99_ms
                ),
                Err(error) => format!("GetProduct load failed: {error}"),
            }
        }
        None => "no GetProduct load (h2load not installed)".to_owned(),
    };
    let loaded: Vec<(f64, f64)> = idle.iter().map(|(_, pid, _)| memory_mib(*pid)).collect();

    println!();
    println!("| process | idle RSS MiB | RSS after load MiB | peak RSS (VmHWM) MiB |");
    println!("|---|---|---|---|");
    for ((name, _, idle_rss), (rss, peak)) in idle.iter().zip(&loaded) {
        println!("| {name} | {idle_rss:.1} | {rss:.1} | {peak:.1} |");
    }
    println!();
    println!(
        "Load: {load_note}{}.",
        if pipeline_result.is_ok() {
            ", after the upload → READY runs below"
        } else {
            ""
        }
    );
    println!();
    for ((name, _, _), (_, peak)) in idle.iter().zip(&loaded) {
        if name != "redis-server" {
            report::record(&Check::new(
                "system",
                &format!("{name} peak RSS (VmHWM) after load"),
                *peak,
                "MiB",
                None,
            ));
        }
    }
    println!();
    match &pipeline_result {
        Ok(rows) => {
            println!(
                "| upload → READY | concurrency | images | p50 ms | p99 ms | median ms | images/s |"
            );
            println!("|---|---|---|---|---|---|---|");
            for row in rows {
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} |",
                    row.label,
                    row.concurrency,
                    row.latencies_ms.len(),
                    percentile(&row.latencies_ms, 0.5),
                    percentile(&row.latencies_ms, 0.99),
                    median(&row.latencies_ms),
                    row.images_per_sec
                );
            }
            println!();
            println!(
                "Latency from the first byte of the upload to the first GetImage (through the \
                 gateway) that answers READY, polled every {POLL:?}; with few images p99 is the \
                 slowest one."
            );
            for row in rows {
                report::record(&Check::new(
                    "system",
                    &format!(
                        "upload → READY p50, {} at concurrency {}",
                        row.label, row.concurrency
                    ),
                    percentile(&row.latencies_ms, 0.5),
                    "ms",
                    None,
                ));
            }
        }
        Err(reason) => {
            println!("Upload → READY: **not measured** — {reason}.");
        }
    }
    drop(up);
}
