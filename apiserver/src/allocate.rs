//! Service cluster IPs (K3s's service CIDR, 10.43.0.0/16) and node ports
//! (30000–32767), each unique in the cluster: an address or port taken is
//! a key under `/registry/k3rs/`, created only if absent, released when its
//! Service is deleted.

use serde_json::{Value, json};

use crate::status::{ApiError, ApiResult};
use crate::store::{Store, Swap};

/// The service CIDR's first address and size; `.1` is `default/kubernetes`.
const CIDR_BASE: u32 = u32::from_be_bytes([10, 43, 0, 0]);
const CIDR_SIZE: u32 = 1 << 16;
pub const KUBERNETES_SERVICE_IP: &str = "10.43.0.1";
/// The low addresses random allocation avoids while others are free
/// (kube's `min(max(16, size/16), 256)`), so fixed ones stay available.
const STATIC_BAND: u32 = 256;
const NODE_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;
/// Random tries before answering that the range is full.
const TRIES: usize = 64;

fn ip_key(ip: &str) -> String {
    format!("/registry/k3rs/clusterips/{ip}")
}

fn port_key(port: u32) -> String {
    format!("/registry/k3rs/nodeports/{port}")
}

fn random_u32() -> u32 {
    u32::from_be_bytes(crate::objects::random_bytes::<4>())
}

fn owner_of(svc: &Value) -> Value {
    json!({"service": format!("{}/{}", svc["metadata"]["namespace"].as_str().unwrap_or(""), svc["metadata"]["name"].as_str().unwrap_or(""))})
}

/// Takes `key` for `svc`; false when another Service holds it.
async fn take(store: &Store, key: &str, svc: &Value) -> ApiResult<bool> {
    Ok(matches!(
        store.swap(key, &owner_of(svc), 0).await?,
        Swap::Done(_)
    ))
}

