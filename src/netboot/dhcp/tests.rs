//! Unit tests of the DHCP packet path without sockets: every architecture / user-class combination, full and
//! proxy mode, relays, NAKs, the pool, and a bounded mutation fuzz of the whole path.

use std::net::Ipv4Addr;

use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};

use super::core::{Destination, Ignored, Port};
use super::fuzzing::{booter_with, proxy_mode, with_pool, with_relay_id};
use super::leases::{Change, LeaseTable};
use super::metrics::DhcpMetrics;
use super::packet::{self, Malformed};
use super::process::{Processed, process};
use crate::config::MacAddr;
use crate::netboot::boot::Booter;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NOW: u64 = 1_800_000_000;

fn full() -> Booter {
    booter_with(|s| s)
}

fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x77, 0x00, last]
}
const MASTER1: u8 = 0x11;
const UNKNOWN: u8 = 0x99;

/// A request builder.
#[derive(Clone)]
struct Req {
    ty: MessageType,
    mac: [u8; 6],
    arch: Option<u16>,
    vendor: Option<&'static [u8]>,
    ipxe: bool,
    uuid: bool,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    circuit: Option<&'static [u8]>,
    prl: Vec<u8>,
}

impl Req {
    fn new(ty: MessageType, last: u8) -> Req {
        Req {
            ty,
            mac: mac(last),
            arch: None,
            vendor: None,
            ipxe: false,
            uuid: false,
            requested: None,
            server_id: None,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            circuit: None,
            prl: vec![1, 3, 6, 12, 15, 66, 67],
        }
    }

    fn msg(&self) -> Message {
        let mut m = Message::new_with_id(
            0xabcd_0001,
            self.ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.giaddr,
            &self.mac,
        );
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(self.ty));
        if let Some(a) = self.arch {
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
        }
        if let Some(v) = self.vendor {
            o.insert(DhcpOption::ClassIdentifier(v.to_vec()));
        }
        if self.ipxe {
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        if self.uuid {
            let mut u = vec![0u8];
            u.extend(1..=16u8);
            o.insert(DhcpOption::ClientMachineIdentifier(u));
        }
        if let Some(ip) = self.requested {
            o.insert(DhcpOption::RequestedIpAddress(ip));
        }
        if let Some(ip) = self.server_id {
            o.insert(DhcpOption::ServerIdentifier(ip));
        }
        if let Some(c) = self.circuit {
            let mut info = RelayAgentInformation::default();
            info.insert(RelayInfo::AgentCircuitId(c.to_vec()));
            o.insert(DhcpOption::RelayAgentInformation(info));
        }
        o.insert(DhcpOption::ParameterRequestList(
            self.prl.iter().map(|c| OptionCode::from(*c)).collect(),
        ));
        m
    }

    fn bytes(&self) -> Vec<u8> {
        packet::encode(&self.msg())
    }
}

struct Run {
    booter: Booter,
    table: LeaseTable,
    metrics: DhcpMetrics,
}

impl Run {
    fn new(booter: Booter) -> Run {
        Run {
            booter,
            table: LeaseTable::default(),
            metrics: DhcpMetrics::default(),
        }
    }

    fn send(&mut self, req: &Req, port: Port) -> super::Outcome {
        match process(
            &req.bytes(),
            port,
            &self.booter,
            &mut self.table,
            NOW,
            &self.metrics,
        ) {
            Processed::Handled(o) => *o,
            Processed::Dropped(why) => panic!("valid request dropped: {why}"),
        }
    }

    /// The reply, decoded again from its bytes (what a client would see).
    fn reply(&mut self, req: &Req, port: Port) -> (Message, Destination) {
        let out = self.send(req, port);
        let r = out
            .reply
            .unwrap_or_else(|| panic!("no reply: ignored {:?}", out.ignored));
        let bytes = packet::encode(&r.msg);
        let decoded = dhcproto::Decodable::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        (decoded, r.to)
    }
}

