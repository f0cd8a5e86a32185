//! `storemesh up`: the whole system on one machine.
//!
//! Starts a local `redis-server` (AOF on, data under `--data-dir`) unless `REDIS_URL` is set,
//! then every service as a child process (`storemesh serve <name>`), with their logs prefixed
//! and interleaved on stdout. It waits until each answers gRPC health, prints the endpoints and
//! the local admin credentials, and stops everything cleanly on Ctrl-C (or SIGTERM). A port in
//! use or a child that dies at start fails the whole command at once, naming the culprit; a child
//! that dies later is restarted (with backoff when it keeps dying), as a process supervisor would.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::RngCore;
use storemesh_runtime::ConfigLoader;
use storemesh_runtime::backoff::{Backoff, Jitter};

use crate::serve::Service;

mod edge;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where Redis data, signing keys and stored objects live.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Port of the local redis-server (ignored when REDIS_URL is set).
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// `maxmemory` of the local redis-server (e.g. `512mb`, `2gb`; ignored when REDIS_URL is
    /// set). It runs with `maxmemory-policy noeviction`: when full, writes are refused
    /// instead of state being evicted.
    #[arg(long, default_value = DEFAULT_REDIS_MAXMEMORY, value_parser = parse_redis_memory)]
    redis_maxmemory: String,
    /// Seconds to wait for every service to become ready.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// Do not build the edge functions; use the `.wasm` files already built.
    #[arg(long)]
    no_build: bool,
    /// Do not start the embedded edge runtime: the edge functions run elsewhere, e.g. under
    /// `spin up` in another terminal, at this URL (`http://127.0.0.1:3000` is Spin's default).
    /// The dispatcher delivers there, and `up` writes the Spin variables the functions need to
    /// `<data dir>/edge/spin.env` and prints the command that runs them.
    #[arg(long, value_name = "URL")]
    edge_url: Option<String>,
}

const ADMIN_EMAIL: &str = "admin@storemesh.local";

/// Default `--redis-maxmemory`: ample for a development machine's products and events.
const DEFAULT_REDIS_MAXMEMORY: &str = "512mb";

/// A Redis memory size: digits, optionally followed by `kb`, `mb` or `gb` (as redis.conf
/// reads them), at least 1 MiB; checked here so a typo fails `up` at once instead of
/// redis-server dying at start.
fn parse_redis_memory(value: &str) -> Result<String, String> {
    let lower = value.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let multiplier: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(format!("{value:?}: expected e.g. 512mb or 2gb")),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{value:?}: expected e.g. 512mb or 2gb"))?;
    if bytes < 1 << 20 {
        return Err(format!("{value:?}: at least 1mb"));
    }
    Ok(lower)
}

/// The arguments of the local redis-server: loopback only, AOF on (fsync every second), no RDB
/// snapshots, and a memory limit with `noeviction`. Redis is the primary datastore here, not a
/// cache: an evicting policy would silently drop products, sessions or stream entries (the
/// storage event stream, the dead letters), so a full Redis must refuse writes instead.
fn redis_server_args(port: u16, dir: &Path, maxmemory: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory",
        maxmemory,
        "--maxmemory-policy",
        "noeviction",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend([OsString::from("--dir"), dir.as_os_str().to_owned()]);
    args
}

/// The thumbnail function's service account, provisioned by `up` and handed to the function
/// through its Spin variables.
const THUMBNAIL_ACCOUNT: &str = "thumbnail";
const THUMBNAIL_SCOPES: &[&str] = &[
    "storage.read",
    "storage.write:thumbnails",
    "catalog.read",
    "catalog.write:variants",
];
/// The `images` function's service account: it reads image records and bytes for anonymous
/// shoppers and signed URLs.
const IMAGES_ACCOUNT: &str = "images";
const IMAGES_SCOPES: &[&str] = &["catalog.read", "storage.read"];

/// How to start one child again: `up` restarts children that die after start.
#[derive(Clone)]
struct ChildSpec {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl ChildSpec {
    fn new(name: &str, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)));
        command
    }
}

