//! `files` and `exclude_files`: what a component sees through `wasi:filesystem`.
//!
//! Spin (3.x/4.x) provides `wasi:filesystem` to every component and preopens a component's
//! `files` **read-only** (`crates/factor-wasi/src/lib.rs`, `MountFilesContext::preopened_dir`
//! with `DirPerms::READ`/`FilePerms::READ` unless `--allow-transient-writes`); a component without
//! `files` gets no preopen at all. `spin up` prepares the files once, when the application loads
//! (`crates/loader/src/local.rs`), in one of two ways (`src/commands/up.rs`):
//!
//! - **copy** (the default): every file the entries name is copied into a private working
//!   directory, `<temp>/assets/<component id>/`, which is preopened as `/`. A pattern string
//!   (`"static/**/*"`) places each matching file at its path relative to the application
//!   directory; `{ source = "dir", destination = "/d" }` places the directory's files under `/d`;
//!   `{ source = "file", destination = "/f" }` one file. `exclude_files` patterns are matched
//!   against each file's path relative to the application directory.
//! - **direct** (`spin up --direct-mounts`): each entry must be a directory, preopened at its
//!   destination as it is on disk (no copy, changes show at once); `exclude_files` is refused.
//!
//! This runtime picks per component, at load ([`prepare`]): when every entry is a
//! `{ source = <directory>, destination }` table, no `exclude_files` are set and no destination
//! is the same as or inside another, the directories are mounted **directly** (what
//! `--direct-mounts` does, and exactly what the copy would show at those paths); anything else
//! is **copied** once, the way `spin up` copies, into a temporary directory removed with the
//! application. Either way every directory is opened once at load and each request's store gets
//! a clone of the handles ([`PreparedFiles::filesystem`]): an instance pays no copy and no
//! `open` for its files. (A directly mounted directory that is deleted and re-created, rather
//! than having its contents replaced, needs a restart.)
//!
//! Checked at load, with errors naming the component: a missing source, a file source given a
//! directory destination, a pattern naming nothing that is not a glob. Checked when the manifest
//! is read (`crate::manifest`): destinations must be absolute (Spin's copy strips the leading
//! `/` and would take `"static"` as `/static`), and relative sources and patterns may not climb
//! out of the application directory with `..` (Spin compares paths without resolving `..`, so it
//! lets them through). A source may be an absolute path (as `--direct-mounts` allows; Spin's
//! copy refuses files outside the application directory): `exclude_files` patterns are then
//! matched against the absolute path of files outside the application directory, which is what
//! [`relocate`] relies on.

use std::path::{Path, PathBuf};

use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::manifest::{ComponentDecl, FilesMount};

/// A component's files could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("component `{component}`: files: {message}")]
pub struct FilesError {
    pub component: String,
    pub message: String,
}

/// Where copies go: one private temporary directory for the whole application, created when a
/// component first needs it and removed when this value is dropped (with the application).
#[derive(Default)]
pub struct Staging {
    dir: Option<tempfile::TempDir>,
}

impl Staging {
    /// A fresh, empty directory for the copies of component `id`.
    fn component_root(&mut self, id: &str) -> std::io::Result<PathBuf> {
        let dir = match &self.dir {
            Some(dir) => dir,
            None => self.dir.insert(
                tempfile::Builder::new()
                    .prefix("storemesh-edge-files-")
                    .tempdir()?,
            ),
        };
        let root = dir.path().join(id);
        std::fs::create_dir_all(&root)?;
        Ok(root)
    }
}

/// One preopened directory: `host` is seen by the guest as `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
}

/// How a component's files reach its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// No `files`: no preopens (as in Spin, the guest still links `wasi:filesystem`).
    None,
    /// Each directory preopened where it is, at its destination.
    Direct(Vec<Preopen>),
    /// Copied once into a private directory preopened as `/`.
    Copy,
}

