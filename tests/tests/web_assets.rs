//! The `web` edge function on the embedded runtime, with the real `spin.toml` whose `files`
//! source is pointed at a temporary site (so the test needs no build of `web/dist`): content
//! types, cache policy, ETag/304, gzip siblings, the SPA fallback against `404`s, traversal,
//! `/config.json` and methods, through real HTTP.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use storemesh_system_tests::http::Answer;
use storemesh_system_tests::{Options, System};

/// The temporary site the manifest's `files` source points at (set before the system starts:
/// `Options::manifest_edit` is a plain function).
static SITE: OnceLock<PathBuf> = OnceLock::new();

const MOUNT: &str = r#"files = [{ source = "web/dist", destination = "/" }]"#;
const GATEWAY: &str = "https://gateway.example.test:8443";

fn mount_site(text: &str) -> String {
    let site = SITE
        .get()
        .expect("the site is written before the system starts");
    assert!(
        text.contains(MOUNT),
        "spin.toml no longer mounts web/dist as this test expects"
    );
    text.replace(
        MOUNT,
        &format!(
            r#"files = [{{ source = "{}", destination = "/" }}]"#,
            site.display()
        ),
    )
}

const INDEX: &str = "<!doctype html><title>Storemesh</title><div id=\"app\"></div><script type=\"module\" src=\"/assets/app-abc123.js\"></script>";

