//! The storage service over real gRPC, with a real redis-server, the real auth service and the
//! local filesystem backend.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::storage::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn multi_megabyte_round_trip_in_chunks() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let data = pseudo_random(12 * MIB + 12_345, 1);
    let sha = sha256_hex(&data);
    let mut head = header("media/video.bin", "");
    head.expected_sha256 = sha.clone();
    head.expected_size_bytes = Some(data.len() as u64);
    head.metadata = [("origin".to_owned(), "test".to_owned())].into();
    // Odd chunk sizes, including a full 4 MiB chunk and empty ones.
    let mut requests = vec![header_message(head)];
    let mut rest = data.as_slice();
    for size in [1, 4 * MIB, 0, 777_777, MIB].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let take = size.min(rest.len());
        requests.push(chunk_message(&rest[..take]));
        rest = &rest[take..];
    }
    let response = upload_stream(&mut client, &mesh.admin, futures::stream::iter(requests))
        .await
        .unwrap();
    assert!(!response.deduplicated);
    let object = response.object.unwrap();
    assert_eq!(object.key, "media/video.bin");
    assert_eq!(object.size_bytes, data.len() as u64);
    assert_eq!(object.sha256, sha);
    assert_eq!(object.content_type, "application/octet-stream");
    assert_eq!(object.metadata["origin"], "test");
    assert!(ulid::Ulid::from_string(&object.etag).is_ok());
    assert!(object.create_time.is_some());
    assert!(!object.owner.is_empty());

    // Readers: an admin, a service with storage.read (who else may read: tests/authz.rs).
    for token in [&mesh.admin, &mesh.thumbnailer] {
        let (info, bytes) = download(&mut client, token, "media/video.bin", 0, 0)
            .await
            .unwrap();
        assert_eq!(info, object);
        assert_eq!(sha256_hex(&bytes), sha, "checksum of the downloaded bytes");
        assert_eq!(bytes.len(), data.len());
    }
    let stat = client
        .stat(bearer(
            pb::StatRequest {
                key: "media/video.bin".into(),
            },
            &mesh.thumbnailer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.object.unwrap(), object);
    assert_eq!(mesh.files().len(), 1, "one blob, no staging left");
}

#[tokio::test]
async fn ranged_downloads() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let data = pseudo_random(3 * MIB + 100, 2);
    upload(&mut client, &mesh.admin, header("r/blob", ""), &data)
        .await
        .unwrap();
    let size = data.len() as u64;
    for (offset, length, expected) in [
        (0, 10, &data[..10]),
        (5, 0, &data[5..]),
        (MIB as u64 - 3, 10, &data[MIB - 3..MIB + 7]),
        (size - 4, 100, &data[data.len() - 4..]),
        (size, 0, &data[..0]),
        (size, 5, &data[..0]),
        (1, 2 * MIB as u64 + 1, &data[1..2 * MIB + 2]),
    ] {
        let (info, bytes) = download(&mut client, &mesh.admin, "r/blob", offset, length)
            .await
            .unwrap();
        assert_eq!(info.size_bytes, size, "info describes the whole object");
        assert_eq!(bytes, expected, "offset {offset} length {length}");
    }
    let past = download(&mut client, &mesh.admin, "r/blob", size + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange);
    let missing = download(&mut client, &mesh.admin, "r/none", 0, 0)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // An empty object: just the info.
    upload(
        &mut client,
        &mesh.admin,
        header("r/empty", "text/plain"),
        b"",
    )
    .await
    .unwrap();
    let (info, bytes) = download(&mut client, &mesh.admin, "r/empty", 0, 0)
        .await
        .unwrap();
    assert_eq!(
        (info.size_bytes, info.content_type.as_str()),
        (0, "text/plain")
    );
    assert!(bytes.is_empty());
}

