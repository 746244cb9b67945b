//! Is another DHCP server answering on the provisioning interface? Before it answers as a full server, and
//! then every [`INTERVAL`], `imgbuild serve` broadcasts a DISCOVER from a probe MAC ([`PROBE_MAC`]) and listens
//! [`WAIT`] for OFFERs; any OFFER not from this server's own address is another server. In full mode DHCP then
//! stops answering (two servers would hand out conflicting addresses) and says which server it saw and that
//! `dhcp_mode = "proxy"` boots machines beside it; it answers again once a probe sees no other server. In
//! proxy mode another server is expected: none seen is the warning. Findings are metrics
//! (`imgbuild_dhcp_other_servers`, `imgbuild_dhcp_other_server{address}`, `imgbuild_dhcp_answering`) and on the
//! status page ([`Findings::snapshot`]).
//!
//! [`discover`] and [`offer_server`] are pure; [`probe`] moves the bytes; [`watch`] runs the probes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::config::DhcpMode;

/// The probe's client MAC: locally administered (02:…), spells "imgbd"; never an inventory machine's.
pub const PROBE_MAC: [u8; 6] = [0x02, 0x69, 0x6d, 0x67, 0x62, 0x64];
/// How long a probe listens for OFFERs (ISC dhcpd pings an address for 1 s before offering it).
pub const WAIT: Duration = Duration::from_secs(2);
/// Time between probes while serving.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The DISCOVER a probe broadcasts: from `mac`, transaction `xid`, asking for a broadcast reply.
pub fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, z, z, z, z, &mac);
    m.set_opcode(Opcode::BootRequest)
        .set_flags(Flags::default().set_broadcast());
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::ServerIdentifier,
    ]));
    super::packet::encode(&m)
}

/// Whether a request is our own probe's (client hardware address [`PROBE_MAC`]): the server drops it unanswered
/// and unlogged, whatever its mode and pool.
pub fn is_probe(bytes: &[u8]) -> bool {
    bytes.get(28..34) == Some(&PROBE_MAC[..])
}

/// The address of the server that sent `bytes` when it is an OFFER to the probe (`xid`, `mac`) from another
/// server than `own`: its server identifier (option 54), else the datagram's source address.
pub fn offer_server(
    bytes: &[u8],
    xid: u32,
    mac: [u8; 6],
    own: Ipv4Addr,
    from: Ipv4Addr,
) -> Option<Ipv4Addr> {
    let m: Message = dhcproto::Decodable::decode(&mut dhcproto::Decoder::new(bytes)).ok()?;
    if m.opcode() != Opcode::BootReply || m.xid() != xid || m.chaddr().get(..6) != Some(&mac[..]) {
        return None;
    }
    if m.opts().msg_type() != Some(MessageType::Offer) {
        return None;
    }
    let server = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => *a,
        _ => from,
    };
    (server != own && !server.is_unspecified()).then_some(server)
}

/// Broadcasts one DISCOVER on `iface` and returns every other server that OFFERed within `wait` (sorted, once
/// each). Needs UDP port 68 (CAP_NET_BIND_SERVICE); shares it with a DHCP client on the host (SO_REUSEADDR).
pub async fn probe(iface: &str, own: Ipv4Addr, wait: Duration) -> std::io::Result<Vec<Ipv4Addr>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())?;
    let sock = tokio::net::UdpSocket::from_std(s.into())?;
    let xid: u32 = rand::random();
    sock.send_to(
        &discover(PROBE_MAC, xid),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
    )
    .await?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1500];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        let (n, from) = r?;
        let SocketAddr::V4(from) = from else { continue };
        if let Some(a) = offer_server(&buf[..n], xid, PROBE_MAC, own, *from.ip())
            && !found.contains(&a)
        {
            found.push(a);
        }
    }
    found.sort();
    Ok(found)
}

/// What the probes found, shared with the DHCP loop (answer or not), `/metrics` and the status page.
#[derive(Default)]
pub struct Findings {
    answering: AtomicBool,
    state: std::sync::Mutex<Snapshot>,
    other_servers: Gauge,
    other_server: Family<Vec<(String, String)>, Gauge>,
    answering_gauge: Gauge,
    probes: Family<Vec<(String, String)>, Counter>,
}

