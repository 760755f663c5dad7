//! Node IPAM (kube-controller-manager's range allocator): every Node
//! without `spec.podCIDR` gets the lowest free `/mask` subnet of the
//! cluster CIDR, written with an update carrying the node's
//! resourceVersion, so a node can never be given two subnets. Each subnet
//! is first reserved under its own datastore key
//! (`/registry/k3rs/podcidrs/<net>-<len>`, naming the node), created only
//! if absent, so servers running this controller side by side never hand
//! one subnet to two nodes. A reservation whose node is gone, or holds
//! another subnet, is freed; a node whose podCIDR was set by hand keeps
//! it, and its subnet is reserved for it too.
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use super::{Caches, Config};
use crate::client::{Client, resource_path};
use crate::store::{Store, Swap};

/// A round runs at least this often even without a change.
const TICK: Duration = Duration::from_secs(30);
/// Lets a burst of node changes settle before a round.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Updates tried for one node before the next round takes it up again.
const ATTEMPTS: usize = 5;
/// kube's limit: a cluster CIDR splits into at most 2^16 node subnets.
const MAX_SUBNET_BITS: u8 = 16;
/// The longest node mask kube allows for IPv4 (4 addresses: a gateway and
/// one pod, barely).
const MAX_NODE_MASK: u8 = 30;

/// Checks `--cluster-cidr` and `--node-cidr-mask-size` together; the
/// error names the flags.
pub fn validate(cluster: Ipv4Net, mask: u8) -> Result<(), String> {
    if cluster != cluster.trunc() {
        return Err(format!(
            "--cluster-cidr {cluster} has host bits set: did you mean {}?",
            cluster.trunc()
        ));
    }
    if mask < cluster.prefix_len() {
        return Err(format!(
            "--node-cidr-mask-size {mask} is shorter than the cluster CIDR's prefix {cluster}: each node's subnet must fit inside it"
        ));
    }
    if mask > MAX_NODE_MASK {
        return Err(format!(
            "--node-cidr-mask-size {mask} is too long: at most {MAX_NODE_MASK} (a node needs room for a gateway and pods)"
        ));
    }
    if mask - cluster.prefix_len() > MAX_SUBNET_BITS {
        return Err(format!(
            "--node-cidr-mask-size {mask} splits {cluster} into more than 2^{MAX_SUBNET_BITS} node subnets: use a shorter mask or a smaller cluster CIDR"
        ));
    }
    Ok(())
}

