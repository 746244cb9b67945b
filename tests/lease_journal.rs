//! The DHCP lease journal killed with SIGKILL at every step of its background compaction: a real process (this
//! test binary, re-run as `lease_journal_writer`) commits lease renewals and reports each committed batch on
//! its stdout the moment `commit` returns, the way the server sends an ACK; the test kills it right after a
//! compaction started (its temp file half written), right after one finished, and at arbitrary points, restarts
//! it on the same file, and checks that every reported renewal is still there. See docs/dhcp.md, "Leases".

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use imgbuild::config::MacAddr;
use imgbuild::netboot::dhcp::journal::{Compaction, Journal};
use imgbuild::netboot::dhcp::leases::{Change, Lease, LeaseTable};

/// Distinct leases renewed over and over: the journal compacts every max(10 000, 4 × 5 000) lines.
const LEASES: u64 = 5_000;
/// Renewals per commit (one fsync each).
const BATCH: u64 = 100;
/// The writer stops by itself after this many renewals (bounds a run whose parent is gone).
const WRITER_MAX: u64 = 5_000_000;

fn mac(k: u64) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, (k >> 8) as u8, k as u8])
}

/// Renewal `i`: lease `i % LEASES`, expiring at `10^9 + i` (so a later renewal of a lease expires later).
fn renewal(i: u64) -> Change {
    let k = i % LEASES;
    Change::Grant(Lease {
        mac: mac(k),
        ip: Ipv4Addr::new(10, 9, (k >> 8) as u8, k as u8),
        expires: 1_000_000_000 + i,
    })
}

/// The writer: not a test of its own (it waits for its parent's environment); run by the tests below.
#[test]
#[ignore = "the child process of the kill -9 test below, started by it"]
fn lease_journal_writer() {
    let (Ok(path), Ok(from)) = (
        std::env::var("LEASE_JOURNAL_PATH"),
        std::env::var("LEASE_JOURNAL_FROM"),
    ) else {
        panic!("run by killed_at_every_step_of_a_compaction_loses_no_acknowledged_lease only");
    };
    let from: u64 = from.parse().unwrap();
    let (mut j, mut t) = Journal::open(Path::new(&path), 0).unwrap();
    println!("opened {}", t.live(0));
    let mut i = from;
    while i < from + WRITER_MAX {
        for n in i..i + BATCH {
            let c = renewal(n);
            j.append(&c.record(0).expect("a grant is journaled"));
            t.apply(&c);
        }
        j.commit().unwrap();
        i += BATCH;
        // The "ACK": everything below `i` is committed.
        println!("acked {i}");
        match j.maybe_compact(&t, 0).unwrap() {
            Compaction::Idle => {}
            Compaction::Started => println!("started"),
            Compaction::Finished => println!("finished"),
        }
    }
}

struct Writer {
    child: Child,
    lines: Receiver<String>,
}

impl Writer {
    fn start(path: &Path, from: u64) -> Writer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lease_journal_writer",
                "--ignored",
                "--nocapture",
            ])
            .env("LEASE_JOURNAL_PATH", path)
            .env("LEASE_JOURNAL_FROM", from.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Writer { child, lines }
    }

    /// Reads lines until `stop` says so, tracking the highest acknowledged renewal; panics after 120 s.
    fn until(&mut self, acked: &mut u64, mut stop: impl FnMut(&str, u64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the writer said nothing useful for 120 s")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the writer ended: {:?}", self.child.wait())
                }
            };
            if let Some(n) = line.strip_prefix("acked ") {
                *acked = n.parse().unwrap();
            }
            if stop(&line, *acked) {
                return;
            }
        }
    }

    fn kill(mut self) {
        // SAFETY: kill(2) on the PID of the child this test spawned and has not reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) },
            0
        );
        self.child.wait().unwrap();
    }
}

/// Every lease's acknowledged renewal (the highest `i` below `acked` for it) is in `table`, or a later one.
fn check(table: &LeaseTable, acked: u64, round: &str) {
    let mut want: HashMap<u64, u64> = HashMap::new();
    for i in acked.saturating_sub(LEASES)..acked {
        want.insert(i % LEASES, 1_000_000_000 + i);
    }
    for (k, expires) in want {
        let got = table.lease(mac(k)).map(|l| l.expires);
        assert!(
            got.is_some_and(|g| g >= expires),
            "{round}: lease {k} acknowledged until {expires}, reloaded as {got:?}"
        );
    }
}

#[test]
fn killed_at_every_step_of_a_compaction_loses_no_acknowledged_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dhcp-leases.jsonl");
    let tmp = dir.path().join("dhcp-leases.jsonl.tmp");
    let mut acked = 0u64;
    let mut mid_compaction = 0;
    // (what the round waits for before the kill, how many renewals after it)
    let rounds: [(&str, u64); 9] = [
        ("started", 0),
        ("finished", 0),
        ("started", 0),
        ("started", 300),
        ("finished", 0),
        ("started", 0),
        ("acked", 7_300),
        ("started", 0),
        ("finished", 200),
    ];
    for (n, (event, after)) in rounds.into_iter().enumerate() {
        let round = format!("round {n} (kill at {event} + {after})");
        let mut w = Writer::start(&path, acked);
        let mut seen = event == "acked";
        let mut at = acked;
        w.until(&mut acked, |line, acked| {
            if !seen && line == event {
                seen = true;
                at = acked;
            }
            seen && acked >= at + after
        });
        w.kill();
        if tmp.exists() {
            mid_compaction += 1;
        }
        // What the next start would load, on a copy (the next round then starts on the very file).
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&path, copy.path().join("j")).unwrap();
        let (_, table) = Journal::open(&copy.path().join("j"), 0).unwrap();
        check(&table, acked, &round);
    }
    assert!(
        mid_compaction >= 1,
        "no kill landed while a compaction's temp file was being written ({mid_compaction})"
    );
    // The journal itself (not a copy) after nine kills: everything is there, and the open's compaction leaves
    // one line per lease and no temp file.
    let (_, table) = Journal::open(&path, 0).unwrap();
    check(&table, acked, "the journal after the last kill");
    assert!(!tmp.exists(), "a temp file survived the open");
    let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
    assert_eq!(lines, LEASES);
}
