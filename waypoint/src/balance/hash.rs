//! Consistent hashing (DestinationRule `loadBalancer.consistentHash`): what a request's key is and the table
//! that maps its hash to an endpoint.
//!
//! A [`HashPolicy`] names the key (a header, a cookie, the client IP or a query parameter) and the table kind. The
//! table is built once per (backend, subset) when a config snapshot is built, from the endpoints' stable ids
//! (workload uids), so the same key reaches the same endpoint across snapshots and across waypoint replicas. Two
//! tables, as in Envoy:
//!
//! - [`Table::Ring`]: a ketama-style ring of points; a key goes to the first point at or after its hash. Each
//!   endpoint owns the same number of points, so removing one endpoint moves only the keys it owned.
//! - [`Table::Maglev`]: the lookup table of Google's Maglev paper (Eisenbud et al., NSDI 2016, §3.4): each
//!   endpoint fills a prime-sized table along its own permutation, taking turns, which gives a near-perfectly even
//!   share and little disruption on membership change, with an O(1) lookup.
//!
//! A lookup skips entries whose endpoint is not usable (unhealthy, ejected, already tried) by walking forward, so a
//! key whose endpoint is out goes to a stable second choice and comes back when the endpoint does.
//!
//! The hash is hand-written and stable (FNV-1a then MurmurHash3's 64-bit finalizer), not `std`'s `DefaultHasher`,
//! whose output Rust may change between releases: waypoint replicas built by different toolchains must agree.

use std::net::IpAddr;

use ambit_proto::waypoint as pb;
use http::HeaderName;
use http::header::COOKIE;

/// Istio's default `minimumRingSize`.
pub const DEFAULT_RING_SIZE: u64 = 1024;
/// Envoy's largest ring (`maximum_ring_size` default).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's (and Istio's) default Maglev table size, a prime.
pub const DEFAULT_MAGLEV_SIZE: u64 = 65537;
/// Envoy's largest Maglev table.
pub const MAX_MAGLEV_SIZE: u64 = 5_000_011;

/// A stable 64-bit hash of `bytes` (FNV-1a, then the MurmurHash3 finalizer so that inputs differing in one byte
/// spread over all 64 bits). `seed` selects an independent function (Maglev needs two).
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What a request is hashed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The first value of a request header.
    Header(HeaderName),
    /// A cookie's value, from the request's `Cookie` headers.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
    /// A query parameter's (raw, not percent-decoded) value.
    QueryParameter(String),
}

/// Which table maps hashes to endpoints, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// At least `min_size` points in all (see [`HashTable::build`] for how many each endpoint gets).
    Ring { min_size: u64 },
    /// A table of `size` entries, a prime.
    Maglev { size: u64 },
}

/// A consistent-hash policy: the key and the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
    pub table: Table,
}

