//! Enrollment: how a node gets its secrets at first boot — the enrollment store, the rules and the bundle.
//! The HTTP routes that apply them live in `netboot::http` (`enroll`, `token`, `barrier`).
//!
//! Rules for `GET /api/enroll/{mac}` ([`decide`], without I/O; the route logs every answer and refusal and
//! records it as an event):
//! 1. the MAC is in the inventory;
//! 2. the request comes from the address the inventory gives that MAC (the TCP peer address is compared to
//!    `Machine::ip`);
//! 3. enrollment is open: from the first server start until every inventory node has enrolled once (then
//!    closed for good, in `state/enrollment.json`: a restart does not re-open it), or for a window set with
//!    `imgbuild enroll open 30m` (`imgbuild enroll close` ends both);
//! 4. once per node: a second fetch is refused with 409 and a warning ("possible spoofer"), until
//!    `imgbuild enroll reset <host>` re-arms the node;
//! 5. with `[enrollment] approve = true`, a first contact is held as *pending* (503 + Retry-After, shown on the
//!    page and in `imgbuild status`) until `imgbuild enroll approve <host>`;
//! 6. nodes that join (every node but the first master) are told to retry (503 + Retry-After, nothing
//!    consumed) until the first master has reported `init-done`, and while the stored bootstrap token has
//!    expired — so a joiner always receives the token the first master created or last renewed.
//!
//! The enrollment state lives in `state/enrollment.json`, replaced atomically, read and written under an
//! exclusive `flock` on `state/enrollment.lock`. The server reads it on every request, so `imgbuild enroll`
//! changes a running server by editing the file under the same lock: no signal, no admin endpoint.
//!
//! Token renewal: the first master's bundle carries `publish_key` (from `secrets/publish.key`); the rules for
//! the renewed token it publishes are in [`super::publish`] (re-exported here).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use super::publish::{
    PUBLISH_SKEW_SECS, Publication, PublishRefusal, check_newer, check_publication,
    publish_message, publisher, sign,
};
use super::secrets::Secrets;
use super::{PkiError, io_err, write_atomic};
use crate::config::{Cluster, MacAddr, Machine, Role};

/// One enrolled node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The node's inventory hostname.
    pub hostname: String,
    /// The address the bundle was fetched from (the TCP peer address of the request).
    pub ip: IpAddr,
    /// When the bundle was handed out, in ms since the Unix epoch.
    pub at_ms: u64,
}

/// A contact the server remembers about a node: from where, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The TCP peer address of the request.
    pub ip: IpAddr,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

/// `state/enrollment.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollState {
    /// The start-up window has ended for good (every node enrolled once, or `imgbuild enroll close`): a server
    /// restart does not re-open it; `imgbuild enroll open` does, for a while.
    #[serde(default)]
    pub auto_closed: bool,
    /// Approval mode: nodes `imgbuild enroll approve` has let through (until they enroll).
    #[serde(default)]
    pub approved: std::collections::BTreeSet<MacAddr>,
    /// Approval mode: first contacts waiting for `imgbuild enroll approve <host>`.
    #[serde(default)]
    pub pending: BTreeMap<MacAddr, Contact>,
    /// The last refused claimant of each inventory node (wrong address, or a second fetch): a possible spoofer,
    /// shown on the page. One entry per inventory MAC, so it stays small.
    #[serde(default)]
    pub refused: BTreeMap<MacAddr, Contact>,
    /// An explicit window (`imgbuild enroll --open`): open until this time (ms since the epoch).
    #[serde(default)]
    pub open_until_ms: Option<u64>,
    /// `imgbuild enroll --close`: closes every window opened before this time.
    #[serde(default)]
    pub closed_at_ms: u64,
    /// Nodes that have fetched their bundle, by MAC.
    #[serde(default)]
    pub enrolled: BTreeMap<MacAddr, Enrolled>,
    /// TPM machines without `ek_sha256` in `cluster.toml`: the EK (hex SHA-256 of its public area) bound to
    /// each by `imgbuild enroll approve <host>` (docs/attestation.md).
    #[serde(default)]
    pub tpm_ek: BTreeMap<MacAddr, String>,
    /// TPM machines: the EK first seen for an unbound machine, waiting for `imgbuild enroll approve <host>`.
    #[serde(default)]
    pub tpm_pending: BTreeMap<MacAddr, PendingEk>,
}

