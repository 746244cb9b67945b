//! `imgbuild status [--json] [--watch] [--server URL]`: every node's boot stage, from a running server's
//! `/api/status` (the server address comes from cluster.toml unless `--server` is given).

use std::process::ExitCode;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use super::global::Global;
use crate::netboot::http::replicas::{Replicas, StageBy};
use crate::status::{Report, client, report};

#[derive(Debug, clap::Args)]
/// Options of `imgbuild status`.
pub struct Args {
    /// A server's base URL, e.g. http://10.77.0.1:8080 (default: `[network] server` and `http_port`). Give it
    /// once per replica to see every replica (an unreachable one is named; the others still answer).
    #[arg(long, value_name = "URL")]
    pub server: Vec<String>,
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

/// `GET /api/replicas` of `base`: its answer, or why there is none.
async fn replicas_of(base: &str) -> Result<Replicas, String> {
    let url = format!("{}/api/replicas", base.trim_end_matches('/'));
    let body = client::get(&url).await.map_err(|e| format!("{e:#}"))?;
    serde_json::from_str::<Replicas>(&body)
        .map_err(|e| format!("{url}: not a replicas answer ({e})"))
}

/// The replicas part of the table: every replica any server listed (and which servers answered), and per node
/// the replica that served each stage, merged from every answer (with etcd they share one history; with several
/// `dir` servers each answers for itself). Empty for one `dir` server (a single server, as before replicas).
pub fn render_replicas(answers: &[(String, Result<Replicas, String>)]) -> String {
    let ok: Vec<&Replicas> = answers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    if answers.len() == 1 && ok.iter().all(|r| r.backend == "dir") {
        return String::new();
    }
    let mut ids: Vec<String> = Vec::new();
    let mut answered: Vec<&str> = Vec::new();
    for r in &ok {
        answered.push(&r.this);
        for x in r.replicas.iter().map(|x| &x.id).chain([&r.this]) {
            if !ids.contains(x) {
                ids.push(x.clone());
            }
        }
    }
    let shown: Vec<String> = ids
        .iter()
        .map(|id| {
            if answered.contains(&id.as_str()) {
                format!("{id} (answered)")
            } else {
                id.clone()
            }
        })
        .collect();
    let backends: BTreeSet<&str> = ok.iter().map(|r| r.backend.as_str()).collect();
    let backends: Vec<&str> = backends.into_iter().collect();
    let mut out = format!("replicas ({}): {}\n", backends.join(", "), shown.join(", "));
    for (url, r) in answers {
        if let Err(e) = r {
            out.push_str(&format!("  {url}: unreachable ({e})\n"));
        }
    }
    let mut served: BTreeMap<&str, Vec<&StageBy>> = BTreeMap::new();
    for r in &ok {
        for (mac, stages) in &r.served {
            let v = served.entry(mac).or_default();
            for s in stages {
                if !v.contains(&s) {
                    v.push(s);
                }
            }
        }
    }
    for (mac, mut stages) in served {
        stages.sort_by_key(|s| s.at_ms);
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
    let bases = if args.server.is_empty() {
        vec![
            cli.load_cluster()
                .context("no --server given, and the server address is read from cluster.toml")?
                .network
                .http_base(),
        ]
    } else {
        args.server.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        loop {
            // The report of the first server that answers (replicas on etcd share it); the error of the first
            // when none does.
            let mut first_err = None;
            let mut report = None;
            for base in &bases {
                match fetch(base).await {
                    Ok(r) => {
                        report = Some(r);
                        break;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let r = match (report, first_err) {
                (Some(r), _) => r,
                (None, Some(e)) => return Err(e),
                (None, None) => unreachable!("at least one server"),
            };
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
                let mut answers = Vec::new();
                for base in &bases {
                    answers.push((base.clone(), replicas_of(base).await));
                }
                print!("{}", render_replicas(&answers));
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
