//! Real faults: Redis killed around the commit, the storage process killed mid-upload, and an
//! upload abandoned between writing its bytes and committing them. After recovery every
//! committed change has its event and nothing uncommitted is left behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::storage::v1 as pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_storage::backend::Backend;
use storemesh_storage::store::{Begin, Store};
use storemesh_testkit::RedisServer;
use tonic::Code;

async fn wait_until_redis_answers(mesh: &Mesh) {
    let mut client = mesh.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let probe = client
            .stat(bearer(
                pb::StatRequest {
                    key: "probe".into(),
                },
                &mesh.admin,
            ))
            .await;
        if matches!(&probe, Err(status) if status.code() == Code::NotFound) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "storage did not recover: {probe:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn event_survives_redis_crash_right_after_commit() {
    let mut mesh = Mesh::start_with(RedisServer::start_persistent().unwrap(), |_| {}).await;
    let mut client = mesh.client().await;
    let data = pseudo_random(MIB + 1, 11);
    let object = upload(&mut client, &mesh.admin, header("crash/after", ""), &data)
        .await
        .unwrap();
    // SIGKILL Redis the moment the upload is acknowledged, then bring it back (AOF).
    mesh.redis.kill();
    mesh.redis.restart().unwrap();
    wait_until_redis_answers(&mesh).await;

    let events = mesh.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type(), events_pb::EventType::ObjectCreated);
    let Some(events_pb::event::Data::ObjectCreated(created)) = &events[0].data else {
        panic!("object_created expected");
    };
    assert_eq!(created.etag, object.etag);
    let (info, bytes) = download(&mut client, &mesh.admin, "crash/after", 0, 0)
        .await
        .unwrap();
    assert_eq!(info, object);
    assert_eq!(bytes, data);
}

#[tokio::test]
async fn redis_down_at_commit_leaves_nothing_and_recovers() {
    let mut mesh = Mesh::start_with(RedisServer::start_persistent().unwrap(), |_| {}).await;
    let client = mesh.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
    let mut call_client = client.clone();
    let token = mesh.admin.clone();
    let call = tokio::spawn(async move {
        upload_stream(
            &mut call_client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
    });
    tx.send(header_message(header("outage/x", "")))
        .await
        .unwrap();
    let data = pseudo_random(2 * MIB, 12);
    for piece in data.chunks(256 * 1024) {
        tx.send(chunk_message(piece)).await.unwrap();
    }
    let mut redis = mesh.redis_connection();
    wait_for("the upload to start", || pending_uploads(&mut redis) == 1).await;

    // Redis dies while the bytes are being written; the client then finishes its stream, so
    // the blob is complete but the commit cannot happen.
    mesh.redis.kill();
    drop(tx);
    let error = call.await.unwrap().unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");

    mesh.redis.restart().unwrap();
    wait_until_redis_answers(&mesh).await;
    // The lease ran out (or runs out now): the janitor removes the orphaned bytes.
    mesh.assert_nothing_committed("outage/x", 0).await;
    assert!(mesh.events().is_empty(), "no event without its object");

    // Committed changes after recovery get their events as usual.
    let mut client = mesh.client().await;
    upload(&mut client, &mesh.admin, header("outage/x", ""), &data)
        .await
        .unwrap();
    let events = mesh.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subject, "outage/x");
}

