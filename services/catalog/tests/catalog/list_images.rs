//! `ListImages`: images of every product by state and update time, backed by the per-state
//! indexes the commit script maintains.

use std::time::Duration;

use redis::AsyncCommands;
use storemesh_catalog::store::keys;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::*;

async fn list(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    request: pb::ListImagesRequest,
) -> Result<pb::ListImagesResponse, tonic::Status> {
    client
        .list_images(bearer(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn in_state(state: pb::ImageState) -> pb::ListImagesRequest {
    pb::ListImagesRequest {
        state: state.into(),
        ..Default::default()
    }
}

fn ids(response: &pb::ListImagesResponse) -> Vec<&str> {
    response
        .images
        .iter()
        .map(|image| image.id.as_str())
        .collect()
}

#[tokio::test]
async fn images_move_between_states_and_are_listed_by_update_time() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let seller = harness.seller("lister@example.com").await;
    let reader = harness.service("reader").await;
    let writer = harness.service("thumbnail").await;
    let product = create(&mut client, &seller.token, new_product("Lamp", &[])).await;
    for image in ["img-a", "img-b", "img-c"] {
        attach(&mut client, &seller.token, &product.id, image).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    let processing = list(&mut client, &reader, in_state(pb::ImageState::Processing))
        .await
        .unwrap();
    assert_eq!(ids(&processing), ["img-a", "img-b", "img-c"]);

    // img-a becomes READY, img-b FAILED: both leave the PROCESSING index.
    for (n, size) in [160, 320, 640].into_iter().enumerate() {
        record(
            &mut client,
            &writer,
            "img-a",
            variant(&product.id, "img-a", size),
            &format!("ev-{n}"),
        )
        .await
        .unwrap();
    }
    client
        .mark_image_failed(bearer(
            pb::MarkImageFailedRequest {
                image_id: "img-b".into(),
                reason: "undecodable".into(),
                event_id: String::new(),
            },
            &writer,
        ))
        .await
        .unwrap();
    let admin = harness.admin().await;
    for (state, expected) in [
        (pb::ImageState::Processing, vec!["img-c"]),
        (pb::ImageState::Ready, vec!["img-a"]),
        (pb::ImageState::Failed, vec!["img-b"]),
    ] {
        let listed = list(&mut client, &admin.token, in_state(state))
            .await
            .unwrap();
        assert_eq!(ids(&listed), expected, "{state:?}");
        assert!(listed.images.iter().all(|image| image.state() == state));
    }

    // A variant recorded on img-c moves its update time, so it is no longer "updated before"
    // a time taken before that change.
    let before_change = storemesh_runtime::time::now_timestamp();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let stuck = pb::ListImagesRequest {
        updated_before: Some(before_change),
        ..in_state(pb::ImageState::Processing)
    };
    assert_eq!(
        ids(&list(&mut client, &reader, stuck.clone()).await.unwrap()),
        ["img-c"]
    );
    record(
        &mut client,
        &writer,
        "img-c",
        variant(&product.id, "img-c", 160),
        "ev-c",
    )
    .await
    .unwrap();
    assert!(
        list(&mut client, &reader, stuck)
            .await
            .unwrap()
            .images
            .is_empty()
    );

    // Deleting images and products removes them from the indexes.
    client
        .delete_image(bearer(
            pb::DeleteImageRequest {
                image_id: "img-c".into(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
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
    let mut redis = harness.redis().await;
    for state in ["processing", "ready", "failed"] {
        let left: usize = redis.zcard(keys::images_in_state(state)).await.unwrap();
        assert_eq!(left, 0, "{state} index emptied");
    }
}

#[tokio::test]
async fn pages_are_stable_and_tokens_bound_to_their_filter() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let seller = harness.seller("pager@example.com").await;
    let reader = harness.service("reader").await;
    let product = create(&mut client, &seller.token, new_product("Chair", &[])).await;
    for n in 0..7 {
        attach(
            &mut client,
            &seller.token,
            &product.id,
            &format!("page-{n}"),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &mut client,
            &reader,
            pb::ListImagesRequest {
                page_size: 3,
                page_token: token.clone(),
                ..in_state(pb::ImageState::Processing)
            },
        )
        .await
        .unwrap();
        assert!(page.images.len() <= 3);
        seen.extend(page.images.iter().map(|image| image.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // The token is refused with another filter.
        let other = list(
            &mut client,
            &reader,
            pb::ListImagesRequest {
                page_token: token.clone(),
                ..in_state(pb::ImageState::Ready)
            },
        )
        .await;
        assert_violations(other, &["page_token"]);
    }
    let expected: Vec<String> = (0..7).map(|n| format!("page-{n}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn only_admins_and_readers_may_list_and_bad_requests_name_the_field() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let seller = harness.seller("nosy@example.com").await;
    let unrelated = harness.service("unrelated").await;
    let reader = harness.service("reader").await;

    for token in [seller.token.as_str(), unrelated.as_str()] {
        assert_code(
            list(&mut client, token, in_state(pb::ImageState::Processing)).await,
            Code::PermissionDenied,
        );
    }
    assert_code(
        client
            .list_images(pb::ListImagesRequest::default())
            .await
            .map(drop),
        Code::Unauthenticated,
    );
    assert_violations(
        list(&mut client, &reader, pb::ListImagesRequest::default()).await,
        &["state"],
    );
    assert_violations(
        list(
            &mut client,
            &reader,
            pb::ListImagesRequest {
                state: 42,
                page_size: -1,
                page_token: "garbage!".into(),
                updated_before: Some(prost_types::Timestamp {
                    seconds: -5,
                    nanos: 0,
                }),
            },
        )
        .await,
        &["state", "updated_before", "page_size", "page_token"],
    );
}