/// The lowest `/mask` subnet of `cluster` overlapping none of `used`.
pub fn allocate(cluster: Ipv4Net, mask: u8, used: &[Ipv4Net]) -> Option<Ipv4Net> {
    let mut candidates = cluster.subnets(mask).ok()?;
    candidates.find(|c| !used.iter().any(|u| overlaps(*c, *u)))
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The node's `spec.podCIDR`, if set and IPv4.
pub fn node_cidr(node: &Value) -> Option<Ipv4Net> {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

fn has_cidr(node: &Value) -> bool {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

const RESERVATIONS: &str = "/registry/k3rs/podcidrs/";
/// Subnets tried for one node when other servers take them first.
const RESERVE_TRIES: usize = 16;

/// A subnet's reservation key (a `/` would be a key level).
fn reservation_key(cidr: Ipv4Net) -> String {
    format!("{RESERVATIONS}{}-{}", cidr.network(), cidr.prefix_len())
}

fn reservation_cidr(key: &str) -> Option<Ipv4Net> {
    let (net, len) = key.strip_prefix(RESERVATIONS)?.rsplit_once('-')?;
    Ipv4Net::new(net.parse().ok()?, len.parse().ok()?).ok()
}

/// A subnet reserved in the datastore, and for which node.
#[derive(Debug, Clone, PartialEq)]
struct Reservation {
    cidr: Ipv4Net,
    node: String,
    uid: String,
}

/// Whether `r` still holds, given its node as last read (`None`: gone):
/// the same node (by uid), waiting for a subnet or holding this one.
fn holds(r: &Reservation, node: Option<&Value>) -> bool {
    node.is_some_and(|n| {
        text(n, "/metadata/uid") == r.uid && (!has_cidr(n) || node_cidr(n) == Some(r.cidr))
    })
}

async fn reservations(store: &Store) -> Result<Vec<Reservation>, String> {
    let listed = store.list_all(RESERVATIONS).await.map_err(|e| e.message)?;
    Ok(listed
        .into_iter()
        .filter_map(|(key, v)| {
            Some(Reservation {
                cidr: reservation_cidr(&key)?,
                node: text(&v, "/node").to_string(),
                uid: text(&v, "/uid").to_string(),
            })
        })
        .collect())
}

/// Creates `cidr`'s reservation for `node` if no one holds it: true when
/// it is now the node's.
async fn reserve(store: &Store, cidr: Ipv4Net, node: &Value) -> Result<bool, String> {
    let owner = json!({"node": text(node, "/metadata/name"), "uid": text(node, "/metadata/uid")});
    match store.swap(&reservation_key(cidr), &owner, 0).await {
        Ok(Swap::Done(_)) => Ok(true),
        Ok(Swap::Mismatch(_)) => Ok(false),
        Err(e) => Err(e.message),
    }
}

/// Frees `r` if it is still the one stored (another server may have
/// freed it and someone reserved the subnet again).
async fn release(store: &Store, r: &Reservation) {
    let key = reservation_key(r.cidr);
    match store.get_revision(&key).await {
        Ok(Some((v, revision))) if text(&v, "/uid") == r.uid => {
            if let Err(e) = store.delete(&key, revision).await {
                tracing::warn!(pod_cidr = %r.cidr, error = %e.message, "freeing a pod CIDR reservation failed");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(pod_cidr = %r.cidr, error = %e.message, "reading a pod CIDR reservation failed")
        }
    }
}

/// Nodes waiting for a subnet, oldest first (kube's queue order).
fn pending(nodes: &[Value]) -> Vec<&Value> {
    let mut waiting: Vec<&Value> = nodes.iter().filter(|n| !has_cidr(n)).collect();
    waiting.sort_by_key(|n| {
        (
            text(n, "/metadata/creationTimestamp"),
            text(n, "/metadata/name"),
        )
    });
    waiting
}

/// What one round remembers: allocations written but not yet in the
/// cache (kube's expectations), and the nodes already told that the
/// cluster CIDR is full.
#[derive(Default)]
struct Allocator {
    /// Node name → (uid, subnet) written.
    written: HashMap<String, (String, Ipv4Net)>,
    /// Node uids told CIDRNotAvailable, so the event is not repeated.
    told_full: HashSet<String>,
}

impl Allocator {
    async fn round(&mut self, client: &Client, store: &Store, caches: &Caches, config: &Config) {
        let nodes = caches.nodes.list();
        // An allocation leaves the expectations once the cache shows the
        // node with a subnet, or shows it gone or replaced.
        self.written.retain(|name, (uid, _)| {
            nodes
                .iter()
                .find(|n| text(n, "/metadata/name") == name)
                .is_some_and(|n| text(n, "/metadata/uid") == uid && !has_cidr(n))
        });
        let live: HashSet<&str> = nodes.iter().map(|n| text(n, "/metadata/uid")).collect();
        self.told_full.retain(|uid| live.contains(uid.as_str()));
        // Without the reservations no subnet can be given safely.
        let reserved = match reservations(store).await {
            Ok(r) => self.reconcile(client, store, &nodes, r, config).await,
            Err(e) => {
                tracing::warn!(error = %e, "reading the pod CIDR reservations failed");
                return;
            }
        };
        let mut used: Vec<Ipv4Net> = nodes.iter().filter_map(node_cidr).collect();
        used.extend(reserved);
        used.extend(self.written.values().map(|(_, c)| *c));
        for node in pending(&nodes) {
            let name = text(node, "/metadata/name");
            if self.written.contains_key(name) {
                continue;
            }
            let mut mine = None;
            for _ in 0..RESERVE_TRIES {
                let Some(cidr) = allocate(config.cluster_cidr, config.node_cidr_mask_size, &used)
                else {
                    break;
                };
                // Taken or not, no other node of this round gets it.
                used.push(cidr);
                match reserve(store, cidr, node).await {
                    Ok(true) => {
                        mine = Some(cidr);
                        break;
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(node = name, pod_cidr = %cidr, error = %e, "reserving a pod CIDR failed");
                        break;
                    }
                }
            }
            let Some(cidr) = mine else {
                if allocate(config.cluster_cidr, config.node_cidr_mask_size, &used).is_none() {
                    self.cidr_not_available(client, node, config).await;
                }
                // Every later node finds the range just as full.
                continue;
            };
            match assign(client, node.clone(), cidr).await {
                Assigned::Set => {
                    tracing::info!(node = name, pod_cidr = %cidr, "allocated the node's pod CIDR");
                    self.written
                        .insert(name.to_string(), (text(node, "/metadata/uid").into(), cidr));
                }
                outcome => {
                    if let Assigned::AlreadySet(Some(theirs)) = outcome {
                        used.push(theirs);
                    }
                    let r = Reservation {
                        cidr,
                        node: name.to_string(),
                        uid: text(node, "/metadata/uid").to_string(),
                    };
                    release(store, &r).await;
                }
            }
        }
    }

    /// Frees the reservations whose node is gone or holds another subnet
    /// (read again when the cache does not vouch for it: another server
    /// may have reserved for a node this cache has not seen yet), and
    /// reserves the subnets nodes hold without one (set by hand, or before
    /// reservations). Returns the subnets reserved.
    async fn reconcile(
        &mut self,
        client: &Client,
        store: &Store,
        nodes: &[Value],
        reserved: Vec<Reservation>,
        config: &Config,
    ) -> Vec<Ipv4Net> {
        let mut kept = Vec::new();
        for r in reserved {
            let cached = nodes.iter().find(|n| text(n, "/metadata/name") == r.node);
            let held = if holds(&r, cached) {
                true
            } else {
                let path = resource_path("v1", "nodes", None, Some(&r.node));
                match client.get(&path).await {
                    Ok(node) => holds(&r, Some(&node)),
                    Err(e) if e.is_not_found() => false,
                    Err(e) => {
                        tracing::debug!(node = %r.node, error = %e, "reading a node failed; keeping its reservation");
                        true
                    }
                }
            };
            if held {
                kept.push(r);
            } else {
                tracing::info!(node = %r.node, pod_cidr = %r.cidr, "freeing the pod CIDR of a node that no longer holds it");
                release(store, &r).await;
            }
        }
        for node in nodes {
            let Some(cidr) = node_cidr(node).filter(|c| overlaps(*c, config.cluster_cidr)) else {
                continue;
            };
            if kept.iter().any(|r| r.cidr == cidr) {
                continue;
            }
            match reserve(store, cidr, node).await {
                Ok(true) => kept.push(Reservation {
                    cidr,
                    node: text(node, "/metadata/name").to_string(),
                    uid: text(node, "/metadata/uid").to_string(),
                }),
                Ok(false) => tracing::warn!(
                    node = text(node, "/metadata/name"),
                    pod_cidr = %cidr,
                    "the node's pod CIDR is reserved for another node"
                ),
                Err(e) => tracing::warn!(error = %e, "reserving a node's pod CIDR failed"),
            }
        }
        kept.into_iter().map(|r| r.cidr).collect()
    }

    /// kube's event for a node the cluster CIDR has no room for.
    async fn cidr_not_available(&mut self, client: &Client, node: &Value, config: &Config) {
        let (name, uid) = (text(node, "/metadata/name"), text(node, "/metadata/uid"));
        if !self.told_full.insert(uid.to_string()) {
            return;
        }
        tracing::warn!(
            node = name,
            cluster_cidr = %config.cluster_cidr,
            mask = config.node_cidr_mask_size,
            "no pod CIDR left for the node: every subnet of the cluster CIDR is taken"
        );
        let mut object = node.clone();
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("Node");
        // kube's RecordNodeStatusChange: a Normal event, the status as reason.
        super::record_event(
            client,
            &object,
            "Normal",
            "CIDRNotAvailable",
            &format!("Node {name} status is now: CIDRNotAvailable"),
            "cidrAllocator",
        )
        .await;
    }
}

enum Assigned {
    Set,
    /// Someone else set it meanwhile (the subnet it holds, if readable).
    AlreadySet(Option<Ipv4Net>),
    Gone,
    Failed,
}

/// Writes `cidr` into the node with a compare-and-swap on its
/// resourceVersion; on a conflict it reads the node again and retries
/// unless the node got a subnet meanwhile.
async fn assign(client: &Client, mut node: Value, cidr: Ipv4Net) -> Assigned {
    let name = text(&node, "/metadata/name").to_string();
    let path = resource_path("v1", "nodes", None, Some(&name));
    for _ in 0..ATTEMPTS {
        if has_cidr(&node) {
            return Assigned::AlreadySet(node_cidr(&node));
        }
        let mut updated = node.clone();
        updated["spec"]["podCIDR"] = json!(cidr.to_string());
        updated["spec"]["podCIDRs"] = json!([cidr.to_string()]);
        match client.update(&path, &updated).await {
            Ok(_) => return Assigned::Set,
            Err(e) if e.is_conflict() => match client.get(&path).await {
                Ok(fresh) => node = fresh,
                Err(e) if e.is_not_found() => return Assigned::Gone,
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "reading the node again failed");
                    return Assigned::Failed;
                }
            },
            Err(e) if e.is_not_found() => return Assigned::Gone,
            Err(e) => {
                tracing::warn!(node = %name, pod_cidr = %cidr, error = %e, "writing the node's pod CIDR failed");
                return Assigned::Failed;
            }
        }
    }
    Assigned::Failed
}

/// Allocates until the process ends: a round on every node change and
/// every [`TICK`].
pub async fn run(client: Client, store: Store, caches: Caches, config: Config) {
    caches.nodes.wait_synced().await;
    let mut changes = [caches.nodes.changes()];
    let mut allocator = Allocator::default();
    loop {
        allocator.round(&client, &store, &caches, &config).await;
        super::wait_for_change(&mut changes, TICK, DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn the_lowest_free_subnet_is_given() {
        let cluster = net("10.42.0.0/16");
        assert_eq!(allocate(cluster, 24, &[]), Some(net("10.42.0.0/24")));
        let used = [net("10.42.0.0/24"), net("10.42.2.0/24")];
        assert_eq!(allocate(cluster, 24, &used), Some(net("10.42.1.0/24")));
        // A hand-set subnet of another size blocks every one it overlaps.
        let used = [net("10.42.0.0/23"), net("10.42.2.128/25")];
        assert_eq!(allocate(cluster, 24, &used), Some(net("10.42.3.0/24")));
        // Subnets outside the cluster CIDR change nothing.
        assert_eq!(
            allocate(cluster, 24, &[net("192.168.0.0/16")]),
            Some(net("10.42.0.0/24"))
        );
        // A whole-cluster hand-set subnet leaves nothing.
        assert_eq!(allocate(cluster, 24, &[net("10.0.0.0/8")]), None);
    }

    #[test]
    fn a_full_range_has_nothing_left() {
        let cluster = net("10.42.0.0/30");
        let mut used = Vec::new();
        while let Some(c) = allocate(cluster, 31, &used) {
            used.push(c);
        }
        assert_eq!(used, vec![net("10.42.0.0/31"), net("10.42.0.2/31")]);
        // A freed subnet (its node deleted) is given again.
        used.remove(0);
        assert_eq!(allocate(cluster, 31, &used), Some(net("10.42.0.0/31")));
    }

    #[test]
    fn reservations_name_their_subnet_and_hold_while_their_node_does() {
        let cidr = net("10.42.3.0/24");
        let key = reservation_key(cidr);
        assert_eq!(key, "/registry/k3rs/podcidrs/10.42.3.0-24");
        assert_eq!(reservation_cidr(&key), Some(cidr));
        assert_eq!(reservation_cidr("/registry/k3rs/podcidrs/garbage"), None);
        let r = Reservation {
            cidr,
            node: "n1".into(),
            uid: "u1".into(),
        };
        let node = |uid: &str, cidr: Option<&str>| {
            let mut n = json!({"metadata": {"name": "n1", "uid": uid}, "spec": {}});
            if let Some(c) = cidr {
                n["spec"]["podCIDR"] = json!(c);
            }
            n
        };
        // Waiting for its subnet, or holding it: kept.
        assert!(holds(&r, Some(&node("u1", None))));
        assert!(holds(&r, Some(&node("u1", Some("10.42.3.0/24")))));
        // Gone, replaced by a namesake, or holding another subnet: freed.
        assert!(!holds(&r, None));
        assert!(!holds(&r, Some(&node("u2", None))));
        assert!(!holds(&r, Some(&node("u1", Some("10.42.4.0/24")))));
    }

    #[test]
    fn flags_are_checked_together() {
        assert!(validate(net("10.42.0.0/16"), 24).is_ok());
        assert!(validate(net("10.42.0.0/16"), 16).is_ok());
        let short = validate(net("10.42.0.0/16"), 8).unwrap_err();
        assert!(short.contains("shorter than the cluster CIDR"), "{short}");
        let long = validate(net("10.42.0.0/16"), 31).unwrap_err();
        assert!(long.contains("at most 30"), "{long}");
        let many = validate(net("10.0.0.0/8"), 30).unwrap_err();
        assert!(many.contains("more than 2^16"), "{many}");
        let bits = validate(net("10.42.1.0/16"), 24).unwrap_err();
        assert!(bits.contains("did you mean 10.42.0.0/16"), "{bits}");
    }

    #[test]
    fn nodes_wait_oldest_first_and_hand_set_ones_keep_theirs() {
        let node = |name: &str, created: &str, cidr: Option<&str>| {
            let mut n =
                json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {}});
            if let Some(c) = cidr {
                n["spec"]["podCIDR"] = json!(c);
            }
            n
        };
        let nodes = vec![
            node("b", "2026-01-02T00:00:00Z", None),
            node("a", "2026-01-03T00:00:00Z", None),
            node("c", "2026-01-01T00:00:00Z", Some("10.42.7.0/24")),
            node("d", "2026-01-01T00:00:00Z", None),
        ];
        let order: Vec<&str> = pending(&nodes)
            .iter()
            .map(|n| text(n, "/metadata/name"))
            .collect();
        assert_eq!(order, ["d", "b", "a"]);
        assert_eq!(node_cidr(&nodes[2]), Some(net("10.42.7.0/24")));
        assert_eq!(node_cidr(&node("x", "", Some("garbage"))), None);
    }
}
