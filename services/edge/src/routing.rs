//! Spin's HTTP route syntax and matching, ported from what Spin 4.0.2 runs: `spin-routes`
//! (`crates/routes/src/lib.rs`) on top of the `routefinder` 0.5 crate (`RouteSpec`, `Segment`,
//! `Router`), so that every path reaches the component it reaches under `spin up`.
//!
//! - A route is made absolute and loses one trailing `/` (Spin's "based route", the base being
//!   `/`). A trailing `/...` is a wildcard (routefinder's `*`), as is a trailing `/*`.
//! - The pattern is split at `/` and `.`: literal text, `:name` segments (captured up to the next
//!   `/` or `.`), and the wildcard. Leading and trailing `/`s of the request path are ignored.
//! - Precedence is routefinder's: routes are kept in a `BTreeMap` ordered by comparing their
//!   segments pairwise (literal > `:name` > wildcard), then by the number of `.` segments, then
//!   the shorter route first; ties keep declaration order. The first matching route wins.
//! - Two triggers with the same route text: the later one is used (in the earlier one's place)
//!   and the duplicate is reported. Routes that differ only as text (`/a` and `/a/`, `/x/:a` and
//!   `/x/:b`) are all kept, and the first declared wins, as in Spin.
//! - Routes under `/.well-known/spin/` are accepted but never reached (the runtime answers that
//!   prefix); the router reports them so the caller can log Spin's error.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::iter;

/// Routes under this prefix are answered by the runtime itself (Spin reserves them too).
pub const RESERVED_PREFIX: &str = "/.well-known/spin/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// routefinder's parse error for `*name`.
    #[error("since there can only be one wildcard, it doesn't need a name. replace `{0}` with `*`")]
    NamedWildcard(String),
    /// routefinder's parse error for a bare `:`.
    #[error("params must be named")]
    UnnamedParam,
    /// routefinder accepts this but panics on the first request it is matched against.
    #[error("a wildcard (`*` or `...`) is only allowed at the end of a route")]
    MisplacedWildcard,
}

/// One routefinder segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Slash,
    Dot,
    Exact(String),
    Param(String),
    Wildcard,
}

impl Segment {
    /// routefinder's `Ord for Segment` (not a total order: `Dot` ties `Slash`, yet sorts above
    /// `Exact`, which sorts above `Slash`); kept as is because route precedence depends on it.
    fn rank(&self, other: &Self) -> Ordering {
        use Ordering::{Equal, Greater, Less};
        use Segment::{Dot, Exact, Param, Slash, Wildcard};
        match (self, other) {
            (Exact(_), Exact(_))
            | (Slash, Slash)
            | (Dot, Slash)
            | (Slash, Dot)
            | (Dot, Dot)
            | (Param(_), Param(_))
            | (Wildcard, Wildcard) => Equal,
            (Dot, _) => Greater,
            (Exact(_), _) => Greater,
            (Param(_), Exact(_)) => Less,
            (Param(_), _) => Greater,
            (Wildcard, Exact(_)) | (Wildcard, Param(_)) => Less,
            (Wildcard, _) => Greater,
            _ => Less,
        }
    }
}

/// routefinder's `RouteSpec`: the parsed segments of a based route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    segments: Vec<Segment>,
}

impl Spec {
    /// routefinder's `RouteSpec::from_str`.
    fn parse(source: &str) -> Result<Self, RouteError> {
        let trimmed = source.trim_start_matches('/').trim_end_matches('/');
        let mut segments: Vec<Segment> = Vec::new();
        let mut last_index = 0;
        let indices = trimmed
            .match_indices(['.', '/'])
            .map(|(index, _)| index)
            .chain(iter::once(trimmed.len()));
        for index in indices {
            let first_char = if last_index == 0 {
                None
            } else {
                trimmed.chars().nth(last_index - 1)
            };
            let section = trimmed.get(last_index..index).unwrap_or("");
            last_index = index + 1;
            let segment = match (section.chars().next(), section.len()) {
                (Some('*'), 1) => Some(Segment::Wildcard),
                (Some('*'), _) => return Err(RouteError::NamedWildcard(section.to_owned())),
                (Some(':'), 1) => return Err(RouteError::UnnamedParam),
                (Some(':'), _) => Some(Segment::Param(section[1..].to_owned())),
                (None, 0) => None,
                _ => Some(Segment::Exact(section.to_owned())),
            };
            if first_char == Some('.') {
                if let Some(Segment::Exact(text)) = segments.last_mut() {
                    text.push('.');
                } else {
                    segments.push(Segment::Dot);
                }
            }
            if let Some(segment) = segment {
                if first_char == Some('/') {
                    segments.push(Segment::Slash);
                }
                segments.push(segment);
            }
        }
        // routefinder panics when matching a path against a wildcard that is not last.
        if let Some(position) = segments.iter().position(|s| *s == Segment::Wildcard)
            && position + 1 != segments.len()
        {
            return Err(RouteError::MisplacedWildcard);
        }
        Ok(Self { segments })
    }

