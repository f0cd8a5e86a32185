//! Product visibility and the anonymous storefront reads (GetProduct, ListProducts without a
//! token), served from the published indexes.

use std::time::Duration;

use prost_types::FieldMask;
use redis::AsyncCommands;
use storemesh_proto::auth::v1::Role;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::harness::*;

use pb::ProductVisibility::{Draft as DRAFT, Published as PUBLISHED};

fn visibility_request(id: &str, visibility: i32, etag: &str) -> pb::UpdateProductRequest {
    pb::UpdateProductRequest {
        product: Some(pb::Product {
            id: id.into(),
            visibility,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["visibility".into()],
        }),
        etag: etag.into(),
    }
}

async fn set_visibility(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    id: &str,
    visibility: pb::ProductVisibility,
) -> pb::Product {
    client
        .update_product(bearer(visibility_request(id, visibility.into(), ""), token))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
}

/// Every page of a listing, following the tokens, as `token`'s holder (`None`: anonymous);
/// the ids and the number of pages.
async fn list_all(
    client: &mut CatalogServiceClient<Channel>,
    token: Option<&str>,
    filter: pb::ListProductsRequest,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let message = pb::ListProductsRequest {
            page_token: page_token.clone(),
            ..filter.clone()
        };
        let request = match token {
            Some(token) => bearer(message, token),
            None => Request::new(message),
        };
        let page = client.list_products(request).await.unwrap().into_inner();
        pages += 1;
        ids.extend(page.products.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            return (ids, pages);
        }
        page_token = page.next_page_token;
        assert!(pages < 1_000, "the listing does not end");
    }
}

