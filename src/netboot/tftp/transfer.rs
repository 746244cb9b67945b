//! One TFTP read transfer as a pure state machine (sans-IO).
//!
//! Inputs are the request, received packets and the clock; outputs are the packets to send. The socket loop in
//! [`super::run`] only moves bytes: it never decides what to send. Implements RFC 1350 lock-step, option
//! negotiation (RFC 2347 OACK), blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440), with
//! go-back-N retransmission, exponential backoff and no reply to duplicate ACKs (no Sorcerer's Apprentice).

use std::ops::Range;
use std::time::{Duration, Instant};

use super::packet::{ErrorCode, Mode, Packet, Request, error_packet};

/// RFC 2348's smallest block size.
pub const MIN_BLKSIZE: u64 = 8;
/// RFC 2348's largest block size.
pub const MAX_BLKSIZE: u64 = 65464;
/// RFC 1350 block size.
pub const DEFAULT_BLKSIZE: usize = 512;

/// Server-side limits and defaults of transfers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest block size granted (clients on a real network ask for what fits their MTU).
    pub max_blksize: usize,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client negotiates none.
    pub default_timeout: Duration,
    /// Backoff stops doubling at this timeout.
    pub max_timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned.
    pub max_retries: u32,
    /// The largest `timeout` option accepted (RFC 2349 lets a client ask up to 255 s); a larger one is left
    /// out of the OACK and the server's default applies.
    pub max_client_timeout: Duration,
    /// The longest a transfer may last, start to end, however often the client acknowledges.
    pub lifetime: Duration,
}

impl Limits {
    /// The defaults with `[limits.tftp]`'s client timeout clamp and lifetime.
    pub fn from_config(l: &crate::config::TftpLimits) -> Self {
        Limits {
            max_client_timeout: l.max_client_timeout,
            lifetime: l.lifetime,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: MAX_BLKSIZE as usize,
            max_windowsize: 256,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            max_retries: 5,
            max_client_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(300),
        }
    }
}

/// What a transfer asks the socket loop to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An encoded OACK or ERROR packet.
    Packet(Vec<u8>),
    /// A DATA packet: wire block number and the byte range of the file it carries.
    Data {
        /// The block number as sent (wraps 65535 → 0).
        block: u16,
        /// The bytes of the file this block carries.
        range: Range<u64>,
    },
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// OACK sent, waiting for ACK 0.
    Negotiating,
    /// DATA flowing.
    Sending,
    /// The last block was acknowledged.
    Done,
    /// Abandoned (client error, illegal packet or too many timeouts); [`Transfer::failure`] says why.
    Failed,
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The client sent an ERROR packet (e.g. code 8 after an OACK it dislikes, or it aborted).
    ClientError {
        /// The client's TFTP error code.
        code: u16,
        /// The client's error message.
        message: String,
    },
    /// No acknowledgement after all retries.
    TimedOut,
    /// The transfer reached [`Limits::lifetime`].
    Lifetime,
    /// The client sent something other than an ACK.
    IllegalPacket,
}

/// The options a request ends up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block (RFC 2348; 512 without the option).
    pub blksize: usize,
    /// Blocks sent before waiting for an ACK (RFC 7440; 1 without the option).
    pub windowsize: u16,
    /// Retransmission timeout (RFC 2349 `timeout`, or the server's default).
    pub timeout: Duration,
    /// The options acknowledged in the OACK, in the client's order. Empty: no OACK, plain RFC 1350.
    pub oack: Vec<(String, String)>,
    /// The client asked for a `timeout` above [`Limits::max_client_timeout`] (left out of the OACK: RFC 2349
    /// lets the server only echo the client's value or decline the option).
    pub timeout_clamped: bool,
}

