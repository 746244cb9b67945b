//! `imgbuild status [--json] [--watch] [--server URL]`: every node's boot stage, from a running server's
//! `/api/status` (the server address comes from cluster.toml unless `--server` is given).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::global::Global;
use crate::status::{Report, client, report};

#[derive(Debug, clap::Args)]
/// Options of `imgbuild status`.
pub struct Args {
    /// The server's base URL, e.g. http://10.77.0.1:8080 (default: `[network] server` and `http_port`).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted (with --json: one JSON document per line).
    #[arg(long)]
    pub watch: bool,
}

/// Fetches the report of the server at `base`.
pub async fn fetch(base: &str) -> anyhow::Result<Report> {
    let url = format!("{}/api/status", base.trim_end_matches('/'));
    let body = client::get(&url).await?;
    serde_json::from_str(&body).with_context(|| format!("{url} did not return a status report"))
}

/// With replicas on a shared state (`[state] backend = "etcd"`): every live replica, and per node the replica
/// that served its latest stage. Empty for a single server (or a server too old to answer `/api/replicas`).
async fn replicas(base: &str) -> String {
    let url = format!("{}/api/replicas", base.trim_end_matches('/'));
    let Ok(body) = client::get(&url).await else {
        return String::new();
    };
    let Ok(r) = serde_json::from_str::<crate::netboot::http::replicas::Replicas>(&body) else {
        return String::new();
    };
    if r.backend == "dir" {
        return String::new();
    }
    let ids: Vec<String> = r
        .replicas
        .iter()
        .map(|x| {
            if x.id == r.this {
                format!("{} (answered)", x.id)
            } else {
                x.id.clone()
            }
        })
        .collect();
    let mut out = format!("replicas ({}): {}\n", r.backend, ids.join(", "));
    for (mac, stages) in &r.served {
        if let Some(last) = stages.last() {
            let by: Vec<String> = stages
                .iter()
                .map(|s| format!("{}@{}", s.stage, s.replica))
                .collect();
            out.push_str(&format!(
                "  {mac}  last {} via {}  ({})\n",
                last.stage,
                last.replica,
                by.join(" ")
            ));
        }
    }
    out
}

/// Runs `imgbuild status`: prints the report as a table or JSON, once or every second with `--watch` until Ctrl-C.
pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let base = match &args.server {
        Some(s) => s.clone(),
        None => cli
            .load_cluster()
            .context("no --server given, and the server address is read from cluster.toml")?
            .network
            .http_base(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        loop {
            let r = fetch(&base).await?;
            if args.json {
                if args.watch {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                }
            } else {
                if args.watch {
                    // Clear the screen and go home, like watch(1).
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", report::table(&r));
                print!("{}", replicas(&base).await);
            }
            if !args.watch {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}
