//! What the whole-system benchmarks share: `storemesh up` as a child process on free ports,
//! its service processes and their memory, and the client calls that set up a seller's data.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use storemesh_benches::status_field_kib;
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_testkit::free_port;
use storemesh_testkit::process::{OutputLines, terminate};
use tonic::transport::Channel;

pub const SERVICES: &[&str] = &[
    "auth",
    "catalog",
    "storage",
    "gateway",
    "edge",
    "dispatcher",
];

/// `storemesh up` as a child; stopped with SIGTERM when dropped.
pub struct Up {
    pub child: Child,
    pub output: OutputLines,
    /// Where the whole log goes when the benchmark ends (in `STOREMESH_BENCH_RESULTS`).
    pub log_name: &'static str,
}

impl Drop for Up {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
        // The whole log of the system, kept with the raw results: an outlier (a retried
        // delivery, a restarted child) is explained there.
        if let Ok(results) = std::env::var("STOREMESH_BENCH_RESULTS") {
            self.output.settle(Duration::from_millis(200));
            let path = std::path::Path::new(&results).join(self.log_name);
            let _ = std::fs::write(&path, self.output.lines().join("\n") + "\n");
        }
    }
}

impl Up {
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> Result<(), String> {
        self.output
            .wait_for(&mut self.child, needle, within)
            .map_err(|error| format!("storemesh up: {error}"))
    }
}

/// The `storemesh serve <service>` children of `parent`, by service name (from /proc).
pub fn service_pids(parent: u32) -> Vec<(String, u32)> {
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
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name| status_field_kib(&status, name).unwrap_or(0) as f64 / 1024.0;
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn storemesh_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STOREMESH_BIN") {
        return PathBuf::from(path);
    }
    let me = std::env::current_exe().unwrap();
    me.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("storemesh")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Ports {
    pub gateway: u16,
    pub edge: u16,
    pub env: Vec<(String, String)>,
}

pub fn ports() -> Ports {
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

pub fn start_up(data: &Path, ports: &Ports, log_name: &'static str) -> Up {
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
        // Every edge request takes a service token (instances keep nothing between requests).
        .env(
            "STOREMESH_AUTH__RATE_LIMIT__SERVICE_TOKEN_PER_CLIENT",
            "100000000",
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
    Up {
        child,
        output,
        log_name,
    }
}

pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// POSTs one JPEG to the upload hook; the image id from the 201 answer.
pub async fn upload(
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

/// A fresh product: the catalog holds at most 100 images per product.
pub async fn new_product(
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

/// Polls `GetImage` every `poll` until the image is READY (the image) or FAILED / not READY
/// within `within` (an error).
pub async fn wait_ready(
    catalog: &CatalogServiceClient<Channel>,
    token: &str,
    image_id: &str,
    poll: Duration,
    within: Duration,
) -> Result<catalog_pb::Image, String> {
    let started = std::time::Instant::now();
    loop {
        let image = catalog
            .clone()
            .get_image(bearer(
                catalog_pb::GetImageRequest {
                    image_id: image_id.to_owned(),
                },
                token,
            ))
            .await
            .map_err(|status| format!("GetImage {image_id}: {status}"))?
            .into_inner()
            .image
            .ok_or("GetImage answered no image")?;
        match image.state() {
            catalog_pb::ImageState::Ready => return Ok(image),
            catalog_pb::ImageState::Failed => {
                return Err(format!("image {image_id} FAILED: {}", image.failure_reason));
            }
            _ if started.elapsed() > within => {
                return Err(format!("image {image_id} not READY within {within:?}"));
            }
            _ => tokio::time::sleep(poll).await,
        }
    }
}

/// Signs in as `up`'s local admin (password in `<data dir>/admin-password`) through the
/// gateway: the access token and a catalog client.
pub async fn admin_session(
    gateway: SocketAddr,
    data_dir: &Path,
) -> (String, CatalogServiceClient<Channel>) {
    let password = std::fs::read_to_string(data_dir.join("admin-password")).unwrap();
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
    (token, CatalogServiceClient::new(channel))
}
