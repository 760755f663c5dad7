//! The controllers kube-controller-manager runs, the ones a workload needs:
//! each reads informer caches, decides with pure functions (unit-tested in
//! its module), and writes through the in-process client.
//!
//! - `replicaset`: ReplicaSet → Pods.
//! - `deployment`: Deployment → ReplicaSets (rolling update, history).
//! - `gc`: deletes objects whose owners are gone (ownerReferences).
//! - `node_lifecycle`: nodes without heartbeats turn Unknown and tainted;
//!   their pods are evicted after their toleration.
//! - `endpointslice`, `endpoints`: a selector Service's pods → its
//!   EndpointSlices and legacy Endpoints.
//! - `servicelb`: LoadBalancer Services get the nodes' addresses (K3s's
//!   ServiceLB without pods).
//! - `networkpolicy`: warns that NetworkPolicies are not enforced.
//! - `node_ipam`: gives each Node its `spec.podCIDR` from the cluster CIDR.

pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod gc;
pub mod networkpolicy;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod servicelb;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::Client;
use crate::informer::Informer;

/// Timing the tests shorten, and the pods' address range.
#[derive(Debug, Clone)]
pub struct Config {
    /// A node whose Lease was not renewed for this long is NotReady/Unknown
    /// (kube: `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace: Duration,
    /// Toleration given to pods without one for the not-ready/unreachable
    /// taints (kube's DefaultTolerationSeconds admission: 300 s).
    pub default_toleration: Duration,
    /// The pods' addresses, split into one subnet per node (K3s's
    /// `--cluster-cidr`, 10.42.0.0/16).
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The prefix length of each node's subnet (`--node-cidr-mask-size`, 24).
    pub node_cidr_mask_size: u8,
}

/// K3s's default cluster CIDR.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// kube's default node mask for IPv4.
pub const DEFAULT_NODE_CIDR_MASK_SIZE: u8 = 24;

impl Default for Config {
    fn default() -> Config {
        Config {
            node_monitor_grace: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
            cluster_cidr: DEFAULT_CLUSTER_CIDR.parse().expect("a valid CIDR"),
            node_cidr_mask_size: DEFAULT_NODE_CIDR_MASK_SIZE,
        }
    }
}

/// The shared caches every controller reads.
#[derive(Clone)]
pub struct Caches {
    pub pods: Informer,
    pub nodes: Informer,
    pub leases: Informer,
    pub replicasets: Informer,
    pub deployments: Informer,
    pub services: Informer,
    pub endpoints: Informer,
    pub endpointslices: Informer,
    pub networkpolicies: Informer,
}

impl Caches {
    pub fn start(client: &Client) -> Caches {
        Caches {
            pods: Informer::start(client.clone(), "/api/v1/pods", ""),
            nodes: Informer::start(client.clone(), "/api/v1/nodes", ""),
            leases: Informer::start(
                client.clone(),
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                "",
            ),
            replicasets: Informer::start(client.clone(), "/apis/apps/v1/replicasets", ""),
            deployments: Informer::start(client.clone(), "/apis/apps/v1/deployments", ""),
            services: Informer::start(client.clone(), "/api/v1/services", ""),
            endpoints: Informer::start(client.clone(), "/api/v1/endpoints", ""),
            endpointslices: Informer::start(
                client.clone(),
                "/apis/discovery.k8s.io/v1/endpointslices",
                "",
            ),
            networkpolicies: Informer::start(
                client.clone(),
                "/apis/networking.k8s.io/v1/networkpolicies",
                "",
            ),
        }
    }

    pub async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.leases.wait_synced().await;
        self.replicasets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.services.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.endpointslices.wait_synced().await;
        self.networkpolicies.wait_synced().await;
    }
}

/// Starts the scheduler and every controller; they run until the process ends.
/// `store` is the datastore itself, for what must be unique across
/// servers (node IPAM's subnet reservations).
pub fn start(client: Client, store: crate::store::Store, config: Config) {
    let caches = Caches::start(&client);
    tokio::spawn(crate::scheduler::run(client.clone(), caches.clone()));
    tokio::spawn(replicaset::run(client.clone(), caches.clone()));
    tokio::spawn(deployment::run(client.clone(), caches.clone()));
    tokio::spawn(gc::run(client.clone(), caches.clone()));
    tokio::spawn(endpointslice::run(client.clone(), caches.clone()));
    tokio::spawn(endpoints::run(client.clone(), caches.clone()));
    tokio::spawn(servicelb::run(client.clone(), caches.clone()));
    tokio::spawn(networkpolicy::run(client.clone(), caches.clone()));
    tokio::spawn(node_ipam::run(
        client.clone(),
        store,
        caches.clone(),
        config.clone(),
    ));
    tokio::spawn(node_lifecycle::run(client, caches, config));
}

/// `objects` by namespace, so that a controller matching each Service
/// against pods reads only its namespace's (one pass, not one per Service).
pub(crate) fn by_namespace(
    objects: Vec<serde_json::Value>,
) -> HashMap<String, Vec<serde_json::Value>> {
    let mut grouped: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for object in objects {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        grouped.entry(ns).or_default().push(object);
    }
    grouped
}

/// Records an Event about `object` (what `kubectl describe` shows), as
/// client-go's recorder does; a failure to record is logged, not returned.
pub async fn record_event(
    client: &Client,
    object: &serde_json::Value,
    event_type: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or_default();
    let now = crate::objects::now();
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": namespace},
        "involvedObject": {
            "apiVersion": object["apiVersion"], "kind": object["kind"],
            "name": name, "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
    });
    let path = crate::client::resource_path("v1", "events", Some(namespace), None);
    if let Err(e) = client.create(&path, &event).await {
        tracing::debug!(error = %e, reason, "recording an event failed");
    }
}

/// Waits until any receiver sees a change or `timeout` passes, then lets
/// the burst settle and marks everything seen.
pub(crate) async fn wait_for_change(
    receivers: &mut [watch::Receiver<u64>],
    timeout: Duration,
    debounce: Duration,
) {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    {
        type Changed<'a> =
            Pin<Box<dyn Future<Output = Result<(), watch::error::RecvError>> + Send + 'a>>;
        let mut futures: Vec<Option<Changed<'_>>> = receivers
            .iter_mut()
            .map(|r| Some(Box::pin(r.changed()) as Changed<'_>))
            .collect();
        let any = std::future::poll_fn(|cx| {
            for slot in futures.iter_mut() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(()),
                        // A closed informer never changes again; only the
                        // timeout wakes us for it.
                        Poll::Ready(Err(_)) => *slot = None,
                        Poll::Pending => {}
                    }
                }
            }
            Poll::Pending
        });
        let _ = tokio::time::timeout(timeout, any).await;
    }
    tokio::time::sleep(debounce).await;
    for r in receivers.iter_mut() {
        r.borrow_and_update();
    }
}
