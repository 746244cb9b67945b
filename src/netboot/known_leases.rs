//! The DHCP leases this server has acknowledged, as the other protocols see them: which address a MAC holds
//! now, and which MAC holds an address. The DHCP journal thread fills it from the records it has made durable
//! (a lease counts from the moment its ACK may go out, never before its journal line is on disk); the HTTP side
//! reads it to accept a node's unsigned reports from its current lease as well as from its inventory address
//! (`pki::report_auth::NodeFacts::lease`), and [`super::peers`] to name the machine behind an address.
//!
//! Bounded like the lease table it mirrors (one entry per MAC holding an address of the inventory or the
//! pool); an ended lease stops counting at once and is dropped on the next grant of its address or MAC.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::RwLock;

use super::dhcp::leases::{Lease, Record};
use crate::config::MacAddr;

#[derive(Debug, Default)]
struct Table {
    by_mac: HashMap<MacAddr, (Ipv4Addr, u64)>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
}

/// Acknowledged DHCP leases (see the module documentation). Empty in proxy mode (the other DHCP server holds
/// the leases) and when the DHCP server does not run.
#[derive(Debug, Default)]
pub struct KnownLeases(RwLock<Table>);

impl KnownLeases {
    /// Replaces the whole view with `leases` (the table loaded from the journal at start).
    pub fn load<'a>(&self, leases: impl IntoIterator<Item = &'a Lease>) {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        *t = Table::default();
        for l in leases {
            grant(&mut t, l.mac, l.ip, l.expires);
        }
    }

    /// Applies one durable journal record: a grant gives `mac` the address (taking it from any previous
    /// holder); a release or a decline withdraws it if `mac` holds that address.
    pub fn replay(&self, rec: &Record) {
        let mut t = self.0.write().unwrap_or_else(|p| p.into_inner());
        match *rec {
            Record::Grant {
                mac, ip, expires, ..
            } => grant(&mut t, mac, ip, expires),
            Record::Release { mac, ip, .. } | Record::Decline { mac, ip, .. } => {
                if t.by_mac.get(&mac).is_some_and(|(held, _)| *held == ip) {
                    t.by_mac.remove(&mac);
                    t.by_ip.remove(&ip);
                }
            }
        }
    }

    /// The address `mac` holds at `now` (Unix seconds): its lease, if it has not ended.
    pub fn address_of(&self, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let t = self.0.read().unwrap_or_else(|p| p.into_inner());
        t.by_mac
            .get(&mac)
            .filter(|(_, expires)| *expires > now)
            .map(|(ip, _)| *ip)
    }

    /// The MAC holding `ip` at `now` (Unix seconds), if a lease that has not ended gives it that address.
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<MacAddr> {
        let t = self.0.read().unwrap_or_else(|p| p.into_inner());
        t.by_ip
            .get(&ip)
            .copied()
            .filter(|mac| t.by_mac.get(mac).is_some_and(|(_, e)| *e > now))
    }
}

fn grant(t: &mut Table, mac: MacAddr, ip: Ipv4Addr, expires: u64) {
    if let Some((old, _)) = t.by_mac.insert(mac, (ip, expires))
        && old != ip
        && t.by_ip.get(&old) == Some(&mac)
    {
        t.by_ip.remove(&old);
    }
    // An address belongs to one MAC: a grant takes it from any previous holder.
    if let Some(prev) = t.by_ip.insert(ip, mac)
        && prev != mac
    {
        t.by_mac.remove(&prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn granted(m: &str, i: &str, expires: u64) -> Record {
        Record::Grant {
            mac: mac(m),
            ip: ip(i),
            expires,
            at: NOW,
        }
    }

    #[test]
    fn a_lease_counts_until_it_ends_is_released_declined_or_taken() {
        let k = KnownLeases::default();
        let (w1, w2) = ("52:54:00:77:00:21", "52:54:00:77:00:22");
        assert_eq!(k.address_of(mac(w1), NOW), None, "nothing granted yet");
        k.replay(&granted(w1, "10.77.0.150", NOW + 60));
        assert_eq!(k.address_of(mac(w1), NOW), Some(ip("10.77.0.150")));
        assert_eq!(k.holder(ip("10.77.0.150"), NOW), Some(mac(w1)));
        assert_eq!(
            k.address_of(mac(w1), NOW + 60),
            None,
            "an ended lease gives no address"
        );
        assert_eq!(k.holder(ip("10.77.0.150"), NOW + 60), None);
        // A renewal at another address moves it.
        k.replay(&granted(w1, "10.77.0.151", NOW + 600));
        assert_eq!(k.address_of(mac(w1), NOW), Some(ip("10.77.0.151")));
        assert_eq!(k.holder(ip("10.77.0.150"), NOW), None);
        // A release of an address it does not hold changes nothing; of its own, withdraws it.
        k.replay(&Record::Release {
            mac: mac(w1),
            ip: ip("10.77.0.150"),
            at: NOW,
        });
        assert_eq!(k.address_of(mac(w1), NOW), Some(ip("10.77.0.151")));
        k.replay(&Record::Release {
            mac: mac(w1),
            ip: ip("10.77.0.151"),
            at: NOW,
        });
        assert_eq!(k.address_of(mac(w1), NOW), None);
        // A grant of the same address to another MAC takes it from the first.
        k.replay(&granted(w1, "10.77.0.152", NOW + 600));
        k.replay(&granted(w2, "10.77.0.152", NOW + 600));
        assert_eq!(k.address_of(mac(w1), NOW), None);
        assert_eq!(k.holder(ip("10.77.0.152"), NOW), Some(mac(w2)));
        // A decline withdraws the address from the decliner.
        k.replay(&Record::Decline {
            mac: mac(w2),
            ip: ip("10.77.0.152"),
            until: NOW + 600,
            at: NOW,
        });
        assert_eq!(k.address_of(mac(w2), NOW), None);
        assert_eq!(k.holder(ip("10.77.0.152"), NOW), None);
        // Loading replaces everything.
        let l = Lease {
            mac: mac(w1),
            ip: ip("10.77.0.160"),
            expires: NOW + 1,
        };
        k.replay(&granted(w2, "10.77.0.153", NOW + 600));
        k.load([&l]);
        assert_eq!(k.address_of(mac(w1), NOW), Some(ip("10.77.0.160")));
        assert_eq!(k.address_of(mac(w2), NOW), None);
    }
}
