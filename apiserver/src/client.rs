//! A small Kubernetes REST client for k3rs's own parts: the controllers and
//! scheduler call the API in-process (the same handler code kubectl's
//! requests go through, so defaults, validation and conflicts apply), the
//! node agent calls it over HTTPS with the cluster token.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::handlers::{self, Api, ConnAuth};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A failed request: the HTTP status and the `Status` object's reason and
/// message (code 0: the server could not be reached).
#[derive(Debug, Clone)]
pub struct ClientError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} ({}): {}", self.reason, self.code, self.message)
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    fn unreachable(e: impl std::fmt::Display) -> ClientError {
        ClientError {
            code: 0,
            reason: "Unreachable".into(),
            message: e.to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    pub fn is_conflict(&self) -> bool {
        self.code == 409
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// The PATCH body formats.
#[derive(Clone, Copy, Debug)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    fn content_type(self) -> &'static str {
        match self {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
            PatchType::Json => "application/json-patch+json",
        }
    }
}

/// One watch event: `kind` is ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: String,
    pub object: Value,
}

/// The path of a resource collection or object:
/// `resource_path("apps/v1", "deployments", Some("default"), Some("web"))`.
pub fn resource_path(
    api_version: &str,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let mut p = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    if let Some(ns) = namespace {
        p.push_str("/namespaces/");
        p.push_str(ns);
    }
    p.push('/');
    p.push_str(plural);
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

/// The path of a pod object, from its metadata.
pub fn pod_path(pod: &Value) -> String {
    let at = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default();
    resource_path(
        "v1",
        "pods",
        Some(at("/metadata/namespace")),
        Some(at("/metadata/name")),
    )
}

/// Percent-encodes a query value (selectors carry `=`, `,` and `!`).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The user k3rs's own controllers and scheduler act as.
fn in_process_user() -> Arc<crate::identity::User> {
    static USER: std::sync::OnceLock<Arc<crate::identity::User>> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        Arc::new(crate::identity::User::new(
            "system:k3rs-controllers",
            &["system:masters"],
        ))
    })
    .clone()
}

#[derive(Clone)]
enum Transport {
    InProcess(Arc<Api>),
    Https(Arc<Https>),
}

struct Https {
    host: String,
    port: u16,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    token: String,
    /// Idle keep-alive connections; a std mutex, nothing awaits under it.
    idle: Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
}

/// A cheap handle; clones share connections.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
}

impl Client {
    /// Sends a request that switches protocols (exec, attach,
    /// port-forward) and, once the server agrees, joins `client`'s
    /// connection to it (`upgrade::forward`). HTTPS clients only.
    pub async fn upgrade(
        &self,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
        client: hyper::upgrade::OnUpgrade,
    ) -> ClientResult<http::Response<Bytes>> {
        let Transport::Https(https) = &self.transport else {
            return Err(ClientError::unreachable(
                "an in-process client cannot switch protocols",
            ));
        };
        let tls = https.tls().await?;
        let host = format!("{}:{}", https.host, https.port);
        let request =
            crate::upgrade::next_hop_request(method, path, &host, headers, Some(&https.token))
                .map_err(ClientError::unreachable)?;
        crate::upgrade::forward(tls, request, client)
            .await
            .map_err(ClientError::unreachable)
    }

    /// Requests go straight to the handlers, authenticated as the admin.
    pub fn in_process(api: Arc<Api>) -> Client {
        Client {
            transport: Transport::InProcess(api),
        }
    }

