//! Real parts for the dispatcher tests: a redis-server, an HTTP target (an axum server that
//! verifies every delivery's signature with `storemesh_delivery::verify` and can be told how to
//! answer), and, where needed, the real auth, catalog and storage services.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use bytes::Bytes;
use prost::Message;
use redis::AsyncCommands;
use storemesh_auth::config::RateLimitConfig;
use storemesh_auth::testing;
use storemesh_dispatcher::config::{
    DispatcherConfig, ReconcilerConfig, RouteConfig, ScheduleConfig, TargetConfig, TargetKind,
};
use storemesh_dispatcher::{Dispatcher, DispatcherSettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::events::v1 as pb;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
pub use storemesh_runtime::testing::test_server;
use storemesh_testkit::{RedisServer, RunningHost};
use tokio::task::JoinHandle;

pub const SECRET: &str = "delivery-secret-0123456789";
pub const STREAM: &str = "storage:events";
pub const DLQ: &str = "dispatcher:dlq";
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const CLIENT_SECRET: &str = "service-secret-0123456789";

/// How the HTTP target answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16, &'static str),
    /// A status with a `Retry-After` of this many seconds.
    RetryAfter(u16, u64),
    /// Waits, then answers 200.
    Slow(Duration),
}

/// One delivery the HTTP target received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub delivery: pb::Delivery,
    pub signature_ok: bool,
}

impl Received {
    pub fn event(&self) -> &pb::Event {
        self.delivery.event.as_ref().unwrap()
    }
}

#[derive(Default)]
pub struct TargetState {
    pub received: Mutex<Vec<Received>>,
    /// Answers for the next requests, in order; then 200.
    pub script: Mutex<VecDeque<Answer>>,
    /// Answer when the script is empty (default 200).
    pub default: Mutex<Option<Answer>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// A real HTTP server standing in for an edge function route.
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub state: Arc<TargetState>,
    task: JoinHandle<()>,
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<TargetState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let now = storemesh_runtime::time::since_epoch().as_secs();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature_ok = storemesh_delivery::verify(
        &[SECRET.as_bytes()],
        header(storemesh_delivery::TIMESTAMP_HEADER),
        header(storemesh_delivery::SIGNATURE_HEADER),
        &body,
        now,
        storemesh_delivery::DEFAULT_REPLAY_WINDOW_SECS,
    )
    .is_ok();
    let Ok(delivery) = pb::Delivery::decode(body.as_ref()) else {
        return (StatusCode::BAD_REQUEST, "not a Delivery").into_response();
    };
    let current = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(current, Ordering::SeqCst);
    state.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers: headers.clone(),
        delivery,
        signature_ok,
    });
    let answer = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or(Answer::Status(200, ""));
    let reply = if !signature_ok {
        (StatusCode::UNAUTHORIZED, "bad signature").into_response()
    } else {
        match answer {
            Answer::Status(code, body) => {
                (StatusCode::from_u16(code).unwrap(), body.to_owned()).into_response()
            }
            Answer::RetryAfter(code, secs) => (
                StatusCode::from_u16(code).unwrap(),
                [("retry-after", secs.to_string())],
                "later",
            )
                .into_response(),
            Answer::Slow(pause) => {
                tokio::time::sleep(pause).await;
                StatusCode::OK.into_response()
            }
        }
    };
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    reply
}

impl HttpTarget {
    pub async fn start() -> Self {
        let state = Arc::new(TargetState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    pub fn answer_by_default(&self, answer: Answer) {
        *self.state.default.lock().unwrap() = Some(answer);
    }

    /// Deliveries of the event with this id.
    pub fn deliveries_of(&self, event_id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.event().id == event_id)
            .collect()
    }
}

/// A dispatcher configuration with fast timings and one HTTP target `fn` at `url`, routed for
/// every created object under `products/`.
pub fn config(url: &str) -> DispatcherConfig {
    DispatcherConfig {
        server: test_server(),
        block_ms: 200,
        claim_idle_ms: 3_000,
        claim_interval_ms: 200,
        retry_poll_ms: 50,
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        signing_secrets: vec![SECRET.into()],
        targets: BTreeMap::from([("fn".to_owned(), http_target(url))]),
        routes: vec![RouteConfig {
            name: "products".into(),
            key_prefix: "products/".into(),
            target: "fn".into(),
            ..RouteConfig::default()
        }],
        schedules: Vec::new(),
        ..DispatcherConfig::default()
    }
}

pub fn http_target(url: &str) -> TargetConfig {
    TargetConfig {
        kind: TargetKind::Http,
        url: url.into(),
        timeout_ms: 1_000,
        concurrency: 16,
        produces: Vec::new(),
        max_attempts: None,
    }
}

pub fn settings(redis: &RedisServer, dispatcher: DispatcherConfig) -> DispatcherSettings {
    DispatcherSettings {
        dispatcher,
        redis: RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        },
        tokens: TokensConfig::default(),
    }
}

