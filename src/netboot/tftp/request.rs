//! The sans-IO decision on a datagram that reaches the TFTP listening port: (datagram, peer, allowlist, the
//! transfers in flight and their caps) → start a transfer, refuse with a TFTP error, ignore a repeated
//! request, or drop. No sockets, no files, no clock: the loop in [`super`] sends what this decides and spawns
//! the transfer ([`super::transfer`] negotiates the options and runs it).
//!
//! - RRQ for an allowlisted name from a peer with no transfer in flight → [`Decision::Start`], and the peer
//!   is now in flight (the loop calls [`finished`] when its transfer ends, [`confirmed`] when the client
//!   acknowledges for the first time).
//! - RRQ for a name not on the list → ERROR 1 (file not found); a `..` or absolute path → ERROR 2 (access
//!   violation). WRQ → ERROR 2 (the server is read-only).
//! - RRQ from a peer whose transfer is in flight (the client repeated its request while our first answer is
//!   on its way) → [`Decision::Repeated`]: one transfer per client port.
//! - RRQ while the client's address already has [`Caps::per_address`] transfers in flight → ERROR 0 "busy"
//!   ([`Busy::PerAddress`]). When [`Caps::transfers`] are in flight, the oldest transfer that no client has
//!   acknowledged yet (a spoofed or lost request) makes room ([`Accepted::evict`]); when every transfer in
//!   flight is acknowledged → ERROR 0 "busy" ([`Busy::Transfers`]). A flood of requests can therefore never
//!   keep out a client that answers.
//! - Any other packet, or bytes that are not TFTP → dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::packet::{ErrorCode, Packet, ParseError, Request, error_packet};
use crate::netboot::bootfiles::{self, Refusal};

/// How many transfers may be in flight (`[limits.tftp]` in `cluster.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// All clients together.
    pub transfers: usize,
    /// From one client address (all its ports).
    pub per_address: usize,
}

impl From<&crate::config::TftpLimits> for Caps {
    fn from(l: &crate::config::TftpLimits) -> Self {
        Caps {
            transfers: l.transfers.max(1),
            per_address: l.per_address.max(1),
        }
    }
}

/// One transfer in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    ticket: u64,
    confirmed: bool,
}

/// The transfers in flight: by client address and port (RFC 1350 TID), counted per address, with the ones no
/// client has acknowledged yet in start order.
#[derive(Debug, Clone)]
pub struct InFlight {
    caps: Caps,
    peers: HashMap<SocketAddr, Slot>,
    per_ip: HashMap<IpAddr, usize>,
    /// Unacknowledged transfers by ticket (= start order).
    unconfirmed: BTreeMap<u64, SocketAddr>,
    next: u64,
}

impl InFlight {
    /// Nothing in flight, with these caps.
    pub fn new(caps: Caps) -> Self {
        InFlight {
            caps,
            peers: HashMap::new(),
            per_ip: HashMap::new(),
            unconfirmed: BTreeMap::new(),
            next: 0,
        }
    }

    /// The caps (changed by [`InFlight::set_caps`] on a configuration reload; transfers in flight stay).
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// New caps for the requests that follow.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// Transfers in flight.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Transfers in flight that no client has acknowledged yet.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// Whether `peer` has a transfer in flight.
    pub fn contains(&self, peer: &SocketAddr) -> bool {
        self.peers.contains_key(peer)
    }

    /// Transfers in flight from the address `ip`.
    pub fn from_address(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    fn insert(&mut self, peer: SocketAddr) -> u64 {
        let ticket = self.next;
        self.next += 1;
        self.peers.insert(
            peer,
            Slot {
                ticket,
                confirmed: false,
            },
        );
        *self.per_ip.entry(peer.ip()).or_default() += 1;
        self.unconfirmed.insert(ticket, peer);
        ticket
    }

    fn remove(&mut self, peer: SocketAddr) {
        let Some(slot) = self.peers.remove(&peer) else {
            return;
        };
        if !slot.confirmed {
            self.unconfirmed.remove(&slot.ticket);
        }
        if let Some(n) = self.per_ip.get_mut(&peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&peer.ip());
            }
        }
    }
}

/// What to do with one datagram on the listening port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Start a transfer to the peer (now in flight).
    Start(Accepted),
    /// Answer with an ERROR and start nothing.
    Refuse(Refused),
    /// The peer repeated its request while its transfer is in flight: ignore it.
    Repeated {
        /// The boot loader the in-flight transfer sends.
        name: &'static str,
    },
    /// A TFTP packet other than a request (DATA, ACK, ERROR, OACK): drop it.
    Unexpected(Packet<'a>),
    /// Not a TFTP packet: drop it.
    Malformed(ParseError),
}