/// An EK seen at a TPM machine's first contact, not bound yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEk {
    /// Hex SHA-256 of the EK's public area (`TPMT_PUBLIC`).
    pub ek_sha256: String,
    /// The TCP peer address of the request.
    pub ip: IpAddr,
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
}

/// The enrollment store on disk.
#[derive(Debug, Clone)]
pub struct Store {
    /// The state file, `state/enrollment.json`.
    pub path: PathBuf,
    lock: PathBuf,
}

/// An exclusive lock on the store, held until dropped.
pub struct Locked {
    path: PathBuf,
    _file: std::fs::File,
    /// The state read under the lock; write it back with [`Locked::save`] before dropping the lock.
    pub state: EnrollState,
}

impl Store {
    /// The store in the cluster's state directory.
    pub fn for_cluster(cluster: &Cluster) -> Self {
        Self::at(&cluster.paths.state)
    }

    /// The store in `state_dir`.
    pub fn at(state_dir: &Path) -> Self {
        Store {
            path: state_dir.join("enrollment.json"),
            lock: state_dir.join("enrollment.lock"),
        }
    }

    /// Takes the lock and reads the state (an absent file is the empty state).
    pub fn lock(&self) -> Result<Locked, PkiError> {
        let f = super::state_store::dir::flock(&self.lock)?;
        let state = match std::fs::read_to_string(&self.path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| PkiError::Invalid {
                path: self.path.display().to_string(),
                message: format!(
                    "{e}; the file is written by imgbuild only — restore it from a backup or delete it (every node \
                     then counts as not enrolled)"
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EnrollState::default(),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        Ok(Locked {
            path: self.path.clone(),
            _file: f,
            state,
        })
    }

    /// Reads the state (under the lock, released at once).
    pub fn read(&self) -> Result<EnrollState, PkiError> {
        Ok(self.lock()?.state)
    }
}

impl Locked {
    /// Writes the state back atomically (still holding the lock).
    pub fn save(&self) -> Result<(), PkiError> {
        let mut v = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        v.push(b'\n');
        write_atomic(&self.path, &v, 0o600)
    }
}

impl EnrollState {
    /// Whether every inventory machine has enrolled.
    pub fn all_enrolled(&self, cluster: &Cluster) -> bool {
        cluster
            .machines
            .iter()
            .all(|m| self.enrolled.contains_key(&m.mac))
    }
}

/// Why a request is not answered with a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The MAC is not in the inventory (403): add a `[[machines]]` entry to `cluster.toml`.
    UnknownMac,
    /// The request came from another address than the inventory gives the MAC (403, possible spoofer).
    WrongAddress {
        /// The address the inventory (`Machine::ip`) gives this MAC.
        expected: IpAddr,
    },
    /// No enrollment window is open (403): open one with `imgbuild enroll open 30m`.
    Closed,
    /// Approval mode: held until `imgbuild enroll approve <host>` (503, not consumed).
    Pending,
    /// The node already fetched its bundle (409, possible spoofer); re-arm it with
    /// `imgbuild enroll --reset <host>`.
    AlreadyEnrolled {
        /// When the earlier fetch happened, in ms since the Unix epoch.
        at_ms: u64,
        /// The address the earlier fetch came from.
        from: IpAddr,
    },
    /// Not a refusal: come back later (not consumed).
    WaitBarrier {
        /// Hostname of the first master the joiner waits for.
        first_master: String,
    },
    /// Not a refusal: the stored bootstrap token has expired; retry once the first master publishes a renewed
    /// one (503, not consumed).
    TokenExpired {
        /// When the stored token expired, in seconds since the Unix epoch.
        expired_unix: u64,
    },
}

impl Refusal {
    /// Said to the client and logged.
    pub fn message(&self, mac: MacAddr, peer: IpAddr) -> String {
        match self {
            Refusal::UnknownMac => format!(
                "enrollment refused: {mac} (from {peer}) is not in the inventory; add a [[machines]] entry to cluster.toml"
            ),
            Refusal::WrongAddress { expected } => format!(
                "enrollment refused: {mac} asked from {peer}, but the inventory gives it {expected} — possible spoofer"
            ),
            Refusal::Closed => format!(
                "enrollment refused: {mac} (from {peer}): enrollment is closed; open it with `imgbuild enroll open 30m`"
            ),
            Refusal::Pending => format!(
                "not yet: {mac} (from {peer}) waits for approval; run `imgbuild enroll approve <host>` on the server"
            ),
            Refusal::AlreadyEnrolled { at_ms, from } => format!(
                "enrollment refused: {mac} (from {peer}) already enrolled at {} from {from} — possible spoofer; if the \
                 node was reinstalled, re-arm it with `imgbuild enroll reset <host>`",
                fmt_ms(*at_ms)
            ),
            Refusal::WaitBarrier { first_master } => format!(
                "not yet: {mac} joins the cluster after {first_master} has reported init-done; retry"
            ),
            Refusal::TokenExpired { expired_unix } => format!(
                "not yet: the stored bootstrap token expired at {}; the first master renews and publishes \
                 it (its imgbuild-token-renew.timer); retry",
                fmt_ms(expired_unix * 1000)
            ),
        }
    }
}

/// `ms` since the epoch as an RFC 3339 time (seconds), for messages.
pub fn fmt_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

impl EnrollState {
    /// Whether enrollment is open at `now_ms`: an explicit window, or the start-up window (until every node
    /// has enrolled once or it was closed; durable, so a restart does not re-open it).
    pub fn is_open(&self, cluster: &Cluster, now_ms: u64) -> bool {
        let timed = self.open_until_ms.is_some_and(|u| now_ms < u);
        let auto = !self.auto_closed && self.closed_at_ms == 0 && !self.all_enrolled(cluster);
        timed || auto
    }

    /// Records machine `m` as enrolled from `ip` at `now_ms` (it is then neither pending nor approved); when that
    /// was the last inventory node, closes the start-up window for good (a restart does not re-open it;
    /// `imgbuild enroll open` does). Returns whether this closed it.
    pub fn record_enrolled(
        &mut self,
        cluster: &Cluster,
        m: &Machine,
        ip: IpAddr,
        now_ms: u64,
    ) -> bool {
        self.pending.remove(&m.mac);
        self.approved.remove(&m.mac);
        self.enrolled.insert(
            m.mac,
            Enrolled {
                hostname: m.hostname.clone(),
                ip,
                at_ms: now_ms,
            },
        );
        let closes = self.all_enrolled(cluster) && !self.auto_closed;
        if closes {
            self.auto_closed = true;
        }
        closes
    }

    /// Remembers a refused claimant of inventory node `mac` (shown as a possible spoofer). Returns whether the
    /// state changed enough to be written (a new address, or a minute since the last write), so a flood of
    /// claims costs no more than one write a minute per inventory node.
    pub fn note_refused(&mut self, mac: MacAddr, ip: IpAddr, now_ms: u64) -> bool {
        match self.refused.get(&mac) {
            Some(c) if c.ip == ip && now_ms.saturating_sub(c.at_ms) < 60_000 => false,
            _ => {
                self.refused.insert(mac, Contact { ip, at_ms: now_ms });
                true
            }
        }
    }

    /// What the page and `imgbuild status` say about a node's enrollment: `spoofer-refused from <ip>`,
    /// `pending`, `approved`, `enrolled`, or `None` before any contact.
    pub fn label(&self, mac: MacAddr) -> Option<String> {
        if let Some(c) = self.refused.get(&mac) {
            return Some(format!("spoofer-refused from {}", c.ip));
        }
        if self.enrolled.contains_key(&mac) {
            Some("enrolled".into())
        } else if let Some(p) = self.tpm_pending.get(&mac) {
            Some(format!(
                "pending TPM EK sha256:{}",
                &p.ek_sha256[..16.min(p.ek_sha256.len())]
            ))
        } else if self.pending.contains_key(&mac) {
            Some("pending".into())
        } else if self.approved.contains(&mac) {
            Some("approved".into())
        } else {
            None
        }
    }
}

/// The enrollment rules, without I/O: what to do with a request for `mac` from `peer` at `now_ms`.
#[allow(clippy::too_many_arguments)]
pub fn decide<'c>(
    cluster: &'c Cluster,
    state: &EnrollState,
    mac: MacAddr,
    peer: IpAddr,
    barrier_reached: bool,
    token_expires_unix: u64,
    now_ms: u64,
) -> Result<&'c Machine, Refusal> {
    let m = cluster.machine_by_mac(mac).ok_or(Refusal::UnknownMac)?;
    if peer != IpAddr::V4(m.ip) {
        return Err(Refusal::WrongAddress {
            expected: IpAddr::V4(m.ip),
        });
    }
    if let Some(e) = state.enrolled.get(&mac) {
        return Err(Refusal::AlreadyEnrolled {
            at_ms: e.at_ms,
            from: e.ip,
        });
    }
    if !state.is_open(cluster, now_ms) {
        return Err(Refusal::Closed);
    }
    if cluster.enrollment.approve && !state.approved.contains(&mac) {
        return Err(Refusal::Pending);
    }
    let first = cluster.first_master().map(|f| f.mac);
    if first != Some(mac) {
        if !barrier_reached {
            return Err(Refusal::WaitBarrier {
                first_master: cluster
                    .first_master()
                    .map_or_else(|| "the first master".into(), |f| f.hostname.clone()),
            });
        }
        if token_expires_unix <= now_ms / 1000 {
            return Err(Refusal::TokenExpired {
                expired_unix: token_expires_unix,
            });
        }
    }
    Ok(m)
}

