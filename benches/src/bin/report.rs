//! `storemesh-bench-report --results DIR --out BENCHMARKS.md --chart benchmarks.svg [--smoke]`:
//! assembles what scripts/bench collected in DIR (each harness=false benchmark's Markdown
//! output as `<bench>.md`, the goal checks in `checks.jsonl`, criterion's estimates under
//! `DIR/criterion`) with the machine description and `benches/FINDINGS.md` into one report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use storemesh_benches::machine::Machine;
use storemesh_benches::report::{
    Check, Estimate, Goal, chart_svg, checks_table, criterion_estimate, number, read_checks,
};

/// The benchmarks in report order, with what each one measures.
const SECTIONS: &[(&str, &str)] = &[
    (
        "grpc_load",
        "`GetProduct` over gRPC (h2load, fixed concurrency), direct to the catalog and through the gateway, against a bare tonic hello server built by the benchmark.",
    ),
    (
        "storage_throughput",
        "Upload and download of one object over loopback gRPC against `cp` + `sync` of the same file, and the peak RSS growth of the process during each transfer.",
    ),
    (
        "thumbnail",
        "Thumbnails of a 12 MP JPEG to 160/320/640 px: ours native and inside wasm on the edge runtime, against `vipsthumbnail` and ImageMagick `convert -thumbnail`.",
    ),
    (
        "edge",
        "Edge runtime: per-request instantiation of a hello component and hello req/s over HTTP/1.1, against a native hyper handler.",
    ),
    (
        "auth",
        "Auth: JWT verifications/s against the bare Ed25519 check, and `Login` latency at the default Argon2id cost against the hash check alone.",
    ),
    (
        "dispatch",
        "Event dispatcher (`cargo bench -p storemesh-dispatcher --bench dispatch`): events/s from the Redis stream to signed, acknowledged HTTP deliveries, against the same signed POSTs sent straight to the target.",
    ),
    (
        "system",
        "The whole system under `storemesh up` (one process per service): upload → READY latency and images/s, and idle and loaded RSS of each service.",
    ),
    (
        "image_delivery",
        "A published thumbnail served over HTTP by the `images` edge function of `storemesh up` (GET and `304` revalidations, 32 HTTP/1.1 clients), against nginx serving the same file from disk; the edge runtime's memory during the load.",
    ),
];

struct Args {
    results: PathBuf,
    out: PathBuf,
    chart: PathBuf,
    findings: Option<PathBuf>,
    smoke: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut results = None;
    let mut out = None;
    let mut chart = None;
    let mut findings = None;
    let mut smoke = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--results" => results = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--chart" => chart = Some(PathBuf::from(value()?)),
            "--findings" => findings = Some(PathBuf::from(value()?)),
            "--smoke" => smoke = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        results: results.ok_or("--results DIR is required")?,
        out: out.ok_or("--out FILE is required")?,
        chart: chart.ok_or("--chart FILE is required")?,
        findings,
        smoke,
    })
}

fn estimate_row(name: &str, estimate: &Estimate, per_iteration: f64, unit: &str) -> String {
    // Throughput from time per iteration: the interval bounds swap sides.
    let rate = |ns: f64| per_iteration / (ns / 1e9);
    if unit == "/s" {
        format!(
            "| {name} | {} | {}–{} |",
            number(rate(estimate.median_ns)),
            number(rate(estimate.high_ns)),
            number(rate(estimate.low_ns))
        )
    } else {
        let scale = match unit {
            "µs" => 1e3,
            "ms" => 1e6,
            _ => 1.0,
        };
        format!(
            "| {name} | {} | {}–{} |",
            number(estimate.median_ns / scale),
            number(estimate.low_ns / scale),
            number(estimate.high_ns / scale)
        )
    }
}

