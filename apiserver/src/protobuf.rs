//! Kubernetes' protobuf encoding of request bodies, decoded to JSON.
//!
//! kubectl's generator commands (`create namespace`, `create configmap`,
//! `create deployment`, `run`, ...) send `application/vnd.kubernetes.protobuf`:
//! the magic `k8s\0`, then a `runtime.Unknown` holding the type and the
//! object's own encoding. The field numbers and types of each message are
//! in `wire_schema.txt` (transcribed from the published .proto files);
//! a field k3rs does not know is refused, never dropped.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::status::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Type {
    String,
    Bool,
    Int32,
    Int64,
    Bytes,
    MapString,
    MapBytes,
    MapQuantity,
    Message(String),
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    ty: Type,
    repeated: bool,
}

type Schemas = HashMap<String, HashMap<u64, Field>>;

fn parse_type(t: &str) -> Type {
    match t {
        "string" => Type::String,
        "bool" => Type::Bool,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        "bytes" => Type::Bytes,
        "map<string,string>" => Type::MapString,
        "map<string,bytes>" => Type::MapBytes,
        "map<string,Quantity>" => Type::MapQuantity,
        other => Type::Message(other.to_string()),
    }
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut all: Schemas = HashMap::new();
        let mut current: Option<String> = None;
        for line in include_str!("wire_schema.txt").lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix("message ") {
                current = Some(name.trim().to_string());
                all.entry(name.trim().to_string()).or_default();
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(num), Some(name), Some(first)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (repeated, ty) = if first == "repeated" {
                (true, parts.next().unwrap_or("string"))
            } else {
                (false, first)
            };
            if let (Some(msg), Ok(num)) = (&current, num.parse::<u64>()) {
                all.get_mut(msg).expect("inserted above").insert(
                    num,
                    Field {
                        name: name.to_string(),
                        ty: parse_type(ty),
                        repeated,
                    },
                );
            }
        }
        all
    })
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!(
        "the protobuf body cannot be read: {}",
        message.into()
    ))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A field's value by wire type; Kubernetes sends no fixed-width fields,
/// so those are only skipped over.
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> ApiResult<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> ApiResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| bad("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> ApiResult<Option<(u64, Wire<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            w => return Err(bad(format!("wire type {w} is not used by Kubernetes"))),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn string(bytes: &[u8]) -> ApiResult<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string is not UTF-8"))
}

/// A map entry (key 1, value 2).
fn entry(bytes: &[u8]) -> ApiResult<(String, &[u8])> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = (String::new(), &[][..]);
    while let Some((num, wire)) = r.next()? {
        match (num, wire) {
            (1, Wire::Bytes(b)) => key = string(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => return Err(bad("a map entry has an unexpected field")),
        }
    }
    Ok((key, value))
}

/// The JSON of the well-known messages that have a JSON form of their own.
fn special(name: &str, bytes: &[u8]) -> ApiResult<Option<Value>> {
    let mut r = Reader::new(bytes);
    let mut fields: HashMap<u64, Wire> = HashMap::new();
    if matches!(
        name,
        "Time" | "MicroTime" | "IntOrString" | "Quantity" | "RawExtension" | "FieldsV1"
    ) {
        while let Some((num, wire)) = r.next()? {
            fields.insert(num, wire);
        }
    }
    let int = |f: Option<&Wire>| match f {
        Some(Wire::Varint(v)) => *v as i64,
        _ => 0,
    };
    let text = |f: Option<&Wire>| -> ApiResult<String> {
        match f {
            Some(Wire::Bytes(b)) => string(b),
            _ => Ok(String::new()),
        }
    };
    Ok(Some(match name {
        // A zero time is sent as an empty message; in JSON it is absent.
        "Time" | "MicroTime" if bytes.is_empty() => Value::Null,
        "Time" => json!(crate::objects::rfc3339(int(fields.get(&1)))),
        "MicroTime" => {
            let t = crate::objects::rfc3339(int(fields.get(&1)));
            json!(format!(
                "{}.{:06}Z",
                t.trim_end_matches('Z'),
                int(fields.get(&2)) / 1000
            ))
        }
        "IntOrString" => {
            if int(fields.get(&1)) == 1 {
                json!(text(fields.get(&3))?)
            } else {
                json!(int(fields.get(&2)) as i32)
            }
        }
        "Quantity" => json!(text(fields.get(&1))?),
        "RawExtension" | "FieldsV1" => match fields.get(&1) {
            Some(Wire::Bytes(b)) => {
                serde_json::from_slice(b).map_err(|_| bad(format!("{name} holds no JSON")))?
            }
            _ => Value::Null,
        },
        _ => return Ok(None),
    }))
}

