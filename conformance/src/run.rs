//! Running cases: pick or start the target a case needs, give it a fresh
//! key prefix, run it under a timeout and report the outcome.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::case::{Case, Ctx, Failure};
use crate::client::Clients;
use crate::target::{self, Target, TargetKind};

/// A case gets this long (lease expiry cases need several seconds).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a case went.
#[derive(Debug)]
pub enum Outcome {
    /// etcd's behaviour, observed.
    Pass,
    /// A mismatch.
    Fail(Failure),
    /// Not run, and why.
    Skip(String),
}

/// A prefix no other case or run uses.
pub fn prefix_for(case: &Case) -> Bytes {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Bytes::from(format!(
        "/conformance/{:x}-{}/{}/{}/",
        nanos,
        std::process::id(),
        case.group,
        case.name
    ))
}

/// Whether a server reporting `version` predates the watch-progress fixes
/// that `k3rs_only` cases pin (etcd #15220, #17507: fixed in 3.4.31/3.5.13).
pub fn predates_progress_fixes(version: &str) -> bool {
    let nums: Vec<u64> = version
        .split(['.', '-'])
        .take(3)
        .filter_map(|p| p.parse().ok())
        .collect();
    match nums[..] {
        [3, 4, patch] => patch < 31,
        [3, 5, patch] => patch < 13,
        [3, minor, _] => minor < 4,
        _ => false,
    }
}

/// Why a case cannot run on this machine, if a tool it drives is missing.
pub fn missing_tool(case: &Case) -> Option<String> {
    let need = match case.group {
        "etcdctl" => std::env::var("CONFORMANCE_ETCDCTL")
            .unwrap_or_else(|_| crate::cases::etcdctl::DEFAULT_ETCDCTL_BIN.into()),
        "python" => {
            let py =
                std::env::var("CONFORMANCE_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
            let ok = std::process::Command::new(&py)
                .args(["-c", "import etcd3"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            return if ok {
                None
            } else {
                Some(format!("{py} with the etcd3 module (Debian python3-etcd3)"))
            };
        }
        _ => return None,
    };
    if Path::new(&need).exists() {
        None
    } else {
        Some(need)
    }
}

/// Runs `case` against `shared`, or against a fresh server of the same kind
/// when the case needs an empty store.
pub async fn run_case(case: &Case, shared: &dyn Target) -> Outcome {
    let kind = shared.kind();
    if case.flags.k3rs_only && kind == TargetKind::Etcd {
        return Outcome::Skip("k3rs-only: etcd 3.4.23 predates the fix".into());
    }
    if let Some(tool) = missing_tool(case) {
        return Outcome::Skip(format!("needs {tool}"));
    }
    let fresh;
    let target: &dyn Target = if case.flags.fresh {
        if kind == TargetKind::Endpoint {
            return Outcome::Skip("needs a fresh store, and an endpoint's store is not".into());
        }
        fresh = match target::start(kind).await {
            Ok(t) => t,
            Err(e) => return Outcome::Fail(setup_failure(format!("start a fresh {kind}: {e}"))),
        };
        fresh.as_ref()
    } else {
        shared
    };
    let clients = match Clients::connect(target.endpoint()).await {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(setup_failure(e)),
    };
    if case.flags.k3rs_only && kind == TargetKind::Endpoint {
        let mut m = clients.maintenance.clone();
        if let Ok(s) = m.status(kine::proto::StatusRequest {}).await {
            let v = s.into_inner().version;
            if predates_progress_fixes(&v) {
                return Outcome::Skip(format!("k3rs-only: etcd {v} predates the fix"));
            }
        }
    }
    let cx = Ctx::new(
        clients,
        prefix_for(case),
        target.endpoint().to_string(),
        kind,
    );
    match tokio::time::timeout(CASE_TIMEOUT, (case.run)(cx)).await {
        Err(_) => Outcome::Fail(setup_failure(format!(
            "case did not finish within {CASE_TIMEOUT:?}"
        ))),
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(f)) => Outcome::Fail(f),
    }
}

fn setup_failure(e: String) -> Failure {
    Failure {
        what: "setup".into(),
        request: "-".into(),
        expected: "a reachable target".into(),
        observed: e,
    }
}

/// The body of one generated `#[test]`: runs case `group::name` against a
/// new server of `kind`, panicking with the report on failure.
///
/// Without an etcd binary the etcd tests skip loudly, except when `CI` is
/// set: then they fail, so a green CI run always means etcd was the oracle.
pub fn run_test(group: &str, name: &str, kind: TargetKind) {
    let case = crate::all()
        .into_iter()
        .find(|c| c.group == group && c.name == name)
        .unwrap_or_else(|| panic!("no case {group}::{name}"));
    let in_ci = std::env::var_os("CI").is_some();
    let loud_skip = |why: String| {
        if in_ci {
            panic!("{why}, and CI is set: install it (scripts/test does)");
        }
        eprintln!(
            "\n!!!!!!!! SKIPPED {}::{} [{kind}]: {why} !!!!!!!!\n",
            case.group, case.name
        );
    };
    if kind == TargetKind::Etcd && !target::etcd_binary().exists() {
        return loud_skip(format!(
            "no etcd binary at {} (Debian etcd-server)",
            target::etcd_binary().display()
        ));
    }
    if let Some(tool) = missing_tool(&case) {
        return loud_skip(format!("needs {tool}"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = rt.block_on(async {
        let t = match target::start(kind).await {
            Ok(t) => t,
            Err(e) => panic!("could not start {kind}: {e}"),
        };
        // Each test has its own server, so fresh cases run on it directly.
        let case = Case {
            flags: crate::Flags {
                fresh: false,
                ..case.flags
            },
            ..case
        };
        let outcome = run_case(&case, t.as_ref()).await;
        drop(t);
        outcome
    });
    match outcome {
        Outcome::Pass => {}
        Outcome::Skip(why) => eprintln!("skipped {group}::{name} [{kind}]: {why}"),
        Outcome::Fail(f) => panic!("{group}::{name} [{kind}] failed\n{f}"),
    }
}
