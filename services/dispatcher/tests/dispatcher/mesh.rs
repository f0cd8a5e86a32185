//! gRPC targets and the reconciler against the real auth, catalog and storage services:
//! `RecordVariant` from thumbnail events (with `NOT_FOUND` retried until the image is
//! attached), final refusals dead-lettered, and the classic flow repaired by the reconciler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use bytes::Bytes;
use prost::Message;
use redis::AsyncCommands;
use storemesh_dispatcher::config::{RECORD_VARIANT_TARGET, RouteConfig, TargetConfig, TargetKind};
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::events::v1 as pb;
use storemesh_proto::storage::v1 as storage_pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

use crate::harness::*;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR not really a picture";

async fn catalog(mesh: &Mesh) -> CatalogServiceClient<Channel> {
    CatalogServiceClient::new(mesh.catalog.channel().await.unwrap())
}

async fn product_with_image(mesh: &Mesh, image_id: &str, attach: bool) -> (String, String) {
    let admin = mesh.admin_token().await;
    let mut catalog = catalog(mesh).await;
    let product = catalog
        .create_product(bearer(
            catalog_pb::CreateProductRequest {
                title: "Lamp".into(),
                price: Some(catalog_pb::Money {
                    amount_minor: 1_000,
                    currency_code: "EUR".into(),
                }),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    if attach {
        attach_image(mesh, &product.id, image_id).await;
    }
    (product.id, admin)
}

async fn attach_image(mesh: &Mesh, product_id: &str, image_id: &str) {
    let admin = mesh.admin_token().await;
    catalog(mesh)
        .await
        .attach_image(bearer(
            catalog_pb::AttachImageRequest {
                product_id: product_id.into(),
                image_id: image_id.into(),
                storage_key: format!("products/{product_id}/originals/{image_id}"),
                content_type: "image/png".into(),
                size_bytes: PNG.len() as u64,
                width: 0,
                height: 0,
                sha256: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
}

async fn image(mesh: &Mesh, image_id: &str) -> catalog_pb::Image {
    let admin = mesh.admin_token().await;
    catalog(mesh)
        .await
        .get_image(bearer(
            catalog_pb::GetImageRequest {
                image_id: image_id.into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

fn thumbnail_event(product_id: &str, image_id: &str, size: u32) -> pb::Event {
    let width = size.to_string();
    let height = (size * 3 / 4).to_string();
    created(
        &format!("products/{product_id}/thumbnails/{image_id}/w{size}.png"),
        &[
            ("variant", &format!("w{size}")),
            ("width", &width),
            ("height", &height),
        ],
        "image/png",
    )
}

fn record_variant_config() -> storemesh_dispatcher::DispatcherConfig {
    let mut config = config("http://127.0.0.1:9/unused");
    config.max_attempts = 30;
    config.targets = BTreeMap::from([(
        RECORD_VARIANT_TARGET.to_owned(),
        TargetConfig {
            kind: TargetKind::RecordVariant,
            timeout_ms: 2_000,
            ..TargetConfig::default()
        },
    )]);
    config.routes = vec![RouteConfig {
        name: "thumbnails".into(),
        key_glob: "products/*/thumbnails/*/*".into(),
        target: RECORD_VARIANT_TARGET.into(),
        ..RouteConfig::default()
    }];
    config
}

#[tokio::test]
async fn thumbnail_events_record_variants_until_the_image_is_ready() {
    let mesh = Mesh::start(false).await;
    let mut redis = redis(&mesh.redis).await;
    let (product_id, _) = product_with_image(&mesh, "img-1", false).await;
    let dispatcher = Running::start(mesh.dispatcher(record_variant_config())).await;

    // The first thumbnail's event arrives before the image is attached: NOT_FOUND is retried.
    let first = thumbnail_event(&product_id, "img-1", 160);
    publish(&mut redis, &first).await;
    eventually("a retry is scheduled", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move {
            let retries: u64 = redis.zcard("dispatcher:retries").await.unwrap();
            retries > 0
        }
    })
    .await;
    attach_image(&mesh, &product_id, "img-1").await;
    for size in [320, 640] {
        publish(&mut redis, &thumbnail_event(&product_id, "img-1", size)).await;
    }
    // A redelivered event (same id) changes nothing.
    publish(&mut redis, &first).await;
    eventually("the image is READY", Duration::from_secs(15), || async {
        image(&mesh, "img-1").await.state() == catalog_pb::ImageState::Ready
    })
    .await;
    let ready = image(&mesh, "img-1").await;
    let names: Vec<&str> = ready.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["w160", "w320", "w640"]);
    assert_eq!(
        (ready.variants[1].width, ready.variants[1].height),
        (320, 240)
    );
    assert_eq!(ready.variants[0].format(), catalog_pb::ImageFormat::Png);
    assert!(dlq(&mut redis).await.is_empty());

    // Final refusals are dead-lettered: an event without dimensions, and a variant for an
    // image that failed.
    let mut broken = thumbnail_event(&product_id, "img-1", 1024);
    if let Some(pb::event::Data::ObjectCreated(data)) = &mut broken.data {
        data.metadata.remove("width");
    }
    publish(&mut redis, &broken).await;
    attach_image(&mesh, &product_id, "img-2").await;
    let admin = mesh.admin_token().await;
    catalog(&mesh)
        .await
        .mark_image_failed(bearer(
            catalog_pb::MarkImageFailedRequest {
                image_id: "img-2".into(),
                reason: "undecodable".into(),
                event_id: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let late = thumbnail_event(&product_id, "img-2", 160);
    publish(&mut redis, &late).await;
    eventually("both are dead-lettered", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move { dlq(&mut redis).await.len() == 2 }
    })
    .await;
    let letters = dlq(&mut redis).await;
    let of = |id: &str| letters.iter().find(|l| l["id"] == id).unwrap().clone();
    assert_eq!(of(&broken.id)["reason"], "non_retryable");
    assert!(of(&broken.id)["last_error"].contains("metadata `width` is missing"));
    assert_eq!(of(&late.id)["reason"], "non_retryable");
    assert!(
        of(&late.id)["last_error"].starts_with("gRPC FAILED_PRECONDITION"),
        "{letters:?}"
    );
    assert_eq!(of(&late.id)["target"], RECORD_VARIANT_TARGET);
    dispatcher.stop().await;
}

/// A stand-in thumbnail function: on a delivery for an original it uploads three thumbnails
/// (with the metadata the real one writes) to storage with a thumbnail service token, unless
/// told to lose the next `lose` jobs (answering 200 without doing anything).
#[derive(Clone)]
struct Thumbnailer {
    storage: StorageServiceClient<Channel>,
    token: String,
    lose: Arc<AtomicUsize>,
    deliveries: Arc<std::sync::Mutex<Vec<pb::Event>>>,
}

async fn thumbnail(State(function): State<Thumbnailer>, body: Bytes) -> axum::http::StatusCode {
    let Ok(delivery) = pb::Delivery::decode(body.as_ref()) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let event = delivery.event.unwrap_or_default();
    function.deliveries.lock().unwrap().push(event.clone());
    if function
        .lose
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return axum::http::StatusCode::OK;
    }
    let segments: Vec<&str> = event.subject.split('/').collect();
    let ["products", product_id, "originals", image_id] = segments.as_slice() else {
        return axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    };
    for size in [160_u32, 320, 640] {
        let header = storage_pb::UploadHeader {
            target: Some(storage_pb::upload_header::Target::Key(format!(
                "products/{product_id}/thumbnails/{image_id}/w{size}.png"
            ))),
            content_type: "image/png".into(),
            metadata: [
                ("variant".to_owned(), format!("w{size}")),
                ("width".to_owned(), size.to_string()),
                ("height".to_owned(), (size / 2).to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let messages = vec![
            storage_pb::UploadRequest {
                payload: Some(storage_pb::upload_request::Payload::Header(header)),
            },
            storage_pb::UploadRequest {
                payload: Some(storage_pb::upload_request::Payload::Chunk(PNG.to_vec())),
            },
        ];
        if function
            .storage
            .clone()
            .upload(bearer(futures::stream::iter(messages), &function.token))
            .await
            .is_err()
        {
            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    axum::http::StatusCode::OK
}

#[tokio::test]
async fn the_reconciler_repairs_a_lost_job_and_gives_up_on_a_hopeless_one() {
    let mesh = Mesh::start(true).await;
    let storage_host = mesh.storage.as_ref().unwrap();
    let storage = StorageServiceClient::new(storage_host.channel().await.unwrap());
    let function = Thumbnailer {
        storage: storage.clone(),
        token: mesh.service_token("thumbnail").await,
        // The first job for the first image is lost; the hopeless image loses every job.
        lose: Arc::new(AtomicUsize::new(1)),
        deliveries: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let function_addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .fallback(thumbnail)
        .with_state(function.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    // The shipped defaults (the classic flow), pointed at this mesh and function.
    let mut config = storemesh_dispatcher::DispatcherConfig {
        server: test_server(),
        block_ms: 200,
        claim_interval_ms: 200,
        retry_poll_ms: 50,
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        signing_secrets: vec![SECRET.into()],
        schedules: reconcile_schedule("rate(1 second)"),
        ..storemesh_dispatcher::DispatcherConfig::default()
    };
    config.targets.get_mut("thumbnail").unwrap().url =
        format!("http://{function_addr}/internal/thumbnail");
    config.targets.get_mut("thumbnail").unwrap().timeout_ms = 10_000;
    let dispatcher = Running::start(mesh.dispatcher(config)).await;

    // Upload an original (as the upload hook would) and attach it.
    let (product_id, admin) = product_with_image(&mesh, "unused", false).await;
    let upload = |image_id: &'static str| {
        let mut storage = storage.clone();
        let admin = admin.clone();
        let product_id = product_id.clone();
        async move {
            let header = storage_pb::UploadHeader {
                target: Some(storage_pb::upload_header::Target::Key(format!(
                    "products/{product_id}/originals/{image_id}"
                ))),
                content_type: "image/png".into(),
                ..Default::default()
            };
            storage
                .upload(bearer(
                    futures::stream::iter(vec![
                        storage_pb::UploadRequest {
                            payload: Some(storage_pb::upload_request::Payload::Header(header)),
                        },
                        storage_pb::UploadRequest {
                            payload: Some(storage_pb::upload_request::Payload::Chunk(PNG.to_vec())),
                        },
                    ]),
                    &admin,
                ))
                .await
                .unwrap();
        }
    };
    attach_image(&mesh, &product_id, "lost-job").await;
    upload("lost-job").await;

    // The first job is lost, so the image stays PROCESSING until the reconciler re-emits its
    // event; the second delivery makes the thumbnails, and the image becomes READY.
    eventually(
        "the lost job's image becomes READY",
        Duration::from_secs(30),
        || async { image(&mesh, "lost-job").await.state() == catalog_pb::ImageState::Ready },
    )
    .await;
    let deliveries = function.deliveries.lock().unwrap().clone();
    let original = format!("products/{product_id}/originals/lost-job");
    let for_original: Vec<&pb::Event> = deliveries
        .iter()
        .filter(|e| e.subject == original)
        .collect();
    assert!(for_original.len() >= 2, "{for_original:?}");
    assert_eq!(for_original[0].source, "storemesh.storage");
    assert_eq!(
        for_original[1].source,
        storemesh_dispatcher::reconciler::SOURCE
    );
    assert_ne!(for_original[0].id, for_original[1].id, "a new event id");
    let Some(pb::event::Data::ObjectCreated(data)) = &for_original[1].data else {
        panic!("re-emitted without data");
    };
    assert_eq!(data.size_bytes, PNG.len() as u64);
    assert_eq!(data.content_type, "image/png");

    // An image whose jobs always get lost is marked FAILED after max_reemits (2) re-emissions.
    function.lose.store(usize::MAX, Ordering::SeqCst);
    attach_image(&mesh, &product_id, "hopeless").await;
    upload("hopeless").await;
    eventually(
        "the hopeless image is FAILED",
        Duration::from_secs(30),
        || async { image(&mesh, "hopeless").await.state() == catalog_pb::ImageState::Failed },
    )
    .await;
    let failed = image(&mesh, "hopeless").await;
    assert!(
        failed.failure_reason.contains("not made after 2 retries"),
        "{failed:?}"
    );
    let hopeless_key = format!("products/{product_id}/originals/hopeless");
    let reemitted = function
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            e.subject == hopeless_key && e.source == storemesh_dispatcher::reconciler::SOURCE
        })
        .count();
    assert_eq!(reemitted, 2);
    let metrics = dispatcher.metrics().await;
    assert!(
        metrics.contains("dispatcher_schedule_runs_total{schedule=\"reconcile\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dispatcher_reconciler_reemitted_total"),
        "{metrics}"
    );
    let mut redis = redis(&mesh.redis).await;
    assert!(dlq(&mut redis).await.is_empty());
    let lock: Option<String> = redis.get("dispatcher:lock:reconcile").await.unwrap();
    assert!(lock.is_none(), "the run lock is released");
    dispatcher.stop().await;
    server.abort();
}

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

/// The dispatcher's calls are mesh calls (`storemesh_mesh::client`): its service token on
/// upstream `auth`, `RecordVariant` on upstream `catalog`.
#[tokio::test]
async fn the_service_token_and_record_variant_go_through_the_mesh() {
    // The recorder first: a series touched before it is installed is lost.
    let _ = storemesh_runtime::metrics::prometheus();
    let mesh = Mesh::start(false).await;
    let mut redis = redis(&mesh.redis).await;
    let (product_id, _) = product_with_image(&mesh, "img-1", true).await;
    let mut settings = mesh.dispatcher(record_variant_config());
    // The catalog fetches its keys from auth at 127.0.0.1; the dispatcher names auth
    // `localhost`, so the metrics tell its calls apart.
    settings.tokens.auth_endpoint = settings
        .tokens
        .auth_endpoint
        .replace("127.0.0.1", "localhost");
    let dispatcher = Running::start(settings).await;

    for size in [160, 320] {
        publish(&mut redis, &thumbnail_event(&product_id, "img-1", size)).await;
    }
    eventually(
        "both variants are recorded",
        Duration::from_secs(10),
        || async { image(&mesh, "img-1").await.variants.len() == 2 },
    )
    .await;
    let auth = format!("localhost:{}", mesh.auth.addr.port());
    assert_eq!(answered("auth", &auth), 1.0, "one service token, cached");
    // Two RecordVariant calls (and the reconciler's, if it ran).
    assert!(answered("catalog", &mesh.catalog.addr.to_string()) >= 2.0);
    dispatcher.stop().await;
}
