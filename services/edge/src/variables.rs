//! Variable resolution: application variables from `SPIN_VARIABLE_<NAME>` environment variables
//! (as Spin does), then Storemesh configuration (`[edge.variables]`), then the manifest default;
//! component variables rendered from them.
//!
//! Everything is resolved once at start, so a missing required variable fails the start and names
//! the variable. Secret values (an application variable with `secret = true`, and any component
//! variable whose template uses one) are never logged: [`Value`]'s `Debug` redacts them.

use std::collections::BTreeMap;
use std::fmt;

use crate::manifest::{ComponentDecl, Manifest, OutboundRule};
use crate::outbound::{AllowedHost, AllowedHosts};

/// The prefix of the environment variables Spin reads application variables from.
pub const ENV_PREFIX: &str = "SPIN_VARIABLE_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    #[error(
        "required variable `{name}` has no value: set {ENV_PREFIX}{} or `edge.variables.{name}`",
        name.to_ascii_uppercase()
    )]
    MissingRequired { name: String },
    #[error(
        "invalid configuration key `edge.variables.{name}`: no variable `{name}` is declared in the manifest's [variables]"
    )]
    UnknownConfigured { name: String },
    /// Spin's environment provider fails on a set but non-Unicode variable
    /// (`failed to resolve env var ...`) instead of ignoring it.
    #[error("failed to resolve env var {env_name}: not valid Unicode")]
    NotUnicode { env_name: String },
    #[error(
        "`component.{component}.allowed_outbound_hosts[{index}]`: after substituting variables: {message}"
    )]
    AllowedHost {
        component: String,
        index: usize,
        message: String,
    },
}

/// A resolved value; `Debug` shows secrets as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    value: String,
    secret: bool,
}

impl Value {
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn is_secret(&self) -> bool {
        self.secret
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("<redacted>")
        } else {
            fmt::Debug::fmt(&self.value, f)
        }
    }
}

/// Where a value came from (logged at start; never the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    Configuration,
    Default,
}

/// Resolved application variables.
#[derive(Debug, Clone, Default)]
pub struct AppVariables {
    values: BTreeMap<String, (Value, Source)>,
}

impl AppVariables {
    /// Resolves every declared variable. `env` looks up an environment variable (injected for
    /// tests; production passes `std::env::var`). As Spin's `EnvVariablesProvider::get_sync`
    /// (`crates/factor-variables/src/spin_cli/env.rs`), the name is `SPIN_VARIABLE_` followed by
    /// the variable name upper-cased (`api_token` → `SPIN_VARIABLE_API_TOKEN`).
    pub fn resolve(
        manifest: &Manifest,
        configured: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Self, VariableError> {
        if let Some(name) = configured
            .keys()
            .find(|name| !manifest.variables.contains_key(*name))
        {
            return Err(VariableError::UnknownConfigured { name: name.clone() });
        }
        let mut values = BTreeMap::new();
        for (name, decl) in &manifest.variables {
            let env_name = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
            let from_env = match env(&env_name) {
                Ok(value) => Some(value),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(VariableError::NotUnicode { env_name });
                }
            };
            let (value, source) = if let Some(value) = from_env {
                (value, Source::Environment)
            } else if let Some(value) = configured.get(name) {
                (value.clone(), Source::Configuration)
            } else if let Some(value) = &decl.default {
                (value.clone(), Source::Default)
            } else {
                return Err(VariableError::MissingRequired { name: name.clone() });
            };
            values.insert(
                name.clone(),
                (
                    Value {
                        value,
                        secret: decl.secret,
                    },
                    source,
                ),
            );
        }
        Ok(Self { values })
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).map(|(value, _)| value)
    }

    /// `(name, source, secret)` for start-up logging.
    pub fn sources(&self) -> impl Iterator<Item = (&str, Source, bool)> {
        self.values
            .iter()
            .map(|(name, (value, source))| (name.as_str(), *source, value.secret))
    }
}

