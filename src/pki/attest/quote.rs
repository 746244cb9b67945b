//! A TPM quote: `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE` (what `tpm2_quote -m` writes) and the
//! `TPMT_SIGNATURE` over it (`tpm2_quote -s`), checked against the AK's public key and the nonce the server
//! gave (`extraData`, `tpm2_quote -q`).

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use super::AttestError;
use super::public::{ALG_SHA256, ECC_NIST_P256, Key, Public};
use super::wire::Reader;

/// `TPM_GENERATED_VALUE`: the first field of every structure the TPM signs.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_RSASSA`.
pub const ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;

/// A parsed quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// `extraData`: the nonce the verifier gave.
    pub extra_data: Vec<u8>,
    /// `clockInfo.resetCount`: how many times the TPM was reset (rebooted) since it was made.
    pub reset_count: u32,
    /// The PCRs quoted: (hash algorithm, PCR indexes in ascending order), in the order of the selection.
    pub selection: Vec<(u16, Vec<u32>)>,
    /// `pcrDigest`: the hash of the selected PCR values, concatenated in selection order.
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a `TPMS_ATTEST` that must be a quote.
    pub fn parse(b: &[u8]) -> Result<Quote, AttestError> {
        let mut r = Reader::new(b, "TPMS_ATTEST");
        if r.u32()? != TPM_GENERATED {
            return Err(AttestError::Malformed(
                "quote: not made by a TPM (magic is not TPM_GENERATED_VALUE)".into(),
            ));
        }
        let ty = r.u16()?;
        if ty != ST_ATTEST_QUOTE {
            return Err(AttestError::Malformed(format!(
                "quote: attestation type 0x{ty:04x}, not a quote (0x8018)"
            )));
        }
        let _qualified_signer = r.tpm2b()?;
        let extra_data = r.tpm2b()?.to_vec();
        let _clock = r.u64()?;
        let reset_count = r.u32()?;
        let _restart_count = r.u32()?;
        let _safe = r.bytes(1)?;
        let _firmware = r.u64()?;
        let count = r.u32()?;
        if count > 16 {
            return Err(AttestError::Malformed(format!(
                "quote: {count} PCR banks selected"
            )));
        }
        let mut selection = Vec::new();
        for _ in 0..count {
            let alg = r.u16()?;
            let n = r.bytes(1)?[0] as usize;
            let bits = r.bytes(n)?;
            let pcrs = (0..n * 8)
                .filter(|i| bits[i / 8] & (1 << (i % 8)) != 0)
                .map(|i| i as u32)
                .collect();
            selection.push((alg, pcrs));
        }
        let pcr_digest = r.tpm2b()?.to_vec();
        r.finish()?;
        Ok(Quote {
            extra_data,
            reset_count,
            selection,
            pcr_digest,
        })
    }

    /// The SHA-256 PCRs quoted (empty when no SHA-256 bank was selected).
    pub fn sha256_pcrs(&self) -> Vec<u32> {
        self.selection
            .iter()
            .filter(|(a, _)| *a == ALG_SHA256)
            .flat_map(|(_, p)| p.iter().copied())
            .collect()
    }
}

/// Checks `signature` (a `TPMT_SIGNATURE`) over `attest` (the quote's bytes) with the AK.
pub fn verify_signature(ak: &Public, attest: &[u8], signature: &[u8]) -> Result<(), AttestError> {
    let mut r = Reader::new(signature, "TPMT_SIGNATURE");
    let sig_alg = r.u16()?;
    let hash = r.u16()?;
    if hash != ALG_SHA256 {
        return Err(AttestError::Unsupported(format!(
            "quote signed with hash 0x{hash:04x}; sign with SHA-256 (tpm2_quote -g sha256)"
        )));
    }
    let bad =
        || AttestError::BadSignature("the quote's signature does not verify with the AK".into());
    match (sig_alg, &ak.key) {
        (ALG_RSASSA | ALG_RSAPSS, Key::Rsa { n, e }) => {
            let sig = r.tpm2b()?;
            r.finish()?;
            let params = if sig_alg == ALG_RSASSA {
                &signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &signature::RSA_PSS_2048_8192_SHA256
            };
            // Big-endian without leading zeros (65537 is 01 00 01).
            let e = e.to_be_bytes();
            let e = &e[e.iter().position(|&b| b != 0).unwrap_or(3)..];
            RsaPublicKeyComponents { n: n.as_slice(), e }
                .verify(params, attest, sig)
                .map_err(|_| bad())
        }
        (ALG_ECDSA, Key::Ecc { curve, x, y }) => {
            if *curve != ECC_NIST_P256 {
                return Err(AttestError::Unsupported(format!(
                    "AK curve 0x{curve:04x}; only NIST P-256 is accepted"
                )));
            }
            let (sr, ss) = (r.tpm2b()?, r.tpm2b()?);
            r.finish()?;
            let mut point = vec![4u8];
            point.extend(pad32(x)?);
            point.extend(pad32(y)?);
            let mut fixed = pad32(sr)?;
            fixed.extend(pad32(ss)?);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(attest, &fixed)
                .map_err(|_| bad())
        }
        _ => Err(AttestError::Unsupported(format!(
            "signature algorithm 0x{sig_alg:04x} for this AK; use RSASSA/RSAPSS with an RSA AK or ECDSA with a \
             P-256 AK"
        ))),
    }
}

