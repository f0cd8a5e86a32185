//! A real redis-server, the real auth service and the catalog, each on ephemeral ports.

use std::future::Future;
use std::time::Duration;

use storemesh_auth::config::RateLimitConfig;
use storemesh_auth::{AuthSettings, testing};
use storemesh_catalog::config::{CleanupConfig, DEFAULT_MAX_MESSAGE_BYTES};
use storemesh_catalog::{CatalogConfig, CatalogHandle, CatalogSettings};
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;
use storemesh_testkit::{RedisServer, RunningHost};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PASSWORD: &str = "a good long password";
pub const SECRET: &str = "service-secret-0123456789";
/// The catalog's image URL signing key in every harness (unless a test removes it).
pub const SIGNING_KEY: &str = "image-url-signing-key-0123456789";

/// Service accounts in the test auth service, by client id: their scopes.
pub const SERVICE_ACCOUNTS: &[(&str, &[&str])] = &[
    (
        "thumbnail",
        &["catalog.write:variants", "storage.write:thumbnails"],
    ),
    ("reader", &["catalog.read"]),
    ("unrelated", &["storage.read"]),
    ("catalog", &["storage.delete:products"]),
];

fn auth_settings(redis: &RedisServer, keys_dir: &std::path::Path) -> AuthSettings {
    let mut settings = testing::auth_settings(&redis.url(), keys_dir);
    settings.auth.admin_email = ADMIN_EMAIL.into();
    settings.auth.admin_password = ADMIN_PASSWORD.into();
    settings.auth.service_accounts = SERVICE_ACCOUNTS
        .iter()
        .map(|(id, scopes)| testing::service_account(id, SECRET, scopes))
        .collect();
    settings.auth.rate_limit = RateLimitConfig {
        register_per_address: 1_000,
        login_per_address: 1_000,
        service_token_per_client: 1_000,
        ..RateLimitConfig::default()
    };
    settings
}

pub struct Harness {
    pub redis: RedisServer,
    _keys: tempfile::TempDir,
    pub auth: RunningHost,
    pub catalog: RunningHost,
    pub handle: CatalogHandle,
}

/// A signed-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub token: String,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut CatalogSettings)) -> Self {
        let redis = RedisServer::start().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let auth = RunningHost::spawn(
            storemesh_auth::build(auth_settings(&redis, keys.path()))
                .await
                .unwrap(),
        )
        .unwrap();
        let mut settings = CatalogSettings {
            catalog: CatalogConfig {
                server: ServerConfig {
                    max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                    ..test_server()
                },
                cleanup: CleanupConfig {
                    initial_backoff_ms: 20,
                    max_backoff_ms: 200,
                    ..CleanupConfig::default()
                },
                image_url_signing_keys: vec![SIGNING_KEY.into()],
                ..CatalogConfig::default()
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
        adjust(&mut settings);
        let (host, handle) = storemesh_catalog::build_with_handle(settings)
            .await
            .unwrap();
        let catalog = RunningHost::spawn(host).unwrap();
        Self {
            redis,
            _keys: keys,
            auth,
            catalog,
            handle,
        }
    }

    pub async fn client(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.catalog.channel().await.unwrap())
    }

    pub async fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.auth.channel().await.unwrap())
    }

    /// A plain Redis connection for inspecting the catalog's keys.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Registers and logs in a user with `role`.
    pub async fn user(&self, email: &str, role: auth_pb::Role) -> User {
        let mut auth = self.auth_client().await;
        let user = auth
            .register(auth_pb::RegisterRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Test User".into(),
                role: role.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        let token = self.login(email, PASSWORD).await;
        User { id: user.id, token }
    }

    pub async fn seller(&self, email: &str) -> User {
        self.user(email, auth_pb::Role::Seller).await
    }

    pub async fn admin(&self) -> User {
        let mut auth = self.auth_client().await;
        let response = auth
            .login(auth_pb::LoginRequest {
                email: ADMIN_EMAIL.into(),
                password: ADMIN_PASSWORD.into(),
            })
            .await
            .unwrap()
            .into_inner();
        User {
            id: response.user.unwrap().id,
            token: response.tokens.unwrap().access_token,
        }
    }

    async fn login(&self, email: &str, password: &str) -> String {
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

    /// A service token for one of [`SERVICE_ACCOUNTS`].
    pub async fn service(&self, client_id: &str) -> String {
        self.auth_client()
            .await
            .issue_service_token(auth_pb::IssueServiceTokenRequest {
                client_id: client_id.into(),
                client_secret: SECRET.into(),
                requested_scopes: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
    }
}

pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
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

/// Asserts `INVALID_ARGUMENT` with exactly these field violations.
#[track_caller]
pub fn assert_violations<T: std::fmt::Debug>(result: Result<T, Status>, fields: &[&str]) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_violations(&status), fields, "{status:?}");
}

#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) {
    match result {
        Ok(value) if code == Code::Ok => drop(value),
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => assert_eq!(status.code(), code, "{status:?}"),
    }
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

pub fn money(amount_minor: i64, currency: &str) -> Option<pb::Money> {
    Some(pb::Money {
        amount_minor,
        currency_code: currency.into(),
    })
}

pub fn new_product(title: &str, tags: &[&str]) -> pb::CreateProductRequest {
    pb::CreateProductRequest {
        title: title.into(),
        description: format!("All about {title}."),
        price: money(1999, "EUR"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        request_id: String::new(),
    }
}

pub async fn create(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    request: pb::CreateProductRequest,
) -> pb::Product {
    client
        .create_product(bearer(request, token))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
}

pub fn attach_request(product_id: &str, image_id: &str) -> pb::AttachImageRequest {
    pb::AttachImageRequest {
        product_id: product_id.into(),
        image_id: image_id.into(),
        storage_key: format!("products/{product_id}/originals/{image_id}"),
        content_type: "image/jpeg".into(),
        size_bytes: 123_456,
        width: 4000,
        height: 3000,
        sha256: String::new(),
    }
}

pub async fn attach(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    product_id: &str,
    image_id: &str,
) -> pb::Image {
    client
        .attach_image(bearer(attach_request(product_id, image_id), token))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

/// A `w{size}` JPEG variant of an image of a product.
pub fn variant(product_id: &str, image_id: &str, size: u32) -> pb::ImageVariant {
    pb::ImageVariant {
        name: format!("w{size}"),
        width: size,
        height: size * 3 / 4,
        format: pb::ImageFormat::Jpeg.into(),
        storage_key: format!("products/{product_id}/thumbnails/{image_id}/w{size}.jpg"),
        size_bytes: u64::from(size) * 10,
        ..Default::default()
    }
}

pub async fn record(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    image_id: &str,
    variant: pb::ImageVariant,
    event_id: &str,
) -> Result<pb::Image, Status> {
    client
        .record_variant(bearer(
            pb::RecordVariantRequest {
                image_id: image_id.into(),
                variant: Some(variant),
                event_id: event_id.into(),
            },
            token,
        ))
        .await
        .map(|response| response.into_inner().image.unwrap())
}