fn ty(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

fn file(m: &Message) -> String {
    m.fname_str()
        .map(|r| r.unwrap().trim_end_matches('\0').to_string())
        .unwrap_or_default()
}

fn opt(m: &Message, code: u8) -> Option<&DhcpOption> {
    m.opts().get(OptionCode::from(code))
}

fn bytes_opt(m: &Message, code: u8) -> Option<Vec<u8>> {
    match opt(m, code)? {
        DhcpOption::ClassIdentifier(b)
        | DhcpOption::VendorExtensions(b)
        | DhcpOption::ClientMachineIdentifier(b)
        | DhcpOption::BootfileName(b) => Some(b.clone()),
        DhcpOption::Unknown(u) => Some(u.data().to_vec()),
        other => panic!("unexpected option {other:?}"),
    }
}

#[test]
fn full_mode_dora_for_a_known_machine() {
    let mut r = Run::new(full());
    let (offer, to) = r.reply(&Req::new(MessageType::Discover, MASTER1), Port::Dhcp);
    assert_eq!(ty(&offer), MessageType::Offer);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 77, 0, 11));
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(file(&offer), "undionly.kpxe");
    assert_eq!(
        opt(&offer, 12),
        Some(&DhcpOption::Hostname("master-1".into()))
    );
    assert_eq!(opt(&offer, 54), Some(&DhcpOption::ServerIdentifier(SERVER)));
    assert_eq!(opt(&offer, 3), Some(&DhcpOption::Router(vec![SERVER])));
    assert_eq!(
        opt(&offer, 6),
        Some(&DhcpOption::DomainNameServer(vec![SERVER]))
    );
    assert_eq!(
        opt(&offer, 1),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(opt(&offer, 51), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(offer.xid(), 0xabcd_0001);
    // No PXE vendor options for a client that did not ask as PXE.
    assert!(opt(&offer, 43).is_none() && opt(&offer, 60).is_none());

    let mut req = Req::new(MessageType::Request, MASTER1);
    req.server_id = Some(SERVER);
    req.requested = Some(Ipv4Addr::new(10, 77, 0, 11));
    let out = r.send(&req, Port::Dhcp);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].stage, "dhcp-ack");
    assert!(
        matches!(&out.changes[..], [Change::Grant(l)] if l.ip == Ipv4Addr::new(10, 77, 0, 11) && l.expires == NOW + 3600)
    );
    let ack = out.reply.unwrap().msg;
    assert_eq!(ty(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 77, 0, 11));
    assert_eq!(
        r.table.lease(MacAddr(mac(MASTER1))).unwrap().expires,
        NOW + 3600
    );
}

