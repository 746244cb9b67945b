//! TPM attestation against a real software TPM (swtpm on loopback TCP, driven by tpm2-tools; no VM): the
//! server's MakeCredential is activated by the TPM, its quote parser and signature check accept the TPM's
//! quote, its event-log replay matches PCRs the TPM extended, the sealed bundle opens with `openssl enc`, the
//! EK certificate chains to the test's own "manufacturer" CA, and the Authenticode digest matches
//! osslsigncode's; the same for an ECC (P-256) EK and AK with an ECDSA-signed EK certificate. Each TPM runs in a temporary directory and is killed by its PID at the end.

use std::path::Path;
use std::process::Command;

use imgbuild::pki::attest::credential::make_credential;
use imgbuild::pki::attest::ek::{check_certificate, pem_certificates};
use imgbuild::pki::attest::eventlog::{EV_EFI_BOOT_SERVICES_APPLICATION, EV_SEPARATOR, EventLog};
use imgbuild::pki::attest::policy::{Evidence, Expected, verify};
use imgbuild::pki::attest::public::{ECC_NIST_P256, Key, Public};
use imgbuild::pki::attest::{AttestError, seal};
use sha2::{Digest, Sha256};

mod attest;
#[allow(unused)]
mod common;
use attest::{Tpm, log_and_extend, run};

/// MakeCredential here, ActivateCredential in the TPM: the same secret comes out; made for another AK Name, the
/// TPM refuses it (the AK must be in the TPM the credential was made for). Returns the secret.
fn activates_only_for_its_ak(tpm: &Tpm, ek: &Public, ak: &Public) -> [u8; 32] {
    let secret: [u8; 32] = rand::random();
    let file = make_credential(ek, &ak.name(), &secret).unwrap().to_file();
    assert_eq!(tpm.activate(&file).unwrap(), secret);
    let mut other = ak.name();
    other[10] ^= 1;
    let wrong = make_credential(ek, &other, &secret).unwrap().to_file();
    assert!(
        tpm.activate(&wrong).is_err(),
        "a credential for another Name was activated"
    );
    secret
}

#[test]
fn swtpm_activates_our_credential_and_its_quote_and_log_pass_the_policy() {
    let tpm = Tpm::start();
    let (ek, ak) = tpm.keys();
    ek.check_ek().unwrap();
    ak.check_ak().unwrap();
    assert_eq!(
        ak.name(),
        std::fs::read(tpm.path("ak.name")).unwrap(),
        "AK Name as tpm2-tools computes it"
    );

    let secret = activates_only_for_its_ak(&tpm, &ek, &ak);

    // The sealed bundle opens with openssl and the activated credential, as the node does it.
    let sealed = seal::seal(&secret, b"{\"token\":\"abcdef.0123456789abcdef\"}").unwrap();
    std::fs::write(tpm.path("sealed.bin"), &sealed).unwrap();
    std::fs::write(tpm.path("pass"), seal::password(&secret)).unwrap();
    run(Command::new("openssl")
        .args([
            "enc",
            "-d",
            "-aes-256-ctr",
            "-pbkdf2",
            "-md",
            "sha256",
            "-iter",
            "1",
            "-pass",
        ])
        .arg(format!("file:{}", tpm.path("pass").display()))
        .arg("-in")
        .arg(tpm.path("sealed.bin"))
        .arg("-out")
        .arg(tpm.path("bundle.json")));
    assert_eq!(
        std::fs::read(tpm.path("bundle.json")).unwrap(),
        b"{\"token\":\"abcdef.0123456789abcdef\"}"
    );
    // The proof the node sends is computed by sha256sum the same way.
    let mut h = Sha256::new();
    h.update(b"imgbuild-attest-proof:");
    h.update(secret);
    assert_eq!(seal::proof(&secret), hex::encode(h.finalize()));

    // A boot: iPXE then the UKI measured into PCR 4, a separator in PCR 7; the TPM extends the same digests.
    let (ipxe, uki) = ([0x11u8; 32], [0x22u8; 32]);
    let log = log_and_extend(
        &tpm,
        &[
            (7, EV_SEPARATOR, [0x33; 32]),
            (4, EV_SEPARATOR, [0x44; 32]),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, ipxe),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, uki),
        ],
    );
    let replayed = EventLog::parse(&log).unwrap().replay();
    let pcr4 = tpm.tool("tpm2_pcrread", &["sha256:4"]);
    assert!(
        pcr4.to_lowercase().contains(&hex::encode(replayed[4])),
        "{pcr4}"
    );
    let nonce: [u8; 32] = rand::random();
    let (quote, sig) = tpm.quote(&nonce);
    let expected = Expected {
        boot_apps: [(ipxe, "snponly.efi".into()), (uki, "uki.efi".into())].into(),
        os_loaders: vec![uki],
        chains: vec![],
        require_secure_boot: false,
    };
    let ev = Evidence {
        ak: &ak,
        quote: &quote,
        signature: &sig,
        event_log: &log,
    };
    let v = verify(&ev, &nonce, &expected).unwrap();
    assert_eq!(v.booted, "snponly.efi → uki.efi");

    // A replayed quote (another challenge's nonce) is refused.
    assert!(matches!(
        verify(&ev, &[0; 32], &expected),
        Err(AttestError::StaleNonce)
    ));
    // Another image: the event that differs is named.
    let mut other_image = expected.clone();
    other_image.boot_apps.remove(&uki);
    other_image.boot_apps.insert([0x55; 32], "uki.efi".into());
    other_image.os_loaders = vec![[0x55; 32]];
    let e = verify(&ev, &nonce, &other_image).unwrap_err().to_string();
    assert!(
        e.contains("event #4 (PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION)")
            && e.contains(&hex::encode(uki)),
        "{e}"
    );
    // A log edited to hide the UKI no longer replays to the quote.
    let mut edited = log.clone();
    let at = edited.len() - 4 - 32;
    edited[at..at + 32].copy_from_slice(&[0x55; 32]);
    let ev2 = Evidence {
        event_log: &edited,
        ..ev
    };
    assert!(matches!(
        verify(&ev2, &nonce, &other_image),
        Err(AttestError::LogMismatch)
    ));
    // Another TPM's AK did not sign this quote.
    let other_tpm = Tpm::start();
    let (_, other_ak) = other_tpm.keys();
    let ev3 = Evidence {
        ak: &other_ak,
        quote: &quote,
        signature: &sig,
        event_log: &log,
    };
    assert!(matches!(
        verify(&ev3, &nonce, &expected),
        Err(AttestError::BadSignature(_))
    ));
}