/// The variables one component can read through `fermyon:spin/variables`.
#[derive(Debug, Clone, Default)]
pub struct ComponentVariables {
    values: BTreeMap<String, Value>,
}

impl ComponentVariables {
    pub fn resolve(component: &ComponentDecl, app: &AppVariables) -> Self {
        let values = component
            .variables
            .iter()
            .map(|(name, template)| {
                let secret = template
                    .variables()
                    .any(|used| app.get(used).is_some_and(Value::is_secret));
                // References were checked against the declarations when the manifest was
                // parsed and every declared variable has a value, so rendering cannot miss.
                let value = template
                    .render(|used| app.get(used).map(Value::expose))
                    .unwrap_or_default();
                (name.clone(), Value { value, secret })
            })
            .collect();
        Self { values }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The component's outbound permissions with templates rendered.
pub fn allowed_hosts(
    component: &ComponentDecl,
    app: &AppVariables,
) -> Result<AllowedHosts, VariableError> {
    let mut hosts = Vec::new();
    for (index, rule) in component.allowed_outbound_hosts.iter().enumerate() {
        let error = |message: String| VariableError::AllowedHost {
            component: component.id.clone(),
            index,
            message,
        };
        match rule {
            OutboundRule::Literal(host) => hosts.push(host.clone()),
            OutboundRule::Template(template) => {
                let text = template
                    .render(|used| app.get(used).map(Value::expose))
                    .map_err(|name| error(format!("`{name}` has no value")))?;
                hosts.push(AllowedHost::parse(&text).map_err(|e| error(e.to_string()))?);
            }
        }
    }
    Ok(AllowedHosts::new(hosts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
host = { default = "127.0.0.1" }
port = { default = "80" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "app"
[component.app]
source = "app.wasm"
allowed_outbound_hosts = ["http://{{ host }}:{{ port }}"]
[component.app.variables]
url = "http://{{ host }}:{{ port }}/"
auth = "Bearer {{ token }}"
"#;

    fn manifest() -> Manifest {
        Manifest::parse(Path::new("spin.toml"), MANIFEST).unwrap()
    }

    fn env(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Result<String, std::env::VarError> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
                .ok_or(std::env::VarError::NotPresent)
        }
    }

    // Spin: crates/factor-variables/src/spin_cli/env.rs, EnvVariablesProvider::get_sync
    // (`{prefix}_{key.to_ascii_uppercase()}`, prefix `SPIN_VARIABLE`) and query_env (a value
    // that is not Unicode is an error, not "unset").
    #[test]
    fn environment_names_are_the_upper_cased_variable_names() {
        let manifest = manifest();
        let looked_up = std::cell::RefCell::new(Vec::new());
        let app = AppVariables::resolve(&manifest, &BTreeMap::new(), |name| {
            looked_up.borrow_mut().push(name.to_owned());
            match name {
                "SPIN_VARIABLE_TOKEN" => Ok("t".to_owned()),
                // Neither the lower-case nor the original spelling is consulted.
                _ => Err(std::env::VarError::NotPresent),
            }
        })
        .unwrap();
        assert_eq!(app.get("token").unwrap().expose(), "t");
        let mut names = looked_up.into_inner();
        names.sort();
        assert_eq!(
            names,
            [
                "SPIN_VARIABLE_HOST",
                "SPIN_VARIABLE_PORT",
                "SPIN_VARIABLE_TOKEN"
            ]
        );

        let error = AppVariables::resolve(&manifest, &BTreeMap::new(), |name| {
            if name == "SPIN_VARIABLE_HOST" {
                Err(std::env::VarError::NotUnicode("\u{fffd}".into()))
            } else {
                Ok("x".to_owned())
            }
        })
        .unwrap_err();
        assert_eq!(
            error,
            VariableError::NotUnicode {
                env_name: "SPIN_VARIABLE_HOST".into()
            }
        );
    }

    #[test]
    fn environment_beats_configuration_beats_default() {
        let manifest = manifest();
        let configured = BTreeMap::from([
            ("port".to_owned(), "8080".to_owned()),
            ("host".to_owned(), "config-host".to_owned()),
        ]);
        let app = AppVariables::resolve(
            &manifest,
            &configured,
            env(&[
                ("SPIN_VARIABLE_TOKEN", "s3cret"),
                ("SPIN_VARIABLE_HOST", "env-host"),
            ]),
        )
        .unwrap();
        assert_eq!(app.get("host").unwrap().expose(), "env-host");
        assert_eq!(app.get("port").unwrap().expose(), "8080");
        assert_eq!(app.get("token").unwrap().expose(), "s3cret");
        let sources: Vec<_> = app.sources().collect();
        assert!(sources.contains(&("host", Source::Environment, false)));
        assert!(sources.contains(&("port", Source::Configuration, false)));
        assert!(sources.contains(&("token", Source::Environment, true)));

        let app = AppVariables::resolve(
            &manifest,
            &BTreeMap::from([("token".to_owned(), "t".to_owned())]),
            env(&[]),
        )
        .unwrap();
        assert_eq!(app.get("port").unwrap().expose(), "80");
    }

    #[test]
    fn a_missing_required_variable_is_named() {
        let error = AppVariables::resolve(&manifest(), &BTreeMap::new(), env(&[])).unwrap_err();
        assert_eq!(
            error,
            VariableError::MissingRequired {
                name: "token".into()
            }
        );
        let message = error.to_string();
        assert!(message.contains("SPIN_VARIABLE_TOKEN"), "{message}");
        assert!(message.contains("edge.variables.token"), "{message}");
    }

    #[test]
    fn configured_variables_must_be_declared() {
        let configured = BTreeMap::from([("tokne".to_owned(), "x".to_owned())]);
        let error = AppVariables::resolve(&manifest(), &configured, env(&[])).unwrap_err();
        assert!(
            error.to_string().contains("edge.variables.tokne"),
            "{error}"
        );
    }

    #[test]
    fn component_variables_render_and_inherit_secrecy() {
        let manifest = manifest();
        let app = AppVariables::resolve(
            &manifest,
            &BTreeMap::new(),
            env(&[("SPIN_VARIABLE_TOKEN", "s3cret")]),
        )
        .unwrap();
        let vars = ComponentVariables::resolve(&manifest.components["app"], &app);
        assert_eq!(vars.get("url").unwrap().expose(), "http://127.0.0.1:80/");
        let auth = vars.get("auth").unwrap();
        assert_eq!(auth.expose(), "Bearer s3cret");
        assert!(auth.is_secret());
        assert!(!vars.get("url").unwrap().is_secret());
        // Secrets never show in debug output.
        let debug = format!("{vars:?} {app:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("127.0.0.1"), "{debug}");
    }

    #[test]
    fn templated_allowed_hosts_are_rendered() {
        let manifest = manifest();
        let app = AppVariables::resolve(
            &manifest,
            &BTreeMap::from([("port".to_owned(), "50050".to_owned())]),
            env(&[("SPIN_VARIABLE_TOKEN", "t")]),
        )
        .unwrap();
        let hosts = allowed_hosts(&manifest.components["app"], &app).unwrap();
        assert!(hosts.allows("http", "127.0.0.1", Some(50050)));
        assert!(!hosts.allows("http", "127.0.0.1", Some(80)));

        let app = AppVariables::resolve(
            &manifest,
            &BTreeMap::from([("port".to_owned(), "not-a-port".to_owned())]),
            env(&[("SPIN_VARIABLE_TOKEN", "t")]),
        )
        .unwrap();
        let error = allowed_hosts(&manifest.components["app"], &app).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("component.app.allowed_outbound_hosts[0]"),
            "{error}"
        );
    }
}