/// A dispatcher running in a task. Dropping the task (`crash`) stops everything it runs at
/// once, like a SIGKILL: nothing drains, nothing is acknowledged.
pub struct Running {
    pub admin: SocketAddr,
    pub consumer: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn start(settings: DispatcherSettings) -> Self {
        let dispatcher = storemesh_dispatcher::build(settings).await.unwrap();
        Self::spawn(dispatcher)
    }

    pub fn spawn(dispatcher: Dispatcher) -> Self {
        let admin = dispatcher.host.admin_addr().unwrap();
        let consumer = dispatcher.engine.consumer().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dispatcher
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            admin,
            consumer,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn crash(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("the dispatcher drains within its grace period")
                .unwrap();
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A plain HTTP/1.1 GET (the admin port), returning the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

pub async fn redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// An `ObjectCreated` event for `key`, committed now.
pub fn created(key: &str, metadata: &[(&str, &str)], content_type: &str) -> pb::Event {
    pb::Event {
        id: ulid::Ulid::new().to_string(),
        r#type: pb::EventType::ObjectCreated.into(),
        source: "storemesh.storage".into(),
        subject: key.into(),
        time: Some(storemesh_runtime::time::now_timestamp()),
        trace_parent: String::new(),
        trace_state: String::new(),
        data: Some(pb::event::Data::ObjectCreated(pb::ObjectCreated {
            key: key.into(),
            size_bytes: 2_048,
            sha256: "ab".repeat(32),
            content_type: content_type.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            actor: "seller-1".into(),
            etag: "etag-1".into(),
        })),
    }
}

pub fn deleted(key: &str) -> pb::Event {
    pb::Event {
        id: ulid::Ulid::new().to_string(),
        r#type: pb::EventType::ObjectDeleted.into(),
        source: "storemesh.storage".into(),
        subject: key.into(),
        time: Some(storemesh_runtime::time::now_timestamp()),
        data: Some(pb::event::Data::ObjectDeleted(pb::ObjectDeleted {
            key: key.into(),
            actor: "seller-1".into(),
        })),
        ..Default::default()
    }
}

/// Appends an event exactly as the storage service does (fields `event`, `id`, `type`, `key`).
pub async fn publish(redis: &mut redis::aio::MultiplexedConnection, event: &pb::Event) -> String {
    redis
        .xadd(
            STREAM,
            "*",
            &[
                ("event", event.encode_to_vec()),
                ("id", event.id.clone().into_bytes()),
                ("type", event.r#type().as_str_name().as_bytes().to_vec()),
                ("key", event.subject.clone().into_bytes()),
            ],
        )
        .await
        .unwrap()
}

/// Entries read by the group but not acknowledged.
pub async fn pending(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let reply: redis::streams::StreamPendingReply =
        redis.xpending(STREAM, "dispatcher").await.unwrap();
    reply.count() as u64
}

pub async fn dlq(redis: &mut redis::aio::MultiplexedConnection) -> Vec<BTreeMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(DLQ).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .filter(|(name, _)| name != "event")
                .map(|(name, value)| (name, redis::from_redis_value::<String>(value).unwrap()))
                .collect()
        })
        .collect()
}

/// Polls `condition` every 20 ms until it holds; fails after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the mesh: auth, catalog, storage ---------------------------------------------------

/// Service accounts in the test auth service: client id → scopes.
pub const ACCOUNTS: &[(&str, &[&str])] = &[
    (
        "dispatcher",
        &["catalog.write:variants", "catalog.read", "storage.read"],
    ),
    (
        "thumbnail",
        &[
            "storage.write:thumbnails",
            "storage.read",
            "catalog.write:variants",
        ],
    ),
];

pub struct Mesh {
    pub redis: RedisServer,
    pub auth: RunningHost,
    pub catalog: RunningHost,
    pub storage: Option<RunningHost>,
    /// The admin's access token (logged in once: logins are rate limited per account).
    admin: String,
    _keys: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Mesh {
    pub async fn start(with_storage: bool) -> Self {
        let redis = RedisServer::start().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let redis_config = RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        };
        let mut auth_settings = testing::auth_settings(&redis.url(), keys.path());
        auth_settings.auth.admin_email = ADMIN_EMAIL.into();
        auth_settings.auth.admin_password = ADMIN_PASSWORD.into();
        auth_settings.auth.service_accounts = ACCOUNTS
            .iter()
            .map(|(id, scopes)| testing::service_account(id, CLIENT_SECRET, scopes))
            .collect();
        auth_settings.auth.rate_limit = RateLimitConfig {
            login_per_address: 1_000,
            service_token_per_client: 1_000,
            ..RateLimitConfig::default()
        };
        let auth = RunningHost::spawn(storemesh_auth::build(auth_settings).await.unwrap()).unwrap();
        let tokens = TokensConfig {
            auth_endpoint: auth.endpoint(),
            ..TokensConfig::default()
        };
        let catalog = RunningHost::spawn(
            storemesh_catalog::build(storemesh_catalog::CatalogSettings {
                catalog: storemesh_catalog::CatalogConfig {
                    server: ServerConfig {
                        max_message_bytes: storemesh_catalog::config::DEFAULT_MAX_MESSAGE_BYTES,
                        ..test_server()
                    },
                    ..storemesh_catalog::CatalogConfig::default()
                },
                redis: redis_config.clone(),
                tokens: tokens.clone(),
            })
            .await
            .unwrap(),
        )
        .unwrap();
        let storage = if with_storage {
            Some(
                RunningHost::spawn(
                    storemesh_storage::build(storemesh_storage::StorageSettings {
                        storage: storemesh_storage::StorageConfig {
                            server: test_server(),
                            data_dir: data.path().to_path_buf(),
                            fsync: false,
                            catalog_endpoint: catalog.endpoint(),
                            ..storemesh_storage::StorageConfig::default()
                        },
                        redis: redis_config,
                        tokens,
                    })
                    .await
                    .unwrap(),
                )
                .unwrap(),
            )
        } else {
            None
        };
        let mut mesh = Self {
            redis,
            auth,
            catalog,
            storage,
            admin: String::new(),
            _keys: keys,
            _data: data,
        };
        mesh.admin = mesh.login_admin().await;
        mesh
    }

