//! Products: CRUD, idempotent create, paging with filters, field masks, optimistic concurrency.

use std::collections::HashSet;

use prost_types::FieldMask;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::*;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn get(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    id: &str,
) -> Result<pb::Product, tonic::Status> {
    client
        .get_product(bearer(pb::GetProductRequest { id: id.into() }, token))
        .await
        .map(|response| response.into_inner().product.unwrap())
}

async fn update(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    product: pb::Product,
    paths: &[&str],
    etag: &str,
) -> Result<pb::Product, tonic::Status> {
    client
        .update_product(bearer(
            pb::UpdateProductRequest {
                product: Some(product),
                update_mask: mask(paths),
                etag: etag.into(),
            },
            token,
        ))
        .await
        .map(|response| response.into_inner().product.unwrap())
}

#[tokio::test]
async fn crud_round_trip_and_idempotent_create() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let other = harness.seller("other@example.com").await;
    let mut client = harness.client().await;

    let created = create(
        &mut client,
        &seller.token,
        pb::CreateProductRequest {
            title: "Blue mug".into(),
            description: "Holds coffee.\nDishwasher safe.".into(),
            price: money(1299, "EUR"),
            tags: vec!["kitchen".into(), "blue".into(), "kitchen".into()],
            request_id: String::new(),
        },
    )
    .await;
    assert_eq!(created.id.len(), 26, "a ULID");
    assert_eq!(created.seller_id, seller.id);
    assert_eq!(created.version, 1);
    assert!(!created.etag.is_empty());
    assert_eq!(
        created.tags,
        ["kitchen", "blue"],
        "deduplicated, order kept"
    );
    assert_eq!(created.price, money(1299, "EUR"));
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);

    let read = get(&mut client, &seller.token, &created.id).await.unwrap();
    assert_eq!(read, created);

    let mut change = created.clone();
    change.title = "Big blue mug".into();
    change.price = money(1499, "EUR");
    change.description = "ignored: not in the mask".into();
    change.seller_id = "someone-else".into();
    let updated = update(
        &mut client,
        &seller.token,
        change,
        &["title", "price"],
        &created.etag,
    )
    .await
    .unwrap();
    assert_eq!(updated.title, "Big blue mug");
    assert_eq!(updated.price, money(1499, "EUR"));
    assert_eq!(updated.description, created.description);
    assert_eq!(
        updated.seller_id, seller.id,
        "output-only fields are ignored"
    );
    assert_eq!(updated.version, 2);
    assert_ne!(updated.etag, created.etag);
    assert_eq!(
        get(&mut client, &seller.token, &created.id).await.unwrap(),
        updated
    );

    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: created.id.clone(),
                etag: updated.etag.clone(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    assert_code(
        get(&mut client, &seller.token, &created.id).await,
        Code::NotFound,
    );
    let again = client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: created.id.clone(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await;
    assert_code(again, Code::NotFound);

    // request_id: a repeat returns the first product as it is now, per caller.
    let with_id = |title: &str| pb::CreateProductRequest {
        request_id: "order-42_a".into(),
        ..new_product(title, &[])
    };
    let first = create(&mut client, &seller.token, with_id("First")).await;
    let mut renamed = first.clone();
    renamed.title = "Renamed".into();
    update(&mut client, &seller.token, renamed, &["title"], "")
        .await
        .unwrap();
    let repeat = create(&mut client, &seller.token, with_id("Second")).await;
    assert_eq!(repeat.id, first.id);
    assert_eq!(repeat.title, "Renamed", "returned as it is now");
    assert_eq!(repeat.version, 2);
    let others = create(&mut client, &other.token, with_id("Other")).await;
    assert_ne!(others.id, first.id, "request ids are per caller");
    let listed = client
        .list_products(bearer(
            pb::ListProductsRequest {
                seller_id: seller.id.clone(),
                ..Default::default()
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.products.len(), 1, "the repeat created nothing");
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: first.id.clone(),
                etag: String::new(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    let after_delete = client
        .create_product(bearer(with_id("Third"), &seller.token))
        .await;
    assert_code(after_delete, Code::NotFound);
}

async fn list_all(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    request: pb::ListProductsRequest,
) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut page_token = request.page_token.clone();
    loop {
        let page = client
            .list_products(bearer(
                pb::ListProductsRequest {
                    page_token: page_token.clone(),
                    ..request.clone()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        ids.extend(page.products.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            return (ids, pages);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn paging_across_many_products_with_seller_and_tag_filters() {
    let harness = Harness::start().await;
    let alice = harness.seller("alice@example.com").await;
    let bob = harness.seller("bob@example.com").await;
    let customer = harness
        .user(
            "carol@example.com",
            storemesh_proto::auth::v1::Role::Customer,
        )
        .await;
    let mut client = harness.client().await;

    let mut created = Vec::new();
    for index in 0..120 {
        let (seller, tags): (&User, Vec<&str>) = if index % 12 < 7 {
            (
                &alice,
                if index % 3 == 0 {
                    vec!["red"]
                } else {
                    vec!["blue"]
                },
            )
        } else {
            (
                &bob,
                if index % 2 == 0 {
                    vec!["red", "sale"]
                } else {
                    vec![]
                },
            )
        };
        let product = create(
            &mut client,
            &seller.token,
            new_product(&format!("Item {index}"), &tags),
        )
        .await;
        created.push(product);
    }
    let order = |filter: &dyn Fn(&pb::Product) -> bool| -> Vec<String> {
        let mut selected: Vec<&pb::Product> = created.iter().filter(|p| filter(p)).collect();
        selected.sort_by_key(|p| {
            let time = p.create_time.unwrap();
            (time.seconds, time.nanos, p.id.clone())
        });
        selected.into_iter().map(|p| p.id.clone()).collect()
    };

    let (all, pages) = list_all(
        &mut client,
        &customer.token,
        pb::ListProductsRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        all,
        order(&|_| true),
        "create time, then id; no repeats, none missing"
    );
    assert_eq!(pages, 18, "120 in pages of 7");

    let (_, pages) = list_all(
        &mut client,
        &customer.token,
        pb::ListProductsRequest::default(),
    )
    .await;
    assert_eq!(pages, 3, "page_size 0 means 50");
    let big = client
        .list_products(bearer(
            pb::ListProductsRequest {
                page_size: 100_000,
                ..Default::default()
            },
            &customer.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.products.len(), 120, "capped at 500, and 120 fit");
    assert!(big.next_page_token.is_empty());

    let by_seller = pb::ListProductsRequest {
        page_size: 9,
        seller_id: alice.id.clone(),
        ..Default::default()
    };
    let (alices, _) = list_all(&mut client, &customer.token, by_seller.clone()).await;
    assert_eq!(alices, order(&|p| p.seller_id == alice.id));
    assert_eq!(alices.len(), 70);

    let red = pb::ListProductsRequest {
        page_size: 11,
        tag: "red".into(),
        ..Default::default()
    };
    let (reds, _) = list_all(&mut client, &customer.token, red.clone()).await;
    assert_eq!(reds, order(&|p| p.tags.contains(&"red".to_owned())));

    let bobs_red = pb::ListProductsRequest {
        page_size: 4,
        seller_id: bob.id.clone(),
        tag: "red".into(),
        ..Default::default()
    };
    let (both, _) = list_all(&mut client, &customer.token, bobs_red).await;
    assert_eq!(
        both,
        order(&|p| p.seller_id == bob.id && p.tags.contains(&"red".to_owned()))
    );
    assert!(!both.is_empty());
    let (none, _) = list_all(
        &mut client,
        &customer.token,
        pb::ListProductsRequest {
            tag: "no-such-tag".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());

    // Tokens are bound to their filters and validated.
    let first_page = client
        .list_products(bearer(by_seller.clone(), &customer.token))
        .await
        .unwrap()
        .into_inner();
    let mismatched = client
        .list_products(bearer(
            pb::ListProductsRequest {
                page_token: first_page.next_page_token.clone(),
                ..red.clone()
            },
            &customer.token,
        ))
        .await;
    assert_violations(mismatched, &["page_token"]);
    for garbage in ["garbage!", "djF8cCwsfDAwMDA", &"x".repeat(1025)] {
        let bad = client
            .list_products(bearer(
                pb::ListProductsRequest {
                    page_token: garbage.to_owned(),
                    ..Default::default()
                },
                &customer.token,
            ))
            .await;
        assert_violations(bad, &["page_token"]);
    }

    // Paging stays stable while products are deleted and created between pages.
    let page_one = client
        .list_products(bearer(
            pb::ListProductsRequest {
                page_size: 10,
                ..Default::default()
            },
            &customer.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let last_on_page = page_one.products.last().unwrap().clone();
    let owner = if last_on_page.seller_id == alice.id {
        &alice
    } else {
        &bob
    };
    client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: last_on_page.id.clone(),
                etag: String::new(),
            },
            &owner.token,
        ))
        .await
        .unwrap();
    let newest = create(&mut client, &alice.token, new_product("Newest", &[])).await;
    let (rest, _) = list_all(
        &mut client,
        &customer.token,
        pb::ListProductsRequest {
            page_size: 10,
            page_token: page_one.next_page_token,
            ..Default::default()
        },
    )
    .await;
    let mut expected: Vec<String> = order(&|_| true)[10..].to_vec();
    expected.push(newest.id);
    assert_eq!(rest, expected);
    let unique: HashSet<&String> = rest.iter().collect();
    assert_eq!(unique.len(), rest.len());
}

#[tokio::test]
async fn field_masks_update_only_what_they_name() {
    let harness = Harness::start().await;
    let seller = harness.seller("masks@example.com").await;
    let mut client = harness.client().await;
    let product = create(
        &mut client,
        &seller.token,
        new_product("Lamp", &["light", "home"]),
    )
    .await;

    let mut change = pb::Product {
        id: product.id.clone(),
        description: "Warm light.".into(),
        title: String::new(), // not in the mask: not validated, not applied
        ..Default::default()
    };
    let described = update(
        &mut client,
        &seller.token,
        change.clone(),
        &["description"],
        "",
    )
    .await
    .unwrap();
    assert_eq!(described.description, "Warm light.");
    assert_eq!(described.title, "Lamp");
    assert_eq!(described.tags, ["light", "home"]);
    assert_eq!(described.price, product.price);

    // Tags replace the whole list; the tag indexes follow.
    change.tags = vec!["outdoor".into()];
    let retagged = update(&mut client, &seller.token, change.clone(), &["tags"], "")
        .await
        .unwrap();
    assert_eq!(retagged.tags, ["outdoor"]);
    let by_tag = |tag: &str| pb::ListProductsRequest {
        tag: tag.into(),
        ..Default::default()
    };
    let (light, _) = list_all(&mut client, &seller.token, by_tag("light")).await;
    assert!(light.is_empty(), "removed from the old tag's index");
    let (outdoor, _) = list_all(&mut client, &seller.token, by_tag("outdoor")).await;
    assert_eq!(outdoor, std::slice::from_ref(&product.id));
    let (mine, _) = list_all(
        &mut client,
        &seller.token,
        pb::ListProductsRequest {
            seller_id: seller.id.clone(),
            tag: "outdoor".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(mine, std::slice::from_ref(&product.id));

    change.tags = vec![];
    let cleared = update(&mut client, &seller.token, change.clone(), &["tags"], "")
        .await
        .unwrap();
    assert!(cleared.tags.is_empty());
    assert_eq!(cleared.version, 4);

    // A path named but unset is set to its empty value, which title and price refuse.
    let unset = update(
        &mut client,
        &seller.token,
        change.clone(),
        &["title", "price"],
        "",
    )
    .await;
    assert_violations(unset, &["product.title", "product.price"]);
    let unknown = update(
        &mut client,
        &seller.token,
        change.clone(),
        &["title", "seller_id"],
        "",
    )
    .await;
    let status = unknown.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&status), ["product.title", "update_mask"]);
    assert!(status.message().contains("seller_id"), "{status:?}");
    let nested = update(
        &mut client,
        &seller.token,
        change.clone(),
        &["price.amount_minor"],
        "",
    )
    .await;
    assert_violations(nested, &["update_mask"]);
    let empty = update(&mut client, &seller.token, change.clone(), &[], "").await;
    assert_violations(empty, &["update_mask"]);
    let missing = update(
        &mut client,
        &seller.token,
        pb::Product {
            id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            title: "x".into(),
            ..Default::default()
        },
        &["title"],
        "",
    )
    .await;
    assert_code(missing, Code::NotFound);
    let after = get(&mut client, &seller.token, &product.id).await.unwrap();
    assert_eq!(after, cleared, "refused updates changed nothing");
}

#[tokio::test]
async fn concurrent_updates_with_a_stale_etag_are_aborted() {
    let harness = Harness::start().await;
    let seller = harness.seller("race@example.com").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Contested", &[])).await;

    // N writers with the same etag: exactly one wins, the rest get ABORTED.
    let writers = 12;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let mut client = client.clone();
        let token = seller.token.clone();
        let mut change = product.clone();
        change.title = format!("Writer {writer}");
        let etag = product.etag.clone();
        tasks.push(tokio::spawn(async move {
            update(&mut client, &token, change, &["title"], &etag).await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(product) => winners.push(product),
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let current = get(&mut client, &seller.token, &product.id).await.unwrap();
    assert_eq!(current, winners[0]);
    assert_eq!(current.version, 2);

    // The loser's etag stays stale; re-reading and retrying works.
    let mut retry = product.clone();
    retry.title = "Late".into();
    assert_code(
        update(
            &mut client,
            &seller.token,
            retry.clone(),
            &["title"],
            &product.etag,
        )
        .await,
        Code::Aborted,
    );
    let retried = update(&mut client, &seller.token, retry, &["title"], &current.etag)
        .await
        .unwrap();
    assert_eq!(retried.version, 3);

    // Unconditional concurrent updates all apply, one version each.
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let mut client = client.clone();
        let token = seller.token.clone();
        let mut change = product.clone();
        change.description = format!("Writer {writer}");
        tasks.push(tokio::spawn(async move {
            update(&mut client, &token, change, &["description"], "").await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let last = get(&mut client, &seller.token, &product.id).await.unwrap();
    assert_eq!(last.version, 3 + writers);

    // Deletes honour etags too.
    let stale_delete = client
        .delete_product(bearer(
            pb::DeleteProductRequest {
                id: product.id.clone(),
                etag: product.etag.clone(),
            },
            &seller.token,
        ))
        .await;
    assert_code(stale_delete, Code::Aborted);
    assert!(get(&mut client, &seller.token, &product.id).await.is_ok());
}