    fn dots(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Dot))
            .count()
    }

    /// routefinder's `RouteSpec::inner_match` (without its `memchr` feature, as Spin builds it).
    fn inner_match<'p>(&self, mut path: &'p str, captures: &mut Vec<&'p str>) -> Option<&'p str> {
        let mut peek = self.segments.iter().peekable();
        while let Some(segment) = peek.next() {
            path = match segment {
                Segment::Exact(exact) => path.strip_prefix(exact.as_str())?,
                Segment::Param(_) => {
                    if path.is_empty() {
                        return None;
                    }
                    match peek.peek() {
                        None | Some(Segment::Slash) => {
                            let capture = path.split('/').next()?;
                            captures.push(capture);
                            &path[capture.len()..]
                        }
                        Some(Segment::Dot) => {
                            let index = path.find(['.', '/'])?;
                            // routefinder indexes chars with a byte offset here; kept as is.
                            if path.chars().nth(index) == Some('.') {
                                captures.push(&path[..index]);
                                &path[index..]
                            } else {
                                return None;
                            }
                        }
                        // Unreachable: the parser puts `/` or `.` after every parameter.
                        Some(_) => return None,
                    }
                }
                Segment::Wildcard => match peek.peek() {
                    // Refused at parse time (routefinder would panic).
                    Some(_) => return None,
                    None => {
                        captures.push(path);
                        ""
                    }
                },
                Segment::Slash => match (path.chars().next(), peek.peek()) {
                    (Some('/'), Some(_)) => &path[1..],
                    (None, None) | (None, Some(Segment::Wildcard)) => path,
                    _ => return None,
                },
                Segment::Dot => path.strip_prefix('.')?,
            }
        }
        Some(path)
    }

    /// routefinder's `RouteSpec::matches`: the captured values in segment order.
    fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let trimmed = path.trim_start_matches('/').trim_end_matches('/');
        let mut captures = Vec::new();
        let rest = self.inner_match(trimmed, &mut captures)?;
        (rest.is_empty() || rest == "/").then_some(captures)
    }
}

impl PartialOrd for Spec {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Spec {
    /// routefinder's `Ord for RouteSpec`. It never answers `Equal` (ties compare `Greater` both
    /// ways), so equal-looking routes all stay in the map, in insertion order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.segments
            .iter()
            .zip(&other.segments)
            .map(|(mine, theirs)| mine.rank(theirs))
            .chain(iter::once_with(|| self.dots().cmp(&other.dots())))
            .chain(iter::once_with(|| {
                other.segments.len().cmp(&self.segments.len())
            }))
            .find(|ordering| *ordering != Ordering::Equal)
            .unwrap_or(Ordering::Less)
            .reverse()
    }
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// As written in the manifest.
    raw: String,
    /// Absolute, with one trailing `/` removed (Spin's "based route"; the base is always `/`).
    based: String,
    spec: Spec,
}

impl RoutePattern {
    /// Spin's `sanitize_with_base("/", raw)` and `Router::parse_route`.
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        let absolute = if raw.starts_with('/') {
            raw.to_owned()
        } else {
            format!("/{raw}")
        };
        let based = absolute
            .strip_suffix('/')
            .map(str::to_owned)
            .unwrap_or(absolute);
        let spec = match based.strip_suffix("/...") {
            Some(prefix) => Spec::parse(&format!("{prefix}/*"))?,
            None => Spec::parse(&based)?,
        };
        Ok(Self {
            raw: raw.to_owned(),
            based,
            spec,
        })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Whether the route ends with a wildcard (`/...` or `/*`).
    pub fn is_wildcard(&self) -> bool {
        self.based.ends_with("/...") || self.based.ends_with("/*")
    }

    /// Whether the route is under the runtime's `/.well-known/spin/` prefix (never reached).
    pub fn is_reserved(&self) -> bool {
        self.based.starts_with(RESERVED_PREFIX)
    }
}

