//! The image build's progress: one spinner line per stage on a terminal (`indicatif`), or one log line per stage
//! when stderr is not shown (the lab passes our log on), and the stages' times for the build report.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One stage of a build.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// The stage's name as shown on the progress line: `base`, `unpack`, `initrd`, `artifacts`, `role`,
    /// `squashfs`, `cleanup`, `store`.
    pub name: &'static str,
    /// Wall-clock time the stage took, in seconds.
    pub seconds: f64,
    /// Taken from a cache.
    pub cached: bool,
    /// What the stage produced, shown after its name (e.g. `kernel <version>`, a size, the id's first 16 hex
    /// digits).
    pub detail: String,
}

/// The build's progress: a spinner line per stage on a terminal, else one log line per stage; the stages
/// with their times for the report.
pub(super) struct Progress {
    multi: MultiProgress,
    /// The stages done so far.
    pub(super) stages: Vec<Stage>,
}

impl Progress {
    /// Progress shown on stderr when `show`, else as log lines.
    pub(super) fn new(show: bool) -> Progress {
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            stages: Vec::new(),
        }
    }

    /// Runs stage `name` (`what` it does): `f` gives the value, whether it came from a cache, and the detail.
    pub(super) fn run_stage<T, E>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce() -> Result<(T, bool, String), E>,
    ) -> Result<T, E> {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<10} {msg} {elapsed}")
                .expect("static template"),
        );
        pb.set_prefix(name);
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        // No spinner (not a terminal, or --json): one log line per stage instead, so a caller that passes our
        // stderr on (the lab) shows the build's progress.
        let lines = self.multi.is_hidden();
        if lines {
            tracing::info!(stage = name, "build: {what}");
        }
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        if lines && r.is_ok() {
            tracing::info!(stage = name, seconds = secs, "build: {name} done");
        }
        match r {
            Ok((v, cached, detail)) => {
                pb.set_style(
                    ProgressStyle::with_template("✓ {prefix:<10} {msg}").expect("static template"),
                );
                pb.finish_with_message(format!(
                    "{detail}{} {secs:.1} s",
                    if cached { " (cached)" } else { "" }
                ));
                self.stages.push(Stage {
                    name,
                    seconds: secs,
                    cached,
                    detail,
                });
                Ok(v)
            }
            Err(e) => {
                pb.set_style(
                    ProgressStyle::with_template("✗ {prefix:<10} {msg}").expect("static template"),
                );
                pb.finish_with_message("failed");
                Err(e)
            }
        }
    }
}
