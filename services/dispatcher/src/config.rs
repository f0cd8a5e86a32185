//! The `[dispatcher]` configuration section.
//!
//! With no `[dispatcher]` section at all the dispatcher runs the classic flow: new originals
//! (`products/*/originals/*`) go to the thumbnail function, new thumbnails
//! (`products/*/thumbnails/*/*`) to catalog `RecordVariant`, deletes are ignored, and the
//! reconciler runs every minute. Given `routes` or `schedules` replace the default lists;
//! given `targets` are merged by name into the default targets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storemesh_mesh::UpstreamConfig;
use storemesh_runtime::backoff::{Backoff, BackoffError, Jitter};
use storemesh_runtime::config::{ConfigError, Validate};
use storemesh_runtime::{Secret, ServerConfig};

use crate::plan::{Action, Plan, SchedulePlan, TargetPlan};
use crate::retry::Policy;
use crate::routing::{EventKind, RouteTable};
use crate::schedule::Schedule;
use crate::target::TargetSettings;

/// Default of `dispatcher.dlq_max_entries`.
pub const DEFAULT_DLQ_MAX_ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Health, reflection and the admin port (`/metrics`, `/healthz`, `/readyz`).
    pub server: ServerConfig,
    /// The storage event stream (`storage.events.stream`).
    pub stream: String,
    /// Consumer group shared by every dispatcher instance.
    pub group: String,
    /// This instance's consumer name; empty = `{hostname}-{pid}-{random}`, unique per start.
    /// Must be unique among running instances. A stable name (e.g. a StatefulSet pod name)
    /// lets a restarted instance resume its own unacknowledged events at once.
    pub consumer: String,
    /// The dead-letter stream.
    pub dlq_stream: String,
    /// Most entries the dead-letter stream keeps: every append trims it (`XADD … MAXLEN ~`),
    /// dropping the oldest, so a target that refuses everything cannot fill Redis. Trimming
    /// is approximate (whole stream nodes, `stream-node-max-entries`, 100 by default), so the
    /// stream may hold up to one node more than this.
    pub dlq_max_entries: u64,
    /// Sorted set of scheduled retries (score = due time, ms).
    pub retry_key: String,
    /// Prefix of the scheduler's and reconciler's Redis keys (locks, firing marks).
    pub key_prefix: String,
    /// Stream entries read at once.
    pub batch_size: usize,
    /// Longest wait of one blocking stream read, in milliseconds (kept below
    /// `redis.response_timeout_ms`).
    pub block_ms: u64,
    /// Events handled at once by this instance (stream entries and retries together).
    pub max_in_flight: usize,
    /// Stream entries and retries another instance took and did not finish are taken over
    /// after being idle this long, in milliseconds. Must exceed the longest target timeout.
    pub claim_idle_ms: u64,
    /// How often abandoned entries are looked for, in milliseconds.
    pub claim_interval_ms: u64,
    /// Consumers of the group with nothing pending and idle this long (instances that
    /// stopped; every start has a new name unless `consumer` is set) are removed from the
    /// group, in milliseconds.
    pub forget_consumers_after_ms: u64,
    /// How often due retries are looked for, in milliseconds.
    pub retry_poll_ms: u64,
    /// Attempts per event and target, the first one included (4 = 3 retries).
    pub max_attempts: u32,
    /// Backoff before retry n: full jitter over `min(max_backoff_ms, initial_backoff_ms·2^(n-1))`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Events older than this (commit time) are dead-lettered instead of delivered.
    pub max_event_age_secs: u64,
    /// HMAC secrets signing HTTP deliveries (at least 16 bytes each); all of them sign, so a
    /// new secret can be rolled out before the old one is removed.
    pub signing_secrets: Vec<Secret>,
    /// Service account used for gRPC targets and the reconciler (token from
    /// `AuthService.IssueServiceToken` at `tokens.auth_endpoint`). Needs scopes
    /// `catalog.write:variants`, `catalog.read` and `storage.read`.
    pub service_client_id: String,
    pub service_client_secret: Secret,
    /// The catalog replicas (for `record_variant` targets and the reconciler).
    pub catalog: UpstreamConfig,
    /// The storage replicas (the reconciler's `Stat`).
    pub storage: UpstreamConfig,
    /// Named delivery targets.
    pub targets: BTreeMap<String, TargetConfig>,
    /// Event routing rules; an event goes to the targets of every rule it matches (once per
    /// target).
    pub routes: Vec<RouteConfig>,
    /// Scheduled triggers.
    pub schedules: Vec<ScheduleConfig>,
    pub reconciler: ReconcilerConfig,
}

