//! `web`: the seller console and storefront, a static site (Vite's `web/dist`) served from the
//! component's `files` mount at `/` (`spin.toml`: route `/...`, `files = [{ source =
//! "web/dist", destination = "/" }]`), so the pages, the upload hook and the images share one
//! origin. What a CDN in front of a static site does:
//!
//! 1. `GET` and `HEAD` only (`405`, `Allow: GET, HEAD`).
//! 2. The path (Spin's `spin-path-info`, percent-decoded) names a file under `/`; `.`/`..`
//!    segments, NUL and backslashes are `400` (and the mount is a read-only preopen the guest
//!    cannot leave anyway). `/` and directories serve their `index.html`.
//! 3. `GET /config.json` is made from the `public_gateway_url` variable (the gateway as the
//!    browser reaches it): `{"gatewayUrl":"…"}`, `Cache-Control: no-cache`. The front end reads
//!    it at start to know where to send its gRPC-Web calls.
//! 4. A missing file whose last segment has no `.`, asked for by a browser (`Accept:
//!    text/html`), is a client-side route: `/index.html` is served (the SPA fallback). Anything
//!    else missing is a `404` JSON error.
//! 5. Headers: `Content-Type` by extension (`charset=utf-8` for text), `X-Content-Type-Options:
//!    nosniff`; `Cache-Control: public, max-age=31536000, immutable` under `/assets/` (Vite's
//!    content-hashed names), `no-cache` elsewhere; a strong `ETag` (size and modification time)
//!    and `If-None-Match` → `304`. HTML pages also get `Content-Security-Policy` (self, the
//!    gateway for `connect-src`, `data:`/`blob:` images) and `Referrer-Policy`.
//! 6. A precompressed sibling (`app.js.br`, `app.js.gz`, written at build time) is sent with
//!    `Content-Encoding` when `Accept-Encoding` allows it; whenever a file has one, the answer
//!    carries `Vary: Accept-Encoding`.
//! 7. The body is streamed from the file in 64 KiB chunks (an instance never holds a whole
//!    file); `HEAD` sends the headers only, `Content-Length` included.
//!
//! Errors are JSON, `{"error":{"status":…,"code":"…","message":"…"}}`, with `Cache-Control:
//! no-store`.

mod site;

use std::io::Read;

use futures::SinkExt;
use spin_sdk::http::{Fields, IncomingRequest, Method, OutgoingResponse, ResponseOutparam};
use spin_sdk::http_component;

use crate::site::{Encoding, SitePath};

const COMPONENT: &str = "web";
/// Bytes read from the file and written to the response at a time.
const CHUNK: usize = 64 * 1024;

#[http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    let request = Incoming::of(&request);
    match answer(&request) {
        Ok(Answer::Head(head)) => send(out, head, Body::None).await,
        Ok(Answer::Bytes(head, bytes)) => send(out, head, Body::Bytes(bytes)).await,
        Ok(Answer::File(head, file)) => send(out, head, Body::File(file)).await,
        Err(error) => send_error(out, error).await,
    }
}

// ---- the request ----------------------------------------------------------------------------

