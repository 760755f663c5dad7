//! `conformance`: runs the cases against etcd, k3rs or any endpoint and
//! prints each case's result, the report of each failure, and a closing
//! `N passed, N failed` line. Exits non-zero on any failure.

use std::process::ExitCode;

use clap::Parser;
use conformance::run::{Outcome, run_case};
use conformance::{EndpointTarget, Target, TargetKind, target};

#[derive(Parser, Debug)]
#[command(about = "etcd v3 conformance cases against real etcd, k3rs or any endpoint")]
struct Args {
    /// An etcd v3 endpoint to test (http://host:port); repeatable. Cases
    /// needing an empty store are skipped on endpoints.
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
    /// Start a server to test: etcd (/usr/bin/etcd) or k3rs (in-process);
    /// repeatable. Default, without --endpoint: both.
    #[arg(long = "target", value_name = "etcd|k3rs|k3rs-postgres|k3rs-mysql", value_parser = ["etcd", "k3rs", "k3rs-postgres", "k3rs-mysql"])]
    targets: Vec<String>,
    /// Run only these groups; repeatable. Default: all.
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// Run only cases whose `group::name` contains this text.
    #[arg(long = "case", value_name = "TEXT")]
    case: Option<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// Start the --target servers, print their endpoints and keep them up
    /// until interrupted, for poking at them with etcdctl.
    #[arg(long)]
    serve: bool,
    /// Run the etcdctl differential instead of the cases: one etcdctl
    /// script against a fresh etcd and a fresh k3rs, outputs compared.
    #[arg(long)]
    diff: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let known = conformance::groups();
    for g in &args.groups {
        if !known.contains(&g.as_str()) {
            eprintln!("unknown group {g:?}; groups: {}", known.join(", "));
            return ExitCode::from(2);
        }
    }
    let cases: Vec<_> = conformance::all()
        .into_iter()
        .filter(|c| args.groups.is_empty() || args.groups.iter().any(|g| g == c.group))
        .filter(|c| {
            args.case
                .as_ref()
                .is_none_or(|t| c.id().contains(t.as_str()))
        })
        .collect();
    if args.list {
        for c in &cases {
            let mut flags = Vec::new();
            if c.flags.fresh {
                flags.push("fresh");
            }
            if c.flags.k3rs_only {
                flags.push("k3rs-only");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(", "))
            };
            println!("{}{flags}", c.id());
        }
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.serve {
        return rt.block_on(serve(&args.targets));
    }
    if args.diff {
        return rt.block_on(diff());
    }
    let (passed, failed) = rt.block_on(async {
        let mut specs: Vec<(TargetKind, Option<String>)> = Vec::new();
        for t in &args.targets {
            specs.push((TargetKind::parse(t).unwrap_or(TargetKind::K3rs), None));
        }
        for e in &args.endpoints {
            specs.push((TargetKind::Endpoint, Some(e.clone())));
        }
        if specs.is_empty() {
            specs = vec![(TargetKind::Etcd, None), (TargetKind::K3rs, None)];
        }
        let (mut passed, mut failed) = (0usize, 0usize);
        for (kind, url) in specs {
            let started: Result<Box<dyn Target>, String> = match &url {
                Some(u) => EndpointTarget::connect(u)
                    .await
                    .map(|t| Box::new(t) as Box<dyn Target>),
                None => target::start(kind).await,
            };
            let label = url.clone().unwrap_or_else(|| kind.to_string());
            let t = match started {
                Ok(t) => t,
                Err(e) => {
                    println!("FAIL {label}: could not start or reach it: {e}");
                    failed += cases.len();
                    continue;
                }
            };
            println!("== {label} at {}", t.endpoint());
            let mut skipped = 0usize;
            for c in &cases {
                match run_case(c, t.as_ref()).await {
                    Outcome::Pass => {
                        passed += 1;
                        println!("pass {} [{label}]", c.id());
                    }
                    Outcome::Skip(why) => {
                        skipped += 1;
                        println!("skip {} [{label}]: {why}", c.id());
                    }
                    Outcome::Fail(f) => {
                        failed += 1;
                        println!("FAIL {} [{label}]\n{f}", c.id());
                    }
                }
            }
            if skipped > 0 {
                println!("({skipped} skipped on {label})");
            }
        }
        (passed, failed)
    });
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn serve(kinds: &[String]) -> ExitCode {
    let mut up = Vec::new();
    for k in kinds {
        let kind = TargetKind::parse(k).unwrap_or(TargetKind::K3rs);
        match target::start(kind).await {
            Ok(t) => {
                println!("{kind} at {}", t.endpoint());
                up.push(t);
            }
            Err(e) => {
                eprintln!("could not start {kind}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    drop(up);
    ExitCode::SUCCESS
}

async fn diff() -> ExitCode {
    let (etcd, k3rs) = match (
        target::start(TargetKind::Etcd).await,
        target::start(TargetKind::K3rs).await,
    ) {
        (Ok(e), Ok(k)) => (e, k),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("could not start a server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bare = |t: &dyn Target| t.endpoint().trim_start_matches("http://").to_string();
    match conformance::diff::etcdctl_differential(&bare(etcd.as_ref()), &bare(k3rs.as_ref())).await
    {
        Err(e) => {
            eprintln!("etcdctl: {e}");
            ExitCode::FAILURE
        }
        Ok((steps, mismatches)) => {
            for m in &mismatches {
                println!(
                    "FAIL {}\n--- etcd\n{}--- k3rs\n{}",
                    m.command, m.expected, m.observed
                );
            }
            println!(
                "{} passed, {} failed",
                steps - mismatches.len(),
                mismatches.len()
            );
            if mismatches.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
