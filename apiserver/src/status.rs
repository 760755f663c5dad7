//! Kubernetes `Status` errors: every non-2xx answer is one.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An API error, rendered as a `Status` object with its HTTP code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `StatusDetails` of an error about one object of `resource`
/// (`pods`, `deployments.apps`): kube names the group apart.
fn details(resource: &str, name: &str) -> Value {
    match resource.split_once('.') {
        Some((plural, group)) => json!({"name": name, "group": group, "kind": plural}),
        None => json!({"name": name, "kind": resource}),
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// `resource` as `Resource::qualified` names it (`deployments.apps`).
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details = Some(details(resource, name));
        e
    }

    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 403 about one object of `resource` (`Resource::qualified`'s form):
    /// `{resource} "{name}" is forbidden: {reason}`.
    pub fn forbidden(resource: &str, name: &str, reason: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            403,
            "Forbidden",
            format!("{resource} \"{name}\" is forbidden: {reason}"),
        );
        e.details = Some(details(resource, name));
        e
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
        e.details = Some(details(resource, name));
        e
    }

    pub fn conflict(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(details(resource, name));
        e
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// A server-side apply that would take fields other managers set:
    /// 409 with one `FieldManagerConflict` cause per field.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        let mut e = Self::new(409, "Conflict", message);
        e.details = Some(json!({"causes": causes}));
        e
    }

    /// 413, for a request whose size or count of parts is over a limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    /// 504, for a request that did not finish in time (kube's wording).
    pub fn timeout() -> Self {
        Self::new(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
        )
    }

    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 422 with one `FieldValueInvalid` cause per `(field, message)`;
    /// `kind` may carry its group (`PatchOptions.meta.k8s.io`).
    pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let causes = causes
            .into_iter()
            .map(|(field, message)| ("FieldValueInvalid", field, message))
            .collect();
        Self::invalid_fields("", kind, name, causes)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object as kube-apiserver writes it: its field order
    /// (`kind`, `apiVersion`, `metadata`, `status`, `message`, `reason`,
    /// `details`, `code`) and a trailing newline; clients compare bodies.
    pub fn to_status_json(&self) -> String {
        let status = Status {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.details.as_ref().map(ordered_details),
            code: self.code,
        };
        let mut body = serde_json::to_string(&status).expect("a Status serializes");
        body.push('\n');
        body
    }
}

/// `metav1.Status` with its fields in kube's order.
#[derive(serde::Serialize)]
struct Status<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Ordered>,
    code: u16,
}

#[derive(serde::Serialize)]
struct Empty {}

/// JSON whose object keys serialize in a chosen order (serde_json's own
/// maps sort them).
enum Ordered {
    Plain(Value),
    Map(Vec<(String, Ordered)>),
    List(Vec<Ordered>),
}

impl serde::Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Ordered::Plain(v) => v.serialize(s),
            Ordered::Map(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Ordered::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

/// Keys of `obj` in `order` first, then any others as they come.
fn in_order(obj: &serde_json::Map<String, Value>, order: &[&str]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = order
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    out.extend(
        obj.iter()
            .filter(|(k, _)| !order.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// `StatusDetails` in kube's order (`name`, `group`, `kind`, `uid`,
/// `causes`, `retryAfterSeconds`), each cause `reason`, `message`, `field`.
fn ordered_details(details: &Value) -> Ordered {
    let Some(obj) = details.as_object() else {
        return Ordered::Plain(details.clone());
    };
    let order = [
        "name",
        "group",
        "kind",
        "uid",
        "causes",
        "retryAfterSeconds",
    ];
    let fields = in_order(obj, &order)
        .into_iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v) {
                ("causes", Value::Array(causes)) => Ordered::List(
                    causes
                        .into_iter()
                        .map(|c| match c {
                            Value::Object(c) => Ordered::Map(
                                in_order(&c, &["reason", "message", "field"])
                                    .into_iter()
                                    .map(|(k, v)| (k, Ordered::Plain(v)))
                                    .collect(),
                            ),
                            other => Ordered::Plain(other),
                        })
                        .collect(),
                ),
                (_, v) => Ordered::Plain(v),
            };
            (k, v)
        })
        .collect();
    Ordered::Map(fields)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = http::StatusCode::from_u16(self.code)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            self.to_status_json(),
        )
            .into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::OutOfRange if s.message().contains("compacted") => {
                ApiError::expired(format!(
                    "The resourceVersion for the provided list is too old: {}",
                    s.message()
                ))
            }
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                ApiError::unavailable(format!("the datastore is unavailable: {}", s.message()))
            }
            _ => ApiError::internal(format!("datastore: {}", s.message())),
        }
    }
}

impl ApiError {
    /// 422 for a patch that does not apply.
    pub fn unprocessable_patch(message: impl Into<String>) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: message.into(),
            details: None,
        }
    }
}

impl ApiError {
    /// 422 as kube-apiserver's `NewInvalid` words it, for field errors
    /// given as `(reason, field, message)`: `reason` is the cause type
    /// (`FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`,
    /// ...), `message` the error without its field (`Invalid value: "a/b":
    /// ...`). The message names the kind with its group (`Deployment.apps`)
    /// and joins the distinct errors, in brackets when there are several.
    pub fn invalid_fields(
        group: &str,
        kind: &str,
        name: &str,
        causes: Vec<(&'static str, String, String)>,
    ) -> Self {
        let mut errors: Vec<String> = Vec::new();
        for (_, field, message) in &causes {
            let error = format!("{field}: {message}");
            if !errors.contains(&error) {
                errors.push(error);
            }
        }
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let name_q = crate::objects::go_quote(name);
        let message = match errors.as_slice() {
            [] => format!("{qualified} {name_q} is invalid"),
            [one] => format!("{qualified} {name_q} is invalid: {one}"),
            many => format!("{qualified} {name_q} is invalid: [{}]", many.join(", ")),
        };
        let mut e = Self::new(422, "Invalid", message);
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(reason, field, message)| {
                json!({"reason": reason, "message": message, "field": field})
            })
            .collect();
        let mut details = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        e.details = Some(details);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_written_in_kubes_order() {
        let e = ApiError::invalid(
            "Pod",
            "p",
            vec![("spec.containers[0].name".into(), "Required value".into())],
        );
        assert_eq!(
            e.to_status_json(),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Pod \\\"p\\\" is invalid: spec.containers[0].name: Required value\",\"reason\":\"Invalid\",\"details\":{\"name\":\"p\",\"kind\":\"Pod\",\"causes\":[{\"reason\":\"FieldValueInvalid\",\"message\":\"Required value\",\"field\":\"spec.containers[0].name\"}]},\"code\":422}\n"
        );
    }
}
