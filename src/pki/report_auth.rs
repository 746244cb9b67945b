//! Who may report what about a node: the rules for `POST /api/events` (and, through [`check_report`], the
//! barrier), as pure functions; the routes in `netboot::http::{events, barrier}` only do I/O.
//!
//! - A report names an inventory MAC, or it is refused ([`ReportRefusal::UnknownMac`]).
//! - **Signed** reports carry `ts`, `ctr` and `sig` = hex HMAC-SHA256 over [`report_message`], keyed with the
//!   node's report key ([`node_key`]: derived from `secrets/report.key`, the MAC and the time the node
//!   enrolled, delivered in its enrollment bundle, so a re-armed node gets a new key). Accepted when the node
//!   is enrolled, the signature verifies, `ts` is within [`REPORT_SKEW_SECS`] of the server's clock and `ctr`
//!   is greater than the last accepted counter of that enrollment (no replay).
//! - **Unsigned** reports are accepted only from the address the server knows for the MAC (its inventory
//!   address, or the address of the DHCP lease the server acknowledged to it and that has not ended:
//!   [`NodeFacts::lease`]), and only while the node holds no key the server knows:
//!   - before it enrolls: any stage but `init-done`;
//!   - once it has enrolled, **never** when its machine has a state disk (`state_disk` in the inventory, which
//!     every machine has today): the bundle, and with it the report key, lives on the state partition, and the
//!     initrd mounts that partition before its first report and signs every report with the key
//!     (`ib_state_open`, `ib_hmac`, `ib_next_ctr` in `profiles/initrd/boot.sh.j2`; its counter is the same
//!     file as the root filesystem's, at least the time in s × 10⁹ there and in ns on the root filesystem, so
//!     the counters of one enrollment only grow across initrd, root filesystem and reboots);
//!   - once it has enrolled, for a machine without a state disk (no key survives its reboot): only the
//!     initrd's stages ([`UNSIGNED_AFTER_ENROLLMENT`]) and only while the server itself sees the node in its
//!     initrd ([`NodeFacts::in_initrd`]: it served the node its kernel or UKI within [`INITRD_WINDOW_MS`] and
//!     the node has not reported `systemd` since).
//! - `init-done` (which opens the join barrier) is accepted only signed with the first master's key.
//!
//! Consequences: a host that takes an enrolled node's address forges nothing about it. A node whose state disk
//! was wiped or replaced has no key: its reports (the initrd's `failed` included) are refused as `unsigned`
//! until `imgbuild enroll reset <host>` re-arms it; its next enrollment brings a new key (derived from the new
//! enrollment time) and counters start afresh for it. A node re-armed with its old disk still signs with the old
//! key and is refused as `not-enrolled` until its disk is wiped. Reports are refused, never the boot: the
//! initrd and the first-boot scripts go on either way.

use std::net::{IpAddr, Ipv4Addr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Cluster, MacAddr};

/// How far a signed report's timestamp may be from the server's clock.
pub const REPORT_SKEW_SECS: u64 = 300;

/// The server-side master key of report keys in the secrets directory (hex text, 0600).
pub const REPORT_KEY_FILE: &str = "report.key";

/// The stage that opens the join barrier: only the first master, signed.
pub const INIT_DONE: &str = "init-done";

/// Stages an enrolled node **without a state disk** may still report unsigned (from its known address, in its
/// initrd): the initrd's, which runs before anything could give it a key. `failed` is among them so an initrd
/// failure (a bad root filesystem digest) still reaches the page. A machine with a state disk signs them all.
pub const UNSIGNED_AFTER_ENROLLMENT: &[&str] =
    &["initrd", "rootfs-verified", "state-disk", "failed"];

/// How long after the server served a node its kernel (or UKI) it still takes the node's unsigned initrd stages,
/// once the node has enrolled: the initrd's download of the root filesystem and the state disk, with room for
/// slow links.
pub const INITRD_WINDOW_MS: u64 = 15 * 60 * 1000;

/// A node's report key: hex HMAC-SHA256 keyed with the master key's text over the MAC and the time the node
/// enrolled. Nodes use its hex text as their HMAC key.
pub fn node_key(master_key: &str, mac: MacAddr, enrolled_at_ms: u64) -> String {
    hmac_hex(
        master_key,
        &format!("imgbuild-node-key-v1\n{mac}\n{enrolled_at_ms}\n"),
    )
}