impl HashPolicy {
    /// From the proto, with Istio's defaults for a 0 table size. Exactly one key must be set.
    pub fn from_proto(p: &pb::ConsistentHash) -> Result<Self, String> {
        let mut keys = Vec::new();
        if !p.header_name.is_empty() {
            let name = HeaderName::from_bytes(p.header_name.as_bytes())
                .map_err(|_| format!("consistent hash: invalid header name {:?}", p.header_name))?;
            keys.push(("header_name", HashKey::Header(name)));
        }
        if !p.cookie_name.is_empty() {
            keys.push(("cookie_name", HashKey::Cookie(p.cookie_name.clone())));
        }
        if p.source_ip {
            keys.push(("source_ip", HashKey::SourceIp));
        }
        if !p.query_parameter.is_empty() {
            keys.push((
                "query_parameter",
                HashKey::QueryParameter(p.query_parameter.clone()),
            ));
        }
        let key = match keys.len() {
            1 => keys.remove(0).1,
            0 => {
                return Err(
                    "consistent hash: no key set (one of header_name, cookie_name, \
                            source_ip, query_parameter)"
                        .to_owned(),
                );
            }
            _ => {
                let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "consistent hash: exactly one key may be set, got {}",
                    names.join(", ")
                ));
            }
        };
        let table = match pb::consistent_hash::Algorithm::try_from(p.algorithm) {
            Ok(pb::consistent_hash::Algorithm::RingHash) => {
                let min_size = match p.table_size {
                    0 => DEFAULT_RING_SIZE,
                    n if n > MAX_RING_SIZE => {
                        return Err(format!(
                            "consistent hash: ring size {n} is larger than the maximum {MAX_RING_SIZE}"
                        ));
                    }
                    n => n,
                };
                Table::Ring { min_size }
            }
            Ok(pb::consistent_hash::Algorithm::Maglev) => {
                let size = match p.table_size {
                    0 => DEFAULT_MAGLEV_SIZE,
                    n if n > MAX_MAGLEV_SIZE => {
                        return Err(format!(
                            "consistent hash: Maglev table size {n} is larger than the maximum {MAX_MAGLEV_SIZE}"
                        ));
                    }
                    n if !is_prime(n) => {
                        return Err(format!(
                            "consistent hash: Maglev table size {n} is not a prime"
                        ));
                    }
                    n => n,
                };
                Table::Maglev { size }
            }
            Err(_) => {
                return Err(format!(
                    "consistent hash: unknown algorithm {}",
                    p.algorithm
                ));
            }
        };
        Ok(HashPolicy { key, table })
    }

    /// The hash of this request's key, or `None` when the request does not carry it (the balancer then falls back
    /// to least request, as Envoy does).
    pub fn key_hash(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        source_ip: Option<IpAddr>,
    ) -> Option<u64> {
        match &self.key {
            HashKey::Header(name) => headers.get(name).map(|v| hash64(0, v.as_bytes())),
            HashKey::Cookie(name) => cookie(headers, name).map(|v| hash64(0, v.as_bytes())),
            HashKey::SourceIp => source_ip.map(|ip| match ip.to_canonical() {
                IpAddr::V4(v4) => hash64(0, &v4.octets()),
                IpAddr::V6(v6) => hash64(0, &v6.octets()),
            }),
            HashKey::QueryParameter(name) => {
                query_param(query?, name).map(|v| hash64(0, v.as_bytes()))
            }
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4: `a=b; c=d`, several headers
/// allowed over HTTP/2).
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The raw value of the first query parameter `name` (`a=1&b`: `b` has the empty value).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A built table of endpoint indices (positions in the `ids` slice it was built from).
#[derive(Debug)]
pub struct HashTable {
    endpoints: usize,
    entries: Entries,
}

#[derive(Debug)]
enum Entries {
    /// Points sorted by hash: (point hash, endpoint index).
    Ring(Vec<(u64, u32)>),
    /// `entries[hash % len]` is the endpoint.
    Maglev(Vec<u32>),
}

impl HashTable {
    /// Builds the table for endpoints with stable `ids`.
    ///
    /// Ring: each endpoint gets `ceil(min_size / n)` points rounded up to a power of two (so the ring has between
    /// `min_size` and `2 × min_size` points). Envoy gives each host exactly `ceil(min_size / n)`, which changes
    /// every endpoint's point count whenever one joins or leaves, moving keys between endpoints that stayed;
    /// rounding keeps the count, and so every other endpoint's points, unchanged except when `n` crosses a power of
    /// two. Maglev: the paper's population algorithm, offset and skip from two independent hashes of the id.
    pub fn build(table: &Table, ids: &[&str]) -> HashTable {
        let entries = match *table {
            Table::Ring { min_size } => Entries::Ring(build_ring(min_size, ids)),
            Table::Maglev { size } => Entries::Maglev(build_maglev(size, ids)),
        };
        HashTable {
            endpoints: ids.len(),
            entries,
        }
    }

    /// How many entries (ring points, Maglev slots) the table has.
    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Ring(points) => points.len(),
            Entries::Maglev(entries) => entries.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoint for `hash`: its own entry if `usable`, else the next usable one along the table (the ring's
    /// next point, the Maglev table's next entry). `None` when no endpoint in the table is usable.
    pub fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let (start, len) = match &self.entries {
            Entries::Ring(points) => {
                let i = points.partition_point(|(h, _)| *h < hash);
                (if i == points.len() { 0 } else { i }, points.len())
            }
            Entries::Maglev(entries) => {
                let len = entries.len();
                if len == 0 {
                    return None;
                }
                ((hash % len as u64) as usize, len)
            }
        };
        let endpoint = |i: usize| -> usize {
            match &self.entries {
                Entries::Ring(points) => points[i].1 as usize,
                Entries::Maglev(entries) => entries[i] as usize,
            }
        };
        // Most lookups end at the first entry. When many endpoints are out, a walk could visit the whole table
        // just to learn that none is usable: after a few misses, check the endpoints themselves once.
        let mut checked_any = false;
        for k in 0..len {
            let i = (start + k) % len;
            let e = endpoint(i);
            if usable(e) {
                return Some(e);
            }
            if k == 32 && !checked_any {
                checked_any = true;
                if !(0..self.endpoints).any(&usable) {
                    return None;
                }
            }
        }
        None
    }
}

fn build_ring(min_size: u64, ids: &[&str]) -> Vec<(u64, u32)> {
    let n = ids.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let per = min_size.div_ceil(n).max(1).next_power_of_two();
    let per = per.min((MAX_RING_SIZE / n).max(1));
    let mut points = Vec::with_capacity((per * n) as usize);
    let mut buf = Vec::new();
    for (e, id) in ids.iter().enumerate() {
        for k in 0..per {
            buf.clear();
            buf.extend_from_slice(id.as_bytes());
            buf.push(b'_');
            buf.extend_from_slice(k.to_string().as_bytes());
            points.push((hash64(0, &buf), e as u32));
        }
    }
    points.sort_unstable();
    points
}

fn build_maglev(size: u64, ids: &[&str]) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    let m = size;
    if ids.is_empty() || m < 2 {
        return Vec::new();
    }
    // Each endpoint's permutation is offset, offset + skip, offset + 2·skip, … (mod m); m prime and skip in
    // [1, m-1] make it visit every slot, so each turn ends.
    let mut next: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let offset = hash64(1, id.as_bytes()) % m;
            let skip = hash64(2, id.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut entries = vec![EMPTY; m as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (e, (pos, skip)) in next.iter_mut().enumerate() {
            loop {
                let c = *pos as usize;
                *pos = (*pos + *skip) % m;
                if entries[c] == EMPTY {
                    entries[c] = e as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'fill;
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("Kubernetes//Pod/default/app-{i}"))
            .collect()
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    fn tables() -> [Table; 2] {
        [
            Table::Ring {
                min_size: DEFAULT_RING_SIZE,
            },
            Table::Maglev {
                size: DEFAULT_MAGLEV_SIZE,
            },
        ]
    }

    fn key(i: u64) -> u64 {
        hash64(0, format!("user-{i}").as_bytes())
    }

    #[test]
    fn same_key_same_endpoint() {
        let v = ids(7);
        for t in tables() {
            let a = HashTable::build(&t, &refs(&v));
            let b = HashTable::build(&t, &refs(&v));
            for k in 0..1000 {
                let e = a.lookup(key(k), |_| true);
                assert!(e.is_some());
                assert_eq!(e, a.lookup(key(k), |_| true), "{t:?}");
                assert_eq!(e, b.lookup(key(k), |_| true), "{t:?} rebuilt");
            }
        }
    }

    #[test]
    fn removing_one_endpoint_moves_only_its_share() {
        let n = 10;
        let all = ids(n);
        let removed = 3;
        let rest: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, s)| s.clone())
            .collect();
        for t in tables() {
            let before = HashTable::build(&t, &refs(&all));
            let after = HashTable::build(&t, &refs(&rest));
            let keys = 10_000;
            let mut moved = 0;
            let mut owned_by_removed = 0;
            for k in 0..keys {
                let b = &all[before.lookup(key(k), |_| true).unwrap_or(usize::MAX)];
                let a = &rest[after.lookup(key(k), |_| true).unwrap_or(usize::MAX)];
                if b == &all[removed] {
                    owned_by_removed += 1;
                }
                if a != b {
                    moved += 1;
                }
            }
            let frac = f64::from(moved) / keys as f64;
            assert!(frac < 1.0 / n as f64 + 0.05, "{t:?}: moved {frac}");
            // Every key of the removed endpoint had to move.
            assert!(moved >= owned_by_removed, "{t:?}");
        }
    }

    #[test]
    fn distribution_is_roughly_even() {
        let n = 10;
        let v = ids(n);
        for (t, tolerance) in tables().into_iter().zip([0.5, 0.2]) {
            let table = HashTable::build(&t, &refs(&v));
            let mut counts = vec![0u32; n];
            let keys = 10_000;
            for k in 0..keys {
                if let Some(e) = table.lookup(key(k), |_| true) {
                    counts[e] += 1;
                }
            }
            let mean = keys as f64 / n as f64;
            for c in &counts {
                let dev = (f64::from(*c) - mean).abs() / mean;
                assert!(dev < tolerance, "{t:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn maglev_table_is_full_and_even() {
        let v = ids(5);
        let Entries::Maglev(entries) =
            HashTable::build(&Table::Maglev { size: 65537 }, &refs(&v)).entries
        else {
            unreachable!()
        };
        assert_eq!(entries.len(), 65537);
        let mut counts = [0u32; 5];
        for e in &entries {
            counts[*e as usize] += 1;
        }
        // The paper's round-robin fill gives each endpoint floor or ceil of m/n entries.
        for c in counts {
            assert!((13107..=13108).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn lookup_skips_unusable_and_returns_when_back() {
        let v = ids(5);
        for t in tables() {
            let table = HashTable::build(&t, &refs(&v));
            for k in 0..500 {
                let home = table.lookup(key(k), |_| true).unwrap_or(usize::MAX);
                let second = table.lookup(key(k), |i| i != home).unwrap_or(usize::MAX);
                assert_ne!(home, second);
                assert!(second < 5);
                // Stable second choice, and the key comes home when its endpoint is usable again.
                assert_eq!(Some(second), table.lookup(key(k), |i| i != home));
                assert_eq!(Some(home), table.lookup(key(k), |_| true));
            }
            assert_eq!(table.lookup(key(1), |_| false), None, "{t:?}");
            assert_eq!(table.lookup(key(1), |i| i == 4), Some(4), "{t:?}");
        }
    }

    #[test]
    fn empty_table() {
        for t in tables() {
            assert_eq!(HashTable::build(&t, &[]).lookup(5, |_| true), None);
        }
    }

    #[test]
    fn ring_point_count() {
        let v = ids(10);
        let Entries::Ring(points) =
            HashTable::build(&Table::Ring { min_size: 1024 }, &refs(&v)).entries
        else {
            unreachable!()
        };
        // ceil(1024 / 10) = 103 → 128 per endpoint.
        assert_eq!(points.len(), 1280);
        assert!(points.windows(2).all(|w| w[0] <= w[1]));
    }

    fn policy(key: HashKey) -> HashPolicy {
        HashPolicy {
            key,
            table: Table::Ring { min_size: 1024 },
        }
    }

    #[test]
    fn key_hash_reads_each_key() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("jason"));
        h.append(COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(COOKIE, HeaderValue::from_static("other=2"));
        let ip: IpAddr = "10.0.0.7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mapped: IpAddr = "::ffff:10.0.0.7"
            .parse()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        // (key, query, source IP, expected hash)
        type Case = (HashKey, Option<&'static str>, Option<IpAddr>, Option<u64>);
        let cases: Vec<Case> = vec![
            (
                HashKey::Header(HeaderName::from_static("x-user")),
                None,
                None,
                Some(hash64(0, b"jason")),
            ),
            (
                HashKey::Header(HeaderName::from_static("x-none")),
                None,
                None,
                None,
            ),
            (
                HashKey::Cookie("session".into()),
                None,
                None,
                Some(hash64(0, b"abc")),
            ),
            (
                HashKey::Cookie("other".into()),
                None,
                None,
                Some(hash64(0, b"2")),
            ),
            (HashKey::Cookie("sess".into()), None, None, None),
            (
                HashKey::SourceIp,
                None,
                Some(ip),
                Some(hash64(0, &[10, 0, 0, 7])),
            ),
            (
                HashKey::SourceIp,
                None,
                Some(mapped),
                Some(hash64(0, &[10, 0, 0, 7])),
            ),
            (HashKey::SourceIp, None, None, None),
            (
                HashKey::QueryParameter("u".into()),
                Some("a=1&u=bob&u=x"),
                None,
                Some(hash64(0, b"bob")),
            ),
            (
                HashKey::QueryParameter("flag".into()),
                Some("flag&u=1"),
                None,
                Some(hash64(0, b"")),
            ),
            (
                HashKey::QueryParameter("u".into()),
                Some("uu=1"),
                None,
                None,
            ),
            (HashKey::QueryParameter("u".into()), None, None, None),
        ];
        for (k, q, src, want) in cases {
            assert_eq!(policy(k.clone()).key_hash(&h, q, src), want, "{k:?} {q:?}");
        }
    }

    fn proto(f: impl FnOnce(&mut pb::ConsistentHash)) -> pb::ConsistentHash {
        let mut p = pb::ConsistentHash::default();
        f(&mut p);
        p
    }

    #[test]
    fn from_proto() {
        let ok = HashPolicy::from_proto(&proto(|p| p.header_name = "x-user".into()));
        assert_eq!(
            ok,
            Ok(HashPolicy {
                key: HashKey::Header(HeaderName::from_static("x-user")),
                table: Table::Ring { min_size: 1024 }
            })
        );
        let maglev = HashPolicy::from_proto(&proto(|p| {
            p.source_ip = true;
            p.algorithm = pb::consistent_hash::Algorithm::Maglev as i32;
        }));
        assert_eq!(maglev.map(|p| p.table), Ok(Table::Maglev { size: 65537 }));
        let errors: Vec<(pb::ConsistentHash, &str)> = vec![
            (proto(|_| {}), "no key set"),
            (
                proto(|p| {
                    p.source_ip = true;
                    p.cookie_name = "c".into();
                }),
                "exactly one key may be set, got cookie_name, source_ip",
            ),
            (
                proto(|p| p.header_name = "bad header".into()),
                "invalid header name",
            ),
            (
                proto(|p| {
                    p.source_ip = true;
                    p.algorithm = 1;
                    p.table_size = 65536;
                }),
                "65536 is not a prime",
            ),
            (
                proto(|p| {
                    p.source_ip = true;
                    p.algorithm = 1;
                    p.table_size = 10_000_019;
                }),
                "larger than the maximum",
            ),
            (
                proto(|p| {
                    p.source_ip = true;
                    p.table_size = MAX_RING_SIZE + 1;
                }),
                "larger than the maximum",
            ),
            (
                proto(|p| {
                    p.source_ip = true;
                    p.algorithm = 9;
                }),
                "unknown algorithm 9",
            ),
        ];
        for (p, want) in errors {
            match HashPolicy::from_proto(&p) {
                Err(e) => assert!(e.contains(want), "{e:?} does not contain {want:?}"),
                Ok(v) => panic!("{p:?} accepted as {v:?}"),
            }
        }
    }
}
