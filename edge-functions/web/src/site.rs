//! The pure rules of the static site: URL path → file, media types, cache policy, validators,
//! content negotiation, the `/config.json` origin and the HTML security headers. No I/O, so
//! they are unit-tested natively (`cargo test --manifest-path edge-functions/Cargo.toml -p web`).

/// Vite's content-hashed build output: the name changes whenever the bytes do.
const ASSETS_PREFIX: &str = "/assets/";
/// Content-hashed files: any cache may keep them for a year without asking again.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Everything else (`index.html`, `/config.json`, files of `public/`): cached, but revalidated
/// (a `304` when the `ETag` still matches) before each use, so a deployment shows at once.
pub const REVALIDATE: &str = "no-cache";

/// Why a request path maps to no file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not `/…`, a bad `%` escape, or not UTF-8 once decoded.
    Malformed(&'static str),
    /// A `.`/`..` segment, a NUL or a backslash (after decoding): never a file of the site.
    Refused(&'static str),
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::Malformed(why) | PathError::Refused(why) => f.write_str(why),
        }
    }
}

/// A request path as a path under the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePath {
    /// `/` or `/a/b` (decoded, empty segments dropped, no trailing `/`).
    pub path: String,
    /// The request named a directory (`/docs/`): only its `index.html` is looked for.
    pub directory: bool,
}

impl SitePath {
    /// The file to try first: the path itself, or the directory's `index.html`.
    pub fn file(&self) -> String {
        if self.directory {
            index_of(&self.path)
        } else {
            self.path.clone()
        }
    }

    /// Whether the last segment has no `.` (a client-side route such as `/products/42`, not
    /// a missing `/logo.png`): what the SPA fallback applies to.
    pub fn looks_like_a_route(&self) -> bool {
        let last = self.path.rsplit('/').next().unwrap_or_default();
        !last.contains('.')
    }
}

/// `dir/index.html`.
pub fn index_of(dir: &str) -> String {
    format!("{}/index.html", dir.trim_end_matches('/'))
}

/// Maps the request path (as received: percent-encoded, without the query) to a path under the
/// mount. `%XX` escapes are decoded first, so an encoded `..` (`%2e%2e`), `/` (`%2f`), `\`
/// (`%5c`) or NUL (`%00`) is judged like the plain character.
pub fn site_path(raw: &str) -> Result<SitePath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::Malformed("the path must start with /"));
    }
    let bytes = percent_decode(raw).ok_or(PathError::Malformed("bad %-escape in the path"))?;
    let decoded =
        String::from_utf8(bytes).map_err(|_| PathError::Malformed("the path is not UTF-8"))?;
    if decoded.contains('\0') {
        return Err(PathError::Refused("NUL in the path"));
    }
    if decoded.contains('\\') {
        return Err(PathError::Refused("backslash in the path"));
    }
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." | ".." => return Err(PathError::Refused("dot segment in the path")),
            other => segments.push(other),
        }
    }
    let directory = segments.is_empty() || decoded.ends_with('/');
    Ok(SitePath {
        path: format!("/{}", segments.join("/")),
        directory,
    })
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let high = (hex[0] as char).to_digit(16)?;
            let low = (hex[1] as char).to_digit(16)?;
            out.push((high * 16 + low) as u8);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    Some(out)
}

/// The `Content-Type` of a file, by its extension, with `charset=utf-8` for text.
///
/// `mime_guess` (2.0.5) is the table; three of its answers are dated and overridden: source
/// maps are JSON (it says `text/plain`), `.mjs` is `text/javascript` like `.js` (RFC 9239), and
/// `.woff` is `font/woff` (RFC 8081). Unknown extensions are `application/octet-stream`, which
/// with `nosniff` browsers download rather than guess.
pub fn content_type(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or_default();
    let extension = name
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    let essence = match extension.as_str() {
        "map" => "application/json".to_owned(),
        "mjs" | "js" => "text/javascript".to_owned(),
        "woff" => "font/woff".to_owned(),
        "" => "application/octet-stream".to_owned(),
        other => mime_guess::from_ext(other)
            .first_raw()
            .unwrap_or("application/octet-stream")
            .to_owned(),
    };
    if is_text(&essence) {
        format!("{essence}; charset=utf-8")
    } else {
        essence
    }
}

/// Media types whose bytes are text (UTF-8 in a Vite build).
fn is_text(essence: &str) -> bool {
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "application/javascript"
                | "image/svg+xml"
        )
}

/// Whether a `Content-Type` is an HTML document (which gets the security headers).
pub fn is_html(content_type: &str) -> bool {
    content_type.starts_with("text/html")
}

