//! The sans-IO DHCP core: a pure function from (request, boot decision + inventory, lease table, clock, port)
//! to (reply and where to send it, lease changes, boot events, why it was ignored).
//!
//! Full mode hands out inventory addresses (and pool addresses to unknown machines when a pool is
//! configured); proxy mode answers PXE clients with boot information only. Which boot file a client gets is
//! asked of [`Booter::dhcp_bootfile`]; nothing here decides it.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};

use super::leases::{Change, Lease, LeaseTable};
use super::packet::{ClientInfo, Vendor};
use crate::config::{Cluster, DhcpMode, DhcpSubnet, MacAddr, Machine, Pool};
use crate::netboot::boot::{BootFile, Booter, Client};

/// How long a pool address stays reserved after an OFFER.
pub const OFFER_HOLD_SECS: u64 = 60;

/// Which server port a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: DHCP (full mode) or proxyDHCP offers (proxy mode).
    Dhcp,
    /// 4011: PXE boot server requests after a proxy offer (proxy mode only).
    Pxe,
}

/// Inputs of one decision besides the request.
pub struct Context<'a> {
    /// The boot decision: which machine a MAC is, and what its firmware should load.
    pub booter: &'a Booter,
    /// The current leases (read only: the decision returns [`Change`]s, the caller applies them).
    pub leases: &'a LeaseTable,
    /// Unix seconds.
    pub now: u64,
    /// The port the request arrived on (67, or 4011 for PXE boot server requests).
    pub port: Port,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 on the provisioning interface (the client has no address yet).
    Broadcast,
    /// A client that already has an address (renew, INFORM): `ciaddr:68`.
    Unicast(SocketAddrV4),
    /// A relay agent: `giaddr:67`.
    Relay(Ipv4Addr),
    /// Back to the sender's address and port (PXE requests on 4011).
    Sender,
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The DHCP message to encode.
    pub msg: Message,
    /// Where it goes.
    pub to: Destination,
}

/// Why a valid request got no answer (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not in the inventory and no pool: the user should add it.
    UnknownMac,
    /// Proxy mode: not a PXE / HTTP Boot client.
    NotPxe,
    /// The client chose another server, or the request is for another server.
    OtherServer,
    /// The pool has no free address.
    PoolExhausted,
    /// No boot file for the client's architecture (proxy mode needs one to answer).
    NoBootFile,
    /// A message type this port does not answer (e.g. REQUEST on 67 in proxy mode, RELEASE, DECLINE).
    NoReplyNeeded,
    /// A DECLINE of an address that was neither offered nor leased to that MAC (a careless or hostile host).
    DeclineNotHeld,
    /// A DECLINE while `limits.dhcp.declined` addresses are already kept out of use.
    DeclineLimit,
    /// Relayed from a `giaddr` in no configured subnet (`[network] subnet`, `[[network.relay_subnets]]`).
    NoSubnet,
    /// An inventory machine asking from a subnet its inventory address is not in (cabled to another rack).
    WrongSubnet,
    /// A pool address was asked for while the replicas disagree about the pool split (`pool_paused`).
    PoolPaused,
}

impl Ignored {
    /// The metric label (`reason` of `dhcp_ignored_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::UnknownMac => "unknown_mac",
            Ignored::NotPxe => "not_pxe",
            Ignored::OtherServer => "other_server",
            Ignored::PoolExhausted => "pool_exhausted",
            Ignored::NoBootFile => "no_boot_file",
            Ignored::NoReplyNeeded => "no_reply_needed",
            Ignored::DeclineNotHeld => "decline_not_held",
            Ignored::DeclineLimit => "decline_limit",
            Ignored::NoSubnet => "no_subnet",
            Ignored::WrongSubnet => "wrong_subnet",
            Ignored::PoolPaused => "pool_paused",
        }
    }
}

