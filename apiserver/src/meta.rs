//! Object metadata rules: names, uids, timestamps, `generation`, labels, and what a write may not change.

use serde_json::{Map, Value};

/// RFC 3339 in UTC with seconds, as `creationTimestamp` is written.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// A random version-4 UUID.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn random_bytes(buf: &mut [u8]) {
    // aws-lc's RNG only fails if the OS entropy source is broken; fall back to time-seeded bytes then.
    if aws_lc_rs::rand::fill(buf).is_err() {
        let seed = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
}

/// The 5-character suffix `generateName` gets (consonants and digits, as the real server uses).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    random_bytes(&mut b);
    b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect()
}

/// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, starting and ending alphanumeric, at most 253.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() {
        Err("metadata.name: Required value: name or generateName is required".into())
    } else if name.len() > 253 || !ok_chars || !ends_ok {
        Err(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    } else {
        Ok(())
    }
}

fn validate_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())))
}

/// Labels and annotations must be string maps; label values follow the label syntax.
pub fn validate_metadata(meta: &Map<String, Value>) -> Result<(), String> {
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let Some(v) = v.as_str() else {
                        return Err(format!(
                            "metadata.{field}.{k}: Invalid value: must be a string"
                        ));
                    };
                    if k.is_empty() || k.len() > 317 {
                        return Err(format!(
                            "metadata.{field}: Invalid value: {k:?}: invalid key"
                        ));
                    }
                    if field == "labels" && !validate_label_value(v) {
                        return Err(format!(
                            "metadata.labels: Invalid value: {v:?}: a valid label must be 63 characters or \
                             less and consist of alphanumerics, '-', '_' or '.'"
                        ));
                    }
                }
            }
            Some(_) => return Err(format!("metadata.{field}: Invalid value: must be a map")),
        }
    }
    Ok(())
}

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or("")
}

pub fn uid(obj: &Value) -> &str {
    meta_str(obj, "uid").unwrap_or("")
}

pub fn resource_version(obj: &Value) -> &str {
    meta_str(obj, "resourceVersion").unwrap_or("")
}

/// The metadata map of `obj`, created if missing; `None` only if `obj` is not a JSON object.
pub fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let m = obj
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    meta(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|v| !v.is_null()))
}

/// `(uid, ...)` of each `ownerReferences` entry.
pub fn owner_uids(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything but `metadata` and `status`: what bumps `metadata.generation` when it changes.
pub fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The object without volatile bookkeeping: two writes that compare equal here are a no-op.
pub fn comparable(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf.iter_mut() {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_dns_subdomain_rules() {
        for ok in ["a", "web-1", "gateways.gateway.networking.k8s.io"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", &"a".repeat(254)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uids_are_v4_and_suffixes_are_five_chars() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
        assert_eq!(name_suffix().len(), 5);
        assert_eq!(now_rfc3339().len(), 20);
    }

    #[test]
    fn labels_must_be_strings_with_label_syntax() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert!(validate_metadata(&m(json!({"labels": {"a": "b"}}))).is_ok());
        assert!(validate_metadata(&m(json!({"labels": {"a": 1}}))).is_err());
        assert!(validate_metadata(&m(json!({"labels": {"a": "b c"}}))).is_err());
        assert!(validate_metadata(&m(json!({"annotations": {"a": "b c"}}))).is_ok());
        assert!(validate_metadata(&m(json!({"labels": []}))).is_err());
    }
}
