//! Routing and the verbs: get, list, watch, create, update, patch, delete.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use crate::apply;
use crate::discovery;
use crate::identity::User;
use crate::list::{self, ListParams};
use crate::objects;
use crate::patch;
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::{self, Store, Swap};

/// What every request handler shares.
pub struct Api {
    pub store: Store,
    /// Bearer tokens accepted besides client certificates.
    pub tokens: Vec<String>,
    /// The cluster CA (served at `/cacerts`) and the directory holding its
    /// key (node serving certificates are issued from it).
    pub ca_pem: String,
    pub tls_dir: std::path::PathBuf,
    /// The CA that agents' serving certificates chain to (see `pki`).
    pub node_ca_pem: String,
}

/// How the connection authenticated at the TLS layer: the user its
/// client certificate (verified against the cluster CA) names, if any.
#[derive(Clone, Debug, Default)]
pub struct ConnAuth {
    pub certificate_user: Option<Arc<User>>,
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    // kube-apiserver's JSON encoder ends every body with a newline.
    let mut body = value.to_string();
    body.push('\n');
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

/// Query string into pairs (percent-decoded).
pub fn query(uri: &http::Uri) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            // Bytes, not `&str` slices: a '%' before a multi-byte
            // character must not split it.
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A boolean query parameter read as kube-apiserver's parameter codec
/// reads it: absent, `0` or `false` in any case is false, anything else
/// (`true`, `True` from Python's `str(True)`, `1`, even empty) is true.
pub fn flag(q: &[(String, String)], name: &str) -> bool {
    param(q, name).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The object or collection a resource path names.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let res = resources::find(group, version, plural)?;
        if ns.is_some() && !res.namespaced {
            return None;
        }
        Some(Target {
            res,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            match tail {
                [] => t(plural, Some(ns), None, None),
                [name] => t(plural, Some(ns), Some(name), None),
                [name, sub] => t(plural, Some(ns), Some(name), Some(sub)),
                _ => None,
            }
        }
        [plural] => t(plural, None, None, None),
        [plural, name] => t(plural, None, Some(name), None),
        [plural, name, sub] => t(plural, None, Some(name), Some(sub)),
        _ => None,
    }
}

fn list_params(q: &[(String, String)], res: &Resource) -> ApiResult<ListParams> {
    if flag(q, "sendInitialEvents") {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            vec![("sendInitialEvents".into(), "Forbidden: sendInitialEvents (watch-list) is not served by k3rs; use list then watch".into())],
        ));
    }
    let exact = match param(q, "resourceVersionMatch") {
        None | Some("") | Some("NotOlderThan") => false,
        Some("Exact") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported resourceVersionMatch {other:?}"
            )));
        }
    };
    Ok(ListParams {
        exact,
        labels: LabelSelector::parse(param(q, "labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(param(q, "fieldSelector").unwrap_or(""), res.kind)?,
        limit: param(q, "limit").and_then(|l| l.parse().ok()).unwrap_or(0),
        continue_token: param(q, "continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: param(q, "resourceVersion").map(str::to_string),
        timeout_seconds: param(q, "timeoutSeconds").and_then(|t| t.parse().ok()),
        allow_bookmarks: flag(q, "allowWatchBookmarks"),
    })
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// The request's user: its client certificate's, else its bearer token's.
fn authenticated(api: &Api, conn: &ConnAuth, headers: &HeaderMap) -> Option<Arc<User>> {
    if let Some(user) = &conn.certificate_user {
        return Some(user.clone());
    }
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))?;
    api.tokens
        .iter()
        .any(|t| t == bearer.trim())
        .then(|| Arc::new(User::new(crate::identity::TOKEN_USER, &[])))
}

/// `Impersonate-*` headers are refused with kube's 403 for a user who may
/// not impersonate: until k3rs authorizes requests, nobody may, and a
/// request must never run silently with the caller's own rights.
fn refuse_impersonation(user: &User, headers: &HeaderMap) -> ApiResult<()> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    const CORE: &str = "";
    const AUTHENTICATION: &str = "authentication.k8s.io";
    const CLUSTER: &str = "at the cluster scope";
    // What kube's impersonation filter checks first: (resource, its
    // group, the object's name, the scope as kube words it).
    let (resource, group, name, scope) = if let Some(target) = header("impersonate-user") {
        match target
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
        {
            Some((ns, sa)) => (
                "serviceaccounts".to_string(),
                CORE,
                sa,
                format!("in the namespace \"{ns}\""),
            ),
            None => ("users".to_string(), CORE, target, CLUSTER.to_string()),
        }
    } else if let Some(group) = header("impersonate-group") {
        ("groups".to_string(), CORE, group, CLUSTER.to_string())
    } else if let Some(uid) = header("impersonate-uid") {
        ("uids".to_string(), AUTHENTICATION, uid, CLUSTER.to_string())
    } else if let Some((key, value)) = headers.iter().find_map(|(k, v)| {
        let key = k.as_str().strip_prefix("impersonate-extra-")?;
        Some((key, v.to_str().unwrap_or_default()))
    }) {
        (
            format!("userextras/{key}"),
            AUTHENTICATION,
            value,
            CLUSTER.to_string(),
        )
    } else {
        return Ok(());
    };
    // The error names the resource without its subresource.
    let plural = resource.split('/').next().unwrap_or_default();
    let qualified = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    Err(ApiError::forbidden(
        &qualified,
        name,
        format!(
            "User \"{}\" cannot impersonate resource \"{resource}\" in API group \"{group}\" {scope}",
            user.name
        ),
    ))
}

