//! The dummy link `k3rs-dns` that holds the cluster DNS IP in the node's
//! network namespace, so the server can bind it and every node answers
//! its own pods locally: a pod's packet to 10.43.0.10 follows its default
//! route to the node, which owns the address. No DNAT is involved.
//!
//! Created idempotently through netlink (rtnetlink): an existing link and
//! address are kept, so an agent restart changes nothing. A kernel built
//! without the dummy driver (some VM kernels) gets the address on `lo`
//! instead, which delivers it locally just the same.

use std::net::IpAddr;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::{Handle, LinkDummy, LinkUnspec};

/// The link's name (at most 15 bytes, the kernel's limit).
pub const LINK_NAME: &str = "k3rs-dns";

/// Where the address goes when the kernel has no dummy links.
const FALLBACK_LINK: &str = "lo";

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EOPNOTSUPP: i32 = 95;

/// The errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Makes sure `name` exists as an up dummy link holding `ip` as a host
/// address (/32 or /128); returns the name of the link that holds it
/// (`lo` when the kernel has no dummy driver).
pub async fn ensure(name: &str, ip: IpAddr) -> Result<String> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    let task = tokio::spawn(connection);
    let result = ensure_with(&handle, name, ip).await;
    task.abort();
    result
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look up link {name}")),
    }
}

async fn ensure_with(handle: &Handle, name: &str, ip: IpAddr) -> Result<String> {
    let index = match link_index(handle, name).await? {
        Some(index) => index,
        None => {
            match handle
                .link()
                .add(LinkDummy::new(name).up().build())
                .execute()
                .await
            {
                Ok(()) => {}
                // Another agent run made it meanwhile.
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                    tracing::warn!(
                        link = name,
                        fallback = FALLBACK_LINK,
                        "this kernel has no dummy links (CONFIG_DUMMY); putting the cluster DNS IP on the loopback link"
                    );
                    let index = link_index(handle, FALLBACK_LINK)
                        .await?
                        .context("the loopback link is missing")?;
                    set_up(handle, FALLBACK_LINK, index).await?;
                    add_address(handle, FALLBACK_LINK, index, ip).await?;
                    return Ok(FALLBACK_LINK.to_string());
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create dummy link {name} (needs CAP_NET_ADMIN)")
                    });
                }
            }
            tracing::info!(link = name, "created the cluster DNS link");
            link_index(handle, name)
                .await?
                .with_context(|| format!("link {name} vanished after creation"))?
        }
    };
    set_up(handle, name, index).await?;
    add_address(handle, name, index, ip).await?;
    Ok(name.to_string())
}

async fn set_up(handle: &Handle, name: &str, index: u32) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("cannot set link {name} up"))
}

/// Adds `ip` as a host address of link `index`, unless it has it already.
async fn add_address(handle: &Handle, name: &str, index: u32, ip: IpAddr) -> Result<()> {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(address) = addresses
        .try_next()
        .await
        .context("cannot list addresses")?
    {
        let has = address.header.prefix_len == prefix
            && address
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(a) | AddressAttribute::Address(a) if *a == ip));
        if has {
            return Ok(());
        }
    }
    match handle.address().add(index, ip, prefix).execute().await {
        Ok(()) => {
            tracing::info!(link = name, %ip, "put the cluster DNS IP on its link");
            Ok(())
        }
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot add {ip}/{prefix} to link {name}")),
    }
}

/// Removes the link (tests; the agent keeps it across restarts).
pub async fn remove(name: &str) -> Result<()> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open a netlink socket")?;
    let task = tokio::spawn(connection);
    let result = async {
        if let Some(index) = link_index(&handle, name).await? {
            handle
                .link()
                .del(index)
                .execute()
                .await
                .with_context(|| format!("cannot delete link {name}"))?;
        }
        Ok(())
    }
    .await;
    task.abort();
    result
}