#[tokio::test]
async fn visibility_defaults_to_draft_and_changes_by_update() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let other = harness.seller("other@example.com").await;
    let admin = harness.admin().await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Lamp", &["home"])).await;
    assert_eq!(product.visibility(), DRAFT, "new products are drafts");

    let mut watch = client
        .watch_product(bearer(
            pb::WatchProductRequest {
                product_id: product.id.clone(),
                send_initial: false,
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner();

    // Publishing is an update like any other: new version and etag, conditional on the etag.
    let published = client
        .update_product(bearer(
            visibility_request(&product.id, PUBLISHED.into(), &product.etag),
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(published.visibility(), PUBLISHED);
    assert_eq!(published.version, product.version + 1);
    assert_ne!(published.etag, product.etag);
    assert_eq!(published.title, "Lamp", "nothing else changed");
    let stale = client
        .update_product(bearer(
            visibility_request(&product.id, DRAFT.into(), &product.etag),
            &seller.token,
        ))
        .await;
    assert_code(stale, Code::Aborted);

    let seen = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match seen.change {
        Some(Change::ProductUpdated(update)) => {
            assert_eq!(update.visibility(), PUBLISHED);
            assert_eq!(update.etag, published.etag);
        }
        other => panic!("expected the product update, got {other:?}"),
    }

    let read = client
        .get_product(bearer(
            pb::GetProductRequest {
                id: product.id.clone(),
            },
            &other.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(read.visibility(), PUBLISHED);

    // Only DRAFT and PUBLISHED are values; only the owner or an admin changes them.
    for bad in [pb::ProductVisibility::Unspecified as i32, 9] {
        let refused = client
            .update_product(bearer(
                visibility_request(&product.id, bad, ""),
                &seller.token,
            ))
            .await;
        assert_violations(refused, &["product.visibility"]);
    }
    let foreign = client
        .update_product(bearer(
            visibility_request(&product.id, DRAFT.into(), ""),
            &other.token,
        ))
        .await;
    assert_code(foreign, Code::PermissionDenied);
    let unpublished = set_visibility(&mut client, &admin.token, &product.id, DRAFT).await;
    assert_eq!(unpublished.visibility(), DRAFT);
    assert_eq!(unpublished.version, published.version + 1);

    // A product stored before visibility existed (no such hash field) reads as a draft.
    let mut redis = harness.redis().await;
    set_visibility(&mut client, &seller.token, &product.id, PUBLISHED).await;
    let _: () = redis
        .hdel(format!("catalog:product:{}", product.id), "visibility")
        .await
        .unwrap();
    let old = client
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
    assert_eq!(old.visibility(), DRAFT);
}

#[tokio::test]
async fn anonymous_get_product_sees_only_published_products() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let mut client = harness.client().await;
    let draft = create(&mut client, &seller.token, new_product("Draft", &[])).await;
    let shown = create(&mut client, &seller.token, new_product("Shown", &[])).await;
    set_visibility(&mut client, &seller.token, &shown.id, PUBLISHED).await;

    let get = |id: &str| Request::new(pb::GetProductRequest { id: id.into() });
    let product = client
        .get_product(get(&shown.id))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(product.title, "Shown");
    assert_eq!(product.visibility(), PUBLISHED);

    // A draft is answered exactly like a product that does not exist.
    let hidden = client.get_product(get(&draft.id)).await.unwrap_err();
    let missing_id = "01MISSINGPRODUCT";
    let missing = client.get_product(get(missing_id)).await.unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        hidden.message().replace(&draft.id, "{id}"),
        missing.message().replace(missing_id, "{id}")
    );
    // Signed in, the draft is there as before.
    client
        .get_product(bearer(
            pb::GetProductRequest {
                id: draft.id.clone(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    // Unpublished again, it is hidden again; a token that is sent is still verified.
    set_visibility(&mut client, &seller.token, &shown.id, DRAFT).await;
    assert_code(client.get_product(get(&shown.id)).await, Code::NotFound);
    let forged = client
        .get_product(bearer(
            pb::GetProductRequest {
                id: shown.id.clone(),
            },
            "not-a-jwt",
        ))
        .await;
    assert_code(forged, Code::Unauthenticated);
    assert_violations(client.get_product(get("a/b")).await, &["id"]);
}

#[tokio::test]
async fn anonymous_listing_shows_published_products_only() {
    let harness = Harness::start().await;
    let seller_a = harness.seller("a@example.com").await;
    let seller_b = harness.seller("b@example.com").await;
    let customer = harness.user("c@example.com", Role::Customer).await;
    let mut client = harness.client().await;
    // Seven products of A (every third tagged red, drafts in between) and two of B.
    let mut published = Vec::new();
    let mut drafts = Vec::new();
    let mut all = Vec::new();
    for index in 0..7 {
        let tags: &[&str] = if index % 3 == 0 { &["red"] } else { &["blue"] };
        let product = create(
            &mut client,
            &seller_a.token,
            new_product(&format!("A{index}"), tags),
        )
        .await;
        if index % 3 == 1 {
            drafts.push(product.id.clone());
        } else {
            set_visibility(&mut client, &seller_a.token, &product.id, PUBLISHED).await;
            published.push((product.id.clone(), tags[0]));
        }
        all.push(product.id);
    }
    let b_published = create(&mut client, &seller_b.token, new_product("B0", &["red"])).await;
    set_visibility(&mut client, &seller_b.token, &b_published.id, PUBLISHED).await;
    published.push((b_published.id.clone(), "red"));
    let b_draft = create(&mut client, &seller_b.token, new_product("B1", &["red"])).await;
    drafts.push(b_draft.id.clone());
    all.extend([b_published.id.clone(), b_draft.id.clone()]);
    let published_ids: Vec<String> = published.iter().map(|(id, _)| id.clone()).collect();

    // Paged across several pages, in creation order, drafts never included.
    let paged = pb::ListProductsRequest {
        page_size: 2,
        ..Default::default()
    };
    let (ids, pages) = list_all(&mut client, None, paged.clone()).await;
    assert_eq!(ids, published_ids);
    assert_eq!(pages, 3, "six published products, two per page");
    let explicit = pb::ListProductsRequest {
        visibility: PUBLISHED.into(),
        ..paged.clone()
    };
    assert_eq!(list_all(&mut client, None, explicit).await.0, published_ids);

    // Filters work as before, within the published products.
    let red = pb::ListProductsRequest {
        tag: "red".into(),
        ..paged.clone()
    };
    let red_published: Vec<String> = published
        .iter()
        .filter(|(_, tag)| *tag == "red")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        list_all(&mut client, None, red.clone()).await.0,
        red_published
    );
    let a_red = pb::ListProductsRequest {
        seller_id: seller_a.id.clone(),
        ..red.clone()
    };
    assert_eq!(
        list_all(&mut client, None, a_red).await.0,
        red_published[..red_published.len() - 1]
    );

    // Asking for drafts without a token is refused.
    let drafts_request = pb::ListProductsRequest {
        visibility: DRAFT.into(),
        ..Default::default()
    };
    assert_code(
        client
            .list_products(Request::new(drafts_request.clone()))
            .await,
        Code::Unauthenticated,
    );

    // Signed in, the listing is unchanged (drafts included) and can be filtered either way.
    assert_eq!(
        list_all(&mut client, Some(&customer.token), paged.clone())
            .await
            .0,
        all
    );
    assert_eq!(
        list_all(&mut client, Some(&customer.token), drafts_request.clone())
            .await
            .0,
        drafts
    );
    let signed_in_published = pb::ListProductsRequest {
        visibility: PUBLISHED.into(),
        ..paged.clone()
    };
    assert_eq!(
        list_all(&mut client, Some(&customer.token), signed_in_published)
            .await
            .0,
        published_ids
    );
    // An anonymous listing's token is bound to its (published-only) filter.
    let first = client
        .list_products(Request::new(paged.clone()))
        .await
        .unwrap()
        .into_inner();
    let replayed = client
        .list_products(bearer(
            pb::ListProductsRequest {
                page_token: first.next_page_token,
                ..paged.clone()
            },
            &customer.token,
        ))
        .await;
    assert_violations(replayed, &["page_token"]);

    // The published indexes follow retagging, unpublishing and deleting.
    let mut redis = harness.redis().await;
    let card = |key: &'static str| {
        let mut redis = redis.clone();
        async move { redis.zcard::<_, usize>(key).await.unwrap() }
    };
    assert_eq!(card("catalog:published:products").await, 6);
    assert_eq!(card("catalog:published:tag:red:products").await, 4);
    let (first_red, _) = published[0].clone();
    client
        .update_product(bearer(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: first_red.clone(),
                    tags: vec!["green".into()],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["tags".into()],
                }),
                etag: String::new(),
            },
            &seller_a.token,
        ))
        .await
        .unwrap();
    assert_eq!(card("catalog:published:tag:red:products").await, 3);
    assert_eq!(card("catalog:published:tag:green:products").await, 1);
    let green = pb::ListProductsRequest {
        tag: "green".into(),
        ..Default::default()
    };
    assert_eq!(
        list_all(&mut client, None, green).await.0,
        std::slice::from_ref(&first_red)
    );
    set_visibility(&mut client, &seller_a.token, &first_red, DRAFT).await;
    assert_eq!(card("catalog:published:tag:green:products").await, 0);
    assert_eq!(card("catalog:published:products").await, 5);
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: b_published.id.clone(),
                etag: String::new(),
            },
            &seller_b.token,
        ))
        .await
        .unwrap();
    assert_eq!(card("catalog:published:products").await, 4);
    let seller_b_key = format!("catalog:published:seller:{}:tag:red:products", seller_b.id);
    let b_red: usize = redis.zcard(seller_b_key).await.unwrap();
    assert_eq!(b_red, 0);
    assert_eq!(list_all(&mut client, None, paged).await.0.len(), 4);
}

