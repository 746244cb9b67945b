//! `imgbuild enroll`: show and change who may fetch an enrollment bundle.
//!
//! Works on `state/enrollment.json` under its lock; a running server reads the file on every request, so the
//! change applies at once (no signal needed). Subcommands: `open [30m]`, `close`, `approve <host>...`,
//! `reset <host>...`; the older flags `--reset`, `--open` and `--close` still work and combine in one call.

use std::process::ExitCode;
use std::time::Duration;

use super::global::Global;
use crate::pki::enroll::Store;
use crate::status::now_ms;

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Open enrollment for a while (default 30m). A server restart never re-opens it by itself.
    Open {
        /// How long, e.g. 30m, 2h.
        #[arg(value_parser = humantime::parse_duration, default_value = "30m")]
        duration: Duration,
    },
    /// Close enrollment now (also the start-up window, for good).
    Close,
    /// Approval mode (`[enrollment] approve = true`): let these nodes (hostname or MAC) fetch their bundle.
    Approve {
        /// Hostnames or MACs.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Re-arm nodes (hostname or MAC) so they may fetch their bundle once more (also forgets a refused
    /// claimant and an approved TPM EK).
    Reset {
        /// Hostnames or MACs.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,
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

fn machine<'c>(
    cluster: &'c crate::config::Cluster,
    h: &str,
) -> anyhow::Result<&'c crate::config::Machine> {
    cluster
        .machine_by_hostname(h)
        .or_else(|| h.parse().ok().and_then(|mac| cluster.machine_by_mac(mac)))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{h:?} is neither a hostname nor a MAC in the inventory of {}",
                cluster.path.display()
            )
        })
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let store = Store::for_cluster(&cluster);
    let mut l = store.lock()?;
    let mut changed = false;
    let (mut reset, mut open, mut close, mut approve) =
        (args.reset.clone(), args.open, args.close, Vec::new());
    match &args.command {
        Some(Sub::Open { duration }) => open = Some(*duration),
        Some(Sub::Close) => close = true,
        Some(Sub::Approve { hosts }) => approve = hosts.clone(),
        Some(Sub::Reset { hosts }) => reset = hosts.clone(),
        None => {}
    }
    for h in &approve {
        let m = machine(&cluster, h)?;
        if !cluster.enrollment.approve {
            println!(
                "note: [enrollment] approve is off in {}: nodes enroll without approval",
                cluster.path.display()
            );
        }
        l.state.approved.insert(m.mac);
        // A TPM machine: bind the EK it presented (docs/attestation.md).
        if let Some(p) = l.state.tpm_pending.remove(&m.mac) {
            println!(
                "{} ({}): TPM EK sha256:{} bound (first seen from {} at {}); pin it in cluster.toml with \
                 ek_sha256 = \"{}\"",
                m.hostname,
                m.mac,
                p.ek_sha256,
                p.ip,
                when(p.at_ms),
                p.ek_sha256
            );
            l.state.tpm_ek.insert(m.mac, p.ek_sha256);
        }
        let seen = l.state.pending.remove(&m.mac);
        println!(
            "{} ({}) approved: it may fetch its bundle once{}",
            m.hostname,
            m.mac,
            seen.map(|c| format!(" (it asked from {} at {})", c.ip, when(c.at_ms)))
                .unwrap_or_default()
        );
        changed = true;
    }
    for h in &reset {
        let m = machine(&cluster, h)?;
        l.state.refused.remove(&m.mac);
        // A TPM machine: forget its approved and pending EKs (a replaced TPM is then approved anew; a pinned
        // `ek_sha256` stays in cluster.toml).
        l.state.tpm_pending.remove(&m.mac);
        if let Some(ek) = l.state.tpm_ek.remove(&m.mac) {
            println!(
                "{} ({}): approved TPM EK sha256:{ek} forgotten; the next EK it presents waits for approval",
                m.hostname, m.mac
            );
        }
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
    if let Some(d) = open {
        let until = now + d.as_millis() as u64;
        l.state.open_until_ms = Some(until);
        println!("enrollment open until {}", when(until));
        changed = true;
    }
    if close {
        l.state.open_until_ms = None;
        l.state.closed_at_ms = now;
        l.state.auto_closed = true;
        println!("enrollment closed");
        changed = true;
    }
    if changed {
        l.save()?;
    }
    let st = &l.state;
    match st.open_until_ms {
        Some(u) if u > now => println!("window: open until {}", when(u)),
        _ if st.is_open(&cluster, now) => {
            println!("window: open until every node has enrolled once")
        }
        _ => println!(
            "window: closed (a restart does not re-open it); `imgbuild enroll open 30m` opens it"
        ),
    }
    if cluster.enrollment.approve {
        println!("approval mode: first contacts wait for `imgbuild enroll approve <host>`");
    }
    for m in &cluster.machines {
        let mut line = match st.enrolled.get(&m.mac) {
            Some(e) => format!(
                "  {:<12} {:<8} {}  enrolled {} from {}",
                m.hostname,
                m.role,
                m.mac,
                when(e.at_ms),
                e.ip
            ),
            None if st.tpm_pending.contains_key(&m.mac) => format!(
                "  {:<12} {:<8} {}  PENDING approval of TPM EK sha256:{}",
                m.hostname, m.role, m.mac, st.tpm_pending[&m.mac].ek_sha256
            ),
            None => match st.pending.get(&m.mac) {
                Some(c) => format!(
                    "  {:<12} {:<8} {}  PENDING approval (asked from {} at {})",
                    m.hostname,
                    m.role,
                    m.mac,
                    c.ip,
                    when(c.at_ms)
                ),
                None if st.approved.contains(&m.mac) => {
                    format!("  {:<12} {:<8} {}  approved", m.hostname, m.role, m.mac)
                }
                None => format!("  {:<12} {:<8} {}  not enrolled", m.hostname, m.role, m.mac),
            },
        };
        if let Some(c) = st.refused.get(&m.mac) {
            line.push_str(&format!(
                "; possible spoofer refused from {} at {}",
                c.ip,
                when(c.at_ms)
            ));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