/// Named-segment captures, `(name, value)`; a name appears once (the last capture wins, as when
/// Spin collects them into a map).
type Captures = Vec<(String, String)>;

/// One routable trigger.
#[derive(Debug, Clone)]
struct Entry {
    pattern: RoutePattern,
    component: String,
}

/// The routing table of an application.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// routefinder's `BTreeMap<RouteSpec, Handler>`: iteration order is match precedence.
    table: BTreeMap<Spec, Entry>,
}

/// A route declared twice; the later declaration is the one in effect (as in Spin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRoute {
    /// The based route (`/` for the root), as Spin reports it.
    pub route: String,
    pub replaced: String,
    pub effective: String,
}

/// The outcome of routing one request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub component: &'a str,
    /// The route as written in the manifest (`spin-raw-component-route`).
    pub raw_route: &'a str,
    /// The route with the base applied (`spin-matched-route`).
    pub based_route: &'a str,
    /// The path below a trailing wildcard (`spin-path-info`), empty for exact routes.
    pub path_info: String,
    /// Named segments (`spin-path-match-<name>`).
    pub captures: Captures,
}

impl RouteMatch<'_> {
    /// Spin's `raw_route_or_prefix`: the raw route without a trailing `/...` (a trailing `/*`
    /// stays; `spin-component-route`).
    pub fn component_route(&self) -> &str {
        self.raw_route
            .strip_suffix("/...")
            .unwrap_or(self.raw_route)
    }
}

impl Router {
    /// Builds the table from `(route, component)` pairs in declaration order (Spin's
    /// `Router::build`: an `IndexMap` keyed by the raw route, then a routefinder `Router`).
    pub fn build(
        routes: impl IntoIterator<Item = (RoutePattern, String)>,
    ) -> (Self, Vec<DuplicateRoute>) {
        let mut unique: Vec<Entry> = Vec::new();
        let mut duplicates = Vec::new();
        for (pattern, component) in routes {
            let entry = Entry { pattern, component };
            match unique
                .iter_mut()
                .find(|e| e.pattern.raw == entry.pattern.raw)
            {
                Some(existing) => {
                    // `IndexMap::insert`: the new value takes the old one's place.
                    let replaced = std::mem::replace(existing, entry);
                    duplicates.push(DuplicateRoute {
                        route: if replaced.pattern.based.is_empty() {
                            "/".to_owned()
                        } else {
                            replaced.pattern.based.clone()
                        },
                        replaced: replaced.component,
                        effective: existing.component.clone(),
                    });
                }
                None => unique.push(entry),
            }
        }
        let mut table = BTreeMap::new();
        for entry in unique {
            table.insert(entry.pattern.spec.clone(), entry);
        }
        (Self { table }, duplicates)
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// `(route, component)` in precedence order (the order Spin lists its routes in).
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.table
            .values()
            .map(|e| (e.pattern.raw(), e.component.as_str()))
    }

    /// Routes under `/.well-known/spin/`, which the runtime answers itself (Spin logs an error
    /// for them and starts anyway).
    pub fn reserved_routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.table
            .values()
            .filter(|e| e.pattern.is_reserved())
            .map(|e| (e.pattern.raw(), e.component.as_str()))
    }

    /// The first route, in precedence order, matching `path` (the URI path, without query).
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.table.iter().find_map(|(spec, entry)| {
            let values = spec.matches(path)?;
            let mut captures: Captures = Vec::new();
            let mut wildcard = None;
            let variable = spec
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Param(_) | Segment::Wildcard));
            for (segment, value) in variable.zip(values) {
                match segment {
                    Segment::Param(name) => {
                        captures.retain(|(existing, _)| existing != name);
                        captures.push((name.clone(), value.to_owned()));
                    }
                    _ => wildcard = Some(value),
                }
            }
            Some(RouteMatch {
                component: &entry.component,
                raw_route: &entry.pattern.raw,
                based_route: &entry.pattern.based,
                path_info: path_info(wildcard, path),
                captures,
            })
        })
    }
}