/// A boot event to record (`dhcp-offer`, `dhcp-ack`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The machine the event is about.
    pub mac: MacAddr,
    /// The boot stage (`dhcp-offer`, `dhcp-ack`).
    pub stage: &'static str,
    /// What the status shows beside it (address, boot file).
    pub detail: String,
}

/// Everything a request leads to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The client's hardware address.
    pub mac: MacAddr,
    /// The reply to send, if any.
    pub reply: Option<Reply>,
    /// Lease table changes (offers, grants, releases, declines) for the caller to apply and journal.
    pub changes: Vec<Change>,
    /// Boot events to record.
    pub events: Vec<Note>,
    /// Why a valid request got no reply, when it did not.
    pub ignored: Option<Ignored>,
    /// Something the operator must hear about (an address conflict).
    pub warning: Option<String>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            mac: MacAddr([0; 6]),
            reply: None,
            changes: Vec::new(),
            events: Vec::new(),
            ignored: None,
            warning: None,
        }
    }
}

impl Outcome {
    fn ignored(why: Ignored) -> Outcome {
        Outcome {
            ignored: Some(why),
            ..Outcome::default()
        }
    }
}

/// Decides the answer to one request.
pub fn handle(req: &Message, ctx: &Context) -> Outcome {
    let info = ClientInfo::of(req);
    let cluster = &ctx.booter.cluster;
    let mut out = match (cluster.network.dhcp_mode, ctx.port) {
        (DhcpMode::Full, Port::Dhcp) => full(req, &info, ctx),
        (DhcpMode::Proxy, port) => proxy(req, &info, ctx, port),
        (DhcpMode::Full, Port::Pxe) => Outcome::ignored(Ignored::NoReplyNeeded),
    };
    out.mac = info.mac;
    out
}

/// The relay id that identifies a machine: a circuit-id or remote-id matching `relay_id` in the inventory,
/// else the circuit-id (recorded in events), else the remote-id.
fn relay_id(info: &ClientInfo, cluster: &Cluster) -> Option<String> {
    let r = info.relay.as_ref()?;
    let ids = [r.circuit_id.as_ref(), r.remote_id.as_ref()];
    ids.iter()
        .flatten()
        .find(|id| cluster.machine_by_relay_id(id).is_some())
        .or_else(|| ids.iter().flatten().next())
        .map(|s| s.to_string())
}

fn boot_client(info: &ClientInfo, cluster: &Cluster) -> Client {
    Client {
        mac: info.mac,
        arch: info.arch,
        is_ipxe: info.is_ipxe,
        relay_id: relay_id(info, cluster),
    }
}

/// The reply skeleton: BOOTREPLY, same xid/flags/giaddr/chaddr, message type, server id, option 82 echoed.
fn reply_base(req: &Message, ty: MessageType, server: Ipv4Addr) -> Message {
    let mut m = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        &req.chaddr()[..6],
    );
    m.set_opcode(Opcode::BootReply).set_flags(req.flags());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(ty));
    opts.insert(DhcpOption::ServerIdentifier(server));
    // RFC 3046: the relay agent information comes back to the relay unchanged.
    if let Some(o) = req.opts().get(OptionCode::RelayAgentInformation) {
        opts.insert(o.clone());
    }
    m
}

/// RFC 2131 4.1: relay, else the client's address if it has one, else broadcast.
fn destination(req: &Message, nak: bool) -> Destination {
    if !req.giaddr().is_unspecified() {
        Destination::Relay(req.giaddr())
    } else if !nak && !req.ciaddr().is_unspecified() {
        Destination::Unicast(SocketAddrV4::new(req.ciaddr(), 68))
    } else {
        Destination::Broadcast
    }
}