/// Chooses the strategy of a component's `files` (see the module documentation).
pub fn strategy(component: &ComponentDecl) -> Strategy {
    if component.files.is_empty() {
        return Strategy::None;
    }
    if !component.exclude_files.is_empty() {
        return Strategy::Copy;
    }
    let mut preopens: Vec<Preopen> = Vec::new();
    for mount in &component.files {
        let FilesMount::Placement {
            source,
            destination,
        } = mount
        else {
            return Strategy::Copy;
        };
        if !source.is_dir()
            || preopens
                .iter()
                .any(|other| overlaps(&other.guest, destination))
        {
            return Strategy::Copy;
        }
        preopens.push(Preopen {
            host: source.clone(),
            guest: destination.clone(),
        });
    }
    Strategy::Direct(preopens)
}

/// Whether two guest directories are the same or one contains the other.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        outer == "/"
            || inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

/// A component's files, ready for every instance: the preopened directories, opened once
/// (read-only) and shared by the instances.
#[derive(Clone, Default)]
pub struct PreparedFiles {
    ctx: WasiFilesystemCtx,
    preopens: Vec<Preopen>,
    copied: Option<usize>,
}

impl PreparedFiles {
    /// The filesystem context of a new instance (a clone of the handles opened at load).
    pub fn filesystem(&self) -> WasiFilesystemCtx {
        self.ctx.clone()
    }

    /// The preopened directories.
    pub fn preopens(&self) -> &[Preopen] {
        &self.preopens
    }

    /// For the log: `none`, or the preopens and whether they are copies.
    pub fn describe(&self) -> String {
        if self.preopens.is_empty() {
            return "none".into();
        }
        let list = self
            .preopens
            .iter()
            .map(|p| format!("{} <- {}", p.guest, p.host.display()))
            .collect::<Vec<_>>()
            .join(", ");
        match self.copied {
            Some(count) => format!("{list} (a copy of {count} files)"),
            None => format!("{list} (mounted directly)"),
        }
    }
}

/// Prepares `component`'s `files` (blocking file system work: run it off the async workers).
pub fn prepare(
    app_dir: &Path,
    component: &ComponentDecl,
    staging: &mut Staging,
) -> Result<PreparedFiles, FilesError> {
    let fail = |message: String| FilesError {
        component: component.id.clone(),
        message,
    };
    let app_dir = std::path::absolute(app_dir)
        .map_err(|error| fail(format!("{}: {error}", app_dir.display())))?;
    let (preopens, copied) = match strategy(component) {
        Strategy::None => return Ok(PreparedFiles::default()),
        Strategy::Direct(preopens) => (preopens, None),
        Strategy::Copy => {
            let root = staging.component_root(&component.id).map_err(|error| {
                fail(format!("cannot create a directory for the copies: {error}"))
            })?;
            let excludes = component
                .exclude_files
                .iter()
                .map(|pattern| glob::Pattern::new(pattern))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| fail(format!("exclude_files: {error}")))?;
            let mut copier = Copier {
                app_dir: &app_dir,
                root: &root,
                excludes: &excludes,
                copied: 0,
            };
            for (index, mount) in component.files.iter().enumerate() {
                copier
                    .copy(mount)
                    .map_err(|message| fail(format!("files[{index}]: {message}")))?;
            }
            let copied = copier.copied;
            (
                vec![Preopen {
                    host: root,
                    guest: "/".into(),
                }],
                Some(copied),
            )
        }
    };
    let mut builder = WasiCtxBuilder::new();
    for preopen in &preopens {
        builder
            .preopened_dir(&preopen.host, &preopen.guest, FsPerms::ReadOnly)
            .map_err(|error| {
                fail(format!(
                    "cannot open {} for {}: {error:#}",
                    preopen.host.display(),
                    preopen.guest
                ))
            })?;
    }
    let ctx = builder.build().filesystem().clone();
    Ok(PreparedFiles {
        ctx,
        preopens,
        copied,
    })
}

/// Copies the files of `files` entries the way Spin's loader does.
struct Copier<'a> {
    app_dir: &'a Path,
    root: &'a Path,
    excludes: &'a [glob::Pattern],
    copied: usize,
}

