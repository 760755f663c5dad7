//! `/openapi/v2`: the Swagger 2.0 document kube-apiserver serves beside
//! the OpenAPI v3 ones. kubectl still reads it: to validate the items of a
//! `kind: List` file (its v3 check skips `List`) and, where the v3
//! document does not offer strategic merge patch, to build client-side
//! apply's patches.
//!
//! The document is built once from the same schemas as the v3 documents
//! (the wire table, through `protobuf::openapi_schemas`), with definitions
//! named as kube names them (`io.k8s.api.core.v1.ConfigMap`: kubectl's
//! errors quote them) and the paths k3rs serves. It is answered as JSON, or
//! in gnostic's protobuf encoding (`openapi.v2.Document`), which is all
//! client-go asks for; both forms carry the ETag of the JSON, as
//! kube-apiserver's do.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prost::Message as _;
use serde_json::{Map, Value, json};

use crate::discovery::{self, KUBE_MINOR};
use crate::resources::{RESOURCES, Resource};

/// The media type client-go's discovery asks for (and nothing else).
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The spelling kube-apiserver answers with: Go's media type parser
/// refuses the `@` of the other, so kubectl could not read it.
const PROTOBUF_DOTTED: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// Wire-table messages of `meta/v1`; every other one is its group's.
const META_MESSAGES: &[&str] = &[
    "ObjectMeta",
    "ListMeta",
    "Time",
    "MicroTime",
    "LabelSelector",
    "LabelSelectorRequirement",
    "OwnerReference",
    "ManagedFieldsEntry",
    "FieldsV1",
    "DeleteOptions",
    "Preconditions",
    "CreateOptions",
    "PatchOptions",
    "UpdateOptions",
    "ShardInfo",
    "Condition",
];

/// Wire-table messages of `apps/v1` and `coordination.k8s.io/v1`; the rest
/// are `core/v1`'s.
const APPS_MESSAGES: &[&str] = &[
    "Deployment",
    "DeploymentSpec",
    "DeploymentStrategy",
    "RollingUpdateDeployment",
    "DeploymentStatus",
    "DeploymentCondition",
    "ReplicaSet",
    "ReplicaSetSpec",
    "ReplicaSetStatus",
    "ReplicaSetCondition",
];
const COORDINATION_MESSAGES: &[&str] = &["Lease", "LeaseSpec"];
/// Those of `discovery.k8s.io/v1` (besides `discovery.EndpointPort`, named
/// apart from core's) and `networking.k8s.io/v1`.
const DISCOVERY_MESSAGES: &[&str] = &[
    "EndpointSlice",
    "Endpoint",
    "EndpointConditions",
    "EndpointHints",
    "ForZone",
    "ForNode",
];
const NETWORKING_MESSAGES: &[&str] = &[
    "NetworkPolicy",
    "NetworkPolicySpec",
    "NetworkPolicyIngressRule",
    "NetworkPolicyEgressRule",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "IPBlock",
];

/// kube's definition prefix of a group-version's types: its group's first
/// label (`coordination.k8s.io` → `io.k8s.api.coordination.v1`).
fn package(group: &str, version: &str) -> String {
    let group = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("io.k8s.api.{group}.{version}")
}

/// A wire-table message's definition name as kube spells it; `None` for
/// the envelope types kube does not publish.
fn definition_name(message: &str) -> Option<String> {
    let prefix = match message {
        "Unknown" | "TypeMeta" => return None,
        "discovery.EndpointPort" => {
            return Some(format!(
                "{}.EndpointPort",
                package("discovery.k8s.io", "v1")
            ));
        }
        m if m.contains('.') => return None,
        "RawExtension" => "io.k8s.apimachinery.pkg.runtime".to_string(),
        "IntOrString" => "io.k8s.apimachinery.pkg.util.intstr".to_string(),
        "Quantity" => "io.k8s.apimachinery.pkg.api.resource".to_string(),
        m if META_MESSAGES.contains(&m) => META.to_string(),
        m if APPS_MESSAGES.contains(&m) => package("apps", "v1"),
        m if COORDINATION_MESSAGES.contains(&m) => package("coordination.k8s.io", "v1"),
        m if DISCOVERY_MESSAGES.contains(&m) => package("discovery.k8s.io", "v1"),
        m if NETWORKING_MESSAGES.contains(&m) => package("networking.k8s.io", "v1"),
        _ => package("", "v1"),
    };
    Some(format!("{prefix}.{message}"))
}

fn definition_ref(name: &str) -> Value {
    json!({"$ref": format!("#/definitions/{name}")})
}

/// kube's v2 form of the messages that have a JSON form of their own.
fn special(message: &str) -> Option<Value> {
    Some(match message {
        "IntOrString" => json!({"type": "string", "format": "int-or-string"}),
        "Quantity" => json!({"type": "string"}),
        "RawExtension" | "FieldsV1" => json!({"type": "object"}),
        _ => return None,
    })
}

