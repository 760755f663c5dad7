//! The cluster DNS over real sockets on 127.0.0.1: the cluster zone from a
//! fixed snapshot, forwarding to a fake upstream started here (never a
//! real resolver), the bounds, and a burst of queries.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::dns::clients::Clients;
use agent::dns::forward::Forwarder;
use agent::dns::records::{Snapshot, Zone};
use agent::dns::{Running, bind, serve};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

fn snapshot() -> Snapshot {
    let services = [
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                        "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}),
        json!({"metadata": {"namespace": "default", "name": "db"},
               "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
        json!({"metadata": {"namespace": "default", "name": "ext"},
               "spec": {"type": "ExternalName", "externalName": "upstream.example"}}),
    ];
    let slices = [json!({"metadata": {"namespace": "default", "name": "db-1",
                            "labels": {"kubernetes.io/service-name": "db"}},
               "addressType": "IPv4",
               "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}],
               "endpoints": [
                   {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                   {"addresses": ["10.42.1.6"], "conditions": {"ready": true}}]})];
    let namespaces = [json!({"metadata": {"name": "default"}})];
    Snapshot::build(&services, &slices, &namespaces)
}

/// What the fake upstream does with each query.
#[derive(Clone, Copy)]
enum Upstream {
    /// Answers A 192.0.2.1 for any name, over UDP and TCP.
    Answer,
    /// Over UDP answers only with TC set; over TCP answers in full.
    Truncate,
    /// Never answers.
    Silent,
}

/// A fake resolver on 127.0.0.1 (UDP and TCP on one port); counts queries.
async fn upstream(mode: Upstream) -> (SocketAddr, Arc<AtomicUsize>) {
    let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let answer = |query: &[u8], tc: bool| -> Vec<u8> {
        let query = Message::from_vec(query).unwrap();
        let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_available = true;
        reply.add_queries(query.queries.clone());
        if tc {
            reply.metadata.truncation = true;
        } else {
            reply.add_answer(Record::from_rdata(
                query.queries[0].name().clone(),
                60,
                RData::A(A([192, 0, 2, 1].into())),
            ));
        }
        reply.to_vec().unwrap()
    };
    let udp_count = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            udp_count.fetch_add(1, Ordering::SeqCst);
            match mode {
                Upstream::Silent => {}
                Upstream::Answer => drop(udp.send_to(&answer(&buf[..n], false), from).await),
                Upstream::Truncate => drop(udp.send_to(&answer(&buf[..n], true), from).await),
            }
        }
    });
    tokio::spawn(serve_tcp_upstream(tcp, answer, count.clone()));
    (addr, count)
}

async fn serve_tcp_upstream(
    tcp: TcpListener,
    answer: impl Fn(&[u8], bool) -> Vec<u8> + Send + Copy + 'static,
    count: Arc<AtomicUsize>,
) {
    loop {
        let (mut stream, _) = tcp.accept().await.unwrap();
        count.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let len = stream.read_u16().await.unwrap();
            let mut query = vec![0u8; usize::from(len)];
            stream.read_exact(&mut query).await.unwrap();
            let reply = answer(&query, false);
            stream.write_u16(reply.len() as u16).await.unwrap();
            stream.write_all(&reply).await.unwrap();
        });
    }
}

async fn start(
    upstreams: Vec<SocketAddr>,
    max_forwards: usize,
    timeout: Duration,
) -> (Running, watch::Sender<Arc<Snapshot>>) {
    let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let zone = Zone::new("cluster.local", vec![IpAddr::from([10, 43, 0, 10])]).unwrap();
    let (tx, rx) = watch::channel(Arc::new(snapshot()));
    let forwarder = Forwarder::new(upstreams, max_forwards, timeout);
    // The real filter: the client on 127.0.0.1 is the node itself.
    let clients = Arc::new(Clients::new("10.42.0.0/16".parse().unwrap(), Vec::new()));
    (serve(udp, tcp, zone, rx, forwarder, clients).unwrap(), tx)
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query(4242, name, qtype), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 4242);
    m
}

