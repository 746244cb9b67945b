//! Fuzzing of the event-log loader and the redaction (compiled for tests and with the `fuzzing` feature only;
//! not part of the library's API). Used by the stable in-suite fuzz tests below and the cargo-fuzz target
//! `event_log` in `fuzz/`.
//!
//! - [`run_parse`]: arbitrary bytes as one log file through [`journal::parse`] and the bounded history: every
//!   line is accounted for (event, blank, moved aside or torn), every event round-trips through its line, every
//!   loaded detail is redacted (a fixed point of [`redact`], no token or PEM left), per-node boots stay bounded.
//! - [`run_files`]: the bytes split into a live and two rotated files on disk, opened by [`Events::open`] (which
//!   repairs them), appended to and reopened: after the first open every file parses cleanly (nothing left to
//!   move aside, no torn line), the events loaded are the good lines in order, and a reopen loads the same.
//! - [`run_redact`]: arbitrary text through [`redact`]: idempotent, and nothing token- or PEM-shaped survives.

use std::path::Path;

use super::event::{Event, Source};
use super::history::History;
use super::journal;
use super::log::Events;
use super::redact::redact;
use crate::config::{EventLimits, MacAddr};

/// Whether `s` holds a `[a-zA-Z0-9]{6}\.[a-zA-Z0-9]{16}` run.
pub fn has_token(s: &str) -> bool {
    let b = s.as_bytes();
    (6..b.len()).any(|i| {
        b[i] == b'.'
            && b[i - 6..i].iter().all(u8::is_ascii_alphanumeric)
            && b.len() > i + 16
            && b[i + 1..=i + 16].iter().all(u8::is_ascii_alphanumeric)
    })
}

/// Redaction invariants on arbitrary text.
pub fn run_redact(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let once = redact(&s).into_owned();
    assert_eq!(
        redact(&once),
        once.as_str(),
        "redaction is idempotent: {s:?}"
    );
    assert!(!has_token(&once), "a token survived: {s:?} -> {once:?}");
    assert!(!once.contains("-----BEGIN"), "a PEM block survived: {s:?}");
}

/// Loader invariants on one file's bytes, without I/O.
pub fn run_parse(data: &[u8]) {
    let p = journal::parse(data);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let complete = data.last() == Some(&b'\n') || data.is_empty();
    let real = lines.len() - usize::from(complete);
    let blank = lines[..real]
        .iter()
        .filter(|l| l.iter().all(u8::is_ascii_whitespace))
        .count();
    assert_eq!(
        p.events.len() + p.bad.len() + usize::from(p.torn) + blank,
        real,
        "every line is accounted for"
    );
    assert!(
        !p.torn || !complete,
        "only an unterminated last line is torn"
    );
    for ev in &p.events {
        let line = journal::line(ev);
        let back = journal::parse(&line);
        assert_eq!(
            back.events.as_slice(),
            std::slice::from_ref(ev),
            "an event round-trips"
        );
        assert_eq!(
            redact(&ev.detail),
            ev.detail.as_str(),
            "loaded details are redacted"
        );
        assert!(!has_token(&ev.detail));
    }
    let n = 1 + u32::from(data.first().copied().unwrap_or(0) % 4);
    let mut h = History::new(n);
    for ev in &p.events {
        h.push(ev.clone(), 0);
    }
    let kept: Vec<Event> = h.events().cloned().collect();
    for node in super::node::compute(&kept, &[], usize::MAX) {
        // The kept boots, plus one for a first init-done kept from an older boot.
        assert!(node.boot <= n + 1, "{} boots kept, bound {n}", node.boot);
    }
}

