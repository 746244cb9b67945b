//! The seed of MakeCredential and how it reaches the EK's TPM (TPM 2.0 Part 1 §24, "Credential Protection";
//! the secret sharing of Annex B.10.3 for RSA and C.6 for ECC). The seed is what `credential.rs` derives the
//! symmetric and HMAC keys from (KDFa); only the TPM holding the EK's private key can recover it from the
//! `TPM2B_ENCRYPTED_SECRET` sent with the credential.
//!
//! - **RSA EK:** a random 32-byte seed, encrypted with RSA-OAEP (SHA-256, label `"IDENTITY\0"`).
//! - **ECC EK (NIST P-256):** one-pass Diffie-Hellman. An ephemeral key pair `(dₑ, Qₑ)` on the EK's curve;
//!   `Z = x(dₑ·Q_EK)`; `seed = KDFe(SHA-256, Z, "IDENTITY", x(Qₑ), x(Q_EK), 256)` (256 bits: the nameAlg's
//!   digest size). The encrypted secret is `Qₑ` as a `TPMS_ECC_POINT` (`TPM2B x`, `TPM2B y`); the TPM computes
//!   the same `Z` as `x(d_EK·Qₑ)` in `TPM2_ActivateCredential`. This is what `tpm2_makecredential` does for an
//!   ECC EK (tpm2-tools `tpm2_identity_util.c`), checked here against swtpm's ActivateCredential.

use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use sha2::{Digest, Sha256};

use super::AttestError;
use super::public::{Key, Public};
use super::wire::put_tpm2b;

/// The label both secret-sharing schemes use for a credential.
const IDENTITY: &str = "IDENTITY";

/// A seed and its encryption to the EK.
pub struct Seed {
    /// The seed the credential's keys are derived from (KDFa).
    pub seed: [u8; 32],
    /// The `TPM2B_ENCRYPTED_SECRET` contents: RSA-OAEP ciphertext, or the ephemeral `TPMS_ECC_POINT`.
    pub encrypted: Vec<u8>,
}

/// KDFe (TPM 2.0 Part 1 §11.4.10.3) with SHA-256: `bits` of key material from the shared secret `z`;
/// each block is `SHA-256(counter || Z || label || 0x00 || party_u || party_v)`, counter from 1.
pub fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// The seed for a credential to `ek`, from 32 random bytes: for an RSA EK they are the seed; for a P-256 EK
/// they are the ephemeral private key (a big-endian scalar; refused when it is 0 or not below the curve's
/// order, so draw again). Tests pass fixed bytes to get a fixed ECC credential.
pub fn seed_for(ek: &Public, random: &[u8; 32]) -> Result<Seed, AttestError> {
    match &ek.key {
        Key::Rsa { .. } => rsa_seed(ek, random),
        Key::Ecc { x: ek_x, .. } => {
            let point = ek.p256_point()?.ok_or_else(|| {
                AttestError::Unsupported("an ECC EK on another curve than NIST P-256".into())
            })?;
            let eph = PrivateKey::from_private_key(&ECDH_P256, random)
                .map_err(|_| AttestError::Crypto("the ephemeral P-256 key (draw again)"))?;
            let eph_pub = eph
                .compute_public_key()
                .map_err(|_| AttestError::Crypto("the ephemeral P-256 public key"))?;
            let q: &[u8] = eph_pub.as_ref();
            let (qx, qy) = (&q[1..33], &q[33..65]);
            let z = agreement::agree(
                &eph,
                UnparsedPublicKey::new(&ECDH_P256, &point[..]),
                AttestError::BadKey(
                    "the EK's point is not on NIST P-256: send the endorsement key tpm2_createek makes".into(),
                ),
                |z| Ok(z.to_vec()),
            )?;
            let seed = kdfe(&z, IDENTITY, qx, ek_x, 256);
            let mut encrypted = Vec::with_capacity(68);
            put_tpm2b(&mut encrypted, qx);
            put_tpm2b(&mut encrypted, qy);
            Ok(Seed {
                seed: seed.try_into().expect("256 bits"),
                encrypted,
            })
        }
    }
}

