//! `spin.toml` (manifest version 2): parsing and validation.
//!
//! Every error names the offending key (`component.thumbnail.allowed_outbound_hosts[1]`,
//! `trigger.http[0].route`, ...) and, for syntax and type errors, the line and column.
//!
//! Supported: `[application]` (name, version, description, authors; `tool` and `targets` ignored),
//! `[variables]` (`default`, `required`, `secret`), `[[trigger.http]]` (`route` as a pattern or
//! `{ private = true }`, `component = "<id>"`, `executor = { type = "spin" }`, `id`), and
//! `[component.<id>]` (`source` as a local path, `allowed_outbound_hosts` with `{{ variable }}`
//! templates, `variables` templated from application variables, `environment`, `description`,
//! `files` and `exclude_files` (checked here; mounted by [`crate::files`]); `build` and `tool`
//! are accepted and ignored). Features this runtime does not provide (key-value stores, SQLite,
//! AI models, component dependencies, remote sources, other trigger types, inline components)
//! are refused by key rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::outbound::AllowedHost;
use crate::routing::RoutePattern;
use crate::template::{Template, is_variable_name};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// (The I/O error is part of the message rather than a `source`, so it is printed once.)
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A syntax or type error (`message` carries toml's line and column).
    #[error("{path}: `{key}`: {message}")]
    Syntax {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A value that parsed but is not acceptable.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl ManifestError {
    /// The offending key, when the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ManifestError::Read { .. } => None,
            ManifestError::Syntax { key, .. } | ManifestError::Invalid { key, .. } => Some(key),
        }
    }
}

/// An application variable declaration (`[variables]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableDecl {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// One `allowed_outbound_hosts` entry: parsed now when literal, after variable resolution when
/// templated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRule {
    Literal(AllowedHost),
    Template(Template),
}

/// One `files` entry of a component (Spin's `WasiFilesMount`,
/// `crates/manifest/src/schema/common.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesMount {
    /// `"static/**/*"`, `"static"` or `"a/file.txt"`: a glob pattern or path relative to the
    /// application directory; each file it names is placed at its path relative to that
    /// directory (so `static/app.js` is `/static/app.js` in the guest).
    Pattern(String),
    /// `{ source = "web/dist", destination = "/" }`: a directory (or a single file) placed at
    /// `destination` in the guest.
    Placement {
        /// Resolved against the manifest's directory (an absolute path is kept).
        source: PathBuf,
        /// Absolute, without `..`; trailing `/`s removed (except for `/` itself).
        destination: String,
    },
}

/// A `[component.<id>]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDecl {
    pub id: String,
    /// The `.wasm` file, resolved against the manifest's directory.
    pub source: PathBuf,
    /// Component variables: templates over application variables.
    pub variables: BTreeMap<String, Template>,
    /// Environment variables visible through `wasi:cli/environment`.
    pub environment: BTreeMap<String, String>,
    pub allowed_outbound_hosts: Vec<OutboundRule>,
    /// Files made visible to the guest, read-only (`files`).
    pub files: Vec<FilesMount>,
    /// Glob patterns of files left out of `files` (`exclude_files`), matched against paths
    /// relative to the application directory.
    pub exclude_files: Vec<String>,
}

/// An HTTP trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    /// `None` for `route = { private = true }` (not reachable from outside).
    pub route: Option<RoutePattern>,
    pub component: String,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub path: PathBuf,
    pub name: String,
    pub version: Option<String>,
    pub variables: BTreeMap<String, VariableDecl>,
    pub components: BTreeMap<String, ComponentDecl>,
    pub triggers: Vec<HttpTrigger>,
}

impl Manifest {
    /// The application directory: the manifest's directory, against which component sources,
    /// `files` and `exclude_files` are resolved.
    pub fn app_dir(&self) -> &Path {
        app_dir_of(&self.path)
    }
}

