//! The TFTP server: read-only, allowlisted boot loaders only.
//!
//! Sans-IO cores, unit-tested and fuzzed without sockets: [`packet`] parses and encodes, [`request`] decides
//! what a datagram on the listening port leads to (allowlist → TFTP error code, repeated-request guard), and
//! [`transfer`] is the per-transfer state machine (option negotiation; packets and the clock in, packets out).
//! This file is the thin tokio loop that only moves bytes and time: a listening socket on
//! `network.server:network.tftp_port` that acts on each [`request::decide`], and one task with its own
//! ephemeral socket per transfer (RFC 1350 TIDs), the tasks spread over a few threads ([`WORKERS`]). The
//! socket of a transfer is connected to the client, so datagrams from any other address or port never reach it.
//!
//! Bounded against a hostile LAN (`[limits.tftp]`): caps on transfers in flight, in all and per client
//! address ([`request`] decides, evicting the oldest unacknowledged transfer first); the client's `timeout`
//! option clamped and a lifetime per transfer ([`transfer`]); until the client's first ACK a transfer holds
//! its socket and a few hundred bytes of state, and its DATA buffer grows only with the blocks it sends.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod packet;
pub mod request;
pub mod transfer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// The transfers in flight (the sans-IO books) and the tasks that run them, by ticket.
struct Books {
    in_flight: InFlight,
    tasks: HashMap<u64, tokio::task::AbortHandle>,
}

type Active = Arc<Mutex<Books>>;

fn lock(a: &Active) -> std::sync::MutexGuard<'_, Books> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

/// Largest datagram read on the listening port (an RRQ with options is far smaller).
const RECV_BUF: usize = 2048;
/// Largest datagram read on a transfer's socket: ACKs are 4 bytes, a client's ERROR a short message.
const TRANSFER_RECV: usize = 600;

/// Threads that run transfers (each a single-threaded runtime), beside the listening thread.
///
/// Lock-step transfers are latency-bound: a thread that both polls a transfer's socket and runs it needs one
/// wake-up per packet (as dnsmasq does) instead of a hand-off between runtime threads, so a transfer stays on
/// one thread for its whole life. Transfers are spread over the threads round-robin, so hundreds of clients
/// are served by all cores, and a machine busy with other work schedules several TFTP threads, not one.
const WORKERS: usize = 8;

/// Runs the TFTP server until the socket fails. TFTP gets its own threads: the listening socket on one, the
/// transfers spread over [`WORKERS`] others (each transfer has its own socket, RFC 1350 TIDs).
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let workers = (0..WORKERS)
        .map(|i| worker(i).with_context(|| format!("TFTP: cannot start transfer thread {i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || {
            let res = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("TFTP: cannot start its runtime")
                .and_then(|rt| rt.block_on(serve(shared, workers)));
            let _ = tx.send(res);
        })
        .context("TFTP: cannot start its thread")?;
    rx.await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the TFTP thread ended without a result")))
}

/// A transfer thread: the handle that spawns transfer tasks onto its runtime, and its stop (the thread ends,
/// and its transfers with it, when this is dropped with the listening loop).
struct Worker {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts transfer thread `i`: a single-threaded runtime that runs until its [`Worker`] is dropped.
fn worker(i: usize) -> std::io::Result<Worker> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("tftp-{i}"))
        .spawn(move || {
            let _ = rt.block_on(stopped);
        })?;
    Ok(Worker {
        handle,
        _stop: stop,
    })
}

/// What transfers read: the boot-loader cache.
struct Files {
    boot: BootFiles,
}

