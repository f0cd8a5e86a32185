//! Argon2id password and client-secret hashing, run on the blocking pool so a burst of logins
//! never stalls the async workers serving other calls.
//!
//! Three things keep the cost bounded:
//! - At most `argon2.max_concurrent` hashes (default: one per core) run at once. Each Argon2id
//!   hash holds its whole memory cost (19 MiB by default); unbounded, a burst on the 512-thread
//!   blocking pool grew auth to ~1 GiB, and the hashes compete for the same cores anyway.
//! - At most `argon2.max_queued` more wait for a turn; beyond that a call is refused at once
//!   with `RESOURCE_EXHAUSTED` and `retry-after` ([`HasherBusy`]), so a flood of logins is
//!   answered quickly instead of piling up calls (and their connections and streams) that would
//!   only time out in the queue.
//! - Service-account secrets that verified once are remembered (see [`VerifiedSecrets`]), so
//!   the thumbnail function's token request per delivery costs an HMAC, not an Argon2id hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use storemesh_runtime::{ServiceError, ServiceResult};

use crate::config::Argon2Config;

/// What a caller refused by a full hashing queue is told to wait.
pub const HASHER_BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The hashing queue is full.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks in progress; retry later")]
pub struct HasherBusy;

impl From<HasherBusy> for ServiceError {
    fn from(busy: HasherBusy) -> Self {
        ServiceError::ResourceExhausted {
            message: busy.to_string(),
            retry_after: Some(HASHER_BUSY_RETRY_AFTER),
        }
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Arc<Argon2<'static>>,
    /// A hash of a random secret, verified against when an account does not exist so that
    /// "no such account" takes as long as "wrong password" (no enumeration by timing).
    decoy: Arc<String>,
    /// Bounds the hashes running at once (and so their memory).
    permits: Arc<Semaphore>,
    /// Bounds the hashes running or waiting: `max_concurrent + max_queued` permits, taken
    /// without waiting.
    admitted: Arc<Semaphore>,
}

/// A turn at hashing: admitted to the queue, then one of the running slots.
struct Turn {
    _admitted: tokio::sync::OwnedSemaphorePermit,
    _running: tokio::sync::OwnedSemaphorePermit,
}

impl PasswordHasher {
    pub fn new(config: Argon2Config) -> Result<Self, argon2::Error> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let decoy_secret = uuid::Uuid::new_v4().to_string();
        let salt = SaltString::generate(&mut OsRng);
        let decoy = argon2
            .hash_password(decoy_secret.as_bytes(), &salt)
            .map_err(|_| argon2::Error::OutputTooShort)?
            .to_string();
        let running = Self::concurrency(config.max_concurrent);
        let queued = usize::try_from(config.max_queued).unwrap_or(usize::MAX);
        Ok(Self {
            argon2: Arc::new(argon2),
            decoy: Arc::new(decoy),
            permits: Arc::new(Semaphore::new(running)),
            admitted: Arc::new(Semaphore::new(running.saturating_add(queued))),
        })
    }

    /// Hashes allowed to run at once: `configured`, or one per core when 0. Argon2id is
    /// CPU-bound, so more at once only adds memory, not throughput.
    pub fn concurrency(configured: u32) -> usize {
        match usize::try_from(configured) {
            Ok(0) | Err(_) => std::thread::available_parallelism().map_or(2, |cores| cores.get()),
            Ok(configured) => configured,
        }
    }

    /// Waits for a running slot if the queue has room; refuses at once when it has none.
    async fn permit(&self) -> ServiceResult<Turn> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| HasherBusy)?;
        let running = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(ServiceError::internal)?;
        Ok(Turn {
            _admitted: admitted,
            _running: running,
        })
    }

    /// A PHC-format Argon2id hash of `secret` with a fresh random salt.
    pub async fn hash(&self, secret: String) -> ServiceResult<String> {
        let argon2 = self.argon2.clone();
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(secret.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| ServiceError::internal(error.to_string()))
        })
        .await
        .map_err(ServiceError::internal)?
    }

    /// Whether `secret` matches `stored` (a PHC string). `None` verifies against the decoy and
    /// always answers `false`, in the same time.
    pub async fn verify(&self, secret: String, stored: Option<String>) -> ServiceResult<bool> {
        let argon2 = self.argon2.clone();
        let real = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.decoy.as_ref().clone());
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let parsed = PasswordHash::new(&stored)
                .map_err(|error| ServiceError::internal(format!("stored hash: {error}")))?;
            let matches = argon2.verify_password(secret.as_bytes(), &parsed).is_ok();
            Ok(real && matches)
        })
        .await
        .map_err(ServiceError::internal)?
    }
}

type HmacSha256 = Hmac<Sha256>;

/// How long a verified service-account secret is remembered. Removing an account takes effect
/// at once (its stored hash is looked up first); this only bounds how long a process trusts
/// its memory of one Argon2id verification.
pub const VERIFIED_SECRET_TTL: Duration = Duration::from_secs(10 * 60);