/// What a target does with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// `POST url` with a signed `Delivery` (see `storemesh_delivery`).
    Http,
    /// `CatalogService.RecordVariant` for a new thumbnail, through the mesh.
    RecordVariant,
    /// The reconciler job (schedules only).
    Reconciler,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    pub kind: TargetKind,
    /// `http://host:port/path` for `http` targets.
    pub url: String,
    /// Deadline of one delivery attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Deliveries to this target in flight at once (per instance).
    pub concurrency: usize,
    /// Key globs this target writes objects under; a rule whose events those writes would
    /// trigger, directly or through other targets, is refused at start (a loop).
    pub produces: Vec<String>,
    /// Overrides `dispatcher.max_attempts` for this target.
    pub max_attempts: Option<u32>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            kind: TargetKind::Http,
            url: String::new(),
            timeout_ms: 30_000,
            concurrency: 16,
            produces: Vec::new(),
            max_attempts: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Names the rule in logs and errors.
    pub name: String,
    /// Event types: `ObjectCreated`, `ObjectDeleted` (or their `EVENT_TYPE_*` names).
    pub events: Vec<EventKind>,
    /// The key must start with this (empty = any).
    pub key_prefix: String,
    /// The key must end with this (empty = any).
    pub key_suffix: String,
    /// The key must match this segment glob (empty = any); `*` within a segment, `**` across.
    pub key_glob: String,
    /// Name of a target in `dispatcher.targets`.
    pub target: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            events: vec![EventKind::ObjectCreated],
            key_prefix: String::new(),
            key_suffix: String::new(),
            key_glob: String::new(),
            target: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: String,
    /// `rate(5 minutes)`, `cron(0 3 * * *)` or a bare cron expression (5 or 6 fields, UTC).
    pub schedule: String,
    /// Name of a `reconciler` target.
    pub target: String,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            schedule: "rate(1 minute)".into(),
            target: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcilerConfig {
    /// An image `PROCESSING` without change for this long is stuck.
    pub stuck_after_secs: u64,
    /// Re-emissions per image; after that the image is marked `FAILED`.
    pub max_reemits: u32,
    /// Longest run; the run lock expires after it so a crashed run does not block the next.
    pub lock_ttl_ms: u64,
    /// Images handled per run at most.
    pub max_images_per_run: usize,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            stuck_after_secs: 600,
            max_reemits: 3,
            lock_ttl_ms: 300_000,
            max_images_per_run: 1_000,
        }
    }
}

/// Scopes the dispatcher's service account needs (`dispatcher.service_client_id`):
/// `RecordVariant` and `MarkImageFailed`, `ListImages`, and the reconciler's storage `Stat`.
pub const SERVICE_SCOPES: &[&str] = &["catalog.write:variants", "catalog.read", "storage.read"];

/// Name of the default thumbnail function target.
pub const THUMBNAIL_TARGET: &str = "thumbnail";
/// Name of the default `RecordVariant` target.
pub const RECORD_VARIANT_TARGET: &str = "record-variant";
/// Name of the default reconciler target.
pub const RECONCILER_TARGET: &str = "reconciler";