fn rsa_seed(ek: &Public, seed: &[u8; 32]) -> Result<Seed, AttestError> {
    let der = ek
        .rsa_spki_der()
        .ok_or_else(|| AttestError::Unsupported("not an RSA EK".into()))?;
    let key = PublicEncryptingKey::from_der(&der)
        .map_err(|e| AttestError::BadKey(format!("the EK's RSA key is refused: {e}")))?;
    let oaep = OaepPublicEncryptingKey::new(key)
        .map_err(|_| AttestError::BadKey("the EK's RSA key cannot encrypt".into()))?;
    let mut encrypted = vec![0u8; oaep.ciphertext_size()];
    let label = format!("{IDENTITY}\0");
    let n = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            seed,
            &mut encrypted,
            Some(label.as_bytes()),
        )
        .map_err(|_| AttestError::BadKey("RSA-OAEP encryption to the EK failed".into()))?
        .len();
    encrypted.truncate(n);
    Ok(Seed {
        seed: *seed,
        encrypted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::attest::wire::Reader;

    const ECC_EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ek.pub");

    #[test]
    fn kdfe_is_the_spec_hash_construction_without_a_bit_count() {
        let a = kdfe(b"Z", "IDENTITY", b"u", b"v", 384);
        assert_eq!(a.len(), 48);
        let mut h = Sha256::new();
        h.update([0, 0, 0, 2]);
        h.update(b"ZIDENTITY\0uv");
        assert_eq!(&a[32..], &h.finalize()[..16]);
        // Unlike KDFa, the bit count is not hashed: 128 bits are the first half of 256.
        assert_eq!(
            kdfe(b"Z", "IDENTITY", b"u", b"v", 128),
            kdfe(b"Z", "IDENTITY", b"u", b"v", 256)[..16].to_vec()
        );
    }

    /// The TPM's side of the ECDH, done here with a P-256 key pair whose private part the test knows: it finds
    /// the same seed from the ephemeral point alone.
    #[test]
    fn the_holder_of_the_ek_private_key_derives_the_same_seed_from_the_ephemeral_point() {
        let d_ek = [0x11u8; 32];
        let ek_key = PrivateKey::from_private_key(&ECDH_P256, &d_ek).unwrap();
        let q_ek = ek_key.compute_public_key().unwrap();
        let q_ek: &[u8] = q_ek.as_ref();
        let mut ek = Public::from_tpm2b(ECC_EK).unwrap();
        ek.key = Key::Ecc {
            curve: crate::pki::attest::public::ECC_NIST_P256,
            x: q_ek[1..33].to_vec(),
            y: q_ek[33..].to_vec(),
        };
        let s = seed_for(&ek, &[0x22; 32]).unwrap();
        let mut r = Reader::new(&s.encrypted, "TPMS_ECC_POINT");
        let (qx, qy) = (r.tpm2b().unwrap(), r.tpm2b().unwrap());
        r.finish().unwrap();
        let q_e = [&[4u8][..], qx, qy].concat();
        let z = agreement::agree(&ek_key, UnparsedPublicKey::new(&ECDH_P256, &q_e), (), |z| {
            Ok(z.to_vec())
        })
        .unwrap();
        assert_eq!(kdfe(&z, "IDENTITY", qx, &q_ek[1..33], 256), s.seed.to_vec());
        // Another ephemeral key: another point, another seed.
        let t = seed_for(&ek, &[0x23; 32]).unwrap();
        assert_ne!(t.seed, s.seed);
        assert_ne!(t.encrypted, s.encrypted);
    }

    #[test]
    fn an_ek_point_off_the_curve_or_a_zero_scalar_is_refused() {
        let mut ek = Public::from_tpm2b(ECC_EK).unwrap();
        seed_for(&ek, &[1; 32]).unwrap();
        assert!(seed_for(&ek, &[0; 32]).is_err());
        if let Key::Ecc { y, .. } = &mut ek.key {
            y[31] ^= 1;
        }
        let e = seed_for(&ek, &[1; 32]).err().unwrap().to_string();
        assert!(e.contains("not on NIST P-256"), "{e}");
    }
}
