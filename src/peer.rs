//! Who a client is on the network: its socket's address, or, behind a proxy Herald was told
//! to trust, the address that proxy says it forwarded for.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` / `Forwarded` headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From `trusted_proxies` entries: addresses (`10.0.0.7`) or networks (`10.0.0.0/8`).
    ///
    /// # Errors
    /// The entry that is neither.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| e.clone())
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the socket's, unless it is a trusted proxy; then the nearest
    /// hop of the forwarding header that is not one (hops further left are the client's
    /// own word, and could be anything).
    pub fn client_ip(&self, remote: Option<SocketAddr>, forwarded: Option<&str>) -> Option<IpAddr> {
        let mut ip = remote?.ip();
        if !self.trusts(ip) {
            return Some(ip);
        }
        let Some(header) = forwarded else {
            return Some(ip);
        };
        for hop in hops(header).rev() {
            match hop {
                Some(hop) if self.trusts(hop) => ip = hop,
                Some(hop) => return Some(hop),
                // An unreadable hop: nothing to its left can be believed.
                None => return Some(ip),
            }
        }
        Some(ip)
    }
}

/// The addresses of an `X-Forwarded-For` list (`1.2.3.4, 10.0.0.1`) or of a `Forwarded`
/// header's `for=` parameters (`for=1.2.3.4;proto=https, for="[2001:db8::1]:443"`), left to
/// right; `None` for a hop that is not an address (`unknown`, an obfuscated name).
fn hops(header: &str) -> impl DoubleEndedIterator<Item = Option<IpAddr>> + '_ {
    header.split(',').map(|hop| {
        let hop = hop.trim();
        let value = match hop.split(';').find_map(|p| {
            p.trim()
                .strip_prefix("for=")
                .or_else(|| p.trim().strip_prefix("For="))
        }) {
            Some(value) => value.trim_matches('"'),
            None => hop,
        };
        parse_hop(value)
    })
}

fn parse_hop(value: &str) -> Option<IpAddr> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    // `[2001:db8::1]` without a port.
    value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let from = |remote: &str, header: Option<&str>| {
            proxies.client_ip(Some(SocketAddr::new(ip(remote), 9)), header)
        };
        assert_eq!(
            from("203.0.113.9", Some("1.1.1.1")),
            Some(ip("203.0.113.9")),
            "untrusted peer"
        );
        assert_eq!(
            from("10.1.2.3", Some("198.51.100.7")),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            from("10.1.2.3", Some("6.6.6.6, 198.51.100.7, 10.9.9.9")),
            Some(ip("198.51.100.7")),
            "the nearest untrusted hop, not the client's own claim"
        );
        assert_eq!(
            from(
                "127.0.0.1",
                Some(r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#)
            ),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            from("10.1.2.3", Some("unknown, 10.0.0.5")),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(from("10.1.2.3", None), Some(ip("10.1.2.3")));
        assert!(TrustedProxies::parse(&["not-an-ip".into()]).is_err());
    }
}
