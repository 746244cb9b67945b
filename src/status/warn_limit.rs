//! Rate-limited warnings: a host that sends garbage in a loop must not fill the server's log. Each kind of
//! warning is logged at most `per_minute` times a minute; the rest are counted (`/metrics`:
//! `imgbuild_warn_logs_suppressed_total`) and the next warning logged says how many were suppressed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Counts warnings per kind in one-minute windows.
#[derive(Debug)]
pub struct WarnLimit {
    per_minute: u32,
    kinds: Mutex<HashMap<&'static str, Window>>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl WarnLimit {
    /// At most `per_minute` warnings of each kind a minute (at least 1).
    pub fn new(per_minute: u32) -> Self {
        WarnLimit {
            per_minute: per_minute.max(1),
            kinds: Mutex::new(HashMap::new()),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a warning of `kind` may be logged now: `Some(n)` with the number suppressed since the last one
    /// logged (log it, and say `n` when it is not 0), `None` when it must only be counted.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let w = kinds.entry(kind).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < self.per_minute {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Warnings suppressed since start, all kinds.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// The configured warnings per kind and minute.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_limited_per_minute_and_reports_what_it_dropped() {
        let l = WarnLimit::new(3);
        let t0 = Instant::now();
        let got: Vec<_> = (0..5).map(|_| l.allow_at("a", t0)).collect();
        assert_eq!(got, vec![Some(0), Some(0), Some(0), None, None]);
        assert_eq!(l.allow_at("b", t0), Some(0), "kinds are separate");
        assert_eq!(l.suppressed(), 2);
        assert_eq!(l.allow_at("a", t0 + WINDOW), Some(2));
    }
}
