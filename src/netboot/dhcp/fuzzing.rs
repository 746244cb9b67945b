//! Fuzzing of the DHCP packet path without sockets (compiled for tests and with the `fuzzing` feature
//! only; not part of the library's API): boot decisions built from the example `cluster.toml` in full mode,
//! full mode with an unknown pool, and proxy mode with a relay id; and [`run_ops`], which drives
//! [`super::process::process`] with sequences of requests on one lease table, quinn-proto style. Used by the
//! stable in-suite fuzz tests and the cargo-fuzz targets `dhcp_packet` and `dhcp_ops` in `fuzz/`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};

use super::core::Port;
use super::leases::LeaseTable;
use super::metrics::DhcpMetrics;
use super::packet;
use super::process::{Processed, outgoing, process};
use crate::config::MacAddr;
use crate::netboot::boot::Booter;

const EXAMPLE: &str = include_str!("../../../cluster.toml");

/// The example cluster, edited by `edit`, as a boot decision.
pub fn booter_with(edit: impl Fn(String) -> String) -> Booter {
    let src = edit(EXAMPLE.to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cluster = crate::config::load_str(&root.join("cluster.toml"), &src, root)
        .unwrap_or_else(|e| panic!("fuzz fixture config invalid: {e}"));
    Booter::new(Arc::new(cluster), BTreeMap::new())
}

/// Enables a three-address unknown pool (10.77.0.200-202).
pub fn with_pool(s: String) -> String {
    s.replace(
        "# unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }",
        "unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.202\" }",
    )
}

/// Switches to proxy mode.
pub fn proxy_mode(s: String) -> String {
    s.replace("dhcp_mode = \"full\"", "dhcp_mode = \"proxy\"")
}

/// Gives worker-2 the relay id `switch1/port7`.
pub fn with_relay_id(s: String) -> String {
    s.replace(
        "ip = \"10.77.0.22\"",
        "ip = \"10.77.0.22\"\nrelay_id = \"switch1/port7\"",
    )
}

/// Full mode, full mode with a pool, proxy mode with a relay id.
pub fn booters() -> [Booter; 3] {
    [
        booter_with(|s| s),
        booter_with(with_pool),
        booter_with(|s| with_relay_id(proxy_mode(s))),
    ]
}

/// Inventory MAC suffixes of the example cluster (`52:54:00:77:00:xx`), then two unknown machines.
const MACS: [u8; 9] = [0x11, 0x12, 0x13, 0x21, 0x22, 0x31, 0x32, 0x98, 0x99];
/// Addresses a client may ask for: inventory, pool, foreign, another subnet.
const ASKED: [Ipv4Addr; 7] = [
    Ipv4Addr::new(10, 77, 0, 11),
    Ipv4Addr::new(10, 77, 0, 12),
    Ipv4Addr::new(10, 77, 0, 200),
    Ipv4Addr::new(10, 77, 0, 201),
    Ipv4Addr::new(10, 77, 0, 202),
    Ipv4Addr::new(10, 77, 0, 99),
    Ipv4Addr::new(192, 168, 1, 5),
];
/// Client system architectures (option 93): BIOS, EFI IA32, x64, x64 (alt), x64 HTTP, arm64, arm64 HTTP.
const ARCHES: [u16; 7] = [0, 6, 7, 9, 16, 11, 19];
const TYPES: [MessageType; 5] = [
    MessageType::Discover,
    MessageType::Request,
    MessageType::Decline,
    MessageType::Release,
    MessageType::Inform,
];

/// Fuzz bytes, read one at a time; reads past the end give zeros.
type Ops<'a> = std::slice::Iter<'a, u8>;

fn byte(ops: &mut Ops<'_>) -> u8 {
    ops.next().copied().unwrap_or(0)
}

fn pick<T: Copy>(ops: &mut Ops<'_>, xs: &[T]) -> T {
    xs[usize::from(byte(ops)) % xs.len()]
}

/// A DHCP request built from fuzz bytes: type, machine, PXE options, addresses, relay.
fn request(ops: &mut Ops<'_>) -> Vec<u8> {
    let ty = pick(ops, &TYPES);
    let m = pick(ops, &MACS);
    let mac = [0x52, 0x54, 0x00, 0x77, 0x00, m];
    // The machine's own inventory address (52:54:00:77:00:11 has 10.77.0.11), or one of the others.
    let asked = match byte(ops) % 4 {
        0 | 1 => Ipv4Addr::new(10, 77, 0, (m >> 4) * 10 + (m & 0xf)),
        _ => pick(ops, &ASKED),
    };
    let flags = byte(ops);
    let ciaddr = if flags & 0x01 != 0 {
        asked
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let relayed = flags & 0x02 != 0;
    // A relay on the provisioning subnet, or one whose giaddr is in no configured subnet (dropped, counted).
    let giaddr = if relayed && byte(ops) & 2 == 0 {
        Ipv4Addr::new(10, 77, 0, 2)
    } else if relayed {
        Ipv4Addr::new(10, 77, 9, 1)
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let mut m = Message::new_with_id(
        u32::from(byte(ops)),
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        giaddr,
        &mac,
    );
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    if flags & 0x04 != 0 {
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
            pick(ops, &ARCHES),
        )));
    }
    let vendor: &[u8] = match (flags >> 3) & 3 {
        1 => b"PXEClient:Arch:00007:UNDI:003016",
        2 => b"HTTPClient:Arch:00016",
        _ => b"",
    };
    if !vendor.is_empty() {
        o.insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
    }
    if flags & 0x20 != 0 {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    if flags & 0x40 != 0 {
        o.insert(DhcpOption::RequestedIpAddress(asked));
    }
    if flags & 0x80 != 0 {
        let ours = byte(ops) & 1 == 0;
        o.insert(DhcpOption::ServerIdentifier(if ours {
            Ipv4Addr::new(10, 77, 0, 1)
        } else {
            Ipv4Addr::new(10, 77, 0, 254)
        }));
    }
    if relayed {
        let mut info = RelayAgentInformation::default();
        let circuit: &[u8] = if byte(ops) & 1 == 0 {
            b"switch1/port7"
        } else {
            b"switch1/port9"
        };
        info.insert(RelayInfo::AgentCircuitId(circuit.to_vec()));
        o.insert(DhcpOption::RelayAgentInformation(info));
    }
    o.insert(DhcpOption::ParameterRequestList(
        [1u8, 3, 6, 12, 15, 66, 67]
            .iter()
            .map(|c| OptionCode::from(*c))
            .collect(),
    ));
    packet::encode(&m)
}

/// How far runs of [`run_ops`] got, added up (the stable test checks the operations reach every outcome).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// Datagrams dropped as malformed.
    pub dropped: u64,
    /// OFFERs sent.
    pub offers: u64,
    /// ACKs sent.
    pub acks: u64,
    /// NAKs sent.
    pub naks: u64,
    /// Replies that wait for the journal (they grant a lease).
    pub durable: u64,
    /// DECLINEs accepted (journaled).
    pub declines: u64,
}