impl Copier<'_> {
    fn copy(&mut self, mount: &FilesMount) -> Result<(), String> {
        match mount {
            FilesMount::Pattern(pattern) => {
                let path = self.app_dir.join(pattern);
                if path.is_dir() {
                    // "static": the directory's files at their paths relative to the application
                    // directory. (Spin 3.x/4.x's `copy_glob_or_path` joins the pattern to the
                    // destination twice here, placing them at `/static/static/...`; `static/**/*`
                    // or the table form is what works the same everywhere.)
                    self.copy_tree(&path, self.app_dir, self.root)
                } else if path.is_file() {
                    self.copy_file(&path, &self.root.join(pattern))
                } else if looks_like_glob(pattern) {
                    let pattern = format!("{}/{pattern}", escaped(self.app_dir)?);
                    self.copy_glob(&pattern, self.app_dir, self.root)
                } else {
                    Err(format!(
                        "{pattern:?} does not exist (in {}) and is not a glob pattern",
                        self.app_dir.display()
                    ))
                }
            }
            FilesMount::Placement {
                source,
                destination,
            } => {
                let metadata = std::fs::metadata(source).map_err(|error| {
                    if error.kind() == std::io::ErrorKind::NotFound {
                        format!("source {} does not exist", source.display())
                    } else {
                        format!("source {}: {error}", source.display())
                    }
                })?;
                let dest = self.root.join(destination.trim_start_matches('/'));
                if metadata.is_dir() {
                    self.copy_tree(source, source, &dest)
                } else if destination == "/" {
                    Err(format!(
                        "source {} is a file, so its destination must name a file, not \"/\"",
                        source.display()
                    ))
                } else {
                    self.copy_file(source, &dest)
                }
            }
        }
    }

    /// Every file under `dir` (Spin: the glob `<dir>/**/*`), placed under `dest` at its path
    /// relative to `prefix`.
    fn copy_tree(&mut self, dir: &Path, prefix: &Path, dest: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dest)
            .map_err(|error| format!("cannot create {}: {error}", dest.display()))?;
        let pattern = format!("{}/**/*", escaped(dir)?);
        self.copy_glob(&pattern, prefix, dest)
    }

    fn copy_glob(&mut self, pattern: &str, prefix: &Path, dest: &Path) -> Result<(), String> {
        let paths = glob::glob(pattern)
            .map_err(|error| format!("bad glob pattern {pattern:?}: {error}"))?;
        for entry in paths {
            let source = entry.map_err(|error| error.to_string())?;
            if !source.is_file() {
                continue;
            }
            let matched = source.strip_prefix(self.app_dir).unwrap_or(&source);
            if self.excludes.iter().any(|p| p.matches_path(matched)) {
                tracing::debug!(file = %source.display(), "left out by exclude_files");
                continue;
            }
            let relative = source
                .strip_prefix(prefix)
                .map_err(|_| format!("{} is outside {}", source.display(), prefix.display()))?;
            self.copy_file(&source, &dest.join(relative))?;
        }
        Ok(())
    }

    fn copy_file(&mut self, source: &Path, dest: &Path) -> Result<(), String> {
        if !dest.starts_with(self.root) {
            return Err(format!("{} would be placed outside /", source.display()));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        std::fs::copy(source, dest).map_err(|error| {
            format!(
                "cannot copy {} to {}: {error}",
                source.display(),
                dest.display()
            )
        })?;
        self.copied += 1;
        Ok(())
    }
}

/// Spin's `looks_like_glob_pattern`: escaping changes the text.
fn looks_like_glob(text: &str) -> bool {
    glob::Pattern::escape(text) != text
}

fn escaped(dir: &Path) -> Result<String, String> {
    let text = dir
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", dir.display()))?;
    Ok(glob::Pattern::escape(text.trim_end_matches('/')))
}

