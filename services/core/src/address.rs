//! IP networks and the ranges webhooks may not reach: loopback, private, link-local, shared
//! (CGNAT), multicast, unspecified, documentation, benchmarking and other reserved ranges, also
//! when written as IPv4-mapped, IPv4-compatible or NAT64 IPv6. `sender.allowed_networks` opens
//! chosen ranges. The sender's connector applies [`AddressGuard`] to every address it connects to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use herald_verify::network::Network;

/// A connection refused by the address guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{address} is a {range} address, which webhooks may not reach unless sender.allowed_networks lists it"
)]
pub struct BlockedAddress {
    pub address: IpAddr,
    pub range: &'static str,
}

/// Decides which addresses the sender may connect to.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allowed: Vec<Network>,
}

impl AddressGuard {
    /// Builds a guard that also allows `allowed` networks, given as configuration text.
    pub fn new(allowed: &[String]) -> Result<Self, String> {
        let allowed = allowed
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| Network::parse(entry))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Returns `Ok` when the sender may connect to `address`.
    pub fn check(&self, address: IpAddr) -> Result<(), BlockedAddress> {
        // An IPv4 address written as IPv6 is judged as the IPv4 address it stands for.
        let address = match address {
            IpAddr::V6(v6) => embedded_ipv4(v6).map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        let Some(range) = special_range(address) else {
            return Ok(());
        };
        if self.allowed.iter().any(|network| network.contains(address)) {
            return Ok(());
        }
        Err(BlockedAddress { address, range })
    }
}

/// Returns the IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, deprecated) or NAT64 (`64:ff9b::a.b.c.d`, which a NAT64 gateway forwards to
/// that IPv4 address) IPv6 address. `::` and `::1` are IPv6's own.
pub fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = address.segments();
    let compatible = segments[..6].iter().all(|segment| *segment == 0) && segments[6] != 0;
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (compatible || nat64).then(|| {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// Ranges that are not the public internet: IANA special-purpose registries (RFC 6890 and its
/// updates), as `(network, name)`.
const SPECIAL_V4: [(&str, &str); 16] = [
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
];
const SPECIAL_V6: [(&str, &str); 12] = [
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "NAT64 (local use)"),
    ("100::/64", "discard"),
    ("2001::/23", "IETF protocol assignment"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// Returns the name of the special range `address` is in, or `None` for a public address.
fn special_range(address: IpAddr) -> Option<&'static str> {
    let table: &[(&str, &str)] = match address {
        IpAddr::V4(_) => &SPECIAL_V4,
        IpAddr::V6(_) => &SPECIAL_V6,
    };
    table.iter().find_map(|(network, name)| {
        Network::parse(network)
            .ok()
            .filter(|network| network.contains(address))
            .map(|_| *name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(guard: &AddressGuard, text: &str) -> Option<&'static str> {
        let address: IpAddr = text.parse().expect("an address");
        guard.check(address).err().map(|refusal| refusal.range)
    }

    #[test]
    fn special_ranges_are_refused_by_default() {
        let guard = AddressGuard::default();
        let cases = [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("10.20.30.40", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.100.100.100", "shared (CGNAT)"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("fd12:3456::1", "unique local (private)"),
            ("224.0.0.251", "multicast"),
            ("ff02::1", "multicast"),
            ("192.0.2.10", "documentation"),
            ("2001:db8::1", "documentation"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("255.255.255.255", "broadcast"),
        ];
        for (address, range) in cases {
            assert_eq!(blocked(&guard, address), Some(range), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let guard = AddressGuard::default();
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(blocked(&guard, address), None, "{address}");
        }
    }

    #[test]
    fn allowed_networks_open_their_range_only() {
        let guard =
            AddressGuard::new(&["127.0.0.0/8".into(), "::1".into(), String::new()]).expect("valid");
        assert_eq!(blocked(&guard, "127.0.0.1"), None);
        assert_eq!(blocked(&guard, "::ffff:127.0.0.1"), None);
        assert_eq!(blocked(&guard, "::1"), None);
        assert_eq!(blocked(&guard, "10.0.0.1"), Some("private"));
    }
}
