//! The bundle sealed to the attested TPM: encrypted with a password only the TPM that activated the credential
//! knows (the credential itself, as 64 hex digits), in the format `openssl enc -d -aes-256-ctr -pbkdf2 -md
//! sha256 -iter 1 -pass file:…` reads: `Salted__`, an 8-byte salt, then AES-256-CTR with key and IV from
//! PBKDF2-HMAC-SHA256(password, salt, 1 iteration, 48 bytes). One iteration is enough: the password is 256
//! random bits. A copy of the HTTPS traffic, or of the answer, is useless without that TPM.
//!
//! The node proves the activation before anything is released with [`proof`] — a hash of the credential, so
//! the credential itself never travels.

use std::num::NonZeroU32;

use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use sha2::{Digest, Sha256};

use super::AttestError;

/// The label of [`proof`].
pub const PROOF_LABEL: &[u8] = b"imgbuild-attest-proof:";

/// What the node sends to show it activated `credential`: hex SHA-256 of [`PROOF_LABEL`] then the
/// credential bytes (`{ printf 'imgbuild-attest-proof:'; cat credential; } | sha256sum`).
pub fn proof(credential: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(PROOF_LABEL);
    h.update(credential);
    hex::encode(h.finalize())
}

/// The password the bundle is sealed with: the credential as lowercase hex.
pub fn password(credential: &[u8]) -> String {
    hex::encode(credential)
}

/// Encrypts `plain` for `openssl enc -d -aes-256-ctr -pbkdf2 -md sha256 -iter 1 -pass file:PW` with the
/// given salt.
pub fn seal_with_salt(
    credential: &[u8],
    plain: &[u8],
    salt: [u8; 8],
) -> Result<Vec<u8>, AttestError> {
    let mut km = [0u8; 48];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::MIN,
        &salt,
        password(credential).as_bytes(),
        &mut km,
    );
    let key =
        UnboundCipherKey::new(&AES_256, &km[..32]).map_err(|_| AttestError::Crypto("AES key"))?;
    let ctr = EncryptingKey::ctr(key).map_err(|_| AttestError::Crypto("AES-CTR"))?;
    let iv: [u8; 16] = km[32..].try_into().map_err(|_| AttestError::Crypto("IV"))?;
    let mut body = plain.to_vec();
    ctr.less_safe_encrypt(&mut body, EncryptionContext::Iv128(iv.into()))
        .map_err(|_| AttestError::Crypto("AES-CTR encryption"))?;
    let mut out = b"Salted__".to_vec();
    out.extend_from_slice(&salt);
    out.extend(body);
    Ok(out)
}

/// [`seal_with_salt`] with a random salt.
pub fn seal(credential: &[u8], plain: &[u8]) -> Result<Vec<u8>, AttestError> {
    seal_with_salt(credential, plain, rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_output_has_the_openssl_salted_header_and_hides_the_text() {
        let s = seal_with_salt(&[5; 32], b"{\"token\":\"abc\"}", [1; 8]).unwrap();
        assert_eq!(&s[..8], b"Salted__");
        assert_eq!(&s[8..16], &[1; 8]);
        assert_eq!(s.len(), 16 + 15);
        assert!(!s.windows(5).any(|w| w == b"token"));
        // Another credential, another ciphertext.
        assert_ne!(
            s,
            seal_with_salt(&[6; 32], b"{\"token\":\"abc\"}", [1; 8]).unwrap()
        );
    }

    #[test]
    fn the_proof_is_not_the_credential() {
        let p = proof(&[5; 32]);
        assert_eq!(p.len(), 64);
        assert_ne!(p, password(&[5; 32]));
    }
}