/// Spin's `RouteMatchKind::trailing_wildcard`: routefinder drops the slashes around the
/// wildcard part; Spin puts them back.
fn path_info(wildcard: Option<&str>, path: &str) -> String {
    match wildcard {
        None => String::new(),
        Some(part) => match (part.is_empty(), path.ends_with('/')) {
            (true, false) => String::new(),
            (true, true) => "/".to_owned(),
            (false, false) => format!("/{part}"),
            (false, true) => format!("/{part}/"),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::build(
            routes
                .iter()
                .map(|(route, c)| (RoutePattern::parse(route).unwrap(), (*c).to_owned())),
        )
        .0
    }

    fn component<'a>(router: &'a Router, path: &str) -> Option<&'a str> {
        router.route(path).map(|m| m.component)
    }

    // Spin: crates/routes/src/lib.rs, route_tests::test_router_exact
    #[test]
    fn exact_routes_match_only_themselves() {
        let r = router(&[("/foo", "foo"), ("/foo/bar", "foobar")]);
        assert_eq!(component(&r, "/foo"), Some("foo"));
        assert_eq!(component(&r, "/foo/bar"), Some("foobar"));
        assert_eq!(component(&r, "/foo/baz"), None);
        assert_eq!(component(&r, "/"), None);
        assert_eq!(component(&r, "/foobar"), None);
        assert_eq!(component(&r, "/foo.json"), None);
    }

    // Spin: routefinder RouteSpec::matches trims every leading and trailing `/` of the path.
    #[test]
    fn leading_and_trailing_slashes_of_the_path_are_ignored() {
        let r = router(&[("/foo", "foo")]);
        for path in ["/foo", "/foo/", "/foo///", "//foo", "//foo//"] {
            assert_eq!(component(&r, path), Some("foo"), "{path}");
        }
        assert_eq!(component(&r, "/foo//x"), None);
    }

    // Spin: crates/routes/src/lib.rs, sanitize_with_base (the route `/` is based as ``)
    #[test]
    fn root_route_matches_only_the_root() {
        let r = router(&[("/", "root")]);
        assert_eq!(component(&r, "/"), Some("root"));
        assert_eq!(component(&r, "/x"), None);
        let m = r.route("/").unwrap();
        assert_eq!(m.based_route, "");
        assert_eq!(m.raw_route, "/");
        assert_eq!(m.component_route(), "/");
        assert_eq!(m.path_info, "");
    }

    // Spin: crates/routes/src/lib.rs, route_tests::test_router_wildcard, trailing_wildcard_is_captured
    #[test]
    fn catch_all_matches_everything() {
        let r = router(&[("/...", "all")]);
        for path in ["/", "/foo/bar", "/abc/", "/this/should/be/captured"] {
            assert_eq!(component(&r, path), Some("all"), "{path}");
        }
        assert_eq!(r.route("/1/2/3").unwrap().path_info, "/1/2/3");
        assert_eq!(r.route("/").unwrap().path_info, "/");
        // routefinder trims all trailing slashes; Spin restores exactly one.
        assert_eq!(r.route("/a/b//").unwrap().path_info, "/a/b/");
    }

    // Spin: crates/routes/src/lib.rs, route_tests::trailing_wildcard_respects_trailing_slash
    #[test]
    fn trailing_wildcard_captures_like_spin() {
        let r = router(&[("/test/...", "t")]);
        assert_eq!(r.route("/test").unwrap().path_info, "");
        assert_eq!(r.route("/test/").unwrap().path_info, "/");
        assert_eq!(r.route("/test/hello").unwrap().path_info, "/hello");
        assert_eq!(r.route("/test/hello/").unwrap().path_info, "/hello/");
        assert_eq!(component(&r, "/testing"), None);
        let r = router(&[("/1/...", "t")]);
        assert_eq!(r.route("/1/2/3").unwrap().path_info, "/2/3");
    }

    // Spin: crates/routes/src/lib.rs, RouteMatch::raw_route_or_prefix strips only `/...`
    #[test]
    fn star_wildcard_keeps_its_suffix_in_the_component_route() {
        let r = router(&[("/1/*", "t")]);
        let m = r.route("/1/2/3").unwrap();
        assert_eq!(m.path_info, "/2/3");
        assert_eq!(m.based_route, "/1/*");
        assert_eq!(m.component_route(), "/1/*");
        let r = router(&[("/foo/...", "c")]);
        let m = r.route("/foo/bar").unwrap();
        assert_eq!(m.component_route(), "/foo");
    }

    // Spin: crates/routes/src/lib.rs, route_tests::test_router_respects_longest_match
    #[test]
    fn longest_wildcard_wins_regardless_of_order() {
        let routes = [
            ("/one/...", "one"),
            ("/one/two/...", "onetwo"),
            ("/one/two/three/...", "onetwothree"),
        ];
        let r = router(&routes);
        assert_eq!(component(&r, "/one/two/three/four"), Some("onetwothree"));
        assert_eq!(component(&r, "/one/two/x"), Some("onetwo"));
        assert_eq!(component(&r, "/one"), Some("one"));
        let mut reversed = routes;
        reversed.reverse();
        let r = router(&reversed);
        assert_eq!(component(&r, "/one/two/three/four"), Some("onetwothree"));
    }

    // Spin: crates/routes/src/lib.rs, route_tests::test_router_exact_beats_wildcard
    #[test]
    fn exact_beats_wildcard() {
        let r = router(&[("/...", "wildcard"), ("/one", "exact")]);
        assert_eq!(component(&r, "/one"), Some("exact"));
        assert_eq!(component(&r, "/one/more"), Some("wildcard"));
        let r = router(&[("/api/...", "api"), ("/api", "api-root")]);
        assert_eq!(component(&r, "/api"), Some("api-root"));
        assert_eq!(component(&r, "/api/x"), Some("api"));
    }

    // Spin: crates/routes/src/lib.rs, route_tests::named_wildcard_is_captured
    #[test]
    fn named_segments_are_captured_and_literals_beat_them() {
        let r = router(&[
            ("/products/:id", "by-id"),
            ("/products/new", "new"),
            ("/products/:id/images/...", "images"),
        ]);
        let m = r.route("/products/42").unwrap();
        assert_eq!(m.component, "by-id");
        assert_eq!(m.captures, [("id".to_owned(), "42".to_owned())]);
        assert_eq!(component(&r, "/products/new"), Some("new"));
        let m = r.route("/products/42/images/a/b").unwrap();
        assert_eq!(m.component, "images");
        assert_eq!(m.path_info, "/a/b");
        assert_eq!(m.captures, [("id".to_owned(), "42".to_owned())]);
        assert_eq!(m.component_route(), "/products/:id/images");
        // A named segment needs a non-empty value.
        assert_eq!(component(&r, "/products/"), None);
        let r = router(&[("/1/:two/3", "c")]);
        assert_eq!(
            r.route("/1/2/3").unwrap().captures,
            [("two".to_owned(), "2".to_owned())]
        );
    }

    // Spin: routefinder Ord for RouteSpec/Segment (literal > :name > wildcard, compared
    // segment by segment before length), which Router::route's best_match follows.
    #[test]
    fn precedence_of_overlapping_patterns_is_routefinders() {
        // A longer literal prefix beats an earlier `:name`, even when it is a wildcard.
        let r = router(&[("/a/:id", "named"), ("/a/b/...", "wildcard")]);
        assert_eq!(component(&r, "/a/b"), Some("wildcard"));
        assert_eq!(component(&r, "/a/c"), Some("named"));
        let r = router(&[("/:x/b", "named"), ("/a/...", "wildcard")]);
        assert_eq!(component(&r, "/a/b"), Some("wildcard"));
        assert_eq!(component(&r, "/c/b"), Some("named"));
        // A `:name` beats a wildcard at the same position.
        let r = router(&[("/...", "all"), ("/:x", "named")]);
        assert_eq!(component(&r, "/a"), Some("named"));
        assert_eq!(component(&r, "/a/b"), Some("all"));
        // The first difference decides.
        let r = router(&[("/:x/b", "first-named"), ("/a/:y", "first-literal")]);
        assert_eq!(component(&r, "/a/b"), Some("first-literal"));
    }

    // Spin: routefinder RouteSpec::from_str splits at `.` as well as `/`.
    #[test]
    fn dots_split_named_segments() {
        let r = router(&[("/files/:name.json", "json"), ("/files/:name", "any")]);
        let m = r.route("/files/report.json").unwrap();
        assert_eq!(m.component, "json");
        assert_eq!(m.captures, [("name".to_owned(), "report".to_owned())]);
        assert_eq!(component(&r, "/files/report.txt"), Some("any"));
        let r = router(&[("/.well-known/thing", "c")]);
        assert_eq!(component(&r, "/.well-known/thing"), Some("c"));
    }

    // Spin: crates/trigger-http/src/headers.rs compute_default_headers iterates named_wildcards,
    // a HashMap collected from routefinder's captures (the last value of a repeated name wins).
    #[test]
    fn a_repeated_name_keeps_the_last_value() {
        let r = router(&[("/:a/x/:a", "c")]);
        assert_eq!(
            r.route("/1/x/2").unwrap().captures,
            [("a".to_owned(), "2".to_owned())]
        );
    }

    // Spin: crates/routes/src/lib.rs, route_tests::duplicate_routes_last_one_wins and
    // duplicate_routes_reporting_is_faithful (duplicates are keyed by the raw route text).
    #[test]
    fn duplicates_last_one_wins_and_are_reported() {
        let (r, duplicates) = Router::build([
            (RoutePattern::parse("/").unwrap(), "first /".to_owned()),
            (RoutePattern::parse("/").unwrap(), "second /".to_owned()),
            (RoutePattern::parse("/foo").unwrap(), "first".to_owned()),
            (RoutePattern::parse("/foo").unwrap(), "second".to_owned()),
        ]);
        assert_eq!(component(&r, "/foo"), Some("second"));
        assert_eq!(component(&r, "/"), Some("second /"));
        assert_eq!(duplicates.len(), 2);
        assert_eq!(duplicates[0].route, "/");
        assert_eq!(duplicates[1].route, "/foo");
        assert_eq!(duplicates[1].replaced, "first");
        assert_eq!(duplicates[1].effective, "second");
    }

    // Spin: crates/routes/src/lib.rs Router::build (IndexMap keyed by raw text) + routefinder's
    // Ord, which never answers Equal: same-shaped routes with different text all stay, and the
    // first declared is matched first.
    #[test]
    fn same_shaped_routes_with_different_text_keep_the_first() {
        let (r, duplicates) = Router::build([
            (RoutePattern::parse("/foo").unwrap(), "first".to_owned()),
            (RoutePattern::parse("/foo/").unwrap(), "second".to_owned()),
            (RoutePattern::parse("/a/:x").unwrap(), "third".to_owned()),
            (RoutePattern::parse("/a/:y").unwrap(), "fourth".to_owned()),
        ]);
        assert!(duplicates.is_empty());
        assert_eq!(component(&r, "/foo"), Some("first"));
        assert_eq!(component(&r, "/a/1"), Some("third"));
        assert_eq!(r.routes().count(), 4);
    }

    // Spin: crates/routes/src/lib.rs, reserved_routes_are_reserved / unreserved_routes_are_unreserved
    // (Spin starts and logs an error; the runtime's own endpoints shadow them).
    #[test]
    fn reserved_routes_are_accepted_and_reported() {
        let r = router(&[
            ("/.well-known/spin/...", "a"),
            ("/.well-known/spin/fie", "b"),
            ("/.well-known/spindle/...", "c"),
            ("/.well-known/spi/...", "d"),
            ("/.well-known/spin", "e"),
        ]);
        let mut reserved: Vec<_> = r.reserved_routes().map(|(_, c)| c).collect();
        reserved.sort_unstable();
        assert_eq!(reserved, ["a", "b"]);
    }

    // Spin: routefinder RouteSpec::from_str errors, and its inner_match panic for a wildcard
    // that is not last (refused at load here instead).
    #[test]
    fn malformed_routes_are_refused() {
        assert_eq!(
            RoutePattern::parse("/a/*x").unwrap_err(),
            RouteError::NamedWildcard("*x".into())
        );
        assert_eq!(
            RoutePattern::parse("/a/:/b").unwrap_err(),
            RouteError::UnnamedParam
        );
        assert_eq!(
            RoutePattern::parse("/a/*/b").unwrap_err(),
            RouteError::MisplacedWildcard
        );
        // `...` is only special at the end; elsewhere routefinder reads it as dots.
        let r = router(&[("/a/.../b", "dots")]);
        assert_eq!(component(&r, "/a.../b"), Some("dots"));
        assert_eq!(component(&r, "/a/x/b"), None);
    }

    // Spin: crates/routes/src/lib.rs, sanitize_with_base and RouteMatch accessors; the values
    // of spin-matched-route / spin-raw-component-route (crates/trigger-http/src/headers.rs).
    #[test]
    fn headers_values_follow_spin() {
        let r = router(&[("/foo/...", "c")]);
        let m = r.route("/foo/bar").unwrap();
        assert_eq!(m.raw_route, "/foo/...");
        assert_eq!(m.based_route, "/foo/...");
        assert_eq!(m.component_route(), "/foo");
        assert_eq!(m.path_info, "/bar");
        let r = router(&[("foo/", "c")]);
        let m = r.route("/foo").unwrap();
        assert_eq!(m.based_route, "/foo");
        assert_eq!(m.raw_route, "foo/");
        assert_eq!(m.component_route(), "foo/");
    }
}
