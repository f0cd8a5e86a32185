//! Who the client is: the address every per-address limit and log line uses.
//!
//! A request's TCP peer is the client unless that peer is a configured trusted proxy (the
//! gateway, the edge runtime, a load balancer); then the client is the address the proxies
//! forwarded in `x-forwarded-for`: walking the list from the right, the first address that is
//! not itself a trusted proxy. Anyone else's `x-forwarded-for` is ignored, so a caller cannot
//! pick the bucket it is counted in.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The end client's address, resolved once per request (see the module docs) and kept in the
/// request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The key per-address limits count under: IPv4 addresses as they are, IPv6 by their /64
    /// (one subscriber usually holds a whole /64, so counting single addresses would let one
    /// client take 2^64 buckets). IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn limit_key(&self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(prefix))
                }
            },
        }
    }
}

/// The networks whose `x-forwarded-for` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self(networks.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|network| network.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is trusted, else the rightmost
    /// forwarded address that is not a trusted proxy (the leftmost when all are). Malformed
    /// entries end the walk at the last address believed.
    pub fn client_addr(&self, peer: IpAddr, headers: &http::HeaderMap) -> ClientAddr {
        let mut client = canonical(peer);
        if !self.contains(client) {
            return ClientAddr(client);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect::<Vec<_>>();
        for entry in forwarded.iter().rev() {
            let Ok(address) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = canonical(address);
            if !self.contains(client) {
                break;
            }
        }
        ClientAddr(client)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in forwarded {
            headers.append(
                "x-forwarded-for",
                http::HeaderValue::from_str(value).expect("a header value"),
            );
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn trusted(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(networks.iter().map(|n| n.parse().expect("a network")))
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let spoofed = headers(&["1.2.3.4"]);
        assert_eq!(
            proxies.client_addr(ip("6.6.6.6"), &spoofed).0,
            ip("6.6.6.6")
        );
        assert_eq!(
            proxies.client_addr(ip("10.0.0.5"), &spoofed).0,
            ip("1.2.3.4")
        );
        assert_eq!(
            TrustedProxies::default()
                .client_addr(ip("10.0.0.5"), &spoofed)
                .0,
            ip("10.0.0.5")
        );
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8"]);
        // The client prepended a lie; the trusted proxies appended what they saw.
        let chain = headers(&["9.9.9.9, 5.5.5.5", "10.0.0.7"]);
        assert_eq!(proxies.client_addr(ip("10.0.0.5"), &chain).0, ip("5.5.5.5"));
        let all_trusted = headers(&["10.1.1.1, 10.0.0.7"]);
        assert_eq!(
            proxies.client_addr(ip("10.0.0.5"), &all_trusted).0,
            ip("10.1.1.1")
        );
        let garbage = headers(&["5.5.5.5, not-an-address"]);
        assert_eq!(
            proxies.client_addr(ip("10.0.0.5"), &garbage).0,
            ip("10.0.0.5")
        );
        assert_eq!(
            proxies.client_addr(ip("10.0.0.5"), &headers(&[])).0,
            ip("10.0.0.5")
        );
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let one = ClientAddr(ip("2001:db8:1:2:aaaa::1")).limit_key();
        let other = ClientAddr(ip("2001:db8:1:2:bbbb::9")).limit_key();
        let elsewhere = ClientAddr(ip("2001:db8:1:3::1")).limit_key();
        assert_eq!(one, other);
        assert_ne!(one, elsewhere);
        assert_eq!(
            ClientAddr(ip("::ffff:192.0.2.7")).limit_key(),
            ip("192.0.2.7")
        );
        assert_eq!(ClientAddr(ip("192.0.2.7")).limit_key(), ip("192.0.2.7"));
    }
}
