//! WatchProduct: snapshot, live changes in commit order, slow watchers, clients going away.

use std::time::Duration;

use prost_types::FieldMask;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

use crate::harness::*;

async fn watch(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    product_id: &str,
    send_initial: bool,
) -> Streaming<pb::WatchProductResponse> {
    client
        .watch_product(bearer(
            pb::WatchProductRequest {
                product_id: product_id.into(),
                send_initial,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The next message, failing the test if none arrives within 10 s.
async fn next(
    stream: &mut Streaming<pb::WatchProductResponse>,
) -> Result<Option<pb::WatchProductResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch message within 10 s")
}

/// A short description of a change, for comparing sequences.
fn describe(message: &pb::WatchProductResponse) -> String {
    match message.change.as_ref().unwrap() {
        Change::ProductUpdated(product) => format!("product v{}", product.version),
        Change::ProductDeletedId(id) => format!("deleted {id}"),
        Change::ImageUpdated(image) => format!(
            "image {} {:?} {}",
            image.id,
            image.state(),
            image.variants.len()
        ),
        Change::ImageDeletedId(id) => format!("image deleted {id}"),
    }
}

async fn update_description(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    id: &str,
    description: String,
) {
    client
        .update_product(bearer(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: id.into(),
                    description,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".into()],
                }),
                etag: String::new(),
            },
            token,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn watchers_receive_snapshot_then_changes_in_commit_order() {
    let harness = Harness::start().await;
    let seller = harness.seller("watch@example.com").await;
    let customer = harness
        .user(
            "viewer@example.com",
            storemesh_proto::auth::v1::Role::Customer,
        )
        .await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Kettle", &[])).await;
    attach(&mut client, &seller.token, &product.id, "kettle-old").await;

    let mut with_snapshot = watch(&mut client, &customer.token, &product.id, true).await;
    let mut live_only = watch(&mut client, &customer.token, &product.id, false).await;

    // The snapshot: the product, then its images.
    let first = next(&mut with_snapshot).await.unwrap().unwrap();
    assert_eq!(first.sequence, 1);
    assert_eq!(first.change, Some(Change::ProductUpdated(product.clone())));
    assert!(first.time.is_some());
    let second = next(&mut with_snapshot).await.unwrap().unwrap();
    assert_eq!(second.sequence, 2);
    assert_eq!(describe(&second), "image kettle-old Processing 0");

    // Changes made one after another.
    attach(&mut client, &seller.token, &product.id, "kettle").await;
    for size in [160, 320, 640] {
        record(
            &mut client,
            &thumbnail,
            "kettle",
            variant(&product.id, "kettle", size),
            &format!("e{size}"),
        )
        .await
        .unwrap();
    }
    client
        .set_primary_image(bearer(
            pb::SetPrimaryImageRequest {
                product_id: product.id.clone(),
                image_id: "kettle".into(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    client
        .delete_image(bearer(
            pb::DeleteImageRequest {
                image_id: "kettle-old".into(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    // Then many concurrent writers: the stream shows versions in commit order.
    let writers = 20;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let mut client = client.clone();
        let token = seller.token.clone();
        let id = product.id.clone();
        tasks.push(tokio::spawn(async move {
            update_description(&mut client, &token, &id, format!("writer {writer}")).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: product.id.clone(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap();

    let mut expected = vec![
        "image kettle Processing 0".to_owned(),
        "image kettle Processing 1".to_owned(),
        "image kettle Processing 2".to_owned(),
        "image kettle Ready 3".to_owned(),
        "product v2".to_owned(),
        "image deleted kettle-old".to_owned(),
    ];
    expected.extend((3..3 + writers).map(|version| format!("product v{version}")));
    expected.push(format!("deleted {}", product.id));

    for (stream, first_sequence) in [(&mut with_snapshot, 3), (&mut live_only, 1)] {
        let mut seen = Vec::new();
        let mut sequence = first_sequence;
        while let Some(message) = next(stream).await.unwrap() {
            assert_eq!(message.sequence, sequence, "contiguous sequence numbers");
            sequence += 1;
            seen.push(describe(&message));
        }
        assert_eq!(
            seen, expected,
            "every change once, in commit order, then OK"
        );
    }
}

#[tokio::test]
async fn a_slow_watcher_is_aborted_without_holding_back_the_others() {
    let harness = Harness::start_with(|settings| settings.catalog.watch_buffer = 4).await;
    let seller = harness.seller("slow@example.com").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Desk", &[])).await;

    // The slow client gets its own connection with the smallest HTTP/2 windows, so it pushes
    // back on the server as soon as it stops reading.
    let slow_channel = Endpoint::from_shared(harness.catalog.endpoint())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut slow_client = CatalogServiceClient::new(slow_channel);
    let mut slow = watch(&mut slow_client, &seller.token, &product.id, false).await;
    let mut fast = watch(&mut client, &seller.token, &product.id, false).await;
    assert_eq!(harness.handle.active_watchers(), 2);

    let reader = tokio::spawn(async move {
        let mut versions = Vec::new();
        while versions.len() < 300 {
            let message = next(&mut fast).await.unwrap().unwrap();
            if let Some(Change::ProductUpdated(product)) = message.change {
                versions.push(product.version);
            }
        }
        (versions, fast)
    });
    // Large messages fill the slow client's window quickly.
    let filler = "x".repeat(9_000);
    for index in 0..300 {
        update_description(
            &mut client,
            &seller.token,
            &product.id,
            format!("{index}{filler}"),
        )
        .await;
    }
    let (versions, fast) = reader.await.unwrap();
    assert_eq!(
        versions,
        (2..302).collect::<Vec<i64>>(),
        "the fast watcher saw everything"
    );

    // The slow watcher gets what was buffered, then ABORTED.
    let mut received = 0;
    let status = loop {
        match next(&mut slow).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the slow stream ended OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(received < 300, "changes were dropped: got {received}");
    eventually(
        "the aborted watcher is unregistered",
        Duration::from_secs(5),
        || async { harness.handle.active_watchers() == 1 },
    )
    .await;
    drop(fast);
    eventually(
        "every watcher is unregistered",
        Duration::from_secs(5),
        || async { harness.handle.active_watchers() == 0 },
    )
    .await;
}

#[tokio::test]
async fn streams_end_cleanly_when_clients_go_away() {
    let harness = Harness::start().await;
    let seller = harness.seller("away@example.com").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Shelf", &[])).await;

    let missing = client
        .watch_product(bearer(
            pb::WatchProductRequest {
                product_id: "no-such-product".into(),
                send_initial: true,
            },
            &seller.token,
        ))
        .await;
    assert_code(missing, Code::NotFound);
    let invalid = client
        .watch_product(bearer(
            pb::WatchProductRequest {
                product_id: "not/an/id".into(),
                send_initial: false,
            },
            &seller.token,
        ))
        .await;
    assert_violations(invalid, &["product_id"]);
    assert_eq!(
        harness.handle.active_watchers(),
        0,
        "refused calls leave nothing behind"
    );

    let mut streams = Vec::new();
    for _ in 0..3 {
        let channel = harness.catalog.channel().await.unwrap();
        let mut own = CatalogServiceClient::new(channel);
        streams.push(watch(&mut own, &seller.token, &product.id, true).await);
    }
    assert_eq!(harness.handle.active_watchers(), 3);
    let mut kept = streams.pop().unwrap();
    drop(streams);
    eventually(
        "dropped streams are unregistered",
        Duration::from_secs(5),
        || async { harness.handle.active_watchers() == 1 },
    )
    .await;
    // The remaining watcher is unaffected.
    assert_eq!(
        describe(&next(&mut kept).await.unwrap().unwrap()),
        "product v1"
    );
    update_description(&mut client, &seller.token, &product.id, "still here".into()).await;
    assert_eq!(
        describe(&next(&mut kept).await.unwrap().unwrap()),
        "product v2"
    );
    drop(kept);
    eventually(
        "every stream is unregistered",
        Duration::from_secs(5),
        || async { harness.handle.active_watchers() == 0 },
    )
    .await;
}
