//! The firmware's TCG event log in the crypto-agile format (TCG PC Client Platform Firmware Profile §10:
//! a `TCG_PCClientPCREvent` header carrying the `Spec ID Event03`, then `TCG_PCR_EVENT2` records; what Linux
//! shows at `/sys/kernel/security/tpm0/binary_bios_measurements`), replayed to SHA-256 PCR values.

use sha2::{Digest, Sha256};

use super::AttestError;
use super::public::ALG_SHA256;
use super::wire::Reader;

/// `EV_NO_ACTION`: informational, never extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// `EV_SEPARATOR`.
pub const EV_SEPARATOR: u32 = 0x4;
/// `EV_EFI_VARIABLE_DRIVER_CONFIG` (Secure Boot variables in PCR 7).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// `EV_EFI_BOOT_SERVICES_APPLICATION`: a loaded UEFI image (its Authenticode digest), in PCR 4.
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// `EV_EFI_ACTION`.
pub const EV_EFI_ACTION: u32 = 0x8000_0007;

/// A tagged event (`TCG_PCClientTaggedEvent`: id, size, data), as the Linux EFI stub measures its initrd and
/// LoadOptions into PCR 9.
pub const EV_EVENT_TAG: u32 = 0x6;

/// At most this many events are read (an OVMF boot logs a few dozen).
pub const MAX_EVENTS: usize = 4096;

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its position in the log (0 is the Spec ID header).
    pub index: usize,
    /// The PCR it extends.
    pub pcr: u32,
    /// The event type.
    pub kind: u32,
    /// The SHA-256 digest extended, if the log has that bank.
    pub sha256: Option<[u8; 32]>,
    /// The event data.
    pub data: Vec<u8>,
}

impl Event {
    /// A short name of the event type, for messages.
    pub fn kind_name(&self) -> String {
        match self.kind {
            EV_NO_ACTION => "EV_NO_ACTION".into(),
            EV_SEPARATOR => "EV_SEPARATOR".into(),
            0x1 => "EV_POST_CODE".into(),
            EV_EVENT_TAG => "EV_EVENT_TAG".into(),
            0x8 => "EV_S_CRTM_VERSION".into(),
            0xd => "EV_IPL".into(),
            EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG".into(),
            0x8000_0002 => "EV_EFI_VARIABLE_BOOT".into(),
            EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION".into(),
            0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER".into(),
            EV_EFI_ACTION => "EV_EFI_ACTION".into(),
            0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB".into(),
            0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2".into(),
            0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY".into(),
            k => format!("event type 0x{k:08x}"),
        }
    }

    /// The UEFI variable an `EV_EFI_VARIABLE_*` event names and its data (`UEFI_VARIABLE_DATA`).
    pub fn variable(&self) -> Option<(String, &[u8])> {
        let mut r = Reader::new(&self.data, "UEFI_VARIABLE_DATA");
        let _guid = r.bytes(16).ok()?;
        let name_len = r.u64_le().ok()? as usize;
        let data_len = r.u64_le().ok()? as usize;
        let name = r.bytes(name_len.checked_mul(2)?).ok()?;
        let data = r.bytes(data_len).ok()?;
        let units: Vec<u16> = name
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Some((String::from_utf16_lossy(&units), data))
    }

    /// A one-line description: index, PCR, type, digest, and the variable name or action text.
    pub fn describe(&self) -> String {
        let d = self.sha256.map_or_else(|| "-".into(), hex::encode);
        let what = match self.kind {
            EV_EFI_ACTION | EV_SEPARATOR => String::from_utf8_lossy(&self.data)
                .trim_end_matches('\0')
                .chars()
                .filter(|c| !c.is_control())
                .take(60)
                .collect::<String>(),
            EV_EFI_VARIABLE_DRIVER_CONFIG | 0x8000_0002 | 0x8000_00e0 => {
                self.variable().map(|(n, _)| n).unwrap_or_default()
            }
            // id (u32), size (u32), then the tag's text ("Linux initrd", "LOADED_IMAGE::LoadOptions").
            EV_EVENT_TAG => String::from_utf8_lossy(self.data.get(8..).unwrap_or_default())
                .trim_end_matches('\0')
                .chars()
                .filter(|c| !c.is_control())
                .take(60)
                .collect::<String>(),
            _ => String::new(),
        };
        format!(
            "event #{} (PCR {}, {}{}) sha256:{d}",
            self.index,
            self.pcr,
            self.kind_name(),
            if what.is_empty() {
                String::new()
            } else {
                format!(" {what:?}")
            }
        )
    }
}

/// A parsed log.
#[derive(Debug, Clone)]
pub struct EventLog {
    /// Every event after the header, in order.
    pub events: Vec<Event>,
    /// The locality the TPM was started from (a `StartupLocality` event; PCR 0 starts with it), 0 without one.
    pub startup_locality: u8,
}

