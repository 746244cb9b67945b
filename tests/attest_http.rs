//! TPM-attested enrollment end to end without a VM: the server's whole application over real HTTPS on loopback
//! (as `serve` runs it), the node's own scripts (`lib.sh` + `attest.sh`, rendered from the profiles) driving a
//! software TPM (swtpm + tpm2-tools) with a firmware-style event log whose digests the TPM extended. Proves: the
//! 428 that switches a TPM machine to attestation, a first EK held pending and bound by `imgbuild enroll approve`,
//! a spoofer TPM refused before and after enrollment with nothing secret in its answers, the sealed bundle opened
//! by the node, a replayed proof and a replayed quote (old nonce) refused, a re-attestation after "reboot" (no secret
//! released), and a foreign boot application refused naming the PCR event; and the same for a machine whose TPM has
//! only an ECC (P-256) EK certificate, pinned by its EK hash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

mod attest;
mod common;

use attest::{Node, Tpm, agile_log, extend, run};
use imgbuild::config::{Arch, MacAddr, Role};
use imgbuild::image::pins::{PinnedImage, Pins};
use imgbuild::netboot::state::Shared;
use imgbuild::pki::attest::eventlog::EV_EFI_BOOT_SERVICES_APPLICATION;
use imgbuild::pki::attest::public::{Key, Public};
use imgbuild::pki::{enroll, secrets};
use imgbuild::status::Events;
use sha2::{Digest, Sha256};

const M1: &str = "52:54:00:77:00:11";

/// The server: its application over HTTPS on 127.0.0.1 with a certificate from the provisioning CA.
async fn serve(shared: Arc<Shared>) -> SocketAddr {
    let app = imgbuild::netboot::http::app(shared.clone());
    common::https::serve(app, &shared.cluster().paths.secrets)
        .await
        .https
}

/// An image for the master role whose "kernel" is a real PE (systemd's EFI stub), committed in the store.
fn pinned_image(images: &Path) -> (PinnedImage, [u8; 32]) {
    let (id, manifest, app) = attest::pe_kernel_image(images, Role::Master);
    (PinnedImage::from_manifest(&id, &manifest).unwrap(), app)
}

/// Another master image: its "kernel" is systemd-boot's PE (another boot application than [`pinned_image`]'s).
fn other_image(images: &Path) -> String {
    let kernel =
        std::fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").expect("systemd-boot-efi");
    let files = [
        ("vmlinuz", kernel),
        ("initrd.img", b"initrd".to_vec()),
        ("rootfs.squashfs", b"rootfs".to_vec()),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b))
    .collect();
    let spec = common::ImageSpec {
        role: Role::Master,
        arch: Arch::Amd64,
        profile: &["base", "master"],
        standins: true,
        kernel_args: &[],
    };
    common::commit_image(images, &spec, &files).0
}

fn curl(ca: &Path, args: &[&str], url: &str) -> (u16, String) {
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args(args)
        .arg(url));
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// A TPM machine's server: the cluster (`edit`ed) with its secrets, the pinned master image, the real HTTPS
/// server, the node scripts rendered from the master profile, and the firmware's boot the server expects.
struct Setup {
    config: PathBuf,
    shared: Arc<Shared>,
    api: String,
    ca: PathBuf,
    token: String,
    lib: String,
    attest_sh: String,
    pinned_id: String,
    boot: Vec<(u32, u32, [u8; 32])>,
    m1: MacAddr,
}

