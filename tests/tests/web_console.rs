//! The seller console and the storefront in a real browser: Debian's Chromium, driven by
//! Playwright (`web/tests/console.e2e.mjs`), against a real `storemesh up` on free ports whose
//! edge serves the built front end (`web/dist`, built by `scripts/web`).
#![allow(clippy::unwrap_used)]

mod images;
mod up;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use up::{Up, repo_root};

/// Where the screenshots go (kept after the test, for people and CI artifacts).
fn artifacts_dir() -> PathBuf {
    repo_root().join("web/test-results")
}

/// The browser the test drives: `CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{} is missing: {what} (`scripts/web` builds the front end and installs its npm packages; \
         `scripts/setup` installs Debian's chromium)",
        path.display()
    );
}

#[test]
fn a_seller_and_a_shopper_use_the_web_front_end_in_a_real_browser() {
    let web = repo_root().join("web");
    require(&web.join("dist/index.html"), "the built front end");
    require(&web.join("node_modules/playwright-core"), "Playwright");
    require(&chromium(), "Chromium");

    // Two photos and one JPEG cut off after its header: it uploads, then fails to decode.
    let files = tempfile::tempdir().unwrap();
    let good = images::jpeg(1600, 1200);
    let inputs = [
        ("oak-lamp-front.jpg", good.clone()),
        ("oak-lamp-side.jpg", images::jpeg(900, 1200)),
        (
            "oak-lamp-broken.jpg",
            images::truncated(&good, good.len() / 3),
        ),
    ];
    for (name, bytes) in &inputs {
        std::fs::write(files.path().join(name), bytes).unwrap();
    }

    let mut up = Up::start();
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    let output = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(web.join("tests/console.e2e.mjs"))
        .current_dir(&web)
        .env("STOREMESH_WEB_URL", &up.edge)
        .env("STOREMESH_TEST_IMAGES", files.path())
        .env("STOREMESH_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .output()
        .expect("node runs (Node.js is installed by scripts/setup)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        up.output.settle(Duration::from_millis(500));
        panic!(
            "the browser test failed ({}):\n{stdout}\n{stderr}\n--- storemesh up ---\n{}",
            output.status,
            up.log()
        );
    }
    println!("{stdout}");
    for screenshot in ["console.png", "storefront.png"] {
        let path = artifacts.join(screenshot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "{} was not saved ({size} bytes)",
            path.display()
        );
    }
}
