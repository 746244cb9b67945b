//! DHCP leases: the in-memory table the core reads and the records that change it. The records are kept on disk
//! by the lease journal ([`super::journal`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::MacAddr;

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The client's hardware address (DHCP `chaddr`).
    pub mac: MacAddr,
    /// The address it holds.
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub expires: u64,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// An ACK: `mac` holds `ip` until `expires` (Unix seconds). `at` is when it was granted.
    Grant {
        /// The client granted the lease.
        mac: MacAddr,
        /// The address granted.
        ip: Ipv4Addr,
        /// When the lease ends, Unix seconds.
        expires: u64,
        /// When it was granted (or re-written by a compaction), Unix seconds.
        at: u64,
    },
    /// A RELEASE: `mac` gave `ip` back.
    Release {
        /// The client that released it.
        mac: MacAddr,
        /// The address given back.
        ip: Ipv4Addr,
        /// When the RELEASE arrived, Unix seconds.
        at: u64,
    },
    /// A DECLINE: `ip` is in use by someone else on the wire; not handed out until `until`.
    Decline {
        /// The client that declined; all zeros in a line written by compaction.
        mac: MacAddr,
        /// The address the client found in use.
        ip: Ipv4Addr,
        /// Until when the address is not handed out, Unix seconds.
        until: u64,
        /// When the DECLINE arrived (or the compaction ran), Unix seconds.
        at: u64,
    },
}

/// A change the core asks for. `Offer` and `DropOffer` live in memory only; the others are journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Reserve a pool address for an OFFER until `until`.
    Offer {
        /// The client offered the address.
        mac: MacAddr,
        /// The pool address reserved for it.
        ip: Ipv4Addr,
        /// When the reservation lapses, Unix seconds.
        until: u64,
    },
    /// The client chose another server: forget its offer.
    DropOffer {
        /// The client whose offer is withdrawn.
        mac: MacAddr,
    },
    /// An ACK.
    Grant(Lease),
    /// A RELEASE: the client gives its address back; applied only if it holds that address.
    Release {
        /// The client releasing.
        mac: MacAddr,
        /// The address released.
        ip: Ipv4Addr,
    },
    /// A DECLINE: the client found the address in use; it is withdrawn from the client and not handed out until
    /// `until`.
    Decline {
        /// The client declining.
        mac: MacAddr,
        /// The address in use.
        ip: Ipv4Addr,
        /// Until when the address is kept out of the pool, Unix seconds.
        until: u64,
    },
}

impl Change {
    /// The journal line for a durable change.
    pub fn record(&self, now: u64) -> Option<Record> {
        match self {
            Change::Offer { .. } | Change::DropOffer { .. } => None,
            Change::Grant(l) => Some(Record::Grant {
                mac: l.mac,
                ip: l.ip,
                expires: l.expires,
                at: now,
            }),
            Change::Release { mac, ip } => Some(Record::Release {
                mac: *mac,
                ip: *ip,
                at: now,
            }),
            Change::Decline { mac, ip, until } => Some(Record::Decline {
                mac: *mac,
                ip: *ip,
                until: *until,
                at: now,
            }),
        }
    }
}

/// Leases, outstanding offers and declined addresses.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    offers: HashMap<MacAddr, (Ipv4Addr, u64)>,
    offered_ips: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Where the next pool scan starts (amortised O(1) allocation).
    pub cursor: u32,
    /// No pool address is handed out while set: replicas on a shared state disagree about how the unknown
    /// pools are split (`netboot::replicas::pool_conflicts`), so an address could go to two machines.
    pub pool_paused: bool,
}

impl LeaseTable {
    /// The lease of a MAC, expired or not.
    pub fn lease(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// The address offered to a MAC, if the offer is still open at `now`.
    pub fn offer(&self, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        self.offers
            .get(&mac)
            .filter(|(_, until)| *until > now)
            .map(|(ip, _)| *ip)
    }

    /// Who holds or was offered `ip` at `now` (a declined address is held by nobody in particular: `None`
    /// but [`LeaseTable::is_declined`]).
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<MacAddr> {
        if let Some(mac) = self.by_ip.get(&ip)
            && self.by_mac.get(mac).is_some_and(|l| l.expires > now)
        {
            return Some(*mac);
        }
        self.offered_ips
            .get(&ip)
            .filter(|mac| self.offer(**mac, now) == Some(ip))
            .copied()
    }

    /// Whether `ip` was declined by a client and is still kept out of the pool at `now` (Unix seconds).
    pub fn is_declined(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.declined.get(&ip).is_some_and(|until| *until > now)
    }

    /// Addresses kept out of use by DECLINEs at `now` (expired ones count until [`LeaseTable::prune`]).
    pub fn declined(&self, now: u64) -> usize {
        self.declined.values().filter(|until| **until > now).count()
    }

    /// Open offers and DECLINEs held in memory, expired or not (what [`LeaseTable::prune`] bounds).
    pub fn held(&self) -> (usize, usize) {
        (self.offers.len(), self.declined.len())
    }

    /// Forgets offers and DECLINEs that ended by `now`; the socket loop calls it every second.
    pub fn prune(&mut self, now: u64) {
        let stale: Vec<MacAddr> = self
            .offers
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(mac, _)| *mac)
            .collect();
        for mac in stale {
            self.remove_offer(mac);
        }
        self.declined.retain(|_, until| *until > now);
    }