/// The last probe's result, as the status page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// `full` or `proxy`.
    pub mode: String,
    /// Whether a probe has completed since the server started.
    pub probed: bool,
    /// Other DHCP servers that answered the last probe.
    pub others: Vec<String>,
    /// Whether DHCP answers requests (false: full mode beside another server).
    pub answering: bool,
    /// What the operator should know, empty when all is well.
    pub message: String,
}

impl Findings {
    /// Registers the probe's metric families.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "dhcp_other_servers",
            "Other DHCP servers that answered the last probe on the provisioning interface",
            self.other_servers.clone(),
        );
        r.register(
            "dhcp_other_server",
            "1 for each other DHCP server (by address) that answered the last probe",
            self.other_server.clone(),
        );
        r.register(
            "dhcp_answering",
            "1 when DHCP answers requests; 0 in full mode while another DHCP server answers on the interface",
            self.answering_gauge.clone(),
        );
        r.register(
            "dhcp_probes",
            "Probes for other DHCP servers, by result (clear, found, error)",
            self.probes.clone(),
        );
    }

    /// Whether the DHCP loop answers requests now.
    pub fn answering(&self) -> bool {
        self.answering.load(Ordering::Relaxed)
    }

    /// The last probe's result.
    pub fn snapshot(&self) -> Snapshot {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a probe's result; returns the message to log, if any, when the situation changed.
    fn record(
        &self,
        iface: &str,
        mode: DhcpMode,
        result: &std::io::Result<Vec<Ipv4Addr>>,
    ) -> Option<(bool, String)> {
        let mode_name = match mode {
            DhcpMode::Full => "full",
            DhcpMode::Proxy => "proxy",
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = (st.others.clone(), st.answering, st.probed);
        let (others, message, bad) = match result {
            Err(e) => {
                self.probes.get_or_create(&label("error")).inc();
                // Cannot tell: keep answering (or keep the last finding).
                let msg = format!(
                    "cannot probe {iface} for other DHCP servers: {e}; is UDP port 68 free (`imgbuild doctor`)?"
                );
                (st.others.clone(), msg, true)
            }
            Ok(found) => {
                let others: Vec<String> = found.iter().map(|a| a.to_string()).collect();
                self.probes
                    .get_or_create(&label(if found.is_empty() { "clear" } else { "found" }))
                    .inc();
                let msg = match (mode, others.is_empty()) {
                    (DhcpMode::Full, false) => format!(
                        "another DHCP server answers on {iface}: {}; imgbuild does not answer DHCP in full mode beside it (two servers would hand out conflicting addresses). Set dhcp_mode = \"proxy\" in [network] of cluster.toml to boot machines beside it, or stop that server; DHCP answers again once a probe (every {}s) no longer sees it",
                        others.join(", "),
                        INTERVAL.as_secs()
                    ),
                    (DhcpMode::Proxy, true) => format!(
                        "proxy mode, but no DHCP server answered a probe on {iface}: machines will get no address. Start the network's DHCP server, or set dhcp_mode = \"full\" in [network] of cluster.toml"
                    ),
                    _ => String::new(),
                };
                let bad = !msg.is_empty();
                (others, msg, bad)
            }
        };
        let answering = mode == DhcpMode::Proxy || others.is_empty();
        self.answering.store(answering, Ordering::Relaxed);
        self.answering_gauge.set(answering as i64);
        self.other_servers.set(others.len() as i64);
        self.other_server.clear();
        for o in &others {
            self.other_server
                .get_or_create(&vec![("address".into(), o.clone())])
                .set(1);
        }
        *st = Snapshot {
            mode: mode_name.into(),
            probed: true,
            others: others.clone(),
            answering,
            message: message.clone(),
        };
        let changed = before != (others, answering, true);
        (changed || result.is_err()).then_some((bad, message))
    }
}

fn label(result: &str) -> Vec<(String, String)> {
    vec![("result".into(), result.into())]
}

/// Runs the first probe (at most [`WAIT`]), records it, then probes every [`INTERVAL`] in a task of its own.
/// The DHCP loop asks [`Findings::answering`] before answering. `notify` is told each change (for systemd's
/// `STATUS=`).
pub async fn watch(
    findings: Arc<Findings>,
    iface: String,
    own: Ipv4Addr,
    mode: DhcpMode,
    notify: fn(&str),
) {
    findings.answering.store(true, Ordering::Relaxed);
    findings.answering_gauge.set(1);
    let once = {
        let (f, i) = (findings.clone(), iface.clone());
        move || {
            let (f, i) = (f.clone(), i.clone());
            async move {
                let r = probe(&i, own, WAIT).await;
                if let Some((bad, msg)) = f.record(&i, mode, &r) {
                    if bad {
                        tracing::error!("{msg}");
                        notify(&format!("STATUS={msg}"));
                    } else {
                        tracing::info!(interface = %i, "no other DHCP server answers on the interface: DHCP answers");
                        notify("STATUS=serving");
                    }
                }
            }
        }
    };
    once().await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            once().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(xid: u32, mac: [u8; 6], server: Option<Ipv4Addr>) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, z, Ipv4Addr::new(10, 0, 0, 50), z, z, &mac);
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        if let Some(s) = server {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(s));
        }
        super::super::packet::encode(&m)
    }

    #[test]
    fn an_offer_to_the_probe_from_another_server_names_it() {
        let own = Ipv4Addr::new(10, 77, 0, 1);
        let other = Ipv4Addr::new(10, 77, 0, 254);
        let src = Ipv4Addr::new(10, 77, 0, 253);
        assert_eq!(
            offer_server(&offer(7, PROBE_MAC, Some(other)), 7, PROBE_MAC, own, src),
            Some(other)
        );
        // No server identifier: the source address.
        assert_eq!(
            offer_server(&offer(7, PROBE_MAC, None), 7, PROBE_MAC, own, src),
            Some(src)
        );
        // Our own offer, another transaction, another client, our own DISCOVER: not another server.
        assert_eq!(
            offer_server(&offer(7, PROBE_MAC, Some(own)), 7, PROBE_MAC, own, src),
            None
        );
        assert_eq!(
            offer_server(&offer(8, PROBE_MAC, Some(other)), 7, PROBE_MAC, own, src),
            None
        );
        assert_eq!(
            offer_server(
                &offer(7, [2, 0, 0, 0, 0, 1], Some(other)),
                7,
                PROBE_MAC,
                own,
                src
            ),
            None
        );
        assert_eq!(
            offer_server(&discover(PROBE_MAC, 7), 7, PROBE_MAC, own, src),
            None
        );
        assert_eq!(offer_server(b"junk", 7, PROBE_MAC, own, src), None);
        assert!(is_probe(&discover(PROBE_MAC, 9)));
        assert!(!is_probe(&discover([2, 0, 0, 0, 0, 1], 9)) && !is_probe(b"short"));
    }

    #[test]
    fn full_mode_stops_answering_beside_another_server_and_resumes_when_it_is_gone() {
        let f = Findings::default();
        let other = Ipv4Addr::new(192, 168, 1, 1);
        let (bad, msg) = f.record("br0", DhcpMode::Full, &Ok(vec![other])).unwrap();
        assert!(bad && !f.answering());
        assert!(
            msg.contains("192.168.1.1") && msg.contains("dhcp_mode = \"proxy\""),
            "{msg}"
        );
        assert_eq!(
            f.record("br0", DhcpMode::Full, &Ok(vec![other])),
            None,
            "no change, no new log"
        );
        let (bad, _) = f.record("br0", DhcpMode::Full, &Ok(vec![])).unwrap();
        assert!(!bad && f.answering());
        // Proxy mode answers beside it; alone, it warns.
        assert_eq!(
            f.record("br0", DhcpMode::Proxy, &Ok(vec![other]))
                .map(|x| x.0),
            Some(false)
        );
        assert!(f.answering());
        let (bad, msg) = f.record("br0", DhcpMode::Proxy, &Ok(vec![])).unwrap();
        assert!(bad && msg.contains("no DHCP server answered"), "{msg}");
    }
}
