//! Server-side request forgery (SSRF) guard for webhook targets.
//!
//! A webhook URL is chosen by the API caller, and the server POSTs to it from inside
//! its own network. Without a guard, anyone with an API key could make the server
//! call its own admin ports, databases on the private network, or the cloud metadata
//! service (which hands out instance credentials). The guard refuses every address
//! that is not a public unicast address, unless the operator allows private targets
//! (development and tests do).
//!
//! Two checks, because there are two ways a URL reaches an address:
//!
//! - **Host names** go through [`GuardedResolver`], installed as the HTTP client's DNS
//!   resolver. The client connects to exactly the addresses the resolver returns, so
//!   the check applies to the address actually dialled: a name that resolves to a
//!   public address at upsert time and to `127.0.0.1` at delivery time (DNS
//!   rebinding) is still caught.
//! - **Literal IP addresses** (`http://10.0.0.1/`, `http://[::1]/`) never reach a
//!   resolver, so [`check_url`] refuses them before a request is sent. The API also
//!   calls it when a webhook is saved, to answer 422 early.
//!
//! Operators can add ranges of their own (`--deny-targets`); those are refused even
//! when private targets are allowed.
//!
//! A refusal tells the tenant only that the target is blocked, never what a name
//! resolved to: otherwise the attempt log would be an oracle for the server's internal
//! DNS. The details go to the server log.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Which webhook targets the server may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// Loopback, private, link-local and metadata addresses allowed (development and
    /// tests, where receivers run on the same machine). Off by default, so that a
    /// production server is safe without any setting.
    allow_private: bool,
    /// Ranges refused under either setting.
    deny: Arc<[IpRange]>,
}

impl TargetPolicy {
    /// The policy for an "allow private targets" setting.
    pub(crate) fn from_allow_private(allow_private: bool) -> Self {
        Self {
            allow_private,
            deny: Arc::from([]),
        }
    }

    /// The same policy, also refusing every address in `ranges`.
    pub(crate) fn with_denied(mut self, ranges: impl IntoIterator<Item = IpRange>) -> Self {
        let mut deny = self.deny.to_vec();
        deny.extend(ranges);
        self.deny = deny.into();
        self
    }

    /// Whether this policy refuses non-public addresses.
    pub(crate) fn blocks_private(&self) -> bool {
        !self.allow_private
    }