/// Works out the options of a read request for a file of `size` bytes. Unknown or invalid options are left out
/// of the OACK (RFC 2347: the server omits what it does not accept).
pub fn negotiate(req: &Request, size: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
        timeout_clamped: false,
    };
    for (name, value) in &req.options {
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if v >= MIN_BLKSIZE => {
                let b = v.min(MAX_BLKSIZE).min(limits.max_blksize as u64) as usize;
                n.blksize = b;
                n.oack.push((name.clone(), b.to_string()));
            }
            "tsize" => n.oack.push((name.clone(), size.to_string())),
            "timeout" if v > limits.max_client_timeout.as_secs().max(1) => n.timeout_clamped = true,
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                n.oack.push((name.clone(), v.to_string()));
            }
            "windowsize" if (1..=65535).contains(&v) => {
                let w = (v as u16).min(limits.max_windowsize.max(1));
                n.windowsize = w;
                n.oack.push((name.clone(), w.to_string()));
            }
            _ => {}
        }
    }
    n
}

/// A read transfer in progress.
#[derive(Debug, Clone)]
pub struct Transfer {
    size: u64,
    blksize: u64,
    windowsize: u64,
    /// Number of DATA blocks (the last one is shorter than blksize, possibly empty).
    nblocks: u64,
    /// Highest block (1-based, absolute) acknowledged.
    acked: u64,
    /// Highest block sent in the current window.
    sent: u64,
    oack: Option<Vec<u8>>,
    phase: Phase,
    failure: Option<Failure>,
    base_timeout: Duration,
    timeout: Duration,
    max_timeout: Duration,
    retries: u32,
    max_retries: u32,
    deadline: Instant,
    /// Start + [`Limits::lifetime`]: the transfer fails at this instant whatever happens.
    ends_at: Instant,
    /// Whether the client has acknowledged anything (ACK 0 of an OACK, or a DATA block).
    heard: bool,
    /// The client's `timeout` option was above the clamp (see [`Negotiated::timeout_clamped`]).
    pub timeout_clamped: bool,
    /// Packets sent again after a timeout or a partial ACK.
    pub retransmits: u64,
}

impl Transfer {
    /// Starts a transfer of a file of `size` bytes for `req` at `now`, with the first packets to send.
    /// Only octet mode is served (boot loaders are binary); other modes get an ERROR and a failed transfer.
    pub fn start(
        req: &Request,
        size: u64,
        limits: &Limits,
        now: Instant,
    ) -> (Transfer, Vec<Outgoing>) {
        let n = negotiate(req, size, limits);
        let blksize = n.blksize as u64;
        let mut t = Transfer {
            size,
            blksize,
            windowsize: u64::from(n.windowsize),
            nblocks: size / blksize + 1,
            acked: 0,
            sent: 0,
            oack: None,
            phase: Phase::Sending,
            failure: None,
            base_timeout: n.timeout,
            timeout: n.timeout,
            max_timeout: limits.max_timeout.max(n.timeout),
            retries: 0,
            max_retries: limits.max_retries,
            deadline: now + n.timeout,
            ends_at: now + limits.lifetime,
            heard: false,
            timeout_clamped: n.timeout_clamped,
            retransmits: 0,
        };
        if req.mode != Mode::Octet {
            t.phase = Phase::Failed;
            t.failure = Some(Failure::IllegalPacket);
            return (
                t,
                vec![Outgoing::Packet(error_packet(
                    ErrorCode::IllegalOperation,
                    "only octet mode is served",
                ))],
            );
        }
        if n.oack.is_empty() {
            let out = t.send_window(now);
            (t, out)
        } else {
            let oack = Packet::Oack { options: n.oack }.to_bytes();
            t.oack = Some(oack.clone());
            t.phase = Phase::Negotiating;
            (t, vec![Outgoing::Packet(oack)])
        }
    }

    /// Where the transfer is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why it failed, once [`Phase::Failed`].
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The negotiated block size in bytes.
    pub fn blksize(&self) -> usize {
        self.blksize as usize
    }

    /// The negotiated window size in blocks.
    pub fn windowsize(&self) -> u16 {
        self.windowsize as u16
    }

    /// Whether the transfer is over (done or failed): the loop stops and drops its socket.
    pub fn finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// When [`Transfer::on_timeout`] must be called if nothing arrives (never after the end of its lifetime).
    pub fn deadline(&self) -> Instant {
        self.deadline.min(self.ends_at)
    }

