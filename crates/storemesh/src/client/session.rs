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

/// Whether `error` is the kernel refusing to open a symlink with `O_NOFOLLOW` (`ELOOP`).
fn is_symlink_refusal(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32)
}

pub fn load(path: &Path) -> anyhow::Result<Option<Session>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    // Never through a symlink: someone who could plant one would choose what we read.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) if is_symlink_refusal(&error) => {
            anyhow::bail!(
                "{} is a symbolic link; refusing to read a session through it",
                path.display()
            )
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not a valid session file", path.display()))
}

/// Makes sure `dir` exists, belongs to this user and is private (0700): created so when
/// missing; an existing one that others can enter is tightened when it is ours and refused when
/// it is not (whoever owns it could swap the session file).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};

    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let metadata =
        std::fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    if !metadata.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    if metadata.uid() != nix::unistd::getuid().as_raw() {
        anyhow::bail!(
            "{} belongs to another user; refusing to keep a session there",
            dir.display()
        );
    }
    if metadata.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Writes the session atomically into a private directory: a new temporary file created
/// exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600: it holds bearer tokens), then renamed
/// over the session file. A symlink at the session path is refused, never followed.
pub fn save(path: &Path, session: &Session) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    private_dir(dir)?;
    if std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
        anyhow::bail!(
            "{} is a symbolic link; refusing to write the session through it (remove it first)",
            path.display()
        );
    }
    let mut random = [0_u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
    let suffix: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let temporary = dir.join(format!(".session-{}-{suffix}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    let written = serde_json::to_vec_pretty(session)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(file.write_all(&bytes)?))
        .and_then(|()| Ok(file.sync_all()?))
        .and_then(|()| {
            std::fs::rename(&temporary, path)
                .with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
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

    /// Issue 20, item 10: a symlink planted at the session path is neither followed nor
    /// replaced; the file is 0600 in a 0700 directory, and an open directory is tightened.
    #[test]
    fn a_planted_symlink_is_refused_and_the_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("storemesh");
        let path = private.join("session.json");
        save(&path, &session()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&private), 0o700);
        assert_eq!(mode(&path), 0o600);

        // Someone points the session path at a file of their choosing.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "do not touch").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let refused = save(&path, &session()).unwrap_err().to_string();
        assert!(refused.contains("symbolic link"), "{refused}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "do not touch");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink(),
            "left as it was"
        );
        let refused = load(&path).unwrap_err().to_string();
        assert!(refused.contains("symbolic link"), "{refused}");
        std::fs::remove_file(&path).unwrap();

        // A directory others may enter is made private before the session goes in.
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
        save(&path, &session()).unwrap();
        assert_eq!(mode(&private), 0o700);
        assert_eq!(mode(&path), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&private)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["session.json"]);
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
