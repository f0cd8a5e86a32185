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
    // No grace window: the replay below comes at once (the window is tested separately).
    let harness = Harness::start_with(|settings| settings.auth.refresh_reuse_grace_ms = 0).await;
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
            // The first success makes this address known to the account; then this bucket
            // is the one that counts it.
            login_per_account_address: 3,
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

// ---- Issue 20: sessions end when they should; login cannot be stalled or used to lock out ----

/// Another service's authenticator (fetching auth's keys over gRPC, checking revocation in the
/// same Redis on every call), as every service in the mesh verifies tokens.
async fn verifier(harness: &Harness) -> Authenticator {
    let config = TokensConfig {
        auth_endpoint: harness.host.endpoint(),
        revocation_check_interval_ms: 0,
        ..TokensConfig::default()
    };
    let redis = storemesh_runtime::redis::connect(&RedisConfig {
        url: harness.redis.url(),
        ..RedisConfig::default()
    })
    .await
    .unwrap();
    Authenticator::from_config(&config, Some(redis)).unwrap()
}

async fn refresh(
    client: &mut AuthServiceClient<Channel>,
    refresh_token: &str,
) -> Result<pb::TokenPair, tonic::Status> {
    client
        .refresh(pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|response| response.into_inner().tokens.unwrap())
}

/// The access token is refused by auth itself and by another service's verifier, and the
/// refresh token no longer refreshes: the session is over everywhere.
async fn assert_session_ended(
    client: &mut AuthServiceClient<Channel>,
    other_service: &Authenticator,
    session: &pb::TokenPair,
) {
    let at_auth = who_am_i(client, &session.access_token).await.unwrap_err();
    assert_eq!(at_auth.code(), Code::Unauthenticated, "{at_auth:?}");
    assert!(
        at_auth.message().contains("revoked"),
        "{}",
        at_auth.message()
    );
    let elsewhere = other_service
        .authenticate(&session.access_token)
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::Unauthenticated);
    let refreshed = refresh(client, &session.refresh_token).await.unwrap_err();
    assert_eq!(refreshed.code(), Code::Unauthenticated, "{refreshed:?}");
}