/// Adds the boot file and the PXE bits to a reply. Returns the boot file for the event detail.
fn add_boot(
    m: &mut Message,
    info: &ClientInfo,
    booter: &Booter,
    client: &Client,
) -> Option<BootFile> {
    let server = booter.cluster.network.server;
    let bf = booter.dhcp_bootfile(client)?;
    let name = bf.as_str().as_bytes();
    if let BootFile::Tftp(_) = bf {
        m.set_siaddr(server);
    }
    if name.len() < 128 {
        m.set_fname(name);
    }
    // Option 67 too when the client asks for it or the name does not fit the file field.
    if name.len() >= 128 || info.wants.contains(&67) {
        m.opts_mut().insert(DhcpOption::BootfileName(name.to_vec()));
    }
    if let BootFile::Tftp(_) = bf
        && info.wants.contains(&66)
    {
        m.opts_mut()
            .insert(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
    }
    // UEFI HTTP Boot ignores offers that do not echo HTTPClient; PXE clients expect PXEClient.
    let vendor = match (&bf, info.vendor) {
        (BootFile::Http(_), Some(Vendor::Http)) => Some(Vendor::Http),
        (_, Some(_)) => Some(Vendor::Pxe),
        (_, None) => None,
    };
    if let Some(v) = vendor {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(v.echo().to_vec()));
    }
    if vendor == Some(Vendor::Pxe) && !info.is_ipxe {
        // PXE_DISCOVERY_CONTROL (6) = 8: boot the file named in this offer, no boot server discovery or menu.
        m.opts_mut()
            .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    if let Some(uuid) = &info.uuid {
        m.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    if info.is_ipxe {
        // iPXE encapsulated options (175): no-pxedhcp (176) = 1, so iPXE does not wait 3 s for proxy offers.
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1],
        )));
    }
    Some(bf)
}

/// Subnet mask, router, DNS (those of the subnet the request came from), hostname.
fn add_network(m: &mut Message, sub: &DhcpSubnet, machine: Option<&Machine>) {
    let opts = m.opts_mut();
    opts.insert(DhcpOption::SubnetMask(sub.subnet.netmask()));
    opts.insert(DhcpOption::Router(vec![sub.gateway]));
    if !sub.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(sub.dns.to_vec()));
    }
    if let Some(machine) = machine {
        opts.insert(DhcpOption::Hostname(machine.hostname.clone()));
    }
}

fn add_lease_times(m: &mut Message, secs: u32) {
    let opts = m.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(secs));
    opts.insert(DhcpOption::Renewal(secs / 2));
    opts.insert(DhcpOption::Rebinding((secs as u64 * 7 / 8) as u32));
}

/// The address a client gets in full mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assign {
    /// Its inventory address.
    Static(Ipv4Addr),
    /// A pool address.
    Pool(Ipv4Addr),
    Unknown,
    Exhausted,
    /// Pool addresses are paused (`LeaseTable::pool_paused`).
    Paused,
}

/// The subnet a request is answered from, and the part of its unknown pool this server hands out.
struct Place<'a> {
    sub: DhcpSubnet<'a>,
    pool: Option<Pool>,
}

/// Whether a pool address (of this server's share of the subnet's pool) may be given to `mac`.
fn pool_ip_free(ip: Ipv4Addr, mac: MacAddr, at: &Place, ctx: &Context) -> bool {
    let c = &ctx.booter.cluster;
    let sub = &at.sub;
    at.pool.as_ref().is_some_and(|p| p.contains(ip))
        && sub.subnet.contains(&ip)
        && ip != sub.subnet.network()
        && ip != sub.subnet.broadcast()
        && ip != c.network.server
        && ip != sub.gateway
        && !sub.dns.contains(&ip)
        && c.machines.iter().all(|m| m.ip != ip)
        && !ctx.leases.is_declined(ip, ctx.now)
        && ctx.leases.holder(ip, ctx.now).is_none_or(|h| h == mac)
}

