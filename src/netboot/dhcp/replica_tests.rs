//! Unit tests of the sans-IO core for replicas behind a relay: two replicas (each with its own server address,
//! the same inventory) give an inventory machine identical offers but for their server identifier, answer to the
//! relay at `giaddr:67` with option 82 echoed, and only the replica the client selected acknowledges.

use std::net::Ipv4Addr;

use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::core::{Context, Destination, Ignored, Port, handle};
use super::fuzzing::booter_with;
use super::leases::LeaseTable;
use crate::netboot::boot::Booter;

const NOW: u64 = 1_800_000_000;
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const WORKER1: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x21];

/// A replica: the example cluster with `[network] server` set to `server`.
fn replica(server: &str) -> Booter {
    let s = server.to_string();
    booter_with(move |t| t.replace("server = \"10.77.0.1\"", &format!("server = \"{s}\"")))
}

fn relayed(ty: MessageType, server_id: Option<Ipv4Addr>) -> Message {
    let mut m = Message::new_with_id(
        0x5eed_0001,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        RELAY,
        &WORKER1,
    );
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000".to_vec(),
    ));
    if let Some(s) = server_id {
        o.insert(DhcpOption::ServerIdentifier(s));
        o.insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 77, 0, 21)));
    }
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"rack7-port3".to_vec()));
    o.insert(DhcpOption::RelayAgentInformation(info));
    m
}

fn ctx<'a>(b: &'a Booter, leases: &'a LeaseTable) -> Context<'a> {
    Context {
        booter: b,
        leases,
        now: NOW,
        port: Port::Dhcp,
    }
}

#[test]
fn replicas_offer_the_inventory_address_through_the_relay_and_only_the_selected_one_acks() {
    let (a, b) = (replica("10.77.0.1"), replica("10.77.0.3"));
    let leases = LeaseTable::default();
    let discover = relayed(MessageType::Discover, None);
    let oa = handle(&discover, &ctx(&a, &leases))
        .reply
        .expect("A offers");
    let ob = handle(&discover, &ctx(&b, &leases))
        .reply
        .expect("B offers");
    for (o, server) in [(&oa, [10, 77, 0, 1]), (&ob, [10, 77, 0, 3])] {
        assert_eq!(o.to, Destination::Relay(RELAY), "to the relay at giaddr:67");
        assert_eq!(
            o.msg.yiaddr(),
            Ipv4Addr::new(10, 77, 0, 21),
            "the inventory address"
        );
        assert_eq!(o.msg.giaddr(), RELAY);
        assert_eq!(
            o.msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::from(server))),
            "each replica names itself"
        );
        assert!(
            o.msg
                .opts()
                .get(OptionCode::RelayAgentInformation)
                .is_some(),
            "option 82 echoed to the relay"
        );
    }
    // Identical but for the server identifier (and what follows from the server's own address: the TFTP
    // next-server for a PXE ROM).
    let strip = |m: &Message| {
        let mut m = m.clone();
        m.opts_mut().remove(OptionCode::ServerIdentifier);
        m.set_siaddr(Ipv4Addr::UNSPECIFIED);
        m.opts_mut().remove(OptionCode::BootfileName);
        m.opts_mut().remove(OptionCode::TFTPServerName);
        m
    };
    assert_eq!(strip(&oa.msg), strip(&ob.msg));

    // The client selects B: A stays silent, B acknowledges through the relay.
    let request = relayed(MessageType::Request, Some(Ipv4Addr::new(10, 77, 0, 3)));
    let ra = handle(&request, &ctx(&a, &leases));
    assert!(ra.reply.is_none());
    assert_eq!(ra.ignored, Some(Ignored::OtherServer));
    let rb = handle(&request, &ctx(&b, &leases)).reply.expect("B acks");
    assert_eq!(rb.to, Destination::Relay(RELAY));
    assert_eq!(rb.msg.yiaddr(), Ipv4Addr::new(10, 77, 0, 21));
    assert_eq!(
        rb.msg.opts().get(OptionCode::MessageType),
        Some(&DhcpOption::MessageType(MessageType::Ack))
    );
}
