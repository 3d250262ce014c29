//! Where the scores poller may connect: the address rules against server-side request
//! forgery, the HTTP client that enforces them, and URLs made fit for logs.
//!
//! Unless a relay sets `overlay.allow_private = true`, the scores API and the logos may only
//! be fetched from public addresses: loopback, private, link-local, unspecified, shared
//! (carrier-grade NAT), multicast and reserved addresses are refused, in IPv4 and IPv6
//! (unique-local, link-local, site-local) and in IPv6's forms of IPv4 addresses (mapped,
//! compatible, NAT64, 6to4). Names are checked on the addresses they resolve to, by the
//! client's own resolver, so the address checked is the address connected to: a DNS answer
//! cannot change in between. Literal addresses never reach a resolver; they are checked before
//! each request and at each redirect. Redirects are limited to [`MAX_REDIRECTS`].
//!
//! Owns no state. It must not fetch anything itself: the poller does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{redirect, Url};

/// Redirects followed per request; each hop is checked like the first URL.
pub const MAX_REDIRECTS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("refused: {addr} is {class}; set overlay.allow_private = true to allow it")]
    Address { addr: IpAddr, class: &'static str },
    #[error(
        "refused: {host} resolves to {addr}, which is {class}; set overlay.allow_private = true to allow it"
    )]
    Resolved {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error("refused: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("refused: {0} is not an http:// or https:// URL")]
    Scheme(String),
}

/// The class of address `ip` is in when it must not be fetched from without
/// `overlay.allow_private`; `None` for a public address.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified",
        (127, _) => "loopback",
        (10, _) | (192, 168) => "private",
        (172, 16..=31) => "private",
        (169, 254) => "link-local",
        (100, 64..=127) => "shared address space (carrier-grade NAT)",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let s = ip.segments();
    // IPv4 in IPv6 clothing: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
    // (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::). Each is judged as its IPv4 address.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let v4 = match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(embedded(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(embedded(hi, lo)),
        [0x2002, hi, lo, ..] => Some(embedded(hi, lo)),
        _ => None,
    };
    if let Some(v4) = v4 {
        return classify_v4(v4);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("unique-local"),
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xffc0 == 0xfec0 => Some("site-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// Checks a URL before it is fetched: its scheme, and its host when that is a literal
/// address (names are checked when they resolve, by [`GuardedResolver`]).
pub fn check_url(url: &Url) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme(redact(url.as_str())));
    }
    // The URL parser has already normalised every spelling of an address (`2130706433`,
    // `0x7f.1`, `127.1`) to its usual form; IPv6 hosts come in brackets.
    let host = url.host_str().unwrap_or_default();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let Ok(addr) = literal.parse::<IpAddr>() else {
        return Ok(());
    };
    match classify(addr) {
        Some(class) => Err(Refused::Address { addr, class }),
        None => Ok(()),
    }
}

/// Resolves names with the system resolver and refuses a name when any of its addresses is
/// not public. The client connects only to the addresses this returns.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((addr, class)) = addrs
                .iter()
                .find_map(|a| classify(a.ip()).map(|c| (a.ip(), c)))
            {
                return Err(Box::new(Refused::Resolved { host, addr, class }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The poller's HTTP client: `timeout` for connecting and for the whole exchange, at most
/// [`MAX_REDIRECTS`] redirects, and, without `allow_private`, only public addresses.
pub fn client(timeout: Duration, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let policy = redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(Refused::TooManyRedirects);
        }
        if !allow_private {
            if let Err(refused) = check_url(attempt.url()) {
                return attempt.error(refused);
            }
        }
        attempt.follow()
    });
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(policy)
        .user_agent(concat!("scorecast/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    builder.build()
}

/// The refusal behind a failed request, if the guard refused it (at a redirect or when
/// resolving).
pub fn refusal(e: &reqwest::Error) -> Option<Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        source = s.source();
    }
    None
}

/// A URL fit for logs and status: scheme, host, port and path, with the user name, password
/// and query masked, as they may carry credentials (`https://api.example/m/42?****`).
pub fn redact(url: &str) -> String {
    crate::secrets::http_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(ip: &str) -> Option<&'static str> {
        classify(ip.parse().expect("an address"))
    }

    #[test]
    fn ipv4_classes() {
        for (ip, want) in [
            ("0.0.0.0", Some("unspecified")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            (
                "100.64.0.1",
                Some("shared address space (carrier-grade NAT)"),
            ),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("reserved")),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_classes_and_ipv4_in_ipv6() {
        for (ip, want) in [
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456::1", Some("unique-local")),
            ("fec0::1", Some("site-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:0.0.0.0", Some("unspecified")),
            ("::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("2002:c0a8:0101::1", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("2606:4700:4700::1111", None),
            ("2001:db8::1", None),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_in_every_spelling() {
        let check = |u: &str| check_url(&Url::parse(u).expect("a URL"));
        assert_eq!(
            check("http://169.254.169.254/latest/meta-data")
                .unwrap_err()
                .to_string(),
            "refused: 169.254.169.254 is link-local; set overlay.allow_private = true to allow it"
        );
        // The URL parser normalises decimal, hex and short forms to the address they mean.
        for u in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1:8080/x",
            "http://[::ffff:7f00:1]/",
            "http://[::1]/",
            "http://0.0.0.0/",
            "https://user:pw@10.0.0.1/",
        ] {
            assert!(
                matches!(check(u), Err(Refused::Address { .. })),
                "{u} passed"
            );
        }
        assert_eq!(check("https://scores.example/match?token=1"), Ok(()));
        assert_eq!(check("http://8.8.8.8/"), Ok(()));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(Refused::Scheme(_))
        ));
    }

    #[tokio::test]
    async fn names_are_refused_on_what_they_resolve_to() {
        let err = match GuardedResolver
            .resolve("localhost".parse().expect("a name"))
            .await
        {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with("refused: localhost resolves to ") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn logs_get_no_credentials() {
        assert_eq!(
            redact("https://user:secret@api.example:8443/m/42?token=abc#x"),
            "https://****@api.example:8443/m/42?****"
        );
        assert_eq!(
            redact("http://scores.example/match"),
            "http://scores.example/match"
        );
        assert_eq!(redact("not a url"), "(not a URL)");
    }
}