/// Rewrites the `files` and `exclude_files` of a `[component.<id>]` table from the manifest in
/// `app_dir` so that a copy of the manifest written into another directory mounts the same files
/// (what `storemesh up` needs for the manifest copy it gives the runtime):
///
/// - `{ source, destination }` with a relative source: the source made absolute;
/// - a pattern naming an existing directory or file (`"static"`, `"a/b.txt"`), or a directory's
///   whole tree (`"static/**/*"`): the equivalent `{ source = "<absolute>", destination =
///   "/static" }`;
/// - `exclude_files`: each relative pattern prefixed with the (escaped) absolute `app_dir`, since
///   files outside the copy's directory are matched by their absolute paths.
///
/// Any other glob pattern (`"static/*.css"`, `"**/*.png"`) cannot be expressed relative to
/// another directory: an error says so (use the table form).
pub fn relocate(component: &mut toml::Table, app_dir: &Path) -> Result<(), String> {
    if let Some(files) = component.get_mut("files") {
        let toml::Value::Array(entries) = files else {
            return Err("`files` must be a list".into());
        };
        for (index, entry) in entries.iter_mut().enumerate() {
            relocate_entry(entry, app_dir)
                .map_err(|message| format!("files[{index}]: {message}"))?;
        }
    }
    if let Some(toml::Value::Array(patterns)) = component.get_mut("exclude_files") {
        let base = escaped(app_dir)?;
        for pattern in patterns.iter_mut() {
            if let toml::Value::String(text) = pattern
                && !Path::new(text.as_str()).is_absolute()
            {
                *text = format!("{base}/{}", text.trim_start_matches("./"));
            }
        }
    }
    Ok(())
}