    /// Every lease, in no particular order.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// Leases not expired at `now`.
    pub fn live(&self, now: u64) -> usize {
        self.by_mac.values().filter(|l| l.expires > now).count()
    }

    fn remove_lease(&mut self, mac: MacAddr) {
        if let Some(old) = self.by_mac.remove(&mac)
            && self.by_ip.get(&old.ip) == Some(&mac)
        {
            self.by_ip.remove(&old.ip);
        }
    }

    fn remove_offer(&mut self, mac: MacAddr) {
        if let Some((ip, _)) = self.offers.remove(&mac)
            && self.offered_ips.get(&ip) == Some(&mac)
        {
            self.offered_ips.remove(&ip);
        }
    }

    /// Applies a change from the core.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Offer { mac, ip, until } => {
                self.remove_offer(*mac);
                self.offers.insert(*mac, (*ip, *until));
                self.offered_ips.insert(*ip, *mac);
                self.cursor = u32::from(*ip).wrapping_add(1);
            }
            Change::DropOffer { mac } => self.remove_offer(*mac),
            Change::Grant(lease) => {
                self.remove_offer(lease.mac);
                self.remove_lease(lease.mac);
                // An address belongs to one MAC: a grant takes it from any previous holder.
                if let Some(prev) = self.by_ip.get(&lease.ip).copied() {
                    self.by_mac.remove(&prev);
                }
                self.by_ip.insert(lease.ip, lease.mac);
                self.by_mac.insert(lease.mac, lease.clone());
            }
            Change::Release { mac, ip } => {
                if self.by_mac.get(mac).is_some_and(|l| l.ip == *ip) {
                    self.remove_lease(*mac);
                }
            }
            Change::Decline { mac, ip, until } => {
                if self.by_mac.get(mac).is_some_and(|l| l.ip == *ip) {
                    self.remove_lease(*mac);
                }
                self.remove_offer(*mac);
                self.declined.insert(*ip, *until);
            }
        }
    }

    /// Replays a journal record.
    pub fn replay(&mut self, rec: &Record) {
        match rec {
            Record::Grant {
                mac, ip, expires, ..
            } => self.apply(&Change::Grant(Lease {
                mac: *mac,
                ip: *ip,
                expires: *expires,
            })),
            Record::Release { mac, ip, .. } => self.apply(&Change::Release { mac: *mac, ip: *ip }),
            Record::Decline { mac, ip, until, .. } => self.apply(&Change::Decline {
                mac: *mac,
                ip: *ip,
                until: *until,
            }),
        }
    }

    /// The records that rebuild this table's live state (for compaction), in no particular order: the journal
    /// sorts them by address as it writes them, off the ACK path.
    pub(super) fn snapshot(&self, now: u64) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .by_mac
            .values()
            .filter(|l| l.expires > now)
            .map(|l| Record::Grant {
                mac: l.mac,
                ip: l.ip,
                expires: l.expires,
                at: now,
            })
            .collect();
        out.extend(
            self.declined
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(ip, until)| Record::Decline {
                    mac: MacAddr([0; 6]),
                    ip: *ip,
                    until: *until,
                    at: now,
                }),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn grant_takes_address_from_previous_holder_and_release_frees() {
        let mut t = LeaseTable::default();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        t.apply(&Change::Grant(Lease {
            mac: mac(1),
            ip,
            expires: 100,
        }));
        t.apply(&Change::Grant(Lease {
            mac: mac(2),
            ip,
            expires: 100,
        }));
        assert!(t.lease(mac(1)).is_none());
        assert_eq!(t.holder(ip, 0), Some(mac(2)));
        t.apply(&Change::Release { mac: mac(2), ip });
        assert_eq!(t.holder(ip, 0), None);
    }

    #[test]
    fn prune_forgets_ended_offers_and_declines() {
        let mut t = LeaseTable::default();
        let ip = |n| Ipv4Addr::new(10, 0, 0, n);
        t.apply(&Change::Offer {
            mac: mac(1),
            ip: ip(1),
            until: 100,
        });
        t.apply(&Change::Offer {
            mac: mac(2),
            ip: ip(2),
            until: 300,
        });
        t.apply(&Change::Decline {
            mac: mac(3),
            ip: ip(3),
            until: 100,
        });
        assert_eq!(t.held(), (2, 1));
        assert_eq!(t.declined(50), 1);
        t.prune(100);
        assert_eq!(t.held(), (1, 0));
        assert_eq!(t.offer(mac(2), 100), Some(ip(2)));
        assert_eq!(t.holder(ip(1), 0), None);
    }
}
