//! The etcd backend: every document is one key under `[state] prefix`; a read-modify-write is a transaction that
//! commits only if the key's `mod_revision` is still the one read (or, for a key that did not exist,
//! `create_revision == 0`) and is retried otherwise — so enrollment "once" holds across replicas. Watched keys
//! (pins) are pushed to every replica by an etcd watch. The unknown pool's leases are keys `leases/<ip>`; the
//! shared event history is keys `events/<ms>-<replica>-<n>`, trimmed to `[state] events_kept`.
//!
//! `etcd-client` is async (tonic); the backend runs it on a small runtime of its own and its methods block the
//! calling thread (like the directory backend's file I/O), never longer than `[state] timeout_ms` per attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, SortOrder,
    SortTarget, TlsOptions, Txn, TxnOp,
};

use super::backend::{Key, OnChange, StateBackend, StateError, Update};
use crate::config::state::State;

/// How many times a read-modify-write is tried when other replicas keep writing the same key.
const CAS_TRIES: u32 = 32;
/// How many times a request is tried at least when the member it went to does not answer. Failures that come at
/// once (a member's port refused: the client may pick the stopped member again) are retried for one
/// `[state] timeout_ms` in all, so a stopped member never fails a request the other members could answer.
const TRIES: u32 = 3;
/// The longest pause between two tries of one request.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Requests by operation, for `/metrics` and the writes-per-boot figure in docs/scale-state.md.
#[derive(Debug, Default)]
struct Counts {
    get: AtomicU64,
    txn: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    conflict: AtomicU64,
    error: AtomicU64,
}

/// A connection to the etcd cluster `[state]` names.
pub struct EtcdState {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    endpoints: String,
    timeout: Duration,
    replica: String,
    events_kept: u64,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for EtcdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdState")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .finish()
    }
}

impl Drop for EtcdState {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime's task panics; shut it down in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn read_pem(what: &str, p: &std::path::Path, endpoints: &str) -> Result<Vec<u8>, StateError> {
    std::fs::read(p).map_err(|e| StateError::Etcd {
        endpoints: endpoints.into(),
        what: format!("reading [state] {what}"),
        message: format!("{}: {e}", p.display()),
    })
}