#[test]
fn the_ek_certificate_chains_to_the_test_manufacturer_ca_only() {
    let tpm = Tpm::start();
    let (ek, _) = tpm.keys();
    tpm.tool("tpm2_nvread", &["0x1c00002", "-o", "ek.crt"]);
    let cert = std::fs::read(tpm.path("ek.crt")).unwrap();
    let issuer = pem_certificates(&std::fs::read(tpm.path("ca/issuercert.pem")).unwrap());
    check_certificate(&ek, &cert, &issuer).unwrap();
    // Another maker's CA (another swtpm's local CA) does not vouch for this EK.
    let other = Tpm::start();
    let (other_ek, _) = other.keys();
    let other_issuer = pem_certificates(&std::fs::read(other.path("ca/issuercert.pem")).unwrap());
    assert!(check_certificate(&ek, &cert, &other_issuer).is_err());
    // A genuine certificate presented with another EK is refused.
    assert!(check_certificate(&other_ek, &cert, &issuer).is_err());
}

/// An ECC machine (a P-256 EK certified by an ECDSA "manufacturer" CA, no RSA EK certificate): the server's
/// MakeCredential (ECDH + KDFe) is activated by the TPM and tpm2_makecredential's is too; a credential for another
/// Name is refused by the TPM; the EK certificate read from 0x1c0000a is checked against the ECDSA CA only; an
/// ECDSA quote by a P-256 AK passes the whole policy and a replayed one is refused.
#[test]
fn an_ecc_tpm_activates_our_credential_and_its_ecdsa_quote_and_ecdsa_signed_ek_certificate_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ca = attest::ecdsa_ca(&dir.path().join("ca"));
    let tpm = Tpm::start_ecc_only(&dir.path().join("ca"));
    let (ek, ak) = tpm.keys_with("ecc");
    ek.check_ek().unwrap();
    ak.check_ak().unwrap();
    assert!(matches!(
        ek.key,
        Key::Ecc {
            curve: ECC_NIST_P256,
            ..
        }
    ));
    assert!(matches!(
        ak.key,
        Key::Ecc {
            curve: ECC_NIST_P256,
            ..
        }
    ));

    let secret = activates_only_for_its_ak(&tpm, &ek, &ak);
    // tpm2-tools' own MakeCredential for the same EK: the TPM opens it too (same scheme, two implementations).
    std::fs::write(tpm.path("s.bin"), secret).unwrap();
    run(Command::new("tpm2_makecredential")
        .args([
            "-T",
            "none",
            "-u",
            "ek.pub",
            "-s",
            "s.bin",
            "-o",
            "tools.cred",
            "-n",
        ])
        .arg(hex::encode(ak.name()))
        .current_dir(tpm.path("")));
    assert_eq!(
        tpm.activate(&std::fs::read(tpm.path("tools.cred")).unwrap())
            .unwrap(),
        secret
    );

    // The EK certificate the "maker" stored for the P-256 EK, signed with ECDSA.
    tpm.tool("tpm2_nvread", &["0x1c0000a", "-o", "ek.crt"]);
    let cert = std::fs::read(tpm.path("ek.crt")).unwrap();
    let cas = pem_certificates(&std::fs::read(&ca).unwrap());
    check_certificate(&ek, &cert, &cas).unwrap();
    let other_ca = attest::ecdsa_ca(&dir.path().join("other-ca"));
    let e = check_certificate(
        &ek,
        &cert,
        &pem_certificates(&std::fs::read(other_ca).unwrap()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not signed by"), "{e}");
    // Not for the AK, nor for this TPM's RSA EK.
    assert!(check_certificate(&ak, &cert, &cas).is_err());
    let (rsa_ek, _) = tpm.keys_with("rsa");
    assert!(check_certificate(&rsa_ek, &cert, &cas).is_err());
    let (ek, ak) = tpm.keys_with("ecc");

    let uki = [0x22u8; 32];
    let log = log_and_extend(
        &tpm,
        &[
            (7, EV_SEPARATOR, [0x33; 32]),
            (4, EV_SEPARATOR, [0x44; 32]),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, uki),
        ],
    );
    let nonce: [u8; 32] = rand::random();
    let (quote, sig) = tpm.quote(&nonce);
    assert_eq!(&sig[..2], &[0x00, 0x18], "TPM_ALG_ECDSA");
    let expected = Expected {
        boot_apps: [(uki, "uki.efi".into())].into(),
        os_loaders: vec![uki],
        chains: vec![],
        require_secure_boot: false,
    };
    let ev = Evidence {
        ak: &ak,
        quote: &quote,
        signature: &sig,
        event_log: &log,
    };
    assert_eq!(verify(&ev, &nonce, &expected).unwrap().booted, "uki.efi");
    assert!(matches!(
        verify(&ev, &[0; 32], &expected),
        Err(AttestError::StaleNonce)
    ));
    // The EK is not the AK: a quote checked against the EK's point does not verify.
    let ev_ek = Evidence { ak: &ek, ..ev };
    assert!(verify(&ev_ek, &nonce, &expected).is_err());
}

