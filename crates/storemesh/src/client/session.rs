//! The signed-in session of the command-line client: the tokens from `storemesh login`, kept
//! in a file readable only by its owner so later commands can call the mesh as that user.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Refresh the access token when it has less than this left, so a command started just before
/// expiry does not fail half-way.
const REFRESH_MARGIN_SECS: i64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The gateway the tokens were issued through; a session is not reused for another one.
    pub gateway: String,
    pub user_id: String,
    pub email: String,
    pub role: String,
    pub access_token: String,
    pub access_expires_unix: i64,
    pub refresh_token: String,
    pub refresh_expires_unix: i64,
}

impl Session {
    pub fn access_is_fresh(&self, now_unix: i64) -> bool {
        self.access_expires_unix - REFRESH_MARGIN_SECS > now_unix
    }

    pub fn refresh_is_valid(&self, now_unix: i64) -> bool {
        self.refresh_expires_unix > now_unix
    }
}

/// Where the session lives: `--session-file`/`STOREMESH_SESSION`, else
/// `$XDG_CONFIG_HOME/storemesh/session.json`, else `~/.config/storemesh/session.json`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("storemesh").join("session.json")
}

pub fn load(path: &Path) -> anyhow::Result<Option<Session>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a valid session file", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the session atomically (temporary file + rename) with mode 0600: it holds bearer
/// tokens.
pub fn save(path: &Path, session: &Session) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = dir.join(format!(".session-{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(session)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            gateway: "http://127.0.0.1:50050".into(),
            user_id: "u1".into(),
            email: "a@b.c".into(),
            role: "seller".into(),
            access_token: "a".into(),
            access_expires_unix: 1_000,
            refresh_token: "r".into(),
            refresh_expires_unix: 5_000,
        }
    }

    #[test]
    fn freshness_keeps_a_margin() {
        let session = session();
        assert!(session.access_is_fresh(900));
        assert!(!session.access_is_fresh(971));
        assert!(session.refresh_is_valid(4_999));
        assert!(!session.refresh_is_valid(5_000));
    }

    #[test]
    fn saved_session_round_trips_with_owner_only_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("session.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &session()).unwrap();
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded.refresh_token, "r");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(load(&path).unwrap().is_none());
    }
}