fn default_targets() -> BTreeMap<String, TargetConfig> {
    BTreeMap::from([
        (
            THUMBNAIL_TARGET.to_owned(),
            TargetConfig {
                kind: TargetKind::Http,
                url: "http://127.0.0.1:3000/internal/thumbnail".into(),
                // Decoding and resizing a 12 MP original takes seconds.
                timeout_ms: 60_000,
                concurrency: 8,
                produces: vec!["products/*/thumbnails/**".into()],
                max_attempts: None,
            },
        ),
        (
            RECORD_VARIANT_TARGET.to_owned(),
            TargetConfig {
                kind: TargetKind::RecordVariant,
                timeout_ms: 10_000,
                concurrency: 32,
                ..TargetConfig::default()
            },
        ),
        (
            RECONCILER_TARGET.to_owned(),
            TargetConfig {
                kind: TargetKind::Reconciler,
                timeout_ms: 300_000,
                concurrency: 1,
                ..TargetConfig::default()
            },
        ),
    ])
}

fn default_routes() -> Vec<RouteConfig> {
    vec![
        RouteConfig {
            name: "originals".into(),
            key_glob: "products/*/originals/*".into(),
            target: THUMBNAIL_TARGET.into(),
            ..RouteConfig::default()
        },
        RouteConfig {
            name: "thumbnails".into(),
            key_glob: "products/*/thumbnails/*/*".into(),
            target: RECORD_VARIANT_TARGET.into(),
            ..RouteConfig::default()
        },
    ]
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::on_ports(50054, 9054),
            stream: "storage:events".into(),
            group: "dispatcher".into(),
            consumer: String::new(),
            dlq_stream: "dispatcher:dlq".into(),
            dlq_max_entries: DEFAULT_DLQ_MAX_ENTRIES,
            retry_key: "dispatcher:retries".into(),
            key_prefix: "dispatcher:".into(),
            batch_size: 32,
            block_ms: 1_000,
            max_in_flight: 256,
            claim_idle_ms: 120_000,
            claim_interval_ms: 5_000,
            forget_consumers_after_ms: 3_600_000,
            retry_poll_ms: 250,
            max_attempts: 4,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            max_event_age_secs: 86_400,
            signing_secrets: Vec::new(),
            service_client_id: String::new(),
            service_client_secret: Secret::default(),
            catalog: UpstreamConfig::addresses(["127.0.0.1:50052"]),
            storage: UpstreamConfig::addresses(["127.0.0.1:50053"]),
            targets: default_targets(),
            routes: default_routes(),
            schedules: vec![ScheduleConfig {
                name: "reconcile-processing".into(),
                schedule: "rate(1 minute)".into(),
                target: RECONCILER_TARGET.into(),
            }],
            reconciler: ReconcilerConfig::default(),
        }
    }
}

impl DispatcherConfig {
    /// The delay before retry n: full jitter under
    /// `min(max_backoff_ms, initial_backoff_ms·2^(n-1))`. Refused (when the section is
    /// validated) for `initial_backoff_ms = 0` or `max_backoff_ms < initial_backoff_ms`.
    pub fn retry_backoff(&self) -> Result<Backoff, BackoffError> {
        Backoff::exponential(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
            Jitter::Full,
        )
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Validate for DispatcherConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        self.catalog.resolve_paths(base);
        self.storage.resolve_paths(base);
    }

    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        self.plan(section).map(drop)
    }
}

