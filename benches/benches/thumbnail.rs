//! Thumbnails of a 12 MP JPEG (4000x3000, photographic-ish content, quality 90) in the three
//! default sizes (160, 320, 640 px on the longest side), in the same run:
//!
//! - **ours, native**: `storemesh_imaging::make_thumbnails` in this (release) process, and the
//!   same as a child process (this binary re-executed) so that start-up and peak RSS compare
//!   with the external tools';
//! - **ours, wasm**: the `edge-fixture-thumbnail-bench` component on the embedded edge runtime
//!   (wasmtime, pooling allocator, 256 MiB per instance), the JPEG as the POST body: request time,
//!   and the pipeline's own time inside the component;
//! - **vipsthumbnail** (libvips, Debian `libvips-tools`): 640 from the original with
//!   shrink-on-load, then 320 and 160 from the 640 (three processes);
//! - **ImageMagick** `/usr/bin/convert -define jpeg:size=… -thumbnail` writing the three sizes
//!   from one decode (one process, libjpeg shrink-on-load via `jpeg:size`).
//!
//! Every variant is written at JPEG quality 80. Process runs are timed with `/usr/bin/time -v`
//! (wall, user+sys CPU, maximum RSS). Goals: wasm ≤ 1.0× vipsthumbnail, native ≤ 0.5×.
//!
//! `cargo bench -p storemesh-benches --bench thumbnail` (7 runs each);
//! `STOREMESH_BENCH_SMOKE=1` for a 1200x900 image once. Needs the fixture:
//! `cargo build --release --target wasm32-wasip2 --manifest-path edge-functions/Cargo.toml -p
//! edge-fixture-thumbnail-bench` (scripts/test builds it), and installs `libvips-tools`,
//! `imagemagick` and `time` with apt-get when missing (skipping a tool it cannot install).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use storemesh_benches::images::photo_jpeg;
use storemesh_edge::{EdgeConfig, testing};
use storemesh_imaging::{Limits, ThumbnailSpec, make_thumbnails};

/// Set in the environment of the child process this binary starts to run the pipeline once.
const CHILD_ENV: &str = "STOREMESH_THUMBNAIL_BENCH_CHILD";
const FIXTURE: &str = "edge-fixture-thumbnail-bench";
const QUALITY: u8 = 80;

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "thumbnail-bench"
[[trigger.http]]
route = "/thumbnail"
component = "thumbnail"
[component.thumbnail]
source = "SOURCE"
"#;

fn spec() -> ThumbnailSpec {
    ThumbnailSpec {
        jpeg_quality: QUALITY,
        ..ThumbnailSpec::default()
    }
}

/// The child mode: thumbnail `input` into `out_dir`, as the external tools do.
fn child(input: &Path, out_dir: &Path) {
    let bytes = std::fs::read(input).unwrap();
    for thumbnail in make_thumbnails(&bytes, &spec(), &Limits::default()).unwrap() {
        let name = format!("{}.{}", thumbnail.name, thumbnail.format.extension());
        std::fs::write(out_dir.join(name), &thumbnail.bytes).unwrap();
    }
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64) {
    (
        values.iter().copied().fold(f64::INFINITY, f64::min),
        values.iter().copied().fold(0.0, f64::max),
    )
}

#[derive(Default)]
struct Series {
    wall_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    max_rss_kib: Vec<f64>,
}

impl Series {
    fn wall(&self) -> f64 {
        median(&self.wall_ms)
    }
}

