//! Who may do what: seller A (owner) vs seller B vs customer vs service accounts with and
//! without the right scope vs admin vs anonymous.

use prost_types::FieldMask;
use storemesh_proto::auth::v1::Role;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::harness::*;

/// One caller: a token, or none (anonymous).
#[derive(Clone)]
struct Caller {
    name: &'static str,
    token: Option<String>,
}

impl Caller {
    fn request<T>(&self, message: T) -> Request<T> {
        match &self.token {
            Some(token) => bearer(message, token),
            None => Request::new(message),
        }
    }
}

/// Runs every operation as `caller` against a fresh product of seller A (with one image) and
/// returns the status code of each.
async fn run_all(
    client: &mut CatalogServiceClient<Channel>,
    owner: &User,
    caller: &Caller,
    round: usize,
) -> Vec<(&'static str, Code)> {
    let product = create(client, &owner.token, new_product("Owned", &["tag"])).await;
    let image_id = format!("img-{round}");
    attach(client, &owner.token, &product.id, &image_id).await;
    let spare_image = format!("spare-{round}");
    attach(client, &owner.token, &product.id, &spare_image).await;
    let code = |result: Result<(), Status>| result.err().map_or(Code::Ok, |s| s.code());
    let mut codes = Vec::new();

    codes.push((
        "CreateProduct",
        code(
            client
                .create_product(caller.request(new_product("Mine", &[])))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "GetProduct",
        code(
            client
                .get_product(caller.request(pb::GetProductRequest {
                    id: product.id.clone(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "ListProducts",
        code(
            client
                .list_products(caller.request(pb::ListProductsRequest::default()))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "GetImage",
        code(
            client
                .get_image(caller.request(pb::GetImageRequest {
                    image_id: image_id.clone(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "ListProductImages",
        code(
            client
                .list_product_images(caller.request(pb::ListProductImagesRequest {
                    product_id: product.id.clone(),
                    ..Default::default()
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "WatchProduct",
        code(
            client
                .watch_product(caller.request(pb::WatchProductRequest {
                    product_id: product.id.clone(),
                    send_initial: false,
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "UpdateProduct",
        code(
            client
                .update_product(caller.request(pb::UpdateProductRequest {
                    product: Some(pb::Product {
                        id: product.id.clone(),
                        title: "Changed".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["title".into()],
                    }),
                    etag: String::new(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "AttachImage",
        code(
            client
                .attach_image(caller.request(attach_request(&product.id, &format!("new-{round}"))))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "SetPrimaryImage",
        code(
            client
                .set_primary_image(caller.request(pb::SetPrimaryImageRequest {
                    product_id: product.id.clone(),
                    image_id: image_id.clone(),
                    etag: String::new(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "RecordVariant",
        code(
            client
                .record_variant(caller.request(pb::RecordVariantRequest {
                    image_id: image_id.clone(),
                    variant: Some(variant(&product.id, &image_id, 160)),
                    event_id: "evt".into(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "MarkImageFailed",
        code(
            client
                .mark_image_failed(caller.request(pb::MarkImageFailedRequest {
                    image_id: spare_image.clone(),
                    reason: "bad".into(),
                    event_id: String::new(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "SignImageUrl",
        code(
            client
                .sign_image_url(caller.request(pb::SignImageUrlRequest {
                    image_id: image_id.clone(),
                    variant: String::new(),
                    ttl_seconds: 0,
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "DeleteImage",
        code(
            client
                .delete_image(caller.request(pb::DeleteImageRequest {
                    image_id: spare_image.clone(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes.push((
        "DeleteProduct",
        code(
            client
                .delete_product(caller.request(pb::DeleteProductRequest {
                    id: product.id.clone(),
                    etag: String::new(),
                }))
                .await
                .map(drop),
        ),
    ));
    codes
}

#[tokio::test]
async fn authorization_matrix() {
    let harness = Harness::start().await;
    let seller_a = harness.seller("a@example.com").await;
    let seller_b = harness.seller("b@example.com").await;
    let customer = harness.user("c@example.com", Role::Customer).await;
    let admin = harness.admin().await;
    let callers = [
        Caller {
            name: "seller A (owner)",
            token: Some(seller_a.token.clone()),
        },
        Caller {
            name: "seller B",
            token: Some(seller_b.token.clone()),
        },
        Caller {
            name: "customer",
            token: Some(customer.token.clone()),
        },
        Caller {
            name: "service with catalog.write:variants",
            token: Some(harness.service("thumbnail").await),
        },
        Caller {
            name: "service with catalog.read",
            token: Some(harness.service("reader").await),
        },
        Caller {
            name: "service without catalog scopes",
            token: Some(harness.service("unrelated").await),
        },
        Caller {
            name: "admin",
            token: Some(admin.token.clone()),
        },
        Caller {
            name: "anonymous",
            token: None,
        },
        Caller {
            name: "bad token",
            token: Some("not-a-jwt".into()),
        },
    ];
    use Code::{
        NotFound as HIDDEN, Ok as OK, PermissionDenied as DENIED, Unauthenticated as UNAUTH,
    };
    // Columns: Create, Get, List, GetImage, ListImages, Watch, Update, Attach, SetPrimary,
    // RecordVariant, MarkFailed, SignImageUrl, DeleteImage, DeleteProduct.
    let expected: [[Code; 14]; 9] = [
        [
            OK, OK, OK, OK, OK, OK, OK, OK, OK, DENIED, DENIED, OK, OK, OK,
        ],
        [
            OK, OK, OK, OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED,
        ],
        [
            DENIED, OK, OK, OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED,
            DENIED,
        ],
        [
            DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, OK, OK, DENIED,
            DENIED, DENIED,
        ],
        [
            DENIED, OK, OK, OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED,
            DENIED,
        ],
        [DENIED; 14],
        [OK; 14],
        // Anonymous: the storefront reads (GetProduct, ListProducts, ListProductImages) answer,
        // but the product is a draft, so it is hidden.
        [
            UNAUTH, HIDDEN, OK, UNAUTH, HIDDEN, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH,
            UNAUTH, UNAUTH, UNAUTH,
        ],
        [UNAUTH; 14],
    ];
    let mut client = harness.client().await;
    let mut mismatches = Vec::new();
    for (round, (caller, expected)) in callers.iter().zip(expected).enumerate() {
        let codes = run_all(&mut client, &seller_a, caller, round).await;
        for ((operation, got), want) in codes.into_iter().zip(expected) {
            if got != want {
                mismatches.push(format!(
                    "{}: {operation}: expected {want:?}, got {got:?}",
                    caller.name
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // What an admin creates is theirs; sellers own only what they create.
    let mut client = harness.client().await;
    let admins = create(&mut client, &admin.token, new_product("House brand", &[])).await;
    assert_eq!(admins.seller_id, admin.id);
    let bs = create(&mut client, &seller_b.token, new_product("B's", &[])).await;
    assert_eq!(bs.seller_id, seller_b.id);
    let forbidden = client
        .attach_image(bearer(attach_request(&bs.id, "intruder"), &seller_a.token))
        .await;
    assert_code(forbidden, Code::PermissionDenied);
}
