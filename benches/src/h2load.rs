//! gRPC unary load with `h2load` (Debian `nghttp2-client`): an external, well-known HTTP/2 load
//! generator, so the client's cost is not charged to the servers' tokio runtime and every
//! target is driven the same way.
//!
//! A unary call is an HTTP/2 POST to `/pkg.Service/Method` with `content-type:
//! application/grpc`, `te: trailers` and a body of 1 byte 0 + 4-byte big-endian length + the
//! protobuf message. gRPC errors come back as HTTP 200 with `grpc-status` in the trailers and no
//! message, so a run is only trusted when every response carried at least the expected number
//! of data bytes ([`Run::check_responses`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `h2load` on PATH, if installed.
pub fn find() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("h2load"))
            .find(|candidate| candidate.is_file())
    })
}

/// The gRPC length-prefixed frame of one uncompressed message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// One h2load run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub requests_per_sec: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// DATA bytes received (response messages).
    pub data_bytes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Run {
    /// Fails unless every request succeeded at HTTP level and carried a response message of at
    /// least `response_frame_bytes` (a gRPC error is HTTP 200 with no message).
    pub fn check_responses(&self, response_frame_bytes: u64) -> Result<(), String> {
        if self.failed > 0 || self.succeeded == 0 {
            return Err(format!(
                "{} of {} requests failed",
                self.failed,
                self.failed + self.succeeded
            ));
        }
        let expected = self.succeeded * response_frame_bytes;
        if self.data_bytes < expected {
            return Err(format!(
                "{} data bytes for {} responses of {response_frame_bytes} bytes: some calls \
                 returned a gRPC error (trailers only)",
                self.data_bytes, self.succeeded
            ));
        }
        Ok(())
    }
}

/// Parses h2load's summary ("finished in …, N req/s", "requests: …", "traffic: …").
pub fn parse_summary(output: &str) -> Result<(f64, u64, u64, u64), String> {
    let requests_per_sec = output
        .lines()
        .find(|line| line.starts_with("finished in"))
        .and_then(|line| {
            line.split(',')
                .find(|part| part.trim_end().ends_with("req/s"))?
                .trim()
                .trim_end_matches("req/s")
                .trim()
                .parse()
                .ok()
        })
        .ok_or("no `finished in …, N req/s` line")?;
    let requests = output
        .lines()
        .find(|line| line.starts_with("requests:"))
        .ok_or("no `requests:` line")?;
    let count = |label: &str| -> Result<u64, String> {
        requests
            .split(',')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(label)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or(format!("no `{label}` count in {requests:?}"))
    };
    let succeeded = count("succeeded")?;
    let failed = count("failed")? + count("errored")? + count("timeout")?;
    let traffic = output
        .lines()
        .find(|line| line.starts_with("traffic:"))
        .ok_or("no `traffic:` line")?;
    // "…, 1.20MB (1258000) data"
    let data_bytes = traffic
        .split(',')
        .find(|part| part.trim_end().ends_with("data"))
        .and_then(|part| part.split_once('(')?.1.split_once(')')?.0.parse().ok())
        .ok_or(format!("no data byte count in {traffic:?}"))?;
    Ok((requests_per_sec, succeeded, failed, data_bytes))
}

/// p50 and p99 in ms from an h2load `--log-file` (start µs, status, duration µs per line), of
/// the responses with HTTP status `status`.
pub fn latency_percentiles(log: &str, status: i32) -> Option<(f64, f64)> {
    let mut durations: Vec<u64> = log
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let _start = columns.next()?;
            let answered: i32 = columns.next()?.trim().parse().ok()?;
            let micros = columns.next()?.trim().parse().ok()?;
            (answered == status).then_some(micros)
        })
        .collect();
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let at = |quantile: f64| {
        let index = ((durations.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
        durations[index.min(durations.len() - 1)] as f64 / 1000.0
    };
    Some((at(0.5), at(0.99)))
}

/// What to send.
pub struct Target<'a> {
    /// `http://127.0.0.1:PORT/pkg.Service/Method`
    pub url: String,
    /// Extra headers (`authorization: Bearer …`).
    pub headers: &'a [String],
    /// The request frame (see [`grpc_frame`]).
    pub body: &'a [u8],
}

