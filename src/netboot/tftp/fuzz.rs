//! Fuzzing of the TFTP cores without sockets (compiled for tests and with the `fuzzing` feature only; not part
//! of the library's API).
//!
//! - [`check_packet`]: the parser property (never panics; what parses re-encodes to the same packet).
//! - [`run_ops`]: the whole server as an operation sequence, quinn-proto style: bytes are read as operations
//!   (a datagram on the listening port, an ACK / ERROR / arbitrary datagram to a transfer, a well-behaved client
//!   acknowledging many windows, the clock moving on) and applied to [`super::request::decide`] and
//!   [`super::transfer::Transfer`] exactly as the socket loop would, checking invariants after each step.
//!
//! The tests here run both on stable Rust with fixed seeds in the normal suite; the coverage-guided targets for
//! nightly are `fuzz/fuzz_targets/tftp_packet.rs` and `fuzz/fuzz_targets/tftp_ops.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[cfg(test)]
use rand::rngs::StdRng;
#[cfg(test)]
use rand::{Rng, SeedableRng};

use super::packet::Packet;
#[cfg(test)]
use super::packet::{Mode, Request};
use super::request::{self, Accepted, Caps, Decision, InFlight, Why};
use super::transfer::{Limits, Outgoing, Phase, Transfer};

/// Valid packets to mutate.
#[cfg(test)]
fn corpus() -> Vec<Vec<u8>> {
    vec![
        b"\x00\x01snponly.efi\x00octet\x00blksize\x001468\x00windowsize\x004\x00tsize\x000\x00"
            .to_vec(),
        b"\x00\x01undionly.kpxe\x00octet\x00".to_vec(),
        b"\x00\x02x\x00netascii\x00".to_vec(),
        b"\x00\x03\x00\x01hello".to_vec(),
        b"\x00\x04\x12\x34".to_vec(),
        b"\x00\x05\x00\x08refused\x00".to_vec(),
        b"\x00\x06blksize\x00512\x00".to_vec(),
    ]
}

/// Checks one input: no panic, and whatever parses re-encodes to something that parses to the same packet.
pub fn check_packet(data: &[u8]) {
    if let Ok(p) = Packet::parse(data) {
        let again = p.to_bytes();
        let p2 = Packet::parse(&again).expect("an encoded packet parses");
        assert_eq!(p, p2, "round trip of {data:?}");
    }
}

/// The model server's caps: small, so that floods and evictions happen often.
const CAPS: Caps = Caps {
    transfers: 2,
    per_address: 1,
};

/// The allowlist of the model server.
const ALLOW: &[&str] = &["snponly.efi", "undionly.kpxe", "grubaa64.efi"];
/// Names a client may ask for: allowlisted, unknown, traversal, absolute.
const NAMES: &[&str] = &[
    "snponly.efi",
    "undionly.kpxe",
    "grubaa64.efi",
    "pxelinux.0",
    "../snponly.efi",
    "/snponly.efi",
    "\\undionly.kpxe",
    "a/../../etc/passwd",
];
/// Options a client may send (name, values to pick from).
const OPTIONS: &[(&str, &[&str])] = &[
    ("blksize", &["8", "512", "1468", "65464", "70000", "7", "x"]),
    ("windowsize", &["1", "4", "64", "300", "0"]),
    ("timeout", &["1", "3", "255", "0", "256"]),
    ("tsize", &["0", "123"]),
];

/// Reads operations from fuzz bytes; reads past the end give zeros.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn pick<'b, T>(&mut self, xs: &'b [T]) -> &'b T {
        &xs[usize::from(self.u8()) % xs.len()]
    }
}

/// A transfer the model server runs, with the highest block the client has seen.
struct Running {
    t: Transfer,
    ticket: u64,
    size: u64,
    seen: u16,
}

/// How far runs of [`run_ops`] got, added up (the stable test checks the operations reach every outcome).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// Transfers started.
    pub started: u64,
    /// Transfers whose last block was acknowledged.
    pub completed: u64,
    /// Transfers abandoned (client error, illegal packet, timeouts).
    pub failed: u64,
    /// Requests refused with an ERROR.
    pub refused: u64,
    /// Requests repeated while their transfer was in flight (ignored).
    pub repeated: u64,
    /// Completed transfers of more than 65535 blocks (block numbers wrapped).
    pub wrapped: u64,
    /// Requests refused by a cap on transfers in flight.
    pub busy: u64,
    /// Unacknowledged transfers ended to make room.
    pub evicted: u64,
}