/// Every request.
pub async fn handle(
    api: Arc<Api>,
    conn: ConnAuth,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return (StatusCode::OK, "ok").into_response(),
        _ => {}
    }
    if let Some((code, body)) = crate::join::unauthenticated(&api, &path) {
        return (code, body).into_response();
    }
    let Some(user) = authenticated(&api, &conn, &headers) else {
        return ApiError::unauthorized().into_response();
    };
    if let Err(e) = refuse_impersonation(&user, &headers) {
        return e.into_response();
    }
    if path == "/v1-k3s/serving-kubelet.crt" && method == Method::POST {
        return match crate::join::serving_certificate(&api, &headers).await {
            Ok(pem) => (StatusCode::OK, pem).into_response(),
            Err(e) => e.into_response(),
        };
    }
    if let Some(target) = crate::node_proxy::stream_target(&path) {
        let streamed =
            crate::node_proxy::stream(&api, &target, &method, &uri, &headers, upgrade).await;
        return streamed.unwrap_or_else(|e| e.into_response());
    }
    match route(&api, &method, &uri, &path, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    api: &Api,
    method: &Method,
    uri: &http::Uri,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let is_get = *method == Method::GET;
    match segments.as_slice() {
        ["version"] if is_get => return Ok(ok(&discovery::version())),
        ["api" | "apis"] if is_get && wants_aggregated(headers) => {
            let body = discovery::aggregated(segments[0] == "api");
            return Ok((
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, discovery::AGGREGATED)],
                body.to_string(),
            )
                .into_response());
        }
        ["api"] if is_get => return Ok(ok(&discovery::core_versions())),
        ["apis"] if is_get => return Ok(ok(&discovery::groups())),
        ["api", v] if is_get => {
            return discovery::resource_list("", v)
                .map(|l| ok(&l))
                .ok_or_else(ApiError::no_route);
        }
        ["apis", g] if is_get => {
            return discovery::one_group(g)
                .map(|l| ok(&l))
                .ok_or_else(ApiError::no_route);
        }
        ["apis", g, v] if is_get => {
            return discovery::resource_list(g, v)
                .map(|l| ok(&l))
                .ok_or_else(ApiError::no_route);
        }
        ["openapi", "v2"] if is_get => return Ok(crate::openapi_v2::serve(headers)),
        ["openapi", "v3"] if is_get => return Ok(ok(&discovery::openapi_index())),
        ["openapi", "v3", rest @ ..] if is_get => {
            return discovery::openapi_document(&rest.join("/"))
                .map(|d| ok(&d))
                .ok_or_else(ApiError::no_route);
        }
        _ => {}
    }
    let target = match segments.as_slice() {
        ["api", v, rest @ ..] => parse_target("", v, rest),
        ["apis", g, v, rest @ ..] => parse_target(g, v, rest),
        _ => None,
    }
    .ok_or_else(ApiError::no_route)?;
    let q = query(uri);
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let Target {
        res,
        namespace,
        name,
        sub,
    } = target;
    let ns = namespace.as_deref();
    // kube-apiserver's default is Warn: unknown fields are dropped and
    // named in `Warning` headers (kubectl prints them); Ignore drops them
    // silently.
    let strict = match param(&q, "fieldValidation") {
        None | Some("") | Some("Warn") => Some(false),
        Some("Ignore") => None,
        Some("Strict") => Some(true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is not one of Strict, Warn or Ignore"
            )));
        }
    };
    let manager = field_manager(&q, headers);
    let api_version = res.api_version();
    let now = objects::now();
    let writer = apply::Writer {
        manager: &manager,
        api_version: &api_version,
        now: &now,
    };
    let dry_run = param(&q, "dryRun").is_some();
    let warnings = std::sync::Mutex::new(Vec::<String>::new());
    let check_fields = |obj: &mut Value| -> ApiResult<()> {
        let unknown = crate::protobuf::prune_unknown_fields(res.kind, obj);
        let Some(strict) = strict.filter(|_| !unknown.is_empty()) else {
            return Ok(());
        };
        let list: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        if !strict {
            *warnings.lock().expect("not poisoned") = list;
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            list.join(", "),
            kind = res.kind,
            version = res.version
        )))
    };
    let result = async {
    match (method.clone(), name.as_deref(), sub.as_deref()) {
        (Method::GET, None, None) => {
            let p = list_params(&q, res)?;
            if flag(&q, "watch") {
                let shape = if wants_table(headers) {
                    crate::watch::Shape::Table(res)
                } else {
                    crate::watch::Shape::Object
                };
                let events = crate::watch::start(api.store.clone(), res, namespace.clone(), p, shape)
                    .await?;
                let body = Body::from_stream(events);
                return Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::TRANSFER_ENCODING, "chunked")
                    .body(body)
                    .expect("a valid response"));
            }
            let list = list::list(&api.store, res, ns, &p).await?;
            Ok(ok(&if wants_table(headers) {
                list::table(res, &list)
            } else {
                list
            }))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            let obj = get(api, res, ns, name).await?;
            Ok(ok(&if wants_table(headers) {
                list::table(res, &obj)
            } else {
                obj
            }))
        }
        (Method::GET, Some(name), Some("scale")) if has_scale(res) => {
            Ok(ok(&scale_of(&get(api, res, ns, name).await?)))
        }
        (Method::PUT | Method::PATCH, Some(name), Some("scale")) if has_scale(res) => {
            let body: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
            let options = UpdateOptions {
                writer: Some(&writer),
                dry_run,
                ..Default::default()
            };
            let written = update(api, res, ns, name, options, |current| {
                let mut scale = scale_of(current);
                match (method, content_type.as_str()) {
                    (&Method::PUT, _) => scale = body.clone(),
                    (_, "application/json-patch+json") => scale = patch::json_patch(&scale, &body)?,
                    _ => patch::merge(&mut scale, &body),
                }
                if let Some(rv) = scale
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    && rv != store::revision_of(current).to_string() {
                        return Err(ApiError::conflict(&res.qualified(), name));
                    }
                let replicas = scale
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .filter(|r| *r >= 0)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "Scale",
                            name,
                            vec![(
                                "spec.replicas".into(),
                                "Invalid value: must be a non-negative integer".into(),
                            )],
                        )
                    })?;
                let mut new = current.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            })
            .await?;
            Ok(ok(&scale_of(&written)))
        }
        (Method::GET, Some(name), Some("log")) if res.kind == "Pod" => {
            let pod = get(api, res, ns, name).await?;
            crate::node_proxy::pod_log(api, &pod, &q).await
        }
        (Method::POST, Some(name), Some("binding")) if res.kind == "Pod" => {
            let binding = parse_body(&body, &content_type)?;
            bind(api, res, ns, name, &binding).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (Method::POST, None, None) => {
            let mut obj = parse_body(&body, &content_type)?;
            check_fields(&mut obj)?;
            objects::prepare_create(res, &mut obj, ns)?;
            apply::track_update(None, &mut obj, &writer);
            let created = create(api, res, ns, obj, dry_run).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name), None | Some("status")) => {
            let mut new = parse_body(&body, &content_type)?;
            check_fields(&mut new)?;
            let status_only = sub.is_some();
            let expected = new
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            let options = UpdateOptions {
                status_only,
                writer: Some(&writer),
                dry_run,
            };
            update(api, res, ns, name, options, |current| {
                if let Some(rv) = &expected
                    && *rv != store::revision_of(current).to_string() {
                        return Err(ApiError::conflict(&res.qualified(), name));
                    }
                Ok(new.clone())
            })
            .await
            .map(|o| ok(&o))
        }
        (Method::PATCH, Some(name), None) if content_type == "application/apply-patch+yaml" => {
            if param(&q, "fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    "PatchOptions.meta.k8s.io",
                    "",
                    vec![("fieldManager".into(), "Required value: is required for apply patch".into())],
                ));
            }
            let mut config = apply_configuration(&body, res, name)?;
            check_fields(&mut config)?;
            let force = flag(&q, "force");
            let options = UpdateOptions { dry_run, ..Default::default() };
            // A resourceVersion in the configuration is a precondition.
            let expected = config.pointer("/metadata/resourceVersion").and_then(Value::as_str);
            let applied = update(api, res, ns, name, options, |current| {
                if expected.is_some_and(|rv| rv != store::revision_of(current).to_string()) {
                    return Err(ApiError::conflict(&res.qualified(), name));
                }
                apply::apply(Some(current), &config, &writer, force)
            })
            .await;
            match applied {
                Ok(obj) => Ok(ok(&obj)),
                // An apply of an object that does not exist creates it.
                Err(e) if e.code == 404 => {
                    let mut obj = apply::apply(None, &config, &writer, force)?;
                    objects::prepare_create(res, &mut obj, ns)?;
                    let created = create(api, res, ns, obj, dry_run).await?;
                    Ok(json_response(StatusCode::CREATED, &created))
                }
                Err(e) => Err(e),
            }
        }
        (Method::PATCH, Some(name), None | Some("status")) => {
            let status_only = sub.is_some();
            if content_type == "application/apply-patch+yaml" {
                return Err(ApiError::unsupported_media(
                    "server-side apply to a status subresource is not built yet in k3rs",
                ));
            }
            let patch_body: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
            let options = UpdateOptions {
                status_only,
                writer: Some(&writer),
                dry_run,
            };
            update(api, res, ns, name, options, |current| {
                let mut out = current.clone();
                match content_type.as_str() {
                    "application/merge-patch+json" => patch::merge(&mut out, &patch_body),
                    "application/strategic-merge-patch+json" => patch::strategic(&mut out, &patch_body)?,
                    "application/json-patch+json" => out = patch::json_patch(&out, &patch_body)?,
                    other => {
                        return Err(ApiError::unsupported_media(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})")));
                    }
                }
                if let Some(rv) = patch_body.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                    && rv != store::revision_of(current).to_string() {
                        return Err(ApiError::conflict(&res.qualified(), name));
                    }
                check_fields(&mut out)?;
                Ok(out)
            })
            .await
            .map(|o| ok(&o))
        }
        (Method::DELETE, Some(name), None) => {
            let options: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).unwrap_or(json!({}))
            };
            let deleted = delete(api, res, ns, name, &options).await?;
            if res.kind == "Service" && deleted.pointer("/metadata/deletionTimestamp").is_none() {
                crate::allocate::release(&api.store, &deleted).await;
            }
            Ok(ok(&deleted))
        }
        (Method::DELETE, None, None) => {
            let p = list_params(&q, res)?;
            let list = list::list(&api.store, res, ns, &p).await?;
            let mut deleted = Vec::new();
            for item in list["items"].as_array().into_iter().flatten() {
                let name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
                match delete(api, res, item_ns, name, &json!({})).await {
                    Ok(o) => deleted.push(o),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok(
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {}, "items": deleted}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}{}",
            res.plural,
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
    }
    }
    .await;
    let mut response = result?;
    for w in warnings.lock().expect("not poisoned").iter() {
        // RFC 7234 warn-code 299, quoted text (kube's form).
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            response.headers_mut().append(http::header::WARNING, v);
        }
    }
    Ok(response)
}

