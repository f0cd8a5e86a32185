//! Locating the test fixture components (built from `edge-functions/fixtures/`) for tests and
//! benchmarks.

use std::path::{Path, PathBuf};

/// The command that builds the fixtures (also the line in `scripts/test`).
pub const BUILD_COMMAND: &str = "cargo build --release --target wasm32-wasip2 --manifest-path edge-functions/Cargo.toml -p edge-fixture-app -p edge-fixture-hello -p edge-fixture-bad-import";

/// Where a fixture may have been built, in no particular order: `$STOREMESH_EDGE_FIXTURES`,
/// `$CARGO_TARGET_DIR/wasm32-wasip2/release` (what `scripts/test` uses), the edge-functions
/// workspace's own `target/`, and the shared caches under `~/.cache/storemesh/`.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("STOREMESH_EDGE_FIXTURES") {
        dirs.push(PathBuf::from(dir));
    }
    let release = Path::new("wasm32-wasip2").join("release");
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(target).join(&release));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dirs.push(repo.join("edge-functions/target").join(&release));
    if let Some(home) = std::env::var_os("HOME") {
        let cache = PathBuf::from(home).join(".cache/storemesh");
        dirs.push(cache.join("target").join(&release));
        dirs.push(cache.join("edge-target").join(&release));
    }
    dirs
}

/// The newest build of fixture `crate_name` (e.g. `edge-fixture-app`), or a message saying
/// where it was looked for and how to build it.
pub fn fixture(crate_name: &str) -> Result<PathBuf, String> {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let dirs = candidate_dirs();
    dirs.iter()
        .map(|dir| dir.join(&file))
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
        .ok_or_else(|| {
            format!(
                "test fixture {file} not found (looked in {}); build the fixtures first, from the repository root:\n    {BUILD_COMMAND}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}
