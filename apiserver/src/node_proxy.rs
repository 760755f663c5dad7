//! Requests the API server passes to a node's agent (the kubelet's port):
//! `pods/NAME/log` goes to the agent running the pod, over TLS checked
//! against the node-serving CA, authenticated with the cluster token.

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

/// `GET pods/NAME/log`: the agent's answer, streamed.
pub async fn pod_log(api: &Api, pod: &Value, query: &[(String, String)]) -> ApiResult<Response> {
    let param = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let container = container_of(pod, param("container"))?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let Some(node_name) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
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
