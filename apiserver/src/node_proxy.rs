//! Requests the API server passes to a node's agent (the kubelet's port):
//! `pods/NAME/log`, and `pods/NAME/exec|attach|portforward` (which switch
//! protocols: `upgrade`), go to the agent running the pod, over TLS
//! checked against the node-serving CA, authenticated with the cluster
//! token.

use axum::body::Body;
use axum::response::Response;
use serde_json::Value;

use crate::client::{Client, encode_query};
use crate::handlers::Api;
use crate::status::{ApiError, ApiResult};

/// The agent port when a Node does not say (the kubelet's).
const DEFAULT_AGENT_PORT: i64 = 10250;

/// The query parameters of a log request the agent understands.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "tailLines",
    "previous",
    "timestamps",
    "limitBytes",
    "sinceSeconds",
    "sinceTime",
];

fn container_of(pod: &Value, asked: Option<&str>) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    if let Some(c) = asked.filter(|c| !c.is_empty()) {
        if names.contains(&c) {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    let default = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str);
    let app: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match (default, app.as_slice()) {
        (Some(d), _) if names.contains(&d) => Ok(d.to_string()),
        (_, [only]) => Ok(only.to_string()),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            app.join(" ")
        ))),
    }
}

/// Where a node's agent listens: its InternalIP and kubelet endpoint port.
fn agent_address(node: &Value) -> Option<String> {
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_AGENT_PORT);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Some(format!("https://{host}:{port}"))
}

/// A client for the agent running `pod`, and its address.
async fn agent_of(
    api: &Api,
    pod: &Value,
    waiting: impl FnOnce() -> String,
) -> ApiResult<(Client, String)> {
    let Some(node_name) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Err(ApiError::bad_request(waiting()));
    };
    let nodes = crate::resources::find("", "v1", "nodes").expect("served");
    let node = api
        .store
        .get(&nodes.key(None, node_name))
        .await?
        .ok_or_else(|| ApiError::not_found("nodes", node_name))?;
    let address = agent_address(&node).ok_or_else(|| {
        ApiError::internal(format!("node {node_name:?} reports no InternalIP address"))
    })?;
    let token = api.tokens.first().cloned().unwrap_or_default();
    let client = Client::https(&address, &api.node_ca_pem, &token)
        .map_err(|e| ApiError::internal(format!("cannot reach node {node_name:?}: {e}")))?;
    Ok((client, address))
}

/// A pod's streaming subresource: `(namespace, pod, exec|attach|portforward)`.
pub struct StreamTarget {
    pub namespace: String,
    pub name: String,
    pub subresource: String,
}

/// The target of `/api/v1/namespaces/NS/pods/NAME/exec|attach|portforward`.
pub fn stream_target(path: &str) -> Option<StreamTarget> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            name,
            sub @ ("exec" | "attach" | "portforward"),
        ] => Some(StreamTarget {
            namespace: ns.to_string(),
            name: name.to_string(),
            subresource: sub.to_string(),
        }),
        _ => None,
    }
}

/// `pods/NAME/exec|attach|portforward`: checked as kube-apiserver checks
/// them, then passed to the agent's `/exec|attach|portForward` with the
/// client's stream headers; once the agent switches protocols the two
/// connections are joined.
pub async fn stream(
    api: &Api,
    target: &StreamTarget,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Response> {
    if !matches!(*method, http::Method::GET | http::Method::POST) {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not allowed on pods/{}",
            method, target.subresource
        )));
    }
    let pods = crate::resources::find("", "v1", "pods").expect("served");
    let (namespace, name) = (target.namespace.as_str(), target.name.as_str());
    let pod = api
        .store
        .get(&pods.key(Some(namespace), name))
        .await?
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let query = uri.query().unwrap_or("");
    let pairs = crate::handlers::query(uri);
    let param = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let verb = target.subresource.as_str();
    let path = if verb == "portforward" {
        format!("/portForward/{namespace}/{name}")
    } else {
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!(
                "cannot {verb} into a container in a completed pod; current phase is {phase}"
            )));
        }
        let container = container_of(&pod, param("container"))?;
        format!("/{verb}/{namespace}/{name}/{container}")
    };
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let Some(upgrade) = upgrade.filter(|_| crate::upgrade::is_upgrade(headers)) else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let (client, address) = agent_of(api, &pod, || {
        format!("pod {name} does not have a host assigned")
    })
    .await?;
    let answer = client
        .upgrade(method, &path, headers, upgrade)
        .await
        .map_err(|e| {
            ApiError::internal(format!("error dialing backend: {address}: {}", e.message))
        })?;
    // The agent's refusal goes back as it is, as kube-apiserver passes the
    // kubelet's.
    let (parts, body) = answer.into_parts();
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// `GET pods/NAME/log`: the agent's answer, streamed.
pub async fn pod_log(api: &Api, pod: &Value, query: &[(String, String)]) -> ApiResult<Response> {
    let param = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let container = container_of(pod, param("container"))?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let (client, address) = agent_of(api, pod, || {
        format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )
    })
    .await?;
    let mut path = format!("/containerLogs/{namespace}/{name}/{container}");
    let forwarded: Vec<String> = LOG_PARAMS
        .iter()
        .filter_map(|p| {
            param(p).map(|v| match *p {
                // Booleans as the API server reads them (`True` is true).
                "follow" | "previous" | "timestamps" => {
                    format!("{p}={}", crate::handlers::flag(query, p))
                }
                _ => format!("{p}={}", encode_query(v)),
            })
        })
        .collect();
    if !forwarded.is_empty() {
        path.push('?');
        path.push_str(&forwarded.join("&"));
    }
    let (status, body) = client
        .stream(&path)
        .await
        .map_err(|e| ApiError::internal(format!("Get \"{address}{path}\": {}", e.message)))?;
    if !status.is_success() {
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(ApiError::bad_request(
            String::from_utf8_lossy(&bytes).trim().to_string(),
        ));
    }
    Ok(Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Body::new(body))
        .expect("a valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_asked_or_the_only_one() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container_of(&one, None).unwrap(), "a");
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let e = container_of(&two, None).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(container_of(&two, Some("b")).unwrap(), "b");
        assert!(container_of(&two, Some("c")).is_err());
    }

    #[test]
    fn the_agent_address_comes_from_the_node() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                          "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}}});
        assert_eq!(agent_address(&node).unwrap(), "https://10.0.0.5:10251");
    }
}
