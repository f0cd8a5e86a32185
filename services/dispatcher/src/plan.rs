//! The `[dispatcher]` section parsed once into what the dispatcher runs: the compiled rules,
//! every target with its URL, limits and retry policy, and the parsed schedules.
//!
//! [`DispatcherConfig::plan`](crate::config::DispatcherConfig::plan) checks the section and produces the plan; the section's
//! validation is that same call, so a section that loads has a plan, and [`crate::build`]
//! starts from the plan instead of parsing the section again.

use std::collections::BTreeMap;

use storemesh_runtime::backoff::Backoff;

use crate::config::TargetKind;
use crate::routing::RouteTable;
use crate::schedule::Schedule;
use crate::target::TargetSettings;

/// A checked `[dispatcher]` section, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rules: names, targets and loops checked (see [`crate::routing`]).
    pub routes: RouteTable,
    /// Every configured target, by name.
    pub targets: BTreeMap<String, TargetPlan>,
    /// The delay before retry n (`initial_backoff_ms`, `max_backoff_ms`, full jitter); every
    /// target's policy uses it.
    pub retry: Backoff,
    /// The scheduled triggers, in configuration order.
    pub schedules: Vec<SchedulePlan>,
}

/// One target of the plan.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub action: Action,
    /// Timeout, concurrency and the retry policy (`max_attempts`: the target's own, else the
    /// section's).
    pub settings: TargetSettings,
    /// Named by a rule or a schedule; an unused target is configured but never delivered to.
    pub used: bool,
}

/// What a target does with an event (see [`TargetKind`]), with what it needs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST` a signed delivery to this `http://host:port/path` URL.
    Http(http::Uri),
    RecordVariant,
    Reconciler,
}

impl Action {
    pub fn kind(&self) -> TargetKind {
        match self {
            Action::Http(_) => TargetKind::Http,
            Action::RecordVariant => TargetKind::RecordVariant,
            Action::Reconciler => TargetKind::Reconciler,
        }
    }
}

/// One scheduled trigger of the plan.
#[derive(Debug, Clone)]
pub struct SchedulePlan {
    pub name: String,
    pub schedule: Schedule,
    /// The reconciler target it runs.
    pub target: String,
}

impl Plan {
    /// The names of the used targets of these kinds, in name order: what needs signing
    /// secrets (HTTP) or a service account (mesh calls).
    pub fn used_targets(&self, kinds: &[TargetKind]) -> Vec<&str> {
        self.targets
            .iter()
            .filter(|(_, target)| target.used && kinds.contains(&target.action.kind()))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use storemesh_runtime::ConfigLoader;
    use storemesh_runtime::backoff::Jitter;

    use super::*;
    use crate::config::{
        DispatcherConfig, RECONCILER_TARGET, RECORD_VARIANT_TARGET, THUMBNAIL_TARGET,
    };
    use crate::routing::EventKind;

    fn plan(toml: &str) -> Plan {
        let config: DispatcherConfig = ConfigLoader::from_toml_str(toml)
            .section("dispatcher")
            .unwrap();
        config.plan("dispatcher").unwrap()
    }

    #[test]
    fn the_defaults_plan_the_classic_flow() {
        let plan = plan("");
        assert_eq!(
            plan.routes
                .targets_for(EventKind::ObjectCreated, "products/p/originals/i"),
            [THUMBNAIL_TARGET]
        );
        let thumbnail = &plan.targets[THUMBNAIL_TARGET];
        assert_eq!(
            thumbnail.action,
            Action::Http("http://127.0.0.1:3000/internal/thumbnail".parse().unwrap())
        );
        assert_eq!(thumbnail.settings.timeout, Duration::from_secs(60));
        assert_eq!(thumbnail.settings.concurrency, 8);
        assert_eq!(thumbnail.settings.policy.max_attempts, 4);
        assert_eq!(
            plan.retry,
            Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(60),
                Jitter::Full
            )
            .unwrap()
        );
        assert_eq!(thumbnail.settings.policy.backoff, plan.retry);
        assert_eq!(
            plan.targets[RECORD_VARIANT_TARGET].action,
            Action::RecordVariant
        );
        assert_eq!(plan.targets[RECONCILER_TARGET].action, Action::Reconciler);
        assert!(plan.targets.values().all(|target| target.used));
        assert_eq!(plan.used_targets(&[TargetKind::Http]), [THUMBNAIL_TARGET]);
        assert_eq!(
            plan.used_targets(&[TargetKind::RecordVariant, TargetKind::Reconciler]),
            [RECONCILER_TARGET, RECORD_VARIANT_TARGET]
        );
        assert_eq!(plan.schedules.len(), 1);
        assert_eq!(plan.schedules[0].name, "reconcile-processing");
        assert_eq!(plan.schedules[0].target, RECONCILER_TARGET);
        assert!(matches!(
            plan.schedules[0].schedule,
            Schedule::Rate(period) if period == Duration::from_secs(60)
        ));
    }

