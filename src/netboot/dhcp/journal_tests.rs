//! Unit tests of the lease journal: reload after a torn write, a full disk mid-commit, unreadable lines
//! skipped and counted, and the background compaction.

use std::io::Write;
use std::net::Ipv4Addr;

use super::journal::{Compaction, Journal};
use super::leases::{Change, Lease, LeaseTable, Record};
use crate::config::MacAddr;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn grant(n: u8) -> Record {
    Change::Grant(Lease {
        mac: mac(n),
        ip: Ipv4Addr::new(10, 0, 0, n),
        expires: 1000,
    })
    .record(1)
    .unwrap()
}

/// A renewal of one of 200 leases (`i % 200`), expiring at `1000 + i`: commits `n` of them from `from` into
/// both the journal and the table.
fn renew(j: &mut Journal, t: &mut LeaseTable, from: u64, n: u64) {
    for i in from..from + n {
        let k = (i % 200) as u8;
        let c = Change::Grant(Lease {
            mac: MacAddr([0x52, 0x54, 0, 0, (i % 200 / 100) as u8, k]),
            ip: Ipv4Addr::new(10, 1, (i % 200 / 100) as u8, k),
            expires: 1000 + i,
        });
        j.append(&c.record(i).unwrap());
        t.apply(&c);
    }
    j.commit().unwrap();
}

fn lines(p: &std::path::Path) -> usize {
    std::fs::read_to_string(p).unwrap().lines().count()
}

/// What a server started on a copy of the file now would load.
fn reopened_copy(p: &std::path::Path) -> LeaseTable {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("leases.jsonl");
    std::fs::copy(p, &copy).unwrap();
    Journal::open(&copy, 0).unwrap().1
}

fn same_leases(a: &LeaseTable, b: &LeaseTable) {
    let mut x: Vec<_> = a.leases().cloned().collect();
    let mut y: Vec<_> = b.leases().cloned().collect();
    x.sort_by_key(|l| l.ip);
    y.sort_by_key(|l| l.ip);
    assert_eq!(x, y);
}

#[test]
fn unreadable_lines_even_not_utf8_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leases.jsonl");
    let (mut j, _) = Journal::open(&p, 0).unwrap();
    j.append(&grant(1));
    j.commit().unwrap();
    drop(j);
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    // A line with a byte that is not UTF-8, one that is not JSON, then a good record.
    f.write_all(b"{\"op\":\"grant\",\"mac\":\"\xff\xfe\"}\nnot json\n")
        .unwrap();
    f.write_all(&serde_json::to_vec(&grant(2)).unwrap())
        .unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let (j, t) = Journal::open(&p, 10).unwrap();
    assert_eq!(j.skipped_lines(), 2);
    assert_eq!(t.live(10), 2, "the good records on both sides are kept");
    // Compacted at open: the bad lines are gone, the file is text again.
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 2);
    // A torn (not UTF-8) last line is a crash mid-write: skipped, not counted.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"op\":\"gr\xc3").unwrap();
    drop(f);
    let (j, t) = Journal::open(&p, 10).unwrap();
    assert_eq!((j.skipped_lines(), t.live(10)), (0, 2));
}

#[test]
fn journal_survives_reopen_and_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leases.jsonl");
    let (mut j, _) = Journal::open(&p, 0).unwrap();
    for n in 1..=3u8 {
        j.append(
            &Change::Grant(Lease {
                mac: mac(n),
                ip: Ipv4Addr::new(10, 0, 0, n),
                expires: 1000,
            })
            .record(1)
            .unwrap(),
        );
    }
    j.append(
        &Change::Release {
            mac: mac(2),
            ip: Ipv4Addr::new(10, 0, 0, 2),
        }
        .record(2)
        .unwrap(),
    );
    j.commit().unwrap();
    drop(j);
    // A crash in the middle of the next line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"{\"op\":\"grant\",\"mac\":\"52:54")
        .unwrap();
    let (_, t) = Journal::open(&p, 10).unwrap();
    assert_eq!(t.live(10), 2);
    assert_eq!(t.lease(mac(3)).unwrap().ip, Ipv4Addr::new(10, 0, 0, 3));
    assert!(t.lease(mac(2)).is_none());
    // Compacted: exactly the live leases.
    assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 2);
    // Expired leases are dropped at compaction.
    let (_, t) = Journal::open(&p, 2000).unwrap();
    assert_eq!(t.live(2000), 0);
}

#[test]
fn journal_compacts_in_the_background_when_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leases.jsonl");
    let (mut j, mut t) = Journal::open(&p, 0).unwrap();
    let mut started = 0;
    // 12 000 renewals of the same 200 leases, 100 per commit, the way the socket loop calls it.
    for b in 0..120 {
        renew(&mut j, &mut t, b * 100, 100);
        if j.maybe_compact(&t, 0).unwrap() == Compaction::Started {
            started += 1;
        }
    }
    assert_eq!(started, 1, "one compaction at 10 000 lines");
    j.finish_compaction().unwrap();
    let n = lines(&p);
    assert!(n < 2_500, "not compacted: {n} lines");
    same_leases(&Journal::open(&p, 0).unwrap().1, &t);
    assert!(!p.with_extension("jsonl.tmp").exists(), "temp file left");
}

