//! The whole Storemesh system in one test process, for end-to-end tests.
//!
//! [`System::start`] starts, on free loopback ports:
//! - a real `redis-server` ([`RedisServer`]);
//! - the auth, catalog and storage services and the gateway, in-process, built exactly as
//!   `storemesh serve` builds them (cheap Argon2 settings, storage on a temporary directory);
//! - the embedded edge runtime loading the repository's real `spin.toml`, with its variables
//!   pointing at that gateway (its components are found like the edge runtime's fixtures:
//!   `$CARGO_TARGET_DIR/wasm32-wasip2/release`, `edge-functions/target/...`; build them with
//!   [`EDGE_BUILD_COMMAND`]).
//!
//! Every service talks to the others through the gateway, as in production. Accounts are
//! provisioned like `storemesh up` does: an admin ([`ADMIN_EMAIL`]), the `thumbnail` and
//! `images` service accounts of the edge functions ([`THUMBNAIL_CLIENT`], [`IMAGES_CLIENT`]),
//! the catalog's clean-up account, and a `dispatcher` account for tests that play the event
//! dispatcher. The catalog's image URLs point at the edge ([`System::edge_base_url`]) and it signs
//! them with the first of [`IMAGE_URL_SIGNING_KEYS`], which the edge accepts both of. Helpers
//! make users and products, read storage events from Redis, sign event deliveries
//! ([`System::signed_delivery`]), send raw HTTP requests to the edge ([`http`],
//! [`System::edge_get`]) and read the services' metrics ([`System::storage_metric`]).
//!
//! ```no_run
//! # async fn example() {
//! let system = storemesh_system_tests::System::start().await;
//! let (_seller_id, token) = system.user("seller@example.com", storemesh_system_tests::Role::Seller).await;
//! let product = system.product(&token, "Lamp").await;
//! let answer = system.edge_post(&format!("/v1/products/{product}/images"), &token, "image/png", vec![]).await;
//! # }
//! ```
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use storemesh_auth::config::RateLimitConfig;
use storemesh_auth::testing;
use storemesh_catalog::{CatalogConfig, CatalogSettings};
use storemesh_edge::EdgeConfig;
use storemesh_gateway::config::GatewayRateLimit;
use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::auth::v1 as auth_pb;
pub use storemesh_proto::auth::v1::Role;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::{test_server, test_server_on};
use storemesh_storage::{StorageConfig, StorageSettings};
use storemesh_testkit::{RedisServer, RunningHost, free_port};
use tokio::sync::oneshot;
use tonic::Request;
use tonic::transport::Channel;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// The thumbnail function's service account (the `thumbnail_client_id` variable's default).
pub const THUMBNAIL_CLIENT: &str = "thumbnail";
/// The images function's service account (the `images_client_id` variable's default).
pub const IMAGES_CLIENT: &str = "images";
/// The catalog's clean-up account.
pub const CATALOG_CLIENT: &str = "catalog";
/// An account with the event dispatcher's scopes, for tests that play the dispatcher.
pub const DISPATCHER_CLIENT: &str = "dispatcher";
/// The secret of every test service account.
pub const SERVICE_SECRET: &str = "service-secret-0123456789";
/// The delivery signing secret the edge functions are configured with.
pub const DELIVERY_SECRET: &str = "delivery-secret-0123456789abcdef";
/// The `image_url_signing_keys` the edge accepts, as during a rotation: the catalog signs with
/// the first (the new key); URLs signed with the second (the old key) still work.
pub const IMAGE_URL_SIGNING_KEYS: [&str; 2] = [
    "image-url-key-new-0123456789abcdef",
    "image-url-key-old-0123456789abcdef",
];
/// The password of users made by [`System::user`].
pub const USER_PASSWORD: &str = "a good long password";
/// The storage events stream.
pub const EVENTS_STREAM: &str = "storage:events";
/// The command that builds the edge functions (and the runtime's fixtures) for the tests.
pub const EDGE_BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2 --manifest-path edge-functions/Cargo.toml -p upload-hook -p thumbnail -p images -p web";

