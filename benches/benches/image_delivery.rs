//! Image delivery: a published product's cached thumbnail served over HTTP by the `images` edge
//! function of a real `storemesh up` (separate processes, as Storemesh runs), against **nginx**
//! serving the very same file from disk, in the same run.
//!
//! - `GET` of the variant, 32 concurrent HTTP/1.1 keep-alive clients (h2load `--h1`, as browsers
//!   and CDNs fetch images): req/s and p99, Storemesh ÷ nginx. Goals: ≥ 0.25×, p99 < 20 ms.
//! - `304` revalidations (`If-None-Match` with each server's own ETag): req/s, Storemesh ÷ nginx.
//!   Goal: ≥ 0.5×.
//! - The edge runtime's resident memory during the runs (`VmRSS` sampled every 100 ms, the
//!   highest). Goal: < 256 MiB.
//!
//! Rounds alternate Storemesh and nginx so both see the same machine. Needs `h2load` (Debian
//! `nghttp2-client`) and `nginx` (scripts/bench installs them); without them the anchor or the
//! load is reported as not measured. `STOREMESH_BENCH_SMOKE=1`: one short round.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use storemesh_benches::h2load::{self, Run};
use storemesh_benches::report::{self, Check, Goal};
use storemesh_benches::{images, median};
use storemesh_proto::catalog::v1 as catalog_pb;
use storemesh_testkit::free_port;

use common::{bearer, memory_mib, new_product, ports, service_pids, start_up, upload};

const CONCURRENCY: usize = 32;

/// nginx serving `root` on a loopback port, the way a static image origin would: sendfile,
/// keep-alive, ETags, no access log (Storemesh's edge writes none per request either).
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

fn start_nginx(binary: &Path, root: &Path) -> Result<Nginx, String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let port = free_port().map_err(|error| error.to_string())?;
    let config = dir.path().join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
             types {{ image/jpeg jpg; }}\n\
             client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {root};\n\
             location / {{ add_header Cache-Control \"public, max-age=31536000, immutable\"; }} }}\n}}\n",
            dir = dir.path().display(),
            root = root.display(),
        ),
    )
    .map_err(|error| error.to_string())?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("{}: {error}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nginx did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Nginx {
        child,
        port,
        _dir: dir,
    })
}

/// One GET: (status, ETag, body).
async fn get(url: &str) -> Result<(u16, String, Bytes), String> {
    let response = reqwest::get(url).await.map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.map_err(|error| error.to_string())?;
    Ok((status, etag, body))
}

/// A published product with one READY image; the URL path of its `w320` variant.
async fn published_variant(
    gateway: SocketAddr,
    edge: SocketAddr,
    data_dir: &Path,
    jpeg: Bytes,
) -> Result<String, String> {
    let (token, catalog) = common::admin_session(gateway, data_dir).await;
    let product = new_product(&catalog, &token).await?;
    let image_id = upload(edge, &product, &token, jpeg).await?;
    let image = common::wait_ready(
        &catalog,
        &token,
        &image_id,
        Duration::from_millis(20),
        Duration::from_secs(120),
    )
    .await?;
    catalog
        .clone()
        .update_product(bearer(
            catalog_pb::UpdateProductRequest {
                product: Some(catalog_pb::Product {
                    id: product,
                    visibility: catalog_pb::ProductVisibility::Published.into(),
                    ..catalog_pb::Product::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["visibility".into()],
                }),
                ..catalog_pb::UpdateProductRequest::default()
            },
            &token,
        ))
        .await
        .map_err(|status| format!("publishing: {status}"))?;
    image
        .variants
        .iter()
        .find(|variant| variant.name == "w320")
        .map(|variant| variant.url_path.clone())
        .ok_or_else(|| format!("no w320 variant in {image:?}"))
}

#[derive(Default)]
struct Series {
    get: Vec<Run>,
    revalidate: Vec<Run>,
}

impl Series {
    fn median_rps(runs: &[Run]) -> f64 {
        median(&runs.iter().map(|r| r.requests_per_sec).collect::<Vec<_>>())
    }
    fn median_p99(runs: &[Run]) -> f64 {
        median(&runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>())
    }
}

