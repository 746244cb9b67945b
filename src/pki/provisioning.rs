//! The provisioning CA: the root of trust of the HTTPS node API (enrollment, token publication, the barrier,
//! node events after the boot loader).
//!
//! `imgbuild secrets init` makes it (`secrets/provisioning-ca.crt`, public, and `provisioning-ca.key`, 0600);
//! the image build copies the certificate into every image (`/usr/share/imgbuild/provisioning-ca.crt`), and
//! every node call verifies the server against it (`curl --cacert`). The server issues its own TLS certificate
//! from it at each start ([`server_cert`]), with its addresses and names as subject alternative names, valid for
//! [`SERVER_VALIDITY_DAYS`]. ECDSA P-256: small and fast, and every TLS client here speaks it.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};

use super::ca::CertAndKey;
use super::{PkiError, io_err};
pub use crate::config::PROVISIONING_CA_CERT;

/// The provisioning CA's private key in the secrets directory (0600, never in an image).
pub const PROVISIONING_CA_KEY: &str = "provisioning-ca.key";
/// How long the provisioning CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a server certificate is valid; a new one is issued at every server start.
pub const SERVER_VALIDITY_DAYS: i64 = 90;
/// The subject of the provisioning CA.
pub const CA_COMMON_NAME: &str = "imgbuild provisioning CA";

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn serial() -> rcgen::SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&b)
}

/// A new provisioning CA (ECDSA P-256, `CN=imgbuild provisioning CA`, CA:TRUE with path length 0).
pub fn new_ca() -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err(CA_COMMON_NAME))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    p.serial_number = Some(serial());
    let cert = p.self_signed(&key).map_err(gen_err(CA_COMMON_NAME))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The server's TLS identity, DER encoded (what rustls takes), plus the certificate as PEM.
#[derive(Clone)]
pub struct ServerCert {
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The CA certificate, DER (sent in the chain).
    pub ca_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The leaf certificate, PEM (for logs and tests; public).
    pub cert_pem: String,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

/// A server certificate issued by `ca` for `ips` and `names` (subject alternative names; the first name, or
/// else the first address, is the common name), for server authentication, valid [`SERVER_VALIDITY_DAYS`].
pub fn server_cert(
    ca: &CertAndKey,
    ips: &[IpAddr],
    names: &[String],
) -> Result<ServerCert, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(gen_err("the provisioning CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(gen_err("the provisioning CA certificate"))?;
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("the server TLS key"))?;
    let mut p = CertificateParams::default();
    let cn = names
        .first()
        .cloned()
        .or_else(|| ips.first().map(|i| i.to_string()))
        .unwrap_or_else(|| "imgbuild".into());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    for ip in ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    for n in names {
        let dns = n.clone().try_into().map_err(gen_err("a server name"))?;
        p.subject_alt_names.push(SanType::DnsName(dns));
    }
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(SERVER_VALIDITY_DAYS);
    p.serial_number = Some(serial());
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(gen_err("the server TLS certificate"))?;
    Ok(ServerCert {
        cert_der: cert.der().to_vec(),
        ca_der: super::ca::cert_der(&ca.cert_pem, PROVISIONING_CA_CERT)?,
        key_der: key.serialize_der(),
        cert_pem: cert.pem(),
    })
}

/// Reads the provisioning CA (certificate and key) from the secrets directory `dir`.
pub fn load_ca(dir: &Path) -> Result<CertAndKey, PkiError> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PkiError::Missing {
                    dir: dir.display().to_string(),
                    file: name.to_string(),
                }
            } else {
                io_err(&p)(e)
            }
        })
    };
    Ok(CertAndKey {
        cert_pem: read(PROVISIONING_CA_CERT)?,
        key_pem: read(PROVISIONING_CA_KEY)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn server_cert_is_issued_by_the_ca_for_its_addresses() {
        let ca = new_ca().unwrap();
        let ip: IpAddr = "10.77.0.1".parse().unwrap();
        let s = server_cert(&ca, &[ip], &["imgbuild".into()]).unwrap();
        let (_, c) = parse_x509_certificate(&s.cert_der).unwrap();
        let (_, cac) = parse_x509_certificate(&s.ca_der).unwrap();
        c.verify_signature(Some(cac.public_key())).unwrap();
        assert!(cac.is_ca());
        assert!(!c.is_ca());
        let san = c.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.contains("0a:4d:00:01")),
            "10.77.0.1: {names:?}"
        );
        assert!(names.iter().any(|n| n.contains("imgbuild")), "{names:?}");
        assert!(c.extended_key_usage().unwrap().unwrap().value.server_auth);
        // Another CA did not sign it.
        let other = new_ca().unwrap();
        let od = super::super::ca::cert_der(&other.cert_pem, "x").unwrap();
        let (_, oc) = parse_x509_certificate(&od).unwrap();
        assert!(c.verify_signature(Some(oc.public_key())).is_err());
    }
}
