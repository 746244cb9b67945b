//! The TFTP server: read-only, allowlisted boot loaders only.
//!
//! Sans-IO cores, unit-tested and fuzzed without sockets: [`packet`] parses and encodes, [`request`] decides
//! what a datagram on the listening port leads to (allowlist → TFTP error code, repeated-request guard), and
//! [`transfer`] is the per-transfer state machine (option negotiation; packets and the clock in, packets out).
//! This file only moves bytes and time: a listening socket on `network.server:network.tftp_port` (a tokio
//! loop on its own thread) that acts on each [`request::decide`], and one thread per transfer with its own
//! ephemeral, blocking socket (RFC 1350 TIDs), as atftpd does: lock-step TFTP is one packet each way per
//! block, and a thread that sends a block and then sleeps in `recv` lets the kernel run the client on the same
//! core, with two system calls per block (measured in docs/performance.md, "500 clients: where the time
//! goes"). The socket of a transfer is connected to the client, so datagrams from any other address or port
//! never reach it.
//!
//! Bounded against a hostile LAN (`[limits.tftp]`): caps on transfers in flight, in all and per client
//! address ([`request`] decides, evicting the oldest unacknowledged transfer first); the client's `timeout`
//! option clamped and a lifetime per transfer ([`transfer`]); until the client's first ACK a transfer holds
//! its socket, its thread (a small stack, `TRANSFER_STACK` reserved) and a few hundred bytes of state, and
//! its DATA buffer grows only with the blocks it sends.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod packet;
pub mod request;
pub mod transfer;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::net::UdpSocket;

use self::packet::{ErrorCode, Packet, Request, encode_data_header, error_packet};
use self::request::{Accepted, Caps, Decision, InFlight, Why};
use self::transfer::{Failure, Limits, Outgoing, Phase, Transfer};
use super::boot::{UKI_BOOTFILE, is_grub};
use super::bootfiles::{self, BootFiles};
use super::metrics::TftpMetrics;
use super::state::Shared;
use crate::status::Source;

/// The transfers in flight (the sans-IO books) and the links to the threads that run them, by ticket.
struct Books {
    in_flight: InFlight,
    tasks: HashMap<u64, Arc<Link>>,
}

/// What the listener shares with a transfer's thread: the transfer's socket, and the order to end it.
struct Link {
    sock: StdUdpSocket,
    ended: AtomicBool,
}

impl Link {
    /// Ends the transfer now (an eviction, or the server stopping): its thread wakes from `recv` (a socket
    /// shut down for reading returns at once), sees the order and ends; the socket closes with its last owner.
    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let _ = socket2::SockRef::from(&self.sock).shutdown(std::net::Shutdown::Read);
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

type Active = Arc<Mutex<Books>>;

fn lock(a: &Active) -> std::sync::MutexGuard<'_, Books> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

/// Largest datagram read on the listening port (an RRQ with options is far smaller).
const RECV_BUF: usize = 2048;
/// Largest datagram read on a transfer's socket: ACKs are 4 bytes, a client's ERROR a short message.
const TRANSFER_RECV: usize = 600;

/// Stack of a transfer's thread: the loop holds a 600-byte receive buffer; the rest is the file reads'.
const TRANSFER_STACK: usize = 256 * 1024;
/// How late a transfer's receive timeout may fire after its deadline before it is re-armed. The timeout is
/// armed once per timeout period (not once per block: that would be a system call per block), at the
/// transfer's timeout; it is set again only when the deadline moved by more than this (a backoff, the end of
/// the lifetime), or when it fired early.
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Runs the TFTP server until the socket fails. TFTP gets its own threads: the listening socket on one, and
/// one per transfer (each with its own socket, RFC 1350 TIDs).
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || {
            let res = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("TFTP: cannot start its runtime")
                .and_then(|rt| rt.block_on(serve(shared)));
            let _ = tx.send(res);
        })
        .context("TFTP: cannot start its thread")?;
    rx.await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the TFTP thread ended without a result")))
}

/// Ends every transfer when the listening loop ends (its threads would otherwise run to their end).
struct StopAll(Active);

impl Drop for StopAll {
    fn drop(&mut self) {
        for link in lock(&self.0).tasks.values() {
            link.end();
        }
    }
}

/// What transfers read: the boot-loader cache.
struct Files {
    boot: BootFiles,
}