/// What a node receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The node's inventory hostname.
    pub hostname: String,
    /// The node's role (master or worker); masters also receive the cluster CA files in `pki`.
    pub role: Role,
    /// The node's MAC, as in the inventory.
    pub mac: MacAddr,
    /// The node's address, as in the inventory.
    pub ip: IpAddr,
    /// This node runs `kubeadm init` (the first master).
    pub init: bool,
    /// `VIP:port`.
    pub api_endpoint: String,
    /// The kubeadm bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`) for `kubeadm init`/`join`.
    pub token: String,
    /// When `token` expires, in seconds since the Unix epoch.
    pub token_expires_unix: u64,
    /// `sha256:<hex>` for `caCertHashes`.
    pub discovery_hash: String,
    /// Masters: kubeadm pki file name → PEM.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pki: BTreeMap<String, String>,
    /// First master: the key it signs token publications with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_key: Option<String>,
    /// First master: BGP peer name → MD5 password, for the MetalLB Secrets it creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bgp_passwords: BTreeMap<String, String>,
    /// The node's report key (hex text): it signs the node's reports (`pki::report_auth`).
    pub report_key: String,
}

/// The bundle for machine `m`, enrolled at `enrolled_at_ms` (its report key derives from it).
pub fn bundle(cluster: &Cluster, secrets: &Secrets, m: &Machine, enrolled_at_ms: u64) -> Bundle {
    let init = cluster.first_master().map(|f| f.mac) == Some(m.mac);
    let mut pki = BTreeMap::new();
    if m.role == Role::Master {
        for (name, pem) in secrets.ca_files() {
            pki.insert(name.to_string(), pem.to_string());
        }
    }
    let mut bgp = BTreeMap::new();
    if init {
        for p in &cluster.metallb.peers {
            if let Some(pw) = &p.password {
                bgp.insert(p.name.clone(), pw.clone());
            }
        }
    }
    Bundle {
        hostname: m.hostname.clone(),
        role: m.role,
        mac: m.mac,
        ip: IpAddr::V4(m.ip),
        init,
        api_endpoint: format!(
            "{}:{}",
            cluster.control_plane.vip, cluster.control_plane.port
        ),
        token: secrets.token.token.clone(),
        token_expires_unix: secrets.token.expires_unix,
        discovery_hash: secrets.discovery_hash.clone(),
        pki,
        publish_key: init.then(|| secrets.publish_key.clone()),
        bgp_passwords: bgp,
        report_key: super::report_auth::node_key(&secrets.report_key, m.mac, enrolled_at_ms),
    }
}