/// Records committed between the snapshot and the swap are in the compacted file, and at every step the file
/// under the journal's name reloads to every committed lease (a kill -9 there loses nothing).
#[test]
fn records_committed_during_a_compaction_survive_it_and_every_step_reloads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leases.jsonl");
    let (mut j, mut t) = Journal::open(&p, 0).unwrap();
    renew(&mut j, &mut t, 0, 9_999);
    assert_eq!(j.maybe_compact(&t, 0).unwrap(), Compaction::Idle);
    renew(&mut j, &mut t, 9_999, 1);
    assert_eq!(j.maybe_compact(&t, 0).unwrap(), Compaction::Started);
    // While the snapshot is written: new leases, renewals, a release and a decline.
    renew(&mut j, &mut t, 10_000, 150);
    for c in [
        Change::Release {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 7]),
            ip: Ipv4Addr::new(10, 1, 0, 7),
        },
        Change::Decline {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 8]),
            ip: Ipv4Addr::new(10, 1, 0, 8),
            until: 5000,
        },
    ] {
        j.append(&c.record(3).unwrap());
        t.apply(&c);
    }
    j.commit().unwrap();
    same_leases(&reopened_copy(&p), &t);
    assert!(lines(&p) > 10_000, "swapped before the compaction finished");
    assert_eq!(j.finish_compaction().unwrap(), Compaction::Finished);
    let back = reopened_copy(&p);
    same_leases(&back, &t);
    assert!(back.is_declined(Ipv4Addr::new(10, 1, 0, 8), 10));
    // Snapshot (200 leases) + tail (150 renewals, a release, a decline), nothing else.
    assert_eq!(lines(&p), 200 + 152);
    // Commits go on in the new file.
    renew(&mut j, &mut t, 10_150, 10);
    same_leases(&reopened_copy(&p), &t);
    assert_eq!(lines(&p), 200 + 152 + 10);
}

/// A compaction that cannot write its temp file (here a directory is in its way) fails once, leaves the
/// journal in use and whole, and is tried again 10 000 lines later.
#[test]
fn a_failed_compaction_keeps_the_journal_and_retries_later() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leases.jsonl");
    let (mut j, mut t) = Journal::open(&p, 0).unwrap();
    let tmp = p.with_extension("jsonl.tmp");
    std::fs::create_dir(&tmp).unwrap();
    renew(&mut j, &mut t, 0, 10_000);
    assert_eq!(j.maybe_compact(&t, 0).unwrap(), Compaction::Started);
    assert!(j.finish_compaction().is_err());
    renew(&mut j, &mut t, 10_000, 100);
    assert_eq!(j.maybe_compact(&t, 0).unwrap(), Compaction::Idle);
    same_leases(&reopened_copy(&p), &t);
    assert_eq!(lines(&p), 10_100);
    std::fs::remove_dir(&tmp).unwrap();
    renew(&mut j, &mut t, 10_100, 9_899);
    assert_eq!(j.maybe_compact(&t, 0).unwrap(), Compaction::Idle);
    renew(&mut j, &mut t, 19_999, 1);
    assert_eq!(j.maybe_compact(&t, 0).unwrap(), Compaction::Started);
    assert_eq!(j.finish_compaction().unwrap(), Compaction::Finished);
    assert_eq!(lines(&p), 200);
    same_leases(&reopened_copy(&p), &t);
}

/// A disk that fills mid-commit (RLIMIT_FSIZE stands for the full disk: the write stops part-way with
/// EFBIG, as it would with ENOSPC): the commit fails, the file is cut back to its last good record, and
/// the next commit after space returns lands right after it. nextest runs each test in its own process,
/// so the limit touches nothing else.
#[test]
fn a_failed_commit_truncates_back_to_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leases.jsonl");
    let (mut j, _) = Journal::open(&p, 0).unwrap();
    j.append(&grant(1));
    j.commit().unwrap();
    let good = std::fs::metadata(&p).unwrap().len();
    // SAFETY: ignoring SIGXFSZ and setting this process's file size limit; both restored below.
    let old = unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut old = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
        let tight = libc::rlimit {
            rlim_cur: good + 70,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &tight), 0);
        old
    };
    for n in 2..=4 {
        j.append(&grant(n));
    }
    let failed = j.commit();
    // SAFETY: restoring the limit read above.
    unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) };
    assert!(failed.is_err(), "the write should have hit the limit");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), good, "not cut back");
    j.append(&grant(5));
    j.commit().unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        serde_json::from_str::<Record>(line).unwrap();
    }
    let (_, t) = Journal::open(&p, 10).unwrap();
    assert!(t.lease(mac(1)).is_some() && t.lease(mac(5)).is_some());
    assert!((2..=4).all(|n| t.lease(mac(n)).is_none()));
}
