//! Issue 20 at the edge, end to end with the real `spin.toml` and the real services:
//! - item 2: the upload hook's and the images function's mesh calls carry the end client's
//!   address (`x-forwarded-for`, from Spin's `spin-client-addr`), never one the client sent; the
//!   thumbnail function's (called by the dispatcher) carry none;
//! - item 3: an upload whose body stops arriving is answered `408` (the client's fault), not
//!   `504 mesh_timeout`, and its instance is gone.
#![allow(clippy::unwrap_used)]

mod images;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use storemesh_system_tests::http::Answer;
use storemesh_system_tests::{Options, Role, System, metric_sum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One request the tap saw: its path and every `x-forwarded-for` value.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    forwarded_for: Vec<String>,
}

/// A transparent TCP tap between the edge functions and the gateway: it records the head of
/// every request (the edge opens one connection per outbound request) and passes the bytes on
/// unchanged, so the calls still reach the real gateway and services.
struct Tap {
    addr: SocketAddr,
    gateway: Arc<OnceLock<SocketAddr>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Tap {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Arc::new(OnceLock::<SocketAddr>::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (upstream, log) = (gateway.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (upstream, log) = (upstream.clone(), log.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0_u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&chunk[..read]),
                        }
                    }
                    log.lock().unwrap().push(parse_head(&head));
                    let Some(gateway) = upstream.get().copied() else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(gateway).await else {
                        return;
                    };
                    if server.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            addr,
            gateway,
            seen,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was seen since the last call.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn parse_head(head: &[u8]) -> Seen {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned();
    let forwarded_for = lines
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, value)| value.trim().to_owned())
        .collect();
    Seen {
        path,
        forwarded_for,
    }
}

/// Sends one HTTP/1.1 request to `addr` from the local address `from` (another loopback
/// address, so the edge sees a client that is not itself) and reads the answer.
async fn request_from(
    from: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("no answer")
        .unwrap();
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |end| end + 4);
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[end..])
    } else {
        raw[end..].to_vec()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A `Transfer-Encoding: chunked` body's data.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
    body
}

fn upload_path(product_id: &str) -> String {
    format!("/v1/products/{product_id}/images")
}

/// Every call seen came with exactly `x-forwarded-for: <expected>`.
fn assert_forwarded(seen: &[Seen], expected: &str) {
    assert!(!seen.is_empty(), "no mesh call seen");
    for call in seen {
        assert_eq!(call.forwarded_for, [expected], "{call:?} in {seen:#?}");
    }
}

// Issue 20, item 2. Before, the functions' calls carried no x-forwarded-for: the gateway counted
// every client's uploads and image requests under the edge runtime's one address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_functions_forward_the_end_clients_address_to_the_mesh() {
    let tap = Tap::start().await;
    let system = System::start_with(Options {
        variables: BTreeMap::from([("gateway_url".to_owned(), tap.url())]),
        ..Options::default()
    })
    .await;
    tap.gateway.set(system.gateway).unwrap();
    let edge = system.edge.unwrap();
    let (_, token) = system.user("seller@example.com", Role::Seller).await;
    let product = system.product(&token, "Lamp").await;

    // An upload from 127.0.0.2 that tries to name its own address twice over.
    let png = images::png(64, 48);
    let answer = request_from(
        "127.0.0.2",
        edge,
        "POST",
        &upload_path(&product),
        &[
            ("authorization", format!("Bearer {token}")),
            ("content-type", "image/png".into()),
            ("x-forwarded-for", "9.9.9.9".into()),
            ("spin-client-addr", "6.6.6.6:1".into()),
        ],
        &png,
    )
    .await;
    answer.expect_status(201);
    let image_id = answer.json()["image_id"].as_str().unwrap().to_owned();
    let seen = tap.take();
    assert!(
        seen.iter()
            .any(|call| call.path.ends_with("StorageService/Upload")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|call| call.path.ends_with("CatalogService/AttachImage")),
        "{seen:#?}"
    );
    assert_forwarded(&seen, "127.0.0.2");

    // The images function, for a shopper at 127.0.0.3 (the owner's original, with the token).
    let answer = request_from(
        "127.0.0.3",
        edge,
        "GET",
        &format!("/img/{image_id}/original"),
        &[("authorization", format!("Bearer {token}"))],
        b"",
    )
    .await;
    answer.expect_status(200);
    assert_eq!(answer.body, png);
    let seen = tap.take();
    assert!(
        seen.iter()
            .any(|call| call.path.ends_with("StorageService/Download")),
        "{seen:#?}"
    );
    assert_forwarded(&seen, "127.0.0.3");

    // The thumbnail function serves the dispatcher, not an end client: nothing forwarded.
    let key = format!("products/{product}/originals/{image_id}");
    let event = system
        .event_for(&key)
        .unwrap_or_else(|| panic!("no event for {key}"));
    let (body, headers) = system.signed_delivery(&event, 1);
    let headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    let answer = request_from(
        "127.0.0.4",
        edge,
        "POST",
        "/internal/thumbnail",
        &headers,
        &body,
    )
    .await;
    answer.expect_status(200);
    let seen = tap.take();
    assert!(
        seen.iter()
            .any(|call| call.path.ends_with("StorageService/Upload")),
        "{seen:#?}"
    );
    for call in &seen {
        assert!(call.forwarded_for.is_empty(), "{call:?}");
    }
}

// Issue 20, item 3. Before, the upload hook's storage Upload waited for the body until the
// mesh call's deadline and the client got `504 mesh_timeout`, as if the mesh had failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_body_stops_arriving_is_answered_408() {
    let system = System::start().await;
    let edge = system.edge.unwrap();
    let (_, token) = system.user("seller@example.com", Role::Seller).await;
    let product = system.product(&token, "Lamp").await;

    // The image's header (enough for the hook to start storing it), then nothing.
    let png = images::noisy_png(256, 256);
    assert!(png.len() > 20_000);
    let mut stream = TcpStream::connect(edge).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {edge}\r\nauthorization: Bearer {token}\r\ncontent-type: image/png\r\ncontent-length: {}\r\n\r\n",
        upload_path(&product),
        png.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&png[..2_000]).await.unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    // The answer comes from the edge's body-rate check (about 5 s with the defaults); the
    // mesh call's deadline (10 s) would have answered 504 first without it. The server closes
    // the connection after the answer.
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("no answer")
        .unwrap();
    let answer = parse_answer(&raw);
    answer.expect_error(408, "request_timeout");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("request body"), "{message}");

    // The instance is gone, nothing was stored, and the next upload goes through.
    let metrics = storemesh_system_tests::http::request(
        system.edge_admin.unwrap(),
        "GET",
        "/metrics",
        &[],
        None,
    )
    .await
    .text();
    assert_eq!(
        metric_sum(
            &metrics,
            "edge_active_instances",
            &[("component", "upload-hook")]
        ),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "edge_errors_total",
            &[("component", "upload-hook"), ("kind", "body_too_slow")]
        ),
        1.0,
        "{metrics}"
    );
    let prefix = format!("products/{product}/");
    assert!(
        system
            .events()
            .iter()
            .all(|event| !event.subject.starts_with(&prefix)),
        "an event for the abandoned upload"
    );
    let answer = system
        .edge_post(&upload_path(&product), &token, "image/png", png)
        .await;
    answer.expect_status(201);
}
