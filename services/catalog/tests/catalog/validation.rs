//! Invalid input is `INVALID_ARGUMENT` with one field violation per bad field, named by its
//! path in the request.

use prost_types::FieldMask;
use storemesh_proto::catalog::v1 as pb;

use crate::harness::*;

#[tokio::test]
async fn invalid_input_gets_field_violations() {
    let harness = Harness::start().await;
    let seller = harness.seller("strict@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let token = seller.token.as_str();

    let create_with = |adjust: &dyn Fn(&mut pb::CreateProductRequest)| {
        let mut request = new_product("Valid", &["ok"]);
        adjust(&mut request);
        request
    };
    let mut check_create = async |request: pb::CreateProductRequest, fields: &[&str]| {
        let result = client.create_product(bearer(request, token)).await;
        assert_violations(result, fields);
    };
    check_create(
        create_with(&|r| r.price = money(-1, "EUR")),
        &["price.amount_minor"],
    )
    .await;
    check_create(
        create_with(&|r| r.price = money(100, "ABC")),
        &["price.currency_code"],
    )
    .await;
    check_create(
        create_with(&|r| r.price = money(-5, "eur")),
        &["price.amount_minor", "price.currency_code"],
    )
    .await;
    check_create(create_with(&|r| r.price = None), &["price"]).await;
    // 10 MB: well past the 10000-character limit, and still under the message size limit, so
    // the caller learns which field is wrong.
    check_create(
        create_with(&|r| r.description = "d".repeat(10 * 1024 * 1024)),
        &["description"],
    )
    .await;
    check_create(
        create_with(&|r| {
            r.title = "   ".into();
            r.tags = vec!["fine".into(), "Not OK".into(), String::new()];
            r.request_id = "has space".into();
        }),
        &["title", "tags[1]", "tags[2]", "request_id"],
    )
    .await;
    check_create(create_with(&|r| r.title = "t".repeat(201)), &["title"]).await;
    check_create(
        create_with(&|r| r.description = "bell \u{7}".into()),
        &["description"],
    )
    .await;
    check_create(
        create_with(&|r| r.tags = (0..21).map(|i| format!("t{i}")).collect()),
        &["tags"],
    )
    .await;

    let product = create(&mut client, token, new_product("Real", &[])).await;
    let bad_page = client
        .list_products(bearer(
            pb::ListProductsRequest {
                page_size: -1,
                page_token: "!!!".into(),
                seller_id: "bad seller".into(),
                tag: "BAD".into(),
                visibility: 7,
            },
            token,
        ))
        .await;
    assert_violations(
        bad_page,
        &["page_size", "seller_id", "tag", "visibility", "page_token"],
    );

    let update = client
        .update_product(bearer(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: product.id.clone(),
                    price: money(-1, "XYZ"),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["price".into(), "colour".into()],
                }),
                etag: String::new(),
            },
            token,
        ))
        .await;
    assert_violations(
        update,
        &[
            "product.price.amount_minor",
            "product.price.currency_code",
            "update_mask",
        ],
    );
    let no_product = client
        .update_product(bearer(pb::UpdateProductRequest::default(), token))
        .await;
    assert_violations(no_product, &["product.id", "update_mask"]);

    let get = client
        .get_product(bearer(pb::GetProductRequest { id: "a/b".into() }, token))
        .await;
    assert_violations(get, &["id"]);
    let empty = client
        .get_product(bearer(pb::GetProductRequest { id: String::new() }, token))
        .await;
    assert_violations(empty, &["id"]);

    let attach = client
        .attach_image(bearer(
            pb::AttachImageRequest {
                product_id: product.id.clone(),
                image_id: "img 1".into(),
                storage_key: "products/elsewhere/originals/x".into(),
                content_type: "image/tiff".into(),
                size_bytes: 0,
                width: 0,
                height: 0,
                sha256: "AB".repeat(32),
            },
            token,
        ))
        .await;
    assert_violations(
        attach,
        &[
            "image_id",
            "storage_key",
            "content_type",
            "size_bytes",
            "sha256",
        ],
    );

    let variant = client
        .record_variant(bearer(
            pb::RecordVariantRequest {
                image_id: String::new(),
                variant: Some(pb::ImageVariant {
                    name: "W 160".into(),
                    width: 0,
                    height: 10,
                    format: pb::ImageFormat::Unspecified.into(),
                    storage_key: String::new(),
                    size_bytes: 1,
                    sha256: "not a digest".into(),
                    ..Default::default()
                }),
                event_id: "e".repeat(65),
            },
            &thumbnail,
        ))
        .await;
    assert_violations(
        variant,
        &[
            "image_id",
            "variant.name",
            "variant.width",
            "variant.format",
            "variant.storage_key",
            "variant.sha256",
            "event_id",
        ],
    );
    let failed = client
        .mark_image_failed(bearer(
            pb::MarkImageFailedRequest {
                image_id: "img".into(),
                reason: String::new(),
                event_id: String::new(),
            },
            &thumbnail,
        ))
        .await;
    assert_violations(failed, &["reason"]);
    let long_reason = client
        .mark_image_failed(bearer(
            pb::MarkImageFailedRequest {
                image_id: "img".into(),
                reason: "r".repeat(1025),
                event_id: String::new(),
            },
            &thumbnail,
        ))
        .await;
    assert_violations(long_reason, &["reason"]);

    // Nothing was stored by any refused request.
    let listed = client
        .list_products(bearer(pb::ListProductsRequest::default(), token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.products.len(), 1);
}
