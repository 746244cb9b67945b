//! `TPMT_PUBLIC`: the public area of a TPM key (the EK, the AK), its Name (`nameAlg || H(TPMT_PUBLIC)`), the
//! attributes an attestation key must have, and the key as DER for the crypto library.

use sha2::{Digest, Sha256};

use super::AttestError;
use super::wire::Reader;

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ECC_NIST_P256`.
pub const ECC_NIST_P256: u16 = 0x0003;

/// `TPMA_OBJECT` bits checked here.
pub mod attr {
    /// The key cannot be duplicated out of its TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The key's parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the private part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// Signs only digests the TPM made (quotes), or decrypts only TPM-formatted secrets (an EK).
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// The public key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// RSA: the modulus (big-endian) and the public exponent (0 in the structure means 65537).
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: u32,
    },
    /// ECC on a named curve: the point.
    Ecc {
        /// `TPM_ECC_CURVE`.
        curve: u16,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
}

/// A parsed `TPMT_PUBLIC`.
#[derive(Debug, Clone)]
pub struct Public {
    /// The marshalled `TPMT_PUBLIC` (what the Name and `ek_sha256` hash).
    pub raw: Vec<u8>,
    /// `nameAlg`.
    pub name_alg: u16,
    /// `objectAttributes`.
    pub attributes: u32,
    /// The symmetric algorithm of a storage/endorsement key (`TPM_ALG_NULL` for a signing key) and its bits.
    pub symmetric: (u16, u16),
    /// The key.
    pub key: Key,
}

impl Public {
    /// Parses a `TPM2B_PUBLIC` (what `tpm2_createek -u` and `tpm2_createak -u` write).
    pub fn from_tpm2b(b: &[u8]) -> Result<Public, AttestError> {
        let mut r = Reader::new(b, "TPM2B_PUBLIC");
        let inner = r.tpm2b()?;
        r.finish()?;
        Self::from_tpmt(inner)
    }

    /// Parses a `TPMT_PUBLIC`.
    pub fn from_tpmt(b: &[u8]) -> Result<Public, AttestError> {
        let mut r = Reader::new(b, "TPMT_PUBLIC");
        let ty = r.u16()?;
        let name_alg = r.u16()?;
        if name_alg != ALG_SHA256 {
            return Err(AttestError::Unsupported(format!(
                "key nameAlg 0x{name_alg:04x}; only SHA-256 (0x000b) keys are accepted (tpm2_createek/createak \
                 -g sha256, the default)"
            )));
        }
        let attributes = r.u32()?;
        let _auth_policy = r.tpm2b()?;
        // TPMT_SYM_DEF_OBJECT
        let sym_alg = r.u16()?;
        let symmetric = if sym_alg == ALG_NULL {
            (ALG_NULL, 0)
        } else {
            let bits = r.u16()?;
            let _mode = r.u16()?;
            (sym_alg, bits)
        };
        let key = match ty {
            ALG_RSA => {
                let scheme = r.u16()?;
                if scheme != ALG_NULL {
                    let _hash = r.u16()?;
                }
                let _bits = r.u16()?;
                let e = match r.u32()? {
                    0 => 65537,
                    e => e,
                };
                let n = r.tpm2b()?.to_vec();
                Key::Rsa { n, e }
            }
            ALG_ECC => {
                let scheme = r.u16()?;
                if scheme != ALG_NULL {
                    let _hash = r.u16()?;
                }
                let curve = r.u16()?;
                let kdf = r.u16()?;
                if kdf != ALG_NULL {
                    let _hash = r.u16()?;
                }
                let x = r.tpm2b()?.to_vec();
                let y = r.tpm2b()?.to_vec();
                Key::Ecc { curve, x, y }
            }
            other => {
                return Err(AttestError::Unsupported(format!(
                    "key type 0x{other:04x}; only RSA and ECC keys are accepted"
                )));
            }
        };
        r.finish()?;
        Ok(Public {
            raw: b.to_vec(),
            name_alg,
            attributes,
            symmetric,
            key,
        })
    }

    /// The Name: `nameAlg` (big-endian) then SHA-256 of the `TPMT_PUBLIC`.
    pub fn name(&self) -> Vec<u8> {
        let mut n = self.name_alg.to_be_bytes().to_vec();
        n.extend_from_slice(&Sha256::digest(&self.raw));
        n
    }

    /// SHA-256 of the `TPMT_PUBLIC`: what `ek_sha256` pins (`tail -c +3 ek.pub | sha256sum`).
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.raw).into()
    }

    /// Checks that this is a key fit to be an attestation key: made in the TPM, never leaves it, a restricted
    /// signing key (so it signs only quotes the TPM built).
    pub fn check_ak(&self) -> Result<(), AttestError> {
        let need = [
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (attr::RESTRICTED, "restricted"),
            (attr::SIGN, "sign"),
        ];
        let missing: Vec<&str> = need
            .iter()
            .filter(|(b, _)| self.attributes & b == 0)
            .map(|(_, n)| *n)
            .collect();
        if !missing.is_empty() || self.attributes & attr::DECRYPT != 0 {
            return Err(AttestError::BadKey(format!(
                "the AK is not a restricted signing key made in the TPM (attributes 0x{:08x}; missing: {}{}); \
                 create it with tpm2_createak",
                self.attributes,
                missing.join(", "),
                if self.attributes & attr::DECRYPT != 0 {
                    "; it may decrypt"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// Checks that this is a key fit to be an EK: a restricted decryption key with an AES-128-CFB symmetric
    /// part, RSA (MakeCredential encrypts the seed with RSA-OAEP) or ECC on NIST P-256 (the seed comes from
    /// ECDH with an ephemeral key).
    pub fn check_ek(&self) -> Result<(), AttestError> {
        let want = attr::FIXED_TPM | attr::FIXED_PARENT | attr::RESTRICTED | attr::DECRYPT;
        if self.attributes & want != want || self.attributes & attr::SIGN != 0 {
            return Err(AttestError::BadKey(format!(
                "the EK is not a restricted decryption key fixed to its TPM (attributes 0x{:08x}); send the \
                 endorsement key tpm2_createek makes",
                self.attributes
            )));
        }
        if let Key::Ecc { curve, .. } = &self.key
            && *curve != ECC_NIST_P256
        {
            return Err(AttestError::Unsupported(format!(
                "an ECC EK on curve 0x{curve:04x}: credentials are made for RSA and NIST P-256 EKs (the TCG \
                 templates L-1/L-2: tpm2_createek -G rsa or -G ecc)"
            )));
        }
        if self.symmetric != (ALG_AES, 128) {
            return Err(AttestError::Unsupported(format!(
                "EK symmetric algorithm 0x{:04x}/{} bits; expected AES-128 (the TCG EK template)",
                self.symmetric.0, self.symmetric.1
            )));
        }
        Ok(())
    }

    /// A NIST P-256 key as the uncompressed SEC1 point `04 || x || y` (each coordinate 32 bytes), the form the
    /// crypto library and X.509 certificates use; `None` for RSA or another curve, an error for a coordinate
    /// longer than the curve's.
    pub fn p256_point(&self) -> Result<Option<[u8; 65]>, AttestError> {
        let Key::Ecc { curve, x, y } = &self.key else {
            return Ok(None);
        };
        if *curve != ECC_NIST_P256 {
            return Ok(None);
        }
        let mut point = [0u8; 65];
        point[0] = 4;
        for (coord, at) in [(x, 1), (y, 33)] {
            let c = strip_zeros(coord);
            if c.len() > 32 {
                return Err(AttestError::Malformed(
                    "ECC key: a P-256 coordinate longer than 32 bytes".into(),
                ));
            }
            point[at + 32 - c.len()..at + 32].copy_from_slice(c);
        }
        Ok(Some(point))
    }

    /// An RSA key as DER `SubjectPublicKeyInfo` (for RSA-OAEP).
    pub fn rsa_spki_der(&self) -> Option<Vec<u8>> {
        let Key::Rsa { n, e } = &self.key else {
            return None;
        };
        let rsa_pub = der_seq(&[der_uint(n), der_uint(&e.to_be_bytes())].concat());
        // AlgorithmIdentifier rsaEncryption (1.2.840.113549.1.1.1), NULL parameters.
        let alg = der_seq(
            &[
                &[
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
                ][..],
                &[0x05, 0x00],
            ]
            .concat(),
        );
        let mut bits = vec![0u8];
        bits.extend_from_slice(&rsa_pub);
        Some(der_seq(&[alg, der(0x03, &bits)].concat()))
    }
}

/// `b` without its leading zero bytes (big-endian integers and coordinates).
pub fn strip_zeros(b: &[u8]) -> &[u8] {
    &b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..]
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let b: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&x| x == 0)
            .collect();
        let mut out = vec![0x80 | b.len() as u8];
        out.extend(b);
        out
    }
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(body.len()));
    out.extend_from_slice(body);
    out
}

fn der_seq(body: &[u8]) -> Vec<u8> {
    der(0x30, body)
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|&x| x == 0).collect();
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend(trimmed);
    der(0x02, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ek.pub");
    const AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ak.pub");
    const AK_NAME: &[u8] = include_bytes!("../../../tests/fixtures/attest/ak.name");

    #[test]
    fn swtpm_ek_and_ak_parse_and_the_ak_name_matches_tpm2_tools() {
        let ek = Public::from_tpm2b(EK).unwrap();
        ek.check_ek().unwrap();
        assert!(matches!(&ek.key, Key::Rsa { n, e: 65537 } if n.len() == 256));
        let ak = Public::from_tpm2b(AK).unwrap();
        ak.check_ak().unwrap();
        assert_eq!(ak.name(), AK_NAME);
        // The EK is not an AK and the AK is not an EK.
        assert!(ek.check_ak().is_err());
        assert!(ak.check_ek().is_err());
    }

    const ECC_EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ek.pub");
    const ECC_AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ak.pub");
    const ECC_AK_NAME: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ak.name");

    #[test]
    fn swtpm_p256_ek_and_ak_parse_and_are_accepted() {
        let ek = Public::from_tpm2b(ECC_EK).unwrap();
        ek.check_ek().unwrap();
        assert_eq!(ek.symmetric, (ALG_AES, 128));
        let point = ek.p256_point().unwrap().unwrap();
        assert!(
            matches!(&ek.key, Key::Ecc { curve: ECC_NIST_P256, x, .. } if x[..] == point[1..33])
        );
        let ak = Public::from_tpm2b(ECC_AK).unwrap();
        ak.check_ak().unwrap();
        assert_eq!(ak.name(), ECC_AK_NAME);
        assert!(ek.check_ak().is_err());
        assert!(ak.check_ek().is_err());
        // RSA keys have no point.
        assert!(
            Public::from_tpm2b(EK)
                .unwrap()
                .p256_point()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_ecc_ek_on_another_curve_is_refused_by_name() {
        let mut ek = Public::from_tpm2b(ECC_EK).unwrap();
        if let Key::Ecc { curve, .. } = &mut ek.key {
            *curve = 0x0004; // TPM_ECC_NIST_P384 (the TCG H-3 template, a SHA-384 key)
        }
        let e = ek.check_ek().unwrap_err().to_string();
        assert!(e.contains("curve 0x0004") && e.contains("P-256"), "{e}");
        assert!(ek.p256_point().unwrap().is_none());
    }

    #[test]
    fn spki_der_is_accepted_by_the_crypto_library() {
        let ek = Public::from_tpm2b(EK).unwrap();
        let der = ek.rsa_spki_der().unwrap();
        aws_lc_rs::rsa::PublicEncryptingKey::from_der(&der).unwrap();
    }

    #[test]
    fn truncated_or_padded_structures_are_refused() {
        assert!(Public::from_tpm2b(&EK[..EK.len() - 1]).is_err());
        let mut longer = EK.to_vec();
        longer.push(0);
        assert!(Public::from_tpm2b(&longer).is_err());
    }
}
