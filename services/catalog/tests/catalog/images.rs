//! Images: attach, idempotent variant recording, READY/FAILED, primary image, deletion with
//! clean-up queued.

use std::collections::BTreeSet;

use redis::AsyncCommands;
use storemesh_catalog::store::keys;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::*;

async fn get_image(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    image_id: &str,
) -> Result<pb::Image, tonic::Status> {
    client
        .get_image(bearer(
            pb::GetImageRequest {
                image_id: image_id.into(),
            },
            token,
        ))
        .await
        .map(|response| response.into_inner().image.unwrap())
}

async fn set_primary(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    product_id: &str,
    image_id: &str,
) -> Result<pb::Product, tonic::Status> {
    client
        .set_primary_image(bearer(
            pb::SetPrimaryImageRequest {
                product_id: product_id.into(),
                image_id: image_id.into(),
                etag: String::new(),
            },
            token,
        ))
        .await
        .map(|response| response.into_inner().product.unwrap())
}

async fn mark_failed(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    image_id: &str,
    reason: &str,
) -> Result<pb::Image, tonic::Status> {
    client
        .mark_image_failed(bearer(
            pb::MarkImageFailedRequest {
                image_id: image_id.into(),
                reason: reason.into(),
                event_id: String::new(),
            },
            token,
        ))
        .await
        .map(|response| response.into_inner().image.unwrap())
}