fn app_js() -> String {
    "export const greet = (name) => `hello ${name}`;\n".repeat(200)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// 300 KiB that do not repeat (more than the function's 64 KiB chunks).
fn big() -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..300 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn write_site(root: &Path) -> PathBuf {
    let site = root.join("site");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("index.html", INDEX.into()),
        ("index.html.gz", gzip(INDEX.as_bytes())),
        ("assets/app-abc123.js", app_js().into_bytes()),
        ("assets/app-abc123.js.gz", gzip(app_js().as_bytes())),
        ("assets/app-abc123.css", b"body { margin: 0 }".to_vec()),
        ("assets/blob-abc123.bin", big()),
        ("docs/index.html", b"<p>docs</p>".to_vec()),
        ("robots.txt", b"User-agent: *\n".to_vec()),
        (
            "logo.svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
        ),
        // Shadowed: /config.json is made from the public_gateway_url variable.
        (
            "config.json",
            br#"{"gatewayUrl":"http://stale.example"}"#.to_vec(),
        ),
    ];
    for (path, bytes) in files {
        let path = site.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    // Next to the site, never served.
    std::fs::write(root.join("secret.txt"), "not part of the site").unwrap();
    site
}

fn header(name: &'static str, value: &str) -> (&'static str, String) {
    (name, value.to_owned())
}

/// `Content-Type`, `Cache-Control` and `X-Content-Type-Options` of an answer.
fn expect_file(answer: &Answer, content_type: &str, cache_control: &str) {
    answer.expect_status(200);
    assert_eq!(answer.header("content-type"), Some(content_type));
    assert_eq!(answer.header("cache-control"), Some(cache_control));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    let etag = answer.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
}

fn expect_html_headers(answer: &Answer) {
    let policy = answer.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(
        policy.contains(&format!("connect-src 'self' {GATEWAY};")),
        "{policy}"
    );
    assert!(policy.contains("img-src 'self' data: blob:"), "{policy}");
    assert_eq!(
        answer.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_function_serves_a_static_site_like_a_cdn() {
    let root = tempfile::tempdir().unwrap();
    let site = write_site(root.path());
    SITE.set(site).unwrap();
    let mut options = Options {
        manifest_edit: Some(mount_site),
        ..Options::default()
    };
    options
        .variables
        .insert("public_gateway_url".into(), format!("{GATEWAY}/"));
    let system = System::start_with(options).await;

    // The page: HTML, revalidated, with its security headers.
    let page = system.edge_get("/", &[]).await;
    expect_file(&page, "text/html; charset=utf-8", "no-cache");
    expect_html_headers(&page);
    assert_eq!(page.text(), INDEX);
    assert_eq!(page.header("vary"), Some("Accept-Encoding"));
    let same = system.edge_get("/index.html", &[]).await;
    assert_eq!(same.text(), INDEX);
    assert_eq!(same.header("etag"), page.header("etag"));

    // A content-hashed asset: immutable; gzip when accepted, the plain file otherwise.
    let plain = system.edge_get("/assets/app-abc123.js", &[]).await;
    expect_file(&plain, "text/javascript; charset=utf-8", IMMUTABLE);
    assert_eq!(plain.text(), app_js());
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_eq!(
        plain.header("content-length"),
        Some(app_js().len().to_string().as_str())
    );
    assert!(plain.header("content-security-policy").is_none());
    let zipped = system
        .edge_get(
            "/assets/app-abc123.js",
            &[header("accept-encoding", "gzip, deflate, br")],
        )
        .await;
    expect_file(&zipped, "text/javascript; charset=utf-8", IMMUTABLE);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(zipped.header("vary"), Some("Accept-Encoding"));
    assert!(zipped.body.len() < app_js().len() / 4);
    assert_eq!(gunzip(&zipped.body), app_js().as_bytes());
    assert_ne!(zipped.header("etag"), plain.header("etag"));
    let refused = system
        .edge_get(
            "/assets/app-abc123.js",
            &[header("accept-encoding", "gzip;q=0, br")],
        )
        .await;
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(refused.text(), app_js());

    // Revalidation: the ETag of the representation asked for.
    let etag = plain.header("etag").unwrap().to_owned();
    for tags in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
        let not_modified = system
            .edge_get("/assets/app-abc123.js", &[header("if-none-match", &tags)])
            .await;
        not_modified.expect_status(304);
        assert!(not_modified.body.is_empty());
        assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
        assert_eq!(not_modified.header("cache-control"), Some(IMMUTABLE));
    }
    let other_encoding = system
        .edge_get(
            "/assets/app-abc123.js",
            &[
                header("if-none-match", &etag),
                header("accept-encoding", "gzip"),
            ],
        )
        .await;
    other_encoding.expect_status(200);
    assert_eq!(other_encoding.header("content-encoding"), Some("gzip"));
    let changed = system
        .edge_get("/", &[header("if-none-match", "\"stale\"")])
        .await;
    changed.expect_status(200);
    let page_304 = system
        .edge_get(
            "/",
            &[header("if-none-match", page.header("etag").unwrap())],
        )
        .await;
    page_304.expect_status(304);

    // HEAD: the headers of a GET, no body.
    let head = system
        .edge_request("HEAD", "/assets/app-abc123.js", &[])
        .await;
    head.expect_status(200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(app_js().len().to_string().as_str())
    );
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    // Other files: media types, no sibling (no Vary), streamed beyond one chunk.
    for (path, content_type, cache) in [
        (
            "/assets/app-abc123.css",
            "text/css; charset=utf-8",
            IMMUTABLE,
        ),
        ("/robots.txt", "text/plain; charset=utf-8", "no-cache"),
        ("/logo.svg", "image/svg+xml; charset=utf-8", "no-cache"),
    ] {
        let answer = system.edge_get(path, &[]).await;
        expect_file(&answer, content_type, cache);
        assert_eq!(answer.header("vary"), None, "{path}");
    }
    let blob = system.edge_get("/assets/blob-abc123.bin", &[]).await;
    expect_file(&blob, "application/octet-stream", IMMUTABLE);
    assert_eq!(blob.body, big());

    // Directories serve their index.html.
    for path in ["/docs/", "/docs"] {
        let docs = system.edge_get(path, &[]).await;
        expect_file(&docs, "text/html; charset=utf-8", "no-cache");
        assert_eq!(docs.text(), "<p>docs</p>", "{path}");
    }

    // The SPA fallback: a browser navigating to a client-side route gets the page...
    for route in ["/products/01J8ZQ", "/seller/products/new/"] {
        let answer = system
            .edge_get(route, &[header("accept", BROWSER_ACCEPT)])
            .await;
        expect_file(&answer, "text/html; charset=utf-8", "no-cache");
        expect_html_headers(&answer);
        assert_eq!(answer.text(), INDEX, "{route}");
    }
    let head = system
        .edge_request(
            "HEAD",
            "/products/01J8ZQ",
            &[header("accept", BROWSER_ACCEPT)],
        )
        .await;
    head.expect_status(200);
    assert!(head.body.is_empty());
    // ...but a missing file, or a script's request, is a 404.
    for (path, accept) in [
        ("/products/01J8ZQ", "*/*"),
        ("/products/01J8ZQ", "application/json"),
        ("/missing.png", BROWSER_ACCEPT),
        ("/assets/app-0000.js", BROWSER_ACCEPT),
    ] {
        let answer = system.edge_get(path, &[header("accept", accept)]).await;
        answer.expect_error(404, "not_found");
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{path}");
    }
    let answer = system.edge_get("/products/01J8ZQ", &[]).await;
    answer.expect_error(404, "not_found");

    // Traversal and odd bytes are refused before any file is looked at.
    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2F..%2Fsecret.txt",
        "/a%00.html",
        "/..%5csecret.txt",
        "/%zz",
    ] {
        let answer = system
            .edge_get(path, &[header("accept", BROWSER_ACCEPT)])
            .await;
        answer.expect_error(400, "bad_request");
        assert!(!answer.text().contains("not part of the site"), "{path}");
    }

    // /config.json comes from the variable (the stale file in the site is not served).
    let config = system.edge_get("/config.json", &[]).await;
    config.expect_status(200);
    assert_eq!(
        config.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(config.header("cache-control"), Some("no-cache"));
    assert_eq!(config.json(), serde_json::json!({ "gatewayUrl": GATEWAY }));
    let config_304 = system
        .edge_get(
            "/config.json",
            &[header("if-none-match", config.header("etag").unwrap())],
        )
        .await;
    config_304.expect_status(304);
    let config_head = system.edge_request("HEAD", "/config.json", &[]).await;
    config_head.expect_status(200);
    assert!(config_head.body.is_empty());

    // Methods: GET and HEAD only.
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/config.json"),
        ("DELETE", "/assets/app-abc123.js"),
        ("OPTIONS", "/products/1"),
    ] {
        let answer = system.edge_request(method, path, &[]).await;
        answer.expect_error(405, "method_not_allowed");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method} {path}");
    }

    // The other functions' routes still win over the catch-all, and the runtime's own.
    let upload = system.edge_get("/v1/products/01J8ZQ/images", &[]).await;
    upload.expect_error(405, "method_not_allowed");
    assert_eq!(upload.header("allow"), Some("POST"));
    let health = system.edge_get("/.well-known/spin/health", &[]).await;
    assert_eq!((health.status, health.text().as_str()), (200, "OK"));

    system.stop().await;
}

