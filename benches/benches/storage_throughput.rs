//! Storage upload and download of one large object over loopback gRPC, against `cp` of the
//! same file in the same run, plus the process's peak RSS growth during each transfer.
//! Goals: ≥ 0.5× `cp` throughput, < 32 MiB RSS growth (the object is streamed, never
//! buffered whole).
//!
//! `cargo bench -p storemesh-benches --bench storage_throughput` (1 GiB, 3 runs);
//! `STOREMESH_BENCH_SMOKE=1` for 64 MiB once. Both sides fsync (storage's default; `cp` is
//! followed by `sync` of the copy).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use storemesh_auth::{AuthConfig, AuthSettings};
use storemesh_benches::report::{self, Check, Goal};
use storemesh_benches::{median, spread};
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::storage::v1 as pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_runtime::ServerConfig;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_testkit::{RedisServer, RunningHost};
use tokio_stream::StreamExt;

const CHUNK: usize = 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Resets the peak-RSS counter (Linux `clear_refs` 5) and returns the current RSS in KiB.
fn reset_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_kib("VmRSS:")
}

fn write_test_file(path: &Path, bytes: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut block = vec![0_u8; CHUNK];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for byte in &mut block {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    for index in 0..bytes / CHUNK as u64 {
        block[0] = index as u8;
        file.write_all(&block).unwrap();
    }
    file.sync_all().unwrap();
}

/// cp, upload and download times; upload and download peak RSS growth in KiB.
type Row = (Duration, Duration, Duration, u64, u64);

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn main() {
    let (size, runs) = if storemesh_benches::smoke() {
        (64 * 1024 * 1024_u64, 1)
    } else {
        (1024 * 1024 * 1024_u64, 3)
    };
    let work =
        tempfile::tempdir_in(std::env::var("STOREMESH_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    let source = work.path().join("source.bin");
    write_test_file(&source, size);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let redis = RedisServer::start().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let auth = RunningHost::spawn(
            storemesh_auth::build(AuthSettings {
                auth: AuthConfig {
                    server: ServerConfig::default(),
                    keys_dir: keys.path().to_path_buf(),
                    argon2: storemesh_auth::testing::cheap_argon2(),
                    admin_email: "admin@example.com".into(),
                    admin_password: "bench admin password".into(),
                    ..AuthConfig::default()
                },
                redis: RedisConfig {
                    url: redis.url(),
                    ..RedisConfig::default()
                },
                tokens: TokensConfig::default(),
            })
            .await
            .unwrap(),
        )
        .unwrap();
        let objects = work.path().join("objects");
        let storage = RunningHost::spawn(
            storemesh_storage::build(storemesh_storage::StorageSettings {
                storage: storemesh_storage::StorageConfig {
                    server: ServerConfig::default(),
                    data_dir: objects.clone(),
                    ..storemesh_storage::StorageConfig::default()
                },
                redis: RedisConfig {
                    url: redis.url(),
                    ..RedisConfig::default()
                },
                tokens: TokensConfig {
                    auth_endpoint: auth.endpoint(),
                    ..TokensConfig::default()
                },
            })
            .await
            .unwrap(),
        )
        .unwrap();
        let token = AuthServiceClient::new(auth.channel().await.unwrap())
            .login(auth_pb::LoginRequest {
                email: "admin@example.com".into(),
                password: "bench admin password".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap()
            .access_token;
        let client = StorageServiceClient::new(storage.channel().await.unwrap())
            .max_decoding_message_size(8 * CHUNK)
            .max_encoding_message_size(8 * CHUNK);

        let mut rows: Vec<Row> = Vec::new();
        for run in 0..runs {
            // Baseline: cp, then sync of the copy.
            let copy = work.path().join("copy.bin");
            let started = Instant::now();
            let status = std::process::Command::new("cp")
                .arg(&source)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(status.success());
            std::process::Command::new("sync")
                .arg(&copy)
                .status()
                .unwrap();
            let cp_time = started.elapsed();
            std::fs::remove_file(&copy).unwrap();

            // Upload, streaming the file in 1 MiB chunks.
            let key = format!("bench/object-{run}");
            let baseline_rss = reset_peak();
            let started = Instant::now();
            let (sender, receiver) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
            let reader = {
                let source = source.clone();
                let key = key.clone();
                tokio::task::spawn_blocking(move || {
                    let header = pb::UploadRequest {
                        payload: Some(pb::upload_request::Payload::Header(pb::UploadHeader {
                            target: Some(pb::upload_header::Target::Key(key)),
                            content_type: "application/octet-stream".into(),
                            expected_size_bytes: Some(size),
                            ..pb::UploadHeader::default()
                        })),
                    };
                    sender.blocking_send(header).unwrap();
                    let mut file = std::fs::File::open(source).unwrap();
                    loop {
                        let mut chunk = vec![0_u8; CHUNK];
                        let read = file.read(&mut chunk).unwrap();
                        if read == 0 {
                            break;
                        }
                        chunk.truncate(read);
                        let message = pb::UploadRequest {
                            payload: Some(pb::upload_request::Payload::Chunk(chunk)),
                        };
                        if sender.blocking_send(message).is_err() {
                            break;
                        }
                    }
                })
            };
            let uploaded = client
                .clone()
                .upload(bearer(
                    tokio_stream::wrappers::ReceiverStream::new(receiver),
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            reader.await.unwrap();
            let upload_time = started.elapsed();
            let upload_rss = status_kib("VmHWM:").saturating_sub(baseline_rss);
            assert_eq!(uploaded.object.unwrap().size_bytes, size);

            // Download to a file.
            let target = work.path().join("downloaded.bin");
            let baseline_rss = reset_peak();
            let started = Instant::now();
            let mut stream = client
                .clone()
                .download(bearer(
                    pb::DownloadRequest {
                        key: key.clone(),
                        offset: 0,
                        length: 0,
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            let mut file = std::fs::File::create(&target).unwrap();
            let mut received = 0_u64;
            while let Some(message) = stream.next().await {
                if let Some(pb::download_response::Payload::Chunk(chunk)) = message.unwrap().payload
                {
                    received += chunk.len() as u64;
                    file.write_all(&chunk).unwrap();
                }
            }
            file.sync_all().unwrap();
            let download_time = started.elapsed();
            let download_rss = status_kib("VmHWM:").saturating_sub(baseline_rss);
            assert_eq!(received, size);
            std::fs::remove_file(&target).unwrap();
            rows.push((
                cp_time,
                upload_time,
                download_time,
                upload_rss,
                download_rss,
            ));
        }

        let throughput = |time: Duration| size as f64 / MIB / time.as_secs_f64();
        let series = |pick: fn(&Row) -> Duration| -> Vec<f64> {
            rows.iter().map(|row| throughput(pick(row))).collect()
        };
        let (cp, up, down) = (series(|r| r.0), series(|r| r.1), series(|r| r.2));
        let (cp_median, up_median, down_median) = (median(&cp), median(&up), median(&down));
        let up_rss = rows.iter().map(|r| r.3).max().unwrap_or(0) as f64 / 1024.0;
        let down_rss = rows.iter().map(|r| r.4).max().unwrap_or(0) as f64 / 1024.0;
        let range = |values: &[f64]| {
            let (low, high) = spread(values);
            format!("{low:.0}–{high:.0}")
        };
        println!();
        println!(
            "| transfer of {:.0} MiB | MiB/s (median of {runs}) | min–max | × cp | peak RSS growth MiB (max) |",
            size as f64 / MIB
        );
        println!("|---|---|---|---|---|");
        println!("| cp + sync (baseline) | {cp_median:.0} | {} | 1.00 | — |", range(&cp));
        println!(
            "| storage Upload (gRPC, 1 MiB chunks) | {up_median:.0} | {} | {:.2} | {up_rss:.1} |",
            range(&up),
            up_median / cp_median
        );
        println!(
            "| storage Download (gRPC) | {down_median:.0} | {} | {:.2} | {down_rss:.1} |",
            range(&down),
            down_median / cp_median
        );
        println!();
        println!(
            "Both sides fsync. Client and server share this process, so the RSS growth is both \
             sides' buffers together."
        );
        println!();
        for (measure, value) in [
            ("upload MiB/s ÷ cp", up_median / cp_median),
            ("download MiB/s ÷ cp", down_median / cp_median),
        ] {
            report::record(&Check::new(
                "storage_throughput",
                measure,
                value,
                "×",
                Some(Goal::AtLeast(0.5)),
            ));
        }
        for (measure, value) in [
            ("upload peak RSS growth", up_rss),
            ("download peak RSS growth", down_rss),
        ] {
            report::record(&Check::new(
                "storage_throughput",
                measure,
                value,
                "MiB",
                Some(Goal::AtMost(32.0)),
            ));
        }
        drop((storage, auth, redis, keys));
    });
}