impl DispatcherConfig {
    /// Checks the section, naming the full key of what is wrong, and parses it into the
    /// [`Plan`] the dispatcher runs (the section's validation is this call).
    pub fn plan(&self, section: &str) -> Result<Plan, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: format!("{section}.{field}"),
            message,
        };
        self.server.validate(&format!("{section}.server"))?;
        self.catalog.validate(&format!("{section}.catalog"))?;
        self.storage.validate(&format!("{section}.storage"))?;
        for (field, value) in [
            ("stream", &self.stream),
            ("group", &self.group),
            ("dlq_stream", &self.dlq_stream),
            ("retry_key", &self.retry_key),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(field, "must not be empty".into()));
            }
        }
        if !(1..=100_000_000).contains(&self.dlq_max_entries) {
            return Err(invalid(
                "dlq_max_entries",
                "must be between 1 and 100000000".into(),
            ));
        }
        if !(1..=1_000).contains(&self.batch_size) {
            return Err(invalid("batch_size", "must be between 1 and 1000".into()));
        }
        if !(1..=60_000).contains(&self.block_ms) {
            return Err(invalid("block_ms", "must be between 1 and 60000".into()));
        }
        if !(1..=100_000).contains(&self.max_in_flight) {
            return Err(invalid(
                "max_in_flight",
                "must be between 1 and 100000".into(),
            ));
        }
        if self.claim_interval_ms == 0 || self.retry_poll_ms == 0 {
            return Err(invalid(
                "claim_interval_ms",
                "claim_interval_ms and retry_poll_ms must be at least 1".into(),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid("max_attempts", "must be between 1 and 100".into()));
        }
        let Ok(retry) = self.retry_backoff() else {
            return Err(invalid(
                "max_backoff_ms",
                "initial_backoff_ms must be at least 1 and max_backoff_ms at least initial_backoff_ms"
                    .into(),
            ));
        };
        if self.forget_consumers_after_ms < 1_000 {
            return Err(invalid(
                "forget_consumers_after_ms",
                "must be at least 1000".into(),
            ));
        }
        if self.max_event_age_secs == 0 {
            return Err(invalid("max_event_age_secs", "must be at least 1".into()));
        }
        if self.signing_secrets.len() > storemesh_delivery::MAX_SIGNATURES {
            return Err(invalid(
                "signing_secrets",
                format!(
                    "at most {} secrets (receivers refuse more signatures)",
                    storemesh_delivery::MAX_SIGNATURES
                ),
            ));
        }
        if let Some(index) = self
            .signing_secrets
            .iter()
            .position(|secret| secret.expose().len() < storemesh_delivery::MIN_SECRET_LEN)
        {
            return Err(invalid(
                &format!("signing_secrets[{index}]"),
                format!(
                    "must be at least {} bytes",
                    storemesh_delivery::MIN_SECRET_LEN
                ),
            ));
        }
        if self.service_client_id.is_empty() != self.service_client_secret.is_empty() {
            return Err(invalid(
                "service_client_secret",
                "service_client_id and service_client_secret are set together".into(),
            ));
        }
        let mut targets = BTreeMap::new();
        for (name, target) in &self.targets {
            let field = |rest: &str| format!("targets.{name}.{rest}");
            if !is_name(name) {
                return Err(invalid(
                    &format!("targets.{name}"),
                    "target names are 1 to 64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            let action = match target.kind {
                TargetKind::Http => {
                    let uri = target.url.parse::<http::Uri>().ok().filter(|uri| {
                        uri.scheme_str() == Some("http") && uri.authority().is_some()
                    });
                    let Some(uri) = uri else {
                        return Err(invalid(
                            &field("url"),
                            "must be an http://host:port/path URL".into(),
                        ));
                    };
                    Action::Http(uri)
                }
                TargetKind::RecordVariant => Action::RecordVariant,
                TargetKind::Reconciler => Action::Reconciler,
            };
            if target.timeout_ms == 0 {
                return Err(invalid(&field("timeout_ms"), "must be at least 1".into()));
            }
            if target.kind != TargetKind::Reconciler && target.timeout_ms >= self.claim_idle_ms {
                return Err(invalid(
                    &field("timeout_ms"),
                    format!(
                        "must be below {section}.claim_idle_ms ({}), or another instance takes the event over while it is still being delivered",
                        self.claim_idle_ms
                    ),
                ));
            }
            if !(1..=10_000).contains(&target.concurrency) {
                return Err(invalid(
                    &field("concurrency"),
                    "must be between 1 and 10000".into(),
                ));
            }
            if target
                .max_attempts
                .is_some_and(|attempts| !(1..=100).contains(&attempts))
            {
                return Err(invalid(
                    &field("max_attempts"),
                    "must be between 1 and 100".into(),
                ));
            }
            let settings = TargetSettings {
                timeout: Duration::from_millis(target.timeout_ms),
                concurrency: target.concurrency,
                policy: Policy {
                    max_attempts: target.max_attempts.unwrap_or(self.max_attempts),
                    backoff: retry,
                },
            };
            let used = self.routes.iter().any(|route| route.target == *name)
                || self
                    .schedules
                    .iter()
                    .any(|schedule| schedule.target == *name);
            targets.insert(
                name.clone(),
                TargetPlan {
                    action,
                    settings,
                    used,
                },
            );
        }
        // Rules: names, targets, and no loops (see `routing`).
        let routes =
            RouteTable::new(&self.routes, &self.targets).map_err(|error| ConfigError::Invalid {
                key: format!("{section}.routes"),
                message: error.to_string(),
            })?;
        let mut schedules = Vec::new();
        let mut names = Vec::new();
        for (index, schedule) in self.schedules.iter().enumerate() {
            let field = |rest: &str| format!("schedules[{index}].{rest}");
            if !is_name(&schedule.name) || names.contains(&schedule.name.as_str()) {
                return Err(invalid(
                    &field("name"),
                    "schedule names are unique, 1 to 64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            names.push(schedule.name.as_str());
            let parsed = Schedule::parse(&schedule.schedule)
                .map_err(|error| invalid(&field("schedule"), error.to_string()))?;
            match self.targets.get(&schedule.target) {
                Some(target) if target.kind == TargetKind::Reconciler => {}
                Some(_) => {
                    return Err(invalid(
                        &field("target"),
                        format!("`{}` is not a reconciler target", schedule.target),
                    ));
                }
                None => {
                    return Err(invalid(
                        &field("target"),
                        format!("no target named `{}`", schedule.target),
                    ));
                }
            }
            schedules.push(SchedulePlan {
                name: schedule.name.clone(),
                schedule: parsed,
                target: schedule.target.clone(),
            });
        }
        let reconciler = &self.reconciler;
        if reconciler.stuck_after_secs == 0 || reconciler.lock_ttl_ms < 1_000 {
            return Err(invalid(
                "reconciler.stuck_after_secs",
                "stuck_after_secs must be at least 1 and lock_ttl_ms at least 1000".into(),
            ));
        }
        if !(1..=100_000).contains(&reconciler.max_images_per_run) {
            return Err(invalid(
                "reconciler.max_images_per_run",
                "must be between 1 and 100000".into(),
            ));
        }
        Ok(Plan {
            routes,
            targets,
            retry,
            schedules,
        })
    }
}

#[cfg(test)]
mod tests {
    use storemesh_runtime::ConfigLoader;

    use super::*;

    #[test]
    fn defaults_are_the_classic_flow() {
        let config: DispatcherConfig = ConfigLoader::from_toml_str("")
            .section("dispatcher")
            .unwrap();
        assert_eq!(config.server.listen.port(), 50054);
        assert_eq!(config.server.admin_listen.port(), 9054);
        assert_eq!(config.stream, "storage:events");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.max_attempts, 4);
        let table = RouteTable::new(&config.routes, &config.targets).unwrap();
        assert_eq!(
            table.targets_for(EventKind::ObjectCreated, "products/p/originals/i"),
            [THUMBNAIL_TARGET]
        );
        assert_eq!(
            table.targets_for(EventKind::ObjectCreated, "products/p/thumbnails/i/w160.jpg"),
            [RECORD_VARIANT_TARGET]
        );
        assert!(
            table
                .targets_for(EventKind::ObjectDeleted, "products/p/originals/i")
                .is_empty()
        );
    }

    #[test]
    fn given_targets_merge_into_the_defaults() {
        let config: DispatcherConfig = ConfigLoader::from_toml_str(
            "[dispatcher.targets.thumbnail]\nurl = \"http://10.0.0.1:3000/internal/thumbnail\"\nkind = \"http\"\n",
        )
        .section("dispatcher")
        .unwrap();
        assert_eq!(
            config.targets[THUMBNAIL_TARGET].url,
            "http://10.0.0.1:3000/internal/thumbnail"
        );
        assert!(config.targets.contains_key(RECORD_VARIANT_TARGET));
    }

    #[test]
    fn rules_and_schedules_from_toml() {
        let toml = r#"
[dispatcher]
signing_secrets = ["0123456789abcdef", "fedcba9876543210"]

[dispatcher.targets.audit]
kind = "http"
url = "http://10.0.0.2:8080/audit"
timeout_ms = 5000
concurrency = 2
max_attempts = 10

[[dispatcher.routes]]
name = "deletes"
events = ["EVENT_TYPE_OBJECT_DELETED", "ObjectCreated"]
key_prefix = "products/"
key_suffix = ".jpg"
target = "audit"

[[dispatcher.schedules]]
name = "nightly"
schedule = "cron(0 3 * * *)"
target = "reconciler"
"#;
        let config: DispatcherConfig = ConfigLoader::from_toml_str(toml)
            .section("dispatcher")
            .unwrap();
        assert_eq!(config.routes.len(), 1, "given rules replace the defaults");
        assert_eq!(
            config.routes[0].events,
            [EventKind::ObjectDeleted, EventKind::ObjectCreated]
        );
        assert_eq!(config.targets["audit"].max_attempts, Some(10));
        assert_eq!(config.schedules[0].name, "nightly");
        let table = RouteTable::new(&config.routes, &config.targets).unwrap();
        assert_eq!(
            table.targets_for(EventKind::ObjectDeleted, "products/p/x.jpg"),
            ["audit"]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let config: DispatcherConfig = ConfigLoader::from_toml_str(
            "[dispatcher]\nsigning_secrets = [\"signing-secret-4711-abcdef\"]\n\
             service_client_id = \"dispatcher\"\nservice_client_secret = \"client-secret-4711-abcdef\"\n",
        )
        .section("dispatcher")
        .unwrap();
        assert_eq!(
            config.signing_secrets[0].expose(),
            "signing-secret-4711-abcdef"
        );
        assert_eq!(
            config.service_client_secret.expose(),
            "client-secret-4711-abcdef"
        );
        let debug = format!("{config:?}");
        for secret in ["signing-secret-4711", "client-secret-4711"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("\"dispatcher\""), "{debug}");
    }

    #[test]
    fn errors_name_the_full_key() {
        let cases = [
            ("[dispatcher]\nbatch_size = 0\n", "dispatcher.batch_size"),
            (
                "[dispatcher]\ndlq_max_entries = 0\n",
                "dispatcher.dlq_max_entries",
            ),
            (
                "[dispatcher]\nmax_attempts = 0\n",
                "dispatcher.max_attempts",
            ),
            (
                "[dispatcher]\nsigning_secrets = [\"short\"]\n",
                "dispatcher.signing_secrets[0]",
            ),
            (
                "[dispatcher]\nsigning_secrets = [\"0123456789abcdef1\", \"0123456789abcdef2\", \
                 \"0123456789abcdef3\", \"0123456789abcdef4\", \"0123456789abcdef5\"]\n",
                "dispatcher.signing_secrets",
            ),
            (
                "[dispatcher.targets.x]\nkind = \"http\"\nurl = \"ftp://x\"\n",
                "dispatcher.targets.x.url",
            ),
            (
                "[dispatcher.targets.thumbnail]\ntimeout_ms = 999999\n",
                "dispatcher.targets.thumbnail.timeout_ms",
            ),
            (
                "[[dispatcher.routes]]\nname = \"r\"\ntarget = \"nope\"\n",
                "dispatcher.routes",
            ),
            (
                "[[dispatcher.schedules]]\nname = \"s\"\nschedule = \"rate(0 minutes)\"\ntarget = \"reconciler\"\n",
                "dispatcher.schedules[0].schedule",
            ),
            (
                "[[dispatcher.schedules]]\nname = \"s\"\ntarget = \"thumbnail\"\n",
                "dispatcher.schedules[0].target",
            ),
            ("[dispatcher]\nbogus = 1\n", "bogus"),
        ];
        for (toml, key) in cases {
            let error = ConfigLoader::from_toml_str(toml)
                .section::<DispatcherConfig>("dispatcher")
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{toml:?}: {error}");
        }
    }
}