struct Running {
    name: String,
    child: Child,
    spec: ChildSpec,
    started: Instant,
    /// Consecutive quick deaths, for the restart backoff.
    quick_deaths: u32,
}

/// A child that ran at least this long before dying is restarted at once; quicker deaths back
/// off exponentially, and `up` gives up after `MAX_QUICK_DEATHS` in a row.
/// The name of the Redis child (in its log prefix, and what shutdown stops last).
const REDIS: &str = "redis";
const HEALTHY_RUN: Duration = Duration::from_secs(30);
const MAX_QUICK_DEATHS: u32 = 5;
/// The wait before restarting a child that died quickly `n` times in a row: 250 ms · 2^n
/// (`n` = 0 after a healthy run), at most 16 s; taken at step `n + 1`.
const RESTART_BACKOFF: Backoff = match Backoff::exponential(
    Duration::from_millis(250),
    Duration::from_secs(16),
    Jitter::None,
) {
    Ok(backoff) => backoff,
    Err(_) => panic!("a valid backoff"),
};

/// Children are stopped whatever happens: the services first (draining in parallel), then
/// Redis once none of them can still be using it, so no in-flight call or consumer fails on
/// a vanished Redis during shutdown.
struct Children(Vec<Running>);

impl Children {
    fn stop_all(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        Self::stop(self.0.iter_mut().filter(|r| r.name != REDIS), deadline);
        let deadline = Instant::now() + Duration::from_secs(10);
        Self::stop(self.0.iter_mut().filter(|r| r.name == REDIS), deadline);
        self.0.clear();
    }

    /// SIGTERM to each of `group`, then waits for all of them (killing any still running at
    /// `deadline`).
    fn stop<'a>(group: impl Iterator<Item = &'a mut Running>, deadline: Instant) {
        let mut group: Vec<&mut Running> = group.collect();
        for running in group.iter().rev() {
            if let Ok(pid) = i32::try_from(running.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for running in group.iter_mut().rev() {
            loop {
                match running.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("{} did not stop in time; killing it", running.name);
                        let _ = running.child.kill();
                        let _ = running.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// Restarts every child that has died since the last look, like a process supervisor: at
    /// once after a healthy run, with exponential backoff after quick deaths, and gives up
    /// (stopping everything) when one keeps dying.
    async fn restart_exited(&mut self) -> anyhow::Result<()> {
        for index in 0..self.0.len() {
            let status = match self.0[index].child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(error) => bail!("cannot watch {}: {error}", self.0[index].name),
            };
            let (spec, quick_deaths) = {
                let dead = &self.0[index];
                let quick = dead.started.elapsed() < HEALTHY_RUN;
                let deaths = if quick { dead.quick_deaths + 1 } else { 0 };
                (dead.spec.clone(), deaths)
            };
            if quick_deaths > MAX_QUICK_DEATHS {
                bail!(
                    "{} keeps exiting ({status}, {quick_deaths} times in a row); stopping everything",
                    spec.name
                );
            }
            let delay = RESTART_BACKOFF.ceiling(quick_deaths.saturating_add(1));
            println!(
                "{:>8} | exited ({status}); restarting in {} ms",
                spec.name,
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
            let mut restarted = spawn(spec)?;
            restarted.quick_deaths = quick_deaths;
            self.0[index] = restarted;
        }
        Ok(())
    }

    /// The first child that has exited, with its status.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.0.iter_mut().find_map(|running| {
            running
                .child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (running.name.clone(), status))
        })
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn ensure_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{what} cannot listen on {addr}: the port is in use (stop what uses it or configure another port)"))
}

/// Copies a child's output to ours, one prefixed line at a time.
fn relay(name: &str, stream: impl std::io::Read + Send + 'static) {
    let prefix = format!("{name:>8} |");
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => println!("{prefix} {line}"),
                Err(_) => break,
            }
        }
    });
}