/// Rewrites a v3 schema into v2: references into `#/definitions/` (a
/// reference to a message the document lacks becomes "anything"), and no
/// v3-only extensions.
fn to_v2(schema: &mut Value, names: &HashMap<String, String>) {
    match schema {
        Value::Object(m) => {
            if let Some(target) = m.get("$ref").and_then(Value::as_str) {
                let target = target.trim_start_matches("#/components/schemas/");
                match names.get(target) {
                    Some(name) => m.insert("$ref".into(), json!(format!("#/definitions/{name}"))),
                    None => {
                        m.clear();
                        None
                    }
                };
            }
            m.remove("x-kubernetes-preserve-unknown-fields");
            for v in m.values_mut() {
                to_v2(v, names);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| to_v2(v, names)),
        _ => {}
    }
}

/// Every definition: the wire table's messages, each served kind tagged
/// with its group-version-kind, its list kind, and the patch body type.
fn definitions() -> Map<String, Value> {
    let mut v3 = crate::protobuf::openapi_schemas();
    for r in RESOURCES {
        discovery::tag_kind(&mut v3, r);
    }
    let prefix = crate::protobuf::openapi_name("");
    let messages: HashMap<String, String> = v3
        .keys()
        .filter_map(|k| Some((k.clone(), k.strip_prefix(&prefix)?.to_string())))
        .collect();
    let names: HashMap<String, String> = messages
        .iter()
        .filter_map(|(k, m)| Some((k.clone(), definition_name(m)?)))
        .collect();
    let mut out = Map::new();
    for (k, mut schema) in v3 {
        let Some(name) = names.get(&k) else { continue };
        if let Some(s) = special(&messages[&k]) {
            schema = s;
        }
        to_v2(&mut schema, &names);
        out.insert(name.clone(), schema);
    }
    for r in RESOURCES {
        let kind = kind_name(r);
        out.insert(
            list_name(r),
            json!({
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "items": {"type": "array", "items": definition_ref(&kind)},
                    "kind": {"type": "string"},
                    "metadata": definition_ref(&format!("{META}.ListMeta")),
                },
                "x-kubernetes-group-version-kind": [{"group": r.group, "kind": format!("{}List", r.kind), "version": r.version}],
            }),
        );
    }
    out.insert(
        format!("{META}.Patch"),
        json!({"type": "object", "description": "the body of a PATCH request, in the format its Content-Type names"}),
    );
    out
}

fn kind_name(r: &Resource) -> String {
    format!("{}.{}", package(r.group, r.version), r.kind)
}

fn list_name(r: &Resource) -> String {
    format!("{}List", kind_name(r))
}

/// `coordination.k8s.io` → `CoordinationV1` (operation ids) and
/// `coordination_v1` (tags), as kube spells them.
fn group_names(r: &Resource) -> (String, String) {
    let group = if r.group.is_empty() {
        "core"
    } else {
        r.group.trim_end_matches(".k8s.io")
    };
    let words: Vec<String> = group
        .split('.')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        })
        .collect();
    let version = {
        let mut c = r.version.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    let mut tag = words.concat();
    if let Some(first) = tag.get(..1) {
        tag.replace_range(..1, &first.to_lowercase());
    }
    (
        format!("{}{version}", words.concat()),
        format!("{tag}_{}", r.version),
    )
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "type": ty, "description": description})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "type": "string", "description": description})
}

fn body(name: &str) -> Value {
    // DeleteOptions may be left out: a DELETE usually has no body.
    let required = !name.ends_with(".DeleteOptions");
    json!({"name": "body", "in": "body", "required": required, "schema": definition_ref(name)})
}

/// Query parameters as `(name, type, description)`.
type Params = &'static [(&'static str, &'static str, &'static str)];

const LIST_PARAMS: Params = &[
    (
        "allowWatchBookmarks",
        "boolean",
        "ask for BOOKMARK events in a watch",
    ),
    ("continue", "string", "the token of the next page of a list"),
    (
        "fieldSelector",
        "string",
        "a selector on the objects' fields",
    ),
    (
        "labelSelector",
        "string",
        "a selector on the objects' labels",
    ),
    ("limit", "integer", "the largest number of items to answer"),
    (
        "resourceVersion",
        "string",
        "the revision to list at, or to watch from",
    ),
    (
        "resourceVersionMatch",
        "string",
        "how resourceVersion applies: NotOlderThan or Exact",
    ),
    (
        "timeoutSeconds",
        "integer",
        "how long a watch lasts at most",
    ),
    ("watch", "boolean", "watch for changes instead of listing"),
];

const WRITE_PARAMS: Params = &[
    (
        "dryRun",
        "string",
        "All: check the request but persist nothing",
    ),
    (
        "fieldManager",
        "string",
        "the name of the actor making the change",
    ),
    (
        "fieldValidation",
        "string",
        "what to do with unknown fields: Ignore, Warn or Strict",
    ),
];

const FORCE: Params = &[(
    "force",
    "boolean",
    "take over conflicting fields (apply requests only)",
)];