/// The text a report signs: a version line, the MAC, the stage, the timestamp, the counter, then the detail.
pub fn report_message(mac: MacAddr, stage: &str, ts: u64, ctr: u64, detail: &str) -> String {
    format!("imgbuild-report-v1\n{mac}\n{stage}\n{ts}\n{ctr}\n{detail}")
}

/// Hex HMAC-SHA256 of `msg` keyed with the bytes of `key` (the key's text, as the node scripts use it).
pub fn hmac_hex(key: &str, msg: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    m.update(msg.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn verify(key: &str, msg: &str, sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex.trim()) else {
        return false;
    };
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    m.update(msg.as_bytes());
    m.verify_slice(&sig).is_ok()
}

/// The signature fields of a signed report.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    /// When the node signed it, in seconds since the Unix epoch.
    pub ts: u64,
    /// The node's report counter: greater than every earlier accepted one of this enrollment.
    pub ctr: u64,
    /// Hex HMAC-SHA256 over [`report_message`] keyed with the node's report key.
    pub sig: &'a str,
}

/// One report as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// The MAC the report is about.
    pub mac: MacAddr,
    /// The stage reported.
    pub stage: &'a str,
    /// The free-text detail (signed as sent).
    pub detail: &'a str,
    /// The TCP peer address it came from.
    pub peer: IpAddr,
    /// The signature, when the report is signed.
    pub signature: Option<Signature<'a>>,
}

/// What the server knows about the node, read before the rules run.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFacts {
    /// When the node enrolled (ms since the epoch), if it has: its report key derives from it.
    pub enrolled_at_ms: Option<u64>,
    /// The last accepted counter of this enrollment.
    pub last_ctr: Option<u64>,
    /// The address of the DHCP lease this server acknowledged to the MAC, if it has not ended
    /// (`netboot::known_leases`), accepted besides its inventory address.
    pub lease: Option<IpAddr>,
    /// The server served this node its kernel or UKI within [`INITRD_WINDOW_MS`] and the node has reported no
    /// `systemd` since: it is in its initrd, the only time its unsigned initrd stages are taken once enrolled.
    pub in_initrd: bool,
}

/// How a report was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Unsigned, from the node's known address.
    Address,
    /// Signed with the node's key; `ctr` is the new last counter to store.
    Signed {
        /// The counter to remember for replay protection.
        ctr: u64,
    },
}

/// Why a report is refused. Nothing of a refused report is recorded; it is counted by [`ReportRefusal::outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportRefusal {
    /// The MAC is not in the inventory.
    UnknownMac,
    /// Unsigned, and not from an address the server knows for the MAC.
    WrongAddress {
        /// The inventory address of the MAC.
        expected: Ipv4Addr,
        /// The address of its current lease, when it has one.
        lease: Option<IpAddr>,
    },
    /// Unsigned, but the node has enrolled and this stage must be signed with its key.
    Unsigned,
    /// An unsigned initrd stage of an enrolled node, but the server has not seen the node boot a kernel within
    /// [`INITRD_WINDOW_MS`] (or it has reached `systemd` since).
    NotInInitrd,
    /// Signed, but the node has not enrolled (it has no key yet).
    NotEnrolled,
    /// The signature does not verify.
    BadSignature,
    /// The timestamp is more than [`REPORT_SKEW_SECS`] from the server's clock.
    Skew {
        /// The report's timestamp.
        ts: u64,
        /// The server's clock.
        now: u64,
    },
    /// The counter is not greater than the last accepted one: a replay.
    Replay {
        /// The refused counter.
        ctr: u64,
        /// The last accepted counter.
        last: u64,
    },
    /// `init-done` for another node than the first master, or unsigned.
    NotFirstMaster,
}

