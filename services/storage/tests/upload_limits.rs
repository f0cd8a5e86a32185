//! Upload limits over real gRPC with a real Redis: uploads in progress per identity, the
//! minimum upload rate, and the stored bytes per seller.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use storemesh_proto::auth::v1::Role;
use storemesh_proto::storage::v1 as pb;
use storemesh_testkit::RedisServer;
use tokio::sync::mpsc;
use tonic::Code;

/// An upload whose chunks the test sends when it wants; the call runs in a task.
struct OpenUpload {
    tx: mpsc::Sender<pb::UploadRequest>,
    call: tokio::task::JoinHandle<Result<pb::UploadResponse, tonic::Status>>,
}

async fn open_upload(mesh: &Mesh, token: &str, key: &str) -> OpenUpload {
    let (tx, rx) = mpsc::channel::<pb::UploadRequest>(4);
    tx.send(header_message(header(key, ""))).await.unwrap();
    tx.send(chunk_message(b"first part")).await.unwrap();
    let mut client = mesh.client().await;
    let token = token.to_owned();
    let call = tokio::spawn(async move {
        upload_stream(
            &mut client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
    });
    OpenUpload { tx, call }
}

async fn wait_for_uploads(mesh: &Mesh, count: u64) {
    let mut redis = mesh.redis_connection();
    wait_for(&format!("{count} uploads in progress"), || {
        pending_uploads(&mut redis) == count
    })
    .await;
}

#[tokio::test]
async fn uploads_in_progress_are_capped_per_identity() {
    let mesh = Mesh::start_with(RedisServer::start().unwrap(), |settings| {
        settings.storage.max_concurrent_uploads_per_identity = 2;
    })
    .await;
    let mut client = mesh.client().await;
    let first = open_upload(&mesh, &mesh.admin, "slots/1").await;
    let second = open_upload(&mesh, &mesh.admin, "slots/2").await;
    wait_for_uploads(&mesh, 2).await;

    // A third is refused at once, before any byte is stored, with a time to retry.
    let refused = upload(&mut client, &mesh.admin, header("slots/3", ""), b"third")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("at most 2 uploads"),
        "{refused:?}"
    );
    assert!(
        refused.metadata().get("retry-after").is_some(),
        "{refused:?}"
    );
    assert_eq!(pending_uploads(&mut mesh.redis_connection()), 2);
    assert!(mesh.events().is_empty());

    // Another identity is not affected.
    upload(
        &mut client,
        &mesh.thumbnailer,
        header("products/p/thumbnails/i/w1.png", ""),
        &png_bytes(100),
    )
    .await
    .unwrap();

    // A finished upload and a failed one both give their slot back.
    first.tx.send(chunk_message(b", the end")).await.unwrap();
    drop(first.tx);
    first.call.await.unwrap().unwrap();
    upload(&mut client, &mesh.admin, header("slots/3", ""), b"third")
        .await
        .unwrap();
    // A second header is refused: the upload fails.
    second
        .tx
        .send(header_message(header("slots/2", "")))
        .await
        .unwrap();
    let failed = second.call.await.unwrap().unwrap_err();
    assert_eq!(failed.code(), Code::InvalidArgument, "{failed:?}");
    mesh.assert_nothing_committed("slots/2", 3).await;
    let third = open_upload(&mesh, &mesh.admin, "slots/4").await;
    let fourth = open_upload(&mesh, &mesh.admin, "slots/5").await;
    wait_for_uploads(&mesh, 2).await;
    for open in [third, fourth] {
        drop(open.tx);
        open.call.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn uploads_below_the_minimum_rate_are_ended_and_cleaned_up() {
    let mesh = Mesh::start_with(RedisServer::start().unwrap(), |settings| {
        let storage = &mut settings.storage;
        storage.max_concurrent_uploads_per_identity = 1;
        storage.upload_min_bytes_per_sec = 64 * 1024;
        storage.upload_min_rate_window_ms = 1_000;
        storage.upload_min_rate_grace_ms = 500;
        // Never idle: the trickle below sends something every 50 ms.
        storage.upload_idle_timeout_ms = 10_000;
    })
    .await;
    let mut client = mesh.client().await;

    // A client that keeps sending, but ~2 KB/s: not idle, far too slow.
    let (tx, rx) = mpsc::channel::<pb::UploadRequest>(4);
    tx.send(header_message(header("slow/x", ""))).await.unwrap();
    let trickle = tokio::spawn(async move {
        while tx.send(chunk_message(&[7; 100])).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut call_client = client.clone();
    let token = mesh.admin.clone();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        upload_stream(
            &mut call_client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ),
    )
    .await
    .expect("a trickling upload must be ended by the server");
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("slower than the minimum"),
        "{status:?}"
    );
    trickle.abort();
    mesh.assert_nothing_committed("slow/x", 0).await;

    // Its slot is free again (the limit is one), and a fast upload passes the rate check.
    let data = pseudo_random(3 * MIB, 3);
    let object = upload(&mut client, &mesh.admin, header("fast/x", ""), &data)
        .await
        .unwrap();
    assert_eq!(object.size_bytes, data.len() as u64);
}

fn usage(mesh: &Mesh, seller: &str) -> i64 {
    let used: Option<i64> = redis::cmd("HGET")
        .arg("storage:usage")
        .arg(seller)
        .query(&mut mesh.redis_connection())
        .unwrap();
    used.unwrap_or(0)
}

async fn delete(mesh: &Mesh, token: &str, key: &str) -> bool {
    mesh.client()
        .await
        .delete(bearer(pb::DeleteRequest { key: key.into() }, token))
        .await
        .unwrap()
        .into_inner()
        .existed
}

#[tokio::test]
async fn stored_bytes_are_capped_per_seller() {
    const QUOTA: u64 = 100_000;
    let mesh = Mesh::start_full(
        RedisServer::start().unwrap(),
        Owners::RealCatalog,
        |settings| {
            settings.storage.max_stored_bytes_per_seller = QUOTA;
        },
    )
    .await;
    let mut client = mesh.client().await;
    let (alice_id, alice) = mesh.user("alice@example.com", Role::Seller).await;
    let (bob_id, bob) = mesh.user("bob@example.com", Role::Seller).await;
    let product = create_product(&mesh, &alice, "Lamp").await;
    let bobs = create_product(&mesh, &bob, "Chair").await;
    let original = |name: &str| format!("products/{product}/originals/{name}");

    upload(
        &mut client,
        &alice,
        header(&original("a"), ""),
        &jpeg_bytes(60_000),
    )
    .await
    .unwrap();
    assert_eq!(usage(&mesh, &alice_id), 60_000);
    // Variants made by a service are charged to the product's seller, never refused.
    let variant = format!("products/{product}/thumbnails/a/w160.png");
    upload(
        &mut client,
        &mesh.thumbnailer,
        header(&variant, ""),
        &png_bytes(30_000),
    )
    .await
    .unwrap();
    assert_eq!(usage(&mesh, &alice_id), 90_000);

    // Over the quota: refused before anything is stored, announced size or not.
    let mut announced = header(&original("b"), "");
    announced.expected_size_bytes = Some(20_000);
    let refused = upload(&mut client, &alice, announced, &jpeg_bytes(20_000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("quota of 100000 bytes"),
        "{refused:?}"
    );
    let refused = upload(
        &mut client,
        &alice,
        header(&original("c"), ""),
        &jpeg_bytes(20_000),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    mesh.assert_nothing_committed(&original("b"), 2).await;
    mesh.assert_nothing_committed(&original("c"), 2).await;
    assert_eq!(usage(&mesh, &alice_id), 90_000);
    // Another seller's quota is their own.
    upload(
        &mut client,
        &bob,
        header(&format!("products/{bobs}/originals/x"), ""),
        &jpeg_bytes(50_000),
    )
    .await
    .unwrap();
    assert_eq!(usage(&mesh, &bob_id), 50_000);

    // Replacing an object counts only the difference; deleting gives the bytes back.
    upload(
        &mut client,
        &alice,
        header(&original("a"), ""),
        &jpeg_bytes(65_000),
    )
    .await
    .unwrap();
    assert_eq!(usage(&mesh, &alice_id), 95_000);
    assert!(delete(&mesh, &alice, &original("a")).await);
    assert!(delete(&mesh, &mesh.thumbnailer, &variant).await);
    assert_eq!(usage(&mesh, &alice_id), 0);
    upload(
        &mut client,
        &alice,
        header(&original("d"), ""),
        &jpeg_bytes(100_000),
    )
    .await
    .unwrap();
    assert_eq!(usage(&mesh, &alice_id), 100_000);

    // Drifted totals are rebuilt from the objects.
    let _: () = redis::cmd("HSET")
        .arg("storage:usage")
        .arg(&alice_id)
        .arg(5)
        .arg("nobody")
        .arg(7)
        .query(&mut mesh.redis_connection())
        .unwrap();
    let connection = storemesh_runtime::redis::connect(&storemesh_runtime::redis::RedisConfig {
        url: mesh.redis.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = storemesh_storage::store::Store::new(connection, Default::default());
    assert_eq!(store.recount_usage(1).await.unwrap(), 2);
    assert_eq!(usage(&mesh, &alice_id), 100_000);
    assert_eq!(usage(&mesh, &bob_id), 50_000);
    assert_eq!(usage(&mesh, "nobody"), 0);

    // Two uploads that each fit but not together: the commit decides, atomically.
    let mut racing = Vec::new();
    for name in ["y", "z"] {
        let (tx, rx) = mpsc::channel::<pb::UploadRequest>(4);
        let key = format!("products/{bobs}/originals/{name}");
        tx.send(header_message(header(&key, ""))).await.unwrap();
        tx.send(chunk_message(&jpeg_bytes(30_000))).await.unwrap();
        let mut client = mesh.client().await;
        let token = bob.clone();
        let call = tokio::spawn(async move {
            upload_stream(
                &mut client,
                &token,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )
            .await
        });
        racing.push((tx, call));
    }
    wait_for_uploads(&mesh, 2).await;
    let mut outcomes = Vec::new();
    for (tx, call) in racing {
        drop(tx);
        outcomes.push(call.await.unwrap().map_err(|status| status.code()));
    }
    assert_eq!(
        outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&Err(Code::ResourceExhausted)),
        "{outcomes:?}"
    );
    assert_eq!(usage(&mesh, &bob_id), 80_000);
}

#[tokio::test]
async fn a_running_recount_follows_changes_behind_its_cursor() {
    let mesh = Mesh::start_full(RedisServer::start().unwrap(), Owners::RealCatalog, |_| {}).await;
    let mut client = mesh.client().await;
    let (alice_id, alice) = mesh.user("alice@example.com", Role::Seller).await;
    let product = create_product(&mesh, &alice, "Lamp").await;
    let key = |name: &str| format!("products/{product}/originals/{name}");
    // A recount has walked up to `…/m`: what changes before it must reach its totals too,
    // what comes after it the walk will see.
    let mut redis = mesh.redis_connection();
    let _: () = redis::cmd("SET")
        .arg("storage:usage:recount:cursor")
        .arg(key("m"))
        .query(&mut redis)
        .unwrap();
    let recounted = |redis: &mut redis::Connection| -> i64 {
        let total: Option<i64> = redis::cmd("HGET")
            .arg("storage:usage:recount")
            .arg(&alice_id)
            .query(redis)
            .unwrap();
        total.unwrap_or(0)
    };
    upload(
        &mut client,
        &alice,
        header(&key("a"), ""),
        &jpeg_bytes(1_000),
    )
    .await
    .unwrap();
    upload(
        &mut client,
        &alice,
        header(&key("z"), ""),
        &jpeg_bytes(2_000),
    )
    .await
    .unwrap();
    assert_eq!(recounted(&mut redis), 1_000);
    assert_eq!(usage(&mesh, &alice_id), 3_000);
    upload(
        &mut client,
        &alice,
        header(&key("a"), ""),
        &jpeg_bytes(1_500),
    )
    .await
    .unwrap();
    assert_eq!(recounted(&mut redis), 1_500);
    assert!(delete(&mesh, &alice, &key("a")).await);
    assert_eq!(recounted(&mut redis), 0);
    assert_eq!(usage(&mesh, &alice_id), 2_000);
}
