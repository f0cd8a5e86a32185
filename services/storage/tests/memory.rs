//! Memory stays bounded whatever the object size: a 64 MiB upload and download through the
//! service (client and server in this process) must not raise the process's peak resident
//! memory by anything near the object's size. Its own test binary, so no other test's
//! allocations share the measurement.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sha2::Digest;
use storemesh_proto::storage::v1 as pb;

const OBJECT_BYTES: usize = 64 * MIB;
/// Allowed growth of peak RSS during one transfer. Buffering the object would need ≥ 64 MiB;
/// the design needs about `part_size × (parts_in_flight + 1)` (15 MiB at the defaults) plus a
/// few messages in flight on each side.
const BUDGET_KIB: u64 = 40 * 1024;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets the peak-RSS counter (VmHWM) to the current RSS; returns the new baseline.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    status_kib("VmHWM:")
}

/// The object, generated on the fly one 1 MiB chunk at a time (never held whole).
fn chunks() -> impl Iterator<Item = Vec<u8>> {
    (0..OBJECT_BYTES / MIB).map(|index| pseudo_random(MIB, index as u64 + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_do_not_buffer_the_object() {
    let mesh = Mesh::start_with(
        storemesh_testkit::RedisServer::start().unwrap(),
        |settings| {
            // Production defaults for what sizes the buffers.
            let defaults = storemesh_storage::StorageConfig::default();
            settings.storage.part_size_bytes = defaults.part_size_bytes;
            settings.storage.parts_in_flight = defaults.parts_in_flight;
        },
    )
    .await;
    let mut client = mesh.client().await;
    // Warm up connections, allocator arenas and thread pools.
    upload(
        &mut client,
        &mesh.admin,
        header("warm/up", ""),
        &pseudo_random(3 * MIB, 9),
    )
    .await
    .unwrap();
    download(&mut client, &mesh.admin, "warm/up", 0, 0)
        .await
        .unwrap();

    let mut hasher = sha2::Sha256::new();
    for chunk in chunks() {
        hasher.update(&chunk);
    }
    let sha = storemesh_storage::validate::hex(&hasher.finalize());

    let baseline = reset_peak();
    let mut head = header("big/object", "");
    head.expected_sha256 = sha.clone();
    head.expected_size_bytes = Some(OBJECT_BYTES as u64);
    let requests = futures::stream::iter(std::iter::once(header_message(head)).chain(
        chunks().map(|chunk| pb::UploadRequest {
            payload: Some(pb::upload_request::Payload::Chunk(chunk)),
        }),
    ));
    let object = upload_stream(&mut client, &mesh.admin, requests)
        .await
        .unwrap()
        .object
        .unwrap();
    let upload_growth = status_kib("VmHWM:").saturating_sub(baseline);
    assert_eq!(object.size_bytes, OBJECT_BYTES as u64);
    assert_eq!(object.sha256, sha);

    let baseline = reset_peak();
    let mut stream = client
        .download(bearer(
            pb::DownloadRequest {
                key: "big/object".into(),
                offset: 0,
                length: 0,
            },
            &mesh.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut hasher = sha2::Sha256::new();
    let mut received = 0;
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(pb::download_response::Payload::Chunk(chunk)) = message.payload {
            received += chunk.len();
            hasher.update(&chunk);
        }
    }
    let download_growth = status_kib("VmHWM:").saturating_sub(baseline);
    assert_eq!(received, OBJECT_BYTES);
    assert_eq!(storemesh_storage::validate::hex(&hasher.finalize()), sha);

    eprintln!(
        "peak RSS growth for a 64 MiB object: upload {} KiB, download {} KiB",
        upload_growth, download_growth
    );
    assert!(
        upload_growth < BUDGET_KIB,
        "upload raised peak RSS by {upload_growth} KiB"
    );
    assert!(
        download_growth < BUDGET_KIB,
        "download raised peak RSS by {download_growth} KiB"
    );
}
