//! The thin socket loop around the DHCP core: UDP 67 (and 4011 in proxy mode) bound to the provisioning
//! interface only (SO_BINDTODEVICE), broadcast replies, group commit of the lease journal.
//!
//! Each wake-up drains a batch of datagrams and runs them through the sans-IO [`process`] and
//! [`outgoing`] (bytes, table and clock in; journal records and addressed replies out); replies that grant
//! nothing (OFFER, NAK) go out at once. The batch's lease records and ACKs go to the journal thread, which
//! appends every waiting batch, fsyncs once, and only then sends the ACKs: an ACK never leaves before its
//! lease is on disk, and the loop keeps answering during the fsync.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::core::{Ignored, Port};
use super::journal::{Compaction, Journal, LEASES_FILE};
use super::leases::Record;
use super::metrics::DhcpMetrics;
use super::packet::{self, Malformed};
use super::process::{Outgoing, Processed, outgoing, process};
use crate::config::{DhcpMode, MacAddr};
use crate::netboot::state::Shared;
use crate::status::Source;

/// Datagrams handled per wake-up (one journal fsync each).
const BATCH: usize = 128;
/// Unknown MACs remembered for "log once" (bounded against spoofed floods).
const UNKNOWN_MEMORY: usize = 4096;

/// Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A UDP socket on `0.0.0.0:port` that only sees `iface`, may broadcast, and shares the port with another
/// DHCP server on the same host (proxy mode beside dnsmasq).
pub fn bind(iface: &str, port: u16) -> anyhow::Result<UdpSocket> {
    Ok(bind_pair(iface, port)?.0)
}

/// [`bind`], plus a duplicate of the socket for the journal thread (which sends the ACKs).
fn bind_pair(iface: &str, port: u16) -> anyhow::Result<(UdpSocket, std::net::UdpSocket)> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| {
        format!("cannot bind the DHCP socket to interface {iface:?} ([network] interface in cluster.toml): does it exist here?")
    })?;
    // Bursts of hundreds of clients: deep queues instead of drops (beyond net.core.*mem_max when root).
    force_buffer(&s, libc::SO_RCVBUFFORCE, 4 << 20);
    force_buffer(&s, libc::SO_SNDBUFFORCE, 4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .with_context(|| format!("cannot bind UDP port {port} on {iface}"))?;
    let dup: std::net::UdpSocket = s.try_clone()?.into();
    Ok((UdpSocket::from_std(s.into())?, dup))
}

/// Sets a socket buffer size with the root-only `*FORCE` option, falling back to the capped one.
fn force_buffer(s: &Socket, opt: libc::c_int, bytes: usize) {
    use std::os::fd::AsRawFd;
    let val = bytes as libc::c_int;
    // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = if opt == libc::SO_RCVBUFFORCE {
            s.set_recv_buffer_size(bytes)
        } else {
            s.set_send_buffer_size(bytes)
        };
    }
}

