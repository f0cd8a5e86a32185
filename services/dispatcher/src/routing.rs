//! Routing rules (like S3 event notifications): event type + key prefix / suffix / segment glob
//! → a named target, and the start-time check that no rule can feed its own target.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storemesh_proto::events::v1::EventType;

use crate::config::{RouteConfig, TargetConfig, TargetKind};
use crate::pattern::{Pattern, intersects};

/// The event types a rule can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(alias = "EVENT_TYPE_OBJECT_CREATED", alias = "object_created")]
    ObjectCreated,
    #[serde(alias = "EVENT_TYPE_OBJECT_DELETED", alias = "object_deleted")]
    ObjectDeleted,
}

impl EventKind {
    pub fn from_proto(kind: EventType) -> Option<Self> {
        match kind {
            EventType::ObjectCreated => Some(EventKind::ObjectCreated),
            EventType::ObjectDeleted => Some(EventKind::ObjectDeleted),
            EventType::Unspecified => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("rule #{index}: names are unique, 1 to 64 characters of [A-Za-z0-9_-]")]
    BadName { index: usize },
    #[error("rule `{rule}`: no target named `{target}`")]
    UnknownTarget { rule: String, target: String },
    #[error("rule `{rule}`: target `{target}` is a reconciler, which only schedules can invoke")]
    NotDeliverable { rule: String, target: String },
    #[error("rule `{rule}`: `events` must name at least one event type")]
    NoEvents { rule: String },
    #[error(
        "rules would loop: {}; each target's declared output (`produces`) triggers the next rule, back to the first",
        describe_cycle(.0)
    )]
    Loop(Vec<(String, String)>),
}

