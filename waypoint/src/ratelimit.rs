//! Local rate limiting: Ambit's `RateLimitPolicy` (`ambit.dev/v1alpha1`), first class where Istio needs an
//! EnvoyFilter. Each limit is a token bucket (`requests` per `interval`, up to `burst` saved up, refilled
//! continuously) per key — one for all requests, or one per client identity, client address, header value or
//! path. Buckets live in this waypoint replica's memory: with N replicas a client may get up to N times the rate,
//! which is what "local" means (Envoy's local_ratelimit behaves the same).
//!
//! A limited request gets 429 with `retry-after` (whole seconds until a token is back) and
//! `x-ratelimit-limit`/`-remaining`/`-reset`; allowed requests get the same `x-ratelimit-*` headers of the
//! tightest limit that applied. The number of buckets a limit keeps is bounded: past [`MAX_BUCKETS`], buckets that
//! have refilled completely (their keys would start from a full bucket anyway) are dropped, and if none have, the
//! new key shares one overflow bucket — so a flood of distinct keys cannot grow memory without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ambit_proto::waypoint as pb;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::route::{Match, RequestView, RouteKind, convert_match};

/// Buckets kept per limit.
pub const MAX_BUCKETS: usize = 100_000;

/// What a bucket is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Key {
    None,
    ClientIdentity,
    SourceIp,
    Header(#[serde(serialize_with = "name_str")] HeaderName),
    Path,
}

fn name_str<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket configuration and its buckets.
#[derive(Debug, serde::Serialize)]
pub struct Limit {
    pub key: Key,
    pub requests: u32,
    pub interval: Duration,
    pub burst: u32,
    #[serde(skip)]
    pub matches: Vec<Match>,
    #[serde(skip)]
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    map: HashMap<String, Bucket>,
    /// When full buckets were last dropped (at most once a second, so a flood of new keys at the bound costs
    /// one scan per second, not one per request).
    swept: Option<Instant>,
}

/// What the limiter says about one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Allowed; the tightest applicable limit's numbers (for the `x-ratelimit-*` headers), if any applied.
    Allowed(Option<Quota>),
    Limited(Quota),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    /// Until a token is back (limited) or the bucket is full again (allowed).
    pub reset: Duration,
}

/// The request's key values (borrowed from the request).
pub struct KeyInput<'a> {
    pub identity: Option<&'a str>,
    pub source_ip: Option<std::net::IpAddr>,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
}

impl Limit {
    pub fn from_proto(f: &str, p: &pb::RateLimit) -> Result<Limit, String> {
        use pb::rate_limit::Key as K;
        let key = match K::try_from(p.key) {
            Ok(K::None) => Key::None,
            Ok(K::ClientIdentity) => Key::ClientIdentity,
            Ok(K::SourceIp) => Key::SourceIp,
            Ok(K::Path) => Key::Path,
            Ok(K::Header) => Key::Header(
                HeaderName::from_bytes(p.header.as_bytes())
                    .map_err(|_| format!("{f}.header: {:?} is not a header name", p.header))?,
            ),
            Err(_) => return Err(format!("{f}.key: unknown key {}", p.key)),
        };
        if p.requests == 0 {
            return Err(format!("{f}.requests: must be at least 1"));
        }
        if p.interval_ms == 0 {
            return Err(format!("{f}.intervalMs: must be at least 1"));
        }
        let matches = p
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| {
                convert_match(RouteKind::Http, &format!("{f}.matches[{i}]"), m)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Limit {
            key,
            requests: p.requests,
            interval: Duration::from_millis(p.interval_ms),
            burst: if p.burst == 0 { p.requests } else { p.burst },
            matches,
            buckets: Mutex::new(Buckets::default()),
        })
    }

    /// Tokens per second.
    fn rate(&self) -> f64 {
        f64::from(self.requests) / self.interval.as_secs_f64()
    }

    fn key_of(&self, k: &KeyInput<'_>) -> String {
        match &self.key {
            Key::None => String::new(),
            Key::ClientIdentity => k.identity.unwrap_or("").to_owned(),
            Key::SourceIp => k.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            Key::Header(h) => k
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            Key::Path => k.path.to_owned(),
        }
    }

    /// Whether this limit counts the request.
    pub fn applies(&self, req: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }

