//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the few kinds
//! kubectl ≥ 1.32 sends that way from its `create` generators: Namespace, ServiceAccount, ConfigMap, Secret and
//! TokenRequest (`kubectl create token`). A schema table per kind (field numbers from the `generated.proto` of
//! k8s.io/api and apimachinery) turns the message into the JSON the rest of the server works on; unknown fields
//! are skipped. Other kinds get 415, and responses are always JSON (clients accept it).

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    MapStr,
    /// `map<string, bytes>`: base64 strings in JSON.
    MapBytes,
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
    }
}

const OWNER_REF: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(11, "labels", Ty::MapStr),
    f(12, "annotations", Ty::MapStr),
    r(13, "ownerReferences", Ty::Msg(OWNER_REF)),
    r(14, "finalizers", Ty::Str),
];

const META: Field = f(1, "metadata", Ty::Msg(OBJECT_META));

const NAMESPACE: &[Field] = &[META, f(2, "spec", Ty::Msg(&[r(1, "finalizers", Ty::Str)]))];

const OBJECT_REF: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
];

const SERVICE_ACCOUNT: &[Field] = &[
    META,
    r(2, "secrets", Ty::Msg(OBJECT_REF)),
    r(3, "imagePullSecrets", Ty::Msg(&[f(1, "name", Ty::Str)])),
    f(4, "automountServiceAccountToken", Ty::Bool),
];

const CONFIG_MAP: &[Field] = &[
    META,
    f(2, "data", Ty::MapStr),
    f(3, "binaryData", Ty::MapBytes),
    f(4, "immutable", Ty::Bool),
];

const SECRET: &[Field] = &[
    META,
    f(2, "data", Ty::MapBytes),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::MapStr),
    f(5, "immutable", Ty::Bool),
];

const BOUND_REF: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "apiVersion", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
];

const TOKEN_REQUEST: &[Field] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            r(1, "audiences", Ty::Str),
            f(3, "boundObjectRef", Ty::Msg(BOUND_REF)),
            f(4, "expirationSeconds", Ty::Int),
        ]),
    ),
];

fn bad(why: &str) -> ApiError {
    ApiError::BadRequest(format!("invalid protobuf body: {why}"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(bad("truncated field"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// The next `(field number, payload)`.
    fn next(&mut self) -> Result<Option<(u64, Payload<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let payload = match key & 7 {
            0 => Payload::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Payload::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
                Payload::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Payload::Fixed
            }
            _ => return Err(bad("unsupported wire type")),
        };
        Ok(Some((key >> 3, payload)))
    }
}

enum Payload<'a> {
    Varint(u64),
    /// A 32- or 64-bit value: no field of the tables has one, so it is skipped.
    Fixed,
    Bytes(&'a [u8]),
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string is not UTF-8"))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut rd = Reader { buf: b };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((num, p)) = rd.next()? {
        if let Payload::Bytes(b) = p {
            match num {
                1 => k = text(b)?,
                2 if bytes_value => {
                    v = Value::String(base64::engine::general_purpose::STANDARD.encode(b))
                }
                2 => v = Value::String(text(b)?),
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn decode_message(
    buf: &[u8],
    schema: &[Field],
    depth: usize,
) -> Result<Map<String, Value>, ApiError> {
    if depth > 16 {
        return Err(bad("nested too deeply"));
    }
    let mut out = Map::new();
    let mut rd = Reader { buf };
    while let Some((num, payload)) = rd.next()? {
        let Some(field) = schema.iter().find(|f| f.num == num) else {
            continue;
        };
        let value = match (field.ty, payload) {
            (Ty::Str, Payload::Bytes(b)) => Value::String(text(b)?),
            (Ty::Int, Payload::Varint(v)) => Value::from(v as i64),
            (Ty::Bool, Payload::Varint(v)) => Value::Bool(v != 0),
            (Ty::Msg(s), Payload::Bytes(b)) => Value::Object(decode_message(b, s, depth + 1)?),
            (Ty::MapStr | Ty::MapBytes, Payload::Bytes(b)) => {
                let (k, v) = map_entry(b, matches!(field.ty, Ty::MapBytes))?;
                let m = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
            _ => {
                return Err(bad(&format!(
                    "field {} has the wrong wire type",
                    field.name
                )));
            }
        };
        if field.repeated {
            let list = out
                .entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(l) = list.as_array_mut() {
                l.push(value);
            }
        } else {
            out.insert(field.name.to_owned(), value);
        }
    }
    Ok(out)
}

const MAGIC: &[u8] = b"k8s\0";

/// The JSON form of a protobuf request body, or 415 for a kind this server cannot decode.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s envelope"))?;
    let mut rd = Reader { buf: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, p)) = rd.next()? {
        match (num, p) {
            (1, Payload::Bytes(tm)) => {
                let mut t = Reader { buf: tm };
                while let Some((n, p)) = t.next()? {
                    match (n, p) {
                        (1, Payload::Bytes(b)) => api_version = text(b)?,
                        (2, Payload::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Payload::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "protobuf bodies of {api_version} {kind} are not supported; send application/json"
            )));
        }
    };
    let mut obj = decode_message(raw, schema, 0)?;
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(out: &mut Vec<u8>, num: u8, bytes: &[u8]) {
        out.push(num << 3 | 2);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(&mut tm, 1, api_version.as_bytes());
        field(&mut tm, 2, kind.as_bytes());
        let mut out = MAGIC.to_vec();
        field(&mut out, 1, &tm);
        field(&mut out, 2, raw);
        field(&mut out, 4, b"application/vnd.kubernetes.protobuf");
        out
    }

    #[test]
    fn secret_with_labels_and_bytes_decodes_to_json() {
        let mut label = Vec::new();
        field(&mut label, 1, b"app");
        field(&mut label, 2, b"web");
        let mut meta = Vec::new();
        field(&mut meta, 1, b"creds");
        field(&mut meta, 11, &label);
        field(&mut meta, 14, b"a/b");
        let mut data = Vec::new();
        field(&mut data, 1, b"k");
        field(&mut data, 2, b"\x00\xff");
        let mut raw = Vec::new();
        field(&mut raw, 1, &meta);
        field(&mut raw, 2, &data);
        field(&mut raw, 3, b"Opaque");
        raw.extend_from_slice(&[5 << 3, 1]); // immutable: true
        raw.extend_from_slice(&[0x98, 0x06, 0x80, 0x01]); // an unknown varint field (99) is skipped
        let v = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": true,
                   "metadata": {"name": "creds", "labels": {"app": "web"}, "finalizers": ["a/b"]},
                   "data": {"k": "AP8="}})
        );
    }

    #[test]
    fn unsupported_kinds_and_garbage_are_refused() {
        assert_eq!(
            decode(&envelope("apps/v1", "Deployment", &[]))
                .unwrap_err()
                .code(),
            415
        );
        assert_eq!(decode(b"nope").unwrap_err().code(), 400);
        let mut truncated = envelope("v1", "ConfigMap", &[]);
        truncated.extend_from_slice(&[0x12, 0x7f, 0x01]);
        assert_eq!(decode(&truncated).unwrap_err().code(), 400);
    }
}