fn describe_cycle(cycle: &[(String, String)]) -> String {
    cycle
        .iter()
        .map(|(rule, target)| format!("rule `{rule}` → target `{target}`"))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Route {
    name: String,
    events: BTreeSet<EventKind>,
    /// Every pattern must match (prefix, suffix, glob; absent ones are left out).
    patterns: Vec<Pattern>,
    target: String,
}

impl Route {
    fn matches(&self, kind: EventKind, key: &str) -> bool {
        self.events.contains(&kind) && self.patterns.iter().all(|pattern| pattern.matches(key))
    }

    /// Whether a created object matching `output` could trigger this rule.
    fn triggered_by(&self, output: &Pattern) -> bool {
        if !self.events.contains(&EventKind::ObjectCreated) {
            return false;
        }
        let mut all: Vec<&Pattern> = self.patterns.iter().collect();
        all.push(output);
        intersects(&all)
    }
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles `routes`, refusing unknown targets and loops.
    pub fn new(
        routes: &[RouteConfig],
        targets: &BTreeMap<String, TargetConfig>,
    ) -> Result<Self, RouteError> {
        let mut compiled: Vec<Route> = Vec::with_capacity(routes.len());
        for (index, route) in routes.iter().enumerate() {
            let valid_name = !route.name.is_empty()
                && route.name.len() <= 64
                && route
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name || compiled.iter().any(|other| other.name == route.name) {
                return Err(RouteError::BadName { index });
            }
            let Some(target) = targets.get(&route.target) else {
                return Err(RouteError::UnknownTarget {
                    rule: route.name.clone(),
                    target: route.target.clone(),
                });
            };
            if target.kind == TargetKind::Reconciler {
                return Err(RouteError::NotDeliverable {
                    rule: route.name.clone(),
                    target: route.target.clone(),
                });
            }
            if route.events.is_empty() {
                return Err(RouteError::NoEvents {
                    rule: route.name.clone(),
                });
            }
            let mut patterns = Vec::new();
            if !route.key_prefix.is_empty() {
                patterns.push(Pattern::prefix(&route.key_prefix));
            }
            if !route.key_suffix.is_empty() {
                patterns.push(Pattern::suffix(&route.key_suffix));
            }
            if !route.key_glob.is_empty() {
                patterns.push(Pattern::glob(&route.key_glob));
            }
            compiled.push(Route {
                name: route.name.clone(),
                events: route.events.iter().copied().collect(),
                patterns,
                target: route.target.clone(),
            });
        }
        let table = Self { routes: compiled };
        if let Some(cycle) = table.find_loop(targets) {
            return Err(RouteError::Loop(cycle));
        }
        Ok(table)
    }

    /// The targets an event goes to, each once, in rule order.
    pub fn targets_for(&self, kind: EventKind, key: &str) -> Vec<&str> {
        let mut targets: Vec<&str> = Vec::new();
        for route in self.routes.iter().filter(|route| route.matches(kind, key)) {
            if !targets.contains(&route.target.as_str()) {
                targets.push(&route.target);
            }
        }
        targets
    }

    /// The first rule (by order) that sends this event to `target`, for logs and dead letters.
    pub fn rule_for(&self, kind: EventKind, key: &str, target: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|route| route.target == target && route.matches(kind, key))
            .map(|route| route.name.as_str())
    }

    /// A cycle of rules: rule i's target produces objects that trigger rule i+1, and the last
    /// one's target triggers the first. Depth-first search over the rules.
    fn find_loop(&self, targets: &BTreeMap<String, TargetConfig>) -> Option<Vec<(String, String)>> {
        let outputs: BTreeMap<&str, Vec<Pattern>> = targets
            .iter()
            .map(|(name, target)| {
                (
                    name.as_str(),
                    target
                        .produces
                        .iter()
                        .map(|glob| Pattern::glob(glob))
                        .collect(),
                )
            })
            .collect();
        // Rule i → rules triggered by what rule i's target writes.
        let edges: Vec<Vec<usize>> = self
            .routes
            .iter()
            .map(|route| {
                let produced = outputs
                    .get(route.target.as_str())
                    .map_or(&[][..], Vec::as_slice);
                self.routes
                    .iter()
                    .enumerate()
                    .filter(|(_, next)| produced.iter().any(|output| next.triggered_by(output)))
                    .map(|(index, _)| index)
                    .collect()
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        fn visit(
            node: usize,
            edges: &[Vec<usize>],
            marks: &mut [Mark],
            path: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            marks[node] = Mark::OnPath;
            path.push(node);
            for &next in &edges[node] {
                match marks[next] {
                    Mark::OnPath => {
                        let start = path.iter().position(|&n| n == next).unwrap_or(0);
                        return Some(path[start..].to_vec());
                    }
                    Mark::New => {
                        if let Some(cycle) = visit(next, edges, marks, path) {
                            return Some(cycle);
                        }
                    }
                    Mark::Done => {}
                }
            }
            path.pop();
            marks[node] = Mark::Done;
            None
        }
        let mut marks = vec![Mark::New; self.routes.len()];
        for start in 0..self.routes.len() {
            if marks[start] == Mark::New {
                let mut path = Vec::new();
                if let Some(cycle) = visit(start, &edges, &mut marks, &mut path) {
                    return Some(
                        cycle
                            .into_iter()
                            .map(|index| {
                                let route = &self.routes[index];
                                (route.name.clone(), route.target.clone())
                            })
                            .collect(),
                    );
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(produces: &[&str]) -> TargetConfig {
        TargetConfig {
            kind: TargetKind::Http,
            url: "http://127.0.0.1:1/x".into(),
            produces: produces.iter().map(|p| (*p).to_owned()).collect(),
            ..TargetConfig::default()
        }
    }

    fn route(name: &str, target: &str, prefix: &str, suffix: &str, glob: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            key_prefix: prefix.into(),
            key_suffix: suffix.into(),
            key_glob: glob.into(),
            target: target.into(),
            ..RouteConfig::default()
        }
    }

    #[test]
    fn routing_by_type_prefix_suffix_and_glob() {
        let targets = BTreeMap::from([
            ("a".to_owned(), http(&[])),
            ("b".to_owned(), http(&[])),
            ("c".to_owned(), http(&[])),
        ]);
        let mut deletes = route("deletes", "c", "products/", "", "");
        deletes.events = vec![EventKind::ObjectDeleted];
        let table = RouteTable::new(
            &[
                route("jpgs", "a", "", ".jpg", ""),
                route("media", "b", "media/", "", ""),
                route("originals", "a", "", "", "products/*/originals/*"),
                deletes,
            ],
            &targets,
        )
        .unwrap();
        let created = EventKind::ObjectCreated;
        assert_eq!(table.targets_for(created, "x/y.jpg"), ["a"]);
        assert_eq!(table.targets_for(created, "media/y.jpg"), ["a", "b"]);
        assert_eq!(table.targets_for(created, "products/p/originals/i"), ["a"]);
        assert!(
            table
                .targets_for(created, "products/p/originals/i/extra")
                .is_empty()
        );
        assert_eq!(
            table.targets_for(EventKind::ObjectDeleted, "products/p/originals/i"),
            ["c"]
        );
        assert_eq!(
            table.rule_for(created, "products/p/originals/i", "a"),
            Some("originals")
        );
    }

    #[test]
    fn a_target_triggered_by_its_own_output_is_refused() {
        let targets =
            BTreeMap::from([("thumbnail".to_owned(), http(&["products/*/thumbnails/**"]))]);
        let error = RouteTable::new(
            &[route("everything", "thumbnail", "products/", "", "")],
            &targets,
        )
        .unwrap_err();
        assert_eq!(
            error,
            RouteError::Loop(vec![("everything".into(), "thumbnail".into())])
        );
        assert!(error.to_string().contains("rule `everything`"), "{error}");
        // Only originals: no loop.
        RouteTable::new(
            &[route(
                "originals",
                "thumbnail",
                "",
                "",
                "products/*/originals/*",
            )],
            &targets,
        )
        .unwrap();
    }

    #[test]
    fn loops_through_several_targets_are_refused() {
        let targets = BTreeMap::from([
            ("a".to_owned(), http(&["stage2/**"])),
            ("b".to_owned(), http(&["stage1/*.png"])),
        ]);
        let error = RouteTable::new(
            &[
                route("first", "a", "stage1/", "", ""),
                route("second", "b", "", "", "stage2/*"),
            ],
            &targets,
        )
        .unwrap_err();
        let RouteError::Loop(cycle) = &error else {
            panic!("{error}")
        };
        assert_eq!(cycle.len(), 2);
        let message = error.to_string();
        assert!(
            message.contains("`first`") && message.contains("`second`"),
            "{message}"
        );
        // A suffix that output can never have breaks the loop.
        RouteTable::new(
            &[
                route("first", "a", "stage1/", ".jpg", ""),
                route("second", "b", "", "", "stage2/*"),
            ],
            &targets,
        )
        .unwrap();
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        let targets = BTreeMap::from([("a".to_owned(), http(&[]))]);
        assert!(matches!(
            RouteTable::new(&[route("r", "missing", "", "", "")], &targets),
            Err(RouteError::UnknownTarget { .. })
        ));
        assert!(matches!(
            RouteTable::new(&[route("", "a", "", "", "")], &targets),
            Err(RouteError::BadName { index: 0 })
        ));
        assert!(matches!(
            RouteTable::new(
                &[route("r", "a", "", "", ""), route("r", "a", "", "", "")],
                &targets
            ),
            Err(RouteError::BadName { index: 1 })
        ));
    }
}