#[test]
fn every_architecture_and_user_class_gets_the_right_boot_file() {
    let base = "http://10.77.0.1:8080";
    let ipxe_script = format!("{base}/ipxe/52:54:00:77:00:11");
    // (arch, vendor class, expected file without iPXE, whether option 43 is sent, echoed vendor class)
    type Case = (
        Option<u16>,
        Option<&'static [u8]>,
        Option<String>,
        bool,
        Option<&'static [u8]>,
    );
    let cases: Vec<Case> = vec![
        (None, None, Some("undionly.kpxe".into()), false, None),
        (
            Some(0),
            Some(b"PXEClient:Arch:00000:UNDI:002001"),
            Some("undionly.kpxe".into()),
            true,
            Some(b"PXEClient"),
        ),
        (
            Some(7),
            Some(b"PXEClient:Arch:00007:UNDI:003016"),
            Some("snponly.efi".into()),
            true,
            Some(b"PXEClient"),
        ),
        (
            Some(9),
            Some(b"PXEClient:Arch:00009:UNDI:003016"),
            Some("snponly.efi".into()),
            true,
            Some(b"PXEClient"),
        ),
        (
            Some(11),
            Some(b"PXEClient:Arch:00011:UNDI:003000"),
            Some("grubnetaa64.efi".into()),
            true,
            Some(b"PXEClient"),
        ),
        (
            Some(16),
            Some(b"HTTPClient:Arch:00016:UNDI:003001"),
            Some(format!("{base}/boot/snponly.efi")),
            false,
            Some(b"HTTPClient"),
        ),
        (
            Some(19),
            Some(b"HTTPClient:Arch:00019:UNDI:003001"),
            Some(format!("{base}/boot/grubhttpaa64.efi")),
            false,
            Some(b"HTTPClient"),
        ),
        (Some(99), Some(b"PXEClient:Arch:00099"), None, false, None),
    ];
    for (arch, vendor, want, has43, echo) in cases {
        for ipxe in [false, true] {
            let mut r = Run::new(full());
            let mut req = Req::new(MessageType::Discover, MASTER1);
            req.arch = arch;
            req.vendor = vendor;
            req.ipxe = ipxe;
            req.uuid = true;
            let (offer, _) = r.reply(&req, Port::Dhcp);
            let ctx = format!("arch {arch:?} ipxe {ipxe}");
            // The address is given whatever the architecture.
            assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 77, 0, 11), "{ctx}");
            let want = if ipxe {
                Some(ipxe_script.clone())
            } else {
                want.clone()
            };
            assert_eq!(Some(file(&offer)).filter(|f| !f.is_empty()), want, "{ctx}");
            if want.is_some() {
                assert_eq!(
                    bytes_opt(&offer, 67)
                        .map(String::from_utf8)
                        .transpose()
                        .unwrap(),
                    want,
                    "{ctx}: option 67 asked in the PRL"
                );
            }
            let tftp = want.as_deref().is_some_and(|f| !f.starts_with("http://"));
            assert_eq!(
                offer.siaddr() == SERVER,
                tftp,
                "{ctx}: next-server only for TFTP"
            );
            assert_eq!(
                bytes_opt(&offer, 43).is_some(),
                has43 && !ipxe,
                "{ctx}: option 43"
            );
            if has43 && !ipxe {
                assert_eq!(bytes_opt(&offer, 43).unwrap(), vec![6, 1, 8, 255]);
            }
            let echo = if want.is_some() && vendor.is_some() {
                Some(echo.unwrap_or(b"PXEClient").to_vec())
            } else {
                None
            };
            assert_eq!(bytes_opt(&offer, 60), echo, "{ctx}: option 60 echo");
            if want.is_some() {
                assert_eq!(
                    bytes_opt(&offer, 97).map(|u| u.len()),
                    Some(17),
                    "{ctx}: UUID echoed"
                );
            }
            assert_eq!(
                bytes_opt(&offer, 175),
                (ipxe && want.is_some()).then(|| vec![176, 1, 1]),
                "{ctx}: iPXE no-pxedhcp"
            );
        }
    }
}

#[test]
fn unknown_mac_without_pool_gets_nothing() {
    let mut r = Run::new(full());
    for ty in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
    ] {
        let mut req = Req::new(ty, UNKNOWN);
        req.requested = Some(Ipv4Addr::new(10, 77, 0, 50));
        let out = r.send(&req, Port::Dhcp);
        assert!(out.reply.is_none());
        assert_eq!(out.ignored, Some(Ignored::UnknownMac));
        assert_eq!(out.mac, MacAddr(mac(UNKNOWN)));
    }
    assert!(r.table.leases().next().is_none());
}

