//! The CNI configuration of the node's pods: a `cni0` bridge whose
//! gateway is the first address of the node's podCIDR, addresses from
//! host-local on that subnet, and portmap chained so `hostPort`s work.
//! The bridge does not masquerade (it would hide pod addresses from pods
//! on other nodes too): `nat` masquerades only traffic leaving the
//! cluster CIDR.

use std::path::Path;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde_json::{Value, json};

/// The bridge the pods of this node hang on.
pub const BRIDGE: &str = "cni0";
/// The file containerd's CRI plugin reads (the lowest name wins).
const CONF_FILE: &str = "10-k3rs.conflist";

/// The conflist for `pod_cidr`; `portmap`: whether the portmap plugin can
/// run here (it needs iptables).
pub fn conflist(pod_cidr: Ipv4Net, ipam_dir: &Path, portmap: bool) -> Value {
    let gateway = gateway(pod_cidr);
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr.to_string(), "gateway": gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    })];
    if portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    json!({"cniVersion": "0.4.0", "name": "k3rs", "plugins": plugins})
}

/// The bridge's address: the first of the subnet.
pub fn gateway(pod_cidr: Ipv4Net) -> std::net::Ipv4Addr {
    let network = u32::from(pod_cidr.network());
    std::net::Ipv4Addr::from(network + 1)
}

/// Writes the conflist into `conf_dir` (atomically: containerd watches
/// the directory and must never read half a file).
pub fn write(conf_dir: &Path, conf: &Value) -> Result<()> {
    std::fs::create_dir_all(conf_dir)
        .with_context(|| format!("cannot create {}", conf_dir.display()))?;
    let text = serde_json::to_string_pretty(conf).context("encoding the CNI configuration")?;
    // A name containerd skips (it reads *.conf, *.conflist, *.json).
    let staging = conf_dir.join(format!(".{CONF_FILE}.tmp"));
    std::fs::write(&staging, text)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    let path = conf_dir.join(CONF_FILE);
    std::fs::rename(&staging, &path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_serves_the_node_subnet_without_masquerading() {
        let cidr: Ipv4Net = "10.42.3.0/24".parse().unwrap();
        let conf = conflist(cidr, Path::new("/agent/cni/ipam"), true);
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["isGateway"], true);
        let range = &bridge["ipam"]["ranges"][0][0];
        assert_eq!(range["subnet"], "10.42.3.0/24");
        assert_eq!(range["gateway"], "10.42.3.1");
        assert_eq!(bridge["ipam"]["dataDir"], "/agent/cni/ipam");
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        assert_eq!(
            conf["plugins"][1]["capabilities"]["portMappings"],
            Value::Bool(true)
        );
        let without = conflist(cidr, Path::new("/x"), false);
        assert_eq!(without["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_file_lands_whole() {
        let dir = tempfile::tempdir().unwrap();
        let conf = conflist("10.42.0.0/24".parse().unwrap(), dir.path(), false);
        write(&dir.path().join("net.d"), &conf).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path().join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-k3rs.conflist"]);
        let text = std::fs::read_to_string(dir.path().join("net.d/10-k3rs.conflist")).unwrap();
        let read: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(read, conf);
    }
}
