//! CORS (VirtualService `corsPolicy`), with the semantics of Envoy's CORS filter.
//!
//! - A request is a CORS request when it has a non-empty `Origin`. Its origin is allowed when one of the policy's
//!   matchers matches the origin, or matches the string `*` (so an exact `*`, a `.*` regex or an empty prefix
//!   allows every origin; this is Envoy's rule). An allowed origin is echoed, never answered with `*`.
//! - A preflight is an `OPTIONS` CORS request with a non-empty `Access-Control-Request-Method`. For an allowed
//!   origin the waypoint answers it itself (200, no upstream request) with `access-control-allow-origin`,
//!   `-allow-methods`, `-allow-headers`, `-max-age` and `-allow-credentials` as configured. The requested method and
//!   headers are not checked against the lists: the browser does that with the answer. A preflight from another
//!   origin goes on to the upstream, unless `ignore_unmatched_preflights` (Istio `unmatchedPreflights: IGNORE`,
//!   Envoy `forward_not_matching_preflights: false`): then it is answered 200 without CORS headers.
//! - The response to an actual request from an allowed origin gets `access-control-allow-origin`,
//!   `-expose-headers` and `-allow-credentials` (replacing the upstream's), and `vary: origin` because the answer
//!   now depends on it (Envoy leaves `vary` alone; caches need it). Other origins' responses are left as they are.

use ambit_proto::waypoint as proto;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method};
use regex::Regex;

/// How an allowed origin is matched.
#[derive(Clone, Debug, serde::Serialize)]
pub enum OriginMatch {
    Exact(String),
    /// A string prefix (VirtualService `prefix`).
    Prefix(String),
    /// The whole origin must match.
    Regex(#[serde(serialize_with = "regex_str")] Regex),
}

fn regex_str<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn value_str<S: serde::Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match v.as_ref().and_then(|v| v.to_str().ok()) {
        Some(v) => s.serialize_some(v),
        None => s.serialize_none(),
    }
}