impl Reached {
    /// Whether the runs started, completed, failed, refused (by name and by a cap) and ignored at least `n`
    /// transfers each.
    pub fn at_least(&self, n: u64) -> bool {
        [
            self.started,
            self.completed,
            self.failed,
            self.refused,
            self.repeated,
            self.busy,
        ]
        .iter()
        .all(|c| *c >= n)
    }
}

/// The model server: the listening port's in-flight set and the transfers by peer.
struct Model<'r> {
    in_flight: InFlight,
    running: BTreeMap<SocketAddr, Running>,
    sizes: [u64; 3],
    now: Instant,
    reached: &'r mut Reached,
}

impl Model<'_> {
    /// What the socket loop sends for a transfer, checked: DATA inside the file and at most one block long.
    fn sent(&mut self, peer: SocketAddr, out: &[Outgoing]) {
        let r = self.running.get_mut(&peer).expect("running");
        for o in out {
            match o {
                Outgoing::Data { block, range } => {
                    assert!(range.start <= range.end && range.end <= r.size, "{range:?}");
                    assert!(range.end - range.start <= r.t.blksize() as u64);
                    r.seen = *block;
                }
                Outgoing::Packet(p) => {
                    assert!(
                        matches!(
                            Packet::parse(p),
                            Ok(Packet::Oack { .. } | Packet::Error { .. })
                        ),
                        "{p:?}"
                    );
                }
            }
        }
    }

    /// Ends finished transfers as the loop does, and checks the invariants.
    fn settle(&mut self) {
        let done: Vec<SocketAddr> = self
            .running
            .iter()
            .filter(|(_, r)| r.t.finished())
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            let r = self.running.remove(&p).expect("running");
            assert!(r.t.bytes_acked() <= r.size);
            if r.t.phase() == Phase::Done {
                assert_eq!(r.t.bytes_acked(), r.size, "done before the whole file");
                assert!(r.t.failure().is_none());
                self.reached.completed += 1;
                if r.size / r.t.blksize() as u64 >= 65535 {
                    self.reached.wrapped += 1;
                }
            } else {
                assert!(r.t.failure().is_some(), "failed without a reason");
                self.reached.failed += 1;
            }
            request::finished(&mut self.in_flight, p, r.ticket);
        }
        assert_eq!(
            self.in_flight.len(),
            self.running.len(),
            "in-flight set and transfers disagree"
        );
        assert!(self.in_flight.len() <= CAPS.transfers, "over the cap");
        assert_eq!(
            self.in_flight.unconfirmed(),
            self.running
                .values()
                .filter(|r| !r.t.acknowledged())
                .count(),
            "unacknowledged transfers disagree"
        );
        for (p, r) in &self.running {
            assert!(self.in_flight.contains(p));
            assert!(
                r.t.deadline() > self.now,
                "a live transfer with a past deadline"
            );
            assert!(r.t.bytes_acked() <= r.size);
            assert!(self.in_flight.from_address(p.ip()) <= CAPS.per_address);
        }
    }

    /// A datagram on the listening port.
    fn listen(&mut self, datagram: &[u8], peer: SocketAddr) {
        let was_in_flight = self.in_flight.contains(&peer);
        match request::decide(datagram, peer, ALLOW, &mut self.in_flight) {
            Decision::Start(Accepted {
                name,
                request,
                ticket,
                evict,
            }) => {
                assert!(!was_in_flight, "second transfer to {peer}");
                assert!(ALLOW.contains(&name) && request.filename == name);
                if let Some((old, old_ticket)) = evict {
                    // The loop aborts its task: it is gone without a last packet.
                    let r = self
                        .running
                        .remove(&old)
                        .expect("evicted a running transfer");
                    assert_eq!(r.ticket, old_ticket);
                    assert!(!r.t.acknowledged(), "evicted an acknowledged transfer");
                    request::finished(&mut self.in_flight, old, old_ticket);
                    self.reached.evicted += 1;
                }
                let size = self.sizes[ALLOW.iter().position(|a| *a == name).expect("allowed")];
                let (t, out) = Transfer::start(&request, size, &Limits::default(), self.now);
                self.reached.started += 1;
                self.running.insert(
                    peer,
                    Running {
                        t,
                        ticket,
                        size,
                        seen: 0,
                    },
                );
                self.sent(peer, &out);
            }
            Decision::Repeated { name } => {
                assert!(was_in_flight && ALLOW.contains(&name));
                self.reached.repeated += 1;
            }
            Decision::Refuse(r) => {
                self.reached.refused += 1;
                if let Why::Busy(_) = r.why {
                    self.reached.busy += 1;
                    assert!(!was_in_flight);
                }
                let error = r.packet();
                let ok = request::decide(&error, peer, ALLOW, &mut InFlight::new(CAPS));
                assert!(
                    matches!(ok, Decision::Unexpected(Packet::Error { code, .. }) if code == r.code() as u16),
                    "{ok:?}"
                );
                assert!(
                    !ALLOW.contains(&r.filename.as_str())
                        || r.kind() == "write_refused"
                        || r.kind() == "busy"
                );
            }
            Decision::Unexpected(p) => {
                assert!(!matches!(p, Packet::Rrq(_) | Packet::Wrq(_)));
            }
            Decision::Malformed(_) => {}
        }
        assert_eq!(
            self.in_flight.contains(&peer),
            was_in_flight || self.running.contains_key(&peer)
        );
    }

    /// A packet from the client to its transfer's own socket.
    fn deliver(&mut self, peer: SocketAddr, pkt: &Packet<'_>) {
        let now = self.now;
        let Some(r) = self.running.get_mut(&peer) else {
            return;
        };
        let out = r.t.on_packet(pkt, now);
        if r.t.acknowledged() {
            request::confirmed(&mut self.in_flight, peer, r.ticket);
        }
        self.sent(peer, &out);
    }

    /// The clock moves on; every transfer whose deadline passed gets its timeout, as its timer would fire.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        let due: Vec<SocketAddr> = self
            .running
            .iter()
            .filter(|(_, r)| r.t.deadline() <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let r = self.running.get_mut(&p).expect("running");
            let out = r.t.on_timeout(now);
            self.sent(p, &out);
        }
    }
}