#[test]
fn naks() {
    let mut r = Run::new(full());
    // SELECTING with a wrong address.
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.server_id = Some(SERVER);
    req.requested = Some(Ipv4Addr::new(10, 77, 0, 12));
    let (nak, to) = r.reply(&req, Port::Dhcp);
    assert_eq!(ty(&nak), MessageType::Nak);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&nak, 51).is_none());
    // INIT-REBOOT from another network.
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.requested = Some(Ipv4Addr::new(192, 168, 1, 40));
    assert_eq!(ty(&r.reply(&req, Port::Dhcp).0), MessageType::Nak);
    // RENEWING a wrong ciaddr: NAK broadcast, not unicast to the wrong address.
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 99);
    let (nak, to) = r.reply(&req, Port::Dhcp);
    assert_eq!((ty(&nak), to), (MessageType::Nak, Destination::Broadcast));
    // No address at all.
    let req = Req::new(MessageType::Request, MASTER1);
    assert_eq!(ty(&r.reply(&req, Port::Dhcp).0), MessageType::Nak);
    // Through a relay: to the relay, with the broadcast bit.
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.giaddr = Ipv4Addr::new(10, 77, 0, 5);
    req.requested = Some(Ipv4Addr::new(10, 77, 0, 13));
    let (nak, to) = r.reply(&req, Port::Dhcp);
    assert_eq!(to, Destination::Relay(Ipv4Addr::new(10, 77, 0, 5)));
    assert!(nak.flags().broadcast());
    // Another server chosen: silence.
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.server_id = Some(Ipv4Addr::new(10, 77, 0, 2));
    req.requested = Some(Ipv4Addr::new(10, 77, 0, 11));
    let out = r.send(&req, Port::Dhcp);
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some(Ignored::OtherServer));
    assert!(r.table.leases().next().is_none(), "no NAK granted anything");
}

#[test]
fn renew_is_unicast_and_inform_gets_no_lease() {
    let mut r = Run::new(full());
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 11);
    let (ack, to) = r.reply(&req, Port::Dhcp);
    assert_eq!(ty(&ack), MessageType::Ack);
    assert_eq!(to, Destination::Unicast("10.77.0.11:68".parse().unwrap()));
    let mut req = Req::new(MessageType::Inform, MASTER1);
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 11);
    let out = r.send(&req, Port::Dhcp);
    assert!(out.changes.is_empty());
    let ack = out.reply.unwrap().msg;
    assert_eq!(ty(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&ack, 51).is_none());
    assert_eq!(
        opt(&ack, 12),
        Some(&DhcpOption::Hostname("master-1".into()))
    );
}

#[test]
fn relay_replies_go_to_the_relay_and_option_82_identifies_the_machine() {
    let mut r = Run::new(booter_with(with_relay_id));
    let relay = Ipv4Addr::new(10, 77, 0, 2);
    let mut req = Req::new(MessageType::Discover, UNKNOWN);
    req.giaddr = relay;
    req.circuit = Some(b"switch1/port7");
    req.ipxe = true;
    let out = r.send(&req, Port::Dhcp);
    assert!(
        out.events[0].detail.contains("relay_id=switch1/port7"),
        "{:?}",
        out.events
    );
    let rep = out.reply.unwrap();
    assert_eq!(rep.to, Destination::Relay(relay));
    let offer = rep.msg;
    assert_eq!(offer.giaddr(), relay);
    // worker-2, found by its relay id, not its MAC; its script is that of its inventory MAC.
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 77, 0, 22));
    assert_eq!(
        opt(&offer, 12),
        Some(&DhcpOption::Hostname("worker-2".into()))
    );
    assert_eq!(file(&offer), "http://10.77.0.1:8080/ipxe/52:54:00:77:00:22");
    assert!(opt(&offer, 82).is_some(), "option 82 echoed to the relay");
    // A relayed known MAC with an unmatched circuit id is still served by MAC.
    let mut req = Req::new(MessageType::Discover, MASTER1);
    req.giaddr = relay;
    req.circuit = Some(b"\x00\x01\xff");
    let out = r.send(&req, Port::Dhcp);
    assert_eq!(
        out.reply.unwrap().msg.yiaddr(),
        Ipv4Addr::new(10, 77, 0, 11)
    );
    assert!(out.events[0].detail.contains("relay_id=0001ff"));
}