impl OriginMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            OriginMatch::Exact(e) => e == v,
            OriginMatch::Prefix(p) => v.starts_with(p.as_str()),
            OriginMatch::Regex(r) => r.is_match(v),
        }
    }

    fn from_proto(m: &proto::StringMatch) -> Result<Self, String> {
        match proto::MatchType::try_from(m.r#type) {
            Ok(proto::MatchType::Exact) => Ok(OriginMatch::Exact(m.value.clone())),
            Ok(proto::MatchType::PathPrefix) => Ok(OriginMatch::Prefix(m.value.clone())),
            // Anchored, so that `is_match` means the whole origin matched.
            Ok(proto::MatchType::RegularExpression) => Regex::new(&format!("^(?:{})$", m.value))
                .map(OriginMatch::Regex)
                .map_err(|e| format!("cors allow origin regex {:?}: {e}", m.value)),
            Err(_) => Err(format!(
                "cors allow origin: unknown match type {}",
                m.r#type
            )),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Cors {
    pub allow_origins: Vec<OriginMatch>,
    #[serde(serialize_with = "value_str")]
    pub allow_methods: Option<HeaderValue>,
    #[serde(serialize_with = "value_str")]
    pub allow_headers: Option<HeaderValue>,
    #[serde(serialize_with = "value_str")]
    pub expose_headers: Option<HeaderValue>,
    #[serde(serialize_with = "value_str")]
    pub max_age: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub ignore_unmatched_preflights: bool,
}

/// A comma-separated list as one header value; `None` when empty.
fn list(items: &[String], what: &str) -> Result<Option<HeaderValue>, String> {
    let items: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Ok(None);
    }
    let joined = items.join(",");
    HeaderValue::from_str(&joined)
        .map(Some)
        .map_err(|_| format!("cors {what} {joined:?} is not a valid header value"))
}

impl Cors {
    pub fn from_proto(p: &proto::CorsPolicy) -> Result<Self, String> {
        Ok(Cors {
            allow_origins: p
                .allow_origins
                .iter()
                .map(OriginMatch::from_proto)
                .collect::<Result<_, _>>()?,
            allow_methods: list(&p.allow_methods, "allow methods")?,
            allow_headers: list(&p.allow_headers, "allow headers")?,
            expose_headers: list(&p.expose_headers, "expose headers")?,
            max_age: (p.max_age_s > 0).then(|| HeaderValue::from(p.max_age_s)),
            allow_credentials: p.allow_credentials.unwrap_or(false),
            ignore_unmatched_preflights: p.ignore_unmatched_preflights,
        })
    }

    /// Whether `origin` may make cross-origin requests.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches(origin) || m.matches("*"))
    }

    /// For a preflight request: the headers of the waypoint's own 200 answer, or `None` when the request is not a
    /// preflight or goes on to the upstream. An empty map means "answer 200 with no CORS headers".
    pub fn preflight(&self, method: &Method, request_headers: &HeaderMap) -> Option<HeaderMap> {
        if method != Method::OPTIONS
            || request_headers
                .get(ACCESS_CONTROL_REQUEST_METHOD)
                .is_none_or(|v| v.is_empty())
        {
            return None;
        }
        let origin = origin(request_headers)?;
        if !self.origin_allowed(origin.to_str().ok()?) {
            return self.ignore_unmatched_preflights.then(HeaderMap::new);
        }
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        for (name, value) in [
            (ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
            (ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
            (ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        Some(h)
    }

    /// For the response to an actual (not preflight) request: adds the CORS headers when its origin is allowed.
    pub fn response_headers(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        let Some(origin) = origin(request_headers) else {
            return;
        };
        if !origin.to_str().is_ok_and(|o| self.origin_allowed(o)) {
            return;
        }
        response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            response_headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        let varies = response_headers.get_all(VARY).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
            })
        });
        if !varies {
            response_headers.append(VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// The request's `Origin`, when it has a non-empty one.
fn origin(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(ORIGIN).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: proto::MatchType, v: &str) -> proto::StringMatch {
        proto::StringMatch {
            r#type: t as i32,
            value: v.into(),
        }
    }

    fn policy() -> proto::CorsPolicy {
        proto::CorsPolicy {
            allow_origins: vec![
                m(proto::MatchType::Exact, "https://example.com"),
                m(proto::MatchType::PathPrefix, "https://app."),
                m(
                    proto::MatchType::RegularExpression,
                    r"https://[a-z]+\.corp\.test",
                ),
            ],
            allow_methods: vec!["GET".into(), " POST ".into()],
            allow_headers: vec!["x-custom".into(), "content-type".into()],
            expose_headers: vec!["x-trace".into()],
            max_age_s: 600,
            allow_credentials: Some(true),
            ignore_unmatched_preflights: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn pairs(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn origin_matching() {
        let c = Cors::from_proto(&policy()).unwrap();
        let table = [
            ("https://example.com", true),
            ("https://example.com.evil", false),
            ("http://example.com", false),
            ("https://app.anything", true),
            ("https://eng.corp.test", true),
            ("https://eng.corp.test.evil", false),
            ("xhttps://eng.corp.test", false),
            ("", false),
        ];
        for (o, want) in table {
            assert_eq!(c.origin_allowed(o), want, "{o:?}");
        }
        for any in [
            m(proto::MatchType::Exact, "*"),
            m(proto::MatchType::RegularExpression, ".*"),
            m(proto::MatchType::PathPrefix, ""),
        ] {
            let c = Cors::from_proto(&proto::CorsPolicy {
                allow_origins: vec![any.clone()],
                ..Default::default()
            })
            .unwrap();
            assert!(c.origin_allowed("https://whatever.test"), "{any:?}");
        }
        let none = Cors::from_proto(&proto::CorsPolicy::default()).unwrap();
        assert!(!none.origin_allowed("https://example.com"));
    }

    #[test]
    fn preflight_allowed() {
        let c = Cors::from_proto(&policy()).unwrap();
        let req = headers(&[
            ("origin", "https://example.com"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "x-other"),
        ]);
        let h = c.preflight(&Method::OPTIONS, &req).unwrap();
        assert_eq!(
            pairs(&h),
            vec![
                ("access-control-allow-credentials".into(), "true".into()),
                (
                    "access-control-allow-headers".into(),
                    "x-custom,content-type".into()
                ),
                ("access-control-allow-methods".into(), "GET,POST".into()),
                (
                    "access-control-allow-origin".into(),
                    "https://example.com".into()
                ),
                ("access-control-max-age".into(), "600".into()),
            ]
        );
        // Without optional settings only the origin is answered.
        let bare = Cors::from_proto(&proto::CorsPolicy {
            allow_origins: vec![m(proto::MatchType::Exact, "*")],
            ..Default::default()
        })
        .unwrap();
        let h = bare.preflight(&Method::OPTIONS, &req).unwrap();
        assert_eq!(
            pairs(&h),
            vec![(
                "access-control-allow-origin".into(),
                "https://example.com".into()
            )]
        );
    }

    #[test]
    fn not_preflights_and_unmatched() {
        let c = Cors::from_proto(&policy()).unwrap();
        let ok = [
            ("origin", "https://example.com"),
            ("access-control-request-method", "GET"),
        ];
        assert!(
            c.preflight(&Method::GET, &headers(&ok)).is_none(),
            "not OPTIONS"
        );
        let table: [&[(&str, &str)]; 3] = [
            &[("origin", "https://example.com")],
            &[("access-control-request-method", "GET")],
            &[("origin", ""), ("access-control-request-method", "GET")],
        ];
        for h in table {
            assert!(
                c.preflight(&Method::OPTIONS, &headers(h)).is_none(),
                "{h:?}"
            );
        }
        let other = headers(&[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(c.preflight(&Method::OPTIONS, &other).is_none(), "forwarded");
        let mut p = policy();
        p.ignore_unmatched_preflights = true;
        let ignore = Cors::from_proto(&p).unwrap();
        assert_eq!(
            ignore.preflight(&Method::OPTIONS, &other),
            Some(HeaderMap::new())
        );
        // Still only for preflights.
        assert!(
            ignore
                .preflight(
                    &Method::OPTIONS,
                    &headers(&[("origin", "https://evil.test")])
                )
                .is_none()
        );
    }

    #[test]
    fn actual_request_headers() {
        let c = Cors::from_proto(&policy()).unwrap();
        let req = headers(&[("origin", "https://app.one")]);
        let mut resp = headers(&[
            ("access-control-allow-origin", "*"),
            ("vary", "accept-encoding"),
            ("content-type", "text/plain"),
        ]);
        c.response_headers(&req, &mut resp);
        assert_eq!(
            pairs(&resp),
            vec![
                ("access-control-allow-credentials".into(), "true".into()),
                (
                    "access-control-allow-origin".into(),
                    "https://app.one".into()
                ),
                ("access-control-expose-headers".into(), "x-trace".into()),
                ("content-type".into(), "text/plain".into()),
                ("vary".into(), "accept-encoding".into()),
                ("vary".into(), "origin".into()),
            ]
        );
        // `vary` is not repeated.
        let mut resp = headers(&[("vary", "Accept, Origin")]);
        c.response_headers(&req, &mut resp);
        assert_eq!(resp.get_all(VARY).iter().count(), 1);

        // Not allowed, or no origin: untouched.
        for req in [
            headers(&[("origin", "https://evil.test")]),
            HeaderMap::new(),
        ] {
            let mut resp = headers(&[("content-type", "text/plain")]);
            c.response_headers(&req, &mut resp);
            assert_eq!(
                pairs(&resp),
                vec![("content-type".into(), "text/plain".into())]
            );
        }
    }

    #[test]
    fn from_proto_errors() {
        let bad = [
            (
                proto::CorsPolicy {
                    allow_origins: vec![m(proto::MatchType::RegularExpression, "(")],
                    ..Default::default()
                },
                "regex \"(\"",
            ),
            (
                proto::CorsPolicy {
                    allow_origins: vec![proto::StringMatch {
                        r#type: 9,
                        value: "x".into(),
                    }],
                    ..Default::default()
                },
                "unknown match type 9",
            ),
            (
                proto::CorsPolicy {
                    allow_headers: vec!["bad\nheader".into()],
                    ..Default::default()
                },
                "allow headers",
            ),
        ];
        for (p, want) in bad {
            let err = Cors::from_proto(&p).unwrap_err();
            assert!(err.contains(want), "{p:?}: {err}");
        }
    }
}