/// Builds a request datagram from fuzz bytes: RRQ or WRQ, a name, a mode and some options.
fn request_bytes(ops: &mut Ops<'_>) -> Vec<u8> {
    let flags = ops.u8();
    let mut b = vec![0, if flags & 0x80 != 0 { 2 } else { 1 }];
    b.extend_from_slice(ops.pick(NAMES).as_bytes());
    b.push(0);
    b.extend_from_slice(match flags & 0x60 {
        0x20 => &b"netascii"[..],
        0x40 => &b"OCTET"[..],
        _ => &b"octet"[..],
    });
    b.push(0);
    for (i, (name, values)) in OPTIONS.iter().enumerate() {
        if flags & (1 << i) != 0 {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(ops.pick(values).as_bytes());
            b.push(0);
        }
    }
    b
}

/// Runs one fuzz input through the model server. Panics if an invariant breaks: a second transfer to a
/// client port, an in-flight set that disagrees with the running transfers, DATA outside the file or longer
/// than a block, a transfer done before its last byte, a failure without a reason, a live transfer whose
/// deadline has passed, a refusal whose ERROR does not carry its code.
pub fn run_ops(data: &[u8], reached: &mut Reached) {
    let mut ops = Ops(data);
    let mut m = Model {
        in_flight: InFlight::new(CAPS),
        running: BTreeMap::new(),
        // Sizes around block boundaries of the common block sizes, and one that needs wrapping block numbers
        // at blksize 8.
        sizes: [
            u64::from(ops.u16()),
            512 * u64::from(ops.u8()),
            600_000 + u64::from(ops.u8()),
        ],
        now: Instant::now(),
        reached,
    };
    for _ in 0..2048 {
        if ops.0.is_empty() {
            break;
        }
        let op = ops.u8();
        // Four client ports on three addresses (ports 0 and 3 share one), against caps of 2 and 1.
        let peer = SocketAddr::from(([10, 77, 0, 11 + (op & 3) % 3], 1000 + u16::from(op & 3)));
        match op >> 2 {
            0..=11 => {
                let d = request_bytes(&mut ops);
                m.listen(&d, peer);
            }
            12..=15 => {
                let n = usize::from(ops.u8() % 64);
                let d = ops.bytes(n).to_vec();
                m.listen(&d, peer);
            }
            16..=31 => {
                // The client acknowledges what it saw (or, sometimes, a nearby block).
                let skew = ops.u8();
                let block = match m.running.get(&peer) {
                    Some(r) if skew < 200 => r.seen,
                    Some(r) => r.seen.wrapping_sub(u16::from(skew - 200)),
                    None => skew.into(),
                };
                m.deliver(peer, &Packet::Ack { block });
            }
            32..=35 => {
                let block = ops.u16();
                m.deliver(peer, &Packet::Ack { block });
            }
            36..=39 => {
                let n = usize::from(ops.u8() % 64);
                let d = ops.bytes(n).to_vec();
                // The loop drops what does not parse.
                if let Ok(p) = Packet::parse(&d) {
                    m.deliver(peer, &p);
                }
            }
            40..=43 => {
                let code = u16::from(ops.u8() % 9);
                m.deliver(
                    peer,
                    &Packet::Error {
                        code,
                        message: "abort".into(),
                    },
                );
            }
            44..=51 => {
                // A well-behaved client: acknowledge each window as it arrives, many times.
                let rounds = usize::from(ops.u8()) * 64;
                for _ in 0..rounds {
                    let Some(r) = m.running.get(&peer) else { break };
                    if r.t.finished() {
                        break;
                    }
                    let block = if r.t.phase() == Phase::Negotiating {
                        0
                    } else {
                        r.seen
                    };
                    m.deliver(peer, &Packet::Ack { block });
                }
            }
            _ => {
                let ms = u64::from(ops.u16()) * 4;
                m.advance(Duration::from_millis(ms));
            }
        }
        m.settle();
    }
}