fn parse_body(body: &[u8], content_type: &str) -> ApiResult<Value> {
    if content_type == "application/vnd.kubernetes.protobuf" {
        return crate::protobuf::decode(body);
    }
    if !(content_type.is_empty() || content_type == "application/json" || content_type == "*/*") {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json (got {content_type})"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// Stores a new object (prepared by `objects::prepare_create`): its
/// namespace must exist; a Service gets its cluster IP and ports; a
/// namespace its `default` ServiceAccount. Answers the stored object.
async fn create(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
) -> ApiResult<Value> {
    if dry_run {
        return Ok(obj);
    }
    if let Some(ns) = ns.filter(|_| res.kind != "Namespace") {
        ensure_namespace(api, ns).await?;
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if res.kind == "Service" {
        crate::allocate::assign(&api.store, &mut obj).await?;
    }
    let created = api.store.swap(&res.key(ns, &name), &obj, 0).await;
    if res.kind == "Service" && !matches!(created, Ok(Swap::Done(_))) {
        crate::allocate::release(&api.store, &obj).await;
    }
    match created? {
        Swap::Done(written) => {
            if res.kind == "Namespace" {
                // What the service-account controller does: every
                // namespace gets a `default` ServiceAccount.
                default_service_account(&api.store, &name).await?;
            }
            Ok(written)
        }
        Swap::Mismatch(_) => Err(ApiError::already_exists(&res.qualified(), &name)),
    }
}

/// The field manager of an ordinary write: `fieldManager`, else the
/// client's User-Agent up to its first `/` (kube-apiserver's rule).
fn field_manager(q: &[(String, String)], headers: &HeaderMap) -> String {
    if let Some(m) = param(q, "fieldManager").filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| {
            ua.split('/')
                .next()
                .unwrap_or_default()
                .chars()
                .take(128)
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// A server-side apply body: a JSON object (kubectl, client-go, the
/// Python client and kube-rs send JSON) of the target's kind, naming it.
fn apply_configuration(body: &[u8], res: &Resource, name: &str) -> ApiResult<Value> {
    let config: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the apply configuration is not JSON (YAML apply bodies are not read yet in k3rs): {e}"
        ))
    })?;
    let field = |f: &str| config.get(f).and_then(Value::as_str).unwrap_or_default();
    if field("apiVersion") != res.api_version() || field("kind") != res.kind {
        return Err(ApiError::bad_request(format!(
            "the apply configuration must be apiVersion {:?}, kind {:?} (got {:?}, {:?})",
            res.api_version(),
            res.kind,
            field("apiVersion"),
            field("kind")
        )));
    }
    match config.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => Ok(config),
        Some(n) => Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        ))),
        None => Err(ApiError::bad_request(
            "the apply configuration has no metadata.name",
        )),
    }
}

