//! The DNS socket loops: UDP and TCP on one address, each query routed to
//! the cluster zone's `ClusterHandler` or forwarded as it came.
//!
//! These loops stand in for hickory-server's `Server` because it has no cap
//! on TCP connections, logs every answer at info, and can only re-encode a
//! forwarded answer; the zone itself is a hickory `RequestHandler`.
//! Bounds: `forward::MAX_IN_FLIGHT` forwarded queries (the rest REFUSED at
//! once), `MAX_TCP_CONNECTIONS` connections (the rest closed at once),
//! each idle at most `TCP_IDLE`, its queries answered one after another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{MessageType, OpCode, ResponseCode};
use hickory_server::server::{Request, RequestHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::clients::Clients;
use super::forward::ForwardError;
use super::handler::{ClusterHandler, Encoded, error_response};

/// TCP connections served at once; more are closed as they arrive.
pub const MAX_TCP_CONNECTIONS: usize = 256;

/// How long a TCP connection may wait between queries (CoreDNS's idle
/// timeout for TCP).
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Responses sent, by response code (0..=15), and queries dropped unread
/// (too short, or responses sent to us).
#[derive(Debug, Default)]
pub struct Stats {
    rcodes: [AtomicU64; 16],
    dropped: AtomicU64,
}

impl Stats {
    /// Responses sent with `code`.
    pub fn count(&self, code: ResponseCode) -> u64 {
        let index = usize::from(u16::from(code) & 0xf);
        self.rcodes[index].load(Ordering::Relaxed)
    }

    /// Every response sent.
    pub fn total(&self) -> u64 {
        self.rcodes.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn record(&self, response: &[u8]) {
        if let Some(flags) = response.get(3) {
            self.rcodes[usize::from(flags & 0xf)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the loops share.
pub(super) struct Context {
    pub(super) handler: ClusterHandler,
    pub(super) stats: Arc<Stats>,
    pub(super) clients: Arc<Clients>,
}

/// A FORMERR for a message whose header reads but whose rest does not.
fn format_error(raw: &[u8]) -> Vec<u8> {
    let mut header = vec![0u8; 12];
    header[..2].copy_from_slice(&raw[..2]);
    // QR, the opcode as asked; rcode 1.
    header[2] = 0x80 | (raw[2] & 0x78);
    header[3] = 1;
    header
}

impl Context {
    /// The response to `raw`, or `None` to send nothing.
    async fn respond(&self, raw: Vec<u8>, src: SocketAddr, protocol: Protocol) -> Option<Vec<u8>> {
        // Shorter than a header, or a response: nothing to answer (a
        // response answered would make us a reflector).
        if raw.len() < 12 || raw[2] & 0x80 != 0 {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut header = [0u8; 12];
        header.copy_from_slice(&raw[..12]);
        let request = match Request::from_bytes(raw, src, protocol) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%src, error = %e, "malformed DNS query");
                return Some(format_error(&header));
            }
        };
        let max_size = match protocol {
            Protocol::Udp => request.max_payload(),
            _ => u16::MAX,
        };
        let out = Encoded::new(max_size);
        let ours = request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query
            && request.queries.queries().first().is_some_and(|q| {
                self.handler
                    .zone
                    .is_ours(&self.handler.current(), q.original().name())
            });
        if ours || request.queries.len() != 1 || request.metadata.op_code != OpCode::Query {
            self.handler
                .handle_request::<_, TokioTime>(&request, out.clone())
                .await;
            return out.take();
        }
        if !self.clients.may_forward(src.ip()) {
            tracing::debug!(%src, "refusing to forward a name for a client outside the cluster");
            error_response(&request, ResponseCode::Refused, out.clone()).await;
            return out.take();
        }
        let forwarded = match self.handler.forwarder.permit() {
            Ok(permit) => {
                self.handler
                    .forwarder
                    .forward(
                        permit,
                        request.as_slice(),
                        protocol == Protocol::Tcp,
                        usize::from(request.max_payload()),
                    )
                    .await
            }
            Err(busy) => Err(busy),
        };
        match forwarded {
            Ok(answer) => Some(answer),
            Err(e) => {
                let code = match e {
                    ForwardError::Busy => ResponseCode::Refused,
                    ForwardError::Failed => ResponseCode::ServFail,
                };
                error_response(&request, code, out.clone()).await;
                out.take()
            }
        }
    }
}

/// Answers UDP queries on `socket` until it fails; each query is its own
/// task, so a slow upstream holds only its own.
pub(super) async fn serve_udp(socket: Arc<UdpSocket>, cx: Arc<Context>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux;
                // nothing is wrong with the socket itself.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        let raw = buf[..n].to_vec();
        let socket = socket.clone();
        let cx = cx.clone();
        tokio::spawn(async move {
            let Some(answer) = cx.respond(raw, src, Protocol::Udp).await else {
                return;
            };
            cx.stats.record(&answer);
            if let Err(e) = socket.send_to(&answer, src).await {
                tracing::debug!(%src, error = %e, "cannot send a DNS answer");
            }
        });
    }
}

/// Accepts TCP connections on `listener`, at most `max_connections` at once.
pub(super) async fn serve_tcp(listener: TcpListener, cx: Arc<Context>, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept:
                // back off a little rather than spin.
                tracing::warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%src, "too many DNS TCP connections; closing this one");
            continue;
        };
        let cx = cx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, src, &cx).await {
                tracing::debug!(%src, error = %e, "DNS TCP connection ended");
            }
            drop(slot);
        });
    }
}

/// One TCP connection: length-prefixed queries answered in order.
async fn connection(mut stream: TcpStream, src: SocketAddr, cx: &Context) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            // Idle too long, or closed by the client.
            Err(_) | Ok(Err(_)) => return Ok(()),
        };
        let mut raw = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut raw))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "query not sent in time")
            })??;
        let Some(answer) = cx.respond(raw, src, Protocol::Tcp).await else {
            continue;
        };
        cx.stats.record(&answer);
        let Ok(len) = u16::try_from(answer.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_error_keeps_id_and_opcode() {
        let raw = [0xab, 0xcd, 0x28, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let e = format_error(&raw);
        assert_eq!(&e[..4], &[0xab, 0xcd, 0xa8, 0x01]);
    }
}
