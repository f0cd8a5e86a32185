//! End to end, as a user runs it: `storemesh up` (real child processes: redis-server, auth,
//! catalog, storage, gateway, the edge runtime with the real components, the dispatcher), the
//! `storemesh` client commands, uploads over HTTP to the upload hook, and faults made with
//! SIGKILL while uploads are in flight.
#![allow(clippy::unwrap_used)]

mod images;
mod up;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::storage::v1 as storage_pb;
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_testkit::process::{OutputLines, terminate};
use tonic::transport::Channel;
use up::{Up, address, storemesh_bin};

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A seller registered and signed in with the client commands; returns (session file, token).
fn seller(up: &Up, name: &str) -> (PathBuf, String) {
    let session = up.data.path().join(format!("{name}.session.json"));
    let email = format!("{name}@example.com");
    let session_str = session.to_str().unwrap();
    up.cli_json(
        &session,
        &[
            "register",
            "--email",
            &email,
            "--json",
            "--session-file",
            session_str,
        ],
        Some("a good long password\n"),
    );
    let signed_in = up.cli_json(
        &session,
        &["login", "--email", &email, "--json"],
        Some("a good long password\n"),
    );
    assert_eq!(signed_in["role"], "seller");
    let saved: Value = serde_json::from_slice(&std::fs::read(&session).unwrap()).unwrap();
    (session, saved["access_token"].as_str().unwrap().to_owned())
}

fn create_product(up: &Up, session: &Path, title: &str) -> String {
    let product = up.cli_json(
        session,
        &[
            "products", "create", "--title", title, "--price", "9.99", "--json",
        ],
        None,
    );
    product["id"].as_str().unwrap().to_owned()
}