/// The `Cache-Control` of a file served at `path`.
pub fn cache_control(path: &str) -> &'static str {
    if path.starts_with(ASSETS_PREFIX) {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

/// A precompressed representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Brotli,
    Gzip,
}

impl Encoding {
    /// In the server's order of preference (smaller first) when the client likes both.
    pub const ALL: [Encoding; 2] = [Encoding::Brotli, Encoding::Gzip];

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix (`app.js.br`, `app.js.gz`).
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Brotli => ".br",
            Encoding::Gzip => ".gz",
        }
    }
}

/// The weight (`q`) `Accept-Encoding` gives a coding: its own entry, else `*`, else 0.
/// `x-gzip` counts as `gzip` (RFC 9110 §8.4.1.3). An unparsable `q` is 0.
fn weight(accept_encoding: &str, coding: &str) -> f32 {
    let mut wildcard = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let q = parts
            .filter_map(|param| param.split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, value)| value.trim().parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(0.0);
        let name = if name == "x-gzip" {
            "gzip".into()
        } else {
            name
        };
        if name == coding {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// The encoding to send, among those `available` as siblings: the one the client weighs
/// highest (`q` > 0), the server's order breaking ties; `None` for the file itself.
pub fn negotiate(accept_encoding: Option<&str>, available: &[Encoding]) -> Option<Encoding> {
    let accept = accept_encoding?;
    let mut best: Option<(Encoding, f32)> = None;
    for encoding in Encoding::ALL {
        if !available.contains(&encoding) {
            continue;
        }
        let q = weight(accept, encoding.token());
        if q > 0.0 && best.is_none_or(|(_, best_q)| q > best_q) {
            best = Some((encoding, q));
        }
    }
    best.map(|(encoding, _)| encoding)
}

/// A strong `ETag` from the file's size and modification time (nanoseconds), as nginx makes
/// them, tagged with the encoding so each representation has its own. The alternative, a hash
/// of the content, would read the whole file on every request (a `304` included), since an
/// instance keeps nothing between requests; the metadata costs one `stat`. It changes whenever
/// the file is rewritten; it may also change without a content change (a copy, another
/// replica), which costs a `200` instead of a `304`, never a stale answer.
pub fn etag(size: u64, modified: Option<(u64, u32)>, encoding: Option<Encoding>) -> String {
    let stamp = match modified {
        Some((seconds, nanos)) => format!("{seconds:x}.{nanos:x}-{size:x}"),
        None => format!("{size:x}"),
    };
    match encoding {
        Some(encoding) => format!("\"{stamp}-{}\"", encoding.token()),
        None => format!("\"{stamp}\""),
    }
}

/// A strong `ETag` of bytes made on the fly (FNV-1a 64 of the body).
pub fn etag_of(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// `If-None-Match` (a list, or `*`) against the current `ETag`, with the weak comparison
/// RFC 9110 §13.1.2 asks for (`W/` ignored on both sides).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let current = strip(etag);
    if_none_match.trim() == "*" || if_none_match.split(',').any(|tag| strip(tag) == current)
}

/// Whether `Accept` names `text/html` (with `q` > 0): a browser navigating, not a script's
/// `fetch` (which sends `*/*`).
pub fn accepts_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("text/html")
                && parts
                    .filter_map(|param| param.split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
                    .is_none_or(|(_, q)| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0))
        })
    })
}

