//! Redaction of secrets from reported text, before an event detail is stored, logged, shown or served.
//!
//! A node's failure report carries the tail of a step log, which may hold what a command printed or was given:
//! a bootstrap token, a PEM key, a `--certificate-key`. [`redact`] replaces, in this order:
//! 1. PEM blocks: `-----BEGIN …-----` up to the matching `-----END …-----` (or to the end of the text when the
//!    report was cut before it) → `[redacted-PEM]`;
//! 2. the value of a secret-bearing argument or assignment: `--token X`, `--token=X`, `--certificate-key X`,
//!    `--discovery-token-ca-cert-hash X`, `password=X`, `"publish_key":"X"` — any flag or key whose name
//!    contains one of [`SECRET_NAMES`] → `[redacted]`;
//! 3. anything token-shaped, `[a-z0-9]{6}\.[a-z0-9]{16}` (either case, anywhere) → `[redacted-token]`.
//!
//! It is pure, idempotent (`redact(redact(x)) == redact(x)`) and never lets a matched secret through: the fuzz
//! target `event_log` checks both on arbitrary input.

use std::borrow::Cow;

/// Parts of a flag or key name that mark its value as secret (matched case-insensitively anywhere in the name).
pub const SECRET_NAMES: &[&str] = &[
    "token",
    "key",
    "password",
    "passwd",
    "secret",
    "hash",
    "publish",
    "credential",
];

/// What a redacted PEM block becomes.
pub const PEM_MARK: &str = "[redacted-PEM]";
/// What a redacted argument value becomes.
pub const VALUE_MARK: &str = "[redacted]";
/// What a redacted token becomes.
pub const TOKEN_MARK: &str = "[redacted-token]";

/// `text` with PEM blocks, secret argument values and token-shaped strings replaced (borrowed when none).
pub fn redact(text: &str) -> Cow<'_, str> {
    if !might_hold_secret(text) {
        return Cow::Borrowed(text);
    }
    let a = pem_blocks(text);
    let b = arguments(&a);
    let c = tokens(&b);
    if c == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(c)
    }
}

/// A cheap pre-check: text without a `-----`, a flag, an assignment or a dot between alphanumerics needs no work.
fn might_hold_secret(text: &str) -> bool {
    text.contains("-----") || text.contains('-') || text.contains('=') || text.contains(':') || {
        let b = text.as_bytes();
        b.iter().enumerate().any(|(i, &c)| {
            c == b'.'
                && i > 0
                && i + 1 < b.len()
                && b[i - 1].is_ascii_alphanumeric()
                && b[i + 1].is_ascii_alphanumeric()
        })
    }
}

fn pem_blocks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN") {
        out.push_str(&rest[..start]);
        out.push_str(PEM_MARK);
        let after = &rest[start + "-----BEGIN".len()..];
        rest = match after.find("-----END") {
            Some(e) => {
                let tail = &after[e + "-----END".len()..];
                // The END line's label, closed by five dashes on the same line; else up to the line's end.
                let line_end = tail.find('\n').unwrap_or(tail.len());
                match tail[..line_end].find("-----") {
                    Some(close) => &tail[close + 5..],
                    None => &tail[line_end..],
                }
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

fn secret_name(name: &str) -> bool {
    // A marker left by an earlier pass is not part of a name (else `--x[redacted-token]` would turn secret on a
    // second pass, and `to<token>ken` would join into `token`): it counts as a separator.
    let n = name
        .to_ascii_lowercase()
        .replace("[redacted-token]", " ")
        .replace("[redacted-pem]", " ")
        .replace("[redacted]", " ");
    SECRET_NAMES.iter().any(|s| n.contains(s))
}

/// Replaces the values of secret-bearing flags (`--name value`, `--name=value`, `-name value`) and assignments
/// (`name=value`, `name: value`, `"name":"value"`). Whitespace is kept as it was.
fn arguments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut redact_next = false;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            let ws_end = i + text[i..]
                .find(|c: char| !c.is_ascii_whitespace())
                .unwrap_or(text.len() - i);
            out.push_str(&text[i..ws_end]);
            i = ws_end;
            continue;
        }
        let end = i + text[i..]
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(text.len() - i);
        let word = &text[i..end];
        i = end;
        if redact_next && !word.starts_with('-') {
            redact_next = false;
            // A value already redacted (a PEM block, a token) stays as it is.
            out.push_str(if word.starts_with("[redacted") {
                word
            } else {
                VALUE_MARK
            });
            continue;
        }
        redact_next = false;
        let flag = word.trim_start_matches('-');
        if word.starts_with('-') && !flag.is_empty() && !flag.contains(['=', ':']) {
            out.push_str(word);
            redact_next = secret_name(flag);
            continue;
        }
        out.push_str(&assignments(word, &mut redact_next));
    }
    out
}