/// The repository root (where `spin.toml` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// How gRPC travels from the edge functions to the gateway (the `grpc_transport` variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeTransport {
    /// gRPC-Web over HTTP/1.1 (the default).
    GrpcWeb,
    /// Native gRPC over h2c (the runtime speaks HTTP/2 with prior knowledge to the gateway).
    Grpc,
}

/// What to start and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start the edge runtime with the real `spin.toml` (needs the components built).
    pub edge: bool,
    pub transport: EdgeTransport,
    /// Extra or overriding Spin variable values (e.g. `upload_max_bytes`).
    pub variables: BTreeMap<String, String>,
    /// The gateway's rate limits (default: lifted, since every test caller shares one address).
    pub gateway_rate_limit: GatewayRateLimit,
    /// The catalog's thumbnail sizes (must match the `thumbnail_sizes` variable).
    pub variant_sizes: Vec<u32>,
    /// Linear memory per edge instance.
    pub edge_max_memory_bytes: u64,
    /// Runs the edge on an edited copy of `spin.toml` (e.g. other routes) instead of the
    /// manifest itself.
    pub manifest_edit: Option<fn(&str) -> String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            edge: true,
            transport: EdgeTransport::GrpcWeb,
            variables: BTreeMap::new(),
            gateway_rate_limit: GatewayRateLimit {
                per_identity_per_sec: 1_000_000,
                per_identity_burst: 1_000_000,
                per_address_per_sec: 1_000_000,
                per_address_burst: 1_000_000,
                ..GatewayRateLimit::default()
            },
            variant_sizes: vec![160, 320, 640],
            edge_max_memory_bytes: 256 * 1024 * 1024,
            manifest_edit: None,
        }
    }
}

