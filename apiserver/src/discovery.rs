//! Discovery (`/version`, `/api`, `/apis`, resource lists) and the OpenAPI
//! v3 index, generated from the resource table (`openapi_v2` builds the
//! v2 document from the same schemas).

use serde_json::{Value, json};

use crate::resources::{self, GROUPS, Resource};

/// The Kubernetes version k3rs answers to (kubectl picks its behaviour by it).
pub const KUBE_MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+k3rs"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn groups() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|g| group(g)).collect::<Vec<_>>(),
    })
}

pub fn one_group(name: &str) -> Option<Value> {
    GROUPS.contains(&name).then(|| {
        let mut g = group(name);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn entry(r: &Resource) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
        "shortNames": r.short_names,
        "categories": if r.in_all { vec!["all"] } else { vec![] },
        "storageVersionHash": "",
    })];
    if matches!(r.kind, "Deployment" | "ReplicaSet") {
        out.push(json!({
            "name": format!("{}/scale", r.plural),
            "singularName": "",
            "namespaced": true,
            "group": "autoscaling",
            "version": "v1",
            "kind": "Scale",
            "verbs": ["get", "patch", "update"],
        }));
    }
    if r.has_status {
        out.push(json!({
            "name": format!("{}/status", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// The media type of aggregated discovery (kubectl asks for it first and
/// falls back to one request per group-version without it).
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery: every group (core alone for `/api`, the named
/// groups for `/apis`) with its versions and resources, in one answer.
pub fn aggregated(core: bool) -> Value {
    let names: Vec<&str> = if core { vec![""] } else { GROUPS.to_vec() };
    let kind_of = |group: &str, kind: &str| json!({"group": group, "version": "v1", "kind": kind});
    let items: Vec<Value> = names
        .iter()
        .map(|g| {
            let resources: Vec<Value> = resources::of_group_version(g, "v1")
                .map(|r| {
                    let mut subresources = Vec::new();
                    if r.has_status {
                        subresources.push(json!({"subresource": "status", "responseKind": kind_of(r.group, r.kind), "verbs": ["get", "patch", "update"]}));
                    }
                    if matches!(r.kind, "Deployment" | "ReplicaSet") {
                        subresources.push(json!({"subresource": "scale", "responseKind": kind_of("autoscaling", "Scale"), "verbs": ["get", "patch", "update"]}));
                    }
                    if r.kind == "Pod" {
                        subresources.push(json!({"subresource": "binding", "responseKind": kind_of("", "Binding"), "verbs": ["create"]}));
                        subresources.push(json!({"subresource": "log", "responseKind": kind_of("", "Pod"), "verbs": ["get"]}));
                    }
                    json!({
                        "resource": r.plural,
                        "responseKind": kind_of(r.group, r.kind),
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": VERBS,
                        "shortNames": r.short_names,
                        "categories": if r.in_all { vec!["all"] } else { vec![] },
                        "subresources": subresources,
                    })
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null},
                   "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// The `APIResourceList` of one group-version, if k3rs serves it.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let list: Vec<Value> = resources::of_group_version(group, version)
        .flat_map(entry)
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

pub(crate) fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one document per served group-version, each URL with a
/// hash of the document itself, under which kubectl caches it (so a
/// changed schema is never read from a stale cache).
pub fn openapi_index() -> Value {
    static INDEX: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    INDEX
        .get_or_init(|| {
            let mut paths = serde_json::Map::new();
            for (g, v) in std::iter::once("")
                .chain(GROUPS.iter().copied())
                .map(|g| (g, "v1"))
            {
                let p = gv_path(g, v);
                let document = serde_json::to_vec(&openapi_document(&p)).unwrap_or_default();
                let hash: String = crate::pki::sha256(&document)[..16]
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect();
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
                );
            }
            json!({"paths": paths})
        })
        .clone()
}

/// Makes the wire-table schema of a served kind (among `schemas`, as
/// `protobuf::openapi_schemas` names them) the kind's own: the type fields
/// and the `x-kubernetes-group-version-kind` clients find it by. Returns
/// its name there.
pub(crate) fn tag_kind(schemas: &mut serde_json::Map<String, Value>, r: &Resource) -> String {
    let gvk = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    let schema_name = crate::protobuf::openapi_name(r.kind);
    let schema = schemas
        .entry(schema_name.clone())
        .or_insert_with(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    schema["x-kubernetes-group-version-kind"] = gvk;
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
    }
    schema_name
}

/// The OpenAPI v3 document of one group-version: every object path with
/// its operations, the `x-kubernetes-group-version-kind` kubectl looks for
/// and the `fieldValidation` parameter that tells it the server validates;
/// every kind's field schema comes from the wire table.
pub fn openapi_document(path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>()[..] {
        ["api", v] => ("", v),
        ["apis", g, v] => (g, v),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = crate::protobuf::openapi_schemas();
    for r in resources::of_group_version(group, version) {
        let schema_name = tag_kind(&mut schemas, r);
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "description": "Strict, Warn or Ignore"},
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        ]);
        let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}});
        let op = |action: &str| {
            json!({"operationId": format!("{action}{}", r.kind), "x-kubernetes-action": action,
                   "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                   "parameters": params, "requestBody": body, "responses": {"200": body}})
        };
        let base = format!(
            "/{}/{}",
            gv_path(group, version),
            if r.namespaced {
                "namespaces/{namespace}/"
            } else {
                ""
            }
        );
        paths.insert(format!("{base}{}", r.plural), json!({"post": op("post")}));
        paths.insert(
            format!("{base}{}/{{name}}", r.plural),
            json!({"put": op("put"), "patch": op("patch")}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{KUBE_MINOR}.0+k3rs")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