#[tokio::test]
async fn variants_are_idempotent_and_ready_only_when_every_size_is_present() {
    let harness = Harness::start().await;
    let seller = harness.seller("images@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Chair", &[])).await;
    let other = create(&mut client, &seller.token, new_product("Table", &[])).await;

    let image = attach(&mut client, &seller.token, &product.id, "img-1").await;
    assert_eq!(image.state(), pb::ImageState::Processing);
    assert_eq!(
        image.storage_key,
        format!("products/{}/originals/img-1", product.id)
    );
    assert!(image.variants.is_empty());
    // AttachImage is idempotent on image_id ...
    let again = attach(&mut client, &seller.token, &product.id, "img-1").await;
    assert_eq!(again, image);
    // ... and an image id belongs to one product.
    let elsewhere = client
        .attach_image(bearer(attach_request(&other.id, "img-1"), &seller.token))
        .await;
    assert_code(elsewhere, Code::AlreadyExists);

    let w160 = record(
        &mut client,
        &thumbnail,
        "img-1",
        variant(&product.id, "img-1", 160),
        "evt-1",
    )
    .await
    .unwrap();
    assert_eq!(w160.state(), pb::ImageState::Processing);
    assert_eq!(w160.variants.len(), 1);

    // The same event again is a no-op, even with a different payload.
    let mut different = variant(&product.id, "img-1", 160);
    different.size_bytes = 1;
    let replayed = record(&mut client, &thumbnail, "img-1", different, "evt-1")
        .await
        .unwrap();
    assert_eq!(replayed, w160, "nothing changed");

    // A new event for an existing variant name replaces it, never duplicates it.
    let mut resized = variant(&product.id, "img-1", 160);
    resized.size_bytes = 777;
    let replaced = record(&mut client, &thumbnail, "img-1", resized, "evt-2")
        .await
        .unwrap();
    assert_eq!(replaced.variants.len(), 1);
    assert_eq!(replaced.variants[0].size_bytes, 777);

    // An extra variant that is not a configured size does not make the image READY.
    let mut square = variant(&product.id, "img-1", 100);
    square.name = "square".into();
    square.storage_key = format!("products/{}/thumbnails/img-1/square.jpg", product.id);
    let with_square = record(&mut client, &thumbnail, "img-1", square, "evt-3")
        .await
        .unwrap();
    assert_eq!(with_square.state(), pb::ImageState::Processing);

    let w640 = record(
        &mut client,
        &thumbnail,
        "img-1",
        variant(&product.id, "img-1", 640),
        "evt-4",
    )
    .await
    .unwrap();
    assert_eq!(
        w640.state(),
        pb::ImageState::Processing,
        "w320 still missing"
    );
    let ready = record(
        &mut client,
        &thumbnail,
        "img-1",
        variant(&product.id, "img-1", 320),
        "evt-5",
    )
    .await
    .unwrap();
    assert_eq!(ready.state(), pb::ImageState::Ready);
    let names: Vec<&str> = ready.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["square", "w160", "w320", "w640"],
        "by width, then name"
    );
    assert_eq!(
        get_image(&mut client, &seller.token, "img-1")
            .await
            .unwrap(),
        ready
    );

    // Redelivering every event after READY changes nothing.
    for (size, event) in [(160, "evt-1"), (640, "evt-4"), (320, "evt-5")] {
        let replay = record(
            &mut client,
            &thumbnail,
            "img-1",
            variant(&product.id, "img-1", size),
            event,
        )
        .await
        .unwrap();
        assert_eq!(replay, ready);
    }
    // Concurrent redeliveries of one new event apply it once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = client.clone();
        let token = thumbnail.clone();
        let mut newer = variant(&product.id, "img-1", 320);
        newer.size_bytes = 4242;
        tasks.push(tokio::spawn(async move {
            record(&mut client, &token, "img-1", newer, "evt-6").await
        }));
    }
    for task in tasks {
        let image = task.await.unwrap().unwrap();
        assert_eq!(image.variants.len(), 4);
    }
    let mut redis = harness.redis().await;
    let events: usize = redis.scard(keys::image_events("img-1")).await.unwrap();
    assert_eq!(events, 6);

    // The key must be this image's deterministic thumbnail key.
    let mut misplaced = variant(&product.id, "img-1", 320);
    misplaced.storage_key = format!("products/{}/thumbnails/img-1/w320.jpg", other.id);
    assert_violations(
        record(&mut client, &thumbnail, "img-1", misplaced, "evt-7").await,
        &["variant.storage_key"],
    );
    let mut wrong_ext = variant(&product.id, "img-1", 320);
    wrong_ext.format = pb::ImageFormat::Png.into();
    assert_violations(
        record(&mut client, &thumbnail, "img-1", wrong_ext, "evt-8").await,
        &["variant.storage_key"],
    );
    assert_code(
        record(
            &mut client,
            &thumbnail,
            "nope",
            variant(&product.id, "nope", 160),
            "evt-9",
        )
        .await,
        Code::NotFound,
    );
    // READY is not undone by a failure report.
    assert_code(
        mark_failed(&mut client, &thumbnail, "img-1", "too late").await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn failures_primary_images_listing_and_limits() {
    let harness = Harness::start().await;
    let seller = harness.seller("primary@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Sofa", &[])).await;
    let other = create(&mut client, &seller.token, new_product("Rug", &[])).await;
    for index in 0..5 {
        attach(
            &mut client,
            &seller.token,
            &product.id,
            &format!("sofa-{index}"),
        )
        .await;
    }
    attach(&mut client, &seller.token, &other.id, "rug-0").await;

    // Listing: attach order, paged, bound to the product.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_product_images(bearer(
                pb::ListProductImagesRequest {
                    product_id: product.id.clone(),
                    page_size: 2,
                    page_token: page_token.clone(),
                },
                &seller.token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.images.len() <= 2);
        seen.extend(page.images.into_iter().map(|image| image.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["sofa-0", "sofa-1", "sofa-2", "sofa-3", "sofa-4"]);
    let first = client
        .list_product_images(bearer(
            pb::ListProductImagesRequest {
                product_id: product.id.clone(),
                page_size: 2,
                page_token: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let foreign_token = client
        .list_product_images(bearer(
            pb::ListProductImagesRequest {
                product_id: other.id.clone(),
                page_size: 2,
                page_token: first.next_page_token,
            },
            &seller.token,
        ))
        .await;
    assert_violations(foreign_token, &["page_token"]);
    let unknown_product = client
        .list_product_images(bearer(
            pb::ListProductImagesRequest {
                product_id: "no-such-product".into(),
                ..Default::default()
            },
            &seller.token,
        ))
        .await;
    assert_code(unknown_product, Code::NotFound);

    // Failure is final and keeps its first reason.
    let failed = mark_failed(&mut client, &thumbnail, "sofa-0", "cannot decode JPEG")
        .await
        .unwrap();
    assert_eq!(failed.state(), pb::ImageState::Failed);
    assert_eq!(failed.failure_reason, "cannot decode JPEG");
    let again = mark_failed(&mut client, &thumbnail, "sofa-0", "another reason")
        .await
        .unwrap();
    assert_eq!(again, failed);
    assert_code(
        record(
            &mut client,
            &thumbnail,
            "sofa-0",
            variant(&product.id, "sofa-0", 160),
            "e1",
        )
        .await,
        Code::FailedPrecondition,
    );

    // Primary image rules.
    assert_code(
        set_primary(&mut client, &seller.token, &product.id, "sofa-0").await,
        Code::FailedPrecondition,
    );
    assert_code(
        set_primary(&mut client, &seller.token, &product.id, "rug-0").await,
        Code::FailedPrecondition,
    );
    assert_code(
        set_primary(&mut client, &seller.token, &product.id, "missing").await,
        Code::NotFound,
    );
    let with_primary = set_primary(&mut client, &seller.token, &product.id, "sofa-1")
        .await
        .unwrap();
    assert_eq!(with_primary.primary_image_id, "sofa-1");
    assert_eq!(with_primary.version, product.version + 1);
    let stale = client
        .set_primary_image(bearer(
            pb::SetPrimaryImageRequest {
                product_id: product.id.clone(),
                image_id: "sofa-2".into(),
                etag: product.etag.clone(),
            },
            &seller.token,
        ))
        .await;
    assert_code(stale, Code::Aborted);

    // Failing the primary image clears it (a product update).
    let failed_primary = mark_failed(&mut client, &thumbnail, "sofa-1", "too many pixels")
        .await
        .unwrap();
    assert_eq!(failed_primary.state(), pb::ImageState::Failed);
    let product_now = client
        .get_product(bearer(
            pb::GetProductRequest {
                id: product.id.clone(),
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(product_now.primary_image_id, "");
    assert_eq!(product_now.version, with_primary.version + 1);

    // Deleting the primary image clears it too, and queues its objects for clean-up.
    let primary = set_primary(&mut client, &seller.token, &product.id, "sofa-2")
        .await
        .unwrap();
    record(
        &mut client,
        &thumbnail,
        "sofa-2",
        variant(&product.id, "sofa-2", 160),
        "e2",
    )
    .await
    .unwrap();
    client
        .delete_image(bearer(
            pb::DeleteImageRequest {
                image_id: "sofa-2".into(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    assert_code(
        get_image(&mut client, &seller.token, "sofa-2").await,
        Code::NotFound,
    );
    let product_now = client
        .get_product(bearer(
            pb::GetProductRequest {
                id: product.id.clone(),
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(product_now.primary_image_id, "");
    assert_eq!(product_now.version, primary.version + 1);
    let queued = cleanup_keys(&harness).await;
    assert_eq!(
        queued,
        BTreeSet::from([
            format!("products/{}/originals/sofa-2", product.id),
            format!("products/{}/thumbnails/sofa-2/w160.jpg", product.id),
        ])
    );
    // Clearing with an empty id works.
    let cleared = set_primary(&mut client, &seller.token, &product.id, "")
        .await
        .unwrap();
    assert_eq!(cleared.primary_image_id, "");

    // At most 100 images per product.
    for index in 0..96 {
        attach(
            &mut client,
            &seller.token,
            &other.id,
            &format!("rug-{}", index + 1),
        )
        .await;
    }
    attach(&mut client, &seller.token, &other.id, "rug-97").await;
    attach(&mut client, &seller.token, &other.id, "rug-98").await;
    attach(&mut client, &seller.token, &other.id, "rug-99").await;
    let full = client
        .attach_image(bearer(attach_request(&other.id, "rug-100"), &seller.token))
        .await;
    assert_code(full, Code::FailedPrecondition);
    // Re-attaching an existing image is still fine when full.
    attach(&mut client, &seller.token, &other.id, "rug-5").await;
}

/// The storage keys waiting in the clean-up outbox.
async fn cleanup_keys(harness: &Harness) -> BTreeSet<String> {
    let mut redis = harness.redis().await;
    let entries: redis::streams::StreamRangeReply =
        redis.xrange_all(keys::CLEANUP_STREAM).await.unwrap();
    entries
        .ids
        .iter()
        .map(|entry| entry.get::<String>("key").unwrap())
        .collect()
}

#[tokio::test]
async fn delete_product_removes_image_records_and_queues_cleanup() {
    let harness = Harness::start().await;
    let seller = harness.seller("delete@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Vase", &["decor"])).await;
    let keep = create(&mut client, &seller.token, new_product("Keep", &["decor"])).await;
    attach(&mut client, &seller.token, &product.id, "vase-a").await;
    attach(&mut client, &seller.token, &product.id, "vase-b").await;
    attach(&mut client, &seller.token, &keep.id, "keep-a").await;
    for size in [160, 320, 640] {
        record(
            &mut client,
            &thumbnail,
            "vase-a",
            variant(&product.id, "vase-a", size),
            &format!("e{size}"),
        )
        .await
        .unwrap();
    }
    set_primary(&mut client, &seller.token, &product.id, "vase-a")
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

    for image in ["vase-a", "vase-b"] {
        assert_code(
            get_image(&mut client, &seller.token, image).await,
            Code::NotFound,
        );
    }
    let listed = client
        .list_product_images(bearer(
            pb::ListProductImagesRequest {
                product_id: product.id.clone(),
                ..Default::default()
            },
            &seller.token,
        ))
        .await;
    assert_code(listed, Code::NotFound);
    assert!(
        get_image(&mut client, &seller.token, "keep-a")
            .await
            .is_ok()
    );

    // No record, index entry or counter of the product is left in Redis.
    let mut redis = harness.redis().await;
    let mut leftovers: Vec<String> = redis
        .keys(format!("catalog:product:{}*", product.id))
        .await
        .unwrap();
    let image_keys: Vec<String> = redis.keys("catalog:image:vase-*").await.unwrap();
    leftovers.extend(image_keys);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for index in [
        keys::PRODUCTS.to_owned(),
        keys::seller_products(&seller.id),
        keys::tag_products("decor"),
        keys::seller_tag_products(&seller.id, "decor"),
    ] {
        let members: Vec<String> = redis.zrange(&index, 0, -1).await.unwrap();
        assert_eq!(members.len(), 1, "{index}: {members:?}");
        assert!(members[0].ends_with(&keep.id));
    }

    // Every stored object of the product is queued for deletion, once.
    let queued = cleanup_keys(&harness).await;
    let p = &product.id;
    let expected = BTreeSet::from([
        format!("products/{p}/originals/vase-a"),
        format!("products/{p}/originals/vase-b"),
        format!("products/{p}/thumbnails/vase-a/w160.jpg"),
        format!("products/{p}/thumbnails/vase-a/w320.jpg"),
        format!("products/{p}/thumbnails/vase-a/w640.jpg"),
    ]);
    assert_eq!(queued, expected);
    let length: usize = redis.xlen(keys::CLEANUP_STREAM).await.unwrap();
    assert_eq!(length, 5);
    // No credentials in this harness: nothing drains the outbox.
    assert!(harness.handle.cleanup_stats().is_none());

    // Late events for the deleted images are NOT_FOUND (the dispatcher retries, then
    // dead-letters them).
    assert_code(
        record(
            &mut client,
            &thumbnail,
            "vase-b",
            variant(p, "vase-b", 160),
            "late",
        )
        .await,
        Code::NotFound,
    );
}
