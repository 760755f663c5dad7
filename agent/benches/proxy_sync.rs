//! Service rule sync time at 1,000 Services and 10,000 endpoints: k3rs's
//! nftables transaction (`nft -f -`) against kube-proxy-shaped iptables
//! rules (KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-*, `statistic` random)
//! loaded with `iptables-restore` (nf_tables backend) and
//! `iptables-legacy-restore`.
//!
//! Runs in a network namespace of its own (unshared before anything else),
//! so no rule reaches the host. Needs root, nft and iptables.
//!
//!   cargo bench -p agent --bench proxy_sync         # release
//!   cargo test -p agent --bench proxy_sync          # dev profile, quicker to build
//!
//! K3RS_BENCH_SERVICES and K3RS_BENCH_ENDPOINTS (per Service) change the
//! size; K3RS_BENCH_RUNS the runs per measurement (median reported).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::proxy::nft::{Syncer, delete_table, run_script};
use agent::proxy::{ProxyConfig, ruleset};
use serde_json::{Value, json};

const NFT: &str = "/usr/sbin/nft";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn service_ip(i: usize) -> String {
    let n = i + 256; // clear of 10.43.0.0/24 (the API's and DNS's addresses)
    format!("10.43.{}.{}", n / 256, n % 256)
}

fn endpoint_ip(i: usize, j: usize, per: usize) -> String {
    let n = i * per + j;
    format!("10.42.{}.{}", n / 250, n % 250 + 2)
}

fn objects(services: usize, per: usize) -> (Vec<Value>, Vec<Value>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..services {
        let name = format!("svc-{i}");
        svcs.push(json!({"metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": service_ip(i), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
        let eps: Vec<Value> = (0..per)
            .map(|j| {
                json!({"addresses": [endpoint_ip(i, j, per)], "nodeName": format!("n{}", j % 3),
                            "conditions": {"ready": true}})
            })
            .collect();
        slices.push(
            json!({"metadata": {"name": format!("{name}-1"), "namespace": "bench",
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps}),
        );
    }
    (svcs, slices)
}

/// kube-proxy's iptables mode, full sync (`iptables-restore --noflush`
/// with every KUBE-* chain declared, hence flushed): what it would write
/// for the same Services.
fn iptables_script(services: usize, per: usize) -> String {
    let mut s = String::with_capacity(services * per * 300);
    s.push_str("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    for i in 0..services {
        s.push_str(&format!(":KUBE-SVC-{i:016} - [0:0]\n"));
        for j in 0..per {
            s.push_str(&format!(":KUBE-SEP-{i:08}{j:08} - [0:0]\n"));
        }
    }
    s.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    s.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    s.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    s.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for i in 0..services {
        let ip = service_ip(i);
        let c = format!("bench/svc-{i}:http");
        s.push_str(&format!(
            "-A KUBE-SERVICES -m comment --comment \"{c} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport 80 -j KUBE-SVC-{i:016}\n"
        ));
        s.push_str(&format!(
            "-A KUBE-SVC-{i:016} -m comment --comment \"{c} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport 80 ! -s 10.42.0.0/16 -j KUBE-MARK-MASQ\n"
        ));
        for j in 0..per {
            let ep = endpoint_ip(i, j, per);
            let stat = if j + 1 < per {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / (per - j) as f64
                )
            } else {
                String::new()
            };
            s.push_str(&format!(
                "-A KUBE-SVC-{i:016} -m comment --comment \"{c} -> {ep}:8080\" {stat}-j KUBE-SEP-{i:08}{j:08}\n"
            ));
            s.push_str(&format!(
                "-A KUBE-SEP-{i:08}{j:08} -m comment --comment {c} -s {ep}/32 -j KUBE-MARK-MASQ\n"
            ));
            s.push_str(&format!(
                "-A KUBE-SEP-{i:08}{j:08} -m comment --comment {c} -m tcp -p tcp -j DNAT --to-destination {ep}:8080\n"
            ));
        }
    }
    s.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    s.push_str("COMMIT\n");
    s
}

fn restore(bin: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new(bin)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "))
    }
}

fn flush_iptables(bin_prefix: &str) {
    let _ = Command::new(format!("{bin_prefix}-restore"))
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"*nat\nCOMMIT\n")?;
            c.wait()
        });
}