impl Refusal {
    /// The metric label of the refusal.
    pub fn outcome(&self) -> &'static str {
        match self {
            Refusal::UnknownMac => "unknown-mac",
            Refusal::WrongAddress { .. } => "wrong-address",
            Refusal::Closed => "closed",
            Refusal::Pending => "pending",
            Refusal::AlreadyEnrolled { .. } => "already-enrolled",
            Refusal::WaitBarrier { .. } => "wait-barrier",
            Refusal::TokenExpired { .. } => "token-expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::example as cluster;

    const NOW: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_in_order() {
        let c = cluster();
        let m1: MacAddr = "52:54:00:77:00:11".parse().unwrap();
        let w1: MacAddr = "52:54:00:77:00:21".parse().unwrap();
        let mut st = EnrollState::default();
        let d = |st: &EnrollState, mac, peer, barrier, tok| {
            decide(&c, st, mac, ip(peer), barrier, tok, NOW)
        };
        assert_eq!(
            d(
                &st,
                "52:54:00:00:00:01".parse().unwrap(),
                "10.77.0.11",
                true,
                u64::MAX
            )
            .unwrap_err(),
            Refusal::UnknownMac
        );
        assert!(matches!(
            d(&st, m1, "10.77.0.12", true, u64::MAX),
            Err(Refusal::WrongAddress { .. })
        ));
        assert_eq!(
            d(&st, m1, "10.77.0.11", false, 0).unwrap().hostname,
            "master-1",
            "the first master needs no barrier and no live token"
        );
        assert!(matches!(
            d(&st, w1, "10.77.0.21", false, u64::MAX),
            Err(Refusal::WaitBarrier { .. })
        ));
        assert!(matches!(
            d(&st, w1, "10.77.0.21", true, NOW / 1000),
            Err(Refusal::TokenExpired { .. })
        ));
        assert_eq!(
            d(&st, w1, "10.77.0.21", true, NOW / 1000 + 1)
                .unwrap()
                .hostname,
            "worker-1"
        );
        st.enrolled.insert(
            m1,
            Enrolled {
                hostname: "master-1".into(),
                ip: ip("10.77.0.11"),
                at_ms: 5,
            },
        );
        // A spoofer from another address learns nothing about the enrollment state.
        assert!(matches!(
            d(&st, m1, "10.77.0.99", true, u64::MAX),
            Err(Refusal::WrongAddress { .. })
        ));
        assert!(matches!(
            d(&st, m1, "10.77.0.11", true, u64::MAX),
            Err(Refusal::AlreadyEnrolled { at_ms: 5, .. })
        ));
    }

    #[test]
    fn window_semantics() {
        let c = cluster();
        let mut st = EnrollState::default();
        assert!(st.is_open(&c, NOW), "open from the first start");
        st.auto_closed = true; // every node enrolled once, or `enroll close`: a restart does not re-open it
        assert!(!st.is_open(&c, NOW));
        let mut old = EnrollState {
            closed_at_ms: NOW - 5000, // closed by an older imgbuild: stays closed
            ..Default::default()
        };
        assert!(!old.is_open(&c, NOW));
        old.open_until_ms = Some(NOW + 1);
        assert!(old.is_open(&c, NOW), "`enroll open` beats everything");
        assert!(!old.is_open(&c, NOW + 1), "until its end");
        let mut all = EnrollState::default();
        for m in &c.machines {
            all.enrolled.insert(
                m.mac,
                Enrolled {
                    hostname: m.hostname.clone(),
                    ip: IpAddr::V4(m.ip),
                    at_ms: 1,
                },
            );
        }
        assert!(!all.is_open(&c, NOW), "nobody left to enroll");
    }

    #[test]
    fn approval_mode_holds_first_contacts_and_spoofers_are_labelled() {
        let mut c = cluster();
        c.enrollment.approve = true;
        let m1: MacAddr = "52:54:00:77:00:11".parse().unwrap();
        let mut st = EnrollState::default();
        let d = |st: &EnrollState, peer| decide(&c, st, m1, ip(peer), false, u64::MAX, NOW);
        assert_eq!(d(&st, "10.77.0.11").unwrap_err(), Refusal::Pending);
        st.pending.insert(
            m1,
            Contact {
                ip: ip("10.77.0.11"),
                at_ms: NOW,
            },
        );
        assert_eq!(st.label(m1).as_deref(), Some("pending"));
        st.approved.insert(m1);
        assert_eq!(d(&st, "10.77.0.11").unwrap().hostname, "master-1");
        // A second claimant from another address: refused, remembered once a minute, labelled.
        assert!(matches!(
            d(&st, "10.77.0.99"),
            Err(Refusal::WrongAddress { .. })
        ));
        assert!(st.note_refused(m1, ip("10.77.0.99"), NOW));
        assert!(!st.note_refused(m1, ip("10.77.0.99"), NOW + 1000));
        assert!(st.note_refused(m1, ip("10.77.0.98"), NOW + 1000));
        assert_eq!(
            st.label(m1).as_deref(),
            Some("spoofer-refused from 10.77.0.98")
        );
    }
}
