//! What every section check shares: the [`Checker`] (the problems found so far, where a key sits in the
//! text, and the typed parsers that report what they cannot read), key paths ([`Seg`] and the `p!` macro), the
//! [`Known`] values later sections check against, and the small helpers more than one section uses.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::Ipv4Net;

use crate::config::error::{Problem, line_col};
use crate::config::model::{Pool, RelaySubnet, Version};

/// A step in a key path: `machines` / `[2]` / `mac`.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(String),
    Index(usize),
}

fn key_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Builds key paths concisely: `p!["machines", 2usize, "mac"]`.
macro_rules! p {
    ($($seg:expr),* $(,)?) => { [$(Seg::from($seg)),*] };
}
pub(super) use p;

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Collects problems and locates keys in the source text.
pub struct Checker<'a> {
    pub(super) file: PathBuf,
    src: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
    pub problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &Path, src: &'a str) -> Self {
        Checker {
            file: file.to_path_buf(),
            src,
            doc: toml_edit::Document::parse(src).ok(),
            problems: Vec::new(),
        }
    }

    /// Byte span of the value at `path` (or of the key, or of the nearest existing parent).
    fn locate(&self, path: &[Seg]) -> Option<std::ops::Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        let mut best = None;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => {
                    if let Some(t) = item.as_table_like() {
                        if let Some((key, it)) = t.get_key_value(k) {
                            best = key.span().or(best);
                            Some(it)
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
                Seg::Index(i) => item.get(*i),
            };
            match next {
                Some(it) => {
                    item = it;
                    if let Some(sp) = it.span().or_else(|| it.as_value().and_then(|v| v.span())) {
                        best = Some(sp);
                    }
                }
                None => break,
            }
        }
        best
    }

    pub fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let (line, column) = match self.locate(path) {
            Some(sp) => {
                let (l, c) = line_col(self.src, sp.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            key: key_string(path),
            message: message.into(),
        });
    }

    pub(super) fn parse<T: FromStr>(&mut self, path: &[Seg], text: &str, what: &str) -> Option<T> {
        match text.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(path, format!("{text:?} is not {what}"));
                None
            }
        }
    }

    pub(super) fn ip(&mut self, path: &[Seg], text: &str) -> Option<Ipv4Addr> {
        self.parse(path, text, "an IPv4 address such as 10.77.0.11")
    }

    pub(super) fn cidr(&mut self, path: &[Seg], text: &str) -> Option<Ipv4Net> {
        let net: Ipv4Net = self.parse(
            path,
            text,
            "an IPv4 network in CIDR form such as 10.244.0.0/16",
        )?;
        if net.trunc() != net {
            self.error(
                path,
                format!("{text:?} has host bits set; did you mean {}?", net.trunc()),
            );
            return None;
        }
        Some(net)
    }

    /// The value whose name `text` is, out of `valid` (name, value) pairs.
    pub(super) fn one_of<T: Copy>(
        &mut self,
        path: &[Seg],
        text: &str,
        valid: &[(&str, T)],
    ) -> Option<T> {
        if let Some((_, v)) = valid.iter().find(|(name, _)| *name == text) {
            Some(*v)
        } else {
            let names: Vec<&str> = valid.iter().map(|(name, _)| *name).collect();
            self.error(
                path,
                format!(
                    "{text:?} is not valid; expected one of: {}",
                    names.join(", ")
                ),
            );
            None
        }
    }

    pub(super) fn port(&mut self, path: &[Seg], n: i64) -> Option<u16> {
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(path, format!("{n} is not a port; expected 1 to 65535"));
                None
            }
        }
    }

    pub(super) fn asn(&mut self, path: &[Seg], n: i64) -> Option<u32> {
        // 0 and 4294967295 are reserved (RFC 7607, RFC 7300).
        if (1..=4_294_967_294).contains(&n) {
            Some(n as u32)
        } else {
            self.error(
                path,
                format!("AS number {n} is out of range; expected 1 to 4294967294 (private: 64512-65534 or 4200000000-4294967294)"),
            );
            None
        }
    }
}

pub(super) fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(super) fn check_url(c: &mut Checker, path: &[Seg], url: &str) {
    if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file:///")) {
        c.error(
            path,
            format!("{url:?} is not a source imgbuild can fetch; expected an https://, http:// or file:/// URL"),
        );
    }
}

/// What a section's checks take from the sections checked before it; each is `None` where that value was
/// invalid (and already reported), so checks that need it are skipped.
#[derive(Default)]
pub(super) struct Known {
    pub(super) kubernetes_version: Option<Version>,
    pub(super) pod_cidr: Option<Ipv4Net>,
    pub(super) service_cidr: Option<Ipv4Net>,
    pub(super) subnet: Option<Ipv4Net>,
    pub(super) gateway: Option<Ipv4Addr>,
    pub(super) server: Option<Ipv4Addr>,
    pub(super) unknown_pool: Option<Pool>,
    pub(super) relay_subnets: Vec<RelaySubnet>,
    pub(super) vip: Option<Ipv4Addr>,
}