async fn setup(dir: &Path, edit: impl Fn(String) -> String) -> Setup {
    // The TPM machine boots the iPXE → kernel chain (no Secure Boot): accepted only with allow_unbound_initrd.
    let config = common::write_cluster(dir, true, |t| {
        edit(t.replacen(
            "allow_unbound_initrd = false",
            "allow_unbound_initrd = true",
            1,
        ))
    });
    let cluster = imgbuild::config::load(&config).unwrap();
    secrets::init(&cluster.paths.secrets).unwrap();
    let (pinned, kernel_digest) = pinned_image(&cluster.paths.images);
    let pinned_id = pinned.id.clone();
    let pins = [((Role::Master, Arch::Amd64), pinned)]
        .into_iter()
        .collect();
    let tree = common::render(&cluster, Role::Master);
    let (lib, attest_sh) = (
        common::file(&tree, "/usr/lib/imgbuild/lib.sh").to_string(),
        common::file(&tree, "/usr/lib/imgbuild/attest.sh").to_string(),
    );
    let ca = cluster.paths.provisioning_ca_cert();
    let token = secrets::load_token(&cluster.paths.secrets).unwrap().token;
    let shared = Arc::new(Shared::new(
        config.clone(),
        cluster,
        pins,
        Events::in_memory(),
    ));
    let addr = serve(shared.clone()).await;
    let api = format!("https://{addr}");
    let m1: MacAddr = M1.parse().unwrap();
    let boot = attest::ipxe_boot(&shared.cluster(), kernel_digest);
    Setup {
        config,
        shared,
        api,
        ca,
        token,
        lib,
        attest_sh,
        pinned_id,
        boot,
        m1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_machine_enrolls_by_attestation_and_spoofers_replays_and_foreign_boots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        config,
        shared,
        api,
        ca,
        token,
        lib,
        attest_sh,
        pinned_id,
        boot,
        m1,
    } = setup(dir.path(), |t| {
        t.replacen(
            "hostname = \"master-1\"\n",
            "hostname = \"master-1\"\nidentity = \"tpm\"\n",
            1,
        )
    })
    .await;
    let store = enroll::Store::for_cluster(&shared.cluster());

    // A TPM machine asking the address path is sent to attestation.
    let (code, body) = curl(&ca, &[], &format!("{api}/api/enroll/{M1}"));
    assert_eq!(code, 428, "{body}");
    assert!(body.contains("/api/attest/"), "{body}");

    let node = tokio::task::block_in_place(|| Node::new(&lib, &attest_sh, &ca, M1));
    // Its TPM holds certificates for both an RSA and a P-256 EK: the node presents the RSA EK.
    tokio::task::block_in_place(|| {
        let maker = dir.path().join("ecdsa-ca");
        attest::ecdsa_ca(&maker);
        node.tpm.certify_p256_ek(&maker);
    });
    extend(&node.tpm.tcti, &boot);
    let log = agile_log(&boot);
    let spoofer = tokio::task::block_in_place(|| Node::new(&lib, &attest_sh, &ca, M1));
    extend(&spoofer.tpm.tcti, &boot);

    // First contact: the EK waits for approval.
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api, &log));
    assert_eq!(code, "503", "{body}");
    let pending = store.read().unwrap().tpm_pending[&m1].ek_sha256.clone();
    let ek_pub = std::fs::read(node.attest_dir().join("ek.pub")).unwrap();
    assert_eq!(
        pending,
        hex::encode(Sha256::digest(&ek_pub[2..])),
        "the pending EK is the node's"
    );
    let console = std::fs::read_to_string(node.root.path().join("enroll.stderr")).unwrap();
    assert!(
        console.contains(&format!("TPM EK (rsa): sha256:{pending}")),
        "{console}"
    );
    // Another TPM claiming the same machine meanwhile: refused, remembered, nothing secret.
    let (code, body) = tokio::task::block_in_place(|| spoofer.enroll(&api, &log));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("possible spoofer") && !body.contains(&token),
        "{body}"
    );
    assert!(store.read().unwrap().refused.contains_key(&m1));

    // `imgbuild enroll approve` binds the pending EK.
    let out = run(Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("-c")
        .arg(&config)
        .args(["enroll", "approve", "master-1"]));
    assert!(
        out.contains(&format!("TPM EK sha256:{pending} bound")),
        "{out}"
    );

    // Now the node attests and opens its sealed bundle.
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api, &log));
    assert_eq!(code, "200", "{body}");
    let b: enroll::Bundle = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(b.token, token);
    assert!(b.init, "master-1 is the first master");
    let sealed = std::fs::read_to_string(node.attest_dir().join("prove.json")).unwrap();
    assert!(!sealed.contains(&token), "the bundle travelled in clear");
    let enrolled: Vec<String> = shared
        .events
        .for_mac(m1)
        .into_iter()
        .filter(|e| e.stage == "enrolled")
        .map(|e| e.detail)
        .collect();
    assert!(
        enrolled
            .iter()
            .any(|d| d.contains("attested by TPM") && d.contains("booted snponly.efi → vmlinuz")),
        "{enrolled:?}"
    );
    assert!(
        !node.attest_dir().join("secret.bin").exists(),
        "the credential was left on disk"
    );

    // The spoofer after enrollment: unknown EK.
    let (code, body) = tokio::task::block_in_place(|| spoofer.enroll(&api, &log));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("unknown EK") && !body.contains(&token),
        "{body}"
    );

    // A replayed proof (its challenge was used): refused.
    let prove_req = node.attest_dir().join("prove.req");
    let (code, body) = curl(
        &ca,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", prove_req.display()),
        ],
        &format!("{api}/api/attest/{M1}/prove"),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("already used challenge"), "{body}");
    replay_refused_then_reboot_reattests(&node, &ca, &api, &log, &token, &pinned_id);
    let root = node.root.path();
    assert!(
        shared
            .events
            .for_mac(m1)
            .iter()
            .any(|e| e.stage == "enrolled"
                && e.detail.contains("re-attested by TPM")
                && e.detail.contains("no secret released")),
        "{:?}",
        shared.events.for_mac(m1)
    );

    // `imgbuild pin` to another image while the server runs (pins.toml rewritten on disk; no boot script, node
    // facts or image route asked since): the very next proof is checked against the image pinned now, so the same
    // boot is refused naming that image. Pinned back, the boot attests again.
    let other = other_image(&shared.cluster().paths.images);
    let pin_on_disk = |id: &str| {
        let c = shared.cluster();
        let mut p = Pins::load(&Pins::path(&c)).unwrap();
        p.pin(&*imgbuild::image::store::open(&c), Role::Master, id)
            .unwrap();
        p.save(&Pins::path(&c)).unwrap();
    };
    pin_on_disk(&other);
    let (code, body) = tokio::task::block_in_place(|| node.reattest(&api, &log));
    assert_eq!(code, 1, "{body}");
    assert!(
        body.contains("re-attestation after a reboot refused")
            && body.contains(&format!("pinned image {}", &other[..12]))
            && body.contains("PCR mismatch"),
        "the proof was checked against the pins as last loaded: {body}"
    );
    pin_on_disk(&pinned_id);
    let (code, body) = tokio::task::block_in_place(|| node.reattest(&api, &log));
    assert_eq!(code, 0, "{body}");

    // Three hard power-offs after the AK was used put a TPM in dictionary-attack lockout (swtpm, like the
    // reference TPM: 3 tries, then 1000 s each), and a locked-out AK can neither activate a credential nor quote.
    // Each boot (a fresh /run, the boot's events extended again) clears the counter before its round.
    for i in 0..3 {
        node.tpm.power_cycle_hard();
        extend(&node.tpm.tcti, &boot);
        if i < 2 {
            // Used the AK at this boot too (the counter counts power-offs after a DA-protected key was used).
            node.tpm.keys();
            node.tpm.quote(&[0]);
        }
    }
    assert_eq!(node.tpm.lockout(), (3, true), "the TPM is not locked out");
    let _ = std::fs::remove_dir_all(node.attest_dir());
    let (code, body) = tokio::task::block_in_place(|| node.reattest(&api, &log));
    assert_eq!(
        code, 0,
        "a machine power-cycled hard three times could not attest: {body}"
    );
    assert_eq!(
        node.tpm.lockout(),
        (0, false),
        "the counter was not cleared"
    );

    // Another boot application measured (another kernel, another image): refused naming the event.
    let foreign = (4, EV_EFI_BOOT_SERVICES_APPLICATION, [0xee; 32]);
    extend(&node.tpm.tcti, &[foreign]);
    let mut all = boot.clone();
    all.push(foreign);
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api, &agile_log(&all)));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("PCR mismatch: event #5 (PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION)")
            && body.contains(&hex::encode([0xee; 32]))
            && !body.contains(&token),
        "{body}"
    );
    // ib_reattest, as firstboot runs it, fails on that refusal and leaves kubelet's gate closed.
    let (code, body) = tokio::task::block_in_place(|| node.reattest(&api, &agile_log(&all)));
    assert_eq!(code, 1, "{body}");
    assert!(
        body.contains("re-attestation after a reboot refused") && body.contains("PCR mismatch"),
        "{body}"
    );
    assert!(!root.join("run/imgbuild/attested").exists());
    // A log that does not replay to the quote (the foreign event left out) is refused as such.
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api, &log));
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("does not replay"), "{body}");

    let metrics = shared.encode_metrics();
    for (outcome, n) in [
        ("served", 1),
        ("reattested", 3),
        ("pending", 1),
        ("second-claimant", 1),
        ("unknown-ek", 1),
        ("stale-challenge", 1),
        ("stale-nonce", 1),
        ("pcr-mismatch", 3),
        ("log-mismatch", 1),
    ] {
        let line = format!("imgbuild_attest_requests_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

/// A replayed quote under a fresh challenge (credential activated, so the proof is right) is refused as a stale
/// nonce. Then a reboot: the node (marked as enrolled by TPM) attests again against the image pinned now; accepted
/// and recorded as a re-attestation, and nothing secret comes back (the bundle went out once).
fn replay_refused_then_reboot_reattests(
    node: &Node,
    ca: &Path,
    api: &str,
    log: &[u8],
    token: &str,
    pinned_id: &str,
) {
    let (code, body) = tokio::task::block_in_place(|| replay_quote(node, ca, api));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("stale nonce"), "{body}");

    let root = node.root.path();
    assert!(root.join("var/lib/imgbuild/identity-tpm").exists());
    std::fs::remove_file(root.join("run/imgbuild/attested")).unwrap();
    let (code, body) = tokio::task::block_in_place(|| node.reattest(api, log));
    assert_eq!(code, 0, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reattested"], true, "{body}");
    assert!(
        answer.get("sealed").is_none() && !body.contains(token),
        "{body}"
    );
    assert_eq!(answer["image"], pinned_id, "{body}");
    assert!(root.join("run/imgbuild/attested").exists());
}

/// The node's last quote replayed under a fresh challenge: the challenge asked with the node's last request, its
/// credential activated by the node's TPM (so the proof is right and only the nonce is old). The server's answer.
fn replay_quote(node: &Node, ca: &Path, api: &str) -> (u16, String) {
    let d = node.attest_dir();
    let old: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("prove.req")).unwrap()).unwrap();
    let (code, body) = curl(
        ca,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", d.join("challenge.req").display()),
        ],
        &format!("{api}/api/attest/{}/challenge", node.mac),
    );
    assert_eq!(code, 200, "{body}");
    let ch: serde_json::Value = serde_json::from_str(&body).unwrap();
    std::fs::write(
        d.join("cred2.bin"),
        base64_decode(ch["credential"].as_str().unwrap()),
    )
    .unwrap();
    run(Command::new("bash")
        .arg("-c")
        .arg(
            "tpm2_startauthsession --policy-session -S s2.ctx && tpm2_policysecret -S s2.ctx -c e >/dev/null && \
             tpm2_activatecredential -c ak.ctx -C ek.ctx -i cred2.bin -o secret2.bin -P session:s2.ctx; rc=$?; \
             tpm2_flushcontext s2.ctx; tpm2_flushcontext -t; exit $rc",
        )
        .current_dir(&d)
        .env("TPM2TOOLS_TCTI", &node.tpm.tcti));
    let proof = imgbuild::pki::attest::seal::proof(&std::fs::read(d.join("secret2.bin")).unwrap());
    let replay = serde_json::json!({
        "id": ch["id"], "proof": proof, "quote": old["quote"], "signature": old["signature"],
        "event_log": old["event_log"],
    });
    curl(
        ca,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &replay.to_string(),
        ],
        &format!("{api}/api/attest/{}/prove", node.mac),
    )
}