fn pad32(b: &[u8]) -> Result<Vec<u8>, AttestError> {
    let b: Vec<u8> = b.iter().copied().skip_while(|&x| x == 0).collect();
    if b.len() > 32 {
        return Err(AttestError::Malformed(
            "P-256 value longer than 32 bytes".into(),
        ));
    }
    let mut out = vec![0u8; 32 - b.len()];
    out.extend(b);
    Ok(out)
}

/// The `pcrDigest` a quote of the SHA-256 `pcrs` (ascending) must carry, given their values.
pub fn pcr_digest(values: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ak.pub");
    const MSG: &[u8] = include_bytes!("../../../tests/fixtures/attest/quote.msg");
    const SIG: &[u8] = include_bytes!("../../../tests/fixtures/attest/quote.sig");
    const NONCE: &[u8] = include_bytes!("../../../tests/fixtures/attest/nonce.bin");

    #[test]
    fn a_swtpm_quote_parses_and_verifies_with_its_ak() {
        let ak = Public::from_tpm2b(AK).unwrap();
        let q = Quote::parse(MSG).unwrap();
        assert_eq!(q.extra_data, NONCE);
        assert_eq!(q.sha256_pcrs(), vec![0, 4, 7]);
        verify_signature(&ak, MSG, SIG).unwrap();
        // PCRs 0, 4 and 7 of a TPM that booted nothing are zero.
        assert_eq!(q.pcr_digest, pcr_digest(&[[0; 32]; 3]).to_vec());
    }

    #[test]
    fn a_changed_byte_anywhere_breaks_the_signature() {
        let ak = Public::from_tpm2b(AK).unwrap();
        for i in [0, 20, MSG.len() - 1] {
            let mut m = MSG.to_vec();
            m[i] ^= 1;
            assert!(verify_signature(&ak, &m, SIG).is_err(), "byte {i}");
        }
        let mut s = SIG.to_vec();
        let last = s.len() - 1;
        s[last] ^= 1;
        assert!(verify_signature(&ak, MSG, &s).is_err());
    }

    const ECC_AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ak.pub");
    const ECC_MSG: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-quote.msg");
    const ECC_SIG: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-quote.sig");
    const ECC_NONCE: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-nonce.bin");

    #[test]
    fn a_swtpm_ecdsa_quote_verifies_with_its_p256_ak_and_not_with_another_key() {
        let ak = Public::from_tpm2b(ECC_AK).unwrap();
        let q = Quote::parse(ECC_MSG).unwrap();
        assert_eq!(q.extra_data, ECC_NONCE);
        verify_signature(&ak, ECC_MSG, ECC_SIG).unwrap();
        let mut m = ECC_MSG.to_vec();
        m[20] ^= 1;
        assert!(verify_signature(&ak, &m, ECC_SIG).is_err());
        // An RSA AK cannot have made it, nor can the ECC AK have made the RSA quote.
        let rsa = Public::from_tpm2b(AK).unwrap();
        assert!(verify_signature(&rsa, ECC_MSG, ECC_SIG).is_err());
        assert!(verify_signature(&ak, MSG, SIG).is_err());
    }

    #[test]
    fn not_a_quote_is_refused() {
        let mut m = MSG.to_vec();
        m[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert!(
            Quote::parse(&m)
                .unwrap_err()
                .to_string()
                .contains("not a quote")
        );
        assert!(Quote::parse(&MSG[..MSG.len() - 2]).is_err());
    }
}
