//! Shared set-up: a real redis-server, the real auth service in-process (cheap Argon2), the
//! storage service on a local-filesystem backend in a temporary directory, gRPC over sockets.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use storemesh_auth::{AuthSettings, testing};
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::storage::v1 as pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;
use storemesh_storage::{ProductOwners, StorageConfig, StorageSettings};
use storemesh_testkit::{RedisServer, RunningHost};
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const THUMBNAIL_CLIENT: &str = "thumbnail";
pub const CLEANER_CLIENT: &str = "catalog-cleanup";
pub const BLIND_CLIENT: &str = "blind";
const SECRET: &str = "service-secret-0123456789";
pub const EVENTS_STREAM: &str = "storage:events";
pub const MIB: usize = 1024 * 1024;

pub fn auth_settings(redis_url: &str, keys_dir: &Path) -> AuthSettings {
    let mut settings = testing::auth_settings(redis_url, keys_dir);
    settings.auth.admin_email = ADMIN_EMAIL.into();
    settings.auth.admin_password = ADMIN_PASSWORD.into();
    settings.auth.service_accounts = vec![
        testing::service_account(
            THUMBNAIL_CLIENT,
            SECRET,
            &["storage.write:thumbnails", "storage.read"],
        ),
        testing::service_account(CLEANER_CLIENT, SECRET, &["storage.delete:products"]),
        testing::service_account(BLIND_CLIENT, SECRET, &["catalog.read"]),
    ];
    settings
}

/// Storage settings for tests: small parts, a fast janitor, short leases, no grace period.
pub fn storage_settings(redis_url: &str, auth_endpoint: &str, data_dir: &Path) -> StorageSettings {
    StorageSettings {
        storage: StorageConfig {
            server: test_server(),
            data_dir: data_dir.to_path_buf(),
            fsync: false,
            part_size_bytes: MIB as u64,
            upload_lease_ms: 1_500,
            gc_grace_ms: 0,
            janitor_interval_ms: 100,
            upload_idle_timeout_ms: 10_000,
            limits: vec![
                storemesh_storage::limits::PrefixLimit {
                    prefix: "limited/".into(),
                    max_bytes: MIB as u64,
                },
                storemesh_storage::limits::PrefixLimit {
                    prefix: "products/*/originals/".into(),
                    max_bytes: 32 * MIB as u64,
                },
            ],
            ..StorageConfig::default()
        },
        redis: RedisConfig {
            url: redis_url.to_owned(),
            ..RedisConfig::default()
        },
        tokens: TokensConfig {
            auth_endpoint: auth_endpoint.to_owned(),
            ..TokensConfig::default()
        },
    }
}

/// Redis, auth and storage, with tokens for every kind of caller.
pub struct Mesh {
    pub redis: RedisServer,
    pub auth: RunningHost,
    pub storage: RunningHost,
    pub catalog: Option<RunningHost>,
    pub data: tempfile::TempDir,
    _keys: tempfile::TempDir,
    pub admin: String,
    pub thumbnailer: String,
}

