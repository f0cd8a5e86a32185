//! The `images` edge function (`GET`/`HEAD /img/...`) on the embedded edge runtime with the real
//! `spin.toml`, against the real services: cache headers, validators and `304`s that read no
//! bytes, ranges, the access matrix (anonymous, another seller, the owner, an admin × published
//! and draft × variant and original), signed URLs (valid, expired, forged, rotated keys),
//! deletions, and the bytes themselves.
//!
//! This file is the `images` test target (`cargo test -p storemesh-system-tests --test images`):
//! cargo finds `tests/images/main.rs` by its directory, which also holds the image fixtures
//! (`mod.rs`) the other test files use as `mod images`.
#![allow(clippy::unwrap_used)]

#[path = "mod.rs"]
mod pictures;

use prost_types::FieldMask;
use sha2::{Digest, Sha256};
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::events::v1 as events_pb;
use storemesh_proto::storage::v1 as storage_pb;
use storemesh_system_tests::http::Answer;
use storemesh_system_tests::{
    DISPATCHER_CLIENT, IMAGE_URL_SIGNING_KEYS, Role, System, bearer, unix_now,
};
use tokio::sync::RwLock;

/// Storage's `Download` counter is process-wide (every in-process service shares one metrics
/// recorder): the test that asserts it does not grow runs alone, the others share this lock.
static DOWNLOADS: RwLock<()> = RwLock::const_new(());

const PUBLIC: &str = "public, max-age=31536000, immutable";
const PRIVATE: &str = "private, no-store";
const SIZES: [(&str, u32, u32); 3] = [("w160", 160, 120), ("w320", 320, 240), ("w640", 640, 480)];

// ---- set-up -----------------------------------------------------------------------------------

struct Seller {
    token: String,
}

async fn seller(system: &System, email: &str) -> Seller {
    let (_, token) = system.user(email, Role::Seller).await;
    Seller { token }
}

fn expect_status(answer: &Answer, status: u16) {
    answer.expect_status(status);
}

/// A JSON error body with this status and code, never cached.
fn expect_error(answer: &Answer, status: u16, code: &str) {
    answer.expect_error(status, code);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
}

/// Downloads an object with the admin token (what storage holds).
async fn stored(system: &System, key: &str) -> (storage_pb::ObjectInfo, Vec<u8>) {
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
        .await
        .unwrap()
        .into_inner();
    let mut info = None;
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        match message.payload {
            Some(storage_pb::download_response::Payload::Info(object)) => info = Some(object),
            Some(storage_pb::download_response::Payload::Chunk(chunk)) => {
                bytes.extend_from_slice(&chunk);
            }
            None => {}
        }
    }
    (info.unwrap(), bytes)
}