/// A machine whose TPM holds only an ECC EK certificate (NIST P-256, issued by an ECDSA "manufacturer" CA), as many
/// fTPMs ship: pinned in cluster.toml by the hash read the way docs/attestation.md says, with that CA as
/// `manufacturer_ca`. The node's own scripts pick ECC by themselves (a P-256 EK, an ECDSA AK), the server makes the
/// credential by ECDH, the node opens the sealed bundle; a TPM whose EK certificate another ECDSA CA issued is
/// refused at the certificate, another TPM certified by the same maker as an unknown EK; a replayed quote is
/// refused; a reboot re-attests with nothing released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecc_tpm_machine_pinned_by_its_ek_hash_enrolls_and_reattests_and_replays_and_other_eks_are_refused()
 {
    let dir = tempfile::tempdir().unwrap();
    let maker = dir.path().join("tpm-ca");
    let maker_pem = attest::ecdsa_ca(&maker);
    // The machine's TPM, another TPM of the same maker, and one whose EK certificate another ECDSA CA issued.
    let other_maker = dir.path().join("other-tpm-ca");
    attest::ecdsa_ca(&other_maker);
    let (tpm, spoofer_tpm, uncertified_tpm) = tokio::task::block_in_place(|| {
        (
            Tpm::start_ecc_only(&maker),
            Tpm::start_ecc_only(&maker),
            Tpm::start_ecc_only(&other_maker),
        )
    });
    // The hash to pin, read on the machine as docs/attestation.md says.
    tokio::task::block_in_place(|| {
        tpm.tool(
            "tpm2_createek",
            &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub"],
        )
    });
    let pin = run(Command::new("sh")
        .arg("-c")
        .arg("tail -c +3 ek.pub | sha256sum")
        .current_dir(tpm.path("")));
    let pin = pin.split_whitespace().next().unwrap().to_string();
    let Setup {
        shared,
        api,
        ca,
        token,
        lib,
        attest_sh,
        pinned_id,
        boot,
        m1,
        ..
    } = setup(dir.path(), |t| {
        t.replacen(
            "hostname = \"master-1\"\n",
            &format!("hostname = \"master-1\"\nidentity = \"tpm\"\nek_sha256 = \"{pin}\"\n"),
            1,
        )
        .replacen(
            "manufacturer_ca = []",
            &format!("manufacturer_ca = [\"{}\"]", maker_pem.display()),
            1,
        )
    })
    .await;

    let log = agile_log(&boot);
    let node = Node::with_tpm(&lib, &attest_sh, &ca, M1, tpm);
    let spoofer = Node::with_tpm(&lib, &attest_sh, &ca, M1, spoofer_tpm);
    let uncertified = Node::with_tpm(&lib, &attest_sh, &ca, M1, uncertified_tpm);
    extend(&node.tpm.tcti, &boot);
    extend(&spoofer.tpm.tcti, &boot);

    // An EK certificate from a CA that is not in manufacturer_ca: refused by the ECDSA signature check.
    let (code, body) = tokio::task::block_in_place(|| uncertified.enroll(&api, &log));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("EK certificate refused")
            && body.contains("not signed by")
            && !body.contains(&token),
        "{body}"
    );

    // Another TPM from the same maker (its EK certificate checks out) claiming the machine: not the pinned EK.
    let (code, body) = tokio::task::block_in_place(|| spoofer.enroll(&api, &log));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("unknown EK") && !body.contains(&token),
        "{body}"
    );

    // The machine: ECC chosen by the node itself, the credential activated, the bundle opened.
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api, &log));
    assert_eq!(code, "200", "{body}");
    let b: enroll::Bundle = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(b.token, token);
    let d = node.attest_dir();
    let ek = Public::from_tpm2b(&std::fs::read(d.join("ek.pub")).unwrap()).unwrap();
    let ak = Public::from_tpm2b(&std::fs::read(d.join("ak.pub")).unwrap()).unwrap();
    assert!(matches!(ek.key, Key::Ecc { .. }) && matches!(ak.key, Key::Ecc { .. }));
    assert_eq!(hex::encode(ek.sha256()), pin);
    // The node printed the hash to pin (what the server shows for a pending EK).
    let console = std::fs::read_to_string(node.root.path().join("enroll.stderr")).unwrap();
    assert!(
        console.contains(&format!("TPM EK (ecc): sha256:{pin}")),
        "{console}"
    );
    let attest_log = std::fs::read_to_string(node.root.path().join("run/imgbuild/attest.log"))
        .unwrap_or_default();
    assert!(
        attest_log.contains("EK and AK: ecc (AK signs with ecdsa)"),
        "{attest_log}"
    );
    let challenge: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("challenge.req")).unwrap()).unwrap();
    assert!(
        challenge["ek_cert"].is_string(),
        "the P-256 EK certificate was not sent"
    );
    assert!(
        shared
            .events
            .for_mac(m1)
            .iter()
            .any(|e| e.stage == "enrolled"
                && e.detail.contains("attested by TPM")
                && e.detail.contains(&format!("EK sha256:{}", &pin[..16]))),
        "{:?}",
        shared.events.for_mac(m1)
    );

    replay_refused_then_reboot_reattests(&node, &ca, &api, &log, &token, &pinned_id);

    let metrics = shared.encode_metrics();
    for (outcome, n) in [
        ("served", 1),
        ("reattested", 1),
        ("unknown-ek", 1),
        ("ek-certificate", 1),
        ("stale-nonce", 1),
    ] {
        let line = format!("imgbuild_attest_requests_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