#[tokio::test]
async fn set_role_ends_the_users_sessions_and_access_tokens() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let other_service = verifier(&harness).await;
    let admin = login(&mut client, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let user = register(&mut client, "demoted@example.com", pb::Role::Seller).await;
    let session = login(&mut client, "demoted@example.com", "a good long password").await;
    other_service
        .authenticate(&session.access_token)
        .await
        .expect("valid before the role change");

    client
        .set_role(bearer(
            pb::SetRoleRequest {
                user_id: user.id.clone(),
                role: pb::Role::Customer.into(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap();
    assert_session_ended(&mut client, &other_service, &session).await;

    // The next login works at once (same second) and carries the new role.
    let again = login(&mut client, "demoted@example.com", "a good long password").await;
    let me = who_am_i(&mut client, &again.access_token).await.unwrap();
    assert_eq!(me.role(), pb::Role::Customer);
    other_service
        .authenticate(&again.access_token)
        .await
        .expect("a token issued after the change verifies everywhere");
    // The admin's own session is untouched.
    who_am_i(&mut client, &admin.access_token).await.unwrap();
}

#[tokio::test]
async fn an_admin_bootstrap_that_promotes_or_resets_ends_the_accounts_sessions() {
    let mut harness = Harness::start().await;
    let mut client = harness.client().await;
    let other_service = verifier(&harness).await;
    register(&mut client, "promoted@example.com", pb::Role::Seller).await;
    let promoted = login(&mut client, "promoted@example.com", "a good long password").await;
    let admin = login(&mut client, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    // The other service has the keys before auth restarts (it fetched them from this host).
    for session in [&promoted, &admin] {
        other_service
            .authenticate(&session.access_token)
            .await
            .unwrap();
    }

    // Restart with the seller as the configured admin: promoted, sessions ended.
    let restart = |email: &str, password: &str| {
        let mut settings = settings(&harness.redis, harness.keys.path());
        settings.auth.admin_email = email.into();
        settings.auth.admin_password = password.into();
        settings
    };
    let promote = restart("promoted@example.com", "a good long password");
    let reset = restart(ADMIN_EMAIL, "a brand new admin password");
    let old = std::mem::replace(
        &mut harness.host,
        RunningHost::spawn(storemesh_auth::build(promote).await.unwrap()).unwrap(),
    );
    old.stop().await;
    let mut client = harness.client().await;
    assert_session_ended(&mut client, &other_service, &promoted).await;
    // The original admin was neither promoted nor reset: still signed in.
    who_am_i(&mut client, &admin.access_token).await.unwrap();
    let as_admin = login(&mut client, "promoted@example.com", "a good long password").await;
    assert_eq!(
        who_am_i(&mut client, &as_admin.access_token)
            .await
            .unwrap()
            .role(),
        pb::Role::Admin
    );

    // Restart resetting the original admin's password: its sessions end too.
    let old = std::mem::replace(
        &mut harness.host,
        RunningHost::spawn(storemesh_auth::build(reset).await.unwrap()).unwrap(),
    );
    old.stop().await;
    let mut client = harness.client().await;
    assert_session_ended(&mut client, &other_service, &admin).await;
    login(&mut client, ADMIN_EMAIL, "a brand new admin password").await;
    // A restart that changes nothing ends nothing.
    who_am_i(&mut client, &as_admin.access_token).await.unwrap();
}

#[tokio::test]
async fn change_password_ends_other_sessions_and_returns_fresh_tokens() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let other_service = verifier(&harness).await;
    register(&mut client, "changer@example.com", pb::Role::Seller).await;
    let here = login(&mut client, "changer@example.com", "a good long password").await;
    let elsewhere = login(&mut client, "changer@example.com", "a good long password").await;
    let change = |token: &str, old: &str, new: &str| {
        bearer(
            pb::ChangePasswordRequest {
                old_password: old.into(),
                new_password: new.into(),
            },
            token,
        )
    };

    let wrong = client
        .change_password(change(
            &here.access_token,
            "not my password",
            "another long password",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), "invalid password");
    let weak = client
        .change_password(change(&here.access_token, "a good long password", "short"))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&weak), ["new_password"]);
    let anonymous = client
        .change_password(pb::ChangePasswordRequest {
            old_password: "a good long password".into(),
            new_password: "another long password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let service = client
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "thumbnail".into(),
            client_secret: THUMBNAIL_SECRET.into(),
            requested_scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .change_password(change(
            &service.access_token,
            "a good long password",
            "another long password",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    who_am_i(&mut client, &here.access_token)
        .await
        .expect("refused attempts end nothing");

    let fresh = client
        .change_password(change(
            &here.access_token,
            "a good long password",
            "another long password",
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_session_ended(&mut client, &other_service, &elsewhere).await;
    assert_session_ended(&mut client, &other_service, &here).await;
    // The caller carries on with the fresh pair, verified everywhere, refreshable.
    who_am_i(&mut client, &fresh.access_token).await.unwrap();
    other_service
        .authenticate(&fresh.access_token)
        .await
        .unwrap();
    refresh(&mut client, &fresh.refresh_token).await.unwrap();

    let old_password = client
        .login(pb::LoginRequest {
            email: "changer@example.com".into(),
            password: "a good long password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(old_password.code(), Code::Unauthenticated);
    login(&mut client, "changer@example.com", "another long password").await;
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_caller_only() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let other_service = verifier(&harness).await;
    register(&mut client, "everywhere@example.com", pb::Role::Customer).await;
    register(&mut client, "bystander@example.com", pb::Role::Customer).await;
    let laptop = login(
        &mut client,
        "everywhere@example.com",
        "a good long password",
    )
    .await;
    let phone = login(
        &mut client,
        "everywhere@example.com",
        "a good long password",
    )
    .await;
    let phone = refresh(&mut client, &phone.refresh_token).await.unwrap();
    let bystander = login(&mut client, "bystander@example.com", "a good long password").await;

    client
        .logout_all(bearer(pb::LogoutAllRequest {}, &laptop.access_token))
        .await
        .unwrap();
    assert_session_ended(&mut client, &other_service, &laptop).await;
    assert_session_ended(&mut client, &other_service, &phone).await;
    who_am_i(&mut client, &bystander.access_token)
        .await
        .unwrap();
    refresh(&mut client, &bystander.refresh_token)
        .await
        .unwrap();
    let anonymous = client
        .logout_all(pb::LogoutAllRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // Signing in again starts a working session at once.
    let again = login(
        &mut client,
        "everywhere@example.com",
        "a good long password",
    )
    .await;
    other_service
        .authenticate(&again.access_token)
        .await
        .unwrap();
    refresh(&mut client, &again.refresh_token).await.unwrap();
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_is_refreshed() {
    let harness = Harness::start_with(|settings| {
        settings.auth.refresh_session_max_lifetime_secs = 2;
    })
    .await;
    let mut client = harness.client().await;
    register(&mut client, "longlived@example.com", pb::Role::Customer).await;
    let started = now_secs();
    let mut session = login(&mut client, "longlived@example.com", "a good long password").await;
    let deadline = session.refresh_token_expire_time.unwrap().seconds;
    assert!(
        u64::try_from(deadline).unwrap() <= started + 3,
        "the refresh token never outlives the session: {deadline} vs {started}"
    );
    // Refreshed well within the (30-day) idle lifetime, again and again...
    let mut refreshed = 0;
    let ended = loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        match refresh(&mut client, &session.refresh_token).await {
            Ok(next) => {
                assert!(next.refresh_token_expire_time.unwrap().seconds <= deadline);
                session = next;
                refreshed += 1;
                assert!(refreshed < 20, "the session never ended");
            }
            Err(status) => break status,
        }
    };
    // ...until the session's absolute end.
    assert_eq!(ended.code(), Code::Unauthenticated);
    assert!(now_secs() >= started + 2, "ended early");
    assert!(refreshed >= 2, "refreshes worked meanwhile ({refreshed})");
}

#[tokio::test]
async fn concurrent_refreshes_within_the_grace_window_keep_the_family_later_reuse_revokes_it() {
    let harness = Harness::start_with(|settings| {
        settings.auth.refresh_reuse_grace_ms = 1_500;
    })
    .await;
    let mut client = harness.client().await;
    register(&mut client, "twotabs@example.com", pb::Role::Customer).await;
    let session = login(&mut client, "twotabs@example.com", "a good long password").await;

    // Two tabs (or a retry after a lost answer) refresh the same token at once: both succeed.
    let (mut tab1, mut tab2) = (client.clone(), client.clone());
    let (first, second) = tokio::join!(
        refresh(&mut tab1, &session.refresh_token),
        refresh(&mut tab2, &session.refresh_token),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_ne!(first.refresh_token, second.refresh_token);
    // Both branches stay usable: the family was not revoked.
    let first = refresh(&mut client, &first.refresh_token).await.unwrap();
    refresh(&mut client, &second.refresh_token).await.unwrap();
    who_am_i(&mut client, &first.access_token).await.unwrap();

    // A replay after the window is theft: the family dies.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let replay = refresh(&mut client, &session.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(
        replay.message().contains("already used"),
        "{}",
        replay.message()
    );
    let after = refresh(&mut client, &first.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "whole family revoked");
}

/// A client of the auth host whose connection comes from `local` (any 127/8 address reaches
/// the loopback listener): distinct client addresses with real sockets.
async fn client_from(harness: &Harness, local: &str) -> AuthServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(harness.host.endpoint())
        .unwrap()
        .local_address(Some(local.parse().unwrap()))
        .connect()
        .await
        .unwrap();
    AuthServiceClient::new(channel)
}

#[tokio::test]
async fn failed_logins_from_elsewhere_do_not_lock_the_owner_out_of_an_address_they_used() {
    let harness = Harness::start_with(|settings| {
        settings.auth.rate_limit = RateLimitConfig {
            window_secs: 600,
            login_per_account: 5,
            login_per_account_address: 5,
            ..RateLimitConfig::default()
        };
    })
    .await;
    let mut owner = client_from(&harness, "127.0.0.2").await;
    register(&mut owner, "victim@example.com", pb::Role::Seller).await;
    login(&mut owner, "victim@example.com", "a good long password").await;

    // An attacker guesses from another address until refused.
    let mut attacker = client_from(&harness, "127.0.0.3").await;
    let guess = |mut client: AuthServiceClient<Channel>| async move {
        client
            .login(pb::LoginRequest {
                email: "victim@example.com".into(),
                password: "guess guess guess".into(),
            })
            .await
            .unwrap_err()
    };
    let mut refused = None;
    for _ in 0..20 {
        let status = guess(attacker.clone()).await;
        if status.code() == Code::ResourceExhausted {
            refused = Some(status);
            break;
        }
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let refused = refused.expect("the attacker is rate limited");
    assert!(refused.metadata().get("retry-after").is_some());
    // A third, never-seen address shares the account's bucket for strangers: refused too.
    let stranger = client_from(&harness, "127.0.0.4").await;
    assert_eq!(guess(stranger).await.code(), Code::ResourceExhausted);

    // The owner, from the address they logged in from before, still gets in.
    let tokens = login(&mut owner, "victim@example.com", "a good long password").await;
    who_am_i(&mut owner, &tokens.access_token).await.unwrap();
    // Guessing from the owner's address is bounded too (its own pair bucket).
    let mut last = Code::Ok;
    for _ in 0..10 {
        last = guess(owner.clone()).await.code();
        if last == Code::ResourceExhausted {
            break;
        }
    }
    assert_eq!(last, Code::ResourceExhausted);
    // The attacker is still refused, whatever the owner did.
    assert_eq!(
        guess(attacker.clone()).await.code(),
        Code::ResourceExhausted
    );
    let _ = &mut attacker;
}

#[tokio::test]
async fn a_full_password_hashing_queue_is_answered_resource_exhausted_with_retry_after() {
    let harness = Harness::start_with(|settings| {
        // One hash at a time, one waiting; each hash costly enough that a burst overlaps.
        settings.auth.argon2 = storemesh_auth::config::Argon2Config {
            memory_kib: 16 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 1,
            max_queued: 1,
        };
    })
    .await;
    let client = harness.client().await;
    let attempts = (0..16).map(|index| {
        let mut client = client.clone();
        async move {
            client
                .login(pb::LoginRequest {
                    email: format!("nobody{index}@example.com"),
                    password: "whatever whatever".into(),
                })
                .await
                .unwrap_err()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let busy: Vec<_> = statuses
        .iter()
        .filter(|status| status.code() == Code::ResourceExhausted)
        .collect();
    assert!(
        !busy.is_empty(),
        "a burst beyond the queue is refused: {statuses:?}"
    );
    for status in &busy {
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    }
    // The ones admitted were checked (and failed) normally.
    assert!(
        statuses
            .iter()
            .any(|status| status.code() == Code::Unauthenticated)
    );
    // Capacity comes back: a real login succeeds after the burst.
    let mut client = harness.client().await;
    login(&mut client, ADMIN_EMAIL, ADMIN_PASSWORD).await;
}
