//! Outstanding attestation challenges: one per inventory machine (a new challenge replaces the old one), at
//! most [`MAX_SESSIONS`] in all, each valid for [`TTL_MS`] and used once. Held in memory: a server restart
//! forgets them, and nodes simply ask again.

use std::collections::BTreeMap;

use crate::config::MacAddr;

/// How long a challenge may be answered.
pub const TTL_MS: u64 = 120_000;
/// The most challenges outstanding at once (beyond it the oldest is dropped).
pub const MAX_SESSIONS: usize = 256;

/// One challenge the server gave.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// Its id (random, hex), which the node sends back.
    pub id: String,
    /// The machine it was given to.
    pub mac: MacAddr,
    /// The EK it was made for (`TPMT_PUBLIC`).
    pub ek: Vec<u8>,
    /// The AK the credential names (`TPMT_PUBLIC`).
    pub ak: Vec<u8>,
    /// The nonce the quote must carry.
    pub nonce: [u8; 32],
    /// The credential secret (what the node's TPM recovers).
    pub credential: [u8; 32],
    /// When it was made, ms since the epoch.
    pub at_ms: u64,
}

/// Why a proof names no usable challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No such challenge: never given, already used, replaced by a newer one or dropped.
    Unknown,
    /// Given, but older than [`TTL_MS`].
    Expired,
}

/// The challenges outstanding.
#[derive(Debug, Default)]
pub struct Sessions {
    by_mac: BTreeMap<MacAddr, Challenge>,
}

impl Sessions {
    /// Adds `c`, replacing the machine's earlier challenge; drops expired ones and, beyond the cap, the oldest.
    pub fn insert(&mut self, c: Challenge) {
        let now = c.at_ms;
        self.by_mac
            .retain(|_, s| now.saturating_sub(s.at_ms) < TTL_MS);
        self.by_mac.insert(c.mac, c);
        while self.by_mac.len() > MAX_SESSIONS {
            let oldest = self
                .by_mac
                .iter()
                .min_by_key(|(_, s)| s.at_ms)
                .map(|(m, _)| *m);
            match oldest {
                Some(m) => self.by_mac.remove(&m),
                None => break,
            };
        }
    }

    /// Takes the challenge `id` of `mac` (used once, whatever the outcome).
    pub fn take(&mut self, mac: MacAddr, id: &str, now_ms: u64) -> Result<Challenge, Missing> {
        match self.by_mac.get(&mac) {
            Some(c) if c.id == id => {
                let c = self.by_mac.remove(&mac).ok_or(Missing::Unknown)?;
                if now_ms.saturating_sub(c.at_ms) >= TTL_MS {
                    Err(Missing::Expired)
                } else {
                    Ok(c)
                }
            }
            _ => Err(Missing::Unknown),
        }
    }

    /// How many are outstanding.
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether none is outstanding.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(mac: u8, id: &str, at: u64) -> Challenge {
        Challenge {
            id: id.into(),
            mac: format!("52:54:00:00:00:{mac:02x}").parse().unwrap(),
            ek: vec![],
            ak: vec![],
            nonce: [mac; 32],
            credential: [0; 32],
            at_ms: at,
        }
    }

    #[test]
    fn a_challenge_is_used_once_and_expires() {
        let mut s = Sessions::default();
        s.insert(ch(1, "a", 1000));
        let mac = ch(1, "a", 0).mac;
        assert_eq!(s.take(mac, "b", 1001).unwrap_err(), Missing::Unknown);
        assert!(s.take(mac, "a", 1001).is_ok());
        assert_eq!(s.take(mac, "a", 1002).unwrap_err(), Missing::Unknown);
        s.insert(ch(1, "c", 1000));
        assert_eq!(
            s.take(mac, "c", 1000 + TTL_MS).unwrap_err(),
            Missing::Expired
        );
    }

    #[test]
    fn a_new_challenge_replaces_the_old_and_the_total_is_capped() {
        let mut s = Sessions::default();
        s.insert(ch(1, "old", 10));
        s.insert(ch(1, "new", 20));
        let mac = ch(1, "", 0).mac;
        assert_eq!(s.take(mac, "old", 30).unwrap_err(), Missing::Unknown);
        for i in 0..=255u8 {
            s.insert(ch(i, "x", 100 + i as u64));
        }
        s.insert(Challenge {
            mac: "52:54:00:00:01:00".parse().unwrap(),
            ..ch(0, "y", 1000)
        });
        assert_eq!(s.len(), MAX_SESSIONS);
        // The oldest (machine 0 at 100) was dropped.
        assert_eq!(
            s.take(ch(0, "", 0).mac, "x", 1001).unwrap_err(),
            Missing::Unknown
        );
    }
}