fn osslsigncode_digest(signed: &Path) -> String {
    let out = Command::new("osslsigncode")
        .arg("verify")
        .arg("-in")
        .arg(signed)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("Calculated message digest"))
        .and_then(|l| l.split(':').nth(1))
        .map(|d| d.trim().to_lowercase())
        .unwrap_or_else(|| panic!("no calculated digest in osslsigncode's output:\n{text}"))
}

#[test]
fn authenticode_digest_matches_osslsigncode_on_a_signed_stub() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=imgbuild attest test",
        ])
        .arg("-keyout")
        .arg(d.join("k.pem"))
        .arg("-out")
        .arg(d.join("c.pem")));
    let stub = Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    run(Command::new("osslsigncode")
        .args(["sign", "-h", "sha256"])
        .arg("-key")
        .arg(d.join("k.pem"))
        .arg("-certs")
        .arg(d.join("c.pem"))
        .arg("-in")
        .arg(stub)
        .arg("-out")
        .arg(d.join("signed.efi")));
    let signed = std::fs::read(d.join("signed.efi")).unwrap();
    let ours = hex::encode(imgbuild::image::authenticode::sha256(&signed).unwrap());
    assert_eq!(ours, osslsigncode_digest(&d.join("signed.efi")));
    // The certificate table is not hashed: the signed file hashes as the unsigned one padded to 8 bytes (which
    // osslsigncode does before appending the table).
    let mut padded = std::fs::read(stub).unwrap();
    padded.resize(padded.len().next_multiple_of(8), 0);
    assert_eq!(
        hex::encode(imgbuild::image::authenticode::sha256(&padded).unwrap()),
        ours
    );
}