pub enum Owners {
    /// Start the real catalog service (same Redis and auth) and ask it.
    RealCatalog,
    /// Ask a catalog at this endpoint.
    Catalog(String),
    Fixed(HashMap<String, String>),
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with(RedisServer::start().unwrap(), |_| {}).await
    }

    pub async fn start_with(redis: RedisServer, adjust: impl FnOnce(&mut StorageSettings)) -> Self {
        Self::start_full(redis, Owners::Fixed(HashMap::new()), adjust).await
    }

    pub async fn start_full(
        redis: RedisServer,
        owners: Owners,
        adjust: impl FnOnce(&mut StorageSettings),
    ) -> Self {
        let (auth, keys) = start_auth(&redis).await;
        let data = tempfile::tempdir().unwrap();
        let mut settings = storage_settings(&redis.url(), &auth.endpoint(), data.path());
        adjust(&mut settings);
        let mut catalog = None;
        let host = match owners {
            Owners::RealCatalog => {
                let host = start_catalog(&redis, &auth).await;
                settings.storage.catalog_endpoint = host.endpoint();
                catalog = Some(host);
                storemesh_storage::build(settings).await.unwrap()
            }
            Owners::Catalog(endpoint) => {
                settings.storage.catalog_endpoint = endpoint;
                storemesh_storage::build(settings).await.unwrap()
            }
            Owners::Fixed(map) => {
                let owners: Arc<dyn ProductOwners> = Arc::new(map);
                storemesh_storage::build_with_owners(settings, owners)
                    .await
                    .unwrap()
            }
        };
        let storage = RunningHost::spawn(host).unwrap();
        let mut mesh = Self {
            redis,
            auth,
            storage,
            catalog,
            data,
            _keys: keys,
            admin: String::new(),
            thumbnailer: String::new(),
        };
        mesh.admin = mesh.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        mesh.thumbnailer = mesh.service_token(THUMBNAIL_CLIENT).await;
        mesh
    }

    pub async fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.auth.channel().await.unwrap())
    }

    pub async fn client(&self) -> StorageServiceClient<Channel> {
        StorageServiceClient::new(self.storage.channel().await.unwrap())
            .max_decoding_message_size(8 * MIB)
            .max_encoding_message_size(8 * MIB)
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        login(&self.auth, email, password).await
    }

    /// Registers a user and returns `(user id, access token)`.
    pub async fn user(&self, email: &str, role: auth_pb::Role) -> (String, String) {
        register(&self.auth, email, role).await
    }

    pub async fn service_token(&self, client_id: &str) -> String {
        service_token(&self.auth, client_id).await
    }

    pub fn redis_connection(&self) -> redis::Connection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn events(&self) -> Vec<events_pb::Event> {
        read_events(&mut self.redis_connection())
    }

    /// Every file under the backend directory (blobs and staging files).
    pub fn files(&self) -> Vec<PathBuf> {
        files_under(self.data.path())
    }

    /// Fails unless `key` has no object, no metadata, no index entry and no event, and no
    /// upload is pending and no stray bytes remain beyond `expected_files` (waiting a little
    /// for asynchronous clean-up).
    pub async fn assert_nothing_committed(&self, key: &str, expected_files: usize) {
        let mut client = self.client().await;
        let stat = client
            .stat(bearer(pb::StatRequest { key: key.into() }, &self.admin))
            .await;
        if keys_are_valid(key) {
            assert_eq!(stat.unwrap_err().code(), tonic::Code::NotFound, "{key:?}");
        }
        let mut redis = self.redis_connection();
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("storage:obj:{key}"))
            .query(&mut redis)
            .unwrap();
        assert!(!exists, "metadata of {key:?} exists");
        let indexed: Option<f64> = redis::cmd("ZSCORE")
            .arg("storage:index")
            .arg(key)
            .query(&mut redis)
            .unwrap();
        assert_eq!(indexed, None, "{key:?} is indexed");
        assert!(
            self.events().iter().all(|event| event.subject != key),
            "an event names {key:?}"
        );
        wait_for("the failed upload to be cleaned up", || {
            let uploads: u64 = redis::cmd("ZCARD")
                .arg("storage:uploads")
                .query(&mut redis)
                .unwrap();
            let files = self.files();
            if uploads != 0 || files.len() != expected_files {
                eprintln!("waiting: {uploads} uploads, files {files:?}");
            }
            uploads == 0 && files.len() == expected_files
        })
        .await;
    }
}