fn relocate_entry(entry: &mut toml::Value, app_dir: &Path) -> Result<(), String> {
    match entry {
        toml::Value::Table(table) => {
            if let Some(toml::Value::String(source)) = table.get_mut("source")
                && !Path::new(source.as_str()).is_absolute()
                && !crate::manifest::escapes(Path::new(source.as_str()))
            {
                let absolute = app_dir.join(source.as_str());
                if !absolute.exists() {
                    return Err(format!("source {} does not exist", absolute.display()));
                }
                *source = absolute.display().to_string();
            }
            Ok(())
        }
        toml::Value::String(pattern) => {
            let placement = |path: &str| {
                let mut table = toml::Table::new();
                table.insert(
                    "source".into(),
                    app_dir.join(path).display().to_string().into(),
                );
                table.insert(
                    "destination".into(),
                    format!("/{}", path.trim_start_matches("./").trim_end_matches('/')).into(),
                );
                toml::Value::Table(table)
            };
            if Path::new(pattern.as_str()).is_absolute()
                || crate::manifest::escapes(Path::new(pattern.as_str()))
            {
                // Refused when the runtime reads the copy, as it would be in the original.
                return Ok(());
            }
            if app_dir.join(pattern.as_str()).exists() {
                *entry = placement(pattern);
                return Ok(());
            }
            if let Some(dir) = pattern.strip_suffix("/**/*")
                && !looks_like_glob(dir)
            {
                if app_dir.join(dir).is_dir() {
                    *entry = placement(dir);
                }
                // Otherwise it matches nothing, here as in the copy's directory.
                return Ok(());
            }
            if looks_like_glob(pattern) {
                Err(format!(
                    "the glob pattern {pattern:?} cannot be relocated into a copy of the manifest; \
                     use {{ source = \"<directory>\", destination = \"/<path>\" }} instead"
                ))
            } else {
                Err(format!(
                    "{pattern:?} does not exist (in {})",
                    app_dir.display()
                ))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::manifest::Manifest;

    fn component(app_dir: &Path, files: &str) -> ComponentDecl {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n{files}\n"
        );
        let manifest = Manifest::parse(&app_dir.join("spin.toml"), &text).unwrap();
        manifest.components["c"].clone()
    }

    fn tree(dir: &Path, files: &[&str]) {
        for file in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file.as_bytes()).unwrap();
        }
    }

    /// Every file under `dir`, relative and sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in glob::glob(&format!("{}/**/*", escaped(dir).unwrap())).unwrap() {
            let path = entry.unwrap();
            if path.is_file() {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn directory_tables_are_mounted_directly_when_they_do_not_overlap() {
        let app = tempfile::tempdir().unwrap();
        tree(app.path(), &["web/dist/index.html", "docs/a.txt"]);
        let c = component(
            app.path(),
            r#"files = [{ source = "web/dist", destination = "/" }]"#,
        );
        assert_eq!(
            strategy(&c),
            Strategy::Direct(vec![Preopen {
                host: app.path().join("web/dist"),
                guest: "/".into()
            }])
        );
        let c = component(
            app.path(),
            r#"files = [{ source = "web/dist", destination = "/site/" }, { source = "docs", destination = "/docs" }]"#,
        );
        assert!(
            matches!(strategy(&c), Strategy::Direct(list) if list.len() == 2 && list[0].guest == "/site")
        );
        // Nested or equal destinations, a file source, a pattern or exclude_files: copied.
        for files in [
            r#"files = [{ source = "web/dist", destination = "/" }, { source = "docs", destination = "/docs" }]"#,
            r#"files = [{ source = "web/dist", destination = "/a" }, { source = "docs", destination = "/a" }]"#,
            r#"files = [{ source = "docs/a.txt", destination = "/a.txt" }]"#,
            r#"files = ["docs/**/*"]"#,
            "files = [{ source = \"docs\", destination = \"/\" }]\nexclude_files = [\"docs/*.txt\"]",
        ] {
            assert_eq!(
                strategy(&component(app.path(), files)),
                Strategy::Copy,
                "{files}"
            );
        }
        assert_eq!(strategy(&component(app.path(), "")), Strategy::None);
        assert!(overlaps("/a", "/a/b") && overlaps("/a/b", "/a") && overlaps("/", "/x"));
        assert!(!overlaps("/a", "/ab") && !overlaps("/a/b", "/a/c"));
    }

    #[test]
    fn copies_follow_spin_placement_and_exclusions() {
        let app = tempfile::tempdir().unwrap();
        tree(
            app.path(),
            &[
                "static/app.js",
                "static/app.js.map",
                "static/css/site.css",
                "web/dist/index.html",
                "web/dist/assets/x.js",
                "web/dist/assets/x.js.map",
                "notes.txt",
                "secret/key.pem",
            ],
        );
        let c = component(
            app.path(),
            r#"files = ["static/**/*", { source = "web/dist", destination = "/site" }, { source = "notes.txt", destination = "/etc/notes" }, "notes.txt"]
exclude_files = ["**/*.map"]"#,
        );
        let mut staging = Staging::default();
        let prepared = prepare(app.path(), &c, &mut staging).unwrap();
        assert_eq!(prepared.preopens().len(), 1);
        assert_eq!(prepared.preopens()[0].guest, "/");
        assert_eq!(
            listing(&prepared.preopens()[0].host),
            [
                "etc/notes",
                "notes.txt",
                "site/assets/x.js",
                "site/index.html",
                "static/app.js",
                "static/css/site.css",
            ]
        );
        assert!(
            prepared.describe().contains("a copy of 6 files"),
            "{}",
            prepared.describe()
        );
        let root = prepared.preopens()[0].host.clone();
        drop(staging);
        assert!(!root.exists(), "the copies go with the staging directory");
    }

    #[test]
    fn missing_sources_and_bad_destinations_fail_the_load() {
        let app = tempfile::tempdir().unwrap();
        tree(app.path(), &["a.txt"]);
        let mut staging = Staging::default();
        for (files, expected) in [
            (
                r#"files = [{ source = "web/dist", destination = "/" }]"#,
                "does not exist",
            ),
            (
                r#"files = [{ source = "a.txt", destination = "/" }]"#,
                "must name a file",
            ),
            (r#"files = ["nothing/here"]"#, "is not a glob pattern"),
        ] {
            let error = prepare(app.path(), &component(app.path(), files), &mut staging)
                .err()
                .unwrap();
            assert!(error.to_string().contains(expected), "{files}: {error}");
            assert!(error.to_string().contains("component `c`"), "{error}");
        }
        // A glob that matches nothing is an empty mount, as in Spin.
        let prepared = prepare(
            app.path(),
            &component(app.path(), r#"files = ["static/*.css"]"#),
            &mut staging,
        )
        .unwrap();
        assert!(listing(&prepared.preopens()[0].host).is_empty());
    }

    #[test]
    fn relocation_keeps_what_the_copy_mounts() {
        let app = tempfile::tempdir().unwrap();
        tree(
            app.path(),
            &["web/dist/index.html", "static/a.css", "n.txt"],
        );
        let abs = |path: &str| app.path().join(path).display().to_string();
        let mut table: toml::Table = toml::from_str(
            r#"
source = "x.wasm"
files = [{ source = "web/dist", destination = "/" }, "static/**/*", "n.txt", "static", "gone/**/*", { source = "/abs", destination = "/abs" }]
exclude_files = ["**/*.map", "/abs/*.tmp"]
"#,
        )
        .unwrap();
        relocate(&mut table, app.path()).unwrap();
        let files = table["files"].as_array().unwrap();
        let placement = |value: &toml::Value| {
            (
                value["source"].as_str().unwrap().to_owned(),
                value["destination"].as_str().unwrap().to_owned(),
            )
        };
        assert_eq!(placement(&files[0]), (abs("web/dist"), "/".into()));
        assert_eq!(placement(&files[1]), (abs("static"), "/static".into()));
        assert_eq!(placement(&files[2]), (abs("n.txt"), "/n.txt".into()));
        assert_eq!(placement(&files[3]), (abs("static"), "/static".into()));
        assert_eq!(files[4].as_str(), Some("gone/**/*"));
        assert_eq!(placement(&files[5]), ("/abs".into(), "/abs".into()));
        let excludes = table["exclude_files"].as_array().unwrap();
        assert_eq!(
            excludes[0].as_str().unwrap(),
            format!(
                "{}/**/*.map",
                glob::Pattern::escape(&abs("")).trim_end_matches('/')
            )
        );
        assert_eq!(excludes[1].as_str(), Some("/abs/*.tmp"));

        for (files, expected) in [
            (r#"files = ["static/*.css"]"#, "cannot be relocated"),
            (r#"files = ["missing.txt"]"#, "does not exist"),
            (
                r#"files = [{ source = "web/missing", destination = "/" }]"#,
                "does not exist",
            ),
        ] {
            let mut table: toml::Table = toml::from_str(files).unwrap();
            let error = relocate(&mut table, app.path()).unwrap_err();
            assert!(error.contains(expected), "{files}: {error}");
            assert!(error.starts_with("files[0]"), "{error}");
        }
    }

    #[test]
    fn relocated_exclusions_match_like_the_originals() {
        // What the runtime does with the copy: files outside the copy's directory are matched
        // by their absolute paths against the relocated patterns.
        let app = tempfile::tempdir().unwrap();
        tree(app.path(), &["web/dist/a.js", "web/dist/a.js.map"]);
        let elsewhere = tempfile::tempdir().unwrap();
        let mut table: toml::Table =
            toml::from_str("files = [\"web/**/*\"]\nexclude_files = [\"web/**/*.map\"]").unwrap();
        relocate(&mut table, app.path()).unwrap();
        table.insert("source".into(), "c.wasm".into());
        let mut document: toml::Table = toml::from_str(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n",
        )
        .unwrap();
        let mut components = toml::Table::new();
        components.insert("c".into(), table.into());
        document.insert("component".into(), components.into());
        let text = toml::to_string(&document).unwrap();
        let manifest = Manifest::parse(&elsewhere.path().join("spin.toml"), &text).unwrap();
        let c = &manifest.components["c"];
        let mut staging = Staging::default();
        let prepared = prepare(elsewhere.path(), c, &mut staging).unwrap();
        assert_eq!(listing(&prepared.preopens()[0].host), ["web/dist/a.js"]);
    }
}