fn message(name: &str, bytes: &[u8], depth: usize) -> ApiResult<Value> {
    if depth > 64 {
        return Err(bad("nested too deeply"));
    }
    if let Some(v) = special(name, bytes)? {
        return Ok(v);
    }
    let schema = schemas().get(name).ok_or_else(|| {
        ApiError::unsupported_media(format!(
            "k3rs cannot read {name} from protobuf yet; send JSON"
        ))
    })?;
    let mut out = Map::new();
    let mut r = Reader::new(bytes);
    while let Some((num, wire)) = r.next()? {
        let field = schema.get(&num).ok_or_else(|| {
            ApiError::unsupported_media(format!(
                "field {num} of {name} is not known to k3rs's protobuf reader; send JSON"
            ))
        })?;
        let value = match (&field.ty, wire) {
            (Type::String, Wire::Bytes(b)) => json!(string(b)?),
            (Type::Bytes, Wire::Bytes(b)) => {
                json!(base64::engine::general_purpose::STANDARD.encode(b))
            }
            (Type::Bool, Wire::Varint(v)) => json!(v != 0),
            (Type::Int32, Wire::Varint(v)) => json!(v as i64 as i32),
            (Type::Int64, Wire::Varint(v)) => json!(v as i64),
            (Type::MapString | Type::MapBytes | Type::MapQuantity, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                let v = match field.ty {
                    Type::MapString => json!(string(v)?),
                    Type::MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(v)),
                    _ => message("Quantity", v, depth + 1)?,
                };
                let map = out.entry(field.name.clone()).or_insert_with(|| json!({}));
                map[k] = v;
                continue;
            }
            (Type::Message(m), Wire::Bytes(b)) => message(m, b, depth + 1)?,
            // Packed repeated varints (not used by Kubernetes' proto2, but valid).
            (Type::Int32 | Type::Int64, Wire::Bytes(b)) if field.repeated => {
                let mut inner = Reader::new(b);
                let arr = out.entry(field.name.clone()).or_insert_with(|| json!([]));
                while inner.pos < b.len() {
                    arr.as_array_mut()
                        .expect("an array")
                        .push(json!(inner.varint()? as i64));
                }
                continue;
            }
            _ => {
                return Err(bad(format!(
                    "field {} of {name} has an unexpected wire type",
                    field.name
                )));
            }
        };
        // Go's protobuf sends every non-pointer field, zero or not; its JSON
        // leaves the empty ones out. Empty strings, false, null and empty
        // objects are dropped here (numbers stay: a zero may be meant).
        let empty = matches!(&value, Value::Null | Value::Bool(false))
            || value.as_str() == Some("")
            || value.as_object().is_some_and(Map::is_empty);
        if empty && !field.repeated {
            continue;
        }
        if field.name == "*" {
            // An embedded struct: its fields are the parent's in JSON.
            if let Value::Object(inner) = value {
                out.extend(inner);
            }
            continue;
        }
        if field.repeated {
            out.entry(field.name.clone())
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("an array")
                .push(value);
        } else {
            out.insert(field.name.clone(), value);
        }
    }
    Ok(Value::Object(out))
}

