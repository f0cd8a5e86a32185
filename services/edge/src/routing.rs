//! Spin's HTTP route syntax and matching.
//!
//! A route is an absolute path pattern: exact segments (`/products/list`), named segments
//! (`/products/:id`, captured and passed as `spin-path-match-id`), and an optional trailing
//! wildcard (`/products/...`, also written `/products/*`) matching the prefix itself and anything
//! below it. One trailing `/` is ignored, as in Spin.
//!
//! When several routes match a path, the most specific wins:
//! 1. a route without a trailing wildcard beats one with,
//! 2. then the route with more segments (the longer prefix),
//! 3. then, at the first segment where they differ, a literal beats a `:named` segment.
//!
//! Two triggers with the same route are a duplicate: like Spin, the later one wins and the
//! duplicate is reported so the caller can warn.

use std::cmp::Ordering;

/// Routes under this prefix are answered by the runtime itself (Spin reserves them too).
pub const RESERVED_PREFIX: &str = "/.well-known/spin/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("routes under {RESERVED_PREFIX} are reserved by the runtime")]
    Reserved,
    #[error("`...` and `*` are only allowed as the last segment")]
    MisplacedWildcard,
    #[error("a `:` segment needs a name")]
    EmptyParameter,
    #[error("the named segment `:{0}` appears twice")]
    DuplicateParameter(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// As written in the manifest.
    raw: String,
    /// Absolute, with one trailing `/` removed (Spin's "based route"; the base is always `/`).
    based: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

impl RoutePattern {
    pub fn parse(raw: &str) -> Result<Self, RouteError> {
        let absolute = if raw.starts_with('/') {
            raw.to_owned()
        } else {
            format!("/{raw}")
        };
        let based = absolute
            .strip_suffix('/')
            .map(str::to_owned)
            .unwrap_or_else(|| absolute.clone());
        if based.starts_with(RESERVED_PREFIX) {
            return Err(RouteError::Reserved);
        }
        let (prefix, wildcard) = if let Some(prefix) = based.strip_suffix("/...") {
            (prefix, true)
        } else if let Some(prefix) = based.strip_suffix("/*") {
            (prefix, true)
        } else if based == "..." || based == "*" {
            ("", true)
        } else {
            (based.as_str(), false)
        };
        let mut segments = Vec::new();
        if !prefix.is_empty() {
            for segment in prefix.trim_start_matches('/').split('/') {
                if segment == "..." || segment == "*" {
                    return Err(RouteError::MisplacedWildcard);
                }
                if let Some(name) = segment.strip_prefix(':') {
                    if name.is_empty() {
                        return Err(RouteError::EmptyParameter);
                    }
                    if segments
                        .iter()
                        .any(|s| matches!(s, Segment::Param(n) if n == name))
                    {
                        return Err(RouteError::DuplicateParameter(name.to_owned()));
                    }
                    segments.push(Segment::Param(name.to_owned()));
                } else {
                    segments.push(Segment::Literal(segment.to_owned()));
                }
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            based,
            segments,
            wildcard,
        })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether two patterns route the same paths (named segments compare equal by position).
    fn same_shape(&self, other: &Self) -> bool {
        self.wildcard == other.wildcard
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }

    /// Matches `path` (the URI path, without query), returning the trailing wildcard part and
    /// the named captures.
    fn matches(&self, path: &str) -> Option<(String, Captures)> {
        let relative = path.strip_prefix('/')?;
        let mut parts: Vec<&str> = if relative.is_empty() {
            Vec::new()
        } else {
            relative.split('/').collect()
        };
        if !self.wildcard {
            // One trailing slash is not significant for exact routes.
            if parts.last() == Some(&"") {
                parts.pop();
            }
            if parts.len() != self.segments.len() {
                return None;
            }
        } else if parts.len() < self.segments.len() {
            return None;
        }
        let mut captures = Vec::new();
        let mut consumed = 0;
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Param(name) if !part.is_empty() => {
                    captures.push((name.clone(), (*part).to_owned()));
                }
                _ => return None,
            }
            consumed += 1 + part.len();
        }
        let path_info = if self.wildcard {
            path.get(consumed..).unwrap_or("").to_owned()
        } else {
            String::new()
        };
        Some((path_info, captures))
    }

    /// Specificity order (greater is more specific).
    fn specificity(&self, other: &Self) -> Ordering {
        (!self.wildcard)
            .cmp(&!other.wildcard)
            .then(self.segments.len().cmp(&other.segments.len()))
            .then_with(|| {
                for pair in self.segments.iter().zip(&other.segments) {
                    match pair {
                        (Segment::Literal(_), Segment::Param(_)) => return Ordering::Greater,
                        (Segment::Param(_), Segment::Literal(_)) => return Ordering::Less,
                        _ => {}
                    }
                }
                Ordering::Equal
            })
    }
}

/// Named-segment captures, `(name, value)` in route order.
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
    entries: Vec<Entry>,
}

/// A route declared twice; the later declaration is the one in effect (as in Spin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRoute {
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
    /// The raw route without its trailing wildcard (`spin-component-route`).
    pub fn component_route(&self) -> &str {
        self.raw_route
            .strip_suffix("/...")
            .or_else(|| self.raw_route.strip_suffix("/*"))
            .unwrap_or(self.raw_route)
    }
}

