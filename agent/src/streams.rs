//! `kubectl exec`, `attach` and `port-forward` on the agent's port: the
//! kubelet's `/exec/NS/POD/CONTAINER`, `/attach/NS/POD/CONTAINER` and
//! `/portForward/NS/POD`. The runtime hands out a URL of its streaming
//! server (containerd's, on loopback); the request goes on there with
//! the client's stream headers, and once that server switches protocols
//! (SPDY or WebSocket, whichever the client and it agree on) the
//! connection from the API server is joined to it.

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::upgrade::OnUpgrade;

use crate::runtime::{Stdio, StreamRequest};
use crate::supervisor::Supervisor;

/// Which stream a path asks for.
pub enum Target<'a> {
    Exec {
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    },
    Attach {
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    },
    PortForward {
        namespace: &'a str,
        pod: &'a str,
    },
}

impl<'a> Target<'a> {
    /// The stream a path's segments name, if they name one.
    pub fn parse(segments: &[&'a str]) -> Option<Target<'a>> {
        match *segments {
            ["exec", namespace, pod, container] => Some(Target::Exec {
                namespace,
                pod,
                container,
            }),
            ["attach", namespace, pod, container] => Some(Target::Attach {
                namespace,
                pod,
                container,
            }),
            ["portForward", namespace, pod] => Some(Target::PortForward { namespace, pod }),
            _ => None,
        }
    }
}

/// The answer to a stream request: the streaming server's, or why not.
pub async fn serve(
    supervisor: &Supervisor,
    target: Target<'_>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
) -> Response<Bytes> {
    match open(supervisor, target, method, uri, headers, upgrade).await {
        Ok(answer) => answer,
        Err((status, message)) => Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Bytes::from(message))
            .unwrap_or_default(),
    }
}

async fn open(
    supervisor: &Supervisor,
    target: Target<'_>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
) -> Result<Response<Bytes>, (StatusCode, String)> {
    let query = Query::parse(&apiserver::handlers::query(uri));
    let request = stream_request(supervisor, target, &query)?;
    let Some(upgrade) = upgrade.filter(|_| apiserver::upgrade::is_upgrade(headers)) else {
        return Err((StatusCode::BAD_REQUEST, "Upgrade request required".into()));
    };
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let url: http::Uri = supervisor
        .stream_url(&request)
        .await
        .map_err(internal)?
        .parse()
        .map_err(|e| internal(format!("the runtime's streaming URL: {e}")))?;
    let authority = url
        .authority()
        .ok_or_else(|| internal("the runtime's streaming URL names no server".into()))?
        .to_string();
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let server = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| {
            internal(format!(
                "dialing the runtime's streaming server {authority}: {e}"
            ))
        })?;
    if let Some(stdio) = websocket_stdio(&request, headers) {
        return translate(headers, server, path, &authority, upgrade, stdio).await;
    }
    let next = apiserver::upgrade::next_hop_request(method, path, &authority, headers, None)
        .map_err(internal)?;
    apiserver::upgrade::forward(server, next, upgrade)
        .await
        .map_err(internal)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The streams of a WebSocket exec or attach the agent translates (the
/// runtime's streaming server speaks only SPDY); None for anything else,
/// which goes on as it came.
fn websocket_stdio(request: &StreamRequest, headers: &HeaderMap) -> Option<Stdio> {
    let stdio = match request {
        StreamRequest::Exec { stdio, .. } | StreamRequest::Attach { stdio, .. } => *stdio,
        StreamRequest::PortForward { .. } => return None,
    };
    let websocket = header(headers, "upgrade").eq_ignore_ascii_case("websocket");
    let protocol = crate::websocket::choose_protocol(header(headers, "sec-websocket-protocol"));
    (websocket && protocol.is_some()).then_some(stdio)
}

/// Answers the client's WebSocket and opens SPDY to the runtime's
/// streaming server, joined by `websocket::bridge`.
async fn translate(
    headers: &HeaderMap,
    server: tokio::net::TcpStream,
    path: &str,
    authority: &str,
    client: OnUpgrade,
    stdio: Stdio,
) -> Result<Response<Bytes>, (StatusCode, String)> {
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let mut spdy = HeaderMap::new();
    spdy.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    spdy.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("SPDY/3.1"),
    );
    spdy.insert(
        "x-stream-protocol-version",
        http::HeaderValue::from_static(crate::websocket::SPDY_PROTOCOL),
    );
    let next = apiserver::upgrade::next_hop_request(&Method::POST, path, authority, &spdy, None)
        .map_err(internal)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(server))
            .await
            .map_err(|e| internal(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut answer = sender
        .send_request(next)
        .await
        .map_err(|e| internal(e.to_string()))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(internal(format!(
            "the runtime's streaming server answered {} to SPDY",
            answer.status()
        )));
    }
    let spdy_side = hyper::upgrade::on(&mut answer)
        .await
        .map_err(|e| internal(e.to_string()))?;
    tokio::spawn(async move {
        let Ok(client) = client.await else { return };
        let (ws, spdy) = (
            hyper_util::rt::TokioIo::new(client),
            hyper_util::rt::TokioIo::new(spdy_side),
        );
        if let Err(e) = crate::websocket::bridge(ws, spdy, stdio).await {
            tracing::debug!(error = %e, "a WebSocket stream ended with an error");
        }
    });
    let protocol = crate::websocket::choose_protocol(header(headers, "sec-websocket-protocol"))
        .unwrap_or(crate::websocket::PROTOCOLS[0]);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(
            "sec-websocket-accept",
            crate::websocket::accept_key(header(headers, "sec-websocket-key")),
        )
        .header("sec-websocket-protocol", protocol)
        .body(Bytes::new())
        .map_err(|e| internal(e.to_string()))
}

/// What the runtime is asked for, once the container is known to run.
fn stream_request(
    supervisor: &Supervisor,
    target: Target<'_>,
    query: &Query,
) -> Result<StreamRequest, (StatusCode, String)> {
    let not_found = |what: String| (StatusCode::NOT_FOUND, what);
    let container_id = |namespace: &str, pod: &str, container: &str| {
        if supervisor.pod_uid(namespace, pod).is_none() {
            return Err(not_found(format!("pod does not exist: {namespace}/{pod}")));
        }
        supervisor
            .running_container(namespace, pod, container)
            .ok_or_else(|| not_found(format!("container not found ({container:?})")))
    };
    Ok(match target {
        Target::Exec {
            namespace,
            pod,
            container,
        } => {
            if query.command.is_empty() {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "you must specify at least 1 command".into(),
                ));
            }
            StreamRequest::Exec {
                container_id: container_id(namespace, pod, container)?,
                command: query.command.clone(),
                stdio: query.stdio,
            }
        }
        Target::Attach {
            namespace,
            pod,
            container,
        } => StreamRequest::Attach {
            container_id: container_id(namespace, pod, container)?,
            stdio: query.stdio,
        },
        Target::PortForward { namespace, pod } => StreamRequest::PortForward {
            pod_uid: supervisor
                .pod_uid(namespace, pod)
                .ok_or_else(|| not_found(format!("pod does not exist: {namespace}/{pod}")))?,
            ports: query.ports.clone(),
        },
    })
}

