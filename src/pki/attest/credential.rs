//! MakeCredential on the server (TPM 2.0 Part 1 §24, "Credential Protection"): a secret encrypted so that only
//! the TPM holding the EK can recover it, and only when the key named in it (the AK) is loaded in that same TPM
//! (`tpm2_activatecredential` on the node). The output is the file `tpm2_makecredential` writes and
//! `tpm2_activatecredential -i` reads: magic `0xBADCC0DE`, version 1, `TPM2B_ID_OBJECT`, `TPM2B_ENCRYPTED_SECRET`.
//!
//! For an EK of the TCG templates (SHA-256 name, AES-128-CFB; RSA 2048 or NIST P-256): a 32-byte seed shared
//! with the EK's TPM (`seed.rs`: RSA-OAEP for an RSA EK, ECDH with an ephemeral key and KDFe for an ECC EK);
//! `symKey = KDFa(SHA-256, seed, "STORAGE", name, "", 128)`;
//! `encIdentity = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))`;
//! `hmacKey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256)`; `outerHMAC = HMAC(hmacKey, encIdentity || name)`.

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::AttestError;
use super::public::Public;
use super::seed::{self, Seed};
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
    /// `TPM2B_ENCRYPTED_SECRET` contents: the seed, RSA-OAEP encrypted to the EK, or the ephemeral ECC point.
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

/// MakeCredential with fixed random bytes (tests pin them; [`make_credential`] draws them): the seed of an RSA
/// EK, the ephemeral private key of an ECC EK ([`seed::seed_for`]).
pub fn make_credential_with_seed(
    ek: &Public,
    name: &[u8],
    secret: &[u8],
    random: &[u8; 32],
) -> Result<Credential, AttestError> {
    ek.check_ek()?;
    if secret.len() > 32 {
        return Err(AttestError::BadKey(
            "a credential holds at most 32 bytes".into(),
        ));
    }
    let Seed {
        seed,
        encrypted: enc_seed,
    } = seed::seed_for(ek, random)?;
    let seed = &seed[..];

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
    // An ECC EK's ephemeral scalar must be below the curve's order: 32 random bytes are not with probability
    // ~2^-32, so a few draws always do.
    let mut last = None;
    for _ in 0..4 {
        match make_credential_with_seed(ek, name, secret, &rand::random()) {
            Err(AttestError::Crypto(e)) => last = Some(AttestError::Crypto(e)),
            other => return other,
        }
    }
    Err(last.unwrap_or(AttestError::Crypto("MakeCredential")))
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

    const ECC_EK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ek.pub");
    const ECC_AK_NAME: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-ak.name");
    const ECC_SECRET: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-secret.bin");
    const ECC_ACTIVATED: &[u8] = include_bytes!("../../../tests/fixtures/attest/ecc-cred.out");
    const ECC_TOOLS_FILE: &[u8] =
        include_bytes!("../../../tests/fixtures/attest/ecc-tools-cred.out");

    /// Known answer from a real TPM: the credential this code made for swtpm's P-256 EK with the ephemeral key
    /// 0x5a…5a is the file swtpm's `tpm2_activatecredential` opened to `ecc-secret.bin` at capture
    /// (tests/fixtures/attest/README.md); it must stay byte for byte the same.
    #[test]
    fn an_ecc_credential_is_byte_for_byte_the_one_swtpm_activated() {
        let ek = Public::from_tpm2b(ECC_EK).unwrap();
        let ours = make_credential_with_seed(&ek, ECC_AK_NAME, ECC_SECRET, &[0x5a; 32]).unwrap();
        assert_eq!(ours.to_file(), ECC_ACTIVATED);
        // The layout of tpm2_makecredential's file for the same EK: TPMS_ECC_POINT (2 + 32, 2 + 32) as the
        // encrypted secret.
        let theirs = Credential::from_file(ECC_TOOLS_FILE).unwrap();
        assert_eq!(ours.encrypted_seed.len(), 68);
        assert_eq!(theirs.encrypted_seed.len(), 68);
        assert_eq!(ours.id_object.len(), theirs.id_object.len());
        // A fresh ephemeral key each time.
        let a = make_credential(&ek, ECC_AK_NAME, ECC_SECRET).unwrap();
        let b = make_credential(&ek, ECC_AK_NAME, ECC_SECRET).unwrap();
        assert_ne!(a.encrypted_seed, b.encrypted_seed);
        assert_ne!(a.id_object, b.id_object);
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
