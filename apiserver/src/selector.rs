//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors (`=`, `==`, `!=` on a
//! dotted path such as `metadata.name` or `spec.nodeName`), parsed from the query string and matched against
//! JSON objects.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn bad(sel: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement: {why} (in selector {sel:?})"
    ))
}

impl LabelSelector {
    pub fn parse(sel: &str) -> Result<Self, ApiError> {
        let chars: Vec<char> = sel.chars().collect();
        let mut i = 0;
        let mut reqs = Vec::new();
        let skip_ws = |i: &mut usize| {
            while *i < chars.len() && chars[*i].is_whitespace() {
                *i += 1;
            }
        };
        let word = |i: &mut usize| -> String {
            let start = *i;
            while *i < chars.len() && is_key_char(chars[*i]) {
                *i += 1;
            }
            chars[start..*i].iter().collect()
        };
        loop {
            skip_ws(&mut i);
            if i >= chars.len() {
                break;
            }
            let negated = chars[i] == '!';
            if negated {
                i += 1;
                skip_ws(&mut i);
            }
            let key = word(&mut i);
            if key.is_empty() {
                return Err(bad(sel, "expected a label key"));
            }
            skip_ws(&mut i);
            let rest: String = chars[i..].iter().collect();
            let req = if negated {
                LabelReq::NotExists(key)
            } else if i >= chars.len() || chars[i] == ',' {
                LabelReq::Exists(key)
            } else if rest.starts_with("==") || rest.starts_with("!=") || rest.starts_with('=') {
                let op_len = if rest.starts_with('=') && !rest.starts_with("==") {
                    1
                } else {
                    2
                };
                let not = rest.starts_with("!=");
                i += op_len;
                skip_ws(&mut i);
                let value = word(&mut i);
                if not {
                    LabelReq::NotEq(key, value)
                } else {
                    LabelReq::Eq(key, value)
                }
            } else if let Some(op) = ["notin", "in"].into_iter().find(|op| rest.starts_with(op)) {
                i += op.len();
                skip_ws(&mut i);
                if chars.get(i) != Some(&'(') {
                    return Err(bad(sel, "expected '(' after in/notin"));
                }
                i += 1;
                let mut values = Vec::new();
                loop {
                    skip_ws(&mut i);
                    let v = word(&mut i);
                    skip_ws(&mut i);
                    match chars.get(i) {
                        Some(',') => {
                            values.push(v);
                            i += 1;
                        }
                        Some(')') => {
                            if !v.is_empty() || !values.is_empty() {
                                values.push(v);
                            }
                            i += 1;
                            break;
                        }
                        _ => return Err(bad(sel, "expected ',' or ')' in a value set")),
                    }
                }
                if op == "in" {
                    LabelReq::In(key, values)
                } else {
                    LabelReq::NotIn(key, values)
                }
            } else {
                return Err(bad(sel, "expected an operator (=, ==, !=, in, notin)"));
            };
            reqs.push(req);
            skip_ws(&mut i);
            match chars.get(i) {
                None => break,
                Some(',') => i += 1,
                Some(_) => return Err(bad(sel, "expected ','")),
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector`. Any dotted path of the object can be selected (the real server allows only a few
/// per kind); a missing field compares as the empty string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub fn parse(sel: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, negate, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, false, v)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector {sel:?}: {term:?} has no operator"
                )));
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector {sel:?}"
                )));
            }
            reqs.push((path, negate, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, negate, want)| {
            let mut cur = Some(obj);
            for p in path {
                cur = cur.and_then(|c| c.get(p));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) != *negate
        })
    }

    /// The name a `metadata.name=` term pins, for single-object watches.
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, negate, _)| !negate && p.len() == 2 && p[0] == "metadata" && p[1] == "name")
            .map(|(_, _, v)| v.as_str())
    }
}

/// Both selectors of a list or watch request.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "demo", "labels": labels},
               "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selector_operators() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app in (db)", false),
            ("app notin (db,cache)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("tier", true),
            ("missing", false),
            ("!missing", true),
            ("!tier", false),
            ("app=web,tier=front", true),
            ("app=web, tier=back", false),
            ("app in (web),!missing,tier", true),
            ("", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for sel in ["app in web", "app in (a", "=x", "app ~ x", "app=a b"] {
            let e = LabelSelector::parse(sel).unwrap_err();
            assert_eq!(e.code(), 400, "{sel}");
        }
    }

    #[test]
    fn field_selectors_on_name_namespace_and_spec() {
        let p = pod(json!({}));
        let cases = [
            ("metadata.name=p", true),
            ("metadata.name==q", false),
            ("metadata.namespace=demo,spec.nodeName=node-1", true),
            ("spec.nodeName!=node-1", false),
            ("spec.nodeName=node-2", false),
            ("status.phase=Running", true),
            ("spec.missing=", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(&p),
                want,
                "{sel}"
            );
        }
        assert_eq!(
            FieldSelector::parse("metadata.name=p").unwrap().name(),
            Some("p")
        );
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
