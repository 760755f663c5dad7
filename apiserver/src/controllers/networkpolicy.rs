//! NetworkPolicies are stored and served, but k3rs enforces none: this
//! controller says so on each one with a Warning Event, so `kubectl
//! describe networkpolicy` shows it rather than a silent no-op.

use std::collections::HashSet;

use super::Caches;
use super::replicaset::{DEBOUNCE, RESYNC, str_at, with_kind};
use crate::client::Client;

const COMPONENT: &str = "networkpolicy-controller";
pub const REASON: &str = "NetworkPolicyNotEnforced";
pub const MESSAGE: &str =
    "k3rs does not enforce NetworkPolicy: this policy is stored, but traffic is not filtered";

pub async fn run(client: Client, caches: Caches) {
    caches.networkpolicies.wait_synced().await;
    let mut changes = [caches.networkpolicies.changes()];
    // Policies warned about by this process (a restart warns again, which
    // the event's repeat makes harmless).
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let policies = caches.networkpolicies.list();
        let live: HashSet<String> = policies
            .iter()
            .map(|p| str_at(p, "/metadata/uid").to_string())
            .collect();
        warned.retain(|uid| live.contains(uid));
        for policy in &policies {
            let uid = str_at(policy, "/metadata/uid").to_string();
            if warned.insert(uid) {
                let mut policy = with_kind(policy, "NetworkPolicy");
                policy["apiVersion"] = serde_json::json!("networking.k8s.io/v1");
                super::record_event(&client, &policy, "Warning", REASON, MESSAGE, COMPONENT).await;
            }
        }
        super::wait_for_change(&mut changes, RESYNC, DEBOUNCE).await;
    }
}