const DELETE_PARAMS: Params = &[
    (
        "dryRun",
        "string",
        "All: check the request but persist nothing",
    ),
    (
        "gracePeriodSeconds",
        "integer",
        "seconds before the object is deleted",
    ),
    (
        "orphanDependents",
        "boolean",
        "deprecated: use propagationPolicy",
    ),
    (
        "propagationPolicy",
        "string",
        "what happens to dependents: Orphan, Background or Foreground",
    ),
];

/// `body` (when given) followed by the query parameters of `lists`.
fn params(body_schema: Option<&str>, lists: &[Params]) -> Vec<Value> {
    body_schema
        .map(body)
        .into_iter()
        .chain(
            lists
                .iter()
                .flat_map(|l| l.iter())
                .map(|(n, t, d)| query(n, t, d)),
        )
        .collect()
}

fn responses(codes: &[&str], schema: &str) -> Value {
    let mut out = Map::new();
    for code in codes {
        let description = match *code {
            "200" => "OK",
            "201" => "Created",
            _ => "Accepted",
        };
        out.insert(
            code.to_string(),
            json!({"description": description, "schema": definition_ref(schema)}),
        );
    }
    out.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// The paths of one resource: its collection, its objects, its status
/// subresource and, when namespaced, its list across namespaces.
fn resource_paths(r: &Resource, paths: &mut Map<String, Value>) {
    let (gv_id, tag) = group_names(r);
    let kind = kind_name(r);
    let list = list_name(r);
    let gvk = json!({"group": r.group, "kind": r.kind, "version": r.version});
    let scope = if r.namespaced { "Namespaced" } else { "" };
    let op = |verb: &str,
              suffix: &str,
              action: &str,
              description: String,
              parameters: Vec<Value>,
              responses: Value,
              consumes: &[&str]| {
        let produces: &[&str] = if action == "list" {
            &["application/json", "application/json;stream=watch"]
        } else {
            &["application/json"]
        };
        let id = match verb {
            "deletecollection" => format!("delete{gv_id}Collection{scope}{}", r.kind),
            "listForAllNamespaces" => format!("list{gv_id}{}ForAllNamespaces", r.kind),
            v => format!("{v}{gv_id}{scope}{}{suffix}", r.kind),
        };
        json!({
            "description": description,
            "consumes": consumes,
            "produces": produces,
            "schemes": ["https"],
            "tags": [tag],
            "operationId": id,
            "parameters": parameters,
            "responses": responses,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let pretty = query("pretty", "string", "indent the answer");
    let namespace = path_param(
        "namespace",
        "object name and auth scope, such as for teams and projects",
    );
    let name = path_param("name", &format!("name of the {}", r.kind));
    let base = format!(
        "/{}/{}",
        discovery::gv_path(r.group, r.version),
        if r.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        }
    );
    let scoped = |mut params: Vec<Value>| {
        if r.namespaced {
            params.insert(0, namespace.clone());
        }
        params.push(pretty.clone());
        params
    };
    let any: &[&str] = &["*/*"];
    let delete_options = format!("{META}.DeleteOptions");

    paths.insert(
        format!("{base}{}", r.plural),
        json!({
            "get": op("list", "", "list", format!("list or watch objects of kind {}", r.kind), params(None, &[LIST_PARAMS]), responses(&["200"], &list), any),
            "post": op("create", "", "post", format!("create a {}", r.kind),
                       params(Some(&kind), &[WRITE_PARAMS]), responses(&["200", "201", "202"], &kind), any),
            "delete": op("deletecollection", "", "deletecollection", format!("delete collection of {}", r.kind),
                         params(Some(&delete_options), &[DELETE_PARAMS, LIST_PARAMS]), responses(&["200"], &list), any),
            "parameters": scoped(vec![]),
        }),
    );
    let patch_body = format!("{META}.Patch");
    let object_ops = |suffix: &str, what: &str, with_delete: bool| {
        let mut ops = json!({
            "get": op("read", suffix, "get", format!("read {what}the specified {}", r.kind), vec![], responses(&["200"], &kind), any),
            "put": op("replace", suffix, "put", format!("replace {what}the specified {}", r.kind),
                      params(Some(&kind), &[WRITE_PARAMS]), responses(&["200", "201"], &kind), any),
            "patch": op("patch", suffix, "patch", format!("partially update {what}the specified {}", r.kind),
                        params(Some(&patch_body), &[WRITE_PARAMS, FORCE]), responses(&["200", "201"], &kind), PATCH_TYPES),
            "parameters": scoped(vec![name.clone()]),
        });
        if with_delete {
            ops["delete"] = op(
                "delete",
                suffix,
                "delete",
                format!("delete a {}", r.kind),
                params(Some(&delete_options), &[DELETE_PARAMS]),
                responses(&["200", "202"], &kind),
                any,
            );
        }
        ops
    };
    paths.insert(
        format!("{base}{}/{{name}}", r.plural),
        object_ops("", "", true),
    );
    if r.has_status {
        paths.insert(
            format!("{base}{}/{{name}}/status", r.plural),
            object_ops("Status", "status of ", false),
        );
    }
    if r.namespaced {
        paths.insert(
            format!("/{}/{}", discovery::gv_path(r.group, r.version), r.plural),
            json!({
                "get": op("listForAllNamespaces", "", "list", format!("list or watch objects of kind {}", r.kind),
                          params(None, &[LIST_PARAMS]), responses(&["200"], &list), any),
                "parameters": [pretty],
            }),
        );
    }
}

/// The whole document, as JSON.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in RESOURCES {
        resource_paths(r, &mut paths);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{KUBE_MINOR}.0+k3rs")},
        "paths": paths,
        "definitions": definitions(),
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header", "description": "Bearer Token authentication"}},
        "security": [{"BearerToken": []}],
    })
}