/// What the answer depends on, read once from the incoming request.
struct Incoming {
    head: bool,
    method_allowed: bool,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Incoming {
    fn of(request: &IncomingRequest) -> Self {
        let method = request.method();
        let headers = request.headers().entries();
        let target = request.path_with_query().unwrap_or_default();
        let uri_path = target.split('?').next().unwrap_or_default().to_owned();
        let mut incoming = Self {
            head: matches!(method, Method::Head),
            method_allowed: matches!(method, Method::Get | Method::Head),
            path: uri_path,
            headers,
        };
        // Spin's path relative to the route (the whole path under `/...`; empty for the bare
        // prefix of another wildcard route); Spin appends its own value after any a client
        // sent, so the last one is Spin's.
        if let Some(info) = incoming.header("spin-path-info") {
            incoming.path = if info.is_empty() { "/" } else { info }.to_owned();
        }
        incoming
    }

    /// The last value of `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rfind(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Every value of a list-valued header, joined with `, `.
    fn list(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// An error answer.
struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }
}

/// The status line and headers of an answer.
struct Head {
    status: u16,
    headers: Vec<(&'static str, String)>,
}

enum Answer {
    /// No body (`HEAD`, `304`).
    Head(Head),
    /// A body made here (`/config.json`).
    Bytes(Head, Vec<u8>),
    /// A body streamed from a file.
    File(Head, std::fs::File),
}

fn answer(request: &Incoming) -> Result<Answer, ApiError> {
    if !request.method_allowed {
        let mut error = ApiError::new(405, "method_not_allowed", "use GET or HEAD");
        error.headers.push(("allow", "GET, HEAD".into()));
        return Err(error);
    }
    let path = site::site_path(&request.path)
        .map_err(|error| ApiError::new(400, "bad_request", format!("{}: {error}", request.path)))?;
    if path.path == "/config.json" {
        return config(request);
    }
    let file = match find(&path) {
        Some(found) => found,
        None if path.looks_like_a_route() && site::accepts_html(request.header("accept")) => {
            find(&SitePath {
                path: "/".into(),
                directory: true,
            })
            .ok_or_else(|| ApiError::new(404, "not_found", "the site has no /index.html"))?
        }
        None => {
            return Err(ApiError::new(
                404,
                "not_found",
                format!("no file at {}", path.path),
            ));
        }
    };
    serve(request, &file)
}

/// The file a path names: itself, or the `index.html` of the directory it names.
fn find(path: &SitePath) -> Option<String> {
    let first = path.file();
    match std::fs::metadata(&first) {
        Ok(metadata) if metadata.is_file() => Some(first),
        Ok(metadata) if metadata.is_dir() => {
            let index = site::index_of(&first);
            is_file(&index).then_some(index)
        }
        _ => None,
    }
}

fn is_file(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file())
}

/// `(size, (seconds, nanoseconds))` of a file.
fn stamp(metadata: &std::fs::Metadata) -> (u64, Option<(u64, u32)>) {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|since| (since.as_secs(), since.subsec_nanos()));
    (metadata.len(), modified)
}

fn internal(message: String) -> ApiError {
    ApiError::new(500, "internal", message)
}

fn serve(request: &Incoming, file: &str) -> Result<Answer, ApiError> {
    let content_type = site::content_type(file);
    let available: Vec<Encoding> = Encoding::ALL
        .into_iter()
        .filter(|encoding| is_file(&format!("{file}{}", encoding.suffix())))
        .collect();
    let encoding = site::negotiate(request.list("accept-encoding").as_deref(), &available);
    let served = match encoding {
        Some(encoding) => format!("{file}{}", encoding.suffix()),
        None => file.to_owned(),
    };
    let opened = std::fs::File::open(&served)
        .map_err(|error| internal(format!("cannot open {served}: {error}")))?;
    let metadata = opened
        .metadata()
        .map_err(|error| internal(format!("cannot stat {served}: {error}")))?;
    let (size, modified) = stamp(&metadata);
    let etag = site::etag(size, modified, encoding);

    let mut headers: Vec<(&'static str, String)> = vec![
        ("etag", etag.clone()),
        ("cache-control", site::cache_control(file).into()),
        ("x-content-type-options", "nosniff".into()),
    ];
    if !available.is_empty() {
        headers.push(("vary", "Accept-Encoding".into()));
    }
    if site::is_html(&content_type) {
        headers.extend(html_headers());
    }
    if request
        .list("if-none-match")
        .is_some_and(|tags| site::none_match(&tags, &etag))
    {
        return Ok(Answer::Head(Head {
            status: 304,
            headers,
        }));
    }
    headers.push(("content-type", content_type));
    if let Some(encoding) = encoding {
        headers.push(("content-encoding", encoding.token().into()));
    }
    headers.push(("content-length", size.to_string()));
    let head = Head {
        status: 200,
        headers,
    };
    Ok(if request.head {
        Answer::Head(head)
    } else {
        Answer::File(head, opened)
    })
}

/// The gateway's origin, from the `public_gateway_url` variable.
fn gateway() -> Result<String, String> {
    let url = spin_sdk::variables::get("public_gateway_url")
        .map_err(|error| format!("public_gateway_url: {error}"))?;
    site::origin_of(&url).map_err(|error| format!("public_gateway_url {error}"))
}

/// The origin of image URLs when it is not this site's (`public_image_origin`; empty: none).
fn image_origin() -> Result<Option<String>, String> {
    let url = spin_sdk::variables::get("public_image_origin")
        .map_err(|error| format!("public_image_origin: {error}"))?;
    if url.trim().is_empty() {
        return Ok(None);
    }
    site::origin_of(&url)
        .map(Some)
        .map_err(|error| format!("public_image_origin {error}"))
}

