//! Unit tests of the sans-IO core for several subnets and several replicas: a relayed request is answered from
//! the subnet that holds its `giaddr` (its pool, mask, router, DNS), an inventory machine still gets its
//! inventory address, a `giaddr` in no configured subnet is dropped and counted; and replicas listed in
//! `[state] dhcp_replicas` hand out disjoint blocks of every unknown pool.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::core::{Destination, Ignored, Outcome, Port};
use super::fuzzing::{booter_with, with_pool};
use super::leases::LeaseTable;
use super::metrics::DhcpMetrics;
use super::process::{Processed, process};
use crate::netboot::boot::Booter;

const NOW: u64 = 1_800_000_000;
const RACK: Ipv4Addr = Ipv4Addr::new(10, 77, 8, 1);
const WORKER1: u8 = 0x21;
const WORKER2: u8 = 0x22;

/// The example cluster with its pool (10.77.0.200-202), and a relay subnet 10.77.8.0/24 (router 10.77.8.1, its
/// own DNS, pool 10.77.8.100-109) holding worker-2 at 10.77.8.22.
fn two_subnets() -> Booter {
    booter_with(|s| {
        with_pool(s)
            .replace("ip = \"10.77.0.22\"", "ip = \"10.77.8.22\"")
            .replace(
                "[metallb]",
                "[[network.relay_subnets]]\nsubnet = \"10.77.8.0/24\"\ngateway = \"10.77.8.1\"\n\
                 dns = [\"10.77.8.53\"]\nunknown_pool = { start = \"10.77.8.100\", end = \"10.77.8.109\" }\n\n[metallb]",
            )
    })
}

fn msg(
    ty: MessageType,
    last: u8,
    giaddr: Ipv4Addr,
    asked: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Message {
    let mac = [0x52, 0x54, 0x00, 0x77, 0x00, last];
    let mut m = Message::new_with_id(
        0x5ab_0000 + u32::from(last),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        giaddr,
        &mac,
    );
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000".to_vec(),
    ));
    if let Some((ip, server)) = asked {
        o.insert(DhcpOption::RequestedIpAddress(ip));
        if !server.is_unspecified() {
            o.insert(DhcpOption::ServerIdentifier(server));
        }
    }
    m
}

fn run(b: &Booter, t: &mut LeaseTable, m: &DhcpMetrics, msg: &Message) -> Outcome {
    let bytes = super::packet::encode(msg);
    match process(&bytes, Port::Dhcp, b, t, NOW, m) {
        Processed::Handled(o) => *o,
        Processed::Dropped(why) => panic!("dropped: {why}"),
    }
}

fn opt(m: &Message, code: u8) -> Option<&DhcpOption> {
    m.opts().get(OptionCode::from(code))
}

fn ignored(m: &DhcpMetrics, why: Ignored) -> u64 {
    m.ignored.get_or_create(&[("reason", why.as_str())]).get()
}

#[test]
fn the_relays_giaddr_picks_the_subnet_its_pool_router_and_dns() {
    let b = two_subnets();
    let (mut t, m) = (LeaseTable::default(), DhcpMetrics::default());
    // An unknown machine behind the rack's relay: an address of that rack's pool, its mask, router and DNS.
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, 0x99, RACK, None),
    );
    let rep = out.reply.expect("an offer");
    assert_eq!(rep.to, Destination::Relay(RACK));
    let ip = rep.msg.yiaddr();
    assert!(
        (Ipv4Addr::new(10, 77, 8, 100)..=Ipv4Addr::new(10, 77, 8, 109)).contains(&ip),
        "{ip} is not from the rack's pool"
    );
    assert_eq!(
        opt(&rep.msg, 1),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(opt(&rep.msg, 3), Some(&DhcpOption::Router(vec![RACK])));
    assert_eq!(
        opt(&rep.msg, 6),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 77, 8, 53
        )]))
    );
    // Its REQUEST through the same relay is acknowledged with the same address.
    let req = msg(
        MessageType::Request,
        0x99,
        RACK,
        Some((ip, Ipv4Addr::new(10, 77, 0, 1))),
    );
    let ack = run(&b, &mut t, &m, &req).reply.expect("an ack").msg;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    // The same unknown machine on the server's own segment (no relay): the provisioning subnet's pool and router.
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, 0x98, Ipv4Addr::UNSPECIFIED, None),
    );
    let offer = out.reply.expect("an offer").msg;
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 77, 0, 200));
    assert_eq!(
        opt(&offer, 3),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 77, 0, 1)]))
    );
    // A relay on the provisioning subnet itself answers from it, as before relay subnets existed.
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(
            MessageType::Discover,
            WORKER1,
            Ipv4Addr::new(10, 77, 0, 2),
            None,
        ),
    );
    assert_eq!(
        out.reply.expect("an offer").msg.yiaddr(),
        Ipv4Addr::new(10, 77, 0, 21)
    );
}

