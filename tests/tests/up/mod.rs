//! `storemesh up` as a user runs it, for the end-to-end tests: every service a child process
//! on free ports, the real `spin.toml` on the embedded edge runtime, and the client commands.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use storemesh_testkit::free_port;
use storemesh_testkit::process::{OutputLines, child_pid, terminate, try_child_pid};
use tonic::transport::Channel;

/// The `storemesh` binary cargo built next to this test (`target/<profile>/storemesh`).
pub fn storemesh_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("storemesh");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p storemesh`, or run the whole workspace's tests)",
        bin.display()
    );
    bin
}

pub fn address() -> String {
    format!("127.0.0.1:{}", free_port().unwrap())
}

/// One whole system at a time: each test runs seven processes, and two machines' worth of
/// them on two cores would measure the machine rather than Storemesh.
static ONE_SYSTEM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running `storemesh up` on free ports, with its output collected.
pub struct Up {
    _exclusive: std::sync::MutexGuard<'static, ()>,
    pub child: Child,
    pub output: OutputLines,
    pub data: tempfile::TempDir,
    pub gateway: String,
    pub edge: String,
    pub redis_port: u16,
}

impl Drop for Up {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
    }
}

impl Up {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `own_edge`, `up --edge-url` at a free address: nothing serves the functions there
    /// until the test starts its own edge (as a developer starts `spin up`).
    pub fn start_with(own_edge: bool) -> Self {
        // A test that failed while holding the lock poisons it; the next one may still run.
        let exclusive = ONE_SYSTEM_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // reqwest is built without a bundled TLS provider (as in the services).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data = tempfile::tempdir().unwrap();
        let redis_port = free_port().unwrap();
        let gateway = address();
        let edge = address();
        let mut envs: Vec<(String, String)> = vec![
            ("STOREMESH_GATEWAY__SERVER__LISTEN".into(), gateway.clone()),
            ("STOREMESH_EDGE__LISTEN".into(), edge.clone()),
            ("STOREMESH_EDGE__ADMIN_LISTEN".into(), address()),
            (
                "STOREMESH_EDGE__MANIFEST".into(),
                repo_root().join("spin.toml").display().to_string(),
            ),
        ];
        // Outages in these tests (a killed storage or Redis) can outlast the default three
        // retries; the dispatcher keeps trying for about a minute, and the reconciler (the
        // safety net for events that still ran out of attempts) looks after one minute
        // instead of ten.
        envs.extend([
            ("STOREMESH_DISPATCHER__MAX_ATTEMPTS".into(), "20".into()),
            ("STOREMESH_DISPATCHER__MAX_BACKOFF_MS".into(), "4000".into()),
            (
                "STOREMESH_DISPATCHER__RECONCILER__STUCK_AFTER_SECS".into(),
                "60".into(),
            ),
        ]);
        for service in ["AUTH", "CATALOG", "STORAGE", "DISPATCHER"] {
            envs.push((format!("STOREMESH_{service}__SERVER__LISTEN"), address()));
        }
        for service in ["AUTH", "CATALOG", "STORAGE", "GATEWAY", "DISPATCHER"] {
            envs.push((
                format!("STOREMESH_{service}__SERVER__ADMIN_LISTEN"),
                address(),
            ));
        }
        let mut command = Command::new(storemesh_bin());
        command.arg("up");
        if own_edge {
            command.args(["--edge-url", &format!("http://{edge}")]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data.path())
            .args(["--redis-port", &redis_port.to_string()])
            .args(["--ready-timeout", "600", "--no-build"])
            // Compiled components shared with the other system tests: compile once per build.
            .env(
                "STOREMESH_EDGE__CACHE_DIR",
                std::env::temp_dir().join("storemesh-system-tests-edge-cache"),
            )
            .current_dir(repo_root())
            .env_remove("REDIS_URL")
            .envs(envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = OutputLines::capture(&mut child);
        let mut up = Self {
            _exclusive: exclusive,
            child,
            output,
            data,
            gateway: format!("http://{gateway}"),
            edge: format!("http://{edge}"),
            redis_port,
        };
        up.wait_for("Storemesh is up.", Duration::from_secs(900));
        up
    }

    pub fn log(&self) -> String {
        self.output.tail(200)
    }

    /// Waits for an output line containing `needle` (printed after this call or before).
    pub fn wait_for(&mut self, needle: &str, within: Duration) {
        if let Err(error) = self.output.wait_for(&mut self.child, needle, within) {
            panic!("storemesh up: {error}");
        }
    }

    /// Runs a client command as the user whose session lives in `session`.
    pub fn cli(&self, session: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(storemesh_bin())
            .args(args)
            .env("STOREMESH_GATEWAY", &self.gateway)
            .env("STOREMESH_EDGE_URL", &self.edge)
            .env("STOREMESH_SESSION", session)
            .env(
                "REDIS_URL",
                format!("redis://127.0.0.1:{}", self.redis_port),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    pub fn cli_json(&self, session: &Path, args: &[&str], stdin: Option<&str>) -> Value {
        let output = self.cli(session, args, stdin);
        assert!(
            output.status.success(),
            "storemesh {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "storemesh {args:?} printed no JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// SIGKILLs `up`'s child running `serve <service>` (or redis-server) and waits until `up`
    /// has started it again.
    pub fn kill_child(&mut self, service: &str) {
        let pid = child_pid(self.child.id(), service);
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for(&format!("{service:>8} | exited"), Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_child_pid(self.child.id(), service).is_none_or(|new| new == pid) {
            assert!(
                Instant::now() < deadline,
                "{service} not restarted:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.gateway.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