    /// Why this policy refuses `ip`, or `None` when it may be connected to.
    pub(crate) fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        if self.is_denied(ip) {
            return Some("denied by --deny-targets");
        }
        if self.blocks_private() {
            return is_blocked(ip);
        }
        None
    }

    /// In an operator range, directly or as the IPv4 address a v6 form carries.
    fn is_denied(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.deny
            .iter()
            .any(|range| range.contains(ip) || embedded.is_some_and(|v4| range.contains(v4)))
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a
/// range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, net, self.prefix),
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid address range {text:?}: expected e.g. 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {text:?} (0 to {max})"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A webhook target the guard refused. `Display` is what the tenant sees (the
/// attempt's `error_message`, API validation errors): `blocked target: <host>`, with
/// the host as written in the URL and nothing about addresses or reasons.
/// [`BlockedTarget::details`] is for the server log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockedTarget {
    /// The URL names a literal address in a blocked range.
    #[error("blocked target: {ip}")]
    Address { ip: IpAddr, reason: &'static str },
    /// The URL names a host that by definition resolves to loopback (RFC 6761).
    #[error("blocked target: {host}")]
    LoopbackName { host: String },
    /// Every address the host name resolved to is in a blocked range.
    #[error("blocked target: {host}")]
    Resolved {
        host: String,
        addresses: Vec<(IpAddr, &'static str)>,
    },
}

impl BlockedTarget {
    /// Why the target was refused, addresses included: for operators only.
    pub(crate) fn details(&self) -> String {
        match self {
            Self::Address { ip, reason } => format!("{ip} is a refused address ({reason})"),
            Self::LoopbackName { host } => format!("{host} always resolves to loopback"),
            Self::Resolved { host, addresses } => format!(
                "{host} resolves only to refused addresses ({})",
                ListAddrs(addresses)
            ),
        }
    }
}

/// Formats at most a few `address reason` pairs, so a host with dozens of records
/// does not produce a huge log line.
struct ListAddrs<'a>(&'a [(IpAddr, &'static str)]);

impl fmt::Display for ListAddrs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 4;
        for (i, (ip, reason)) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ip} {reason}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, ", and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// Why a host name could not be turned into addresses to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("DNS resolution failed: {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("DNS resolution failed: {host} has no addresses")]
    NoAddresses { host: String },
    #[error(transparent)]
    Blocked(#[from] BlockedTarget),
}

/// Cloud instance metadata services. Each also falls in a blocked range; they are
/// listed so that the refusal names the real danger.
/// 168.63.129.16 is the exception: a public address, so it is blocked only by this list.
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata and credentials
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    // Azure WireServer: the host's agent endpoint (VM provisioning, extension
    // settings, health), reachable from every Azure VM.
    Ipv4Addr::new(168, 63, 129, 16),
];
const METADATA_V6: [Ipv6Addr; 1] = [
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254), // AWS (Nitro) IPv6 endpoint
];

/// Non-public IPv4 ranges (IANA special-purpose registry, RFC 6890 and successors).
/// The first match names the reason, so narrower ranges come first.
const BLOCKED_V4: [(Ipv4Addr, u8, &str); 15] = [
    // 255.255.255.255: limited broadcast (inside 240/4, listed first for its name).
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    // 0/8: "this network"; 0.0.0.0 reaches the local host on Linux.
    (Ipv4Addr::new(0, 0, 0, 0), 8, "unspecified"),
    // RFC 1918 private networks.
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    // RFC 6598 carrier-grade NAT shared space: provider-internal, not the Internet.
    (Ipv4Addr::new(100, 64, 0, 0), 10, "carrier-grade NAT"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    // RFC 3927 link-local (where the metadata services live).
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    // RFC 6890 IETF protocol assignments (DS-Lite, NAT64 discovery, ...).
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignment"),
    // RFC 5737 documentation ranges: never a real receiver, often a sign of a typo'd
    // example URL, and some networks route them internally.
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    // RFC 2544 benchmarking, used for lab networks.
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    // 240/4: reserved for future use, not routable.
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// Non-public IPv6 ranges. Ranges that embed an IPv4 address (mapped, compatible,
/// NAT64, 6to4) are handled in [`v6_reason`] before this table.
const BLOCKED_V6: [(Ipv6Addr, u8, &str); 12] = [
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    // RFC 8215 local-use NAT64: translates into the operator's own network.
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    // RFC 6666 discard-only.
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    // RFC 5180 benchmarking (inside 2001::/23, listed before Teredo).
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking",
    ),
    // RFC 4380 Teredo: a tunnel whose far end is an IPv4 address we cannot vet.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "Teredo tunnel",
    ),
    // RFC 3849 and RFC 9637 documentation.
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    // RFC 4193 unique local addresses: the IPv6 counterpart of RFC 1918.
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    // RFC 3879 deprecated site-local, still routed internally by some networks.
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Why `ip` must not be a webhook target, or `None` for a public unicast address.
pub fn is_blocked(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    if METADATA_V4.contains(&ip) {
        return Some("cloud metadata");
    }
    BLOCKED_V4
        .iter()
        .find_map(|&(net, prefix, reason)| in_v4(ip, net, prefix).then_some(reason))
}

/// The IPv4 address an IPv6 address stands for, in the forms where the kernel or a
/// translator turns one into the other, so they are as dangerous as that IPv4
/// address: `::ffff:127.0.0.1` is loopback.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // RFC 4291 IPv4-mapped (::ffff:0:0/96), the kernel's own dual-stack form.
    if in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
        // RFC 2765 SIIT IPv4-translated (::ffff:0:0:0/96).
        || in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96)
        // RFC 6052 well-known NAT64 prefix (64:ff9b::/96).
        || in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        // RFC 4291 deprecated IPv4-compatible (::a.b.c.d); `::` and `::1` share the
        // prefix but are not IPv4 addresses.
        || (in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) && bits > 1)
    {
        return Some(low);
    }
    // RFC 3056 6to4 (2002:a.b.c.d::/48) tunnels to the embedded IPv4 address.
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if METADATA_V6.contains(&ip) {
        return Some("cloud metadata");
    }
    if let Some(v4) = embedded_v4(ip) {
        let compatible = in_v6(ip, Ipv6Addr::UNSPECIFIED, 96);
        return match v4_reason(v4) {
            Some(reason) => Some(reason),
            None if compatible => Some("deprecated IPv4-compatible"),
            None => None,
        };
    }
    BLOCKED_V6
        .iter()
        .find_map(|&(net, prefix, reason)| in_v6(ip, net, prefix).then_some(reason))
}