impl Router {
    /// Builds the table from `(route, component)` pairs in declaration order.
    pub fn build(
        routes: impl IntoIterator<Item = (RoutePattern, String)>,
    ) -> (Self, Vec<DuplicateRoute>) {
        let mut entries: Vec<Entry> = Vec::new();
        let mut duplicates = Vec::new();
        for (pattern, component) in routes {
            if let Some(existing) = entries.iter_mut().find(|e| e.pattern.same_shape(&pattern)) {
                duplicates.push(DuplicateRoute {
                    route: pattern.raw.clone(),
                    replaced: existing.component.clone(),
                    effective: component.clone(),
                });
                *existing = Entry { pattern, component };
            } else {
                entries.push(Entry { pattern, component });
            }
        }
        (Self { entries }, duplicates)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(route, component)` in declaration order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.pattern.raw(), e.component.as_str()))
    }

    /// The most specific route matching `path`.
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let mut best: Option<(&Entry, String, Captures)> = None;
        for entry in &self.entries {
            let Some((path_info, captures)) = entry.pattern.matches(path) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((current, _, _)) => {
                    entry.pattern.specificity(&current.pattern) == Ordering::Greater
                }
            };
            if better {
                best = Some((entry, path_info, captures));
            }
        }
        best.map(|(entry, path_info, captures)| RouteMatch {
            component: &entry.component,
            raw_route: &entry.pattern.raw,
            based_route: &entry.pattern.based,
            path_info,
            captures,
        })
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

    #[test]
    fn exact_routes_match_only_themselves() {
        let r = router(&[("/foo", "foo"), ("/foo/bar", "foobar")]);
        assert_eq!(component(&r, "/foo"), Some("foo"));
        assert_eq!(component(&r, "/foo/"), Some("foo"));
        assert_eq!(component(&r, "/foo/bar"), Some("foobar"));
        assert_eq!(component(&r, "/foo/baz"), None);
        assert_eq!(component(&r, "/"), None);
        assert_eq!(component(&r, "/foobar"), None);
    }

    #[test]
    fn root_route_matches_only_the_root() {
        let r = router(&[("/", "root")]);
        assert_eq!(component(&r, "/"), Some("root"));
        assert_eq!(component(&r, "/x"), None);
    }

    #[test]
    fn catch_all_matches_everything() {
        let r = router(&[("/...", "all")]);
        for path in ["/", "/foo/bar", "/abc/", "/this/should/be/captured"] {
            assert_eq!(component(&r, path), Some("all"), "{path}");
        }
        assert_eq!(r.route("/1/2/3").unwrap().path_info, "/1/2/3");
        assert_eq!(r.route("/").unwrap().path_info, "/");
    }

    #[test]
    fn trailing_wildcard_captures_like_spin() {
        let r = router(&[("/test/...", "t")]);
        assert_eq!(r.route("/test").unwrap().path_info, "");
        assert_eq!(r.route("/test/").unwrap().path_info, "/");
        assert_eq!(r.route("/test/hello").unwrap().path_info, "/hello");
        assert_eq!(r.route("/test/hello/").unwrap().path_info, "/hello/");
        assert_eq!(component(&r, "/testing"), None);
        let r = router(&[("/1/*", "t")]);
        assert_eq!(r.route("/1/2/3").unwrap().path_info, "/2/3");
    }

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

    #[test]
    fn exact_beats_wildcard() {
        let r = router(&[("/...", "wildcard"), ("/one", "exact")]);
        assert_eq!(component(&r, "/one"), Some("exact"));
        assert_eq!(component(&r, "/one/more"), Some("wildcard"));
        let r = router(&[("/api/...", "api"), ("/api", "api-root")]);
        assert_eq!(component(&r, "/api"), Some("api-root"));
        assert_eq!(component(&r, "/api/x"), Some("api"));
    }

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
    }

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
    }

    #[test]
    fn duplicates_last_one_wins_and_are_reported() {
        let (r, duplicates) = Router::build([
            (RoutePattern::parse("/foo").unwrap(), "first".to_owned()),
            (RoutePattern::parse("/foo/").unwrap(), "second".to_owned()),
            (RoutePattern::parse("/a/:x").unwrap(), "third".to_owned()),
            (RoutePattern::parse("/a/:y").unwrap(), "fourth".to_owned()),
        ]);
        assert_eq!(component(&r, "/foo"), Some("second"));
        assert_eq!(component(&r, "/a/1"), Some("fourth"));
        assert_eq!(duplicates.len(), 2);
        assert_eq!(duplicates[0].replaced, "first");
        assert_eq!(duplicates[0].effective, "second");
    }

    #[test]
    fn malformed_routes_are_refused() {
        assert_eq!(
            RoutePattern::parse("/.well-known/spin/health").unwrap_err(),
            RouteError::Reserved
        );
        assert_eq!(
            RoutePattern::parse("/.well-known/spin/...").unwrap_err(),
            RouteError::Reserved
        );
        assert!(RoutePattern::parse("/.well-known/spindle").is_ok());
        assert!(RoutePattern::parse("/.well-known/spin").is_ok());
        assert_eq!(
            RoutePattern::parse("/a/.../b").unwrap_err(),
            RouteError::MisplacedWildcard
        );
        assert_eq!(
            RoutePattern::parse("/a/:/b").unwrap_err(),
            RouteError::EmptyParameter
        );
        assert_eq!(
            RoutePattern::parse("/:a/:a").unwrap_err(),
            RouteError::DuplicateParameter("a".into())
        );
    }
}
