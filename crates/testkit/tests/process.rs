//! The runtime as a process: SIGTERM drains in-flight calls, a stuck call cannot hold shutdown
//! past the grace period, and bad configuration fails at start naming the key.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use storemesh_testkit::echo::EchoServiceClient;
use storemesh_testkit::echo::pb::EchoRequest;

struct EchoProcess {
    child: Child,
    grpc: String,
    admin: String,
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_echo(envs: &[(&str, &str)]) -> EchoProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storemesh-echo"))
        .env("STOREMESH_ECHO__SERVER__LISTEN", "127.0.0.1:0")
        .env("STOREMESH_ECHO__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut grpc = None;
    let mut admin = None;
    for part in line.split_whitespace() {
        if let Some(value) = part.strip_prefix("grpc=") {
            grpc = Some(value.to_owned());
        }
        if let Some(value) = part.strip_prefix("admin=") {
            admin = Some(value.to_owned());
        }
    }
    EchoProcess {
        child,
        grpc: grpc.unwrap_or_else(|| panic!("no address in {line:?}")),
        admin: admin.unwrap(),
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn client(addr: &str) -> EchoServiceClient<tonic::transport::Channel> {
    EchoServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn sigterm_drains_the_in_flight_call_then_exits_cleanly() {
    let mut process = spawn_echo(&[]);
    let mut echo = client(&process.grpc).await;
    let in_flight = tokio::spawn(async move {
        echo.echo(EchoRequest {
            message: "finish me".into(),
            delay_ms: 1_500,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&process.child);

    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(reply.into_inner().message, "finish me");
    let status = wait_exit(&mut process.child, Duration::from_secs(10));
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        std::net::TcpStream::connect(&process.grpc).is_err(),
        "no longer accepting connections"
    );
    assert!(std::net::TcpStream::connect(&process.admin).is_err());
}

#[tokio::test]
async fn a_stuck_call_cannot_hold_shutdown_past_the_grace_period() {
    let mut process = spawn_echo(&[("STOREMESH_ECHO__SERVER__SHUTDOWN_GRACE_MS", "500")]);
    let mut echo = client(&process.grpc).await;
    let stuck = tokio::spawn(async move {
        echo.echo(EchoRequest {
            message: "too slow".into(),
            delay_ms: 20_000,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    sigterm(&process.child);
    let status = wait_exit(&mut process.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    let error = stuck.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{error:?}"
    );
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    let output = Command::new(env!("CARGO_BIN_EXE_storemesh-echo"))
        .env("STOREMESH_ECHO__SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_storemesh-echo"))
        .env("STOREMESH_ECHO__SERVER__CONCURRENCY_LIMIT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("echo.server.concurrency_limit"), "{stderr}");
}

#[test]
fn an_address_in_use_fails_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_storemesh-echo"))
        .env("STOREMESH_ECHO__SERVER__LISTEN", &addr)
        .env("STOREMESH_ECHO__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
}