impl EventLog {
    /// Parses a crypto-agile log; a log without a SHA-256 bank is refused.
    pub fn parse(b: &[u8]) -> Result<EventLog, AttestError> {
        let mut r = Reader::new(b, "event log");
        // TCG_PCClientPCREvent: pcrIndex, eventType, SHA-1 digest (20), eventSize, event.
        let _pcr = r.u32_le()?;
        let kind = r.u32_le()?;
        let _digest = r.bytes(20)?;
        let size = r.u32_le()? as usize;
        let spec = r.bytes(size)?;
        if kind != EV_NO_ACTION || !spec.starts_with(b"Spec ID Event03\0") {
            return Err(AttestError::Malformed(
                "event log: not in the crypto-agile format (no Spec ID Event03 header); the firmware must log \
                 for TPM 2.0"
                    .into(),
            ));
        }
        let mut s = Reader::new(&spec[16..], "Spec ID event");
        let _class = s.u32_le()?;
        let _version = s.bytes(4)?;
        let n_algs = s.u32_le()? as usize;
        if n_algs > 16 {
            return Err(AttestError::Malformed(format!(
                "event log: {n_algs} hash algorithms"
            )));
        }
        let mut sizes = Vec::with_capacity(n_algs);
        for _ in 0..n_algs {
            sizes.push((s.u16_le()?, s.u16_le()? as usize));
        }
        if !sizes.iter().any(|(a, _)| *a == ALG_SHA256) {
            return Err(AttestError::Unsupported(
                "event log without a SHA-256 bank; enable the SHA-256 PCR bank".into(),
            ));
        }
        let mut events = Vec::new();
        let mut startup_locality = 0;
        while r.remaining() > 0 {
            if events.len() >= MAX_EVENTS {
                return Err(AttestError::Malformed(format!(
                    "event log: more than {MAX_EVENTS} events"
                )));
            }
            let pcr = r.u32_le()?;
            let kind = r.u32_le()?;
            let count = r.u32_le()? as usize;
            if count > 16 {
                return Err(AttestError::Malformed(format!(
                    "event log: event #{} has {count} digests",
                    events.len() + 1
                )));
            }
            let mut sha256 = None;
            for _ in 0..count {
                let alg = r.u16_le()?;
                let size = sizes
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .map(|(_, s)| *s)
                    .ok_or_else(|| {
                        AttestError::Malformed(format!(
                            "event log: digest algorithm 0x{alg:04x} not declared in the header"
                        ))
                    })?;
                let d = r.bytes(size)?;
                if alg == ALG_SHA256 {
                    sha256 = d.try_into().ok();
                }
            }
            let size = r.u32_le()? as usize;
            let data = r.bytes(size)?.to_vec();
            if kind == EV_NO_ACTION && data.starts_with(b"StartupLocality\0") && data.len() == 17 {
                startup_locality = data[16];
            }
            events.push(Event {
                index: events.len() + 1,
                pcr,
                kind,
                sha256,
                data,
            });
        }
        Ok(EventLog {
            events,
            startup_locality,
        })
    }

    /// The SHA-256 PCR values the log replays to, for PCRs 0..24 (`EV_NO_ACTION` is not extended).
    pub fn replay(&self) -> [[u8; 32]; 24] {
        let mut pcrs = [[0u8; 32]; 24];
        pcrs[0][31] = self.startup_locality;
        for e in &self.events {
            if e.kind == EV_NO_ACTION || e.pcr as usize >= pcrs.len() {
                continue;
            }
            if let Some(d) = e.sha256 {
                let mut h = Sha256::new();
                h.update(pcrs[e.pcr as usize]);
                h.update(d);
                pcrs[e.pcr as usize] = h.finalize().into();
            }
        }
        pcrs
    }

    /// The events that extend `pcr`, in order.
    pub fn of_pcr(&self, pcr: u32) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(move |e| e.pcr == pcr && e.kind != EV_NO_ACTION)
    }

    /// Whether the log shows Secure Boot enabled: the `SecureBoot` variable measured into PCR 7 with value 1.
    pub fn secure_boot_enabled(&self) -> bool {
        self.of_pcr(7).any(|e| {
            e.kind == EV_EFI_VARIABLE_DRIVER_CONFIG
                && e.variable()
                    .is_some_and(|(n, d)| n == "SecureBoot" && d == [1])
        })
    }
}

