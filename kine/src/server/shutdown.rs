//! Ends long-lived response streams (watch, keep-alive) when the server
//! shuts down, so graceful shutdown does not wait on them forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::Stream;

/// A handle that resolves once shutdown began. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Starts shutdown for every `Shutdown` handle.
pub struct Trigger(watch::Sender<bool>);

/// A trigger and its first handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Begins shutdown.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown began.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    /// `stream`, ended at shutdown.
    pub fn guard<S: Stream + Send + 'static>(self, stream: S) -> Guarded<S> {
        Guarded {
            stream: Box::pin(stream),
            stop: Box::pin(self.wait()),
        }
    }
}

/// A stream that ends at shutdown.
pub struct Guarded<S> {
    stream: Pin<Box<S>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<S: Stream> Stream for Guarded<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.stream.as_mut().poll_next(cx)
    }
}
