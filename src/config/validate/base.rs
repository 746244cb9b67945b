//! `[base]`: the Debian release, mirror, optional snapshot and extra packages of the base image.

use super::checker::{Checker, Seg, check_url, p};
use crate::config::model::Base;
use crate::config::raw;

/// Checks `[base]`.
pub(super) fn check(c: &mut Checker, b: &raw::BaseRaw) -> Base {
    if !["bookworm", "trixie"].contains(&b.release.as_str()) {
        c.error(
            &p!["base", "release"],
            format!(
                "{:?} is not a Debian release imgbuild builds; expected bookworm or trixie",
                b.release
            ),
        );
    }
    check_url(c, &p!["base", "mirror"], &b.mirror);
    if let Some(s) = &b.snapshot {
        let ok = s.len() == 16
            && s.as_bytes()[8] == b'T'
            && s.ends_with('Z')
            && s[..8].bytes().all(|x| x.is_ascii_digit())
            && s[9..15].bytes().all(|x| x.is_ascii_digit());
        if !ok {
            c.error(&p!["base", "snapshot"], format!("{s:?} is not a snapshot.debian.org timestamp; expected the form 20261101T000000Z"));
        }
    }
    for (i, pkg) in b.packages.iter().enumerate() {
        if pkg.is_empty()
            || !pkg
                .bytes()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"+-.".contains(&x))
        {
            c.error(
                &p!["base", "packages", i],
                format!("{pkg:?} is not a Debian package name"),
            );
        }
    }
    Base {
        release: b.release.clone(),
        mirror: b.mirror.clone(),
        snapshot: b.snapshot.clone(),
        packages: b.packages.clone(),
    }
}
