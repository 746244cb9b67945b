//! TPM-attested enrollment (docs/attestation.md): the server side, pure and without I/O.
//!
//! - [`admit`]: which EK may speak for a machine (pinned, approved, pending, refused).
//! - [`wire`]: reading TPM marshalled structures and the event log's fields.
//! - [`public`]: `TPMT_PUBLIC` (EK, AK): Name, EK hash, AK attributes.
//! - [`ek`]: the EK certificate against `[attestation] manufacturer_ca`.
//! - [`credential`]: MakeCredential (the file `tpm2_activatecredential` reads).
//! - [`seed`]: its seed, shared with the EK's TPM (RSA-OAEP, or ECDH + KDFe for an ECC EK).
//! - [`quote`]: `TPMS_ATTEST` quotes and their signatures.
//! - [`eventlog`]: the firmware's crypto-agile event log, replayed to PCR values.
//! - [`policy`]: the checks a node's evidence must pass against its pinned image.
//! - [`sessions`]: outstanding challenges (bounded, expiring, used once).
//! - [`seal`]: the bundle encrypted with the activated credential (`openssl enc` on the node).
//!
//! The HTTPS routes are `netboot::http::attest`.

pub mod admit;
pub mod credential;
pub mod ek;
pub mod eventlog;
pub mod policy;
pub mod public;
pub mod quote;
pub mod seal;
pub mod seed;
pub mod sessions;
pub mod wire;

/// Why attestation evidence is refused. Each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A structure is truncated, padded or not what it claims.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// An algorithm or key type this server does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A key without the properties its use needs.
    #[error("{0}")]
    BadKey(String),
    /// A signature that does not verify.
    #[error("{0}; the AK that signed the quote is not the one the credential was made for")]
    BadSignature(String),
    /// The crypto library failed at a step.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    /// The EK certificate does not check out.
    #[error("EK certificate refused: {0}")]
    EkCertificate(String),
    /// The quote carries another nonce than the one this challenge gave: a replayed or stale quote.
    #[error(
        "stale nonce: the quote does not carry the nonce of this challenge (a replayed quote?); ask for a new \
         challenge and quote with its nonce"
    )]
    StaleNonce,
    /// The event log does not replay to the quoted PCR values.
    #[error(
        "the event log does not replay to the quoted PCRs: the log sent is not the one this boot measured; send \
         /sys/kernel/security/tpm0/binary_bios_measurements unchanged"
    )]
    LogMismatch,
    /// A measured boot application is not the pinned image's.
    #[error(
        "PCR mismatch: {event} is not a boot application of the image pinned for this machine (expected: \
         {expected}); boot the pinned image (`imgbuild pin`), or pin the image this machine runs"
    )]
    PcrMismatch {
        /// The event that differed.
        event: String,
        /// What the image allows.
        expected: String,
    },
    /// The pinned image's applications were measured, but not in an order this machine's boot path loads them.
    #[error(
        "PCR mismatch: {event} ({expected}); boot this machine the way the server serves it, from the pinned \
         image"
    )]
    BootPathMismatch {
        /// The event where the boot left every allowed path.
        event: String,
        /// The allowed paths and what the image allows.
        expected: String,
    },
    /// Secure Boot was off but `[attestation] require_secure_boot` is set.
    #[error(
        "Secure Boot was off at boot (PCR 7's SecureBoot variable is not 1) and [attestation] require_secure_boot \
         is set; enroll the cluster's keys in the firmware and turn Secure Boot on"
    )]
    SecureBootOff,
}

impl AttestError {
    /// A short label for metrics and the event log.
    pub fn outcome(&self) -> &'static str {
        match self {
            AttestError::Malformed(_) => "malformed",
            AttestError::Unsupported(_) => "unsupported",
            AttestError::BadKey(_) => "bad-key",
            AttestError::BadSignature(_) => "bad-signature",
            AttestError::Crypto(_) => "error",
            AttestError::EkCertificate(_) => "ek-certificate",
            AttestError::StaleNonce => "stale-nonce",
            AttestError::LogMismatch => "log-mismatch",
            AttestError::PcrMismatch { .. } | AttestError::BootPathMismatch { .. } => {
                "pcr-mismatch"
            }
            AttestError::SecureBootOff => "secure-boot-off",
        }
    }
}