    /// Requests go to `server` (`https://HOST:PORT`), whose certificate must
    /// chain to `ca_pem`, with `token` as the bearer token.
    pub fn https(server: &str, ca_pem: &str, token: &str) -> anyhow::Result<Client> {
        let uri: http::Uri = server.parse()?;
        anyhow::ensure!(
            uri.scheme_str() == Some("https"),
            "the server URL must be https://HOST:PORT, not {server}"
        );
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("no host in {server}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(6443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(host.clone())?;
        Ok(Client {
            transport: Transport::Https(Arc::new(Https {
                host,
                port,
                connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                server_name,
                token: token.to_string(),
                idle: Mutex::new(Vec::new()),
            })),
        })
    }

    pub async fn get(&self, path: &str) -> ClientResult<Value> {
        self.json(Method::GET, path, None, None).await
    }

    pub async fn create(&self, path: &str, body: &Value) -> ClientResult<Value> {
        self.json(Method::POST, path, Some(body), None).await
    }

    pub async fn update(&self, path: &str, body: &Value) -> ClientResult<Value> {
        self.json(Method::PUT, path, Some(body), None).await
    }

    pub async fn patch(&self, path: &str, kind: PatchType, body: &Value) -> ClientResult<Value> {
        self.json(Method::PATCH, path, Some(body), Some(kind.content_type()))
            .await
    }

    pub async fn delete(&self, path: &str, options: &Value) -> ClientResult<Value> {
        self.json(Method::DELETE, path, Some(options), None).await
    }

    /// A watch (`path` carries `?watch=true&…`): events until the server
    /// ends it or the receiver is dropped; a broken stream ends with an error.
    pub async fn watch(
        &self,
        path: &str,
    ) -> ClientResult<mpsc::Receiver<ClientResult<WatchEvent>>> {
        let (status, mut body) = self.send(Method::GET, path, None, None, false).await?;
        if status != StatusCode::OK {
            let bytes = collect(body).await?;
            return Err(error_of(status, &bytes));
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let frame = tokio::select! {
                    f = body.frame() => f,
                    _ = tx.closed() => return,
                };
                match frame {
                    None => return,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(ClientError::unreachable(e))).await;
                        return;
                    }
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        buf.extend_from_slice(&data);
                        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=end).collect();
                            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                                continue;
                            };
                            let event = WatchEvent {
                                kind: v["type"].as_str().unwrap_or_default().to_string(),
                                object: v["object"].clone(),
                            };
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Any request; answers the status and the body as it came.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> ClientResult<(StatusCode, Bytes)> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, body) = self.send(method, path, body, None, true).await?;
        Ok((status, collect(body).await?))
    }

    /// A POST with extra headers; answers the status and body as they came.
    pub async fn post_with_headers(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> ClientResult<(StatusCode, Bytes)> {
        let (status, body) = self
            .send_with(Method::POST, path, None, None, false, headers)
            .await?;
        Ok((status, collect(body).await?))
    }

    /// A GET whose body is passed on as it arrives (logs with `follow`).
    pub async fn stream(&self, path: &str) -> ClientResult<(StatusCode, ResponseBody)> {
        self.send(Method::GET, path, None, None, false).await
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        content_type: Option<&str>,
    ) -> ClientResult<Value> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, body) = self.send(method, path, body, content_type, true).await?;
        let bytes = collect(body).await?;
        if !status.is_success() {
            return Err(error_of(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError {
            code: status.as_u16(),
            reason: "InvalidResponse".into(),
            message: format!("the answer is not JSON: {e}"),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
        reuse: bool,
    ) -> ClientResult<(StatusCode, ResponseBody)> {
        self.send_with(method, path, body, content_type, reuse, &[])
            .await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
        reuse: bool,
        extra: &[(&str, String)],
    ) -> ClientResult<(StatusCode, ResponseBody)> {
        let content_type = content_type.unwrap_or("application/json");
        match &self.transport {
            Transport::InProcess(api) => {
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    content_type.parse().expect("a valid header"),
                );
                // The field manager of the controllers' writes.
                headers.insert(
                    http::header::USER_AGENT,
                    http::HeaderValue::from_static("k3rs-controllers"),
                );
                for (name, value) in extra {
                    if let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_str(value),
                    ) {
                        headers.insert(n, v);
                    }
                }
                let uri: http::Uri = path.parse().map_err(ClientError::unreachable)?;
                // Boxed: the handlers may call a client themselves.
                let response = Box::pin(handlers::handle(
                    api.clone(),
                    ConnAuth {
                        certificate_user: Some(in_process_user()),
                    },
                    method,
                    uri,
                    headers,
                    body.unwrap_or_default(),
                    None,
                ))
                .await;
                let status = response.status();
                let body = response.into_body().map_err(BoxError::from).boxed_unsync();
                Ok((status, body))
            }
            Transport::Https(https) => {
                let mut request = Request::builder();
                for (name, value) in extra {
                    request = request.header(*name, value.as_str());
                }
                let request = request
                    .method(method)
                    .uri(path)
                    .header(http::header::HOST, format!("{}:{}", https.host, https.port))
                    .header(http::header::CONTENT_TYPE, content_type)
                    .header(http::header::ACCEPT, "application/json")
                    .header(http::header::USER_AGENT, "k3rs-agent")
                    .header(
                        http::header::AUTHORIZATION,
                        format!("Bearer {}", https.token),
                    )
                    .body(Full::new(body.unwrap_or_default()))
                    .map_err(ClientError::unreachable)?;
                https.send(request, reuse).await
            }
        }
    }
}

