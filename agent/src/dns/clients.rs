//! Who may have names outside the cluster zone forwarded: pods (the
//! cluster CIDR) and the node itself (loopback, its own addresses). Anyone
//! else gets REFUSED, so the node is no open resolver for its network;
//! the cluster zone itself answers everyone, as CoreDNS's does.

use std::net::IpAddr;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;

/// How often the node's own addresses are read again (DHCP may change them).
pub const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Clients {
    /// `None`: every client may forward (tests, or no cluster CIDR known).
    cluster: Option<Ipv4Net>,
    local: RwLock<Vec<IpAddr>>,
}

impl Clients {
    /// Pods of `cluster` and the node's `local` addresses.
    pub fn new(cluster: Ipv4Net, local: Vec<IpAddr>) -> Clients {
        Clients {
            cluster: Some(cluster),
            local: RwLock::new(local),
        }
    }

    /// Every client may forward.
    pub fn open() -> Clients {
        Clients {
            cluster: None,
            local: RwLock::new(Vec::new()),
        }
    }

    /// Whether `src` may have names outside the cluster zone forwarded.
    pub fn may_forward(&self, src: IpAddr) -> bool {
        let src = src.to_canonical();
        let Some(cluster) = self.cluster else {
            return true;
        };
        if src.is_loopback() {
            return true;
        }
        if let IpAddr::V4(v4) = src
            && cluster.contains(&v4)
        {
            return true;
        }
        self.local.read().map(|l| l.contains(&src)).unwrap_or(false)
    }

    /// Replaces the node's addresses.
    pub fn set_local(&self, local: Vec<IpAddr>) {
        if let Ok(mut l) = self.local.write() {
            *l = local;
        }
    }
}

/// Every address of this network namespace.
pub async fn local_addresses() -> Result<Vec<IpAddr>> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    let task = tokio::spawn(connection);
    let mut found = Vec::new();
    let mut dump = handle.address().get().execute();
    let listed: Result<()> = async {
        while let Some(a) = dump.try_next().await.context("listing addresses")? {
            for attribute in &a.attributes {
                if let AddressAttribute::Local(ip) | AddressAttribute::Address(ip) = attribute
                    && !found.contains(ip)
                {
                    found.push(*ip);
                }
            }
        }
        Ok(())
    }
    .await;
    task.abort();
    listed?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pods_and_the_node_may_forward_others_not() {
        let clients = Clients::new("10.42.0.0/16".parse().unwrap(), vec![ip("192.168.1.5")]);
        assert!(clients.may_forward(ip("10.42.3.7")));
        assert!(clients.may_forward(ip("127.0.0.1")));
        assert!(clients.may_forward(ip("::1")));
        assert!(clients.may_forward(ip("::ffff:10.42.0.9")));
        assert!(clients.may_forward(ip("192.168.1.5")));
        assert!(!clients.may_forward(ip("192.168.1.6")));
        assert!(!clients.may_forward(ip("10.43.0.1")));
        assert!(!clients.may_forward(ip("203.0.113.9")));
        clients.set_local(vec![ip("192.168.1.6")]);
        assert!(clients.may_forward(ip("192.168.1.6")));
        assert!(!clients.may_forward(ip("192.168.1.5")));
        assert!(Clients::open().may_forward(ip("203.0.113.9")));
    }
}