async fn serve(shared: Arc<Shared>, workers: Vec<Worker>) -> anyhow::Result<()> {
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
                // The oldest transfer no client acknowledged makes room: end its task (its socket closes).
                if let Some(task) = books.tasks.remove(ticket) {
                    task.abort();
                }
                m.evicted.inc();
                tracing::debug!(%old, "unacknowledged TFTP transfer ended to make room (limits.tftp.transfers)");
            }
            d
        };
        match decision {
            Decision::Start(accepted) => {
                let on = &workers[accepted.ticket as usize % workers.len()].handle;
                start(&shared, &m, &files, &active, &sock, on, peer, accepted)
            }
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

/// Spawns the transfer task of an accepted request on the transfer thread `on`; `peer` is already in `active`
/// and leaves it when the transfer ends.
#[allow(clippy::too_many_arguments)]
fn start(
    shared: &Arc<Shared>,
    m: &TftpMetrics,
    files: &Arc<Files>,
    active: &Active,
    sock: &UdpSocket,
    on: &tokio::runtime::Handle,
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
    let (shared, files, active, m) = (shared.clone(), files.clone(), active.clone(), m.clone());
    m.in_flight.inc();
    m.unacknowledged.inc();
    let mut slot = Slot {
        active: active.clone(),
        m: m.clone(),
        peer,
        ticket,
        acknowledged: false,
    };
    // The books stay locked until the task's abort handle is in them: the task runs on another thread and
    // takes itself out of the books when it ends (its slot's drop waits for this lock), so it can never end
    // before its handle is recorded and leave a stale one behind.
    let mut books = lock(&active);
    let task = on.spawn(async move {
        let res = transfer_task(&shared, &m, &files, local, peer, &req, name, &mut slot).await;
        drop(slot);
        if let Err(e) = res {
            m.error("io");
            m.request(name, "failed");
            tracing::warn!(%peer, file = name, error = %e, "TFTP transfer failed");
        }
    });
    books.tasks.insert(ticket, task.abort_handle());
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
async fn send_all(
    sock: &UdpSocket,
    out: &[Outgoing],
    data: &Bytes,
    pkt: &mut Vec<u8>,
) -> std::io::Result<()> {
    for o in out {
        match o {
            Outgoing::Packet(p) => {
                sock.send(p).await?;
            }
            Outgoing::Data { block, range } => {
                encode_data_header(pkt, *block);
                pkt.extend_from_slice(&data[range.start as usize..range.end as usize]);
                sock.send(pkt).await?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn transfer_task(
    shared: &Shared,
    m: &TftpMetrics,
    files: &Arc<Files>,
    local: SocketAddr,
    peer: SocketAddr,
    req: &Request,
    name: &'static str,
    slot: &mut Slot,
) -> std::io::Result<()> {
    let sock = UdpSocket::bind(local).await?;
    sock.connect(peer).await?;
    let dir = shared.booter().boot_loader_dir(name);
    // The image whose signed UKI this transfer sends (named in the boot event, as the HTTP route does).
    let mut uki_image = None;
    let read = match files.boot.cached(&dir, name) {
        _ if name == UKI_BOOTFILE => {
            // The signed UKI of the peer's pinned image, read through the image store (manifest-checked). The
            // pins in force now: `booter()` re-reads them after an `imgbuild pin` (else the first boot after a
            // re-pin would get the image pinned before).
            let (shared_c, ip) = (shared.cluster(), peer.ip());
            let id = shared.booter().uki_for_ip(ip);
            uki_image.clone_from(&id);
            tokio::task::spawn_blocking(move || read_uki(&shared_c, id))
                .await
                .map_err(std::io::Error::other)?
        }
        Ok(Some(d)) => Ok(d),
        _ => {
            let (files, dir) = (files.clone(), dir.clone());
            tokio::task::spawn_blocking(move || files.boot.read(&dir, name))
                .await
                .map_err(std::io::Error::other)?
        }
    };
    let data = match read {
        Ok(d) => d,
        Err(e) => {
            m.error("missing");
            m.request(name, "missing");
            tracing::error!(%peer, file = %dir.join(name).display(), error = %e, "TFTP: boot loader cannot be read");
            sock.send(&error_packet(ErrorCode::FileNotFound, "file not available"))
                .await?;
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
    send_all(&sock, &out, &data, &mut pkt).await?;
    // One lazy timer for the whole transfer: every ACK moves the deadline later, and resetting a tokio timer
    // per block was measurable (docs/performance.md). The armed timer stays where it is; when it fires early it
    // is re-armed to the real deadline (one timer operation per timeout period, not per block). Only a deadline
    // that moved earlier (an ACK during backoff) re-arms it at once.
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(t.deadline()));
    tokio::pin!(timer);
    while !t.finished() {
        let deadline = tokio::time::Instant::from_std(t.deadline());
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        let out = tokio::select! {
            r = sock.recv(&mut buf) => {
                match r {
                    Ok(n) => match Packet::parse(&buf[..n]) {
                        Ok(p) => {
                            let out = t.on_packet(&p, Instant::now());
                            if t.acknowledged() {
                                slot.acknowledged();
                            }
                            out
                        }
                        Err(_) => { m.error("malformed"); Vec::new() }
                    },
                    // ICMP port unreachable: the client went away.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        m.error("client_gone");
                        m.request(name, "aborted");
                        tracing::info!(%peer, file = name, "TFTP client went away");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                let out = if now >= t.deadline() { t.on_timeout(now) } else { Vec::new() };
                timer.as_mut().reset(tokio::time::Instant::from_std(t.deadline()));
                out
            }
        };
        send_all(&sock, &out, &data, &mut pkt).await?;
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