/// Uploads with the same idempotency key until the hook answers with a final status (retrying
/// through restarts of the edge runtime or storage); returns (status, body).
async fn upload(
    http: &reqwest::Client,
    up_edge: &str,
    token: &str,
    product: &str,
    content_type: &str,
    bytes: Vec<u8>,
    key: &str,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let result = http
            .post(format!("{up_edge}/v1/products/{product}/images"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .header("idempotency-key", key)
            .body(bytes.clone())
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        match result {
            Ok(response) if ![429, 502, 503, 504].contains(&response.status().as_u16()) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                return (status, body);
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                assert!(
                    Instant::now() < deadline,
                    "upload kept failing: {status} {text}"
                );
            }
            Err(error) => assert!(Instant::now() < deadline, "upload kept failing: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the image is READY or FAILED (reads through the gateway, retrying through
/// restarts).
async fn settled(up: &Up, token: &str, image_id: &str, within: Duration) -> catalog_pb::Image {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Ok(channel) = Channel::from_shared(up.gateway.clone())
            .unwrap()
            .connect()
            .await
        {
            let mut catalog = CatalogServiceClient::new(channel);
            if let Ok(response) = catalog
                .get_image(bearer(
                    catalog_pb::GetImageRequest {
                        image_id: image_id.to_owned(),
                    },
                    token,
                ))
                .await
            {
                let image = response.into_inner().image.unwrap();
                if image.state() != catalog_pb::ImageState::Processing {
                    return image;
                }
                last = Some(image);
            }
        }
        assert!(
            Instant::now() < deadline,
            "image {image_id} still not settled: {last:?}\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn download(storage: &mut StorageServiceClient<Channel>, token: &str, key: &str) -> Vec<u8> {
    let mut stream = storage
        .download(bearer(
            storage_pb::DownloadRequest {
                key: key.to_owned(),
                offset: 0,
                length: 0,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(storage_pb::download_response::Payload::Chunk(chunk)) = message.payload {
            bytes.extend_from_slice(&chunk);
        }
    }
    bytes
}

/// Every stored thumbnail object of an image.
async fn thumbnail_keys(
    storage: &mut StorageServiceClient<Channel>,
    token: &str,
    product: &str,
    image_id: &str,
) -> Vec<String> {
    storage
        .list(bearer(
            storage_pb::ListRequest {
                prefix: format!("products/{product}/thumbnails/{image_id}/"),
                page_size: 100,
                page_token: String::new(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .objects
        .into_iter()
        .map(|object| object.key)
        .collect()
}

fn assert_ready_with_three_variants(image: &catalog_pb::Image) {
    assert_eq!(image.state(), catalog_pb::ImageState::Ready, "{image:?}");
    let names: BTreeSet<&str> = image.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["w160", "w320", "w640"]), "{image:?}");
    assert_eq!(image.variants.len(), 3, "no duplicate variants: {image:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_scenario_through_the_client_commands() {
    let up = Up::start();
    let (session, token) = seller(&up, "seller");
    let product = create_product(&up, &session, "Camera");

    // A 12 MP photo, uploaded by the client command (streamed, progress bar hidden by --json).
    let photo = up.data.path().join("photo.jpg");
    std::fs::write(&photo, images::jpeg(4000, 3000)).unwrap();
    let created = up.cli_json(
        &session,
        &[
            "upload",
            photo.to_str().unwrap(),
            "--product",
            &product,
            "--json",
        ],
        None,
    );
    assert_eq!(created["state"], "PROCESSING", "{created}");
    assert_eq!(created["width"], 4000);
    assert_eq!(created["height"], 3000);
    let image_id = created["image_id"].as_str().unwrap().to_owned();

    let ready = up.cli_json(
        &session,
        &["images", "wait", &image_id, "--timeout", "300", "--json"],
        None,
    );
    assert_eq!(ready["state"], "READY", "{ready}");

    // Every thumbnail downloads, decodes and has the right size.
    let image = settled(&up, &token, &image_id, Duration::from_secs(10)).await;
    assert_ready_with_three_variants(&image);
    let mut storage = StorageServiceClient::new(up.channel().await);
    for variant in &image.variants {
        let bound: u32 = variant.name.trim_start_matches('w').parse().unwrap();
        let expected = (bound, bound * 3 / 4);
        let bytes = download(&mut storage, &token, &variant.storage_key).await;
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), expected, "{variant:?}");
        assert_eq!((variant.width, variant.height), expected);
    }
    let shown = up.cli_json(&session, &["products", "get", &product, "--json"], None);
    assert_eq!(shown["images"][0]["state"], "READY");
    assert_eq!(shown["visibility"], "DRAFT");

    // Shoppers: a draft's thumbnail is not public; published, it is, at the URL the catalog
    // gives (the edge `up` runs), and the original stays the seller's.
    let http = reqwest::Client::new();
    let thumbnail_url = up.cli_json(
        &session,
        &["images", "url", &image_id, "--variant", "w320", "--json"],
        None,
    )["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        thumbnail_url,
        format!("{}/img/{image_id}/w320.jpg", up.edge)
    );
    let anonymous = http.get(&thumbnail_url).send().await.unwrap();
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "a draft's thumbnail needs credentials"
    );
    let published = up.cli_json(&session, &["products", "publish", &product, "--json"], None);
    assert_eq!(published["visibility"], "PUBLISHED");
    let anonymous = http.get(&thumbnail_url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 200);
    assert_eq!(
        anonymous.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let decoded = image::load_from_memory(&anonymous.bytes().await.unwrap()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    let original = up.cli(&session, &["images", "url", &image_id], None);
    let original_url = String::from_utf8(original.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let anonymous = http.get(&original_url).send().await.unwrap();
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "the original is the seller's"
    );
    // The seller downloads it (through the edge, with the session's token) byte for byte, and
    // shares it for a while with a signed URL.
    let saved = up.data.path().join("downloaded.jpg");
    up.cli_json(
        &session,
        &[
            "images",
            "download",
            &image_id,
            "-o",
            saved.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(std::fs::read(&saved).unwrap() == std::fs::read(&photo).unwrap());
    let signed = up.cli_json(
        &session,
        &[
            "images", "url", &image_id, "--sign", "--ttl", "60", "--json",
        ],
        None,
    );
    let signed_url = signed["url"].as_str().unwrap();
    assert!(signed_url.contains("signature="), "{signed}");
    let shared = http.get(signed_url).send().await.unwrap();
    assert_eq!(shared.status().as_u16(), 200);
    assert_eq!(shared.headers()["cache-control"], "private, no-store");
    // Anonymous storefront reads through the gateway: the published product, without a token.
    let mut storefront = CatalogServiceClient::new(up.channel().await);
    let listed = storefront
        .list_products(catalog_pb::ListProductsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.products.iter().any(|p| p.id == product),
        "{listed:?}"
    );
    up.cli_json(
        &session,
        &["products", "unpublish", &product, "--json"],
        None,
    );
    let listed = storefront
        .list_products(catalog_pb::ListProductsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        !listed.products.iter().any(|p| p.id == product),
        "{listed:?}"
    );

    // A forged delivery to the thumbnail route is refused.
    let forged = reqwest::Client::new()
        .post(format!("{}/internal/thumbnail", up.edge))
        .header("content-type", "application/x-protobuf")
        .header(
            "x-storemesh-delivery-timestamp",
            storemesh_system_tests::unix_now().to_string(),
        )
        .header("x-storemesh-signature", format!("v1={}", "ab".repeat(32)))
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);

    sessions_end_with_change_password_and_logout_all(&up, &session);
}

/// `storemesh change-password` ends the account's other sessions (their access tokens too,
/// not only their refresh tokens) and keeps this one; `storemesh logout --all` ends every one.
fn sessions_end_with_change_password_and_logout_all(up: &Up, session: &Path) {
    let email = "seller@example.com";
    let login = |path: &Path, password: &str| {
        up.cli(
            path,
            &["login", "--email", email, "--json"],
            Some(&format!("{password}\n")),
        )
    };
    let creates = |path: &Path| {
        up.cli(
            path,
            &["products", "create", "--title", "Check", "--json"],
            None,
        )
        .status
        .success()
    };
    // Services re-check a cached token's revocation at least every
    // `tokens.revocation_check_interval_ms` (1 s): refused within a few seconds.
    let refused_soon = |path: &Path| {
        (0..20).any(|_| {
            let refused = !creates(path);
            if !refused {
                std::thread::sleep(Duration::from_millis(250));
            }
            refused
        })
    };
    let other_device = up.data.path().join("other-device.json");
    assert!(
        login(&other_device, "a good long password")
            .status
            .success()
    );
    assert!(creates(&other_device));

    up.cli_json(
        session,
        &[
            "change-password",
            "--password",
            "a good long password",
            "--new-password",
            "an even better password",
            "--json",
        ],
        None,
    );
    assert!(creates(session), "this session continues");
    assert!(
        refused_soon(&other_device),
        "the other device's unexpired access token stops working"
    );
    assert!(
        !login(&other_device, "a good long password")
            .status
            .success()
    );
    assert!(
        login(&other_device, "an even better password")
            .status
            .success()
    );
    assert!(creates(&other_device));

    up.cli_json(session, &["logout", "--all", "--json"], None);
    assert!(refused_soon(&other_device), "signed out everywhere");
}

/// A developer's own edge (`storemesh up --edge-url`, then the printed `spin up` command in
/// another terminal): the mesh runs without the embedded edge, writes the functions' Spin
/// variables, and the seed scenario completes through the separately started functions. Here
/// the "Spin" is `storemesh serve edge` started exactly as the printed command says (the
/// variables sourced from `spin.env` as `SPIN_VARIABLE_*`, which both hosts read the same way),
/// since no Spin CLI can be installed on these machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn own_edge_with_edge_url_completes_the_seed_scenario() {
    let mut up = Up::start_with(true);
    up.wait_for("Ctrl-C stops everything.", Duration::from_secs(10));
    let log = up.output.lines().join("\n");
    let edge_addr = up.edge.trim_start_matches("http://").to_owned();
    assert!(
        !log.contains("    edge |"),
        "no embedded edge runtime was started:\n{log}"
    );
    let env_file = up.data.path().canonicalize().unwrap().join("edge/spin.env");
    assert!(
        log.contains(&format!(
            ". {} && spin build && spin up --listen {edge_addr}",
            env_file.display()
        )),
        "the printed Spin command:\n{log}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "spin.env holds secrets"
    );
    let variables = std::fs::read_to_string(&env_file).unwrap();
    for name in [
        "GATEWAY_URL",
        "THUMBNAIL_CLIENT_SECRET",
        "DELIVERY_SIGNING_SECRET",
        "THUMBNAIL_SIZES",
        "IMAGES_CLIENT_SECRET",
        "IMAGE_URL_SIGNING_KEYS",
    ] {
        assert!(
            variables.contains(&format!("export SPIN_VARIABLE_{name}=")),
            "{name} in {variables}"
        );
    }

    // The developer's terminal: the variables sourced, the functions served from the
    // application directory with every edge setting at its default but the ports.
    let (app_dir, _manifest) = storemesh_system_tests::linked_manifest(None);
    let edge_admin = address();
    let mut edge = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && exec '{}' serve edge",
            env_file.display(),
            storemesh_bin().display()
        ))
        .current_dir(app_dir.path())
        .env("STOREMESH_EDGE__LISTEN", &edge_addr)
        .env("STOREMESH_EDGE__ADMIN_LISTEN", &edge_admin)
        .env(
            "STOREMESH_EDGE__CACHE_DIR",
            std::env::temp_dir().join("storemesh-system-tests-edge-cache"),
        )
        .env_remove("STOREMESH_EDGE__MANIFEST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let edge_output = OutputLines::capture(&mut edge);
    struct Stop<'a>(&'a mut Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            terminate(self.0, Duration::from_secs(20));
        }
    }
    let edge = Stop(&mut edge);
    up.wait_for("edge functions answer at", Duration::from_secs(300));

    let (session, token) = seller(&up, "developer");
    let product = create_product(&up, &session, "Teapot");
    let photo = up.data.path().join("teapot.jpg");
    std::fs::write(&photo, images::jpeg(1600, 1200)).unwrap();
    // The client commands reach the developer's edge (`STOREMESH_EDGE_URL`, see `cli`).
    let created = up.cli_json(
        &session,
        &[
            "upload",
            photo.to_str().unwrap(),
            "--product",
            &product,
            "--json",
        ],
        None,
    );
    assert_eq!(created["state"], "PROCESSING", "{created}");
    let image_id = created["image_id"].as_str().unwrap().to_owned();
    let image = settled(&up, &token, &image_id, Duration::from_secs(120)).await;
    assert_ready_with_three_variants(&image);
    // The upload and the thumbnail deliveries went through the developer's edge.
    let metrics = reqwest::get(format!("http://{edge_admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for component in ["upload-hook", "thumbnail"] {
        let served: f64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("edge_invocations_total{")
                    && line.contains(&format!("component=\"{component}\""))
                    && line.contains("status=\"2")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            served >= 1.0,
            "{component} served nothing on the developer's edge:\n{metrics}\n{}",
            edge_output.tail(50)
        );
    }
    drop(edge);
}

/// 50 uploads at once from five sellers: every image READY with exactly its three variants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_uploads_all_become_ready() {
    let up = Up::start();
    let http = reqwest::Client::new();
    let photo = images::jpeg(1200, 900);
    let mut sellers = Vec::new();
    for index in 0..5 {
        let (session, token) = seller(&up, &format!("seller{index}"));
        let product = create_product(&up, &session, &format!("Product {index}"));
        sellers.push((token, product));
    }
    let mut uploads = tokio::task::JoinSet::new();
    for n in 0..50 {
        let (token, product) = sellers[n % sellers.len()].clone();
        let (http, edge, photo) = (http.clone(), up.edge.clone(), photo.clone());
        uploads.spawn(async move {
            let (status, body) = upload(
                &http,
                &edge,
                &token,
                &product,
                "image/jpeg",
                photo,
                &format!("k{n}"),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            (
                token,
                product,
                body["image_id"].as_str().unwrap().to_owned(),
            )
        });
    }
    let created: Vec<(String, String, String)> = uploads.join_all().await;
    let mut storage = StorageServiceClient::new(up.channel().await);
    for (token, product, image_id) in &created {
        let image = settled(&up, token, image_id, Duration::from_secs(300)).await;
        assert_ready_with_three_variants(&image);
        assert_eq!(
            thumbnail_keys(&mut storage, token, product, image_id)
                .await
                .len(),
            3
        );
    }
    let distinct: BTreeSet<&String> = created.iter().map(|(_, _, id)| id).collect();
    assert_eq!(distinct.len(), 50);
}

/// The dispatcher, the edge runtime, storage and Redis are each SIGKILLed while uploads are in
/// flight (`up` restarts them): every upload ends READY, none lost, none duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_survive_killed_processes_and_a_redis_restart() {
    let mut up = Up::start();
    let http = reqwest::Client::new();
    let (session, token) = seller(&up, "seller");
    let product = create_product(&up, &session, "Survivor");
    let photo = images::jpeg(1600, 1200);

    let mut keys = Vec::new();
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    for (round, victim) in ["dispatcher", "edge", "storage", "redis"]
        .iter()
        .enumerate()
    {
        let mut uploads = tokio::task::JoinSet::new();
        for n in 0..6 {
            let key = format!("r{round}-{n}");
            keys.push(key.clone());
            let (http, edge, photo, token, product) = (
                http.clone(),
                up.edge.clone(),
                photo.clone(),
                token.clone(),
                product.clone(),
            );
            uploads.spawn(async move {
                // Spread the uploads over the kill.
                tokio::time::sleep(Duration::from_millis(150 * n)).await;
                let (status, body) =
                    upload(&http, &edge, &token, &product, "image/jpeg", photo, &key).await;
                assert_eq!(status, 201, "{key}: {body}");
                (key, body["image_id"].as_str().unwrap().to_owned())
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        up.kill_child(victim);
        for (key, image_id) in uploads.join_all().await {
            created.insert(key, image_id);
        }
    }
    assert_eq!(created.len(), keys.len());
    let mut storage = StorageServiceClient::new(up.channel().await);
    for image_id in created.values() {
        let image = settled(&up, &token, image_id, Duration::from_secs(300)).await;
        assert_ready_with_three_variants(&image);
        assert_eq!(
            thumbnail_keys(&mut storage, &token, &product, image_id)
                .await
                .len(),
            3
        );
    }
    // One image per idempotency key: nothing duplicated by the retries.
    let mut catalog = CatalogServiceClient::new(up.channel().await);
    let listed = catalog
        .list_product_images(bearer(
            catalog_pb::ListProductImagesRequest {
                product_id: product.clone(),
                page_size: 500,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), created.len(), "{listed:?}");
}

/// A memory bomb and a truncated JPEG end FAILED with a reason and a dead-letter entry;
/// good uploads at the same time are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_uploads_fail_cleanly_next_to_good_ones() {
    let up = Up::start();
    let http = reqwest::Client::new();
    let (session, token) = seller(&up, "seller");
    let product = create_product(&up, &session, "Mixed");
    let good = images::jpeg(1000, 750);
    let truncated = images::truncated(&good, good.len() / 3);
    let bomb = images::png_bomb(7_000, 7_000, 64);

    let mut uploads = tokio::task::JoinSet::new();
    for (n, (content_type, bytes)) in [
        ("image/jpeg", good.clone()),
        ("image/jpeg", truncated),
        ("image/jpeg", good.clone()),
        ("image/png", bomb),
        ("image/jpeg", good),
    ]
    .into_iter()
    .enumerate()
    {
        let (http, edge, token, product) = (
            http.clone(),
            up.edge.clone(),
            token.clone(),
            product.clone(),
        );
        uploads.spawn(async move {
            let (status, body) = upload(
                &http,
                &edge,
                &token,
                &product,
                content_type,
                bytes,
                &format!("h{n}"),
            )
            .await;
            assert_eq!(status, 201, "{n}: {body}");
            (n, body["image_id"].as_str().unwrap().to_owned())
        });
    }
    let mut created = uploads.join_all().await;
    created.sort();
    let mut failed_ids = Vec::new();
    for (n, image_id) in &created {
        let image = settled(&up, &token, image_id, Duration::from_secs(300)).await;
        if [1, 3].contains(n) {
            assert_eq!(
                image.state(),
                catalog_pb::ImageState::Failed,
                "{n}: {image:?}"
            );
            assert!(!image.failure_reason.is_empty());
            failed_ids.push(image_id.clone());
        } else {
            assert_ready_with_three_variants(&image);
        }
    }
    // Each failure left a dead-letter entry naming its original.
    let admin_session = up.data.path().join("unused-session.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = up.cli(&admin_session, &["events", "dlq", "list", "--json"], None);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if failed_ids
            .iter()
            .all(|id| text.contains(&format!("/originals/{id}")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead letters missing: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
