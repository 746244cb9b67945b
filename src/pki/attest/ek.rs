//! The EK certificate: that it chains to a manufacturer CA certificate you configured
//! (`[attestation] manufacturer_ca`) and certifies the very EK the node presented.

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::AttestError;
use super::public::{Key, Public};

/// Reads the DER certificates of PEM text (every `CERTIFICATE` block).
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// Checks that `ek_cert` (DER, as read from the TPM's NV index 0x1c00002) certifies `ek` and is signed by one
/// of `cas` (DER; every configured certificate is a trust anchor, so configure the CA that issues EK
/// certificates, intermediate or root). Validity dates are not checked: TPM EK certificates often outlive them.
pub fn check_certificate(ek: &Public, ek_cert: &[u8], cas: &[Vec<u8>]) -> Result<(), AttestError> {
    let bad = |m: String| AttestError::EkCertificate(m);
    let (_, cert) = X509Certificate::from_der(ek_cert)
        .map_err(|e| bad(format!("the EK certificate is not DER X.509: {e}")))?;
    let Key::Rsa { n, .. } = &ek.key else {
        return Err(AttestError::Unsupported("an ECC EK".into()));
    };
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(k)) if strip(k.modulus) == strip(n) => {}
        _ => {
            return Err(bad(
                "the EK certificate certifies another key than the EK the node presented".into(),
            ));
        }
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

fn strip(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
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
