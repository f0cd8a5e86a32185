//! The deployment files (`deploy/`, `docs/DEPLOY.md`) checked against the code they configure
//! and observe:
//!
//! - every configuration variable the Kubernetes overlays and the compose file hand a service
//!   is loaded by the real `ConfigLoader` into the real settings types (unknown keys, bad values
//!   and misspelt sections fail, naming the file and the key); the edge runtime's variables are
//!   resolved against the real root `spin.toml` as `storemesh serve edge` does at start;
//! - every Spin variable a deployment sets (`SPIN_VARIABLE_*`, `STOREMESH_EDGE__VARIABLES__*`,
//!   the SpinApp's `variables`, the Fermyon Cloud commands of docs/DEPLOY.md) is declared in
//!   `spin.toml` `[variables]`, and every required one gets a value;
//! - the edge's `thumbnail_sizes` in every deployment (and spin.toml's default) are the
//!   catalog's `variant_sizes` of the same deployment, so images become READY;
//! - every metric (every label matcher and every `by` label) the PrometheusRule alerts use is
//!   exported by real `storemesh serve` processes, scraped from their `/metrics` after real
//!   calls and real event deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value;
use storemesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use storemesh_proto::auth::v1::{LoginRequest, RegisterRequest, Role};
use storemesh_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use storemesh_proto::catalog::v1::{CreateProductRequest, GetProductRequest, Money};
use storemesh_proto::storage::v1::storage_service_client::StorageServiceClient;
use storemesh_proto::storage::v1::{UploadHeader, UploadRequest, upload_header, upload_request};
use storemesh_runtime::ConfigLoader;
use storemesh_testkit::{RedisServer, free_port};
use tonic::Request;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()));
            value.apply_merge().unwrap();
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A kustomize `envs` file: `KEY=VALUE` per line, `#` comments, no quoting.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `{line}` is not KEY=VALUE", path.display()));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// ConfigMap/Secret generators of a kustomization: name → env files (in merge order).
fn generators(dir: &Path, into: &mut BTreeMap<String, Vec<PathBuf>>) {
    let kustomization = &yaml_documents(&dir.join("kustomization.yaml"))[0];
    for kind in ["configMapGenerator", "secretGenerator"] {
        for generator in kustomization
            .get(kind)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = generator.get("name").and_then(Value::as_str).unwrap();
            let files = strings(generator.get("envs"));
            into.entry(name.to_owned())
                .or_default()
                .extend(files.iter().map(|file| dir.join(file)));
        }
    }
}

/// One service's environment as a deployment file sets it.
struct EnvSet {
    origin: String,
    service: String,
    env: Vec<(String, String)>,
}

