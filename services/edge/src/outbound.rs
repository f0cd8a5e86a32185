//! Outbound network permissions (`allowed_outbound_hosts`) with Spin's syntax, and the
//! HTTP/2-with-prior-knowledge authority list.
//!
//! Parsing and matching follow Spin's `AllowedHostConfig`
//! (`crates/outbound-networking-config/src/allowed_hosts.rs`) exactly. An entry is
//! `<scheme>://<host>[:<port>]`, split at `://` and at the *last* `:`:
//! - scheme: `*` or alphabetic text, compared as written (request schemes are lower case, so
//!   `HTTPS://...` matches nothing and, having no default port, needs an explicit one);
//! - host: `*`, `*.<domain>` (any host ending in `.<domain>`), `self`/`self.alt` (self-requests,
//!   which this runtime does not make), a CIDR `addr/len` (matched against an IPv4 request host;
//!   an IPv6 request host has brackets and never matches, as in Spin), or a name compared as
//!   written (request hosts are lower case) — a plain IP address, too (IPv6 with brackets);
//! - port: a number, a range `a..b` (end exclusive), or `*`; omitted means the scheme's
//!   well-known port (http 80, https 443, postgres, mysql, redis, mqtt), an error otherwise;
//!   `{...}` lists of schemes, hosts or ports are refused ("not yet supported"), as is a path.
//!
//! `insecure:allow-all` is refused (as in Spin; `*://*:*` allows everything).

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedHostError {
    #[error(
        "{0:?} is not an allowed outbound host format: hosts must be in the form <scheme>://<host>[:<port>], with '*' wildcards allowed for each ('*://*:*' allows all outbound networking)"
    )]
    NotAHost(String),
    #[error("{0:?} does not contain a scheme (e.g., 'http://' or '*://')")]
    NoScheme(String),
    #[error("{0:?} has a path but is not allowed to")]
    Path(String),
    #[error("scheme {0:?} contains non alphabetic character")]
    BadScheme(String),
    #[error("{0} lists are not yet supported")]
    List(&'static str),
    #[error("hosts must not contain paths")]
    HostPath,
    #[error("Invalid allowed host {0}: wildcards are allowed only as prefixes")]
    WildcardNotPrefix(String),
    #[error("Invalid allowed host {0}: wildcards are allowed only as subdomains")]
    WildcardNotSubdomain(String),
    #[error("port {0:?} is not a number")]
    BadPort(String),
    #[error("port range {0:?} contains non-number")]
    BadPortRange(String),
    #[error("no port was provided and the scheme {0:?} does not have a known default port number")]
    NoDefaultPort(String),
    #[error(
        "'insecure:allow-all' is not allowed - use '*://*:*' instead if you really want to allow all outbound traffic"
    )]
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

