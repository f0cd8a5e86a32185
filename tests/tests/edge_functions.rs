//! The edge functions on the embedded edge runtime (the real `spin.toml`) against the real
//! services: the upload hook's contract and every error class, the thumbnail function for each
//! format and hostile inputs, signed deliveries, and both gRPC transports.
#![allow(clippy::unwrap_used)]

mod images;

use std::collections::BTreeMap;

use serde_json::Value;
use storemesh_gateway::config::GatewayRateLimit;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::storage::v1 as storage_pb;
use storemesh_system_tests::http::{self, Answer};
use storemesh_system_tests::{EdgeTransport, Options, Role, System, bearer};

fn upload_path(product_id: &str) -> String {
    format!("/v1/products/{product_id}/images")
}

/// Fails with the whole answer when the status differs.
fn expect_status(answer: &Answer, status: u16) {
    assert_eq!(
        answer.status,
        status,
        "answer: {} {:?} {}",
        answer.status,
        answer.headers,
        answer.text()
    );
}

/// A JSON error body with this status and code.
fn expect_error(answer: &Answer, status: u16, code: &str) {
    expect_status(answer, status);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{}",
        answer.text()
    );
    let body = answer.json();
    assert_eq!(body["error"]["status"], Value::from(status), "{body}");
    assert_eq!(body["error"]["code"], Value::from(code), "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

/// Downloads an object with the admin token.
async fn download(
    system: &System,
    key: &str,
) -> Result<(storage_pb::ObjectInfo, Vec<u8>), tonic::Status> {
    let mut stream = system
        .storage_client()
        .await
        .download(bearer(
            storage_pb::DownloadRequest {
                key: key.into(),
                ..storage_pb::DownloadRequest::default()
            },
            &system.admin_token,
        ))
        .await?
        .into_inner();
    let mut info = None;
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.payload {
            Some(storage_pb::download_response::Payload::Info(object)) => info = Some(object),
            Some(storage_pb::download_response::Payload::Chunk(chunk)) => {
                bytes.extend_from_slice(&chunk);
            }
            None => {}
        }
    }
    Ok((info.unwrap(), bytes))
}

struct Seller {
    id: String,
    token: String,
    product: String,
}

async fn seller(system: &System, email: &str) -> Seller {
    let (id, token) = system.user(email, Role::Seller).await;
    let product = system.product(&token, "Lamp").await;
    Seller { id, token, product }
}

