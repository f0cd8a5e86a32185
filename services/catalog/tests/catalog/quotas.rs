//! Quotas (issue 20, item 5): products per seller and open `WatchProduct` streams per
//! identity, answered `RESOURCE_EXHAUSTED`, held under concurrency and released again.

use std::time::Duration;

use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use tonic::Code;

use crate::harness::*;

const MAX_PRODUCTS: usize = 5;

#[tokio::test]
async fn products_per_seller_are_capped_under_concurrent_creates_and_freed_by_deletes() {
    let harness = Harness::start_with(|settings| {
        settings.catalog.max_products_per_seller = MAX_PRODUCTS;
    })
    .await;
    let seller = harness.seller("quota@example.com").await;
    let other = harness.seller("other-quota@example.com").await;

    // 3 × the limit at once, each on its own connection: exactly the limit succeed.
    let mut calls = Vec::new();
    for n in 0..3 * MAX_PRODUCTS {
        let channel = harness.catalog.channel().await.unwrap();
        let token = seller.token.clone();
        calls.push(tokio::spawn(async move {
            CatalogServiceClient::new(channel)
                .create_product(bearer(new_product(&format!("Lamp {n}"), &[]), &token))
                .await
        }));
    }
    let mut created = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(response) => created.push(response.into_inner().product.unwrap()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("max_products_per_seller"),
                    "a clear message: {status:?}"
                );
            }
        }
    }
    assert_eq!(created.len(), MAX_PRODUCTS, "exactly the limit was created");

    let mut client = harness.client().await;
    let refused = client
        .create_product(bearer(new_product("One too many", &[]), &seller.token))
        .await;
    assert_code(refused, Code::ResourceExhausted);
    // Another seller is not affected.
    create(&mut client, &other.token, new_product("Chair", &[])).await;

    // A delete frees a place, once.
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: created[0].id.clone(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    let mut with_id = new_product("Replacement", &[]);
    with_id.request_id = "replacement-1".into();
    let replacement = create(&mut client, &seller.token, with_id.clone()).await;
    let refused = client
        .create_product(bearer(new_product("Again too many", &[]), &seller.token))
        .await;
    assert_code(refused, Code::ResourceExhausted);
    // A repeated request id at the limit is answered as the repeat it is, not refused.
    let repeated = create(&mut client, &seller.token, with_id).await;
    assert_eq!(repeated.id, replacement.id);
}

async fn open_watch(
    client: &mut CatalogServiceClient<tonic::transport::Channel>,
    token: &str,
    product_id: &str,
) -> Result<tonic::Streaming<pb::WatchProductResponse>, tonic::Status> {
    client
        .watch_product(bearer(
            pb::WatchProductRequest {
                product_id: product_id.into(),
                send_initial: true,
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn watch_streams_per_identity_are_capped_and_released_when_clients_go_away() {
    const MAX_STREAMS: usize = 3;
    let harness = Harness::start_with(|settings| {
        settings.catalog.max_watch_streams_per_identity = MAX_STREAMS;
    })
    .await;
    let seller = harness.seller("watcher@example.com").await;
    let other = harness.seller("other-watcher@example.com").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Vase", &[])).await;
    let second = create(&mut client, &seller.token, new_product("Bowl", &[])).await;

    // The limit holds across products and connections (each stream on its own connection, so
    // dropping one is the client going away).
    let mut streams = Vec::new();
    for n in 0..MAX_STREAMS {
        let mut own = CatalogServiceClient::new(harness.catalog.channel().await.unwrap());
        let id = if n % 2 == 0 { &product.id } else { &second.id };
        streams.push(open_watch(&mut own, &seller.token, id).await.unwrap());
    }
    let refused = open_watch(&mut client, &seller.token, &second.id).await;
    let status = refused.expect_err("one stream too many");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_watch_streams_per_identity"),
        "{status:?}"
    );
    assert_eq!(harness.handle.watchers_of(&seller.id), MAX_STREAMS);

    // Another identity still watches the same product.
    let mut other_client = CatalogServiceClient::new(harness.catalog.channel().await.unwrap());
    let mut others = open_watch(&mut other_client, &other.token, &product.id)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), others.message())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .unwrap();
    assert!(first.change.is_some());

    // A client that goes away releases its place.
    drop(streams.pop());
    eventually(
        "the dropped stream is released",
        Duration::from_secs(10),
        || async { harness.handle.watchers_of(&seller.id) == MAX_STREAMS - 1 },
    )
    .await;
    let mut again = open_watch(&mut client, &seller.token, &product.id)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), again.message())
            .await
            .expect("a snapshot within 10 s")
            .unwrap()
            .is_some()
    );
    assert_code(
        open_watch(&mut client, &seller.token, &product.id).await,
        Code::ResourceExhausted,
    );

    // Every client going away releases every place.
    drop(again);
    drop(streams);
    drop(others);
    eventually(
        "every stream is released",
        Duration::from_secs(10),
        || async {
            harness.handle.watchers_of(&seller.id) == 0
                && harness.handle.watchers_of(&other.id) == 0
        },
    )
    .await;
}
