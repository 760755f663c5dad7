//! The service proxy (kube-proxy's job, in its nftables mode): keeps the
//! `ip k3rs-proxy` nftables table in step with the Services and their
//! EndpointSlices, so ClusterIPs, NodePorts, external and LoadBalancer IPs
//! reach the Services' pods.
//!
//! - `model`: Services and EndpointSlices as Service ports and endpoints.
//! - `rules`: the ruleset (pure), rendered as one `nft -f` transaction.
//! - `nft`: runs that transaction, tracking what the table holds.
//!
//! Architecture Invariant: only the `ip k3rs-proxy` table is written;
//! other tables (the host's firewall, CNI's portmap) are never touched.

pub mod model;
pub mod nft;
pub mod rules;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use apiserver::client::Client;
use apiserver::informer::Informer;
use futures_util::FutureExt;

pub use rules::Ipv4Cidr;

/// Changes arriving within this delay are applied in one sync: a rollout
/// updates many slices in a burst.
const COALESCE: Duration = Duration::from_millis(100);

/// A full sync even without changes, repairing rules someone else changed
/// (kube-proxy's `--iptables-sync-period` default is 30s as well).
const RESYNC: Duration = Duration::from_secs(30);

/// The longest wait between retries of a failed sync.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How the proxy runs on this node.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node_name: String,
    /// The addresses NodePorts answer on; empty: every local address but
    /// loopback. IPv6 addresses are ignored (the proxy is IPv4 only).
    pub node_ips: Vec<IpAddr>,
    /// Pod addresses (K3s: 10.42.0.0/16); other sources are masqueraded.
    pub cluster_cidr: Ipv4Cidr,
    /// The Service at this ClusterIP is skipped: each node answers DNS on
    /// that address itself.
    pub cluster_dns_ip: Option<IpAddr>,
    /// The `nft` binary.
    pub nft: PathBuf,
}

impl ProxyConfig {
    /// K3s's defaults: cluster CIDR 10.42.0.0/16, DNS at 10.43.0.10,
    /// `/usr/sbin/nft`.
    pub fn k3s_defaults(node_name: &str, node_ips: Vec<IpAddr>) -> ProxyConfig {
        ProxyConfig {
            node_name: node_name.to_string(),
            node_ips,
            cluster_cidr: Ipv4Cidr {
                addr: Ipv4Addr::new(10, 42, 0, 0),
                prefix: 16,
            },
            cluster_dns_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 10))),
            nft: PathBuf::from("/usr/sbin/nft"),
        }
    }
}

/// Builds the ruleset from the cached Services and EndpointSlices.
pub fn ruleset(
    services: &[serde_json::Value],
    slices: &[serde_json::Value],
    config: &ProxyConfig,
) -> rules::Ruleset {
    let skip = match config.cluster_dns_ip {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    let ports = model::service_ports(services, skip);
    let endpoints = model::endpoints(slices, &config.node_name);
    let params = rules::Params {
        node_ips: config
            .node_ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) if !v4.is_loopback() => Some(*v4),
                _ => None,
            })
            .collect(),
        cluster_cidr: config.cluster_cidr,
    };
    rules::generate(&ports, &endpoints, &params)
}

/// Watches Services and EndpointSlices and keeps the table in step; runs
/// until the task is dropped, never returning on its own: a panic or an
/// ended informer restarts the whole loop (new informers, a new [`Syncer`],
/// so the next sync rebuilds the table), after a back-off. Rules are left
/// in place on exit (as kube-proxy leaves them): a restarted agent rebuilds
/// them from the API.
///
/// [`Syncer`]: nft::Syncer
pub async fn run(client: Client, config: ProxyConfig) {
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        let ended = AssertUnwindSafe(sync_loop(client.clone(), &config))
            .catch_unwind()
            .await;
        // A loop that ran a while ended by bad luck, not a crash loop.
        if started.elapsed() > MAX_RETRY * 4 {
            restarts = 0;
        }
        restarts += 1;
        let wait = backoff(restarts);
        match ended {
            Ok(()) => tracing::error!(
                restart_in_s = wait.as_secs(),
                "an informer of the service proxy ended; restarting the proxy"
            ),
            Err(panic) => tracing::error!(
                panic = panic_message(&*panic),
                restart_in_s = wait.as_secs(),
                "the service proxy panicked; restarting it"
            ),
        }
        tokio::time::sleep(wait).await;
    }
}

