//! The storefront reads through the gateway: anonymous `GetProduct` and `ListProducts` pass it
//! by the default `public_methods` and reach the real catalog (real auth, real Redis), which
//! shows them published products only; every other catalog method still needs a token.
#![allow(clippy::unwrap_used)]

use prost_types::FieldMask;
use storemesh_auth::testing;
use storemesh_gateway::{GatewayConfig, GatewaySettings};
use storemesh_mesh::UpstreamConfig;
use storemesh_proto::auth::v1 as auth_pb;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_runtime::auth::TokensConfig;
use storemesh_runtime::redis::RedisConfig;
use storemesh_runtime::testing::test_server;
use storemesh_testkit::{RedisServer, RunningHost};
use tonic::transport::Channel;
use tonic::{Code, Request};

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn create(client: &mut CatalogServiceClient<Channel>, token: &str, title: &str) -> String {
    client
        .create_product(bearer(
            pb::CreateProductRequest {
                title: title.into(),
                price: Some(pb::Money {
                    amount_minor: 1_000,
                    currency_code: "EUR".into(),
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .id
}

#[test]
fn the_storefront_reads_are_public_by_default() {
    let public = GatewayConfig::default().public_methods;
    for method in ["GetProduct", "ListProducts", "ListProductImages"] {
        let path = format!("/storemesh.catalog.v1.CatalogService/{method}");
        assert!(public.contains(&path), "{path} in {public:?}");
    }
    assert!(
        !public.iter().any(|m| m.ends_with("/GetImage")),
        "{public:?}"
    );
}

#[tokio::test]
async fn anonymous_shoppers_read_published_products_through_the_gateway() {
    let redis = RedisServer::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let redis_config = RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    };
    let auth = RunningHost::spawn(
        storemesh_auth::build(testing::auth_settings(&redis.url(), keys.path()))
            .await
            .unwrap(),
    )
    .unwrap();
    let tokens = TokensConfig {
        auth_endpoint: auth.endpoint(),
        ..TokensConfig::default()
    };
    let catalog = RunningHost::spawn(
        storemesh_catalog::build(storemesh_catalog::CatalogSettings {
            catalog: storemesh_catalog::CatalogConfig {
                server: test_server(),
                ..storemesh_catalog::CatalogConfig::default()
            },
            redis: redis_config,
            tokens: tokens.clone(),
        })
        .await
        .unwrap(),
    )
    .unwrap();
    // The default public methods, as deployed.
    let mut config = GatewayConfig {
        server: test_server(),
        ..GatewayConfig::default()
    };
    for (name, host) in [("auth", &auth), ("catalog", &catalog)] {
        config.upstreams.insert(
            name.into(),
            UpstreamConfig::addresses([host.addr.to_string()]),
        );
    }
    let bound = storemesh_gateway::build(
        GatewaySettings {
            gateway: config,
            tokens,
        },
        &[],
    )
    .await
    .unwrap();
    let gateway = bound.local_addr().unwrap();
    tokio::spawn(bound.run(std::future::pending()));
    let channel = Channel::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut auth_client = AuthServiceClient::new(channel.clone());
    auth_client
        .register(auth_pb::RegisterRequest {
            email: "seller@example.com".into(),
            password: "a good long password".into(),
            display_name: "Seller".into(),
            role: auth_pb::Role::Seller.into(),
        })
        .await
        .unwrap();
    let token = auth_client
        .login(auth_pb::LoginRequest {
            email: "seller@example.com".into(),
            password: "a good long password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let mut client = CatalogServiceClient::new(channel);
    let shown = create(&mut client, &token, "Shown").await;
    let draft = create(&mut client, &token, "Draft").await;
    client
        .update_product(bearer(
            pb::UpdateProductRequest {
                product: Some(pb::Product {
                    id: shown.clone(),
                    visibility: pb::ProductVisibility::Published.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["visibility".into()],
                }),
                etag: String::new(),
            },
            &token,
        ))
        .await
        .unwrap();

    // No token: the gateway lets the storefront reads through, the catalog filters.
    let product = client
        .get_product(Request::new(pb::GetProductRequest { id: shown.clone() }))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(product.title, "Shown");
    let hidden = client
        .get_product(Request::new(pb::GetProductRequest { id: draft.clone() }))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    let listed = client
        .list_products(Request::new(pb::ListProductsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed.products.into_iter().map(|p| p.id).collect();
    assert_eq!(ids, std::slice::from_ref(&shown));
    // The storefront's product page lists a published product's images (none READY yet).
    let images = client
        .list_product_images(Request::new(pb::ListProductImagesRequest {
            product_id: shown.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(images.images.is_empty());
    let hidden_images = client
        .list_product_images(Request::new(pb::ListProductImagesRequest {
            product_id: draft.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(hidden_images.code(), Code::NotFound, "{hidden_images:?}");

    // Signed in, the drafts are there; a bad token on a public method is still refused.
    let all = client
        .list_products(bearer(pb::ListProductsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.products.len(), 2);
    let forged = client
        .get_product(bearer(
            pb::GetProductRequest { id: shown.clone() },
            "not-a-jwt",
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);

    // Every other catalog method is refused by the gateway itself without a token.
    let image = client
        .get_image(Request::new(pb::GetImageRequest {
            image_id: "img".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(image.code(), Code::Unauthenticated);
    assert_eq!(
        image.message(),
        "this method requires a bearer access token"
    );
    let update = client
        .delete_product(Request::new(pb::DeleteProductRequest {
            id: shown,
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::Unauthenticated);
}
