//! The auth service over real gRPC against a real redis-server, plus the shared authentication
//! layer of another service (the runtime's echo fixture) verifying auth's tokens locally.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use storemesh_auth::config::RateLimitConfig;
use storemesh_auth::{AuthSettings, testing};
use storemesh_proto::auth::v1 as pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_runtime::auth::{Authenticator, GrpcKeySource, KeySource, TokensConfig};
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;
use storemesh_testkit::echo::{self, EchoServiceClient, pb::EchoRequest};
use storemesh_testkit::{RedisServer, RunningHost};
use storemesh_tokens::{Claims, PublicJwk, Role, SigningKey};
use tonic::transport::Channel;
use tonic::{Code, Request};

const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "admin-password-1";
const THUMBNAIL_SECRET: &str = "thumbnail-secret-0123456789";

fn settings(redis: &RedisServer, keys_dir: &std::path::Path) -> AuthSettings {
    let mut settings = testing::auth_settings(&redis.url(), keys_dir);
    settings.auth.admin_email = ADMIN_EMAIL.into();
    settings.auth.admin_password = ADMIN_PASSWORD.into();
    settings.auth.service_accounts = vec![testing::service_account(
        "thumbnail",
        THUMBNAIL_SECRET,
        &["storage.write:thumbnails", "catalog.write:variants"],
    )];
    settings
}