/// 2s, 4s, … up to [`MAX_RETRY`].
fn backoff(failures: u32) -> Duration {
    (Duration::from_secs(1) * 2u32.pow(failures.clamp(1, 5))).min(MAX_RETRY)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// One life of the proxy; returns only when an informer has ended (only a
/// panic in it does that), since its cache would never change again.
async fn sync_loop(client: Client, config: &ProxyConfig) {
    let services = Informer::start(client.clone(), "/api/v1/services", "");
    let slices = Informer::start(client, "/apis/discovery.k8s.io/v1/endpointslices", "");
    // A sync from a half-filled cache would reject Services whose slices
    // have not arrived yet.
    services.wait_synced().await;
    slices.wait_synced().await;
    let mut svc_changes = services.changes();
    let mut slice_changes = slices.changes();
    let mut syncer: Option<nft::Syncer> = None;
    let mut last: Option<rules::Ruleset> = None;
    // Services told about their lost map keys, so each is warned once.
    let mut warned: BTreeSet<String> = BTreeSet::new();
    let mut failures = 0u32;
    let mut forced = true;
    loop {
        svc_changes.borrow_and_update();
        slice_changes.borrow_and_update();
        let (svcs, sls) = (services.list(), slices.list());
        let cfg = config.clone();
        // None after a lost sync task: a new syncer knows nothing of the
        // table, so its first sync deletes and rebuilds it.
        let mut s = syncer
            .take()
            .unwrap_or_else(|| nft::Syncer::new(config.nft.clone()));
        let previous = last.take();
        let joined = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let rs = ruleset(&svcs, &sls, &cfg);
            // A change that does not change the rules (a Service's status,
            // an unrelated label) is not written.
            let result = if !forced && previous.as_ref() == Some(&rs) && s.pending_deletes() == 0 {
                None
            } else {
                // Only the timer's syncs rewrite every chain.
                Some(s.sync_with(&rs, forced))
            };
            (s, rs, result, start.elapsed())
        })
        .await;
        let wait = match joined {
            Err(e) => {
                failures += 1;
                let wait = backoff(failures);
                tracing::error!(error = %e, retry_in_s = wait.as_secs(),
                    "the service proxy's sync task failed; rebuilding the table next time");
                wait
            }
            Ok((s, rs, result, took)) => {
                syncer = Some(s);
                warn_conflicts(&rs, &mut warned);
                match result {
                    None => {
                        last = Some(rs);
                        RESYNC
                    }
                    Some(Ok(())) => {
                        tracing::debug!(
                            chains = rs.chains.len(),
                            took_ms = took.as_millis() as u64,
                            "service rules synced"
                        );
                        last = Some(rs);
                        failures = 0;
                        RESYNC
                    }
                    Some(Err(e)) => {
                        failures += 1;
                        let wait = backoff(failures);
                        tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "syncing the service rules failed");
                        wait
                    }
                }
            }
        };
        let woke = tokio::select! {
            r = svc_changes.changed() => r.map(|_| true),
            r = slice_changes.changed() => r.map(|_| true),
            _ = tokio::time::sleep(wait) => Ok(false),
        };
        match woke {
            Ok(changed) => forced = !changed || syncer.is_none(),
            Err(_) => return,
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Warns once per Service that newly lost a map key to another; a Service
/// that stops losing is forgotten, so a later clash is warned again.
fn warn_conflicts(rs: &rules::Ruleset, warned: &mut BTreeSet<String>) {
    for (service, lost) in &rs.conflicts {
        if warned.insert(service.clone()) {
            let lost: Vec<&str> = lost.iter().map(String::as_str).collect();
            tracing::warn!(
                service = %service,
                lost = %lost.join("; "),
                "a Service's address and port clash with another Service port's, which keeps them (ClusterIPs first, then the older Service)"
            );
        }
    }
    warned.retain(|s| rs.conflicts.contains_key(s));
}
