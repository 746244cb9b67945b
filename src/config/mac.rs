//! A 48-bit Ethernet MAC address, written `52:54:00:12:34:56` (also accepted: `-` separators, any case).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet hardware address. Displayed lower-case with colons, the form iPXE's `${net0/mac}` uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The `BOOTIF=` form pxelinux and Debian's initramfs understand: `01-52-54-00-12-34-56`.
    pub fn bootif(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("01-{}", hex.join("-"))
    }

    /// Lower-case hex with dashes, used in file names.
    pub fn dashed(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address; expected six hex pairs such as 52:54:00:12:34:56")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(BadMac(s.to_string()));
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(BadMac(s.to_string()));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| BadMac(s.to_string()))?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_separators_and_prints_lower_case() {
        let a: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        let b: MacAddr = "52-54-00-ab-CD-01".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(a.bootif(), "01-52-54-00-ab-cd-01");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54:00:ab:cd:zz",
            "525:4:00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} should be rejected");
        }
    }
}