#[test]
fn pool_for_unknown_machines() {
    let mut r = Run::new(booter_with(with_pool));
    let mut given = Vec::new();
    for last in [0xa1, 0xa2, 0xa3] {
        let (offer, _) = r.reply(&Req::new(MessageType::Discover, last), Port::Dhcp);
        assert!(
            opt(&offer, 12).is_none(),
            "no hostname for unknown machines"
        );
        given.push(offer.yiaddr());
    }
    given.sort();
    assert_eq!(
        given,
        vec![
            Ipv4Addr::new(10, 77, 0, 200),
            Ipv4Addr::new(10, 77, 0, 201),
            Ipv4Addr::new(10, 77, 0, 202)
        ]
    );
    // All three reserved by offers: a fourth gets nothing.
    let out = r.send(&Req::new(MessageType::Discover, 0xa4), Port::Dhcp);
    assert_eq!(out.ignored, Some(Ignored::PoolExhausted));
    // The same client is offered the same address again.
    let (again, _) = r.reply(&Req::new(MessageType::Discover, 0xa1), Port::Dhcp);
    let ip = again.yiaddr();
    // Another client cannot request it.
    let mut req = Req::new(MessageType::Request, 0xa4);
    req.server_id = Some(SERVER);
    req.requested = Some(ip);
    assert_eq!(ty(&r.reply(&req, Port::Dhcp).0), MessageType::Nak);
    // Its owner can.
    let mut req = Req::new(MessageType::Request, 0xa1);
    req.server_id = Some(SERVER);
    req.requested = Some(ip);
    assert_eq!(ty(&r.reply(&req, Port::Dhcp).0), MessageType::Ack);
    // DECLINE: the address is not given out again; the client gets another one later.
    let mut req = Req::new(MessageType::Decline, 0xa1);
    req.server_id = Some(SERVER);
    req.requested = Some(ip);
    let out = r.send(&req, Port::Dhcp);
    assert!(out.reply.is_none() && out.warning.is_some());
    assert!(r.table.is_declined(ip, NOW));
    assert!(r.table.lease(MacAddr(mac(0xa1))).is_none());
    // RELEASE frees an address.
    let a2 = r.table.offer(MacAddr(mac(0xa2)), NOW).unwrap();
    let mut req = Req::new(MessageType::Request, 0xa2);
    req.server_id = Some(SERVER);
    req.requested = Some(a2);
    r.reply(&req, Port::Dhcp);
    assert_eq!(r.table.holder(a2, NOW), Some(MacAddr(mac(0xa2))));
    let mut req = Req::new(MessageType::Release, 0xa2);
    req.ciaddr = a2;
    req.server_id = Some(SERVER);
    assert!(r.send(&req, Port::Dhcp).reply.is_none());
    assert_eq!(r.table.holder(a2, NOW), None);
    // Known machines keep their inventory address even with a pool.
    let (offer, _) = r.reply(&Req::new(MessageType::Discover, MASTER1), Port::Dhcp);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 77, 0, 11));
}

