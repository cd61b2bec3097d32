//! The outbound guard. keyhouse sends HTTP requests on its users' behalf (live tests of provider
//! keys, at a provider's API or at a user's own endpoint), so without a guard any user could make
//! it reach what only the cluster can reach: loopback services, cloud metadata, private networks.
//! Every outbound request goes through `Outbound`: the URL must be plain http(s), and every
//! address its host resolves to must be public unless an operator allows its network
//! (`KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS`). The check is done by the client's own resolver, so the
//! connection goes to the addresses that were checked and a DNS answer that changes between a
//! check and the connect cannot slip through. Redirects are not followed and environment proxies
//! are not used (a proxy would resolve the name past the guard).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::error::{Error, Result};

pub const ALLOWED_NETWORKS_VAR: &str = "KEYHOUSE_OUTBOUND_ALLOWED_NETWORKS";

/// The networks an operator allows although they are not public (a local Ollama, say).
#[derive(Clone, Debug, Default)]
pub struct Allowed(Arc<[IpNet]>);

impl Allowed {
    /// CIDRs (or single addresses); an entry that is neither refuses to start, naming the variable.
    pub fn parse(entries: &[String]) -> Result<Self> {
        let nets = entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        Error::invalid(
                            ALLOWED_NETWORKS_VAR,
                            format!(
                                "{ALLOWED_NETWORKS_VAR}: '{e}' is not a network in CIDR notation \
                                 (like 10.0.0.0/8 or fd00::/8) or an address"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self(nets.into()))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Why `ip` may not be reached, or `None` when it may: it is public, or its network is allowed.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        // An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) reaches that address.
        let embedded = embedded_v4(ip);
        if self.contains(ip) || embedded.is_some_and(|v4| self.contains(v4.into())) {
            return None;
        }
        match (embedded, ip) {
            (Some(v4), _) | (None, IpAddr::V4(v4)) => special_v4(v4),
            (None, IpAddr::V6(v6)) => special_v6(v6),
        }
    }
}

/// A host that the guard refuses: what it is, and whether a name resolved to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    addr: IpAddr,
    kind: &'static str,
    resolved: bool,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A resolved address is not repeated to the caller: it would map the internal DNS.
        if self.resolved {
            write!(f, "resolves to {}", self.kind)?;
        } else {
            write!(f, "is {}, {}", self.addr, self.kind)?;
        }
        write!(
            f,
            "; an operator may allow its network with {ALLOWED_NETWORKS_VAR}"
        )
    }
}

impl std::error::Error for Refused {}

/// The HTTP client every outbound request uses, and the rules it enforces.
#[derive(Clone)]
pub struct Outbound {
    allowed: Allowed,
    client: reqwest::Client,
}

impl Outbound {
    pub fn new(allowed: Allowed) -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("keyhouse/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Guarded(allowed.clone())))
            .build()
            .map_err(Error::internal)?;
        Ok(Self { allowed, client })
    }

    /// The client; hosts given by name are checked by its resolver, so send only URLs that
    /// passed `check_url` (a literal address never reaches the resolver).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `text` as a URL keyhouse may send to: http(s), no credentials, query or fragment, and a
    /// literal address only when the guard allows it. Names are checked when they are resolved.
    /// The error completes a sentence that starts with the field's name.
    pub fn check_url(&self, text: &str) -> Result<Url, String> {
        let url = Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or("must be an http(s) URL")?;
        // The URL is stored, listed and audited: it must not carry a secret.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "must not hold credentials (user:password@); the key goes in the key field".into(),
            );
        }
        if url.query().is_some() {
            return Err("must not have a query string (?…)".into());
        }
        // A fragment would silently cut off the path keyhouse appends.
        if url.fragment().is_some() {
            return Err("must not have a fragment (#…)".into());
        }
        let host = url.host_str().ok_or("must be an http(s) URL")?;
        // The URL parser writes every spelling of an address (`2130706433`, `0x7f.1`) as the
        // address itself, so a host that does not parse as one is a name.
        if let Ok(addr) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            && let Some(kind) = self.allowed.refusal(addr)
        {
            return Err(Refused {
                addr,
                kind,
                resolved: false,
            }
            .to_string());
        }
        Ok(url)
    }
}