fn main() {
    // cargo bench passes `--bench`; `cargo test` runs bench targets without it: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let smoke = storemesh_benches::smoke();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir().unwrap();
    let ports = ports();
    let mut up = start_up(&data.path().join("up"), &ports, "image-delivery-up.log");
    up.wait_for("Storemesh is up.", Duration::from_secs(600))
        .unwrap_or_else(|message| panic!("{message}"));
    let gateway = SocketAddr::from(([127, 0, 0, 1], ports.gateway));
    let edge = SocketAddr::from(([127, 0, 0, 1], ports.edge));
    let edge_pid = service_pids(up.child.id())
        .into_iter()
        .find(|(name, _)| name == "edge")
        .map(|(_, pid)| pid);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let photo = Bytes::from(if smoke {
        images::photo_jpeg(640, 480)
    } else {
        images::photo_jpeg(1152, 864)
    });
    let path = runtime
        .block_on(published_variant(
            gateway,
            edge,
            &data.path().join("up"),
            photo,
        ))
        .unwrap_or_else(|message| panic!("setting up the published image: {message}"));
    let storemesh_url = format!("http://{edge}{path}");
    let (status, storemesh_etag, bytes) = runtime.block_on(get(&storemesh_url)).unwrap();
    assert_eq!(status, 200, "anonymous GET of {storemesh_url}");

    // The same bytes as a file for nginx.
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("w320.jpg"), &bytes).unwrap();
    let nginx = nginx_binary().map(|binary| start_nginx(&binary, root.path()));
    let nginx_url = match &nginx {
        Some(Ok(nginx)) => Some(format!("http://127.0.0.1:{}/w320.jpg", nginx.port)),
        _ => None,
    };
    let nginx_etag = nginx_url.as_ref().map(|url| {
        let (status, etag, served) = runtime.block_on(get(url)).unwrap();
        assert_eq!(
            (status, served.len()),
            (200, bytes.len()),
            "nginx serves the file"
        );
        etag
    });

    let Some(h2load_path) = h2load::find() else {
        println!(
            "Image delivery: **not measured** — h2load is not installed (Debian `nghttp2-client`)."
        );
        return;
    };
    // The edge runtime's resident memory, sampled while the load runs.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = edge_pid.map(|pid| {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(memory_mib(pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    });
    let (rounds, seconds) = if smoke { (1, 1) } else { (3, 8) };
    let duration = Duration::from_secs(seconds);
    let mut storemesh = Series::default();
    let mut anchor = Series::default();
    for _ in 0..rounds {
        let targets: [(&mut Series, Option<&String>, Option<&String>); 2] = [
            (&mut storemesh, Some(&storemesh_url), Some(&storemesh_etag)),
            (&mut anchor, nginx_url.as_ref(), nginx_etag.as_ref()),
        ];
        for (series, url, etag) in targets {
            let (Some(url), Some(etag)) = (url, etag) else {
                continue;
            };
            let run = h2load::run_get(&h2load_path, url, &[], true, 200, CONCURRENCY, duration)
                .unwrap_or_else(|error| panic!("GET {url}: {error}"));
            assert!(
                run.data_bytes >= run.succeeded * bytes.len() as u64,
                "every GET of {url} carried the whole file"
            );
            series.get.push(run);
            let revalidation = [format!("if-none-match: {etag}")];
            let run = h2load::run_get(
                &h2load_path,
                url,
                &revalidation,
                true,
                304,
                CONCURRENCY,
                duration,
            )
            .unwrap_or_else(|error| panic!("revalidating {url}: {error}"));
            assert_eq!(run.data_bytes, 0, "a 304 carries no body");
            series.revalidate.push(run);
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let edge_peak_mib = sampler.and_then(|sampler| sampler.join().ok());
    drop(up);

    println!();
    println!(
        "The `w320` thumbnail ({} bytes) of a published product, {CONCURRENCY} concurrent HTTP/1.1 \
         keep-alive clients (h2load `--h1`), {rounds} alternating round(s) of {seconds} s each; \
         medians.",
        bytes.len()
    );
    println!();
    println!("| server | GET req/s | GET p50 ms | GET p99 ms | 304 req/s | 304 p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (name, series) in [
        (
            "Storemesh (`images` function on the edge runtime)",
            &storemesh,
        ),
        ("nginx (static file, sendfile)", &anchor),
    ] {
        if series.get.is_empty() {
            println!("| {name} | not measured | | | | |");
            continue;
        }
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} |",
            Series::median_rps(&series.get),
            median(&series.get.iter().map(|r| r.p50_ms).collect::<Vec<_>>()),
            Series::median_p99(&series.get),
            Series::median_rps(&series.revalidate),
            Series::median_p99(&series.revalidate),
        );
    }
    println!();
    if let Some(Err(error)) = &nginx {
        println!("nginx: **not measured** — {error}.");
    } else if nginx.is_none() {
        println!("nginx: **not measured** — not installed (Debian `nginx`).");
    }
    if !anchor.get.is_empty() {
        report::record(&Check::new(
            "image_delivery",
            "cached variant GET req/s ÷ nginx",
            Series::median_rps(&storemesh.get) / Series::median_rps(&anchor.get),
            "×",
            Some(Goal::AtLeast(0.25)),
        ));
        report::record(&Check::new(
            "image_delivery",
            "304 revalidation req/s ÷ nginx",
            Series::median_rps(&storemesh.revalidate) / Series::median_rps(&anchor.revalidate),
            "×",
            Some(Goal::AtLeast(0.5)),
        ));
    }
    report::record(&Check::new(
        "image_delivery",
        "cached variant GET p99",
        Series::median_p99(&storemesh.get),
        "ms",
        Some(Goal::AtMost(20.0)),
    ));
    if let Some(peak) = edge_peak_mib {
        report::record(&Check::new(
            "image_delivery",
            "edge runtime RSS during the load (peak of 100 ms samples)",
            peak,
            "MiB",
            Some(Goal::AtMost(256.0)),
        ));
    }
}
