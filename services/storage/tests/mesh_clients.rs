//! Storage's calls to other services are mesh calls (`storemesh_mesh::client`): the ownership
//! check (catalog `GetProduct`, upstream `catalog`) and the token-verification key fetch (auth
//! `GetPublicKeys`, upstream `auth`) are counted in `mesh_upstream_requests_total`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use storemesh_proto::auth::v1::Role;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_testkit::RedisServer;

/// `mesh_upstream_requests_total{upstream, endpoint, outcome="OK"}` from the process's recorder.
fn answered(upstream: &str, endpoint: &str) -> f64 {
    let text = storemesh_runtime::metrics::prometheus().render();
    text.lines()
        .filter(|line| line.starts_with("mesh_upstream_requests_total{"))
        .filter(|line| line.contains(&format!("upstream=\"{upstream}\"")))
        .filter(|line| line.contains(&format!("endpoint=\"{endpoint}\"")))
        .filter(|line| line.contains("outcome=\"OK\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_ownership_check_and_the_key_fetch_go_through_the_mesh() {
    // The recorder first: a series touched before it is installed is lost.
    let _ = storemesh_runtime::metrics::prometheus();
    // The catalog in this test fetches its keys from auth at 127.0.0.1; storage names auth
    // `localhost`, so the metrics tell storage's calls apart.
    let mesh = Mesh::start_full(
        RedisServer::start().unwrap(),
        Owners::RealCatalog,
        |settings| {
            settings.tokens.auth_endpoint = settings
                .tokens
                .auth_endpoint
                .replace("127.0.0.1", "localhost");
        },
    )
    .await;
    let auth = format!("localhost:{}", mesh.auth.addr.port());
    let catalog = mesh.catalog.as_ref().unwrap();
    assert!(
        answered("auth", &auth) >= 1.0,
        "storage fetched the verification keys through the mesh"
    );

    let (_, seller) = mesh.user("seller@example.com", Role::Seller).await;
    let product = CatalogServiceClient::new(catalog.channel().await.unwrap())
        .create_product(bearer(
            catalog_pb::CreateProductRequest {
                title: "Lamp".into(),
                price: Some(catalog_pb::Money {
                    amount_minor: 1_999,
                    currency_code: "EUR".into(),
                }),
                ..Default::default()
            },
            &seller,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    let before = answered("catalog", &catalog.addr.to_string());
    let mut client = mesh.client().await;
    let key = format!("products/{}/originals/img-1", product.id);
    upload(
        &mut client,
        &seller,
        header(&key, "image/jpeg"),
        &jpeg_bytes(1_000),
    )
    .await
    .unwrap();
    assert_eq!(
        answered("catalog", &catalog.addr.to_string()) - before,
        1.0,
        "the seller's ownership was asked of the catalog through the mesh"
    );
}