/// The guard's refusal behind a failed request, if that is why it failed.
pub fn refused(err: &reqwest::Error) -> Option<&Refused> {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

/// Resolves like the system does and keeps only the addresses the guard allows: the connection
/// can go nowhere else. A name with none left is refused, with the first address's reason.
struct Guarded(Allowed);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.0.clone();
        Box::pin(async move {
            let host = name.as_str();
            let mut first_refused = None;
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
                .await?
                .filter(|addr| match allowed.refusal(addr.ip()) {
                    Some(kind) => {
                        first_refused.get_or_insert(Refused {
                            addr: addr.ip(),
                            kind,
                            resolved: true,
                        });
                        false
                    }
                    None => true,
                })
                .collect();
            match first_refused {
                Some(refused) if addrs.is_empty() => {
                    tracing::warn!(host, address = %refused.addr, kind = refused.kind, "outbound request refused");
                    Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(addrs.into_iter()) as Addrs),
            }
        })
    }
}

/// The IPv4 address an IPv6 one stands for: IPv4-mapped (`::ffff:a.b.c.d`), the well-known NAT64
/// prefix (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let o = v6.octets();
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0x64, 0xff9b, 0, 0, 0, 0, ..] => {
            Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// What a non-public IPv4 address is (IANA's special-purpose registry), or `None`.
fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        _ if ip.is_unspecified() => "an unspecified address",
        [0, ..] => "a \"this network\" address",
        [127, ..] => "a loopback address",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "a private address",
        [169, 254, ..] => "a link-local address (cloud metadata lives there)",
        [100, 64..=127, ..] => "a carrier-grade NAT address",
        [192, 0, 0, _] => "an IETF protocol address",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation address",
        [192, 88, 99, _] => "a 6to4 relay address",
        [198, 18..=19, ..] => "a benchmarking address",
        [224..=239, ..] => "a multicast address",
        [255, 255, 255, 255] => "a broadcast address",
        [240..=255, ..] => "a reserved address",
        _ => return None,
    })
}