/// Refuses a URL whose host is a literal address the policy refuses, or (when
/// private targets are blocked) a name that is loopback by definition (`localhost`,
/// `*.localhost`). Other host names pass: they are checked when resolved, by
/// [`GuardedResolver`]. Always `Ok` for URLs without a host. Refusals are logged with
/// their reason.
pub fn check_url(url: &Url, policy: &TargetPolicy) -> Result<(), BlockedTarget> {
    let refused = literal_refusal(url, policy);
    if let Err(blocked) = &refused {
        tracing::warn!(reason = %blocked.details(), "blocked webhook target");
    }
    refused
}

fn literal_refusal(url: &Url, policy: &TargetPolicy) -> Result<(), BlockedTarget> {
    let Some(host) = url.host_str() else {
        return Ok(());
    };
    // The URL parser has already normalised every IPv4 spelling (`0x7f.1`,
    // `2130706433`, ...) to dotted decimal and put IPv6 literals in brackets.
    let literal = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    if let Some(ip) = literal {
        return match policy.refuses(ip) {
            Some(reason) => Err(BlockedTarget::Address { ip, reason }),
            None => Ok(()),
        };
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if policy.blocks_private() && (name == "localhost" || name.ends_with(".localhost")) {
        return Err(BlockedTarget::LoopbackName {
            host: host.to_owned(),
        });
    }
    Ok(())
}

/// DNS resolver for the delivery HTTP client that drops refused addresses.
///
/// Resolution uses the system resolver (`getaddrinfo` on tokio's blocking pool).
/// When some addresses of a name are allowed and some are not, only the allowed
/// ones are returned, so the client can never be steered onto the refused ones.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    policy: TargetPolicy,
}

impl GuardedResolver {
    pub(crate) fn new(policy: TargetPolicy) -> Self {
        Self { policy }
    }

    /// Resolves `host` and applies the policy. The returned addresses carry port 0;
    /// the HTTP client substitutes the URL's port.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found =
            tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.to_owned(),
                    source,
                })?;
        filter_addrs(host, found, &self.policy)
    }
}

