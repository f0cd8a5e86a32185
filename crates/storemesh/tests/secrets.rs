//! Issue 20, item 10: no secret reaches a log. Every process that connects to Redis is started
//! with a Redis URL carrying a password, against a port where nothing listens (and against a
//! Redis that refuses the password): each fails at start, and nothing it prints contains the
//! password.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use storemesh_testkit::{RedisServer, free_port};

const PASSWORD: &str = "hunter2-hunter2";

/// Runs `storemesh args…` with `redis_url`; returns its exit success and everything it printed.
fn run(args: &[&str], redis_url: &str) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_storemesh"));
    command
        .args(args)
        .env("STOREMESH_REDIS__URL", redis_url)
        .env("STOREMESH_REDIS__CONNECT_TIMEOUT_MS", "500")
        .env("STOREMESH_TELEMETRY__FILTER", "debug")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null());
    // Own free ports, so nothing else on the machine matters.
    for service in ["AUTH", "CATALOG", "STORAGE", "DISPATCHER"] {
        for key in ["LISTEN", "ADMIN_LISTEN"] {
            command.env(
                format!("STOREMESH_{service}__SERVER__{key}"),
                format!("127.0.0.1:{}", free_port().unwrap()),
            );
        }
    }
    let data = tempfile::tempdir().unwrap();
    command
        .env("STOREMESH_AUTH__KEYS_DIR", data.path().join("keys"))
        .env("STOREMESH_STORAGE__DATA_DIR", data.path().join("objects"));
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("exits within 60 s")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn redis_passwords_never_reach_the_output() {
    let closed = free_port().unwrap();
    // A real Redis with a password the URL gets wrong.
    let redis = RedisServer::start().unwrap();
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("the-right-one-0123")
        .query(&mut connection)
        .unwrap();
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("redis://storemesh:{PASSWORD}@127.0.0.1:{closed}/0"),
        format!("redis://:{PASSWORD}@127.0.0.1:{port}"),
    ] {
        for args in [
            &["serve", "auth"][..],
            &["serve", "catalog"],
            &["serve", "storage"],
            &["serve", "dispatcher"],
            &["events", "dlq", "list"],
        ] {
            let (succeeded, output) = run(args, &url);
            assert!(!succeeded, "{args:?} with {url}: started?\n{output}");
            assert!(
                !output.contains(PASSWORD),
                "{args:?} printed the Redis password:\n{output}"
            );
        }
    }
}
