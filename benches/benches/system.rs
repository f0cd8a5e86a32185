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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use storemesh_benches::report::{self, Check};
use storemesh_benches::{h2load, images, median, status_field_kib};
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_testkit::free_port;
use storemesh_testkit::process::{OutputLines, terminate};
use tonic::transport::Channel;

const POLL: Duration = Duration::from_millis(5);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const SERVICES: &[&str] = &[
    "auth",
    "catalog",
    "storage",
    "gateway",
    "edge",
    "dispatcher",
];

/// `storemesh up` as a child; stopped with SIGTERM when dropped.
struct Up {
    child: Child,
    output: OutputLines,
}

impl Drop for Up {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
        // The whole log of the system, kept with the raw results: an outlier (a retried
        // delivery, a restarted child) is explained there.
        if let Ok(results) = std::env::var("STOREMESH_BENCH_RESULTS") {
            self.output.settle(Duration::from_millis(200));
            let path = std::path::Path::new(&results).join("system-up.log");
            let _ = std::fs::write(&path, self.output.lines().join("\n") + "\n");
        }
    }
}

impl Up {
    fn wait_for(&mut self, needle: &str, within: Duration) -> Result<(), String> {
        self.output
            .wait_for(&mut self.child, needle, within)
            .map_err(|error| format!("storemesh up: {error}"))
    }
}

/// The `storemesh serve <service>` children of `parent`, by service name (from /proc).
fn service_pids(parent: u32) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok())
        else {
            continue;
        };
        if ppid != parent {
            continue;
        }
        let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let arguments: Vec<String> = command_line
            .split(|b| *b == 0)
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect();
        if let Some(position) = arguments.iter().position(|a| a == "serve") {
            if let Some(service) = arguments.get(position + 1) {
                found.push((service.clone(), pid));
            }
        } else if arguments
            .first()
            .is_some_and(|program| program.contains("redis-server"))
        {
            found.push(("redis-server".into(), pid));
        }
    }
    found.sort();
    found
}

/// (VmRSS, VmHWM) of `pid` in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name| status_field_kib(&status, name).unwrap_or(0) as f64 / 1024.0;
    (field("VmRSS:"), field("VmHWM:"))
}

fn storemesh_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STOREMESH_BIN") {
        return PathBuf::from(path);
    }
    let me = std::env::current_exe().unwrap();
    me.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("storemesh")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Ports {
    gateway: u16,
    edge: u16,
    env: Vec<(String, String)>,
}

fn ports() -> Ports {
    let mut env = Vec::new();
    let mut listen_of = std::collections::BTreeMap::new();
    for service in SERVICES {
        let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
        listen_of.insert(*service, listen);
        let upper = service.to_uppercase();
        // The edge runtime's listeners are top-level in its section; the others' under `server`.
        let prefix = if *service == "edge" {
            format!("STOREMESH_{upper}__")
        } else {
            format!("STOREMESH_{upper}__SERVER__")
        };
        env.push((format!("{prefix}LISTEN"), format!("127.0.0.1:{listen}")));
        env.push((
            format!("{prefix}ADMIN_LISTEN"),
            format!("127.0.0.1:{admin}"),
        ));
    }
    Ports {
        gateway: listen_of["gateway"],
        edge: listen_of["edge"],
        env,
    }
}

fn start_up(data: &Path, ports: &Ports) -> Up {
    let mut command = Command::new(storemesh_binary());
    command
        .current_dir(repo_root())
        .arg("up")
        .arg("--data-dir")
        .arg(data)
        .args(["--redis-port", &free_port().unwrap().to_string()])
        .args(["--ready-timeout", "300"])
        // scripts/bench builds the edge functions first; a build here would wait on the shared
        // cargo lock inside the measurement.
        .arg("--no-build")
        .env_remove("REDIS_URL")
        .env("STOREMESH_TELEMETRY__FILTER", "warn")
        // Load, not abuse: the benchmark's callers all come from one address and one account.
        .env(
            "STOREMESH_GATEWAY__RATE_LIMIT__PER_IDENTITY_PER_SEC",
            "1000000",
        )
        .env(
            "STOREMESH_GATEWAY__RATE_LIMIT__PER_IDENTITY_BURST",
            "1000000",
        )
        .env(
            "STOREMESH_GATEWAY__RATE_LIMIT__PER_ADDRESS_PER_SEC",
            "1000000",
        )
        .env(
            "STOREMESH_GATEWAY__RATE_LIMIT__PER_ADDRESS_BURST",
            "1000000",
        )
        .envs(ports.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|error| {
        panic!(
            "cannot start {}: {error}; build it first (scripts/bench does)",
            storemesh_binary().display()
        )
    });
    let output = OutputLines::capture(&mut child);
    Up { child, output }
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// POSTs one JPEG to the upload hook; the image id from the 201 answer.
async fn upload(
    edge: SocketAddr,
    product: &str,
    token: &str,
    jpeg: Bytes,
) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(edge)
        .await
        .map_err(|error| format!("connect {edge}: {error}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{edge}/v1/products/{product}/images"))
        .header(http::header::HOST, edge.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "image/jpeg")
        .header(http::header::CONTENT_LENGTH, jpeg.len())
        .body(Full::new(jpeg))
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    if status != http::StatusCode::CREATED {
        return Err(format!(
            "upload answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| format!("upload answer: {error}"))?;
    answer
        .get("image_id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no image_id in {answer}"))
}

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
    loop {
        let image = catalog
            .clone()
            .get_image(bearer(
                catalog_pb::GetImageRequest {
                    image_id: image_id.clone(),
                },
                &token,
            ))
            .await
            .map_err(|status| format!("GetImage {image_id}: {status}"))?
            .into_inner()
            .image
            .ok_or("GetImage answered no image")?;
        match image.state() {
            catalog_pb::ImageState::Ready => return Ok(started.elapsed()),
            catalog_pb::ImageState::Failed => {
                return Err(format!("image {image_id} FAILED: {}", image.failure_reason));
            }
            _ if started.elapsed() > READY_TIMEOUT => {
                return Err(format!(
                    "image {image_id} not READY within {READY_TIMEOUT:?}"
                ));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

struct PipelineRow {
    label: String,
    concurrency: usize,
    latencies_ms: Vec<f64>,
    images_per_sec: f64,
}

/// A fresh product: the catalog holds at most 100 images per product.
async fn new_product(
    catalog: &CatalogServiceClient<Channel>,
    token: &str,
) -> Result<String, String> {
    catalog
        .clone()
        .create_product(bearer(
            catalog_pb::CreateProductRequest {
                title: "Benchmark lamp".into(),
                price: Some(catalog_pb::Money {
                    amount_minor: 2_500,
                    currency_code: "EUR".into(),
                }),
                ..catalog_pb::CreateProductRequest::default()
            },
            token,
        ))
        .await
        .map_err(|status| format!("CreateProduct: {status}"))?
        .into_inner()
        .product
        .map(|product| product.id)
        .ok_or_else(|| "CreateProduct answered no product".to_owned())
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
    let mut up = start_up(&data.path().join("up"), &ports);
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
    let password = std::fs::read_to_string(data.path().join("up/admin-password")).unwrap();
    let (token, product_id, catalog) = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{gateway}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let token = AuthServiceClient::new(channel.clone())
            .login(auth_pb::LoginRequest {
                email: "admin@storemesh.local".into(),
                password: password.trim().into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap()
            .access_token;
        let catalog = CatalogServiceClient::new(channel);
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