#[tokio::test]
async fn list_pages_in_byte_order() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let mut keys: Vec<String> = (0..23).map(|i| format!("list/item-{i:02}")).collect();
    // Byte order, not locale order: `B` < `a` < `é`.
    keys.extend(["list/B", "list/a", "list/é"].map(String::from));
    for key in &keys {
        upload(&mut client, &mesh.admin, header(key, ""), key.as_bytes())
            .await
            .unwrap();
    }
    for key in ["lisu/after", "lis/before", "other/x"] {
        upload(&mut client, &mesh.admin, header(key, ""), b"x")
            .await
            .unwrap();
    }
    keys.sort();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list_page(&mut client, &mesh.admin, "list/", 5, token)
            .await
            .unwrap();
        assert!(page.objects.len() <= 5);
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        pages += 1;
        if pages == 2 {
            // Changes while paging do not disturb the order of the others.
            let mut delete_client = client.clone();
            delete_client
                .delete(bearer(
                    pb::DeleteRequest {
                        key: "list/item-00".into(),
                    },
                    &mesh.admin,
                ))
                .await
                .unwrap();
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, keys, "every key once, in byte order");
    assert_eq!(pages, 6);

    let all = list_page(&mut client, &mesh.admin, "", 500, String::new())
        .await
        .unwrap();
    assert_eq!(all.objects.len(), keys.len() + 3 - 1);
    assert!(all.next_page_token.is_empty());
    let default_size = list_page(&mut client, &mesh.admin, "list/", 0, String::new())
        .await
        .unwrap();
    assert_eq!(default_size.objects.len(), keys.len() - 1);

    let first = list_page(&mut client, &mesh.admin, "list/", 2, String::new())
        .await
        .unwrap();
    let foreign = list_page(
        &mut client,
        &mesh.admin,
        "other/",
        2,
        first.next_page_token.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(foreign.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&foreign), ["page_token"]);
    for (prefix, size, token) in [
        ("list/", 2, "not-a-token".to_owned()),
        ("list/", -1, String::new()),
        ("bad\\prefix", 1, String::new()),
        ("list/", 1, "A".repeat(3000)),
    ] {
        let error = list_page(&mut client, &mesh.admin, prefix, size, token)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{prefix:?} {size}");
    }
}

#[tokio::test]
async fn checksum_mismatch_commits_nothing() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let data = pseudo_random(2 * MIB + 3, 3);
    let mut head = header("sums/bad", "");
    head.expected_sha256 = sha256_hex(b"something else");
    let error = upload(&mut client, &mesh.admin, head, &data)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&error), ["header.expected_sha256"]);
    mesh.assert_nothing_committed("sums/bad", 0).await;

    // A wrong announced size fails the same way, short or long.
    for announced in [data.len() as u64 - 1, data.len() as u64 + 1] {
        let mut head = header("sums/size", "");
        head.expected_size_bytes = Some(announced);
        let error = upload(&mut client, &mesh.admin, head, &data)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&error), ["header.expected_size_bytes"]);
    }
    mesh.assert_nothing_committed("sums/size", 0).await;
}