fn app_dir_of(manifest: &Path) -> &Path {
    match manifest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

// ---- raw (serde) shapes -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[allow(dead_code)]
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    version: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    authors: Vec<String>,
    #[allow(dead_code)]
    targets: Option<toml::Value>,
    #[allow(dead_code)]
    tool: Option<toml::Value>,
    trigger: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    #[allow(dead_code)]
    id: Option<String>,
    component: toml::Value,
    route: RawRoute,
    executor: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Pattern(String),
    Private { private: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: toml::Value,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[allow(dead_code)]
    build: Option<toml::Value>,
    #[allow(dead_code)]
    tool: Option<toml::Value>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    exclude_files: Vec<String>,
    // Known Spin keys this runtime does not support: refused when set.
    key_value_stores: Option<Vec<String>>,
    sqlite_databases: Option<Vec<String>>,
    ai_models: Option<Vec<String>>,
    dependencies: Option<toml::Value>,
    dependencies_inherit_configuration: Option<bool>,
}

// ---- parsing ------------------------------------------------------------------------------

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Validates manifest `text`; `path` names it in errors and anchors relative `source`s.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let invalid = |key: &str, message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            key: key.to_owned(),
            message,
        };

        // The version first, so a v1 manifest gets a clear message instead of field errors.
        let table: toml::Table = toml::from_str(text).map_err(|error| ManifestError::Syntax {
            path: path.to_path_buf(),
            key: "(document)".into(),
            message: one_line(&error.to_string()),
        })?;
        match table.get("spin_manifest_version") {
            Some(toml::Value::Integer(2)) => {}
            Some(other) => {
                return Err(invalid(
                    "spin_manifest_version",
                    format!("must be 2 (got {other}); version 1 manifests are not supported"),
                ));
            }
            None => {
                return Err(invalid(
                    "spin_manifest_version",
                    "is missing (must be 2)".into(),
                ));
            }
        }

        let raw: RawManifest = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|error| ManifestError::Syntax {
                path: path.to_path_buf(),
                key: render_path(error.path()),
                message: one_line(&error.inner().to_string()),
            })?;

        if raw.application.name.trim().is_empty() {
            return Err(invalid("application.name", "must not be empty".into()));
        }
        if let Some(trigger) = &raw.application.trigger
            && let Some(kind) = trigger.keys().next()
        {
            return Err(invalid(
                &format!("application.trigger.{kind}"),
                "application-level trigger settings are not supported by this runtime".into(),
            ));
        }

        let mut variables = BTreeMap::new();
        for (name, raw_variable) in raw.variables {
            let key = format!("variables.{name}");
            if !is_variable_name(&name) {
                return Err(invalid(
                    &key,
                    "variable names are lowercase letters, digits and single `_`, starting with a letter and ending with a letter or digit"
                        .into(),
                ));
            }
            match (&raw_variable.default, raw_variable.required) {
                (Some(_), true) => {
                    return Err(invalid(
                        &key,
                        "a variable is either `required` or has a `default`, not both".into(),
                    ));
                }
                (None, false) => {
                    return Err(invalid(
                        &key,
                        "needs a `default` or `required = true`".into(),
                    ));
                }
                _ => {}
            }
            variables.insert(
                name,
                VariableDecl {
                    default: raw_variable.default,
                    required: raw_variable.required,
                    secret: raw_variable.secret,
                },
            );
        }

        let base = app_dir_of(path);
        let mut components = BTreeMap::new();
        for (id, raw_component) in raw.component {
            let component = parse_component(&id, raw_component, base, &variables)
                .map_err(|(key, message)| invalid(&key, message))?;
            components.insert(id, component);
        }

        if let Some(kind) = raw.trigger.other.keys().next() {
            return Err(invalid(
                &format!("trigger.{kind}"),
                "only HTTP triggers (`[[trigger.http]]`) are supported by this runtime".into(),
            ));
        }
        if raw.trigger.http.is_empty() {
            return Err(invalid(
                "trigger.http",
                "the application has no HTTP triggers".into(),
            ));
        }
        let mut triggers = Vec::new();
        for (index, raw_trigger) in raw.trigger.http.into_iter().enumerate() {
            let prefix = format!("trigger.http[{index}]");
            let component = match raw_trigger.component {
                toml::Value::String(id) => id,
                toml::Value::Table(_) => {
                    return Err(invalid(
                        &format!("{prefix}.component"),
                        "inline components are not supported; declare a [component.<id>] table and refer to it by id".into(),
                    ));
                }
                other => {
                    return Err(invalid(
                        &format!("{prefix}.component"),
                        format!(
                            "must be a component id (a string), got {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            if !components.contains_key(&component) {
                return Err(invalid(
                    &format!("{prefix}.component"),
                    format!("there is no [component.{component}]"),
                ));
            }
            if let Some(executor) = &raw_trigger.executor {
                match executor.get("type").and_then(toml::Value::as_str) {
                    Some("spin") | None => {}
                    Some(other) => {
                        return Err(invalid(
                            &format!("{prefix}.executor.type"),
                            format!(
                                "the {other:?} executor is not supported (only \"spin\", WASI 0.2 HTTP components)"
                            ),
                        ));
                    }
                }
            }
            let route = match raw_trigger.route {
                RawRoute::Pattern(pattern) => Some(
                    RoutePattern::parse(&pattern)
                        .map_err(|error| invalid(&format!("{prefix}.route"), error.to_string()))?,
                ),
                RawRoute::Private { private: true } => None,
                RawRoute::Private { private: false } => {
                    return Err(invalid(
                        &format!("{prefix}.route"),
                        "must be a route pattern or `{ private = true }`".into(),
                    ));
                }
            };
            triggers.push(HttpTrigger { route, component });
        }

        Ok(Self {
            path: path.to_path_buf(),
            name: raw.application.name,
            version: raw.application.version,
            variables,
            components,
            triggers,
        })
    }

    /// Components reachable from at least one trigger, in id order.
    pub fn triggered_components(&self) -> impl Iterator<Item = &ComponentDecl> {
        self.components
            .values()
            .filter(|c| self.triggers.iter().any(|t| t.component == c.id))
    }
}

fn parse_component(
    id: &str,
    raw: RawComponent,
    base: &Path,
    variables: &BTreeMap<String, VariableDecl>,
) -> Result<ComponentDecl, (String, String)> {
    let prefix = format!("component.{id}");
    let err = |field: &str, message: String| (format!("{prefix}.{field}"), message);
    if !is_component_id(id) {
        return Err((
            prefix.clone(),
            "component ids are lowercase letters, digits and single `-`, starting with a letter"
                .into(),
        ));
    }

    let unsupported: [(&str, bool); 5] = [
        (
            "key_value_stores",
            raw.key_value_stores.is_some_and(|v| !v.is_empty()),
        ),
        (
            "sqlite_databases",
            raw.sqlite_databases.is_some_and(|v| !v.is_empty()),
        ),
        ("ai_models", raw.ai_models.is_some_and(|v| !v.is_empty())),
        ("dependencies", raw.dependencies.is_some()),
        (
            "dependencies_inherit_configuration",
            raw.dependencies_inherit_configuration == Some(true),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(err(
            field,
            "not supported by the Storemesh edge runtime (see services/edge/README.md)".into(),
        ));
    }

    let source = match raw.source {
        toml::Value::String(source) if !source.trim().is_empty() => base.join(source),
        toml::Value::String(_) => return Err(err("source", "must not be empty".into())),
        toml::Value::Table(_) => {
            return Err(err(
                "source",
                "remote sources (url/registry) are not supported; build the component and give its local path".into(),
            ));
        }
        other => {
            return Err(err(
                "source",
                format!("must be a path (a string), got {}", other.type_str()),
            ));
        }
    };

    let mut component_variables = BTreeMap::new();
    for (name, text) in raw.variables {
        let key = format!("variables.{name}");
        if !is_variable_name(&name) {
            return Err(err(
                &key,
                "variable names are lowercase letters, digits and single `_`, starting with a letter and ending with a letter or digit"
                    .into(),
            ));
        }
        let template = Template::parse(&text).map_err(|error| err(&key, error.to_string()))?;
        check_references(&template, variables).map_err(|message| err(&key, message))?;
        component_variables.insert(name, template);
    }

    let mut allowed = Vec::new();
    for (index, text) in raw.allowed_outbound_hosts.iter().enumerate() {
        let key = format!("allowed_outbound_hosts[{index}]");
        let template = Template::parse(text).map_err(|error| err(&key, error.to_string()))?;
        if template.is_literal() {
            let host = AllowedHost::parse(text).map_err(|error| err(&key, error.to_string()))?;
            allowed.push(OutboundRule::Literal(host));
        } else {
            check_references(&template, variables).map_err(|message| err(&key, message))?;
            allowed.push(OutboundRule::Template(template));
        }
    }

    for name in raw.environment.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(err(
                &format!("environment.{name}"),
                "not a valid environment variable name".into(),
            ));
        }
    }

    let mut files = Vec::new();
    for (index, mount) in raw.files.into_iter().enumerate() {
        let key = format!("files[{index}]");
        files.push(parse_files_mount(mount, base).map_err(|(field, message)| {
            let key = match field {
                Some(field) => format!("{key}.{field}"),
                None => key,
            };
            err(&key, message)
        })?);
    }
    for (index, pattern) in raw.exclude_files.iter().enumerate() {
        glob::Pattern::new(pattern).map_err(|error| {
            err(
                &format!("exclude_files[{index}]"),
                format!("not a valid glob pattern: {error}"),
            )
        })?;
    }

    Ok(ComponentDecl {
        id: id.to_owned(),
        source,
        variables: component_variables,
        environment: raw.environment,
        allowed_outbound_hosts: allowed,
        files,
        exclude_files: raw.exclude_files,
    })
}

/// Checks one `files` entry (Spin's loader, `crates/loader/src/local.rs`, plus what it leaves to
/// chance): an error names the field (`source`, `destination`) or the entry itself (`None`).
fn parse_files_mount(
    mount: toml::Value,
    base: &Path,
) -> Result<FilesMount, (Option<String>, String)> {
    match mount {
        toml::Value::String(pattern) => {
            let fail = |message: String| Err((None, message));
            if pattern.trim().is_empty() {
                return fail("must not be empty".into());
            }
            if Path::new(&pattern).is_absolute() {
                // Spin places each file at its path relative to the application directory, which
                // an absolute pattern does not have.
                return fail(format!(
                    "{pattern:?} is absolute; patterns are relative to the application directory \
                     (use {{ source = \"<dir>\", destination = \"/<path>\" }} for a directory elsewhere)"
                ));
            }
            // Spin refuses these with the same advice.
            let last = pattern.rsplit('/').next().unwrap_or_default();
            if last == ".." || last == "." {
                return fail(format!(
                    "{pattern:?} ends in {last:?}; to include a directory use the source-destination form or a pattern ending in **/*"
                ));
            }
            if escapes(Path::new(&pattern)) {
                return fail(format!(
                    "{pattern:?} leaves the application directory (`..`)"
                ));
            }
            if let Err(error) = glob::Pattern::new(&pattern) {
                return fail(format!("{pattern:?} is not a valid glob pattern: {error}"));
            }
            Ok(FilesMount::Pattern(pattern))
        }
        toml::Value::Table(mut table) => {
            let mut field = |name: &'static str| match table.remove(name) {
                Some(toml::Value::String(value)) => Ok(value),
                Some(other) => Err((
                    Some(name.to_owned()),
                    format!("must be a string, got {}", other.type_str()),
                )),
                None => Err((None, format!("`{name}` is missing"))),
            };
            let source = field("source")?;
            let destination = field("destination")?;
            if let Some(unknown) = table.keys().next() {
                return Err((
                    Some(unknown.clone()),
                    "unknown field (a files entry is { source, destination })".into(),
                ));
            }
            if source.trim().is_empty() {
                return Err((Some("source".into()), "must not be empty".into()));
            }
            let source_path = Path::new(&source);
            if !source_path.is_absolute() && escapes(source_path) {
                return Err((
                    Some("source".into()),
                    format!(
                        "{source:?} leaves the application directory (`..`); give an absolute path for a directory elsewhere"
                    ),
                ));
            }
            if !destination.starts_with('/') {
                return Err((
                    Some("destination".into()),
                    format!(
                        "{destination:?} must be an absolute path in the guest (e.g. \"/static\")"
                    ),
                ));
            }
            if destination
                .split('/')
                .any(|segment| segment == ".." || segment == ".")
            {
                return Err((
                    Some("destination".into()),
                    format!("{destination:?} must not contain `.` or `..` segments"),
                ));
            }
            let trimmed = destination.trim_end_matches('/');
            Ok(FilesMount::Placement {
                source: base.join(source_path),
                destination: if trimmed.is_empty() {
                    "/".to_owned()
                } else {
                    trimmed.to_owned()
                },
            })
        }
        other => Err((
            None,
            format!(
                "must be a glob pattern (a string) or {{ source = \"...\", destination = \"/...\" }}, got {}",
                other.type_str()
            ),
        )),
    }
}