#[cfg(test)]
#[test]
fn fuzz_server_model_with_random_operation_sequences() {
    let mut rng = StdRng::seed_from_u64(0x0b5e_0b5e);
    let mut total = Reached::default();
    for _ in 0..3_000 {
        let len = rng.random_range(0..600);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        run_ops(&data, &mut total);
    }
    // Random bytes must reach every outcome, or this test proves little.
    eprintln!("{total:?}");
    assert!(
        total.at_least(100) && total.wrapped > 0 && total.evicted >= 10,
        "{total:?}"
    );
}

#[cfg(test)]
#[test]
fn fuzz_parser_random_and_mutated_inputs() {
    let mut rng = StdRng::seed_from_u64(0x7466_7470);
    let corpus = corpus();
    let mut parsed = 0u32;
    for i in 0..200_000u32 {
        let data: Vec<u8> = if i % 3 == 0 {
            let len = rng.random_range(0..700);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut d = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..5) {
                match rng.random_range(0..4) {
                    0 if !d.is_empty() => {
                        let j = rng.random_range(0..d.len());
                        d[j] ^= 1 << rng.random_range(0..8);
                    }
                    1 if !d.is_empty() => {
                        let n = rng.random_range(0..d.len());
                        d.truncate(n);
                    }
                    2 => {
                        let j = rng.random_range(0..=d.len());
                        d.insert(j, rng.random_range(0..3u8)); // NULs and control bytes are the interesting ones
                    }
                    _ => {
                        let j = rng.random_range(0..=d.len());
                        d.insert(j, rng.random());
                    }
                }
            }
            d
        };
        if Packet::parse(&data).is_ok() {
            parsed += 1;
        }
        check_packet(&data);
    }
    // The mutations must reach the accepting paths too, or this test proves little.
    assert!(parsed > 10_000, "only {parsed} inputs parsed");
}

#[cfg(test)]
#[test]
fn fuzz_transfer_state_machine_with_random_client_behaviour() {
    let mut rng = StdRng::seed_from_u64(0x0ac4_0ac4);
    for _ in 0..2_000 {
        let size: u64 = rng.random_range(0..200_000);
        let mut opts = Vec::new();
        if rng.random_bool(0.5) {
            opts.push((
                "blksize".to_string(),
                rng.random_range(0..70_000u32).to_string(),
            ));
        }
        if rng.random_bool(0.5) {
            opts.push((
                "windowsize".to_string(),
                rng.random_range(0..300u32).to_string(),
            ));
        }
        if rng.random_bool(0.3) {
            opts.push((
                "timeout".to_string(),
                rng.random_range(0..300u32).to_string(),
            ));
        }
        let req = Request {
            filename: "f".into(),
            mode: Mode::Octet,
            options: opts,
        };
        let mut now = Instant::now();
        let (mut t, mut out) = Transfer::start(&req, size, &Limits::default(), now);
        let mut highest_sent: u16 = 0;
        for _ in 0..400 {
            for o in &out {
                if let Outgoing::Data { block, range } = o {
                    assert!(range.start <= range.end && range.end <= size);
                    assert!(range.end - range.start <= t.blksize() as u64);
                    highest_sent = *block;
                }
            }
            if t.finished() {
                break;
            }
            out = match rng.random_range(0..10) {
                // Mostly a well-behaved client acknowledging what it got, sometimes a random or stale ACK.
                0..=5 => t.on_packet(
                    &Packet::Ack {
                        block: highest_sent,
                    },
                    now,
                ),
                6 => t.on_packet(
                    &Packet::Ack {
                        block: rng.random(),
                    },
                    now,
                ),
                7 => t.on_packet(&Packet::Ack { block: 0 }, now),
                8 => {
                    now += Duration::from_secs(rng.random_range(0..20));
                    t.on_timeout(now)
                }
                _ => t.on_packet(
                    &Packet::Data {
                        block: 1,
                        data: b"",
                    },
                    now,
                ),
            };
        }
        assert!(t.bytes_acked() <= size);
    }
}