/// gnostic's `openapi.v2` messages (OpenAPIv2.proto), only the fields this
/// document uses. A `oneof` member is an optional field here: on the wire
/// the two are the same.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        pub definitions: Option<Definitions>,
        #[prost(message, repeated, tag = "12")]
        pub security: Vec<SecurityRequirement>,
        #[prost(message, optional, tag = "13")]
        pub security_definitions: Option<SecurityDefinitions>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "3")]
        pub put: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        pub post: Option<Operation>,
        #[prost(message, optional, tag = "5")]
        pub delete: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
        #[prost(message, repeated, tag = "9")]
        pub parameters: Vec<ParametersItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Operation {
        #[prost(string, repeated, tag = "1")]
        pub tags: Vec<String>,
        #[prost(string, tag = "3")]
        pub description: String,
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(string, repeated, tag = "6")]
        pub produces: Vec<String>,
        #[prost(string, repeated, tag = "7")]
        pub consumes: Vec<String>,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, optional, tag = "9")]
        pub responses: Option<Responses>,
        #[prost(string, repeated, tag = "10")]
        pub schemes: Vec<String>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }

    /// `oneof { Parameter parameter = 1; JsonReference json_reference = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }

    /// `oneof { BodyParameter body_parameter = 1; NonBodyParameter non_body_parameter = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "1")]
        pub body_parameter: Option<BodyParameter>,
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BodyParameter {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub r#in: String,
        #[prost(bool, tag = "4")]
        pub required: bool,
        #[prost(message, optional, tag = "5")]
        pub schema: Option<Schema>,
    }

    /// A oneof of the header, form, query (3) and path (4) kinds.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
        #[prost(message, optional, tag = "4")]
        pub path_parameter_sub_schema: Option<PathParameterSubSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryParameterSubSchema {
        #[prost(bool, tag = "1")]
        pub required: bool,
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "3")]
        pub description: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
        #[prost(string, tag = "7")]
        pub format: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathParameterSubSchema {
        #[prost(bool, tag = "1")]
        pub required: bool,
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "3")]
        pub description: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "5")]
        pub r#type: String,
        #[prost(string, tag = "6")]
        pub format: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Responses {
        #[prost(message, repeated, tag = "1")]
        pub response_code: Vec<NamedResponseValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedResponseValue {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<ResponseValue>,
    }

    /// `oneof { Response response = 1; JsonReference json_reference = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseValue {
        #[prost(message, optional, tag = "1")]
        pub response: Option<Response>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(message, optional, tag = "2")]
        pub schema: Option<SchemaItem>,
    }

    /// `oneof { Schema schema = 1; FileSchema file_schema = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SchemaItem {
        #[prost(message, optional, tag = "1")]
        pub schema: Option<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Definitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedSchema {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Schema {
        #[prost(string, tag = "1")]
        pub r#ref: String,
        #[prost(string, tag = "2")]
        pub format: String,
        #[prost(string, tag = "4")]
        pub description: String,
        #[prost(string, repeated, tag = "19")]
        pub required: Vec<String>,
        #[prost(message, optional, tag = "21")]
        pub additional_properties: Option<AdditionalPropertiesItem>,
        #[prost(message, optional, tag = "22")]
        pub r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        pub items: Option<ItemsItem>,
        #[prost(message, optional, tag = "25")]
        pub properties: Option<Properties>,
        #[prost(message, repeated, tag = "31")]
        pub vendor_extension: Vec<NamedAny>,
    }

    /// `oneof { Schema schema = 1; bool boolean = 2; }`: only schemas here.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AdditionalPropertiesItem {
        #[prost(message, optional, boxed, tag = "1")]
        pub schema: Option<Box<Schema>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        pub schema: Vec<Schema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Properties {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }

    /// A vendor extension's value as YAML text (field 2), which is how
    /// kube-openapi reads it; JSON is YAML.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SecurityDefinitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSecurityDefinitionsItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedSecurityDefinitionsItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<SecurityDefinitionsItem>,
    }

    /// A oneof of the security kinds; `api_key_security` is member 2.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SecurityDefinitionsItem {
        #[prost(message, optional, tag = "2")]
        pub api_key_security: Option<ApiKeySecurity>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ApiKeySecurity {
        #[prost(string, tag = "1")]
        pub r#type: String,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(string, tag = "3")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub description: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SecurityRequirement {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedStringArray>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedStringArray {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<StringArray>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringArray {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn entries(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
    v.as_object().into_iter().flatten()
}

