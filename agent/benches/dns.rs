//! Queries per second and latency of the embedded cluster DNS on loopback:
//! `cargo bench -p agent --bench dns [-- SECONDS CLIENTS OUTSTANDING]`.
//!
//! The server holds 1,000 Services (a fifth headless, 3 endpoints each) in
//! 100 namespaces; each client is one UDP socket keeping OUTSTANDING
//! A queries for random Services in flight. Prints qps and p50/p99/max.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::dns::clients::Clients;
use agent::dns::forward::Forwarder;
use agent::dns::records::{Snapshot, Zone};
use agent::dns::{bind, serve};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::watch;

const SERVICES: usize = 1000;

fn snapshot() -> Snapshot {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..SERVICES {
        let ns = format!("ns{}", i % 100);
        let name = format!("svc{i}");
        let headless = i % 5 == 0;
        let ip = if headless {
            "None".to_string()
        } else {
            format!("10.43.{}.{}", i / 250, i % 250 + 1)
        };
        services.push(json!({"metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}));
        let endpoints: Vec<_> = (0..3)
            .map(|e| json!({"addresses": [format!("10.42.{}.{}", i / 250, (i % 250) * 3 / 3 + e)], "conditions": {"ready": true}}))
            .collect();
        slices.push(
            json!({"metadata": {"namespace": ns, "name": format!("{name}-x"),
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": endpoints}),
        );
    }
    let namespaces: Vec<_> = (0..100)
        .map(|n| json!({"metadata": {"name": format!("ns{n}")}}))
        .collect();
    Snapshot::build(&services, &slices, &namespaces)
}

fn query(id: u16, i: usize) -> Vec<u8> {
    let name = format!("svc{i}.ns{}.svc.cluster.local.", i % 100);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn main() {
    // cargo bench passes `--bench`; numbers are positional.
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(5);
    let clients = args.get(1).copied().unwrap_or(4) as usize;
    let outstanding = args.get(2).copied().unwrap_or(16) as u16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let zone = Zone::new("cluster.local", vec![IpAddr::from([10, 43, 0, 10])]).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(snapshot()));
        let server = serve(udp, tcp, zone, rx, Forwarder::new(vec![], 10, Duration::from_secs(1)), Arc::new(Clients::open())).unwrap();
        let addr = server.udp;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                tokio::spawn(async move {
                    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    socket.connect(addr).await.unwrap();
                    let mut sent_at = vec![None; 65536];
                    let mut latencies = Vec::new();
                    let mut buf = vec![0u8; 4096];
                    let mut id: u16 = 0;
                    let mut inflight = 0u16;
                    let mut next = c * 7919;
                    while Instant::now() < deadline {
                        while inflight < outstanding {
                            id = id.wrapping_add(1);
                            next = (next + 7919) % SERVICES;
                            socket.send(&query(id, next)).await.unwrap();
                            sent_at[usize::from(id)] = Some(Instant::now());
                            inflight += 1;
                        }
                        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await else {
                            // Count a lost answer as a timeout and refill.
                            inflight = 0;
                            continue;
                        };
                        if n < 12 {
                            continue;
                        }
                        let rid = u16::from_be_bytes([buf[0], buf[1]]);
                        if let Some(t) = sent_at[usize::from(rid)].take() {
                            latencies.push(t.elapsed());
                            inflight -= 1;
                        }
                    }
                    latencies
                })
            })
            .collect();
        let started = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "dns: {} services, {clients} clients x {outstanding} outstanding, {} queries in {elapsed:.1} s: \
             {:.0} qps, p50 {:?}, p99 {:?}, max {:?} (server answered {})",
            SERVICES,
            all.len(),
            all.len() as f64 / elapsed,
            pct(0.50),
            pct(0.99),
            all.last().unwrap(),
            server.stats.total()
        );
    });
}