async fn upload_happy_path(system: &System) {
    let seller = seller(system, "seller@example.com").await;
    let jpeg = images::jpeg(800, 600);
    let answer = system
        .edge_post(
            &upload_path(&seller.product),
            &seller.token,
            "image/jpeg",
            jpeg.clone(),
        )
        .await;
    expect_status(&answer, 201);
    let body = answer.json();
    let image_id = body["image_id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.header("location"),
        Some(format!("/v1/images/{image_id}").as_str())
    );
    assert_eq!(body["product_id"], Value::from(seller.product.clone()));
    let key = format!("products/{}/originals/{image_id}", seller.product);
    assert_eq!(body["storage_key"], Value::from(key.clone()));
    assert_eq!(body["content_type"], Value::from("image/jpeg"));
    assert_eq!(body["size_bytes"], Value::from(jpeg.len()));
    assert_eq!(body["width"], Value::from(800));
    assert_eq!(body["height"], Value::from(600));
    assert_eq!(body["state"], Value::from("PROCESSING"));

    let (info, stored) = download(system, &key).await.unwrap();
    assert_eq!(stored, jpeg, "the stored original is the uploaded file");
    assert_eq!(info.owner, seller.id, "stored with the seller's identity");
    let image = system.image(&image_id).await.unwrap();
    assert_eq!(image.state(), catalog_pb::ImageState::Processing);
    assert_eq!(image.storage_key, key);
    assert_eq!((image.width, image.height), (800, 600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_stores_and_attaches_an_image_over_grpc_web() {
    let system = System::start().await;
    upload_happy_path(&system).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_works_over_native_grpc_h2c() {
    let system = System::start_with(Options {
        transport: EdgeTransport::Grpc,
        ..Options::default()
    })
    .await;
    upload_happy_path(&system).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_streams_a_large_upload_without_buffering_it() {
    // 12 MiB of PNG: larger than the component could comfortably buffer several times, sent
    // in many chunks through the client-streaming Upload.
    let system = System::start_with(Options {
        edge_max_memory_bytes: 32 * 1024 * 1024,
        ..Options::default()
    })
    .await;
    let seller = seller(&system, "big@example.com").await;
    let png = images::noisy_png(2000, 1600);
    assert!(png.len() > 8 * 1024 * 1024, "{}", png.len());
    let answer = system
        .edge_post(
            &upload_path(&seller.product),
            &seller.token,
            "image/png",
            png.clone(),
        )
        .await;
    expect_status(&answer, 201);
    let key = answer.json()["storage_key"].as_str().unwrap().to_owned();
    let (_, stored) = download(&system, &key).await.unwrap();
    assert!(stored == png, "the stored original differs");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_answers_every_error_class_precisely() {
    let mut variables = BTreeMap::new();
    variables.insert("upload_max_bytes".to_owned(), (4 * 1024 * 1024).to_string());
    variables.insert("max_pixels".to_owned(), "4000000".to_owned());
    let system = System::start_with(Options {
        variables,
        ..Options::default()
    })
    .await;
    let edge = system.edge.unwrap();
    let owner = seller(&system, "owner@example.com").await;
    let other = seller(&system, "other@example.com").await;
    let (_, customer) = system.user("customer@example.com", Role::Customer).await;
    let path = upload_path(&owner.product);
    let png = images::png(64, 48);
    let auth = |token: &str| ("authorization", format!("Bearer {token}"));
    let post = |headers: Vec<(&'static str, String)>, body: Option<Vec<u8>>| {
        let path = path.clone();
        async move { http::request(edge, "POST", &path, &headers, body).await }
    };

    // 405: only POST.
    let answer = http::request(edge, "GET", &path, &[auth(&owner.token)], None).await;
    expect_error(&answer, 405, "method_not_allowed");
    assert_eq!(answer.header("allow"), Some("POST"));

    // 401: missing, malformed, forged and wrong-issuer tokens.
    let answer = post(
        vec![("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 401, "unauthenticated");
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let answer = post(
        vec![
            ("authorization", "Basic abc".into()),
            ("content-type", "image/png".into()),
        ],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 401, "unauthenticated");
    let mut forged = owner.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let answer = post(
        vec![auth(&forged), ("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 401, "unauthenticated");
    let answer = post(
        vec![auth("not.a.token"), ("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 401, "unauthenticated");

    // 400: a product id that is not an id.
    let answer = http::request(
        edge,
        "POST",
        &upload_path("bad%20id"),
        &[auth(&owner.token), ("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 400, "bad_request");

    // 411: no Content-Length.
    let answer = post(
        vec![auth(&owner.token), ("content-type", "image/png".into())],
        None,
    )
    .await;
    expect_error(&answer, 411, "length_required");

    // 413: over upload_max_bytes (refused from the header, before the body is read).
    let answer = post(
        vec![auth(&owner.token), ("content-type", "image/png".into())],
        Some(vec![0_u8; 4 * 1024 * 1024 + 1]),
    )
    .await;
    expect_error(&answer, 413, "payload_too_large");

    // 415: a type that is not accepted, and a declared type that the bytes contradict.
    let answer = post(
        vec![auth(&owner.token), ("content-type", "text/plain".into())],
        Some(b"hello".to_vec()),
    )
    .await;
    expect_error(&answer, 415, "unsupported_media_type");
    let answer = post(
        vec![auth(&owner.token), ("content-type", "image/jpeg".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 415, "unsupported_media_type");
    let answer = post(
        vec![auth(&owner.token), ("content-type", "image/png".into())],
        Some(b"definitely not an image at all".to_vec()),
    )
    .await;
    expect_error(&answer, 415, "unsupported_media_type");

    // 422: the header declares more pixels than the limit (4 MP here); a header that lies.
    let answer = post(
        vec![auth(&owner.token), ("content-type", "image/png".into())],
        Some(images::png_bomb_header(3000, 3000)),
    )
    .await;
    expect_error(&answer, 422, "too_many_pixels");
    let answer = post(
        vec![auth(&owner.token), ("content-type", "image/jpeg".into())],
        Some(images::jpeg_magic_then_garbage(2048)),
    )
    .await;
    expect_error(&answer, 422, "unreadable_header");

    // 403: another seller's product; a customer.
    let answer = post(
        vec![auth(&other.token), ("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 403, "forbidden");
    let answer = post(
        vec![auth(&customer), ("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 403, "forbidden");

    // 404: no such product.
    let answer = http::request(
        edge,
        "POST",
        &upload_path("01NOSUCHPRODUCT0000000000X"),
        &[auth(&owner.token), ("content-type", "image/png".into())],
        Some(png.clone()),
    )
    .await;
    expect_error(&answer, 404, "not_found");

    // Nothing above stored anything or attached anything.
    assert!(
        system
            .events()
            .iter()
            .all(|event| !event.subject.contains("/originals/")),
        "a refused upload produced a storage event"
    );
    let images = system
        .catalog_client()
        .await
        .list_product_images(bearer(
            catalog_pb::ListProductImagesRequest {
                product_id: owner.product.clone(),
                ..catalog_pb::ListProductImagesRequest::default()
            },
            &owner.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");

    // An admin may upload to anyone's product; the runtime still works after all that.
    let answer = post(
        vec![
            auth(&system.admin_token),
            ("content-type", "image/png".into()),
        ],
        Some(png.clone()),
    )
    .await;
    expect_status(&answer, 201);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_passes_rate_limits_through_as_429() {
    let system = System::start_with(Options {
        gateway_rate_limit: GatewayRateLimit {
            per_identity_per_sec: 1,
            per_identity_burst: 2,
            ..Options::default().gateway_rate_limit
        },
        ..Options::default()
    })
    .await;
    let owner = seller(&system, "owner@example.com").await;
    let png = images::png(32, 32);
    let mut limited = None;
    for _ in 0..6 {
        let answer = system
            .edge_post(
                &upload_path(&owner.product),
                &owner.token,
                "image/png",
                png.clone(),
            )
            .await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let answer = limited.expect("the gateway never limited the seller");
    expect_error(&answer, 429, "rate_limited");
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_answers_503_when_the_mesh_is_down() {
    let mut system = System::start().await;
    let owner = seller(&system, "owner@example.com").await;
    let png = images::png(32, 32);
    // The catalog dies: GetProduct through the gateway fails UNAVAILABLE.
    system.kill("catalog");
    let answer = system
        .edge_post(
            &upload_path(&owner.product),
            &owner.token,
            "image/png",
            png.clone(),
        )
        .await;
    expect_error(&answer, 503, "mesh_unavailable");
    // The gateway itself is gone: the function cannot connect at all.
    system.kill("gateway");
    let answer = system
        .edge_post(&upload_path(&owner.product), &owner.token, "image/png", png)
        .await;
    expect_error(&answer, 503, "mesh_unavailable");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_gives_the_same_image_on_retry() {
    let system = System::start().await;
    let owner = seller(&system, "owner@example.com").await;
    let png = images::png(120, 80);
    let edge = system.edge.unwrap();
    let send = || {
        let headers = vec![
            ("authorization", format!("Bearer {}", owner.token)),
            ("content-type", "image/png".to_owned()),
            ("idempotency-key", "upload-42".to_owned()),
        ];
        let path = upload_path(&owner.product);
        let png = png.clone();
        async move { http::request(edge, "POST", &path, &headers, Some(png)).await }
    };
    let first = send().await;
    expect_status(&first, 201);
    let second = send().await;
    expect_status(&second, 201);
    assert_eq!(first.json()["image_id"], second.json()["image_id"]);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    let originals = system
        .events()
        .iter()
        .filter(|event| event.subject.contains("/originals/"))
        .count();
    assert_eq!(originals, 1, "the retry stored the original again");
    system.stop().await;
}
