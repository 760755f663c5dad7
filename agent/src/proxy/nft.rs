//! Applies rulesets through the `nft` binary: one `nft -f -` transaction
//! per sync, which the kernel commits whole or not at all.
//!
//! Why the binary and not netlink from Rust: nft's text is the interface
//! kube-proxy's nftables mode uses too (through knftables), a full sync of
//! 1,000 Services and 10,000 endpoints takes well under a second this way
//! (see ARCHITECTURE.md for the measurement), and the Rust netlink crates
//! for nftables either drive this same binary (`nftables`, through JSON) or
//! would make k3rs encode nftables expressions by hand (`rustables`, `nftnl`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::rules::{Installed, Ruleset, TABLE, installed_after, render_partial};

/// How long a flushed chain waits before it is deleted: kernels before 6.2
/// notice only a moment later that no map element names it any more.
const STALE_CHAIN_GRACE: Duration = Duration::from_secs(1);

/// An `nft` run that failed.
#[derive(Debug)]
pub struct NftError(pub String);

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NftError {}

/// Runs `nft -f -` with `script` on stdin.
pub fn run_script(nft: &Path, script: &str) -> Result<(), NftError> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError(format!("cannot run {}: {e}", nft.display())))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // nft reads the whole script before it commits, so a write error
    // (nft died) leaves nothing half-applied; its stderr says why.
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| NftError(format!("waiting for {}: {e}", nft.display())))?;
    if out.status.success() {
        return written.map_err(|e| NftError(format!("writing to nft: {e}")));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Errors quote the offending line; a few are enough.
    let msg: Vec<&str> = stderr.lines().take(12).collect();
    Err(NftError(format!(
        "nft -f failed ({}): {}",
        out.status,
        msg.join("\n")
    )))
}

/// Keeps the `ip k3rs-proxy` table equal to the latest ruleset, remembering
/// what the table holds between syncs.
pub struct Syncer {
    nft: PathBuf,
    /// `None`: unknown (start, or after a failure): the next sync deletes
    /// the table and builds it again in the same transaction.
    installed: Option<Installed>,
    /// Stale chains, flushed, by when they were first found stale.
    stale_since: BTreeMap<String, Instant>,
    /// The ruleset last applied, while `installed` is known.
    last: Option<Ruleset>,
}

impl Syncer {
    pub fn new(nft: PathBuf) -> Syncer {
        Syncer {
            nft,
            installed: None,
            stale_since: BTreeMap::new(),
            last: None,
        }
    }

    /// Applies `rs` in one transaction, rewriting every chain.
    pub fn sync(&mut self, rs: &Ruleset) -> Result<(), NftError> {
        self.sync_with(rs, true)
    }

    /// Applies `rs` in one transaction; unless `full`, chains whose rules
    /// are the same as last time are not rewritten (kube-proxy's partial
    /// sync). A full sync repairs chains someone else changed.
    pub fn sync_with(&mut self, rs: &Ruleset, full: bool) -> Result<(), NftError> {
        let now = Instant::now();
        let mut delete = BTreeSet::new();
        if let Some(inst) = &self.installed {
            let stale: BTreeSet<&String> = inst
                .chains
                .iter()
                .filter(|c| !rs.chains.contains_key(*c))
                .collect();
            self.stale_since.retain(|c, _| stale.contains(c));
            for c in stale {
                let since = *self.stale_since.entry(c.clone()).or_insert(now);
                if now.duration_since(since) >= STALE_CHAIN_GRACE {
                    delete.insert(c.clone());
                }
            }
        }
        let unchanged: BTreeSet<&str> = match (&self.last, full) {
            (Some(last), false) => rs
                .chains
                .iter()
                .filter(|(name, rules)| last.chains.get(*name) == Some(rules))
                .map(|(name, _)| name.as_str())
                .collect(),
            _ => BTreeSet::new(),
        };
        let script = render_partial(rs, self.installed.as_ref(), &delete, &unchanged);
        match run_script(&self.nft, &script) {
            Ok(()) => {
                self.installed = Some(installed_after(rs, self.installed.as_ref(), &delete));
                self.stale_since.retain(|c, _| !delete.contains(c));
                self.last = Some(rs.clone());
                Ok(())
            }
            Err(e) => {
                self.installed = None;
                self.stale_since.clear();
                self.last = None;
                Err(e)
            }
        }
    }

    /// Chains flushed but not yet deleted (a later sync deletes them).
    pub fn pending_deletes(&self) -> usize {
        self.stale_since.len()
    }
}

/// Deletes the table (the proxy is off); absent already is fine.
pub fn delete_table(nft: &Path) -> Result<(), NftError> {
    run_script(
        nft,
        &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"),
    )
}