    /// Takes a token for the request's key if one is there.
    pub fn take(&self, k: &KeyInput<'_>, now: Instant) -> Result<Quota, Quota> {
        let key = self.key_of(k);
        let burst = f64::from(self.burst);
        let rate = self.rate();
        let Ok(mut guard) = self.buckets.lock() else {
            // A poisoned lock: fail open rather than refuse every request.
            return Ok(self.quota(burst, rate));
        };
        let Buckets {
            map: buckets,
            swept,
        } = &mut *guard;
        if !buckets.contains_key(&key)
            && buckets.len() >= MAX_BUCKETS
            && swept.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            *swept = Some(now);
            buckets.retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
        }
        let key = if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
            "\u{0}overflow".to_owned()
        } else {
            key
        };
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        *b = refill(*b, now, rate, burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(self.quota(b.tokens, rate))
        } else {
            let wait = (1.0 - b.tokens) / rate;
            Err(Quota {
                limit: self.requests,
                remaining: 0,
                reset: Duration::from_secs_f64(wait.max(0.0)),
            })
        }
    }

    fn quota(&self, tokens: f64, rate: f64) -> Quota {
        let missing = (f64::from(self.burst) - tokens).max(0.0);
        Quota {
            limit: self.requests,
            remaining: tokens.floor() as u32,
            reset: Duration::from_secs_f64(missing / rate),
        }
    }

    /// Buckets held now.
    pub fn buckets(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.map.len())
    }
}

fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(burst),
        at: now,
    }
}

/// The limits of one `RateLimitPolicy`.
#[derive(Debug, serde::Serialize)]
pub struct RateLimitPolicy {
    pub name: String,
    pub limits: Vec<Limit>,
}

