//! Unit tests of the lease journal's load: lines it cannot read are skipped and counted, never fatal.

use std::io::Write;
use std::net::Ipv4Addr;

use super::leases::{Change, Journal, Lease, Record};
use crate::config::MacAddr;

fn grant(n: u8) -> Record {
    Change::Grant(Lease {
        mac: MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, n]),
        ip: Ipv4Addr::new(10, 0, 0, n),
        expires: 1000,
    })
    .record(1)
    .unwrap()
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