#[test]
fn an_inventory_machine_behind_a_relay_gets_its_inventory_address() {
    let b = two_subnets();
    let (mut t, m) = (LeaseTable::default(), DhcpMetrics::default());
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, WORKER2, RACK, None),
    );
    let offer = out.reply.expect("an offer").msg;
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 77, 8, 22),
        "the inventory address, not a pool one"
    );
    assert_eq!(opt(&offer, 3), Some(&DhcpOption::Router(vec![RACK])));
    assert_eq!(
        opt(&offer, 12),
        Some(&DhcpOption::Hostname("worker-2".into()))
    );
    assert_eq!(out.events.len(), 1, "{:?}", out.events);
    let req = msg(
        MessageType::Request,
        WORKER2,
        RACK,
        Some((Ipv4Addr::new(10, 77, 8, 22), Ipv4Addr::new(10, 77, 0, 1))),
    );
    assert_eq!(
        run(&b, &mut t, &m, &req)
            .reply
            .expect("an ack")
            .msg
            .yiaddr(),
        Ipv4Addr::new(10, 77, 8, 22)
    );
    // worker-1 (10.77.0.21) asking through the rack's relay is on the wrong segment: no answer, a warning.
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, WORKER1, RACK, None),
    );
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some(Ignored::WrongSubnet));
    assert!(
        out.warning
            .as_deref()
            .is_some_and(|w| w.contains("worker-1") && w.contains("10.77.8.0/24")),
        "{:?}",
        out.warning
    );
    assert_eq!(ignored(&m, Ignored::WrongSubnet), 1);
}

#[test]
fn a_giaddr_in_no_configured_subnet_is_dropped_and_counted() {
    let b = two_subnets();
    let (mut t, m) = (LeaseTable::default(), DhcpMetrics::default());
    let stray = Ipv4Addr::new(10, 99, 0, 1);
    for (ty, last) in [
        (MessageType::Discover, 0x99),
        (MessageType::Discover, WORKER1),
        (MessageType::Inform, WORKER2),
    ] {
        let out = run(&b, &mut t, &m, &msg(ty, last, stray, None));
        assert!(out.reply.is_none(), "{ty:?} from {last:x} answered");
        assert_eq!(out.ignored, Some(Ignored::NoSubnet));
        assert!(out.changes.is_empty());
    }
    assert_eq!(ignored(&m, Ignored::NoSubnet), 3);
    assert!(t.leases().next().is_none());
    assert_eq!(Ignored::NoSubnet.as_str(), "no_subnet");
}

/// The example cluster with a ten-address pool split between two replicas; `server` is this replica's.
fn replica(server: &str) -> Booter {
    let s = server.to_string();
    booter_with(move |t| {
        with_pool(t)
            .replace("end = \"10.77.0.202\"", "end = \"10.77.0.209\"")
            .replace("server = \"10.77.0.1\"", &format!("server = \"{s}\""))
            .replace(
                "[state]\nbackend = \"dir\"",
                "[state]\nbackend = \"dir\"\ndhcp_replicas = [\"10.77.0.1\", \"10.77.0.3\"]",
            )
    })
}

