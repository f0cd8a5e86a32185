//! Per-prefix object size limits (pure).
//!
//! A rule's `prefix` is a key prefix ending in `/` whose segments match literally, except that a
//! `*` segment matches any one segment: `products/*/originals/` covers every product's
//! originals. Among the rules that match a key, the one with the most segments wins, then the
//! one with more literal (non-`*`) segments, then the first listed; a key no rule matches gets
//! `storage.max_object_bytes`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixLimit {
    /// Key prefix ending in `/`; a `*` segment matches any one segment.
    pub prefix: String,
    /// Largest object under the prefix, in bytes.
    pub max_bytes: u64,
}

/// Why a rule's prefix is not usable, if it is not.
pub fn pattern_problem(prefix: &str) -> Option<&'static str> {
    let Some(body) = prefix.strip_suffix('/') else {
        return Some("must end with `/`");
    };
    if body.is_empty() || body.split('/').any(str::is_empty) {
        return Some("must be non-empty segments separated by `/`");
    }
    None
}

/// How specific `pattern` is for `key`, if it matches: (segments, literal segments).
fn specificity(pattern: &str, key: &str) -> Option<(usize, usize)> {
    let pattern = pattern.strip_suffix('/')?;
    let mut key_segments = key.split('/');
    let (mut segments, mut literal) = (0, 0);
    for expected in pattern.split('/') {
        let actual = key_segments.next()?;
        if expected != "*" {
            if expected != actual {
                return None;
            }
            literal += 1;
        }
        segments += 1;
    }
    // Under the prefix: at least one more segment.
    key_segments.next().map(|_| (segments, literal))
}

/// The size limit for `key`.
pub fn limit_for(rules: &[PrefixLimit], default: u64, key: &str) -> u64 {
    let mut best: Option<((usize, usize), u64)> = None;
    for rule in rules {
        if let Some(score) = specificity(&rule.prefix, key)
            && best.is_none_or(|(best_score, _)| score > best_score)
        {
            best = Some((score, rule.max_bytes));
        }
    }
    best.map_or(default, |(_, max)| max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, max_bytes: u64) -> PrefixLimit {
        PrefixLimit {
            prefix: prefix.into(),
            max_bytes,
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let rules = [
            rule("products/", 100),
            rule("products/*/originals/", 50),
            rule("products/*/thumbnails/", 10),
            rule("products/special/originals/", 70),
        ];
        assert_eq!(limit_for(&rules, 1000, "misc/a"), 1000);
        assert_eq!(limit_for(&rules, 1000, "products/p/other/x"), 100);
        assert_eq!(limit_for(&rules, 1000, "products/p/originals/i"), 50);
        assert_eq!(limit_for(&rules, 1000, "products/p/thumbnails/i/w.jpg"), 10);
        assert_eq!(limit_for(&rules, 1000, "products/special/originals/i"), 70);
        // The prefix itself is not "under" it.
        assert_eq!(limit_for(&rules, 1000, "products/p/originals"), 100);
        assert_eq!(limit_for(&rules, 1000, "products"), 1000);
    }

    #[test]
    fn ties_go_to_the_first_rule() {
        let rules = [rule("a/*/", 1), rule("*/b/", 2)];
        assert_eq!(limit_for(&rules, 9, "a/b/c"), 1);
    }

    #[test]
    fn patterns() {
        assert_eq!(pattern_problem("products/*/originals/"), None);
        assert_eq!(pattern_problem("*/"), None);
        assert!(pattern_problem("products").is_some());
        assert!(pattern_problem("/").is_some());
        assert!(pattern_problem("a//b/").is_some());
        assert!(pattern_problem("/a/").is_some());
    }
}