/// Whether a relative path climbs above its starting directory (`..` more often than it
/// descends, at any point).
pub(crate) fn escapes(path: &Path) -> bool {
    use std::path::Component;
    let mut depth = 0_usize;
    for component in path.components() {
        match component {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

fn check_references(
    template: &Template,
    variables: &BTreeMap<String, VariableDecl>,
) -> Result<(), String> {
    match template
        .variables()
        .find(|name| !variables.contains_key(*name))
    {
        Some(name) => Err(format!(
            "refers to `{name}`, which is not declared in [variables]"
        )),
        None => Ok(()),
    }
}

/// Spin's component id rule: lowercase words of letters and digits joined by single `-`,
/// starting with a letter (underscores are accepted too).
pub fn is_component_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && !id.contains("--")
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        "(document)".into()
    } else {
        out
    }
}

/// toml errors span several lines (a source excerpt); keep the message on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            // Drop toml's source excerpt (`7 | key = ...` and the `|  ^^^` marker lines).
            let excerpt = line
                .split_once('|')
                .is_some_and(|(gutter, _)| gutter.trim().chars().all(|c| c.is_ascii_digit()));
            !line.is_empty() && !excerpt
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/app/spin.toml"), text)
    }

    fn error_key(text: &str) -> String {
        let error = parse(text).unwrap_err();
        error.key().unwrap_or_default().to_owned()
    }

    const GOOD: &str = r#"