/// Median of `runs` timings of `f`, which runs `setup` first (untimed).
fn time(
    runs: usize,
    mut setup: impl FnMut(),
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    let mut t = Vec::new();
    for _ in 0..runs {
        setup();
        let start = Instant::now();
        f()?;
        t.push(start.elapsed());
    }
    t.sort();
    Ok(t[t.len() / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("proxy_sync: skipped: needs root (a network namespace, nftables, iptables)");
        return;
    }
    // SAFETY: single-threaded so far; unshare moves this thread (and the
    // tools it starts) into a new network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "proxy_sync: skipped: unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let services = env("K3RS_BENCH_SERVICES", 1000);
    let per = env("K3RS_BENCH_ENDPOINTS", 10);
    let runs = env("K3RS_BENCH_RUNS", 5);
    let (svcs, slices) = objects(services, per);
    let mut cfg = ProxyConfig::k3s_defaults("n0", vec!["192.168.77.1".parse().unwrap()]);
    cfg.nft = PathBuf::from(NFT);
    println!(
        "proxy rule sync: {services} Services x {per} endpoints ({} endpoints), median of {runs} runs, {} build",
        services * per,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    let mut rs = ruleset(&svcs, &slices, &cfg);
    let gen_time = time(
        runs,
        || {},
        || {
            rs = ruleset(&svcs, &slices, &cfg);
            Ok(())
        },
    )
    .unwrap();
    let script = agent::proxy::rules::render(&rs, None, &Default::default());
    println!(
        "  k3rs ruleset from the API objects (Rust):     {}  ({} chains, {} lines, {} KiB of nft text)",
        ms(gen_time),
        rs.chains.len(),
        script.lines().count(),
        script.len() / 1024
    );

    let nft = PathBuf::from(NFT);
    let first = time(
        runs,
        || {
            let _ = delete_table(&nft);
        },
        || run_script(&nft, &script).map_err(|e| e.0),
    )
    .unwrap();
    println!(
        "  nft -f, first sync (empty table):              {}",
        ms(first)
    );
    let mut syncer = Syncer::new(nft.clone());
    syncer.sync(&rs).unwrap();
    let resync = time(runs, || {}, || syncer.sync(&rs).map_err(|e| e.0)).unwrap();
    println!(
        "  nft -f, full resync (table in place):          {}",
        ms(resync)
    );
    // One endpoint of one Service changes: kube-proxy's nftables mode
    // (and k3rs) still rewrite every chain and map in one transaction.
    let mut changed = slices.clone();
    changed[0]["endpoints"][0]["addresses"][0] = json!("10.42.200.2");
    let rs2 = ruleset(&svcs, &changed, &cfg);
    let mut flip = false;
    let one = time(
        runs,
        || {},
        || {
            flip = !flip;
            syncer.sync(if flip { &rs2 } else { &rs }).map_err(|e| e.0)
        },
    )
    .unwrap();
    println!(
        "  nft -f, full resync after one endpoint changed: {}",
        ms(one)
    );
    let partial = time(
        runs,
        || {},
        || {
            flip = !flip;
            syncer
                .sync_with(if flip { &rs2 } else { &rs }, false)
                .map_err(|e| e.0)
        },
    )
    .unwrap();
    println!(
        "  nft -f, partial sync after one endpoint changed: {}",
        ms(partial)
    );
    let _ = delete_table(&nft);

    let ipt = iptables_script(services, per);
    for bin in ["iptables", "iptables-legacy"] {
        let restore_bin = format!("{bin}-restore");
        let first = time(runs, || flush_iptables(bin), || restore(&restore_bin, &ipt));
        let again = time(runs, || {}, || restore(&restore_bin, &ipt));
        match (first, again) {
            (Ok(first), Ok(again)) => {
                println!(
                    "  {restore_bin:<24} first load:           {}  ({} lines)",
                    ms(first),
                    ipt.lines().count()
                );
                println!("  {restore_bin:<24} full resync:          {}", ms(again));
            }
            (Err(e), _) | (_, Err(e)) => println!("  {restore_bin}: not measured: {e}"),
        }
        flush_iptables(bin);
    }
}
