//! `storemesh up` as a user runs it: real child processes, a real redis-server, real gRPC.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use storemesh_proto::auth::v1::LoginRequest;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::catalog::v1::{CreateProductRequest, Money};
use storemesh_testkit::free_port;
use storemesh_testkit::process::{OutputLines, child_pid, terminate};

struct Up {
    child: Child,
    output: OutputLines,
}

impl Drop for Up {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
    }
}

impl Up {
    fn start(data_dir: &std::path::Path, envs: &[(&str, String)], redis_port: u16) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storemesh"))
            .arg("up")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--redis-port", &redis_port.to_string(), "--no-build"])
            // As a user runs it: from the repository root, where `spin.toml` is.
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .env_remove("REDIS_URL")
            // Compiled components shared with the other system tests: compile once per build.
            .env(
                "STOREMESH_EDGE__CACHE_DIR",
                std::env::temp_dir().join("storemesh-system-tests-edge-cache"),
            )
            .envs(envs.iter().map(|(k, v)| (*k, v.clone())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = OutputLines::capture(&mut child);
        Self { child, output }
    }

    /// Waits for a line containing `needle`; panics with the output so far otherwise.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        if let Err(error) = self.output.wait_for(&mut self.child, needle, within) {
            panic!("storemesh up: {error}");
        }
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Until the output pipes close (or go quiet), so the last lines are in.
                self.output.settle(Duration::from_millis(500));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit:\n{}",
                self.output.tail(200)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn up_runs_the_system_and_stops_it_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let (redis_port, grpc_port, admin_port) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let (gateway_port, gateway_admin_port) = (free_port().unwrap(), free_port().unwrap());
    let envs = [
        (
            "STOREMESH_CATALOG__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_CATALOG__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_STORAGE__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_STORAGE__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_GATEWAY__SERVER__LISTEN",
            format!("127.0.0.1:{gateway_port}"),
        ),
        (
            "STOREMESH_GATEWAY__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{gateway_admin_port}"),
        ),
        (
            "STOREMESH_AUTH__SERVER__LISTEN",
            format!("127.0.0.1:{grpc_port}"),
        ),
        (
            "STOREMESH_EDGE__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_EDGE__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_AUTH__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin_port}"),
        ),
        // Every port is a free one: a local `storemesh up` on the defaults must not matter.
        (
            "STOREMESH_DISPATCHER__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_DISPATCHER__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
    ];
    let mut up = Up::start(data.path(), &envs, redis_port);
    up.wait_for("Storemesh is up.", Duration::from_secs(90));
    assert!(
        up.output.lines().iter().any(|line| line.contains("auth |")),
        "prefixed child logs"
    );

    let password = std::fs::read_to_string(data.path().join("admin-password")).unwrap();
    let mut auth = AuthServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();
    let login = auth
        .login(LoginRequest {
            email: "admin@storemesh.local".into(),
            password: password.trim().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(login.tokens.is_some());
    // The same through the gateway, which found auth on its non-default port.
    let mut via_gateway = AuthServiceClient::connect(format!("http://127.0.0.1:{gateway_port}"))
        .await
        .unwrap();
    let token = via_gateway
        .login(LoginRequest {
            email: "admin@storemesh.local".into(),
            password: password.trim().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    // The catalog behind the gateway, with the token verified on the way.
    let mut catalog = CatalogServiceClient::connect(format!("http://127.0.0.1:{gateway_port}"))
        .await
        .unwrap();
    let mut create = tonic::Request::new(CreateProductRequest {
        title: "Lamp".into(),
        price: Some(Money {
            amount_minor: 1999,
            currency_code: "EUR".into(),
        }),
        ..CreateProductRequest::default()
    });
    create
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let product = catalog.create_product(create).await.unwrap().into_inner();
    assert_eq!(product.product.unwrap().title, "Lamp");
    assert!(data.path().join("auth/keys/current.pem").is_file());
    assert!(data.path().join("redis").is_dir());

    // A child that dies is restarted by `up`, and the system answers again.
    let catalog_pid = child_pid(up.child.id(), "catalog");
    let status = Command::new("kill")
        .args(["-KILL", &catalog_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    up.wait_for("catalog | exited", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = tonic::Request::new(CreateProductRequest {
            title: "Lamp again".into(),
            price: Some(Money {
                amount_minor: 1,
                currency_code: "EUR".into(),
            }),
            ..CreateProductRequest::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match catalog.create_product(request).await {
            Ok(_) => break,
            Err(status) => assert!(
                Instant::now() < deadline,
                "catalog not back: {status:?}\n{}",
                up.output.tail(200)
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        child_pid(up.child.id(), "catalog"),
        catalog_pid,
        "a new process"
    );

    let status = Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", up.output.tail(200));
    // Services stop before Redis: none of them meets a vanished Redis while draining.
    let lines = up.output.lines();
    let shutdown: Vec<&String> = lines
        .iter()
        .skip_while(|line| !line.contains("stopping..."))
        .collect();
    assert!(!shutdown.is_empty(), "{}", up.output.tail(200));
    // (A drain that times out is allowed: hyper can keep a server's graceful shutdown waiting
    // on an idle client connection, hyperium/hyper#4170; the grace period bounds it.)
    let complaints: Vec<&&String> = shutdown
        .iter()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .filter(|line| !line.contains("drain timed out"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
    assert!(!listening(grpc_port), "auth stopped");
    assert!(!listening(gateway_port), "gateway stopped");
    assert!(!listening(redis_port), "redis stopped");
}

#[test]
fn up_fails_fast_when_a_port_is_taken() {
    let data = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let redis_port = free_port().unwrap();
    let envs = [
        (
            "STOREMESH_AUTH__SERVER__LISTEN",
            format!("127.0.0.1:{taken_port}"),
        ),
        (
            "STOREMESH_AUTH__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
    ];
    let envs = [
        envs[0].clone(),
        envs[1].clone(),
        (
            "STOREMESH_CATALOG__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_CATALOG__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_STORAGE__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_STORAGE__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_GATEWAY__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_GATEWAY__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_EDGE__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_EDGE__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_DISPATCHER__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
        (
            "STOREMESH_DISPATCHER__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        ),
    ];
    let started = Instant::now();
    let mut up = Up::start(data.path(), &envs, redis_port);
    let status = up.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast");
    let output = up.output.lines().join("\n");
    assert!(output.contains(&taken_port.to_string()), "{output}");
    assert!(output.contains("in use"), "{output}");
    assert!(!listening(redis_port), "nothing left running");
}
