//! Router advertisements on a real interface: in a private network namespace (created here, removed after), a
//! raw ICMPv6 listener on a veth peer receives the server's advertisement after it sends a router
//! solicitation. Needs root.

use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use imgbuild::netboot::ra::{RaMetrics, run_on};
use imgbuild::vm::netns::Netns;
use socket2::{Domain, Protocol, Socket, Type};

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// In a private namespace: a raw ICMPv6 listener on a veth peer receives our advertisement after it sends a
/// router solicitation, with hop limit 255 and a valid (kernel-made) checksum.
#[test]
fn root_ra_answers_a_solicitation_in_a_namespace() {
    let ns = Netns::create("iblra").unwrap();
    ns.ip(&[
        "link", "add", "iblra0", "type", "veth", "peer", "name", "iblra1",
    ])
    .unwrap();
    for l in ["iblra0", "iblra1"] {
        ns.ip(&["link", "set", l, "up"]).unwrap();
    }
    // The test's own binary re-entered inside the namespace would be heavy; instead run both ends in a
    // thread that has joined the namespace.
    let name = ns.name().to_string();
    let handle = std::thread::spawn(move || -> anyhow::Result<(u64, u64, Vec<u8>)> {
        let f = std::fs::File::open(format!("/run/netns/{name}"))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this thread only, with a namespace fd we opened.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let metrics = RaMetrics::default();
            let m = metrics.clone();
            let sender = tokio::spawn(async move { run_on("iblra0", m).await });
            // The "client": a raw ICMPv6 socket on the peer, soliciting until an RA arrives (DAD on the
            // link-local addresses takes about a second first).
            // SAFETY: if_nametoindex reads a NUL-terminated string we own.
            let idx = unsafe { libc::if_nametoindex(c"iblra1".as_ptr()) };
            anyhow::ensure!(idx != 0, "no interface iblra1");
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
            s.bind_device(Some(b"iblra1"))?;
            s.set_multicast_hops_v6(255)?;
            s.set_multicast_if_v6(idx)?;
            s.join_multicast_v6(&ALL_NODES, idx).ok();
            s.set_nonblocking(true)?;
            let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
            let dest = SocketAddrV6::new(ALL_ROUTERS, 0, 0, idx).into();
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            // A current-thread runtime (setns is per thread): sleep to let the sender task run.
            for _ in 0..40 {
                let _ = s.send_to(&rs, &dest);
                tokio::time::sleep(Duration::from_millis(250)).await;
                while let Ok(n) = s.recv(&mut buf) {
                    // SAFETY: recv initialised the first n bytes.
                    let msg: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if msg.first() == Some(&134) {
                        sender.abort();
                        return Ok((metrics.sent.get(), metrics.solicitations.get(), msg));
                    }
                }
            }
            sender.abort();
            anyhow::bail!("no router advertisement within 10 s")
        })
    });
    let (sent, sol, msg) = handle.join().unwrap().unwrap();
    assert!(sent >= 1);
    assert!(sol >= 1, "the solicitation was counted");
    assert_eq!(msg.len(), 16);
    assert_eq!(&msg[6..8], &[0, 0]);
    drop(ns);
}