/// Inside one word: `name=value`, `name:value`, `"name":"value",…` pairs whose name is secret get their value
/// replaced; a name ending in a secret word with nothing after its separator (`password: x`) redacts the next
/// word.
fn assignments(word: &str, redact_next: &mut bool) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(pos) = rest.find(['=', ':']) {
        let name = rest[..pos]
            .trim_end_matches('"')
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .next()
            .unwrap_or("");
        out.push_str(&rest[..=pos]);
        let value = &rest[pos + 1..];
        rest = value;
        if !secret_name(name) {
            continue;
        }
        if value.is_empty() {
            let n = name.to_ascii_lowercase();
            *redact_next = SECRET_NAMES.iter().any(|s| n.ends_with(s));
            return out;
        }
        // The value runs to its closing quote, or to the next `,`, `;`, `&`, `}` or quote.
        let (quote, body) = match value.strip_prefix('"') {
            Some(b) => ("\"", b),
            None => ("", value),
        };
        let stop = if quote.is_empty() {
            body.find([',', ';', '&', '}', '"'])
        } else {
            body.find('"')
        }
        .unwrap_or(body.len());
        out.push_str(quote);
        out.push_str(VALUE_MARK);
        rest = &body[stop..];
    }
    out.push_str(rest);
    out
}

fn is_tok(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// Replaces every `[a-z0-9]{6}\.[a-z0-9]{16}` (ASCII letters of either case). (The log cuts details only
/// after redaction, so a token is never cut short before it is seen.)
fn tokens(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        // `i - 6 >= copied`: a token never starts inside the one just replaced (fuzz finding: overlapping
        // candidates such as `sssssk.ksssss…` made the copy range run backwards and panic).
        if b[i] == b'.' && i >= 6 + copied && b[i - 6..i].iter().all(|&c| is_tok(c)) {
            let after = b[i + 1..]
                .iter()
                .take(16)
                .take_while(|&&c| is_tok(c))
                .count();
            if after == 16 {
                out.push_str(&text[copied..i - 6]);
                out.push_str(TOKEN_MARK);
                i += 1 + after;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn r(s: &str) -> String {
        redact(s).into_owned()
    }

    #[test]
    fn tokens_anywhere_are_redacted() {
        assert_eq!(r(TOKEN), TOKEN_MARK);
        assert_eq!(
            r(&format!("token-renew --publish {TOKEN} failed: clock skew")),
            "token-renew --publish [redacted] failed: clock skew"
        );
        assert_eq!(
            r(&format!("join with {TOKEN}.")),
            format!("join with {TOKEN_MARK}.")
        );
        assert_eq!(r(&format!("x{TOKEN}y")), format!("x{TOKEN_MARK}y"));
        assert_eq!(r("ABCDEF.0123456789ABCDEF"), TOKEN_MARK);
        // Not token-shaped: kept.
        assert_eq!(r("kubelet.service started"), "kubelet.service started");
        assert_eq!(r("version 1.37.2"), "version 1.37.2");
    }

    #[test]
    fn pem_blocks_are_redacted_also_when_cut() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            r(&format!("ca.key:\n{pem}\ndone")),
            format!("ca.key:\n{PEM_MARK}\ndone")
        );
        assert_eq!(
            r("x -----BEGIN CERTIFICATE-----\nMIIB"),
            format!("x {PEM_MARK}")
        );
        assert_eq!(r(&format!("{pem}{pem}")), format!("{PEM_MARK}{PEM_MARK}"));
    }

    #[test]
    fn secret_arguments_and_assignments_are_redacted() {
        let line = "kubeadm join 10.77.0.10:6443 --token abcdef.0123456789abcdef \
                    --discovery-token-ca-cert-hash sha256:0a1b2c --control-plane --certificate-key 0f0f0f0f";
        let out = r(line);
        assert_eq!(
            out,
            "kubeadm join 10.77.0.10:6443 --token [redacted] --discovery-token-ca-cert-hash [redacted] \
             --control-plane --certificate-key [redacted]"
        );
        assert_eq!(r("--token=abc --x=1"), "--token=[redacted] --x=1");
        assert_eq!(r("password=hunter2&user=x"), "password=[redacted]&user=x");
        assert_eq!(r("password: hunter2 next"), "password: [redacted] next");
        assert_eq!(
            r(r#"{"publish_key":"f00d","init":true}"#),
            r#"{"publish_key":"[redacted]","init":true}"#
        );
        // An image id and ordinary details are left alone.
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            r(&format!("image={id} /images/{id}/vmlinuz")),
            format!("image={id} /images/{id}/vmlinuz")
        );
        assert_eq!(
            r("ip=10.77.0.21 boot=undionly.kpxe"),
            "ip=10.77.0.21 boot=undionly.kpxe"
        );
        assert_eq!(r("--control-plane --v=5"), "--control-plane --v=5");
    }

    #[test]
    fn fuzz_findings_stay_fixed() {
        // node_forms: overlapping token candidates panicked (copy range backwards).
        let s = "\u{fffd},ss\u{fffd},sssssk.ksssssjssssssssssk.ksssssjsssssssss";
        let once = r(s);
        assert_eq!(r(&once), once);
        // event_log: a marker inside a flag name made the second pass redact the next word.
        let s = "\u{c}-pasVVVVVVassword.TVword.TVVVVVVVVVVVVVasswo\u{fffd}d. \u{fffd}";
        let once = r(s);
        assert_eq!(r(&once), once, "{once:?}");
        assert_eq!(
            r(&r("toabcdef.0123456789abcdefken x")),
            r("toabcdef.0123456789abcdefken x")
        );
    }

    #[test]
    fn redaction_is_idempotent() {
        for s in [
            "--token abc --token= x",
            "password=",
            "a:b=c:token=d",
            "\"key\":\"",
            "-----BEGIN-----END",
            "--key --key --key v",
        ] {
            let once = r(s);
            assert_eq!(r(&once), once, "{s:?}");
        }
    }
}