/// A signed-in drafts listing walks past published products a bounded number at a time: a
/// page may come back short (even empty) with a token, and paging still finds every draft.
#[tokio::test]
async fn draft_listing_pages_past_many_published_products() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let mut client = harness.client().await;
    let early = create(&mut client, &seller.token, new_product("Early", &[])).await;
    let early_ms = {
        let time = early.create_time.unwrap();
        time.seconds * 1000 + i64::from(time.nanos / 1_000_000)
    };
    // 2500 published products one millisecond after the first draft (index members only:
    // their records do not exist, which the listing skips like concurrently deleted ones).
    let mut redis = harness.redis().await;
    let members: Vec<(i64, String)> = (0..2500)
        .map(|n| (0, format!("{:016}:filler{n:05}", early_ms + 1)))
        .collect();
    for key in ["catalog:products", "catalog:published:products"] {
        let _: () = redis.zadd_multiple(key, &members).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = create(&mut client, &seller.token, new_product("Late", &[])).await;

    let drafts = pb::ListProductsRequest {
        visibility: DRAFT.into(),
        page_size: 10,
        ..Default::default()
    };
    let (ids, pages) = list_all(&mut client, Some(&seller.token), drafts).await;
    assert_eq!(ids, [early.id, late.id]);
    assert!(pages >= 2, "the walk stopped at its budget at least once");
}

