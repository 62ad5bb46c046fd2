//! Finding tokens: each rule's headers (with their prefix), query parameters and cookies.

use std::borrow::Cow;

use http::HeaderMap;

use super::rule::{JwtRule, TokenLocation};

/// A token at one of a rule's locations.
#[derive(Debug)]
pub(super) struct Found {
    pub token: String,
    /// Index into the rule's `locations`.
    pub location: usize,
}

/// The tokens at each rule's locations (same order as `rules`). A rule's list has one entry per location that
/// holds a token; an empty list means the rule found none.
pub(super) fn extract(
    rules: &[&JwtRule],
    headers: &HeaderMap,
    query: Option<&str>,
) -> Vec<Vec<Found>> {
    rules
        .iter()
        .map(|rule| {
            rule.locations
                .iter()
                .enumerate()
                .filter_map(|(location, loc)| {
                    let token = match loc {
                        TokenLocation::Header { name, prefix } => {
                            from_header(headers, name, prefix)
                        }
                        TokenLocation::Param(param) => query.and_then(|q| from_query(q, param)),
                        TokenLocation::Cookie(cookie) => from_cookies(headers, cookie),
                    }?;
                    Some(Found { token, location })
                })
                .collect()
        })
        .collect()
}

/// The first value of `name` that starts with `prefix`, without it (and without surrounding spaces). A value
/// with another prefix (`Authorization: Basic …`) holds no token for this location.
fn from_header(headers: &HeaderMap, name: &http::HeaderName, prefix: &str) -> Option<String> {
    headers.get_all(name).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        let token = value.strip_prefix(prefix)?.trim();
        (!token.is_empty()).then(|| token.to_string())
    })
}

/// The first non-empty value of query parameter `param`, percent-decoded (`+` is a space).
fn from_query(query: &str, param: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if percent_decode(name).as_ref() != param {
            return None;
        }
        let value = percent_decode(value);
        (!value.is_empty()).then(|| value.into_owned())
    })
}

/// The value of cookie `cookie` in any `Cookie` header (surrounding double quotes removed).
fn from_cookies(headers: &HeaderMap, cookie: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .find_map(|value| {
            let value = value.to_str().ok()?;
            value.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                if name.trim() != cookie {
                    return None;
                }
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                (!value.is_empty()).then(|| value.to_string())
            })
        })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(decoded) => {
                        out.push(decoded);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}
