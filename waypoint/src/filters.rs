//! Gateway API route filters as pure functions on request and response parts: header modifiers, redirects, URL
//! rewrites and mirrors. Each request runs its rule's filters, then its backend's, in order.

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::route::{PathMatch, ServiceRef};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderModifier {
    #[serde(serialize_with = "pairs_str")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "pairs_str")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "names_str")]
    pub remove: Vec<HeaderName>,
}

fn pairs_str<S: serde::Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or(""))),
    )
}

fn names_str<S: serde::Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(HeaderName::as_str))
}

impl HeaderModifier {
    /// `set` replaces every value, `add` appends one, `remove` drops the header (in that order).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    #[serde(serialize_with = "status_u16")]
    pub status: StatusCode,
}

fn status_u16<S: serde::Serializer>(c: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(c.as_u16())
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Mirror {
    /// `Err(reason)`: unresolvable; the mirror is skipped.
    pub target: Result<ServiceRef, String>,
    /// 0.0..=100.0.
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
    Mirror(Mirror),
}

/// The path after a path modifier. `matched` is the rule's path match (for `ReplacePrefixMatch`); the query
/// string is kept.
pub fn modify_path(pq: &PathAndQuery, matched: &PathMatch, m: &PathModifier) -> String {
    let path = pq.path();
    let new_path = match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = match matched {
                // Stored without its trailing slash, so `rest` is empty or starts with `/`.
                PathMatch::Prefix(prefix) if path.starts_with(prefix.as_str()) => {
                    &path[prefix.len()..]
                }
                // Not a prefix match (the controller only allows prefix rewrites with prefix matches): replace all.
                _ => "",
            };
            let base = replacement.trim_end_matches('/');
            let mut joined = format!("{base}{rest}");
            if !joined.starts_with('/') {
                joined.insert(0, '/');
            }
            joined
        }
    };
    match pq.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    }
}

/// The `Location` of a redirect. `scheme`/`host`/`port` describe the request as received (`port`: the service
/// port it was addressed to). Gateway API: a changed scheme without a port uses the scheme's well-known port, and
/// the port is left out of the URL when it is the scheme's default.
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    host: &str,
    port: u16,
    pq: &PathAndQuery,
    matched: &PathMatch,
) -> String {
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let default_port = |s: &str| {
        if s.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        }
    };
    let new_port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => default_port(s),
        (None, None) => port,
    };
    let new_host = r.hostname.as_deref().unwrap_or(host);
    let path = match &r.path {
        Some(m) => modify_path(pq, matched, m),
        None => pq.as_str().to_owned(),
    };
    if new_port == default_port(new_scheme) {
        format!("{new_scheme}://{new_host}{path}")
    } else {
        format!("{new_scheme}://{new_host}:{new_port}{path}")
    }
}

/// The host of a `Host`/`:authority` value, without its port (IPv6 literals keep their brackets).
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pq(s: &str) -> PathAndQuery {
        s.parse().unwrap()
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.trim_end_matches('/').to_owned())
    }

    #[test]
    fn header_modifier_order() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.append("b", HeaderValue::from_static("1"));
        h.insert("gone", HeaderValue::from_static("x"));
        let m = HeaderModifier {
            set: vec![(HeaderName::from_static("a"), HeaderValue::from_static("2"))],
            add: vec![(HeaderName::from_static("b"), HeaderValue::from_static("2"))],
            remove: vec![HeaderName::from_static("gone")],
        };
        m.apply(&mut h);
        assert_eq!(h.get_all("a").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(h.get_all("b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(h.get("gone").is_none());
    }

    #[test]
    fn path_rewrites() {
        // (path, prefix match, modifier, expected) — the Gateway API conformance cases and edges.
        let full = |s: &str| PathModifier::ReplaceFullPath(s.into());
        let pre = |s: &str| PathModifier::ReplacePrefixMatch(s.into());
        let cases = [
            ("/prefix/one/two", "/prefix/one", pre("/one"), "/one/two"),
            ("/prefix/one/two", "/prefix/one", pre("/"), "/two"),
            ("/prefix/one/two", "/prefix/one", pre(""), "/two"),
            ("/prefix/one", "/prefix/one", pre("/"), "/"),
            ("/prefix/one/", "/prefix/one/", pre("/x/"), "/x/"),
            ("/strip/a?b=c", "/strip", pre("/"), "/a?b=c"),
            ("/a/b", "/", pre("/root"), "/root/a/b"),
            ("/anything?x=1", "/", full("/one"), "/one?x=1"),
        ];
        for (path, p, m, want) in cases {
            assert_eq!(
                modify_path(&pq(path), &prefix(p), &m),
                want,
                "{path} {p} {m:?}"
            );
        }
    }

    #[test]
    fn redirects() {
        let r = |scheme: Option<&str>, host: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(Into::into),
            hostname: host.map(Into::into),
            path: None,
            port,
            status: StatusCode::FOUND,
        };
        let any = prefix("/");
        let p = pq("/a?b=1");
        let cases = [
            (
                r(None, Some("example.org"), None),
                80,
                "http://example.org/a?b=1",
            ),
            (r(None, None, None), 8080, "http://svc:8080/a?b=1"),
            (r(Some("https"), None, None), 8080, "https://svc/a?b=1"),
            (
                r(Some("https"), None, Some(8443)),
                80,
                "https://svc:8443/a?b=1",
            ),
            (r(None, None, Some(80)), 8080, "http://svc/a?b=1"),
            (r(Some("http"), None, Some(443)), 80, "http://svc:443/a?b=1"),
        ];
        for (redirect, port, want) in cases {
            assert_eq!(
                redirect_location(&redirect, "http", "svc", port, &p, &any),
                want,
                "{redirect:?}"
            );
        }
        let with_path = Redirect {
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            ..r(None, None, None)
        };
        assert_eq!(
            redirect_location(
                &with_path,
                "http",
                "svc",
                80,
                &pq("/old/x"),
                &prefix("/old")
            ),
            "http://svc/new/x"
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("svc.ns:8080"), "svc.ns");
        assert_eq!(host_without_port("svc.ns"), "svc.ns");
        assert_eq!(host_without_port("[fd00::1]:80"), "[fd00::1]");
        assert_eq!(host_without_port("10.0.0.1:80"), "10.0.0.1");
    }
}
