//! Choosing one endpoint of a backend for a request (DestinationRule `loadBalancer`).
//!
//! A [`Balancer`] is built once per (backend, subset) when a config snapshot is built: it holds what the
//! algorithm needs across requests (the round-robin cursor, the consistent-hash table, the locality tiers). Per
//! request, [`Balancer::pick`] takes the endpoint count and closures for "may this endpoint take the request"
//! (healthy, not ejected, not already tried by this request) and "how many requests does it have in flight", so it
//! knows nothing of the state types and is tested on plain indices. A pick allocates nothing: it samples indices
//! at random a few times and scans only when most endpoints are unusable.

use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_proto::waypoint as pb;
use rand::Rng;

use super::hash::{HashPolicy, HashTable, hash64};
use super::locality::Tiers;

/// How many random draws look for a usable endpoint before the pick scans for one.
const DRAWS: usize = 4;

/// The load-balancing algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Power of two choices by requests in flight (Istio's default).
    LeastRequest,
    RoundRobin,
    Random,
    /// The address the client asked for. The caller sends a workload-addressed request there without picking;
    /// for a service-addressed one `pick` behaves as [`Algorithm::LeastRequest`].
    Passthrough,
    /// By the hash of a request key; a request without the key is balanced by least request (Envoy's behaviour).
    ConsistentHash(HashPolicy),
}

impl Algorithm {
    /// From the proto. `consistent_hash` is read only when the kind is `CONSISTENT_HASH` (and is required then).
    pub fn from_proto(p: &pb::LoadBalancer) -> Result<Self, String> {
        use pb::load_balancer::Kind;
        match Kind::try_from(p.kind) {
            Ok(Kind::LeastRequest) => Ok(Algorithm::LeastRequest),
            Ok(Kind::RoundRobin) => Ok(Algorithm::RoundRobin),
            Ok(Kind::Random) => Ok(Algorithm::Random),
            Ok(Kind::Passthrough) => Ok(Algorithm::Passthrough),
            Ok(Kind::ConsistentHash) => match &p.consistent_hash {
                Some(h) => Ok(Algorithm::ConsistentHash(HashPolicy::from_proto(h)?)),
                None => Err("load balancer: kind CONSISTENT_HASH needs consistent_hash".to_owned()),
            },
            Err(_) => Err(format!("load balancer: unknown kind {}", p.kind)),
        }
    }
}

/// One (backend, subset)'s balancer.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    table: Option<HashTable>,
    tiers: Option<Tiers>,
    cursor: AtomicUsize,
    /// What the balancer was built from, to reuse it in the next snapshot when nothing changed.
    fingerprint: u64,
}

