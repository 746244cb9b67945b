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
    /// the loop holds nothing for it but its socket, its thread and this state.
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
mod tests;
