//! Forwarding names outside the cluster zone to the node's resolvers
//! (CoreDNS's `forward . /etc/resolv.conf`): the client's query is sent
//! as it came, under an ID of our own, over UDP (TCP when the client used
//! TCP, or when the UDP answer came back truncated); each upstream gets
//! `TIMEOUT`, then the next is tried; SERVFAIL when all fail.
//!
//! The agent runs in the node's network namespace, so loopback resolvers
//! such as systemd-resolved's 127.0.0.53 work here although pods could
//! not reach them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long one upstream gets to answer (CoreDNS's forward dial and read
/// timeouts are of this order; a stub resolver retries after 5 s).
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Forwarded queries in flight at once; more are refused at once, as
/// CoreDNS's `max_concurrent` does, so a flood cannot grow sockets and
/// tasks without bound.
pub const MAX_IN_FLIGHT: usize = 1000;

/// The largest UDP answer read from an upstream.
const MAX_UDP: usize = 65_535;

/// The node's resolvers, and the cap on queries sent to them.
#[derive(Clone)]
pub struct Forwarder {
    upstreams: Arc<[SocketAddr]>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

/// Why a query was not forwarded or not answered.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// `MAX_IN_FLIGHT` reached: REFUSED.
    Busy,
    /// No upstream answered: SERVFAIL.
    Failed,
}

impl Forwarder {
    /// Forwards to `upstreams`, in order, each with `timeout`.
    pub fn new(upstreams: Vec<SocketAddr>, max_in_flight: usize, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams: upstreams.into(),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// A slot for one forwarded query, if one is free.
    pub fn permit(&self) -> Result<OwnedSemaphorePermit, ForwardError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ForwardError::Busy)
    }

    /// The upstream's answer to `query` (raw, with the client's ID), in
    /// the slot `permit` holds. Over TCP when `tcp`; over UDP otherwise,
    /// and when that answer is truncated, again over TCP if the full answer
    /// fits `udp_limit`.
    pub async fn forward(
        &self,
        permit: OwnedSemaphorePermit,
        query: &[u8],
        tcp: bool,
        udp_limit: usize,
    ) -> Result<Vec<u8>, ForwardError> {
        let answer = self.forward_permitted(query, tcp, udp_limit).await;
        drop(permit);
        answer
    }

    async fn forward_permitted(
        &self,
        query: &[u8],
        tcp: bool,
        udp_limit: usize,
    ) -> Result<Vec<u8>, ForwardError> {
        if query.len() < 12 {
            return Err(ForwardError::Failed);
        }
        let client_id = [query[0], query[1]];
        let mut ours = query.to_vec();
        ours[..2].copy_from_slice(&random_id());
        for upstream in self.upstreams.iter() {
            let answer = if tcp {
                exchange_tcp(*upstream, &ours, self.timeout).await
            } else {
                match exchange_udp(*upstream, &ours, self.timeout).await {
                    Ok(answer) if truncated(&answer) => {
                        match exchange_tcp(*upstream, &ours, self.timeout).await {
                            Ok(full) if full.len() <= udp_limit => Ok(full),
                            // The client retries over TCP itself.
                            _ => Ok(answer),
                        }
                    }
                    other => other,
                }
            };
            match answer {
                Ok(mut answer) => {
                    answer[..2].copy_from_slice(&client_id);
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::debug!(%upstream, error = %format!("{e:#}"), "upstream resolver failed; trying the next");
                }
            }
        }
        Err(ForwardError::Failed)
    }

    /// The records of `name`/`qtype` from the upstreams (answer section),
    /// for chasing an ExternalName's CNAME.
    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Vec<Record>, ForwardError> {
        let _permit = self.permit()?;
        let mut query = Message::new(0, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), qtype));
        let bytes = query.to_vec().map_err(|_| ForwardError::Failed)?;
        let answer = self.forward_permitted(&bytes, false, MAX_UDP).await?;
        let message = Message::from_vec(&answer).map_err(|_| ForwardError::Failed)?;
        Ok(message.answers)
    }
}

/// A fresh query ID, so that an off-path attacker must guess it as well as
/// the ephemeral port.
fn random_id() -> [u8; 2] {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 2];
    // SystemRandom only fails if the OS RNG does; a fixed ID then still
    // leaves the ephemeral port random.
    let _ = ring::rand::SystemRandom::new().fill(&mut id);
    id
}

fn truncated(message: &[u8]) -> bool {
    message.len() > 2 && message[2] & 0x02 != 0
}

/// Whether `answer` is a response to `query`: same ID, QR set.
fn answers(query: &[u8], answer: &[u8]) -> bool {
    answer.len() >= 12 && answer[..2] == query[..2] && answer[2] & 0x80 != 0
}

async fn exchange_udp(upstream: SocketAddr, query: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (IpAddr::from([0, 0, 0, 0]), 0).into(),
        SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .context("cannot open a UDP socket")?;
    // Connected: the kernel drops datagrams from any other address.
    socket
        .connect(upstream)
        .await
        .context("cannot reach the upstream")?;
    socket.send(query).await.context("cannot send")?;
    let mut buf = vec![0u8; MAX_UDP];
    tokio::time::timeout(timeout, async {
        loop {
            let n = socket.recv(&mut buf).await.context("cannot receive")?;
            // Stray or late datagrams for an earlier ID are skipped.
            if answers(query, &buf[..n]) {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    })
    .await
    .context("timed out")?
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(upstream)
            .await
            .context("cannot connect")?;
        stream.set_nodelay(true)?;
        let len = u16::try_from(query.len()).context("query too long")?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.context("cannot send")?;
        let len = stream.read_u16().await.context("cannot read the length")?;
        let mut answer = vec![0u8; usize::from(len)];
        stream
            .read_exact(&mut answer)
            .await
            .context("cannot read the answer")?;
        if !answers(query, &answer) {
            bail!("the answer does not match the query");
        }
        Ok(answer)
    })
    .await
    .context("timed out")?
}

/// The `nameserver` lines of a resolv.conf, on port 53, without
/// `exclude` (the cluster DNS itself: forwarding there would loop).
pub fn parse_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (`fe80::1%eth0`) is not supported.
            words.next()?.parse::<IpAddr>().ok()
        })
        .filter(|ip| !exclude.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The upstreams of the agent's own /etc/resolv.conf.
pub fn system_upstreams(exclude: &[IpAddr]) -> Result<Vec<SocketAddr>> {
    let path = "/etc/resolv.conf";
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let upstreams = parse_resolv_conf(&text, exclude);
    if upstreams.is_empty() {
        bail!("{path} names no usable nameserver; names outside the cluster will get SERVFAIL");
    }
    Ok(upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver  ::1 \n\
                    nameserver fe80::1%eth0\nnameserver 10.43.0.10\noptions edns0 trust-ad\nnameserver\n";
        assert_eq!(
            parse_resolv_conf(text, &["10.43.0.10".parse().unwrap()]),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn answer_matching() {
        let query = [0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut answer = query;
        assert!(!answers(&query, &answer), "QR not set");
        answer[2] |= 0x80;
        assert!(answers(&query, &answer));
        answer[1] = 0;
        assert!(!answers(&query, &answer), "another ID");
        assert!(!truncated(&query));
        answer[2] |= 0x02;
        assert!(truncated(&answer));
    }
}
