//! The edge runtime end to end: real fixture components (built for wasm32-wasip2 from
//! `edge-functions/fixtures/`), a real runtime on real sockets, a real tonic server for gRPC.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use storemesh_edge::{EdgeConfig, EdgeError, testing};
use storemesh_runtime::ServerConfig;
use storemesh_testkit::RunningHost;
use tokio::sync::oneshot;

// ---- captured logs ----------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary (one global subscriber, installed once).
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info,storemesh_edge=debug")
            .with_writer(move || writer.clone())
            .try_init();
        captured
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

// ---- the runtime under test -------------------------------------------------------------------

fn fixture(name: &str) -> String {
    match testing::fixture(name) {
        Ok(path) => path.display().to_string(),
        Err(message) => panic!("{message}"),
    }
}

/// `{app}`, `{hello}` and `{bad_import}` in a manifest become the fixtures' paths.
fn manifest_text(template: &str) -> String {
    let mut text = template.to_owned();
    for (placeholder, name) in [
        ("{app}", "edge-fixture-app"),
        ("{hello}", "edge-fixture-hello"),
        ("{bad_import}", "edge-fixture-bad-import"),
    ] {
        if text.contains(placeholder) {
            text = text.replace(placeholder, &fixture(name));
        }
    }
    text
}

fn test_config(dir: &std::path::Path) -> EdgeConfig {
    EdgeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        manifest: dir.join("spin.toml"),
        max_instances: 16,
        max_memory_bytes: 64 * 1024 * 1024,
        execution_timeout_ms: 10_000,
        // Shared by the tests of this binary so each fixture is compiled once.
        cache_dir: std::env::temp_dir().join("storemesh-edge-test-cache"),
        shutdown_grace_ms: 5_000,
        ..EdgeConfig::default()
    }
}

struct Edge {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), EdgeError>>>,
    _dir: tempfile::TempDir,
}

impl Edge {
    async fn build(manifest: &str, tweak: impl FnOnce(&mut EdgeConfig)) -> Result<Self, EdgeError> {
        logs();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spin.toml"), manifest_text(manifest)).unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let server = storemesh_edge::build(&config).await?;
        let addr = server.local_addr().unwrap();
        let admin = server.admin_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    async fn start(manifest: &str, tweak: impl FnOnce(&mut EdgeConfig)) -> Self {
        match Self::build(manifest, tweak).await {
            Ok(edge) => edge,
            Err(error) => panic!("the edge runtime did not start: {error}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the runtime and waits for its drain.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(15), task).await;
            assert!(matches!(result, Ok(Ok(Ok(())))), "shutdown failed");
        }
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(url: impl Into<String>) -> (u16, String) {
    let url: String = url.into();
    let response = client().get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `key=value` lines of a fixture answer.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

// ---- a plain upstream HTTP server for outbound tests ------------------------------------------

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        if request.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(700)).await;
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                            "pong {}",
                            request.uri().path()
                        )))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

// ---- tests ------------------------------------------------------------------------------------

const ROUTING: &str = r#"
spin_manifest_version = 2
[application]
name = "routing"

[[trigger.http]]
route = "/api/..."
component = "api"
[[trigger.http]]
route = "/api/items"
component = "items-exact"
[[trigger.http]]
route = "/api/items/..."
component = "items"
[[trigger.http]]
route = "/products/:product_id/images"
component = "images"
[[trigger.http]]
route = "/"
component = "root"

[component.api]
source = "{app}"
variables = { name = "api" }
[component.items-exact]
source = "{app}"
variables = { name = "items-exact" }
[component.items]
source = "{app}"
variables = { name = "items" }
[component.images]
source = "{app}"
variables = { name = "images" }
[component.root]
source = "{app}"
variables = { name = "root" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_exact_wildcard_and_most_specific() {
    let edge = Edge::start(ROUTING, |_| {}).await;

    let (status, body) = get(&edge.url("/api/items")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "component"), Some("items-exact"), "{body}");
    assert_eq!(field(&body, "matched-route"), Some("/api/items"));
    assert_eq!(field(&body, "path-info"), Some(""));

    let (_, body) = get(&edge.url("/api/items/42/detail?x=1")).await;
    assert_eq!(field(&body, "component"), Some("items"), "{body}");
    assert_eq!(field(&body, "path-info"), Some("/42/detail"));
    assert_eq!(field(&body, "matched-route"), Some("/api/items/..."));
    assert_eq!(field(&body, "component-route"), Some("/api/items"));
    assert_eq!(
        field(&body, "full-url"),
        Some(format!("http://{}/api/items/42/detail?x=1", edge.addr).as_str())
    );
    assert_eq!(field(&body, "client-addr-set"), Some("true"));

    let (_, body) = get(&edge.url("/api/other")).await;
    assert_eq!(field(&body, "component"), Some("api"), "{body}");
    assert_eq!(field(&body, "path-info"), Some("/other"));
    let (_, body) = get(&edge.url("/api")).await;
    assert_eq!(field(&body, "component"), Some("api"), "{body}");

    let (_, body) = get(&edge.url("/products/p-7/images")).await;
    assert_eq!(field(&body, "component"), Some("images"), "{body}");
    assert_eq!(
        field(&body, "spin-path-match-product-id"),
        Some("p-7"),
        "{body}"
    );

    let (_, body) = get(&edge.url("/")).await;
    assert_eq!(field(&body, "component"), Some("root"), "{body}");

    for unrouted in ["/apix", "/products/1", "/nothing/here"] {
        let (status, _) = get(&edge.url(unrouted)).await;
        assert_eq!(status, 404, "{unrouted}");
    }

    let (status, body) = get(&edge.url("/.well-known/spin/health")).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, body) = get(&edge.url("/.well-known/spin/info")).await;
    assert_eq!(status, 200);
    // Spin: crates/trigger-http/src/server.rs app_info (pretty-printed AppInfo).
    assert_eq!(body, "{\n  \"name\": \"routing\"\n}", "{body}");

