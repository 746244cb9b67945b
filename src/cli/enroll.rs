//! `imgbuild enroll`: show and change who may fetch an enrollment bundle.
//!
//! Works on the enrollment state (`state/enrollment.json` under its lock, or etcd with `[state] backend = "etcd"`);
//! a running server reads it on every request, so the change applies at once on every replica (no signal needed). Subcommands: `open [30m]`, `close`, `approve <host>...`,
//! `reset <host>...`; the older flags `--reset`, `--open` and `--close` still work and combine in one call.

use std::process::ExitCode;
use std::time::Duration;

use super::global::Global;
use crate::pki::state_store::{self, documents};
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
    let state = state_store::open(&cluster, &state_store::replica_id())?;
    let (mut reset, mut open, mut close, mut approve) =
        (args.reset.clone(), args.open, args.close, Vec::new());
    match &args.command {
        Some(Sub::Open { duration }) => open = Some(*duration),
        Some(Sub::Close) => close = true,
        Some(Sub::Approve { hosts }) => approve = hosts.clone(),
        Some(Sub::Reset { hosts }) => reset = hosts.clone(),
        None => {}
    }
    let approve = approve
        .iter()
        .map(|h| machine(&cluster, h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reset = reset
        .iter()
        .map(|h| machine(&cluster, h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !approve.is_empty() && !cluster.enrollment.approve {
        println!(
            "note: [enrollment] approve is off in {}: nodes enroll without approval",
            cluster.path.display()
        );
    }
    let now = now_ms();
    // With etcd the change is a transaction that may be retried: what to say is collected, then printed once.
    let (said, st) = documents::update_enrollment(&*state, |l| {
        let mut said = Vec::new();
        let mut changed = false;
        for m in &approve {
            l.approved.insert(m.mac);
            // A TPM machine: bind the EK it presented (docs/attestation.md).
            if let Some(p) = l.tpm_pending.remove(&m.mac) {
                said.push(format!(
                    "{} ({}): TPM EK sha256:{} bound (first seen from {} at {}); pin it in cluster.toml with \
                     ek_sha256 = \"{}\"",
                    m.hostname,
                    m.mac,
                    p.ek_sha256,
                    p.ip,
                    when(p.at_ms),
                    p.ek_sha256
                ));
                l.tpm_ek.insert(m.mac, p.ek_sha256);
            }
            let seen = l.pending.remove(&m.mac);
            said.push(format!(
                "{} ({}) approved: it may fetch its bundle once{}",
                m.hostname,
                m.mac,
                seen.map(|c| format!(" (it asked from {} at {})", c.ip, when(c.at_ms)))
                    .unwrap_or_default()
            ));
            changed = true;
        }
        for m in &reset {
            l.refused.remove(&m.mac);
            // A TPM machine: forget its approved and pending EKs (a replaced TPM is then approved anew; a pinned
            // `ek_sha256` stays in cluster.toml).
            l.tpm_pending.remove(&m.mac);
            if let Some(ek) = l.tpm_ek.remove(&m.mac) {
                said.push(format!(
                    "{} ({}): approved TPM EK sha256:{ek} forgotten; the next EK it presents waits for approval",
                    m.hostname, m.mac
                ));
            }
            if l.enrolled.remove(&m.mac).is_some() {
                said.push(format!(
                    "{} ({}) re-armed: it may fetch its bundle once more",
                    m.hostname, m.mac
                ));
            } else {
                said.push(format!(
                    "{} ({}) was not enrolled; nothing to re-arm",
                    m.hostname, m.mac
                ));
            }
            changed = true;
        }
        if let Some(d) = open {
            let until = now + d.as_millis() as u64;
            l.open_until_ms = Some(until);
            said.push(format!("enrollment open until {}", when(until)));
            changed = true;
        }
        if close {
            l.open_until_ms = None;
            l.closed_at_ms = now;
            l.auto_closed = true;
            said.push("enrollment closed".to_string());
            changed = true;
        }
        ((said, l.clone()), changed)
    })?;
    for line in said {
        println!("{line}");
    }
    let st = &st;
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
