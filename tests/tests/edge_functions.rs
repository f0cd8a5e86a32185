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

fn expect_status(answer: &Answer, status: u16) {
    answer.expect_status(status);
}

fn expect_error(answer: &Answer, status: u16, code: &str) {
    answer.expect_error(status, code);
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

/// The catalog records the size a shopper sees: a photo stored landscape with EXIF orientation 6
/// is recorded portrait (like its thumbnails), and the original's SHA-256 (its ETag) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_records_displayed_dimensions_and_the_sha256() {
    let system = System::start().await;
    let seller = seller(&system, "rotated@example.com").await;
    let photo = images::jpeg_with_orientation(600, 400, 6);
    let answer = system
        .edge_post(
            &upload_path(&seller.product),
            &seller.token,
            "image/jpeg",
            photo.clone(),
        )
        .await;
    expect_status(&answer, 201);
    let body = answer.json();
    assert_eq!(
        (body["width"].clone(), body["height"].clone()),
        (Value::from(400), Value::from(600)),
        "{body}"
    );
    let image = system
        .image(body["image_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!((image.width, image.height), (400, 600));
    use sha2::Digest as _;
    assert_eq!(image.sha256, hex::encode(sha2::Sha256::digest(&photo)));
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

/// An extra route to the upload hook without the named segment, so the test itself supplies
/// the header that Spin derives from `:product_id`.
fn hook_with_an_extra_route_without_parameter(manifest: &str) -> String {
    let route = "[[trigger.http]]\nroute = \"/v1/products/:product_id/images\"\ncomponent = \"upload-hook\"\n";
    assert!(
        manifest.contains(route),
        "spin.toml no longer routes the upload hook as expected"
    );
    manifest.replacen(
        route,
        &format!("{route}\n[[trigger.http]]\nroute = \"/spin-conventions/upload-hook\"\ncomponent = \"upload-hook\"\n"),
        1,
    )
}

/// The upload hook reads the product id from the header real Spin sets for the route segment
/// `:product_id`. Spin builds the name as `SPIN_PATH_MATCH_` + the upper-cased segment name, then
/// turns `_` into `-` and lower-cases it (Spin 4.0.2 `crates/trigger-http/src/headers.rs`:
/// `compute_default_headers`, `prepare_header_key`): `spin-path-match-product-id`. The literal
/// name is written here, independent of the embedded runtime, so the component cannot agree
/// with the runtime and disagree with Spin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_hook_reads_the_product_id_from_the_header_spin_names() {
    let system = System::start_with(Options {
        manifest_edit: Some(hook_with_an_extra_route_without_parameter),
        ..Options::default()
    })
    .await;
    let seller = seller(&system, "spin@example.com").await;
    let post = |header: &'static str| {
        let (token, product) = (seller.token.clone(), seller.product.clone());
        let addr = system.edge.unwrap();
        async move {
            http::request(
                addr,
                "POST",
                "/spin-conventions/upload-hook",
                &[
                    ("authorization", format!("Bearer {token}")),
                    ("content-type", "image/jpeg".to_owned()),
                    (header, product),
                ],
                Some(images::jpeg(64, 48)),
            )
            .await
        }
    };
    let answer = post("spin-path-match-product-id").await;
    expect_status(&answer, 201);
    assert_eq!(
        answer.json()["product_id"],
        Value::from(seller.product.clone())
    );
    let image_id = answer.json()["image_id"].as_str().unwrap().to_owned();
    let image = system.image(&image_id).await.unwrap();
    assert_eq!(image.product_id, seller.product);

    // On the real route, a client-sent header of the same name does not redirect the upload:
    // Spin appends its own value after the client's, and the hook reads the last one.
    let other_product = system.product(&seller.token, "Other lamp").await;
    let answer = system
        .edge_post_with(
            &upload_path(&seller.product),
            &seller.token,
            "image/jpeg",
            images::jpeg(64, 48),
            &[("spin-path-match-product-id", other_product.clone())],
        )
        .await;
    expect_status(&answer, 201);
    assert_eq!(
        answer.json()["product_id"],
        Value::from(seller.product.clone())
    );

    // The name the embedded runtime used to send (and the hook used to read) is not Spin's.
    let answer = post("spin-path-match-product_id").await;
    expect_error(&answer, 400, "bad_request");
    assert!(answer.text().contains("product id"), "{}", answer.text());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_left_behind_when_attach_fails_or_the_client_vanishes() {
    let system = System::start().await;
    let owner = seller(&system, "owner@example.com").await;
    let png = images::png(200, 150);

    // A body shorter than its Content-Length (the client died mid-upload): nothing is stored.
    let big = images::noisy_png(800, 600);
    let _ = http::request_cut_short(
        system.edge.unwrap(),
        "POST",
        &upload_path(&owner.product),
        &[
            ("authorization", format!("Bearer {}", owner.token)),
            ("content-type", "image/png".to_owned()),
        ],
        big.len(),
        &big[..big.len() / 2],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        system
            .events()
            .iter()
            .all(|event| !event.subject.contains("/originals/")),
        "a cut-short upload was committed"
    );

    // The product is full (100 images, attached directly): the upload is stored, AttachImage
    // refuses it, and the hook deletes the original again.
    let mut catalog = system.catalog_client().await;
    for index in 0..100 {
        let image_id = format!("filler{index}");
        catalog
            .attach_image(bearer(
                catalog_pb::AttachImageRequest {
                    product_id: owner.product.clone(),
                    image_id: image_id.clone(),
                    storage_key: format!("products/{}/originals/{image_id}", owner.product),
                    content_type: "image/png".into(),
                    size_bytes: 10,
                    width: 1,
                    height: 1,
                    ..catalog_pb::AttachImageRequest::default()
                },
                &owner.token,
            ))
            .await
            .unwrap();
    }
    let answer = system
        .edge_post(
            &upload_path(&owner.product),
            &owner.token,
            "image/png",
            png.clone(),
        )
        .await;
    expect_error(&answer, 409, "failed_precondition");
    let events = system.events();
    let created: Vec<&str> = events
        .iter()
        .filter(|event| event.subject.contains("/originals/"))
        .filter(|event| event.r#type() == storemesh_proto::events::v1::EventType::ObjectCreated)
        .map(|event| event.subject.as_str())
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    let deleted = events.iter().any(|event| {
        event.subject == created[0]
            && event.r#type() == storemesh_proto::events::v1::EventType::ObjectDeleted
    });
    assert!(deleted, "the original of the refused image was not deleted");
    let stat = download(&system, created[0]).await;
    assert_eq!(stat.unwrap_err().code(), tonic::Code::NotFound);

    // And the runtime carries on.
    let other = seller(&system, "other@example.com").await;
    let answer = system
        .edge_post(&upload_path(&other.product), &other.token, "image/png", png)
        .await;
    expect_status(&answer, 201);
    system.stop().await;
}

// ---- thumbnail -------------------------------------------------------------------------------

const THUMBNAIL_PATH: &str = "/internal/thumbnail";

/// Uploads through the upload hook and returns `(image id, original key)`.
async fn upload_image(
    system: &System,
    seller: &Seller,
    content_type: &str,
    bytes: Vec<u8>,
) -> (String, String) {
    let answer = system
        .edge_post(
            &upload_path(&seller.product),
            &seller.token,
            content_type,
            bytes,
        )
        .await;
    expect_status(&answer, 201);
    let body = answer.json();
    (
        body["image_id"].as_str().unwrap().to_owned(),
        body["storage_key"].as_str().unwrap().to_owned(),
    )
}

/// Stores an original directly (as the admin, bypassing the upload hook's checks) and attaches
/// it, as a hostile client that got past the hook would leave it.
async fn plant_original(
    system: &System,
    seller: &Seller,
    image_id: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> String {
    let key = store_original(system, seller, image_id, content_type, bytes.clone()).await;
    attach_original(system, seller, image_id, &key, content_type, bytes.len()).await;
    key
}

/// Stores an original (as the admin) without telling the catalog: storage emits its event.
async fn store_original(
    system: &System,
    seller: &Seller,
    image_id: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> String {
    let key = format!("products/{}/originals/{image_id}", seller.product);
    let messages = vec![
        storage_pb::UploadRequest {
            payload: Some(storage_pb::upload_request::Payload::Header(
                storage_pb::UploadHeader {
                    target: Some(storage_pb::upload_header::Target::Key(key.clone())),
                    content_type: content_type.into(),
                    ..storage_pb::UploadHeader::default()
                },
            )),
        },
        storage_pb::UploadRequest {
            payload: Some(storage_pb::upload_request::Payload::Chunk(bytes)),
        },
    ];
    system
        .storage_client()
        .await
        .upload(bearer(futures::stream::iter(messages), &system.admin_token))
        .await
        .unwrap();
    key
}

/// Attaches a stored original to the seller's product, as the upload hook does.
async fn attach_original(
    system: &System,
    seller: &Seller,
    image_id: &str,
    key: &str,
    content_type: &str,
    size_bytes: usize,
) {
    system
        .catalog_client()
        .await
        .attach_image(bearer(
            catalog_pb::AttachImageRequest {
                product_id: seller.product.clone(),
                image_id: image_id.into(),
                storage_key: key.into(),
                content_type: content_type.into(),
                size_bytes: size_bytes as u64,
                width: 100,
                height: 100,
                ..catalog_pb::AttachImageRequest::default()
            },
            &seller.token,
        ))
        .await
        .unwrap();
}

async fn deliver(system: &System, key: &str, attempt: u32) -> Answer {
    let event = system
        .event_for(key)
        .unwrap_or_else(|| panic!("no event for {key}"));
    let (body, headers) = system.signed_delivery(&event, attempt);
    post_delivery(system, body, headers).await
}

async fn post_delivery(system: &System, body: Vec<u8>, headers: Vec<(String, String)>) -> Answer {
    let headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    http::request(
        system.edge.unwrap(),
        "POST",
        THUMBNAIL_PATH,
        &headers,
        Some(body),
    )
    .await
}

struct Variant {
    name: String,
    key: String,
    width: u32,
    height: u32,
    content_type: String,
}

/// Checks a `created` answer against storage and returns its variants.
async fn created_variants(system: &System, answer: &Answer, image_id: &str) -> Vec<Variant> {
    expect_status(answer, 200);
    let body = answer.json();
    assert_eq!(body["result"], Value::from("created"), "{body}");
    assert_eq!(body["image_id"], Value::from(image_id), "{body}");
    let mut variants = Vec::new();
    for variant in body["variants"].as_array().unwrap() {
        let variant = Variant {
            name: variant["name"].as_str().unwrap().into(),
            key: variant["storage_key"].as_str().unwrap().into(),
            width: u32::try_from(variant["width"].as_u64().unwrap()).unwrap(),
            height: u32::try_from(variant["height"].as_u64().unwrap()).unwrap(),
            content_type: variant["content_type"].as_str().unwrap().into(),
        };
        let (info, bytes) = download(system, &variant.key).await.unwrap();
        assert_eq!(info.content_type, variant.content_type);
        assert_eq!(info.metadata["variant"], variant.name);
        assert_eq!(info.metadata["width"], variant.width.to_string());
        assert_eq!(info.metadata["height"], variant.height.to_string());
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (variant.width, variant.height),
            "{}",
            variant.key
        );
        variants.push(variant);
    }
    let names: Vec<&str> = variants
        .iter()
        .map(|variant| variant.name.as_str())
        .collect();
    assert_eq!(names, ["w160", "w320", "w640"]);
    variants
}

fn expected_key(seller: &Seller, image_id: &str, name: &str, extension: &str) -> String {
    format!(
        "products/{}/thumbnails/{image_id}/{name}.{extension}",
        seller.product
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thumbnails_for_every_format_orientation_alpha_and_tiny_images() {
    let system = System::start().await;
    let seller = seller(&system, "seller@example.com").await;
    for (content_type, bytes) in [
        ("image/jpeg", images::jpeg(1200, 900)),
        ("image/png", images::png(1200, 900)),
        ("image/webp", images::webp(1200, 900)),
        ("image/gif", images::gif(1200, 900)),
    ] {
        let (image_id, key) = upload_image(&system, &seller, content_type, bytes).await;
        let answer = deliver(&system, &key, 1).await;
        let variants = created_variants(&system, &answer, &image_id).await;
        let dimensions: Vec<(u32, u32)> = variants.iter().map(|v| (v.width, v.height)).collect();
        assert_eq!(
            dimensions,
            [(160, 120), (320, 240), (640, 480)],
            "{content_type}"
        );
        for variant in &variants {
            // Opaque input: JPEG variants at the deterministic keys.
            assert_eq!(variant.content_type, "image/jpeg", "{content_type}");
            assert_eq!(
                variant.key,
                expected_key(&seller, &image_id, &variant.name, "jpg")
            );
        }
    }

    // EXIF orientation 6: stored 400x200, displayed 200x400.
    let (image_id, key) = upload_image(
        &system,
        &seller,
        "image/jpeg",
        images::jpeg_with_orientation(400, 200, 6),
    )
    .await;
    let variants = created_variants(&system, &deliver(&system, &key, 1).await, &image_id).await;
    let dimensions: Vec<(u32, u32)> = variants.iter().map(|v| (v.width, v.height)).collect();
    assert_eq!(dimensions, [(80, 160), (160, 320), (200, 400)]);

    // Transparency survives: PNG variants.
    let (image_id, key) = upload_image(
        &system,
        &seller,
        "image/png",
        images::png_with_alpha(800, 400),
    )
    .await;
    let variants = created_variants(&system, &deliver(&system, &key, 1).await, &image_id).await;
    for variant in &variants {
        assert_eq!(variant.content_type, "image/png");
        assert_eq!(
            variant.key,
            expected_key(&seller, &image_id, &variant.name, "png")
        );
        let (_, bytes) = download(&system, &variant.key).await.unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgba8();
        assert_eq!(
            decoded.get_pixel(0, 0)[3],
            0,
            "the transparent half stays transparent"
        );
        assert_eq!(decoded.get_pixel(decoded.width() - 1, 0)[3], 255);
    }

    // Smaller than every size: never upscaled.
    let (image_id, key) = upload_image(&system, &seller, "image/png", images::png(50, 40)).await;
    let variants = created_variants(&system, &deliver(&system, &key, 1).await, &image_id).await;
    assert!(variants.iter().all(|v| (v.width, v.height) == (50, 40)));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivery_overwrites_nothing_and_duplicates_nothing() {
    let system = System::start().await;
    let seller = seller(&system, "seller@example.com").await;
    let (image_id, key) =
        upload_image(&system, &seller, "image/jpeg", images::jpeg(640, 480)).await;
    let first = deliver(&system, &key, 1).await;
    let first_variants = created_variants(&system, &first, &image_id).await;
    let events_before = system.events().len();
    let mut etags = Vec::new();
    for variant in &first_variants {
        etags.push(download(&system, &variant.key).await.unwrap().0.etag);
    }
    for attempt in 2..=3 {
        let again = deliver(&system, &key, attempt).await;
        let variants = created_variants(&system, &again, &image_id).await;
        let keys: Vec<&str> = variants.iter().map(|v| v.key.as_str()).collect();
        let first_keys: Vec<&str> = first_variants.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, first_keys);
    }
    // Same objects (same versions), no new events, exactly one object per size.
    for (variant, etag) in first_variants.iter().zip(&etags) {
        assert_eq!(&download(&system, &variant.key).await.unwrap().0.etag, etag);
    }
    assert_eq!(
        system.events().len(),
        events_before,
        "a redelivery produced storage events"
    );
    let listed = system
        .storage_client()
        .await
        .list(bearer(
            storage_pb::ListRequest {
                prefix: format!("products/{}/thumbnails/{image_id}/", seller.product),
                ..storage_pb::ListRequest::default()
            },
            &system.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .objects;
    assert_eq!(listed.len(), 3, "{listed:?}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_originals_fail_cleanly_and_the_runtime_carries_on() {
    let system = System::start().await;
    let seller = seller(&system, "seller@example.com").await;
    let good = images::jpeg(1000, 700);
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            "image/jpeg",
            images::truncated(&good, good.len() / 3),
            "truncated",
        ),
        (
            "garbage",
            "image/jpeg",
            images::jpeg_magic_then_garbage(50_000),
            "",
        ),
        // 3.6 GP declared: refused from the header.
        (
            "bomb-pixels",
            "image/png",
            images::png_bomb(60_000, 60_000, 8),
            "too_many_pixels",
        ),
        // 49 MP RGBA (196 MB decoded) within the pixel limit: refused before allocating.
        (
            "bomb-memory",
            "image/png",
            images::png_bomb(7_000, 7_000, 64),
            "",
        ),
    ];
    for (index, (name, content_type, bytes, kind)) in cases.into_iter().enumerate() {
        let image_id = format!("hostile{index}");
        let key = plant_original(&system, &seller, &image_id, content_type, bytes).await;
        let answer = deliver(&system, &key, 1).await;
        expect_status(&answer, 422);
        let body = answer.json();
        assert_eq!(body["result"], Value::from("failed"), "{name}: {body}");
        if !kind.is_empty() {
            assert_eq!(body["kind"], Value::from(kind), "{name}: {body}");
        }
        let image = system.image(&image_id).await.unwrap();
        assert_eq!(image.state(), catalog_pb::ImageState::Failed, "{name}");
        assert!(!image.failure_reason.is_empty(), "{name}");
        // No thumbnail was written.
        assert!(
            system
                .events()
                .iter()
                .all(|event| !event.subject.contains(&format!("/thumbnails/{image_id}/"))),
            "{name} left thumbnails"
        );
        // A redelivery of a failed image is acknowledged without work.
        let again = deliver(&system, &key, 2).await;
        expect_status(&again, 200);
        assert_eq!(again.json()["result"], Value::from("skipped"), "{name}");
    }
    // The runtime is unaffected: a good image right after works.
    let (image_id, key) = upload_image(&system, &seller, "image/jpeg", good).await;
    created_variants(&system, &deliver(&system, &key, 1).await, &image_id).await;

    // Zero bytes never get as far as storage.
    let answer = system
        .edge_post(
            &upload_path(&seller.product),
            &seller.token,
            "image/jpeg",
            Vec::new(),
        )
        .await;
    expect_error(&answer, 400, "bad_request");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthentic_deliveries_are_refused_and_other_events_ignored() {
    let system = System::start().await;
    let seller = seller(&system, "seller@example.com").await;
    let (image_id, key) = upload_image(&system, &seller, "image/png", images::png(300, 200)).await;
    let event = system.event_for(&key).unwrap();
    let now = storemesh_system_tests::unix_now();

    // Signed with another secret.
    let (body, headers) =
        storemesh_system_tests::signed_delivery(&event, 1, now, b"another-secret-0123456789");
    expect_error(
        &post_delivery(&system, body, headers).await,
        401,
        "invalid_signature",
    );
    // Stale: signed with the right secret, outside the replay window.
    let (body, headers) = storemesh_system_tests::signed_delivery(
        &event,
        1,
        now - 3_600,
        storemesh_system_tests::DELIVERY_SECRET.as_bytes(),
    );
    expect_error(
        &post_delivery(&system, body, headers).await,
        401,
        "invalid_signature",
    );
    // A valid signature over another body.
    let (mut body, headers) = system.signed_delivery(&event, 1);
    body.push(0);
    expect_error(
        &post_delivery(&system, body, headers).await,
        401,
        "invalid_signature",
    );
    // No signature at all.
    let (body, _) = system.signed_delivery(&event, 1);
    expect_error(
        &post_delivery(
            &system,
            body,
            vec![("content-type".into(), "application/x-protobuf".into())],
        )
        .await,
        401,
        "invalid_signature",
    );
    // Nothing was produced by any of them.
    assert!(
        system
            .events()
            .iter()
            .all(|e| !e.subject.contains("/thumbnails/"))
    );

    // The real delivery works; the thumbnails' own events are acknowledged and ignored.
    created_variants(&system, &deliver(&system, &key, 1).await, &image_id).await;
    let thumbnail_key = expected_key(&seller, &image_id, "w160", "png");
    let thumbnail_key = if system.event_for(&thumbnail_key).is_some() {
        thumbnail_key
    } else {
        expected_key(&seller, &image_id, "w160", "jpg")
    };
    let answer = deliver(&system, &thumbnail_key, 1).await;
    expect_status(&answer, 200);
    assert_eq!(answer.json()["result"], Value::from("ignored"));

    // An image deleted (with its original) before its delivery: nothing to do.
    system
        .catalog_client()
        .await
        .delete_image(bearer(
            catalog_pb::DeleteImageRequest {
                image_id: image_id.clone(),
            },
            &seller.token,
        ))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while download(&system, &key).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the catalog never deleted the original"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // (`event` is the original's `created` event: the newest one about the key is the deletion.)
    let (body, headers) = system.signed_delivery(&event, 2);
    let answer = post_delivery(&system, body, headers).await;
    expect_status(&answer, 200);
    assert_eq!(answer.json()["result"], Value::from("skipped"));
    system.stop().await;
}

/// Issue 20: a delivery whose signature headers cannot be authentic is refused before its body
/// is read, and a header flooded with `v1=` values is refused before any MAC is computed (it
/// once cost the edge seconds of CPU per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_signature_headers_are_refused_before_the_body() {
    use std::time::{Duration, Instant};

    let system = System::start().await;
    let seller = seller(&system, "seller@example.com").await;
    let (image_id, key) = upload_image(&system, &seller, "image/png", images::png(64, 48)).await;
    let event = system.event_for(&key).unwrap();
    let (body, headers) = system.signed_delivery(&event, 1);
    let with = |name: &str, value: Option<String>, content_length: Option<usize>| {
        let mut headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(key, _)| key != name)
            .cloned()
            .collect();
        if let Some(value) = value {
            headers.push((name.to_owned(), value));
        }
        if let Some(length) = content_length {
            headers.push(("content-length".to_owned(), length.to_string()));
        }
        headers
    };
    let signature_with = |value: String, content_length: Option<usize>| {
        with(
            storemesh_delivery::SIGNATURE_HEADER,
            Some(value),
            content_length,
        )
    };
    let expect_too_many = |answer: &Answer| {
        expect_error(answer, 401, "invalid_signature");
        let message = answer.json()["error"]["message"].to_string();
        assert!(
            message.contains(&format!(
                "more than {} v1= values",
                storemesh_delivery::MAX_SIGNATURES
            )),
            "{message}"
        );
    };
    // Sent with a `Content-Length` the body never reaches (the client keeps the connection
    // open): the answer must not wait for the body.
    let refused_without_body = |headers: Vec<(String, String)>| async {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            post_delivery(&system, vec![0; 1024], headers),
        )
        .await
        .expect("the edge waited for a body it did not need");
        assert!(started.elapsed() < Duration::from_secs(10));
        answer
    };

    // The attack: 20,000 empty `v1=` values (80 KB) over a large body.
    let hostile = vec!["v1="; 20_000].join(",");
    let started = Instant::now();
    let answer = post_delivery(
        &system,
        vec![7; 60 * 1024],
        signature_with(hostile.clone(), None),
    )
    .await;
    expect_too_many(&answer);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The same with a body that never completes.
    expect_too_many(&refused_without_body(signature_with(hostile, Some(64 * 1024))).await);
    // More values than secrets can rotate through, even with the right one among them.
    let valid = headers
        .iter()
        .find(|(name, _)| name == storemesh_delivery::SIGNATURE_HEADER)
        .unwrap()
        .1
        .clone();
    let five = [valid.as_str(); storemesh_delivery::MAX_SIGNATURES + 1].join(",");
    expect_too_many(&post_delivery(&system, body.clone(), signature_with(five, None)).await);

    // Missing, malformed or stale headers: refused at once, the body unread.
    let now = storemesh_system_tests::unix_now();
    for headers in [
        with(storemesh_delivery::SIGNATURE_HEADER, None, Some(64 * 1024)),
        signature_with("v1=abcd".into(), Some(64 * 1024)),
        signature_with(format!("{valid},v1="), Some(64 * 1024)),
        with(storemesh_delivery::TIMESTAMP_HEADER, None, Some(64 * 1024)),
        with(
            storemesh_delivery::TIMESTAMP_HEADER,
            Some("soon".into()),
            Some(64 * 1024),
        ),
        with(
            storemesh_delivery::TIMESTAMP_HEADER,
            Some((now - 3_600).to_string()),
            Some(64 * 1024),
        ),
    ] {
        let answer = refused_without_body(headers.clone()).await;
        expect_error(&answer, 401, "invalid_signature");
        assert_eq!(answer.header("www-authenticate"), Some("Signature"));
    }
    assert!(
        system
            .events()
            .iter()
            .all(|e| !e.subject.contains("/thumbnails/"))
    );

    // Up to MAX_SIGNATURES values, the right one among forged ones, is delivered.
    let forged = format!("v1={}", "0".repeat(64));
    let mut four = vec![forged.as_str(); storemesh_delivery::MAX_SIGNATURES - 1];
    four.push(&valid);
    let answer = post_delivery(&system, body, signature_with(four.join(","), None)).await;
    created_variants(&system, &answer, &image_id).await;
    system.stop().await;
}

/// Storage emits an original's event when it commits, and the upload hook attaches the image
/// just after: a delivery that overtakes the attach waits a moment for the catalog rather
/// than asking for a redelivery (which the dispatcher makes a second or more later). An image
/// that is never attached still gets `503` with `Retry-After`, and nothing is stored for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_that_overtakes_the_attach_waits_for_it() {
    let system = System::start().await;
    let seller = seller(&system, "racer@example.com").await;
    let png = images::png(64, 48);

    let key = store_original(&system, &seller, "overtaken", "image/png", png.clone()).await;
    let attach_later = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        attach_original(&system, &seller, "overtaken", &key, "image/png", png.len()).await;
    };
    let (answer, ()) = tokio::join!(deliver(&system, &key, 1), attach_later);
    let variants = created_variants(&system, &answer, "overtaken").await;
    assert!(!variants.is_empty());

    let never = store_original(&system, &seller, "never-attached", "image/png", png).await;
    let answer = deliver(&system, &never, 1).await;
    expect_error(&answer, 503, "not_attached_yet");
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert!(
        system
            .events()
            .iter()
            .all(|event| !event.subject.contains("/thumbnails/never-attached/")),
        "no thumbnail may be stored for an image the catalog does not know"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thumbnails_over_native_grpc_h2c() {
    let system = System::start_with(Options {
        transport: EdgeTransport::Grpc,
        ..Options::default()
    })
    .await;
    let seller = seller(&system, "seller@example.com").await;
    let (image_id, key) =
        upload_image(&system, &seller, "image/jpeg", images::jpeg(900, 600)).await;
    let variants = created_variants(&system, &deliver(&system, &key, 1).await, &image_id).await;
    assert_eq!(variants[2].width, 640);
    system.stop().await;
}