/// An accepted read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The allowlisted boot loader to send.
    pub name: &'static str,
    /// The request as the client sent it (its options are negotiated by [`super::transfer`]).
    pub request: Request,
    /// Identifies this transfer in [`confirmed`] and [`finished`] (a later transfer to the same port has another).
    pub ticket: u64,
    /// An unacknowledged transfer that made room for this one: the loop ends it (it is no longer in flight).
    pub evict: Option<(SocketAddr, u64)>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The file name the client asked for.
    pub filename: String,
    /// Why, which also picks the TFTP error code.
    pub why: Why,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A write request: this server is read-only.
    ReadOnly,
    /// A read request for a name the allowlist refuses.
    Name(Refusal),
    /// A cap on transfers in flight is reached.
    Busy(Busy),
}

/// Which cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The client's address has [`Caps::per_address`] transfers in flight.
    PerAddress,
    /// [`Caps::transfers`] acknowledged transfers are in flight.
    Transfers,
}

impl Busy {
    /// The `reason` label of `tftp_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Busy::PerAddress => "per_address",
            Busy::Transfers => "transfers",
        }
    }
}

impl Refused {
    /// The TFTP error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self.why {
            Why::Name(Refusal::NotAllowed) => ErrorCode::FileNotFound,
            Why::Name(_) | Why::ReadOnly => ErrorCode::AccessViolation,
            Why::Busy(_) => ErrorCode::NotDefined,
        }
    }

    /// The error message sent to the client.
    pub fn message(&self) -> String {
        match self.why {
            Why::ReadOnly => "read-only server".to_string(),
            Why::Name(r) => r.to_string(),
            Why::Busy(Busy::PerAddress) => {
                "too many transfers from your address; try again when one ends".to_string()
            }
            Why::Busy(Busy::Transfers) => "server busy; try again in a moment".to_string(),
        }
    }

    /// The ERROR packet to send.
    pub fn packet(&self) -> Vec<u8> {
        error_packet(self.code(), &self.message())
    }

    /// The `kind` label of the error metric.
    pub fn kind(&self) -> &'static str {
        match self.why {
            Why::ReadOnly => "write_refused",
            Why::Name(r) => r.kind(),
            Why::Busy(_) => "busy",
        }
    }
}

/// Decides what a datagram from `peer` on the listening port leads to. `allow` is the boot loader allowlist;
/// a started transfer adds `peer` to `in_flight` (and may take an unacknowledged transfer out of it).
pub fn decide<'a>(
    datagram: &'a [u8],
    peer: SocketAddr,
    allow: &[&'static str],
    in_flight: &mut InFlight,
) -> Decision<'a> {
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(request)) => match bootfiles::check_name(&request.filename, allow) {
            Err(r) => Decision::Refuse(Refused {
                filename: request.filename,
                why: Why::Name(r),
            }),
            Ok(name) if in_flight.contains(&peer) => Decision::Repeated { name },
            Ok(_) if in_flight.from_address(peer.ip()) >= in_flight.caps.per_address => {
                Decision::Refuse(Refused {
                    filename: request.filename,
                    why: Why::Busy(Busy::PerAddress),
                })
            }
            Ok(name) => {
                let mut evict = None;
                if in_flight.len() >= in_flight.caps.transfers {
                    match in_flight.unconfirmed.first_key_value() {
                        Some((ticket, old)) => {
                            let (ticket, old) = (*ticket, *old);
                            in_flight.remove(old);
                            evict = Some((old, ticket));
                        }
                        None => {
                            return Decision::Refuse(Refused {
                                filename: request.filename,
                                why: Why::Busy(Busy::Transfers),
                            });
                        }
                    }
                }
                let ticket = in_flight.insert(peer);
                Decision::Start(Accepted {
                    name,
                    request,
                    ticket,
                    evict,
                })
            }
        },
        Ok(Packet::Wrq(request)) => Decision::Refuse(Refused {
            filename: request.filename,
            why: Why::ReadOnly,
        }),
        Ok(other) => Decision::Unexpected(other),
        Err(e) => Decision::Malformed(e),
    }
}

/// The client of transfer `ticket` acknowledged for the first time: the transfer is real and no longer the
/// first to make room under [`Caps::transfers`].
pub fn confirmed(in_flight: &mut InFlight, peer: SocketAddr, ticket: u64) {
    if let Some(slot) = in_flight.peers.get_mut(&peer)
        && slot.ticket == ticket
        && !slot.confirmed
    {
        slot.confirmed = true;
        in_flight.unconfirmed.remove(&ticket);
    }
}

