//! Image URLs on every returned image, SHA-256 digests, and SignImageUrl.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use storemesh_image_urls::{SignatureError, SigningKeys};
use storemesh_proto::catalog::v1 as pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::catalog::v1::watch_product_response::Change;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::*;

const BASE: &str = "http://127.0.0.1:3000";

fn digest(byte: &str) -> String {
    byte.repeat(32)
}

fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Asserts the URL fields of `image` for the base URL `base` (`""`: paths only).
#[track_caller]
fn assert_urls(image: &pb::Image, base: &str) {
    let id = &image.id;
    assert_eq!(image.url_path, format!("/img/{id}/original"), "{image:?}");
    assert_eq!(image.url, format!("{base}/img/{id}/original"), "{image:?}");
    let mut candidates = Vec::new();
    for variant in &image.variants {
        let extension = match variant.format() {
            pb::ImageFormat::Jpeg => "jpg",
            pb::ImageFormat::Png => "png",
            other => panic!("unexpected format {other:?}"),
        };
        assert_eq!(
            variant.url_path,
            format!("/img/{id}/{}.{extension}", variant.name),
            "{variant:?}"
        );
        assert_eq!(variant.url, format!("{base}{}", variant.url_path));
        candidates.push((variant.width, format!("{} {}w", variant.url, variant.width)));
    }
    candidates.sort();
    let srcset: Vec<String> = candidates.into_iter().map(|(_, c)| c).collect();
    assert_eq!(image.srcset, srcset.join(", "), "{image:?}");
}

