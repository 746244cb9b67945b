//! IPv6 router advertisements on the provisioning interface, only to end iPXE's IPv6 wait.
//!
//! Debian's iPXE waits ~16 s for IPv6 autoconfiguration when no router advertisement arrives. An RA with no
//! prefix, no flags and router lifetime 0 ("I am not a default router") completes it at once and configures
//! nothing on any host. Sent to all-nodes (ff02::1) every [`PERIOD`] and in answer to each router solicitation,
//! from a raw ICMPv6 socket bound to `[network] interface` (the kernel fills in the checksum; hop limit 255 as
//! RFC 4861 requires). Enabled by `[network] router_advertisements = true`.

use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::state::Shared;

/// How often an unsolicited advertisement is sent.
pub const PERIOD: Duration = Duration::from_secs(3);
/// Minimum spacing of solicited answers (a burst of booting machines gets one answer per window).
pub const MIN_GAP: Duration = Duration::from_millis(200);

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;

/// The advertisement: ICMPv6 type 134, cur hop limit 64, no flags, router lifetime 0, reachable time and
/// retransmit timer unspecified, no options. The checksum (bytes 2-3) is computed by the kernel.
pub fn advertisement() -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ROUTER_ADVERTISEMENT;
    p[4] = 64;
    p
}

/// Whether an ICMPv6 message is a router solicitation (type 133, code 0, at least 8 bytes).
pub fn is_solicitation(msg: &[u8]) -> bool {
    msg.len() >= 8 && msg[0] == ROUTER_SOLICITATION && msg[1] == 0
}

/// Counters exported on `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct RaMetrics {
    /// Router advertisements sent, periodic and in answer to solicitations (`ra_sent`).
    pub sent: Counter,
    /// Router solicitations received on the interface (`ra_solicitations`).
    pub solicitations: Counter,
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name contains NUL")?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        anyhow::bail!(
            "no interface {name:?} (router advertisements need [network] interface to exist)"
        );
    }
    Ok(idx)
}

fn open(interface: &str, idx: u32) -> anyhow::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .context("raw ICMPv6 socket (needs root or CAP_NET_RAW)")?;
    s.bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding the RA socket to {interface}"))?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(idx)?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&ALL_ROUTERS, idx)
        .context("joining ff02::2 to hear router solicitations")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Sends advertisements on `interface` until the task is dropped.
pub async fn run_on(interface: &str, metrics: RaMetrics) -> anyhow::Result<()> {
    let idx = ifindex(interface)?;
    // SAFETY: the Socket owns its descriptor, which stays open and unchanged for the AsyncFd's lifetime.
    let fd = unsafe { AsyncFd::register(open(interface, idx)?) }
        .map_err(|e| anyhow::anyhow!("registering the RA socket: {e}"))?;
    let dest = SocketAddrV6::new(ALL_NODES, 0, 0, idx).into();
    let ra = advertisement();
    let mut tick = tokio::time::interval(PERIOD);
    let mut last_solicited = tokio::time::Instant::now() - PERIOD;
    let mut warned = false;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    tracing::info!(%interface, "sending IPv6 router advertisements (no prefix, router lifetime 0)");
    loop {
        let send_now = tokio::select! {
            _ = tick.tick() => true,
            r = fd.readable() => {
                let mut guard = r?;
                let mut solicited = false;
                while let Ok(Ok(n)) = guard.try_io(|s| s.get_ref().recv(&mut buf)) {
                    // SAFETY: recv initialised the first n bytes.
                    let msg: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                    if is_solicitation(&msg) {
                        metrics.solicitations.inc();
                        solicited = true;
                    }
                }
                solicited && last_solicited.elapsed() >= MIN_GAP
            }
        };
        if !send_now {
            continue;
        }
        match fd.get_ref().send_to(&ra, &dest) {
            Ok(_) => {
                metrics.sent.inc();
                last_solicited = tokio::time::Instant::now();
                warned = false;
            }
            // No link-local address yet (DAD in progress) or link down: try again at the next tick.
            Err(e) => {
                if !warned {
                    tracing::warn!(%interface, error = %e, "cannot send a router advertisement yet");
                    warned = true;
                }
            }
        }
    }
}

/// The server task: advertisements on the cluster's provisioning interface, counters on `/metrics`.
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let metrics = RaMetrics::default();
    let m = metrics.clone();
    shared.register_metrics(move |r| {
        r.register(
            "ra_sent",
            "IPv6 router advertisements sent (no prefix, lifetime 0)",
            m.sent,
        );
        r.register(
            "ra_solicitations",
            "IPv6 router solicitations received",
            m.solicitations,
        );
    });
    let interface = shared.cluster().network.interface.clone();
    run_on(&interface, metrics).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_has_no_lifetime_and_no_options() {
        let ra = advertisement();
        assert_eq!(ra.len(), 16);
        assert_eq!(ra[0], 134);
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(ra[5], 0, "no M/O flags");
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
    }
}