#[tokio::test]
async fn anonymous_product_images_are_the_ready_images_of_published_products() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Lamp", &[])).await;
    // One image READY, one still PROCESSING, one FAILED.
    for image_id in ["ready", "processing", "failed"] {
        attach(&mut client, &seller.token, &product.id, image_id).await;
    }
    for (size, event) in [(160, "e1"), (320, "e2"), (640, "e3")] {
        record(
            &mut client,
            &thumbnail,
            "ready",
            variant(&product.id, "ready", size),
            event,
        )
        .await
        .unwrap();
    }
    client
        .mark_image_failed(bearer(
            pb::MarkImageFailedRequest {
                image_id: "failed".into(),
                reason: "cannot decode".into(),
                event_id: String::new(),
            },
            &thumbnail,
        ))
        .await
        .unwrap();
    let list = |product_id: &str| {
        Request::new(pb::ListProductImagesRequest {
            product_id: product_id.into(),
            ..Default::default()
        })
    };

    // A draft's images are hidden like a product that does not exist.
    let hidden = client
        .list_product_images(list(&product.id))
        .await
        .unwrap_err();
    let missing = client
        .list_product_images(list("01MISSINGPRODUCT"))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        hidden.message().replace(&product.id, "{id}"),
        missing.message().replace("01MISSINGPRODUCT", "{id}")
    );

    // Published: shoppers get the READY image only, with its public URLs.
    set_visibility(&mut client, &seller.token, &product.id, PUBLISHED).await;
    let shown = client
        .list_product_images(list(&product.id))
        .await
        .unwrap()
        .into_inner()
        .images;
    let ids: Vec<&str> = shown.iter().map(|image| image.id.as_str()).collect();
    assert_eq!(ids, ["ready"]);
    assert_eq!(shown[0].variants.len(), 3);
    assert!(!shown[0].srcset.is_empty());
    // The seller still sees every image, whatever its state.
    let all = client
        .list_product_images(bearer(
            pb::ListProductImagesRequest {
                product_id: product.id.clone(),
                ..Default::default()
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(all.len(), 3);
    // A token that is sent is still verified; bad ids are still refused.
    let forged = client
        .list_product_images(bearer(
            pb::ListProductImagesRequest {
                product_id: product.id.clone(),
                ..Default::default()
            },
            "not-a-jwt",
        ))
        .await;
    assert_code(forged, Code::Unauthenticated);
    assert_violations(
        client.list_product_images(list("a/b")).await,
        &["product_id"],
    );

    // Unpublished again, the images are hidden again.
    set_visibility(&mut client, &seller.token, &product.id, DRAFT).await;
    assert_code(
        client.list_product_images(list(&product.id)).await,
        Code::NotFound,
    );
}