/// The top-level imports of a component binary.
fn component_imports(bytes: &[u8]) -> Vec<String> {
    use wasmparser::{Parser, Payload};
    let mut imports = Vec::new();
    let mut depth = 0_usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    imports.push(import.unwrap().name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    imports
}

/// What `tests/tests/component_imports.rs` checks for the other functions, with
/// `wasi:filesystem` (which Spin links for every component) for the `files` mount, and no
/// outbound HTTP.
#[test]
fn the_web_function_imports_wasi_0_2_with_filesystem_and_no_outbound_http() {
    let path = storemesh_edge::testing::fixture("web").unwrap_or_else(|message| {
        panic!(
            "{message}\n(the edge functions: {})",
            storemesh_system_tests::EDGE_BUILD_COMMAND
        )
    });
    let imports = component_imports(&std::fs::read(path).unwrap());
    assert!(
        imports
            .iter()
            .any(|name| name.starts_with("wasi:filesystem/preopens@0.2.")),
        "{imports:?}"
    );
    assert!(
        !imports
            .iter()
            .any(|name| name.starts_with("wasi:http/outgoing-handler")),
        "{imports:?}"
    );
    for name in &imports {
        let (interface, version) = name.split_once('@').unwrap_or((name, ""));
        let wasi = ["cli", "clocks", "random", "io", "filesystem", "http"]
            .iter()
            .any(|package| interface.starts_with(&format!("wasi:{package}/")));
        assert!(
            (wasi && version.starts_with("0.2.")) || name == "fermyon:spin/variables@2.0.0",
            "web imports {name} (all: {imports:?})"
        );
    }
}