spin_manifest_version = 2

[application]
name = "storemesh-edge"
version = "0.1.0"
authors = ["Storemesh"]

[variables]
gateway_host = { default = "127.0.0.1" }
gateway_port = { default = "50050" }
service_secret = { required = true, secret = true }

[[trigger.http]]
route = "/v1/products/:product_id/images"
component = "upload-hook"

[[trigger.http]]
route = "/internal/thumbnail/..."
component = "thumbnail"

[[trigger.http]]
route = { private = true }
component = "thumbnail"

[component.upload-hook]
source = "target/wasm32-wasip2/release/upload_hook.wasm"
allowed_outbound_hosts = ["http://{{ gateway_host }}:{{ gateway_port }}", "https://*.example.com"]
environment = { RUST_LOG = "info" }
[component.upload-hook.variables]
gateway = "http://{{ gateway_host }}:{{ gateway_port }}"
secret = "{{ service_secret }}"
[component.upload-hook.build]
command = "cargo build --release --target wasm32-wasip2"

[component.thumbnail]
source = "/abs/thumbnail.wasm"
"#;

    #[test]
    fn a_complete_manifest_parses() {
        let manifest = parse(GOOD).unwrap();
        assert_eq!(manifest.name, "storemesh-edge");
        assert_eq!(manifest.version.as_deref(), Some("0.1.0"));
        assert_eq!(manifest.variables.len(), 3);
        assert!(manifest.variables["service_secret"].secret);
        assert!(manifest.variables["service_secret"].required);
        let upload = &manifest.components["upload-hook"];
        assert_eq!(
            upload.source,
            Path::new("/app/target/wasm32-wasip2/release/upload_hook.wasm")
        );
        assert_eq!(
            manifest.components["thumbnail"].source,
            Path::new("/abs/thumbnail.wasm")
        );
        assert_eq!(upload.variables.len(), 2);
        assert_eq!(upload.environment["RUST_LOG"], "info");
        assert!(matches!(
            upload.allowed_outbound_hosts[0],
            OutboundRule::Template(_)
        ));
        assert!(matches!(
            upload.allowed_outbound_hosts[1],
            OutboundRule::Literal(_)
        ));
        assert_eq!(manifest.triggers.len(), 3);
        assert!(manifest.triggers[2].route.is_none());
        assert_eq!(manifest.triggered_components().count(), 2);
    }

    #[test]
    fn version_one_is_refused_by_key() {
        let error = parse("spin_manifest_version = \"1\"\nname = \"x\"\n").unwrap_err();
        assert_eq!(error.key(), Some("spin_manifest_version"));
        assert!(error.to_string().contains("version 1"), "{error}");
        assert_eq!(
            error_key("[application]\nname = \"x\"\n"),
            "spin_manifest_version"
        );
    }

    #[test]
    fn syntax_errors_carry_position() {
        let error = parse("spin_manifest_version = 2\n[application\n").unwrap_err();
        assert!(matches!(error, ManifestError::Syntax { .. }));
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        let text = GOOD.replace("authors = [\"Storemesh\"]", "autors = [\"x\"]");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.key(), Some("application.autors"), "{error}");
        assert!(error.to_string().contains("line 7"), "{error}");

        let text = GOOD.replace(
            "source = \"/abs/thumbnail.wasm\"",
            "source = \"/abs/thumbnail.wasm\"\nallowed_outbound_hosts = \"http://x\"",
        );
        assert_eq!(
            error_key(&text),
            "component.thumbnail.allowed_outbound_hosts"
        );

        let text = GOOD.replace(
            "source = \"/abs/thumbnail.wasm\"",
            "source = \"/abs/thumbnail.wasm\"\nallowed_outbond_hosts = []",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(
            error.key(),
            Some("component.thumbnail.allowed_outbond_hosts"),
            "{error}"
        );
    }

    #[test]
    fn variable_declarations_are_checked() {
        let text = GOOD.replace(
            "gateway_port = { default = \"50050\" }",
            "gateway_port = { default = \"50050\", required = true }",
        );
        assert_eq!(error_key(&text), "variables.gateway_port");
        let text = GOOD.replace(
            "gateway_port = { default = \"50050\" }",
            "gateway_port = { secret = true }",
        );
        assert_eq!(error_key(&text), "variables.gateway_port");
        let text = GOOD.replace("gateway_port = {", "Gateway_port = {");
        assert_eq!(error_key(&text), "variables.Gateway_port");
    }

    #[test]
    fn templates_must_refer_to_declared_variables() {
        let text = GOOD.replace(
            "secret = \"{{ service_secret }}\"",
            "secret = \"{{ nope }}\"",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(error.key(), Some("component.upload-hook.variables.secret"));
        assert!(error.to_string().contains("nope"), "{error}");

        let text = GOOD.replace(
            "{{ gateway_port }}\", \"https",
            "{{ gateway_prt }}\", \"https",
        );
        assert_eq!(
            error_key(&text),
            "component.upload-hook.allowed_outbound_hosts[0]"
        );
        let text = GOOD.replace("\"https://*.example.com\"", "\"example.com\"");
        assert_eq!(
            error_key(&text),
            "component.upload-hook.allowed_outbound_hosts[1]"
        );
    }

    #[test]
    fn triggers_are_checked() {
        let text = GOOD.replace(
            "component = \"thumbnail\"\n\n[[",
            "component = \"thumbnial\"\n\n[[",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(error.key(), Some("trigger.http[1].component"));
        assert!(error.to_string().contains("thumbnial"), "{error}");

        // Spin: crates/trigger-http/src/server.rs HttpServer::new only logs an error for routes
        // under /.well-known/spin/ (they are never reached); a malformed route is refused.
        let text = GOOD.replace("/internal/thumbnail/...", "/.well-known/spin/x");
        assert!(parse(&text).is_ok());
        let text = GOOD.replace("/internal/thumbnail/...", "/internal/*thumb");
        assert_eq!(error_key(&text), "trigger.http[1].route");

        let text = GOOD.replace("route = { private = true }", "route = { private = false }");
        assert_eq!(error_key(&text), "trigger.http[2].route");

        let text =
            format!("{GOOD}\n[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"thumbnail\"\n");
        assert_eq!(error_key(&text), "trigger.redis");

        let text = GOOD.replace(
            "route = \"/internal/thumbnail/...\"",
            "route = \"/internal/thumbnail/...\"\nexecutor = { type = \"wagi\" }",
        );
        assert_eq!(error_key(&text), "trigger.http[1].executor.type");
    }

    #[test]
    fn unsupported_component_features_are_refused_by_key() {
        for (line, key) in [
            (
                "ai_models = [\"llama2-chat\"]",
                "component.thumbnail.ai_models",
            ),
            (
                "key_value_stores = [\"default\"]",
                "component.thumbnail.key_value_stores",
            ),
            (
                "sqlite_databases = [\"default\"]",
                "component.thumbnail.sqlite_databases",
            ),
        ] {
            let text = GOOD.replace(
                "source = \"/abs/thumbnail.wasm\"",
                &format!("source = \"/abs/thumbnail.wasm\"\n{line}"),
            );
            assert_eq!(error_key(&text), key);
        }
        let text = GOOD.replace(
            "source = \"/abs/thumbnail.wasm\"",
            "source = { url = \"https://x/y.wasm\", digest = \"sha256:0\" }",
        );
        assert_eq!(error_key(&text), "component.thumbnail.source");
        // An empty list is the same as not setting it.
        let text = GOOD.replace(
            "source = \"/abs/thumbnail.wasm\"",
            "source = \"/abs/thumbnail.wasm\"\nkey_value_stores = []",
        );
        assert!(parse(&text).is_ok());
    }

    fn with_thumbnail_lines(lines: &str) -> String {
        GOOD.replace(
            "source = \"/abs/thumbnail.wasm\"",
            &format!("source = \"/abs/thumbnail.wasm\"\n{lines}"),
        )
    }

    // Spin: crates/manifest/src/schema/common.rs (WasiFilesMount: a pattern string or
    // { source, destination }), crates/manifest/src/schema/v2.rs (files, exclude_files).
    #[test]
    fn files_and_exclusions_parse_in_both_forms() {
        let text = with_thumbnail_lines(
            r#"files = ["static/**/*", { source = "web/dist", destination = "/" }, { source = "/srv/docs", destination = "/docs/" }, "./a/../b.txt"]
exclude_files = ["**/*.map"]"#,
        );
        let manifest = parse(&text).unwrap();
        let thumbnail = &manifest.components["thumbnail"];
        assert_eq!(
            thumbnail.files,
            [
                FilesMount::Pattern("static/**/*".into()),
                FilesMount::Placement {
                    source: "/app/web/dist".into(),
                    destination: "/".into()
                },
                FilesMount::Placement {
                    source: "/srv/docs".into(),
                    destination: "/docs".into()
                },
                FilesMount::Pattern("./a/../b.txt".into()),
            ]
        );
        assert_eq!(thumbnail.exclude_files, ["**/*.map"]);
        assert!(manifest.components["upload-hook"].files.is_empty());
        assert_eq!(manifest.app_dir(), Path::new("/app"));
    }

    #[test]
    fn bad_files_entries_are_refused_by_key() {
        for (line, key, hint) in [
            (
                r#"files = [{ source = "web/dist", destination = "static" }]"#,
                "component.thumbnail.files[0].destination",
                "absolute",
            ),
            (
                r#"files = [{ source = "web/dist", destination = "/a/../.." }]"#,
                "component.thumbnail.files[0].destination",
                "`..`",
            ),
            (
                r#"files = ["x", { source = "../web/dist", destination = "/" }]"#,
                "component.thumbnail.files[1].source",
                "leaves the application directory",
            ),
            (
                r#"files = ["a/../../etc/*"]"#,
                "component.thumbnail.files[0]",
                "leaves the application directory",
            ),
            (
                r#"files = ["/etc/passwd"]"#,
                "component.thumbnail.files[0]",
                "absolute",
            ),
            (
                r#"files = ["static/.."]"#,
                "component.thumbnail.files[0]",
                "ends in",
            ),
            (
                r#"files = ["static/[a"]"#,
                "component.thumbnail.files[0]",
                "glob",
            ),
            (
                r#"files = [{ source = "web/dist" }]"#,
                "component.thumbnail.files[0]",
                "`destination` is missing",
            ),
            (
                r#"files = [{ source = "web/dist", destination = "/", mode = "rw" }]"#,
                "component.thumbnail.files[0].mode",
                "unknown field",
            ),
            (
                r#"files = [{ source = 1, destination = "/" }]"#,
                "component.thumbnail.files[0].source",
                "must be a string",
            ),
            (
                r#"files = [7]"#,
                "component.thumbnail.files[0]",
                "glob pattern",
            ),
            (
                r#"exclude_files = ["[x"]"#,
                "component.thumbnail.exclude_files[0]",
                "glob",
            ),
        ] {
            let error = parse(&with_thumbnail_lines(line)).unwrap_err();
            assert_eq!(error.key(), Some(key), "{line}: {error}");
            assert!(error.to_string().contains(hint), "{line}: {error}");
        }
    }

    #[test]
    fn escaping_is_judged_on_the_whole_path() {
        assert!(!escapes(Path::new("a/../b")));
        assert!(!escapes(Path::new("./a/b/../../c")));
        assert!(escapes(Path::new("..")));
        assert!(escapes(Path::new("a/../../b")));
        assert!(escapes(Path::new("/etc")));
    }

    #[test]
    fn component_ids_follow_spin_rules() {
        assert!(is_component_id("upload-hook"));
        assert!(is_component_id("thumbnail2"));
        assert!(!is_component_id("Upload"));
        assert!(!is_component_id("-x"));
        assert!(!is_component_id("x-"));
        assert!(!is_component_id("a--b"));
        let text = GOOD.replace("[component.thumbnail]", "[component.Thumbnail]");
        assert_eq!(error_key(&text), "component.Thumbnail");
    }
}
