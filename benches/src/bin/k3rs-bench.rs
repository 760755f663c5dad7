//! `k3rs-bench`: an etcd v3 load generator shaped like etcd's benchmark tool.
//!
//!     k3rs-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 \
//!         put --key-size 256 --val-size 1024 --total 100000 --key-space-size 100000

use std::process::ExitCode;

use clap::Parser;
use k3rs_benches::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("k3rs-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(k3rs_benches::run(&cli)) {
        Ok(result) => {
            if cli.global.json {
                match serde_json::to_string_pretty(&result) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("k3rs-bench: cannot encode the result: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", result.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if cli.global.json {
                let unsupported = k3rs_benches::runner::is_unsupported(&e);
                println!(
                    "{}",
                    serde_json::json!({"workload": cli.command.name(), "error": format!("{e:#}"), "unsupported": unsupported})
                );
            }
            eprintln!("k3rs-bench {}: {e:#}", cli.command.name());
            ExitCode::FAILURE
        }
    }
}
