//! Where a service reaches another, as the `*_endpoint` configuration keys write it
//! (`tokens.auth_endpoint`, `storage.catalog_endpoint`, `catalog.storage_endpoint`).
//!
//! | value | meaning |
//! |---|---|
//! | `http://host:port` | one address, cleartext HTTP/2 (h2c); the name is resolved when a connection opens |
//! | `https://host:port` | the same over TLS (ALPN `h2`), verified against the public web roots |
//! | `dns:///name:port` | gRPC's name syntax: every address `name` resolves to is an endpoint, re-resolved every 2 s (a Kubernetes headless Service: one endpoint per pod); cleartext |
//!
//! Without a port, `http` means 80 and `https` 443; a path is ignored, as it always was. This
//! module only parses, so configuration sections can validate the keys; the mesh
//! (`storemesh_mesh::client`) turns a parsed endpoint into an upstream and a client.

use std::fmt;
use std::str::FromStr;

/// What a configuration error says an endpoint key must be.
pub const EXPECTED: &str = "must be http://host:port, https://host:port or dns:///name:port";

/// A parsed endpoint key; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEndpoint {
    /// One address, `host:port` (IPv6 hosts in brackets).
    Address { authority: String, tls: bool },
    /// `name:port`, resolved to every address it has and re-resolved.
    Dns { name: String },
}

/// Why an endpoint key was refused (see [`EXPECTED`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{EXPECTED}, not `{value}`: {reason}")]
pub struct EndpointError {
    value: String,
    reason: &'static str,
}

impl ServiceEndpoint {
    pub fn parse(value: &str) -> Result<Self, EndpointError> {
        let refuse = |reason| EndpointError {
            value: value.to_owned(),
            reason,
        };
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse("it contains spaces or control characters"));
        }
        if let Some(rest) = value.strip_prefix("dns:") {
            // `dns:name:port` or `dns:///name:port`; `dns://server/…` names a DNS server, which
            // is not supported (the system resolver answers).
            let target = match rest.strip_prefix("//") {
                Some(with_authority) => with_authority.strip_prefix('/').ok_or_else(|| {
                    refuse("a DNS server cannot be chosen; write dns:///name:port")
                })?,
                None => rest,
            };
            return match split_host_port(target) {
                Some(_) if !target.contains('/') => Ok(Self::Dns {
                    name: target.to_owned(),
                }),
                _ => Err(refuse("dns needs name:port")),
            };
        }
        let uri: http::Uri = value.parse().map_err(|_| refuse("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(refuse("the scheme must be http, https or dns")),
        };
        let authority = uri.authority().ok_or_else(|| refuse("no host"))?;
        if authority.as_str().contains('@') {
            return Err(refuse("user information is not allowed"));
        }
        let host = authority.host();
        if host.is_empty() || host == "[]" {
            return Err(refuse("no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self::Address {
            authority: format!("{host}:{port}"),
            tls,
        })
    }
}

impl FromStr for ServiceEndpoint {
    type Err = EndpointError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl fmt::Display for ServiceEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address { authority, tls } => {
                write!(f, "{}://{authority}", if *tls { "https" } else { "http" })
            }
            Self::Dns { name } => write!(f, "dns:///{name}"),
        }
    }
}

/// `host:port` with a non-empty host and a numeric port (IPv6 hosts in brackets).
fn split_host_port(value: &str) -> Option<(&str, u16)> {
    let (host, port) = value.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(authority: &str, tls: bool) -> ServiceEndpoint {
        ServiceEndpoint::Address {
            authority: authority.into(),
            tls,
        }
    }

    #[test]
    fn the_keys_written_so_far_keep_their_meaning() {
        let cases = [
            ("http://127.0.0.1:50052", address("127.0.0.1:50052", false)),
            ("http://catalog:50052", address("catalog:50052", false)),
            ("http://catalog:50052/", address("catalog:50052", false)),
            (
                "http://catalog:50052/ignored",
                address("catalog:50052", false),
            ),
            ("http://[::1]:50051", address("[::1]:50051", false)),
            ("http://auth", address("auth:80", false)),
            (
                "https://auth.example.com",
                address("auth.example.com:443", true),
            ),
            (
                "https://auth.example.com:8443",
                address("auth.example.com:8443", true),
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(ServiceEndpoint::parse(value), Ok(expected), "{value}");
        }
    }

    #[test]
    fn dns_names_are_re_resolved_endpoints() {
        for value in [
            "dns:///catalog-headless:50052",
            "dns:catalog-headless:50052",
        ] {
            assert_eq!(
                ServiceEndpoint::parse(value),
                Ok(ServiceEndpoint::Dns {
                    name: "catalog-headless:50052".into()
                }),
                "{value}"
            );
        }
        let shown = ServiceEndpoint::parse("dns:catalog:1").unwrap().to_string();
        assert_eq!(shown, "dns:///catalog:1");
    }

    #[test]
    fn everything_else_is_refused_with_the_expected_forms() {
        for value in [
            "",
            "x",
            "catalog:50052",
            "grpc://catalog:50052",
            "http://",
            "http://user:pw@catalog:50052",
            "http://cat alog:1",
            "dns:///catalog",
            "dns:///:50052",
            "dns://8.8.8.8/catalog:50052",
            "dns:///catalog:50052/x",
        ] {
            let error = ServiceEndpoint::parse(value).unwrap_err().to_string();
            assert!(error.starts_with(EXPECTED), "{value}: {error}");
        }
    }
}
