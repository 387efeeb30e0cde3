//! IP networks, and the allow-list of addresses a receiver takes webhooks from.

use std::net::IpAddr;

/// An IP network written `<address>/<prefix length>`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `10.1.0.0/16`, `fd00::/8` or a single address such as `127.0.0.1`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network such as 10.0.0.0/8"))?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0 to {width}"))?,
        };
        Ok(Self { address, prefix })
    }

    /// Returns whether `address` is in this network; IPv4 and IPv6 networks never mix.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                prefix_matches(&network.octets(), &address.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_matches(&network.octets(), &address.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let whole = usize::from(prefix / 8);
    let rest = prefix % 8;
    if network[..whole] != address[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    network[whole] & mask == address[whole] & mask
}

/// The networks a receiver accepts webhook requests from, such as the egress addresses its
/// Herald operator publishes. Behind a proxy or load balancer, check the client address it
/// reports, not the proxy's own.
#[derive(Debug, Clone, Default)]
pub struct SourceAllowList {
    networks: Vec<Network>,
}

impl SourceAllowList {
    /// Parses networks such as `203.0.113.0/24` or single addresses; an empty list allows none.
    pub fn parse<S: AsRef<str>>(networks: &[S]) -> Result<Self, String> {
        let networks = networks
            .iter()
            .map(|network| Network::parse(network.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { networks })
    }

    /// Returns whether `address` is in one of the networks. An IPv4-mapped IPv6 address, as a
    /// dual-stack socket reports IPv4 clients, is judged as its IPv4 address.
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        self.networks
            .iter()
            .any(|network| network.contains(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let network = Network::parse("172.16.0.0/12").expect("valid");
        assert!(network.contains("172.31.1.1".parse().expect("address")));
        assert!(!network.contains("172.32.0.1".parse().expect("address")));
        assert!(!network.contains("::1".parse().expect("address")));
        for bad in ["10.0.0.0/33", "fd00::/129", "ten/8", "10.0.0.0/x", ""] {
            assert!(Network::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allow_list_matches_mapped_addresses() {
        let list = SourceAllowList::parse(&["203.0.113.0/24", "2001:db8::/32"]).expect("valid");
        assert!(list.allows("203.0.113.9".parse().expect("address")));
        assert!(list.allows("::ffff:203.0.113.9".parse().expect("address")));
        assert!(list.allows("2001:db8::5".parse().expect("address")));
        assert!(!list.allows("198.51.100.1".parse().expect("address")));
        assert!(!SourceAllowList::default().allows("203.0.113.9".parse().expect("address")));
        assert!(SourceAllowList::parse(&["203.0.113.0/40"]).is_err());
    }
}