async fn record_ok(
    client: &mut CatalogServiceClient<Channel>,
    token: &str,
    image_id: &str,
    variant: pb::ImageVariant,
    event_id: &str,
) -> pb::Image {
    record(client, token, image_id, variant, event_id)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_returned_image_carries_its_urls() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let admin = harness.admin().await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Vase", &[])).await;
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

    let attached = attach(&mut client, &seller.token, &product.id, "img1").await;
    assert_urls(&attached, BASE);
    assert_eq!(attached.srcset, "", "no variants yet");

    let first = record_ok(
        &mut client,
        &thumbnail,
        "img1",
        variant(&product.id, "img1", 320),
        "e320",
    )
    .await;
    assert_urls(&first, BASE);
    let mut png = variant(&product.id, "img1", 160);
    png.format = pb::ImageFormat::Png.into();
    png.storage_key = format!("products/{}/thumbnails/img1/w160.png", product.id);
    let second = record_ok(&mut client, &thumbnail, "img1", png, "e160").await;
    assert_urls(&second, BASE);
    assert_eq!(
        second.srcset,
        format!("{BASE}/img/img1/w160.png 160w, {BASE}/img/img1/w320.jpg 320w")
    );

    let got = client
        .get_image(bearer(
            pb::GetImageRequest {
                image_id: "img1".into(),
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(got, second);
    let listed = client
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
    assert_eq!(listed, std::slice::from_ref(&second));
    let processing = client
        .list_images(bearer(
            pb::ListImagesRequest {
                state: pb::ImageState::Processing.into(),
                ..Default::default()
            },
            &admin.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(processing, std::slice::from_ref(&second));
    attach(&mut client, &seller.token, &product.id, "img2").await;
    let failed = client
        .mark_image_failed(bearer(
            pb::MarkImageFailedRequest {
                image_id: "img2".into(),
                reason: "cannot decode".into(),
                event_id: String::new(),
            },
            &thumbnail,
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_urls(&failed, BASE);

    // Live watch messages and a snapshot carry them too.
    let mut live_images = 0;
    while live_images < 5 {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Change::ImageUpdated(image)) = &message.change {
            assert_urls(image, BASE);
            live_images += 1;
        }
    }
    let mut snapshot = client
        .watch_product(bearer(
            pb::WatchProductRequest {
                product_id: product.id.clone(),
                send_initial: true,
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut snapshot_images = 0;
    while snapshot_images < 2 {
        let message = snapshot.message().await.unwrap().unwrap();
        if let Some(Change::ImageUpdated(image)) = &message.change {
            assert_urls(image, BASE);
            snapshot_images += 1;
        }
    }

    // URLs are derived on output, never stored.
    let mut redis = harness.redis().await;
    let stored: HashMap<String, String> = redis.hgetall("catalog:image:img1").await.unwrap();
    assert!(!stored.contains_key("url_path") && !stored.contains_key("url"));
    assert!(!stored["variants"].contains("/img/"), "{stored:?}");
}

#[tokio::test]
async fn urls_follow_the_configured_base() {
    for (configured, base) in [
        ("", ""),
        ("https://img.example.com/", "https://img.example.com"),
    ] {
        let harness = Harness::start_with(|settings| {
            settings.catalog.public_image_base_url = configured.into();
        })
        .await;
        let seller = harness.seller("seller@example.com").await;
        let thumbnail = harness.service("thumbnail").await;
        let mut client = harness.client().await;
        let product = create(&mut client, &seller.token, new_product("Vase", &[])).await;
        let attached = attach(&mut client, &seller.token, &product.id, "img1").await;
        assert_urls(&attached, base);
        let image = record_ok(
            &mut client,
            &thumbnail,
            "img1",
            variant(&product.id, "img1", 160),
            "e1",
        )
        .await;
        assert_urls(&image, base);
        assert_eq!(image.srcset, format!("{base}/img/img1/w160.jpg 160w"));
    }
}

#[tokio::test]
async fn sha256_digests_are_stored_for_images_and_variants() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Vase", &[])).await;

    let with_digest = pb::AttachImageRequest {
        sha256: digest("a1"),
        ..attach_request(&product.id, "img1")
    };
    let attached = client
        .attach_image(bearer(with_digest, &seller.token))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(attached.sha256, digest("a1"));
    let without = attach(&mut client, &seller.token, &product.id, "img2").await;
    assert_eq!(without.sha256, "");

    let mut thumb = variant(&product.id, "img1", 160);
    thumb.sha256 = digest("b2");
    record_ok(&mut client, &thumbnail, "img1", thumb, "e160").await;
    record_ok(
        &mut client,
        &thumbnail,
        "img1",
        variant(&product.id, "img1", 320),
        "e320",
    )
    .await;
    let image = client
        .get_image(bearer(
            pb::GetImageRequest {
                image_id: "img1".into(),
            },
            &seller.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(image.sha256, digest("a1"));
    let digests: Vec<&str> = image.variants.iter().map(|v| v.sha256.as_str()).collect();
    assert_eq!(digests, [digest("b2").as_str(), ""]);

    // Anything but empty or 64 lowercase hex digits is refused.
    for bad in [digest("A1"), "a1".repeat(31), digest("zz"), "a1".repeat(33)] {
        let refused = client
            .attach_image(bearer(
                pb::AttachImageRequest {
                    sha256: bad.clone(),
                    ..attach_request(&product.id, "img3")
                },
                &seller.token,
            ))
            .await;
        assert_violations(refused, &["sha256"]);
        let mut thumb = variant(&product.id, "img2", 160);
        thumb.sha256 = bad;
        assert_violations(
            record(&mut client, &thumbnail, "img2", thumb, "bad").await,
            &["variant.sha256"],
        );
    }
}

fn sign_request(image_id: &str, variant: &str, ttl_seconds: u32) -> pb::SignImageUrlRequest {
    pb::SignImageUrlRequest {
        image_id: image_id.into(),
        variant: variant.into(),
        ttl_seconds,
    }
}

/// Asserts the minted URL names `path`, verifies under the harness key until it expires about
/// `ttl` seconds from now, and nowhere else.
#[track_caller]
fn assert_signed(response: &pb::SignImageUrlResponse, path: &str, ttl: i64) {
    let (signed_path, query) = response.url_path.split_once('?').unwrap();
    assert_eq!(signed_path, path);
    assert_eq!(response.url, format!("{BASE}{}", response.url_path));
    let expires = response.expire_time.unwrap().seconds;
    let now = now_secs();
    assert!(
        (now + ttl - 5..=now + ttl).contains(&expires),
        "expires {expires}, now {now}, ttl {ttl}"
    );
    let keys = SigningKeys::new([SIGNING_KEY]).unwrap();
    let at = u64::try_from(now).unwrap();
    assert_eq!(keys.verify(path, query, at), Ok(()));
    let expired = u64::try_from(expires + 1).unwrap();
    assert_eq!(
        keys.verify(path, query, expired),
        Err(SignatureError::Expired)
    );
    let other = SigningKeys::new(["another key, not the catalog's"]).unwrap();
    assert_eq!(other.verify(path, query, at), Err(SignatureError::Invalid));
    assert_eq!(
        keys.verify("/img/other/original", query, at),
        Err(SignatureError::Invalid)
    );
}

#[tokio::test]
async fn sign_image_url_mints_verifiable_urls_for_owners_and_admins() {
    let harness = Harness::start().await;
    let seller = harness.seller("seller@example.com").await;
    let other = harness.seller("other@example.com").await;
    let admin = harness.admin().await;
    let thumbnail = harness.service("thumbnail").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Vase", &[])).await;
    attach(&mut client, &seller.token, &product.id, "img1").await;
    record_ok(
        &mut client,
        &thumbnail,
        "img1",
        variant(&product.id, "img1", 160),
        "e160",
    )
    .await;

    let original = client
        .sign_image_url(bearer(sign_request("img1", "", 0), &seller.token))
        .await
        .unwrap()
        .into_inner();
    assert_signed(&original, "/img/img1/original", 3600);
    let thumb = client
        .sign_image_url(bearer(sign_request("img1", "w160", 60), &seller.token))
        .await
        .unwrap()
        .into_inner();
    assert_signed(&thumb, "/img/img1/w160.jpg", 60);
    let by_admin = client
        .sign_image_url(bearer(sign_request("img1", "", 604_800), &admin.token))
        .await
        .unwrap()
        .into_inner();
    assert_signed(&by_admin, "/img/img1/original", 604_800);

    assert_code(
        client
            .sign_image_url(bearer(sign_request("img1", "", 0), &other.token))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .sign_image_url(bearer(sign_request("img1", "", 0), &thumbnail))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .sign_image_url(bearer(sign_request("img1", "w320", 0), &seller.token))
            .await,
        Code::NotFound,
    );
    assert_code(
        client
            .sign_image_url(bearer(sign_request("nope", "", 0), &seller.token))
            .await,
        Code::NotFound,
    );
    assert_violations(
        client
            .sign_image_url(bearer(sign_request("img1", "", 604_801), &seller.token))
            .await,
        &["ttl_seconds"],
    );
    assert_violations(
        client
            .sign_image_url(bearer(sign_request("a/b", "W 160", 0), &seller.token))
            .await,
        &["image_id", "variant"],
    );
    assert_code(
        client
            .sign_image_url(tonic::Request::new(sign_request("img1", "", 0)))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn sign_image_url_needs_a_configured_key() {
    let harness = Harness::start_with(|settings| {
        settings.catalog.image_url_signing_keys.clear();
    })
    .await;
    let seller = harness.seller("seller@example.com").await;
    let mut client = harness.client().await;
    let product = create(&mut client, &seller.token, new_product("Vase", &[])).await;
    attach(&mut client, &seller.token, &product.id, "img1").await;
    let status = client
        .sign_image_url(bearer(sign_request("img1", "", 0), &seller.token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "no image URL signing key is configured");
}