    /// Whether the client has acknowledged anything yet: until then the transfer may be a spoofed request, and
    /// the loop holds nothing for it but its socket and this state.
    pub fn acknowledged(&self) -> bool {
        self.heard
    }

    /// Fails the transfer with [`Failure::Lifetime`] if `now` is past its lifetime.
    fn outlived(&mut self, now: Instant) -> Option<Vec<Outgoing>> {
        if now < self.ends_at {
            return None;
        }
        self.fail(Failure::Lifetime);
        Some(vec![Outgoing::Packet(error_packet(
            ErrorCode::NotDefined,
            "transfer took too long",
        ))])
    }

    /// Bytes of the file acknowledged so far.
    pub fn bytes_acked(&self) -> u64 {
        (self.acked * self.blksize).min(self.size)
    }

    fn data(&self, block: u64) -> Outgoing {
        let start = (block - 1) * self.blksize;
        let end = (start + self.blksize).min(self.size);
        Outgoing::Data {
            block: (block & 0xffff) as u16,
            range: start.min(self.size)..end,
        }
    }

    /// Sends the blocks after `sent` up to a full window past `acked`.
    fn send_window(&mut self, now: Instant) -> Vec<Outgoing> {
        let last = (self.acked + self.windowsize).min(self.nblocks);
        let out: Vec<Outgoing> = (self.sent + 1..=last).map(|b| self.data(b)).collect();
        self.sent = self.sent.max(last);
        self.deadline = now + self.timeout;
        out
    }

    fn fail(&mut self, f: Failure) {
        self.phase = Phase::Failed;
        self.failure = Some(f);
    }

    /// Handles a packet from the client.
    pub fn on_packet(&mut self, pkt: &Packet<'_>, now: Instant) -> Vec<Outgoing> {
        if self.finished() {
            return Vec::new();
        }
        if let Some(out) = self.outlived(now) {
            return out;
        }
        match (self.phase, pkt) {
            (Phase::Done | Phase::Failed, _) => Vec::new(),
            (_, Packet::Error { code, message }) => {
                self.fail(Failure::ClientError {
                    code: *code,
                    message: message.clone(),
                });
                Vec::new()
            }
            (Phase::Negotiating, Packet::Ack { block: 0 }) => {
                self.heard = true;
                self.phase = Phase::Sending;
                self.oack = None;
                self.retries = 0;
                self.timeout = self.base_timeout;
                self.send_window(now)
            }
            (Phase::Negotiating, Packet::Ack { .. }) => Vec::new(),
            (Phase::Sending, Packet::Ack { block }) => self.on_ack(*block, now),
            // A repeated request from the same port (the client retransmitted its RRQ): our reply is on its way.
            (_, Packet::Rrq(_)) => Vec::new(),
            _ => {
                self.fail(Failure::IllegalPacket);
                vec![Outgoing::Packet(error_packet(
                    ErrorCode::IllegalOperation,
                    "expected an ACK",
                ))]
            }
        }
    }

    fn on_ack(&mut self, wire: u16, now: Instant) -> Vec<Outgoing> {
        // The absolute block in (acked, sent] whose low 16 bits match: block numbers wrap at 65535 → 0.
        let lo = self.acked + 1;
        let hi = self.sent;
        if lo > hi {
            return Vec::new();
        }
        let offset = u64::from(wire.wrapping_sub((lo & 0xffff) as u16));
        let abs = lo + offset;
        if abs > hi {
            // A duplicate of an ACK already processed (or garbage): never answer it, the timer covers loss.
            return Vec::new();
        }
        self.acked = abs;
        self.heard = true;
        self.retries = 0;
        self.timeout = self.base_timeout;
        if self.acked == self.nblocks {
            self.phase = Phase::Done;
            return Vec::new();
        }
        if abs < hi {
            // RFC 7440: the client acknowledged part of the window (it lost a block); resume after it.
            self.retransmits += hi - abs;
            self.sent = abs;
        }
        self.send_window(now)
    }

