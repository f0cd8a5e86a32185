use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that names the `redis-server` binary (default: found on `PATH`).
pub const REDIS_SERVER_ENV: &str = "STOREMESH_REDIS_SERVER";

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error(
        "cannot run `{binary}` ({source}); install it (`apt-get install redis-server`) or set {REDIS_SERVER_ENV}"
    )]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis-server did not answer PING on port {port} within {waited:?}")]
    NotReady { port: u16, waited: Duration },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// A real `redis-server` process owned by a test. It listens on loopback only, keeps its files
/// in a private temporary directory, and is killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    append_only: bool,
}

impl RedisServer {
    /// Starts an in-memory server (no persistence) on a free port.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(false)
    }

    /// Starts a server with the append-only file on, so [`RedisServer::restart`] keeps data.
    pub fn start_persistent() -> Result<Self, RedisServerError> {
        Self::start_with(true)
    }

    fn start_with(append_only: bool) -> Result<Self, RedisServerError> {
        let mut last_error = None;
        // The free port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = crate::free_port()?;
            let mut server = Self {
                child: None,
                port,
                dir: tempfile::Builder::new()
                    .prefix("storemesh-redis-")
                    .tempdir()?,
                append_only,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error @ RedisServerError::Spawn { .. }) => return Err(error),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(RedisServerError::NotReady {
            port: 0,
            waited: Duration::ZERO,
        }))
    }

    fn spawn(&mut self) -> Result<(), RedisServerError> {
        let binary = std::env::var(REDIS_SERVER_ENV).unwrap_or_else(|_| "redis-server".into());
        let port = self.port.to_string();
        let mut command = Command::new(&binary);
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.append_only { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|source| RedisServerError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        self.child = Some(child);
        let waited = Duration::from_secs(10);
        let deadline = Instant::now() + waited;
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                break; // exited, e.g. the port was taken
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(RedisServerError::NotReady {
            port: self.port,
            waited,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (AOF files live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process (SIGKILL): clients see a dead server until [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (with AOF, data survives).
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.kill();
        self.spawn()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some() && ping(self.port)
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0_u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_restarts_with_data() {
        let mut server = RedisServer::start_persistent().unwrap();
        assert!(server.is_running());
        let client = redis::Client::open(server.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query::<()>(&mut connection)
            .unwrap();
        server.restart().unwrap();
        let mut connection = client.get_connection().unwrap();
        let value: String = redis::cmd("GET").arg("k").query(&mut connection).unwrap();
        assert_eq!(value, "v");
        server.kill();
        assert!(!server.is_running());
    }
}