fn named_any(name: &str, v: &Value) -> pb::NamedAny {
    pb::NamedAny {
        name: name.to_string(),
        value: Some(pb::Any {
            yaml: v.to_string(),
        }),
    }
}

/// The JSON document in gnostic's messages. Keys it has no field for are
/// collected in `skipped` (a test keeps that empty, so the two forms say
/// the same).
#[derive(Default)]
struct Encoder {
    skipped: Vec<String>,
}

impl Encoder {
    fn skip(&mut self, at: &str, key: &str) {
        self.skipped.push(format!("{at}.{key}"));
    }

    fn document(&mut self, d: &Value) -> pb::Document {
        let mut out = pb::Document::default();
        for (k, v) in entries(d) {
            match k.as_str() {
                "swagger" => out.swagger = text(v),
                "info" => {
                    out.info = Some(pb::Info {
                        title: text(&v["title"]),
                        version: text(&v["version"]),
                    })
                }
                "paths" => {
                    let path = entries(v)
                        .map(|(name, item)| pb::NamedPathItem {
                            name: name.clone(),
                            value: Some(self.path_item(name, item)),
                        })
                        .collect();
                    out.paths = Some(pb::Paths { path });
                }
                "definitions" => {
                    out.definitions = Some(pb::Definitions {
                        additional_properties: self.named_schemas("definitions", v),
                    })
                }
                "securityDefinitions" => {
                    let additional_properties = entries(v)
                        .map(|(name, s)| pb::NamedSecurityDefinitionsItem {
                            name: name.clone(),
                            value: Some(pb::SecurityDefinitionsItem {
                                api_key_security: Some(pb::ApiKeySecurity {
                                    r#type: text(&s["type"]),
                                    name: text(&s["name"]),
                                    r#in: text(&s["in"]),
                                    description: text(&s["description"]),
                                }),
                            }),
                        })
                        .collect();
                    out.security_definitions = Some(pb::SecurityDefinitions {
                        additional_properties,
                    });
                }
                "security" => {
                    out.security = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|req| pb::SecurityRequirement {
                            additional_properties: entries(req)
                                .map(|(name, scopes)| pb::NamedStringArray {
                                    name: name.clone(),
                                    value: Some(pb::StringArray {
                                        value: strings(scopes),
                                    }),
                                })
                                .collect(),
                        })
                        .collect()
                }
                other => self.skip("", other),
            }
        }
        out
    }

    fn path_item(&mut self, at: &str, v: &Value) -> pb::PathItem {
        let mut out = pb::PathItem::default();
        for (k, v) in entries(v) {
            let here = format!("{at}.{k}");
            match k.as_str() {
                "get" => out.get = Some(self.operation(&here, v)),
                "put" => out.put = Some(self.operation(&here, v)),
                "post" => out.post = Some(self.operation(&here, v)),
                "delete" => out.delete = Some(self.operation(&here, v)),
                "patch" => out.patch = Some(self.operation(&here, v)),
                "parameters" => out.parameters = self.parameters(&here, v),
                other => self.skip(at, other),
            }
        }
        out
    }

    fn operation(&mut self, at: &str, v: &Value) -> pb::Operation {
        let mut out = pb::Operation::default();
        for (k, v) in entries(v) {
            match k.as_str() {
                "tags" => out.tags = strings(v),
                "description" => out.description = text(v),
                "operationId" => out.operation_id = text(v),
                "produces" => out.produces = strings(v),
                "consumes" => out.consumes = strings(v),
                "schemes" => out.schemes = strings(v),
                "parameters" => out.parameters = self.parameters(at, v),
                "responses" => {
                    let response_code = entries(v)
                        .map(|(code, r)| pb::NamedResponseValue {
                            name: code.clone(),
                            value: Some(pb::ResponseValue {
                                response: Some(self.response(&format!("{at}.{code}"), r)),
                            }),
                        })
                        .collect();
                    out.responses = Some(pb::Responses { response_code });
                }
                x if x.starts_with("x-") => out.vendor_extension.push(named_any(x, v)),
                other => self.skip(at, other),
            }
        }
        out
    }

    fn response(&mut self, at: &str, v: &Value) -> pb::Response {
        let mut out = pb::Response::default();
        for (k, v) in entries(v) {
            match k.as_str() {
                "description" => out.description = text(v),
                "schema" => {
                    out.schema = Some(pb::SchemaItem {
                        schema: Some(self.schema(at, v)),
                    })
                }
                other => self.skip(at, other),
            }
        }
        out
    }

    fn parameters(&mut self, at: &str, v: &Value) -> Vec<pb::ParametersItem> {
        let mut out = Vec::new();
        for p in v.as_array().into_iter().flatten() {
            let here = format!("{at}.{}", text(&p["name"]));
            let known = ["name", "in", "description", "required", "type", "schema"];
            for k in entries(p).map(|(k, _)| k) {
                if !known.contains(&k.as_str()) {
                    self.skip(&here, k);
                }
            }
            let (name, place, description) =
                (text(&p["name"]), text(&p["in"]), text(&p["description"]));
            let required = p["required"].as_bool().unwrap_or(false);
            let ty = text(&p["type"]);
            let parameter = match place.as_str() {
                "body" => pb::Parameter {
                    body_parameter: Some(pb::BodyParameter {
                        description,
                        name,
                        r#in: place,
                        required,
                        schema: Some(self.schema(&here, &p["schema"])),
                    }),
                    non_body_parameter: None,
                },
                "path" => pb::Parameter {
                    body_parameter: None,
                    non_body_parameter: Some(pb::NonBodyParameter {
                        query_parameter_sub_schema: None,
                        path_parameter_sub_schema: Some(pb::PathParameterSubSchema {
                            required,
                            r#in: place,
                            description,
                            name,
                            r#type: ty,
                            format: String::new(),
                        }),
                    }),
                },
                _ => pb::Parameter {
                    body_parameter: None,
                    non_body_parameter: Some(pb::NonBodyParameter {
                        query_parameter_sub_schema: Some(pb::QueryParameterSubSchema {
                            required,
                            r#in: place,
                            description,
                            name,
                            r#type: ty,
                            format: String::new(),
                        }),
                        path_parameter_sub_schema: None,
                    }),
                },
            };
            out.push(pb::ParametersItem {
                parameter: Some(parameter),
            });
        }
        out
    }

    fn named_schemas(&mut self, at: &str, v: &Value) -> Vec<pb::NamedSchema> {
        entries(v)
            .map(|(name, s)| pb::NamedSchema {
                name: name.clone(),
                value: Some(self.schema(&format!("{at}.{name}"), s)),
            })
            .collect()
    }

    fn schema(&mut self, at: &str, v: &Value) -> pb::Schema {
        let mut out = pb::Schema::default();
        for (k, v) in entries(v) {
            match k.as_str() {
                "$ref" => out.r#ref = text(v),
                "format" => out.format = text(v),
                "description" => out.description = text(v),
                "required" => out.required = strings(v),
                "type" => {
                    out.r#type = Some(pb::TypeItem {
                        value: vec![text(v)],
                    })
                }
                "items" => {
                    out.items = Some(pb::ItemsItem {
                        schema: vec![self.schema(&format!("{at}[]"), v)],
                    })
                }
                "properties" => {
                    out.properties = Some(pb::Properties {
                        additional_properties: self.named_schemas(at, v),
                    })
                }
                "additionalProperties" if v.is_object() => {
                    out.additional_properties = Some(pb::AdditionalPropertiesItem {
                        schema: Some(Box::new(self.schema(&format!("{at}{{}}"), v))),
                    })
                }
                x if x.starts_with("x-") => out.vendor_extension.push(named_any(x, v)),
                other => self.skip(at, other),
            }
        }
        out
    }
}

