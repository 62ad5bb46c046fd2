//! Gateway API route `hostnames`: parsing as the CRD validates them (the manifest source has no CRD validation,
//! so the controller and the waypoint both check) and matching against a request's authority.
//!
//! A hostname is exact (`foo.example.com`) or a wildcard (`*.example.com`), which matches any host ending in
//! `.example.com` with at least one label before it (`a.example.com`, `a.b.example.com`), never `example.com`
//! itself. Hosts compare without their port, without a trailing dot and without ASCII case ([`request_host`]).

use std::borrow::Cow;
use std::net::IpAddr;

/// One entry of `hostnames`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Hostname {
    Exact(String),
    /// `*.<suffix>`; holds the suffix (`example.com`).
    Wildcard(String),
}

/// The longest hostname the CRD admits.
const MAX_LEN: usize = 253;
/// RFC 1123's longest label.
const MAX_LABEL: usize = 63;

impl Hostname {
    /// Parses a `hostnames` entry as the CRD validates it: lower-case RFC 1123 labels, optionally after a single
    /// `*.` label, at most 253 characters, and not an IP address.
    pub fn parse(s: &str) -> Result<Hostname, String> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(format!("{s:?} must have 1 to {MAX_LEN} characters"));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!("{s:?} is an IP address; hostnames are names"));
        }
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        for label in rest.split('.') {
            let ok = !label.is_empty()
                && label.len() <= MAX_LABEL
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!(
                    "{s:?} is not a lower-case RFC 1123 hostname (optionally prefixed by a single \"*.\" label)"
                ));
            }
        }
        Ok(if wildcard {
            Hostname::Wildcard(rest.to_owned())
        } else {
            Hostname::Exact(rest.to_owned())
        })
    }

    /// Whether `host` (as [`request_host`] returns it) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Hostname::Exact(h) => h == host,
            Hostname::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
        }
    }
}

/// The host of an authority (`Host` or `:authority`) as hostnames compare it: without the port (and without
/// the brackets of an IPv6 literal), without a trailing dot, in lower case.
pub fn request_host(authority: &str) -> Cow<'_, str> {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> Hostname {
        Hostname::Exact(s.into())
    }
    fn wildcard(s: &str) -> Hostname {
        Hostname::Wildcard(s.into())
    }

    #[test]
    fn parse_follows_the_crd() {
        let good = [
            ("foo.example.com", exact("foo.example.com")),
            ("echo", exact("echo")),
            ("a-b.c0", exact("a-b.c0")),
            ("*.example.com", wildcard("example.com")),
            ("*.com", wildcard("com")),
            ("0a.1b", exact("0a.1b")),
        ];
        for (s, want) in good {
            assert_eq!(Hostname::parse(s), Ok(want), "{s}");
        }
        let too_long = format!("{}.com", "a.".repeat(125));
        let long_label = format!("{}.com", "a".repeat(64));
        let bad = [
            "",
            "Foo.example.com",
            "10.0.0.1",
            "::1",
            "*",
            "*.",
            "*example.com",
            "foo.*.com",
            "**.example.com",
            "*.*.example.com",
            "-foo.com",
            "foo-.com",
            "foo..com",
            ".foo.com",
            "foo.com.",
            "foo_bar.com",
            "foo.com:80",
            too_long.as_str(),
            long_label.as_str(),
        ];
        for s in bad {
            assert!(Hostname::parse(s).is_err(), "{s:?} should be refused");
        }
        assert_eq!(
            Hostname::parse("Foo.com"),
            Err("\"Foo.com\" is not a lower-case RFC 1123 hostname (optionally prefixed by a single \"*.\" label)".into())
        );
        assert_eq!(
            Hostname::parse("10.1.2.3"),
            Err("\"10.1.2.3\" is an IP address; hostnames are names".into())
        );
    }

    #[test]
    fn request_hosts_lose_port_dot_and_case() {
        let cases = [
            ("foo.example.com", "foo.example.com"),
            ("foo.example.com:8080", "foo.example.com"),
            ("Foo.Example.COM:80", "foo.example.com"),
            ("foo.example.com.", "foo.example.com"),
            ("foo.example.com.:80", "foo.example.com"),
            ("[fd00::1]:80", "fd00::1"),
            ("[fd00::1]", "fd00::1"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("", ""),
        ];
        for (authority, want) in cases {
            assert_eq!(request_host(authority), want, "{authority}");
        }
        assert!(matches!(request_host("a.b:80"), Cow::Borrowed(_)));
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let cases = [
            (exact("foo.example.com"), "foo.example.com", true),
            (exact("foo.example.com"), "bar.example.com", false),
            (exact("foo.example.com"), "example.com", false),
            (wildcard("example.com"), "foo.example.com", true),
            (wildcard("example.com"), "a.b.example.com", true),
            (wildcard("example.com"), "example.com", false),
            (wildcard("example.com"), ".example.com", false),
            (wildcard("example.com"), "fooexample.com", false),
            (wildcard("example.com"), "foo.example.org", false),
        ];
        for (h, host, want) in cases {
            assert_eq!(h.matches(host), want, "{h:?} {host}");
        }
    }
}
