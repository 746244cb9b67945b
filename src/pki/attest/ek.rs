//! The EK certificate: that it chains to a manufacturer CA certificate you configured
//! (`[attestation] manufacturer_ca`) and certifies the very EK the node presented (an RSA EK's modulus, or an
//! ECC EK's P-256 point). The CA may sign with RSA or ECDSA (P-256/P-384, SHA-256/384: x509-parser's
//! `verify-aws`).

use x509_parser::oid_registry::OID_EC_P256;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::AttestError;
use super::public::{Key, Public, strip_zeros};

/// Reads the DER certificates of PEM text (every `CERTIFICATE` block).
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// Checks that `ek_cert` (DER, as read from the TPM's NV index 0x1c00002 for an RSA EK, 0x1c0000a for a P-256
/// EK) certifies `ek` and is signed by one
/// of `cas` (DER; every configured certificate is a trust anchor, so configure the CA that issues EK
/// certificates, intermediate or root). Validity dates are not checked: TPM EK certificates often outlive them.
pub fn check_certificate(ek: &Public, ek_cert: &[u8], cas: &[Vec<u8>]) -> Result<(), AttestError> {
    let bad = |m: String| AttestError::EkCertificate(m);
    let (_, cert) = X509Certificate::from_der(ek_cert)
        .map_err(|e| bad(format!("the EK certificate is not DER X.509: {e}")))?;
    let spki = cert.public_key();
    let same_key = match (&ek.key, spki.parsed()) {
        (Key::Rsa { n, .. }, Ok(PublicKey::RSA(k))) => strip_zeros(k.modulus) == strip_zeros(n),
        // An ECC EK: the certificate's key is an EC point on P-256 (named curve), the EK's very point.
        (Key::Ecc { .. }, Ok(PublicKey::EC(point))) => {
            let on_p256 = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|oid| oid == OID_EC_P256);
            on_p256 && ek.p256_point()?.is_some_and(|p| point.data() == p)
        }
        _ => false,
    };
    if !same_key {
        return Err(bad(
            "the EK certificate certifies another key than the EK the node presented".into(),
        ));
    }
    let parsed: Vec<X509Certificate> = cas
        .iter()
        .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
        .collect();
    // Every configured certificate is a trust anchor (roots and intermediates alike).
    if parsed.iter().any(|ca| {
        ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok()
    }) {
        return Ok(());
    }
    Err(bad(format!(
        "the EK certificate (issuer {}) is not signed by a certificate of [attestation] manufacturer_ca; add \
         the TPM maker's CA that issued it there, or pin the EK with ek_sha256",
        cert.issuer()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ek.pub");
    const AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ak.pub");
    const CERT: &[u8] = include_bytes!("../../../tests/fixtures/attest/ekcert.der");
    const ISSUER: &[u8] = include_bytes!("../../../tests/fixtures/attest/ek-issuer.pem");
    const ROOT: &[u8] = include_bytes!("../../../tests/fixtures/attest/ek-root.pem");

    #[test]
    fn the_swtpm_ek_certificate_chains_to_its_local_ca() {
        let ek = Public::from_tpm2b(EK).unwrap();
        let cas = pem_certificates(ISSUER);
        assert_eq!(cas.len(), 1);
        check_certificate(&ek, CERT, &cas).unwrap();
    }

    const ECC_EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ek.pub");
    const ECC_AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ak.pub");
    const ECC_CERT: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ekcert.der");
    const ECDSA_CA: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ek-ca.pem");

    #[test]
    fn a_p256_ek_certificate_signed_by_an_ecdsa_ca_is_checked() {
        let ek = Public::from_tpm2b(ECC_EK).unwrap();
        let ca = pem_certificates(ECDSA_CA);
        check_certificate(&ek, ECC_CERT, &ca).unwrap();
        // Another CA (RSA), another key (the AK's point; the RSA EK), a changed signature: refused.
        let e = check_certificate(&ek, ECC_CERT, &pem_certificates(ISSUER)).unwrap_err();
        assert!(e.to_string().contains("not signed by"), "{e}");
        let ak = Public::from_tpm2b(ECC_AK).unwrap();
        let e = check_certificate(&ak, ECC_CERT, &ca).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
        let rsa = Public::from_tpm2b(EK).unwrap();
        assert!(check_certificate(&rsa, ECC_CERT, &ca).is_err());
        assert!(check_certificate(&ek, CERT, &pem_certificates(ISSUER)).is_err());
        let mut forged = ECC_CERT.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(check_certificate(&ek, &forged, &ca).is_err());
    }

    #[test]
    fn another_ca_or_another_key_is_refused() {
        let ek = Public::from_tpm2b(EK).unwrap();
        // The root signed the issuer, not the EK certificate: the issuer must be configured too.
        let e = check_certificate(&ek, CERT, &pem_certificates(ROOT)).unwrap_err();
        assert!(e.to_string().contains("not signed by"), "{e}");
        let ak = Public::from_tpm2b(AK).unwrap();
        let e = check_certificate(&ak, CERT, &pem_certificates(ISSUER)).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
    }
}