struct Harness {
    redis: RedisServer,
    keys: tempfile::TempDir,
    host: RunningHost,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut AuthSettings)) -> Self {
        let redis = RedisServer::start().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let mut settings = settings(&redis, keys.path());
        adjust(&mut settings);
        let host = RunningHost::spawn(storemesh_auth::build(settings).await.unwrap()).unwrap();
        Self { redis, keys, host }
    }

    async fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.host.channel().await.unwrap())
    }

    fn signing_key(&self) -> SigningKey {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let pem = std::fs::read_to_string(self.keys.path().join("current.pem")).unwrap();
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
        SigningKey::from_seed(&key.to_bytes()).unwrap()
    }
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn register(
    client: &mut AuthServiceClient<Channel>,
    email: &str,
    role: pb::Role,
) -> pb::User {
    client
        .register(pb::RegisterRequest {
            email: email.into(),
            password: "a good long password".into(),
            display_name: "Test User".into(),
            role: role.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

async fn login(
    client: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
) -> pb::TokenPair {
    client
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
}

async fn who_am_i(
    client: &mut AuthServiceClient<Channel>,
    token: &str,
) -> Result<pb::Principal, tonic::Status> {
    client
        .who_am_i(bearer(pb::WhoAmIRequest {}, token))
        .await
        .map(|response| response.into_inner().principal.unwrap())
}

fn field_violations(status: &tonic::Status) -> Vec<String> {
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

#[tokio::test]
async fn register_login_refresh_logout_round_trip() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let user = register(&mut client, "  Seller@Example.com ", pb::Role::Seller).await;
    assert_eq!(user.email, "seller@example.com", "normalised");
    assert_eq!(user.role(), pb::Role::Seller);
    assert_eq!(user.id.len(), 26, "a ULID");

    let duplicate = client
        .register(pb::RegisterRequest {
            email: "SELLER@example.com".into(),
            password: "another good password".into(),
            display_name: "Someone".into(),
            role: pb::Role::Customer.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let tokens = login(&mut client, "seller@example.com", "a good long password").await;
    assert_eq!(tokens.token_type, "Bearer");
    assert!(
        URL_SAFE_NO_PAD.decode(&tokens.refresh_token).unwrap().len() >= 32,
        "≥ 256 bits"
    );
    let me = who_am_i(&mut client, &tokens.access_token).await.unwrap();
    assert_eq!(me.subject, user.id);
    assert_eq!(me.role(), pb::Role::Seller);
    assert_eq!(me.kind(), pb::PrincipalKind::User);
    assert_eq!(me.email, "seller@example.com");

    let refreshed = client
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(refreshed.refresh_token, tokens.refresh_token, "rotated");
    assert_eq!(
        who_am_i(&mut client, &refreshed.access_token)
            .await
            .unwrap()
            .subject,
        user.id
    );

    client
        .logout(bearer(
            pb::LogoutRequest {
                refresh_token: refreshed.refresh_token.clone(),
            },
            &refreshed.access_token,
        ))
        .await
        .unwrap();
    let after_logout = client
        .refresh(pb::RefreshRequest {
            refresh_token: refreshed.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(after_logout.code(), Code::Unauthenticated);
    let denied = who_am_i(&mut client, &refreshed.access_token)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    assert!(denied.message().contains("revoked"), "{}", denied.message());
    // Logout is idempotent.
    client
        .logout(pb::LogoutRequest {
            refresh_token: refreshed.refresh_token,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn reusing_a_refresh_token_revokes_the_whole_family() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    register(&mut client, "victim@example.com", pb::Role::Customer).await;
    let stolen = login(&mut client, "victim@example.com", "a good long password").await;
    let legit = client
        .refresh(pb::RefreshRequest {
            refresh_token: stolen.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    // The thief replays the old token: refused, and the family dies with it.
    let replay = client
        .refresh(pb::RefreshRequest {
            refresh_token: stolen.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    let legit_next = client
        .refresh(pb::RefreshRequest {
            refresh_token: legit.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(
        legit_next.code(),
        Code::Unauthenticated,
        "whole family revoked"
    );
    // A fresh login starts a new family.
    login(&mut client, "victim@example.com", "a good long password").await;
}

#[tokio::test]
async fn login_failures_do_not_reveal_whether_the_account_exists() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    register(&mut client, "known@example.com", pb::Role::Customer).await;
    let wrong_password = client
        .login(pb::LoginRequest {
            email: "known@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    let no_account = client
        .login(pb::LoginRequest {
            email: "unknown@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(no_account.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.message(), no_account.message());
}

#[tokio::test]
async fn malformed_input_is_refused_with_field_violations() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let status = client
        .register(pb::RegisterRequest {
            email: String::new(),
            password: "short".into(),
            display_name: "   ".into(),
            role: pb::Role::Admin.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        field_violations(&status),
        ["email", "password", "display_name", "role"]
    );

    let overlong = client
        .register(pb::RegisterRequest {
            email: format!("{}@example.com", "a".repeat(300)),
            password: "aaaaaaaaaaaaaaaa".into(),
            display_name: "ok".into(),
            role: pb::Role::Customer.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&overlong), ["email", "password"]);

    let login = client
        .login(pb::LoginRequest {
            email: String::new(),
            password: "p".repeat(200),
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&login), ["email", "password"]);

    // A display name that is not UTF-8, sent as raw bytes in the same field.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawRegisterRequest {
        #[prost(string, tag = "1")]
        email: String,
        #[prost(string, tag = "2")]
        password: String,
        #[prost(bytes = "vec", tag = "3")]
        display_name: Vec<u8>,
        #[prost(int32, tag = "4")]
        role: i32,
    }
    let mut grpc = tonic::client::Grpc::new(harness.host.channel().await.unwrap());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::RegisterResponse, _>(
            Request::new(RawRegisterRequest {
                email: "utf8@example.com".into(),
                password: "a good long password".into(),
                display_name: vec![0xff, 0xfe, 0x41],
                role: 1,
            }),
            "/storemesh.auth.v1.AuthService/Register".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_violations(&status), ["display_name"]);
}

#[tokio::test]
async fn rate_limits_trip_with_retry_after_and_recover() {
    let harness = Harness::start_with(|settings| {
        settings.auth.rate_limit = RateLimitConfig {
            window_secs: 1,
            login_per_account: 3,
            ..RateLimitConfig::default()
        };
    })
    .await;
    let mut client = harness.client().await;
    register(&mut client, "limited@example.com", pb::Role::Customer).await;
    let attempt = |mut client: AuthServiceClient<Channel>| async move {
        client
            .login(pb::LoginRequest {
                email: "limited@example.com".into(),
                password: "a good long password".into(),
            })
            .await
    };
    for _ in 0..3 {
        attempt(client.clone()).await.unwrap();
    }
    let limited = attempt(client.clone()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry_after: u64 = limited
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    attempt(client)
        .await
        .expect("allowed again in the next window");
}

#[tokio::test]
async fn admin_rules_roles_and_paging() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let admin = login(&mut client, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut created = Vec::new();
    for index in 0..7 {
        created.push(
            register(
                &mut client,
                &format!("user{index}@example.com"),
                pb::Role::Customer,
            )
            .await,
        );
    }
    let customer = login(&mut client, "user0@example.com", "a good long password").await;

    let forbidden = client
        .set_role(bearer(
            pb::SetRoleRequest {
                user_id: created[1].id.clone(),
                role: pb::Role::Seller.into(),
            },
            &customer.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(forbidden.code(), Code::PermissionDenied);
    let anonymous = client
        .list_users(pb::ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let promoted = client
        .set_role(bearer(
            pb::SetRoleRequest {
                user_id: created[0].id.clone(),
                role: pb::Role::Seller.into(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(promoted.role(), pb::Role::Seller);
    // The new role shows in tokens issued afterwards.
    let relogin = login(&mut client, "user0@example.com", "a good long password").await;
    assert_eq!(
        who_am_i(&mut client, &relogin.access_token)
            .await
            .unwrap()
            .role(),
        pb::Role::Seller
    );

    let admin_id = who_am_i(&mut client, &admin.access_token)
        .await
        .unwrap()
        .subject;
    let own = client
        .set_role(bearer(
            pb::SetRoleRequest {
                user_id: admin_id,
                role: pb::Role::Customer.into(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::FailedPrecondition);
    let missing = client
        .set_role(bearer(
            pb::SetRoleRequest {
                user_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
                role: pb::Role::Seller.into(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // 8 users (admin + 7) in pages of 3: 3 pages, creation order, no repeats.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(bearer(
                pb::ListUsersRequest {
                    page_size: 3,
                    page_token: page_token.clone(),
                },
                &admin.access_token,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.users.into_iter().map(|user| user.email));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let mut expected = vec![ADMIN_EMAIL.to_owned()];
    expected.extend((0..7).map(|index| format!("user{index}@example.com")));
    assert_eq!(seen, expected);

    let bad_token = client
        .list_users(bearer(
            pb::ListUsersRequest {
                page_size: 3,
                page_token: "garbage!".into(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    let negative = client
        .list_users(bearer(
            pb::ListUsersRequest {
                page_size: -1,
                page_token: String::new(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&negative), ["page_size"]);
}

#[tokio::test]
async fn service_accounts_get_narrow_scoped_tokens() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let issued = client
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "thumbnail".into(),
            client_secret: THUMBNAIL_SECRET.into(),
            requested_scopes: vec!["catalog.write:variants".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.scopes, ["catalog.write:variants"]);
    let me = who_am_i(&mut client, &issued.access_token).await.unwrap();
    assert_eq!(me.kind(), pb::PrincipalKind::Service);
    assert_eq!(me.role(), pb::Role::Service);
    assert_eq!(me.scopes, ["catalog.write:variants"]);

    let all = client
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "thumbnail".into(),
            client_secret: THUMBNAIL_SECRET.into(),
            requested_scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.scopes.len(), 2, "every granted scope by default");

    let wrong_secret = client
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "thumbnail".into(),
            client_secret: "not-the-secret".into(),
            requested_scopes: vec![],
        })
        .await
        .unwrap_err();
    let unknown = client
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "nobody".into(),
            client_secret: "not-the-secret".into(),
            requested_scopes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_secret.code(), Code::Unauthenticated);
    assert_eq!(wrong_secret.message(), unknown.message());

    let not_granted = client
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "thumbnail".into(),
            client_secret: THUMBNAIL_SECRET.into(),
            requested_scopes: vec!["storage.delete:products".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(not_granted.code(), Code::PermissionDenied);
}

/// A replica remembers a verified service secret (so a token per thumbnail delivery costs no
/// Argon2id hash); rotating the secret elsewhere must still end the old one at once.
#[tokio::test]
async fn a_rotated_service_secret_is_refused_by_a_replica_that_remembered_the_old_one() {
    let harness = Harness::start().await;
    let mut replica_a = harness.client().await;
    let request = |secret: &str| pb::IssueServiceTokenRequest {
        client_id: "thumbnail".into(),
        client_secret: secret.into(),
        requested_scopes: vec![],
    };
    for _ in 0..3 {
        replica_a
            .issue_service_token(request(THUMBNAIL_SECRET))
            .await
            .unwrap();
    }

    // A second replica on the same Redis starts with a rotated secret and stores its hash.
    const ROTATED: &str = "a-rotated-thumbnail-secret-0123456789";
    let mut rotated = settings(&harness.redis, harness.keys.path());
    rotated.auth.service_accounts[0].client_secret = ROTATED.into();
    let replica_b = RunningHost::spawn(storemesh_auth::build(rotated).await.unwrap()).unwrap();

    let old = replica_a
        .issue_service_token(request(THUMBNAIL_SECRET))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated, "{old:?}");
    replica_a
        .issue_service_token(request(ROTATED))
        .await
        .unwrap();
    AuthServiceClient::new(replica_b.channel().await.unwrap())
        .issue_service_token(request(ROTATED))
        .await
        .unwrap();
    replica_b.stop().await;
}

#[tokio::test]
async fn restart_keeps_keys_and_sessions() {
    let mut harness = Harness::start().await;
    let mut client = harness.client().await;
    register(&mut client, "stay@example.com", pb::Role::Seller).await;
    let tokens = login(&mut client, "stay@example.com", "a good long password").await;
    let keys_before = client
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();

    let old = std::mem::replace(
        &mut harness.host,
        RunningHost::spawn(
            storemesh_auth::build(settings(&harness.redis, harness.keys.path()))
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    old.stop().await;
    let mut client = harness.client().await;
    let keys_after = client
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys_before.keys, keys_after.keys);
    assert_eq!(keys_after.keys[0].kty, "OKP");
    assert_eq!(keys_after.keys[0].crv, "Ed25519");
    assert!(keys_after.jwks_json.contains(&keys_after.keys[0].kid));
    who_am_i(&mut client, &tokens.access_token)
        .await
        .expect("access token still verifies");
    client
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .expect("refresh token still works");
}

/// Counts key fetches of the real gRPC key source.
struct CountingSource {
    inner: GrpcKeySource,
    fetches: AtomicUsize,
}

impl KeySource for CountingSource {
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PublicJwk>, String>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn other_services_verify_tokens_locally_and_refuse_bad_ones() {
    let harness = Harness::start().await;
    let mut auth = harness.client().await;
    register(&mut auth, "caller@example.com", pb::Role::Customer).await;
    let good = login(&mut auth, "caller@example.com", "a good long password").await;

    // Another service: the echo fixture with the shared authentication layer, fetching keys
    // from auth over gRPC and checking the denylist in the same Redis.
    let tokens_config = TokensConfig {
        auth_endpoint: harness.host.endpoint(),
        jwks_min_refresh_interval_ms: 60_000,
        // Check the denylist on every call so the logout below shows at once.
        revocation_check_interval_ms: 0,
        ..TokensConfig::default()
    };
    let source = Arc::new(CountingSource {
        inner: GrpcKeySource::new(&tokens_config.auth_endpoint).unwrap(),
        fetches: AtomicUsize::new(0),
    });
    let denylist = storemesh_runtime::redis::connect(&RedisConfig {
        url: harness.redis.url(),
        ..RedisConfig::default()
    })
    .await
    .unwrap();
    let authenticator =
        Arc::new(Authenticator::new(&tokens_config, source.clone(), Some(denylist)).unwrap());
    let other = RunningHost::spawn(
        echo::host(test_server())
            .authenticate_with(authenticator)
            .bind()
            .await
            .unwrap(),
    )
    .unwrap();
    let echo_client = EchoServiceClient::new(other.channel().await.unwrap());
    let call = |token: String| {
        let mut echo_client = echo_client.clone();
        async move {
            echo_client
                .echo(bearer(
                    EchoRequest {
                        message: "hi".into(),
                        delay_ms: 0,
                    },
                    &token,
                ))
                .await
        }
    };

    call(good.access_token.clone())
        .await
        .expect("a valid token passes");
    assert_eq!(
        source.fetches.load(Ordering::SeqCst),
        1,
        "keys fetched once, then cached"
    );
    call(good.access_token.clone()).await.unwrap();
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);

    let key = harness.signing_key();
    let claims = |adjust: &dyn Fn(&mut Claims)| {
        let now = now_secs();
        let mut claims = Claims {
            iss: "storemesh".into(),
            aud: "storemesh".into(),
            sub: "someone".into(),
            role: Role::Admin,
            scope: String::new(),
            iat: now,
            exp: now + 600,
            jti: ulid_like(),
        };
        adjust(&mut claims);
        claims
    };
    let refused = |token: String| async move {
        let status = call(token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        status.message().to_owned()
    };

    let expired = key.sign(&claims(&|c| c.exp = now_secs() - 120)).unwrap();
    assert!(refused(expired).await.contains("expired"));
    let wrong_audience = key.sign(&claims(&|c| c.aud = "elsewhere".into())).unwrap();
    assert!(refused(wrong_audience).await.contains("audience"));
    let wrong_issuer = key.sign(&claims(&|c| c.iss = "evil".into())).unwrap();
    assert!(refused(wrong_issuer).await.contains("issuer"));

    let parts: Vec<&str> = good.access_token.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json_claims(&claims(&|_| {})));
    refused(format!("{}.{forged_payload}.{}", parts[0], parts[2])).await;
    let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid()));
    refused(format!("{none_header}.{}.", parts[1])).await;
    refused("not-a-jwt".into()).await;
    let plain = call(String::new()).await;
    assert!(plain.is_err(), "`Bearer ` with no token is refused");

    // Tokens from a key auth never published: a flood of unknown kids triggers at most one
    // more key fetch within the refresh interval.
    for seed in 1..=20_u8 {
        let stranger = SigningKey::from_seed(&[seed; 32]).unwrap();
        let message = refused(stranger.sign(&claims(&|_| {})).unwrap()).await;
        assert!(message.contains("unknown key"), "{message}");
    }
    assert!(
        source.fetches.load(Ordering::SeqCst) <= 2,
        "bounded refetching"
    );

    // Logged out: its jti is denylisted everywhere.
    auth.logout(bearer(
        pb::LogoutRequest {
            refresh_token: good.refresh_token.clone(),
        },
        &good.access_token,
    ))
    .await
    .unwrap();
    assert!(refused(good.access_token.clone()).await.contains("revoked"));

    // No token at all reaches the handler (public methods decide for themselves).
    echo_client
        .clone()
        .echo(EchoRequest {
            message: "anonymous".into(),
            delay_ms: 0,
        })
        .await
        .unwrap();
    other.stop().await;
}

fn ulid_like() -> String {
    format!("{:026}", now_secs())
}

fn serde_json_claims(claims: &Claims) -> Vec<u8> {
    format!(
        r#"{{"iss":"{}","aud":"{}","sub":"{}","role":"admin","iat":{},"exp":{},"jti":"{}"}}"#,
        claims.iss, claims.aud, claims.sub, claims.iat, claims.exp, claims.jti
    )
    .into_bytes()
}

/// Verified tokens are cached by verifiers; a logout reaches them within
/// `revocation_check_interval_ms`.
#[tokio::test]
async fn cached_tokens_see_a_logout_within_the_recheck_interval() {
    let harness = Harness::start().await;
    let mut auth = harness.client().await;
    register(&mut auth, "cached@example.com", pb::Role::Customer).await;
    let tokens = login(&mut auth, "cached@example.com", "a good long password").await;
    let config = TokensConfig {
        auth_endpoint: harness.host.endpoint(),
        revocation_check_interval_ms: 500,
        ..TokensConfig::default()
    };
    let denylist = storemesh_runtime::redis::connect(&RedisConfig {
        url: harness.redis.url(),
        ..RedisConfig::default()
    })
    .await
    .unwrap();
    let authenticator = Authenticator::from_config(&config, Some(denylist)).unwrap();
    let first = authenticator
        .authenticate(&tokens.access_token)
        .await
        .unwrap();
    auth.logout(bearer(
        pb::LogoutRequest {
            refresh_token: tokens.refresh_token,
        },
        &tokens.access_token,
    ))
    .await
    .unwrap();
    // Inside the interval the cached verification still stands...
    let cached = authenticator
        .authenticate(&tokens.access_token)
        .await
        .unwrap();
    assert_eq!(cached, first);
    // ...after it, the denylist is consulted again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = authenticator
        .authenticate(&tokens.access_token)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.to_string().contains("revoked"));
}