#[tokio::test]
async fn upload_abandoned_between_write_and_commit_is_collected() {
    let mesh = Mesh::start().await;
    // What a storage process leaves when it dies after completing a blob and before the
    // commit script ran: a lease in Redis and complete bytes in the backend.
    let connection = storemesh_runtime::redis::connect(&storemesh_runtime::redis::RedisConfig {
        url: mesh.redis.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = Store::new(connection, Default::default());
    let config = storemesh_storage::StorageConfig {
        data_dir: mesh.data.path().to_path_buf(),
        ..Default::default()
    };
    let backend = Backend::open(&config).unwrap();
    let blob = Backend::blob_path(&ulid::Ulid::new().to_string());
    let begun = store
        .begin(
            &blob,
            Duration::from_millis(500),
            None,
            &storemesh_storage::store::Slot::new("crashed", 4),
        )
        .await
        .unwrap();
    assert_eq!(begun, Begin::Started);
    let mut writer = backend.writer(&blob).await.unwrap();
    writer
        .write(bytes::Bytes::from(pseudo_random(100_000, 13)))
        .await
        .unwrap();
    writer.finish().await.unwrap();
    assert!(backend.exists(&blob).await.unwrap());
    // ...the process dies here. The running service's janitor repairs it.
    let mut redis = mesh.redis_connection();
    wait_for("the orphan to be collected", || {
        pending_uploads(&mut redis) == 0 && mesh.files().is_empty()
    })
    .await;
    assert!(mesh.events().is_empty());
}

/// The storage service as its own process (`storemesh-storage`), so it can be SIGKILLed.
struct StorageProcess {
    child: Child,
    addr: SocketAddr,
}

impl StorageProcess {
    fn start(redis_url: &str, auth_endpoint: &str, data_dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storemesh-storage"))
            .env_remove("STOREMESH_CONFIG")
            .env_remove("RUST_LOG")
            .env("STOREMESH_REDIS__URL", redis_url)
            .env("STOREMESH_TOKENS__AUTH_ENDPOINT", auth_endpoint)
            .env("STOREMESH_STORAGE__SERVER__LISTEN", "127.0.0.1:0")
            .env("STOREMESH_STORAGE__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env("STOREMESH_STORAGE__DATA_DIR", data_dir)
            .env("STOREMESH_STORAGE__FSYNC", "false")
            .env(
                "STOREMESH_STORAGE__PART_SIZE_BYTES",
                (MIB as u64).to_string(),
            )
            .env("STOREMESH_STORAGE__UPLOAD_LEASE_MS", "1500")
            .env("STOREMESH_STORAGE__JANITOR_INTERVAL_MS", "100")
            .env("STOREMESH_STORAGE__GC_GRACE_MS", "0")
            .env("STOREMESH_TELEMETRY__COLOR", "never")
            .env("STOREMESH_TELEMETRY__FILTER", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("storemesh-storage exited").unwrap();
            if let Some(rest) = line.strip_prefix("LISTENING grpc=") {
                let grpc = rest.split_whitespace().next().unwrap();
                break grpc.parse().unwrap();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self { child, addr }
    }

    async fn client(&self) -> StorageServiceClient<tonic::transport::Channel> {
        StorageServiceClient::new(
            tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no clean-up code runs
        let _ = self.child.wait();
    }
}

impl Drop for StorageProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// Multi-threaded: the in-process auth service must answer the child's key fetches while this
// test waits for the child synchronously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_process_killed_mid_upload_is_repaired_on_restart() {
    let redis = RedisServer::start().unwrap();
    let (auth, _keys) = start_auth(&redis).await;
    let admin = login(&auth, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut first = StorageProcess::start(&redis.url(), &auth.endpoint(), data_dir.path());
    let mut client = first.client().await;

    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
    let token = admin.clone();
    let call = tokio::spawn(async move {
        upload_stream(
            &mut client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
    });
    tx.send(header_message(header("killed/x", "")))
        .await
        .unwrap();
    for piece in pseudo_random(3 * MIB, 14).chunks(256 * 1024) {
        if tx.send(chunk_message(piece)).await.is_err() {
            panic!("the upload ended early: {:?}", call.await);
        }
    }
    let mut redis_connection = redis_connection(&redis);
    let staged = |dir: &std::path::Path| {
        files_under(dir)
            .iter()
            .any(|file| file.to_string_lossy().contains('#'))
    };
    wait_for("bytes to be staged", || {
        pending_uploads(&mut redis_connection) == 1 && staged(data_dir.path())
    })
    .await;

    first.kill();
    assert!(call.await.unwrap().is_err());
    // The crash left a lease and staged bytes behind; nothing cleans them while down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending_uploads(&mut redis_connection), 1);
    assert!(staged(data_dir.path()));

    let second = StorageProcess::start(&redis.url(), &auth.endpoint(), data_dir.path());
    wait_for("the restarted service to repair", || {
        pending_uploads(&mut redis_connection) == 0 && files_under(data_dir.path()).is_empty()
    })
    .await;
    assert!(!has_metadata(&mut redis_connection, "killed/x"));
    assert!(read_events(&mut redis_connection).is_empty());

    let mut client = second.client().await;
    upload(&mut client, &admin, header("killed/x", ""), b"complete")
        .await
        .unwrap();
    let events = read_events(&mut redis_connection);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subject, "killed/x");
}