fn spawn(spec: ChildSpec) -> anyhow::Result<Running> {
    let name = spec.name.as_str();
    let mut command = spec.command();
    use std::io::IsTerminal;
    use std::os::unix::process::CommandExt;
    // Own process group: a terminal's Ctrl-C reaches only `up`, which then stops the
    // children in order (services drain before Redis goes away).
    command.process_group(0);
    let color = if std::io::stdout().is_terminal() {
        "always"
    } else {
        "never"
    };
    let mut child = command
        .env("STOREMESH_TELEMETRY__COLOR", color)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    if let Some(stdout) = child.stdout.take() {
        relay(name, stdout);
    }
    if let Some(stderr) = child.stderr.take() {
        relay(name, stderr);
    }
    Ok(Running {
        name: name.to_owned(),
        child,
        started: Instant::now(),
        quick_deaths: 0,
        spec,
    })
}

/// The local admin password, created once and kept in the data dir (mode 0600).
fn admin_password(data_dir: &Path) -> anyhow::Result<String> {
    stored_secret(&data_dir.join("admin-password"))
}

/// The service accounts the local system needs, with secrets created once and kept in the
/// data dir (mode 0600): auth gets the accounts, each service its own credentials. Accounts
/// configured explicitly in `auth.service_accounts` are left alone.
fn service_account_env(
    loader: &ConfigLoader,
    data_dir: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let auth: storemesh_auth::AuthConfig = loader.section("auth")?;
    if !auth.service_accounts.is_empty() {
        return Ok(Vec::new());
    }
    // (client id, scopes, where its user reads the id and the secret; the thumbnail function's
    // pair goes into its Spin variables, see `function_variables`)
    let accounts: &[(&str, &[&str], &str, &str)] = &[
        (
            "catalog",
            &["storage.delete:products"],
            "STOREMESH_CATALOG__SERVICE_CLIENT_ID",
            "STOREMESH_CATALOG__SERVICE_CLIENT_SECRET",
        ),
        (
            "dispatcher",
            storemesh_dispatcher::config::SERVICE_SCOPES,
            "STOREMESH_DISPATCHER__SERVICE_CLIENT_ID",
            "STOREMESH_DISPATCHER__SERVICE_CLIENT_SECRET",
        ),
        (THUMBNAIL_ACCOUNT, THUMBNAIL_SCOPES, "", ""),
        (IMAGES_ACCOUNT, IMAGES_SCOPES, "", ""),
    ];
    let mut entries = Vec::new();
    let mut env = Vec::new();
    for (client_id, scopes, id_env, secret_env) in accounts {
        let secret = stored_secret(&data_dir.join("secrets").join(client_id))?;
        let scopes: Vec<String> = scopes.iter().map(|scope| format!("\"{scope}\"")).collect();
        entries.push(format!(
            "{{client_id=\"{client_id}\", client_secret=\"{secret}\", scopes=[{}]}}",
            scopes.join(", ")
        ));
        if !id_env.is_empty() {
            env.push(((*id_env).to_owned(), (*client_id).to_owned()));
            env.push(((*secret_env).to_owned(), secret));
        }
    }
    env.push((
        "STOREMESH_AUTH__SERVICE_ACCOUNTS".into(),
        format!("[{}]", entries.join(", ")),
    ));
    Ok(env)
}