/// Builds a crypto-agile log (SHA-256 only) from `(pcr, type, digest, data)`, for tests.
#[cfg(test)]
pub fn build_log(events: &[(u32, u32, [u8; 32], Vec<u8>)]) -> Vec<u8> {
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend(0u32.to_le_bytes());
    spec.extend([0, 2, 0, 2]);
    spec.extend(1u32.to_le_bytes());
    spec.extend(ALG_SHA256.to_le_bytes());
    spec.extend(32u16.to_le_bytes());
    spec.push(0);
    let mut out = Vec::new();
    out.extend(0u32.to_le_bytes());
    out.extend(EV_NO_ACTION.to_le_bytes());
    out.extend([0u8; 20]);
    out.extend((spec.len() as u32).to_le_bytes());
    out.extend(spec);
    for (pcr, kind, d, data) in events {
        out.extend(pcr.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend(ALG_SHA256.to_le_bytes());
        out.extend(d);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
    }
    out
}

/// `UEFI_VARIABLE_DATA` for a variable, for tests.
#[cfg(test)]
pub fn variable_data(name: &str, data: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut out = vec![0u8; 16];
    out.extend((units.len() as u64).to_le_bytes());
    out.extend((data.len() as u64).to_le_bytes());
    for u in units {
        out.extend(u.to_le_bytes());
    }
    out.extend(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_extends_in_order_and_skips_no_action() {
        let log = build_log(&[
            (
                4,
                EV_EFI_ACTION,
                [1; 32],
                b"Calling EFI Application from Boot Option".to_vec(),
            ),
            (4, EV_NO_ACTION, [9; 32], vec![]),
            (4, EV_SEPARATOR, [2; 32], vec![0; 4]),
        ]);
        let l = EventLog::parse(&log).unwrap();
        assert_eq!(l.events.len(), 3);
        let mut want = [0u8; 32];
        for d in [[1u8; 32], [2; 32]] {
            let mut h = Sha256::new();
            h.update(want);
            h.update(d);
            want = h.finalize().into();
        }
        assert_eq!(l.replay()[4], want);
        assert_eq!(l.replay()[7], [0; 32]);
        assert!(l.events[0].describe().contains("Calling EFI Application"));
    }

    #[test]
    fn startup_locality_seeds_pcr0() {
        let mut data = b"StartupLocality\0".to_vec();
        data.push(3);
        let l = EventLog::parse(&build_log(&[(0, EV_NO_ACTION, [0; 32], data)])).unwrap();
        let mut want = [0u8; 32];
        want[31] = 3;
        assert_eq!(l.replay()[0], want);
    }

    #[test]
    fn secure_boot_variable_is_read_from_pcr7() {
        let on = build_log(&[(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            [0; 32],
            variable_data("SecureBoot", &[1]),
        )]);
        let off = build_log(&[(
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            [0; 32],
            variable_data("SecureBoot", &[0]),
        )]);
        assert!(EventLog::parse(&on).unwrap().secure_boot_enabled());
        assert!(!EventLog::parse(&off).unwrap().secure_boot_enabled());
    }

    #[test]
    fn truncated_and_legacy_logs_are_refused() {
        let log = build_log(&[(4, EV_SEPARATOR, [2; 32], vec![0; 4])]);
        assert!(EventLog::parse(&log[..log.len() - 1]).is_err());
        let mut legacy = log.clone();
        legacy[32] = b'X'; // the Spec ID signature
        assert!(
            EventLog::parse(&legacy)
                .unwrap_err()
                .to_string()
                .contains("crypto-agile")
        );
    }

    /// PCR values printed by Linux (`N HEX` lines).
    fn pcrs(text: &str) -> Vec<[u8; 32]> {
        text.lines()
            .map(|l| {
                hex::decode(l.split_whitespace().nth(1).unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn real_ovmf_logs_replay_to_the_pcrs_linux_read() {
        for (log, values) in [
            (
                &include_bytes!("../../../tests/fixtures/attest/ovmf-uki.eventlog")[..],
                include_str!("../../../tests/fixtures/attest/ovmf-uki.pcrs"),
            ),
            (
                &include_bytes!("../../../tests/fixtures/attest/ovmf-kernel.eventlog")[..],
                include_str!("../../../tests/fixtures/attest/ovmf-kernel.pcrs"),
            ),
        ] {
            let l = EventLog::parse(log).unwrap();
            let replayed = l.replay();
            for (i, want) in pcrs(values).iter().enumerate().take(8) {
                assert_eq!(&replayed[i], want, "PCR {i}");
            }
            // Plain OVMF: the SecureBoot variable is measured, and it is 0.
            assert!(l.of_pcr(7).any(|e| {
                e.variable()
                    .is_some_and(|(n, d)| n == "SecureBoot" && d == [0])
            }));
            assert!(!l.secure_boot_enabled());
        }
    }

    #[test]
    fn the_real_uki_boot_measures_the_uki_then_its_kernel_into_pcr4() {
        let l = EventLog::parse(include_bytes!(
            "../../../tests/fixtures/attest/ovmf-uki.eventlog"
        ))
        .unwrap();
        let apps: Vec<String> = l
            .of_pcr(4)
            .filter(|e| e.kind == EV_EFI_BOOT_SERVICES_APPLICATION)
            .map(|e| hex::encode(e.sha256.unwrap()))
            .collect();
        assert_eq!(
            apps,
            [
                "41731ae9a5312325b4c06e210b737860ee313cc2331e65afcf31aee609d6e91f",
                "fe1bfd69b8f653dd1d59e42793d7fe96aa4e6644a7cad4bc269510dc41409f7a"
            ]
        );
        let call = l.of_pcr(4).find(|e| e.kind == EV_EFI_ACTION).unwrap();
        assert!(
            call.describe()
                .contains("Calling EFI Application from Boot Option"),
            "{}",
            call.describe()
        );
    }
}
