//! The signing keyring: the current Ed25519 key and the previous ones still published.
//!
//! On disk (`auth.keys_dir`):
//! - `current.pem`: the signing key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519` makes one).
//! - `previous/<retired-unix-seconds>.pem`: rotated-out keys. They stay in the JWKS until
//!   `retired + access/service token lifetime` has passed, so tokens they signed keep verifying.
//!
//! [`rotate`] moves `current.pem` to `previous/` and writes a new one (`storemesh auth
//! rotate-key`, then restart auth; verifiers pick the new `kid` up on first sight).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use storemesh_tokens::{PublicJwk, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path} is missing and auth.generate_missing_key is off")]
    Missing { path: PathBuf },
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 PKCS#8 PEM key: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A previous key and the time after which nothing it signed can be valid.
pub struct PreviousKey {
    pub public: PublicJwk,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
}

pub struct Keyring {
    pub current: SigningKey,
    pub previous: Vec<PreviousKey>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

fn read_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    let key =
        ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|error| KeyError::Invalid {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    SigningKey::from_seed(&key.to_bytes()).map_err(|error| KeyError::Invalid {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

/// Writes a new random key to `path` (mode 0600, via a temporary file and a rename, so a crash
/// never leaves half a key).
fn write_new_key(path: &Path) -> Result<(), KeyError> {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|error| KeyError::Invalid {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temporary = path.with_extension("pem.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(io(&temporary))?;
        file.write_all(pem.as_bytes()).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
    }
    std::fs::rename(&temporary, path).map_err(io(path))
}

impl Keyring {
    /// Loads the keyring; tokens live at most `max_token_ttl_secs`.
    pub fn load(dir: &Path, generate: bool, max_token_ttl_secs: u64) -> Result<Self, KeyError> {
        let current_path = dir.join("current.pem");
        if !current_path.exists() {
            if !generate {
                return Err(KeyError::Missing { path: current_path });
            }
            write_new_key(&current_path)?;
            tracing::info!(path = %current_path.display(), "generated a new signing key");
        }
        let current = read_key(&current_path)?;
        let mut previous = Vec::new();
        let previous_dir = dir.join("previous");
        if previous_dir.is_dir() {
            let now = now_secs();
            for entry in std::fs::read_dir(&previous_dir).map_err(io(&previous_dir))? {
                let path = entry.map_err(io(&previous_dir))?.path();
                let Some(retired) = path
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .and_then(|stem| stem.parse::<u64>().ok())
                else {
                    continue;
                };
                // One extra minute covers verifier clock skew.
                let not_after = retired + max_token_ttl_secs + 60;
                if not_after <= now {
                    continue;
                }
                let key = read_key(&path)?;
                previous.push(PreviousKey {
                    public: key.public().clone(),
                    not_after,
                });
            }
        }
        previous.sort_by_key(|key| std::cmp::Reverse(key.not_after));
        Ok(Self { current, previous })
    }

    /// Every key a verifier should accept: current first, then previous, newest first.
    pub fn public_keys(&self) -> Vec<PublicJwk> {
        std::iter::once(self.current.public().clone())
            .chain(self.previous.iter().map(|key| key.public.clone()))
            .collect()
    }
}

/// Retires the current key and creates a new one. Returns the new key's id.
pub fn rotate(dir: &Path) -> Result<String, KeyError> {
    let current_path = dir.join("current.pem");
    if current_path.exists() {
        let previous_dir = dir.join("previous");
        std::fs::create_dir_all(&previous_dir).map_err(io(&previous_dir))?;
        let retired_path = previous_dir.join(format!("{}.pem", now_secs()));
        std::fs::rename(&current_path, &retired_path).map_err(io(&retired_path))?;
    }
    write_new_key(&current_path)?;
    Ok(read_key(&current_path)?.kid().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_persists_and_rotation_keeps_the_old_key_published() {
        let dir = tempfile::tempdir().unwrap();
        let first = Keyring::load(dir.path(), true, 900).unwrap();
        let again = Keyring::load(dir.path(), false, 900).unwrap();
        assert_eq!(
            first.current.kid(),
            again.current.kid(),
            "restart keeps the key"
        );

        let new_kid = rotate(dir.path()).unwrap();
        let rotated = Keyring::load(dir.path(), false, 900).unwrap();
        assert_eq!(rotated.current.kid(), new_kid);
        let kids: Vec<String> = rotated.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, [new_kid, first.current.kid().to_owned()]);

        // Once every token of the old key has expired it is no longer published.
        let expired = Keyring::load(dir.path(), false, 0).unwrap();
        assert_eq!(
            expired.public_keys().len(),
            2,
            "still inside the skew minute"
        );
    }

    #[test]
    fn missing_key_without_generation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Keyring::load(dir.path(), false, 900),
            Err(KeyError::Missing { .. })
        ));
    }

    #[test]
    fn a_corrupt_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("current.pem"), "not a key").unwrap();
        assert!(matches!(
            Keyring::load(dir.path(), true, 900),
            Err(KeyError::Invalid { .. })
        ));
    }
}
