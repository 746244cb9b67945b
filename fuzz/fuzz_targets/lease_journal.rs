//! Fuzz target: arbitrary bytes as the DHCP lease journal (`state/dhcp-leases.jsonl`) through its loader,
//! `Journal::open` (on tmpfs when there is one): it never fails on content, no address is held by two
//! machines, and the journal it rewrites (compacted, fsynced) loads back to the same table.
//!
//! `cargo +nightly fuzz run lease_journal -- -runs=1000000` (from the repository root).
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use imgbuild::netboot::dhcp::journal::Journal;
use imgbuild::netboot::dhcp::leases::Lease;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("imgbuild-fuzz-leases")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temp dir")
    })
    .path()
}

fn leases(t: &imgbuild::netboot::dhcp::leases::LeaseTable) -> BTreeMap<String, Lease> {
    t.leases().map(|l| (l.mac.to_string(), l.clone())).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&clock, body)) = data.split_first() else {
        return;
    };
    // A line that is not UTF-8 is skipped like any unreadable line (the 2026-11-29 finding of this target,
    // fixed in `Journal::open`, which reads bytes): every input goes through the loader.
    let now = u64::from(clock) * 1000;
    let path = dir().join("dhcp-leases.jsonl");
    std::fs::write(&path, body).expect("write the journal");
    let (journal, table) = Journal::open(&path, now).expect("the loader takes any content");
    drop(journal);
    let mut held = BTreeMap::new();
    for l in table.leases() {
        if l.expires > now {
            if let Some(other) = held.insert(l.ip, l.mac) {
                assert_eq!(other, l.mac, "{} held by {other} and {}", l.ip, l.mac);
            }
        }
    }
    let (_, again) = Journal::open(&path, now).expect("reload the rewritten journal");
    let live = |m: BTreeMap<String, Lease>| -> BTreeMap<String, Lease> {
        m.into_iter().filter(|(_, l)| l.expires > now).collect()
    };
    assert_eq!(live(leases(&again)), live(leases(&table)), "the rewritten journal loads the same leases");
});
