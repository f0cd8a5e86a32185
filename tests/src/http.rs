//! A raw HTTP/1.1 client for tests: exactly the bytes asked for (a missing `Content-Length`
//! stays missing), one request per connection (`Connection: close`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Lowercased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(error) => panic!("not JSON ({error}): {} {}", self.status, self.text()),
        }
    }
}

/// Sends one request. With `body` `Some`, `Content-Length` is added unless `headers` has one;
/// with `None` the request has no body and no length. The body is written while the answer is
/// read, so an early answer (e.g. 413) is seen even when the server stops reading.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    let has_length = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = &body
        && !has_length
    {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        // Errors (the server answered early and closed) are expected in some tests.
        if writer.write_all(head.as_bytes()).await.is_ok()
            && let Some(body) = body
        {
            for chunk in body.chunks(64 * 1024) {
                if writer.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
        let _ = writer.flush().await;
        // Keep the write half open until the answer was read (closing it could end the
        // request early for the server).
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut raw)).await;
    writing.abort();
    if read.is_err() {
        panic!("no answer to {method} {path} within 60 s");
    }
    parse(&raw).unwrap_or_else(|| {
        panic!(
            "malformed answer to {method} {path}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Sends a request announcing `content_length` bytes but only `body` (fewer), then closes the
/// connection's write side, like a client that died mid-upload. Returns the answer if the
/// server sent one.
pub async fn request_cut_short(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    content_length: usize,
    body: &[u8],
) -> Option<Answer> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {content_length}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    stream.flush().await.ok()?;
    // Give the server time to start streaming, then vanish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.shutdown().await.ok()?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    parse(&raw)
}

impl Answer {
    /// Fails with the whole answer when the status differs.
    pub fn expect_status(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "answer: {} {:?} {}",
            self.status,
            self.headers,
            self.text()
        );
    }

    /// A JSON error body of the edge functions (`{"error":{"status","code","message"}}`) with
    /// this status and code.
    pub fn expect_error(&self, status: u16, code: &str) {
        self.expect_status(status);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.text()
        );
        let body = self.json();
        assert_eq!(
            body["error"]["status"],
            serde_json::Value::from(status),
            "{body}"
        );
        assert_eq!(
            body["error"]["code"],
            serde_json::Value::from(code),
            "{body}"
        );
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{body}"
        );
    }
}
