//! The sans-IO decision on a datagram that reaches the TFTP listening port: (datagram, peer, allowlist, the
//! peers with a transfer in flight) → start a transfer, refuse with a TFTP error, ignore a repeated request,
//! or drop. No sockets, no files, no clock: the loop in [`super`] sends what this decides and spawns the
//! transfer ([`super::transfer`] negotiates the options and runs it).
//!
//! - RRQ for an allowlisted name from a peer with no transfer in flight → [`Decision::Start`], and the peer
//!   is now in flight (the loop calls [`finished`] when its transfer ends).
//! - RRQ for a name not on the list → ERROR 1 (file not found); a `..` or absolute path → ERROR 2 (access
//!   violation). WRQ → ERROR 2 (the server is read-only).
//! - RRQ from a peer whose transfer is in flight (the client repeated its request while our first answer is
//!   on its way) → [`Decision::Repeated`]: one transfer per client port.
//! - Any other packet, or bytes that are not TFTP → dropped.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::packet::{ErrorCode, Packet, ParseError, Request, error_packet};
use crate::netboot::bootfiles::{self, Refusal};

/// Client addresses (IP and port) with a transfer in progress.
pub type InFlight = HashSet<SocketAddr>;

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
}

impl Refused {
    /// The TFTP error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self.why {
            Why::Name(Refusal::NotAllowed) => ErrorCode::FileNotFound,
            Why::Name(_) | Why::ReadOnly => ErrorCode::AccessViolation,
        }
    }

    /// The error message sent to the client.
    pub fn message(&self) -> String {
        match self.why {
            Why::ReadOnly => "read-only server".to_string(),
            Why::Name(r) => r.to_string(),
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
        }
    }
}

/// Decides what a datagram from `peer` on the listening port leads to. `allow` is the boot loader allowlist;
/// a started transfer adds `peer` to `in_flight`.
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
            Ok(name) if !in_flight.insert(peer) => Decision::Repeated { name },
            Ok(name) => Decision::Start(Accepted { name, request }),
        },
        Ok(Packet::Wrq(request)) => Decision::Refuse(Refused {
            filename: request.filename,
            why: Why::ReadOnly,
        }),
        Ok(other) => Decision::Unexpected(other),
        Err(e) => Decision::Malformed(e),
    }
}

/// The transfer to `peer` ended (however it ended): a new request from it starts a new transfer.
pub fn finished(in_flight: &mut InFlight, peer: SocketAddr) {
    in_flight.remove(&peer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netboot::tftp::packet::Mode;

    const ALLOW: &[&str] = &["snponly.efi", "undionly.kpxe"];

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
        let mut fl = InFlight::new();
        let datagram = rrq("snponly.efi");
        let d = decide(&datagram, peer(2000), ALLOW, &mut fl);
        let Decision::Start(Accepted { name, request }) = d else {
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
        let mut fl = InFlight::new();
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
        let mut fl = InFlight::new();
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
        let mut fl = InFlight::new();
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
        let mut fl = InFlight::new();
        assert!(matches!(
            decide(&rrq("snponly.efi"), peer(2000), ALLOW, &mut fl),
            Decision::Start(_)
        ));
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
        finished(&mut fl, peer(2000));
        assert!(matches!(
            decide(&rrq("snponly.efi"), peer(2000), ALLOW, &mut fl),
            Decision::Start(_)
        ));
    }

    #[test]
    fn non_requests_and_malformed_datagrams_are_dropped() {
        let mut fl = InFlight::new();
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
}