    /// Called at or after [`Transfer::deadline`]: retransmits the unacknowledged window (or the OACK) with a
    /// doubled timeout, or abandons the transfer after the last retry.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Outgoing> {
        if self.finished() {
            return Vec::new();
        }
        if let Some(out) = self.outlived(now) {
            return out;
        }
        if now < self.deadline {
            return Vec::new();
        }
        if self.retries >= self.max_retries {
            self.fail(Failure::TimedOut);
            return vec![Outgoing::Packet(error_packet(
                ErrorCode::NotDefined,
                "timed out waiting for an acknowledgement",
            ))];
        }
        self.retries += 1;
        self.timeout = (self.timeout * 2).min(self.max_timeout);
        if let Some(oack) = &self.oack {
            self.deadline = now + self.timeout;
            self.retransmits += 1;
            return vec![Outgoing::Packet(oack.clone())];
        }
        self.retransmits += self.sent - self.acked;
        self.sent = self.acked;
        self.send_window(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(opts: &[(&str, &str)]) -> Request {
        Request {
            filename: "f".into(),
            mode: Mode::Octet,
            options: opts
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn blocks(out: &[Outgoing]) -> Vec<u16> {
        out.iter()
            .map(|o| match o {
                Outgoing::Data { block, .. } => *block,
                Outgoing::Packet(p) => panic!("unexpected packet {:?}", Packet::parse(p)),
            })
            .collect()
    }

    fn ack(b: u16) -> Packet<'static> {
        Packet::Ack { block: b }
    }

    #[test]
    fn plain_rfc1350_lock_step_with_exact_multiple_sends_empty_last_block() {
        let now = Instant::now();
        let (mut t, out) = Transfer::start(&rrq(&[]), 1024, &Limits::default(), now);
        assert_eq!(
            out,
            vec![Outgoing::Data {
                block: 1,
                range: 0..512
            }]
        );
        let out = t.on_packet(&ack(1), now);
        assert_eq!(
            out,
            vec![Outgoing::Data {
                block: 2,
                range: 512..1024
            }]
        );
        let out = t.on_packet(&ack(2), now);
        assert_eq!(
            out,
            vec![Outgoing::Data {
                block: 3,
                range: 1024..1024
            }]
        );
        assert!(t.on_packet(&ack(3), now).is_empty());
        assert_eq!(t.phase(), Phase::Done);
    }

    #[test]
    fn options_are_negotiated_and_clamped() {
        let l = Limits::default();
        let n = negotiate(
            &rrq(&[
                ("blksize", "100000"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "1000"),
                ("multicast", ""),
            ]),
            4242,
            &l,
        );
        assert_eq!(n.blksize, 65464);
        assert_eq!(n.windowsize, 256);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            vec![
                ("blksize".into(), "65464".into()),
                ("tsize".into(), "4242".into()),
                ("timeout".into(), "3".into()),
                ("windowsize".into(), "256".into()),
            ]
        );
        // Invalid values are left out, not refused.
        let n = negotiate(
            &rrq(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "x")]),
            1,
            &l,
        );
        assert!(n.oack.is_empty());
        assert_eq!(n.blksize, 512);
    }

    #[test]
    fn oack_then_ack0_then_windows() {
        let now = Instant::now();
        let (mut t, out) = Transfer::start(
            &rrq(&[("blksize", "1000"), ("windowsize", "4"), ("tsize", "0")]),
            9500,
            &Limits::default(),
            now,
        );
        let Outgoing::Packet(p) = &out[0] else {
            panic!()
        };
        assert_eq!(
            Packet::parse(p).unwrap(),
            Packet::Oack {
                options: vec![
                    ("blksize".into(), "1000".into()),
                    ("windowsize".into(), "4".into()),
                    ("tsize".into(), "9500".into())
                ]
            }
        );
        assert_eq!(t.phase(), Phase::Negotiating);
        // A stray ACK 1 before ACK 0 is ignored.
        assert!(t.on_packet(&ack(1), now).is_empty());
        assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1, 2, 3, 4]);
        assert_eq!(blocks(&t.on_packet(&ack(4), now)), vec![5, 6, 7, 8]);
        // 9500 bytes = 9 full blocks + 500 bytes: blocks 9 and 10.
        let out = t.on_packet(&ack(8), now);
        assert_eq!(
            out,
            vec![
                Outgoing::Data {
                    block: 9,
                    range: 8000..9000
                },
                Outgoing::Data {
                    block: 10,
                    range: 9000..9500
                }
            ]
        );
        assert!(t.on_packet(&ack(10), now).is_empty());
        assert_eq!(t.phase(), Phase::Done);
        assert_eq!(t.bytes_acked(), 9500);
    }

    #[test]
    fn partial_window_ack_resends_from_the_gap() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(
            &rrq(&[("windowsize", "4")]),
            100_000,
            &Limits::default(),
            now,
        );
        assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1, 2, 3, 4]);
        // Client got 1 and 2, lost 3: ACK 2 → resend 3.. up to a window past 2.
        assert_eq!(blocks(&t.on_packet(&ack(2), now)), vec![3, 4, 5, 6]);
        assert_eq!(t.retransmits, 2);
    }

    #[test]
    fn duplicate_acks_are_never_answered() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&rrq(&[]), 5000, &Limits::default(), now);
        assert_eq!(blocks(&t.on_packet(&ack(1), now)), vec![2]);
        // The client's retransmitted ACK 1 must not trigger a second block 2 (Sorcerer's Apprentice).
        assert!(t.on_packet(&ack(1), now).is_empty());
        assert!(t.on_packet(&ack(0), now).is_empty());
        assert!(t.on_packet(&ack(9), now).is_empty());
        assert_eq!(blocks(&t.on_packet(&ack(2), now)), vec![3]);
    }

    #[test]
    fn timeout_retransmits_with_backoff_then_gives_up() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let (mut t, _) = Transfer::start(&rrq(&[("windowsize", "2")]), 10_000, &limits, t0);
        // OACK lost: nothing before the deadline, then the OACK again with a doubled timeout.
        assert!(t.on_timeout(t0 + Duration::from_millis(999)).is_empty());
        let out = t.on_timeout(t0 + Duration::from_secs(1));
        assert!(
            matches!(&out[..], [Outgoing::Packet(p)] if matches!(Packet::parse(p), Ok(Packet::Oack{..})))
        );
        assert_eq!(t.deadline(), t0 + Duration::from_secs(3));
        let mut now = t0 + Duration::from_secs(3);
        assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1, 2]);
        // ACK resets the timeout to the base.
        assert_eq!(t.deadline(), now + Duration::from_secs(1));
        let mut waits = Vec::new();
        for _ in 0..limits.max_retries {
            now = t.deadline();
            assert_eq!(blocks(&t.on_timeout(now)), vec![1, 2], "go-back-N resend");
            waits.push((t.deadline() - now).as_secs());
        }
        assert_eq!(waits, vec![2, 4, 8, 8, 8]);
        let out = t.on_timeout(t.deadline());
        assert!(
            matches!(&out[..], [Outgoing::Packet(p)] if matches!(Packet::parse(p), Ok(Packet::Error{..})))
        );
        assert_eq!(t.phase(), Phase::Failed);
        assert_eq!(t.failure(), Some(&Failure::TimedOut));
        assert!(t.on_packet(&ack(2), now).is_empty());
    }

    #[test]
    fn a_client_timeout_above_the_clamp_is_declined_and_the_default_applies() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let (t, out) = Transfer::start(
            &rrq(&[("timeout", "255"), ("blksize", "1468")]),
            10_000,
            &limits,
            t0,
        );
        assert!(t.timeout_clamped);
        assert_eq!(t.deadline(), t0 + limits.default_timeout);
        match &out[..] {
            [Outgoing::Packet(p)] => assert_eq!(
                Packet::parse(p).unwrap(),
                Packet::Oack {
                    options: vec![("blksize".into(), "1468".into())]
                }
            ),
            o => panic!("{o:?}"),
        }
        let (t, _) = Transfer::start(&rrq(&[("timeout", "5")]), 1, &limits, t0);
        assert!(!t.timeout_clamped);
        assert_eq!(t.deadline(), t0 + Duration::from_secs(5));
    }

    #[test]
    fn a_transfer_ends_at_its_lifetime_however_often_the_client_acknowledges() {
        let t0 = Instant::now();
        let limits = Limits {
            lifetime: Duration::from_secs(30),
            ..Limits::default()
        };
        let (mut t, _) = Transfer::start(&rrq(&[("blksize", "8")]), 1_000_000, &limits, t0);
        assert!(!t.acknowledged());
        let mut now = t0;
        assert_eq!(blocks(&t.on_packet(&ack(0), now)), vec![1]);
        assert!(t.acknowledged());
        // One ACK every 900 ms keeps every retransmission timer happy, but not the lifetime.
        for b in 1..=33u16 {
            now += Duration::from_millis(900);
            assert_eq!(blocks(&t.on_packet(&ack(b), now)), vec![b + 1], "{b}");
        }
        assert!(t.deadline() <= t0 + Duration::from_secs(30));
        now += Duration::from_millis(900);
        let out = t.on_packet(&ack(34), now);
        assert!(
            matches!(&out[..], [Outgoing::Packet(p)] if matches!(Packet::parse(p), Ok(Packet::Error{..})))
        );
        assert_eq!(t.failure(), Some(&Failure::Lifetime));
        // A silent client: the timer fires at the lifetime at the latest.
        let (mut t, _) = Transfer::start(&rrq(&[]), 100, &limits, t0);
        assert!(t.on_timeout(t0 + Duration::from_secs(29)).len() == 1);
        assert_eq!(t.phase(), Phase::Sending);
        assert!(t.deadline() <= t0 + Duration::from_secs(30));
        t.on_timeout(t0 + Duration::from_secs(30));
        assert_eq!(t.failure(), Some(&Failure::Lifetime));
    }

    #[test]
    fn negotiated_timeout_is_the_base() {
        let t0 = Instant::now();
        let (t, _) = Transfer::start(&rrq(&[("timeout", "5")]), 1, &Limits::default(), t0);
        assert_eq!(t.deadline(), t0 + Duration::from_secs(5));
    }

    #[test]
    fn block_numbers_wrap_after_65535() {
        let now = Instant::now();
        let size = 70_000u64 * 8;
        let (mut t, _) = Transfer::start(&rrq(&[("blksize", "8")]), size, &Limits::default(), now);
        t.on_packet(&ack(0), now);
        for abs in 1..=70_001u64 {
            let expect_next = abs + 1;
            let out = t.on_packet(&ack((abs & 0xffff) as u16), now);
            if abs == 70_001 {
                assert!(out.is_empty());
                break;
            }
            match &out[..] {
                [Outgoing::Data { block, range }] => {
                    assert_eq!(*block, (expect_next & 0xffff) as u16);
                    assert_eq!(range.start, (expect_next - 1) * 8);
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(t.phase(), Phase::Done);
    }

    #[test]
    fn client_error_and_illegal_packets_end_the_transfer() {
        let now = Instant::now();
        let (mut t, _) = Transfer::start(&rrq(&[("blksize", "1024")]), 10, &Limits::default(), now);
        assert!(
            t.on_packet(
                &Packet::Error {
                    code: 8,
                    message: "no".into()
                },
                now
            )
            .is_empty()
        );
        assert!(matches!(
            t.failure(),
            Some(Failure::ClientError { code: 8, .. })
        ));
        let (mut t, _) = Transfer::start(&rrq(&[]), 10, &Limits::default(), now);
        let out = t.on_packet(
            &Packet::Data {
                block: 1,
                data: b"x",
            },
            now,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(t.phase(), Phase::Failed);
    }

    #[test]
    fn netascii_is_refused() {
        let mut r = rrq(&[]);
        r.mode = Mode::NetAscii;
        let (t, out) = Transfer::start(&r, 10, &Limits::default(), Instant::now());
        assert_eq!(t.phase(), Phase::Failed);
        assert!(matches!(&out[..], [Outgoing::Packet(_)]));
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let now = Instant::now();
        let (mut t, out) = Transfer::start(&rrq(&[]), 0, &Limits::default(), now);
        assert_eq!(
            out,
            vec![Outgoing::Data {
                block: 1,
                range: 0..0
            }]
        );
        t.on_packet(&ack(1), now);
        assert_eq!(t.phase(), Phase::Done);
    }
}
