//! Argon2id password and client-secret hashing, run on the blocking pool so a burst of logins
//! never stalls the async workers serving other calls.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use storemesh_runtime::{ServiceError, ServiceResult};

use crate::config::Argon2Config;

#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Arc<Argon2<'static>>,
    /// A hash of a random secret, verified against when an account does not exist so that
    /// "no such account" takes as long as "wrong password" (no enumeration by timing).
    decoy: Arc<String>,
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
        Ok(Self {
            argon2: Arc::new(argon2),
            decoy: Arc::new(decoy),
        })
    }

    /// A PHC-format Argon2id hash of `secret` with a fresh random salt.
    pub async fn hash(&self, secret: String) -> ServiceResult<String> {
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
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
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&stored)
                .map_err(|error| ServiceError::internal(format!("stored hash: {error}")))?;
            let matches = argon2.verify_password(secret.as_bytes(), &parsed).is_ok();
            Ok(real && matches)
        })
        .await
        .map_err(ServiceError::internal)?
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
}
