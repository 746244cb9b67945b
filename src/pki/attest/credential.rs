//! MakeCredential on the server (TPM 2.0 Part 1 §24, "Credential Protection"): a secret encrypted so that only
//! the TPM holding the EK can recover it, and only when the key named in it (the AK) is loaded in that same TPM
//! (`tpm2_activatecredential` on the node). The output is the file `tpm2_makecredential` writes and
//! `tpm2_activatecredential -i` reads: magic `0xBADCC0DE`, version 1, `TPM2B_ID_OBJECT`, `TPM2B_ENCRYPTED_SECRET`.
//!
//! For an RSA EK (the TCG template: SHA-256 name, AES-128-CFB): a random 32-byte seed encrypted with RSA-OAEP
//! (SHA-256, label `"IDENTITY\0"`); `symKey = KDFa(SHA-256, seed, "STORAGE", name, "", 128)`;
//! `encIdentity = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))`;
//! `hmacKey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256)`; `outerHMAC = HMAC(hmacKey, encIdentity || name)`.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::AttestError;
use super::public::Public;
use super::wire::{Reader, put_tpm2b};

/// The magic `tpm2_makecredential` writes first.
pub const FILE_MAGIC: u32 = 0xBADC_C0DE;

/// KDFa (TPM 2.0 Part 1 §11.4.10.2) with HMAC-SHA256: `bits` of key material from `key`, `label` (a NUL is
/// appended), `context_u` and `context_v`.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        m.update(&counter.to_be_bytes());
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(context_u);
        m.update(context_v);
        m.update(&bits.to_be_bytes());
        out.extend_from_slice(&m.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// The credential blob and encrypted seed, before they are put in the file.
#[derive(Debug, Clone)]
pub struct Credential {
    /// `TPM2B_ID_OBJECT` contents: `TPM2B_DIGEST(outerHMAC) || encIdentity`.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET` contents: the seed, RSA-OAEP encrypted to the EK.
    pub encrypted_seed: Vec<u8>,
}

impl Credential {
    /// The file `tpm2_activatecredential -i` reads.
    pub fn to_file(&self) -> Vec<u8> {
        let mut out = FILE_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&1u32.to_be_bytes());
        put_tpm2b(&mut out, &self.id_object);
        put_tpm2b(&mut out, &self.encrypted_seed);
        out
    }

    /// Reads such a file (e.g. one `tpm2_makecredential` wrote).
    pub fn from_file(b: &[u8]) -> Result<Credential, AttestError> {
        let mut r = Reader::new(b, "credential file");
        if r.u32()? != FILE_MAGIC || r.u32()? != 1 {
            return Err(AttestError::Malformed(
                "credential file: not a tpm2-tools credential (magic 0xBADCC0DE, version 1)".into(),
            ));
        }
        let id_object = r.tpm2b()?.to_vec();
        let encrypted_seed = r.tpm2b()?.to_vec();
        r.finish()?;
        Ok(Credential {
            id_object,
            encrypted_seed,
        })
    }
}