/// Creates a product in the real catalog (`mesh.catalog`) as the seller behind `token`.
pub async fn create_product(mesh: &Mesh, token: &str, title: &str) -> String {
    use storemesh_proto::catalog::v1 as catalog_pb;
    use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
    let channel = mesh.catalog.as_ref().unwrap().channel().await.unwrap();
    CatalogServiceClient::new(channel)
        .create_product(bearer(
            catalog_pb::CreateProductRequest {
                title: title.into(),
                description: String::new(),
                price: Some(catalog_pb::Money {
                    amount_minor: 1999,
                    currency_code: "EUR".into(),
                }),
                tags: Vec::new(),
                request_id: String::new(),
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

/// The real auth service, in-process.
pub async fn start_auth(redis: &RedisServer) -> (RunningHost, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let auth = RunningHost::spawn(
        storemesh_auth::build(auth_settings(&redis.url(), keys.path()))
            .await
            .unwrap(),
    )
    .unwrap();
    (auth, keys)
}

/// The real catalog service, in-process (no storage clean-up worker).
pub async fn start_catalog(redis: &RedisServer, auth: &RunningHost) -> RunningHost {
    let settings = storemesh_catalog::CatalogSettings {
        catalog: storemesh_catalog::CatalogConfig {
            server: ServerConfig {
                max_message_bytes: storemesh_catalog::config::DEFAULT_MAX_MESSAGE_BYTES,
                ..test_server()
            },
            ..storemesh_catalog::CatalogConfig::default()
        },
        redis: RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        },
        tokens: TokensConfig {
            auth_endpoint: auth.endpoint(),
            ..TokensConfig::default()
        },
    };
    RunningHost::spawn(storemesh_catalog::build(settings).await.unwrap()).unwrap()
}

pub async fn login(auth: &RunningHost, email: &str, password: &str) -> String {
    AuthServiceClient::new(auth.channel().await.unwrap())
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

/// Registers a user and returns `(user id, access token)`.
pub async fn register(auth: &RunningHost, email: &str, role: auth_pb::Role) -> (String, String) {
    let password = "a good long password";
    let user = AuthServiceClient::new(auth.channel().await.unwrap())
        .register(auth_pb::RegisterRequest {
            email: email.into(),
            password: password.into(),
            display_name: "Test User".into(),
            role: role.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    (user.id, login(auth, email, password).await)
}

pub async fn service_token(auth: &RunningHost, client_id: &str) -> String {
    AuthServiceClient::new(auth.channel().await.unwrap())
        .issue_service_token(auth_pb::IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: SECRET.into(),
            requested_scopes: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
}

pub fn redis_connection(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Whether `key` has metadata in Redis.
pub fn has_metadata(redis: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(format!("storage:obj:{key}"))
        .query(redis)
        .unwrap()
}

pub fn pending_uploads(redis: &mut redis::Connection) -> u64 {
    redis::cmd("ZCARD")
        .arg("storage:uploads")
        .query(redis)
        .unwrap()
}

fn keys_are_valid(key: &str) -> bool {
    storemesh_storage::keys::key_problem(key).is_none()
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

pub fn read_events(redis: &mut redis::Connection) -> Vec<events_pb::Event> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(EVENTS_STREAM)
        .arg("-")
        .arg("+")
        .query(redis)
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = entry.get("event").unwrap();
            let event = events_pb::Event::decode(bytes.as_slice()).unwrap();
            // The plain fields mirror the encoded event.
            let id: String = entry.get("id").unwrap();
            let kind: String = entry.get("type").unwrap();
            let key: String = entry.get("key").unwrap();
            assert_eq!(id, event.id);
            assert_eq!(kind, event.r#type().as_str_name());
            assert_eq!(key, event.subject);
            event
        })
        .collect()
}

pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn header(key: &str, content_type: &str) -> pb::UploadHeader {
    pb::UploadHeader {
        target: Some(pb::upload_header::Target::Key(key.into())),
        content_type: content_type.into(),
        ..pb::UploadHeader::default()
    }
}

pub fn header_message(header: pb::UploadHeader) -> pb::UploadRequest {
    pb::UploadRequest {
        payload: Some(pb::upload_request::Payload::Header(header)),
    }
}

pub fn chunk_message(bytes: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest {
        payload: Some(pb::upload_request::Payload::Chunk(bytes.to_vec())),
    }
}

/// The header followed by `data` in chunks of `chunk_size` bytes.
pub fn messages(
    header: pb::UploadHeader,
    data: &[u8],
    chunk_size: usize,
) -> Vec<pb::UploadRequest> {
    std::iter::once(header_message(header))
        .chain(data.chunks(chunk_size.max(1)).map(chunk_message))
        .collect()
}

pub async fn upload_stream(
    client: &mut StorageServiceClient<Channel>,
    token: &str,
    stream: impl Stream<Item = pb::UploadRequest> + Send + 'static,
) -> Result<pb::UploadResponse, Status> {
    client
        .upload(bearer(stream, token))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn upload(
    client: &mut StorageServiceClient<Channel>,
    token: &str,
    header: pb::UploadHeader,
    data: &[u8],
) -> Result<pb::ObjectInfo, Status> {
    upload_stream(
        client,
        token,
        futures::stream::iter(messages(header, data, 256 * 1024)),
    )
    .await
    .map(|response| response.object.unwrap())
}

/// Downloads a range; returns the info message and the bytes, checking the chunk rules.
pub async fn download(
    client: &mut StorageServiceClient<Channel>,
    token: &str,
    key: &str,
    offset: u64,
    length: u64,
) -> Result<(pb::ObjectInfo, Vec<u8>), Status> {
    let mut stream = client
        .download(bearer(
            pb::DownloadRequest {
                key: key.into(),
                offset,
                length,
            },
            token,
        ))
        .await?
        .into_inner();
    let first = stream.message().await?.expect("the info message");
    let Some(pb::download_response::Payload::Info(info)) = first.payload else {
        panic!("the first message must be the info");
    };
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        let Some(pb::download_response::Payload::Chunk(chunk)) = message.payload else {
            panic!("only the first message carries info");
        };
        assert!(
            !chunk.is_empty() && chunk.len() <= MIB,
            "chunk of {}",
            chunk.len()
        );
        bytes.extend_from_slice(&chunk);
    }
    Ok((info, bytes))
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    storemesh_storage::validate::hex(&sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn jpeg_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0xFF, 0xD8, 0xFF, 0xE0];
    data.extend(pseudo_random(len.saturating_sub(4), 7));
    data
}

pub fn png_bytes(len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend(pseudo_random(len.saturating_sub(8), 9));
    data
}

pub fn field_violations(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn list_page(
    client: &mut StorageServiceClient<Channel>,
    token: &str,
    prefix: &str,
    page_size: i32,
    page_token: String,
) -> Result<pb::ListResponse, Status> {
    client
        .list(bearer(
            pb::ListRequest {
                prefix: prefix.into(),
                page_size,
                page_token,
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// A TCP relay in front of a host, whose connections can be cut mid-stream: what the server
/// sees when a client's network or process goes away.
pub struct CuttableProxy {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl CuttableProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // Returning drops both sockets: the connection ends mid-stream.
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    pub async fn client(&self) -> StorageServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        StorageServiceClient::new(channel)
    }

    /// Closes every relayed connection at once.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }
}