    // Admin port: health, readiness and the per-component metrics.
    let (status, _) = get(&format!("http://{}/healthz", edge.admin)).await;
    assert_eq!(status, 200);
    let (status, _) = get(&format!("http://{}/readyz", edge.admin)).await;
    assert_eq!(status, 200);
    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("edge_invocations_total")
                && l.contains("component=\"items-exact\"")
                && l.contains("status=\"200\"")),
        "{metrics}"
    );
    assert!(metrics.contains("edge_instantiation_seconds"), "{metrics}");
    assert!(
        metrics.contains("edge_invocation_duration_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edge_unrouted_requests_total"),
        "{metrics}"
    );
    edge.stop().await;
}

const SPIN_HEADERS: &str = r#"
spin_manifest_version = 2
[application]
name = "spin-headers"

[[trigger.http]]
route = "/p/:product_id/:Big_Name"
component = "named"
[[trigger.http]]
route = "/star/*"
component = "star"
[[trigger.http]]
route = "/a/:id"
component = "by-id"
[[trigger.http]]
route = "/a/b/..."
component = "a-b"
[[trigger.http]]
route = "/.well-known/spin/mine"
component = "reserved"

[component.named]
source = "{app}"
variables = { name = "named" }
[component.star]
source = "{app}"
variables = { name = "star" }
[component.by-id]
source = "{app}"
variables = { name = "by-id" }
[component.a-b]
source = "{app}"
variables = { name = "a-b" }
[component.reserved]
source = "{app}"
variables = { name = "reserved" }
"#;

/// Sends `raw` on a fresh connection and returns everything the server writes before closing.
async fn raw_exchange(addr: SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    String::from_utf8_lossy(&answer).into_owned()
}

