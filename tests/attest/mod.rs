//! A software TPM for the attestation tests: swtpm on loopback TCP with an EK certificate from a CA the test
//! makes (swtpm-localca), driven by tpm2-tools; killed by its PID when dropped.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgbuild::pki::attest::eventlog::EV_NO_ACTION;
use imgbuild::pki::attest::public::Public;

/// A swtpm on 127.0.0.1 with an EK certificate from a CA made here; killed on drop.
pub struct Tpm {
    pub dir: tempfile::TempDir,
    child: Child,
    pub tcti: String,
}

impl Drop for Tpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two consecutive free loopback ports (swtpm's TCTI uses port and port + 1).
fn free_ports() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free loopback ports");
}

/// A "manufacturer" CA that signs with ECDSA (P-256, SHA-256) in `dir`: `signkey.pem`, `issuercert.pem` (the
/// certificate to configure as `manufacturer_ca`) and `certserial`, the files swtpm-localca signs with.
pub fn ecdsa_ca(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(dir.join("signkey.pem")));
    run(Command::new("openssl")
        .args(["req", "-new", "-x509", "-sha256", "-days", "3650", "-key"])
        .arg(dir.join("signkey.pem"))
        .args([
            "-subj",
            "/CN=imgbuild test ECDSA EK CA",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
        ])
        .arg(dir.join("issuercert.pem")));
    std::fs::write(dir.join("certserial"), "1\n").unwrap();
    dir.join("issuercert.pem")
}

impl Tpm {
    pub fn start() -> Tpm {
        Self::start_with_ca(None)
    }

    /// A TPM as many real ones ship (fTPMs especially): a NIST P-256 EK whose certificate (NV index 0x1c0000a)
    /// the ECDSA CA in `ca` ([`ecdsa_ca`]) issued, and no RSA EK certificate (0x1c00002 removed). swtpm 0.7
    /// itself certifies a P-384 EK (0x1c00016), so the P-256 certificate is issued here with `swtpm_cert`, the
    /// tool swtpm-localca uses, and written with the platform hierarchy as a manufacturer would.
    pub fn start_ecc_only(ca: &Path) -> Tpm {
        let tpm = Self::start_with_ca(Some(ca));
        tpm.certify_p256_ek(ca);
        tpm.tool("tpm2_nvundefine", &["-C", "p", "0x1c00002"]);
        tpm
    }

    /// Stores a certificate for the TPM's P-256 EK at NV index 0x1c0000a, issued by the ECDSA CA in `ca`.
    pub fn certify_p256_ek(&self, ca: &Path) {
        self.tool(
            "tpm2_createek",
            &["-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub"],
        );
        let ek = Public::from_tpm2b(&std::fs::read(self.path("ek.pub")).unwrap()).unwrap();
        let p = ek.p256_point().unwrap().expect("a P-256 EK");
        run(Command::new("swtpm_cert")
            .args([
                "--type",
                "ek",
                "--tpm2",
                "--ecc-curveid",
                "secp256r1",
                "--ecc-x",
            ])
            .arg(hex::encode(&p[1..33]))
            .arg("--ecc-y")
            .arg(hex::encode(&p[33..]))
            .arg("--signkey")
            .arg(ca.join("signkey.pem"))
            .arg("--issuercert")
            .arg(ca.join("issuercert.pem"))
            .arg("--out-cert")
            .arg(self.path("ecc-ekcert.der"))
            .args([
                "--serial",
                &rand::random::<u32>().to_string(),
                "--days",
                "-1",
            ])
            .args(["--tpm-manufacturer", "id:00001014", "--tpm-model", "swtpm"])
            .args(["--tpm-version", "id:20191023", "--tpm-spec-family", "2.0"])
            .args(["--tpm-spec-level", "0", "--tpm-spec-revision", "164"])
            .args(["--subject", "CN=imgbuild-test-ek"]));
        let size = std::fs::metadata(self.path("ecc-ekcert.der"))
            .unwrap()
            .len()
            .to_string();
        self.tool(
            "tpm2_nvdefine",
            &[
                "0x1c0000a",
                "-C",
                "p",
                "-s",
                &size,
                "-a",
                "ppwrite|ppread|ownerread|authread|no_da|platformcreate",
            ],
        );
        self.tool(
            "tpm2_nvwrite",
            &["0x1c0000a", "-C", "p", "-i", "ecc-ekcert.der"],
        );
    }

