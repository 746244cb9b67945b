//! kubeadm bootstrap tokens: `[a-z0-9]{6}.[a-z0-9]{16}` (token id `.` token secret).

use rand::Rng;
use serde::{Deserialize, Serialize};

/// kubeadm's default token lifetime.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token and when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapToken {
    /// `abcdef.0123456789abcdef`.
    pub token: String,
    /// Seconds since the Unix epoch after which the API server rejects it.
    pub expires_unix: u64,
    /// Who set it: `secrets init`, or `published by <host>` after a renewal.
    #[serde(default)]
    pub source: String,
    /// When it was published (seconds since the epoch); a publish must be newer than the last one.
    #[serde(default)]
    pub published_unix: u64,
}

fn random_part(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A fresh random token text.
pub fn generate() -> String {
    format!("{}.{}", random_part(6), random_part(16))
}

/// Whether `s` has kubeadm's bootstrap token format.
pub fn is_valid(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match s.split_once('.') {
        Some((id, secret)) => ok(id, 6) && ok(secret, 16),
        None => false,
    }
}

/// Whether `s` has the format of a kubeadm CA certificate hash: `sha256:` + 64 lower-case hex digits.
pub fn is_valid_ca_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_kubeadm_format() {
        for _ in 0..200 {
            let t = generate();
            assert!(is_valid(&t), "{t}");
            assert_eq!(t.len(), 23);
        }
        assert_ne!(generate(), generate());
    }

    #[test]
    fn format_check_rejects_near_misses() {
        assert!(is_valid("abcdef.0123456789abcdef"));
        for bad in [
            "",
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdefg",
            "abc-ef.0123456789abcdef",
            "abcdef.0123456789abcdef.",
            "abcdef:0123456789abcdef",
        ] {
            assert!(!is_valid(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn ca_hash_format() {
        assert!(is_valid_ca_hash(&format!("sha256:{}", "a1".repeat(32))));
        assert!(!is_valid_ca_hash(&format!("sha256:{}", "A1".repeat(32))));
        assert!(!is_valid_ca_hash(&format!("sha1:{}", "a1".repeat(32))));
        assert!(!is_valid_ca_hash(&format!("sha256:{}", "a1".repeat(31))));
    }
}
