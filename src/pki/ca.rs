//! Certificate authorities as kubeadm makes them, client certificates signed by them, and the discovery hash.
//!
//! kubeadm's CAs: RSA 2048, self-signed, `CN=kubernetes` (cluster CA), `CN=front-proxy-ca`, `CN=etcd-ca`,
//! basic constraints `CA:TRUE` (critical), key usage digitalSignature + keyEncipherment + keyCertSign
//! (critical), a subject key identifier, valid for 10 years.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::PkiError;

/// How long the CAs are valid (kubeadm's default `caCertificateValidityPeriod`: 10 years).
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a client certificate is valid (kubeadm's default `certificateValidityPeriod`: 1 year).
pub const CLIENT_VALIDITY_DAYS: i64 = 365;

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

/// An RSA 2048 key pair (the size kubeadm uses).
pub fn rsa_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_RSA_SHA256).map_err(gen_err(what))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    let now = OffsetDateTime::now_utc();
    // kubeadm back-dates by a few minutes against clock skew between nodes.
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    p.serial_number = Some(random_serial());
    p
}

/// A new self-signed CA with subject `CN=<common_name>`.
pub fn new_ca(common_name: &str) -> Result<CertAndKey, PkiError> {
    let key = rsa_key(common_name)?;
    let cert = ca_params(common_name)
        .self_signed(&key)
        .map_err(gen_err(common_name))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate (`CN=<cn>`, `O=<org>` for each org) signed by `ca`, for [`CLIENT_VALIDITY_DAYS`].
pub fn client_cert(ca: &CertAndKey, cn: &str, orgs: &[&str]) -> Result<CertAndKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(gen_err("the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(gen_err("the CA"))?;
    let key = rsa_key(cn)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(CLIENT_VALIDITY_DAYS);
    p.serial_number = Some(random_serial());
    let cert = p.signed_by(&key, &issuer).map_err(gen_err(cn))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The DER of the first certificate in a PEM text.
pub fn cert_der(pem_text: &str, path: &str) -> Result<Vec<u8>, PkiError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).map_err(|e| PkiError::Invalid {
            path: path.to_string(),
            message: format!("not a PEM certificate: {e}"),
        })?;
    if pem.label != "CERTIFICATE" {
        return Err(PkiError::Invalid {
            path: path.to_string(),
            message: format!("PEM block is {:?}, expected CERTIFICATE", pem.label),
        });
    }
    Ok(pem.contents)
}

/// kubeadm's discovery hash of a CA certificate: `sha256:` + hex(sha256(DER SubjectPublicKeyInfo)).
pub fn discovery_hash(ca_cert_pem: &str) -> Result<String, PkiError> {
    let der = cert_der(ca_cert_pem, "ca.crt")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Invalid {
        path: "ca.crt".into(),
        message: format!("not an X.509 certificate: {e}"),
    })?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(spki))))
}

/// The service-account signing key pair: (private key PEM, public key PEM), as `sa.key` / `sa.pub`.
pub fn service_account_keys() -> Result<(String, String), PkiError> {
    let key = rsa_key("the service-account key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn ca_has_kubeadm_shape() {
        let ca = new_ca("front-proxy-ca").unwrap();
        let der = cert_der(&ca.cert_pem, "x").unwrap();
        let (_, c) = parse_x509_certificate(&der).unwrap();
        assert_eq!(c.subject().to_string(), "CN=front-proxy-ca");
        assert_eq!(c.issuer().to_string(), "CN=front-proxy-ca");
        let bc = c.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        let ku = c.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(
            ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_cert_sign()
        );
        let days =
            (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400;
        assert!((3650..=3651).contains(&days), "{days}");
        match c.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(r) => assert_eq!(r.key_size(), 2048),
            other => panic!("not RSA: {other:?}"),
        }
        assert!(ca.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn client_cert_is_signed_by_ca_with_org() {
        let ca = new_ca("kubernetes").unwrap();
        let cl = client_cert(&ca, "kubernetes-admin", &["kubeadm:cluster-admins"]).unwrap();
        let ca_der = cert_der(&ca.cert_pem, "ca").unwrap();
        let (_, cac) = parse_x509_certificate(&ca_der).unwrap();
        let der = cert_der(&cl.cert_pem, "x").unwrap();
        let (_, c) = parse_x509_certificate(&der).unwrap();
        assert_eq!(
            c.subject().to_string(),
            "O=kubeadm:cluster-admins, CN=kubernetes-admin"
        );
        assert_eq!(c.issuer().to_string(), "CN=kubernetes");
        c.verify_signature(Some(cac.public_key())).unwrap();
        assert!(!c.is_ca());
        let eku = c.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth);
    }

    fn have_openssl() -> bool {
        std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The hash equals `openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | sha256sum`.
    #[test]
    fn discovery_hash_matches_openssl() {
        assert!(
            have_openssl(),
            "openssl is needed for this test (Debian package openssl)"
        );
        let ca = new_ca("kubernetes").unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.crt");
        std::fs::write(&p, &ca.cert_pem).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
                p.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hex = String::from_utf8(out.stdout).unwrap();
        let hex = hex.split_whitespace().next().unwrap();
        assert_eq!(
            discovery_hash(&ca.cert_pem).unwrap(),
            format!("sha256:{hex}")
        );
        // A different CA gives a different hash.
        let other = new_ca("kubernetes").unwrap();
        assert_ne!(
            discovery_hash(&other.cert_pem).unwrap(),
            format!("sha256:{hex}")
        );
    }

    #[test]
    fn discovery_hash_rejects_non_certificates() {
        assert!(discovery_hash("hello").is_err());
        let (k, _) = service_account_keys().unwrap();
        assert!(discovery_hash(&k).is_err());
    }

    #[test]
    fn sa_keys_are_a_pair() {
        let (k, p) = service_account_keys().unwrap();
        let kp = KeyPair::from_pem(&k).unwrap();
        assert_eq!(kp.public_key_pem(), p);
        assert!(p.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