/// The stream's query parameters, as kubectl sends them.
#[derive(Debug, Default, PartialEq)]
struct Query {
    command: Vec<String>,
    stdio: Stdio,
    ports: Vec<i32>,
}

impl Query {
    fn parse(pairs: &[(String, String)]) -> Query {
        let mut q = Query::default();
        for (k, v) in pairs {
            let on = matches!(v.as_str(), "1" | "true" | "True" | "TRUE");
            match k.as_str() {
                "command" => q.command.push(v.clone()),
                "stdin" | "input" => q.stdio.stdin = on,
                "stdout" | "output" => q.stdio.stdout = on,
                "stderr" => q.stdio.stderr = on,
                "tty" => q.stdio.tty = on,
                "ports" | "port" => q
                    .ports
                    .extend(v.split(',').filter_map(|p| p.trim().parse::<i32>().ok())),
                _ => {}
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Query {
        let uri: http::Uri = format!("/exec?{query}").parse().unwrap();
        Query::parse(&apiserver::handlers::query(&uri))
    }

    #[test]
    fn kubectl_queries_parse() {
        let q = parse(
            "command=sh&command=-c&command=echo+hi%3B%20ls&container=c&stdin=true&stdout=true&tty=1",
        );
        assert_eq!(q.command, ["sh", "-c", "echo hi; ls"]);
        assert!(q.stdio.stdin && q.stdio.stdout && q.stdio.tty && !q.stdio.stderr);
        assert_eq!(parse("ports=8080,9090").ports, [8080, 9090]);
        assert!(matches!(
            Target::parse(&["exec", "ns", "p", "c"]),
            Some(Target::Exec { container: "c", .. })
        ));
        assert!(Target::parse(&["portForward", "ns", "p"]).is_some());
        assert!(Target::parse(&["exec", "ns"]).is_none());
    }
}