async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let q = query(7, name, qtype);
    stream.write_u16(q.len() as u16).await.unwrap();
    stream.write_all(&q).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn rdata(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[tokio::test]
async fn cluster_zone_over_udp_and_tcp() {
    let (up, _) = upstream(Upstream::Answer).await;
    let (server, _tx) = start(vec![up], 100, Duration::from_secs(2)).await;

    let m = ask_udp(server.udp, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(rdata(&m), ["10.43.0.20"]);
    assert_eq!(m.answers[0].ttl, 5);

    let m = ask_tcp(server.tcp, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdata(&m), ["10.43.0.20"]);

    let m = ask_udp(
        server.udp,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(rdata(&m), ["0 100 80 web.default.svc.cluster.local."]);
    assert_eq!(m.additionals.len(), 1);

    let m = ask_udp(server.udp, "db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdata(&m), ["10.42.0.5", "10.42.1.6"]);
    let m = ask_udp(
        server.udp,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(rdata(&m), ["10.42.0.5"]);

    let m = ask_udp(
        server.udp,
        "10-42-3-4.default.pod.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(rdata(&m), ["10.42.3.4"]);

    let m = ask_udp(server.udp, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    // NODATA: the name exists, no AAAA.
    let m = ask_udp(
        server.udp,
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);

    let m = ask_udp(server.udp, "20.0.43.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(rdata(&m), ["web.default.svc.cluster.local."]);

    // The ExternalName's target is resolved upstream and follows the CNAME.
    let m = ask_udp(server.udp, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdata(&m), ["upstream.example.", "192.0.2.1"]);

    assert!(server.stats.count(ResponseCode::NXDomain) >= 1);
    assert!(server.stats.count(ResponseCode::NoError) >= 9);
}

#[tokio::test]
async fn snapshot_changes_are_seen() {
    let (server, tx) = start(vec![], 10, Duration::from_millis(100)).await;
    let name = "new.default.svc.cluster.local.";
    assert_eq!(
        ask_udp(server.udp, name, RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let services = [json!({"metadata": {"namespace": "default", "name": "new"},
                           "spec": {"clusterIP": "10.43.9.9", "ports": [{"port": 80}]}})];
    let namespaces = [json!({"metadata": {"name": "default"}})];
    tx.send(Arc::new(Snapshot::build(&services, &[], &namespaces)))
        .unwrap();
    assert_eq!(
        rdata(&ask_udp(server.udp, name, RecordType::A).await),
        ["10.43.9.9"]
    );
}

#[tokio::test]
async fn other_names_are_forwarded() {
    let (up, count) = upstream(Upstream::Answer).await;
    let (server, _tx) = start(vec![up], 100, Duration::from_secs(2)).await;
    let m = ask_udp(server.udp, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(rdata(&m), ["192.0.2.1"]);
    let m = ask_tcp(server.tcp, "www.example.com.", RecordType::A).await;
    assert_eq!(rdata(&m), ["192.0.2.1"]);
    // Reverse names of addresses outside the cluster, too.
    let m = ask_udp(server.udp, "1.2.0.192.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn truncated_upstream_answers_are_retried_over_tcp() {
    let (up, _) = upstream(Upstream::Truncate).await;
    let (server, _tx) = start(vec![up], 100, Duration::from_secs(2)).await;
    let m = ask_udp(server.udp, "big.example.com.", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(rdata(&m), ["192.0.2.1"]);
}

#[tokio::test]
async fn failing_upstreams_give_servfail_after_trying_each() {
    let (silent, silent_count) = upstream(Upstream::Silent).await;
    let (good, _) = upstream(Upstream::Answer).await;
    // The silent one first: its timeout passes, then the next answers.
    let (server, _tx) = start(vec![silent, good], 100, Duration::from_millis(200)).await;
    let m = ask_udp(server.udp, "www.example.com.", RecordType::A).await;
    assert_eq!(rdata(&m), ["192.0.2.1"]);
    assert_eq!(silent_count.load(Ordering::SeqCst), 1);

    let (server, _tx) = start(vec![silent], 100, Duration::from_millis(200)).await;
    let started = Instant::now();
    let m = ask_udp(server.udp, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn forwarded_queries_beyond_the_cap_are_refused_at_once() {
    let (silent, _) = upstream(Upstream::Silent).await;
    let (server, _tx) = start(vec![silent], 2, Duration::from_secs(2)).await;
    // Two queries hold both slots for 2 s.
    let holders: Vec<_> = (0..2)
        .map(|_| tokio::spawn(ask_udp(server.udp, "slow.example.com.", RecordType::A)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let m = ask_udp(server.udp, "third.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The cluster zone is still answered meanwhile.
    let m = ask_udp(server.udp, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdata(&m), ["10.43.0.20"]);
    for h in holders {
        assert_eq!(
            h.await.unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }
}

#[tokio::test]
async fn garbage_gets_formerr_or_nothing() {
    let (server, _tx) = start(vec![], 10, Duration::from_millis(100)).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Too short for a header: dropped.
    socket.send_to(&[1, 2, 3], server.udp).await.unwrap();
    // A header claiming a question that is not there: FORMERR.
    socket
        .send_to(&[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], server.udp)
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..2], &[0xbe, 0xef]);
    assert_eq!(buf[3] & 0xf, 1, "FORMERR");
    assert!(n >= 12);
    // The server still answers.
    let m = ask_udp(server.udp, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdata(&m), ["10.43.0.20"]);
    assert_eq!(server.stats.dropped(), 1);
}

#[tokio::test]
async fn tcp_connections_are_capped() {
    let (server, _tx) = start(vec![], 10, Duration::from_millis(100)).await;
    let mut idle = Vec::new();
    for _ in 0..agent::dns::server::MAX_TCP_CONNECTIONS {
        idle.push(TcpStream::connect(server.tcp).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One more is accepted by the kernel and closed by the server.
    let mut extra = TcpStream::connect(server.tcp).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = ask_tcp(server.tcp, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(rdata(&m), ["10.43.0.20"]);
}

#[tokio::test]
async fn a_burst_of_queries_finishes_promptly() {
    let (server, _tx) = start(vec![], 10, Duration::from_millis(100)).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let addr = server.udp;
            tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut answered = 0;
                // 250 queries each, at most 32 outstanding.
                let mut sent = 0u16;
                while answered < 250 {
                    while sent < 250 && sent - answered < 32 {
                        let q = query(
                            c * 1000 + sent,
                            "db.default.svc.cluster.local.",
                            RecordType::A,
                        );
                        socket.send_to(&q, addr).await.unwrap();
                        sent += 1;
                    }
                    let (n, _) =
                        tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                            .await
                            .expect("no answer lost")
                            .unwrap();
                    let m = Message::from_vec(&buf[..n]).unwrap();
                    assert_eq!(m.answers.len(), 2);
                    answered += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(server.stats.total(), 2000);
    assert!(
        elapsed < Duration::from_secs(5),
        "2,000 queries took {elapsed:?}"
    );
    println!("2,000 queries in {elapsed:?}");
}

/// The dummy link, made in a network namespace of this test's own (a
/// thread that unshared its network namespace; the namespace goes with
/// the thread): created, made again idempotently, bound and queried at
/// 10.43.0.10:53.
#[test]
fn dummy_link_holds_the_cluster_dns_ip() {
    let outcome = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ip = IpAddr::from([10, 43, 0, 10]);
            let held = agent::dns::link::ensure(agent::dns::link::LINK_NAME, ip)
                .await
                .unwrap();
            // Kernels without dummy links (this CI's) use the loopback link.
            assert!(
                held == agent::dns::link::LINK_NAME || held == "lo",
                "{held}"
            );
            println!("the cluster DNS IP is on {held}");
            // Again: nothing changes, no error.
            let again = agent::dns::link::ensure(agent::dns::link::LINK_NAME, ip)
                .await
                .unwrap();
            assert_eq!(again, held);
            let (udp, tcp) = bind(SocketAddr::new(ip, 53)).await.unwrap();
            let zone = Zone::new("cluster.local", vec![ip]).unwrap();
            let (_tx, rx) = watch::channel(Arc::new(snapshot()));
            let server = serve(
                udp,
                tcp,
                zone,
                rx,
                Forwarder::new(vec![], 1, Duration::from_millis(100)),
                Arc::new(Clients::open()),
            )
            .unwrap();
            let m = ask_udp(server.udp, "web.default.svc.cluster.local.", RecordType::A).await;
            assert_eq!(rdata(&m), ["10.43.0.20"]);
            let m = ask_tcp(server.tcp, "ns.dns.cluster.local.", RecordType::A).await;
            assert_eq!(rdata(&m), ["10.43.0.10"]);
            agent::dns::link::remove(agent::dns::link::LINK_NAME)
                .await
                .unwrap();
        });
        Ok(())
    })
    .join()
    .unwrap();
    if let Err(e) = outcome {
        println!("skipped: cannot make a network namespace ({e}); needs root");
    }
}