/// The environment each Deployment's container gets in the `dev` and `prod` overlays: its
/// `envFrom` ConfigMaps and Secrets, resolved through the generators of base, component and
/// overlay. Production secrets are created by the operator (docs/DEPLOY.md) with the same keys
/// as the dev overlay's generated ones, so those stand in for them.
fn kubernetes_env_sets() -> Vec<EnvSet> {
    let k8s = deploy().join("k8s");
    let mut deployments = Vec::new();
    for file in std::fs::read_dir(k8s.join("base"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .chain([k8s.join("components/edge-runtime/edge.yaml")])
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
    {
        for document in yaml_documents(&file) {
            if document.get("kind").and_then(Value::as_str) == Some("Deployment") {
                deployments.push(document);
            }
        }
    }
    assert!(deployments.len() >= 6, "expected a Deployment per service");

    let mut sets = Vec::new();
    for overlay in ["dev", "prod"] {
        let mut sources = BTreeMap::new();
        generators(&k8s.join("base"), &mut sources);
        generators(&k8s.join("components/edge-runtime"), &mut sources);
        generators(&k8s.join("overlays").join(overlay), &mut sources);
        if overlay == "prod" {
            let mut dev = BTreeMap::new();
            generators(&k8s.join("overlays/dev"), &mut dev);
            for (name, files) in dev {
                if name != "storemesh-config" {
                    sources.entry(name).or_insert(files);
                }
            }
        }
        for deployment in &deployments {
            let container = &get(deployment, &["spec", "template", "spec", "containers"])
                .and_then(Value::as_sequence)
                .unwrap()[0];
            let args = strings(container.get("args"));
            assert_eq!(args[0], "serve", "{args:?}");
            let mut env = Vec::new();
            for source in container
                .get("envFrom")
                .and_then(Value::as_sequence)
                .unwrap()
            {
                let name = ["configMapRef", "secretRef"]
                    .iter()
                    .find_map(|kind| get(source, &[kind, "name"]).and_then(Value::as_str))
                    .unwrap();
                let files = sources.get(name).unwrap_or_else(|| {
                    panic!(
                        "{overlay}: {} reads {name}, which nothing generates",
                        args[1]
                    )
                });
                for file in files {
                    env.extend(env_file(file));
                }
            }
            sets.push(EnvSet {
                origin: format!("deploy/k8s/overlays/{overlay}"),
                service: args[1].clone(),
                env,
            });
        }
    }
    sets
}

/// Each compose service running `storemesh serve <name>`, with its `environment`.
fn compose_env_sets() -> Vec<EnvSet> {
    let compose = &yaml_documents(&deploy().join("compose/docker-compose.yaml"))[0];
    let mut sets = Vec::new();
    for (_, service) in compose.get("services").and_then(Value::as_mapping).unwrap() {
        let command = strings(service.get("command"));
        if command.first().map(String::as_str) != Some("serve") {
            continue;
        }
        let env = service
            .get("environment")
            .and_then(Value::as_mapping)
            .map(|map| {
                map.iter()
                    .map(|(key, value)| {
                        let value = match value {
                            Value::String(text) => text.clone(),
                            other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                        };
                        (key.as_str().unwrap().to_owned(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        sets.push(EnvSet {
            origin: "deploy/compose/docker-compose.yaml".into(),
            service: command[1].clone(),
            env,
        });
    }
    assert!(
        sets.len() >= 6,
        "expected every service in the compose file"
    );
    sets
}

/// Variables that are not `STOREMESH_*` but that a process reads.
fn foreign_variable_is_known(key: &str) -> bool {
    matches!(
        key,
        "REDIS_URL" | "OTEL_EXPORTER_OTLP_ENDPOINT" | "RUST_LOG"
    ) || key.starts_with("AWS_")
        || key.starts_with("SPIN_VARIABLE_")
}

/// The root `spin.toml`, parsed by the edge runtime's own manifest code.
fn spin_manifest() -> storemesh_edge::manifest::Manifest {
    storemesh_edge::manifest::Manifest::load(&repo().join("spin.toml"))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Runs in a child process (this test binary again, with exactly the deployment's
/// environment): loads every configuration section the environment names through the real
/// loader and settings types, and the service's own settings.
fn validate_in_child(service: &str) -> Result<(), String> {
    let loader = ConfigLoader::load(None).map_err(|error| error.to_string())?;
    let mut sections: BTreeSet<String> = std::env::vars()
        .filter_map(|(key, _)| {
            let rest = key.strip_prefix("STOREMESH_")?;
            Some(rest.split("__").next()?.to_lowercase())
        })
        .collect();
    sections.insert("telemetry".into());
    let owned = match service {
        "auth" => ["auth", "redis", "tokens"].as_slice(),
        "catalog" => &["catalog", "redis", "tokens"],
        "storage" => &["storage", "redis", "tokens"],
        "gateway" => &["gateway", "tokens"],
        "edge" => &["edge"],
        "dispatcher" => &["dispatcher", "redis", "tokens"],
        other => return Err(format!("no settings check for `storemesh serve {other}`")),
    };
    sections.extend(owned.iter().map(|name| (*name).to_owned()));
    let mut errors = Vec::new();
    for section in &sections {
        let loaded = match section.as_str() {
            "telemetry" => loader
                .section::<storemesh_runtime::telemetry::TelemetryConfig>("telemetry")
                .map(drop),
            "redis" => loader
                .section::<storemesh_runtime::redis::RedisConfig>("redis")
                .map(drop),
            "tokens" => loader
                .section::<storemesh_runtime::auth::TokensConfig>("tokens")
                .map(drop),
            "auth" => storemesh_auth::AuthSettings::load(&loader).map(drop),
            "catalog" => storemesh_catalog::CatalogSettings::load(&loader).map(drop),
            "storage" => storemesh_storage::StorageSettings::load(&loader).map(drop),
            "gateway" => storemesh_gateway::GatewaySettings::load(&loader).map(drop),
            // The other services get the shared ConfigMap's `edge` keys too, but only the edge
            // runtime gets its Spin variables.
            "edge" => match storemesh_edge::EdgeSettings::load(&loader) {
                Ok(settings) if service == "edge" => {
                    if let Err(error) = resolve_spin_variables(&settings.edge) {
                        errors.push(error);
                    }
                    Ok(())
                }
                loaded => loaded.map(drop),
            },
            "dispatcher" => storemesh_dispatcher::DispatcherSettings::load(&loader).map(drop),
            unknown => {
                errors.push(format!(
                    "STOREMESH_{}__*: no service reads a section `{unknown}`",
                    unknown.to_uppercase()
                ));
                Ok(())
            }
        };
        if let Err(error) = loaded {
            errors.push(error.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(())
}

/// What `storemesh serve edge` does with the variables at start, against the root `spin.toml`
/// (the image's `/app/spin.toml` is a copy of it): every `edge.variables` key must be declared,
/// every required variable must get a value (`SPIN_VARIABLE_*` or `edge.variables`), and the
/// rendered `allowed_outbound_hosts` must parse.
fn resolve_spin_variables(config: &storemesh_edge::EdgeConfig) -> Result<(), String> {
    use storemesh_edge::variables::{AppVariables, allowed_hosts};
    let manifest = spin_manifest();
    let resolved = AppVariables::resolve(&manifest, &config.variables, |name| std::env::var(name))
        .map_err(|error| error.to_string())?;
    for component in manifest.triggered_components() {
        allowed_hosts(component, &resolved).map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// Names the service to check in child mode (not `STOREMESH_*`: the loader would read it).
const CHILD: &str = "DEPLOY_TEST_CHILD_SERVICE";

#[test]
fn deployment_configuration_loads_into_the_real_settings() {
    if let Ok(service) = std::env::var(CHILD) {
        // Child mode: see `validate_in_child`.
        if let Err(error) = validate_in_child(&service) {
            eprintln!("CONFIG ERROR: {error}");
            std::process::exit(3);
        }
        return;
    }

    let declared = spin_manifest().variables;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut services = BTreeSet::new();
    for set in kubernetes_env_sets().into_iter().chain(compose_env_sets()) {
        let label = format!("{} ({})", set.origin, set.service);
        for (key, _) in &set.env {
            if let Some(name) = key.strip_prefix("SPIN_VARIABLE_") {
                // Spin and the embedded runtime ignore an undeclared one: a misspelt name
                // would silently leave the default in place.
                if !declared.contains_key(&name.to_lowercase()) {
                    failures.push(format!(
                        "{label}: {key} names no variable of spin.toml [variables]"
                    ));
                }
            } else if !key.starts_with("STOREMESH_") && !foreign_variable_is_known(key) {
                failures.push(format!("{label}: {key} is read by nothing"));
            }
        }
        services.insert(set.service.clone());
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "deployment_configuration_loads_into_the_real_settings",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .envs(set.env.iter().map(|(key, value)| (key, value)))
            .env(CHILD, &set.service)
            .output()
            .unwrap();
        checked += 1;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .find(|line| line.starts_with("CONFIG ERROR"))
                .unwrap_or(&stderr);
            failures.push(format!("{label}: {message}"));
        }
    }
    for service in [
        "auth",
        "catalog",
        "storage",
        "gateway",
        "dispatcher",
        "edge",
    ] {
        assert!(
            services.contains(service),
            "no deployment file runs `storemesh serve {service}`"
        );
    }
    assert!(checked >= 10, "only {checked} environments checked");
    assert!(
        failures.is_empty(),
        "deployment configuration the services refuse:\n{}",
        failures.join("\n")
    );
}

/// The Spin variables the SpinApp and the Fermyon Cloud commands of docs/DEPLOY.md set, and the
/// `SPIN_VARIABLE_*` keys DEPLOY.md names, against spin.toml `[variables]`: every name declared,
/// every required variable given a value. (The compose file and the Kubernetes overlays are
/// checked in `deployment_configuration_loads_into_the_real_settings`, through the runtime's own
/// resolution.)
#[test]
fn spin_variables_of_spinkube_and_fermyon_cloud_match_spin_toml() {
    let manifest = spin_manifest();
    let required: BTreeSet<&String> = manifest
        .variables
        .iter()
        .filter(|(_, decl)| decl.required || decl.default.is_none())
        .map(|(name, _)| name)
        .collect();
    assert!(
        !required.is_empty(),
        "spin.toml declares no required variable"
    );
    let mut failures = Vec::new();
    let check = |origin: &str, names: &BTreeSet<String>, failures: &mut Vec<String>| {
        for name in names {
            if !manifest.variables.contains_key(name) {
                failures.push(format!("{origin}: `{name}` is not declared in spin.toml"));
            }
        }
        for name in &required {
            if !names.contains(*name) {
                failures.push(format!(
                    "{origin}: required variable `{name}` gets no value"
                ));
            }
        }
    };

    // SpinKube: spec.variables; secrets from keys the `storemesh-edge` Secret has.
    let spinapp_path = deploy().join("k8s/spinkube/spinapp.yaml");
    let spinapp = yaml_documents(&spinapp_path)
        .into_iter()
        .find(|doc| doc.get("kind").and_then(Value::as_str) == Some("SpinApp"))
        .expect("no SpinApp in spinapp.yaml");
    let mut edge_secret = BTreeMap::new();
    generators(&deploy().join("k8s/overlays/dev"), &mut edge_secret);
    let edge_secret_keys: BTreeSet<String> = edge_secret
        .get("storemesh-edge")
        .expect("the dev overlay generates no storemesh-edge Secret")
        .iter()
        .flat_map(|file| env_file(file))
        .map(|(key, _)| key)
        .collect();
    let mut names = BTreeSet::new();
    for variable in get(&spinapp, &["spec", "variables"])
        .and_then(Value::as_sequence)
        .unwrap()
    {
        let name = variable.get("name").and_then(Value::as_str).unwrap();
        names.insert(name.to_owned());
        if let Some(key) = get(variable, &["valueFrom", "secretKeyRef"]) {
            let secret = key.get("name").and_then(Value::as_str).unwrap();
            let key = key.get("key").and_then(Value::as_str).unwrap();
            if secret != "storemesh-edge" || !edge_secret_keys.contains(key) {
                failures.push(format!(
                    "SpinApp variable `{name}`: Secret {secret} key {key} is not one of the \
                     storemesh-edge keys {edge_secret_keys:?}"
                ));
            }
        }
    }
    check("deploy/k8s/spinkube/spinapp.yaml", &names, &mut failures);

    // Fermyon Cloud: `spin cloud deploy --variable name=value` and `spin cloud variables set
    // name=value --app <application name>` in DEPLOY.md's section.
    let deploy_md = std::fs::read_to_string(repo().join("docs/DEPLOY.md")).unwrap();
    let fermyon = deploy_md
        .split("### Fermyon Cloud")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/DEPLOY.md has no `### Fermyon Cloud` section");
    let mut deployed = BTreeSet::new();
    let mut set_later = BTreeSet::new();
    let mut apps = BTreeSet::new();
    for line in fermyon.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let name_of = |word: &str| word.split_once('=').map(|(name, _)| name.to_owned());
        for pair in words.windows(2) {
            match pair[0] {
                "--variable" => deployed.extend(name_of(pair[1])),
                "--app" => {
                    apps.insert(pair[1].to_owned());
                }
                _ => {}
            }
        }
        if let Some(index) = words
            .windows(4)
            .position(|w| w == ["spin", "cloud", "variables", "set"])
        {
            set_later.extend(
                words[index + 4..]
                    .iter()
                    .take_while(|word| !word.starts_with("--"))
                    .filter_map(|word| name_of(word)),
            );
        }
    }
    // Spin refuses to start an application whose required variable has no value, so the
    // first deploy must carry them; `variables set` is for changing them afterwards.
    check(
        "docs/DEPLOY.md (spin cloud deploy)",
        &deployed,
        &mut failures,
    );
    for name in &set_later {
        if !manifest.variables.contains_key(name) {
            failures.push(format!(
                "docs/DEPLOY.md (spin cloud variables set): `{name}` is not declared in spin.toml"
            ));
        }
    }
    if apps != BTreeSet::from([manifest.name.clone()]) {
        failures.push(format!(
            "docs/DEPLOY.md: --app names {apps:?}, but the application is `{}` (spin.toml)",
            manifest.name
        ));
    }

    // Every `SPIN_VARIABLE_<NAME>` DEPLOY.md mentions (e.g. the Secret it tells you to create).
    for word in deploy_md.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("SPIN_VARIABLE_")
            && !name.is_empty()
            && !manifest.variables.contains_key(&name.to_lowercase())
        {
            failures.push(format!(
                "docs/DEPLOY.md: {word} names no variable of spin.toml"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "Spin variables that do not match spin.toml:\n{}",
        failures.join("\n")
    );
}

/// What one deployment (an overlay, the compose file) gives each service must fit together:
/// every service account a service logs in with exists in auth's `service_accounts` with that
/// secret and the scopes the service needs, the dispatcher signs with a secret the thumbnail
/// function accepts, and its thumbnail target is the edge runtime's port.
#[test]
fn services_of_one_deployment_share_accounts_and_secrets() {
    let manifest = spin_manifest();
    let mut deployments: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for set in kubernetes_env_sets().into_iter().chain(compose_env_sets()) {
        deployments
            .entry(set.origin)
            .or_default()
            .insert(set.service, set.env.into_iter().collect());
    }
    let toml_value = |text: &str| -> toml::Value {
        format!("value = {text}").parse::<toml::Table>().unwrap()["value"].clone()
    };
    let mut failures = Vec::new();
    for (origin, services) in &deployments {
        let env = |service: &str, key: &str| -> Option<String> {
            services.get(service).and_then(|env| env.get(key)).cloned()
        };
        // A Spin variable as the edge runtime resolves it (see `AppVariables::resolve`).
        let spin = |name: &str| -> Option<String> {
            let upper = name.to_uppercase();
            env("edge", &format!("SPIN_VARIABLE_{upper}"))
                .or_else(|| env("edge", &format!("STOREMESH_EDGE__VARIABLES__{upper}")))
                .or_else(|| manifest.variables.get(name)?.default.clone())
        };
        let accounts = env("auth", "STOREMESH_AUTH__SERVICE_ACCOUNTS")
            .map(|text| toml_value(&text))
            .and_then(|value| value.as_array().cloned())
            .unwrap_or_default();
        // The thumbnail function's scopes: spin.toml's comment on `thumbnail_client_id`, and
        // what `storemesh up` provisions.
        let thumbnail_scopes: &[&str] = &[
            "storage.read",
            "storage.write:thumbnails",
            "catalog.read",
            "catalog.write:variants",
        ];
        for (user, id, secret, scopes) in [
            (
                "catalog",
                env("catalog", "STOREMESH_CATALOG__SERVICE_CLIENT_ID"),
                env("catalog", "STOREMESH_CATALOG__SERVICE_CLIENT_SECRET"),
                &["storage.delete:products"][..],
            ),
            (
                "dispatcher",
                env("dispatcher", "STOREMESH_DISPATCHER__SERVICE_CLIENT_ID"),
                env("dispatcher", "STOREMESH_DISPATCHER__SERVICE_CLIENT_SECRET"),
                storemesh_dispatcher::config::SERVICE_SCOPES,
            ),
            (
                "edge (thumbnail function)",
                spin("thumbnail_client_id"),
                spin("thumbnail_client_secret"),
                thumbnail_scopes,
            ),
        ] {
            let (Some(id), Some(secret)) = (id, secret) else {
                failures.push(format!(
                    "{origin}: {user} has no service account configured"
                ));
                continue;
            };
            let account = accounts.iter().find(|account| {
                account.get("client_id").and_then(toml::Value::as_str) == Some(&id)
            });
            let Some(account) = account else {
                failures.push(format!(
                    "{origin}: auth has no service account `{id}` ({user})"
                ));
                continue;
            };
            if account.get("client_secret").and_then(toml::Value::as_str) != Some(&secret) {
                failures.push(format!(
                    "{origin}: {user} logs in as `{id}` with a secret auth does not have"
                ));
            }
            let granted: BTreeSet<&str> = account
                .get("scopes")
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(toml::Value::as_str)
                .collect();
            for scope in scopes {
                if !granted.contains(scope) {
                    failures.push(format!(
                        "{origin}: service account `{id}` ({user}) lacks scope {scope}"
                    ));
                }
            }
        }

        let signing: BTreeSet<String> = env("dispatcher", "STOREMESH_DISPATCHER__SIGNING_SECRETS")
            .map(|text| toml_value(&text))
            .and_then(|value| value.as_array().cloned())
            .into_iter()
            .flatten()
            .filter_map(|secret| secret.as_str().map(str::to_owned))
            .collect();
        let accepted: BTreeSet<String> = spin("delivery_signing_secret")
            .unwrap_or_default()
            .split(',')
            .map(|secret| secret.trim().to_owned())
            .collect();
        if signing.is_disjoint(&accepted) {
            failures.push(format!(
                "{origin}: the dispatcher signs with no secret the thumbnail function accepts"
            ));
        }

        let target = env(
            "dispatcher",
            "STOREMESH_DISPATCHER__TARGETS__THUMBNAIL__URL",
        )
        .unwrap_or_default();
        let edge_port = env("edge", "STOREMESH_EDGE__LISTEN")
            .and_then(|listen| listen.rsplit_once(':').map(|(_, port)| port.to_owned()))
            .unwrap_or_default();
        let uri: tonic::codegen::http::Uri = target.parse().unwrap_or_default();
        if uri.port_u16().map(|port| port.to_string()) != Some(edge_port.clone())
            || uri.path() != "/internal/thumbnail"
        {
            failures.push(format!(
                "{origin}: the dispatcher's thumbnail target `{target}` is not the edge \
                 runtime's /internal/thumbnail on port {edge_port}"
            ));
        }
    }
    assert!(deployments.len() >= 3, "{:?}", deployments.keys());
    assert!(
        failures.is_empty(),
        "services of one deployment that do not fit together:\n{}",
        failures.join("\n")
    );
}

/// One source for the thumbnail sizes: an image is READY once the catalog has a `w{N}` variant
/// for each of its `variant_sizes`, so the thumbnail function must make exactly those (`storemesh
/// up` derives its `thumbnail_sizes` from them). Every deployment file that sets the edge's
/// `thumbnail_sizes` (or leaves spin.toml's default) is checked against the catalog's
/// `variant_sizes` configured in the same deployment (or the catalog's default): the compose
/// file and the Kubernetes overlays, and the edge-only deployments against the overlays whose
/// mesh they call (the SpinApp, the Fermyon Cloud commands of docs/DEPLOY.md).
#[test]
fn thumbnail_sizes_of_every_deployment_are_the_catalogs_variant_sizes() {
    let manifest = spin_manifest();
    let default_sizes: BTreeSet<u32> = storemesh_catalog::CatalogConfig::default()
        .variant_sizes
        .into_iter()
        .collect();
    let edge_sizes = |text: &str| -> Result<BTreeSet<u32>, String> {
        text.split(',')
            .map(|size| {
                size.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{text}` is not a comma-separated list of sizes"))
            })
            .collect()
    };
    let mut failures = Vec::new();
    let compare = |origin: &str, edge: &str, catalog: &BTreeSet<u32>| match edge_sizes(edge) {
        Ok(sizes) if &sizes == catalog => None,
        Ok(sizes) => Some(format!(
            "{origin}: the edge makes thumbnails of {sizes:?}, the catalog waits for {catalog:?}"
        )),
        Err(error) => Some(format!("{origin}: thumbnail_sizes {error}")),
    };

    let spin_default = manifest
        .variables
        .get("thumbnail_sizes")
        .and_then(|declaration| declaration.default.clone())
        .expect("spin.toml declares thumbnail_sizes with a default");
    failures.extend(compare(
        "spin.toml (default)",
        &spin_default,
        &default_sizes,
    ));

    let mut deployments: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for set in kubernetes_env_sets().into_iter().chain(compose_env_sets()) {
        deployments
            .entry(set.origin)
            .or_default()
            .insert(set.service, set.env.into_iter().collect());
    }
    let mut overlay_sizes = Vec::new();
    for (origin, services) in &deployments {
        let env = |service: &str, key: &str| -> Option<String> {
            services.get(service).and_then(|env| env.get(key)).cloned()
        };
        let catalog: BTreeSet<u32> = match env("catalog", "STOREMESH_CATALOG__VARIANT_SIZES") {
            Some(text) => match format!("value = {text}").parse::<toml::Table>() {
                Ok(table) => table["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(toml::Value::as_integer)
                    .filter_map(|size| u32::try_from(size).ok())
                    .collect(),
                Err(error) => {
                    failures.push(format!(
                        "{origin}: STOREMESH_CATALOG__VARIANT_SIZES: {error}"
                    ));
                    continue;
                }
            },
            None => default_sizes.clone(),
        };
        // As the edge runtime resolves a Spin variable (see `AppVariables::resolve`).
        let edge = env("edge", "SPIN_VARIABLE_THUMBNAIL_SIZES")
            .or_else(|| env("edge", "STOREMESH_EDGE__VARIABLES__THUMBNAIL_SIZES"))
            .unwrap_or_else(|| spin_default.clone());
        failures.extend(compare(origin, &edge, &catalog));
        if origin.starts_with("deploy/k8s/overlays/") {
            overlay_sizes.push((origin.clone(), catalog));
        }
    }
    assert!(overlay_sizes.len() >= 2, "{:?}", deployments.keys());

    // SpinKube replaces the overlays' embedded edge runtime (docs/DEPLOY.md).
    let spinapp = yaml_documents(&deploy().join("k8s/spinkube/spinapp.yaml"))
        .into_iter()
        .find(|doc| doc.get("kind").and_then(Value::as_str) == Some("SpinApp"))
        .expect("no SpinApp in spinapp.yaml");
    let spinkube = get(&spinapp, &["spec", "variables"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|variable| variable.get("name").and_then(Value::as_str) == Some("thumbnail_sizes"))
        .and_then(|variable| variable.get("value").and_then(Value::as_str))
        .map_or_else(|| spin_default.clone(), str::to_owned);
    // Fermyon Cloud runs the functions against a mesh deployed with the overlays.
    let deploy_md = std::fs::read_to_string(repo().join("docs/DEPLOY.md")).unwrap();
    let fermyon = deploy_md
        .split("### Fermyon Cloud")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/DEPLOY.md has no `### Fermyon Cloud` section");
    let mut fermyon_values: Vec<String> = fermyon
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("thumbnail_sizes="))
        .map(str::to_owned)
        .collect();
    if fermyon_values.is_empty() {
        fermyon_values.push(spin_default.clone());
    }
    for (origin, catalog) in &overlay_sizes {
        failures.extend(compare(
            &format!("deploy/k8s/spinkube/spinapp.yaml with {origin}"),
            &spinkube,
            catalog,
        ));
        for value in &fermyon_values {
            failures.extend(compare(
                &format!("docs/DEPLOY.md (Fermyon Cloud) with {origin}"),
                value,
                catalog,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "thumbnail sizes the catalog does not wait for (or waits for in vain):\n{}",
        failures.join("\n")
    );
}

// ---- alerts against /metrics -------------------------------------------------------------------

/// Metrics Prometheus itself makes for every target (not exported by the code).
const PROMETHEUS_SERIES: &[&str] = &["up"];
/// Labels Prometheus attaches to every scraped series (target labels), not exported either.
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "app", "container"];
/// Every vector selector of an expression: metric name, and the labels it needs: its
/// label-matcher names and the `by (…)` labels of the aggregations around it (grouping by a
/// label the series lack silently merges everything into one group).
fn selectors(
    expr: &promql_parser::parser::Expr,
    grouping: &[String],
    out: &mut Vec<(String, Vec<String>)>,
) {
    use promql_parser::parser::{Expr, LabelModifier};
    let mut push = |selector: &promql_parser::parser::VectorSelector| {
        let name = selector.name.clone().or_else(|| {
            selector
                .matchers
                .matchers
                .iter()
                .find(|matcher| matcher.name == "__name__")
                .map(|matcher| matcher.value.clone())
        });
        let labels = selector
            .matchers
            .matchers
            .iter()
            .map(|matcher| matcher.name.clone())
            .filter(|name| name != "__name__")
            .chain(grouping.iter().cloned())
            .collect();
        out.push((name.expect("a selector without a metric name"), labels));
    };
    match expr {
        Expr::VectorSelector(selector) => push(selector),
        Expr::MatrixSelector(matrix) => push(&matrix.vs),
        Expr::Aggregate(aggregate) => {
            let mut inner = grouping.to_vec();
            if let Some(LabelModifier::Include(by)) = &aggregate.modifier {
                inner.extend(by.labels.iter().cloned());
            }
            selectors(&aggregate.expr, &inner, out);
            if let Some(param) = &aggregate.param {
                selectors(param, grouping, out);
            }
        }
        Expr::Unary(unary) => selectors(&unary.expr, grouping, out),
        Expr::Binary(binary) => {
            selectors(&binary.lhs, grouping, out);
            selectors(&binary.rhs, grouping, out);
        }
        Expr::Paren(paren) => selectors(&paren.expr, grouping, out),
        Expr::Subquery(subquery) => selectors(&subquery.expr, grouping, out),
        Expr::Call(call) => {
            for arg in &call.args.args {
                selectors(arg, grouping, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// (alert, metric, labels it needs) of every rule in deploy/k8s/components/monitoring/alerts.yaml.
fn alert_selectors() -> Vec<(String, String, Vec<String>)> {
    let path = deploy().join("k8s/components/monitoring/alerts.yaml");
    let rule = &yaml_documents(&path)[0];
    let mut found = Vec::new();
    for group in get(rule, &["spec", "groups"])
        .and_then(Value::as_sequence)
        .unwrap()
    {
        for rule in group.get("rules").and_then(Value::as_sequence).unwrap() {
            let alert = rule.get("alert").and_then(Value::as_str).unwrap();
            let expr = rule.get("expr").and_then(Value::as_str).unwrap();
            let parsed = promql_parser::parser::parse(expr)
                .unwrap_or_else(|error| panic!("alert {alert}: invalid PromQL: {error}"));
            let mut names = Vec::new();
            selectors(&parsed, &[], &mut names);
            assert!(!names.is_empty(), "alert {alert} selects no metric");
            found.extend(
                names
                    .into_iter()
                    .map(|(metric, labels)| (alert.to_owned(), metric, labels)),
            );
        }
    }
    found
}

/// Metric name → label names, from Prometheus text exposition.
fn exported(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if name.is_empty() {
            continue;
        }
        let entry = into.entry(name.to_owned()).or_default();
        for pair in labels.trim_end_matches('}').split(',') {
            if let Some((label, _)) = pair.split_once('=') {
                entry.insert(label.trim().to_owned());
            }
        }
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(service: &str, envs: &[(String, String)]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_storemesh"))
        .args(["serve", service])
        .env("STOREMESH_TELEMETRY__FILTER", "warn")
        .envs(envs.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

fn listeners(service: &str, grpc: u16, admin: u16) -> Vec<(String, String)> {
    let upper = service.to_uppercase();
    vec![
        (
            format!("STOREMESH_{upper}__SERVER__LISTEN"),
            format!("127.0.0.1:{grpc}"),
        ),
        (
            format!("STOREMESH_{upper}__SERVER__ADMIN_LISTEN"),
            format!("127.0.0.1:{admin}"),
        ),
    ]
}

/// `GET path` over HTTP/1.0: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

async fn wait_http_ok(port: u16, path: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let path = path.to_owned();
    loop {
        let probe = path.clone();
        let answer = tokio::task::spawn_blocking(move || http_get(port, &probe))
            .await
            .unwrap();
        if answer.is_some_and(|(status, _)| status == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await
        .unwrap()
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The dispatcher's service-account secret in the metrics test.
const DISPATCHER_SECRET: &str = "deploy-test-dispatcher-secret";
/// Enough of a PNG for storage's type sniffing (magic bytes and IHDR); nothing decodes it.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR not really a picture";

const EDGE_MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "deploy-metrics"

[[trigger.http]]
route = "/..."
component = "fixture"

[component.fixture]
source = "{app}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_name_only_metrics_the_services_export() {
    let rules = alert_selectors();
    let fixture =
        storemesh_edge::testing::fixture("edge-fixture-app").unwrap_or_else(|e| panic!("{e}"));
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = || free_port().unwrap();
    let (auth_grpc, auth_admin) = (port(), port());
    let (catalog_grpc, catalog_admin) = (port(), port());
    let (storage_grpc, storage_admin) = (port(), port());
    let (gateway_grpc, gateway_admin) = (port(), port());
    let (edge_http, edge_admin) = (port(), port());
    let (dispatcher_grpc, dispatcher_admin) = (port(), port());
    let common = vec![
        ("STOREMESH_REDIS__URL".to_owned(), redis.url()),
        (
            "STOREMESH_TOKENS__AUTH_ENDPOINT".to_owned(),
            format!("http://127.0.0.1:{auth_grpc}"),
        ),
    ];

    let mut auth_env = common.clone();
    auth_env.extend(listeners("auth", auth_grpc, auth_admin));
    auth_env.push((
        "STOREMESH_AUTH__KEYS_DIR".into(),
        dir.path().join("keys").display().to_string(),
    ));
    // One call at a time, so a burst of logins (Argon2id at its default cost) is shed and
    // grpc_server_shed_total exists.
    auth_env.push((
        "STOREMESH_AUTH__SERVER__CONCURRENCY_LIMIT".into(),
        "1".into(),
    ));
    // The dispatcher's service account, provisioned as `storemesh up` and the manifests do.
    let scopes: Vec<String> = storemesh_dispatcher::config::SERVICE_SCOPES
        .iter()
        .map(|scope| format!("\"{scope}\""))
        .collect();
    auth_env.push((
        "STOREMESH_AUTH__SERVICE_ACCOUNTS".into(),
        format!(
            "[{{client_id=\"dispatcher\", client_secret=\"{DISPATCHER_SECRET}\", scopes=[{}]}}]",
            scopes.join(", ")
        ),
    ));
    let _auth = serve("auth", &auth_env);

    let mut catalog_env = common.clone();
    catalog_env.extend(listeners("catalog", catalog_grpc, catalog_admin));
    catalog_env.push((
        "STOREMESH_CATALOG__STORAGE_ENDPOINT".into(),
        format!("http://127.0.0.1:{storage_grpc}"),
    ));
    let _catalog = serve("catalog", &catalog_env);

    let mut storage_env = common.clone();
    storage_env.extend(listeners("storage", storage_grpc, storage_admin));
    storage_env.push((
        "STOREMESH_STORAGE__DATA_DIR".into(),
        dir.path().join("objects").display().to_string(),
    ));
    storage_env.push((
        "STOREMESH_STORAGE__CATALOG_ENDPOINT".into(),
        format!("http://127.0.0.1:{catalog_grpc}"),
    ));
    let _storage = serve("storage", &storage_env);

    // The gateway finds its upstreams by DNS, as in Kubernetes (there: headless Services).
    let mut gateway_env = common.clone();
    gateway_env.extend(listeners("gateway", gateway_grpc, gateway_admin));
    for (name, grpc) in [
        ("AUTH", auth_grpc),
        ("CATALOG", catalog_grpc),
        ("STORAGE", storage_grpc),
    ] {
        gateway_env.push((
            format!("STOREMESH_GATEWAY__UPSTREAMS__{name}__DNS"),
            format!("localhost:{grpc}"),
        ));
        gateway_env.push((
            format!("STOREMESH_GATEWAY__UPSTREAMS__{name}__REFRESH_INTERVAL_MS"),
            "200".into(),
        ));
    }
    let _gateway = serve("gateway", &gateway_env);

    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        EDGE_MANIFEST.replace("{app}", &fixture.display().to_string()),
    )
    .unwrap();
    let edge_env = vec![
        (
            "STOREMESH_EDGE__LISTEN".to_owned(),
            format!("127.0.0.1:{edge_http}"),
        ),
        (
            "STOREMESH_EDGE__ADMIN_LISTEN".to_owned(),
            format!("127.0.0.1:{edge_admin}"),
        ),
        (
            "STOREMESH_EDGE__MANIFEST".to_owned(),
            manifest.display().to_string(),
        ),
        (
            "STOREMESH_EDGE__CACHE_DIR".to_owned(),
            dir.path().join("edge-cache").display().to_string(),
        ),
        // Short, so the fixture's endless loop is stopped (edge_errors_total) quickly.
        (
            "STOREMESH_EDGE__EXECUTION_TIMEOUT_MS".to_owned(),
            "500".into(),
        ),
    ];
    let _edge = serve("edge", &edge_env);

    // The dispatcher delivers each new original to two HTTP targets on the edge runtime's
    // fixture: `thumbnail` answers 200 (success, event age), `stalled` runs into the execution
    // limit and answers 5xx (retry, then dead letter after its 2 attempts).
    let edge_url = format!("http://127.0.0.1:{edge_http}");
    let mut dispatcher_env = common.clone();
    dispatcher_env.extend(listeners("dispatcher", dispatcher_grpc, dispatcher_admin));
    dispatcher_env.extend(
        [
            ("SIGNING_SECRETS", "[\"deploy-test-signing-secret\"]".to_owned()),
            ("SERVICE_CLIENT_ID", "dispatcher".to_owned()),
            ("SERVICE_CLIENT_SECRET", DISPATCHER_SECRET.to_owned()),
            ("CATALOG__ADDRESSES", format!("[\"127.0.0.1:{catalog_grpc}\"]")),
            ("STORAGE__ADDRESSES", format!("[\"127.0.0.1:{storage_grpc}\"]")),
            ("TARGETS__THUMBNAIL__URL", format!("{edge_url}/internal/thumbnail")),
            ("TARGETS__STALLED__KIND", "http".to_owned()),
            (
                "TARGETS__STALLED__URL",
                format!("{edge_url}/internal/stalled?action=loop"),
            ),
            ("TARGETS__STALLED__MAX_ATTEMPTS", "2".to_owned()),
            (
                "ROUTES",
                "[{name=\"originals\", key_glob=\"products/*/originals/*\", target=\"thumbnail\"}, \
                 {name=\"stalled\", key_glob=\"products/*/originals/*\", target=\"stalled\"}]"
                    .to_owned(),
            ),
            ("INITIAL_BACKOFF_MS", "50".to_owned()),
            ("MAX_BACKOFF_MS", "100".to_owned()),
            ("RETRY_POLL_MS", "50".to_owned()),
            ("CLAIM_INTERVAL_MS", "200".to_owned()),
            ("BLOCK_MS", "200".to_owned()),
        ]
        .map(|(key, value)| (format!("STOREMESH_DISPATCHER__{key}"), value)),
    );

    for (admin, what) in [
        (auth_admin, "auth"),
        (catalog_admin, "catalog"),
        (storage_admin, "storage"),
        (gateway_admin, "gateway"),
        (edge_admin, "edge"),
    ] {
        wait_http_ok(admin, "/readyz", what).await;
    }

    // Calls through the gateway: every service handles some, one fails.
    let gateway = format!("http://127.0.0.1:{gateway_grpc}");
    let mut auth = AuthServiceClient::connect(gateway.clone()).await.unwrap();
    let credentials = LoginRequest {
        email: "seller@example.com".into(),
        password: "a good long password".into(),
    };
    auth.register(RegisterRequest {
        email: credentials.email.clone(),
        password: credentials.password.clone(),
        display_name: "Seller".into(),
        role: Role::Seller.into(),
    })
    .await
    .unwrap();
    let token = auth
        .login(credentials.clone())
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let mut catalog = CatalogServiceClient::connect(gateway.clone())
        .await
        .unwrap();
    let product = catalog
        .create_product(bearer(
            CreateProductRequest {
                title: "Lamp".into(),
                price: Some(Money {
                    amount_minor: 4_500,
                    currency_code: "EUR".into(),
                }),
                ..CreateProductRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    catalog
        .get_product(bearer(
            GetProductRequest {
                id: product.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap();
    let missing = catalog
        .get_product(bearer(
            GetProductRequest {
                id: "no-such-product".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_ne!(missing.code(), tonic::Code::Ok);

    // A real event: the seller uploads an original through the gateway; storage commits it
    // and appends `ObjectCreated` to its stream, which the dispatcher delivers.
    let mut storage = StorageServiceClient::connect(gateway.clone())
        .await
        .unwrap();
    let upload = [
        UploadRequest {
            payload: Some(upload_request::Payload::Header(UploadHeader {
                target: Some(upload_header::Target::KeyPrefix(format!(
                    "products/{}/originals/",
                    product.id
                ))),
                content_type: "image/png".into(),
                ..UploadHeader::default()
            })),
        },
        UploadRequest {
            payload: Some(upload_request::Payload::Chunk(PNG.to_vec())),
        },
    ];
    storage
        .upload(bearer(futures::stream::iter(upload), &token))
        .await
        .unwrap();
    // Started only now (a new consumer group reads the stream from its start, so the event
    // waits for it): its service-token call must not meet the one-call-at-a-time auth while
    // the calls above need it.
    let _dispatcher = serve("dispatcher", &dispatcher_env);
    wait_http_ok(dispatcher_admin, "/readyz", "dispatcher").await;

    // Edge invocations: one that answers, one stopped by the execution limit.
    let (status, _) = tokio::task::spawn_blocking(move || http_get(edge_http, "/?action=info"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = tokio::task::spawn_blocking(move || http_get(edge_http, "/?action=loop"))
        .await
        .unwrap()
        .unwrap();
    assert!(status >= 500, "the endless loop answered {status}");

    // Load shedding: bursts of logins straight at auth (limit 1) until one is refused.
    let direct = format!("http://127.0.0.1:{auth_grpc}");
    let mut shed = false;
    for _ in 0..20 {
        let mut burst = Vec::new();
        for _ in 0..6 {
            let (direct, credentials) = (direct.clone(), credentials.clone());
            burst.push(tokio::spawn(async move {
                let mut client = AuthServiceClient::connect(direct).await.unwrap();
                client.login(credentials).await
            }));
        }
        for call in burst {
            if let Err(status) = call.await.unwrap()
                && status.code() == tonic::Code::ResourceExhausted
            {
                shed = true;
            }
        }
        if shed {
            break;
        }
    }
    assert!(shed, "no login was shed at concurrency limit 1");

    // Until both targets have their outcome (the gauges are refreshed every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(dispatcher_admin).await;
        let delivered = |target: &str, outcome: &str| {
            text.lines().any(|line| {
                line.starts_with("dispatcher_deliveries_total{")
                    && line.contains(&format!("target=\"{target}\""))
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
        };
        if delivered("thumbnail", "success")
            && delivered("stalled", "retry")
            && delivered("stalled", "dead_letter")
            && text
                .lines()
                .any(|line| line.starts_with("dispatcher_dlq_entries 1"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dispatcher did not deliver the upload's event as expected; /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut metrics = BTreeMap::new();
    for admin in [
        auth_admin,
        catalog_admin,
        storage_admin,
        gateway_admin,
        edge_admin,
        dispatcher_admin,
    ] {
        exported(&scrape(admin).await, &mut metrics);
    }

    let mut problems = Vec::new();
    for (alert, metric, labels) in &rules {
        if PROMETHEUS_SERIES.contains(&metric.as_str()) {
            continue;
        }
        let Some(exported_labels) = metrics.get(metric) else {
            problems.push(format!("{alert}: {metric} is not exported by any service"));
            continue;
        };
        for label in labels {
            if !exported_labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!(
                    "{alert}: {metric} has no label `{label}` (it has {exported_labels:?})"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "alerts that name what the code does not export:\n{}",
        problems.join("\n")
    );
}