impl Reached {
    /// Whether the runs got at least `n` of each outcome.
    pub fn at_least(&self, n: u64) -> bool {
        [
            self.dropped,
            self.offers,
            self.acks,
            self.naks,
            self.durable,
        ]
        .iter()
        .all(|c| *c >= n)
    }
}

/// Leases as a sorted list, to compare two tables.
fn lease_list(t: &LeaseTable) -> Vec<(MacAddr, Ipv4Addr, u64)> {
    let mut v: Vec<_> = t.leases().map(|l| (l.mac, l.ip, l.expires)).collect();
    v.sort();
    v
}

/// Runs one fuzz input as a sequence of datagrams through [`process`] and [`outgoing`] on one lease table,
/// as the socket loop would, with the clock moving on. The first byte picks the boot decision of `booters`.
/// Panics if an invariant breaks: a drop not counted, a reply that does not encode and decode, an address held
/// by two machines, a reply waiting for the journal that is no ACK, a table rebuilt from the journal
/// records (as after kill -9) that differs from the live one in its leases, a DECLINE accepted for an address
/// never offered or leased to that MAC, or more declined addresses than `limits.dhcp.declined`. Moving the
/// clock prunes ended offers and DECLINEs, as the socket loop does every second.
pub fn run_ops(data: &[u8], booters: &[Booter; 3], reached: &mut Reached) {
    let mut ops: Ops<'_> = data.iter();
    let booter = &booters[usize::from(byte(&mut ops)) % booters.len()];
    let metrics = DhcpMetrics::default();
    let mut table = LeaseTable::default();
    let mut mirror = LeaseTable::default();
    let mut now: u64 = 1_800_000_000;
    let dropped_before = reached.dropped;
    let from = SocketAddr::from(([10, 77, 0, 50], 68));
    for _ in 0..512 {
        if ops.as_slice().is_empty() {
            break;
        }
        let op = byte(&mut ops);
        let port = if op & 0x80 != 0 {
            Port::Pxe
        } else {
            Port::Dhcp
        };
        let bytes = match op & 0x7f {
            0..=95 => request(&mut ops),
            96..=111 => {
                // A request with one byte changed.
                let mut b = request(&mut ops);
                let i = usize::from(byte(&mut ops)) * 2 % b.len();
                b[i] = byte(&mut ops);
                b
            }
            112..=119 => {
                let n = usize::from(byte(&mut ops)) * 2;
                let rest = ops.as_slice();
                let (raw, after) = rest.split_at(n.min(rest.len()));
                ops = after.iter();
                raw.to_vec()
            }
            _ => {
                now += u64::from(byte(&mut ops)) * 60;
                table.prune(now);
                mirror.prune(now);
                continue;
            }
        };
        let before = table.clone();
        let mut records = Vec::new();
        match process(&bytes, port, booter, &mut table, now, &metrics) {
            Processed::Dropped(_) => reached.dropped += 1,
            Processed::Handled(outcome) => {
                if let Some(o) = outgoing(*outcome, from, port, now, &mut records) {
                    let msg: Message =
                        dhcproto::Decodable::decode(&mut dhcproto::Decoder::new(&o.bytes))
                            .expect("a reply decodes");
                    if o.durable {
                        assert_eq!(msg.opts().msg_type(), Some(MessageType::Ack));
                        reached.durable += 1;
                    }
                    match msg.opts().msg_type() {
                        Some(MessageType::Offer) => reached.offers += 1,
                        Some(MessageType::Ack) => reached.acks += 1,
                        Some(MessageType::Nak) => reached.naks += 1,
                        _ => {}
                    }
                }
            }
        }
        for r in &records {
            if let super::leases::Record::Decline { mac, ip, .. } = r {
                // Only an address offered or leased to that MAC (or its inventory address).
                let inventory = booter
                    .cluster
                    .machines
                    .iter()
                    .any(|m| m.mac == *mac && m.ip == *ip);
                assert!(
                    inventory
                        || before.offer(*mac, now) == Some(*ip)
                        || before.lease(*mac).is_some_and(|l| l.ip == *ip),
                    "DECLINE of {ip} accepted from {mac}, which was never offered it"
                );
                reached.declines += 1;
            }
            mirror.replay(r);
        }
        assert!(table.declined(now) <= booter.cluster.limits.dhcp.declined);
        assert_eq!(
            metrics.dropped_total(),
            reached.dropped - dropped_before,
            "every drop counted"
        );
        assert_eq!(
            lease_list(&table),
            lease_list(&mirror),
            "the journal records do not rebuild the lease table"
        );
        let mut live: Vec<Ipv4Addr> = table
            .leases()
            .filter(|l| l.expires > now)
            .map(|l| l.ip)
            .collect();
        let n = live.len();
        live.sort();
        live.dedup();
        assert_eq!(live.len(), n, "an address held by two machines");
    }
}
