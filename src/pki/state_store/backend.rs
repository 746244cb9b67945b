//! What both backends share: the documents ([`Key`]), the [`StateBackend`] interface and its errors.

use std::sync::Arc;

/// One document of the shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// The enrollment state (`pki::enroll::EnrollState`, JSON).
    Enrollment,
    /// The bootstrap token nodes receive (`pki::token::BootstrapToken`, JSON): the one `imgbuild secrets init`
    /// made, or the one the first master last published.
    Token,
    /// The init-done barrier (`pki::report_state::Barrier`, JSON), written once.
    Barrier,
    /// The last accepted report counter of each enrolled node (JSON).
    ReportCounters,
    /// Which image each role boots (`image::pins::Pins`, TOML).
    Pins,
}

impl Key {
    /// The key's name under the etcd prefix (and in messages).
    pub fn name(self) -> &'static str {
        match self {
            Key::Enrollment => "enrollment",
            Key::Token => "token",
            Key::Barrier => "barrier",
            Key::ReportCounters => "report-counters",
            Key::Pins => "pins",
        }
    }
}

/// A shared-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file of the directory backend could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The etcd cluster did not answer or refused the request.
    #[error(
        "etcd ({endpoints}): {what}: {message}; check that a majority of the members in [state] endpoints is up, \
         that [state] ca signed their certificates (with https://) and that this server's client certificate \
         ([state] cert and key) is accepted (etcdctl --cacert --cert --key endpoint health)"
    )]
    Etcd {
        /// `[state] endpoints`, joined.
        endpoints: String,
        /// The operation (`get enrollment`, `update pins`, …).
        what: String,
        /// etcd's or the transport's error.
        message: String,
    },
    /// A stored document cannot be parsed.
    #[error("{key}: {message}")]
    Invalid {
        /// Where the document lives (a file, or an etcd key).
        key: String,
        /// What is wrong with it and what to do.
        message: String,
    },
    /// A read-modify-write lost the race against other writers too many times in a row.
    #[error(
        "{key}: changed by other replicas {tries} times in a row while this one tried to update it; retry"
    )]
    Contended {
        /// The key.
        key: String,
        /// How many times the update was tried.
        tries: u32,
    },
}

/// What an update closure returns: `Some(bytes)` to write them, `None` to leave the document as it is.
pub type Write = Option<Vec<u8>>;

/// A read-modify-write step: sees the current document (`None`: absent) and says what to write. It may run
/// more than once (the etcd backend retries it when another replica wrote in between), so it has no side
/// effects beyond its own captures.
pub type Update<'a> = &'a mut dyn FnMut(Option<&[u8]>) -> Result<Write, StateError>;

/// Called when a watched document changes (on another replica or host, or here).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// The shared state's storage. Object safe: the server holds an `Arc<dyn StateBackend>`.
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// `dir` or `etcd` (logs, `/metrics`, the status page).
    fn kind(&self) -> &'static str;

    /// Whether other processes may change the state behind this one's back at any time (replicas): callers then
    /// re-read instead of trusting what they cached.
    fn replicated(&self) -> bool;

    /// The document, or `None` when it was never written.
    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StateError>;

    /// Read-modify-write, atomic with respect to every other writer of the backend.
    fn update(&self, key: Key, f: Update<'_>) -> Result<(), StateError>;

    /// Writes `value` unless the document exists; returns the document in force before (`None`: this call
    /// created it).
    fn create_once(&self, key: Key, value: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let mut before = None;
        self.update(key, &mut |cur| {
            before = cur.map(<[u8]>::to_vec);
            Ok(cur.is_none().then(|| value.to_vec()))
        })?;
        Ok(before)
    }

    /// Calls `on_change` whenever `key` changes, from a background task, for as long as the backend lives.
    /// Returns `false` when the backend cannot push changes (the directory: callers look at the file instead).
    fn watch(&self, key: Key, on_change: OnChange) -> Result<bool, StateError>;

    /// Appends one event (JSON) to the shared, bounded history, under a key made of `at_ms` (when it was first
    /// tried, ms since the epoch), this replica's name and `seq` (this replica's count of events): writing the
    /// same `(at_ms, seq)` again after a failure that may have stored it stores it once. The directory backend
    /// keeps none (the event log in `state/events.jsonl` is the history of a single server): a no-op there.
    fn record_event(&self, at_ms: u64, seq: u64, line: &[u8]) -> Result<(), StateError>;

    /// The newest `limit` events of the shared history, oldest first (empty for the directory backend).
    fn events(&self, limit: usize) -> Result<Vec<Vec<u8>>, StateError>;

    /// Claims address `ip` of the unknown pool for `mac` until `until_ms`; `Ok(false)` when another MAC holds it
    /// unexpired. The directory backend has one server's journal (`state/leases.jsonl`) instead: always `Ok(true)`.
    fn claim_lease(
        &self,
        ip: std::net::Ipv4Addr,
        mac: &str,
        until_ms: u64,
    ) -> Result<bool, StateError>;

    /// Says that replica `id` is alive, with `info` (JSON) for the others to list; kept for `ttl_secs`.
    /// A no-op for the directory backend (one server).
    fn announce(&self, id: &str, info: &[u8], ttl_secs: i64) -> Result<(), StateError>;

    /// What every live replica last announced (empty for the directory backend).
    fn replicas(&self) -> Result<Vec<Vec<u8>>, StateError>;

    /// Counters of the backend's requests by operation (`get`, `txn`, `put`, …) for `/metrics`.
    fn requests(&self) -> Vec<(&'static str, u64)>;
}

/// Parses a JSON document, naming where it came from.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    backend: &dyn StateBackend,
    key: Key,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Invalid {
        key: format!("{} {}", backend.kind(), key.name()),
        message: format!(
            "{e}; the document is written by imgbuild only — restore it from a backup"
        ),
    })
}

/// A document as pretty JSON with a final newline (as the files always were).
pub fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("state documents serialize");
    b.push(b'\n');
    b
}
