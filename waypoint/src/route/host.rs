//! How route `hostnames` (parsed and matched by [`ambit_core::hostname`]) rank a route for a request: among the
//! routes whose hostnames match, Gateway API gives precedence to the most characters in a matching exact
//! hostname, then the most characters in a matching hostname ([`HostRank`]); a route without hostnames matches
//! every host with the lowest rank.

pub use ambit_core::hostname::{Hostname, request_host};

/// The precedence a route's hostnames give it for one request; larger wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRank {
    /// Characters of the matching exact hostname (0 for a wildcard or no hostnames).
    exact: usize,
    /// Characters of the matching hostname, `*.` included.
    matched: usize,
}

/// How `hostnames` rank for `host`: `None` when they do not match it, the lowest rank when they are empty.
pub fn rank(hostnames: &[Hostname], host: &str) -> Option<HostRank> {
    if hostnames.is_empty() {
        return Some(HostRank::default());
    }
    hostnames
        .iter()
        .filter(|h| h.matches(host))
        .map(rank_of)
        .max()
}

/// How specific a match on this hostname is.
fn rank_of(h: &Hostname) -> HostRank {
    match h {
        Hostname::Exact(h) => HostRank {
            exact: h.len(),
            matched: h.len(),
        },
        Hostname::Wildcard(suffix) => HostRank {
            exact: 0,
            matched: suffix.len() + 2,
        },
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
    fn ranks_prefer_exact_then_longer() {
        let host = "a.b.example.com";
        let r = |hs: &[Hostname]| rank(hs, host);
        assert_eq!(r(&[]), Some(HostRank::default()));
        assert_eq!(r(&[exact("other.com")]), None);
        let exact_rank = r(&[exact(host)]).expect("matches");
        let long_wild = r(&[wildcard("b.example.com")]).expect("matches");
        let short_wild = r(&[wildcard("example.com")]).expect("matches");
        assert!(exact_rank > long_wild && long_wild > short_wild);
        assert!(short_wild > HostRank::default());
        // A route's best matching hostname counts.
        assert_eq!(
            r(&[wildcard("example.com"), exact(host), exact("x.com")]),
            Some(exact_rank)
        );
    }
}
