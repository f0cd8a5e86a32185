//! `storemesh serve edge` as a user starts it from an application directory, with the defaults:
//! the relative `spin.toml` and the relative compiled-component cache (`data/edge/cache`), which
//! wasmtime accepts only as an absolute path, so configuration resolves relative paths against
//! the working directory.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storemesh_testkit::free_port;
use storemesh_testkit::process::{OutputLines, terminate};

fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn serve_edge_starts_with_the_default_relative_paths() {
    let app = tempfile::tempdir().unwrap();
    let hello = storemesh_edge::testing::fixture("edge-fixture-hello").unwrap();
    std::os::unix::fs::symlink(hello, app.path().join("hello.wasm")).unwrap();
    std::fs::write(
        app.path().join("spin.toml"),
        "spin_manifest_version = 2\n\
         [application]\nname = \"defaults\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n\
         [component.hello]\nsource = \"hello.wasm\"\n",
    )
    .unwrap();
    // Only the ports are set (no test may rely on a default port being free); the manifest and
    // the cache are the defaults, relative to the working directory.
    let (port, admin_port) = (free_port().unwrap(), free_port().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_storemesh"))
        .args(["serve", "edge"])
        .current_dir(app.path())
        .env("STOREMESH_EDGE__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "STOREMESH_EDGE__ADMIN_LISTEN",
            format!("127.0.0.1:{admin_port}"),
        )
        .env_remove("STOREMESH_EDGE__CACHE_DIR")
        .env_remove("STOREMESH_EDGE__MANIFEST")
        .env_remove("STOREMESH_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = OutputLines::capture(&mut child);
    let deadline = Instant::now() + Duration::from_secs(300);
    let answer = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve edge exited ({status}):\n{}", output.tail(50));
        }
        if let Some(answer) = get(port, "/anything") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "serve edge did not answer:\n{}",
            output.tail(50)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nhello\r\n"), "{answer}");
    let cache = app.path().join("data/edge/cache");
    assert!(
        std::fs::read_dir(&cache).is_ok_and(|mut entries| entries.next().is_some()),
        "the compiled component is cached under the working directory: {}",
        output.tail(50)
    );
    let status = terminate(&mut child, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        output.tail(50)
    );
}
