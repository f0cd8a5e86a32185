//! Auth: token verification throughput and `Login` latency at the default Argon2id cost.
//!
//! - `token/verify_jwt` vs the baseline `token/ed25519_verify_only` (the bare signature check
//!   over the same bytes): the ratio is the cost of JWT parsing and claim validation.
//! - `login/grpc_login` (a real auth service over gRPC with a real redis-server) vs the
//!   baseline `login/argon2id_verify` (the password hash check alone, same parameters): the
//!   ratio is what gRPC, Redis and token signing add to the unavoidable hash.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::Verifier as _;
use storemesh_auth::config::{Argon2Config, RateLimitConfig};
use storemesh_auth::passwords::PasswordHasher;
use storemesh_auth::{AuthConfig, AuthSettings};
use storemesh_proto::auth::v1 as pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_testkit::{RedisServer, RunningHost};
use storemesh_tokens::{Claims, Role, SigningKey, Verifier, VerifierSettings};

fn token_verification(c: &mut Criterion) {
    let seed = [7_u8; 32];
    let key = SigningKey::from_seed(&seed).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key
        .sign(&Claims {
            iss: "storemesh".into(),
            aud: "storemesh".into(),
            sub: "01JBENCHUSER0000000000000".into(),
            role: Role::Seller,
            scope: String::new(),
            iat: now,
            exp: now + 3600,
            jti: "01JBENCHTOKEN000000000000".into(),
        })
        .unwrap();
    let verifier = Verifier::new(
        VerifierSettings {
            issuer: "storemesh".into(),
            audience: "storemesh".into(),
            leeway_secs: 5,
        },
        &[key.public().clone()],
    )
    .unwrap();

    // Baseline: the Ed25519 check alone on the token's signing input.
    let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = dalek.verifying_key();
    let (signing_input, signature_b64) = token.rsplit_once('.').unwrap();
    let signature_bytes = URL_SAFE_NO_PAD.decode(signature_b64).unwrap();
    let signature = ed25519_dalek::Signature::from_slice(&signature_bytes).unwrap();
    assert!(public.verify(signing_input.as_bytes(), &signature).is_ok());

    let mut group = c.benchmark_group("token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ed25519_verify_only", |b| {
        b.iter(|| public.verify(signing_input.as_bytes(), &signature).unwrap());
    });
    group.bench_function("verify_jwt", |b| {
        b.iter(|| verifier.verify(&token).unwrap())
    });
    group.finish();
}

fn login_latency(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    // Smoke mode only proves the code runs: the cheapest hash instead of the default cost.
    let argon2 = if storemesh_benches::smoke() {
        storemesh_auth::testing::cheap_argon2()
    } else {
        Argon2Config::default()
    };
    let settings = AuthSettings {
        auth: AuthConfig {
            server: storemesh_runtime::ServerConfig::default(),
            keys_dir: keys.path().to_path_buf(),
            argon2,
            // The benchmark logs in thousands of times; limits are tested elsewhere.
            rate_limit: RateLimitConfig {
                login_per_account: u64::MAX / 2,
                login_per_account_address: u64::MAX / 2,
                login_per_address: u64::MAX / 2,
                ..RateLimitConfig::default()
            },
            ..AuthConfig::default()
        },
        redis: RedisConfig {
            url: redis.url(),
            ..RedisConfig::default()
        },
        tokens: TokensConfig::default(),
    };
    let (host, client) = runtime.block_on(async {
        let host = RunningHost::spawn(storemesh_auth::build(settings).await.unwrap()).unwrap();
        let mut client = AuthServiceClient::new(host.channel().await.unwrap());
        client
            .register(pb::RegisterRequest {
                email: "bench@example.com".into(),
                password: "benchmark password".into(),
                display_name: "Bench".into(),
                role: pb::Role::Seller.into(),
            })
            .await
            .unwrap();
        (host, client)
    });
    let hasher = PasswordHasher::new(argon2).unwrap();
    let stored = runtime
        .block_on(hasher.hash("benchmark password".into()))
        .unwrap();

    let mut group = c.benchmark_group("login");
    if !storemesh_benches::smoke() {
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(10));
    }
    group.bench_function("argon2id_verify", |b| {
        b.to_async(&runtime).iter(|| async {
            assert!(
                hasher
                    .verify("benchmark password".into(), Some(stored.clone()))
                    .await
                    .unwrap()
            );
        });
    });
    group.bench_function("grpc_login", |b| {
        b.to_async(&runtime).iter(|| {
            let mut client = client.clone();
            async move {
                client
                    .login(pb::LoginRequest {
                        email: "bench@example.com".into(),
                        password: "benchmark password".into(),
                    })
                    .await
                    .unwrap()
            }
        });
    });
    group.finish();
    runtime.block_on(host.stop());
}

/// `STOREMESH_BENCH_SMOKE=1`: the fewest samples criterion allows, briefly.
fn criterion_config() -> Criterion {
    if storemesh_benches::smoke() {
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300))
    } else {
        Criterion::default()
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = token_verification, login_latency
}
criterion_main!(benches);
