//! Outbound network permissions (`allowed_outbound_hosts`) with Spin's syntax, and the
//! HTTP/2-with-prior-knowledge authority list.
//!
//! An allowed host is `<scheme>://<host>[:<port>]`:
//! - scheme: a name (`http`, `https`) or `*`;
//! - host: a name (`api.example.com`, compared case-insensitively), `*`, `*.<domain>` (any
//!   subdomain, not the domain itself), an IP address or CIDR range (`10.0.0.0/8`, `[::1]`), or
//!   `self` (accepted for compatibility; this runtime makes no self-requests, see the crate docs);
//! - port: a number, a range `a..b` (end exclusive), or `*`; omitted means the scheme's default
//!   port (80 for http, 443 for https).
//!
//! `insecure:allow-all` is refused (as in Spin; `*://*:*` allows everything).

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedHostError {
    #[error(
        "{0:?} has no scheme: hosts must be written <scheme>://<host>[:<port>] (e.g. \"https://example.com\" or \"*://*:*\")"
    )]
    NoScheme(String),
    #[error("{0:?}: the scheme must be letters or `*`")]
    BadScheme(String),
    #[error("{0:?}: hosts must not contain a path")]
    Path(String),
    #[error("{0:?}: `*` is only allowed alone or as a leading `*.` subdomain wildcard")]
    BadWildcard(String),
    #[error("{0:?}: the port must be a number, a range `a..b` or `*`")]
    BadPort(String),
    #[error("{0:?}: no port given and the scheme has no default port")]
    NoDefaultPort(String),
    #[error("'insecure:allow-all' is not allowed; use \"*://*:*\" to allow all outbound traffic")]
    InsecureAllowAll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemeRule {
    Any,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    /// `*.example.com`: stored as `.example.com`.
    Subdomain(String),
    Exact(String),
    Network {
        addr: IpAddr,
        prefix: u8,
    },
    ToSelf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    Exact(u16),
    /// `start..end`, end exclusive (as in Spin).
    Range(u16, u16),
}

/// One `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    original: String,
    scheme: SchemeRule,
    host: HostRule,
    port: PortRule,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(text: &str) -> Result<Self, AllowedHostError> {
        let original = text.to_owned();
        let trimmed = text.trim();
        if trimmed == "insecure:allow-all" {
            return Err(AllowedHostError::InsecureAllowAll);
        }
        let Some((scheme, rest)) = trimmed.split_once("://") else {
            return Err(AllowedHostError::NoScheme(original));
        };
        let scheme_rule = if scheme == "*" {
            SchemeRule::Any
        } else if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()) {
            SchemeRule::Exact(scheme.to_ascii_lowercase())
        } else {
            return Err(AllowedHostError::BadScheme(original));
        };

        // Split host and port, keeping IPv6 brackets together.
        let (host, port) = if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => {
                    let after = &rest[end + 1..];
                    (&rest[..=end], after.strip_prefix(':').unwrap_or(after))
                }
                None => (rest, ""),
            }
        } else {
            // A CIDR's `/` comes before the port: `10.0.0.0/8:80`.
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, port),
                None => (rest, ""),
            }
        };
        let port = match port.split_once('/') {
            Some((port, "")) => port,
            Some(_) => return Err(AllowedHostError::Path(original)),
            None => port,
        };
        let host_rule = parse_host(host.trim(), &original)?;
        let port_rule = if port.is_empty() {
            match &scheme_rule {
                SchemeRule::Exact(scheme) => match default_port(scheme) {
                    Some(port) => PortRule::Exact(port),
                    None => return Err(AllowedHostError::NoDefaultPort(original)),
                },
                SchemeRule::Any => return Err(AllowedHostError::NoDefaultPort(original)),
            }
        } else if port == "*" {
            PortRule::Any
        } else if let Some((start, end)) = port.split_once("..") {
            match (start.parse(), end.parse()) {
                (Ok(start), Ok(end)) => PortRule::Range(start, end),
                _ => return Err(AllowedHostError::BadPort(original)),
            }
        } else {
            PortRule::Exact(
                port.parse()
                    .map_err(|_| AllowedHostError::BadPort(original.clone()))?,
            )
        };
        Ok(Self {
            original,
            scheme: scheme_rule,
            host: host_rule,
            port: port_rule,
        })
    }

    /// Whether a request to `scheme://host[:port]` is allowed (`port` `None` means the scheme's
    /// default port).
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme = scheme.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        let scheme_ok = match &self.scheme {
            SchemeRule::Any => true,
            SchemeRule::Exact(allowed) => *allowed == scheme,
        };
        let host_ok = match &self.host {
            HostRule::Any => true,
            HostRule::Subdomain(suffix) => host.ends_with(suffix.as_str()),
            HostRule::Exact(allowed) => *allowed == host,
            HostRule::Network { addr, prefix } => {
                parse_ip(&host).is_some_and(|candidate| network_contains(*addr, *prefix, candidate))
            }
            HostRule::ToSelf => false,
        };
        let port_ok = match &self.port {
            PortRule::Any => true,
            rule => match port.or_else(|| default_port(&scheme)) {
                Some(port) => match rule {
                    PortRule::Exact(allowed) => *allowed == port,
                    PortRule::Range(start, end) => (*start..*end).contains(&port),
                    PortRule::Any => true,
                },
                None => false,
            },
        };
        scheme_ok && host_ok && port_ok
    }
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

