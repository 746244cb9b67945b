//! Which EK may speak for a TPM machine: the one pinned in `cluster.toml` (`ek_sha256`), else the one bound
//! by `imgbuild enroll approve <host>`; an unbound machine's first EK is held as pending until then, and any
//! other EK is a spoofer. With `[attestation] manufacturer_ca`, the EK certificate must check out as well.

use std::net::IpAddr;

use crate::config::{Identity, MacAddr, Machine};
use crate::pki::enroll::{EnrollState, PendingEk};

/// What the server does with a TPM machine's EK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkDecision {
    /// The machine's own EK: go on to the challenge.
    Known,
    /// First contact of an unbound machine: recorded as pending (the state changed: save it); 503 until
    /// approved.
    NewPending,
    /// Still waiting for approval (same EK as recorded).
    StillPending,
    /// Refused: the message says why.
    Refused(EkRefusal),
}

/// Why an EK is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkRefusal {
    /// The machine enrolls by address, not by TPM.
    NotTpm,
    /// Another EK than the pinned or bound one: a spoofer, or a replaced TPM.
    UnknownEk {
        /// The EK presented.
        presented: String,
        /// The EK the machine has.
        expected: String,
        /// Pinned in cluster.toml (else bound by approval).
        pinned: bool,
    },
    /// Another EK than the one already pending for this machine.
    SecondClaimant {
        /// The EK presented.
        presented: String,
        /// The EK pending.
        pending: String,
    },
}

impl EkRefusal {
    /// Said to the client and logged.
    pub fn message(&self, m: &Machine, peer: IpAddr) -> String {
        match self {
            EkRefusal::NotTpm => format!(
                "{} ({}) enrolls by address (identity = \"address\"): use GET /api/enroll/{}, or set identity = \"tpm\"",
                m.hostname, m.mac, m.mac
            ),
            EkRefusal::UnknownEk {
                presented,
                expected,
                pinned,
            } => format!(
                "attestation refused: unknown EK sha256:{presented} for {} ({}) from {peer}; its EK is \
                 sha256:{expected} ({}) — possible spoofer; if its TPM was replaced, {}",
                m.hostname,
                m.mac,
                if *pinned {
                    "ek_sha256 in cluster.toml"
                } else {
                    "bound by approval"
                },
                if *pinned {
                    "change ek_sha256 in cluster.toml"
                } else {
                    "run `imgbuild enroll reset <host>` and approve the new EK"
                }
            ),
            EkRefusal::SecondClaimant { presented, pending } => format!(
                "attestation refused: EK sha256:{presented} claims {} ({}) from {peer} while EK sha256:{pending} \
                 waits for approval — possible spoofer; compare the EKs before `imgbuild enroll approve {}`",
                m.hostname, m.mac, m.hostname
            ),
        }
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            EkRefusal::NotTpm => "not-tpm",
            EkRefusal::UnknownEk { .. } => "unknown-ek",
            EkRefusal::SecondClaimant { .. } => "second-claimant",
        }
    }
}

/// Decides about `ek_sha256` (hex) presented for `m` from `peer` at `now_ms`; records a first contact as pending
/// in `state` (the caller saves it on [`EkDecision::NewPending`]).
pub fn decide_ek(
    m: &Machine,
    state: &mut EnrollState,
    ek_sha256: &str,
    peer: IpAddr,
    now_ms: u64,
) -> EkDecision {
    if m.identity != Identity::Tpm {
        return EkDecision::Refused(EkRefusal::NotTpm);
    }
    let expected = m
        .ek_sha256
        .map(|h| (hex::encode(h), true))
        .or_else(|| state.tpm_ek.get(&m.mac).map(|h| (h.clone(), false)));
    if let Some((expected, pinned)) = expected {
        return if expected == ek_sha256 {
            EkDecision::Known
        } else {
            EkDecision::Refused(EkRefusal::UnknownEk {
                presented: ek_sha256.into(),
                expected,
                pinned,
            })
        };
    }
    match state.tpm_pending.get(&m.mac) {
        Some(p) if p.ek_sha256 == ek_sha256 => EkDecision::StillPending,
        Some(p) => EkDecision::Refused(EkRefusal::SecondClaimant {
            presented: ek_sha256.into(),
            pending: p.ek_sha256.clone(),
        }),
        None => {
            state.tpm_pending.insert(
                m.mac,
                PendingEk {
                    ek_sha256: ek_sha256.into(),
                    ip: peer,
                    at_ms: now_ms,
                },
            );
            EkDecision::NewPending
        }
    }
}

/// Whether `mac` has a bound or pinned EK (else its first EK waits for approval).
pub fn is_bound(m: &Machine, state: &EnrollState, mac: MacAddr) -> bool {
    m.ek_sha256.is_some() || state.tpm_ek.contains_key(&mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(identity: Identity, pin: Option<[u8; 32]>) -> Machine {
        let c = crate::config::example();
        let mut m = c.machines[0].clone();
        m.identity = identity;
        m.ek_sha256 = pin;
        m
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    #[test]
    fn a_pinned_ek_is_known_and_another_is_a_spoofer() {
        let m = machine(Identity::Tpm, Some([0xab; 32]));
        let mut st = EnrollState::default();
        assert_eq!(
            decide_ek(&m, &mut st, &"ab".repeat(32), PEER, 1),
            EkDecision::Known
        );
        let d = decide_ek(&m, &mut st, &"cd".repeat(32), PEER, 1);
        let EkDecision::Refused(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.outcome(), "unknown-ek");
        assert!(r.message(&m, PEER).contains("possible spoofer"));
        assert!(st.tpm_pending.is_empty());
    }

    #[test]
    fn an_unbound_machine_waits_for_approval_and_a_second_ek_is_refused() {
        let m = machine(Identity::Tpm, None);
        let mut st = EnrollState::default();
        let ek = "11".repeat(32);
        assert_eq!(decide_ek(&m, &mut st, &ek, PEER, 1), EkDecision::NewPending);
        assert_eq!(
            decide_ek(&m, &mut st, &ek, PEER, 2),
            EkDecision::StillPending
        );
        assert!(matches!(
            decide_ek(&m, &mut st, &"22".repeat(32), PEER, 3),
            EkDecision::Refused(EkRefusal::SecondClaimant { .. })
        ));
        // Approval binds the pending EK (what `imgbuild enroll approve` does).
        let p = st.tpm_pending.remove(&m.mac).unwrap();
        st.tpm_ek.insert(m.mac, p.ek_sha256);
        assert!(is_bound(&m, &st, m.mac));
        assert_eq!(decide_ek(&m, &mut st, &ek, PEER, 4), EkDecision::Known);
        assert!(matches!(
            decide_ek(&m, &mut st, &"22".repeat(32), PEER, 5),
            EkDecision::Refused(EkRefusal::UnknownEk { pinned: false, .. })
        ));
    }

    #[test]
    fn an_address_machine_is_sent_to_the_address_path() {
        let m = machine(Identity::Address, None);
        let mut st = EnrollState::default();
        assert_eq!(
            decide_ek(&m, &mut st, &"11".repeat(32), PEER, 1),
            EkDecision::Refused(EkRefusal::NotTpm)
        );
    }
}