#[test]
fn proxy_mode_answers_only_pxe_clients_with_boot_information() {
    let mut r = Run::new(booter_with(proxy_mode));
    // Not a PXE client: silence, even when known.
    let out = r.send(&Req::new(MessageType::Discover, MASTER1), Port::Dhcp);
    assert_eq!(out.ignored, Some(Ignored::NotPxe));
    let mut req = Req::new(MessageType::Discover, MASTER1);
    req.vendor = Some(b"PXEClient:Arch:00000:UNDI:002001");
    req.arch = Some(0);
    req.uuid = true;
    let (offer, to) = r.reply(&req, Port::Dhcp);
    assert_eq!(to, Destination::Broadcast);
    assert_eq!(ty(&offer), MessageType::Offer);
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "a proxy gives no address"
    );
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(file(&offer), "undionly.kpxe");
    for code in [1u8, 3, 6, 51, 58, 59] {
        assert!(
            opt(&offer, code).is_none(),
            "proxy offer carries option {code}"
        );
    }
    assert_eq!(bytes_opt(&offer, 60).unwrap(), b"PXEClient");
    assert_eq!(bytes_opt(&offer, 43).unwrap(), vec![6, 1, 8, 255]);
    assert!(bytes_opt(&offer, 97).is_some());
    // A REQUEST on 67 is for the real DHCP server.
    let mut rq = req.clone();
    rq.ty = MessageType::Request;
    rq.requested = Some(Ipv4Addr::new(10, 77, 0, 150));
    assert_eq!(
        r.send(&rq, Port::Dhcp).ignored,
        Some(Ignored::NoReplyNeeded)
    );
    // The boot server request on 4011 is answered to the sender.
    let mut rq = req.clone();
    rq.ty = MessageType::Request;
    rq.ciaddr = Ipv4Addr::new(10, 77, 0, 150);
    let out = r.send(&rq, Port::Pxe);
    assert_eq!(out.events[0].stage, "dhcp-ack");
    let rep = out.reply.unwrap();
    assert_eq!(rep.to, Destination::Sender);
    assert_eq!(ty(&rep.msg), MessageType::Ack);
    assert_eq!(rep.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file(&rep.msg), "undionly.kpxe");
    // iPXE: script URL and no-pxedhcp; HTTP Boot: HTTPClient echoed.
    let mut req = Req::new(MessageType::Discover, MASTER1);
    req.vendor = Some(b"PXEClient:Arch:00007:UNDI:003016");
    req.arch = Some(7);
    req.ipxe = true;
    let (offer, _) = r.reply(&req, Port::Dhcp);
    assert_eq!(file(&offer), "http://10.77.0.1:8080/ipxe/52:54:00:77:00:11");
    assert_eq!(bytes_opt(&offer, 175).unwrap(), vec![176, 1, 1]);
    let mut req = Req::new(MessageType::Discover, MASTER1);
    req.vendor = Some(b"HTTPClient:Arch:00016:UNDI:003001");
    req.arch = Some(16);
    let (offer, _) = r.reply(&req, Port::Dhcp);
    assert_eq!(bytes_opt(&offer, 60).unwrap(), b"HTTPClient");
    assert_eq!(file(&offer), "http://10.77.0.1:8080/boot/snponly.efi");
    // Unknown PXE client: nothing.
    let mut req = Req::new(MessageType::Discover, UNKNOWN);
    req.vendor = Some(b"PXEClient");
    assert_eq!(r.send(&req, Port::Dhcp).ignored, Some(Ignored::UnknownMac));
    // No leases in proxy mode.
    assert!(r.table.leases().next().is_none());
}

#[test]
fn full_mode_ignores_port_4011() {
    let mut r = Run::new(full());
    let mut req = Req::new(MessageType::Request, MASTER1);
    req.vendor = Some(b"PXEClient");
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 11);
    assert!(r.send(&req, Port::Pxe).reply.is_none());
}

#[test]
fn malformed_datagrams_are_counted_by_kind() {
    let mut r = Run::new(full());
    let good = Req::new(MessageType::Discover, MASTER1).bytes();
    let mut cases: Vec<(Vec<u8>, Malformed)> = vec![
        (good[..100].to_vec(), Malformed::Truncated),
        (
            {
                let mut b = good.clone();
                b.resize(3000, 0);
                b
            },
            Malformed::Oversize,
        ),
        (
            {
                let mut b = good.clone();
                b[237] ^= 0xff;
                b
            },
            Malformed::BadMagicCookie,
        ),
        (
            {
                let mut b = good.clone();
                b[0] = 2;
                b
            },
            Malformed::WrongOp,
        ),
    ];
    let mut b = good[..240].to_vec();
    b.extend_from_slice(&[53, 1, 1, 55, 200, 1, 3]);
    cases.push((b, Malformed::BadOptionLength));
    for (bytes, want) in &cases {
        match process(bytes, Port::Dhcp, &r.booter, &mut r.table, NOW, &r.metrics) {
            Processed::Dropped(got) => assert_eq!(got, *want),
            Processed::Handled(_) => panic!("{want} accepted"),
        }
    }
    assert_eq!(r.metrics.dropped_total(), cases.len() as u64);
    for (_, want) in &cases {
        assert_eq!(
            r.metrics
                .dropped
                .get_or_create(&[("reason", want.as_str())])
                .get(),
            1
        );
    }
    let mut reg = prometheus_client::registry::Registry::with_prefix("imgbuild");
    r.metrics.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("imgbuild_dhcp_dropped_total{reason=\"bad_magic_cookie\"} 1"),
        "{text}"
    );
}