#[test]
fn replicas_hand_out_disjoint_blocks_of_the_pool() {
    let servers = [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 3)];
    let booters = [replica("10.77.0.1"), replica("10.77.0.3")];
    assert_eq!(booters[1].cluster.network.pool_share.index, 1);
    let mut tables = [LeaseTable::default(), LeaseTable::default()];
    let m = DhcpMetrics::default();
    let mut acked: [BTreeSet<Ipv4Addr>; 2] = Default::default();
    // Twelve unknown machines, each DISCOVERing to both replicas (a broadcast, or a relay forwarding to both),
    // then taking the offer of the replica whose turn it is.
    for n in 0..12u8 {
        let last = 0xa0 + n;
        let offers: Vec<Option<Ipv4Addr>> = (0..2)
            .map(|r| {
                let out = run(
                    &booters[r],
                    &mut tables[r],
                    &m,
                    &msg(MessageType::Discover, last, Ipv4Addr::UNSPECIFIED, None),
                );
                out.reply.map(|rep| rep.msg.yiaddr())
            })
            .collect();
        let pick = (n % 2) as usize;
        let Some((r, ip)) = [pick, 1 - pick]
            .into_iter()
            .find_map(|r| offers[r].map(|ip| (r, ip)))
        else {
            continue;
        };
        for other in 0..2 {
            let req = msg(
                MessageType::Request,
                last,
                Ipv4Addr::UNSPECIFIED,
                Some((ip, servers[r])),
            );
            let out = run(&booters[other], &mut tables[other], &m, &req);
            if other == r {
                assert_eq!(
                    out.reply.expect("an ack").msg.opts().msg_type(),
                    Some(MessageType::Ack)
                );
                assert!(acked[r].insert(ip));
            } else {
                assert_eq!(out.ignored, Some(Ignored::OtherServer));
            }
        }
    }
    let blocks = [
        Ipv4Addr::new(10, 77, 0, 200)..=Ipv4Addr::new(10, 77, 0, 204),
        Ipv4Addr::new(10, 77, 0, 205)..=Ipv4Addr::new(10, 77, 0, 209),
    ];
    for r in 0..2 {
        assert!(
            acked[r].iter().all(|ip| blocks[r].contains(ip)),
            "replica {r} gave {:?}",
            acked[r]
        );
        assert_eq!(
            acked[r].len(),
            5,
            "each replica fills its own block: {acked:?}"
        );
    }
    assert!(acked[0].is_disjoint(&acked[1]));
    assert!(
        ignored(&m, Ignored::PoolExhausted) >= 2,
        "machines 11 and 12 find both blocks full"
    );
    // A client of replica A REBINDING (no server id) to replica B, which has room: B NAKs, the client starts
    // over and gets an address of B's block (A's block stays A's, even while A is down).
    let a_ip = *acked[0].iter().next().unwrap();
    let last = tables[0].holder(a_ip, NOW).unwrap().0[5];
    let mut fresh = LeaseTable::default();
    let rebind = msg(
        MessageType::Request,
        last,
        Ipv4Addr::UNSPECIFIED,
        Some((a_ip, Ipv4Addr::UNSPECIFIED)),
    );
    let nak = run(&booters[1], &mut fresh, &m, &rebind)
        .reply
        .expect("a nak")
        .msg;
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    let offer = run(
        &booters[1],
        &mut fresh,
        &m,
        &msg(MessageType::Discover, last, Ipv4Addr::UNSPECIFIED, None),
    );
    assert!(blocks[1].contains(&offer.reply.expect("an offer").msg.yiaddr()));
}

#[test]
fn a_paused_pool_hands_out_nothing_but_inventory_machines_are_served() {
    let b = replica("10.77.0.1");
    let (mut t, m) = (LeaseTable::default(), DhcpMetrics::default());
    t.pool_paused = true;
    let none = Ipv4Addr::UNSPECIFIED;
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, 0x99, none, None),
    );
    assert!(out.reply.is_none() && out.changes.is_empty());
    assert_eq!(out.ignored, Some(Ignored::PoolPaused));
    let req = msg(
        MessageType::Request,
        0x99,
        none,
        Some((Ipv4Addr::new(10, 77, 0, 200), none)),
    );
    assert_eq!(
        run(&b, &mut t, &m, &req).ignored,
        Some(Ignored::PoolPaused),
        "no ACK either"
    );
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, WORKER1, none, None),
    );
    assert_eq!(
        out.reply.expect("an offer").msg.yiaddr(),
        Ipv4Addr::new(10, 77, 0, 21)
    );
    t.pool_paused = false;
    let out = run(
        &b,
        &mut t,
        &m,
        &msg(MessageType::Discover, 0x99, none, None),
    );
    assert_eq!(
        out.reply.expect("an offer").msg.yiaddr(),
        Ipv4Addr::new(10, 77, 0, 200)
    );
}
