//! Requests that leave HTTP: exec, attach and port-forward switch their
//! connection to SPDY or WebSocket. The request goes on to the next hop
//! (the node's agent, then the runtime's streaming server), and once that
//! answers `101 Switching Protocols` the bytes flow both ways untouched,
//! so every stream protocol the two ends agree on works through.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Request headers that name the hop, not the stream: replaced or dropped.
const HOP_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
];

/// Whether the request asks to switch protocols.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// The request for the next hop: the client's method and stream headers
/// (Upgrade, Sec-WebSocket-*, X-Stream-Protocol-Version), to
/// `path_and_query` on `host`, with `bearer` as its credentials.
pub fn next_hop_request(
    method: &Method,
    path_and_query: &str,
    host: &str,
    headers: &HeaderMap,
    bearer: Option<&str>,
) -> Result<Request<Empty<Bytes>>, String> {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .header(http::header::HOST, host);
    for (name, value) in headers {
        if !HOP_HEADERS.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Empty::new()).map_err(|e| e.to_string())
}

/// Sends `request` over `next_hop` and answers what it answered. On a
/// `101`, the client's connection (`client`, once the answer is written)
/// and the next hop's are joined until either side closes.
pub async fn forward<IO>(
    next_hop: IO,
    request: Request<Empty<Bytes>>,
    client: OnUpgrade,
) -> Result<Response<Bytes>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(next_hop))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let headers = response.headers().clone();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return answer(status, &headers, body);
    }
    let next_hop = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (Ok(client), Ok(next_hop)) = (client.await, next_hop.await) else {
            return;
        };
        let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(next_hop));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    answer(status, &headers, Bytes::new())
}

fn answer(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Result<Response<Bytes>, String> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        if !matches!(name.as_str(), "content-length" | "transfer-encoding") {
            response = response.header(name, value);
        }
    }
    response.body(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_hop_gets_the_stream_headers_and_new_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "SPDY/3.1".parse().unwrap());
        headers.insert(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        headers.insert("authorization", "Bearer user-token".parse().unwrap());
        headers.insert("host", "api:6443".parse().unwrap());
        assert!(is_upgrade(&headers));
        let r = next_hop_request(
            &Method::POST,
            "/exec/ns/p/c?command=ls",
            "10.0.0.5:10250",
            &headers,
            Some("node"),
        )
        .unwrap();
        assert_eq!(r.uri(), "/exec/ns/p/c?command=ls");
        assert_eq!(r.headers()["host"], "10.0.0.5:10250");
        assert_eq!(r.headers()["authorization"], "Bearer node");
        assert_eq!(r.headers()["upgrade"], "SPDY/3.1");
        assert_eq!(
            r.headers()["x-stream-protocol-version"],
            "v4.channel.k8s.io"
        );
        assert!(!is_upgrade(&HeaderMap::new()));
    }
}