impl Https {
    async fn connect(&self) -> ClientResult<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let tls = self.tls().await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(ClientError::unreachable)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A fresh TLS connection to the server.
    async fn tls(&self) -> ClientResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                ClientError::unreachable(format!(
                    "cannot reach the API server at {}:{}: {e}",
                    self.host, self.port
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::unreachable(format!("TLS with the API server: {e}")))?;
        Ok(tls)
    }

    async fn send_fresh(
        &self,
        request: Request<Full<Bytes>>,
    ) -> ClientResult<(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        http::Response<hyper::body::Incoming>,
    )> {
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(ClientError::unreachable)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(ClientError::unreachable)?;
        Ok((sender, response))
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
        reuse: bool,
    ) -> ClientResult<(StatusCode, ResponseBody)> {
        let pooled = if reuse {
            let mut idle = self.idle.lock().expect("not poisoned");
            idle.retain(|s| !s.is_closed());
            idle.pop()
        } else {
            None
        };
        let (sender, response) = match pooled {
            // The server may have closed an idle connection (its header
            // timeout) just now: a request that did not go out goes on a
            // new one.
            Some(mut sender) => match sender.ready().await {
                Ok(()) => match sender.try_send_request(request).await {
                    Ok(response) => (sender, response),
                    Err(mut e) => match e.take_message() {
                        Some(request) => self.send_fresh(request).await?,
                        None => return Err(ClientError::unreachable(e.into_error())),
                    },
                },
                Err(_) => self.send_fresh(request).await?,
            },
            None => self.send_fresh(request).await?,
        };
        let status = response.status();
        if !reuse {
            let body = response.into_body().map_err(BoxError::from).boxed_unsync();
            return Ok((status, body));
        }
        // Read the whole body before the connection goes back to the pool.
        let bytes = collect(response.into_body().map_err(BoxError::from).boxed_unsync()).await?;
        let mut idle = self.idle.lock().expect("not poisoned");
        if idle.len() < 8 {
            idle.push(sender);
        }
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok((status, body))
    }
}

/// `GET https://SERVER/cacerts` without checking the server's certificate:
/// the caller checks the answer against the hash in its join token (K3s's
/// first step of joining).
pub async fn fetch_ca_unverified(server: &str) -> anyhow::Result<String> {
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let uri: http::Uri = server.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("no host in {server}"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(6443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let https = Https {
        server_name: ServerName::try_from(host.clone())?,
        host,
        port,
        connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        token: String::new(),
        idle: Mutex::new(Vec::new()),
    };
    let request = Request::builder()
        .uri("/cacerts")
        .header(http::header::HOST, format!("{}:{}", https.host, https.port))
        .body(Full::new(Bytes::new()))?;
    let (status, body) = https.send(request, true).await?;
    let body = collect(body).await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "GET {server}/cacerts answered {status}"
    );
    Ok(String::from_utf8(body.to_vec())?)
}

async fn collect(body: ResponseBody) -> ClientResult<Bytes> {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(ClientError::unreachable)
}

fn error_of(status: StatusCode, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ClientError {
        code: status.as_u16(),
        reason: v["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_api_layout() {
        assert_eq!(
            resource_path("v1", "pods", Some("default"), Some("web")),
            "/api/v1/namespaces/default/pods/web"
        );
        assert_eq!(
            resource_path("apps/v1", "deployments", None, None),
            "/apis/apps/v1/deployments"
        );
        assert_eq!(
            encode_query("spec.nodeName=a,b!=c"),
            "spec.nodeName%3Da%2Cb%21%3Dc"
        );
    }
}