/// Removes duplicate addresses and those the policy refuses; fails when nothing is
/// left.
fn filter_addrs(
    host: &str,
    found: impl IntoIterator<Item = SocketAddr>,
    policy: &TargetPolicy,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let mut allowed: Vec<SocketAddr> = Vec::new();
    let mut refused: Vec<(IpAddr, &'static str)> = Vec::new();
    for addr in found {
        match policy.refuses(addr.ip()) {
            Some(reason) => {
                if !refused.iter().any(|(ip, _)| *ip == addr.ip()) {
                    refused.push((addr.ip(), reason));
                }
            }
            None => {
                if !allowed.contains(&addr) {
                    allowed.push(addr);
                }
            }
        }
    }
    if !allowed.is_empty() {
        if !refused.is_empty() {
            tracing::debug!(
                host,
                refused = refused.len(),
                "dropped refused addresses of webhook target"
            );
        }
        return Ok(allowed);
    }
    if refused.is_empty() {
        return Err(ResolveError::NoAddresses {
            host: host.to_owned(),
        });
    }
    let blocked = BlockedTarget::Resolved {
        host: host.to_owned(),
        addresses: refused,
    };
    tracing::warn!(reason = %blocked.details(), "blocked webhook target");
    Err(ResolveError::Blocked(blocked))
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.resolve_host(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn reason(s: &str) -> Option<&'static str> {
        is_blocked(ip(s))
    }

    #[test]
    fn blocks_non_public_ipv4() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.0.1", "link-local"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.170.2", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("168.63.129.16", "cloud metadata"),
            ("192.0.0.8", "IETF protocol assignment"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.99", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
        ];
        for (addr, why) in cases {
            assert_eq!(reason(addr), Some(why), "{addr}");
        }
    }

    #[test]
    fn allows_public_ipv4_including_range_neighbours() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "168.63.129.15",
            "168.63.129.17",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(reason(addr), None, "{addr}");
        }
    }

    #[test]
    fn blocks_non_public_ipv6() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fc00::1", "unique-local"),
            ("fdff:ffff::1", "unique-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("ff02::1", "multicast"),
            ("ff05::1:3", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff:fff::1", "documentation"),
            ("100::1", "discard-only"),
            ("2001:2::1", "benchmarking"),
            ("2001:0:4136:e378::1", "Teredo tunnel"),
            ("64:ff9b:1::a00:1", "local-use NAT64"),
        ];
        for (addr, why) in cases {
            assert_eq!(reason(addr), Some(why), "{addr}");
        }
    }

    #[test]
    fn allows_public_ipv6() {
        for addr in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "2001:db9::1",
            "fbff::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
        ] {
            assert_eq!(reason(addr), None, "{addr}");
        }
    }

    #[test]
    fn blocks_ipv4_embedded_in_ipv6() {
        let cases = [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:100.100.100.200", "cloud metadata"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::ffff:168.63.129.16", "cloud metadata"),
            // SIIT IPv4-translated: ::ffff:0:a.b.c.d.
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:0:7f00:1", "loopback"),
            ("::ffff:0:10.0.0.1", "private"),
            ("::ffff:0:169.254.169.254", "cloud metadata"),
            ("64:ff9b::10.0.0.1", "private"),
            ("64:ff9b::168.63.129.16", "cloud metadata"),
            ("::127.0.0.1", "loopback"),
            ("::192.168.0.1", "private"),
            ("::8.8.8.8", "deprecated IPv4-compatible"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
        ];
        for (addr, why) in cases {
            assert_eq!(reason(addr), Some(why), "{addr}");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn check_url_refuses_blocked_literals_and_loopback_names() {
        let p = &TargetPolicy::from_allow_private(false);
        let err = check_url(&url("http://127.0.0.1:8080/hook"), p).unwrap_err();
        assert_eq!(err.to_string(), "blocked target: 127.0.0.1");
        assert_eq!(err.details(), "127.0.0.1 is a refused address (loopback)");
        // Alternative IPv4 spellings are normalised by the URL parser first.
        for u in [
            "http://0x7f.1/",
            "http://2130706433/",
            "http://017700000001/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]:8443/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://168.63.129.16/machine?comp=goalstate",
            "http://[::ffff:0:7f00:1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://0.0.0.0:9000/",
            "http://10.1.2.3/",
            "http://localhost:3000/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert!(check_url(&url(u), p).is_err(), "{u} should be blocked");
        }
        let err = check_url(&url("http://Localhost:3000/"), p).unwrap_err();
        assert_eq!(err.to_string(), "blocked target: localhost");
        assert_eq!(err.details(), "localhost always resolves to loopback");
        for u in [
            "https://example.com/hook",
            "https://8.8.8.8/",
            "https://[2606:4700:4700::1111]/",
            "http://localhost.example.com/",
            "http://10.example.com/",
        ] {
            assert!(check_url(&url(u), p).is_ok(), "{u} should pass");
        }
    }

    #[test]
    fn check_url_allows_everything_when_private_targets_are_allowed() {
        let p = &TargetPolicy::from_allow_private(true);
        for u in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://localhost/",
            "http://169.254.169.254/",
        ] {
            assert!(check_url(&url(u), p).is_ok(), "{u}");
        }
        assert_eq!(&TargetPolicy::from_allow_private(true), p);
        assert_eq!(
            TargetPolicy::from_allow_private(false),
            TargetPolicy::from_allow_private(false)
        );
        assert!(TargetPolicy::default().blocks_private());
    }

    #[tokio::test]
    async fn resolver_blocks_localhost_when_guarded() {
        let guarded = GuardedResolver::new(TargetPolicy::from_allow_private(false));
        let err = guarded.resolve_host("localhost").await.unwrap_err();
        // The tenant learns that the name is refused, not what it resolves to.
        assert_eq!(err.to_string(), "blocked target: localhost");
        let ResolveError::Blocked(blocked @ BlockedTarget::Resolved { .. }) = &err else {
            panic!("{err:?}");
        };
        let details = blocked.details();
        assert!(
            details.starts_with("localhost resolves only to refused addresses ("),
            "{details}"
        );
        assert!(details.contains("loopback"), "{details}");

        // Through the reqwest trait too, as the HTTP client calls it.
        let err = match guarded.resolve(Name::from_str("localhost").unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let err = err
            .downcast_ref::<ResolveError>()
            .expect("a ResolveError crosses the trait boundary");
        assert!(matches!(err, ResolveError::Blocked(_)));
    }

    #[tokio::test]
    async fn resolver_allows_localhost_when_unguarded() {
        let open = GuardedResolver::new(TargetPolicy::from_allow_private(true));
        let addrs: Vec<_> = open
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .expect("localhost resolves")
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn resolver_passes_public_literals_when_guarded() {
        // A literal name is parsed without any DNS traffic.
        let guarded = GuardedResolver::new(TargetPolicy::from_allow_private(false));
        let addrs = guarded.resolve_host("8.8.8.8").await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(ip("8.8.8.8"), 0)]);
        let err = guarded.resolve_host("10.0.0.1").await.unwrap_err();
        let ResolveError::Blocked(blocked) = err else {
            panic!("{err:?}");
        };
        assert!(
            blocked.details().contains("10.0.0.1 private"),
            "{blocked:?}"
        );
    }

    #[test]
    fn filter_keeps_only_public_addresses_of_mixed_answers() {
        let found = [
            SocketAddr::new(ip("127.0.0.1"), 0),
            SocketAddr::new(ip("93.184.216.34"), 0),
            SocketAddr::new(ip("10.0.0.5"), 0),
            SocketAddr::new(ip("93.184.216.34"), 0),
            SocketAddr::new(ip("2606:2800:220:1::1"), 0),
        ];
        let kept = filter_addrs(
            "mixed.test",
            found,
            &TargetPolicy::from_allow_private(false),
        )
        .unwrap();
        assert_eq!(
            kept,
            vec![
                SocketAddr::new(ip("93.184.216.34"), 0),
                SocketAddr::new(ip("2606:2800:220:1::1"), 0)
            ]
        );
        let all =
            filter_addrs("mixed.test", found, &TargetPolicy::from_allow_private(true)).unwrap();
        assert_eq!(all.len(), 4, "duplicates removed, nothing else");
    }

    #[test]
    fn filter_reports_empty_answers_and_lists_at_most_four_addresses() {
        let p = &TargetPolicy::from_allow_private(false);
        let err = filter_addrs("empty.test", [], p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DNS resolution failed: empty.test has no addresses"
        );
        let many = (1..=6).map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 0));
        let err = filter_addrs("many.test", many, p).unwrap_err();
        assert_eq!(err.to_string(), "blocked target: many.test");
        let ResolveError::Blocked(blocked) = err else {
            panic!("{err:?}");
        };
        assert_eq!(
            blocked.details(),
            "many.test resolves only to refused addresses \
             (10.0.0.1 private, 10.0.0.2 private, 10.0.0.3 private, 10.0.0.4 private, and 2 more)"
        );
    }

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    #[test]
    fn address_ranges_parse_and_match() {
        let r: IpRange = "10.20.0.0/16".parse().unwrap();
        assert!(r.contains(ip("10.20.255.1")));
        assert!(!r.contains(ip("10.21.0.0")));
        assert!(
            !r.contains(ip("::ffff:10.20.0.1")),
            "v6 never matches a v4 range"
        );
        assert_eq!(r.to_string(), "10.20.0.0/16");
        let one: IpRange = " 203.0.114.7 ".parse().unwrap();
        assert_eq!(one.to_string(), "203.0.114.7/32");
        assert!(one.contains(ip("203.0.114.7")) && !one.contains(ip("203.0.114.8")));
        let v6: IpRange = "2a01:4f8::/32".parse().unwrap();
        assert!(v6.contains(ip("2a01:4f8:1:2::3")));
        assert!(!v6.contains(ip("2a01:4f9::1")));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0/8",
            "example.com",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn denied_ranges_apply_under_both_settings_and_to_embedded_ipv4() {
        let deny = ranges(&["203.0.114.0/24", "2a01:4f8::/32"]);
        for policy in [
            TargetPolicy::from_allow_private(true).with_denied(deny.clone()),
            TargetPolicy::from_allow_private(false).with_denied(deny.clone()),
        ] {
            for addr in [
                "203.0.114.9",
                "::ffff:203.0.114.9",
                "::ffff:0:203.0.114.9",
                "64:ff9b::203.0.114.9",
                "2002:cb00:7209::1",
                "2a01:4f8::1",
            ] {
                assert_eq!(
                    policy.refuses(ip(addr)),
                    Some("denied by --deny-targets"),
                    "{addr} under {policy:?}"
                );
            }
            assert_eq!(policy.refuses(ip("203.0.115.1")), None);
            let err = check_url(&url("https://203.0.114.9/hook"), &policy).unwrap_err();
            assert_eq!(err.to_string(), "blocked target: 203.0.114.9");
            assert!(check_url(&url("https://203.0.115.1/hook"), &policy).is_ok());
        }
        // Allowing private targets still allows them unless denied.
        let dev = TargetPolicy::from_allow_private(true).with_denied(ranges(&["127.0.0.1/32"]));
        assert_eq!(dev.refuses(ip("127.0.0.2")), None);
        assert!(dev.refuses(ip("127.0.0.1")).is_some());
        assert!(
            check_url(&url("http://localhost/"), &dev).is_ok(),
            "names go to DNS"
        );
    }

    #[test]
    fn resolved_addresses_in_denied_ranges_are_dropped() {
        let policy = TargetPolicy::from_allow_private(true).with_denied(ranges(&["10.9.0.0/16"]));
        let found = [
            SocketAddr::new(ip("10.9.1.1"), 0),
            SocketAddr::new(ip("10.8.1.1"), 0),
        ];
        let kept = filter_addrs("mixed.test", found, &policy).unwrap();
        assert_eq!(kept, vec![SocketAddr::new(ip("10.8.1.1"), 0)]);
        let err = filter_addrs("internal.test", [found[0]], &policy).unwrap_err();
        assert_eq!(err.to_string(), "blocked target: internal.test");
        assert!(!err.to_string().contains("10.9"), "{err}");
    }

    #[tokio::test]
    async fn resolver_refuses_denied_loopback_even_when_private_targets_are_allowed() {
        let policy =
            TargetPolicy::from_allow_private(true).with_denied(ranges(&["127.0.0.0/8", "::1"]));
        let err = GuardedResolver::new(policy)
            .resolve_host("localhost")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "blocked target: localhost");
    }
}
