//! Watching a running lab: the server's `/api/status` polled until every node is done, one failed, a VM stopped,
//! the time ran out or the user interrupted; what failed (with console and server log tails); the summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::interrupt::interrupted;
use super::state::Lab;
use crate::status::report::{self, NodeView, Report};
use crate::vm::qemu;

impl Lab {
    /// or `limit` passes. `min_boot`: a node counts only once its boot number reached it (reboot scenarios).
    pub fn wait(
        &mut self,
        hosts: &[String],
        min_boot: u32,
        limit: Duration,
        done: impl Fn(&NodeView) -> bool,
    ) -> Result<Report, Box<LabFailure>> {
        let start = Instant::now();
        let tty = std::io::stdout().is_terminal();
        let mut last_states: std::collections::BTreeMap<String, String> = Default::default();
        let mut last: Option<Report> = None;
        loop {
            let report = match self.status() {
                Ok(r) => r,
                Err(e) => {
                    if start.elapsed() > limit {
                        return Err(self.failure(
                            None,
                            &format!("server unreachable: {e:#}"),
                            last,
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            let view = |h: &str| report.nodes.iter().find(|n| n.name == h).cloned();
            if self.opts.verbose {
                if tty {
                    print!("\x1b[2J\x1b[H{}", report::table(&report));
                    println!(
                        "elapsed {:.0}s (limit {:.0}s)",
                        start.elapsed().as_secs_f64(),
                        limit.as_secs_f64()
                    );
                } else {
                    for h in hosts {
                        if let Some(n) = view(h) {
                            let s = format!("boot {} {}", n.boot, n.state);
                            if last_states.get(h) != Some(&s) {
                                println!("{:7.1}s {h:<10} {s}", start.elapsed().as_secs_f64());
                                last_states.insert(h.clone(), s);
                            }
                        }
                    }
                }
            }
            let mut all = true;
            for h in hosts {
                let Some(n) = view(h) else {
                    all = false;
                    continue;
                };
                if n.boot >= min_boot {
                    if let Some(reason) = &n.failed {
                        return Err(self.failure(
                            Some(&n),
                            &format!("failed: {reason}"),
                            Some(report),
                        ));
                    }
                    if done(&n) {
                        continue;
                    }
                }
                all = false;
                if !self.vm_running(h) {
                    let n = n.clone();
                    return Err(self.failure(
                        Some(&n),
                        "its VM stopped (rebooted, powered off or crashed) before the last stage",
                        Some(report),
                    ));
                }
            }
            if all {
                return Ok(report);
            }
            if interrupted() {
                return Err(self.failure(
                    None,
                    "interrupted (Ctrl-C / SIGTERM); tearing down",
                    Some(report),
                ));
            }
            if start.elapsed() > limit {
                let stuck = hosts
                    .iter()
                    .filter_map(|h| view(h))
                    .find(|n| !(n.boot >= min_boot && done(n)));
                return Err(self.failure(
                    stuck.as_ref(),
                    &format!("timed out after {:.0} s", limit.as_secs_f64()),
                    Some(report),
                ));
            }
            last = Some(report);
            std::thread::sleep(Duration::from_millis(1000));
        }
    }

    pub(super) fn failure(
        &self,
        node: Option<&NodeView>,
        why: &str,
        report: Option<Report>,
    ) -> Box<LabFailure> {
        let (name, stage, console) = match node {
            Some(n) => (
                n.name.clone(),
                n.stage.clone().unwrap_or_else(|| "-".into()),
                qemu::console_tail(&self.console(&n.name), 25),
            ),
            None => ("-".into(), "-".into(), String::new()),
        };
        Box::new(LabFailure {
            node: name,
            last_stage: stage,
            reason: why.to_string(),
            console,
            server_log: qemu::console_tail(&self.opts.dir.join("server.log"), 15),
            report: report.map(Box::new),
        })
    }
}

/// Why a lab run failed: the node, its last stage, and the end of its console.
#[derive(Debug)]
pub struct LabFailure {
    /// The node that failed (`-` when none did, e.g. the server was unreachable).
    pub node: String,
    /// Its last stage (`-` when unknown).
    pub last_stage: String,
    /// What went wrong.
    pub reason: String,
    /// The last lines of its console.
    pub console: String,
    /// The last lines of the server's log.
    pub server_log: String,
    /// The last status report, when there was one.
    pub report: Option<Box<Report>>,
}

impl std::fmt::Display for LabFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "node {} {} (last stage: {})",
            self.node, self.reason, self.last_stage
        )?;
        if !self.console.is_empty() {
            writeln!(
                f,
                "--- last lines of {}'s console ---\n{}",
                self.node, self.console
            )?;
        }
        if !self.server_log.is_empty() {
            writeln!(
                f,
                "--- last lines of the server log ---\n{}",
                self.server_log
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LabFailure {}

/// The summary printed at the end: the table, per-stage durations, and the stand-in warning.
pub fn summary(report: &Report, standins: bool) -> String {
    let mut s = String::new();
    s.push_str(&report::table(report));
    s.push_str("\nper-stage durations (seconds since the previous stage):\n");
    s.push_str(&report::durations(report));
    if standins {
        s.push_str(
            "\nNOTE: these images were built with labelled STAND-IN binaries (kubeadm, kubelet, containerd, ...).\n\
             Every boot stage above really ran, but the cluster did NOT really form: no Kubernetes is running.\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_says_plainly_when_standins_were_used() {
        let r = Report {
            cluster: "c".into(),
            generated_ms: 0,
            stages: vec![],
            nodes: vec![],
        };
        assert!(summary(&r, true).contains("the cluster did NOT really form"));
        assert!(!summary(&r, false).contains("NOT really form"));
    }
}