async fn get(api: &Api, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    api.store
        .get(&res.key(ns, name))
        .await?
        .ok_or_else(|| ApiError::not_found(&res.qualified(), name))
}

async fn ensure_namespace(api: &Api, ns: &str) -> ApiResult<()> {
    let namespaces = resources::find("", "v1", "namespaces").expect("namespaces are served");
    match api.store.get(&namespaces.key(None, ns)).await? {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
            details: None,
        }),
        Some(_) => Ok(()),
    }
}

/// Read, change, compare-and-swap; retried when another writer got in
/// between (only the change function decides conflicts).
/// How an update is made: on `/status` or the main resource, by which
/// field manager (recorded in managedFields; None: the change records
/// ownership itself, or it is the server's own), and whether for real.
#[derive(Clone, Copy, Default)]
struct UpdateOptions<'a> {
    status_only: bool,
    writer: Option<&'a apply::Writer<'a>>,
    dry_run: bool,
}

async fn update(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    options: UpdateOptions<'_>,
    change: impl Fn(&Value) -> ApiResult<Value>,
) -> ApiResult<Value> {
    let UpdateOptions {
        status_only,
        writer,
        dry_run,
    } = options;
    let key = res.key(ns, name);
    for _ in 0..16 {
        let current = get(api, res, ns, name).await?;
        let mut new = change(&current)?;
        keep_server_fields(res, &current, &mut new, status_only)?;
        if let (Some(writer), false) = (writer, status_only) {
            apply::track_update(Some(&current), &mut new, writer);
        }
        if dry_run {
            return Ok(new);
        }
        // The last finalizer removed from an object being deleted: it goes.
        let finalizers_empty = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        let graceful = current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0);
        if current.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty && !graceful
        {
            return match api.store.delete(&key, store::revision_of(&current)).await? {
                Swap::Done(obj) => Ok(obj),
                Swap::Mismatch(_) => continue,
            };
        }
        if new == current {
            return Ok(current);
        }
        match api
            .store
            .swap(&key, &new, store::revision_of(&current))
            .await?
        {
            Swap::Done(obj) => return Ok(obj),
            Swap::Mismatch(None) => return Err(ApiError::not_found(&res.qualified(), name)),
            Swap::Mismatch(Some(_)) => continue,
        }
    }
    Err(ApiError::conflict(&res.qualified(), name))
}

