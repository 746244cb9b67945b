//! `imgbuild enroll`: show and change who may fetch an enrollment bundle.
//!
//! Works on `state/enrollment.json` under its lock; a running server reads the file on every request, so the
//! change applies at once (no signal needed). `--reset`, `--open` and `--close` combine in one call.

use std::process::ExitCode;
use std::time::Duration;

use super::global::Global;
use crate::pki::enroll::Store;
use crate::status::now_ms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Open enrollment for this long (e.g. 30m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub open: Option<Duration>,
    /// Close enrollment now (also the window that opens at server start).
    #[arg(long, conflicts_with = "open")]
    pub close: bool,
    /// Re-arm a node (by hostname or MAC) so it may fetch its bundle once more. Repeatable.
    #[arg(long, value_name = "HOST")]
    pub reset: Vec<String>,
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let store = Store::for_cluster(&cluster);
    let mut l = store.lock()?;
    let mut changed = false;
    for h in &args.reset {
        let m = cluster
            .machine_by_hostname(h)
            .or_else(|| h.parse().ok().and_then(|mac| cluster.machine_by_mac(mac)))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{h:?} is neither a hostname nor a MAC in the inventory of {}",
                    cluster.path.display()
                )
            })?;
        if l.state.enrolled.remove(&m.mac).is_some() {
            println!(
                "{} ({}) re-armed: it may fetch its bundle once more",
                m.hostname, m.mac
            );
        } else {
            println!(
                "{} ({}) was not enrolled; nothing to re-arm",
                m.hostname, m.mac
            );
        }
        changed = true;
    }
    let now = now_ms();
    if let Some(d) = args.open {
        let until = now + d.as_millis() as u64;
        l.state.open_until_ms = Some(until);
        println!("enrollment open until {}", when(until));
        changed = true;
    }
    if args.close {
        l.state.open_until_ms = None;
        l.state.closed_at_ms = now;
        println!("enrollment closed");
        changed = true;
    }
    if changed {
        l.save()?;
    }
    let st = &l.state;
    match st.open_until_ms {
        Some(u) if u > now => println!("window: open until {}", when(u)),
        _ if st.all_enrolled(&cluster) => {
            println!("window: closed (every node has enrolled); `--open 30m` opens it")
        }
        _ if st.closed_at_ms > 0 => println!(
            "window: closed at {} (a server started later opens it until every node has enrolled)",
            when(st.closed_at_ms)
        ),
        _ => println!("window: open from server start until every node has enrolled"),
    }
    for m in &cluster.machines {
        match st.enrolled.get(&m.mac) {
            Some(e) => println!(
                "  {:<12} {:<8} {}  enrolled {} from {}",
                m.hostname,
                m.role,
                m.mac,
                when(e.at_ms),
                e.ip
            ),
            None => println!("  {:<12} {:<8} {}  not enrolled", m.hostname, m.role, m.mac),
        }
    }
    Ok(ExitCode::SUCCESS)
}
