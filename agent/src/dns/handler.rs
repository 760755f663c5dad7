//! The cluster zone as a hickory-server `RequestHandler`: reads the current
//! `Snapshot`, asks `records::lookup`, and writes the answer (authoritative,
//! recursion available, the SOA in authority for NXDOMAIN and NODATA).
//! An ExternalName's out-of-zone target is resolved through the forwarder
//! and its records added after the CNAME, as CoreDNS does, since stub
//! resolvers (glibc, musl) do not chase CNAMEs themselves.

use std::sync::{Arc, Mutex};

use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::sync::watch;

use super::forward::Forwarder;
use super::records::{Lookup, Snapshot, Zone, lookup};

/// Answers questions about the cluster zone.
pub struct ClusterHandler {
    pub(super) zone: Zone,
    pub(super) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(super) forwarder: Forwarder,
}

impl ClusterHandler {
    pub fn new(
        zone: Zone,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        forwarder: Forwarder,
    ) -> ClusterHandler {
        ClusterHandler {
            zone,
            snapshot,
            forwarder,
        }
    }

    /// The snapshot lookups read now (a cheap `Arc` clone: no lock is held
    /// while answering).
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }
}

/// The response EDNS: present when the request had it (RFC 6891), with
/// the request's payload size.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(request.max_payload()).set_version(0);
        edns
    })
}

fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Sends an empty response with `code`.
pub async fn error_response<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    mut response: R,
) -> ResponseInfo {
    let edns = response_edns(request);
    let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
    let message = builder.error_msg(&request.metadata, code);
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS response");
            serve_failed(request)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ClusterHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        if request.metadata.op_code != OpCode::Query {
            return error_response(request, ResponseCode::NotImp, response).await;
        }
        let Ok(info) = request.request_info() else {
            return error_response(request, ResponseCode::FormErr, response).await;
        };
        let query = info.query.original();
        if query.query_class() != DNSClass::IN {
            return error_response(request, ResponseCode::Refused, response).await;
        }
        let snapshot = self.current();
        let mut found = lookup(&self.zone, &snapshot, query.name(), query.query_type());
        drop(snapshot);

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let mut soa = None;
        let (answers, additionals) = match &mut found {
            Lookup::Answer {
                answers,
                additionals,
            } => (std::mem::take(answers), std::mem::take(additionals)),
            Lookup::NoData => {
                soa = Some(self.zone.soa());
                (Vec::new(), Vec::new())
            }
            Lookup::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                soa = Some(self.zone.soa());
                (Vec::new(), Vec::new())
            }
            Lookup::Cname { cname, target } => {
                let mut answers = vec![Record::clone(cname)];
                let qtype = query.query_type();
                if matches!(qtype, RecordType::A | RecordType::AAAA)
                    && !self.zone.origin().zone_of(target)
                {
                    match self.forwarder.resolve(target, qtype).await {
                        Ok(records) => answers.extend(records),
                        Err(e) => {
                            tracing::debug!(%target, error = ?e, "cannot resolve an ExternalName target")
                        }
                    }
                }
                (answers, Vec::new())
            }
            Lookup::NotOurs => {
                // The server routes only the zone's names here.
                return error_response(request, ResponseCode::Refused, response).await;
            }
        };
        let edns = response_edns(request);
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let message = builder.build(
            metadata,
            answers.iter(),
            None::<&Record>,
            soa,
            additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS response");
                serve_failed(request)
            }
        }
    }
}

/// A `ResponseHandler` that encodes the response into a buffer, for the
/// server's own socket loops to send (UDP: within the client's payload
/// size, with TC set when records had to be left out).
#[derive(Clone)]
pub struct Encoded {
    max_size: u16,
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Encoded {
    pub fn new(max_size: u16) -> Encoded {
        Encoded {
            max_size,
            bytes: Arc::default(),
        }
    }

    /// The encoded response, once sent.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.bytes.lock().expect("not poisoned").take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Encoded {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(self.max_size);
        let info = response.destructive_emit(&mut encoder)?;
        *self.bytes.lock().expect("not poisoned") = Some(buf);
        Ok(info)
    }
}