/// What a client cannot change: identity and server-set metadata; on the
/// main resource the status (its own subresource), on /status the rest.
fn keep_server_fields(
    res: &Resource,
    current: &Value,
    new: &mut Value,
    status_only: bool,
) -> ApiResult<()> {
    if !new.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    if status_only {
        let status = new.get("status").cloned();
        *new = current.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                new.as_object_mut().expect("an object").remove("status");
            }
        }
        return Ok(());
    }
    new["kind"] = json!(res.kind);
    new["apiVersion"] = json!(res.api_version());
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "generation",
        "resourceVersion",
    ] {
        match current["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                new["metadata"]
                    .as_object_mut()
                    .expect("an object")
                    .remove(field);
            }
        }
    }
    if res.has_status {
        match current.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                new.as_object_mut().expect("an object").remove("status");
            }
        }
    }
    if res.kind == "Secret" {
        objects::fold_string_data(new);
    }
    if res.kind == "Service" {
        keep_cluster_ip(current, new)?;
    }
    // generation counts changes of everything but metadata and status.
    let spec_changed = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        strip(current) != strip(new)
    };
    if spec_changed {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    objects::prepare_update(res, current, new)
}

/// Delete with preconditions and finalizers; answers the last state.
async fn delete(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    options: &Value,
) -> ApiResult<Value> {
    let key = res.key(ns, name);
    for _ in 0..16 {
        let current = get(api, res, ns, name).await?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
        {
            return Err(ApiError::conflict(&res.qualified(), name));
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && rv != store::revision_of(&current).to_string()
        {
            return Err(ApiError::conflict(&res.qualified(), name));
        }
        if res.kind == "Namespace" {
            return terminate_namespace(api, current, name).await;
        }
        let mut finalizers: Vec<Value> = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(f) = propagation_finalizer(res, options)?
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(json!(f));
        }
        let marked_already = current.pointer("/metadata/deletionTimestamp").is_some();
        if let Some(grace) = pod_grace_period(res, &current, options) {
            // A pod on a node ends gracefully: it is marked, its agent stops
            // it, then deletes it with grace 0 (kube's graceful deletion).
            let current_grace = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if marked_already && current_grace.is_some_and(|g| g <= grace) {
                return Ok(current);
            }
            let mut marked = current.clone();
            marked["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(now_secs() + grace));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if !finalizers.is_empty() {
                marked["metadata"]["finalizers"] = json!(finalizers);
            }
            match api
                .store
                .swap(&key, &marked, store::revision_of(&current))
                .await?
            {
                Swap::Done(obj) => return Ok(obj),
                Swap::Mismatch(_) => continue,
            }
        }
        if !finalizers.is_empty() {
            let mut marked = current.clone();
            if !marked_already {
                marked["metadata"]["deletionTimestamp"] = json!(objects::now());
            }
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            marked["metadata"]["finalizers"] = json!(finalizers);
            if marked == current {
                return Ok(current);
            }
            match api
                .store
                .swap(&key, &marked, store::revision_of(&current))
                .await?
            {
                Swap::Done(obj) => return Ok(obj),
                Swap::Mismatch(_) => continue,
            }
        }
        match api.store.delete(&key, store::revision_of(&current)).await? {
            Swap::Done(obj) => return Ok(obj),
            Swap::Mismatch(None) => return Err(ApiError::not_found(&res.qualified(), name)),
            Swap::Mismatch(Some(_)) => continue,
        }
    }
    Err(ApiError::conflict(&res.qualified(), name))
}

