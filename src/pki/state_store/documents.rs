//! The documents of the shared state, typed: the enrollment state, the bootstrap token and the pins, read and
//! changed through whichever [`StateBackend`] the server runs on. With the directory backend these are the
//! very files (and locks) a single server has always used.

use std::path::{Path, PathBuf};

use super::backend::{Key, StateBackend, StateError, parse_json, to_json};
use crate::image::pins::Pins;
use crate::pki::PkiError;
use crate::pki::enroll::EnrollState;
use crate::pki::secrets;
use crate::pki::token::BootstrapToken;

/// The enrollment state (absent: the empty state).
pub fn enrollment(b: &dyn StateBackend) -> Result<EnrollState, PkiError> {
    match b.get(Key::Enrollment)? {
        Some(bytes) => Ok(parse_json(b, Key::Enrollment, &bytes)?),
        None => Ok(EnrollState::default()),
    }
}

/// Runs `f` on the enrollment state atomically with respect to every other writer (a `flock` with the
/// directory backend; an etcd transaction, retried while other replicas write, with etcd — so `f` may run more
/// than once and must not have side effects). `f` returns its result and whether the state is to be written.
pub fn update_enrollment<T>(
    b: &dyn StateBackend,
    mut f: impl FnMut(&mut EnrollState) -> (T, bool),
) -> Result<T, PkiError> {
    let mut out = None;
    b.update(Key::Enrollment, &mut |cur| {
        let mut st = match cur {
            Some(bytes) => parse_json(b, Key::Enrollment, bytes)?,
            None => EnrollState::default(),
        };
        let (t, write) = f(&mut st);
        out = Some(t);
        Ok(write.then(|| to_json(&st)))
    })?;
    Ok(out.expect("the update ran"))
}

/// The bootstrap token nodes receive now: the shared one, or (never published through this backend) the one in
/// the secrets directory that `imgbuild secrets init` made.
pub fn token(b: &dyn StateBackend, secrets_dir: &Path) -> Result<BootstrapToken, PkiError> {
    if !b.replicated() {
        return secrets::load_token(secrets_dir);
    }
    match b.get(Key::Token)? {
        Some(bytes) => Ok(parse_json(b, Key::Token, &bytes)?),
        None => secrets::load_token(secrets_dir),
    }
}

/// Replaces the token if `check` accepts the new one given the token in force; serialized with enrollments
/// (the directory backend takes the enrollment lock). Returns `check`'s verdict.
pub fn publish_token<R>(
    b: &dyn StateBackend,
    secrets_dir: &Path,
    new: &BootstrapToken,
    mut check: impl FnMut(Option<&BootstrapToken>) -> Result<(), R>,
) -> Result<Result<(), R>, PkiError> {
    let mut verdict = None;
    b.update(Key::Token, &mut |cur| {
        let before: Option<BootstrapToken> = match cur {
            Some(bytes) => Some(parse_json(b, Key::Token, bytes)?),
            None => secrets::load_token(secrets_dir).ok(),
        };
        let v = check(before.as_ref());
        let write = v.is_ok();
        verdict = Some(v);
        Ok(write.then(|| to_json(new)))
    })?;
    Ok(verdict.expect("the update ran"))
}

/// Where the pins live, for messages: the file, or `etcd:<prefix>pins`.
pub fn pins_origin(b: &dyn StateBackend, state_dir: &Path) -> PathBuf {
    if b.replicated() {
        PathBuf::from(format!("{}:{}", b.kind(), Key::Pins.name()))
    } else {
        state_dir.join(crate::image::pins::PINS_FILE)
    }
}

/// The pins (absent: nothing pinned yet).
pub fn pins(b: &dyn StateBackend, state_dir: &Path) -> Result<Pins, PkiError> {
    match b.get(Key::Pins)? {
        Some(bytes) => parse_pins(b, state_dir, &bytes),
        None => Ok(Pins::default()),
    }
}

fn parse_pins(b: &dyn StateBackend, state_dir: &Path, bytes: &[u8]) -> Result<Pins, PkiError> {
    let origin = pins_origin(b, state_dir);
    Pins::parse(&String::from_utf8_lossy(bytes), &origin).map_err(|e| PkiError::Invalid {
        path: origin.display().to_string(),
        message: e.to_string(),
    })
}

/// Changes the pins atomically; `f` returns its result and whether to write the pins.
pub fn update_pins<T>(
    b: &dyn StateBackend,
    state_dir: &Path,
    mut f: impl FnMut(&mut Pins) -> (T, bool),
) -> Result<T, PkiError> {
    let mut out = None;
    b.update(Key::Pins, &mut |cur| {
        let mut p = match cur {
            Some(bytes) => parse_pins(b, state_dir, bytes).map_err(|e| StateError::Invalid {
                key: Key::Pins.name().into(),
                message: e.to_string(),
            })?,
            None => Pins::default(),
        };
        let (t, write) = f(&mut p);
        out = Some(t);
        Ok(write.then(|| p.to_text().into_bytes()))
    })?;
    Ok(out.expect("the update ran"))
}