/// The JSON object a `application/vnd.kubernetes.protobuf` body holds.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with Kubernetes' magic bytes"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, wire)) = r.next()? {
        match (num, wire) {
            (1, Wire::Bytes(b)) => {
                let mut t = Reader::new(b);
                while let Some((n, w)) = t.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(v)) => api_version = string(v)?,
                        (2, Wire::Bytes(v)) => kind = string(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3 | 4, Wire::Bytes(b)) if !b.is_empty() => {
                return Err(ApiError::unsupported_media(
                    "compressed or nested protobuf bodies are not read by k3rs; send JSON",
                ));
            }
            _ => {}
        }
    }
    if kind.is_empty() {
        return Err(bad("the envelope names no kind"));
    }
    let mut obj = message(&kind, raw, 0)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_configmap_decodes() {
        let meta = [field(1, b"settings"), field(3, b"default")].concat();
        let entry = [field(1, b"color"), field(2, b"blue")].concat();
        let cm = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"}, "data": {"color": "blue"}})
        );
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
    }
}

/// Removes the JSON fields of `obj` (a `kind` k3rs serves) that its
/// schema does not have, as kube-apiserver's decoder drops them, and names
/// them as dotted paths (`spec.replica`): what `fieldValidation=Warn`
/// reports and `Strict` refuses. Parts whose message the table lacks are
/// kept as they are.
pub fn prune_unknown_fields(kind: &str, obj: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    let Value::Object(m) = obj else {
        return out;
    };
    // The type fields are not the kind's message's own: set them aside.
    let type_meta: Vec<(String, Value)> = ["apiVersion", "kind"]
        .into_iter()
        .filter_map(|k| m.remove_entry(k))
        .collect();
    prune(kind, obj, "", &mut out, 0);
    if let Value::Object(m) = obj {
        m.extend(type_meta);
    }
    out
}

/// Each message's fields by JSON name, with embedded (`*`) messages'
/// fields merged in; built once.
fn json_fields(name: &str) -> Option<&'static HashMap<String, Field>> {
    static FLAT: OnceLock<HashMap<String, HashMap<String, Field>>> = OnceLock::new();
    fn flatten(name: &str, depth: usize, out: &mut HashMap<String, Field>) {
        for f in schemas().get(name).into_iter().flat_map(|s| s.values()) {
            match (&f.ty, f.name.as_str()) {
                (Type::Message(m), "*") if depth < 8 => flatten(m, depth + 1, out),
                _ => {
                    out.insert(f.name.clone(), f.clone());
                }
            }
        }
    }
    FLAT.get_or_init(|| {
        schemas()
            .keys()
            .map(|name| {
                let mut fields = HashMap::new();
                flatten(name, 0, &mut fields);
                (name.clone(), fields)
            })
            .collect()
    })
    .get(name)
}

fn prune(message: &str, value: &mut Value, path: &str, out: &mut Vec<String>, depth: usize) {
    if depth > 32
        || matches!(
            message,
            "Time" | "MicroTime" | "IntOrString" | "Quantity" | "RawExtension" | "FieldsV1"
        )
    {
        return;
    }
    let (Value::Object(m), Some(fields)) = (value, json_fields(message)) else {
        return;
    };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    m.retain(|k, _| {
        let known = fields.contains_key(k);
        if !known {
            out.push(join(k));
        }
        known
    });
    for (k, v) in m.iter_mut() {
        prune_field(&fields[k], v, &join(k), out, depth);
    }
}

/// Prunes inside one known field's value, when it holds messages.
fn prune_field(field: &Field, value: &mut Value, here: &str, out: &mut Vec<String>, depth: usize) {
    let Type::Message(inner) = &field.ty else {
        return;
    };
    match (field.repeated, value) {
        (true, Value::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                prune(inner, item, &format!("{here}[{i}]"), out, depth + 1);
            }
        }
        (false, v) => prune(inner, v, here, out, depth + 1),
        _ => {}
    }
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn unknown_fields_are_dropped_and_named_by_path() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labelz": {}},
                       "spec": {"replica": 1, "template": {"spec": {"containers": [{"name": "a", "image": "b", "imagePolicy": "x"}]}}}});
        let mut found = prune_unknown_fields("Deployment", &mut d);
        found.sort();
        assert_eq!(
            found,
            [
                "metadata.labelz",
                "spec.replica",
                "spec.template.spec.containers[0].imagePolicy"
            ]
        );
        assert_eq!(
            d,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                   "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "b"}]}}}})
        );
        let mut probe = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "b",
                           "livenessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 5},
                           "resources": {"limits": {"cpu": "1"}}}],
                           "volumes": [{"name": "v", "configMap": {"name": "c"}}]}});
        let kept = probe.clone();
        assert_eq!(
            prune_unknown_fields("Pod", &mut probe),
            Vec::<String>::new()
        );
        assert_eq!(probe, kept);
    }
}