    /// swtpm with EK certificates from swtpm-localca: its own CA made in the TPM's directory, or the one in `ca`.
    fn start_with_ca(shared_ca: Option<&Path>) -> Tpm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca, state) = (
            shared_ca.map_or_else(|| d.join("ca"), Path::to_path_buf),
            d.join("state"),
        );
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        // swtpm-localca makes its own CA in `statedir` on first use: the test's "manufacturer".
        std::fs::write(
            d.join("localca.conf"),
            format!(
                "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
                ca.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("localca.options"), "--platform-manufacturer imgbuild-test\n--platform-version 2.1\n--platform-model QEMU\n").unwrap();
        std::fs::write(
            d.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\n",
                d.join("localca.conf").display(),
                d.join("localca.options").display()
            ),
        )
        .unwrap();
        run(Command::new("swtpm_setup")
            .args([
                "--tpm2",
                "--create-ek-cert",
                "--create-platform-cert",
                "--overwrite",
                "--tpmstate",
            ])
            .arg(&state)
            .arg("--config")
            .arg(d.join("swtpm_setup.conf")));
        let port = free_ports();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "startup-clear", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm (apt-get install swtpm swtpm-tools)");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "swtpm did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tpm {
            dir,
            child,
            tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        }
    }

    /// A power-off without an orderly TPM2_Shutdown, then power-on (swtpm's control channel) and
    /// TPM2_Startup(CLEAR), as firmware does: the PCRs start again from zero.
    pub fn power_cycle_hard(&self) {
        let port: u16 = self.tcti.rsplit('=').next().unwrap().parse().unwrap();
        run(Command::new("swtpm_ioctl").args(["--tcp", &format!("127.0.0.1:{}", port + 1), "-i"]));
        run(Command::new("tpm2_startup")
            .arg("-c")
            .env("TPM2TOOLS_TCTI", &self.tcti));
    }

    /// The TPM's dictionary-attack counter and whether it is in lockout.
    pub fn lockout(&self) -> (u32, bool) {
        let caps = self.tool("tpm2_getcap", &["properties-variable"]);
        let counter = caps
            .lines()
            .find_map(|l| l.trim().strip_prefix("TPM2_PT_LOCKOUT_COUNTER:"))
            .map(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap())
            .expect("TPM2_PT_LOCKOUT_COUNTER");
        let locked = caps
            .lines()
            .any(|l| l.trim().starts_with("inLockout:") && l.trim().ends_with('1'));
        (counter, locked)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// A tpm2-tools command in the TPM's directory.
    pub fn tool(&self, name: &str, args: &[&str]) -> String {
        let out = run(Command::new(name)
            .args(args)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", &self.tcti));
        // The swtpm TCTI has no resource manager: flush what the command left loaded.
        run(Command::new("tpm2_flushcontext")
            .arg("-t")
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", &self.tcti));
        out
    }

    pub fn keys(&self) -> (Public, Public) {
        self.keys_with("rsa")
    }

    /// The EK and an AK of `alg` ("rsa": RSASSA AK; "ecc": P-256 EK, ECDSA AK), as the node makes them.
    pub fn keys_with(&self, alg: &str) -> (Public, Public) {
        let sign = if alg == "ecc" { "ecdsa" } else { "rsassa" };
        self.tool(
            "tpm2_createek",
            &["-c", "ek.ctx", "-G", alg, "-u", "ek.pub"],
        );
        self.tool(
            "tpm2_createak",
            &[
                "-C", "ek.ctx", "-c", "ak.ctx", "-G", alg, "-g", "sha256", "-s", sign, "-u",
                "ak.pub", "-n", "ak.name",
            ],
        );
        let ek = Public::from_tpm2b(&std::fs::read(self.path("ek.pub")).unwrap()).unwrap();
        let ak = Public::from_tpm2b(&std::fs::read(self.path("ak.pub")).unwrap()).unwrap();
        (ek, ak)
    }

    /// tpm2_activatecredential on `file`: the secret the TPM recovers, or the tool's failure.
    pub fn activate(&self, file: &[u8]) -> Result<Vec<u8>, String> {
        std::fs::write(self.path("cred.bin"), file).unwrap();
        self.tool(
            "tpm2_startauthsession",
            &["--policy-session", "-S", "session.ctx"],
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "tpm2_policysecret -S session.ctx -c e >/dev/null && tpm2_activatecredential -c ak.ctx -C ek.ctx \
                 -i cred.bin -o secret.bin -P session:session.ctx; rc=$?; tpm2_flushcontext session.ctx; \
                 tpm2_flushcontext -t; exit $rc",
            )
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(std::fs::read(self.path("secret.bin")).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn quote(&self, nonce: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.tool(
            "tpm2_quote",
            &[
                "-c",
                "ak.ctx",
                "-l",
                "sha256:0,1,2,3,4,5,6,7",
                "-q",
                &hex::encode(nonce),
                "-g",
                "sha256",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
            ],
        );
        (
            std::fs::read(self.path("quote.msg")).unwrap(),
            std::fs::read(self.path("quote.sig")).unwrap(),
        )
    }
}

/// The firmware's boot: a separator in PCR 7 and 4, then the way the server boots a (non-Secure Boot) UEFI machine:
/// the iPXE binary it serves, then the image's kernel (docs/attestation.md, "The iPXE path").
pub fn ipxe_boot(
    cluster: &imgbuild::config::Cluster,
    kernel_digest: [u8; 32],
) -> Vec<(u32, u32, [u8; 32])> {
    use imgbuild::pki::attest::eventlog::{EV_EFI_BOOT_SERVICES_APPLICATION, EV_SEPARATOR};
    let ipxe = std::fs::read(cluster.network.ipxe_binaries.join("snponly.efi"))
        .expect("the served snponly.efi (Debian package ipxe)");
    let ipxe_digest = imgbuild::image::authenticode::sha256(&ipxe).unwrap();
    vec![
        (7, EV_SEPARATOR, [0x07; 32]),
        (4, EV_SEPARATOR, [0x04; 32]),
        (4, EV_EFI_BOOT_SERVICES_APPLICATION, ipxe_digest),
        (4, EV_EFI_BOOT_SERVICES_APPLICATION, kernel_digest),
    ]
}

/// A crypto-agile event log (SHA-256 bank only) of `(pcr, type, digest)` events with empty data.
pub fn agile_log(events: &[(u32, u32, [u8; 32])]) -> Vec<u8> {
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend(0u32.to_le_bytes());
    spec.extend([0, 2, 0, 2]);
    spec.extend(1u32.to_le_bytes());
    spec.extend(0x000bu16.to_le_bytes());
    spec.extend(32u16.to_le_bytes());
    spec.push(0);
    let mut out = Vec::new();
    out.extend(0u32.to_le_bytes());
    out.extend(EV_NO_ACTION.to_le_bytes());
    out.extend([0u8; 20]);
    out.extend((spec.len() as u32).to_le_bytes());
    out.extend(spec);
    for (pcr, kind, d) in events {
        out.extend(pcr.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend(0x000bu16.to_le_bytes());
        out.extend(d);
        out.extend(0u32.to_le_bytes());
    }
    out
}

/// Extends each event's digest into the TPM's SHA-256 PCR (what firmware does as it logs).
pub fn extend(tpm_tcti: &str, events: &[(u32, u32, [u8; 32])]) {
    for (pcr, _, d) in events {
        run(Command::new("tpm2_pcrextend")
            .arg(format!("{pcr}:sha256={}", hex::encode(d)))
            .env("TPM2TOOLS_TCTI", tpm_tcti));
    }
}

/// [`agile_log`] of `events`, extended into `tpm`.
pub fn log_and_extend(tpm: &Tpm, events: &[(u32, u32, [u8; 32])]) -> Vec<u8> {
    extend(&tpm.tcti, events);
    agile_log(events)
}

/// One node: the rendered scripts (`lib.sh`, `attest.sh`) under its own root, and its TPM.
pub struct Node {
    pub root: tempfile::TempDir,
    pub tpm: Tpm,
    /// The inventory MAC it claims.
    pub mac: String,
}

impl Node {
    pub fn new(lib: &str, attest: &str, ca: &Path, mac: &str) -> Node {
        Self::with_tpm(lib, attest, ca, mac, Tpm::start())
    }

    /// A node whose TPM is `tpm`.
    pub fn with_tpm(lib: &str, attest: &str, ca: &Path, mac: &str, tpm: Tpm) -> Node {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib/imgbuild")).unwrap();
        std::fs::create_dir_all(r.join("usr/share/imgbuild")).unwrap();
        std::fs::create_dir_all(r.join("run/imgbuild")).unwrap();
        std::fs::write(r.join("usr/lib/imgbuild/lib.sh"), lib).unwrap();
        std::fs::write(r.join("usr/lib/imgbuild/attest.sh"), attest).unwrap();
        std::fs::copy(ca, r.join("usr/share/imgbuild/provisioning-ca.crt")).unwrap();
        Node {
            root,
            tpm,
            mac: mac.to_string(),
        }
    }

    pub fn attest_dir(&self) -> PathBuf {
        self.root.path().join("run/imgbuild/attest")
    }

    /// Runs `call` in bash with the node's `lib.sh` and `attest.sh` sourced, `log` as the firmware event log,
    /// the node's TPM, and `IB_API` / `IB_MAC` set, as firstboot runs them.
    fn script(&self, api: &str, log: &[u8], call: &str) -> std::process::Output {
        let r = self.root.path();
        std::fs::write(r.join("eventlog"), log).unwrap();
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                r#"set -u; . "$IMGBUILD_ROOT/usr/lib/imgbuild/lib.sh"; . "$IMGBUILD_ROOT/usr/lib/imgbuild/attest.sh"
                   IB_API="$API"; IB_MAC="$MAC"; {call}"#
            ))
            .env("IMGBUILD_ROOT", r)
            .env("IMGBUILD_EVENTLOG", r.join("eventlog"))
            .env("TPM2TOOLS_TCTI", &self.tpm.tcti)
            .env("API", api)
            .env("MAC", &self.mac)
            .output()
            .unwrap()
    }

    /// `ib_attest_enroll` as firstboot runs it: (HTTP status, what it wrote to OUT); its stderr is kept in
    /// `enroll.stderr` under the node's root.
    pub fn enroll(&self, api: &str, log: &[u8]) -> (String, String) {
        let out = self.script(
            api,
            log,
            r#"ib_attest_enroll "$IMGBUILD_ROOT/out" "$IMGBUILD_ROOT/hdr""#,
        );
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let body = std::fs::read_to_string(self.root.path().join("out")).unwrap_or_default();
        // What the node printed (its console), kept for the test.
        std::fs::write(self.root.path().join("enroll.stderr"), &out.stderr).unwrap();
        eprintln!(
            "node: {code} {body}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (code, body)
    }

    /// `ib_reattest` as firstboot runs it at a later boot: (its exit status, its saved answer).
    pub fn reattest(&self, api: &str, log: &[u8]) -> (i32, String) {
        let out = self.script(api, log, "IB_ENROLL_TRIES=1; ib_reattest");
        let body = std::fs::read_to_string(self.root.path().join("run/imgbuild/reattest.out"))
            .unwrap_or_default();
        eprintln!("node reattest: {:?} {body}", out.status);
        (out.status.code().unwrap_or(-1), body)
    }
}

/// An image for `role` whose "kernel" is a real PE (systemd's EFI stub), committed in the store directory
/// `images`: its id, its manifest and the kernel's Authenticode digest (what firmware measures as the boot
/// application).
pub fn pe_kernel_image(
    images: &Path,
    role: imgbuild::config::Role,
) -> (String, imgbuild::image::manifest::Manifest, [u8; 32]) {
    let kernel =
        std::fs::read("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").expect("systemd-boot-efi");
    let mut files = std::collections::BTreeMap::new();
    files.insert("vmlinuz".to_string(), kernel.clone());
    files.insert("initrd.img".to_string(), b"initrd".to_vec());
    files.insert("rootfs.squashfs".to_string(), b"rootfs".to_vec());
    let profile = ["base".to_string(), role.to_string()];
    let profile: Vec<&str> = profile.iter().map(String::as_str).collect();
    let spec = crate::common::ImageSpec {
        role,
        arch: imgbuild::config::Arch::Amd64,
        profile: &profile,
        standins: true,
        kernel_args: &[],
    };
    let (id, manifest) = crate::common::commit_image(images, &spec, &files);
    let app = imgbuild::image::authenticode::sha256(&kernel).unwrap();
    (id, manifest, app)
}