/// Runs h2load against `target` for `duration` with `connections` × `streams` concurrent calls
/// on one client thread.
pub fn run(
    h2load: &Path,
    target: &Target<'_>,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Result<Run, String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let body = dir.path().join("body");
    std::fs::write(&body, target.body).map_err(|error| error.to_string())?;
    let mut command = load(h2load, &target.url, connections, streams, duration);
    command.arg("-d").arg(&body).args([
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]);
    for header in target.headers {
        command.args(["-H", header]);
    }
    execute(h2load, command, &dir, 200)
}

/// Plain HTTP `GET`s of `url` (HTTP/1.1 keep-alive with `h1`, as browsers and CDNs fetch
/// images; else h2c), every answer expected to have status `expect_status` (e.g. 304 for
/// revalidations).
pub fn run_get(
    h2load: &Path,
    url: &str,
    headers: &[String],
    h1: bool,
    expect_status: i32,
    connections: usize,
    duration: Duration,
) -> Result<Run, String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut command = load(h2load, url, connections, 1, duration);
    if h1 {
        command.arg("--h1");
    }
    for header in headers {
        command.args(["-H", header]);
    }
    execute(h2load, command, &dir, expect_status)
}

/// h2load for `duration` with `connections` × `streams` concurrent requests on one client
/// thread, logging each request. In smoke mode a fixed number of requests instead (two per
/// concurrent slot): a smoke run checks that the code works, and on a loaded machine a debug
/// build may not finish any request within a one-second window.
fn load(
    h2load: &Path,
    url: &str,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Command {
    let mut command = Command::new(h2load);
    command
        .arg(url)
        .args(["-c", &connections.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["-t", "1"]);
    if crate::smoke() {
        command
            .args(["-n", &(2 * connections * streams).to_string()])
            // A server that stops answering fails the run instead of hanging it.
            .args(["-N", "60s"]);
    } else {
        command.args(["-D", &duration.as_secs().max(1).to_string()]);
    }
    command
}

fn execute(
    h2load: &Path,
    mut command: Command,
    dir: &tempfile::TempDir,
    status: i32,
) -> Result<Run, String> {
    let log = dir.path().join("log");
    command.arg("--log-file").arg(&log);
    let output = command
        .output()
        .map_err(|error| format!("{}: {error}", h2load.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "h2load exited with {}: {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let (requests_per_sec, succeeded, failed, data_bytes) =
        parse_summary(&stdout).map_err(|error| format!("{error} in h2load output:\n{stdout}"))?;
    let log = std::fs::read_to_string(&log).map_err(|error| error.to_string())?;
    let (p50_ms, p99_ms) = latency_percentiles(&log, status)
        .ok_or_else(|| format!("h2load logged no response with status {status}:\n{stdout}"))?;
    Ok(Run {
        requests_per_sec,
        succeeded,
        failed,
        data_bytes,
        p50_ms,
        p99_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "\
starting benchmark...
finished in 5.00s, 21804.60 req/s, 1.29MB/s
requests: 109023 total, 109055 started, 109023 done, 109023 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 109023 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 6.45MB (6763345) total, 1.15MB (1209229) headers (space savings 95.51%), 2.70MB (2834598) data
";

    #[test]
    fn frames_a_message() {
        assert_eq!(grpc_frame(b"\x0a\x01x"), b"\0\0\0\0\x03\x0a\x01x");
    }

    #[test]
    fn parses_the_summary() {
        assert_eq!(
            parse_summary(SUMMARY).unwrap(),
            (21804.60, 109023, 0, 2834598)
        );
        assert!(parse_summary("finished in 5.00s, 1 req/s\n").is_err());
    }

    #[test]
    fn trailers_only_answers_fail_the_check() {
        let run = Run {
            requests_per_sec: 1.0,
            succeeded: 10,
            failed: 0,
            data_bytes: 260,
            p50_ms: 1.0,
            p99_ms: 2.0,
        };
        assert!(run.check_responses(26).is_ok());
        assert!(run.check_responses(27).unwrap_err().contains("gRPC error"));
        let failing = Run { failed: 1, ..run };
        assert!(failing.check_responses(1).is_err());
    }

    #[test]
    fn percentiles_from_the_log() {
        let log: String = (1..=100)
            .map(|micros| format!("1700000000000000\t200\t{}\n", micros * 1000))
            .chain(std::iter::once("1700000000000000\t-1\t5\n".to_owned()))
            .collect();
        assert_eq!(latency_percentiles(&log, 200), Some((50.0, 99.0)));
        assert_eq!(latency_percentiles(&log, 304), None);
        assert_eq!(latency_percentiles("", 200), None);
    }
}