fn assign(
    machine: Option<&Machine>,
    mac: MacAddr,
    prefer: Option<Ipv4Addr>,
    at: &Place,
    ctx: &Context,
) -> Assign {
    if let Some(m) = machine {
        return Assign::Static(m.ip);
    }
    let Some(pool) = &at.pool else {
        return Assign::Unknown;
    };
    if ctx.leases.pool_paused {
        return Assign::Paused;
    }
    let candidates = [
        ctx.leases.offer(mac, ctx.now),
        ctx.leases.lease(mac).map(|l| l.ip),
        prefer,
    ];
    if let Some(ip) = candidates
        .into_iter()
        .flatten()
        .find(|ip| pool_ip_free(*ip, mac, at, ctx))
    {
        return Assign::Pool(ip);
    }
    let (start, end) = (u32::from(pool.start), u32::from(pool.end));
    if end < start {
        return Assign::Exhausted;
    }
    let size = end - start + 1;
    let first = if (start..=end).contains(&ctx.leases.cursor) {
        ctx.leases.cursor - start
    } else {
        0
    };
    (0..size)
        .map(|i| Ipv4Addr::from(start + (first + i) % size))
        .find(|ip| pool_ip_free(*ip, mac, at, ctx))
        .map_or(Assign::Exhausted, Assign::Pool)
}

