//! The etcdctl differential: one script of etcdctl commands run against two
//! fresh servers (real etcd and k3rs), outputs compared line for line after
//! masking what legitimately differs (cluster, member and raft ids, sizes,
//! versions, endpoints, log lines). Both stores start empty, so revisions
//! must match exactly.

use serde_json::Value;

use crate::cases::etcdctl::DEFAULT_ETCDCTL_BIN;

/// One etcdctl invocation: arguments and optional stdin.
type Step = (&'static [&'static str], Option<&'static str>);

/// The script. Keys live under /diff/ in a fresh store.
const SCRIPT: &[Step] = &[
    (&["get", "/diff/a", "-w", "json"], None),
    (&["put", "/diff/a", "1"], None),
    (&["put", "/diff/b", "2"], None),
    (&["put", "/diff/c", "3"], None),
    (&["put", "/diff/a", "4", "--prev-kv"], None),
    (&["put", "/diff/a", "4", "--prev-kv", "-w", "json"], None),
    (&["get", "/diff/", "--prefix"], None),
    (&["get", "/diff/", "--prefix", "-w", "json"], None),
    (
        &["get", "/diff/", "--prefix", "--limit=1", "-w", "json"],
        None,
    ),
    (
        &[
            "get",
            "/diff/",
            "--prefix",
            "--sort-by=VALUE",
            "--order=DESCEND",
        ],
        None,
    ),
    (
        &[
            "get",
            "/diff/",
            "--prefix",
            "--sort-by=VERSION",
            "--order=ASCEND",
            "-w",
            "json",
        ],
        None,
    ),
    (
        &["get", "/diff/", "--prefix", "--keys-only", "-w", "json"],
        None,
    ),
    (
        &["get", "/diff/", "--prefix", "--count-only", "-w", "json"],
        None,
    ),
    (&["get", "/diff/b", "--from-key"], None),
    (&["get", "/diff/b", "/diff/z", "-w", "json"], None),
    (&["get", "/diff/a", "--rev=2", "-w", "json"], None),
    (&["get", "/diff/a", "--rev=100"], None),
    (&["get", ""], None),
    (&["put", "/diff/missing", "--ignore-value"], None),
    (&["del", "/diff/b", "--prev-kv", "-w", "json"], None),
    (&["del", "/diff/nothing"], None),
    (
        &["txn", "-w", "json"],
        Some("value(\"/diff/a\") = \"4\"\n\nput /diff/t yes\nget /diff/a\n\nput /diff/t no\n\n"),
    ),
    (
        &["txn"],
        Some(
            "mod(\"/diff/a\") > \"100\"\n\nput /diff/t yes\n\ndel /diff/c\nget /diff/ --prefix\n\n",
        ),
    ),
    (&["compaction", "3"], None),
    (&["compaction", "3"], None),
    (&["compaction", "1000"], None),
    (&["get", "/diff/a", "--rev=2"], None),
    (
        &["get", "/diff/", "--prefix", "--rev=3", "-w", "json"],
        None,
    ),
    (&["compaction", "--physical", "7"], None),
    (&["endpoint", "status", "-w", "json"], None),
    (&["endpoint", "health"], None),
    (&["member", "list", "-w", "json"], None),
    (&["alarm", "list"], None),
    (&["get", "/diff/", "--prefix", "-w", "fields"], None),
];

/// JSON fields whose values legitimately differ between servers.
const MASKED_FIELDS: &[&str] = &[
    "cluster_id",
    "member_id",
    "raft_term",
    "leader",
    "raftIndex",
    "raftTerm",
    "raftAppliedIndex",
    "dbSize",
    "dbSizeInUse",
    "version",
    "ID",
    "peerURLs",
    "took",
];

fn mask_json(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if MASKED_FIELDS.contains(&k.as_str()) {
                    *val = Value::String("<masked>".into());
                } else {
                    mask_json(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask_json),
        _ => {}
    }
}

/// Masks one output line.
fn mask_line(line: &str, endpoint: &str) -> Option<String> {
    // clientv3's structured log lines (retries, timestamps) are noise.
    if line.starts_with("{\"level\":") {
        return None;
    }
    let line = line.replace(endpoint, "<endpoint>");
    if let Ok(mut v) = serde_json::from_str::<Value>(&line)
        && (v.is_object() || v.is_array())
    {
        mask_json(&mut v);
        return Some(v.to_string());
    }
    // `-w fields` prints "Name" : value lines.
    for f in ["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""] {
        if line.starts_with(f) {
            return Some(format!("{f} : <masked>"));
        }
    }
    // "took = 1.2ms" in health output.
    if let Some(i) = line.find("took = ") {
        return Some(format!("{}took = <masked>", &line[..i]));
    }
    Some(line)
}

async fn run_one(endpoint: &str, step: &Step) -> Result<String, String> {
    let bin =
        std::env::var("CONFORMANCE_ETCDCTL").unwrap_or_else(|_| DEFAULT_ETCDCTL_BIN.to_string());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .args(step.0)
        .stdin(if step.1.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("{bin}: {e}"))?;
    if let Some(input) = step.1 {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .map_err(|_| "etcdctl still running after 20 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut text = format!("exit {}\n", out.status.code().unwrap_or(-1));
    for (name, bytes) in [("out", &out.stdout), ("err", &out.stderr)] {
        for line in String::from_utf8_lossy(bytes).lines() {
            if let Some(l) = mask_line(line, endpoint) {
                text.push_str(&format!("{name}| {l}\n"));
            }
        }
    }
    Ok(text)
}

/// A step whose masked outputs differ.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// The etcdctl command line (and stdin).
    pub command: String,
    /// The oracle's masked output.
    pub expected: String,
    /// The other server's masked output.
    pub observed: String,
}

/// Runs the script against `oracle` and `other` (both `host:port` of fresh
/// servers) and returns the steps whose masked outputs differ, and the
/// number of steps run.
pub async fn etcdctl_differential(
    oracle: &str,
    other: &str,
) -> Result<(usize, Vec<Mismatch>), String> {
    let mut mismatches = Vec::new();
    for step in SCRIPT {
        let a = run_one(oracle, step).await?;
        let b = run_one(other, step).await?;
        if a != b {
            mismatches.push(Mismatch {
                command: format!(
                    "etcdctl {}{}",
                    step.0.join(" "),
                    step.1.map(|s| format!(" <<< {s:?}")).unwrap_or_default()
                ),
                expected: a,
                observed: b,
            });
        }
    }
    Ok((SCRIPT.len(), mismatches))
}