/// An origin from a variable (`public_gateway_url`, `public_image_origin`): an
/// `http(s)://host[:port]` URL (a trailing `/` is dropped; a path, query, fragment or user
/// info is an error). The scheme and host are lower-cased.
pub fn origin_of(url: &str) -> Result<String, String> {
    let url = url.trim();
    let bad = |why: &str| Err(format!("{url:?}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("must be an http:// or https:// URL");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return bad("must be an http:// or https:// URL");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return bad("must be an origin (no path, query or fragment)");
    }
    if authority.contains('@') {
        return bad("must not carry user info");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((address, after)) = v6.split_once(']') else {
            return bad("unterminated IPv6 address");
        };
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return bad("bad IPv6 address");
        }
        (format!("[{address}]"), after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty()
        || !host.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad("bad host");
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(port) if port.parse::<u16>().is_ok_and(|port| port > 0) => {
            Ok(format!("{scheme}://{host}:{port}"))
        }
        Some(_) => bad("bad port"),
    }
}

/// The `Content-Security-Policy` of the HTML pages: everything from the site itself, images
/// also as `data:`/`blob:` URLs (drafts' thumbnails fetched with the seller's token) and from
/// the image origin when images are served elsewhere (a CDN in front of the images
/// function), gRPC-Web calls to the gateway's origin (and fetches of draft images from the
/// image origin); no plugins, no framing, no `<base>` or form posts elsewhere.
pub fn content_security_policy(gateway: Option<&str>, images: Option<&str>) -> String {
    let with = |base: &str, extra: &[Option<&str>]| {
        extra
            .iter()
            .flatten()
            .fold(base.to_owned(), |list, origin| format!("{list} {origin}"))
    };
    let img = with("'self' data: blob:", &[images]);
    let connect = with("'self'", &[gateway, images]);
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src {img}; \
         font-src 'self'; connect-src {connect}; object-src 'none'; base-uri 'self'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// The body of `/config.json`.
pub fn config_json(gateway: &str) -> String {
    serde_json::json!({ "gatewayUrl": gateway }).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn path(raw: &str) -> Result<(String, bool), PathError> {
        site_path(raw).map(|p| (p.path, p.directory))
    }

    #[test]
    fn paths_map_under_the_mount() {
        assert_eq!(path("/"), Ok(("/".into(), true)));
        assert_eq!(site_path("/").unwrap().file(), "/index.html");
        assert_eq!(
            path("/assets/app-1a2b.js"),
            Ok(("/assets/app-1a2b.js".into(), false))
        );
        assert_eq!(path("/docs/"), Ok(("/docs".into(), true)));
        assert_eq!(site_path("/docs/").unwrap().file(), "/docs/index.html");
        assert_eq!(path("//a///b"), Ok(("/a/b".into(), false)));
        assert_eq!(
            path("/caf%C3%A9%20menu.txt"),
            Ok(("/café menu.txt".into(), false))
        );
        assert_eq!(path("/.well-known/x"), Ok(("/.well-known/x".into(), false)));
        assert_eq!(path("/a%2Fb"), Ok(("/a/b".into(), false)));
    }

    #[test]
    fn traversal_and_odd_bytes_are_refused() {
        for raw in [
            "/../etc/passwd",
            "/assets/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fsecret",
            "/a/./b",
            "/.",
            "/x%00.html",
            "/a\\..\\b",
            "/a%5c..%5cb",
        ] {
            assert!(
                matches!(site_path(raw), Err(PathError::Refused(_))),
                "{raw}"
            );
        }
        for raw in ["", "assets/x.js", "/%", "/%4", "/%zz", "/%ff%fe"] {
            assert!(
                matches!(site_path(raw), Err(PathError::Malformed(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn routes_have_no_dot_in_their_last_segment() {
        assert!(site_path("/products/42").unwrap().looks_like_a_route());
        assert!(site_path("/").unwrap().looks_like_a_route());
        assert!(site_path("/v1.2/orders").unwrap().looks_like_a_route());
        assert!(!site_path("/logo.png").unwrap().looks_like_a_route());
        assert!(!site_path("/assets/app.js").unwrap().looks_like_a_route());
    }

    #[test]
    fn content_types_by_extension() {
        for (file, expected) in [
            ("/index.html", "text/html; charset=utf-8"),
            ("/assets/app-1a2b.js", "text/javascript; charset=utf-8"),
            ("/assets/m.mjs", "text/javascript; charset=utf-8"),
            ("/assets/app.css", "text/css; charset=utf-8"),
            ("/assets/app.js.map", "application/json; charset=utf-8"),
            ("/config.json", "application/json; charset=utf-8"),
            (
                "/site.webmanifest",
                "application/manifest+json; charset=utf-8",
            ),
            ("/logo.svg", "image/svg+xml; charset=utf-8"),
            ("/robots.txt", "text/plain; charset=utf-8"),
            ("/a.PNG", "image/png"),
            ("/a.webp", "image/webp"),
            ("/a.avif", "image/avif"),
            ("/f.woff2", "font/woff2"),
            ("/f.woff", "font/woff"),
            ("/m.wasm", "application/wasm"),
            ("/LICENSE", "application/octet-stream"),
            ("/x.unknownext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(file), expected, "{file}");
        }
        assert!(is_html(&content_type("/index.html")));
        assert!(!is_html(&content_type("/a.js")));
    }

    #[test]
    fn hashed_assets_are_immutable_the_rest_revalidated() {
        assert_eq!(cache_control("/assets/app-1a2b.js"), IMMUTABLE);
        assert_eq!(cache_control("/assets/img/logo-9f8e.png"), IMMUTABLE);
        assert_eq!(cache_control("/index.html"), REVALIDATE);
        assert_eq!(cache_control("/assetsfoo.js"), REVALIDATE);
        assert_eq!(cache_control("/favicon.ico"), REVALIDATE);
    }

    #[test]
    fn encodings_follow_the_clients_weights() {
        let both = [Encoding::Brotli, Encoding::Gzip];
        let gz = [Encoding::Gzip];
        assert_eq!(
            negotiate(Some("gzip, deflate, br, zstd"), &both),
            Some(Encoding::Brotli)
        );
        assert_eq!(
            negotiate(Some("gzip, deflate"), &both),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            negotiate(Some("br;q=0.5, gzip"), &both),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            negotiate(Some("br;q=0, gzip;q=0.1"), &both),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(Some("GZIP"), &gz), Some(Encoding::Gzip));
        assert_eq!(negotiate(Some("x-gzip"), &gz), Some(Encoding::Gzip));
        assert_eq!(negotiate(Some("*"), &both), Some(Encoding::Brotli));
        assert_eq!(
            negotiate(Some("*;q=0.2, br;q=0"), &both),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(Some("gzip;q=0"), &gz), None);
        assert_eq!(negotiate(Some("gzip;q=abc"), &gz), None);
        assert_eq!(negotiate(Some("identity"), &both), None);
        assert_eq!(negotiate(Some("br"), &gz), None);
        assert_eq!(negotiate(None, &both), None);
        assert_eq!(negotiate(Some("gzip"), &[]), None);
    }

    #[test]
    fn etags_are_strong_and_per_representation() {
        let plain = etag(0x1234, Some((0x65, 7)), None);
        assert_eq!(plain, "\"65.7-1234\"");
        assert_eq!(
            etag(0x1234, Some((0x65, 7)), Some(Encoding::Gzip)),
            "\"65.7-1234-gzip\""
        );
        assert_eq!(etag(16, None, None), "\"10\"");
        assert_ne!(etag(1, Some((1, 1)), None), etag(1, Some((1, 2)), None));
        assert!(none_match(&plain, &plain));
        assert!(none_match(&format!("\"x\", W/{plain}"), &plain));
        assert!(none_match(" * ", &plain));
        assert!(!none_match("\"65.7-1235\"", &plain));
        assert!(!none_match(
            &etag(0x1234, Some((0x65, 7)), Some(Encoding::Brotli)),
            &plain
        ));
        assert_eq!(etag_of(b""), "\"cbf29ce484222325\"");
        assert_ne!(etag_of(b"a"), etag_of(b"b"));
    }

    #[test]
    fn only_explicit_html_navigations_fall_back() {
        assert!(accepts_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(accepts_html(Some("TEXT/HTML; q=0.5")));
        assert!(!accepts_html(Some("text/html;q=0")));
        assert!(!accepts_html(Some("*/*")));
        assert!(!accepts_html(Some("application/json")));
        assert!(!accepts_html(None));
    }

    #[test]
    fn the_gateway_url_must_be_an_origin() {
        assert_eq!(
            origin_of("http://127.0.0.1:50050").unwrap(),
            "http://127.0.0.1:50050"
        );
        assert_eq!(
            origin_of(" HTTPS://Gateway.Example.com/ ").unwrap(),
            "https://gateway.example.com"
        );
        assert_eq!(origin_of("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        for bad in [
            "",
            "127.0.0.1:50050",
            "ftp://x",
            "http://",
            "http://x/api",
            "http://x?a=1",
            "http://x#f",
            "http://u:p@x",
            "http://x:0",
            "http://x:99999",
            "http://x:port",
            "http://bad_host",
            "http://[zz]:1",
        ] {
            assert!(origin_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_lets_the_page_reach_its_gateway() {
        let policy = content_security_policy(Some("http://127.0.0.1:50050"), None);
        assert!(
            policy.contains("connect-src 'self' http://127.0.0.1:50050;"),
            "{policy}"
        );
        assert!(policy.contains("img-src 'self' data: blob:;"), "{policy}");
        assert!(policy.contains("default-src 'self';"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(content_security_policy(None, None).contains("connect-src 'self';"));
        // Images from a CDN: shown, and fetched (drafts, with the seller's token).
        let cdn = content_security_policy(
            Some("https://api.example.com"),
            Some("https://img.example.com"),
        );
        assert!(
            cdn.contains("img-src 'self' data: blob: https://img.example.com;"),
            "{cdn}"
        );
        assert!(
            cdn.contains("connect-src 'self' https://api.example.com https://img.example.com;"),
            "{cdn}"
        );
        assert_eq!(
            config_json("http://127.0.0.1:50050"),
            r#"{"gatewayUrl":"http://127.0.0.1:50050"}"#
        );
    }
}
