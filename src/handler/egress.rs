//! Where the playlist fetcher may connect. Playlist URLs come from events, and a master
//! playlist names further URLs, so they are not trusted: loopback, link-local (the cloud
//! metadata service at 169.254.169.254), private, shared (CGNAT), unspecified, multicast
//! and reserved addresses are refused unless the operator allows the host by name
//! (`allow_private`). The check is made on the addresses a name resolves to, in the HTTP
//! client's own resolver ([`Resolver`]), so the address checked is the address connected
//! to; an IP literal, which the client does not resolve, is checked on the URL
//! ([`Egress::check`]), for the first request and every redirect. A redirect never goes
//! from `https` to `http`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// A destination the fetcher refuses; the text says why and what to change.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The hosts allowed to be private (`allow_private`).
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allowed: Arc<HashSet<String>>,
}

impl Egress {
    /// Allows the hosts in `names` (names or IP literals, compared case-insensitively).
    pub fn new(names: &[String]) -> Egress {
        Egress { allowed: Arc::new(names.iter().map(|n| normalise(n)).collect()) }
    }

    fn allows(&self, host: &str) -> bool {
        self.allowed.contains(&normalise(host))
    }

    /// Refuses a URL whose host is a non-public IP literal not allowed by name. Names are
    /// checked when they are resolved ([`Resolver`]).
    pub fn check(&self, url: &Url) -> Result<(), Refused> {
        let Some(host) = url.host_str() else { return Err(Refused("the playlist URL has no host".into())) };
        let Ok(ip) = normalise(host).parse::<IpAddr>() else { return Ok(()) };
        if is_public(ip) || self.allows(&ip.to_string()) {
            return Ok(());
        }
        Err(refusal(&ip.to_string()))
    }

    /// The HTTP client's resolver.
    pub fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver { egress: self.clone() })
    }

    /// The redirect policy: [`Egress::check_redirect`] on each redirect.
    pub fn redirects(&self, max: usize) -> reqwest::redirect::Policy {
        let egress = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            match egress.check_redirect(attempt.previous(), attempt.url(), max) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    }

    /// A redirect to `next` after `previous` (the first URL included): at most `max`
    /// redirects, none from `https` to anything else, the target checked like the first URL.
    pub fn check_redirect(&self, previous: &[Url], next: &Url, max: usize) -> Result<(), Refused> {
        if previous.last().is_some_and(|u| u.scheme() == "https") && next.scheme() != "https" {
            return Err(Refused(
                "the playlist redirects from https to http; a redirect is never followed to a plain-text URL".into(),
            ));
        }
        if previous.len() > max {
            return Err(Refused(format!("the playlist redirects more than {max} times")));
        }
        self.check(next)
    }
}

/// Resolves with the system resolver and drops refused addresses.
#[derive(Debug)]
pub struct Resolver {
    egress: Egress,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = self.egress.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = egress.allows(&host);
            let usable: Vec<SocketAddr> = addrs.into_iter().filter(|a| allowed || is_public(a.ip())).collect();
            if usable.is_empty() {
                return Err(Box::new(refusal(&host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

/// Finds a [`Refused`] in an error's chain.
pub fn refused_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        next = e.source();
    }
    None
}

fn refusal(host: &str) -> Refused {
    Refused(format!(
        "playlist host {host} is a loopback, link-local, private or reserved address; if it is yours, add \"{host}\" to allow_private for this handler"
    ))
}

fn normalise(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).map(str::to_string).unwrap_or(host)
}

/// True for an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "203.205.0.1", "2402:4e00::1", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ip_literals_are_checked_and_allowed_by_name() {
        let egress = Egress::new(&["127.0.0.1".into(), "[::1]".into()]);
        assert!(egress.check(&Url::parse("http://127.0.0.1:8080/a.m3u8").unwrap()).is_ok());
        assert!(egress.check(&Url::parse("http://[::1]/a.m3u8").unwrap()).is_ok());
        let refused = egress.check(&Url::parse("http://169.254.169.254/latest/meta-data").unwrap()).unwrap_err();
        assert!(refused.0.contains("add \"169.254.169.254\" to allow_private"), "{refused}");
        assert!(egress.check(&Url::parse("https://1.vod2.myqcloud.com/a.m3u8").unwrap()).is_ok());
    }

    #[test]
    fn redirects_never_downgrade_and_are_checked() {
        let egress = Egress::new(&["127.0.0.1".into()]);
        let url = |u: &str| Url::parse(u).unwrap();
        let from = [url("https://1.vod2.myqcloud.com/a.m3u8")];
        let downgrade = egress.check_redirect(&from, &url("http://1.vod2.myqcloud.com/a.m3u8"), 5).unwrap_err();
        assert!(downgrade.0.contains("from https to http"), "{downgrade}");
        assert!(egress.check_redirect(&from, &url("https://2.vod2.myqcloud.com/a.m3u8"), 5).is_ok());
        let plain = [url("http://127.0.0.1/a.m3u8")];
        assert!(egress.check_redirect(&plain, &url("http://127.0.0.1/b.m3u8"), 5).is_ok());
        let internal = egress.check_redirect(&plain, &url("http://169.254.169.254/latest/meta-data/"), 5);
        assert!(internal.unwrap_err().0.contains("169.254.169.254"));
        let many = vec![url("http://127.0.0.1/a.m3u8"); 6];
        assert!(egress.check_redirect(&many, &url("http://127.0.0.1/b.m3u8"), 5).is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses_of_names_not_allowed() {
        let refused = Egress::new(&[]).resolver().resolve("localhost".parse().unwrap()).await.err().unwrap();
        assert!(refused.to_string().contains("playlist host localhost is a loopback"), "{refused}");
        let allowed = Egress::new(&["LOCALHOST".into()]).resolver().resolve("localhost".parse().unwrap()).await;
        assert!(allowed.unwrap().all(|a| a.ip().is_loopback()));
    }
}