async fn readable(s: &Option<UdpSocket>) -> std::io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Runs the DHCP server until an unrecoverable socket error.
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let cluster = shared.cluster();
    let iface = cluster.network.interface.clone();
    let mode = cluster.network.dhcp_mode;
    let metrics = DhcpMetrics::default();
    shared.register_metrics(|r| metrics.register(r));
    let journal_path = cluster.paths.state.join(LEASES_FILE);
    let (journal, mut table) = Journal::open(&journal_path, unix_now())?;
    shared.leases.load(table.leases());
    metrics.leases.set(table.live(unix_now()) as i64);
    metrics
        .journal_skipped_lines
        .set(journal.skipped_lines() as i64);
    let (s67, w67) = bind_pair(&iface, 67)?;
    let (s4011, w4011) = match mode {
        DhcpMode::Proxy => {
            let (s, w) = bind_pair(&iface, 4011)?;
            (Some(s), Some(w))
        }
        DhcpMode::Full => (None, None),
    };
    let writer = spawn_writer(
        journal,
        table.clone(),
        w67,
        w4011,
        metrics.clone(),
        shared.clone(),
    )?;
    // Requests queue on the bound sockets while the first probe for another DHCP server runs (at most 2 s).
    shared.register_metrics(|r| shared.dhcp_probe.register(r));
    super::probe::watch(
        shared.dhcp_probe.clone(),
        iface.clone(),
        cluster.network.server,
        mode,
        crate::netboot::notify::tell,
    )
    .await;
    tracing::info!(interface = %iface, mode = ?mode, leases = table.live(unix_now()), journal = %journal_path.display(), "DHCP server listening");
    shared.ready.bound("dhcp");

    let mut buf = vec![0u8; packet::MAX_LEN + 512];
    let mut unknown_seen: HashSet<MacAddr> = HashSet::new();
    let mut warned_restart = false;
    let mut last_gauge = std::time::Instant::now();
    loop {
        tokio::select! {
            r = s67.readable() => r?,
            r = readable(&s4011) => r?,
        }
        if !shared.dhcp_probe.answering() {
            // Full mode beside another DHCP server (see probe.rs): read and drop.
            for s in [Some(&s67), s4011.as_ref()].into_iter().flatten() {
                while s.try_recv_from(&mut buf).is_ok() {}
            }
            continue;
        }
        let booter = shared.booter();
        let net = &booter.cluster.network;
        if !warned_restart && (net.interface != iface || net.dhcp_mode != mode) {
            warned_restart = true;
            tracing::warn!(old_interface = %iface, new_interface = %net.interface, "the DHCP interface or mode changed in cluster.toml: restart `imgbuild serve` for that; everything else was reloaded");
        }
        let now = unix_now();
        table.pool_paused = shared
            .pool_conflict
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut out: Vec<Outgoing> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        for (sock, port) in [(Some(&s67), Port::Dhcp), (s4011.as_ref(), Port::Pxe)] {
            let Some(sock) = sock else { continue };
            for _ in 0..BATCH {
                let (n, from) = match sock.try_recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "DHCP receive error");
                        break;
                    }
                };
                if super::probe::is_probe(&buf[..n]) {
                    continue;
                }
                let outcome = match process(&buf[..n], port, &booter, &mut table, now, &metrics) {
                    Processed::Dropped(why) => {
                        log_drop(why, from, n);
                        continue;
                    }
                    Processed::Handled(o) => o,
                };
                if let Some(w) = &outcome.warning {
                    tracing::warn!("{w}");
                }
                if outcome.ignored == Some(Ignored::UnknownMac) {
                    let mac = outcome.mac;
                    if unknown_seen.len() < UNKNOWN_MEMORY && unknown_seen.insert(mac) {
                        tracing::info!(%mac, "DHCP request from a machine not in the inventory: ignored (logged once per MAC); add a [[machines]] entry with mac = \"{mac}\" to cluster.toml, or set [network] unknown_pool");
                    }
                }
                if let Some(o) = outgoing(*outcome, from, port, now, &mut records) {
                    out.push(o);
                }
            }
        }
        // Replies that grant nothing (OFFER, NAK, INFORM ACK, proxy) go out at once; the journal thread
        // writes and fsyncs the lease records, then sends the ACKs.
        let (acks, rest): (Vec<Outgoing>, Vec<Outgoing>) = out.into_iter().partition(|p| p.durable);
        for p in rest {
            send(&s67, s4011.as_ref(), p, &metrics, &shared).await;
        }
        if !records.is_empty() || !acks.is_empty() {
            writer
                .send(Batch { records, acks })
                .map_err(|_| anyhow::anyhow!("the lease journal thread stopped"))?;
        }
        if last_gauge.elapsed().as_secs() >= 1 {
            last_gauge = std::time::Instant::now();
            table.prune(now);
            metrics.leases.set(table.live(now) as i64);
            metrics.declined.set(table.declined(now) as i64);
        }
    }
}

/// The lease records of a batch of requests and the ACKs that wait for them.
struct Batch {
    records: Vec<Record>,
    acks: Vec<Outgoing>,
}

