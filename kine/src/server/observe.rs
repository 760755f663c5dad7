//! A tower layer around every gRPC call: counts and times it, and logs the
//! ones slower than a threshold.
//!
//! A call ends when its response body ends, so streams (Watch,
//! LeaseKeepAlive, Snapshot) are counted as handled when they close, with
//! the status from their trailers. Only known methods are tracked: a client
//! sending made-up paths cannot grow the metrics without bound. Slow-request
//! logs name the method, peer and time, never keys or values.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::transport::server::TcpConnectInfo;

use crate::metrics::{CODES, CallKind, METHODS, METRICS};

/// The index in `METHODS` of the method a request path
/// (`/etcdserverpb.KV/Range`) names, if known.
fn method_of(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .position(|(s, m, _)| *m == method && *s == service)
}

/// The code a `grpc-status` value carries (Unknown if unreadable).
fn code_of(value: &[u8]) -> usize {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|c| *c < CODES.len())
        .unwrap_or(2)
}

/// The layer: install with `Server::builder().layer(ObserveLayer::new(..))`.
#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer {
    slow: Duration,
}

impl ObserveLayer {
    /// Logs calls slower than `slow` (streams are never "slow").
    pub fn new(slow: Duration) -> Self {
        ObserveLayer { slow }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            slow: self.slow,
        }
    }
}

/// The service `ObserveLayer` wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    slow: Duration,
}

impl<S, B, RB> tower::Service<Request<B>> for Observe<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        if let Some(m) = method {
            METRICS.grpc_started(m);
        }
        let call = method.map(|method| Call {
            method,
            started: Instant::now(),
            slow: self.slow,
            peer,
            code: None,
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let mut call = call;
            if let Some(c) = call.as_mut() {
                // An error before any message comes as trailers-only:
                // the status is in the headers.
                c.code = response
                    .headers()
                    .get("grpc-status")
                    .map(|v| code_of(v.as_bytes()));
            }
            Ok(response.map(|inner| ObservedBody { inner, call }))
        })
    }
}

/// One call in flight; recorded when dropped.
#[derive(Debug)]
struct Call {
    /// Index in `METHODS`.
    method: usize,
    started: Instant,
    slow: Duration,
    peer: Option<std::net::SocketAddr>,
    code: Option<usize>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        // A body dropped before its trailers: the client went away.
        let code = self.code.unwrap_or(1);
        METRICS.grpc_handled(self.method, code, elapsed);
        let (service, method, kind) = METHODS[self.method];
        if kind == CallKind::Unary && elapsed >= self.slow {
            METRICS.slow_requests.inc();
            tracing::warn!(
                method = format_args!("/{service}/{method}"),
                code = CODES[code],
                elapsed_ms = elapsed.as_millis() as u64,
                peer = ?self.peer,
                "slow request"
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when it ends.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(call)) = (&polled, this.call.as_mut())
            && let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status"))
        {
            call.code = Some(code_of(status.as_bytes()));
        }
        if let Poll::Ready(None) = polled {
            // Ended: record now rather than whenever hyper drops the body.
            this.call.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_are_tracked() {
        assert_eq!(
            method_of("/etcdserverpb.KV/Range").map(|m| METHODS[m]),
            Some(("etcdserverpb.KV", "Range", CallKind::Unary))
        );
        assert_eq!(method_of("/etcdserverpb.KV/Nope"), None);
        assert_eq!(method_of("/etcdserverpb.Watch/Range"), None);
        assert_eq!(method_of("/x"), None);
        assert_eq!(method_of(""), None);
        assert_eq!(CODES[code_of(b"8")], "ResourceExhausted");
        assert_eq!(CODES[code_of(b"99")], "Unknown");
    }
}