/// Bounded mutation fuzzing of the whole packet path on stable Rust (cargo-fuzz needs nightly; see
/// `fuzz/`): valid requests of every kind are truncated, bit-flipped, given wrong option lengths or
/// extended with garbage. The core must never panic, and every drop must be counted.
#[test]
fn fuzz_packet_path_never_panics_and_counts_drops() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let booters = super::fuzzing::booters();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for ty in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Decline,
        MessageType::Release,
        MessageType::Inform,
    ] {
        for last in [MASTER1, UNKNOWN] {
            let mut q = Req::new(ty, last);
            q.arch = Some(7);
            q.vendor = Some(b"PXEClient:Arch:00007");
            q.ipxe = last == MASTER1;
            q.uuid = true;
            q.requested = Some(Ipv4Addr::new(10, 77, 0, 201));
            q.server_id = Some(SERVER);
            q.circuit = Some(b"switch1/port7");
            q.giaddr = Ipv4Addr::new(10, 77, 9, 1);
            seeds.push(q.bytes());
        }
    }
    let mut rng = StdRng::seed_from_u64(0x01bd_04c9);
    let metrics = DhcpMetrics::default();
    let mut tables: Vec<LeaseTable> = booters.iter().map(|_| LeaseTable::default()).collect();
    let (mut dropped, mut handled) = (0u64, 0u64);
    let started = std::time::Instant::now();
    let mut iterations = 0;
    while iterations < 200_000 && started.elapsed() < std::time::Duration::from_secs(20) {
        iterations += 1;
        let mut b = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..6) {
                0 => {
                    let n = rng.random_range(0..=b.len());
                    b.truncate(n);
                }
                1 => {
                    if !b.is_empty() {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                2 => {
                    // Rewrite an option length byte in the options area.
                    if b.len() > 242 {
                        let i = rng.random_range(241..b.len());
                        b[i] = rng.random();
                    }
                }
                3 => {
                    let n = rng.random_range(0..64);
                    b.extend((0..n).map(|_| rng.random::<u8>()));
                }
                4 => {
                    // A random option with a random length in the middle.
                    if b.len() > 240 {
                        let i = rng.random_range(240..b.len());
                        let code: u8 = rng.random();
                        let len: u8 = rng.random_range(0..8);
                        let mut ins = vec![code, len];
                        ins.extend((0..rng.random_range(0..8)).map(|_| rng.random::<u8>()));
                        b.splice(i..i, ins);
                    }
                }
                _ => {
                    if b.len() > 1 {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                }
            }
        }
        let k = rng.random_range(0..booters.len());
        let port = if rng.random_bool(0.2) {
            Port::Pxe
        } else {
            Port::Dhcp
        };
        match process(&b, port, &booters[k], &mut tables[k], NOW, &metrics) {
            Processed::Dropped(_) => dropped += 1,
            Processed::Handled(out) => {
                handled += 1;
                if let Some(reply) = out.reply {
                    // Replies must always encode and decode back.
                    let bytes = packet::encode(&reply.msg);
                    assert!(!bytes.is_empty());
                    let _: Message =
                        dhcproto::Decodable::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
                }
            }
        }
    }
    assert_eq!(metrics.dropped_total(), dropped, "every drop counted");
    assert_eq!(
        packet::DECODER_PANICS.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the decoder panicked on some input (caught, but it must not be reachable)"
    );
    assert!(
        dropped > 1000 && handled > 1000,
        "dropped {dropped}, handled {handled}"
    );
    // Invariant: no address is held by two MACs.
    for t in &tables {
        let mut ips: Vec<Ipv4Addr> = t.leases().map(|l| l.ip).collect();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n);
    }
}

