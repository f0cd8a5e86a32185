//! Key patterns: prefixes, suffixes and segment globs over `/`-separated object keys, and
//! whether two sets of patterns can match a common key (for refusing rules that would loop).
//!
//! A glob is made of literal characters, `*` (any run of characters within one segment, i.e.
//! no `/`) and `**` (any run of characters, `/` included). So `products/*/originals/*` matches
//! every original and `products/*/thumbnails/**` everything under any product's thumbnails.
//!
//! Why not the `glob`/`globset` crates: they answer "does this path match", but the loop check
//! also needs "can any key match both of these patterns", which this module decides exactly
//! with a small product-automaton search. Matching a key is the same search with the key as a
//! pattern of literals, so there is one algorithm to trust.

use std::collections::HashSet;

/// One position of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// Any run of characters except `/` (possibly empty).
    Segment,
    /// Any run of characters (possibly empty).
    Anything,
}

/// A compiled key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    /// A segment glob (`*` within a segment, `**` across segments).
    pub fn glob(glob: &str) -> Self {
        let mut tokens = Vec::with_capacity(glob.len());
        let mut chars = glob.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '*' {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    tokens.push(Token::Anything);
                } else {
                    tokens.push(Token::Segment);
                }
            } else {
                tokens.push(Token::Literal(c));
            }
        }
        Self { tokens }
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: &str) -> Self {
        let mut tokens: Vec<Token> = prefix.chars().map(Token::Literal).collect();
        tokens.push(Token::Anything);
        Self { tokens }
    }

    /// Keys ending with `suffix`.
    pub fn suffix(suffix: &str) -> Self {
        let mut tokens = vec![Token::Anything];
        tokens.extend(suffix.chars().map(Token::Literal));
        Self { tokens }
    }

    /// Exactly `key`.
    pub fn literal(key: &str) -> Self {
        Self {
            tokens: key.chars().map(Token::Literal).collect(),
        }
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        intersects(&[self, &Self::literal(key)])
    }
}

/// Whether some key matches every one of `patterns`: a breadth-first search over the product of
/// the patterns' automata. A state is one position per pattern; wildcards may end (an empty
/// move) or absorb a character that every other pattern can take at its position. Each useful
/// move advances at least one position, so the search ends.
pub fn intersects(patterns: &[&Pattern]) -> bool {
    let start = vec![0_usize; patterns.len()];
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut queue = vec![start];
    while let Some(state) = queue.pop() {
        if !seen.insert(state.clone()) {
            continue;
        }
        if state
            .iter()
            .zip(patterns)
            .all(|(position, pattern)| *position == pattern.tokens.len())
        {
            return true;
        }
        // Empty moves: a wildcard matches nothing more.
        for (index, pattern) in patterns.iter().enumerate() {
            if matches!(
                pattern.tokens.get(state[index]),
                Some(Token::Segment | Token::Anything)
            ) {
                let mut next = state.clone();
                next[index] += 1;
                queue.push(next);
            }
        }
        // Character moves: only a literal somewhere makes progress; every pattern must take
        // that character (literals advance, wildcards stay).
        let literal = patterns.iter().zip(&state).find_map(|(pattern, position)| {
            match pattern.tokens.get(*position) {
                Some(Token::Literal(c)) => Some(*c),
                _ => None,
            }
        });
        let Some(c) = literal else { continue };
        let mut next = state.clone();
        let accepted = patterns.iter().enumerate().all(|(index, pattern)| {
            match pattern.tokens.get(state[index]) {
                Some(Token::Literal(other)) => {
                    next[index] += 1;
                    *other == c
                }
                Some(Token::Segment) => c != '/',
                Some(Token::Anything) => true,
                None => false,
            }
        });
        if accepted {
            queue.push(next);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments() {
        let originals = Pattern::glob("products/*/originals/*");
        assert!(originals.matches("products/p1/originals/i1"));
        assert!(!originals.matches("products/p1/originals/i1/x"));
        assert!(!originals.matches("products/p1/thumbnails/i1/w160.jpg"));
        assert!(!originals.matches("products/a/b/originals/i1"));
        let thumbnails = Pattern::glob("products/*/thumbnails/**");
        assert!(thumbnails.matches("products/p1/thumbnails/i1/w160.jpg"));
        assert!(!thumbnails.matches("products/p1/originals/i1"));
        let jpg = Pattern::glob("**/*.jpg");
        assert!(jpg.matches("a/b/c.jpg"));
        assert!(!jpg.matches("a/b/c.png"));
        assert!(Pattern::glob("").matches(""));
        assert!(!Pattern::glob("").matches("x"));
        assert!(
            Pattern::glob("a***b").matches("a/x/b"),
            "runs of stars are **"
        );
    }

    #[test]
    fn prefixes_and_suffixes() {
        assert!(Pattern::prefix("products/").matches("products/x"));
        assert!(!Pattern::prefix("products/").matches("product"));
        assert!(Pattern::suffix(".jpg").matches("x/y.jpg"));
        assert!(!Pattern::suffix(".jpg").matches("x/y.jpeg"));
    }

    #[test]
    fn intersections_are_decided_exactly() {
        let thumbnails = Pattern::glob("products/*/thumbnails/**");
        let originals = Pattern::glob("products/*/originals/*");
        assert!(!intersects(&[&thumbnails, &originals]));
        assert!(intersects(&[&thumbnails, &Pattern::prefix("products/")]));
        assert!(intersects(&[&thumbnails, &Pattern::suffix(".jpg")]));
        assert!(intersects(&[
            &thumbnails,
            &Pattern::glob("products/*/thumbnails/*/*"),
            &Pattern::suffix(".webp"),
        ]));
        assert!(!intersects(&[&thumbnails, &Pattern::prefix("media/")]));
        // A segment wildcard cannot cross `/`.
        assert!(!intersects(&[
            &Pattern::glob("a/*"),
            &Pattern::literal("a/b/c")
        ]));
        assert!(intersects(&[
            &Pattern::glob("a/**"),
            &Pattern::glob("*/b/*")
        ]));
        assert!(!intersects(&[
            &Pattern::glob("*.png"),
            &Pattern::glob("**.jpg")
        ]));
    }
}
