//! The Watch service: one bidirectional stream carrying many watchers.
//! A receive task turns requests into hub calls; the response stream is the
//! stream's bounded channel, with header identity filled on the way out.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::Header;
use crate::metrics::METRICS;
use crate::proto::watch_request::RequestUnion;
use crate::proto::watch_server::Watch;
use crate::proto::{WatchRequest, WatchResponse};
use crate::watch::{Hub, STREAM_BUFFER};

/// `/etcdserverpb.Watch`.
pub struct WatchService {
    pub(super) hub: Hub,
    pub(super) header: Header,
    pub(super) shutdown: super::shutdown::Shutdown,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let hub = self.hub.clone();
        let stream = hub.open_stream();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => match req.request_union {
                        Some(RequestUnion::CreateRequest(create)) => {
                            hub.create(stream, &tx, create).await
                        }
                        Some(RequestUnion::CancelRequest(cancel)) => {
                            hub.cancel(stream, &tx, cancel.watch_id).await
                        }
                        Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream, &tx),
                        None => {}
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, stream, "watch stream ended");
                        break;
                    }
                }
            }
            hub.close_stream(stream);
        });
        let header = self.header.clone();
        let out = ReceiverStream::new(rx).map(move |mut resp| {
            METRICS.watch_events_sent.add(resp.events.len() as u64);
            header.fill(&mut resp.header);
            Ok(resp)
        });
        Ok(Response::new(Box::pin(self.shutdown.clone().guard(out))))
    }
}