/// What a non-public IPv6 address is, or `None`. Only global unicast (`2000::/3`) can be public.
fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        [0xfe80..=0xfebf, ..] => "a link-local address",
        [0xfec0..=0xfeff, ..] => "a site-local address",
        [0xfc00..=0xfdff, ..] => "a unique-local address",
        [0xff00..=0xffff, ..] => "a multicast address",
        [0x2001, 0x0db8, ..] | [0x3fff, 0..=0x0fff, ..] => "a documentation address",
        [0x2001, 0..=0x01ff, ..] => "an IETF protocol address",
        [first, ..] if first & 0xe000 != 0x2000 => "a reserved address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Allowed {
        Allowed::default()
    }

    fn kind(ip: &str) -> Option<&'static str> {
        none().refusal(ip.parse().expect("an address"))
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        for (ip, what) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.254", "carrier-grade NAT"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "IETF"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.1.2.3", "private"),
            ("64:ff9b::a00:1", "private"),
            ("2002:7f00:1::1", "loopback"),
            ("::127.0.0.1", "reserved"),
            ("100::1", "reserved"),
        ] {
            let got = kind(ip).unwrap_or_else(|| panic!("{ip} was let through"));
            assert!(got.contains(what), "{ip}: {got}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn an_operator_allows_networks_by_cidr_or_address() {
        let allowed = Allowed::parse(&[
            "127.0.0.1/32".into(),
            " 10.1.0.0/16 ".into(),
            "fd00::5".into(),
            String::new(),
        ])
        .expect("valid");
        let ok = |ip: &str| allowed.refusal(ip.parse().expect("an address")).is_none();
        assert!(ok("127.0.0.1"));
        assert!(
            ok("::ffff:127.0.0.1"),
            "the mapped form of an allowed address"
        );
        assert!(ok("10.1.200.3"));
        assert!(ok("fd00::5"));
        assert!(!ok("127.0.0.2"));
        assert!(!ok("10.2.0.1"));
        assert!(!ok("fd00::6"));
        assert!(!ok("169.254.169.254"));
    }

    #[test]
    fn a_bad_network_names_the_variable() {
        for bad in ["10.0.0/8", "10.0.0.0/33", "localhost", "fd00::/129"] {
            let err = Allowed::parse(&[bad.to_owned()]).expect_err(bad);
            let Error::InvalidArgument { field, reason } = err else {
                panic!("{bad}: not InvalidArgument")
            };
            assert_eq!(field, ALLOWED_NETWORKS_VAR);
            assert!(
                reason.contains(ALLOWED_NETWORKS_VAR) && reason.contains(bad),
                "{reason}"
            );
        }
    }

    #[test]
    fn urls_must_be_plain_http_and_literal_addresses_public() {
        let guard = Outbound::new(none()).expect("client");
        for good in [
            "https://api.example.com",
            "http://ollama.example.com:11434/",
            "https://1.1.1.1/v1",
            "http://[2606:4700:4700::1111]:8080",
        ] {
            guard.check_url(good).expect(good);
        }
        for (bad, why) in [
            ("ftp://models.example.com", "http(s)"),
            ("file:///etc/passwd", "http(s)"),
            ("not a url", "http(s)"),
            ("http://user:pass@models.example.com", "credentials"),
            ("http://user@models.example.com", "credentials"),
            ("http://models.example.com/v1?api_key=x", "query"),
            ("http://models.example.com/v1?", "query"),
            ("http://127.0.0.1:8080/#", "fragment"),
            ("http://127.0.0.1:8080/", "127.0.0.1, a loopback"),
            ("http://2130706433/", "127.0.0.1, a loopback"),
            ("http://0x7f.1/", "127.0.0.1, a loopback"),
            ("http://169.254.169.254/", "link-local"),
            ("http://10.0.0.1/", "10.0.0.1, a private"),
            ("http://[::1]/", "::1, a loopback"),
            ("http://[::ffff:7f00:1]/", "loopback"),
            ("http://[fd00::1]/", "unique-local"),
        ] {
            let reason = guard.check_url(bad).expect_err(bad);
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        let allowed = Outbound::new(Allowed::parse(&["127.0.0.1/32".into()]).expect("valid"))
            .expect("client");
        allowed
            .check_url("http://127.0.0.1:11434")
            .expect("an allowed network");
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused_before_any_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let guard = Outbound::new(none()).expect("client");
        let url = format!("http://localhost:{port}/");
        guard
            .check_url(&url)
            .expect("names are checked when resolved");
        let err = guard
            .client()
            .get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .expect_err("refused");
        let refused = refused(&err).expect("the guard's refusal");
        assert!(
            refused
                .to_string()
                .starts_with("resolves to a loopback address"),
            "{refused}"
        );
        assert!(
            !refused.to_string().contains("127.0.0.1"),
            "a resolved address is not disclosed: {refused}"
        );

        // `localhost` may also resolve to ::1, which stays refused: only 127.0.0.1 is used.
        let allowed = Outbound::new(Allowed::parse(&["127.0.0.1/32".into()]).expect("valid"))
            .expect("client");
        // Connections are accepted in order: had the refused request connected, the allowed
        // one would be the second.
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let n = tokio::io::AsyncReadExt::read(&mut socket, &mut buf)
                .await
                .expect("read");
            tokio::io::AsyncWriteExt::write_all(
                &mut socket,
                b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
            )
            .await
            .expect("answer");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let res = allowed
            .client()
            .get(format!("{url}allowed"))
            .send()
            .await
            .expect("allowed");
        assert_eq!(res.status(), reqwest::StatusCode::NO_CONTENT);
        let first = served.await.expect("served");
        assert!(first.starts_with("GET /allowed "), "{first}");
    }
}
