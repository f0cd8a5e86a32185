//! Two catalog replicas behind the gateway, all real `storemesh serve` processes: one replica
//! is SIGKILLed under sustained read load and no idempotent call fails; a replica added at
//! runtime (through the gateway's addresses file) receives traffic.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::auth::v1::{LoginRequest, RegisterRequest, Role};
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::catalog::v1::{CreateProductRequest, GetProductRequest, Money};
use storemesh_testkit::{RedisServer, free_port};
use tonic::Request;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ports {
    grpc: u16,
    admin: u16,
}

fn ports() -> Ports {
    Ports {
        grpc: free_port().unwrap(),
        admin: free_port().unwrap(),
    }
}

fn serve(service: &str, ports: &Ports, envs: &[(String, String)]) -> Process {
    let upper = service.to_uppercase();
    let child = Command::new(env!("CARGO_BIN_EXE_storemesh"))
        .args(["serve", service])
        .env(
            format!("STOREMESH_{upper}__SERVER__LISTEN"),
            format!("127.0.0.1:{}", ports.grpc),
        )
        .env(
            format!("STOREMESH_{upper}__SERVER__ADMIN_LISTEN"),
            format!("127.0.0.1:{}", ports.admin),
        )
        .env("STOREMESH_TELEMETRY__FILTER", "warn")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

async fn wait_serving(port: u16) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
            && let Ok(response) = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && response.into_inner().status() == ServingStatus::Serving
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GetProduct calls a catalog replica answered, from its own `/metrics`.
async fn get_product_calls(admin_port: u16) -> f64 {
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await
    .unwrap()
    .unwrap_or_default();
    body.lines()
        .filter(|line| line.starts_with("grpc_server_handled_total{"))
        .filter(|line| line.contains("method=\"GetProduct\"") && line.contains("code=\"OK\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn a_sigkilled_replica_costs_no_idempotent_call_and_a_new_one_gets_traffic() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth_ports = ports();
    let common = vec![
        ("STOREMESH_REDIS__URL".to_owned(), redis.url()),
        (
            "STOREMESH_TOKENS__AUTH_ENDPOINT".to_owned(),
            format!("http://127.0.0.1:{}", auth_ports.grpc),
        ),
    ];
    let mut auth_env = common.clone();
    auth_env.push((
        "STOREMESH_AUTH__KEYS_DIR".into(),
        dir.path().join("keys").display().to_string(),
    ));
    auth_env.push(("STOREMESH_AUTH__ARGON2__MEMORY_KIB".into(), "256".into()));
    let _auth = serve("auth", &auth_ports, &auth_env);
    let (first_ports, second_ports, third_ports) = (ports(), ports(), ports());
    let mut first = Some(serve("catalog", &first_ports, &common));
    let _second = serve("catalog", &second_ports, &common);
    let endpoints = dir.path().join("catalog.endpoints");
    std::fs::write(
        &endpoints,
        format!(
            "127.0.0.1:{}\n127.0.0.1:{}\n",
            first_ports.grpc, second_ports.grpc
        ),
    )
    .unwrap();
    let gateway_ports = ports();
    let mut gateway_env = common.clone();
    gateway_env.push((
        "STOREMESH_GATEWAY__UPSTREAMS__AUTH__ADDRESSES".into(),
        format!("[\"127.0.0.1:{}\"]", auth_ports.grpc),
    ));
    gateway_env.push((
        "STOREMESH_GATEWAY__UPSTREAMS__CATALOG__ADDRESSES_FILE".into(),
        endpoints.display().to_string(),
    ));
    gateway_env.push((
        "STOREMESH_GATEWAY__UPSTREAMS__CATALOG__REFRESH_INTERVAL_MS".into(),
        "200".into(),
    ));
    // The load comes from one address and one user: lift the token buckets out of the way.
    for (key, value) in [
        ("PER_ADDRESS_PER_SEC", "1000000"),
        ("PER_ADDRESS_BURST", "1000000"),
        ("PER_IDENTITY_PER_SEC", "1000000"),
        ("PER_IDENTITY_BURST", "1000000"),
    ] {
        gateway_env.push((
            format!("STOREMESH_GATEWAY__RATE_LIMIT__{key}"),
            value.into(),
        ));
    }
    let _gateway = serve("gateway", &gateway_ports, &gateway_env);
    for port in [
        auth_ports.grpc,
        first_ports.grpc,
        second_ports.grpc,
        gateway_ports.grpc,
    ] {
        wait_serving(port).await;
    }

    let gateway = format!("http://127.0.0.1:{}", gateway_ports.grpc);
    let mut auth = AuthServiceClient::connect(gateway.clone()).await.unwrap();
    auth.register(RegisterRequest {
        email: "seller@example.com".into(),
        password: "a good long password".into(),
        display_name: "Seller".into(),
        role: Role::Seller.into(),
    })
    .await
    .unwrap();
    let token = auth
        .login(LoginRequest {
            email: "seller@example.com".into(),
            password: "a good long password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let catalog = CatalogServiceClient::connect(gateway.clone())
        .await
        .unwrap();
    let product_id = catalog
        .clone()
        .create_product(bearer(
            CreateProductRequest {
                title: "Desk".into(),
                price: Some(Money {
                    amount_minor: 12_000,
                    currency_code: "EUR".into(),
                }),
                ..CreateProductRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .id;

    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (catalog, token, id) = (catalog.clone(), token.clone(), product_id.clone());
        let (failures, successes) = (failures.clone(), successes.clone());
        workers.push(tokio::spawn(async move {
            let mut catalog = catalog;
            while Instant::now() < stop_at {
                match catalog
                    .get_product(bearer(GetProductRequest { id: id.clone() }, &token))
                    .await
                {
                    Ok(_) => successes.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("GetProduct failed: {status:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before_kill = get_product_calls(first_ports.admin).await;
    first.take(); // SIGKILL the first replica in the middle of the load.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _third = serve("catalog", &third_ports, &common);
    wait_serving(third_ports.grpc).await;
    std::fs::write(
        &endpoints,
        format!(
            "127.0.0.1:{}\n127.0.0.1:{}\n",
            second_ports.grpc, third_ports.grpc
        ),
    )
    .unwrap();
    for worker in workers {
        worker.await.unwrap();
    }

    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "zero failed idempotent calls"
    );
    assert!(successes.load(Ordering::Relaxed) > 200);
    assert!(before_kill > 0.0, "the killed replica had been serving");
    assert!(
        get_product_calls(second_ports.admin).await > 0.0,
        "the surviving replica served"
    );
    assert!(
        get_product_calls(third_ports.admin).await > 0.0,
        "the replica added at runtime received traffic"
    );
}