/// The Spin variables the edge functions need from the rest of the system: the gateway to call,
/// the token settings to verify users with, the thumbnail sizes the catalog waits for, the
/// thumbnail function's service account and the delivery-signing secret shared with the
/// dispatcher. The same values reach the embedded runtime (as `edge.variables`) and a
/// developer's own Spin (as `SPIN_VARIABLE_*` in `spin.env`). Variables configured in
/// `edge.variables` are left alone.
fn function_variables(
    loader: &ConfigLoader,
    data_dir: &Path,
    gateway: Option<SocketAddr>,
) -> anyhow::Result<Vec<(String, String)>> {
    let tokens: storemesh_runtime::auth::TokensConfig = loader.section("tokens")?;
    let catalog: storemesh_catalog::CatalogConfig = loader.section("catalog")?;
    let auth: storemesh_auth::AuthConfig = loader.section("auth")?;
    let mut variables = vec![
        ("token_issuer".to_owned(), tokens.issuer),
        ("token_audience".to_owned(), tokens.audience),
        (
            "delivery_signing_secret".to_owned(),
            delivery_secret(data_dir)?,
        ),
        // One source for the sizes: an image is READY once the catalog has a `w{N}` variant for
        // each of its `variant_sizes`, so the function makes exactly those.
        (
            "thumbnail_sizes".to_owned(),
            catalog
                .variant_sizes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if auth.service_accounts.is_empty() {
        for (account, prefix) in [(THUMBNAIL_ACCOUNT, "thumbnail"), (IMAGES_ACCOUNT, "images")] {
            variables.push((format!("{prefix}_client_id"), account.to_owned()));
            variables.push((
                format!("{prefix}_client_secret"),
                stored_secret(&data_dir.join("secrets").join(account))?,
            ));
        }
    }
    // The catalog signs image URLs with this key and the `images` function verifies them.
    if !loader.is_set("catalog.image_url_signing_keys") {
        variables.push((
            "image_url_signing_keys".to_owned(),
            image_url_signing_key(data_dir)?,
        ));
    }
    if let Some(gateway) = gateway {
        let url = format!("http://{}", loopback_if_unspecified(gateway));
        // The web front end's gRPC-Web calls go from the browser to the same gateway.
        variables.push(("public_gateway_url".to_owned(), url.clone()));
        variables.push(("gateway_url".to_owned(), url));
    }
    variables.retain(|(name, _)| !loader.is_set(&format!("edge.variables.{name}")));
    Ok(variables)
}

/// A server listening on every interface is reached on loopback.
fn loopback_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// What the embedded edge runtime needs: the functions' variables and a manifest whose
/// components are built.
fn edge_env(
    loader: &ConfigLoader,
    data_dir: &Path,
    variables: &[(String, String)],
    build: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let edge_config = storemesh_edge::EdgeSettings::load(loader)?.edge;
    let manifest = edge::prepare(&edge_config.manifest, &data_dir.join("edge"), build)?;
    let mut env = vec![(
        "STOREMESH_EDGE__MANIFEST".to_owned(),
        manifest.display().to_string(),
    )];
    // The default cache moves into the data dir; a configured one is kept (e.g. a cache shared
    // by test runs, so each start need not compile again).
    if !loader.is_set("edge.cache_dir") {
        env.push((
            "STOREMESH_EDGE__CACHE_DIR".to_owned(),
            data_dir.join("edge/cache").display().to_string(),
        ));
    }
    env.extend(variables.iter().map(|(name, value)| {
        (
            format!("STOREMESH_EDGE__VARIABLES__{}", name.to_ascii_uppercase()),
            value.clone(),
        )
    }));
    Ok(env)
}

/// The dispatcher finds catalog and storage where they really listen, delivers originals to
/// the thumbnail function of the edge (`edge_origin`: the embedded runtime or the developer's
/// own Spin), signs with the shared secret, and keeps one consumer name across restarts so a
/// restarted dispatcher resumes its unacknowledged events at once. Settings configured
/// explicitly are left alone, in every mode.
fn dispatcher_env(
    loader: &ConfigLoader,
    data_dir: &Path,
    catalog: Option<SocketAddr>,
    storage: Option<SocketAddr>,
    edge_origin: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let configured: storemesh_dispatcher::DispatcherConfig = loader.section("dispatcher")?;
    let mut env = Vec::new();
    if configured.signing_secrets.is_empty() {
        env.push((
            "STOREMESH_DISPATCHER__SIGNING_SECRETS".to_owned(),
            format!("[\"{}\"]", delivery_secret(data_dir)?),
        ));
    }
    if configured.consumer.is_empty() {
        env.push((
            "STOREMESH_DISPATCHER__CONSUMER".to_owned(),
            "storemesh-up".to_owned(),
        ));
    }
    for (name, addr) in [("CATALOG", catalog), ("STORAGE", storage)] {
        if let Some(addr) = addr {
            env.push((
                format!("STOREMESH_DISPATCHER__{name}__ADDRESSES"),
                format!("[\"{addr}\"]"),
            ));
        }
    }
    if let Some(origin) = edge_origin
        && !loader.is_set("dispatcher.targets.thumbnail.url")
    {
        env.push((
            "STOREMESH_DISPATCHER__TARGETS__THUMBNAIL__URL".to_owned(),
            format!("{origin}/internal/thumbnail"),
        ));
    }
    Ok(env)
}

/// The HMAC key the catalog signs image URLs with and the `images` function verifies.
fn image_url_signing_key(data_dir: &Path) -> anyhow::Result<String> {
    stored_secret(&data_dir.join("secrets").join("image-url-signing"))
}

/// The catalog signs image URLs with the shared key and writes absolute URLs for the edge that
/// serves them. Settings configured explicitly are left alone.
fn catalog_env(
    loader: &ConfigLoader,
    data_dir: &Path,
    edge_origin: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    if !loader.is_set("catalog.image_url_signing_keys") {
        env.push((
            "STOREMESH_CATALOG__IMAGE_URL_SIGNING_KEYS".to_owned(),
            format!("[\"{}\"]", image_url_signing_key(data_dir)?),
        ));
    }
    if let Some(origin) = edge_origin
        && !loader.is_set("catalog.public_image_base_url")
    {
        env.push((
            "STOREMESH_CATALOG__PUBLIC_IMAGE_BASE_URL".to_owned(),
            origin.to_owned(),
        ));
    }
    Ok(env)
}

/// The HMAC secret the dispatcher signs deliveries with and the functions verify.
fn delivery_secret(data_dir: &Path) -> anyhow::Result<String> {
    stored_secret(&data_dir.join("secrets").join("delivery-signing"))
}

/// A random secret kept in `path` (created with mode 0600 on first use).
fn stored_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0_u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    std::fs::write(path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

fn redis_answers(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(300)))
        .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
        .is_ok()
}

/// gRPC health for the gRPC services; the edge runtime (plain HTTP) answers `/readyz` on its
/// admin port.
async fn ready(service: Service, server: &storemesh_runtime::ServerConfig) -> bool {
    match service {
        Service::Edge => http_ready(server.admin_listen).await,
        _ => serving(server.listen).await,
    }
}

async fn http_ready(mut admin: SocketAddr) -> bool {
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
    else {
        return false;
    };
    client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}

async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|response| response.into_inner().status() == ServingStatus::Serving)
}