/// The auth and edge benchmarks use criterion; their tables and checks come from its estimates.
fn criterion_section(bench: &str, home: &Path, checks: &mut Vec<Check>) -> Option<String> {
    let get = |group: &str, function: &str| criterion_estimate(home, group, function);
    let mut out = String::new();
    match bench {
        "auth" => {
            let (bare, jwt) = (
                get("token", "ed25519_verify_only")?,
                get("token", "verify_jwt")?,
            );
            out.push_str("| measure | verifications/s (median) | 95 % CI |\n|---|---|---|\n");
            out.push_str(&estimate_row(
                "Ed25519 verify alone (baseline)",
                &bare,
                1.0,
                "/s",
            ));
            out.push('\n');
            out.push_str(&estimate_row(
                "JWT verify (parse, signature, claims)",
                &jwt,
                1.0,
                "/s",
            ));
            out.push('\n');
            checks.push(Check::new(
                bench,
                "JWT verifications/s",
                1e9 / jwt.median_ns,
                "/s",
                None,
            ));
            checks.push(Check::new(
                bench,
                "JWT verify ÷ bare Ed25519 (throughput)",
                bare.median_ns / jwt.median_ns,
                "×",
                None,
            ));
            if let (Some(argon), Some(login)) =
                (get("login", "argon2id_verify"), get("login", "grpc_login"))
            {
                out.push_str("\n| measure | latency ms (median) | 95 % CI |\n|---|---|---|\n");
                out.push_str(&estimate_row(
                    "Argon2id verify alone (baseline)",
                    &argon,
                    1.0,
                    "ms",
                ));
                out.push('\n');
                out.push_str(&estimate_row(
                    "gRPC Login (Redis, Argon2id, signing)",
                    &login,
                    1.0,
                    "ms",
                ));
                out.push('\n');
                checks.push(Check::new(
                    bench,
                    "Login latency",
                    login.median_ns / 1e6,
                    "ms",
                    None,
                ));
                checks.push(Check::new(
                    bench,
                    "Login ÷ Argon2id verify alone (latency)",
                    login.median_ns / argon.median_ns,
                    "×",
                    None,
                ));
            }
        }
        "edge" => {
            const BATCH: f64 = 256.0;
            let instantiate = get("edge_instantiate", "hello_component")?;
            out.push_str("| measure | median | 95 % CI |\n|---|---|---|\n");
            out.push_str(&estimate_row(
                "instantiate hello component (µs)",
                &instantiate,
                1.0,
                "µs",
            ));
            out.push('\n');
            checks.push(Check::new(
                bench,
                "edge instantiation",
                instantiate.median_ns / 1e3,
                "µs",
                Some(Goal::AtMost(100.0)),
            ));
            if let (Some(native), Some(wasm)) = (
                get("edge_throughput", "native_hyper"),
                get("edge_throughput", "wasm_hello"),
            ) {
                out.push_str(&estimate_row(
                    "native hyper hello, req/s (baseline)",
                    &native,
                    BATCH,
                    "/s",
                ));
                out.push('\n');
                out.push_str(&estimate_row(
                    "wasm hello on the edge runtime, req/s",
                    &wasm,
                    BATCH,
                    "/s",
                ));
                out.push('\n');
                checks.push(Check::new(
                    bench,
                    "wasm hello req/s",
                    BATCH / (wasm.median_ns / 1e9),
                    "/s",
                    Some(Goal::AtLeast(10_000.0)),
                ));
                checks.push(Check::new(
                    bench,
                    "wasm hello ÷ native hyper (req/s)",
                    native.median_ns / wasm.median_ns,
                    "×",
                    None,
                ));
            }
        }
        _ => return None,
    }
    Some(out)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let mut checks = read_checks(&args.results)?;
    let criterion_home = args.results.join("criterion");
    let machine = Machine::describe();
    let started_load = std::fs::read_to_string(args.results.join("loadavg-start"))
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let commit = std::fs::read_to_string(args.results.join("commit"))
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());

    let mut sections = String::new();
    for (bench, what) in SECTIONS {
        sections.push_str(&format!("\n## {bench}\n\n{what}\n\n"));
        let captured = args.results.join(format!("{bench}.md"));
        match criterion_section(bench, &criterion_home, &mut checks) {
            Some(table) => sections.push_str(&table),
            None => match std::fs::read_to_string(&captured) {
                // Plain-text output (no Markdown table) is shown as it was printed.
                Ok(text) if text.contains("|---") => sections.push_str(text.trim()),
                Ok(text) => sections.push_str(&format!("```\n{}\n```", text.trim())),
                Err(_) if matches!(*bench, "auth" | "edge") => sections.push_str(
                    "Not measured in this run (criterion ran each benchmark once in test mode, \
                     or the benchmark did not run).",
                ),
                Err(error) => {
                    sections.push_str(&format!("Not measured in this run ({error})."));
                }
            },
        }
        sections.push('\n');
    }

    let chart_name = args
        .chart
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    chart_svg(
        &checks,
        &args.chart,
        "Storemesh: figures against their goals",
    )?;

    let mode = if args.smoke {
        "**smoke mode** (tiny sizes, one iteration: these figures only prove the code runs)"
    } else {
        "full mode"
    };
    let findings = match &args.findings {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?
        }
        None => String::new(),
    };
    let report = format!(
        "# Storemesh benchmarks\n\n\
         Generated by `scripts/bench` ({mode}) at commit `{commit}`. Every figure with a ratio was \
         measured against its baseline in the same run; the machine is shared and noisy, so the \
         ratios are what to track, not the absolute figures.\n\n\
         Load average (1/5/15 min, runnable/total, last pid) at the start: `{started_load}`, at \
         the end: `{}` on {} logical CPUs — a load near or above the CPU count means other work \
         (builds of other sessions) competed with the benchmark.\n\n\
         ## Machine\n\n{}\n\
         ## Goals\n\n{}\n![figures against their goals]({chart_name})\n\n\
         Bars show how much of its goal each figure uses (≤ 1.0 met).\n{sections}\n{findings}",
        machine.load_average,
        machine.logical_cpus,
        machine.markdown(),
        checks_table(&checks),
    );
    std::fs::write(&args.out, report)
        .map_err(|error| format!("{}: {error}", args.out.display()))?;
    println!("wrote {} and {}", args.out.display(), args.chart.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("storemesh-bench-report: {message}");
            ExitCode::FAILURE
        }
    }
}