#[tokio::test]
async fn oversize_uploads_are_refused_while_streaming() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    // `limited/` allows 1 MiB (test configuration).
    let error = upload(
        &mut client,
        &mesh.admin,
        header("limited/big", ""),
        &pseudo_random(MIB + 1, 4),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    mesh.assert_nothing_committed("limited/big", 0).await;

    // A stream far larger than the limit is cut off without being read to the end: the
    // server answers while the client still has chunks to send.
    let endless = futures::stream::iter(
        std::iter::once(header_message(header("limited/endless", "")))
            .chain(std::iter::repeat_with(|| chunk_message(&[0_u8; 64 * 1024])).take(100_000)),
    );
    let error = upload_stream(&mut client, &mesh.admin, endless)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    mesh.assert_nothing_committed("limited/endless", 0).await;

    // Announced too large: refused before any chunk.
    let mut head = header("limited/announced", "");
    head.expected_size_bytes = Some(2 * MIB as u64);
    let error = upload(&mut client, &mesh.admin, head, b"")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);

    // A chunk over 4 MiB.
    let error = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(vec![
            header_message(header("big/chunk", "")),
            chunk_message(&vec![1_u8; 4 * MIB + 1]),
        ]),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    mesh.assert_nothing_committed("big/chunk", 0).await;

    // Exactly the limit is fine.
    upload(
        &mut client,
        &mesh.admin,
        header("limited/exact", ""),
        &pseudo_random(MIB, 5),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn client_disconnect_mid_stream_commits_nothing() {
    let mesh = Mesh::start().await;
    // The client reaches storage through a relay whose connections the test cuts.
    let proxy = CuttableProxy::start(mesh.storage.addr).await;
    let mut client = proxy.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
    let token = mesh.admin.clone();
    let call = tokio::spawn(async move {
        upload_stream(
            &mut client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
    });
    tx.send(header_message(header("gone/away", "")))
        .await
        .unwrap();
    let data = pseudo_random(3 * MIB, 6);
    for piece in data.chunks(256 * 1024) {
        tx.send(chunk_message(piece)).await.unwrap();
    }
    // The server is mid-upload: its lease and staged bytes exist.
    let mut redis = mesh.redis_connection();
    wait_for("the upload to start", || {
        let uploads: u64 = redis::cmd("ZCARD")
            .arg("storage:uploads")
            .query(&mut redis)
            .unwrap();
        uploads == 1 && !mesh.files().is_empty()
    })
    .await;
    proxy.cut();
    let outcome = call.await.unwrap();
    assert!(outcome.is_err(), "the call cannot succeed: {outcome:?}");
    // Sending the rest (even a clean end) goes nowhere now.
    drop(tx);
    mesh.assert_nothing_committed("gone/away", 0).await;

    // The service is unaffected.
    let mut client = mesh.client().await;
    upload(&mut client, &mesh.admin, header("gone/back", ""), b"ok")
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_keys_are_invalid_argument() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    for key in [
        "../x",
        "/etc/passwd",
        "nul\0byte",
        "a//b",
        "a/./b",
        "back\\slash",
        "",
    ] {
        let error = upload(&mut client, &mesh.admin, header(key, ""), b"data")
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{key:?}");
        assert_eq!(field_violations(&error), ["header.key"], "{key:?}");
        mesh.assert_nothing_committed(key, 0).await;

        let stat = client
            .stat(bearer(pb::StatRequest { key: key.into() }, &mesh.admin))
            .await
            .unwrap_err();
        assert_eq!(stat.code(), Code::InvalidArgument);
        let delete = client
            .delete(bearer(pb::DeleteRequest { key: key.into() }, &mesh.admin))
            .await
            .unwrap_err();
        assert_eq!(delete.code(), Code::InvalidArgument);
        let download = download(&mut client, &mesh.admin, key, 0, 0)
            .await
            .unwrap_err();
        assert_eq!(download.code(), Code::InvalidArgument);
    }
    let long = "k".repeat(1025);
    let error = upload(&mut client, &mesh.admin, header(&long, ""), b"x")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);

    // key_prefix: must end in `/` and be valid once the id is appended.
    let mut head = header("", "");
    head.target = Some(pb::upload_header::Target::KeyPrefix("../up/".into()));
    let error = upload(&mut client, &mesh.admin, head, b"x")
        .await
        .unwrap_err();
    assert_eq!(field_violations(&error), ["header.key_prefix"]);
    let mut head = header("", "");
    head.target = Some(pb::upload_header::Target::KeyPrefix("generated/".into()));
    let object = upload(&mut client, &mesh.admin, head, b"x").await.unwrap();
    let id = object.key.strip_prefix("generated/").unwrap();
    assert!(ulid::Ulid::from_string(id).is_ok(), "{}", object.key);

    // Malformed streams.
    let no_header = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(vec![chunk_message(b"x")]),
    )
    .await
    .unwrap_err();
    assert_eq!(no_header.code(), Code::InvalidArgument);
    let empty = upload_stream(&mut client, &mesh.admin, futures::stream::iter(vec![]))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let two_headers = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(vec![
            header_message(header("twice/h", "")),
            chunk_message(b"x"),
            header_message(header("twice/h", "")),
        ]),
    )
    .await
    .unwrap_err();
    assert_eq!(two_headers.code(), Code::InvalidArgument);
    mesh.assert_nothing_committed("twice/h", 1).await;

    // Bad metadata and content types, all reported at once.
    let mut head = header("meta/bad", "text/plain; charset=utf-8");
    head.metadata = [("Bad Key".to_owned(), "v".to_owned())].into();
    head.idempotency_key = "\u{1}".into();
    let error = upload(&mut client, &mesh.admin, head, b"x")
        .await
        .unwrap_err();
    let mut fields = field_violations(&error);
    fields.sort();
    assert_eq!(
        fields,
        [
            "header.content_type",
            "header.idempotency_key",
            "header.metadata"
        ]
    );
}