impl ReportRefusal {
    /// The metric label (`imgbuild_event_reports_total{outcome}`).
    pub fn outcome(&self) -> &'static str {
        match self {
            ReportRefusal::UnknownMac => "unknown-mac",
            ReportRefusal::WrongAddress { .. } => "wrong-address",
            ReportRefusal::Unsigned => "unsigned",
            ReportRefusal::NotInInitrd => "not-in-initrd",
            ReportRefusal::NotEnrolled => "not-enrolled",
            ReportRefusal::BadSignature => "bad-signature",
            ReportRefusal::Skew { .. } => "skew",
            ReportRefusal::Replay { .. } => "replay",
            ReportRefusal::NotFirstMaster => "not-first-master",
        }
    }

    /// Said to the client (and logged, rate-limited by the caller).
    pub fn message(&self, mac: MacAddr, peer: IpAddr) -> String {
        match self {
            ReportRefusal::UnknownMac => {
                format!("report refused: {mac} is not in the inventory (cluster.toml [[machines]])")
            }
            ReportRefusal::WrongAddress { expected, lease } => {
                let leased = match lease {
                    Some(l) if *l != IpAddr::V4(*expected) => {
                        format!(" (or {l}, its current DHCP lease)")
                    }
                    _ => String::new(),
                };
                format!(
                    "report refused: {mac} reported from {peer}, but its address is {expected}{leased}; unsigned \
                     reports are accepted only from the node's own address — possible spoofer, or a node whose \
                     address changed: check its [[machines]] ip and that it got its address from this server"
                )
            }
            ReportRefusal::Unsigned => format!(
                "report refused: {mac} has enrolled, so its reports must be signed with its report key (ts, ctr, \
                 sig), which its state partition holds from the initrd on — possible spoofer at its address; if \
                 its state disk was wiped or replaced, re-arm it with `imgbuild enroll reset <host>`"
            ),
            ReportRefusal::NotInInitrd => format!(
                "report refused: {mac} has enrolled, and the server has not served it a kernel in the last {} min \
                 (or it has reached systemd since): unsigned initrd stages are taken only while the node is in its \
                 initrd — possible spoofer at its address",
                INITRD_WINDOW_MS / 60_000
            ),
            ReportRefusal::NotEnrolled => format!(
                "report refused: {mac} signed a report but has not enrolled; re-arm it with `imgbuild enroll reset <host>`"
            ),
            ReportRefusal::BadSignature => {
                format!("report refused: bad signature for {mac} — possible spoofer")
            }
            ReportRefusal::Skew { ts, now } => format!(
                "report refused: timestamp {ts} is more than {REPORT_SKEW_SECS}s from the server's clock {now}; check \
                 the node's time"
            ),
            ReportRefusal::Replay { ctr, last } => format!(
                "report refused: counter {ctr} is not greater than the last accepted one ({last}) — a replay"
            ),
            ReportRefusal::NotFirstMaster => format!(
                "report refused: {INIT_DONE} is accepted only from the first master, signed with its report key"
            ),
        }
    }
}

/// Whether machine `m` keeps its report key across reboots, from its initrd on: it has a state disk, whose
/// partition holds the enrollment bundle and which the initrd mounts before its first report. Such a node,
/// once enrolled, signs every report.
pub fn key_survives_reboot(m: &crate::config::Machine) -> bool {
    !m.state_disk.trim().is_empty()
}

