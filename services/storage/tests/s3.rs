//! The same service on the S3 backend. Needs an S3-compatible endpoint with an existing bucket,
//! so it runs only when `STOREMESH_TEST_S3_ENDPOINT` is set (skipped otherwise), e.g. with
//! MinIO or `moto_server`:
//!
//! ```sh
//! moto_server -p 5000 & curl -X PUT http://127.0.0.1:5000/storemesh-test
//! STOREMESH_TEST_S3_ENDPOINT=http://127.0.0.1:5000 cargo test -p storemesh-storage --test s3
//! ```
//!
//! Optional: `STOREMESH_TEST_S3_BUCKET` (default `storemesh-test`), `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` (default `test`/`test`), `AWS_REGION` (default `us-east-1`).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use storemesh_storage::backend::Backend;
use storemesh_storage::config::{BackendKind, S3Config};
use storemesh_testkit::RedisServer;
use tonic::Code;

fn s3_config() -> Option<S3Config> {
    let endpoint = std::env::var("STOREMESH_TEST_S3_ENDPOINT").ok()?;
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    Some(S3Config {
        bucket: var("STOREMESH_TEST_S3_BUCKET", "storemesh-test"),
        region: var("AWS_REGION", "us-east-1"),
        allow_http: endpoint.starts_with("http://"),
        endpoint,
        // A fresh prefix per run, so runs do not see each other's objects.
        prefix: format!("run-{}", ulid::Ulid::new()),
        access_key_id: var("AWS_ACCESS_KEY_ID", "test"),
        secret_access_key: var("AWS_SECRET_ACCESS_KEY", "test").into(),
        ..S3Config::default()
    })
}

#[tokio::test]
async fn round_trip_failures_and_garbage_on_s3() {
    let Some(s3) = s3_config() else {
        eprintln!("STOREMESH_TEST_S3_ENDPOINT is not set; skipping the S3 backend test");
        return;
    };
    let mesh = Mesh::start_with(RedisServer::start().unwrap(), |settings| {
        settings.storage.backend = BackendKind::S3;
        settings.storage.s3 = s3.clone();
        settings.storage.part_size_bytes = 5 * MIB as u64;
    })
    .await;
    let backend = Backend::open(&storemesh_storage::StorageConfig {
        backend: BackendKind::S3,
        s3,
        ..Default::default()
    })
    .unwrap();
    let mut client = mesh.client().await;

    // Several multipart parts.
    let data = pseudo_random(12 * MIB + 1, 21);
    let mut head = header("s3/object", "");
    head.expected_sha256 = sha256_hex(&data);
    let object = upload(&mut client, &mesh.admin, head, &data).await.unwrap();
    let (_, bytes) = download(&mut client, &mesh.admin, "s3/object", 0, 0)
        .await
        .unwrap();
    assert_eq!(bytes, data);
    let (_, range) = download(
        &mut client,
        &mesh.admin,
        "s3/object",
        5 * MIB as u64 - 2,
        10,
    )
    .await
    .unwrap();
    assert_eq!(range, data[5 * MIB - 2..5 * MIB + 8]);
    assert_eq!(backend.list_blobs().await.unwrap().len(), 1);

    // A rejected upload leaves no blob.
    let mut bad = header("s3/bad", "");
    bad.expected_sha256 = sha256_hex(b"other");
    let error = upload(&mut client, &mesh.admin, bad, &pseudo_random(6 * MIB, 22))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(backend.list_blobs().await.unwrap().len(), 1);

    // Replacing, then deleting: the janitor removes both versions' blobs.
    upload(&mut client, &mesh.admin, header("s3/object", ""), b"v2")
        .await
        .unwrap();
    let deleted = client
        .delete(bearer(
            storemesh_proto::storage::v1::DeleteRequest {
                key: "s3/object".into(),
            },
            &mesh.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.existed);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while !backend.list_blobs().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "garbage not collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(mesh.events().len(), 3);
    assert!(!object.etag.is_empty());
}