#[tokio::test]
async fn spoofed_content_types_are_refused_on_image_prefixes() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let original = "products/p1/originals/img1";

    // PNG bytes declared as JPEG.
    let error = upload(
        &mut client,
        &mesh.admin,
        header(original, "image/jpeg"),
        &png_bytes(200_000),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&error), ["header.content_type"]);
    mesh.assert_nothing_committed(original, 0).await;

    // Text on an image prefix, declared or not.
    for declared in ["", "image/png"] {
        let error = upload(
            &mut client,
            &mesh.admin,
            header(original, declared),
            b"hello, world!",
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{declared:?}");
    }
    let error = upload(
        &mut client,
        &mesh.admin,
        header(original, "text/plain"),
        b"x",
    )
    .await
    .unwrap_err();
    assert_eq!(field_violations(&error), ["header.content_type"]);
    // Random bytes with JPEG magic but declared PNG.
    let error = upload(
        &mut client,
        &mesh.admin,
        header(original, "image/png"),
        &jpeg_bytes(5000),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    mesh.assert_nothing_committed(original, 0).await;

    // Random bytes with JPEG magic, declared JPEG (or not declared): stored; the bytes are
    // not decoded here (the thumbnail function copes with undecodable images).
    let object = upload(
        &mut client,
        &mesh.admin,
        header(original, "image/jpeg"),
        &jpeg_bytes(5000),
    )
    .await
    .unwrap();
    assert_eq!(object.content_type, "image/jpeg");
    let sniffed = upload(
        &mut client,
        &mesh.admin,
        header("products/p1/thumbnails/img1/w160.png", ""),
        &png_bytes(300),
    )
    .await
    .unwrap();
    assert_eq!(sniffed.content_type, "image/png");
    let webp = upload(
        &mut client,
        &mesh.admin,
        header("products/p1/thumbnails/img1/w320.webp", "IMAGE/WEBP"),
        b"RIFF\x10\0\0\0WEBPVP8 \0\0\0\0",
    )
    .await
    .unwrap();
    assert_eq!(webp.content_type, "image/webp");

    // Outside image prefixes the declared type is stored as given.
    let plain = upload(
        &mut client,
        &mesh.admin,
        header("docs/a.png", "text/plain"),
        &png_bytes(50),
    )
    .await
    .unwrap();
    assert_eq!(plain.content_type, "text/plain");
}

#[tokio::test]
async fn events_appear_exactly_for_committed_changes() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let thumb = "products/p9/thumbnails/i9/w320.jpg";
    let mut head = header(thumb, "image/jpeg");
    head.metadata = [
        ("variant".to_owned(), "w320".to_owned()),
        ("width".to_owned(), "320".to_owned()),
        ("height".to_owned(), "200".to_owned()),
    ]
    .into();
    let data = jpeg_bytes(40_000);
    let created = upload(&mut client, &mesh.thumbnailer, head, &data)
        .await
        .unwrap();
    // Failures in between produce nothing.
    let mut bad = header("ev/bad-sum", "");
    bad.expected_sha256 = sha256_hex(b"nope");
    upload(&mut client, &mesh.admin, bad, b"x")
        .await
        .unwrap_err();
    upload(&mut client, &mesh.admin, header("../ev", ""), b"x")
        .await
        .unwrap_err();
    let replaced = upload(
        &mut client,
        &mesh.thumbnailer,
        header(thumb, ""),
        &jpeg_bytes(100),
    )
    .await
    .unwrap();
    assert_ne!(replaced.etag, created.etag);
    let deleted = client
        .delete(bearer(
            pb::DeleteRequest { key: thumb.into() },
            &mesh.thumbnailer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.existed);
    let again = client
        .delete(bearer(
            pb::DeleteRequest { key: thumb.into() },
            &mesh.thumbnailer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !again.existed,
        "deleting a missing key succeeds without an event"
    );

    let events = mesh.events();
    let summary: Vec<(events_pb::EventType, &str)> = events
        .iter()
        .map(|e| (e.r#type(), e.subject.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (events_pb::EventType::ObjectCreated, thumb),
            (events_pb::EventType::ObjectCreated, thumb),
            (events_pb::EventType::ObjectDeleted, thumb),
        ]
    );
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(ids.iter().all(|id| ulid::Ulid::from_string(id).is_ok()));
    ids.dedup();
    assert_eq!(ids.len(), 3, "unique ids");
    for event in &events {
        assert_eq!(event.source, "storemesh.storage");
        assert!(event.time.is_some());
    }
    let Some(events_pb::event::Data::ObjectCreated(first)) = &events[0].data else {
        panic!("object_created expected");
    };
    assert_eq!(first.key, thumb);
    assert_eq!(first.size_bytes, data.len() as u64);
    assert_eq!(first.sha256, sha256_hex(&data));
    assert_eq!(first.content_type, "image/jpeg");
    assert_eq!(first.metadata["variant"], "w320");
    assert_eq!(first.actor, THUMBNAIL_CLIENT);
    assert_eq!(first.etag, created.etag);
    assert_eq!(events[0].time, created.create_time, "time = commit time");
    let Some(events_pb::event::Data::ObjectDeleted(gone)) = &events[2].data else {
        panic!("object_deleted expected");
    };
    assert_eq!(
        (gone.key.as_str(), gone.actor.as_str()),
        (thumb, THUMBNAIL_CLIENT)
    );

    // Both versions' bytes are garbage now and the janitor removes them.
    wait_for("garbage collection", || mesh.files().is_empty()).await;
}

#[tokio::test]
async fn idempotent_reupload_returns_the_first_result() {
    let mesh = Mesh::start().await;
    let mut client = mesh.client().await;
    let mut head = header("idem/object", "");
    head.idempotency_key = "upload-42".into();
    let first = upload(&mut client, &mesh.admin, head.clone(), b"first")
        .await
        .unwrap();
    let repeated = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(messages(head.clone(), b"second body, ignored", 4)),
    )
    .await
    .unwrap();
    assert!(repeated.deduplicated);
    assert_eq!(repeated.object.unwrap(), first);
    let (_, bytes) = download(&mut client, &mesh.admin, "idem/object", 0, 0)
        .await
        .unwrap();
    assert_eq!(bytes, b"first");
    assert_eq!(mesh.events().len(), 1, "one event for one committed upload");

    // The same idempotency key for another target is a conflict.
    let mut other = header("idem/other", "");
    other.idempotency_key = "upload-42".into();
    let conflict = upload(&mut client, &mesh.admin, other, b"x")
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::FailedPrecondition);

    // Keys are scoped to the caller: another caller's "upload-42" is its own.
    let mut thumb = header("products/p/thumbnails/i/w1.png", "");
    thumb.idempotency_key = "upload-42".into();
    let theirs = upload(&mut client, &mesh.thumbnailer, thumb, &png_bytes(64))
        .await
        .unwrap();
    assert_eq!(theirs.key, "products/p/thumbnails/i/w1.png");

    // With key_prefix the repeat returns the key generated the first time.
    let mut generated = header("", "");
    generated.target = Some(pb::upload_header::Target::KeyPrefix("gen/".into()));
    generated.idempotency_key = "gen-1".into();
    let one = upload(&mut client, &mesh.admin, generated.clone(), b"a")
        .await
        .unwrap();
    let two = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(messages(generated, b"a", 1)),
    )
    .await
    .unwrap();
    assert!(two.deduplicated);
    assert_eq!(two.object.unwrap().key, one.key);

    // A failed upload does not use up its idempotency key.
    let mut failing = header("idem/retry", "");
    failing.idempotency_key = "retry-1".into();
    failing.expected_sha256 = sha256_hex(b"right");
    upload(&mut client, &mesh.admin, failing.clone(), b"wrong")
        .await
        .unwrap_err();
    let retried = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(messages(failing, b"right", 2)),
    )
    .await
    .unwrap();
    assert!(!retried.deduplicated);
}

