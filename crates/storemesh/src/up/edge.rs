//! The edge functions for `storemesh up`: build the wasm components when their sources are at
//! hand (cargo decides what is stale) and write a copy of the Spin manifest whose `source`
//! paths point at the built files, wherever cargo put them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Builds the components of `manifest` (when asked and `edge-functions/Cargo.toml` sits next to
/// it) and returns the path of a resolved manifest in `out_dir`.
pub fn prepare(manifest: &Path, out_dir: &Path, build_components: bool) -> anyhow::Result<PathBuf> {
    let manifest = manifest.canonicalize().with_context(|| {
        format!(
            "cannot find the Spin manifest {}: run `storemesh up` from the repository root or \
                 set edge.manifest (STOREMESH_EDGE__MANIFEST)",
            manifest.display()
        )
    })?;
    let app_dir = manifest.parent().unwrap_or(Path::new("/")).to_path_buf();
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut document: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;

    let workspace = app_dir.join("edge-functions");
    let target_dir = build_target_dir(&workspace);
    if build_components && workspace.join("Cargo.toml").is_file() {
        build(&workspace, &target_dir, &document)?;
    }

    let components = document
        .get_mut("component")
        .and_then(toml::Value::as_table_mut)
        .context("the Spin manifest declares no [component.*]")?;
    for (id, component) in components.iter_mut() {
        let Some(table) = component.as_table_mut() else {
            continue;
        };
        let Some(source) = table.get("source").and_then(toml::Value::as_str) else {
            continue;
        };
        let resolved = resolve_source(&app_dir, &target_dir, source);
        if !resolved.is_file() {
            bail!(
                "component {id}: {} does not exist; build the edge functions first \
                 (`cargo build --release --target wasm32-wasip2` in edge-functions/)",
                resolved.display()
            );
        }
        table.insert(
            "source".into(),
            toml::Value::String(resolved.display().to_string()),
        );
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let resolved = out_dir.join("spin.toml");
    std::fs::write(&resolved, toml::to_string(&document)?)
        .with_context(|| format!("cannot write {}", resolved.display()))?;
    Ok(resolved)
}

/// Where cargo puts the wasm: `CARGO_TARGET_DIR` when set (a shared build cache), else the
/// edge workspace's own `target/` (what `spin build` uses).
fn build_target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| workspace.join("target"), PathBuf::from)
}

/// A component `source` under a `target/wasm32-wasip2/<profile>/` directory is looked up in
/// the build's target directory; anything else stays relative to the manifest.
fn resolve_source(app_dir: &Path, target_dir: &Path, source: &str) -> PathBuf {
    let path = Path::new(source);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let parts: Vec<&str> = source.split('/').collect();
    if let Some(index) = parts.iter().position(|part| *part == "wasm32-wasip2")
        && index > 0
        && parts[index - 1] == "target"
    {
        return parts[index..]
            .iter()
            .fold(target_dir.to_path_buf(), |dir, part| dir.join(part));
    }
    app_dir.join(path)
}

/// `cargo build --release --target wasm32-wasip2` of every component the manifest names.
fn build(workspace: &Path, target_dir: &Path, document: &toml::Table) -> anyhow::Result<()> {
    // The package is the `-p <name>` of the component's `spin build` command, else its id.
    let packages: Vec<String> = document
        .get("component")
        .and_then(toml::Value::as_table)
        .map(|components| {
            components
                .iter()
                .map(|(id, component)| {
                    component
                        .get("build")
                        .and_then(|build| build.get("command"))
                        .and_then(toml::Value::as_str)
                        .and_then(|command| {
                            let words: Vec<&str> = command.split_whitespace().collect();
                            words
                                .windows(2)
                                .find(|pair| pair[0] == "-p" || pair[0] == "--package")
                                .map(|pair| pair[1].to_owned())
                        })
                        .unwrap_or_else(|| id.clone())
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "building the edge functions ({}) for wasm32-wasip2...",
        packages.join(", ")
    );
    let mut command = Command::new("cargo");
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null());
    for package in &packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .context("cannot run cargo to build the edge functions (is Rust installed?)")?;
    if !status.success() {
        bail!(
            "building the edge functions failed ({status}); is the wasm32-wasip2 target installed \
             (`rustup target add wasm32-wasip2`)?"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_under_a_wasm_target_dir_follow_the_build() {
        let app = Path::new("/app");
        let target = Path::new("/cache/target");
        assert_eq!(
            resolve_source(
                app,
                target,
                "edge-functions/target/wasm32-wasip2/release/thumbnail.wasm"
            ),
            Path::new("/cache/target/wasm32-wasip2/release/thumbnail.wasm")
        );
        assert_eq!(
            resolve_source(app, target, "prebuilt/hook.wasm"),
            Path::new("/app/prebuilt/hook.wasm")
        );
        assert_eq!(
            resolve_source(app, target, "/abs/x.wasm"),
            Path::new("/abs/x.wasm")
        );
    }
}