/// Loader invariants on real files in `dir` (emptied first): split `data` into three files, open, append,
/// reopen.
pub fn run_files(data: &[u8], dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let path = dir.join("events.jsonl");
    let (a, b) = (
        usize::from(data.first().copied().unwrap_or(0)),
        usize::from(data.get(1).copied().unwrap_or(0)),
    );
    let body = data.get(2..).unwrap_or(&[]);
    let a = (a * body.len() / 256).min(body.len());
    let b = (a + b * (body.len() - a) / 256).min(body.len());
    let parts = [&body[..a], &body[a..b], &body[b..]];
    for (k, part) in [2u32, 1, 0].into_iter().zip(parts) {
        if !part.is_empty() {
            std::fs::write(journal::rotated(&path, k), part).expect("write a fuzz file");
        }
    }
    let expected: Vec<Event> = parts
        .iter()
        .flat_map(|p| journal::parse(p).events)
        .collect();
    let limits = EventLimits {
        file_bytes: 4096,
        files: 3,
        boots_per_node: 1000,
        ..Default::default()
    };
    let events = Events::open(&path, &limits).expect("the loader repairs what it reads");
    let loaded = events.snapshot();
    // Sticky copies seen before are skipped: the loaded events are the good lines, in order, minus those.
    let mut it = expected.iter();
    for ev in &loaded {
        assert!(
            it.any(|e| e == ev),
            "a loaded event that was not a good line: {ev:?}"
        );
    }
    for k in 0..3 {
        if let Ok(bytes) = std::fs::read(journal::rotated(&path, k)) {
            let p = journal::parse(&bytes);
            assert!(
                p.bad.is_empty() && !p.torn && p.redacted == 0,
                "file {k} repaired"
            );
            assert!(
                bytes.last().is_none_or(|&b| b == b'\n'),
                "file {k} ends a line"
            );
        }
    }
    let mac: MacAddr = "52:54:00:77:00:21".parse().expect("a MAC");
    events.record(mac, "kernel", "after load", Source::Server);
    drop(events);
    let again = Events::open(&path, &limits).expect("reopen");
    let reloaded = again.snapshot();
    assert_eq!(
        reloaded.last().map(|e| e.detail.as_str()),
        Some("after load")
    );
    assert!(reloaded.len() <= loaded.len() + 1);
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn corpus() -> Vec<Vec<u8>> {
        let mac = "52:54:00:77:00:21";
        let ok = |stage: &str, detail: &str, src: &str| {
            format!(
                "{{\"at_ms\":5,\"mac\":\"{mac}\",\"stage\":\"{stage}\",\"detail\":\"{detail}\",\"source\":\"{src}\"}}\n"
            )
            .into_bytes()
        };
        vec![
            ok("dhcp-offer", "", "server"),
            ok("kernel", "/images/0123456789abcdef/vmlinuz", "server"),
            ok("init-done", "--token abcdef.0123456789abcdef", "node"),
            ok(
                "failed",
                "-----BEGIN KEY-----\\nAAAA\\n-----END KEY-----",
                "node",
            ),
            b"{\"at_ms\":1,\"mac\":\"zz\"}\n".to_vec(),
            b"\n\n{\n".to_vec(),
        ]
    }

    fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.random_range(1..12) {
            let mut l = corpus[rng.random_range(0..corpus.len())].clone();
            match rng.random_range(0..6) {
                0 if !l.is_empty() => {
                    let i = rng.random_range(0..l.len());
                    l[i] = rng.random();
                }
                1 if !l.is_empty() => l.truncate(rng.random_range(0..l.len())),
                2 => l.extend((0..rng.random_range(0..40)).map(|_| rng.random::<u8>())),
                _ => {}
            }
            out.extend(l);
        }
        out
    }

    /// 5,000 mutated logs in the suite; a long run sets `IMGBUILD_FUZZ_RUNS` (logs; `IMGBUILD_FUZZ_SECONDS` caps
    /// the time) and reads the count it reached on stderr (docs/tftp-http.md).
    #[test]
    fn fuzz_event_log_parser_and_redaction_with_mutated_logs() {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let runs = env("IMGBUILD_FUZZ_RUNS").unwrap_or(5_000);
        let limit = env("IMGBUILD_FUZZ_SECONDS").map(std::time::Duration::from_secs);
        let mut rng = StdRng::seed_from_u64(0xe7e7_1095);
        let corpus = corpus();
        let t0 = std::time::Instant::now();
        let mut done = 0u64;
        while done < runs && limit.is_none_or(|l| t0.elapsed() < l) {
            let data = mutate(&mut rng, &corpus);
            run_parse(&data);
            run_redact(&data);
            done += 1;
            if done.is_multiple_of(100_000) {
                eprintln!("{done} logs in {:?}", t0.elapsed());
            }
        }
        eprintln!(
            "{done} logs (of {runs}) in {:?}, no failed invariant",
            t0.elapsed()
        );
        for _ in 0..5_000 {
            let data: Vec<u8> = (0..rng.random_range(0..200))
                .map(|_| {
                    *b"abcdef0123456789.-=: \"BEGIN-----END\n"
                        .get(rng.random_range(0..36))
                        .unwrap_or(&b'x')
                })
                .collect();
            run_redact(&data);
        }
    }

    #[test]
    fn fuzz_event_log_files_are_repaired_and_reload_the_same() {
        let mut rng = StdRng::seed_from_u64(0x000f_11e5);
        let corpus = corpus();
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..60 {
            let mut data = vec![rng.random(), rng.random()];
            data.extend(mutate(&mut rng, &corpus));
            run_files(&data, dir.path());
        }
    }
}