/// Runs `script` under `/usr/bin/time -v` and records wall, CPU and maximum RSS.
fn timed_process(script: &str, env: &[(&str, &str)], series: &mut Series) {
    let mut command = Command::new("/usr/bin/time");
    command.arg("-v").arg("sh").arg("-c").arg(script);
    for (key, value) in env {
        command.env(key, value);
    }
    let started = Instant::now();
    let output = command.output().unwrap();
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stderr}");
    let field = |name: &str| -> f64 {
        stderr
            .lines()
            .find_map(|line| line.trim().strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    series.wall_ms.push(wall.as_secs_f64() * 1e3);
    series
        .cpu_ms
        .push((field("User time (seconds):") + field("System time (seconds):")) * 1e3);
    series
        .max_rss_kib
        .push(field("Maximum resident set size (kbytes):"));
}

/// `apt-get install` of the Debian packages providing `binaries` when one is missing;
/// false when still missing.
fn ensure_tools(packages: &[&str], binaries: &[&str]) -> bool {
    let present = || binaries.iter().all(|b| Path::new(b).exists());
    if present() {
        return true;
    }
    eprintln!("installing {packages:?} with apt-get (for {binaries:?})");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    present()
}

fn check_outputs(dir: &Path, files: &[&str]) {
    for file in files {
        let bytes = std::fs::read(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
        assert_eq!(
            storemesh_imaging::sniff(&bytes),
            Some(storemesh_imaging::ImageFormat::Jpeg),
            "{file}"
        );
    }
}

struct Wasm {
    request_ms: Vec<f64>,
    pipeline_ms: Vec<f64>,
    rss_growth_kib: u64,
    simd: String,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn wasm_runs(input: &[u8], runs: usize, expected: &str) -> Result<Wasm, String> {
    let fixture = testing::fixture(FIXTURE).map_err(|message| {
        message.replace(
            "-p edge-fixture-bad-import",
            "-p edge-fixture-bad-import -p edge-fixture-thumbnail-bench",
        )
    })?;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        MANIFEST.replace("SOURCE", &fixture.display().to_string()),
    )
    .unwrap();
    let config = EdgeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        manifest,
        cache_dir: dir.path().join("cache"),
        execution_timeout_ms: 120_000,
        ..EdgeConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = storemesh_edge::build(&config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let body = Bytes::copy_from_slice(input);
        let send = |body: Bytes| async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = http::Request::post(format!("http://{addr}/thumbnail"))
                .header(http::header::HOST, addr.to_string())
                .header(http::header::CONTENT_TYPE, "image/jpeg")
                .body(Full::new(body))
                .unwrap();
            let started = Instant::now();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let simd = response
                .headers()
                .get("x-resize-simd")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            let micros: f64 = response
                .headers()
                .get("x-pipeline-micros")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(f64::NAN);
            let text = response.into_body().collect().await.unwrap().to_bytes();
            let elapsed = started.elapsed();
            let text = String::from_utf8_lossy(&text).into_owned();
            (status, text, elapsed, micros, simd)
        };
        // Warm-up: compiles (or loads from the cache) and instantiates once.
        let (status, text, _, _, simd) = send(body.clone()).await;
        if status != 200 {
            return Err(format!("fixture answered {status}: {text}"));
        }
        assert_eq!(dimensions_of(&text), expected, "wasm variants");
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = status_kib("VmRSS:");
        let mut wasm = Wasm {
            request_ms: Vec::new(),
            pipeline_ms: Vec::new(),
            rss_growth_kib: 0,
            simd,
        };
        for _ in 0..runs {
            let (status, text, elapsed, micros, _) = send(body.clone()).await;
            assert_eq!(status, 200, "{text}");
            wasm.request_ms.push(elapsed.as_secs_f64() * 1e3);
            wasm.pipeline_ms.push(micros / 1e3);
        }
        wasm.rss_growth_kib = status_kib("VmHWM:").saturating_sub(before);
        Ok(wasm)
    })
}