async fn serve(shared: Arc<Shared>) -> anyhow::Result<()> {
    let m = shared.register_metrics(TftpMetrics::register);
    let cluster = shared.cluster();
    let addr = SocketAddr::new(cluster.network.server.into(), cluster.network.tftp_port);
    let sock = UdpSocket::bind(addr).await.with_context(|| {
        format!("TFTP: cannot bind {addr} (network.server:network.tftp_port); is another TFTP server running?")
    })?;
    let booter = shared.booter();
    for name in booter.boot_loader_names() {
        if is_grub(name) && !cluster.has_arch(crate::config::Arch::Arm64) {
            continue;
        }
        bootfiles::report_missing(&booter.boot_loader_dir(name), &[name]);
    }
    // A burst of PXE ROMs (or a flood) queues instead of being dropped before the caps can answer it.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(1 << 20);
    tracing::info!(%addr, "TFTP listening (read-only, allowlisted boot loaders)");
    shared.ready.bound("tftp");
    let files = Arc::new(Files {
        boot: BootFiles::new(),
    });
    let active: Active = Arc::new(Mutex::new(Books {
        in_flight: InFlight::new(Caps::from(&cluster.limits.tftp)),
        tasks: HashMap::new(),
    }));
    let _stop = StopAll(active.clone());
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on some systems; never stop serving for them.
                tracing::debug!(error = %e, "TFTP recv error");
                continue;
            }
        };
        let booter = shared.booter();
        let decision = {
            let mut books = lock(&active);
            books
                .in_flight
                .set_caps(Caps::from(&booter.cluster.limits.tftp));
            let d = request::decide(&buf[..n], peer, booter.tftp_names(), &mut books.in_flight);
            if let Decision::Start(Accepted {
                evict: Some((old, ticket)),
                ..
            }) = &d
            {
                // The oldest transfer no client acknowledged makes room: end its thread (its socket closes).
                if let Some(link) = books.tasks.remove(ticket) {
                    link.end();
                }
                m.evicted.inc();
                tracing::debug!(%old, "unacknowledged TFTP transfer ended to make room (limits.tftp.transfers)");
            }
            d
        };
        match decision {
            Decision::Start(accepted) => start(&shared, &m, &files, &active, &sock, peer, accepted),
            Decision::Refuse(r) => {
                m.error(r.kind());
                m.request("-", "refused");
                match r.why {
                    Why::Busy(b) => {
                        // Floods land here: counted, logged at debug only.
                        m.refused
                            .get_or_create(&super::metrics::Reason {
                                reason: b.as_str().into(),
                            })
                            .inc();
                        tracing::debug!(%peer, reason = b.as_str(), "TFTP request refused: a [limits.tftp] cap is reached");
                    }
                    Why::ReadOnly => {
                        tracing::warn!(%peer, file = %r.filename, "TFTP write request refused: this server is read-only")
                    }
                    Why::Name(reason) => {
                        tracing::warn!(%peer, file = %r.filename, reason = %reason, "TFTP request refused")
                    }
                }
                let _ = sock.send_to(&r.packet(), peer).await;
            }
            Decision::Repeated { name } => {
                // The client repeated its request while our first answer is on its way.
                tracing::debug!(%peer, file = name, "repeated TFTP request ignored (transfer in progress)");
            }
            Decision::Unexpected(other) => {
                m.error("unexpected_packet");
                tracing::debug!(%peer, packet = ?other, "TFTP packet other than a request on the listening port; dropped");
            }
            Decision::Malformed(e) => {
                m.error("malformed");
                tracing::debug!(%peer, error = %e, "malformed TFTP packet dropped");
            }
        }
    }
}

/// Takes a transfer out of the books however its task ends (done, failed, or aborted by an eviction).
struct Slot {
    active: Active,
    m: TftpMetrics,
    peer: SocketAddr,
    ticket: u64,
    acknowledged: bool,
}