/// A server task stopped by a oneshot.
struct Task {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Task {
    fn abort(&mut self) -> Option<()> {
        self.stop.take();
        self.task.take().map(|task| task.abort())
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The running system. Dropping it stops everything.
pub struct System {
    pub redis: RedisServer,
    auth: Option<RunningHost>,
    catalog: Option<RunningHost>,
    storage: Option<RunningHost>,
    /// The gateway's gRPC address.
    pub gateway: SocketAddr,
    /// The edge runtime's HTTP address, when started.
    pub edge: Option<SocketAddr>,
    /// The edge runtime's admin address (`/metrics`, `/readyz`), when started.
    pub edge_admin: Option<SocketAddr>,
    /// The edge's HTTP port, chosen before the catalog starts (its image URLs point there).
    edge_port: u16,
    /// An admin's access token.
    pub admin_token: String,
    pub options: Options,
    gateway_task: Task,
    edge_task: Option<Task>,
    /// Storage objects live here.
    pub data_dir: tempfile::TempDir,
    _keys_dir: tempfile::TempDir,
    _edge_dir: Option<tempfile::TempDir>,
}

/// Test logs (`RUST_LOG`-style filter in `STOREMESH_TEST_LOG`, default `warn`), once per
/// process.
pub fn init_logs() {
    let filter = std::env::var("STOREMESH_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl System {
    /// Everything, with default [`Options`].
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        init_logs();
        let redis = RedisServer::start().unwrap();
        let redis_config = RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        };
        let keys_dir = tempfile::tempdir().unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        // The gateway's port is chosen first: the services reach each other through it.
        let gateway_port = free_port().unwrap();
        let gateway_url = format!("http://127.0.0.1:{gateway_port}");
        // The edge's too: the catalog makes image URLs with it.
        let edge_port = free_port().unwrap();
        let tokens = TokensConfig {
            auth_endpoint: gateway_url.clone(),
            ..TokensConfig::default()
        };

        let account = |client_id: &str, scopes: &[&str]| {
            testing::service_account(client_id, SERVICE_SECRET, scopes)
        };
        // Auth verifies its own tokens with its own keys: default `tokens`.
        let mut auth_settings = testing::auth_settings(&redis.url(), keys_dir.path());
        auth_settings.auth.admin_email = ADMIN_EMAIL.into();
        auth_settings.auth.admin_password = ADMIN_PASSWORD.into();
        auth_settings.auth.service_accounts = vec![
            account(
                THUMBNAIL_CLIENT,
                &[
                    "storage.read",
                    "storage.write:thumbnails",
                    "catalog.read",
                    "catalog.write:variants",
                ],
            ),
            account(IMAGES_CLIENT, &["catalog.read", "storage.read"]),
            account(CATALOG_CLIENT, &["storage.delete:products"]),
            account(
                DISPATCHER_CLIENT,
                &["events.deliver", "catalog.write:variants", "catalog.read"],
            ),
        ];
        // Every test user registers from 127.0.0.1.
        auth_settings.auth.rate_limit = RateLimitConfig {
            login_per_address: 10_000,
            register_per_address: 10_000,
            ..RateLimitConfig::default()
        };
        let auth = RunningHost::spawn(storemesh_auth::build(auth_settings).await.unwrap()).unwrap();

        let catalog = RunningHost::spawn(
            storemesh_catalog::build(CatalogSettings {
                catalog: CatalogConfig {
                    server: ServerConfig {
                        max_message_bytes: storemesh_catalog::config::DEFAULT_MAX_MESSAGE_BYTES,
                        ..test_server()
                    },
                    variant_sizes: options.variant_sizes.clone(),
                    storage_endpoint: gateway_url.clone(),
                    service_client_id: CATALOG_CLIENT.into(),
                    service_client_secret: SERVICE_SECRET.into(),
                    public_image_base_url: format!("http://127.0.0.1:{edge_port}"),
                    image_url_signing_keys: vec![IMAGE_URL_SIGNING_KEYS[0].into()],
                    ..CatalogConfig::default()
                },
                redis: redis_config.clone(),
                tokens: tokens.clone(),
            })
            .await
            .unwrap(),
        )
        .unwrap();

        let storage = RunningHost::spawn(
            storemesh_storage::build(StorageSettings {
                storage: StorageConfig {
                    server: test_server(),
                    data_dir: data_dir.path().to_path_buf(),
                    fsync: false,
                    catalog_endpoint: gateway_url.clone(),
                    gc_grace_ms: 0,
                    janitor_interval_ms: 200,
                    ..StorageConfig::default()
                },
                redis: redis_config.clone(),
                tokens: tokens.clone(),
            })
            .await
            .unwrap(),
        )
        .unwrap();

        let mut gateway_config = GatewayConfig {
            server: test_server_on(gateway_port),
            ..GatewayConfig::default()
        };
        for (name, host) in [
            ("auth", &auth),
            ("catalog", &catalog),
            ("storage", &storage),
        ] {
            gateway_config.upstreams.insert(
                name.into(),
                UpstreamConfig::addresses([host.addr.to_string()]),
            );
        }
        gateway_config.rate_limit = options.gateway_rate_limit;
        let bound = storemesh_gateway::build(
            GatewaySettings {
                gateway: gateway_config,
                tokens: TokensConfig {
                    auth_endpoint: auth.endpoint(),
                    ..TokensConfig::default()
                },
            },
            &[],
        )
        .await
        .unwrap();
        let gateway = bound.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        let gateway_task = Task {
            stop: Some(stop),
            task: Some(task),
        };

        let mut system = Self {
            redis,
            auth: Some(auth),
            catalog: Some(catalog),
            storage: Some(storage),
            gateway,
            edge: None,
            edge_admin: None,
            edge_port,
            admin_token: String::new(),
            options,
            gateway_task,
            edge_task: None,
            data_dir,
            _keys_dir: keys_dir,
            _edge_dir: None,
        };
        system.admin_token = system.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        if system.options.edge {
            system.start_edge().await;
        }
        system
    }

    /// The Spin variable values the edge runtime gets: the gateway, the test secrets, and
    /// [`Options::variables`] on top.
    pub fn edge_variables(&self) -> BTreeMap<String, String> {
        let mut variables = BTreeMap::new();
        variables.insert("gateway_url".into(), self.gateway_url());
        variables.insert(
            "grpc_transport".into(),
            match self.options.transport {
                EdgeTransport::GrpcWeb => "grpc-web",
                EdgeTransport::Grpc => "grpc",
            }
            .into(),
        );
        variables.insert("thumbnail_client_id".into(), THUMBNAIL_CLIENT.into());
        variables.insert("thumbnail_client_secret".into(), SERVICE_SECRET.into());
        variables.insert("delivery_signing_secret".into(), DELIVERY_SECRET.into());
        variables.insert("images_client_id".into(), IMAGES_CLIENT.into());
        variables.insert("images_client_secret".into(), SERVICE_SECRET.into());
        variables.insert(
            "image_url_signing_keys".into(),
            IMAGE_URL_SIGNING_KEYS.join(","),
        );
        variables.insert(
            "thumbnail_sizes".into(),
            self.options
                .variant_sizes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        variables.extend(self.options.variables.clone());
        variables
    }

    /// Starts the edge runtime on the real `spin.toml` (see [`linked_manifest`]).
    async fn start_edge(&mut self) {
        let (dir, manifest) = linked_manifest(self.options.manifest_edit);
        let mut config = EdgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], self.edge_port)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            manifest,
            variables: self.edge_variables(),
            max_instances: 64,
            max_memory_bytes: self.options.edge_max_memory_bytes,
            execution_timeout_ms: 30_000,
            // Shared by every system of this machine so each component is compiled once.
            cache_dir: std::env::temp_dir().join("storemesh-system-tests-edge-cache"),
            shutdown_grace_ms: 5_000,
            ..EdgeConfig::default()
        };
        if self.options.transport == EdgeTransport::Grpc {
            config.h2c_prior_knowledge = vec![self.gateway.to_string()];
        }
        let server = match storemesh_edge::build(&config).await {
            Ok(server) => server,
            Err(error) => panic!("the edge runtime did not start: {error}"),
        };
        self.edge = Some(server.local_addr().unwrap());
        self.edge_admin = Some(server.admin_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(error) = server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
            {
                tracing::error!(%error, "edge runtime failed");
            }
        });
        self.edge_task = Some(Task {
            stop: Some(stop),
            task: Some(task),
        });
        self._edge_dir = Some(dir);
    }

    /// Stops the edge runtime and the gateway (waiting for their drain); the services stop
    /// when the system is dropped.
    pub async fn stop(mut self) {
        if let Some(mut edge) = self.edge_task.take() {
            edge.stop().await;
        }
        self.gateway_task.stop().await;
    }

    /// The auth service (panics after [`System::kill`]).
    pub fn auth(&self) -> &RunningHost {
        self.auth.as_ref().expect("auth was killed")
    }

    pub fn catalog(&self) -> &RunningHost {
        self.catalog.as_ref().expect("catalog was killed")
    }

    pub fn storage(&self) -> &RunningHost {
        self.storage.as_ref().expect("storage was killed")
    }

    /// Kills `auth`, `catalog`, `storage`, `gateway` or `edge` abruptly, like a crashed process
    /// (open connections are reset, nothing drains).
    pub fn kill(&mut self, service: &str) {
        match service {
            "auth" => self.auth.take().map(RunningHost::abort),
            "catalog" => self.catalog.take().map(RunningHost::abort),
            "storage" => self.storage.take().map(RunningHost::abort),
            "gateway" => self.gateway_task.abort(),
            "edge" => self.edge_task.as_mut().and_then(Task::abort),
            other => panic!("no service {other:?}"),
        };
    }

    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// `http://<edge>/<path>`.
    pub fn edge_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.edge.expect("the edge runtime is not running")
        )
    }

    /// The base of the image URLs the catalog makes: the edge's HTTP address (also before the
    /// edge runs).
    pub fn edge_base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.edge_port)
    }

    /// Sends `method path` to the edge with exactly `headers` (no credentials unless given), no
    /// body.
    pub async fn edge_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> http::Answer {
        http::request(
            self.edge.expect("the edge runtime is not running"),
            method,
            path,
            headers,
            None,
        )
        .await
    }

    /// `GET path` from the edge with `headers`: anonymous unless they carry `authorization`.
    pub async fn edge_get(&self, path: &str, headers: &[(&str, String)]) -> http::Answer {
        self.edge_request("GET", path, headers).await
    }

    /// `GET path` from the edge with `Authorization: Bearer <token>` and more `headers`.
    pub async fn edge_get_as(
        &self,
        path: &str,
        token: &str,
        headers: &[(&str, String)],
    ) -> http::Answer {
        let mut all = vec![("authorization", format!("Bearer {token}"))];
        all.extend(headers.iter().cloned());
        self.edge_get(path, &all).await
    }

    /// The sum of a metric's samples whose labels include all of `labels`, from storage's
    /// admin `/metrics`. The services of a test process share one recorder, so this counts
    /// what every in-process service (and the gateway) recorded under that name.
    pub async fn storage_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let answer = http::request(self.storage().admin, "GET", "/metrics", &[], None).await;
        assert_eq!(answer.status, 200, "storage /metrics: {}", answer.text());
        metric_sum(&answer.text(), name, labels)
    }

    /// A channel to the gateway.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.gateway_url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    pub async fn catalog_client(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.channel().await)
    }

    pub async fn storage_client(&self) -> StorageServiceClient<Channel> {
        StorageServiceClient::new(self.channel().await)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        self.auth_client()
            .await
            .login(auth_pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap()
            .access_token
    }

    /// Registers a user (password [`USER_PASSWORD`]) and returns `(user id, access token)`.
    pub async fn user(&self, email: &str, role: Role) -> (String, String) {
        let user = self
            .auth_client()
            .await
            .register(auth_pb::RegisterRequest {
                email: email.into(),
                password: USER_PASSWORD.into(),
                display_name: "Test User".into(),
                role: role.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        (user.id, self.login(email, USER_PASSWORD).await)
    }

    /// A service account's access token.
    pub async fn service_token(&self, client_id: &str) -> String {
        self.auth_client()
            .await
            .issue_service_token(auth_pb::IssueServiceTokenRequest {
                client_id: client_id.into(),
                client_secret: SERVICE_SECRET.into(),
                requested_scopes: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    /// Creates a product owned by the token's seller and returns its id.
    pub async fn product(&self, token: &str, title: &str) -> String {
        self.catalog_client()
            .await
            .create_product(bearer(
                catalog_pb::CreateProductRequest {
                    title: title.into(),
                    price: Some(catalog_pb::Money {
                        amount_minor: 1_999,
                        currency_code: "EUR".into(),
                    }),
                    ..catalog_pb::CreateProductRequest::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .id
    }

    /// The catalog's record of an image (as the admin sees it).
    pub async fn image(&self, image_id: &str) -> Result<catalog_pb::Image, tonic::Status> {
        Ok(self
            .catalog_client()
            .await
            .get_image(bearer(
                catalog_pb::GetImageRequest {
                    image_id: image_id.into(),
                },
                &self.admin_token,
            ))
            .await?
            .into_inner()
            .image
            .unwrap_or_default())
    }

    pub fn redis_connection(&self) -> redis::Connection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Every storage event so far, oldest first.
    pub fn events(&self) -> Vec<events_pb::Event> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(EVENTS_STREAM)
            .arg("-")
            .arg("+")
            .query(&mut self.redis_connection())
            .unwrap();
        reply
            .ids
            .iter()
            .filter_map(|entry| match entry.map.get("event") {
                Some(redis::Value::BulkString(bytes)) => {
                    events_pb::Event::decode(bytes.as_slice()).ok()
                }
                _ => None,
            })
            .collect()
    }

    /// The newest event about `key`.
    pub fn event_for(&self, key: &str) -> Option<events_pb::Event> {
        self.events()
            .into_iter()
            .rev()
            .find(|event| event.subject == key)
    }

    /// A delivery of `event` as the dispatcher sends it: the protobuf body and the signed
    /// headers (`storemesh_delivery`), signed now with [`DELIVERY_SECRET`].
    pub fn signed_delivery(
        &self,
        event: &events_pb::Event,
        attempt: u32,
    ) -> (Vec<u8>, Vec<(String, String)>) {
        signed_delivery(event, attempt, unix_now(), DELIVERY_SECRET.as_bytes())
    }

    /// POSTs `body` to the edge with a bearer token and a content type (`Content-Length` set).
    pub async fn edge_post(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> http::Answer {
        self.edge_post_with(path, token, content_type, body, &[])
            .await
    }

    /// [`Self::edge_post`] with more request headers.
    pub async fn edge_post_with(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
        extra_headers: &[(&str, String)],
    ) -> http::Answer {
        let mut headers = vec![
            ("authorization", format!("Bearer {token}")),
            ("content-type", content_type.to_owned()),
        ];
        headers.extend(extra_headers.iter().cloned());
        http::request(
            self.edge.expect("the edge runtime is not running"),
            "POST",
            path,
            &headers,
            Some(body),
        )
        .await
    }
}

/// A delivery body and its headers, signed at `timestamp` with `secret`.
pub fn signed_delivery(
    event: &events_pb::Event,
    attempt: u32,
    timestamp: u64,
    secret: &[u8],
) -> (Vec<u8>, Vec<(String, String)>) {
    let body = events_pb::Delivery {
        event: Some(event.clone()),
        attempt,
        first_attempt_time: Some(prost_types::Timestamp {
            seconds: i64::try_from(timestamp).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
    .encode_to_vec();
    let signature = storemesh_delivery::sign(secret, timestamp, &body).unwrap();
    let headers = vec![
        (
            "content-type".to_owned(),
            storemesh_delivery::CONTENT_TYPE.to_owned(),
        ),
        (
            storemesh_delivery::EVENT_ID_HEADER.to_owned(),
            event.id.clone(),
        ),
        (
            storemesh_delivery::IDEMPOTENCY_KEY_HEADER.to_owned(),
            event.id.clone(),
        ),
        (
            storemesh_delivery::ATTEMPT_HEADER.to_owned(),
            attempt.to_string(),
        ),
        (
            storemesh_delivery::TIMESTAMP_HEADER.to_owned(),
            timestamp.to_string(),
        ),
        (storemesh_delivery::SIGNATURE_HEADER.to_owned(), signature),
    ];
    (body, headers)
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels include all
/// of `labels` (`key="value"`).
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let pairs: Vec<&str> = label_text.split(',').map(str::trim).collect();
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(key, value)| pairs.contains(&format!("{key}=\"{value}\"").as_str()));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A request with `authorization: Bearer <token>` metadata.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The `source = "..."` paths of a manifest's components.
/// The repository's `spin.toml` in a temporary directory, as the edge runtime (or a `storemesh
/// serve edge` process) can load it: the manifest is used unchanged (a link to it, or a copy
/// passed through `edit`), next to links from the `source` paths it names to the components'
/// builds (wherever `CARGO_TARGET_DIR` put them). Returns the directory and the manifest's path.
pub fn linked_manifest(edit: Option<fn(&str) -> String>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = repo_root().join("spin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let linked = dir.path().join("spin.toml");
    match edit {
        Some(edit) => std::fs::write(&linked, edit(&text)).unwrap(),
        None => std::os::unix::fs::symlink(&manifest, &linked).unwrap(),
    }
    for source in manifest_sources(&text) {
        let file = Path::new(&source)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let crate_name = file.trim_end_matches(".wasm").replace('_', "-");
        let built = match storemesh_edge::testing::fixture(&crate_name) {
            Ok(path) => path,
            Err(message) => panic!("{message}\n(the edge functions: {EDGE_BUILD_COMMAND})"),
        };
        let link = dir.path().join(&source);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(built, link).unwrap();
    }
    // The directories `files` mounts (the web front end's `web/dist`): linked when built, else
    // empty, so the runtime (which requires them) starts either way.
    for source in manifest_files_sources(&text) {
        let link = dir.path().join(&source);
        let real = repo_root().join(&source);
        if link.exists() {
            continue;
        }
        if real.is_dir() {
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(real, link).unwrap();
        } else {
            std::fs::create_dir_all(link).unwrap();
        }
    }
    (dir, linked)
}

/// The relative `source`s of a manifest's `files = [{ source = "...", ... }]` lines.
fn manifest_files_sources(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.trim_start().starts_with("files"))
        .flat_map(|line| line.split("source").skip(1))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .filter(|source| !source.is_empty() && !source.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

fn manifest_sources(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("source"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .collect()
}
