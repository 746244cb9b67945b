//! The sans-IO packet path around the [`super::core`] decision: datagram bytes, arrival port, boot decision,
//! lease table and clock in; a dropped datagram or the core's outcome out, with the lease changes applied to
//! the table and the metrics counted. [`outgoing`] then turns an outcome into what the socket loop does with
//! it: the journal records to append and the encoded, addressed reply. No sockets, no clock reads, no files:
//! the loop in [`super::socket`] only moves bytes and time, and unit tests and fuzzers call this directly.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::core::{Context, Destination, Note, Outcome, Port, handle};
use super::leases::{Change, LeaseTable, Record};
use super::metrics::{DhcpMetrics, message_type_label};
use super::packet::{self, Malformed};
use crate::netboot::boot::Booter;

/// Result of [`process`]: a dropped datagram, or the core's outcome (already applied to the table).
#[derive(Debug)]
pub enum Processed {
    /// The datagram was not a valid DHCP message; counted, no reply.
    Dropped(Malformed),
    /// The core's decision, already applied to the lease table.
    Handled(Box<Outcome>),
}

/// The packet path without sockets: validate and decode `buf`, decide, apply the lease changes to `table`,
/// count in `metrics`. Never panics, whatever the bytes.
pub fn process(
    buf: &[u8],
    port: Port,
    booter: &Booter,
    table: &mut LeaseTable,
    now: u64,
    metrics: &DhcpMetrics,
) -> Processed {
    let msg = match packet::parse(buf) {
        Ok(m) => m,
        Err(why) => {
            metrics.drop(why);
            return Processed::Dropped(why);
        }
    };
    let ty = msg
        .opts()
        .msg_type()
        .map(message_type_label)
        .unwrap_or("unknown");
    metrics.requests.get_or_create(&[("type", ty)]).inc();
    let outcome = handle(
        &msg,
        &Context {
            booter,
            leases: table,
            now,
            port,
        },
    );
    for c in &outcome.changes {
        table.apply(c);
    }
    if let Some(why) = outcome.ignored {
        metrics.ignore(why);
    }
    Processed::Handled(Box::new(outcome))
}

/// A reply ready for a socket: encoded and addressed.
#[derive(Debug)]
pub struct Outgoing {
    /// The encoded reply.
    pub bytes: Vec<u8>,
    /// The address and port it is sent to.
    pub to: SocketAddr,
    /// Send it from the PXE port (4011) rather than 67.
    pub pxe_port: bool,
    /// The reply's message type (a metric label).
    pub kind: &'static str,
    /// It grants a lease: it must not leave before the lease is on disk.
    pub durable: bool,
    /// Boot events to record once it is sent.
    pub events: Vec<Note>,
}

/// The socket address a reply goes to; `from` is where the request came from.
pub fn address(to: Destination, from: SocketAddr) -> SocketAddr {
    match to {
        Destination::Broadcast => SocketAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
        Destination::Unicast(a) => SocketAddr::from(a),
        Destination::Relay(g) => SocketAddr::from(SocketAddrV4::new(g, 67)),
        Destination::Sender => from,
    }
}

/// What the socket loop does with a handled request that arrived on `port` from `from`: the journal records
/// of its lease changes are appended to `records`, and its reply (if any) comes back encoded and addressed.
pub fn outgoing(
    outcome: Outcome,
    from: SocketAddr,
    port: Port,
    now: u64,
    records: &mut Vec<Record>,
) -> Option<Outgoing> {
    let mut durable = false;
    for c in &outcome.changes {
        if let Some(rec) = c.record(now) {
            records.push(rec);
            durable |= matches!(c, Change::Grant(_));
        }
    }
    let reply = outcome.reply?;
    let kind = reply
        .msg
        .opts()
        .msg_type()
        .map(message_type_label)
        .unwrap_or("other");
    Some(Outgoing {
        bytes: packet::encode(&reply.msg),
        to: address(reply.to, from),
        pxe_port: port == Port::Pxe && reply.to == Destination::Sender,
        kind,
        durable,
        events: outcome.events,
    })
}