/// A Service's cluster IP is allocated once: an update that leaves it out
/// keeps it, one that changes it is refused (kube's rule).
fn keep_cluster_ip(current: &Value, new: &mut Value) -> ApiResult<()> {
    let Some(ip) = current.pointer("/spec/clusterIP").and_then(Value::as_str) else {
        return Ok(());
    };
    match new.pointer("/spec/clusterIP").and_then(Value::as_str) {
        None | Some("") => {
            if !new.get("spec").is_some_and(Value::is_object) {
                new["spec"] = json!({});
            }
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = current["spec"].get(field) {
                    new["spec"][field] = v.clone();
                }
            }
            Ok(())
        }
        Some(same) if same == ip => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "Service",
            current["metadata"]["name"].as_str().unwrap_or(""),
            vec![(
                "spec.clusterIPs[0]".into(),
                format!("Invalid value: []string{{\"{other}\"}}: may not change once set"),
            )],
        )),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The finalizer a DELETE's propagation policy asks for: `foregroundDeletion`
/// (dependents first) or `orphan` (dependents keep running, unowned), both
/// carried out by the garbage collector, which follows pods, ReplicaSets,
/// Deployments and Nodes; `None` for Background (the default).
fn propagation_finalizer(res: &Resource, options: &Value) -> ApiResult<Option<&'static str>> {
    let orphan_dependents = options.get("orphanDependents").and_then(Value::as_bool);
    let policy = match (
        options.get("propagationPolicy").and_then(Value::as_str),
        orphan_dependents,
    ) {
        (Some(p), _) => p,
        (None, Some(true)) => "Orphan",
        (None, _) => "Background",
    };
    let followed = matches!(res.kind, "Pod" | "ReplicaSet" | "Deployment" | "Node");
    match policy {
        "Background" => Ok(None),
        "Foreground" if followed => Ok(Some("foregroundDeletion")),
        "Orphan" if followed => Ok(Some("orphan")),
        // Nothing in k3rs owns other kinds, so they have no dependents.
        "Foreground" | "Orphan" => Ok(None),
        other => Err(ApiError::invalid(
            "DeleteOptions",
            "",
            vec![(
                "propagationPolicy".into(),
                format!(
                    "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            )],
        )),
    }
}

/// The grace period a pod's deletion waits for its agent, or `None` when it
/// goes at once: not on a node yet, already finished, or grace 0 asked.
fn pod_grace_period(res: &Resource, pod: &Value, options: &Value) -> Option<i64> {
    if res.kind != "Pod" {
        return None;
    }
    let on_node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let grace = options
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    (on_node && !finished && grace > 0).then_some(grace)
}

/// `pods/NAME/binding`: the scheduler's choice; sets `spec.nodeName` once
/// (409 when the pod is bound or going) and `PodScheduled=True`.
async fn bind(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    binding: &Value,
) -> ApiResult<()> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                name,
                vec![("target.name".into(), "Required value".into())],
            )
        })?;
    let key = res.key(ns, name);
    let conflict = |message: String| ApiError {
        code: 409,
        reason: "Conflict",
        message: format!("Operation cannot be fulfilled on pods/binding \"{name}\": {message}"),
        details: None,
    };
    for _ in 0..16 {
        let current = get(api, res, ns, name).await?;
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(conflict(
                "pod is being deleted, cannot be assigned to a host".into(),
            ));
        }
        if let Some(bound) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(conflict(format!(
                "pod {name} is already assigned to node \"{bound}\""
            )));
        }
        let mut new = current.clone();
        new["spec"]["nodeName"] = json!(node);
        let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()});
        let conditions = new["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(scheduled);
        new["status"]["conditions"] = json!(conditions);
        match api
            .store
            .swap(&key, &new, store::revision_of(&current))
            .await?
        {
            Swap::Done(_) => return Ok(()),
            Swap::Mismatch(None) => return Err(ApiError::not_found(&res.qualified(), name)),
            Swap::Mismatch(Some(_)) => continue,
        }
    }
    Err(ApiError::conflict(&res.qualified(), name))
}