/// Transfer `ticket` to `peer` ended (however it ended): a new request from it starts a new transfer. A
/// ticket that is no longer the peer's (evicted, then a new request) changes nothing.
pub fn finished(in_flight: &mut InFlight, peer: SocketAddr, ticket: u64) {
    if in_flight
        .peers
        .get(&peer)
        .is_some_and(|s| s.ticket == ticket)
    {
        in_flight.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netboot::tftp::packet::Mode;

    const ALLOW: &[&str] = &["snponly.efi", "undionly.kpxe"];
    const CAPS: Caps = Caps {
        transfers: 64,
        per_address: 8,
    };

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, 11], port))
    }

    fn rrq(name: &str) -> Vec<u8> {
        format!("\0\x01{name}\0octet\0blksize\x001468\0").into_bytes()
    }

    fn error_of(bytes: &[u8]) -> (u16, String) {
        match Packet::parse(bytes).unwrap() {
            Packet::Error { code, message } => (code, message),
            p => panic!("not an ERROR: {p:?}"),
        }
    }

    #[test]
    fn allowed_request_starts_a_transfer_and_marks_the_peer_in_flight() {
        let mut fl = InFlight::new(CAPS);
        let datagram = rrq("snponly.efi");
        let d = decide(&datagram, peer(2000), ALLOW, &mut fl);
        let Decision::Start(Accepted { name, request, .. }) = d else {
            panic!("{d:?}")
        };
        assert_eq!(name, "snponly.efi");
        assert_eq!(request.mode, Mode::Octet);
        assert_eq!(
            request.options,
            vec![("blksize".to_string(), "1468".to_string())]
        );
        assert!(fl.contains(&peer(2000)));
    }

    #[test]
    fn name_not_on_the_allowlist_is_file_not_found() {
        let mut fl = InFlight::new(CAPS);
        let datagram = rrq("pxelinux.0");
        let d = decide(&datagram, peer(2000), ALLOW, &mut fl);
        let Decision::Refuse(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.filename, "pxelinux.0");
        assert_eq!(r.code(), ErrorCode::FileNotFound);
        assert_eq!(r.kind(), "not_allowed");
        assert_eq!(error_of(&r.packet()), (1, "file not served".to_string()));
        assert!(fl.is_empty(), "a refusal puts nothing in flight");
    }

    #[test]
    fn traversal_and_absolute_paths_are_access_violations() {
        let mut fl = InFlight::new(CAPS);
        for (name, kind, msg) in [
            ("../etc/passwd", "traversal", "path traversal refused"),
            ("/etc/passwd", "absolute", "absolute paths are refused"),
            ("\\snponly.efi", "absolute", "absolute paths are refused"),
        ] {
            let datagram = rrq(name);
            let d = decide(&datagram, peer(2000), ALLOW, &mut fl);
            let Decision::Refuse(r) = d else {
                panic!("{name}: {d:?}")
            };
            assert_eq!(r.code(), ErrorCode::AccessViolation, "{name}");
            assert_eq!(r.kind(), kind, "{name}");
            assert_eq!(error_of(&r.packet()), (2, msg.to_string()), "{name}");
        }
        assert!(fl.is_empty());
    }

    #[test]
    fn write_request_is_refused_as_read_only() {
        let mut fl = InFlight::new(CAPS);
        let d = decide(b"\0\x02snponly.efi\0octet\0", peer(2000), ALLOW, &mut fl);
        let Decision::Refuse(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.why, Why::ReadOnly);
        assert_eq!(r.kind(), "write_refused");
        assert_eq!(error_of(&r.packet()), (2, "read-only server".to_string()));
        assert!(fl.is_empty());
    }

    #[test]
    fn repeated_request_from_a_peer_in_flight_is_ignored_until_it_finishes() {
        let mut fl = InFlight::new(CAPS);
        let Decision::Start(first) = decide(&rrq("snponly.efi"), peer(2000), ALLOW, &mut fl) else {
            panic!()
        };
        assert_eq!(
            decide(&rrq("undionly.kpxe"), peer(2000), ALLOW, &mut fl),
            Decision::Repeated {
                name: "undionly.kpxe"
            }
        );
        // Another port of the same host is another client (RFC 1350 TIDs).
        assert!(matches!(
            decide(&rrq("snponly.efi"), peer(2001), ALLOW, &mut fl),
            Decision::Start(_)
        ));
        // A refused name is refused even while a transfer is in flight.
        assert!(matches!(
            decide(&rrq("nope"), peer(2000), ALLOW, &mut fl),
            Decision::Refuse(_)
        ));
        finished(&mut fl, peer(2000), first.ticket);
        assert!(matches!(
            decide(&rrq("snponly.efi"), peer(2000), ALLOW, &mut fl),
            Decision::Start(_)
        ));
    }

    #[test]
    fn non_requests_and_malformed_datagrams_are_dropped() {
        let mut fl = InFlight::new(CAPS);
        assert_eq!(
            decide(b"\0\x04\0\x01", peer(2000), ALLOW, &mut fl),
            Decision::Unexpected(Packet::Ack { block: 1 })
        );
        assert!(matches!(
            decide(b"\0\x03\0\x01data", peer(2000), ALLOW, &mut fl),
            Decision::Unexpected(Packet::Data { block: 1, .. })
        ));
        assert_eq!(
            decide(b"\0", peer(2000), ALLOW, &mut fl),
            Decision::Malformed(ParseError::TooShort)
        );
        assert_eq!(
            decide(b"\0\x01snponly.efi", peer(2000), ALLOW, &mut fl),
            Decision::Malformed(ParseError::Unterminated)
        );
        assert_eq!(
            decide(b"\0\x09", peer(2000), ALLOW, &mut fl),
            Decision::Malformed(ParseError::UnknownOpcode(9))
        );
        assert!(fl.is_empty());
    }

    fn start(fl: &mut InFlight, p: SocketAddr) -> Accepted {
        match decide(&rrq("undionly.kpxe"), p, ALLOW, fl) {
            Decision::Start(a) => a,
            d => panic!("{p}: {d:?}"),
        }
    }

    fn busy(fl: &mut InFlight, p: SocketAddr) -> Busy {
        match decide(&rrq("undionly.kpxe"), p, ALLOW, fl) {
            Decision::Refuse(Refused {
                why: Why::Busy(b), ..
            }) => b,
            d => panic!("{p}: {d:?}"),
        }
    }

    #[test]
    fn one_address_gets_per_address_transfers_then_busy_and_others_are_unaffected() {
        let mut fl = InFlight::new(Caps {
            transfers: 100,
            per_address: 3,
        });
        let tickets: Vec<u64> = (0..3)
            .map(|i| start(&mut fl, peer(3000 + i)).ticket)
            .collect();
        assert_eq!(busy(&mut fl, peer(3003)), Busy::PerAddress);
        assert_eq!(fl.from_address(peer(1).ip()), 3);
        let other = SocketAddr::from(([10, 77, 0, 12], 2000));
        assert!(start(&mut fl, other).evict.is_none());
        let r = Refused {
            filename: "x".into(),
            why: Why::Busy(Busy::PerAddress),
        };
        assert_eq!(r.kind(), "busy");
        assert_eq!(error_of(&r.packet()).0, 0);
        // A finished transfer frees its place; a stale ticket frees nothing.
        finished(&mut fl, peer(3000), tickets[0] + 1000);
        assert_eq!(busy(&mut fl, peer(3004)), Busy::PerAddress);
        finished(&mut fl, peer(3000), tickets[0]);
        start(&mut fl, peer(3004));
        assert_eq!(fl.len(), 4);
    }

    #[test]
    fn a_full_server_evicts_the_oldest_unacknowledged_transfer_never_an_acknowledged_one() {
        let mut fl = InFlight::new(Caps {
            transfers: 3,
            per_address: 3,
        });
        let ip = |n: u8| SocketAddr::from(([10, 77, 1, n], 2000));
        let a = start(&mut fl, ip(1));
        let b = start(&mut fl, ip(2));
        let c = start(&mut fl, ip(3));
        confirmed(&mut fl, ip(2), b.ticket);
        assert_eq!(fl.unconfirmed(), 2);
        // Full: the oldest unacknowledged (a) makes room.
        let d = start(&mut fl, ip(4));
        assert_eq!(d.evict, Some((ip(1), a.ticket)));
        assert!(!fl.contains(&ip(1)));
        // Its task ends later and reports with its old ticket: nothing changes.
        finished(&mut fl, ip(1), a.ticket);
        assert_eq!(fl.len(), 3);
        confirmed(&mut fl, ip(3), c.ticket);
        confirmed(&mut fl, ip(4), d.ticket);
        assert_eq!(fl.unconfirmed(), 0);
        // Everything acknowledged: a newcomer is refused, nobody is evicted.
        assert_eq!(busy(&mut fl, ip(5)), Busy::Transfers);
        assert_eq!(fl.len(), 3);
        finished(&mut fl, ip(3), c.ticket);
        assert!(start(&mut fl, ip(5)).evict.is_none());
    }
}