/// The document in both forms and its ETag; built at first use.
struct Encoded {
    json: Bytes,
    protobuf: Bytes,
    etag: String,
}

/// kube-apiserver's ETag: the quoted SHA-512 of the body, in hex.
fn etag(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, body);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!("\"{hex}\"")
}

fn encoded() -> &'static Encoded {
    static ENCODED: OnceLock<Encoded> = OnceLock::new();
    ENCODED.get_or_init(|| {
        let doc = document();
        let json = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        let protobuf = Bytes::from(Encoder::default().document(&doc).encode_to_vec());
        Encoded {
            etag: etag(&json),
            json,
            protobuf,
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Protobuf,
}

/// The form the `Accept` header prefers (kube's negotiation: highest `q`
/// first, then the more specific type); `None`: nothing acceptable.
fn negotiate(accept: &str) -> Option<Format> {
    let accept = if accept.trim().is_empty() {
        "*/*"
    } else {
        accept
    };
    let mut clauses: Vec<(f32, u8, &str, &str)> = Vec::new();
    for clause in accept.split(',') {
        let mut parts = clause.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let (ty, sub) = match media.split_once('/') {
            Some(t) => t,
            None if media == "*" => ("*", "*"),
            None => continue,
        };
        if q > 0.0 {
            clauses.push((q, u8::from(ty != "*") + u8::from(sub != "*"), ty, sub));
        }
    }
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    let offers = [
        ("application/json", Format::Json),
        (PROTOBUF, Format::Protobuf),
        (PROTOBUF_DOTTED, Format::Protobuf),
    ];
    clauses.iter().find_map(|(_, _, ty, sub)| {
        offers.iter().find_map(|(offer, format)| {
            let (oty, osub) = offer.split_once('/')?;
            ((*ty == "*" || ty.eq_ignore_ascii_case(oty))
                && (*sub == "*" || sub.eq_ignore_ascii_case(osub)))
            .then_some(*format)
        })
    })
}

/// `GET /openapi/v2`: JSON unless the protobuf form is asked for; 304 when
/// `If-None-Match` holds the ETag; 406 for an `Accept` it cannot meet.
pub fn serve(headers: &HeaderMap) -> Response {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let Some(format) = negotiate(&accept) else {
        return StatusCode::NOT_ACCEPTABLE.into_response();
    };
    let doc = encoded();
    let (body, content_type) = match format {
        Format::Json => (&doc.json, "application/json"),
        Format::Protobuf => (&doc.protobuf, PROTOBUF_DOTTED),
    };
    let etag = &doc.etag;
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut response = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, body.clone()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_served_kind_is_defined_under_its_kube_name() {
        let doc = document();
        let defs = doc["definitions"].as_object().unwrap();
        for r in RESOURCES {
            for (name, kind) in [
                (kind_name(r), r.kind.to_string()),
                (list_name(r), format!("{}List", r.kind)),
            ] {
                let d = defs.get(&name).unwrap_or_else(|| panic!("no {name}"));
                assert_eq!(
                    d["x-kubernetes-group-version-kind"],
                    json!([{"group": r.group, "kind": kind, "version": r.version}]),
                    "{name}"
                );
                assert_eq!(d["type"], "object", "{name}");
                assert!(d["properties"]["apiVersion"].is_object(), "{name}");
                assert!(d["properties"]["metadata"]["$ref"].is_string(), "{name}");
            }
        }
        let cm = &defs["io.k8s.api.core.v1.ConfigMap"];
        assert_eq!(
            cm["properties"]["data"],
            json!({"type": "object", "additionalProperties": {"type": "string"}})
        );
        assert_eq!(
            cm["properties"]["metadata"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        let containers = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(
            containers["items"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.Container"
        );
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(
            defs["io.k8s.api.core.v1.ServicePort"]["properties"]["targetPort"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"
        );
        assert_eq!(
            defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"],
            json!({"type": "string", "format": "int-or-string"})
        );
        assert!(defs.contains_key("io.k8s.api.apps.v1.DeploymentSpec"));
        assert!(defs.contains_key("io.k8s.api.coordination.v1.LeaseSpec"));
        assert!(defs.contains_key("io.k8s.api.core.v1.PodTemplateSpec"));
        // kube-openapi refuses a document with a dangling reference, and
        // v3-only forms mean nothing to v2 readers.
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(defs.contains_key(name), "dangling {r}");
        }
        let text = doc.to_string();
        assert!(!text.contains("io.k3rs"));
        assert!(!text.contains("x-kubernetes-preserve-unknown-fields"));
        assert!(!text.contains("x-kubernetes-int-or-string"));
        // A kind-less message of another group would be misnamed core.
        for (name, d) in defs {
            if d.get("x-kubernetes-group-version-kind").is_some() {
                let gvk = &d["x-kubernetes-group-version-kind"][0];
                let group = gvk["group"].as_str().unwrap();
                assert!(name.starts_with(&package(group, "v1")), "{name}");
            }
        }
    }

    #[test]
    fn paths_follow_kube() {
        let doc = document();
        let paths = &doc["paths"];
        let cms = &paths["/api/v1/namespaces/{namespace}/configmaps"];
        assert_eq!(
            cms["post"]["operationId"],
            "createCoreV1NamespacedConfigMap"
        );
        assert_eq!(cms["get"]["operationId"], "listCoreV1NamespacedConfigMap");
        assert_eq!(
            cms["delete"]["operationId"],
            "deleteCoreV1CollectionNamespacedConfigMap"
        );
        assert_eq!(
            cms["post"]["x-kubernetes-group-version-kind"],
            json!({"group": "", "kind": "ConfigMap", "version": "v1"})
        );
        let deploy = &paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert_eq!(
            deploy["patch"]["operationId"],
            "patchAppsV1NamespacedDeployment"
        );
        assert_eq!(deploy["patch"]["tags"], json!(["apps_v1"]));
        // kubectl builds strategic merge patches from this document only
        // when the PATCH operation consumes them.
        assert!(
            deploy["patch"]["consumes"]
                .as_array()
                .unwrap()
                .contains(&json!("application/strategic-merge-patch+json"))
        );
        assert_eq!(
            paths["/api/v1/namespaces/{name}/status"]["put"]["operationId"],
            "replaceCoreV1NamespaceStatus"
        );
        assert_eq!(
            paths["/apis/coordination.k8s.io/v1/leases"]["get"]["operationId"],
            "listCoordinationV1LeaseForAllNamespaces"
        );
    }

    /// The length-delimited fields of one protobuf message, by number
    /// (varints are skipped).
    fn fields(mut buf: &[u8]) -> Vec<(u64, Vec<u8>)> {
        fn varint(buf: &mut &[u8]) -> u64 {
            let mut v = 0;
            for shift in (0..64).step_by(7) {
                let b = buf[0];
                *buf = &buf[1..];
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            match key & 7 {
                0 => {
                    varint(&mut buf);
                }
                2 => {
                    let n = varint(&mut buf) as usize;
                    out.push((key >> 3, buf[..n].to_vec()));
                    buf = &buf[n..];
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    fn all(f: &[(u64, Vec<u8>)], num: u64) -> Vec<Vec<u8>> {
        f.iter()
            .filter(|(n, _)| *n == num)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn one(f: &[(u64, Vec<u8>)], num: u64) -> Vec<(u64, Vec<u8>)> {
        fields(&all(f, num).concat())
    }

    fn string(f: &[(u64, Vec<u8>)], num: u64) -> String {
        String::from_utf8(all(f, num).concat()).unwrap()
    }

    /// The entry named `name` of a repeated `Named*` field (1 name, 2 value).
    fn named(f: &[(u64, Vec<u8>)], num: u64, name: &str) -> Vec<(u64, Vec<u8>)> {
        all(f, num)
            .iter()
            .map(|entry| fields(entry))
            .find(|entry| string(entry, 1) == name)
            .map(|entry| one(&entry, 2))
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// Reads the encoding with gnostic's field numbers written out here
    /// (independently of the derive attributes): Document.definitions (9)
    /// → NamedSchema (1 name, 2 value) → Schema (22 type, 25 properties,
    /// 31 vendor_extension → NamedAny → Any.yaml (2)).
    #[test]
    fn the_protobuf_form_has_gnostic_field_numbers() {
        let mut encoder = Encoder::default();
        let doc = document();
        let body = encoder.document(&doc).encode_to_vec();
        assert_eq!(encoder.skipped, Vec::<String>::new(), "keys with no field");
        let top = fields(&body);
        assert_eq!(string(&top, 1), "2.0");
        assert_eq!(string(&one(&top, 2), 1), "Kubernetes");
        let schema = named(&one(&top, 9), 1, "io.k8s.api.core.v1.ConfigMap");
        assert_eq!(string(&one(&schema, 22), 1), "object");
        let props: Vec<String> = all(&one(&schema, 25), 1)
            .iter()
            .map(|entry| string(&fields(entry), 1))
            .collect();
        for p in [
            "apiVersion",
            "binaryData",
            "data",
            "immutable",
            "kind",
            "metadata",
        ] {
            assert!(props.contains(&p.to_string()), "{p} in {props:?}");
        }
        let gvk = named(&schema, 31, "x-kubernetes-group-version-kind");
        let gvk: Value = serde_json::from_str(&string(&gvk, 2)).unwrap();
        assert_eq!(
            gvk,
            json!([{"group": "", "kind": "ConfigMap", "version": "v1"}])
        );
        // Paths (8) → NamedPathItem → PathItem.patch (8) → Operation.consumes (7).
        let path = named(
            &one(&top, 8),
            2,
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
        );
        let consumes: Vec<String> = all(&one(&path, 8), 7)
            .into_iter()
            .map(|c| String::from_utf8(c).unwrap())
            .collect();
        assert!(consumes.contains(&"application/strategic-merge-patch+json".to_string()));
        // And the derive structs read back what they wrote.
        let back = pb::Document::decode(body.as_slice()).unwrap();
        assert_eq!(
            back.definitions.unwrap().additional_properties.len(),
            doc["definitions"].as_object().unwrap().len()
        );
        assert_eq!(
            back.paths.unwrap().path.len(),
            doc["paths"].as_object().unwrap().len()
        );
    }

    #[test]
    fn accept_picks_the_form_and_the_etag_is_honoured() {
        assert_eq!(negotiate(""), Some(Format::Json));
        assert_eq!(negotiate("*/*"), Some(Format::Json));
        assert_eq!(negotiate(PROTOBUF), Some(Format::Protobuf));
        assert_eq!(negotiate(PROTOBUF_DOTTED), Some(Format::Protobuf));
        assert_eq!(
            negotiate(&format!("application/json;q=0.5, {PROTOBUF}")),
            Some(Format::Protobuf)
        );
        assert_eq!(negotiate("application/json, */*"), Some(Format::Json));
        assert_eq!(negotiate("text/html"), None);
        assert_eq!(negotiate("application/json;q=0"), None);

        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(PROTOBUF));
        let r = serve(&headers);
        assert_eq!(r.status(), StatusCode::OK);
        // Go's media type parser refuses the `@` of the asked-for spelling.
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROTOBUF_DOTTED);
        let tag = r.headers()[header::ETAG].clone();
        assert!(tag.to_str().unwrap().starts_with('"'));
        headers.insert(header::IF_NONE_MATCH, tag.clone());
        assert_eq!(serve(&headers).status(), StatusCode::NOT_MODIFIED);
        // One tag for both forms (the JSON's), as kube-apiserver's.
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(serve(&headers).status(), StatusCode::NOT_MODIFIED);
        headers.remove(header::IF_NONE_MATCH);
        let r = serve(&headers);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[header::ETAG], tag);
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert_eq!(serve(&headers).status(), StatusCode::NOT_ACCEPTABLE);
    }
}