/// Uploads `bytes` through the upload hook; returns (image id, original key).
async fn upload(
    system: &System,
    seller: &Seller,
    product: &str,
    bytes: Vec<u8>,
) -> (String, String) {
    let answer = system
        .edge_post(
            &format!("/v1/products/{product}/images"),
            &seller.token,
            "image/jpeg",
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

/// Plays the dispatcher for a thumbnail's `ObjectCreated` event: `RecordVariant` as it would
/// (`keep_sha256` false records it without the SHA-256, as records made before it existed).
async fn record_variant(system: &System, key: &str, keep_sha256: bool) -> catalog_pb::Image {
    let event = system.event_for(key).unwrap();
    let Some(events_pb::event::Data::ObjectCreated(created)) = event.data.clone() else {
        panic!("not a created object: {event:?}");
    };
    let segments: Vec<&str> = key.split('/').collect();
    let format = match created.content_type.as_str() {
        "image/png" => catalog_pb::ImageFormat::Png,
        _ => catalog_pb::ImageFormat::Jpeg,
    };
    let token = system.service_token(DISPATCHER_CLIENT).await;
    system
        .catalog_client()
        .await
        .record_variant(bearer(
            catalog_pb::RecordVariantRequest {
                image_id: segments[3].into(),
                variant: Some(catalog_pb::ImageVariant {
                    name: created.metadata["variant"].clone(),
                    width: created.metadata["width"].parse().unwrap(),
                    height: created.metadata["height"].parse().unwrap(),
                    format: format.into(),
                    storage_key: key.into(),
                    size_bytes: created.size_bytes,
                    sha256: if keep_sha256 {
                        created.sha256.clone()
                    } else {
                        String::new()
                    },
                    ..catalog_pb::ImageVariant::default()
                }),
                event_id: event.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

/// Delivers the original's event to the thumbnail function; returns the variants' keys.
async fn make_thumbnails(system: &System, original_key: &str) -> Vec<String> {
    let event = system.event_for(original_key).unwrap();
    let (body, headers) = system.signed_delivery(&event, 1);
    let headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    let answer = storemesh_system_tests::http::request(
        system.edge.unwrap(),
        "POST",
        "/internal/thumbnail",
        &headers,
        Some(body),
    )
    .await;
    expect_status(&answer, 200);
    answer.json()["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variant| variant["storage_key"].as_str().unwrap().to_owned())
        .collect()
}

/// An image of `product` made `READY` as the pipeline does (upload hook, thumbnail function,
/// `RecordVariant` per thumbnail); w160 is recorded without its SHA-256. Returns the catalog's
/// record and the original's bytes.
async fn ready_image(
    system: &System,
    seller: &Seller,
    product: &str,
) -> (catalog_pb::Image, Vec<u8>) {
    let original = pictures::jpeg(800, 600);
    let (image_id, key) = upload(system, seller, product, original.clone()).await;
    for key in make_thumbnails(system, &key).await {
        record_variant(system, &key, !key.ends_with("/w160.jpg")).await;
    }
    let image = system.image(&image_id).await.unwrap();
    assert_eq!(image.state(), catalog_pb::ImageState::Ready, "{image:?}");
    (image, original)
}

async fn set_visibility(
    system: &System,
    token: &str,
    product: &str,
    visibility: catalog_pb::ProductVisibility,
) {
    let updated = system
        .catalog_client()
        .await
        .update_product(bearer(
            catalog_pb::UpdateProductRequest {
                product: Some(catalog_pb::Product {
                    id: product.into(),
                    visibility: visibility.into(),
                    ..catalog_pb::Product::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["visibility".into()],
                }),
                etag: String::new(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(updated.visibility(), visibility);
}

/// A system with a seller, a published product with a `READY` image, and a second seller.
struct Shop {
    system: System,
    owner: Seller,
    stranger: Seller,
    product: String,
    image: catalog_pb::Image,
    original: Vec<u8>,
}

async fn shop(visibility: catalog_pb::ProductVisibility) -> Shop {
    let system = System::start().await;
    let owner = seller(&system, "owner@example.com").await;
    let stranger = seller(&system, "stranger@example.com").await;
    let product = system.product(&owner.token, "Lamp").await;
    let (image, original) = ready_image(&system, &owner, &product).await;
    if visibility == catalog_pb::ProductVisibility::Published {
        set_visibility(&system, &owner.token, &product, visibility).await;
    }
    Shop {
        system,
        owner,
        stranger,
        product,
        image,
        original,
    }
}

impl Shop {
    fn variant(&self, name: &str) -> &catalog_pb::ImageVariant {
        self.image
            .variants
            .iter()
            .find(|variant| variant.name == name)
            .unwrap()
    }

    /// The strong ETag the function should send for a variant: the stored object's SHA-256.
    async fn etag(&self, key: &str) -> String {
        format!("\"{}\"", stored(&self.system, key).await.0.sha256)
    }

    async fn stop(self) {
        self.system.stop().await;
    }

    async fn downloads(&self) -> f64 {
        self.system
            .storage_metric("grpc_server_handled_total", &[("method", "Download")])
            .await
    }
}

/// HMAC-SHA256 (RFC 2104) over sha2, to mint URLs the catalog would not (another key, an
/// expiry in the past); checked against the catalog's own `SignImageUrl` below.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0_u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// `path?expires=…&signature=…` as `storemesh-image-urls` signs it.
fn sign(key: &str, path: &str, expires: u64) -> String {
    let message = format!("storemesh-image-url:v1\n{path}\n{expires}");
    let signature = hex::encode(hmac_sha256(key.as_bytes(), message.as_bytes()));
    format!("{path}?expires={expires}&signature={signature}")
}

async fn sign_with_catalog(
    system: &System,
    token: &str,
    image_id: &str,
    variant: &str,
    ttl_seconds: u32,
) -> catalog_pb::SignImageUrlResponse {
    system
        .catalog_client()
        .await
        .sign_image_url(bearer(
            catalog_pb::SignImageUrlRequest {
                image_id: image_id.into(),
                variant: variant.into(),
                ttl_seconds,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Request headers of a test case.
type Headers = Vec<(&'static str, String)>;

fn header(name: &'static str, value: impl Into<String>) -> (&'static str, String) {
    (name, value.into())
}

// ---- tests ------------------------------------------------------------------------------------

/// Anonymous shoppers get a published image's variants at the catalog's URLs: the stored bytes,
/// decodable at the recorded size, with the immutable public caching, a strong ETag (the
/// SHA-256, also for the variant recorded without one: from storage's `Stat`), Last-Modified,
/// the exact type and length.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_variants_are_the_stored_bytes_with_cache_headers() {
    let _shared = DOWNLOADS.read().await;
    let shop = shop(catalog_pb::ProductVisibility::Published).await;
    let system = &shop.system;
    let base = system.edge_base_url();
    let image_id = &shop.image.id;
    assert_eq!(shop.image.url_path, format!("/img/{image_id}/original"));
    assert_eq!(shop.image.url, format!("{base}/img/{image_id}/original"));
    let srcset: Vec<String> = SIZES
        .iter()
        .map(|(name, width, _)| format!("{base}/img/{image_id}/{name}.jpg {width}w"))
        .collect();
    assert_eq!(shop.image.srcset, srcset.join(", "));

    for (name, width, height) in SIZES {
        let variant = shop.variant(name);
        assert_eq!(variant.url_path, format!("/img/{image_id}/{name}.jpg"));
        assert_eq!(variant.url, format!("{base}{}", variant.url_path));
        let answer = system.edge_get(&variant.url_path, &[]).await;
        expect_status(&answer, 200);
        let (info, bytes) = stored(system, &variant.storage_key).await;
        assert!(
            answer.body == bytes,
            "{name}: the stored object, byte for byte"
        );
        assert_eq!(hex::encode(Sha256::digest(&answer.body)), info.sha256);
        let decoded = image::load_from_memory(&answer.body).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (width, height),
            "{name}"
        );
        assert_eq!((variant.width, variant.height), (width, height));
        assert_eq!(answer.header("cache-control"), Some(PUBLIC));
        assert_eq!(
            answer.header("etag"),
            Some(format!("\"{}\"", info.sha256).as_str())
        );
        assert_eq!(answer.header("content-type"), Some("image/jpeg"));
        assert_eq!(
            answer.header("content-length"),
            Some(bytes.len().to_string().as_str())
        );
        assert_eq!(answer.header("accept-ranges"), Some("bytes"));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        let modified = answer.header("last-modified").unwrap();
        assert!(
            modified.ends_with(" GMT") && modified.len() == 29,
            "{modified}"
        );
        assert_eq!(
            answer.header("transfer-encoding"),
            None,
            "a known length, not chunked"
        );
    }
    // w160 was recorded without its SHA-256: the ETag is storage's all the same.
    assert!(shop.variant("w160").sha256.is_empty());
    assert!(!shop.variant("w320").sha256.is_empty());

    // A token is not needed, and a stale one does not spoil a public image.
    let answer = system
        .edge_get_as(&shop.variant("w320").url_path, "not-a-token", &[])
        .await;
    expect_status(&answer, 200);
    assert_eq!(answer.header("cache-control"), Some(PUBLIC));
    shop.stop().await;
}

/// `If-None-Match` (exact, weak, lists, `*`), `If-Modified-Since` (only without
/// `If-None-Match`) and `HEAD` are answered without reading the object: storage's `Download`
/// count stays the same while a plain `GET` moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_modified_and_head_read_no_bytes() {
    let _alone = DOWNLOADS.write().await;
    let shop = shop(catalog_pb::ProductVisibility::Published).await;
    let system = &shop.system;
    let variant = shop.variant("w320");
    let path = &variant.url_path;
    let etag = shop.etag(&variant.storage_key).await;
    let first = system.edge_get(path, &[]).await;
    expect_status(&first, 200);
    let modified = first.header("last-modified").unwrap().to_owned();

    let before = shop.downloads().await;
    assert!(before >= 1.0, "the metric counts Download: {before}");
    let weak = format!("W/{etag}");
    let listed = format!("\"0000\", {etag}");
    let cases: Vec<(Headers, u16)> = vec![
        (vec![header("if-none-match", etag.clone())], 304),
        (vec![header("if-none-match", weak)], 304),
        (vec![header("if-none-match", listed)], 304),
        (vec![header("if-none-match", "*")], 304),
        (vec![header("if-modified-since", modified.clone())], 304),
        (
            vec![header("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")],
            304,
        ),
        // If-None-Match wins over If-Modified-Since: a miss is a 200 however recent the date.
        (
            vec![
                header("if-none-match", "\"other\""),
                header("if-modified-since", modified.clone()),
            ],
            200,
        ),
        (vec![header("if-none-match", "\"other\"")], 200),
        (
            vec![header("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
            200,
        ),
        (vec![header("if-modified-since", "not a date")], 200),
    ];
    let mut full_answers = 0.0;
    for (headers, status) in &cases {
        let answer = system.edge_request("HEAD", path, headers).await;
        expect_status(&answer, *status);
        assert!(answer.body.is_empty());
        let answer = system.edge_get(path, headers).await;
        expect_status(&answer, *status);
        assert_eq!(answer.header("etag"), Some(etag.as_str()), "{headers:?}");
        assert_eq!(answer.header("cache-control"), Some(PUBLIC));
        if *status == 304 {
            assert!(answer.body.is_empty(), "{headers:?}");
            assert_eq!(answer.header("last-modified"), Some(modified.as_str()));
            assert_eq!(answer.header("content-length"), None);
        } else {
            assert_eq!(answer.body.len() as u64, variant.size_bytes);
            full_answers += 1.0;
        }
    }
    // HEAD: the headers of a GET, no body.
    let head = system.edge_request("HEAD", path, &[]).await;
    expect_status(&head, 200);
    assert!(head.body.is_empty());
    for name in [
        "etag",
        "last-modified",
        "cache-control",
        "content-type",
        "content-length",
        "accept-ranges",
        "x-content-type-options",
    ] {
        assert_eq!(head.header(name), first.header(name), "{name}");
    }
    // Only the full GETs downloaded (the gateway and storage share the recorder in this
    // process, so each counts once or twice, never zero).
    let during = shop.downloads().await - before;
    assert!(
        during >= full_answers && during <= 2.0 * full_answers,
        "{during} downloads for {full_answers} full answers"
    );
    // The owner's original: the same rules with private caching.
    let original = &shop.image.url_path;
    let mine = [header(
        "authorization",
        format!("Bearer {}", shop.owner.token),
    )];
    let before = shop.downloads().await;
    let answer = system
        .edge_get(
            original,
            &[
                mine[0].clone(),
                header("if-none-match", format!("\"{}\"", shop.image.sha256)),
            ],
        )
        .await;
    expect_status(&answer, 304);
    assert_eq!(answer.header("cache-control"), Some(PRIVATE));
    let head = system.edge_request("HEAD", original, &mine).await;
    expect_status(&head, 200);
    assert_eq!(
        head.header("content-length"),
        Some(shop.original.len().to_string().as_str())
    );
    assert_eq!(
        shop.downloads().await,
        before,
        "no bytes for a 304 or a HEAD"
    );
    shop.stop().await;
}

/// One range: first bytes, open-ended, suffix, clamped; unsatisfiable `416`; several ranges the
/// whole `200`; `If-Range` with the ETag or the date.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byte_ranges() {
    let _shared = DOWNLOADS.read().await;
    let shop = shop(catalog_pb::ProductVisibility::Published).await;
    let system = &shop.system;
    let variant = shop.variant("w640");
    let path = &variant.url_path;
    let (_, bytes) = stored(system, &variant.storage_key).await;
    let size = bytes.len();
    assert!(size > 300, "{size}");
    let etag = shop.etag(&variant.storage_key).await;
    let modified = system
        .edge_request("HEAD", path, &[])
        .await
        .header("last-modified")
        .unwrap()
        .to_owned();

    let partial = |range: &str| vec![header("range", range)];
    let cases: Vec<(Headers, usize, usize)> = vec![
        (partial("bytes=0-99"), 0, 99),
        (partial("bytes=100-"), 100, size - 1),
        (partial("bytes=-100"), size - 100, size - 1),
        (
            partial(&format!("bytes={}-{}", size - 10, size * 2)),
            size - 10,
            size - 1,
        ),
        (partial("bytes=0-0"), 0, 0),
        (
            vec![
                header("range", "bytes=5-9"),
                header("if-range", etag.clone()),
            ],
            5,
            9,
        ),
        (
            vec![
                header("range", "bytes=5-9"),
                header("if-range", modified.clone()),
            ],
            5,
            9,
        ),
    ];
    for (headers, start, end) in cases {
        let answer = system.edge_get(path, &headers).await;
        expect_status(&answer, 206);
        assert_eq!(
            answer.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str()),
            "{headers:?}"
        );
        assert_eq!(
            answer.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert!(answer.body == bytes[start..=end], "{headers:?}");
        assert_eq!(answer.header("etag"), Some(etag.as_str()));
        assert_eq!(answer.header("cache-control"), Some(PUBLIC));
    }
    for range in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 5, size + 9),
        "bytes=-0".into(),
    ] {
        let answer = system.edge_get(path, &partial(&range)).await;
        expect_error(&answer, 416, "range_not_satisfiable");
        assert_eq!(
            answer.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
    }
    // The whole image: several ranges, a stale If-Range (other tag, weak tag, other date),
    // a malformed or foreign-unit range, and HEAD (ranges are for GET).
    let whole: Vec<Headers> = vec![
        partial("bytes=0-1,5-9"),
        vec![
            header("range", "bytes=5-9"),
            header("if-range", "\"stale\""),
        ],
        vec![
            header("range", "bytes=5-9"),
            header("if-range", format!("W/{etag}")),
        ],
        vec![
            header("range", "bytes=5-9"),
            header("if-range", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ],
        partial("bytes=9-5"),
        partial("pages=1-2"),
    ];
    for headers in whole {
        let answer = system.edge_get(path, &headers).await;
        expect_status(&answer, 200);
        assert_eq!(answer.header("content-range"), None);
        assert!(answer.body == bytes, "{headers:?}");
    }
    let head = system
        .edge_request("HEAD", path, &partial("bytes=0-9"))
        .await;
    expect_status(&head, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );

    // The original, by its owner: a range of the uploaded file.
    let answer = system
        .edge_get_as(
            &shop.image.url_path,
            &shop.owner.token,
            &partial("bytes=-64"),
        )
        .await;
    expect_status(&answer, 206);
    assert!(answer.body == shop.original[shop.original.len() - 64..]);
    assert_eq!(answer.header("cache-control"), Some(PRIVATE));
    shop.stop().await;
}

/// Who gets what: anonymous / another seller / a customer / the owner / an admin × published /
/// draft × variant / original, and a not-yet-READY image of a published product.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_matrix() {
    let _shared = DOWNLOADS.read().await;
    let shop = shop(catalog_pb::ProductVisibility::Published).await;
    let system = &shop.system;
    let (_, customer) = system.user("customer@example.com", Role::Customer).await;
    let draft_product = system.product(&shop.owner.token, "Draft lamp").await;
    let (draft, draft_original) = ready_image(system, &shop.owner, &draft_product).await;
    let published_product = &shop.product;

    let callers: [(&str, Option<&str>); 5] = [
        ("anonymous", None),
        ("stranger", Some(&shop.stranger.token)),
        ("customer", Some(&customer)),
        ("owner", Some(&shop.owner.token)),
        ("admin", Some(&system.admin_token)),
    ];
    for (image, original, published) in [
        (&shop.image, &shop.original, true),
        (&draft, &draft_original, false),
    ] {
        let variant = image.variants.iter().find(|v| v.name == "w160").unwrap();
        let (_, variant_bytes) = stored(system, &variant.storage_key).await;
        for (asset, path, bytes) in [
            ("variant", &variant.url_path, &variant_bytes),
            ("original", &image.url_path, original),
        ] {
            for (who, token) in callers {
                let answer = match token {
                    Some(token) => system.edge_get_as(path, token, &[]).await,
                    None => system.edge_get(path, &[]).await,
                };
                let case = format!(
                    "{who} × {} × {asset}",
                    if published { "published" } else { "draft" }
                );
                let public = published && asset == "variant";
                match (public, who) {
                    (true, _) => {
                        assert_eq!(answer.status, 200, "{case}: {}", answer.text());
                        assert_eq!(answer.header("cache-control"), Some(PUBLIC), "{case}");
                        assert!(answer.body == *bytes, "{case}");
                    }
                    (false, "owner" | "admin") => {
                        assert_eq!(answer.status, 200, "{case}: {}", answer.text());
                        assert_eq!(answer.header("cache-control"), Some(PRIVATE), "{case}");
                        assert!(answer.body == *bytes, "{case}");
                    }
                    (false, "anonymous") => {
                        expect_error(&answer, 401, "unauthenticated");
                        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{case}");
                    }
                    (false, _) => expect_error(&answer, 403, "forbidden"),
                }
            }
        }
        // A token that does not verify is 401 where credentials matter.
        if !published {
            let answer = system
                .edge_get_as(&image.url_path, "forged.token.value", &[])
                .await;
            expect_error(&answer, 401, "unauthenticated");
            assert!(
                answer
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Bearer")
            );
            let answer = system
                .edge_get(
                    &image.url_path,
                    &[header("authorization", "Basic b3duZXI6cHc=")],
                )
                .await;
            expect_error(&answer, 401, "unauthenticated");
        }
    }

    // Published product, image still PROCESSING (one variant recorded): not public yet.
    let (image_id, key) = upload(
        system,
        &shop.owner,
        published_product,
        pictures::jpeg(400, 300),
    )
    .await;
    let keys = make_thumbnails(system, &key).await;
    let processing = record_variant(system, &keys[0], true).await;
    assert_eq!(processing.state(), catalog_pb::ImageState::Processing);
    let path = &processing.variants[0].url_path;
    assert!(path.starts_with(&format!("/img/{image_id}/")), "{path}");
    expect_error(&system.edge_get(path, &[]).await, 401, "unauthenticated");
    let answer = system.edge_get_as(path, &shop.owner.token, &[]).await;
    expect_status(&answer, 200);
    assert_eq!(answer.header("cache-control"), Some(PRIVATE));
    // A variant not recorded yet: credentials first, then 404.
    let missing = format!("/img/{image_id}/w640.jpg");
    expect_error(
        &system.edge_get(&missing, &[]).await,
        401,
        "unauthenticated",
    );
    expect_error(
        &system.edge_get_as(&missing, &shop.owner.token, &[]).await,
        404,
        "not_found",
    );

    // Unpublishing takes the variants back at once.
    set_visibility(
        system,
        &shop.owner.token,
        published_product,
        catalog_pb::ProductVisibility::Draft,
    )
    .await;
    let answer = system.edge_get(&shop.variant("w320").url_path, &[]).await;
    expect_error(&answer, 401, "unauthenticated");
    shop.stop().await;
}

/// Signed URLs from `SignImageUrl` open a draft's original and variants to anyone until they
/// expire; forged, altered, expired or unknown-key signatures are `403`; a URL signed with the
/// rotated-out key works while the edge still lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_urls() {
    let _shared = DOWNLOADS.read().await;
    let shop = shop(catalog_pb::ProductVisibility::Draft).await;
    let system = &shop.system;
    let image_id = &shop.image.id;
    let [new_key, old_key] = IMAGE_URL_SIGNING_KEYS;

    let signed = sign_with_catalog(system, &shop.owner.token, image_id, "", 0).await;
    assert!(
        signed
            .url_path
            .starts_with(&format!("/img/{image_id}/original?expires=")),
        "{signed:?}"
    );
    assert_eq!(
        signed.url,
        format!("{}{}", system.edge_base_url(), signed.url_path)
    );
    let expires = u64::try_from(signed.expire_time.unwrap().seconds).unwrap();
    assert!(
        (3590..=3610).contains(&(expires - unix_now())),
        "one hour by default"
    );
    // The catalog signs with the first key exactly as this test's HMAC does.
    assert_eq!(
        signed.url_path,
        sign(new_key, &shop.image.url_path, expires)
    );

    let answer = system.edge_get(&signed.url_path, &[]).await;
    expect_status(&answer, 200);
    assert!(answer.body == shop.original);
    assert_eq!(answer.header("cache-control"), Some(PRIVATE));
    assert_eq!(
        answer.header("etag"),
        Some(format!("\"{}\"", shop.image.sha256).as_str())
    );
    // A signed URL and someone else's token: the URL is the credential.
    let answer = system
        .edge_get_as(&signed.url_path, &shop.stranger.token, &[])
        .await;
    expect_status(&answer, 200);

    let variant = sign_with_catalog(system, &shop.owner.token, image_id, "w320", 60).await;
    assert!(
        variant
            .url_path
            .starts_with(&format!("/img/{image_id}/w320.jpg?")),
        "{variant:?}"
    );
    let answer = system.edge_get(&variant.url_path, &[]).await;
    expect_status(&answer, 200);
    assert_eq!(answer.header("cache-control"), Some(PRIVATE));
    image::load_from_memory(&answer.body).unwrap();
    let ranged = system
        .edge_get(&variant.url_path, &[header("range", "bytes=0-9")])
        .await;
    expect_status(&ranged, 206);

    // Another seller cannot mint one.
    let refused = system
        .catalog_client()
        .await
        .sign_image_url(bearer(
            catalog_pb::SignImageUrlRequest {
                image_id: image_id.clone(),
                variant: String::new(),
                ttl_seconds: 0,
            },
            &shop.stranger.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let original_path = &shop.image.url_path;
    let later = unix_now() + 600;
    // Rotation: minted with the old key before the catalog switched, still accepted.
    let answer = system
        .edge_get(&sign(old_key, original_path, later), &[])
        .await;
    expect_status(&answer, 200);
    let forged_signature = {
        let good = sign(new_key, original_path, later);
        let last = good.chars().last().unwrap();
        format!(
            "{}{}",
            &good[..good.len() - 1],
            if last == '0' { '1' } else { '0' }
        )
    };
    let refused: Vec<(&str, String)> = vec![
        ("expired", sign(new_key, original_path, unix_now() - 10)),
        (
            "unknown key",
            sign("some-other-key-0123456789abcdef", original_path, later),
        ),
        ("altered signature", forged_signature),
        (
            "another path's signature",
            sign(new_key, &format!("/img/{image_id}/w320.jpg"), later)
                .replace(&format!("/img/{image_id}/w320.jpg"), original_path),
        ),
        (
            "extended expiry",
            sign(new_key, original_path, later).replace(
                &format!("expires={later}"),
                &format!("expires={}", later + 1),
            ),
        ),
        ("expires only", format!("{original_path}?expires={later}")),
        (
            "malformed",
            format!("{original_path}?expires={later}&signature=xyz"),
        ),
    ];
    for (case, url) in refused {
        let answer = system.edge_get(&url, &[]).await;
        expect_error(&answer, 403, "forbidden");
        assert_eq!(answer.header("www-authenticate"), None, "{case}");
        // The owner's token does not rescue a bad signature: the URL says what it is.
        let answer = system.edge_get_as(&url, &shop.owner.token, &[]).await;
        expect_status(&answer, 403);
    }
    // A URL the catalog minted to live one second, after it expired.
    let short = sign_with_catalog(system, &shop.owner.token, image_id, "w160", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let answer = system.edge_get(&short.url_path, &[]).await;
    expect_error(&answer, 403, "forbidden");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // A valid signature of an image that does not exist: 404.
    let ghost = sign(new_key, "/img/no-such-image/original", later);
    expect_error(&system.edge_get(&ghost, &[]).await, 404, "not_found");
    shop.stop().await;
}

/// Deleting an image, or its product, makes its URLs `404` at once (the records are read on
/// every request; nothing is cached in the function).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_images_and_products_are_404_at_once() {
    let _shared = DOWNLOADS.read().await;
    let shop = shop(catalog_pb::ProductVisibility::Published).await;
    let system = &shop.system;
    let variant_path = shop.variant("w320").url_path.clone();
    let signed = sign_with_catalog(system, &shop.owner.token, &shop.image.id, "", 600).await;
    expect_status(&system.edge_get(&variant_path, &[]).await, 200);
    system
        .catalog_client()
        .await
        .delete_image(bearer(
            catalog_pb::DeleteImageRequest {
                image_id: shop.image.id.clone(),
            },
            &shop.owner.token,
        ))
        .await
        .unwrap();
    expect_error(&system.edge_get(&variant_path, &[]).await, 404, "not_found");
    expect_error(
        &system
            .edge_get_as(&shop.image.url_path, &shop.owner.token, &[])
            .await,
        404,
        "not_found",
    );
    expect_error(
        &system.edge_get(&signed.url_path, &[]).await,
        404,
        "not_found",
    );
    // HEAD: the same status, no body (so no JSON).
    let head = system.edge_request("HEAD", &variant_path, &[]).await;
    expect_status(&head, 404);
    assert!(head.body.is_empty());
    assert_eq!(head.header("cache-control"), Some("no-store"));

    let (second, _) = ready_image(system, &shop.owner, &shop.product).await;
    let path = second.variants[0].url_path.clone();
    expect_status(&system.edge_get(&path, &[]).await, 200);
    system
        .catalog_client()
        .await
        .delete_product(bearer(
            catalog_pb::DeleteProductRequest {
                id: shop.product.clone(),
                etag: String::new(),
            },
            &shop.owner.token,
        ))
        .await
        .unwrap();
    expect_error(&system.edge_get(&path, &[]).await, 404, "not_found");
    expect_error(
        &system
            .edge_get_as(&second.url_path, &system.admin_token, &[])
            .await,
        404,
        "not_found",
    );
    shop.stop().await;
}

/// Methods other than GET and HEAD are `405` with `Allow`; paths that are not image URLs, and
/// images or variants that do not exist, are `404`; an unreachable mesh is `503` with
/// `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn methods_paths_and_an_unavailable_mesh() {
    let _shared = DOWNLOADS.read().await;
    let mut shop = shop(catalog_pb::ProductVisibility::Published).await;
    let image_id = shop.image.id.clone();
    let variant_path = shop.variant("w160").url_path.clone();
    let system = &shop.system;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let answer = system.edge_request(method, &variant_path, &[]).await;
        expect_error(&answer, 405, "method_not_allowed");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method}");
    }
    for path in [
        "/img/".to_owned(),
        format!("/img/{image_id}"),
        format!("/img/{image_id}/"),
        format!("/img/{image_id}/w160"),
        format!("/img/{image_id}/w160.exe"),
        format!("/img/{image_id}/W160.jpg"),
        format!("/img/{image_id}/w160.jpg/more"),
        "/img/a.b/original".to_owned(),
        format!("/img/{}/original", "a".repeat(65)),
    ] {
        let answer = system.edge_get(&path, &[]).await;
        expect_error(&answer, 404, "not_found");
    }
    for path in [
        "/img/no-such-image/w160.jpg".to_owned(),
        "/img/no-such-image/original".to_owned(),
        format!("/img/{image_id}/w999.jpg"),
        // The variant exists as a JPEG, not as a PNG.
        format!("/img/{image_id}/w160.png"),
    ] {
        let answer = system.edge_get(&path, &[]).await;
        expect_error(&answer, 404, "not_found");
    }

    shop.system.kill("catalog");
    let answer = shop.system.edge_get(&variant_path, &[]).await;
    expect_error(&answer, 503, "mesh_unavailable");
    assert!(
        answer.header("retry-after").is_some(),
        "{:?}",
        answer.headers
    );
    shop.system.kill("gateway");
    let answer = shop.system.edge_get(&variant_path, &[]).await;
    expect_error(&answer, 503, "mesh_unavailable");
    assert!(
        answer.header("retry-after").is_some(),
        "{:?}",
        answer.headers
    );
    shop.stop().await;
}

/// The body is streamed from storage chunk by chunk: a 40 MiB original goes through an edge
/// whose instances have 32 MiB of memory, whole and as a range from its middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_original_is_streamed_not_buffered() {
    let _shared = DOWNLOADS.read().await;
    let system = System::start_with(storemesh_system_tests::Options {
        edge_max_memory_bytes: 32 * 1024 * 1024,
        ..storemesh_system_tests::Options::default()
    })
    .await;
    let owner = seller(&system, "big@example.com").await;
    let product = system.product(&owner.token, "Big lamp").await;
    // A small JPEG followed by 40 MiB of trailing bytes: the upload hook checks the header only.
    let mut original = pictures::jpeg(64, 64);
    original.extend((0..40 * 1024 * 1024_u32).map(|i| (i % 251) as u8));
    let (image_id, _) = upload(&system, &owner, &product, original.clone()).await;
    let path = format!("/img/{image_id}/original");
    let answer = system.edge_get_as(&path, &owner.token, &[]).await;
    expect_status(&answer, 200);
    assert_eq!(
        answer.header("content-length"),
        Some(original.len().to_string().as_str())
    );
    assert!(answer.body == original, "{} bytes came", answer.body.len());
    let (start, end) = (20_000_000, 30_000_000);
    let answer = system
        .edge_get_as(
            &path,
            &owner.token,
            &[header("range", format!("bytes={start}-{end}"))],
        )
        .await;
    expect_status(&answer, 206);
    assert!(answer.body == original[start..=end]);
    system.stop().await;
}