    #[test]
    fn targets_carry_their_own_limits_and_only_named_ones_are_used() {
        let plan = plan(
            r#"
[dispatcher]
max_attempts = 6
initial_backoff_ms = 10
max_backoff_ms = 20
schedules = []

[dispatcher.targets.audit]
url = "http://10.0.0.2:8080/audit"
timeout_ms = 5000
concurrency = 2
max_attempts = 10

[[dispatcher.routes]]
name = "audit"
target = "audit"
"#,
        );
        let audit = &plan.targets["audit"];
        assert_eq!(
            audit.action,
            Action::Http("http://10.0.0.2:8080/audit".parse().unwrap())
        );
        assert_eq!(audit.settings.timeout, Duration::from_secs(5));
        assert_eq!(audit.settings.concurrency, 2);
        assert_eq!(audit.settings.policy.max_attempts, 10);
        assert_eq!(
            audit.settings.policy.backoff.min(),
            Duration::from_millis(10)
        );
        assert_eq!(
            audit.settings.policy.backoff.max(),
            Duration::from_millis(20)
        );
        assert_eq!(
            plan.targets[THUMBNAIL_TARGET].settings.policy.max_attempts,
            6
        );
        // The default targets are still configured, but no rule or schedule names them.
        assert!(audit.used);
        for name in [THUMBNAIL_TARGET, RECORD_VARIANT_TARGET, RECONCILER_TARGET] {
            assert!(!plan.targets[name].used, "{name}");
        }
        assert_eq!(
            plan.used_targets(&[TargetKind::Http, TargetKind::RecordVariant]),
            ["audit"]
        );
        assert!(
            plan.used_targets(&[TargetKind::RecordVariant, TargetKind::Reconciler])
                .is_empty()
        );
        assert!(plan.schedules.is_empty());
    }

    #[test]
    fn a_bad_section_is_refused_with_the_same_error_as_when_loaded() {
        use crate::config::{RouteConfig, ScheduleConfig, TargetConfig};

        type Change = fn(&mut DispatcherConfig);
        let cases: [(&str, Change, &str); 5] = [
            (
                "[dispatcher]\ninitial_backoff_ms = 100\nmax_backoff_ms = 10\n",
                |config| {
                    config.initial_backoff_ms = 100;
                    config.max_backoff_ms = 10;
                },
                "invalid configuration key `dispatcher.max_backoff_ms`: initial_backoff_ms must be at least 1 and max_backoff_ms at least initial_backoff_ms",
            ),
            (
                "[dispatcher.targets.x]\nkind = \"http\"\nurl = \"ftp://x\"\n",
                |config| {
                    let target = TargetConfig {
                        url: "ftp://x".into(),
                        ..TargetConfig::default()
                    };
                    config.targets.insert("x".into(), target);
                },
                "invalid configuration key `dispatcher.targets.x.url`: must be an http://host:port/path URL",
            ),
            (
                "[[dispatcher.routes]]\nname = \"r\"\ntarget = \"nope\"\n",
                |config| {
                    config.routes = vec![RouteConfig {
                        name: "r".into(),
                        target: "nope".into(),
                        ..RouteConfig::default()
                    }];
                },
                "invalid configuration key `dispatcher.routes`: ",
            ),
            (
                "[[dispatcher.schedules]]\nname = \"s\"\nschedule = \"rate(0 minutes)\"\ntarget = \"reconciler\"\n",
                |config| {
                    config.schedules = vec![ScheduleConfig {
                        name: "s".into(),
                        schedule: "rate(0 minutes)".into(),
                        target: RECONCILER_TARGET.into(),
                    }];
                },
                "invalid configuration key `dispatcher.schedules[0].schedule`: ",
            ),
            (
                "[[dispatcher.schedules]]\nname = \"s\"\ntarget = \"thumbnail\"\n",
                |config| {
                    config.schedules = vec![ScheduleConfig {
                        name: "s".into(),
                        target: THUMBNAIL_TARGET.into(),
                        ..ScheduleConfig::default()
                    }];
                },
                "invalid configuration key `dispatcher.schedules[0].target`: `thumbnail` is not a reconciler target",
            ),
        ];
        for (toml, change, expected) in cases {
            let loaded = ConfigLoader::from_toml_str(toml)
                .section::<DispatcherConfig>("dispatcher")
                .unwrap_err()
                .to_string();
            assert!(loaded.starts_with(expected), "{toml:?}: {loaded}");
            // The same section built in code (as tests and embedders do, never loaded) gets
            // the same answer from the plan.
            let mut config = DispatcherConfig::default();
            change(&mut config);
            let planned = config.plan("dispatcher").unwrap_err().to_string();
            assert_eq!(planned, loaded, "{toml:?}");
        }
    }
}