impl EtcdState {
    /// Connects (lazily: a member that is down is skipped by the client's balancer) and checks that the cluster
    /// answers one read within the timeout.
    pub fn connect(cfg: &State, replica: &str) -> Result<Self, StateError> {
        let endpoints = cfg.endpoints.join(",");
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut opts = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        if let Some(ca) = &cfg.ca {
            let mut tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read_pem("ca", ca, &endpoints)?));
            if let (Some(c), Some(k)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(Identity::from_pem(
                    read_pem("cert", c, &endpoints)?,
                    read_pem("key", k, &endpoints)?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imgbuild-etcd")
            .enable_all()
            .build()
            .map_err(|e| StateError::Etcd {
                endpoints: endpoints.clone(),
                what: "starting the client runtime".into(),
                message: e.to_string(),
            })?;
        let eps = cfg.endpoints.clone();
        let client = run_on(&rt, timeout, async move {
            Client::connect(eps, Some(opts)).await
        })
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|message| StateError::Etcd {
            endpoints: endpoints.clone(),
            what: "connecting".into(),
            message,
        })?;
        let s = EtcdState {
            rt: Some(rt),
            client,
            prefix: cfg.prefix.clone(),
            endpoints,
            timeout,
            replica: replica.to_string(),
            events_kept: cfg.events_kept,
            counts: Arc::default(),
        };
        s.get(Key::Pins)?;
        Ok(s)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the backend")
    }

    fn err(&self, what: &str, message: String) -> StateError {
        self.counts.error.fetch_add(1, Ordering::Relaxed);
        StateError::Etcd {
            endpoints: self.endpoints.clone(),
            what: what.into(),
            message,
        }
    }

    /// Runs `op` with a fresh client handle while it fails (another member may answer): at least [`TRIES`]
    /// times, and until `[state] timeout_ms` has passed since the first try.
    fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let t0 = std::time::Instant::now();
        let mut last = String::new();
        let mut pause = Duration::from_millis(100);
        for attempt in 1.. {
            match run_on(self.rt(), self.timeout, op(self.client.clone())) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e,
            }
            tracing::debug!(what, attempt, "etcd request failed: {last}");
            if attempt >= TRIES && t0.elapsed() >= self.timeout {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
        Err(self.err(what, last))
    }

    /// The value and `mod_revision` of `name` (revision 0: absent).
    fn get_rev(&self, name: &str) -> Result<(Option<Vec<u8>>, i64), StateError> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let k = self.key(name);
        let r = self.call(&format!("get {name}"), |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })?;
        Ok(match r.kvs().first() {
            Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision()),
            None => (None, 0),
        })
    }

    /// Writes `value` to `name` if its `mod_revision` is still `rev` (0: it must not exist). `Ok(false)`: it
    /// changed in between.
    fn put_if(&self, name: &str, value: Vec<u8>, rev: i64) -> Result<bool, StateError> {
        self.counts.txn.fetch_add(1, Ordering::Relaxed);
        let k = self.key(name);
        let ok = self.call(&format!("update {name}"), |mut c| {
            let cmp = if rev == 0 {
                Compare::create_revision(k.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(k.clone(), CompareOp::Equal, rev)
            };
            let txn = Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(k.clone(), value.clone(), None)]);
            async move { c.txn(txn).await.map(|r| r.succeeded()) }
        })?;
        if !ok {
            self.counts.conflict.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ok)
    }

    fn update_named(&self, name: &str, f: Update<'_>) -> Result<(), StateError> {
        for _ in 0..CAS_TRIES {
            let (cur, rev) = self.get_rev(name)?;
            match f(cur.as_deref())? {
                None => return Ok(()),
                Some(v) => {
                    if self.put_if(name, v, rev)? {
                        return Ok(());
                    }
                }
            }
        }
        Err(StateError::Contended {
            key: self.key(name),
            tries: CAS_TRIES,
        })
    }

    fn trim_events(&self) -> Result<(), StateError> {
        let pfx = self.key("events/");
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let p = pfx.clone();
        let n = self.call("count events", |mut c| {
            let p = p.clone();
            async move {
                c.get(p, Some(GetOptions::new().with_prefix().with_count_only()))
                    .await
                    .map(|r| r.count())
            }
        })?;
        let excess = n - self.events_kept as i64;
        if excess <= 0 {
            return Ok(());
        }
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let p = pfx.clone();
        let last = self.call("oldest events", |mut c| {
            let p = p.clone();
            async move {
                let o = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_sort(SortTarget::Key, SortOrder::Ascend)
                    .with_limit(excess);
                c.get(p, Some(o))
                    .await
                    .map(|r| r.kvs().last().map(|kv| kv.key().to_vec()))
            }
        })?;
        if let Some(mut end) = last {
            end.push(0);
            self.counts.delete.fetch_add(1, Ordering::Relaxed);
            self.call("trim events", |mut c| {
                let (p, end) = (p.clone(), end.clone());
                async move {
                    c.delete(p, Some(etcd_client::DeleteOptions::new().with_range(end)))
                        .await
                        .map(|_| ())
                }
            })?;
        }
        Ok(())
    }
}

/// Runs `fut` on `rt` and waits for it on this thread (never inside `rt`, so callable from anywhere, including
/// another runtime's task), at most `timeout`.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, fut).await);
    });
    match rx.recv_timeout(timeout + Duration::from_secs(1)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// A lease of the unknown pool as stored in etcd.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    mac: String,
    until_ms: u64,
}

