//! The etcdctl differential: the same etcdctl script against a fresh real
//! etcd and a fresh k3rs, masked outputs compared line for line.

use conformance::{Target, TargetKind, target};

#[test]
fn etcdctl_differential() {
    let in_ci = std::env::var_os("CI").is_some();
    let etcdctl = std::env::var("CONFORMANCE_ETCDCTL")
        .unwrap_or_else(|_| conformance::cases::etcdctl::DEFAULT_ETCDCTL_BIN.into());
    for (what, path) in [("etcd", target::etcd_binary()), ("etcdctl", etcdctl.into())] {
        if !path.exists() {
            if in_ci {
                panic!(
                    "no {what} at {}, and CI is set: install it (scripts/test does)",
                    path.display()
                );
            }
            eprintln!(
                "\n!!!!!!!! SKIPPED etcdctl_differential: no {what} at {} !!!!!!!!\n",
                path.display()
            );
            return;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (steps, mismatches) = rt.block_on(async {
        let etcd = target::start(TargetKind::Etcd).await.expect("start etcd");
        let k3rs = target::start(TargetKind::K3rs).await.expect("start k3rs");
        let bare = |t: &dyn Target| t.endpoint().trim_start_matches("http://").to_string();
        conformance::diff::etcdctl_differential(&bare(etcd.as_ref()), &bare(k3rs.as_ref()))
            .await
            .expect("run etcdctl")
    });
    let mut report = String::new();
    for m in &mismatches {
        report.push_str(&format!(
            "\n{}\n--- etcd\n{}--- k3rs\n{}",
            m.command, m.expected, m.observed
        ));
    }
    assert!(
        mismatches.is_empty(),
        "{} of {steps} etcdctl steps differ:{report}",
        mismatches.len()
    );
}
