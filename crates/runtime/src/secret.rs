//! Secrets in configuration: values that `Debug` and `Display` never print.
//!
//! A configuration field holding a password, a client secret or a signing key is a
//! [`Secret`]. It reads and writes exactly like the value it wraps (serde-transparent, so the
//! configuration keys, the TOML and the `STOREMESH_*` environment variables are unchanged), but
//! formatting it prints `[redacted]`, so logging a whole configuration (`{config:?}`) cannot
//! leak it. The value is read with an explicit [`Secret::expose`] where it is used.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints as.
pub const REDACTED: &str = "[redacted]";

/// A value that is never formatted: `Debug` and `Display` print [`REDACTED`].
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value itself: for the places that use it, never for logging.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl Secret<String> {
    /// Whether the secret is unset (empty); says nothing else about it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Configuration layering serializes the defaults: the value itself, as if unwrapped.
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self)
    }
}

/// `url` with the password of its user info (`scheme://user:password@host`) and any `password`
/// or `pass` query parameter replaced by [`REDACTED`], for printing connection URLs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(&authority);
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _))
                    if ["password", "pass"].contains(&name.to_ascii_lowercase().as_str()) =>
                {
                    format!("{name}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Section {
        name: String,
        password: Secret,
        keys: Vec<Secret>,
    }

    #[test]
    fn formatting_never_prints_the_value() {
        let secret = Secret::from("hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:#?}"), REDACTED);
        assert_eq!(secret.expose(), "hunter2-hunter2");
        assert!(!secret.is_empty());
        assert!(Secret::<String>::default().is_empty());
    }

    impl crate::config::Validate for Section {
        fn validate(&self, _section: &str) -> Result<(), crate::ConfigError> {
            Ok(())
        }
    }

    #[test]
    fn configuration_reads_and_writes_the_plain_value() {
        let section: Section = crate::ConfigLoader::from_toml_str(
            "[demo]\nname = \"n\"\npassword = \"pw-0123456789\"\nkeys = [\"k1-0123456789\"]\n",
        )
        .section("demo")
        .unwrap();
        assert_eq!(section.password.expose(), "pw-0123456789");
        assert_eq!(section.keys, [Secret::from("k1-0123456789")]);
        let debug = format!("{section:?}");
        assert!(!debug.contains("pw-0123456789"), "{debug}");
        assert!(!debug.contains("k1-0123456789"), "{debug}");
        assert!(debug.contains("\"n\""), "{debug}");
        // Serialized as the plain value (the defaults layer of the configuration is serialized).
        let value = figment::Figment::from(figment::providers::Serialized::defaults(&section))
            .find_value("password")
            .unwrap();
        assert_eq!(value.as_str(), Some("pw-0123456789"));
    }

    #[test]
    fn urls_lose_their_passwords() {
        for (url, expected) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://user:s3cret@host:6379/0",
                "redis://user:[redacted]@host:6379/0",
            ),
            ("rediss://:s3cret@host", "rediss://:[redacted]@host"),
            ("redis://user@host/1", "redis://user@host/1"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=[redacted]",
            ),
            (
                "redis://h/?password=s3cret",
                "redis://h/?password=[redacted]",
            ),
            ("redis://us:er:s3c@ret@h", "redis://us:[redacted]@h"),
        ] {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }
}