/// How a list merges in a strategic merge patch, where kube's API types say
/// so: `(message, field) → merge key` (strategy `merge`).
const PATCH_MERGE_KEYS: &[(&str, &str, &str)] = &[
    ("PodSpec", "containers", "name"),
    ("PodSpec", "initContainers", "name"),
    ("PodSpec", "ephemeralContainers", "name"),
    ("PodSpec", "volumes", "name"),
    ("PodSpec", "imagePullSecrets", "name"),
    ("Container", "env", "name"),
    ("Container", "ports", "containerPort"),
    ("Container", "volumeMounts", "mountPath"),
    ("Container", "volumeDevices", "devicePath"),
    ("ServiceSpec", "ports", "port"),
    ("ObjectMeta", "ownerReferences", "uid"),
    ("PodStatus", "conditions", "type"),
    ("NodeStatus", "conditions", "type"),
    ("NodeStatus", "addresses", "type"),
    ("DeploymentStatus", "conditions", "type"),
    ("ReplicaSetStatus", "conditions", "type"),
];

/// The OpenAPI v3 schema of a field's value.
fn openapi_type(ty: &Type) -> Value {
    match ty {
        Type::String => json!({"type": "string"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Int32 => json!({"type": "integer", "format": "int32"}),
        Type::Int64 => json!({"type": "integer", "format": "int64"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::MapString => json!({"type": "object", "additionalProperties": {"type": "string"}}),
        Type::MapBytes => {
            json!({"type": "object", "additionalProperties": {"type": "string", "format": "byte"}})
        }
        Type::MapQuantity => {
            json!({"type": "object", "additionalProperties": {"$ref": schema_ref("Quantity")}})
        }
        Type::Message(m) => match m.as_str() {
            "Time" | "MicroTime" => json!({"type": "string", "format": "date-time"}),
            "RawExtension" | "FieldsV1" => json!({"type": "object"}),
            _ => json!({"$ref": schema_ref(m)}),
        },
    }
}

fn schema_ref(message: &str) -> String {
    format!("#/components/schemas/{}", openapi_name(message))
}

/// A message's name among the OpenAPI components.
pub fn openapi_name(message: &str) -> String {
    format!("io.k3rs.{message}")
}

/// Every message of the wire table as an OpenAPI v3 schema (field names and
/// types, the merge keys strategic merge patch uses; no descriptions), for
/// `kubectl explain` and clients that read schemas.
pub fn openapi_schemas() -> Map<String, Value> {
    let mut out = Map::new();
    for name in schemas().keys() {
        let schema = match name.as_str() {
            "IntOrString" | "Quantity" => json!({"x-kubernetes-int-or-string": true}),
            "Time" | "MicroTime" => json!({"type": "string", "format": "date-time"}),
            "RawExtension" | "FieldsV1" => {
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
            }
            _ => {
                let mut properties = Map::new();
                let mut fields: Vec<&Field> = json_fields(name)
                    .into_iter()
                    .flat_map(|f| f.values())
                    .collect();
                fields.sort_by(|a, b| a.name.cmp(&b.name));
                for f in fields {
                    let mut prop = openapi_type(&f.ty);
                    if f.repeated {
                        prop = json!({"type": "array", "items": prop});
                        if let Some((_, _, key)) = PATCH_MERGE_KEYS
                            .iter()
                            .find(|(m, field, _)| *m == name && *field == f.name)
                        {
                            prop["x-kubernetes-patch-merge-key"] = json!(key);
                            prop["x-kubernetes-patch-strategy"] = json!("merge");
                        }
                    }
                    properties.insert(f.name.clone(), prop);
                }
                json!({"type": "object", "properties": properties})
            }
        };
        out.insert(openapi_name(name), schema);
    }
    out
}