impl StateBackend for EtcdState {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn replicated(&self) -> bool {
        true
    }

    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.get_rev(key.name())?.0)
    }

    fn update(&self, key: Key, f: Update<'_>) -> Result<(), StateError> {
        self.update_named(key.name(), f)
    }

    fn watch(&self, key: Key, on_change: OnChange) -> Result<bool, StateError> {
        let k = self.key(key.name());
        let client = self.client.clone();
        self.rt().spawn(async move {
            loop {
                let mut c = client.clone();
                match c.watch(k.clone(), None).await {
                    Ok(mut stream) => {
                        // Changes may have been missed while the watch was down — or, the first time, between the
                        // caller's read and this watch being established (which, with a dead member among the
                        // endpoints, can take seconds): one re-read either way.
                        on_change();
                        loop {
                            match stream.message().await {
                                Ok(Some(r)) if !r.events().is_empty() => on_change(),
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(key = %k, "etcd watch interrupted: {e}; re-watching");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(key = %k, "cannot watch in etcd: {e}; retrying in 1 s"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(true)
    }

    fn record_event(&self, at_ms: u64, seq: u64, line: &[u8]) -> Result<(), StateError> {
        let k = self.key(&format!("events/{at_ms:013}-{}-{seq:08}", self.replica));
        let v = line.to_vec();
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        self.call("record an event", |mut c| {
            let (k, v) = (k.clone(), v.clone());
            async move { c.put(k, v, None).await.map(|_| ()) }
        })?;
        if seq % 64 == 63 {
            self.trim_events()?;
        }
        Ok(())
    }

    fn events(&self, limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let p = self.key("events/");
        let mut v = self.call("read events", |mut c| {
            let p = p.clone();
            async move {
                let o = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit as i64);
                c.get(p, Some(o)).await.map(|r| {
                    r.kvs()
                        .iter()
                        .map(|kv| kv.value().to_vec())
                        .collect::<Vec<_>>()
                })
            }
        })?;
        v.reverse();
        Ok(v)
    }

    fn claim_lease(
        &self,
        ip: std::net::Ipv4Addr,
        mac: &str,
        until_ms: u64,
    ) -> Result<bool, StateError> {
        let now = crate::pki::token::now_unix() * 1000;
        let mut ours = false;
        let name = format!("leases/{ip}");
        self.update_named(&name, &mut |cur| {
            let held = cur.and_then(|b| serde_json::from_slice::<Lease>(b).ok());
            ours = match &held {
                Some(l) => l.mac == mac || l.until_ms <= now,
                None => true,
            };
            Ok(ours.then(|| {
                serde_json::to_vec(&Lease {
                    mac: mac.to_string(),
                    until_ms,
                })
                .expect("a lease serializes")
            }))
        })?;
        Ok(ours)
    }

    fn announce(&self, id: &str, info: &[u8], ttl_secs: i64) -> Result<(), StateError> {
        // A lease per announcement: a replica that stops announcing (killed) drops out of the list by itself.
        let k = self.key(&format!("replicas/{id}"));
        let v = info.to_vec();
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        self.call("announce this replica", |mut c| {
            let (k, v) = (k.clone(), v.clone());
            async move {
                let lease = c.lease_grant(ttl_secs, None).await?;
                c.put(
                    k,
                    v,
                    Some(etcd_client::PutOptions::new().with_lease(lease.id())),
                )
                .await
                .map(|_| ())
            }
        })
    }

    fn replicas(&self) -> Result<Vec<Vec<u8>>, StateError> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let p = self.key("replicas/");
        self.call("list replicas", |mut c| {
            let p = p.clone();
            async move {
                c.get(p, Some(GetOptions::new().with_prefix()))
                    .await
                    .map(|r| r.kvs().iter().map(|kv| kv.value().to_vec()).collect())
            }
        })
    }

    fn requests(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counts;
        vec![
            ("get", c.get.load(Ordering::Relaxed)),
            ("txn", c.txn.load(Ordering::Relaxed)),
            ("put", c.put.load(Ordering::Relaxed)),
            ("delete", c.delete.load(Ordering::Relaxed)),
            ("conflict", c.conflict.load(Ordering::Relaxed)),
            ("error", c.error.load(Ordering::Relaxed)),
        ]
    }
}