// Spin: crates/trigger-http/src/headers.rs (compute_default_headers, prepare_header_key,
// prepare_request_headers), crates/trigger-http/src/server.rs (HttpServer::handle, set_req_uri,
// HttpServer::new's reserved-route error) and crates/routes/src/lib.rs (Router::route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_headers_and_authority_handling_match_spin() {
    let edge = Edge::start(SPIN_HEADERS, |_| {}).await;

    // Named segments: `_` becomes `-`, upper case is lowered.
    let (status, body) = get(&edge.url("/p/p-7/Q")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "component"), Some("named"), "{body}");
    assert_eq!(
        field(&body, "spin-path-match-product-id"),
        Some("p-7"),
        "{body}"
    );
    assert_eq!(
        field(&body, "spin-path-match-big-name"),
        Some("Q"),
        "{body}"
    );
    assert_eq!(field(&body, "path-info"), Some(""), "{body}");

    // A `/*` wildcard keeps its suffix in spin-component-route (only `/...` is stripped).
    let (_, body) = get(&edge.url("/star/x/y/")).await;
    assert_eq!(field(&body, "component"), Some("star"), "{body}");
    assert_eq!(field(&body, "component-route"), Some("/star/*"), "{body}");
    assert_eq!(field(&body, "matched-route"), Some("/star/*"), "{body}");
    assert_eq!(field(&body, "path-info"), Some("/x/y/"), "{body}");

    // routefinder's precedence: the literal `b` beats `:id` although `/a/b/...` is a wildcard.
    let (_, body) = get(&edge.url("/a/b")).await;
    assert_eq!(field(&body, "component"), Some("a-b"), "{body}");
    let (_, body) = get(&edge.url("/a/c")).await;
    assert_eq!(field(&body, "component"), Some("by-id"), "{body}");

    // A route under /.well-known/spin/ loads (with Spin's error) but is never reached.
    let (status, body) = get(&edge.url("/.well-known/spin/mine")).await;
    assert_eq!((status, body.as_str()), (404, ""));
    assert!(
        log_text().contains("will never be reached"),
        "{}",
        log_text()
    );
    // Unrouted: an empty 404.
    let (status, body) = get(&edge.url("/nowhere")).await;
    assert_eq!((status, body.as_str()), (404, ""));

    // A client-sent spin-* header stays, Spin's value is appended after it; spin-sdk's
    // `Request::header` returns the last one.
    let request = http::Request::get(edge.url("/star/real"))
        .header("spin-path-info", "/forged")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(field(&body, "path-info"), Some("/real"), "{body}");

    // HTTP/2 (h2c): no Host header, so spin-full-url says `localhost`.
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let response = h2
        .get(edge.url("/star/h2?q=1").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        field(&body, "full-url"),
        Some("http://localhost/star/h2?q=1"),
        "{body}"
    );

    // No authority at all, or a Host that contradicts the request target: Spin's handler fails
    // and hyper closes the connection without an answer.
    let answer = raw_exchange(edge.addr, "GET /star/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(answer, "", "{answer}");
    let answer = raw_exchange(
        edge.addr,
        "GET http://a.test/star/x HTTP/1.1\r\nhost: b.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer, "", "{answer}");
    // The same request with a consistent Host is served.
    let answer = raw_exchange(
        edge.addr,
        "GET http://a.test/star/x HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("full-url=http://a.test/star/x"), "{answer}");
    // The runtime's own endpoints need no authority.
    let answer = raw_exchange(edge.addr, "GET /.well-known/spin/health HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("content-type"),
        "{answer}"
    );
    edge.stop().await;
}

const VARIABLES: &str = r#"
spin_manifest_version = 2
[application]
name = "variables"

[variables]
greeting = { default = "hello" }
region = { default = "eu" }
api_token = { required = true, secret = true }

[[trigger.http]]
route = "/..."
component = "vars"

[component.vars]
source = "{app}"
environment = { EDGE_MODE = "test" }
[component.vars.variables]
name = "vars"
greeting = "{{ greeting }}, {{ region }}"
token = "{{ api_token }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_defaults_configuration_and_secrets() {
    let secret = "s3cret-7f1d9c2b";
    let edge = Edge::start(VARIABLES, |config| {
        config.variables = BTreeMap::from([
            ("api_token".to_owned(), secret.to_owned()),
            ("region".to_owned(), "us".to_owned()),
        ]);
    })
    .await;

    let (status, body) = get(&edge.url("/?action=var&name=greeting")).await;
    assert_eq!((status, body.as_str()), (200, "hello, us"));
    // The secret reaches the component...
    let (status, body) = get(&edge.url("/?action=var&name=token")).await;
    assert_eq!((status, body.as_str()), (200, secret));
    // ...application variables are not visible unless mapped into the component...
    let (status, body) = get(&edge.url("/?action=var&name=api_token")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.starts_with("undefined"), "{body}");
    // ...and malformed names are `invalid-name`, as in Spin.
    let (status, body) = get(&edge.url("/?action=var&name=Bad-Name")).await;
    assert_eq!(status, 400, "{body}");
    // `environment` is the component's WASI environment.
    let (status, body) = get(&edge.url("/?action=env&name=EDGE_MODE")).await;
    assert_eq!((status, body.as_str()), (200, "test"));
    edge.stop().await;

    // The secret never appears in the logs, the variable names do.
    let logs = log_text();
    assert!(!logs.contains(secret), "secret leaked into the logs");
    assert!(logs.contains("api_token"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_variable_fails_the_start_naming_it() {
    let error = match Edge::build(VARIABLES, |_| {}).await {
        Ok(_) => panic!("started without a required variable"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        matches!(&error, EdgeError::Variables(storemesh_edge::variables::VariableError::MissingRequired { name }) if name == "api_token"),
        "{message}"
    );
    assert!(message.contains("SPIN_VARIABLE_API_TOKEN"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_errors_name_the_key() {
    let text = ROUTING.replace("component = \"items\"\n", "component = \"itemz\"\n");
    let error = Edge::build(&text, |_| {}).await.err().unwrap().to_string();
    assert!(error.contains("trigger.http[2].component"), "{error}");
    assert!(error.contains("itemz"), "{error}");
}

const OUTBOUND: &str = r#"
spin_manifest_version = 2
[application]
name = "outbound"

[variables]
upstream = { default = "127.0.0.1:1" }

[[trigger.http]]
route = "/allowed/..."
component = "allowed"
[[trigger.http]]
route = "/templated/..."
component = "templated"
[[trigger.http]]
route = "/sealed/..."
component = "sealed"
[[trigger.http]]
route = "/wrong-port/..."
component = "wrong-port"

[component.allowed]
source = "{app}"
allowed_outbound_hosts = ["http://127.0.0.1:UPSTREAM_PORT"]
[component.templated]
source = "{app}"
allowed_outbound_hosts = ["http://{{ upstream }}"]
[component.sealed]
source = "{app}"
[component.wrong-port]
source = "{app}"
allowed_outbound_hosts = ["http://127.0.0.1:1", "https://127.0.0.1:UPSTREAM_PORT", "http://localhost:UPSTREAM_PORT"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_goes_only_to_allowed_hosts() {
    let upstream = upstream().await;
    let manifest = OUTBOUND.replace("UPSTREAM_PORT", &upstream.port().to_string());
    let edge = Edge::start(&manifest, |config| {
        config.variables = BTreeMap::from([("upstream".to_owned(), upstream.to_string())]);
    })
    .await;
    let target = format!("http://{upstream}/ping");

    for prefix in ["allowed", "templated"] {
        let (status, body) = get(&edge.url(&format!("/{prefix}/?action=fetch&url={target}"))).await;
        assert_eq!(status, 200, "{prefix}: {body}");
        assert!(
            body.starts_with("status=200\npong /ping"),
            "{prefix}: {body}"
        );
    }
    for prefix in ["sealed", "wrong-port"] {
        let (status, body) = get(&edge.url(&format!("/{prefix}/?action=fetch&url={target}"))).await;
        assert_eq!(status, 502, "{prefix}: {body}");
        assert!(body.contains("HttpRequestDenied"), "{prefix}: {body}");
    }
    let logs = log_text();
    assert!(
        logs.lines()
            .any(|l| l.contains("outbound request denied") && l.contains("sealed")),
        "{logs}"
    );
    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("edge_outbound_denied_total")
                && l.contains("component=\"sealed\"")),
        "{metrics}"
    );
    edge.stop().await;
}

const GRPC: &str = r#"
spin_manifest_version = 2
[application]
name = "grpc"

[variables]
echo = { required = true }

[[trigger.http]]
route = "/..."
component = "grpc"

[component.grpc]
source = "{app}"
allowed_outbound_hosts = ["http://{{ echo }}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_over_h2c_with_trailers() {
    let echo = storemesh_testkit::echo::host(ServerConfig::default())
        .bind()
        .await
        .unwrap();
    let echo = RunningHost::spawn(echo).unwrap();
    let authority = echo.addr.to_string();
    let edge = Edge::start(GRPC, |config| {
        config.variables = BTreeMap::from([("echo".to_owned(), authority.clone())]);
        config.h2c_prior_knowledge = vec![authority.clone()];
    })
    .await;

    let (status, body) = get(&edge.url(&format!(
        "/?action=grpc&authority={authority}&method=unary&message=hello-edge"
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "http-status"), Some("200"), "{body}");
    assert_eq!(
        field(&body, "content-type"),
        Some("application/grpc"),
        "{body}"
    );
    assert_eq!(field(&body, "grpc-status"), Some("0"), "{body}");
    assert_eq!(field(&body, "grpc-status-from"), Some("trailers"), "{body}");
    assert_eq!(field(&body, "messages"), Some("1"), "{body}");
    assert_eq!(field(&body, "message"), Some("hello-edge"), "{body}");

    let (status, body) = get(&edge.url(&format!(
        "/?action=grpc&authority={authority}&method=stream&message=tick&count=5"
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "grpc-status"), Some("0"), "{body}");
    assert_eq!(field(&body, "grpc-status-from"), Some("trailers"), "{body}");
    assert_eq!(field(&body, "messages"), Some("5"), "{body}");
    let messages: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("message="))
        .collect();
    assert_eq!(
        messages,
        ["tick #0", "tick #1", "tick #2", "tick #3", "tick #4"]
    );

    // A failing call: the status arrives (trailers-only) with the message.
    let long = "x".repeat(1100);
    let (status, body) = get(&edge.url(&format!(
        "/?action=grpc&authority={authority}&method=unary&message={long}"
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "grpc-status"), Some("3"), "{body}");
    assert_eq!(field(&body, "messages"), Some("0"), "{body}");

    edge.stop().await;
    echo.stop().await;
}

/// An HTTP/2-only (prior knowledge) server answering every call with one gRPC message naming
/// the request's HTTP version, and `grpc-status: 0` in the trailers.
async fn h2_only_grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", request.version());
                        let _ = request.into_body().collect().await;
                        // EchoResponse { message = version }, gRPC-framed.
                        let mut message = vec![0x0a, version.len() as u8];
                        message.extend_from_slice(version.as_bytes());
                        let mut framed = vec![0, 0, 0, 0, message.len() as u8];
                        framed.extend_from_slice(&message);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = futures::stream::iter([
                            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(framed))),
                            Ok(http_body::Frame::trailers(trailers)),
                        ]);
                        let mut response =
                            http::Response::new(http_body_util::StreamBody::new(frames));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

const H2C: &str = r#"
spin_manifest_version = 2
[application]
name = "h2c"

[[trigger.http]]
route = "/..."
component = "caller"

[component.caller]
source = "{app}"
allowed_outbound_hosts = ["http://127.0.0.1:*", "http://localhost:*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_applies_to_exactly_the_listed_authorities() {
    let server = h2_only_grpc_server().await;
    let listed = format!("127.0.0.1:{}", server.port());
    let unlisted = format!("localhost:{}", server.port());
    let edge = Edge::start(H2C, |config| {
        config.h2c_prior_knowledge = vec![listed.clone()];
    })
    .await;

    let (status, body) = get(&edge.url(&format!(
        "/?action=grpc&authority={listed}&method=unary&message=x"
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "message"), Some("HTTP/2.0"), "{body}");
    assert_eq!(field(&body, "grpc-status"), Some("0"), "{body}");
    assert_eq!(field(&body, "grpc-status-from"), Some("trailers"), "{body}");

    // The same server under another name is spoken to with HTTP/1.1, which it refuses.
    let (status, body) = get(&edge.url(&format!(
        "/?action=grpc&authority={unlisted}&method=unary&message=x"
    )))
    .await;
    assert_eq!(status, 502, "{body}");
    edge.stop().await;
}

const LIMITS: &str = r#"
spin_manifest_version = 2
[application]
name = "limits"

[[trigger.http]]
route = "/..."
component = "limited"

[component.limited]
source = "{app}"
variables = { name = "limited" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_time_limits_stop_only_the_offending_instance() {
    let edge = Edge::start(LIMITS, |config| {
        config.max_memory_bytes = 32 * 1024 * 1024;
        config.execution_timeout_ms = 1_500;
    })
    .await;

    // Within the limit: fine.
    let (status, body) = get(&edge.url("/?action=alloc&mib=8")).await;
    assert_eq!(status, 200, "{body}");

    let started = Instant::now();
    let spinning = tokio::spawn(get(edge.url("/?action=loop")));
    let hog = tokio::spawn(get(edge.url("/?action=alloc&mib=64")));
    // Meanwhile, ordinary requests are answered promptly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let sent = Instant::now();
        let (status, body) = get(&edge.url("/?action=info")).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            sent.elapsed() < Duration::from_millis(1_000),
            "a concurrent request took {:?}",
            sent.elapsed()
        );
    }

    let (status, body) = hog.await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("memory limit"), "{body}");

    let (status, body) = spinning.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("time limit"), "{body}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_400) && elapsed < Duration::from_secs(5),
        "the loop was stopped after {elapsed:?}"
    );

    // The runtime is still healthy afterwards.
    let (status, _) = get(&edge.url("/?action=info")).await;
    assert_eq!(status, 200);

    let logs = log_text();
    assert!(
        logs.lines()
            .any(|l| l.contains("component=limited") && l.contains("memory limit exceeded")),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("component=limited") && l.contains("execution time limit exceeded")),
        "{logs}"
    );
    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    for kind in ["memory_limit", "timeout"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("edge_errors_total")
                && l.contains("component=\"limited\"")
                && l.contains(&format!("kind=\"{kind}\""))),
            "{kind}: {metrics}"
        );
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_beyond_the_pool_are_refused_with_503() {
    let edge = Edge::start(LIMITS, |config| {
        config.max_instances = 1;
        config.execution_timeout_ms = 1_000;
    })
    .await;
    let spinning = tokio::spawn(get(edge.url("/?action=loop")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get(&edge.url("/?action=info")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many"), "{body}");
    let (status, _) = spinning.await.unwrap();
    assert_eq!(status, 503);
    // The slot is free again.
    let (status, _) = get(&edge.url("/?action=info")).await;
    assert_eq!(status, 200);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stdout_and_stderr_are_logged_with_the_component_id() {
    let edge = Edge::start(LIMITS, |_| {}).await;
    let (status, _) = get(&edge.url("/?action=log&text=marker-4d2a")).await;
    assert_eq!(status, 200);
    edge.stop().await;
    let logs = log_text();
    for stream in ["stdout", "stderr"] {
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("{stream}: marker-4d2a"))
                    && l.contains("component=limited")
                    && l.contains(&format!("stream=\"{stream}\""))),
            "{stream}: {logs}"
        );
    }
}

const FILES: &str = r#"
spin_manifest_version = 2
[application]
name = "files"
[[trigger.http]]
route = "/direct/..."
component = "direct"
[[trigger.http]]
route = "/copied/..."
component = "copied"
[[trigger.http]]
route = "/none/..."
component = "none"
[component.direct]
source = "{app}"
files = [{ source = "site", destination = "/" }]
[component.copied]
source = "{app}"
files = ["static/**/*", { source = "site", destination = "/site" }]
exclude_files = ["**/*.map"]
[component.none]
source = "{app}"
"#;

/// Writes `files` (path, content) under `dir`.
fn write_tree(dir: &std::path::Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

// Spin: crates/factor-wasi/src/lib.rs (wasi:filesystem linked for every component, `files`
// preopened read-only), crates/loader/src/local.rs (copies placed by pattern or destination,
// exclude_files), src/commands/up.rs (copy by default, --direct-mounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_mounted_read_only_directly_or_as_a_copy() {
    let edge = Edge::start(FILES, |config| {
        let app = config.manifest.parent().unwrap().to_path_buf();
        write_tree(
            &app,
            &[
                ("site/index.html", "<h1>v1</h1>"),
                ("site/assets/app.js", "console.log(1)"),
                ("static/a.css", "body{}"),
                ("static/a.css.map", "{}"),
                ("secret.txt", "the app dir is not mounted"),
            ],
        );
    })
    .await;
    let app = edge._dir.path().to_path_buf();

    // Mounted directly at `/`.
    assert_eq!(
        get(edge.url("/direct/?action=read&path=/index.html")).await,
        (200, "<h1>v1</h1>".to_owned())
    );
    assert_eq!(
        get(edge.url("/direct/?action=read&path=assets/app.js")).await,
        (200, "console.log(1)".to_owned())
    );
    assert_eq!(
        get(edge.url("/direct/?action=list&path=/")).await,
        (200, "assets\nindex.html".to_owned())
    );
    let (status, body) = get(edge.url("/direct/?action=read&path=/missing.txt")).await;
    assert_eq!(status, 404, "{body}");
    // Read-only, and nothing outside the mount.
    let (status, body) = get(edge.url("/direct/?action=write&path=/new.txt")).await;
    assert_ne!(status, 200, "{body}");
    assert!(!app.join("site/new.txt").exists());
    let (status, body) = get(edge.url("/direct/?action=write&path=/index.html")).await;
    assert_ne!(status, 200, "{body}");
    for escape in [
        "/../secret.txt",
        "../secret.txt",
        "/assets/../../secret.txt",
    ] {
        let (status, body) = get(edge.url(&format!("/direct/?action=read&path={escape}"))).await;
        assert_ne!(status, 200, "{escape}: {body}");
        assert!(!body.contains("not mounted"), "{escape}: {body}");
    }
    // A direct mount shows changes at once (as `spin up --direct-mounts`).
    std::fs::write(app.join("site/index.html"), "<h1>v2</h1>").unwrap();
    assert_eq!(
        get(edge.url("/direct/?action=read&path=/index.html")).await,
        (200, "<h1>v2</h1>".to_owned())
    );

    // Copied once at load (as `spin up`): patterns at their app-relative paths, placements at
    // their destinations, exclude_files left out.
    assert_eq!(
        get(edge.url("/copied/?action=list&path=/")).await,
        (200, "site\nstatic".to_owned())
    );
    assert_eq!(
        get(edge.url("/copied/?action=read&path=/static/a.css")).await,
        (200, "body{}".to_owned())
    );
    let (status, body) = get(edge.url("/copied/?action=read&path=/static/a.css.map")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        get(edge.url("/copied/?action=read&path=/site/index.html")).await,
        (200, "<h1>v1</h1>".to_owned())
    );
    let (status, body) = get(edge.url("/copied/?action=write&path=/site/index.html")).await;
    assert_ne!(status, 200, "{body}");

    // No files: wasi:filesystem is there, with nothing to open.
    let (status, body) = get(edge.url("/none/?action=list&path=/")).await;
    assert_ne!(status, 200, "{body}");
    let (status, body) = get(edge.url("/none/?action=read&path=/secret.txt")).await;
    assert_ne!(status, 200, "{body}");
    edge.stop().await;

    let logs = log_text();
    assert!(
        logs.lines().any(|l| l.contains("component=direct")
            && l.contains("mounted directly")
            && l.contains("component ready")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_files_source_fails_the_load_naming_the_component() {
    let error = match Edge::build(FILES, |_| {}).await {
        Ok(_) => panic!("a component whose files are missing was loaded"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(matches!(error, EdgeError::Files(_)), "{message}");
    assert!(
        message.contains("component `copied`") || message.contains("component `direct`"),
        "{message}"
    );
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_what_the_runtime_lacks_is_refused_at_load() {
    let manifest = r#"
spin_manifest_version = 2
[application]
name = "bad"
[[trigger.http]]
route = "/..."
component = "bad-import"
[component.bad-import]
source = "{bad_import}"
"#;
    let error = match Edge::build(manifest, |_| {}).await {
        Ok(_) => panic!("a component with unsupported imports was loaded"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        matches!(error, EdgeError::UnsupportedImports { .. }),
        "{message}"
    );
    assert!(message.contains("bad-import"), "{message}");
    assert!(
        message.contains("storemesh:made-up/greeter@0.1.0"),
        "{message}"
    );
    assert!(message.contains("wasi:sockets/tcp@0.2"), "{message}");
    // What it does provide is not listed as missing.
    assert!(!message.contains("wasi:io/poll"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let upstream = upstream().await;
    let manifest = OUTBOUND.replace("UPSTREAM_PORT", &upstream.port().to_string());
    let edge = Edge::start(&manifest, |_| {}).await;
    let url = edge.url(&format!(
        "/allowed/?action=fetch&url=http://{upstream}/slow"
    ));
    let in_flight = tokio::spawn(get(url));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = edge.addr;
    let stopping = tokio::spawn(edge.stop());
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pong /slow"), "{body}");
    stopping.await.unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---- hardening: per-component slots, slow bodies, the client's address -------------------------

const SLOTS: &str = r#"
spin_manifest_version = 2
[application]
name = "slots"

[[trigger.http]]
route = "/upload/..."
component = "upload"

[[trigger.http]]
route = "/thumb/..."
component = "thumb"

[[trigger.http]]
route = "/..."
component = "web"

[component.upload]
source = "{app}"
variables = { name = "upload" }
[component.thumb]
source = "{app}"
variables = { name = "thumb" }
[component.web]
source = "{app}"
variables = { name = "web" }
"#;

/// A raw HTTP/1.1 client: `POST path` announcing `length` body bytes, of which `first` are
/// sent at once; the rest is up to the caller.
async fn start_post(
    addr: SocketAddr,
    path: &str,
    length: usize,
    first: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: edge.test\r\ncontent-type: application/octet-stream\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    stream
}

/// A response read off a raw connection: status, lower-cased head, body (by `content-length`).
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

async fn read_answer(stream: &mut tokio::net::TcpStream) -> std::io::Result<RawAnswer> {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..]).into_owned();
    Ok(RawAnswer { status, head, body })
}

/// The answer on `stream` if one comes within `wait`.
async fn answer_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<RawAnswer> {
    tokio::time::timeout(wait, read_answer(stream))
        .await
        .ok()
        .map(|answer| answer.unwrap())
}

fn metric_line<'a>(metrics: &'a str, name: &str, labels: &[&str]) -> Option<&'a str> {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
}

// Issue 20, item 3: slow uploads hold every slot of the upload component, and the other
// components are still served. Before per-component slots, the uploads took the whole pool and
// everything else got 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_has_its_own_instance_slots() {
    let edge = Edge::start(SLOTS, |config| {
        config.max_instances = 8;
        config.components.insert(
            "upload".into(),
            storemesh_edge::config::ComponentLimits {
                max_concurrent_requests: Some(2),
            },
        );
        // These uploads stall on purpose; the rate check has its own test.
        config.min_body_bytes_per_sec = 0;
    })
    .await;

    // Slow uploads until the edge refuses one (at most the whole pool and one more).
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() <= 8, "no upload was ever refused");
        let mut stream = start_post(edge.addr, "/upload/x?action=body", 1_000_000, b"abc").await;
        match answer_within(&mut stream, Duration::from_millis(500)).await {
            None => held.push(stream),
            Some(answer) => break answer,
        }
    };
    assert_eq!(held.len(), 2, "the upload component's own slots");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.head.contains("retry-after: 1"), "{refused:?}");
    assert!(
        refused.head.contains("content-type: application/json"),
        "{refused:?}"
    );
    let error: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(error["error"]["status"], 503, "{error}");
    assert_eq!(error["error"]["code"], "overloaded", "{error}");

    // Every other component is still answered, several at once.
    let others = (0..6).map(|index| {
        let url = if index % 2 == 0 {
            edge.url("/thumb/t?action=info")
        } else {
            edge.url("/page?action=info")
        };
        tokio::spawn(get(url))
    });
    for other in others {
        let (status, body) = other.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    assert!(
        metric_line(
            &metrics,
            "edge_errors_total",
            &["component=\"upload\"", "kind=\"overloaded\""]
        )
        .is_some(),
        "{metrics}"
    );

    // The clients give up: their instances end and the slots are free again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = vec![7_u8; 1000];
        let mut stream = start_post(edge.addr, "/upload/x?action=body", body.len(), &body).await;
        let answer = answer_within(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        if answer.status == 200 {
            assert_eq!(field(&answer.body, "bytes"), Some("1000"), "{answer:?}");
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    edge.stop().await;
}

// Issue 20, item 3: a body that stops arriving, or trickles below the minimum rate, is answered
// 408 with a JSON error, and its instance is stopped so the slot is free at once. Before, the
// instance waited for the body until the execution limit (503) or, in the upload hook, until its
// mesh call's deadline (504 mesh_timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickling_body_is_answered_408_and_frees_the_slot() {
    use tokio::io::AsyncWriteExt;
    let edge = Edge::start(SLOTS, |config| {
        config.max_instances = 8;
        // One slot: the next upload is served only if the stopped instance gave it back.
        config.components.insert(
            "upload".into(),
            storemesh_edge::config::ComponentLimits {
                max_concurrent_requests: Some(1),
            },
        );
        config.min_body_bytes_per_sec = 2_000;
        config.body_grace_ms = 200;
        config.body_rate_window_ms = 500;
        config.execution_timeout_ms = 20_000;
    })
    .await;

    // Headers and part of the body (enough for the first window: grace + window), then
    // nothing: the second window brings no byte.
    let started = Instant::now();
    let mut stalled = start_post(edge.addr, "/upload/x?action=body", 100_000, &[1; 1500]).await;
    let answer = answer_within(&mut stalled, Duration::from_secs(15))
        .await
        .expect("a stalled body is answered well before the execution limit");
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer.head.contains("content-type: application/json"),
        "{answer:?}"
    );
    let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(error["error"]["status"], 408, "{error}");
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("stopped arriving"), "{message}");
    // The connection is not kept for more of that body.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the connection stayed open");

    // The one slot is free at once.
    let body = vec![2_u8; 3000];
    let mut stream = start_post(edge.addr, "/upload/x?action=body", body.len(), &body).await;
    let answer = answer_within(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(field(&answer.body, "bytes"), Some("3000"), "{answer:?}");

    // A trickle: 20 bytes every 100 ms (200 B/s against 2000 B/s).
    let mut trickle = start_post(edge.addr, "/upload/x?action=body", 100_000, b"").await;
    let answer = loop {
        if let Some(answer) = answer_within(&mut trickle, Duration::from_millis(100)).await {
            break answer;
        }
        if trickle.write_all(&[3; 20]).await.is_err() {
            // The server closed the connection after answering.
            break read_answer(&mut trickle).await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the trickle was never stopped"
        );
    };
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer.body.contains("slower than the minimum"),
        "{answer:?}"
    );

    // A steady body well above the minimum is read to its end: 8 KiB every 20 ms.
    let total = 40 * 8192;
    let mut steady = start_post(edge.addr, "/upload/x?action=body", total, b"").await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        steady.write_all(&[4; 8192]).await.unwrap();
    }
    let answer = answer_within(&mut steady, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        field(&answer.body, "bytes"),
        Some(total.to_string().as_str()),
        "{answer:?}"
    );

    let (_, metrics) = get(&format!("http://{}/metrics", edge.admin)).await;
    let line = metric_line(
        &metrics,
        "edge_errors_total",
        &["component=\"upload\"", "kind=\"body_too_slow\""],
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 2"), "{line}");
    let active = metric_line(&metrics, "edge_active_instances", &["component=\"upload\""])
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(active.ends_with(" 0"), "{active}");
    edge.stop().await;
}

// Issue 20, item 2: components forward `spin-client-addr` as the end client's address, so the
// runtime must not let a client choose it: a client-sent one is replaced, whichever value a
// component reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_is_the_peers_and_cannot_be_forged() {
    let edge = Edge::start(SLOTS, |_| {}).await;
    // A client on another loopback address, sending its own spin-client-addr.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(edge.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /thumb/t?action=info HTTP/1.1\r\nhost: edge.test\r\nspin-client-addr: 6.6.6.6:1\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = answer_within(&mut stream, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        field(&answer.body, "client-addrs"),
        Some(local.to_string().as_str()),
        "{answer:?}"
    );
    edge.stop().await;
}