impl Slot {
    /// The client acknowledged for the first time: the transfer is real.
    fn acknowledged(&mut self) {
        if !self.acknowledged {
            self.acknowledged = true;
            self.m.unacknowledged.dec();
            request::confirmed(&mut lock(&self.active).in_flight, self.peer, self.ticket);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.m.in_flight.dec();
        if !self.acknowledged {
            self.m.unacknowledged.dec();
        }
        let mut books = lock(&self.active);
        books.tasks.remove(&self.ticket);
        request::finished(&mut books.in_flight, self.peer, self.ticket);
    }
}

/// Starts the thread of an accepted request's transfer, with its socket; `peer` is already in `active` and
/// leaves it when the transfer ends.
fn start(
    shared: &Arc<Shared>,
    m: &TftpMetrics,
    files: &Arc<Files>,
    active: &Active,
    sock: &UdpSocket,
    peer: SocketAddr,
    Accepted {
        name,
        request: req,
        ticket,
        ..
    }: Accepted,
) {
    let local = SocketAddr::new(
        sock.local_addr()
            .map(|a| a.ip())
            .unwrap_or(server_ip(shared)),
        0,
    );
    m.in_flight.inc();
    m.unacknowledged.inc();
    // Taken out of the books however the transfer ends, even if its socket or thread cannot be had.
    let mut slot = Slot {
        active: active.clone(),
        m: m.clone(),
        peer,
        ticket,
        acknowledged: false,
    };
    let failed = |e: &std::io::Error| {
        m.error("io");
        m.request(name, "failed");
        tracing::warn!(%peer, file = name, error = %e, "TFTP transfer failed: cannot open its socket or thread (see limits.tftp.transfers and the open-file limit)");
    };
    let link = match StdUdpSocket::bind(local).and_then(|s| s.connect(peer).map(|()| s)) {
        Ok(sock) => Arc::new(Link {
            sock,
            ended: AtomicBool::new(false),
        }),
        Err(e) => return failed(&e),
    };
    // In the books before the thread runs: an eviction can end it from its first instant.
    lock(active).tasks.insert(ticket, link.clone());
    let (shared, files, m2) = (shared.clone(), files.clone(), m.clone());
    let spawned = std::thread::Builder::new()
        .name("tftp-transfer".into())
        .stack_size(TRANSFER_STACK)
        .spawn(move || {
            let res = transfer_task(&shared, &m2, &files, &link, peer, &req, name, &mut slot);
            drop(slot);
            if let Err(e) = res {
                m2.error("io");
                m2.request(name, "failed");
                tracing::warn!(%peer, file = name, error = %e, "TFTP transfer failed");
            }
        });
    // A thread that cannot start drops its closure, and with it the slot (out of the books).
    if let Err(e) = spawned {
        failed(&e);
    }
}

/// The bytes of image `id`'s `uki.efi` (none: the peer boots no UKI).
fn read_uki(cluster: &crate::config::Cluster, id: Option<String>) -> std::io::Result<Bytes> {
    use std::io::Read;
    let id = id.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "this machine boots no UKI (no secure_boot, or its pinned image has none)",
        )
    })?;
    let mut a = crate::image::store::open(cluster)
        .open(&id, UKI_BOOTFILE)
        .map_err(std::io::Error::other)?;
    let mut v = Vec::with_capacity(a.size as usize);
    a.reader.read_to_end(&mut v)?;
    Ok(Bytes::from(v))
}

fn server_ip(shared: &Shared) -> std::net::IpAddr {
    shared.cluster().network.server.into()
}

/// Sends what the state machine asks for. DATA is built in `pkt` (header + slice of the file).
fn send_all(
    sock: &StdUdpSocket,
    out: &[Outgoing],
    data: &Bytes,
    pkt: &mut Vec<u8>,
) -> std::io::Result<()> {
    for o in out {
        match o {
            Outgoing::Packet(p) => {
                sock.send(p)?;
            }
            Outgoing::Data { block, range } => {
                encode_data_header(pkt, *block);
                pkt.extend_from_slice(&data[range.start as usize..range.end as usize]);
                sock.send(pkt)?;
            }
        }
    }
    Ok(())
}

/// The receive timeout of a transfer's socket, set only when it must change (see [`TIMER_SLACK`]).
struct Timer {
    armed: Option<Duration>,
}