async fn release_key(store: &Store, key: &str) {
    // The reservation has no metadata to carry a resourceVersion, so the
    // revision the delete compares against is read beside it. A failed
    // read or a lost race is tried again: a reservation left behind would
    // keep the address taken for good.
    for _ in 0..5 {
        let revision = match store.get_revision(key).await {
            Ok(Some((_, revision))) => revision,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(key, error = %e.message, "reading a reservation to release it failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match store.delete(key, revision).await {
            Ok(Swap::Done(_)) | Ok(Swap::Mismatch(None)) => return,
            Ok(Swap::Mismatch(Some(_))) => continue,
            Err(e) => {
                tracing::debug!(key, error = %e.message, "releasing a reservation failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    tracing::warn!(
        key,
        "a Service's address or port could not be released; it stays taken"
    );
}

fn invalid(svc: &Value, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        "Service",
        svc["metadata"]["name"].as_str().unwrap_or(""),
        vec![(field.to_string(), message)],
    )
}

/// Fills in and reserves `spec.clusterIP(s)` and the node ports a new
/// Service needs; on an error nothing stays reserved.
pub async fn assign(store: &Store, svc: &mut Value) -> ApiResult<()> {
    let kind = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if kind == "ExternalName" {
        return Ok(());
    }
    let mut taken = Vec::new();
    let result = assign_taking(store, svc, &kind, &mut taken).await;
    if result.is_err() {
        for key in &taken {
            release_key(store, key).await;
        }
    }
    result
}

async fn assign_taking(
    store: &Store,
    svc: &mut Value,
    kind: &str,
    taken: &mut Vec<String>,
) -> ApiResult<()> {
    let asked = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ip = if asked == "None" {
        None
    } else if !asked.is_empty() {
        let parsed: std::net::Ipv4Addr = asked.parse().map_err(|_| {
            invalid(
                svc,
                "spec.clusterIPs",
                format!("Invalid value: []string{{\"{asked}\"}}: must be a valid IP address"),
            )
        })?;
        let n = u32::from(parsed);
        if !(CIDR_BASE..CIDR_BASE + CIDR_SIZE).contains(&n) {
            return Err(invalid(
                svc,
                "spec.clusterIPs",
                format!(
                    "Invalid value: []string{{\"{asked}\"}}: failed to allocate IP {asked}: the provided IP ({asked}) is not in the valid range. The range of valid IPs is 10.43.0.0/16"
                ),
            ));
        }
        if !take(store, &ip_key(&asked), svc).await? {
            return Err(invalid(
                svc,
                "spec.clusterIPs",
                format!(
                    "Invalid value: []string{{\"{asked}\"}}: failed to allocate IP {asked}: provided IP is already allocated"
                ),
            ));
        }
        taken.push(ip_key(&asked));
        Some(asked)
    } else {
        let mut found = None;
        for attempt in 0..2 * TRIES {
            // kube's static subrange: random picks come from above the
            // first STATIC_BAND addresses (left to Services that ask for
            // an address, like kube-dns's .10) until that part is full;
            // never the network, .1 (the kubernetes Service) or broadcast.
            let n = if attempt < TRIES {
                CIDR_BASE + STATIC_BAND + random_u32() % (CIDR_SIZE - STATIC_BAND - 1)
            } else {
                CIDR_BASE + 2 + random_u32() % (STATIC_BAND - 2)
            };
            let ip = std::net::Ipv4Addr::from(n).to_string();
            if take(store, &ip_key(&ip), svc).await? {
                taken.push(ip_key(&ip));
                found = Some(ip);
                break;
            }
        }
        Some(
            found.ok_or_else(|| {
                ApiError::internal("failed to allocate a serviceIP: range is full")
            })?,
        )
    };
    match &ip {
        Some(ip) => {
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
        None => {
            svc["spec"]["clusterIP"] = json!("None");
            svc["spec"]["clusterIPs"] = json!(["None"]);
        }
    }
    svc["spec"]["ipFamilies"] = json!(["IPv4"]);
    svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    if !matches!(kind, "NodePort" | "LoadBalancer") {
        return Ok(());
    }
    let ports = svc
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut filled = Vec::with_capacity(ports.len());
    for (i, mut port) in ports.into_iter().enumerate() {
        let asked = port
            .get("nodePort")
            .and_then(Value::as_u64)
            .map(|p| p as u32)
            // 0 is unset (kubectl create service sends it): allocate one.
            .filter(|p| *p != 0);
        let chosen = match asked {
            Some(p) if NODE_PORTS.contains(&p) => {
                if !take(store, &port_key(p), svc).await? {
                    return Err(invalid(
                        svc,
                        &format!("spec.ports[{i}].nodePort"),
                        format!("Invalid value: {p}: provided port is already allocated"),
                    ));
                }
                p
            }
            Some(p) => {
                return Err(invalid(
                    svc,
                    &format!("spec.ports[{i}].nodePort"),
                    format!(
                        "Invalid value: {p}: provided port is not in the valid range. The range of valid ports is 30000-32767"
                    ),
                ));
            }
            None => {
                let span = NODE_PORTS.end() - NODE_PORTS.start() + 1;
                let mut got = None;
                for _ in 0..TRIES {
                    let p = NODE_PORTS.start() + random_u32() % span;
                    if take(store, &port_key(p), svc).await? {
                        got = Some(p);
                        break;
                    }
                }
                got.ok_or_else(|| {
                    ApiError::internal("failed to allocate a nodePort: range is full")
                })?
            }
        };
        taken.push(port_key(chosen));
        port["nodePort"] = json!(chosen);
        filled.push(port);
    }
    svc["spec"]["ports"] = json!(filled);
    Ok(())
}

/// Whether `ip` is reserved for the Service `namespace/name` (a
/// reservation an earlier, interrupted start left).
pub async fn reserved_for(store: &Store, ip: &str, namespace: &str, name: &str) -> bool {
    matches!(store.get(&ip_key(ip)).await, Ok(Some(v)) if v["service"] == format!("{namespace}/{name}"))
}

/// Releases what a deleted Service held.
pub async fn release(store: &Store, svc: &Value) {
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        release_key(store, &ip_key(ip)).await;
    }
    for port in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.get("nodePort").and_then(Value::as_u64) {
            release_key(store, &port_key(p as u32)).await;
        }
    }
}