/// The security headers of an HTML page. A misconfigured gateway URL leaves `connect-src` at
/// `'self'` (the page then reports `/config.json`'s error).
fn html_headers() -> [(&'static str, String); 2] {
    let gateway = gateway()
        .inspect_err(|error| eprintln!("{COMPONENT}: {error}"))
        .ok();
    let images = image_origin()
        .inspect_err(|error| eprintln!("{COMPONENT}: {error}"))
        .ok()
        .flatten();
    [
        (
            "content-security-policy",
            site::content_security_policy(gateway.as_deref(), images.as_deref()),
        ),
        ("referrer-policy", "strict-origin-when-cross-origin".into()),
    ]
}

fn config(request: &Incoming) -> Result<Answer, ApiError> {
    let gateway = gateway().map_err(|message| ApiError::new(500, "misconfigured", message))?;
    let body = site::config_json(&gateway).into_bytes();
    let etag = site::etag_of(&body);
    let mut headers: Vec<(&'static str, String)> = vec![
        ("etag", etag.clone()),
        ("cache-control", site::REVALIDATE.into()),
        ("x-content-type-options", "nosniff".into()),
    ];
    if request
        .list("if-none-match")
        .is_some_and(|tags| site::none_match(&tags, &etag))
    {
        return Ok(Answer::Head(Head {
            status: 304,
            headers,
        }));
    }
    headers.push(("content-type", site::content_type("/config.json")));
    headers.push(("content-length", body.len().to_string()));
    let head = Head {
        status: 200,
        headers,
    };
    Ok(if request.head {
        Answer::Head(head)
    } else {
        Answer::Bytes(head, body)
    })
}

// ---- answers --------------------------------------------------------------------------------

enum Body {
    None,
    Bytes(Vec<u8>),
    File(std::fs::File),
}

fn outgoing(head: &Head) -> Option<OutgoingResponse> {
    let entries: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone().into_bytes()))
        .collect();
    let fields = Fields::from_list(&entries).ok()?;
    let response = OutgoingResponse::new(fields);
    response.set_status_code(head.status).ok()?;
    Some(response)
}

async fn send(out: ResponseOutparam, head: Head, body: Body) {
    let Some(response) = outgoing(&head) else {
        let error = internal(format!("a {} answer's headers were refused", head.status));
        return send_error(out, error).await;
    };
    match body {
        // The body resource is never taken: the host sends none, even though `Content-Length`
        // (of a `HEAD`) says what a `GET` would carry.
        Body::None => out.set(response),
        Body::Bytes(bytes) => {
            if let Err(error) = out.set_with_body(response, bytes).await {
                eprintln!("{COMPONENT}: writing an answer: {error}");
            }
        }
        Body::File(mut file) => {
            let mut sink = response.take_body();
            out.set(response);
            loop {
                let mut chunk = vec![0_u8; CHUNK];
                let read = match file.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(error) => {
                        // Headers are out: the body ends short of its Content-Length, which the
                        // host turns into an aborted response rather than a short success.
                        eprintln!("{COMPONENT}: reading a file mid-answer: {error}");
                        return;
                    }
                };
                chunk.truncate(read);
                if let Err(error) = sink.send(chunk).await {
                    eprintln!("{COMPONENT}: the client stopped reading: {error}");
                    return;
                }
            }
        }
    }
}

async fn send_error(out: ResponseOutparam, error: ApiError) {
    if error.status >= 500 {
        eprintln!(
            "{COMPONENT}: {} {}: {}",
            error.status, error.code, error.message
        );
    }
    let body = serde_json::json!({
        "error": { "status": error.status, "code": error.code, "message": error.message }
    })
    .to_string()
    .into_bytes();
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("content-length", body.len().to_string()),
        ("cache-control", "no-store".to_owned()),
        ("x-content-type-options", "nosniff".to_owned()),
    ];
    headers.extend(error.headers);
    let head = Head {
        status: error.status,
        headers,
    };
    match outgoing(&head) {
        Some(response) => {
            if let Err(error) = out.set_with_body(response, body).await {
                eprintln!("{COMPONENT}: writing an error answer: {error}");
            }
        }
        None => eprintln!("{COMPONENT}: an error answer was refused by the host"),
    }
}