impl Balancer {
    /// A balancer for endpoints with stable `ids` (workload uids, in endpoint index order). `tiers`: the
    /// endpoints' locality ranks when the policy prefers close endpoints (`LoadBalancer.prefer_close`), else
    /// `None`. Building a Maglev table costs about `size × ln(size)` steps (≈ 0.7 M for the default), so reuse a
    /// balancer across snapshots when [`Balancer::same_as`] says nothing changed.
    pub fn new(algorithm: Algorithm, ids: &[&str], tiers: Option<Tiers>) -> Balancer {
        let table = match &algorithm {
            Algorithm::ConsistentHash(p) => Some(HashTable::build(&p.table, ids)),
            _ => None,
        };
        Balancer {
            fingerprint: fingerprint(ids),
            algorithm,
            table,
            tiers,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Whether this balancer was built from the same inputs (so its table and cursor can be kept).
    pub fn same_as(&self, algorithm: &Algorithm, ids: &[&str], tiers: Option<&Tiers>) -> bool {
        self.algorithm == *algorithm
            && self.tiers.as_ref() == tiers
            && self.fingerprint == fingerprint(ids)
    }

    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// The consistent-hash policy, for computing the request's key hash before [`Balancer::pick`].
    pub fn hash_policy(&self) -> Option<&HashPolicy> {
        match &self.algorithm {
            Algorithm::ConsistentHash(p) => Some(p),
            _ => None,
        }
    }

    /// Picks an endpoint index below `n` for which `usable` holds, or `None` when there is none.
    ///
    /// `active(i)`: requests in flight at endpoint `i` (for least request). `hash`: the request's key hash from
    /// [`HashPolicy::key_hash`] (ignored unless the algorithm is consistent hash). With locality tiers, only the
    /// closest tier that has a usable endpoint is considered.
    pub fn pick(
        &self,
        n: usize,
        usable: impl Fn(usize) -> bool,
        active: impl Fn(usize) -> u32,
        hash: Option<u64>,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let in_range = |i: usize| i < n && usable(i);
        match &self.tiers {
            Some(tiers) => {
                let tier = tiers.best(in_range)?;
                self.pick_among(n, tiers.only(tier, in_range), active, hash, rng)
            }
            None => self.pick_among(n, in_range, active, hash, rng),
        }
    }

    fn pick_among(
        &self,
        n: usize,
        usable: impl Fn(usize) -> bool,
        active: impl Fn(usize) -> u32,
        hash: Option<u64>,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        match (&self.algorithm, &self.table, hash) {
            (Algorithm::ConsistentHash(_), Some(table), Some(h)) => table.lookup(h, usable),
            (Algorithm::RoundRobin, _, _) => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                (0..n).map(|k| (start + k) % n).find(|i| usable(*i))
            }
            (Algorithm::Random, _, _) => draw(n, &usable, rng),
            _ => least_request(n, &usable, &active, rng),
        }
    }
}

/// Power of two choices: two distinct usable endpoints at random, the one with fewer requests in flight (the first
/// on a tie); the only usable endpoint when there is one.
pub fn least_request(
    n: usize,
    usable: &impl Fn(usize) -> bool,
    active: &impl Fn(usize) -> u32,
    rng: &mut impl Rng,
) -> Option<usize> {
    let a = draw(n, usable, rng)?;
    match draw(n, &|i| i != a && usable(i), rng) {
        Some(b) if active(b) < active(a) => Some(b),
        _ => Some(a),
    }
}

/// A usable index below `n`, uniformly at random: a few draws, then (when most are unusable) a count and a
/// second pass to the chosen one. Both paths are uniform over the usable indices; neither allocates.
fn draw(n: usize, usable: &impl Fn(usize) -> bool, rng: &mut impl Rng) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..DRAWS {
        let i = rng.random_range(0..n);
        if usable(i) {
            return Some(i);
        }
    }
    let count = (0..n).filter(|i| usable(*i)).count();
    if count == 0 {
        return None;
    }
    let k = rng.random_range(0..count);
    (0..n).filter(|i| usable(*i)).nth(k)
}