    /// Dispatcher settings calling this mesh with the `dispatcher` service account.
    pub fn dispatcher(&self, mut config: DispatcherConfig) -> DispatcherSettings {
        config.service_client_id = "dispatcher".into();
        config.service_client_secret = CLIENT_SECRET.into();
        config.catalog = UpstreamConfig::addresses([self.catalog.addr.to_string()]);
        if let Some(storage) = &self.storage {
            config.storage = UpstreamConfig::addresses([storage.addr.to_string()]);
        }
        config.reconciler = ReconcilerConfig {
            stuck_after_secs: 1,
            max_reemits: 2,
            lock_ttl_ms: 10_000,
            max_images_per_run: 100,
        };
        DispatcherSettings {
            dispatcher: config,
            redis: RedisConfig {
                url: self.redis.url(),
                ..RedisConfig::default()
            },
            tokens: TokensConfig {
                auth_endpoint: self.auth.endpoint(),
                ..TokensConfig::default()
            },
        }
    }

    pub async fn admin_token(&self) -> String {
        self.admin.clone()
    }

    async fn login_admin(&self) -> String {
        use storemesh_proto::auth::v1 as auth_pb;
        let mut auth = auth_pb::auth_service_client::AuthServiceClient::new(
            self.auth.channel().await.unwrap(),
        );
        auth.login(auth_pb::LoginRequest {
            email: ADMIN_EMAIL.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token
    }

    pub async fn service_token(&self, client_id: &str) -> String {
        use storemesh_proto::auth::v1 as auth_pb;
        let mut auth = auth_pb::auth_service_client::AuthServiceClient::new(
            self.auth.channel().await.unwrap(),
        );
        auth.issue_service_token(auth_pb::IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: CLIENT_SECRET.into(),
            requested_scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
    }
}

pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn reconcile_schedule(schedule: &str) -> Vec<ScheduleConfig> {
    vec![ScheduleConfig {
        name: "reconcile".into(),
        schedule: schedule.into(),
        target: "reconciler".into(),
    }]
}