/// The journal thread: group commit. It takes every batch waiting, appends their records, fsyncs once, and
/// only then sends their ACKs, so the socket loop keeps answering during the fsync. It keeps its own copy of
/// the table (from the same records) for compaction.
fn spawn_writer(
    mut journal: Journal,
    mut mirror: super::leases::LeaseTable,
    s67: std::net::UdpSocket,
    s4011: Option<std::net::UdpSocket>,
    metrics: DhcpMetrics,
    shared: Arc<Shared>,
) -> anyhow::Result<std::sync::mpsc::SyncSender<Batch>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(4096);
    std::thread::Builder::new()
        .name("dhcp-journal".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batches = vec![first];
                batches.extend(rx.try_iter());
                for b in &batches {
                    for r in &b.records {
                        journal.append(r);
                    }
                }
                let started = std::time::Instant::now();
                let res = journal.commit();
                if res.is_ok() {
                    // Only what is on disk: a compaction must never write a lease that was not acknowledged,
                    // and the HTTP side must never take reports from an address whose ACK may not go out.
                    for r in batches.iter().flat_map(|b| &b.records) {
                        mirror.replay(r);
                        shared.leases.replay(r);
                    }
                }
                let took = started.elapsed();
                metrics.journal_sync_seconds.observe(took.as_secs_f64());
                if took > std::time::Duration::from_millis(500) {
                    tracing::warn!(
                        seconds = took.as_secs_f64(),
                        "the lease journal fsync was slow: ACKs waited for it (is the disk of the state directory busy?)"
                    );
                }
                let synced = match res {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(
                            "{e}: withholding the ACKs of this batch (their leases are not on disk; the journal is cut back to its last good record); free space in the state directory"
                        );
                        false
                    }
                };
                for p in batches.into_iter().flat_map(|b| b.acks) {
                    if !synced {
                        metrics.journal_errors.inc();
                        continue;
                    }
                    let sock = match (&s4011, p.pxe_port) {
                        (Some(s), true) => s,
                        _ => &s67,
                    };
                    if !send_blocking(sock, &p) {
                        continue;
                    }
                    metrics.replies.get_or_create(&[("type", p.kind)]).inc();
                    for ev in p.events {
                        shared
                            .events
                            .record(ev.mac, ev.stage, ev.detail, Source::Server);
                    }
                }
                let started = std::time::Instant::now();
                match journal.maybe_compact(&mirror, unix_now()) {
                    Ok(Compaction::Idle) => {}
                    Ok(Compaction::Started | Compaction::Finished) => metrics
                        .journal_compaction_seconds
                        .observe(started.elapsed().as_secs_f64()),
                    Err(e) => {
                        metrics.journal_compaction_failures.inc();
                        tracing::error!(
                            "lease journal compaction failed (the journal is still in use and intact; tried again 10 000 records later): {e}"
                        );
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Sends on the (non-blocking) duplicate socket, waiting (poll, up to 2 s) while the send buffer is full.
fn send_blocking(sock: &std::net::UdpSocket, p: &Outgoing) -> bool {
    use std::os::fd::AsRawFd;
    for _ in 0..20 {
        match sock.send_to(&p.bytes, p.to) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => {
                tracing::debug!(to = %p.to, error = %e, "DHCP send failed");
                return false;
            }
        }
    }
    tracing::debug!(to = %p.to, "DHCP send timed out (send buffer full)");
    false
}

/// Sends one reply and records its boot events.
async fn send(
    s67: &UdpSocket,
    s4011: Option<&UdpSocket>,
    p: Outgoing,
    metrics: &DhcpMetrics,
    shared: &Shared,
) {
    let sock = if p.pxe_port {
        s4011.unwrap_or(s67)
    } else {
        s67
    };
    if p.bytes.is_empty() {
        return;
    }
    match sock.send_to(&p.bytes, p.to).await {
        Ok(_) => {
            metrics.replies.get_or_create(&[("type", p.kind)]).inc();
            for ev in p.events {
                shared
                    .events
                    .record(ev.mac, ev.stage, ev.detail, Source::Server);
            }
        }
        Err(e) => tracing::debug!(to = %p.to, error = %e, "DHCP send failed"),
    }
}

fn log_drop(why: Malformed, from: SocketAddr, len: usize) {
    tracing::debug!(%from, len, reason = %why, "dropped a malformed DHCP datagram");
}