/// `w160 160x120 jpg 5321` lines → `w160 160x120, ...` (sizes only).
fn dimensions_of(lines: &str) -> String {
    lines
        .lines()
        .map(|line| line.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    if let Some(args) = std::env::var_os(CHILD_ENV) {
        let args = PathBuf::from(args);
        let input = args.join("input.jpg");
        child(&input, &args);
        return;
    }
    // cargo bench passes `--bench`; only run the benchmark itself then (not under `cargo test`).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let smoke = std::env::var_os("STOREMESH_BENCH_SMOKE").is_some();
    let ((width, height), runs) = if smoke {
        ((1200, 900), 1)
    } else {
        ((4000, 3000), 7)
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let input = photo_jpeg(width, height);
    let input_path = work.join("input.jpg");
    std::fs::write(&input_path, &input).unwrap();
    let input_arg = input_path.display().to_string();
    let w = work.display().to_string();
    println!(
        "input: {width}x{height} JPEG, quality 90, {:.1} MiB; sizes 160/320/640 at quality {QUALITY}; {runs} run(s) each",
        input.len() as f64 / (1024.0 * 1024.0)
    );

    // Ours, in process.
    let expected = {
        let thumbs = make_thumbnails(&input, &spec(), &Limits::default()).unwrap();
        thumbs
            .iter()
            .map(|t| format!("{} {}x{}", t.name, t.width, t.height))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "variants: {expected}; native resize SIMD: {}",
        storemesh_imaging::resize_simd()
    );
    let mut in_process = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let thumbs = make_thumbnails(&input, &spec(), &Limits::default()).unwrap();
        in_process.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(thumbs.len(), 3);
    }

    // Ours, as a process.
    let me = std::env::current_exe().unwrap().display().to_string();
    let mut ours = Series::default();
    for _ in 0..runs {
        timed_process(&format!("'{me}'"), &[(CHILD_ENV, &w)], &mut ours);
    }
    check_outputs(work, &["w160.jpg", "w320.jpg", "w640.jpg"]);

    let vips_script = format!(
        "vipsthumbnail '{input_arg}' -s 640 -o '{w}/v640.jpg[Q={QUALITY}]' && \
         vipsthumbnail '{w}/v640.jpg' -s 320 -o '{w}/v320.jpg[Q={QUALITY}]' && \
         vipsthumbnail '{w}/v640.jpg' -s 160 -o '{w}/v160.jpg[Q={QUALITY}]'"
    );
    let vips = ensure_tools(&["libvips-tools"], &["/usr/bin/vipsthumbnail"]).then(|| {
        let mut series = Series::default();
        for _ in 0..runs {
            timed_process(&vips_script, &[], &mut series);
        }
        check_outputs(work, &["v160.jpg", "v320.jpg", "v640.jpg"]);
        series
    });
    // What one vipsthumbnail process costs at the least: the 640 alone, and its start-up.
    let vips_single = vips.is_some().then(|| {
        let (mut single, mut startup) = (Series::default(), Series::default());
        for _ in 0..runs {
            timed_process(
                &format!("vipsthumbnail '{input_arg}' -s 640 -o '{w}/s640.jpg[Q={QUALITY}]'"),
                &[],
                &mut single,
            );
            timed_process(
                "vipsthumbnail --vips-version > /dev/null",
                &[],
                &mut startup,
            );
        }
        (single, startup)
    });
    let convert_script = format!(
        "/usr/bin/convert -define jpeg:size=1280x1280 '{input_arg}' -quality {QUALITY} \
         -thumbnail 640x640 -write '{w}/m640.jpg' -thumbnail 320x320 -write '{w}/m320.jpg' \
         -thumbnail 160x160 '{w}/m160.jpg'"
    );
    let convert = ensure_tools(&["imagemagick"], &["/usr/bin/convert"]).then(|| {
        let mut series = Series::default();
        for _ in 0..runs {
            timed_process(&convert_script, &[], &mut series);
        }
        check_outputs(work, &["m160.jpg", "m320.jpg", "m640.jpg"]);
        series
    });
    let wasm = wasm_runs(&input, runs, &expected);

    // Report.
    let baseline = vips.as_ref().map(Series::wall);
    let ratio = |ms: f64| baseline.map_or("—".to_owned(), |b| format!("{:.2}", ms / b));
    let fmt_spread = |values: &[f64]| {
        let (low, high) = spread(values);
        format!("{low:.1}–{high:.1}")
    };
    println!();
    println!(
        "| {width}x{height} JPEG → 160/320/640 | wall ms (median) | min–max | CPU ms | peak RSS MiB | × vipsthumbnail |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, series: &Series| {
        println!(
            "| {name} | {:.1} | {} | {:.1} | {:.1} | {} |",
            series.wall(),
            fmt_spread(&series.wall_ms),
            median(&series.cpu_ms),
            median(&series.max_rss_kib) / 1024.0,
            ratio(series.wall()),
        );
    };
    match &vips {
        Some(series) => row("vipsthumbnail ×3 (baseline)", series),
        None => println!("| vipsthumbnail | skipped: libvips-tools not installable | | | | |"),
    }
    if let Some((single, startup)) = &vips_single {
        row("vipsthumbnail, the 640 only (1 process)", single);
        row("vipsthumbnail start-up only (--vips-version)", startup);
    }
    match &convert {
        Some(series) => row("ImageMagick convert -thumbnail", series),
        None => println!("| ImageMagick convert | skipped: imagemagick not installable | | | | |"),
    }
    row("ours native, process", &ours);
    println!(
        "| ours native, in process | {:.1} | {} | — | — | {} |",
        median(&in_process),
        fmt_spread(&in_process),
        ratio(median(&in_process))
    );
    match &wasm {
        Ok(wasm) => {
            println!(
                "| ours wasm on the edge runtime, request (resize SIMD: {}) | {:.1} | {} | — | +{:.1} (process growth) | {} |",
                wasm.simd,
                median(&wasm.request_ms),
                fmt_spread(&wasm.request_ms),
                wasm.rss_growth_kib as f64 / 1024.0,
                ratio(median(&wasm.request_ms))
            );
            println!(
                "| ours wasm, pipeline inside the component | {:.1} | {} | — | — | {} |",
                median(&wasm.pipeline_ms),
                fmt_spread(&wasm.pipeline_ms),
                ratio(median(&wasm.pipeline_ms))
            );
        }
        Err(message) => println!("| ours wasm | skipped: {message} | | | | |"),
    }
    if let (Some(convert), Some(vips)) = (&convert, &vips) {
        println!();
        println!(
            "ours/convert (process): {:.2}; ours/vips (process): {:.2}",
            ours.wall() / convert.wall(),
            ours.wall() / vips.wall()
        );
    }
    if let Some((single, _)) = &vips_single {
        println!(
            "ours/vips with vips making the 640 only (1 process, wall): native {:.2}, wasm request {:.2}",
            ours.wall() / single.wall(),
            wasm.as_ref()
                .map_or(f64::NAN, |wasm| median(&wasm.request_ms) / single.wall())
        );
        if let Some(vips) = &vips {
            println!(
                "CPU time (user+sys), ours native process / vipsthumbnail ×3: {:.2}",
                median(&ours.cpu_ms) / median(&vips.cpu_ms)
            );
        }
    }
    println!();
    println!("Goals: wasm ≤ 1.0× vipsthumbnail, native ≤ 0.5× vipsthumbnail (wall time).");
    println!();
    record_checks(&vips, &convert, &ours, &wasm);
}

/// The goal checks for the report (`storemesh_benches::report`).
fn record_checks(
    vips: &Option<Series>,
    convert: &Option<Series>,
    ours: &Series,
    wasm: &Result<Wasm, String>,
) {
    use storemesh_benches::report::{Check, Goal, record};
    if let Some(vips) = vips {
        record(&Check::new(
            "thumbnail",
            "native (process) wall ÷ vipsthumbnail",
            ours.wall() / vips.wall(),
            "×",
            Some(Goal::AtMost(0.5)),
        ));
        if let Ok(wasm) = wasm {
            record(&Check::new(
                "thumbnail",
                "wasm on the edge runtime (request) ÷ vipsthumbnail",
                median(&wasm.request_ms) / vips.wall(),
                "×",
                Some(Goal::AtMost(1.0)),
            ));
        }
    }
    if let Some(convert) = convert {
        record(&Check::new(
            "thumbnail",
            "native (process) wall ÷ ImageMagick convert",
            ours.wall() / convert.wall(),
            "×",
            None,
        ));
    }
    record(&Check::new(
        "thumbnail",
        "native (process) peak RSS",
        median(&ours.max_rss_kib) / 1024.0,
        "MiB",
        None,
    ));
}