/// The rules, in order (see the module documentation). `master_key` is the text of `secrets/report.key`.
pub fn check_report(
    cluster: &Cluster,
    r: &Report<'_>,
    facts: &NodeFacts,
    master_key: &str,
    now_unix: u64,
) -> Result<Accepted, ReportRefusal> {
    let m = cluster
        .machine_by_mac(r.mac)
        .ok_or(ReportRefusal::UnknownMac)?;
    let first_master = cluster.first_master().map(|f| f.mac) == Some(r.mac);
    if r.stage == INIT_DONE && (!first_master || r.signature.is_none()) {
        return Err(ReportRefusal::NotFirstMaster);
    }
    match r.signature {
        Some(s) => {
            let at = facts.enrolled_at_ms.ok_or(ReportRefusal::NotEnrolled)?;
            let key = node_key(master_key, r.mac, at);
            let msg = report_message(r.mac, r.stage, s.ts, s.ctr, r.detail);
            if !verify(&key, &msg, s.sig) {
                return Err(ReportRefusal::BadSignature);
            }
            if s.ts.abs_diff(now_unix) > REPORT_SKEW_SECS {
                return Err(ReportRefusal::Skew {
                    ts: s.ts,
                    now: now_unix,
                });
            }
            if let Some(last) = facts.last_ctr
                && s.ctr <= last
            {
                return Err(ReportRefusal::Replay { ctr: s.ctr, last });
            }
            Ok(Accepted::Signed { ctr: s.ctr })
        }
        None => {
            let known = r.peer == IpAddr::V4(m.ip) || facts.lease == Some(r.peer);
            if !known {
                return Err(ReportRefusal::WrongAddress {
                    expected: m.ip,
                    lease: facts.lease,
                });
            }
            if facts.enrolled_at_ms.is_some() {
                if key_survives_reboot(m) || !UNSIGNED_AFTER_ENROLLMENT.contains(&r.stage) {
                    return Err(ReportRefusal::Unsigned);
                }
                if !facts.in_initrd {
                    return Err(ReportRefusal::NotInInitrd);
                }
            }
            Ok(Accepted::Address)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::example as cluster;

    const NOW: u64 = 1_800_000_000;
    const MASTER: &str = "k3y";

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn signed<'a>(
        m: MacAddr,
        stage: &'a str,
        peer: &str,
        at: u64,
        ts: u64,
        ctr: u64,
        sig: &'a mut String,
    ) -> Report<'a> {
        *sig = hmac_hex(
            &node_key(MASTER, m, at),
            &report_message(m, stage, ts, ctr, "d"),
        );
        Report {
            mac: m,
            stage,
            detail: "d",
            peer: ip(peer),
            signature: Some(Signature { ts, ctr, sig }),
        }
    }

    #[test]
    fn unsigned_reports_only_from_the_known_address() {
        let c = cluster();
        let w1 = mac("52:54:00:77:00:21");
        let fresh = NodeFacts::default();
        let r = |m, stage, peer: &str| Report {
            mac: m,
            stage,
            detail: "",
            peer: ip(peer),
            signature: None,
        };
        assert_eq!(
            check_report(
                &c,
                &r(mac("02:00:00:00:00:01"), "systemd", "10.77.0.21"),
                &fresh,
                MASTER,
                NOW
            ),
            Err(ReportRefusal::UnknownMac)
        );
        assert_eq!(
            check_report(&c, &r(w1, "failed", "10.77.0.99"), &fresh, MASTER, NOW),
            Err(ReportRefusal::WrongAddress {
                expected: "10.77.0.21".parse().unwrap(),
                lease: None,
            })
        );
        assert_eq!(
            check_report(&c, &r(w1, "systemd", "10.77.0.21"), &fresh, MASTER, NOW),
            Ok(Accepted::Address)
        );
        let leased = NodeFacts {
            lease: Some(ip("10.77.0.150")),
            ..fresh
        };
        assert_eq!(
            check_report(&c, &r(w1, "systemd", "10.77.0.150"), &leased, MASTER, NOW),
            Ok(Accepted::Address)
        );
        // A lease adds its address; any other stays refused, and the refusal names both.
        let refused = check_report(&c, &r(w1, "systemd", "10.77.0.151"), &leased, MASTER, NOW);
        assert_eq!(
            refused,
            Err(ReportRefusal::WrongAddress {
                expected: "10.77.0.21".parse().unwrap(),
                lease: Some(ip("10.77.0.150")),
            })
        );
        let msg = refused.unwrap_err().message(w1, ip("10.77.0.151"));
        assert!(
            msg.contains("10.77.0.21") && msg.contains("10.77.0.150, its current DHCP lease"),
            "{msg}"
        );
        // Enrolled, with a state disk (every inventory machine has one): its initrd holds the key, so nothing is
        // taken unsigned any more, not even the initrd's stages from its own address while it is in its initrd.
        let enrolled = NodeFacts {
            enrolled_at_ms: Some(5),
            in_initrd: true,
            ..fresh
        };
        let not_booting = NodeFacts {
            in_initrd: false,
            ..enrolled
        };
        assert!(key_survives_reboot(c.machine_by_mac(w1).unwrap()));
        for stage in UNSIGNED_AFTER_ENROLLMENT
            .iter()
            .chain(&["systemd", "joined"])
        {
            for facts in [&enrolled, &not_booting] {
                let refused = check_report(&c, &r(w1, stage, "10.77.0.21"), facts, MASTER, NOW);
                assert_eq!(refused, Err(ReportRefusal::Unsigned), "{stage}");
                let msg = refused.unwrap_err().message(w1, ip("10.77.0.21"));
                assert!(msg.contains("enroll reset"), "{msg}");
            }
        }
        // Enrolled without a state disk (no key survives a reboot): the initrd's stages unsigned only while the
        // node is in its initrd and from its address, the rest must be signed.
        let mut diskless = cluster();
        diskless
            .machines
            .iter_mut()
            .find(|m| m.mac == w1)
            .unwrap()
            .state_disk
            .clear();
        assert!(!key_survives_reboot(diskless.machine_by_mac(w1).unwrap()));
        for stage in UNSIGNED_AFTER_ENROLLMENT {
            assert_eq!(
                check_report(
                    &diskless,
                    &r(w1, stage, "10.77.0.21"),
                    &not_booting,
                    MASTER,
                    NOW
                ),
                Err(ReportRefusal::NotInInitrd),
                "{stage}"
            );
            assert_eq!(
                check_report(
                    &diskless,
                    &r(w1, stage, "10.77.0.21"),
                    &enrolled,
                    MASTER,
                    NOW
                ),
                Ok(Accepted::Address),
                "{stage}"
            );
            assert!(matches!(
                check_report(
                    &diskless,
                    &r(w1, stage, "10.77.0.99"),
                    &enrolled,
                    MASTER,
                    NOW
                ),
                Err(ReportRefusal::WrongAddress { .. })
            ));
        }
        assert_eq!(
            check_report(
                &diskless,
                &r(w1, "joined", "10.77.0.21"),
                &enrolled,
                MASTER,
                NOW
            ),
            Err(ReportRefusal::Unsigned)
        );
        // Signed, the initrd's stages are accepted from an enrolled node with a disk (what its initrd sends).
        let mut s = String::new();
        for (i, stage) in UNSIGNED_AFTER_ENROLLMENT.iter().enumerate() {
            let signed_initrd = signed(w1, stage, "10.77.0.21", 5, NOW, 10 + i as u64, &mut s);
            assert_eq!(
                check_report(&c, &signed_initrd, &not_booting, MASTER, NOW),
                Ok(Accepted::Signed { ctr: 10 + i as u64 }),
                "{stage}"
            );
        }
        // init-done: never unsigned, even from the first master's own address.
        let m1 = mac("52:54:00:77:00:11");
        assert_eq!(
            check_report(&c, &r(m1, INIT_DONE, "10.77.0.11"), &fresh, MASTER, NOW),
            Err(ReportRefusal::NotFirstMaster)
        );
    }

    #[test]
    fn signed_reports_verify_and_never_replay() {
        let c = cluster();
        let m1 = mac("52:54:00:77:00:11");
        let w1 = mac("52:54:00:77:00:21");
        let facts = NodeFacts {
            enrolled_at_ms: Some(42),
            last_ctr: Some(7),
            lease: None,
            in_initrd: false,
        };
        let mut s = String::new();
        // From any address: the key is the proof.
        let ok = signed(m1, INIT_DONE, "10.77.0.99", 42, NOW, 8, &mut s);
        assert_eq!(
            check_report(&c, &ok, &facts, MASTER, NOW),
            Ok(Accepted::Signed { ctr: 8 })
        );
        let replay = signed(m1, INIT_DONE, "10.77.0.11", 42, NOW, 7, &mut s);
        assert_eq!(
            check_report(&c, &replay, &facts, MASTER, NOW),
            Err(ReportRefusal::Replay { ctr: 7, last: 7 })
        );
        let skewed = signed(m1, "cni", "10.77.0.11", 42, NOW - 301, 9, &mut s);
        assert!(matches!(
            check_report(&c, &skewed, &facts, MASTER, NOW),
            Err(ReportRefusal::Skew { .. })
        ));
        // A key of an earlier enrollment (re-armed node) no longer verifies.
        let old = signed(m1, "cni", "10.77.0.11", 41, NOW, 9, &mut s);
        assert_eq!(
            check_report(&c, &old, &facts, MASTER, NOW),
            Err(ReportRefusal::BadSignature)
        );
        // A forged signature (tampered detail).
        let mut forged = signed(m1, "cni", "10.77.0.11", 42, NOW, 9, &mut s);
        forged.detail = "other";
        assert_eq!(
            check_report(&c, &forged, &facts, MASTER, NOW),
            Err(ReportRefusal::BadSignature)
        );
        // A worker's valid key does not open the barrier.
        let w = signed(w1, INIT_DONE, "10.77.0.21", 42, NOW, 9, &mut s);
        assert_eq!(
            check_report(&c, &w, &facts, MASTER, NOW),
            Err(ReportRefusal::NotFirstMaster)
        );
        let not_enrolled = signed(w1, "cni", "10.77.0.21", 42, NOW, 9, &mut s);
        assert_eq!(
            check_report(&c, &not_enrolled, &NodeFacts::default(), MASTER, NOW),
            Err(ReportRefusal::NotEnrolled)
        );
    }

    /// The node scripts' pure-bash HMAC (`ib_hmac` in profiles/base/imgbuild-lib.sh.j2) gives the same
    /// signature; checked in tests/firstboot.rs against this function's known answer.
    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2 ("Jefe").
        assert_eq!(
            hmac_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
