//! Locality preference (DestinationRule `localityLbSetting`, Service `trafficDistribution: PreferClose`):
//! send to the closest endpoints that can take the request.
//!
//! Each endpoint gets a rank by how far its locality is from the waypoint's own: 0 same subzone, 1 same zone,
//! 2 same region, 3 elsewhere. [`Tiers`] holds the ranks (computed once per snapshot) and, per request, finds the
//! best rank that has a usable endpoint; the balancer then picks only among that rank. Envoy's locality failover
//! spills a share of traffic to the next priority once fewer than ~71 % of a priority's hosts are healthy (the
//! overprovisioning factor 1.4); Ambit fails over only when a tier has no usable endpoint at all, which is what
//! `PreferClose` promises and is simpler to reason about.

use ambit_proto::workload as wpb;

/// Where a workload runs (from the node's `topology.kubernetes.io/region|zone` and `topology.istio.io/subzone`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl From<&wpb::Locality> for Locality {
    fn from(p: &wpb::Locality) -> Self {
        Locality {
            region: p.region.clone(),
            zone: p.zone.clone(),
            subzone: p.subzone.clone(),
        }
    }
}

/// The worst rank.
pub const FARTHEST: u8 = 3;

/// How far `other` is from `me`: 0 same subzone (and zone and region), 1 same zone, 2 same region, 3 another
/// region. Empty fields compare equal, so endpoints without locality information all rank as close as the
/// waypoint's own missing information allows and preference has no effect.
pub fn rank(me: &Locality, other: &Locality) -> u8 {
    if me.region != other.region {
        3
    } else if me.zone != other.zone {
        2
    } else if me.subzone != other.subzone {
        1
    } else {
        0
    }
}

/// The endpoints of one (backend, subset) grouped by rank, built with the balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiers {
    /// The rank of each endpoint, by index.
    rank: Vec<u8>,
    /// The endpoint indices of each rank, in index order.
    members: [Vec<u32>; 4],
}

impl Tiers {
    /// Ranks `endpoints` (in index order) against the waypoint's locality `me`.
    pub fn new<'a>(me: &Locality, endpoints: impl IntoIterator<Item = &'a Locality>) -> Tiers {
        let mut members: [Vec<u32>; 4] = Default::default();
        let rank: Vec<u8> = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let r = rank(me, l);
                members[usize::from(r)].push(i as u32);
                r
            })
            .collect();
        Tiers { rank, members }
    }

    /// The rank of endpoint `i` (an index past the end ranks farthest).
    pub fn rank_of(&self, i: usize) -> u8 {
        self.rank.get(i).copied().unwrap_or(FARTHEST)
    }

    /// The best rank with a usable endpoint, or `None` when no endpoint is usable. Stops at the first usable
    /// endpoint of the best tier: one check when the closest endpoints are fine.
    pub fn best(&self, usable: impl Fn(usize) -> bool) -> Option<u8> {
        (0..=FARTHEST).find(|r| {
            self.members[usize::from(*r)]
                .iter()
                .any(|i| usable(*i as usize))
        })
    }

    /// `usable` narrowed to the endpoints of rank `tier`: what to hand the balancer for this request.
    pub fn only<'a>(
        &'a self,
        tier: u8,
        usable: impl Fn(usize) -> bool + 'a,
    ) -> impl Fn(usize) -> bool + 'a {
        move |i| self.rank_of(i) == tier && usable(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(region: &str, zone: &str, subzone: &str) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }

    #[test]
    fn ranks() {
        let me = loc("eu", "eu-a", "rack1");
        let cases = [
            (loc("eu", "eu-a", "rack1"), 0),
            (loc("eu", "eu-a", "rack2"), 1),
            (loc("eu", "eu-a", ""), 1),
            (loc("eu", "eu-b", "rack1"), 2),
            (loc("us", "eu-a", "rack1"), 3),
            (loc("", "", ""), 3),
        ];
        for (other, want) in cases {
            assert_eq!(rank(&me, &other), want, "{other:?}");
        }
        assert_eq!(rank(&Locality::default(), &Locality::default()), 0);
    }

    #[test]
    fn best_tier_with_a_usable_endpoint() {
        let me = loc("eu", "eu-a", "r1");
        let eps = [
            loc("us", "us-a", "r1"), // 0: 3
            loc("eu", "eu-b", "r1"), // 1: 2
            loc("eu", "eu-a", "r1"), // 2: 0
            loc("eu", "eu-a", "r2"), // 3: 1
            loc("eu", "eu-a", "r1"), // 4: 0
        ];
        let t = Tiers::new(&me, &eps);
        assert_eq!(t.rank_of(0), 3);
        assert_eq!(t.rank_of(9), FARTHEST);
        let cases: [(&[usize], Option<u8>); 6] = [
            (&[0, 1, 2, 3, 4], Some(0)),
            (&[0, 1, 3, 4], Some(0)),
            (&[0, 1, 3], Some(1)),
            (&[0, 1], Some(2)),
            (&[0], Some(3)),
            (&[], None),
        ];
        for (up, want) in cases {
            assert_eq!(t.best(|i| up.contains(&i)), want, "{up:?}");
        }
        let only = t.only(0, |i| i != 4);
        assert_eq!((0..5).filter(|i| only(*i)).collect::<Vec<_>>(), vec![2]);
    }
}
