//! QEMU firmware variants on the lab's network plumbing, without any DHCP server: each VM starts on its tap
//! in a private namespace, its firmware begins network boot with the inventory MAC (BIOS: iPXE ROM; UEFI:
//! OVMF's own PXE; HTTP: OVMF's HTTP Boot), and iPXE's router solicitation is answered by the product's RA
//! sender. Everything runs in a namespace the test creates and is torn down by guards.

use std::time::{Duration, Instant};

use imgbuild::netboot::ra::{self, RaMetrics};
use imgbuild::vm::netns::{Children, Netns};
use imgbuild::vm::qemu::{self, Accel, Firmware, VmSpec};

/// Runs the RA sender on `iface` inside `ns` on its own thread until the returned sender is dropped.
fn ra_in(
    ns: &str,
    iface: &str,
    metrics: RaMetrics,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ns, iface) = (ns.to_string(), iface.to_string());
    let h = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let stop = tokio::task::spawn_blocking(move || {
                let _ = rx.recv();
            });
            tokio::select! {
                r = ra::run_on(&iface, metrics) => panic!("RA sender stopped: {r:?}"),
                _ = stop => {}
            }
        });
    });
    (tx, h)
}

#[test]
fn root_firmware_variants_start_network_boot_and_ipxe_gets_an_ra() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create("iblfw").unwrap();
    ns.add_bridge("br0", "10.77.0.1/24").unwrap();
    let metrics = RaMetrics::default();
    let (stop_ra, ra_thread) = ra_in(ns.name(), "br0", metrics.clone());
    let mut children = Children::new();
    let variants = [
        (
            Firmware::Bios,
            "52:54:00:77:00:21",
            "Configuring (net0 52:54:00:77:00:21)",
        ),
        (Firmware::Uefi, "52:54:00:77:00:22", "Start PXE over IPv4"),
        (
            Firmware::Http,
            "52:54:00:77:00:31",
            "Start HTTP Boot over IPv4",
        ),
    ];
    let mut specs = Vec::new();
    for (i, (fw, mac, _)) in variants.iter().enumerate() {
        let tap = format!("iblfw{i}");
        ns.add_tap(&tap, "br0").unwrap();
        let vm = dir.path().join(fw.to_string());
        let spec = VmSpec {
            name: fw.to_string(),
            mac: mac.parse().unwrap(),
            decoy_mac: None,
            arch: imgbuild::config::Arch::Amd64,
            tap,
            firmware: *fw,
            accel: Accel::Tcg,
            memory_mb: 512,
            disks: vec![vm.join("state.img")],
            console_log: vm.join("console.log"),
            dir: vm.clone(),
            secure_boot_vars: None,
            tpm_socket: None,
            boot_dir: None,
        };
        qemu::blank_disk(&spec.disks[0], 1 << 30).unwrap();
        children
            .spawn(&spec.name, qemu::command(&ns, &spec).unwrap())
            .unwrap();
        specs.push(spec);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = [false; 3];
    while Instant::now() < deadline && !(seen.iter().all(|s| *s) && metrics.solicitations.get() > 0)
    {
        for (i, (_, _, marker)) in variants.iter().enumerate() {
            let text =
                String::from_utf8_lossy(&std::fs::read(&specs[i].console_log).unwrap_or_default())
                    .into_owned();
            seen[i] |= text.contains(marker);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    children.stop_all();
    drop(stop_ra);
    ra_thread.join().unwrap();
    for (i, (fw, _, marker)) in variants.iter().enumerate() {
        assert!(
            seen[i],
            "{fw}: {marker:?} not in the console; last lines:\n{}\nqemu stderr: {}",
            qemu::console_tail(&specs[i].console_log, 15),
            std::fs::read_to_string(specs[i].dir.join("qemu.stderr")).unwrap_or_default()
        );
    }
    assert!(
        metrics.solicitations.get() >= 1,
        "iPXE's router solicitation was not heard (RAs sent: {})",
        metrics.sent.get()
    );
    assert!(metrics.sent.get() >= 1, "no router advertisement was sent");
}