fn full(req: &Message, info: &ClientInfo, ctx: &Context) -> Outcome {
    let booter = ctx.booter;
    let cluster = &booter.cluster;
    let net = &cluster.network;
    let server = net.server;
    let client = boot_client(info, cluster);
    let machine = booter.machine(info.mac, client.relay_id.as_deref());
    // The subnet is the one that holds the relay's giaddr (the server's own without a relay).
    let Some(sub) = net.dhcp_subnet(req.giaddr()) else {
        return Outcome::ignored(Ignored::NoSubnet);
    };
    if let Some(m) = machine
        && !sub.subnet.contains(&m.ip)
    {
        let mut out = Outcome::ignored(Ignored::WrongSubnet);
        out.warning = Some(format!(
            "{} ({}) asks from subnet {} but its inventory address {} is not in it: it is cabled to another \
             segment, or [[machines]] ip is wrong in {}",
            m.hostname,
            info.mac,
            sub.subnet,
            m.ip,
            cluster.path.display()
        ));
        return out;
    }
    let at = Place {
        sub,
        pool: sub.unknown_pool.and_then(|p| p.share(net.pool_share)),
    };
    let relay_note = client
        .relay_id
        .as_ref()
        .map(|id| format!(" relay_id={id}"))
        .unwrap_or_default();
    match info.msg_type {
        MessageType::Discover => {
            let ip = match assign(machine, info.mac, info.requested_ip, &at, ctx) {
                Assign::Static(ip) | Assign::Pool(ip) => ip,
                Assign::Unknown => return Outcome::ignored(Ignored::UnknownMac),
                Assign::Exhausted => return Outcome::ignored(Ignored::PoolExhausted),
                Assign::Paused => return Outcome::ignored(Ignored::PoolPaused),
            };
            let mut m = reply_base(req, MessageType::Offer, server);
            m.set_yiaddr(ip);
            add_network(&mut m, &sub, machine);
            add_lease_times(&mut m, net.lease_secs);
            let bf = add_boot(&mut m, info, booter, &client);
            let mut out = Outcome {
                reply: Some(Reply {
                    msg: m,
                    to: destination(req, false),
                }),
                events: note(machine, info.mac, "dhcp-offer", || {
                    detail(ip, bf.as_ref(), &relay_note)
                }),
                ..Outcome::default()
            };
            if machine.is_none() {
                out.changes.push(Change::Offer {
                    mac: info.mac,
                    ip,
                    until: ctx.now + OFFER_HOLD_SECS,
                });
            }
            out
        }
        MessageType::Request => {
            if info.server_id.is_some_and(|s| s != server) {
                // SELECTING another server's offer.
                let mut out = Outcome::ignored(Ignored::OtherServer);
                if ctx.leases.offer(info.mac, ctx.now).is_some() {
                    out.changes.push(Change::DropOffer { mac: info.mac });
                }
                return out;
            }
            let asked = info
                .requested_ip
                .or_else(|| (!req.ciaddr().is_unspecified()).then_some(req.ciaddr()));
            let Some(asked) = asked else {
                return nak(req, server, "no requested address");
            };
            let ip = match assign(machine, info.mac, Some(asked), &at, ctx) {
                Assign::Static(ip) | Assign::Pool(ip) => ip,
                Assign::Unknown => return Outcome::ignored(Ignored::UnknownMac),
                Assign::Exhausted if info.server_id.is_some() => {
                    return nak(req, server, "no free address");
                }
                Assign::Exhausted => return Outcome::ignored(Ignored::PoolExhausted),
                Assign::Paused => return Outcome::ignored(Ignored::PoolPaused),
            };
            if ip != asked {
                let why = match machine {
                    Some(m) => format!("{asked} is not the address of {} ({ip})", m.hostname),
                    None => format!("{asked} is not available"),
                };
                return nak(req, server, &why);
            }
            let mut m = reply_base(req, MessageType::Ack, server);
            m.set_yiaddr(ip).set_ciaddr(req.ciaddr());
            add_network(&mut m, &sub, machine);
            add_lease_times(&mut m, net.lease_secs);
            let bf = add_boot(&mut m, info, booter, &client);
            Outcome {
                reply: Some(Reply {
                    msg: m,
                    to: destination(req, false),
                }),
                changes: vec![Change::Grant(Lease {
                    mac: info.mac,
                    ip,
                    expires: ctx.now + u64::from(net.lease_secs),
                })],
                events: note(machine, info.mac, "dhcp-ack", || {
                    detail(ip, bf.as_ref(), &relay_note)
                }),
                ..Outcome::default()
            }
        }
        MessageType::Decline => {
            if info.server_id.is_some_and(|s| s != server) {
                return Outcome::ignored(Ignored::OtherServer);
            }
            let Some(ip) = info.requested_ip else {
                return Outcome::ignored(Ignored::NoReplyNeeded);
            };
            if machine.is_none() && sub.unknown_pool.is_none() {
                return Outcome::ignored(Ignored::UnknownMac);
            }
            // Only an address this server offered or leased to that MAC: its inventory address, its open
            // offer, its lease. Anything else would let any host keep any address out of use.
            let held = machine.is_some_and(|m| m.ip == ip)
                || ctx.leases.offer(info.mac, ctx.now) == Some(ip)
                || ctx.leases.lease(info.mac).is_some_and(|l| l.ip == ip);
            if !held {
                return Outcome::ignored(Ignored::DeclineNotHeld);
            }
            let limits = &cluster.limits.dhcp;
            if !ctx.leases.is_declined(ip, ctx.now)
                && ctx.leases.declined(ctx.now) >= limits.declined
            {
                return Outcome::ignored(Ignored::DeclineLimit);
            }
            let mut out = Outcome::ignored(Ignored::NoReplyNeeded);
            out.changes.push(Change::Decline {
                mac: info.mac,
                ip,
                until: ctx.now + limits.decline_hold_secs,
            });
            out.warning = Some(match machine {
                Some(m) => format!(
                    "{} ({}) declined its inventory address {ip}: another host on the provisioning network uses it",
                    m.hostname, info.mac
                ),
                None => format!(
                    "{} declined {ip}: another host uses it; not handing it out for {} s (limits.dhcp.decline_hold)",
                    info.mac, limits.decline_hold_secs
                ),
            });
            out
        }
        MessageType::Release => {
            if info.server_id.is_some_and(|s| s != server) {
                return Outcome::ignored(Ignored::OtherServer);
            }
            let mut out = Outcome::ignored(Ignored::NoReplyNeeded);
            if ctx
                .leases
                .lease(info.mac)
                .is_some_and(|l| l.ip == req.ciaddr())
            {
                out.changes.push(Change::Release {
                    mac: info.mac,
                    ip: req.ciaddr(),
                });
            }
            out
        }
        MessageType::Inform => {
            if machine.is_none() && sub.unknown_pool.is_none() {
                return Outcome::ignored(Ignored::UnknownMac);
            }
            let mut m = reply_base(req, MessageType::Ack, server);
            m.set_ciaddr(req.ciaddr());
            add_network(&mut m, &sub, machine);
            add_boot(&mut m, info, booter, &client);
            Outcome {
                reply: Some(Reply {
                    msg: m,
                    to: destination(req, false),
                }),
                ..Outcome::default()
            }
        }
        _ => Outcome::ignored(Ignored::NoReplyNeeded),
    }
}

