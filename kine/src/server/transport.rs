//! The listener side of the gRPC server: TCP options, TLS, and a deadline
//! for a new connection to start talking.
//!
//! A connection that opens and then sends nothing, or dribbles its first
//! bytes (slow-loris), would hold a socket and a task for ever. Every
//! connection must deliver its first bytes (the HTTP/2 preface, or the TLS
//! ClientHello) within `HANDSHAKE_TIMEOUT`; TLS must then finish its
//! handshake within the same time (tonic's own timeout). After that, the
//! HTTP/2 keepalive pings find peers that went away (half-open sockets).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpIncoming};

use crate::metrics::METRICS;

/// How long a new connection has to send its first bytes, and TLS to
/// finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a connection must send before its deadline is lifted: the
/// HTTP/2 client preface is 24, a TLS ClientHello is longer.
const FIRST_BYTES: usize = 24;

/// PEM material for TLS on the client listener.
#[derive(Clone)]
pub struct TlsConfig {
    /// The server certificate chain.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// With a CA, clients must present a certificate it signed (mutual
    /// TLS); without, any client may connect.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    pub(super) fn server_config(&self, handshake: Duration) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .timeout(handshake);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        config
    }
}

/// Accepted connections, each with its first-bytes deadline.
pub(super) fn incoming(
    listener: TcpListener,
    deadline: Duration,
) -> impl Stream<Item = io::Result<FirstBytesDeadline>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
        .map(move |conn| conn.map(|stream| FirstBytesDeadline::new(stream, deadline)))
}

pin_project_lite::pin_project! {
    /// A TCP stream that fails its reads with `TimedOut` unless its first
    /// `FIRST_BYTES` arrive before a deadline.
    pub struct FirstBytesDeadline {
        #[pin]
        stream: TcpStream,
        // `None` once the first bytes are in.
        deadline: Option<Pin<Box<Sleep>>>,
        received: usize,
    }
}

impl FirstBytesDeadline {
    fn new(stream: TcpStream, deadline: Duration) -> Self {
        FirstBytesDeadline {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(deadline))),
            received: 0,
        }
    }
}

impl AsyncRead for FirstBytesDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.stream.poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return polled;
        };
        if let Poll::Ready(Ok(())) = &polled {
            *this.received += buf.filled().len() - before;
            if *this.received >= FIRST_BYTES {
                *this.deadline = None;
            }
            return polled;
        }
        if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            METRICS.handshake_timeouts.inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not start the protocol in time",
            )));
        }
        polled
    }
}

impl AsyncWrite for FirstBytesDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for FirstBytesDeadline {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