/// Spin's `well_known_port`.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    /// Spin's `AllowedHostConfig::parse`.
    pub fn parse(text: &str) -> Result<Self, AllowedHostError> {
        let original = text.to_owned();
        let url = text.trim();
        if url == "insecure:allow-all" {
            return Err(AllowedHostError::InsecureAllowAll);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(match url {
                "*" | ":" | "" | "?" => AllowedHostError::NotAHost(url.to_owned()),
                _ => AllowedHostError::NoScheme(url.to_owned()),
            });
        };
        let (host, rest) = rest.rsplit_once(':').unwrap_or((rest, ""));
        let port = match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                return Err(AllowedHostError::Path(url.to_owned()));
            }
            Some((port, _)) => port,
            None => rest,
        };
        Ok(Self {
            scheme: parse_scheme(scheme)?,
            host: parse_host(host)?,
            port: parse_port(port, scheme)?,
            original,
        })
    }

    /// Whether a request to `scheme://host[:port]` is allowed (`port` `None` means the scheme's
    /// default port). `scheme` and `host` are compared as given: callers pass them lower-cased,
    /// as the `url` crate hands them to Spin.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = match &self.scheme {
            SchemeRule::Any => true,
            SchemeRule::Exact(allowed) => allowed == scheme,
        };
        let host_ok = match &self.host {
            HostRule::Any => true,
            HostRule::Subdomain(suffix) => host.ends_with(suffix.as_str()),
            HostRule::Exact(allowed) => allowed == host,
            HostRule::Network { addr, prefix } => host
                .parse::<IpAddr>()
                .is_ok_and(|candidate| network_contains(*addr, *prefix, candidate)),
            HostRule::ToSelf => false,
        };
        let port_ok = match &self.port {
            PortRule::Any => true,
            rule => match port.or_else(|| default_port(scheme)) {
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

/// Spin's `SchemeConfig::parse`.
fn parse_scheme(scheme: &str) -> Result<SchemeRule, AllowedHostError> {
    if scheme == "*" {
        return Ok(SchemeRule::Any);
    }
    if scheme.starts_with('{') {
        return Err(AllowedHostError::List("scheme"));
    }
    if scheme.chars().any(|c| !c.is_alphabetic()) {
        return Err(AllowedHostError::BadScheme(scheme.to_owned()));
    }
    Ok(SchemeRule::Exact(scheme.to_owned()))
}

/// Spin's `HostConfig::parse`.
fn parse_host(host: &str) -> Result<HostRule, AllowedHostError> {
    let host = host.trim();
    if host == "*" {
        return Ok(HostRule::Any);
    }
    if host == "self" || host == "self.alt" {
        return Ok(HostRule::ToSelf);
    }
    if host.starts_with('{') {
        return Err(AllowedHostError::List("host"));
    }
    if let Some((addr, prefix)) = parse_network(host) {
        return Ok(HostRule::Network { addr, prefix });
    }
    if matches!(host.split('/').nth(1), Some(path) if !path.is_empty()) {
        return Err(AllowedHostError::HostPath);
    }
    if let Some(domain) = host.strip_prefix("*.") {
        if domain.contains('*') {
            return Err(AllowedHostError::WildcardNotPrefix(host.to_owned()));
        }
        return Ok(HostRule::Subdomain(format!(".{domain}")));
    }
    if host.contains('*') {
        return Err(AllowedHostError::WildcardNotSubdomain(host.to_owned()));
    }
    Ok(HostRule::Exact(host.trim_end_matches('/').to_owned()))
}

/// Spin's `PortConfig::parse` and `IndividualPortConfig::parse`.
fn parse_port(port: &str, scheme: &str) -> Result<PortRule, AllowedHostError> {
    if port.is_empty() {
        return default_port(scheme)
            .map(PortRule::Exact)
            .ok_or_else(|| AllowedHostError::NoDefaultPort(scheme.to_owned()));
    }
    if port == "*" {
        return Ok(PortRule::Any);
    }
    if port.starts_with('{') {
        return Err(AllowedHostError::List("port"));
    }
    if let Some((start, end)) = port.split_once("..") {
        let bad = || AllowedHostError::BadPortRange(port.to_owned());
        return Ok(PortRule::Range(
            start.parse().map_err(|_| bad())?,
            end.parse().map_err(|_| bad())?,
        ));
    }
    port.parse()
        .map(PortRule::Exact)
        .map_err(|_| AllowedHostError::BadPort(port.to_owned()))
}

/// `ip_network::IpNetwork::from_str_truncate`, which Spin uses: `addr/len` only (a plain
/// address is not a network), the address truncated to the prefix.
fn parse_network(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= max)?;
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

    /// Whether `uri` (absolute) may be requested. Spin compares what the `url` crate makes of
    /// the URL (`OutboundUrl::parse`): scheme and host lower-cased, the scheme's default port
    /// written out the same as no port.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => self.allows(
                &scheme.to_ascii_lowercase(),
                &host.to_ascii_lowercase(),
                uri.port_u16(),
            ),
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

    fn allows_url(rule: &str, url: &str) -> bool {
        AllowedHosts::new(vec![AllowedHost::parse(rule).unwrap()]).allows_uri(&url.parse().unwrap())
    }

    // Spin: crates/outbound-networking-config/src/allowed_hosts.rs,
    // test_allowed_hosts_accepts_url_without_port / _with_port / _with_trailing_slash /
    // test_allowed_hosts_can_be_specific (well_known_port when the URL has none)
    #[test]
    fn exact_host_with_default_port() {
        assert!(allows("https://example.com", "https", "example.com", None));
        assert!(allows(
            "https://example.com",
            "https",
            "example.com",
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
        assert!(allows(
            "http://example.com:4444/",
            "http",
            "example.com",
            Some(4444)
        ));
        assert!(allows(
            "*://spin.fermyon.dev:443",
            "https",
            "spin.fermyon.dev",
            None
        ));
        assert!(!allows(
            "http://example.com:8383",
            "http",
            "example.com",
            None
        ));
        // Request URLs are lower-cased (the `url` crate does it for Spin).
        assert!(allows_url("https://example.com", "https://EXAMPLE.com/x"));
        assert!(allows_url(
            "https://example.com",
            "HTTPS://example.com:443/"
        ));
    }

    // Spin: allowed_hosts.rs, SchemeConfig::parse / HostConfig::parse keep the text as written
    // and HostConfig::allows compares strings, so upper case in the manifest matches nothing.
    #[test]
    fn manifest_entries_are_case_sensitive() {
        assert!(!allows_url(
            "https://API.example.com",
            "https://api.example.com/"
        ));
        assert!(matches!(
            AllowedHost::parse("HTTPS://example.com"),
            Err(AllowedHostError::NoDefaultPort(scheme)) if scheme == "HTTPS"
        ));
        assert!(!allows_url(
            "HTTPS://example.com:443",
            "https://example.com/"
        ));
    }

    // Spin: allowed_hosts.rs, test_allowed_hosts_accepts_url_with_port_range,
    // test_allowed_all_globs, test_allowed_hosts_accepts_host_with_glob_scheme
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
        assert!(allows("*://*:*", "ftp", "anything.test", None));
        assert!(allows("*://example.com:443", "https", "example.com", None));
        // Without a port, a scheme with no well-known port is not allowed by a port rule.
        assert!(!allows("*://example.com:443", "ftp", "example.com", None));
        // Well-known ports beyond HTTP.
        assert!(allows("postgres://db", "postgres", "db", Some(5432)));
        assert!(allows("mysql://db", "mysql", "db", Some(3306)));
        assert!(allows("redis://db", "redis", "db", Some(6379)));
        assert!(allows("mqtt://db", "mqtt", "db", Some(1883)));
    }

    // Spin: allowed_hosts.rs, test_allowed_hosts_can_be_subdomain_wildcards (HostConfig::allows
    // is `host.ends_with(".domain")`)
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
        // `*.` alone is a suffix of `.`: any fully qualified name with a trailing dot.
        assert!(allows("https://*.", "https", "example.com.", None));
        assert!(!allows("https://*.", "https", "example.com", None));
    }

    // Spin: allowed_hosts.rs, test_allowed_hosts_accepts_ip_addresses / _ip_cidr / test_cidr
    #[test]
    fn networks_and_ipv6() {
        assert!(allows("http://10.0.0.0/8:80", "http", "10.1.2.3", None));
        assert!(allows("http://10.0.0.0/8", "http", "10.1.2.3", None));
        assert!(!allows("http://10.0.0.0/8:80", "http", "11.1.2.3", None));
        assert!(allows(
            "*://127.0.0.1/24:63551",
            "tcp",
            "127.0.0.9",
            Some(63551)
        ));
        assert!(allows("*://ff00::/8:80", "http", "ff01::1", None));
        // The request host of an IPv6 URL keeps its brackets, so a CIDR never matches it.
        assert!(!allows_url("*://ff00::/8:80", "http://[ff01::1]/"));
        assert!(allows("http://[::1]:50051", "http", "[::1]", Some(50051)));
        assert!(allows_url("http://[::1]:50051", "http://[::1]:50051/"));
        assert!(!allows("http://[::1]:50051", "http", "[::2]", Some(50051)));
        assert!(allows("http://127.0.0.1:*", "http", "127.0.0.1", Some(9)));
        // A plain address is a name, compared as text.
        assert!(allows("http://192.168.1.1", "http", "192.168.1.1", None));
        // The last `:` splits the port: a bracketed IPv6 address needs an explicit one.
        assert!(AllowedHost::parse("http://[::1]").is_err());
        assert!(AllowedHost::parse("*://127.0.0.0/24").is_err());
    }

    // Spin: allowed_hosts.rs, test_allowed_hosts_accepts_self (HostConfig::ToSelf allows only
    // relative URLs)
    #[test]
    fn self_allows_no_network_request() {
        assert!(!allows("http://self", "http", "self", None));
        assert!(!allows("http://self", "http", "localhost", None));
        assert!(!allows("http://self.alt", "http", "self.alt", None));
    }

    // Spin: allowed_hosts.rs, test_missing_scheme, test_allowed_hosts_rejects_path,
    // test_allowed_hosts_respects_allow_all, test_allowed_hosts_does_not_accept_plain_host_*
    // and the errors of AllowedHostConfig::parse / SchemeConfig / HostConfig / PortConfig.
    #[test]
    fn malformed_entries_are_refused() {
        let error = |text: &str| AllowedHost::parse(text).unwrap_err();
        assert!(matches!(
            error("example.com"),
            AllowedHostError::NoScheme(_)
        ));
        assert!(matches!(
            error("spin.fermyon.dev:80"),
            AllowedHostError::NoScheme(_)
        ));
        for bare in ["*", ":", "", "?"] {
            assert!(
                matches!(error(bare), AllowedHostError::NotAHost(_)),
                "{bare:?}"
            );
        }
        assert_eq!(
            error("insecure:allow-all"),
            AllowedHostError::InsecureAllowAll
        );
        assert!(AllowedHost::parse("http://spin.fermyon.dev/").is_ok());
        assert!(matches!(
            error("http://spin.fermyon.dev:6666/a/b"),
            AllowedHostError::Path(_)
        ));
        assert_eq!(
            error("http://spin.fermyon.dev/a"),
            AllowedHostError::HostPath
        );
        assert_eq!(error("http://*.fermyon.dev/a"), AllowedHostError::HostPath);
        assert!(matches!(
            error("https://api.*.com"),
            AllowedHostError::WildcardNotSubdomain(_)
        ));
        assert!(matches!(
            error("https://*.a.*.com"),
            AllowedHostError::WildcardNotPrefix(_)
        ));
        assert!(matches!(
            error("https://example.com:http"),
            AllowedHostError::BadPort(_)
        ));
        assert!(matches!(
            error("https://example.com:1..x"),
            AllowedHostError::BadPortRange(_)
        ));
        assert!(matches!(
            error("https://example.com:70000"),
            AllowedHostError::BadPort(_)
        ));
        assert!(matches!(
            error("foo://example.com"),
            AllowedHostError::NoDefaultPort(_)
        ));
        assert!(matches!(
            error("*://example.com"),
            AllowedHostError::NoDefaultPort(_)
        ));
        assert!(matches!(
            error("h2://example.com:1"),
            AllowedHostError::BadScheme(_)
        ));
        assert_eq!(
            error("{http,https}://example.com:1"),
            AllowedHostError::List("scheme")
        );
        assert_eq!(error("http://{a,b}:1"), AllowedHostError::List("host"));
        assert_eq!(error("http://a:{1,2}"), AllowedHostError::List("port"));
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