/// A boot event for an inventory machine; none for a pool client (issue #13: nothing is recorded for callers
/// outside the inventory; they are counted in the metrics only). At 10,000 DORA/s of pool clients this was also
/// two event-log writes per exchange on the DHCP threads.
fn note(
    machine: Option<&Machine>,
    mac: MacAddr,
    stage: &'static str,
    detail: impl FnOnce() -> String,
) -> Vec<Note> {
    match machine {
        Some(_) => vec![Note {
            mac,
            stage,
            detail: detail(),
        }],
        None => Vec::new(),
    }
}

fn detail(ip: Ipv4Addr, bf: Option<&BootFile>, relay: &str) -> String {
    match bf {
        Some(bf) => format!("ip={ip} boot={}{relay}", bf.as_str()),
        None => format!("ip={ip}{relay}"),
    }
}

fn nak(req: &Message, server: Ipv4Addr, why: &str) -> Outcome {
    let mut m = reply_base(req, MessageType::Nak, server);
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    if !req.giaddr().is_unspecified() {
        // RFC 2131 4.3.2: a NAK through a relay is broadcast by the relay.
        m.set_flags(Flags::default().set_broadcast());
    }
    Outcome {
        reply: Some(Reply {
            msg: m,
            to: destination(req, true),
        }),
        ..Outcome::default()
    }
}

fn proxy(req: &Message, info: &ClientInfo, ctx: &Context, port: Port) -> Outcome {
    let booter = ctx.booter;
    let cluster = &booter.cluster;
    let server = cluster.network.server;
    if info.vendor.is_none() {
        return Outcome::ignored(Ignored::NotPxe);
    }
    let (ty, stage, to) = match (port, info.msg_type) {
        (Port::Dhcp, MessageType::Discover) => {
            (MessageType::Offer, "dhcp-offer", destination(req, false))
        }
        (Port::Pxe, MessageType::Request | MessageType::Inform) => {
            let to = if req.giaddr().is_unspecified() {
                Destination::Sender
            } else {
                Destination::Relay(req.giaddr())
            };
            (MessageType::Ack, "dhcp-ack", to)
        }
        _ => return Outcome::ignored(Ignored::NoReplyNeeded),
    };
    let client = boot_client(info, cluster);
    let known = booter
        .machine(info.mac, client.relay_id.as_deref())
        .is_some();
    if !known && !cluster.network.any_unknown_pool() {
        return Outcome::ignored(Ignored::UnknownMac);
    }
    let mut m = reply_base(req, ty, server);
    m.set_ciaddr(req.ciaddr());
    let Some(bf) = add_boot(&mut m, info, booter, &client) else {
        return Outcome::ignored(Ignored::NoBootFile);
    };
    // A proxy reply carries no address: siaddr is us even for HTTP so PXE ROMs accept it.
    m.set_siaddr(server);
    if info.vendor == Some(Vendor::Pxe) && !m.opts().contains(OptionCode::ClassIdentifier) {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
    let relay = client
        .relay_id
        .as_ref()
        .map(|id| format!(" relay_id={id}"))
        .unwrap_or_default();
    Outcome {
        reply: Some(Reply { msg: m, to }),
        events: if known {
            vec![Note {
                mac: info.mac,
                stage,
                detail: format!("proxy boot={}{relay}", bf.as_str()),
            }]
        } else {
            Vec::new()
        },
        ..Outcome::default()
    }
}