impl RateLimitPolicy {
    pub fn from_proto(p: &pb::RateLimitPolicy) -> Result<RateLimitPolicy, String> {
        if p.limits.is_empty() {
            return Err("limits: empty".into());
        }
        Ok(RateLimitPolicy {
            name: p.name.clone(),
            limits: p
                .limits
                .iter()
                .enumerate()
                .map(|(i, l)| Limit::from_proto(&format!("limits[{i}]"), l))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Checks every applicable limit of `policies`: the request is limited by the first that has no token (tokens
/// taken from earlier limits are not given back, as with Envoy's descriptors); allowed, it reports the tightest.
pub fn check<'a>(
    policies: impl IntoIterator<Item = &'a RateLimitPolicy>,
    req: &RequestView<'_>,
    k: &KeyInput<'_>,
    now: Instant,
) -> Verdict {
    let mut tightest: Option<Quota> = None;
    for p in policies {
        for l in &p.limits {
            if !l.applies(req) {
                continue;
            }
            match l.take(k, now) {
                Ok(q) => {
                    if tightest.is_none_or(|t| q.remaining < t.remaining) {
                        tightest = Some(q);
                    }
                }
                Err(q) => return Verdict::Limited(q),
            }
        }
    }
    Verdict::Allowed(tightest)
}

/// The `x-ratelimit-*` (and, when limited, `retry-after`) headers for a quota.
pub fn headers(q: &Quota, limited: bool, into: &mut HeaderMap) {
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    into.insert("x-ratelimit-limit", HeaderValue::from(q.limit));
    into.insert("x-ratelimit-remaining", HeaderValue::from(q.remaining));
    into.insert("x-ratelimit-reset", HeaderValue::from(secs(q.reset)));
    if limited {
        into.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(secs(q.reset).max(1)),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::Method;

    fn limit(key: i32, header: &str, requests: u32, interval_ms: u64, burst: u32) -> Limit {
        Limit::from_proto(
            "limits[0]",
            &pb::RateLimit {
                key,
                header: header.into(),
                requests,
                interval_ms,
                burst,
                matches: vec![],
            },
        )
        .unwrap()
    }

    fn input<'a>(headers: &'a HeaderMap, who: &'a str) -> KeyInput<'a> {
        KeyInput {
            identity: Some(who),
            source_ip: None,
            headers,
            path: "/",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_arithmetic() {
        // 10 per second, no burst beyond that: the 11th request in the same instant is limited.
        let l = limit(0, "", 10, 1000, 0);
        let h = HeaderMap::new();
        let t0 = Instant::now();
        for i in 0..10 {
            let q = l.take(&input(&h, "a"), t0).unwrap();
            assert_eq!(q.remaining, 9 - i);
        }
        let q = l.take(&input(&h, "a"), t0).unwrap_err();
        assert_eq!(q.remaining, 0);
        assert_eq!(
            q.reset,
            Duration::from_millis(100),
            "one token every 100 ms"
        );
        // 250 ms later two tokens are back (continuous refill), not three.
        let t1 = t0 + Duration::from_millis(250);
        assert!(l.take(&input(&h, "a"), t1).is_ok());
        assert!(l.take(&input(&h, "a"), t1).is_ok());
        assert!(l.take(&input(&h, "a"), t1).is_err());
        // A long pause refills to the burst, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(l.take(&input(&h, "a"), t2).is_ok());
        }
        assert!(l.take(&input(&h, "a"), t2).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets() {
        let h = HeaderMap::new();
        let now = Instant::now();
        let by_client = limit(1, "", 1, 1000, 0);
        assert!(by_client.take(&input(&h, "a"), now).is_ok());
        assert!(by_client.take(&input(&h, "a"), now).is_err());
        assert!(
            by_client.take(&input(&h, "b"), now).is_ok(),
            "another client"
        );
        let shared = limit(0, "", 1, 1000, 0);
        assert!(shared.take(&input(&h, "a"), now).is_ok());
        assert!(
            shared.take(&input(&h, "b"), now).is_err(),
            "one bucket for all"
        );
        let by_header = limit(3, "x-user", 1, 1000, 0);
        let mut h1 = HeaderMap::new();
        h1.insert("x-user", HeaderValue::from_static("u1"));
        let mut h2 = HeaderMap::new();
        h2.insert("x-user", HeaderValue::from_static("u2"));
        assert!(by_header.take(&input(&h1, "a"), now).is_ok());
        assert!(by_header.take(&input(&h1, "b"), now).is_err());
        assert!(by_header.take(&input(&h2, "a"), now).is_ok());
        // Burst above the rate.
        let bursty = limit(0, "", 1, 1000, 3);
        for _ in 0..3 {
            assert!(bursty.take(&input(&h, "a"), now).is_ok());
        }
        assert!(bursty.take(&input(&h, "a"), now).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn many_keys_stay_bounded() {
        let l = limit(4, "", 1, 1000, 0);
        let h = HeaderMap::new();
        let now = Instant::now();
        for i in 0..(MAX_BUCKETS + 10) {
            let path = format!("/{i}");
            let _ = l.take(
                &KeyInput {
                    identity: None,
                    source_ip: None,
                    headers: &h,
                    path: &path,
                },
                now,
            );
        }
        assert!(l.buckets() <= MAX_BUCKETS + 1, "{}", l.buckets());
        // Once the old buckets have refilled they make room for new keys.
        let later = now + Duration::from_secs(2);
        let k = KeyInput {
            identity: None,
            source_ip: None,
            headers: &h,
            path: "/new",
        };
        assert!(l.take(&k, later).is_ok());
        assert!(l.buckets() < 10, "{}", l.buckets());
    }

    #[test]
    fn conversion_errors_name_the_field() {
        let bad = |r: pb::RateLimit| Limit::from_proto("limits[1]", &r).unwrap_err();
        let e = bad(pb::RateLimit {
            requests: 0,
            interval_ms: 1000,
            ..Default::default()
        });
        assert_eq!(e, "limits[1].requests: must be at least 1");
        let e = bad(pb::RateLimit {
            requests: 1,
            interval_ms: 0,
            ..Default::default()
        });
        assert_eq!(e, "limits[1].intervalMs: must be at least 1");
        let e = bad(pb::RateLimit {
            key: pb::rate_limit::Key::Header as i32,
            header: "bad header".into(),
            requests: 1,
            interval_ms: 1,
            ..Default::default()
        });
        assert!(e.starts_with("limits[1].header"), "{e}");
        assert!(RateLimitPolicy::from_proto(&pb::RateLimitPolicy::default()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn check_applies_matching_limits_and_reports_the_tightest() {
        let p = RateLimitPolicy::from_proto(&pb::RateLimitPolicy {
            name: "demo/rl".into(),
            limits: vec![
                pb::RateLimit {
                    requests: 100,
                    interval_ms: 1000,
                    ..Default::default()
                },
                pb::RateLimit {
                    requests: 2,
                    interval_ms: 1000,
                    matches: vec![pb::RouteMatch {
                        path: Some(pb::PathMatch {
                            r#type: pb::MatchType::PathPrefix as i32,
                            value: "/login".into(),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .unwrap();
        let h = HeaderMap::new();
        let view = |path: &'static str| RequestView {
            method: &Method::POST,
            path,
            query: None,
            headers: &h,
            authority: "",
            source_namespace: None,
            source_uid: None,
        };
        let k = input(&h, "a");
        let now = Instant::now();
        for _ in 0..5 {
            assert!(matches!(
                check([&p], &view("/home"), &k, now),
                Verdict::Allowed(Some(_))
            ));
        }
        let Verdict::Allowed(Some(q)) = check([&p], &view("/login"), &k, now) else {
            panic!("first login allowed")
        };
        assert_eq!(
            (q.limit, q.remaining),
            (2, 1),
            "the login limit is the tightest"
        );
        assert!(matches!(
            check([&p], &view("/login"), &k, now),
            Verdict::Allowed(_)
        ));
        let Verdict::Limited(q) = check([&p], &view("/login"), &k, now) else {
            panic!("third login limited")
        };
        let mut out = HeaderMap::new();
        headers(&q, true, &mut out);
        assert_eq!(out["retry-after"], "1");
        assert_eq!(out["x-ratelimit-remaining"], "0");
        assert_eq!(out["x-ratelimit-limit"], "2");
    }
}