impl Timer {
    /// Arms the socket to wait `want` (at least 1 ms) unless the armed timeout is within [`TIMER_SLACK`] of it.
    fn arm(&mut self, sock: &StdUdpSocket, want: Duration) -> std::io::Result<()> {
        let want = want.max(Duration::from_millis(1));
        if self
            .armed
            .is_some_and(|a| a <= want + TIMER_SLACK && want <= a + TIMER_SLACK)
        {
            return Ok(());
        }
        sock.set_read_timeout(Some(want))?;
        self.armed = Some(want);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn transfer_task(
    shared: &Shared,
    m: &TftpMetrics,
    files: &Arc<Files>,
    link: &Link,
    peer: SocketAddr,
    req: &Request,
    name: &'static str,
    slot: &mut Slot,
) -> std::io::Result<()> {
    let sock = &link.sock;
    let dir = shared.booter().boot_loader_dir(name);
    // The image whose signed UKI this transfer sends (named in the boot event, as the HTTP route does).
    let mut uki_image = None;
    let read = match files.boot.cached(&dir, name) {
        _ if name == UKI_BOOTFILE => {
            // The signed UKI of the peer's pinned image, read through the image store (manifest-checked). The
            // pins in force now: `booter()` re-reads them after an `imgbuild pin` (else the first boot after a
            // re-pin would get the image pinned before).
            let id = shared.booter().uki_for_ip(peer.ip());
            uki_image.clone_from(&id);
            read_uki(&shared.cluster(), id)
        }
        Ok(Some(d)) => Ok(d),
        _ => files.boot.read(&dir, name),
    };
    if link.ended() {
        return Ok(());
    }
    let data = match read {
        Ok(d) => d,
        Err(e) => {
            m.error("missing");
            m.request(name, "missing");
            tracing::error!(%peer, file = %dir.join(name).display(), error = %e, "TFTP: boot loader cannot be read");
            sock.send(&error_packet(ErrorCode::FileNotFound, "file not available"))?;
            return Ok(());
        }
    };
    let started = Instant::now();
    let limits = Limits::from_config(&shared.cluster().limits.tftp);
    let (mut t, out) = Transfer::start(req, data.len() as u64, &limits, started);
    if t.timeout_clamped {
        m.timeout_clamped.inc();
    }
    tracing::debug!(%peer, file = name, blksize = t.blksize(), windowsize = t.windowsize(), "TFTP transfer started");
    // Grows to one block with the first DATA sent: after ACK 0 when options were negotiated.
    let mut pkt = Vec::new();
    let mut buf = [0u8; TRANSFER_RECV];
    send_all(sock, &out, &data, &mut pkt)?;
    // Two system calls per block: the blocking `recv` (its timeout stays armed across blocks, every ACK moving
    // the deadline by one timeout period) and the `send` of the next block.
    let mut timer = Timer { armed: None };
    while !t.finished() {
        let wait = t.deadline().saturating_duration_since(Instant::now());
        let out = if wait.is_zero() {
            t.on_timeout(Instant::now())
        } else {
            timer.arm(sock, wait)?;
            let r = sock.recv(&mut buf);
            if link.ended() {
                return Ok(());
            }
            match r {
                Ok(n) => match Packet::parse(&buf[..n]) {
                    Ok(p) => {
                        let out = t.on_packet(&p, Instant::now());
                        if t.acknowledged() {
                            slot.acknowledged();
                        }
                        out
                    }
                    Err(_) => {
                        m.error("malformed");
                        Vec::new()
                    }
                },
                // The receive timeout (early or not: the deadline is checked on the next turn).
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Vec::new()
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Vec::new(),
                // ICMP port unreachable: the client went away.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    m.error("client_gone");
                    m.request(name, "aborted");
                    tracing::info!(%peer, file = name, "TFTP client went away");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        };
        send_all(sock, &out, &data, &mut pkt)?;
    }
    m.retransmits.inc_by(t.retransmits);
    m.bytes.inc_by(t.bytes_acked());
    match t.phase() {
        Phase::Done => {
            m.request(name, "ok");
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(%peer, file = name, bytes = data.len(), secs, blksize = t.blksize(), windowsize = t.windowsize(), "TFTP transfer complete");
            let detail = match &uki_image {
                Some(id) => format!("{name} of image {id} via TFTP"),
                None => format!("{name} via TFTP"),
            };
            match super::peers::mac_for_ip(shared, peer.ip()) {
                Some(mac) => {
                    shared
                        .events
                        .record(mac, "bootfile", detail, Source::Server);
                }
                None => {
                    tracing::debug!(%peer, "TFTP peer is no inventory machine; no boot event recorded")
                }
            }
        }
        _ => {
            let (kind, what) = match t.failure() {
                Some(Failure::TimedOut) => ("timeout", "timed out".to_string()),
                Some(Failure::Lifetime) => {
                    m.lifetime_ended.inc();
                    ("lifetime", "reached limits.tftp.lifetime".to_string())
                }
                Some(Failure::ClientError { code, message }) => {
                    ("client_error", format!("client error {code}: {message}"))
                }
                _ => ("illegal_packet", "illegal packet".to_string()),
            };
            m.error(kind);
            m.request(name, "failed");
            if kind == "client_error" {
                // Routine: many PXE ROMs ask for tsize, then abort with ERROR 8 and ask again.
                tracing::info!(%peer, file = name, reason = %what, "TFTP transfer ended by the client");
            } else {
                tracing::warn!(%peer, file = name, reason = %what, "TFTP transfer failed");
            }
        }
    }
    Ok(())
}