fn fingerprint(ids: &[&str]) -> u64 {
    ids.iter()
        .fold(hash64(3, &(ids.len() as u64).to_le_bytes()), |acc, id| {
            hash64(acc, id.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash::{HashKey, Table};
    use crate::balance::locality::Locality;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("uid-{i}")).collect()
    }

    fn balancer(algorithm: Algorithm, n: usize) -> Balancer {
        let v = ids(n);
        let refs: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        Balancer::new(algorithm, &refs, None)
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn counts(b: &Balancer, n: usize, usable: impl Fn(usize) -> bool, picks: usize) -> Vec<u32> {
        let mut r = rng();
        let mut c = vec![0; n];
        for _ in 0..picks {
            if let Some(i) = b.pick(n, &usable, |_| 0, None, &mut r) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn no_endpoints_or_none_usable() {
        for alg in [
            Algorithm::LeastRequest,
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::Passthrough,
        ] {
            let b = balancer(alg.clone(), 4);
            assert_eq!(
                b.pick(0, |_| true, |_| 0, None, &mut rng()),
                None,
                "{alg:?}"
            );
            assert_eq!(
                b.pick(4, |_| false, |_| 0, None, &mut rng()),
                None,
                "{alg:?}"
            );
            assert_eq!(
                b.pick(4, |i| i == 2, |_| 0, None, &mut rng()),
                Some(2),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        // Endpoint 0 has 10 in flight, the rest none: P2C never picks 0 unless both draws are 0, which
        // distinct draws rule out.
        let b = balancer(Algorithm::LeastRequest, 4);
        let mut r = rng();
        let mut c = [0u32; 4];
        for _ in 0..4000 {
            if let Some(i) = b.pick(4, |_| true, |i| if i == 0 { 10 } else { 0 }, None, &mut r) {
                c[i] += 1;
            }
        }
        assert_eq!(c[0], 0, "{c:?}");
        // The busiest of two endpoints is never chosen.
        let mut r = rng();
        for _ in 0..200 {
            let p = b.pick(4, |i| i >= 2, |i| if i == 2 { 5 } else { 1 }, None, &mut r);
            assert_eq!(p, Some(3));
        }
    }

    #[test]
    fn least_request_tie_takes_first_draw() {
        let mut r = rng();
        let mut other = rng();
        let usable = |_| true;
        for _ in 0..100 {
            // Replay the draws on a twin generator: the first, then the second (distinct) one.
            let first = other.random_range(0..8);
            let distinct = (0..DRAWS).any(|_| other.random_range(0..8) != first);
            if !distinct {
                let _ = other.random_range(0..7);
            }
            assert_eq!(least_request(8, &usable, &|_| 3, &mut r), Some(first));
        }
    }

    #[test]
    fn least_request_spreads_when_idle() {
        let c = counts(&balancer(Algorithm::LeastRequest, 5), 5, |_| true, 10_000);
        assert!(c.iter().all(|x| (1600..2400).contains(x)), "{c:?}");
    }

    #[test]
    fn round_robin_cycles_and_skips_unusable() {
        let b = balancer(Algorithm::RoundRobin, 4);
        let mut r = rng();
        let seq: Vec<Option<usize>> = (0..8)
            .map(|_| b.pick(4, |_| true, |_| 0, None, &mut r))
            .collect();
        let want: Vec<Option<usize>> = [0, 1, 2, 3, 0, 1, 2, 3].into_iter().map(Some).collect();
        assert_eq!(seq, want);
        let seq: Vec<Option<usize>> = (0..4)
            .map(|_| b.pick(4, |i| i != 1, |_| 0, None, &mut r))
            .collect();
        // Cursor at 8: 0, then 1 is skipped (→ 2), 2, 3.
        assert_eq!(seq, vec![Some(0), Some(2), Some(2), Some(3)]);
    }

    #[test]
    fn random_is_uniform_over_usable() {
        let c = counts(&balancer(Algorithm::Random, 6), 6, |i| i % 2 == 0, 9000);
        assert_eq!((c[1], c[3], c[5]), (0, 0, 0));
        for i in [0, 2, 4] {
            assert!((2600..3400).contains(&c[i]), "{c:?}");
        }
        // Most endpoints unusable: the scan fallback still finds the one left, uniformly among the two.
        let c = counts(
            &balancer(Algorithm::Random, 1000),
            1000,
            |i| i == 10 || i == 990,
            2000,
        );
        assert_eq!(c[10] + c[990], 2000);
        assert!((800..1200).contains(&c[10]), "{}", c[10]);
    }

    fn hashed(table: Table) -> Algorithm {
        Algorithm::ConsistentHash(HashPolicy {
            key: HashKey::SourceIp,
            table,
        })
    }

    #[test]
    fn consistent_hash_is_sticky_and_falls_back_without_key() {
        for table in [
            Table::Ring { min_size: 1024 },
            Table::Maglev { size: 65537 },
        ] {
            let b = balancer(hashed(table), 5);
            assert!(b.hash_policy().is_some());
            let mut r = rng();
            for k in 0..200u64 {
                let h = hash64(0, &k.to_le_bytes());
                let first = b.pick(5, |_| true, |_| 0, Some(h), &mut r);
                assert!(first.is_some());
                for _ in 0..3 {
                    assert_eq!(b.pick(5, |_| true, |_| 0, Some(h), &mut r), first);
                }
                // A retry excluding the first endpoint goes elsewhere.
                let retry = b.pick(5, |i| Some(i) != first, |_| 0, Some(h), &mut r);
                assert!(retry.is_some() && retry != first);
            }
            // No key: least request (never the busy endpoint 0 when others are idle and usable).
            let mut seen = [0u32; 2];
            for _ in 0..500 {
                let p = b.pick(2, |_| true, |i| if i == 0 { 9 } else { 0 }, None, &mut r);
                if let Some(i) = p {
                    seen[i] += 1;
                }
            }
            assert_eq!(seen, [0, 500], "{table:?}");
        }
    }

    #[test]
    fn table_built_for_more_endpoints_than_n_stays_in_range() {
        let b = balancer(hashed(Table::Maglev { size: 65537 }), 8);
        let mut r = rng();
        for k in 0..500u64 {
            let p = b.pick(
                3,
                |_| true,
                |_| 0,
                Some(hash64(0, &k.to_le_bytes())),
                &mut r,
            );
            assert!(p.is_some_and(|i| i < 3));
        }
    }

    fn loc(zone: &str) -> Locality {
        Locality {
            region: "eu".into(),
            zone: zone.into(),
            subzone: String::new(),
        }
    }

    #[test]
    fn prefer_close_picks_in_the_best_tier_then_fails_over() {
        let me = loc("a");
        let zones = [loc("b"), loc("a"), loc("b"), loc("a"), loc("c")];
        let v = ids(5);
        let refs: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        for alg in [
            Algorithm::LeastRequest,
            Algorithm::RoundRobin,
            Algorithm::Random,
        ] {
            let b = Balancer::new(alg.clone(), &refs, Some(Tiers::new(&me, &zones)));
            let c = counts(&b, 5, |_| true, 1000);
            assert_eq!((c[0], c[2], c[4]), (0, 0, 0), "{alg:?} {c:?}");
            assert!(c[1] > 300 && c[3] > 300, "{alg:?} {c:?}");
            // Both local endpoints out: the other zones take the traffic.
            let c = counts(&b, 5, |i| i != 1 && i != 3, 1000);
            assert_eq!(c[0] + c[2] + c[4], 1000, "{alg:?} {c:?}");
        }
        let b = Balancer::new(
            hashed(Table::Ring { min_size: 64 }),
            &refs,
            Some(Tiers::new(&me, &zones)),
        );
        let mut r = rng();
        for k in 0..100u64 {
            let p = b.pick(
                5,
                |_| true,
                |_| 0,
                Some(hash64(0, &k.to_le_bytes())),
                &mut r,
            );
            assert!(matches!(p, Some(1) | Some(3)), "{p:?}");
        }
    }

    #[test]
    fn same_as_detects_changes() {
        let v = ids(3);
        let refs: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        let b = Balancer::new(Algorithm::RoundRobin, &refs, None);
        assert!(b.same_as(&Algorithm::RoundRobin, &refs, None));
        assert!(!b.same_as(&Algorithm::Random, &refs, None));
        assert!(!b.same_as(&Algorithm::RoundRobin, &refs[..2], None));
        let tiers = Tiers::new(&loc("a"), &[loc("a"), loc("b"), loc("a")]);
        assert!(!b.same_as(&Algorithm::RoundRobin, &refs, Some(&tiers)));
    }

    #[test]
    fn from_proto() {
        use pb::load_balancer::Kind;
        let lb = |kind: Kind, ch: Option<pb::ConsistentHash>| pb::LoadBalancer {
            kind: kind as i32,
            consistent_hash: ch,
            prefer_close: false,
        };
        let cases = [
            (lb(Kind::LeastRequest, None), Ok(Algorithm::LeastRequest)),
            (lb(Kind::RoundRobin, None), Ok(Algorithm::RoundRobin)),
            (lb(Kind::Random, None), Ok(Algorithm::Random)),
            (lb(Kind::Passthrough, None), Ok(Algorithm::Passthrough)),
            (
                lb(
                    Kind::ConsistentHash,
                    Some(pb::ConsistentHash {
                        source_ip: true,
                        ..Default::default()
                    }),
                ),
                Ok(hashed(Table::Ring { min_size: 1024 })),
            ),
            (
                lb(Kind::ConsistentHash, None),
                Err("load balancer: kind CONSISTENT_HASH needs consistent_hash".to_owned()),
            ),
            (
                lb(Kind::ConsistentHash, Some(pb::ConsistentHash::default())),
                Err(
                    "consistent hash: no key set (one of header_name, cookie_name, source_ip, \
                     query_parameter)"
                        .to_owned(),
                ),
            ),
            (
                pb::LoadBalancer {
                    kind: 42,
                    ..Default::default()
                },
                Err("load balancer: unknown kind 42".to_owned()),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(Algorithm::from_proto(&p), want, "{p:?}");
        }
    }
}