/// Deleting a namespace: it turns Terminating (no new objects in it), its
/// objects are deleted, then it goes (kube's namespace controller's job,
/// done here until k3rs has controllers).
async fn terminate_namespace(api: &Api, current: Value, name: &str) -> ApiResult<Value> {
    let namespaces = resources::find("", "v1", "namespaces").expect("served");
    let marked = if current.pointer("/metadata/deletionTimestamp").is_some() {
        current
    } else {
        let mut marked = current.clone();
        marked["metadata"]["deletionTimestamp"] = json!(objects::now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        marked["status"] = json!({"phase": "Terminating"});
        match api
            .store
            .swap(
                &namespaces.key(None, name),
                &marked,
                store::revision_of(&current),
            )
            .await?
        {
            Swap::Done(obj) => obj,
            Swap::Mismatch(_) => return Err(ApiError::conflict("namespaces", name)),
        }
    };
    let store = api.store.clone();
    let ns = name.to_string();
    tokio::spawn(async move {
        let api = Api {
            store,
            tokens: Vec::new(),
            ca_pem: String::new(),
            tls_dir: std::path::PathBuf::new(),
            node_ca_pem: String::new(),
        };
        for attempt in 0.. {
            match empty_namespace(&api, &ns).await {
                Ok(()) => return,
                // Pods still terminating: look again in a second.
                Err(e) if e.code == 409 => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e.message, attempt, "emptying a namespace failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(marked)
}

async fn empty_namespace(api: &Api, ns: &str) -> ApiResult<()> {
    let mut pods_left = 0;
    for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
        for (_, obj) in api.store.list_all(&res.prefix(Some(ns))).await? {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if res.kind == "Pod" {
                // Pods on a node end gracefully: their agents stop them,
                // then delete them (a direct delete would skip the grace).
                match pod_grace_period(res, &obj, &json!({})) {
                    Some(grace) => {
                        pods_left += 1;
                        if obj.pointer("/metadata/deletionTimestamp").is_none() {
                            let mut marked = obj.clone();
                            marked["metadata"]["deletionTimestamp"] =
                                json!(objects::rfc3339(now_secs() + grace));
                            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                            let key = res.key(Some(ns), name);
                            api.store
                                .swap(&key, &marked, store::revision_of(&obj))
                                .await?;
                        }
                    }
                    None => {
                        let key = res.key(Some(ns), name);
                        api.store.delete(&key, store::revision_of(&obj)).await?;
                    }
                }
                continue;
            }
            let key = res.key(Some(ns), name);
            // Straight to the store: finalizers of the contents are not
            // waited for.
            api.store.delete(&key, store::revision_of(&obj)).await?;
        }
    }
    if pods_left > 0 {
        return Err(ApiError::conflict("namespaces", ns));
    }
    let namespaces = resources::find("", "v1", "namespaces").expect("served");
    if let Some(current) = api.store.get(&namespaces.key(None, ns)).await? {
        api.store
            .delete(&namespaces.key(None, ns), store::revision_of(&current))
            .await?;
    }
    Ok(())
}

fn has_scale(res: &Resource) -> bool {
    matches!(res.kind, "Deployment" | "ReplicaSet")
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

async fn default_service_account(store: &Store, namespace: &str) -> ApiResult<()> {
    let accounts = resources::find("", "v1", "serviceaccounts").expect("served");
    let mut sa = json!({"metadata": {"name": "default"}});
    objects::prepare_create(accounts, &mut sa, Some(namespace))?;
    store
        .swap(&accounts.key(Some(namespace), "default"), &sa, 0)
        .await
        .map(drop)
}

/// Creates what every cluster starts with, if missing: the four
/// namespaces, a `default` ServiceAccount in each, Service default/kubernetes
/// with its Endpoints and EndpointSlice (pointing at `advertise`, rewritten
/// at every start as kube-apiserver does), and Service kube-system/kube-dns
/// at `cluster_dns`.
pub async fn bootstrap(
    store: &Store,
    advertise: std::net::SocketAddr,
    cluster_dns: std::net::Ipv4Addr,
) -> ApiResult<()> {
    let namespaces = resources::find("", "v1", "namespaces").expect("served");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        put_new(store, namespaces, None, json!({"metadata": {"name": ns}})).await?;
        default_service_account(store, ns).await?;
    }
    let kubernetes = json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
           "spec": {"clusterIP": crate::allocate::KUBERNETES_SERVICE_IP,
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise.port()}]}});
    ensure_service(store, kubernetes).await?;
    // K3s's CoreDNS Service, without a selector: every node's agent
    // answers at this address, not a pod.
    let dns = json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
                                  "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                                  "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
           "spec": {"clusterIP": cluster_dns.to_string(),
                    "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                              {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                              {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}});
    if let Err(e) = ensure_service(store, dns).await {
        if e.code != 422 {
            return Err(e);
        }
        tracing::warn!(error = %e.message, "cannot create Service kube-system/kube-dns at the cluster DNS address");
    }
    kubernetes_endpoints(store, advertise).await
}

/// Creates `obj` if no object has its name.
async fn put_new(
    store: &Store,
    res: &'static Resource,
    ns: Option<&str>,
    obj: Value,
) -> ApiResult<()> {
    let mut obj = obj;
    objects::prepare_create(res, &mut obj, ns)?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    store.swap(&res.key(ns, &name), &obj, 0).await.map(drop)
}

/// Creates a bootstrap Service at its fixed cluster IP unless it exists.
async fn ensure_service(store: &Store, svc: Value) -> ApiResult<()> {
    let services = resources::find("", "v1", "services").expect("served");
    let ns = svc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = svc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if store.get(&services.key(Some(&ns), &name)).await?.is_some() {
        return Ok(());
    }
    let mut svc = svc;
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Err(e) = crate::allocate::assign(store, &mut svc).await {
        // A reservation left by an earlier start that stopped half-way is ours.
        if e.code != 422 || !crate::allocate::reserved_for(store, &ip, &ns, &name).await {
            return Err(e);
        }
    }
    put_new(store, services, Some(&ns), svc).await
}

/// kube-apiserver's own Endpoints and EndpointSlice of Service
/// default/kubernetes: this server's address and port, written at every
/// start (only when they changed).
async fn kubernetes_endpoints(store: &Store, advertise: std::net::SocketAddr) -> ApiResult<()> {
    let ip = advertise.ip().to_string();
    let port = advertise.port();
    let endpoints = resources::find("", "v1", "endpoints").expect("served");
    let ep = json!({"metadata": {"name": "kubernetes", "namespace": "default",
                                 "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                    "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    write_fixed(store, endpoints, ep, &["subsets"]).await?;
    let slices = resources::find("discovery.k8s.io", "v1", "endpointslices").expect("served");
    let slice = json!({"metadata": {"name": "kubernetes", "namespace": "default",
                                    "labels": {"kubernetes.io/service-name": "kubernetes"}},
                       "addressType": if advertise.is_ipv4() { "IPv4" } else { "IPv6" },
                       "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
                       "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
    write_fixed(store, slices, slice, &["addressType", "endpoints", "ports"]).await
}

/// Creates `obj` (in default), or replaces `fields` of the stored one when
/// they differ; an address type that changed means a new object.
async fn write_fixed(
    store: &Store,
    res: &'static Resource,
    obj: Value,
    fields: &[&str],
) -> ApiResult<()> {
    let key = res.key(Some("default"), "kubernetes");
    for _ in 0..8 {
        let Some(current) = store.get(&key).await? else {
            match put_new(store, res, Some("default"), obj.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        };
        // An EndpointSlice's addressType is immutable (prepare_update
        // refuses the change), so a new one means a new object.
        if current["addressType"] != obj["addressType"] {
            store.delete(&key, store::revision_of(&current)).await?;
            continue;
        }
        let mut next = current.clone();
        for f in fields {
            next[*f] = obj[*f].clone();
        }
        objects::prepare_update(res, &current, &mut next)?;
        if next == current {
            return Ok(());
        }
        if let Swap::Done(_) = store
            .swap(&key, &next, store::revision_of(&current))
            .await?
        {
            return Ok(());
        }
    }
    Err(ApiError::conflict(&res.qualified(), "kubernetes"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn impersonation_is_refused_in_kubes_words() {
        let user = super::User::new("system:admin", &["system:masters"]);
        let refused = |pairs: &[(&str, &str)]| {
            let mut headers = http::HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            super::refuse_impersonation(&user, &headers).map_err(|e| (e.code, e.message))
        };
        assert_eq!(refused(&[]), Ok(()));
        assert_eq!(
            refused(&[("impersonate-extra-scopes", "view")]),
            Err((403, "userextras.authentication.k8s.io \"view\" is forbidden: User \"system:admin\" cannot impersonate resource \"userextras/scopes\" in API group \"authentication.k8s.io\" at the cluster scope".into()))
        );
        assert_eq!(
            refused(&[("impersonate-user", "system:serviceaccount:ns:sa")]),
            Err((403, "serviceaccounts \"sa\" is forbidden: User \"system:admin\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"ns\"".into()))
        );
    }

    #[test]
    fn query_strings_decode_without_splitting_characters() {
        let uri: http::Uri = "/api/v1/pods?labelSelector=app%3Dweb&x=%é&y=a+b&z=%4"
            .parse()
            .unwrap();
        let q = super::query(&uri);
        assert_eq!(q[0], ("labelSelector".into(), "app=web".into()));
        assert_eq!(q[1].1, "%é");
        assert_eq!(q[2].1, "a b");
        assert_eq!(q[3].1, "%4");
    }
}