#[tokio::test]
async fn concurrent_uploads_with_one_idempotency_key() {
    let mesh = Mesh::start().await;
    let client = mesh.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
    let mut head = header("idem/slow", "");
    head.idempotency_key = "slow".into();
    tx.send(header_message(head.clone())).await.unwrap();
    tx.send(chunk_message(b"part one")).await.unwrap();
    let mut slow_client = client.clone();
    let token = mesh.admin.clone();
    let slow = tokio::spawn(async move {
        upload_stream(
            &mut slow_client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await
    });
    let mut redis = mesh.redis_connection();
    wait_for("the first upload to start", || {
        let uploads: u64 = redis::cmd("ZCARD")
            .arg("storage:uploads")
            .query(&mut redis)
            .unwrap();
        uploads == 1
    })
    .await;
    let mut client = client.clone();
    let busy = upload(&mut client, &mesh.admin, head.clone(), b"x")
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::Aborted, "{busy:?}");
    tx.send(chunk_message(b", part two")).await.unwrap();
    drop(tx);
    let first = slow.await.unwrap().unwrap();
    assert!(!first.deduplicated);
    let repeat = upload_stream(
        &mut client,
        &mesh.admin,
        futures::stream::iter(messages(head, b"x", 1)),
    )
    .await
    .unwrap();
    assert!(repeat.deduplicated);
    assert_eq!(repeat.object, first.object);
}

#[tokio::test]
async fn uploads_that_stall_time_out() {
    let mesh = Mesh::start_with(
        storemesh_testkit::RedisServer::start().unwrap(),
        |settings| {
            settings.storage.upload_idle_timeout_ms = 300;
        },
    )
    .await;
    let client = mesh.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadRequest>(4);
    tx.send(header_message(header("stall/x", "")))
        .await
        .unwrap();
    tx.send(chunk_message(b"some")).await.unwrap();
    let mut call_client = client.clone();
    let token = mesh.admin.clone();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        upload_stream(
            &mut call_client,
            &token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ),
    )
    .await
    .unwrap();
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    drop(tx);
    mesh.assert_nothing_committed("stall/x", 0).await;
}
