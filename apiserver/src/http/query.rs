//! The query string of an API request, percent-decoded.

use std::collections::HashMap;

use crate::error::ApiError;

#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, String>);

fn decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("bad percent-encoding in query {s:?}"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest("the query string is not UTF-8".into()))
}

impl Query {
    pub fn parse(q: &str) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode(k)?, decode(v)?);
        }
        Ok(Query(map))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// `true`, `1` (and an empty value, as in `?watch`) are true.
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | "True" | ""))
    }

    pub fn number(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("{k}: invalid value {v:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_selectors_and_flags() {
        let q = Query::parse("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=5&x").unwrap();
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch") && q.flag("x") && !q.flag("force"));
        assert_eq!(q.number("limit").unwrap(), Some(5));
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("limit=x").unwrap().number("limit").is_err());
    }
}