fn parse_host(host: &str, original: &str) -> Result<HostRule, AllowedHostError> {
    if host == "*" {
        return Ok(HostRule::Any);
    }
    if host == "self" || host == "self.alt" {
        return Ok(HostRule::ToSelf);
    }
    if let Some((addr, prefix)) = parse_network(host) {
        return Ok(HostRule::Network { addr, prefix });
    }
    let host = host.trim_end_matches('/');
    if host.contains('/') {
        return Err(AllowedHostError::Path(original.to_owned()));
    }
    if let Some(domain) = host.strip_prefix("*.") {
        if domain.contains('*') || domain.is_empty() {
            return Err(AllowedHostError::BadWildcard(original.to_owned()));
        }
        return Ok(HostRule::Subdomain(format!(
            ".{}",
            domain.to_ascii_lowercase()
        )));
    }
    if host.contains('*') {
        return Err(AllowedHostError::BadWildcard(original.to_owned()));
    }
    Ok(HostRule::Exact(host.to_ascii_lowercase()))
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// `addr` or `addr/prefix` (the address is truncated to the prefix).
fn parse_network(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr = parse_ip(addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => prefix.parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some((addr, prefix))
}

fn network_contains(network: IpAddr, prefix: u8, candidate: IpAddr) -> bool {
    match (network, candidate) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// A component's outbound permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<AllowedHost>);

impl AllowedHosts {
    pub fn new(hosts: Vec<AllowedHost>) -> Self {
        Self(hosts)
    }

    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.0.iter().any(|rule| rule.allows(scheme, host, port))
    }

    /// Whether `uri` (absolute) may be requested.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => self.allows(scheme, host, uri.port_u16()),
            _ => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &AllowedHost> {
        self.0.iter()
    }
}

/// The environment variable Spin reads for cleartext HTTP/2 (h2c) with prior knowledge.
pub const H2C_ENV: &str = "SPIN_OUTBOUND_H2C_PRIOR_KNOWLEDGE";

/// Cleartext authorities spoken to with HTTP/2 prior knowledge (h2c) instead of HTTP/1.1.
///
/// As in Spin, an authority matches only when it is byte-for-byte equal to the request's
/// (`127.0.0.1:50050` is not `localhost:50050`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2cPriorKnowledge(Vec<String>);

impl H2cPriorKnowledge {
    /// The configured authorities plus those in `SPIN_OUTBOUND_H2C_PRIOR_KNOWLEDGE` (Spin takes
    /// one authority there; a comma-separated list is accepted here too).
    pub fn new(configured: &[String], env: Option<&str>) -> Self {
        let mut authorities: Vec<String> = configured.iter().map(|a| a.trim().to_owned()).collect();
        if let Some(env) = env {
            authorities.extend(
                env.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned),
            );
        }
        authorities.retain(|a| !a.is_empty());
        authorities.dedup();
        Self(authorities)
    }

    pub fn from_config_and_env(configured: &[String]) -> Self {
        Self::new(configured, std::env::var(H2C_ENV).ok().as_deref())
    }

    pub fn contains(&self, authority: &str) -> bool {
        self.0.iter().any(|a| a == authority)
    }

    pub fn authorities(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allows(rule: &str, scheme: &str, host: &str, port: Option<u16>) -> bool {
        AllowedHost::parse(rule).unwrap().allows(scheme, host, port)
    }

    #[test]
    fn exact_host_with_default_port() {
        assert!(allows("https://example.com", "https", "example.com", None));
        assert!(allows(
            "https://example.com",
            "https",
            "EXAMPLE.com",
            Some(443)
        ));
        assert!(!allows(
            "https://example.com",
            "https",
            "example.com",
            Some(8443)
        ));
        assert!(!allows("https://example.com", "http", "example.com", None));
        assert!(!allows(
            "https://example.com",
            "https",
            "api.example.com",
            None
        ));
        assert!(allows("https://example.com/", "https", "example.com", None));
    }

    #[test]
    fn explicit_ports_ranges_and_wildcards() {
        assert!(allows(
            "http://127.0.0.1:50050",
            "http",
            "127.0.0.1",
            Some(50050)
        ));
        assert!(!allows(
            "http://127.0.0.1:50050",
            "http",
            "127.0.0.1",
            Some(50051)
        ));
        assert!(!allows("http://127.0.0.1:50050", "http", "127.0.0.1", None));
        assert!(allows(
            "http://localhost:*",
            "http",
            "localhost",
            Some(1234)
        ));
        assert!(allows(
            "http://localhost:3000..3002",
            "http",
            "localhost",
            Some(3001)
        ));
        assert!(!allows(
            "http://localhost:3000..3002",
            "http",
            "localhost",
            Some(3002)
        ));
        assert!(allows("*://*:*", "https", "anything.test", Some(1)));
        assert!(allows("*://example.com:443", "https", "example.com", None));
    }

    #[test]
    fn subdomain_wildcards_do_not_match_the_domain() {
        assert!(allows(
            "https://*.example.com",
            "https",
            "api.example.com",
            None
        ));
        assert!(allows(
            "https://*.example.com",
            "https",
            "a.b.example.com",
            None
        ));
        assert!(!allows(
            "https://*.example.com",
            "https",
            "example.com",
            None
        ));
        assert!(!allows(
            "https://*.example.com",
            "https",
            "badexample.com",
            None
        ));
    }

    #[test]
    fn networks_and_ipv6() {
        assert!(allows("http://10.0.0.0/8:80", "http", "10.1.2.3", None));
        assert!(!allows("http://10.0.0.0/8:80", "http", "11.1.2.3", None));
        assert!(allows("http://[::1]:50051", "http", "[::1]", Some(50051)));
        assert!(!allows("http://[::1]:50051", "http", "[::2]", Some(50051)));
        assert!(allows("http://127.0.0.1:*", "http", "127.0.0.1", Some(9)));
    }

    #[test]
    fn self_allows_no_network_request() {
        assert!(!allows("http://self", "http", "self", None));
        assert!(!allows("http://self", "http", "localhost", None));
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(matches!(
            AllowedHost::parse("example.com"),
            Err(AllowedHostError::NoScheme(_))
        ));
        assert!(matches!(
            AllowedHost::parse("*"),
            Err(AllowedHostError::NoScheme(_))
        ));
        assert!(matches!(
            AllowedHost::parse("insecure:allow-all"),
            Err(AllowedHostError::InsecureAllowAll)
        ));
        assert!(matches!(
            AllowedHost::parse("https://example.com/path"),
            Err(AllowedHostError::Path(_))
        ));
        assert!(matches!(
            AllowedHost::parse("https://api.*.com"),
            Err(AllowedHostError::BadWildcard(_))
        ));
        assert!(matches!(
            AllowedHost::parse("https://example.com:http"),
            Err(AllowedHostError::BadPort(_))
        ));
        assert!(matches!(
            AllowedHost::parse("foo://example.com"),
            Err(AllowedHostError::NoDefaultPort(_))
        ));
        assert!(matches!(
            AllowedHost::parse("h2://example.com:1"),
            Err(AllowedHostError::BadScheme(_))
        ));
    }

    #[test]
    fn a_component_without_rules_allows_nothing() {
        let hosts = AllowedHosts::default();
        assert!(!hosts.allows_uri(&"http://127.0.0.1:80/".parse().unwrap()));
        let hosts = AllowedHosts::new(vec![AllowedHost::parse("http://127.0.0.1:8080").unwrap()]);
        assert!(hosts.allows_uri(&"http://127.0.0.1:8080/x?y".parse().unwrap()));
        assert!(!hosts.allows_uri(&"http://127.0.0.1:8081/x".parse().unwrap()));
        assert!(!hosts.allows_uri(&"/relative".parse().unwrap()));
    }

    #[test]
    fn h2c_authorities_match_exactly() {
        let h2c = H2cPriorKnowledge::new(
            &["127.0.0.1:50050".to_owned()],
            Some("[::1]:50051, 127.0.0.1:50052"),
        );
        assert!(h2c.contains("127.0.0.1:50050"));
        assert!(h2c.contains("[::1]:50051"));
        assert!(h2c.contains("127.0.0.1:50052"));
        assert!(!h2c.contains("localhost:50050"));
        assert!(!h2c.contains("127.0.0.1"));
    }
}
