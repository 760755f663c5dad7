//! The agent's port (the kubelet's 10250): `/containerLogs/NS/POD/CONTAINER`
//! for `kubectl logs`, which the API server proxies here, and the
//! streams of `kubectl exec`, `attach` and `port-forward` (`streams`). TLS with the
//! certificate the server issued at join; every request carries the
//! cluster token. Logs of the CRI runtime are decoded from the CRI
//! format (`cri_log`); those of host processes are their bytes as written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::cri_log::{Decoder, LogLine};
use crate::runtime::LogFormat;
use crate::supervisor::Supervisor;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What a log request asked for (the kubelet's query parameters).
#[derive(Debug, Default, PartialEq)]
pub struct LogQuery {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<u64>,
    pub timestamps: bool,
    pub since_seconds: Option<u64>,
    /// `sinceTime` as seconds since the epoch.
    pub since_time: Option<i64>,
}

impl LogQuery {
    /// The earliest time asked for, as seconds since the epoch.
    fn since(&self) -> Option<i64> {
        let seconds = self.since_seconds.map(|s| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            now - s as i64
        });
        seconds.max(self.since_time)
    }

    /// Whether the options need the runtime's per-line timestamps.
    fn needs_timestamps(&self) -> bool {
        self.timestamps || self.since_seconds.is_some() || self.since_time.is_some()
    }

    pub fn parse(query: &str) -> LogQuery {
        let mut q = LogQuery::default();
        // Decoded as the API server decodes queries (`%3A`, `+`).
        let uri: http::Uri = format!("/?{query}").parse().unwrap_or_default();
        for (k, v) in apiserver::handlers::query(&uri) {
            let v = v.as_str();
            match k.as_str() {
                "follow" => q.follow = v == "true" || v == "1",
                "previous" => q.previous = v == "true" || v == "1",
                "tailLines" => q.tail_lines = v.parse().ok(),
                "limitBytes" => q.limit_bytes = v.parse().ok(),
                "timestamps" => q.timestamps = v == "true" || v == "1",
                "sinceSeconds" => q.since_seconds = v.parse().ok(),
                "sinceTime" => {
                    q.since_time = crate::cri_log::parse_rfc3339(v).map(|(s, _)| s);
                }
                _ => {}
            }
        }
        q
    }
}