/// Service-account secrets that passed an Argon2id verification, remembered in this process
/// for `ttl` as an HMAC under a per-process random key.
///
/// The tag covers the stored hash as well as the secret, so rotating a secret (a new stored
/// hash) or presenting a different secret misses and goes through Argon2id again; a wrong
/// secret never gets cheap guesses. Nothing here is persisted or shared: Redis keeps only the
/// Argon2id hash, so a leaked dump is as hard to attack as before. One entry per service
/// account (entries are only made for accounts that exist), so the map stays small.
pub struct VerifiedSecrets {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<String, ([u8; 32], Instant)>>,
}

impl VerifiedSecrets {
    pub fn new(ttl: Duration) -> Self {
        Self {
            key: rand::random(),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `None` cannot happen (HMAC takes keys of any length); callers then treat the secret as
    /// not remembered, which only costs an Argon2id verification.
    fn tag(&self, client_id: &str, stored_hash: &str, secret: &str) -> Option<HmacSha256> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).ok()?;
        for part in [client_id, stored_hash, secret] {
            // Length-prefixed so that no two different triples hash the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        Some(mac)
    }

    /// Whether this exact secret verified against this exact stored hash within `ttl`.
    pub fn contains(&self, client_id: &str, stored_hash: &str, secret: &str) -> bool {
        let remembered = match self.entries.lock() {
            Ok(entries) => entries.get(client_id).copied(),
            Err(_) => None,
        };
        match remembered {
            Some((tag, at)) if at.elapsed() < self.ttl => self
                .tag(client_id, stored_hash, secret)
                .is_some_and(|mac| mac.verify_slice(&tag).is_ok()), // constant-time comparison
            _ => false,
        }
    }

    /// Remembers a secret that just passed Argon2id verification.
    pub fn insert(&self, client_id: &str, stored_hash: &str, secret: &str) {
        let Some(mac) = self.tag(client_id, stored_hash, secret) else {
            return;
        };
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(client_id.to_owned(), (tag, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            ..Argon2Config::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_are_argon2id_with_salt() {
        let hasher = cheap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert_ne!(
            hash,
            hasher.hash("correct horse".into()).await.unwrap(),
            "salted"
        );
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("anything".into(), None).await.unwrap());
    }

    #[test]
    fn verified_secrets_match_only_the_same_secret_and_hash_within_ttl() {
        let cache = VerifiedSecrets::new(Duration::from_secs(60));
        assert!(!cache.contains("thumbnail", "$argon2id$a", "s3cret-s3cret-s3cret"));
        cache.insert("thumbnail", "$argon2id$a", "s3cret-s3cret-s3cret");
        assert!(cache.contains("thumbnail", "$argon2id$a", "s3cret-s3cret-s3cret"));
        assert!(!cache.contains("thumbnail", "$argon2id$a", "s3cret-s3cret-s3creT"));
        assert!(
            !cache.contains("thumbnail", "$argon2id$b", "s3cret-s3cret-s3cret"),
            "a rotated secret (new stored hash) must be verified again"
        );
        assert!(!cache.contains("catalog", "$argon2id$a", "s3cret-s3cret-s3cret"));
        // Length prefixes: moving bytes between fields does not collide.
        assert!(!cache.contains("thumbnail", "$argon2id$as", "3cret-s3cret-s3cret"));

        let expired = VerifiedSecrets::new(Duration::ZERO);
        expired.insert("thumbnail", "$argon2id$a", "s3cret-s3cret-s3cret");
        assert!(!expired.contains("thumbnail", "$argon2id$a", "s3cret-s3cret-s3cret"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hashes_are_capped_at_the_core_count() {
        let hasher = cheap();
        let cap = PasswordHasher::concurrency(0);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Occupy every permit, then check a further hash has to wait for one.
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(hasher.permit().await.unwrap());
        }
        let waiting = {
            let hasher = hasher.clone();
            let started = started.clone();
            tokio::spawn(async move {
                let hash = hasher.hash("queued".into()).await;
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                hash
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(held);
        let hash = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
    }

    /// Beyond the running slots and the queue, a hash is refused at once (not queued without
    /// bound): `RESOURCE_EXHAUSTED` with a retry-after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_with_retry_after() {
        let hasher = PasswordHasher::new(Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 1,
            max_queued: 1,
        })
        .unwrap();
        let running = hasher.permit().await.unwrap();
        let queued = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash("queued".into()).await })
        };
        // Wait until the queued hash holds its admission, then one more is one too many.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hasher.admitted.available_permits() > 0 {
            assert!(
                Instant::now() < deadline,
                "the queued hash never got admitted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused =
            tokio::time::timeout(Duration::from_secs(10), hasher.verify("third".into(), None))
                .await
                .expect("refused without waiting for a slot")
                .unwrap_err();
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap(),
            "1"
        );
        drop(running);
        let hash = tokio::time::timeout(Duration::from_secs(10), queued)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        // Capacity is back.
        hasher.verify("again".into(), None).await.unwrap();
    }
}
