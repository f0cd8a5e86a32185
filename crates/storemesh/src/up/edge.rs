//! The edge functions for `storemesh up`: build the wasm components when their sources are at
//! hand (cargo decides what is stale) and write a copy of the Spin manifest whose `source`
//! paths point at the built files, wherever cargo put them, and whose `files` mount what they
//! mount from the original's directory; or, with `--edge-url`, hand the functions' variables to
//! a developer's own `spin up`.

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
        // `files` and `exclude_files` are relative to the manifest's directory too.
        storemesh_edge::files::relocate(table, &app_dir)
            .map_err(|message| anyhow::anyhow!("component {id}: {message}"))?;
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

/// Edge functions the developer runs (`spin up`, or `storemesh serve edge` elsewhere) instead
/// of the embedded runtime.
#[derive(Debug)]
pub struct OwnEdge {
    /// `scheme://host[:port]`, what deliveries and uploads are sent to.
    origin: String,
    /// `host:port` for `spin up --listen`.
    listen: String,
}

/// The client commands' default edge (`--edge`, `STOREMESH_EDGE_URL`), also Spin's default.
const DEFAULT_EDGE_ORIGIN: &str = "http://127.0.0.1:3000";

impl OwnEdge {
    /// Accepts an origin such as `http://127.0.0.1:3000` (Spin serves the application at `/`,
    /// so a path other than `/` would not reach the functions' routes).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| {
            format!("--edge-url {url:?} is not a URL (e.g. {DEFAULT_EDGE_ORIGIN})")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--edge-url {url:?}: the scheme must be http or https");
        }
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            bail!("--edge-url {url:?} names no host");
        };
        if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
            bail!(
                "--edge-url {url:?}: give the origin only (Spin serves the functions' routes from /)"
            );
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            bail!("--edge-url {url:?}: credentials do not belong in the URL");
        }
        Ok(Self {
            origin: parsed.origin().ascii_serialization(),
            listen: format!("{host}:{port}"),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `SPIN_VARIABLE_*` exports of the functions' variables (Spin's environment-variable
    /// provider: the variable name upper-cased), mode 0600 since it holds secrets.
    pub fn write_spin_env(
        &self,
        data_dir: &Path,
        variables: &[(String, String)],
    ) -> anyhow::Result<PathBuf> {
        let path = spin_env_path(data_dir);
        let mut text = String::from(
            "# Spin variables of Storemesh's edge functions for this `storemesh up` (secrets: keep it private).\n\
             # Use: . ./spin.env && spin build && spin up\n",
        );
        for (name, value) in variables {
            text.push_str(&format!(
                "export SPIN_VARIABLE_{}={}\n",
                name.to_ascii_uppercase(),
                shell_quote(value)
            ));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_private(&path, &text)?;
        Ok(path)
    }

    /// How to complete the system with Spin, printed with `up`'s summary.
    pub fn print_instructions(&self, manifest: &Path, data_dir: &Path) {
        let app_dir = manifest.parent().unwrap_or(Path::new("."));
        let env_file = spin_env_path(data_dir);
        println!(
            "  edge functions: not started here (--edge-url {})",
            self.origin
        );
        println!("    run them with Spin in another terminal:");
        println!(
            "      cd {} && . {} && spin build && spin up --listen {}",
            shell_quote(&app_dir.display().to_string()),
            shell_quote(&env_file.display().to_string()),
            self.listen
        );
        println!(
            "    ({} holds the Spin variables: gateway URL, token settings, thumbnail sizes, the",
            env_file.display()
        );
        println!(
            "     thumbnail and images service accounts, the delivery and image URL signing keys)"
        );
        println!(
            "    deliveries: POST {}/internal/thumbnail; uploads: POST {}/v1/products/<product id>/images",
            self.origin, self.origin
        );
        if self.origin != DEFAULT_EDGE_ORIGIN {
            println!(
                "    client commands: --edge {} (or export STOREMESH_EDGE_URL={})",
                self.origin, self.origin
            );
        }
    }

    /// Says once when the developer's edge first answers Spin's health route, so the terminal
    /// shows the system is complete; deliveries until then are retried by the dispatcher.
    pub fn announce_when_up(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let health = format!("{}/.well-known/spin/health", self.origin);
        let origin = self.origin.clone();
        tokio::spawn(async move {
            let Ok(client) = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(1))
                .build()
            else {
                return;
            };
            loop {
                if client
                    .get(&health)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success())
                {
                    println!("edge functions answer at {origin}: the system is complete");
                    return;
                }
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

/// Where `up --edge-url` writes the functions' Spin variables.
pub fn spin_env_path(data_dir: &Path) -> PathBuf {
    data_dir.join("edge").join("spin.env")
}

/// Writes `text` to `path` readable by its owner only (also when the file existed before).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Single-quoted for POSIX shells unless it is plainly safe.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,=@+%".contains(&b));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn own_edge_urls_are_origins() {
        let edge = OwnEdge::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(edge.origin(), "http://127.0.0.1:3000");
        assert_eq!(edge.listen, "127.0.0.1:3000");
        let edge = OwnEdge::parse("http://localhost:3000/").unwrap();
        assert_eq!(edge.origin(), "http://localhost:3000");
        let edge = OwnEdge::parse("https://edge.example.com").unwrap();
        assert_eq!(edge.origin(), "https://edge.example.com");
        assert_eq!(edge.listen, "edge.example.com:443");
        for bad in [
            "127.0.0.1:3000",
            "ftp://127.0.0.1:3000",
            "http://127.0.0.1:3000/api",
            "http://127.0.0.1:3000/?x=1",
            "http://user:pw@127.0.0.1:3000",
        ] {
            assert!(OwnEdge::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spin_env_exports_each_variable_privately() {
        let dir = tempfile::tempdir().unwrap();
        let edge = OwnEdge::parse("http://127.0.0.1:3000").unwrap();
        let path = edge
            .write_spin_env(
                dir.path(),
                &[
                    ("gateway_url".into(), "http://127.0.0.1:50050".into()),
                    ("delivery_signing_secret".into(), "it's $ecret".into()),
                ],
            )
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("export SPIN_VARIABLE_GATEWAY_URL=http://127.0.0.1:50050\n"));
        assert!(text.contains("export SPIN_VARIABLE_DELIVERY_SIGNING_SECRET='it'\\''s $ecret'\n"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // What a shell makes of it.
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                ". {} && printf %s \"$SPIN_VARIABLE_DELIVERY_SIGNING_SECRET\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(output.stdout).unwrap(), "it's $ecret");
    }

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

    #[test]
    fn the_manifest_copy_mounts_the_originals_files() {
        let app = tempfile::tempdir().unwrap();
        let app_dir = app.path().canonicalize().unwrap();
        for file in ["prebuilt/site.wasm", "web/dist/index.html", "static/a.css"] {
            let path = app_dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file).unwrap();
        }
        std::fs::write(
            app_dir.join("spin.toml"),
            r#"spin_manifest_version = 2
[application]
name = "t"
[[trigger.http]]
route = "/..."
component = "site"
[component.site]
source = "prebuilt/site.wasm"
files = [{ source = "web/dist", destination = "/" }, "static/**/*"]
exclude_files = ["**/*.map"]
"#,
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let copy = prepare(&app_dir.join("spin.toml"), out.path(), false).unwrap();
        let document: toml::Table =
            toml::from_str(&std::fs::read_to_string(&copy).unwrap()).unwrap();
        let site = &document["component"]["site"];
        let files = site["files"].as_array().unwrap();
        let entry = |index: usize, key: &str| files[index][key].as_str().unwrap().to_owned();
        assert_eq!(
            entry(0, "source"),
            app_dir.join("web/dist").display().to_string()
        );
        assert_eq!(entry(0, "destination"), "/");
        assert_eq!(
            entry(1, "source"),
            app_dir.join("static").display().to_string()
        );
        assert_eq!(entry(1, "destination"), "/static");
        assert_eq!(
            site["exclude_files"][0].as_str().unwrap(),
            format!("{}/**/*.map", app_dir.display())
        );
        // And the runtime reads the copy.
        storemesh_edge::manifest::Manifest::load(&copy).unwrap();

        // A glob that cannot be relocated is refused, naming the component.
        let text = std::fs::read_to_string(app_dir.join("spin.toml"))
            .unwrap()
            .replace("\"static/**/*\"", "\"static/*.css\"");
        std::fs::write(app_dir.join("spin.toml"), text).unwrap();
        let error = prepare(&app_dir.join("spin.toml"), out.path(), false).unwrap_err();
        assert!(
            error.to_string().contains("component site: files[1]"),
            "{error}"
        );
    }
}