/// MakeCredential with a given seed (tests pin it; [`make_credential`] draws it at random).
pub fn make_credential_with_seed(
    ek: &Public,
    name: &[u8],
    secret: &[u8],
    seed: &[u8; 32],
) -> Result<Credential, AttestError> {
    ek.check_ek()?;
    if secret.len() > 32 {
        return Err(AttestError::BadKey(
            "a credential holds at most 32 bytes".into(),
        ));
    }
    let der = ek
        .rsa_spki_der()
        .ok_or_else(|| AttestError::Unsupported("an ECC EK".into()))?;
    let key = PublicEncryptingKey::from_der(&der)
        .map_err(|e| AttestError::BadKey(format!("the EK's RSA key is refused: {e}")))?;
    let oaep = OaepPublicEncryptingKey::new(key)
        .map_err(|_| AttestError::BadKey("the EK's RSA key cannot encrypt".into()))?;
    let mut enc_seed = vec![0u8; oaep.ciphertext_size()];
    let enc_len = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            seed,
            &mut enc_seed,
            Some(b"IDENTITY\0"),
        )
        .map_err(|_| AttestError::BadKey("RSA-OAEP encryption to the EK failed".into()))?
        .len();
    enc_seed.truncate(enc_len);

    let sym_key = kdfa(seed, "STORAGE", name, &[], 128);
    let mut enc_identity = Vec::with_capacity(secret.len() + 2);
    put_tpm2b(&mut enc_identity, secret);
    let cfb = EncryptingKey::cfb128(
        UnboundCipherKey::new(&AES_128, &sym_key).map_err(|_| AttestError::Crypto("AES key"))?,
    )
    .map_err(|_| AttestError::Crypto("AES-CFB"))?;
    cfb.less_safe_encrypt(
        &mut enc_identity,
        EncryptionContext::Iv128([0u8; 16].into()),
    )
    .map_err(|_| AttestError::Crypto("AES-CFB encryption"))?;

    let hmac_key = kdfa(seed, "INTEGRITY", &[], &[], 256);
    let mut m = Hmac::<Sha256>::new_from_slice(&hmac_key).expect("HMAC takes any key");
    m.update(&enc_identity);
    m.update(name);
    let outer = m.finalize().into_bytes();

    let mut id_object = Vec::new();
    put_tpm2b(&mut id_object, &outer);
    id_object.extend_from_slice(&enc_identity);
    Ok(Credential {
        id_object,
        encrypted_seed: enc_seed,
    })
}

/// MakeCredential: `secret` (at most 32 bytes) for the key named `name`, readable only by the TPM of `ek`.
pub fn make_credential(ek: &Public, name: &[u8], secret: &[u8]) -> Result<Credential, AttestError> {
    let seed: [u8; 32] = rand::random();
    make_credential_with_seed(ek, name, secret, &seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ek.pub");
    const AK_NAME: &[u8] = include_bytes!("../../../tests/fixtures/attest/ak.name");
    const TOOLS_FILE: &[u8] = include_bytes!("../../../tests/fixtures/attest/cred.out");

    #[test]
    fn kdfa_matches_the_spec_counter_construction() {
        // Two blocks: the second starts with counter 2; truncated to the bits asked.
        let a = kdfa(b"k", "STORAGE", b"u", b"", 384);
        assert_eq!(a.len(), 48);
        let mut m = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        m.update(&[0, 0, 0, 2]);
        m.update(b"STORAGE\0u");
        m.update(&384u32.to_be_bytes());
        assert_eq!(&a[32..], &m.finalize().into_bytes()[..16]);
        // The bit count is hashed too: 128 bits are not the first half of 256.
        assert_ne!(
            kdfa(b"k", "STORAGE", b"u", b"", 128),
            kdfa(b"k", "STORAGE", b"u", b"", 256)[..16].to_vec()
        );
    }

    #[test]
    fn the_file_has_the_layout_of_tpm2_makecredential() {
        let ek = Public::from_tpm2b(EK).unwrap();
        let ours = make_credential(&ek, AK_NAME, &[7; 32]).unwrap().to_file();
        let theirs = Credential::from_file(TOOLS_FILE).unwrap();
        let back = Credential::from_file(&ours).unwrap();
        assert_eq!(ours.len(), TOOLS_FILE.len());
        assert_eq!(back.id_object.len(), theirs.id_object.len());
        assert_eq!(back.encrypted_seed.len(), 256);
        assert_eq!(&ours[..8], &TOOLS_FILE[..8]);
    }

    #[test]
    fn a_fixed_seed_gives_a_fixed_identity_part_and_the_name_changes_the_hmac() {
        let ek = Public::from_tpm2b(EK).unwrap();
        let a = make_credential_with_seed(&ek, AK_NAME, b"secret", &[1; 32]).unwrap();
        let b = make_credential_with_seed(&ek, AK_NAME, b"secret", &[1; 32]).unwrap();
        assert_eq!(a.id_object, b.id_object);
        let mut other = AK_NAME.to_vec();
        other[5] ^= 1;
        let c = make_credential_with_seed(&ek, &other, b"secret", &[1; 32]).unwrap();
        assert_ne!(a.id_object[..34], c.id_object[..34]);
        // Only the seed's RSA-OAEP encryption is random.
        assert_ne!(a.encrypted_seed, b.encrypted_seed);
    }
}