pub async fn run(args: UpArgs, config: Option<&Path>) -> anyhow::Result<()> {
    // Listen for Ctrl-C/SIGTERM from the very start, so an interrupt while the system is still
    // starting stops the children too instead of orphaning them.
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        storemesh_runtime::shutdown::signal().await;
        let _ = stop_sender.send(true);
    });
    let loader = ConfigLoader::load(config)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;

    // The developer's own edge (e.g. `spin up`) replaces the embedded runtime.
    let own_edge = args
        .edge_url
        .as_deref()
        .map(edge::OwnEdge::parse)
        .transpose()?;
    let mut servers = Vec::new();
    for service in Service::ALL {
        if own_edge.is_some() && *service == Service::Edge {
            continue;
        }
        let server = service.server_config(&loader)?;
        let protocol = if *service == Service::Edge {
            "HTTP"
        } else {
            "gRPC"
        };
        ensure_free(server.listen, &format!("{} {protocol}", service.name()))?;
        ensure_free(server.admin_listen, &format!("{} admin", service.name()))?;
        servers.push((*service, server));
    }

    let mut children = Children(Vec::new());
    let redis_url = match std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        Some(url) => url,
        None => {
            let addr = SocketAddr::from(([127, 0, 0, 1], args.redis_port));
            ensure_free(addr, "redis-server")?;
            let redis_dir = data_dir.join("redis");
            std::fs::create_dir_all(&redis_dir)?;
            children
                .0
                .push(spawn(ChildSpec::new(REDIS, "redis-server").args(
                    redis_server_args(args.redis_port, &redis_dir, &args.redis_maxmemory),
                ))?);
            let url = format!("redis://127.0.0.1:{}", args.redis_port);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !redis_answers(&url) {
                if let Some((name, status)) = children.exited() {
                    bail!("{name} exited at start ({status}); is redis-server installed?");
                }
                if Instant::now() > deadline {
                    bail!("redis-server did not answer within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            url
        }
    };

    let password = admin_password(&data_dir)?;
    // Where each service really listens, so the others find it even on non-default ports.
    let address_of = |wanted: Service| {
        servers
            .iter()
            .find(|(service, _)| *service == wanted)
            .map(|(_, server)| server.listen)
    };
    let mut cross_env: Vec<(String, String)> = Vec::new();
    if let Some(auth) = address_of(Service::Auth) {
        cross_env.push((
            "STOREMESH_TOKENS__AUTH_ENDPOINT".into(),
            format!("http://{auth}"),
        ));
    }
    if let Some(catalog) = address_of(Service::Catalog) {
        cross_env.push((
            "STOREMESH_STORAGE__CATALOG_ENDPOINT".into(),
            format!("http://{catalog}"),
        ));
    }
    if let Some(storage) = address_of(Service::Storage) {
        cross_env.push((
            "STOREMESH_CATALOG__STORAGE_ENDPOINT".into(),
            format!("http://{storage}"),
        ));
    }
    cross_env.extend(service_account_env(&loader, &data_dir)?);
    let variables = function_variables(&loader, &data_dir, address_of(Service::Gateway))?;
    let edge_origin = match (&own_edge, address_of(Service::Edge)) {
        (Some(own), _) => {
            own.write_spin_env(&data_dir, &variables)?;
            Some(own.origin().to_owned())
        }
        (None, Some(embedded)) => {
            cross_env.extend(edge_env(&loader, &data_dir, &variables, !args.no_build)?);
            Some(format!("http://{}", loopback_if_unspecified(embedded)))
        }
        (None, None) => None,
    };
    cross_env.extend(dispatcher_env(
        &loader,
        &data_dir,
        address_of(Service::Catalog),
        address_of(Service::Storage),
        edge_origin.as_deref(),
    )?);
    cross_env.extend(catalog_env(&loader, &data_dir, edge_origin.as_deref())?);
    // Pages served by the edge call the gateway from the edge's origin (gRPC-Web from the
    // browser).
    if let Some(origin) = &edge_origin
        && !loader.is_set("gateway.cors.allowed_origins")
    {
        let mut origins = vec![origin.clone()];
        if let Some(port) = origin.strip_prefix("http://127.0.0.1:") {
            origins.push(format!("http://localhost:{port}"));
        }
        let quoted: Vec<String> = origins.iter().map(|o| format!("\"{o}\"")).collect();
        cross_env.push((
            "STOREMESH_GATEWAY__CORS__ALLOWED_ORIGINS".into(),
            format!("[{}]", quoted.join(", ")),
        ));
    }
    // The edge runtime and the gateway connect from 127.0.0.1, and forward the end client's
    // address; the gateway and the services believe it from them only. A local client bound
    // to another loopback address (127.0.0.2, …) is counted as itself.
    for section in ["gateway", "auth", "catalog", "storage"] {
        if !loader.is_set(&format!("{section}.server.trusted_proxies")) {
            cross_env.push((
                format!(
                    "STOREMESH_{}__SERVER__TRUSTED_PROXIES",
                    section.to_uppercase()
                ),
                "[\"127.0.0.1/32\"]".into(),
            ));
        }
    }
    let gateway_config: storemesh_gateway::GatewayConfig = loader.section("gateway")?;
    for (service, upstream) in [
        (Service::Auth, "auth"),
        (Service::Catalog, "catalog"),
        (Service::Storage, "storage"),
    ] {
        if let Some(addr) = address_of(service)
            && !gateway_config.upstreams.contains_key(upstream)
        {
            cross_env.push((
                format!(
                    "STOREMESH_GATEWAY__UPSTREAMS__{}__ADDRESSES",
                    upstream.to_uppercase()
                ),
                format!("[\"{addr}\"]"),
            ));
        }
    }
    let executable = std::env::current_exe().context("cannot find the storemesh executable")?;
    for (service, _) in &servers {
        let mut spec = ChildSpec::new(service.name(), &executable)
            .args(["serve", service.name()])
            .env("STOREMESH_REDIS__URL", &redis_url)
            .env("STOREMESH_AUTH__KEYS_DIR", data_dir.join("auth/keys"))
            .env("STOREMESH_AUTH__ADMIN_EMAIL", ADMIN_EMAIL)
            .env("STOREMESH_AUTH__ADMIN_PASSWORD", &password)
            .env(
                "STOREMESH_STORAGE__DATA_DIR",
                data_dir.join("storage/objects"),
            );
        for (key, value) in &cross_env {
            spec = spec.env(key, value);
        }
        if let Some(config) = config {
            spec = spec.env("STOREMESH_CONFIG", config);
        }
        children.0.push(spawn(spec)?);
    }

    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
    for (service, server) in &servers {
        while !ready(*service, server).await {
            if let Some((name, status)) = children.exited() {
                bail!("{name} exited at start ({status}); see its log lines above");
            }
            if *stop.borrow() {
                bail!("interrupted while starting; stopped everything");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {} s",
                    service.name(),
                    args.ready_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!();
    println!("Storemesh is up.");
    println!(
        "  {:<10} {:<24} {:<24}",
        "service", "listen", "admin (/metrics)"
    );
    for (service, server) in &servers {
        println!(
            "  {:<10} {:<24} {:<24}",
            service.name(),
            server.listen.to_string(),
            server.admin_listen.to_string()
        );
    }
    // REDIS_URL may carry a password: never printed.
    println!(
        "  {:<10} {}",
        REDIS,
        storemesh_runtime::secret::redact_url(&redis_url)
    );
    if let Some((_, edge)) = servers
        .iter()
        .find(|(service, _)| *service == Service::Edge)
    {
        let edge = loopback_if_unspecified(edge.listen);
        println!("  console: http://{edge}/console   (sellers: sign up, add products and photos)");
        println!("  shop:    http://{edge}/           (what shoppers see)");
        println!(
            "  uploads: POST http://{edge}/v1/products/<product id>/images (or `storemesh upload`)"
        );
        println!(
            "  images:  GET http://{edge}/img/<image id>/w320.jpg (or `storemesh images url`)"
        );
    }
    println!("  admin login: {ADMIN_EMAIL} / {password}");
    println!("  data: {}", data_dir.display());
    if let Some(own) = &own_edge {
        let manifest = storemesh_edge::EdgeSettings::load(&loader)?.edge.manifest;
        own.print_instructions(&manifest, &data_dir);
        own.announce_when_up(stop.clone());
    }
    println!("Ctrl-C stops everything.");
    println!();

    let mut stop = stop;
    let outcome = loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Err(error) = children.restart_exited().await {
                    break Err(error);
                }
            }
        }
    };
    println!("stopping...");
    tokio::task::spawn_blocking(move || children.stop_all()).await?;
    outcome
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn redis_memory_sizes_are_checked() {
        assert_eq!(parse_redis_memory("512mb").unwrap(), "512mb");
        assert_eq!(parse_redis_memory("2GB").unwrap(), "2gb");
        assert_eq!(parse_redis_memory("1048576").unwrap(), "1048576");
        for bad in [
            "",
            "mb",
            "512 mb",
            "12tb",
            "1kb",
            "-1mb",
            "99999999999999999999gb",
        ] {
            assert!(parse_redis_memory(bad).is_err(), "{bad:?}");
        }
    }

    /// The real redis-server takes the arguments `up` gives it and runs with the memory limit
    /// and `noeviction`.
    #[test]
    fn the_local_redis_runs_with_maxmemory_and_noeviction() {
        let dir = tempfile::tempdir().unwrap();
        let port = storemesh_testkit::free_port().unwrap();
        let mut child = Command::new("redis-server")
            .args(redis_server_args(port, dir.path(), "64mb"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_answers(&url) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
        let config: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory*")
            .query(&mut connection)
            .unwrap();
        let value = |name: &str| {
            config
                .chunks(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1].clone())
        };
        assert_eq!(
            value("maxmemory").as_deref(),
            Some("67108864"),
            "{config:?}"
        );
        assert_eq!(
            value("maxmemory-policy").as_deref(),
            Some("noeviction"),
            "{config:?}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