/// The last `n` lines of `data`.
pub fn tail(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let trimmed = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in trimmed.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(
            Full::new(Bytes::from(message.into()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

struct State {
    supervisor: Arc<Supervisor>,
    token: String,
}

fn authorized(state: &State, req: &Request<hyper::body::Incoming>) -> bool {
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    // Constant time: a token compared byte by byte leaks its prefix.
    given.len() == state.token.len()
        && given
            .bytes()
            .zip(state.token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(state: Arc<State>, mut req: Request<hyper::body::Incoming>) -> Response<Body> {
    if !authorized(&state, &req) {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(target) = crate::streams::Target::parse(&segments) {
        let upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
        let answer = crate::streams::serve(
            &state.supervisor,
            target,
            req.method(),
            req.uri(),
            req.headers(),
            upgrade,
        )
        .await;
        return answer.map(|b| Full::new(b).map_err(|never| match never {}).boxed());
    }
    let ["containerLogs", namespace, pod, container] = segments.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{path} is not served by the k3rs agent"),
        );
    };
    let query = LogQuery::parse(req.uri().query().unwrap_or(""));
    let Some(file) = state
        .supervisor
        .log_path(namespace, pod, container, query.previous)
    else {
        let message = if query.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return text(StatusCode::BAD_REQUEST, message);
    };
    let format = state.supervisor.log_format();
    if format == LogFormat::Raw && query.needs_timestamps() {
        return text(
            StatusCode::BAD_REQUEST,
            "timestamps, sinceSeconds and sinceTime need the containerd runtime: host-process \
             logs carry no timestamps",
        );
    }
    match logs(&state, namespace, pod, container, file, &query, format).await {
        Ok(r) => r,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// The log file's content after `tailLines`/`limitBytes`; with `follow`,
/// then whatever the container writes until it stops or restarts.
async fn logs(
    state: &State,
    namespace: &str,
    pod: &str,
    container: &str,
    file: PathBuf,
    query: &LogQuery,
    format: LogFormat,
) -> Result<Response<Body>> {
    let data = tokio::fs::read(&file).await.unwrap_or_default();
    let mut decoder = Decoder::default();
    let mut head = match format {
        LogFormat::Raw => match query.tail_lines {
            Some(n) => tail(&data, n).to_vec(),
            None => data.clone(),
        },
        LogFormat::Cri => {
            let mut lines = decoder.push(&data);
            if !query.follow {
                lines.extend(decoder.finish());
            }
            let lines = since(lines, query.since());
            let skip = query
                .tail_lines
                .map_or(0, |n| lines.len().saturating_sub(n));
            render(&lines[skip..], query.timestamps)
        }
    };
    if let Some(limit) = query.limit_bytes {
        head.truncate(limit as usize);
    }
    if !query.follow {
        return Ok(Response::builder()
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(
                Full::new(Bytes::from(head))
                    .map_err(|never| match never {})
                    .boxed(),
            )?);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let _ = tx.send(Ok(Frame::data(Bytes::from(head)))).await;
    let supervisor = state.supervisor.clone();
    let (namespace, pod, container) = (
        namespace.to_string(),
        pod.to_string(),
        container.to_string(),
    );
    let mut offset = data.len() as u64;
    let (since_time, timestamps) = (query.since(), query.timestamps);
    tokio::spawn(async move {
        let mut quiet_since_stop = 0u32;
        loop {
            if tx.is_closed() {
                return;
            }
            let mut chunk = Vec::new();
            if let Ok(mut f) = tokio::fs::File::open(&file).await {
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                // Rotated under us: the new file starts from its beginning.
                if len < offset {
                    offset = 0;
                    decoder = Decoder::default();
                }
                if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    let _ = f.read_to_end(&mut chunk).await;
                }
            }
            offset += chunk.len() as u64;
            if format == LogFormat::Cri {
                chunk = render(&since(decoder.push(&chunk), since_time), timestamps);
            }
            let current = supervisor.log_path(&namespace, &pod, &container, false);
            if !chunk.is_empty() {
                quiet_since_stop = 0;
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                    return;
                }
            } else if current.as_ref() != Some(&file) {
                // The container restarted or the pod went: this run's log
                // is complete (kubectl logs -f ends, as with the kubelet).
                quiet_since_stop += 1;
                if quiet_since_stop > 2 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(BodyExt::boxed(StreamBody::new(stream)))?)
}

/// The lines written at or after `since` (seconds since the epoch).
fn since(lines: Vec<LogLine>, since: Option<i64>) -> Vec<LogLine> {
    match since {
        Some(t) => lines.into_iter().filter(|l| l.time.0 >= t).collect(),
        None => lines,
    }
}

/// The lines as `kubectl logs` prints them, each after its timestamp
/// when asked.
fn render(lines: &[LogLine], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if timestamps {
            out.extend_from_slice(line.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&line.text);
    }
    out
}

/// Binds the agent's port (`0`: any free port); answers the bound address.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the agent's port"))
}

/// Serves log requests on `listener` until the process ends.
pub fn serve(
    listener: tokio::net::TcpListener,
    cert_pem: &str,
    key_pem: &str,
    supervisor: Arc<Supervisor>,
    token: String,
) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let state = Arc::new(State { supervisor, token });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_tails() {
        assert_eq!(
            LogQuery::parse("follow=true&tailLines=2&previous=false"),
            LogQuery {
                follow: true,
                previous: false,
                tail_lines: Some(2),
                ..LogQuery::default()
            }
        );
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\n", 5), b"a\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
        let q = LogQuery::parse("timestamps=true&sinceTime=1970-01-01T00%3A01%3A00Z");
        assert!(q.timestamps && q.needs_timestamps());
        assert_eq!(q.since_time, Some(60));
    }

    #[test]
    fn cri_lines_render_with_timestamps_and_since() {
        let mut d = Decoder::default();
        let lines = d.push(b"1970-01-01T00:00:59Z stdout F a\n1970-01-01T00:01:00.5Z stderr F b\n");
        assert_eq!(render(&lines, false), b"a\nb\n");
        let late = since(lines, Some(60));
        assert_eq!(render(&late, true), b"1970-01-01T00:01:00.5Z b\n");
    }
}