/// Bounded fuzzing of request sequences on stable Rust (the cargo-fuzz target is `fuzz/fuzz_targets/dhcp_ops.rs`):
/// random operation bytes through [`super::fuzzing::run_ops`] in full, pool and proxy mode. 1,500 sequences in
/// the suite; a long run sets `IMGBUILD_FUZZ_RUNS` (sequences; `IMGBUILD_FUZZ_SECONDS` caps the time, and
/// `IMGBUILD_FUZZ_SEED` picks another seed) and reads the count it reached on stderr (docs/dhcp.md).
#[test]
fn fuzz_request_sequences_keep_table_and_journal_consistent() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let runs = env("IMGBUILD_FUZZ_RUNS").unwrap_or(1_500);
    let limit = env("IMGBUILD_FUZZ_SECONDS").map(std::time::Duration::from_secs);
    let booters = super::fuzzing::booters();
    let mut rng = StdRng::seed_from_u64(env("IMGBUILD_FUZZ_SEED").unwrap_or(0x0d4c_0005));
    let mut total = super::fuzzing::Reached::default();
    let t0 = std::time::Instant::now();
    let mut done = 0u64;
    while done < runs && limit.is_none_or(|l| t0.elapsed() < l) {
        let len = rng.random_range(0..800);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        super::fuzzing::run_ops(&data, &booters, &mut total);
        done += 1;
        if done.is_multiple_of(100_000) {
            eprintln!("{done} sequences in {:?}", t0.elapsed());
        }
    }
    eprintln!(
        "{done} sequences (of {runs}) in {:?}, no failed invariant",
        t0.elapsed()
    );
    // Random bytes must reach every outcome, or this test proves little.
    eprintln!("{total:?}");
    assert!(total.at_least(100) && total.declines >= 10, "{total:?}");
}

#[test]
fn decline_only_for_an_address_offered_or_leased_to_that_mac_and_capped() {
    let mut r = Run::new(booter_with(|s| {
        with_pool(s)
            .replace("declined = 1024", "declined = 2")
            .replace("decline_hold = \"10m\"", "decline_hold = \"5m\"")
    }));
    let decline = |last: u8, ip: Ipv4Addr| {
        let mut q = Req::new(MessageType::Decline, last);
        q.server_id = Some(SERVER);
        q.requested = Some(ip);
        q
    };
    // A stranger declining pool and inventory addresses it was never offered: ignored, nothing kept.
    for ip in [
        Ipv4Addr::new(10, 77, 0, 200),
        Ipv4Addr::new(10, 77, 0, 11),
        Ipv4Addr::new(192, 168, 1, 1),
    ] {
        let out = r.send(&decline(0xb1, ip), Port::Dhcp);
        assert_eq!(out.ignored, Some(Ignored::DeclineNotHeld), "{ip}");
        assert!(out.changes.is_empty() && out.warning.is_none());
    }
    // master-1 may decline its own inventory address, not worker-1's.
    let out = r.send(&decline(MASTER1, Ipv4Addr::new(10, 77, 0, 21)), Port::Dhcp);
    assert_eq!(out.ignored, Some(Ignored::DeclineNotHeld));
    let out = r.send(&decline(MASTER1, Ipv4Addr::new(10, 77, 0, 11)), Port::Dhcp);
    assert!(out.warning.is_some());
    assert!(r.table.is_declined(Ipv4Addr::new(10, 77, 0, 11), NOW));
    // An unknown client may decline what it was offered: held for decline_hold (5 min), then pruned.
    let (offer, _) = r.reply(&Req::new(MessageType::Discover, 0xa1), Port::Dhcp);
    let ip = offer.yiaddr();
    r.send(&decline(0xa1, ip), Port::Dhcp);
    assert!(r.table.is_declined(ip, NOW + 299) && !r.table.is_declined(ip, NOW + 300));
    // Two addresses are declined: the cap (2) refuses a third.
    let (offer, _) = r.reply(&Req::new(MessageType::Discover, 0xa2), Port::Dhcp);
    let out = r.send(&decline(0xa2, offer.yiaddr()), Port::Dhcp);
    assert_eq!(out.ignored, Some(Ignored::DeclineLimit));
    assert_eq!(r.table.declined(NOW), 2);
    r.table.prune(NOW + 59);
    assert_eq!(r.table.held(), (1, 2), "nothing ended yet");
    r.table.prune(NOW + 300);
    assert_eq!(
        r.table.held(),
        (0, 0),
        "ended offers (60 s) and declines (5 min) pruned"
    );
}
